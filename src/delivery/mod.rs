//! Delivery: where an accepted message goes before its `250`.
//!
//! A sink stores bytes and never parses SMTP: the connection begins a message with its
//! rendered trace headers (and the envelope as plain text, for sinks that carry it beside the
//! bytes), appends the message data as ranges of the receive buffer, then commits — durable, or
//! an error the session turns into `451`/`552` — or aborts. `Maildir` (files in `tmp/` then
//! `new/`, fsync'd), `Jetstream` (a publish acknowledged by a NATS JetStream stream) and
//! `Discard` (accept and drop, for benchmarks and sinks) sit behind the one `Sink` interface; `AnySink` picks one at start-up so the connection loop never knows
//! which it talks to.

mod id;
pub mod jetstream;
pub mod maildir;

use std::io;

use bytes::BytesMut;

use crate::driver::Driver;
pub use crate::envelope::{MessageStart, Recipients};
use crate::scan::Part;
pub use id::{process_nonce, IdGenerator, QueueId, QUEUE_ID_LEN};
pub use jetstream::Jetstream;
pub use maildir::Maildir;

/// Why a message could not be delivered.
#[derive(Debug)]
pub enum DeliveryError {
    /// Storage failed (a full disk, an I/O error, no acknowledgement): `451 4.3.0`, the client
    /// may try again.
    Temporary(io::Error),
    /// The stored form would exceed what the sink can take: `552 5.3.4`.
    TooBig,
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryError::Temporary(e) => write!(f, "{e}"),
            DeliveryError::TooBig => f.write_str("message too large for the sink"),
        }
    }
}

/// One shard's destination for accepted messages. All methods run on the shard's thread.
#[allow(async_fn_in_trait)]
pub trait Sink {
    /// A message being delivered.
    type Message;

    /// False for a sink that drops what it is given, so the caller need not render headers.
    fn keeps_head(&self) -> bool {
        true
    }

    /// Starts a message whose stored form begins with `head` (the trace headers). `head` is a
    /// buffer the caller reuses: it always comes back.
    async fn begin(
        &self,
        start: &MessageStart<'_>,
        head: Vec<u8>,
    ) -> (io::Result<Self::Message>, Vec<u8>);

    /// Appends message data: `parts` are ranges of `buf` offset by `base`, and constants;
    /// `last`: the message ends with them (its commit comes next). The buffer always comes
    /// back; a failure dooms the message (its commit fails).
    async fn append(
        &self,
        message: &mut Self::Message,
        buf: BytesMut,
        parts: &[Part],
        base: usize,
        last: bool,
    ) -> BytesMut;

    /// Makes the message durable. On error nothing of it is left for a reader to find.
    async fn commit(&self, message: Self::Message) -> Result<(), DeliveryError>;

    /// Drops a message that will not be committed.
    async fn abort(&self, message: Self::Message);
}

/// The sink chosen by `RINGMX_DELIVERY`.
pub enum AnySink<D: Driver> {
    Maildir(Maildir<D>),
    // Boxed: its client handles make it several times the size of the other variants.
    Jetstream(Box<Jetstream>),
    Discard,
}

/// A message in one of `AnySink`'s sinks.
pub enum AnyMessage<D: Driver> {
    Maildir(maildir::Draft<D>),
    Jetstream(jetstream::Publication),
    Discard,
}

impl<D: Driver> Sink for AnySink<D> {
    type Message = AnyMessage<D>;

    fn keeps_head(&self) -> bool {
        !matches!(self, AnySink::Discard)
    }

    async fn begin(
        &self,
        start: &MessageStart<'_>,
        head: Vec<u8>,
    ) -> (io::Result<AnyMessage<D>>, Vec<u8>) {
        match self {
            AnySink::Maildir(sink) => {
                let (result, head) = sink.begin(start, head).await;
                (result.map(AnyMessage::Maildir), head)
            }
            AnySink::Jetstream(sink) => {
                let (result, head) = sink.begin(start, head).await;
                (result.map(AnyMessage::Jetstream), head)
            }
            AnySink::Discard => (Ok(AnyMessage::Discard), head),
        }
    }

    async fn append(
        &self,
        message: &mut AnyMessage<D>,
        buf: BytesMut,
        parts: &[Part],
        base: usize,
        last: bool,
    ) -> BytesMut {
        match (self, message) {
            (AnySink::Maildir(sink), AnyMessage::Maildir(draft)) => {
                sink.append(draft, buf, parts, base, last).await
            }
            (AnySink::Jetstream(sink), AnyMessage::Jetstream(publication)) => {
                sink.append(publication, buf, parts, base, last).await
            }
            _ => buf,
        }
    }

    async fn commit(&self, message: AnyMessage<D>) -> Result<(), DeliveryError> {
        match (self, message) {
            (AnySink::Maildir(sink), AnyMessage::Maildir(draft)) => sink.commit(draft).await,
            (AnySink::Jetstream(sink), AnyMessage::Jetstream(publication)) => {
                sink.commit(publication).await
            }
            (AnySink::Discard, AnyMessage::Discard) => Ok(()),
            _ => unreachable!("a message is committed to the sink that began it"),
        }
    }

    async fn abort(&self, message: AnyMessage<D>) {
        match (self, message) {
            (AnySink::Maildir(sink), AnyMessage::Maildir(draft)) => sink.abort(draft).await,
            (AnySink::Jetstream(sink), AnyMessage::Jetstream(publication)) => {
                sink.abort(publication).await
            }
            _ => {}
        }
    }
}
