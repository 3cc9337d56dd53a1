//! JetStream delivery: each accepted message is published to a NATS JetStream stream, and the
//! session says 250 only once the stream has acknowledged it (SPEC §9).
//!
//! The payload is exactly what a Maildir file would hold: the trace headers, then the message
//! bytes. NATS headers carry the envelope: `Nats-Msg-Id` (the queue ID, so a publish that ringmx
//! retries within its deadline is stored once by the stream's de-duplication), `Ringmx-Mail-From`
//! and one `Ringmx-Rcpt-To` per recipient, in RCPT order.
//!
//! Each shard has its own connection (async-nats on the shard's own tokio runtime; tokio-uring's
//! runtime is a tokio current-thread runtime with I/O and timers enabled, so the client's socket
//! runs there too) and many publishes in flight: a session waits only for its own
//! acknowledgement. A lost connection is re-established by the client library in the background;
//! meanwhile nothing is handed to it (it would queue the publish and send it long after the
//! session's 451), an acknowledgement awaited on the lost connection is given up and the publish
//! repeated on the next one, and every wait is bounded by `RINGMX_NATS_ACK_TIMEOUT_MS`: a session
//! gets its 250 or a 451, never a hang.
//!
//! The client library takes a message as one contiguous `Bytes`, so the message bytes are copied
//! once from the receive buffer into a per-message payload buffer (the one copy this sink makes;
//! the Maildir sink writes the same ranges straight from the receive buffer). The payload is
//! bounded by the stream's largest message: past it the copy stops and the message gets 552.

use std::cell::Cell;
use std::io;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::message::PublishMessage;
use async_nats::{HeaderMap, Subject};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::Instant;

use super::{DeliveryError, MessageStart, Sink};
use crate::scan::Part;
use crate::{log_info, log_warn};

/// Bytes of `max_payload` kept for the trace headers when SIZE is advertised (SPEC §9).
pub const TRACE_RESERVE: usize = 64 * 1024;
/// Smallest message size the advertised SIZE may come down to (as `RINGMX_MAX_MESSAGE_SIZE`).
const MESSAGE_SIZE_MIN: u64 = 1024;
/// Pause between two attempts of one publish that failed at once (no responders while a
/// cluster elects a leader, a connection being re-established); the deadline bounds the total.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Longest wait for the start-up connection and stream lookup.
const PROBE_TIMEOUT_MAX: Duration = Duration::from_secs(10);
/// How often an idle shard pings its NATS server: a peer that vanished without closing the
/// connection (a partition, a frozen host) is noticed after about three intervals rather than
/// the client library's default of minutes. While publishes flow the library puts its pings
/// off; `STALL_DEADLINES` covers that case.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// No acknowledgement at all for this many acknowledgement deadlines (at least 1 s each) while
/// publishes time out: the server is taken for frozen and the connection is dropped for another
/// server. The client library's pings cannot tell: they are put off while commands flow.
const STALL_DEADLINES: u32 = 2;
/// Publishes in flight per shard before a new one waits for a slot (bounded by its deadline).
const IN_FLIGHT_MAX: usize = 16_384;
/// Initial capacity of a payload beyond its trace headers: one receive buffer's worth.
const PAYLOAD_START_CAPACITY: usize = 64 * 1024;
/// `Nats-Msg-Id`: the stream drops a second message with the same ID within its window.
const MSG_ID: &str = "Nats-Msg-Id";
/// The reverse-path, without angle brackets; empty for the null sender.
const MAIL_FROM: &str = "Ringmx-Mail-From";
/// One per recipient, as the client wrote it.
const RCPT_TO: &str = "Ringmx-Rcpt-To";

/// Where and how to publish (from `RINGMX_NATS_*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Server URLs, comma-separated.
    pub url: String,
    /// A literal subject, no wildcards.
    pub subject: String,
    /// No acknowledgement by then: 451.
    pub ack_timeout: Duration,
}

impl Settings {
    /// The server URLs one by one (the client library takes a list, not a comma-separated
    /// string).
    fn servers(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).collect()
    }
}

/// What the start-up check learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The stream that captures the subject.
    pub stream: String,
    /// The largest message (NATS headers + payload) that may be published: the server's
    /// `max_payload`, or the stream's `max_msg_size` when that is smaller.
    pub message_max: usize,
    /// The server's version, for the log.
    pub server_version: String,
    /// Something the operator should know, for the log (after the first line).
    pub warning: Option<String>,
}

/// Checks at start-up that a server at `settings.url` answers and that a JetStream stream
/// captures `settings.subject`. Runs on its own short-lived runtime (before any shard starts);
/// the error is one line for the operator.
pub fn probe(settings: &Settings) -> Result<Probe, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("jetstream: cannot start the start-up check's runtime: {e}"))?;
    let wait = settings
        .ack_timeout
        .clamp(Duration::from_secs(1), PROBE_TIMEOUT_MAX);
    runtime.block_on(async {
        match tokio::time::timeout(wait * 2, probe_async(settings, wait)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "jetstream: no answer from NATS at {} within {} ms",
                settings.url,
                (wait * 2).as_millis()
            )),
        }
    })
}

async fn probe_async(settings: &Settings, wait: Duration) -> Result<Probe, String> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(wait)
        .max_reconnects(Some(1))
        .connect(settings.servers())
        .await
        .map_err(|e| format!("jetstream: cannot connect to NATS at {}: {e}", settings.url))?;
    let info = client.server_info();
    if !info.headers {
        return Err(format!(
            "jetstream: the NATS server at {} (version {}) does not support message headers",
            settings.url, info.version
        ));
    }
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(wait);
    let stream = match js.stream_by_subject(settings.subject.as_str()).await {
        Ok(name) => name,
        Err(e) => {
            use async_nats::jetstream::context::GetStreamByNameErrorKind as Kind;
            return Err(match e.kind() {
                Kind::NotFound => format!(
                    "jetstream: no stream captures subject {:?} on {} (provision one, e.g. \
                     `nats stream add --subjects {}`)",
                    settings.subject, settings.url, settings.subject
                ),
                _ => format!(
                    "jetstream: cannot look up the stream for subject {:?} on {} (is JetStream \
                     enabled?): {e}",
                    settings.subject, settings.url
                ),
            });
        }
    };
    let mut handle = js
        .get_stream(&stream)
        .await
        .map_err(|e| format!("jetstream: cannot read stream {stream:?}: {e}"))?;
    let config = &handle
        .info()
        .await
        .map_err(|e| format!("jetstream: cannot read stream {stream:?}: {e}"))?
        .config;
    if config.no_ack {
        return Err(format!(
            "jetstream: stream {stream:?} is configured with no_ack, so no message could ever \
             be acknowledged"
        ));
    }
    let mut message_max = info.max_payload;
    if let Ok(stream_max) = usize::try_from(config.max_message_size) {
        if stream_max > 0 {
            message_max = message_max.min(stream_max);
        }
    }
    let warning = (config.duplicate_window < settings.ack_timeout).then(|| {
        format!(
            "jetstream: stream {stream:?} keeps message IDs for {} ms, less than \
             RINGMX_NATS_ACK_TIMEOUT_MS ({} ms): a retried publish may be stored twice",
            config.duplicate_window.as_millis(),
            settings.ack_timeout.as_millis()
        )
    });
    drop(client);
    Ok(Probe {
        stream,
        message_max,
        server_version: info.version,
        warning,
    })
}

/// The SIZE to advertise: the smaller of `max_message_size` and `message_max` less the
/// `TRACE_RESERVE`; an error line when that leaves less than 1 KiB.
pub fn size_limit(max_message_size: u64, message_max: usize) -> Result<u64, String> {
    let room = message_max.saturating_sub(TRACE_RESERVE) as u64;
    if room < MESSAGE_SIZE_MIN {
        return Err(format!(
            "jetstream: the largest message the stream takes ({message_max} bytes) leaves no \
             room for mail beyond the {TRACE_RESERVE} bytes kept for trace headers"
        ));
    }
    Ok(max_message_size.min(room))
}

/// One shard's JetStream publisher.
pub struct Jetstream {
    shard: usize,
    client: async_nats::Client,
    /// When the last acknowledgement arrived (or the shard connected).
    last_ack: Cell<Instant>,
    /// When a stalled connection was last dropped on purpose.
    last_forced: Cell<Option<Instant>>,
    js: async_nats::jetstream::Context,
    subject: Subject,
    ack_timeout: Duration,
    /// From the start-up `Probe`.
    message_max: usize,
}

/// A message being gathered for one publish.
pub struct Publication {
    headers: HeaderMap,
    /// Bytes the NATS headers take on the wire (they count against `max_payload`).
    headers_len: usize,
    payload: BytesMut,
    /// The payload has outgrown the largest message: nothing more is copied, commit says 552.
    too_big: bool,
}

impl Publication {
    /// Payload bytes gathered so far (trace headers and message).
    pub fn len(&self) -> usize {
        self.payload.len()
    }

    /// Whether nothing has been gathered.
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }
}

impl Jetstream {
    /// Connects shard `shard` on the current (shard's) runtime. An unreachable server is not an
    /// error: the connection is made, and re-made after any loss, in the background, and
    /// publishes meanwhile end in 451. Only options the client library refuses are.
    pub async fn connect(
        settings: &Settings,
        probe: &Probe,
        shard: usize,
    ) -> Result<Jetstream, String> {
        let url = settings.url.clone();
        let options = async_nats::ConnectOptions::new()
            .name(format!("ringmx shard {shard}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .ping_interval(PING_INTERVAL)
            .connection_timeout(settings.ack_timeout.max(Duration::from_secs(1)))
            .event_callback(move |event| {
                let url = url.clone();
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            log_warn!("shard {shard}: lost the NATS connection to {url}")
                        }
                        async_nats::Event::Connected => {
                            log_info!("shard {shard}: connected to NATS at {url}")
                        }
                        async_nats::Event::ClientError(e) => {
                            log_warn!("shard {shard}: NATS: {e}")
                        }
                        _ => {}
                    }
                }
            });
        let client = options
            .connect(settings.servers())
            .await
            .map_err(|e| format!("shard {shard}: cannot create the NATS client: {e}"))?;
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(settings.ack_timeout)
            .max_ack_inflight(IN_FLIGHT_MAX)
            .backpressure_on_inflight(true)
            .build(client.clone());
        Ok(Jetstream {
            shard,
            client,
            last_ack: Cell::new(Instant::now()),
            last_forced: Cell::new(None),
            js,
            subject: Subject::from(settings.subject.as_str()),
            ack_timeout: settings.ack_timeout,
            message_max: probe.message_max,
        })
    }

    /// The largest message (NATS headers + payload) that may be published now.
    fn message_max(&self) -> usize {
        match self.client.server_info().max_payload {
            0 => self.message_max,
            server => self.message_max.min(server),
        }
    }

    /// Builds the envelope headers and starts the payload with `head` (the trace headers).
    fn start(&self, start: &MessageStart<'_>, head: &[u8]) -> io::Result<Publication> {
        let mut headers = HeaderMap::new();
        let mut headers_len = "NATS/1.0\r\n\r\n".len();
        let mut add = |name: &'static str, value: &str| -> io::Result<()> {
            // Addresses come from command lines, which cannot hold CR or LF; a header value
            // with one would break the NATS protocol, so it is refused rather than trusted.
            if value.contains(['\r', '\n']) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "line break in an envelope address",
                ));
            }
            headers_len += name.len() + 2 + value.len() + 2;
            headers.append(name, value);
            Ok(())
        };
        add(MSG_ID, start.id)?;
        add(MAIL_FROM, start.sender)?;
        start
            .recipients
            .iter()
            .try_for_each(|rcpt| add(RCPT_TO, rcpt))?;
        let mut payload = BytesMut::with_capacity(head.len() + PAYLOAD_START_CAPACITY);
        payload.put_slice(head);
        let mut publication = Publication {
            headers,
            headers_len,
            payload,
            too_big: false,
        };
        self.check_size(&mut publication, 0);
        Ok(publication)
    }

    /// Marks `m` too big (and frees its payload) when `more` bytes would not fit.
    fn check_size(&self, m: &mut Publication, more: usize) {
        if m.headers_len + m.payload.len() + more > self.message_max() {
            m.too_big = true;
            m.payload = BytesMut::new();
        }
    }

    /// Copies message parts (ranges of `buf` offset by `base`, and constants) to the payload.
    fn copy_parts(&self, m: &mut Publication, buf: &[u8], parts: &[Part], base: usize) {
        if m.too_big {
            return;
        }
        let more: usize = parts
            .iter()
            .map(|part| match part {
                Part::Input(r) => r.len(),
                Part::Static(bytes) => bytes.len(),
            })
            .sum();
        self.check_size(m, more);
        if m.too_big {
            return;
        }
        m.payload.reserve(more);
        for part in parts {
            match part {
                Part::Input(r) => m.payload.put_slice(&buf[base + r.start..base + r.end]),
                Part::Static(bytes) => m.payload.put_slice(bytes),
            }
        }
    }

    /// Publishes `m` and waits for the stream's acknowledgement, retrying an attempt that
    /// failed at once with the same `Nats-Msg-Id` until the deadline. Ok means the stream
    /// holds the message (on as many replicas as it is configured for).
    async fn publish(&self, m: Publication) -> Result<(), DeliveryError> {
        if m.too_big {
            return Err(DeliveryError::TooBig);
        }
        let Publication {
            headers, payload, ..
        } = m;
        let payload: Bytes = payload.freeze();
        let deadline = Instant::now() + self.ack_timeout;
        let mut attempts = 0u32;
        loop {
            // While the connection is down the client library would queue the publish and send
            // it after reconnecting, long after this session got its 451: the message would be
            // stored without a 250 and stored again when the client retries. So nothing is
            // handed over until the connection is back (or the deadline passes).
            if self.client.connection_state() != State::Connected {
                if Instant::now() + RETRY_PAUSE >= deadline {
                    return Err(DeliveryError::Temporary(io::Error::other(format!(
                        "jetstream: not connected to NATS (after {attempts} attempts)"
                    ))));
                }
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            attempts += 1;
            let publish = PublishMessage::build()
                .headers(headers.clone())
                .payload(payload.clone());
            let attempt = async {
                self.js
                    .send_publish(self.subject.clone(), publish)
                    .await?
                    .await
            };
            // A connection lost while the acknowledgement is awaited will never deliver it:
            // the attempt is given up at once and repeated on the next connection (the same
            // Nats-Msg-Id makes the stream store it once, if the first one got through).
            let lost = async {
                loop {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    if self.client.connection_state() != State::Connected {
                        return;
                    }
                }
            };
            let failure = tokio::select! {
                acked = tokio::time::timeout_at(deadline, attempt) => match acked {
                    Ok(Ok(_ack)) => {
                        self.last_ack.set(Instant::now());
                        return Ok(());
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no acknowledgement in time".to_string(),
                },
                () = lost => "connection lost before the acknowledgement".to_string(),
            };
            self.leave_if_stalled().await;
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(DeliveryError::Temporary(io::Error::other(format!(
                    "jetstream: {failure} (after {attempts} attempts)"
                ))));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// After a failed attempt: when nothing at all has been acknowledged for
    /// `STALL_DEADLINES` deadlines, drops the connection so that the client library connects
    /// again (to another server of a cluster, or to this one once it answers). At most once per
    /// that period, so a slow server is not hammered with reconnections.
    async fn leave_if_stalled(&self) {
        let stall = self.ack_timeout.max(Duration::from_secs(1)) * STALL_DEADLINES;
        let now = Instant::now();
        if now.duration_since(self.last_ack.get()) < stall
            || self
                .last_forced
                .get()
                .is_some_and(|forced| now.duration_since(forced) < stall)
        {
            return;
        }
        self.last_forced.set(Some(now));
        log_warn!(
            "shard {}: no acknowledgement from NATS for {} ms; connecting again",
            self.shard,
            now.duration_since(self.last_ack.get()).as_millis()
        );
        if let Err(e) = self.client.force_reconnect().await {
            log_warn!("shard {}: NATS reconnection refused: {e}", self.shard);
        }
    }
}

impl Sink for Jetstream {
    type Message = Publication;

    async fn begin(
        &self,
        start: &MessageStart<'_>,
        head: Vec<u8>,
    ) -> (io::Result<Publication>, Vec<u8>) {
        (self.start(start, &head), head)
    }

    async fn append(
        &self,
        message: &mut Publication,
        buf: BytesMut,
        parts: &[Part],
        base: usize,
        _last: bool,
    ) -> BytesMut {
        self.copy_parts(message, &buf, parts, base);
        buf
    }

    async fn commit(&self, message: Publication) -> Result<(), DeliveryError> {
        self.publish(message).await
    }

    /// Nothing was sent: the payload is dropped.
    async fn abort(&self, message: Publication) {
        drop(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_limit_keeps_room_for_trace_headers() {
        assert_eq!(
            size_limit(26_214_400, 1024 * 1024).unwrap(),
            1024 * 1024 - 65_536
        );
        assert_eq!(size_limit(10_000, 1024 * 1024).unwrap(), 10_000);
        assert_eq!(size_limit(10_000, 65_536 + 1024).unwrap(), 1024);
        let line = size_limit(10_000, 65_536 + 1023).unwrap_err();
        assert!(
            line.contains("66559 bytes") && !line.contains('\n'),
            "{line}"
        );
        assert!(size_limit(10_000, 0).is_err());
    }
}
