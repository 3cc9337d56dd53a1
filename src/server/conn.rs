//! One connection: moves bytes between the socket, the session and the delivery sink.
//!
//! The loop waits for the next event — input read, replies written, the session's deadline,
//! the write deadline, a shutdown phase — and acts on it. Replies are first offered to the
//! socket without waiting; only what its send buffer does not take becomes a write in flight.
//! At most one read and one write are in flight. Input is fed to the session, which answers
//! with steps the connection only executes:
//! `Begin` (render the trace headers, begin the message in the sink), body parts (appended
//! straight from the receive buffer, no copy), `Store` (commit, then tell the session the
//! verdict, which writes the `250`/`451`), `Discard`, `Close`. Replies wait in the session's
//! output until the write in flight is done; while more than `REPLY_BUFFER_MAX` bytes wait,
//! no more input is fed or read, so a client that pipelines without reading cannot make a
//! connection hold more memory than that. A connection waiting for commands holds only a small
//! receive buffer; a large one is taken from the shard's pool while message data flows.
//!
//! Every byte to and from the peer passes through `start_read`/`on_read` and `start_write`:
//! after STARTTLS the TLS layer sits there, between this loop and the driver. A read then
//! fills the layer's ciphertext buffer and `on_read` decrypts it into the receive buffer;
//! replies are sealed into records before their write starts. The handshake itself runs
//! between two turns of the loop, once the `220` is out, within its own deadline.
//!
//! A connection from a `RINGMX_PROXY_FROM` network first reads its PROXY header
//! (`proxy_header`), before the limits and the greeting: the client the header names is the
//! peer from then on, and bytes after the header are the session's first input. The shard's
//! metrics (when on) are counted where things happen: accepted and refused connections,
//! bytes read, replies handed to the socket, messages stored, the time to store them.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

use super::{Phase, Refused, Shard, LARGE_BUFFER, SMALL_BUFFER};
use crate::delivery::{AnySink, DeliveryError, MessageStart, QueueId, Sink};
use crate::driver::Driver;
use crate::metrics::{Connection, ShardMetrics};
use crate::proto::trace::{self, Trace};
use crate::proto::{self, Output, Session, Step, StoreError, REPLY_BUFFER_MAX};
use crate::proxy::{self, Outcome, Parsed};
use crate::tls::stream::{Decrypted, HandshakeError, TlsStream};
use crate::{log_debug, log_event, log_info};

/// Time given to the last replies (the 421) when the shutdown grace is over.
const STOP_FLUSH: Duration = Duration::from_secs(1);
/// Capacity a reply buffer returns to when a burst of replies has been sent.
const REPLY_BUFFER_IDLE: usize = 1024;

/// How a session ended, for its log line.
#[derive(Clone, Copy, Debug)]
enum End {
    /// The session closed it: QUIT, or a limit's 421.
    Closed,
    /// The session's deadline passed (421 4.4.2).
    Timeout,
    /// Server shutdown (421 4.3.2, or the grace period ended).
    Shutdown,
    /// The client closed the connection.
    PeerClosed,
    ReadError,
    /// A write failed, or the client read nothing for a whole command timeout.
    WriteError,
    /// The TLS handshake after STARTTLS failed or timed out.
    TlsFailed,
    /// A TLS record failed (bad record, alert) after the handshake.
    TlsError,
}

impl End {
    /// The name in log events.
    fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Timeout => "timeout",
            End::Shutdown => "shutdown",
            End::PeerClosed => "peer_closed",
            End::ReadError => "read_error",
            End::WriteError => "write_error",
            End::TlsFailed => "tls_failed",
            End::TlsError => "tls_error",
        }
    }
}

/// Counts a session in `ringmx_sessions_active` while it lives.
struct ActiveSession<'a>(Option<&'a ShardMetrics>);

impl<'a> ActiveSession<'a> {
    fn new(metrics: Option<&'a ShardMetrics>) -> ActiveSession<'a> {
        if let Some(metrics) = metrics {
            metrics.connection(Connection::Accepted);
            metrics.session_started();
        }
        ActiveSession(metrics)
    }
}

impl Drop for ActiveSession<'_> {
    fn drop(&mut self) {
        if let Some(metrics) = self.0 {
            metrics.session_ended();
        }
    }
}

/// The message the session is receiving, as far as the sink is concerned.
enum Message<M> {
    /// No message begun.
    Idle,
    /// Begun in the sink, with its queue ID.
    Open(M, QueueId),
    /// The sink could not begin it: its end gets 451.
    Failed,
}

/// What feeding the input did.
enum Fed {
    /// All complete input is consumed: read more.
    NeedInput,
    /// Replies are full: send them, then feed the rest of the input again.
    RepliesFull,
    /// The session is over; its last replies are in the output.
    Over(End),
    /// STARTTLS was accepted: send the `220`, then run the handshake.
    StartTls,
}

/// One event of the loop.
enum Event {
    Read(std::io::Result<usize>, BytesMut),
    Written(std::io::Result<()>, Vec<u8>),
    /// The connection's timer fired: the write deadline or the session's may have passed.
    Timer,
    Phase(Phase),
}

/// Serves one accepted connection to its end.
pub(crate) async fn serve<D: Driver>(
    stream: D::Stream,
    socket_peer: SocketAddr,
    shard: &Rc<Shard<D>>,
) {
    let config = &shard.config;
    let started = Instant::now();
    let metrics = shard.metrics.as_deref();
    let mut buf = BytesMut::with_capacity(SMALL_BUFFER);
    let mut bytes_in = 0u64;
    let peer = if config.is_proxy_source(socket_peer.ip()) {
        match proxy_header::<D>(&stream, socket_peer, shard, &mut buf, &mut bytes_in).await {
            Some(client) => client,
            None => return,
        }
    } else {
        socket_peer
    };
    let admission = match shard.shared.admit(config, peer.ip()) {
        Ok(admission) => admission,
        Err(refused) => {
            let mut reply = Vec::with_capacity(128);
            let (result, reason) = match refused {
                Refused::TooManyConnections => {
                    proto::write_too_many_connections(&shard.session_config.hostname, &mut reply);
                    (Connection::RefusedLimit, "connection limit")
                }
                Refused::TooManyFromAddress => {
                    proto::write_too_many_from_address(&shard.session_config.hostname, &mut reply);
                    (Connection::RefusedPerIp, "per-IP limit")
                }
            };
            if let Some(metrics) = metrics {
                metrics.connection(result);
                metrics.replies(&reply);
            }
            let _ = D::write_all(&stream, reply).await;
            log_event!(
                Info,
                "refused",
                { peer: peer, code: 421u16, reason: reason },
                "{peer}: refused at connect ({reason})"
            );
            return;
        }
    };
    let _active = ActiveSession::new(metrics);

    let mut session = Session::new(Arc::clone(&shard.session_config), started);
    let mut out = Output::new();
    let early_input = !buf.is_empty();
    if let Some(end) = greet::<D>(&stream, shard, &mut session, &mut out, early_input).await {
        if !out.replies.is_empty() {
            if let Some(metrics) = metrics {
                metrics.replies(&out.replies);
            }
            let write = D::write_all(&stream, std::mem::take(&mut out.replies));
            let _ = tokio::time::timeout(shard.session_config.command_timeout, write).await;
        }
        log_event!(
            Info,
            "session_end",
            { peer: peer, end: end.as_str(), duration_ms: started.elapsed().as_millis() as u64 },
            "{peer}: session ended ({end:?}) before the greeting"
        );
        return;
    }

    let mut conn = Conn::<D> {
        shard,
        stream: &stream,
        peer,
        session,
        out,
        buf,
        large: false,
        small: BytesMut::new(),
        scratch: Vec::with_capacity(REPLY_BUFFER_IDLE),
        message: Message::Idle,
        phase_seen: Phase::Running,
        bytes: bytes_in,
        tls: None,
        clock: None,
    };
    let end = conn.run().await;
    if let Message::Open(message, _) = std::mem::replace(&mut conn.message, Message::Idle) {
        shard.sink.abort(message).await;
    }
    if conn.large {
        shard.give_large(std::mem::take(&mut conn.buf));
    }
    drop(admission);
    let duration_ms = started.elapsed().as_millis() as u64;
    let messages = conn.session.messages_stored();
    // The balancer a PROXY header came through, if any.
    let via = (peer != socket_peer).then_some(socket_peer);
    log_event!(
        Info,
        "session_end",
        {
            peer: peer,
            via: via,
            end: end.as_str(),
            duration_ms: duration_ms,
            messages: messages,
            bytes_in: conn.bytes,
        },
        "{peer}: session ended ({end:?}) after {duration_ms} ms, {messages} message(s), {} byte(s) in",
        conn.bytes
    );
}

/// Reads the PROXY header a connection from a `RINGMX_PROXY_FROM` network must begin with
/// (SPEC §4.6), within `RINGMX_PROXY_TIMEOUT_SECS`. Returns the client it names (the socket's
/// peer for a v2 LOCAL or v1 UNKNOWN), the bytes after it left in `buf`; None when the
/// connection is to be closed without a reply: a malformed, late or unfinished header, or
/// shutdown.
async fn proxy_header<D: Driver>(
    stream: &D::Stream,
    socket_peer: SocketAddr,
    shard: &Shard<D>,
    buf: &mut BytesMut,
    bytes_in: &mut u64,
) -> Option<SocketAddr> {
    // The buffer holds the longest header: it never grows while waiting for one.
    debug_assert!(buf.capacity() >= proxy::HEADER_BYTES_MAX);
    let metrics = shard.metrics.as_deref();
    let deadline = tokio::time::Instant::now() + shard.config.proxy_timeout;
    let mut phase = shard.phase.clone();
    let why = loop {
        match proxy::parse(buf) {
            Parsed::Incomplete => {}
            Parsed::Header { len, client } => {
                buf.advance(len);
                let outcome = if client.is_some() {
                    Outcome::Ok
                } else {
                    Outcome::Local
                };
                if let Some(metrics) = metrics {
                    metrics.proxy_header(outcome);
                }
                let client = client.unwrap_or(socket_peer);
                log_debug!("{socket_peer}: PROXY header: client {client}");
                return Some(client);
            }
            Parsed::Malformed(why) => break (Outcome::Malformed, why),
        }
        let read = D::read(stream, std::mem::take(buf));
        let (result, filled) = tokio::select! {
            done = read => done,
            () = tokio::time::sleep_until(deadline) => {
                break (Outcome::Timeout, "no complete header in time");
            }
            _ = phase.wait_for(|p| *p != Phase::Running) => return None,
        };
        *buf = filled;
        match result {
            Ok(0) if buf.is_empty() => return None,
            Ok(0) => break (Outcome::Malformed, "connection closed inside the header"),
            Ok(n) => {
                *bytes_in += n as u64;
                if let Some(metrics) = metrics {
                    metrics.bytes_received(n as u64);
                }
            }
            Err(_) => return None,
        }
    };
    let (outcome, why) = why;
    if let Some(metrics) = metrics {
        metrics.proxy_header(outcome);
    }
    log_event!(
        Info,
        "proxy_header",
        { peer: socket_peer, result: outcome.as_str() },
        "{socket_peer}: closed without a reply: PROXY header {}: {why}",
        outcome.as_str()
    );
    None
}

/// Waits out `RINGMX_GREET_DELAY_MS` and writes the greeting. Returns `Some` when the session
/// ends instead (an early talker refused, or shutdown began during the delay), its reply in
/// `out`.
async fn greet<D: Driver>(
    stream: &D::Stream,
    shard: &Shard<D>,
    session: &mut Session,
    out: &mut Output,
    early_input: bool,
) -> Option<End> {
    let config = &shard.config;
    if !config.greet_delay.is_zero() {
        let mut phase = shard.phase.clone();
        let delay = tokio::time::sleep(config.greet_delay);
        tokio::pin!(delay);
        while *phase.borrow_and_update() == Phase::Running {
            tokio::select! {
                _ = &mut delay => break,
                changed = phase.changed() => if changed.is_err() { break },
            }
        }
        if *phase.borrow() != Phase::Running {
            session.handle_stop(out);
            return Some(End::Shutdown);
        }
        if config.reject_early_talkers && (early_input || D::peer_has_sent(stream)) {
            session.reject_early_talker(out);
            log_info!("early talker refused");
            return Some(End::Closed);
        }
    }
    session.greeting(out);
    None
}

/// The per-connection state the loop carries.
struct Conn<'a, D: Driver> {
    shard: &'a Rc<Shard<D>>,
    stream: &'a D::Stream,
    peer: SocketAddr,
    session: Session,
    out: Output,
    /// Received bytes not yet consumed by the session.
    buf: BytesMut,
    /// `buf` is a large buffer from the pool.
    large: bool,
    /// The small receive buffer, kept aside while `buf` is a large one.
    small: BytesMut,
    /// The reply buffer not in use by the session: replies in flight, or trace headers.
    scratch: Vec<u8>,
    message: Message<<AnySink<D> as Sink>::Message>,
    /// The last shutdown phase acted on.
    phase_seen: Phase,
    bytes: u64,
    /// The TLS layer, once STARTTLS succeeded.
    tls: Option<TlsStream>,
    /// The time read for the event being handled (`now`), if it was needed yet.
    clock: Option<Instant>,
}

impl<D: Driver> Conn<'_, D> {
    /// The time of the event being handled: read once, when first needed.
    fn now(&mut self) -> Instant {
        *self.clock.get_or_insert_with(Instant::now)
    }

    /// The event loop. Returns how the session ended.
    async fn run(&mut self) -> End {
        let stream = self.stream;
        let write_timeout = self.shard.session_config.command_timeout;
        // The read and the write in flight (at most one of each). The read owns the receive
        // buffer until it completes; the write owns `scratch`.
        let mut read = pin!(idle(|| D::read(stream, BytesMut::new())));
        let mut write = pin!(idle(|| D::write_all(stream, Vec::new())));
        // One timer serves both deadlines, armed lazily: it is moved only when a deadline
        // falls before the time it is set to. A later deadline (the session's, refreshed by
        // every command) leaves it as it is; when it fires early, the deadlines are checked
        // and it is armed again. Registering a timer per command would cost more than the
        // command itself.
        let mut timer = pin!(tokio::time::sleep_until(tokio::time::Instant::from_std(
            self.now()
        )));
        // The time the timer is set to; None once it has fired (or before it is first set).
        let mut armed: Option<tokio::time::Instant> = None;
        // The shutdown phase, watched by one future for the whole connection.
        let mut phase_change = pin!(self.shard.local_phase.after(self.phase_seen));
        let mut write_deadline: Option<tokio::time::Instant> = None;
        // Once the shutdown grace is over, no write may take longer than this.
        let mut stop_by: Option<tokio::time::Instant> = None;
        // Bytes that came with a PROXY header are the session's first input.
        let mut fed = if self.buf.is_empty() {
            Fed::NeedInput
        } else {
            self.feed().await
        };
        loop {
            if write.is_none() && !self.out.replies.is_empty() {
                let last = matches!(fed, Fed::Over(_));
                let Some(mut wire) = self.start_write(last) else {
                    return End::WriteError;
                };
                // Offered to the socket first: when the send buffer takes it all, as it
                // almost always does, the write is over with no write in flight and no turn
                // of the loop waiting for it.
                match D::try_write(stream, &wire) {
                    Ok(sent) if sent == wire.len() => {
                        self.end_write(wire);
                        if matches!(fed, Fed::RepliesFull) {
                            fed = self.feed().await;
                        }
                        continue;
                    }
                    Ok(sent) => drop(wire.drain(..sent)),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    Err(_) => return End::WriteError,
                }
                write.set(Some(D::write_all(stream, wire)));
                let by = tokio::time::Instant::from_std(self.now()) + write_timeout;
                write_deadline = Some(stop_by.map_or(by, |stop| stop.min(by)));
            }
            match fed {
                Fed::Over(end) if write.is_none() => return end,
                Fed::StartTls if write.is_none() => {
                    // The 220 is out and no read is in flight: the next bytes are the
                    // client's handshake.
                    let started = self.start_tls().await;
                    self.clock = None;
                    fed = match started {
                        Ok(()) if self.buf.is_empty() => Fed::NeedInput,
                        Ok(()) => self.feed().await,
                        Err(end) => return end,
                    };
                    continue;
                }
                Fed::NeedInput if read.is_none() => {
                    self.size_buffer();
                    match self.start_read() {
                        Ok(Some(buf)) => read.set(Some(D::read(stream, buf))),
                        // Records already read held more input.
                        Ok(None) => fed = self.feed().await,
                        Err(end) => fed = Fed::Over(end),
                    }
                    continue;
                }
                _ => {}
            }

            let deadline = match fed {
                Fed::Over(_) => None,
                _ => self.session.deadline().map(tokio::time::Instant::from_std),
            };
            let wake = earliest(write_deadline, deadline);
            if let Some(wake) = wake {
                if armed.is_none_or(|at| wake < at) {
                    timer.as_mut().reset(wake);
                    armed = Some(wake);
                }
            }
            let event = tokio::select! {
                biased;
                (result, sent) = in_slot(write.as_mut()) => Event::Written(result, sent),
                (result, buf) = in_slot(read.as_mut()) => Event::Read(result, buf),
                () = timer.as_mut(), if wake.is_some() => Event::Timer,
                phase = phase_change.as_mut(), if self.phase_seen != Phase::Stopping => {
                    Event::Phase(phase)
                }
            };
            // Time is read at most once per event, when something needs it.
            self.clock = None;

            match event {
                Event::Written(result, sent) => {
                    write.set(None);
                    write_deadline = None;
                    if result.is_err() {
                        return End::WriteError;
                    }
                    self.end_write(sent);
                    if matches!(fed, Fed::RepliesFull) {
                        fed = self.feed().await;
                    }
                }
                Event::Read(result, buf) => {
                    read.set(None);
                    let result = self.on_read(result, buf);
                    if let Fed::Over(_) = fed {
                        // Input after the last reply is not looked at.
                        continue;
                    }
                    fed = match result {
                        // Replies still waiting go out first: a client that half-closed
                        // may still be reading its 250s.
                        Ok(Some(0)) => Fed::Over(End::PeerClosed),
                        Ok(Some(n)) => {
                            self.bytes += n as u64;
                            if let Some(metrics) = &self.shard.metrics {
                                metrics.bytes_received(n as u64);
                            }
                            self.feed().await
                        }
                        // Only part of a record: read on.
                        Ok(None) => Fed::NeedInput,
                        Err(end) => Fed::Over(end),
                    };
                }
                Event::Timer => {
                    armed = None;
                    let now = self.now();
                    if write_deadline.is_some_and(|by| tokio::time::Instant::from_std(now) >= by) {
                        return End::WriteError;
                    }
                    let passed = deadline.is_some_and(|d| tokio::time::Instant::from_std(now) >= d);
                    if passed && self.session.handle_timeout(now, &mut self.out) == Step::Close {
                        log_debug!("{}: timeout", self.peer);
                        fed = Fed::Over(End::Timeout);
                    }
                }
                Event::Phase(phase) => {
                    self.phase_seen = phase;
                    phase_change.set(self.shard.local_phase.after(phase));
                    match phase {
                        Phase::Running => {}
                        Phase::Draining => {
                            if self.session.handle_shutdown(&mut self.out) == Step::Close {
                                fed = Fed::Over(End::Shutdown);
                            }
                        }
                        Phase::Stopping => {
                            // The grace is over: 421 now, sent within a short bound.
                            if !matches!(fed, Fed::Over(_)) {
                                self.session.handle_stop(&mut self.out);
                                fed = Fed::Over(End::Shutdown);
                            }
                            let soon = tokio::time::Instant::from_std(self.now()) + STOP_FLUSH;
                            stop_by = Some(soon);
                            write_deadline = write_deadline.map(|d| d.min(soon));
                        }
                    }
                }
            }
        }
    }

    /// Hands the waiting replies over for sending (sealed into TLS records inside TLS, with a
    /// close_notify after the `last` ones); the session's output keeps a buffer. `None` when
    /// they cannot be sealed.
    fn start_write(&mut self, last: bool) -> Option<Vec<u8>> {
        let mut replies = std::mem::take(&mut self.scratch);
        replies.clear();
        std::mem::swap(&mut replies, &mut self.out.replies);
        if let Some(metrics) = &self.shard.metrics {
            metrics.replies(&replies);
        }
        match &mut self.tls {
            None => Some(replies),
            Some(tls) => match tls.seal(replies, last) {
                Ok(wire) => Some(wire),
                Err(e) => {
                    log_info!("{}: TLS: {e}", self.peer);
                    None
                }
            },
        }
    }

    /// The buffer the next socket read fills: the receive buffer, or inside TLS the
    /// ciphertext buffer. `Ok(None)` when no read is needed because whole records already read
    /// were decrypted into the receive buffer.
    fn start_read(&mut self) -> Result<Option<BytesMut>, End> {
        let Some(tls) = &mut self.tls else {
            return Ok(Some(std::mem::take(&mut self.buf)));
        };
        match tls.decrypt(&mut self.buf) {
            Ok(Decrypted::Plain(n)) => {
                self.bytes += n as u64;
                Ok(None)
            }
            Ok(Decrypted::Closed) => Err(End::PeerClosed),
            Ok(Decrypted::NeedMore) => Ok(Some(tls.take_read_buffer())),
            Err(e) => {
                log_info!("{}: TLS: {e}", self.peer);
                Err(End::TlsError)
            }
        }
    }

    /// Takes back the buffer of a finished read. Returns the plaintext bytes added to the
    /// receive buffer (`Some(0)`: the client closed), `None` when more ciphertext is needed.
    /// A TCP close in the middle of a record is a close: a truncated record is never used.
    fn on_read(
        &mut self,
        result: std::io::Result<usize>,
        buf: BytesMut,
    ) -> Result<Option<usize>, End> {
        let Some(tls) = &mut self.tls else {
            self.buf = buf;
            return result.map(Some).map_err(|_| End::ReadError);
        };
        tls.put_read_buffer(buf);
        match result {
            Ok(0) => return Ok(Some(0)),
            Ok(_) => {}
            Err(_) => return Err(End::ReadError),
        }
        match tls.decrypt(&mut self.buf) {
            Ok(Decrypted::Plain(n)) => Ok(Some(n)),
            Ok(Decrypted::Closed) => Ok(Some(0)),
            Ok(Decrypted::NeedMore) => Ok(None),
            Err(e) => {
                log_info!("{}: TLS: {e}", self.peer);
                Err(End::TlsError)
            }
        }
    }

    /// After `220 Ready to start TLS` went out: runs the handshake within its deadline and
    /// tells the session. Input that followed STARTTLS was consumed by the session and is
    /// gone (CVE-2011-0411). A failure ends the connection.
    async fn start_tls(&mut self) -> Result<(), End> {
        debug_assert!(self.buf.is_empty(), "input after STARTTLS left unconsumed");
        self.buf.clear();
        let Some(store) = self.shard.tls.as_ref() else {
            debug_assert!(false, "STARTTLS accepted without a certificate");
            return Err(End::TlsFailed);
        };
        let timeout = self.shard.config.tls_handshake_timeout;
        let accept = TlsStream::accept::<D>(self.stream, store.current(), &mut self.buf, timeout);
        // The end of the shutdown grace does not wait for a handshake.
        let mut phase = self.shard.phase.clone();
        let stopping = async move {
            while *phase.borrow_and_update() != Phase::Stopping {
                if phase.changed().await.is_err() {
                    break;
                }
            }
        };
        let accepted = tokio::select! {
            accepted = accept => accepted,
            () = stopping => return Err(End::Shutdown),
        };
        if let Some(metrics) = &self.shard.metrics {
            metrics.tls_handshake(match &accepted {
                Ok(_) => crate::metrics::Tls::Ok,
                Err(HandshakeError::Timeout) => crate::metrics::Tls::Timeout,
                Err(_) => crate::metrics::Tls::Failed,
            });
        }
        match accepted {
            Ok(tls) => {
                let Some(facts) = tls.facts() else {
                    return Err(End::TlsFailed);
                };
                log_debug!(
                    "{}: TLS established, {} with {}",
                    self.peer,
                    facts.version,
                    facts.cipher
                );
                self.session.handle_tls_established(facts, Instant::now());
                self.tls = Some(tls);
                Ok(())
            }
            Err(e) => {
                log_info!("{}: TLS handshake failed: {e}", self.peer);
                Err(End::TlsFailed)
            }
        }
    }

    /// Takes back the buffer of a finished write. The session keeps a reply buffer within
    /// `REPLY_BUFFER_MAX`, a capacity kept so that a busy pipelining session allocates
    /// nothing; one that grew past it (replies of a shutdown or error on top of a full
    /// buffer) returns to its idle size.
    fn end_write(&mut self, mut sent: Vec<u8>) {
        if sent.capacity() > REPLY_BUFFER_MAX {
            sent = Vec::with_capacity(REPLY_BUFFER_IDLE);
            if self.out.replies.is_empty() && self.out.replies.capacity() > REPLY_BUFFER_MAX {
                self.out.replies = Vec::with_capacity(REPLY_BUFFER_IDLE);
            }
        }
        self.scratch = sent;
    }

    /// Feeds the received bytes to the session and carries out its steps.
    async fn feed(&mut self) -> Fed {
        let mut pos = 0;
        let now = self.now();
        let fed = loop {
            let (n, step) = self
                .session
                .handle_input(&self.buf[pos..], now, &mut self.out);
            if !self.out.body.is_empty() {
                self.append(pos, step == Step::Store).await;
                self.out.body.clear();
                self.sink_waited();
            }
            pos += n;
            match step {
                Step::Read if self.out.replies_full() => break Fed::RepliesFull,
                Step::Read => break Fed::NeedInput,
                Step::Begin => {
                    self.begin().await;
                    self.sink_waited();
                }
                Step::Store => {
                    // Timed from the read that brought the end of data (the feed's `now`: no
                    // extra clock read) to the verdict.
                    let timing = self
                        .shard
                        .metrics
                        .as_ref()
                        .map(|_| (now, self.session.envelope().recipient_count()));
                    let stored = self.store().await;
                    self.sink_waited();
                    if let (Some(metrics), Some((started, recipients)), Ok(_)) =
                        (&self.shard.metrics, timing, &stored)
                    {
                        metrics.store_latency(started.elapsed());
                        metrics.message_stored(recipients);
                    }
                    let result = stored.as_ref().map(QueueId::as_str).map_err(|e| *e);
                    if self.session.handle_stored(result, &mut self.out) == Step::Close {
                        break Fed::Over(End::Shutdown);
                    }
                }
                Step::Discard => {
                    self.discard().await;
                    self.sink_waited();
                }
                Step::StartTls => break Fed::StartTls,
                Step::Close => {
                    let end = if self.phase_seen == Phase::Running {
                        End::Closed
                    } else {
                        End::Shutdown
                    };
                    break Fed::Over(end);
                }
            }
        };
        self.buf.advance(pos);
        fed
    }

    /// After a sink operation: one that may have waited (an fsync, a JetStream ack) makes the
    /// time read before it stale. The discard sink answers at once.
    fn sink_waited(&mut self) {
        if !matches!(self.shard.sink, AnySink::Discard) {
            self.clock = None;
        }
    }

    /// Begins the session's message in the sink, with its trace headers.
    async fn begin(&mut self) {
        debug_assert!(
            matches!(self.message, Message::Idle),
            "a message begun twice"
        );
        let sink = &self.shard.sink;
        let id = self.shard.next_id();
        let envelope = self.session.envelope();
        let mut head = std::mem::take(&mut self.scratch);
        head.clear();
        if sink.keeps_head() {
            let trace = Trace {
                envelope: &envelope,
                peer: self.peer.ip(),
                hostname: &self.shard.session_config.hostname,
                id: id.as_str(),
                now: chrono::Utc::now(),
                tls: self.session.tls(),
            };
            trace::write_trace(&mut head, &trace);
        }
        let start = MessageStart {
            id: id.as_str(),
            sender: envelope.sender,
            recipients: envelope.recipient_list(),
        };
        let (begun, head) = sink.begin(&start, head).await;
        self.scratch = head;
        self.message = match begun {
            Ok(message) => Message::Open(message, id),
            Err(e) => {
                log_info!("{}: message not begun: {e}", self.peer);
                Message::Failed
            }
        };
    }

    /// Appends the parts the session just produced (ranges of `buf[base..]`) to the message;
    /// `last`: they end it.
    async fn append(&mut self, base: usize, last: bool) {
        if let Message::Open(message, _) = &mut self.message {
            let buf = std::mem::take(&mut self.buf);
            self.buf = self
                .shard
                .sink
                .append(message, buf, &self.out.body, base, last)
                .await;
        }
    }

    /// Commits the message; returns its queue ID, or why it was not stored.
    async fn store(&mut self) -> Result<QueueId, StoreError> {
        match std::mem::replace(&mut self.message, Message::Idle) {
            Message::Open(message, id) => match self.shard.sink.commit(message).await {
                Ok(()) => {
                    log_event!(
                        Debug,
                        "stored",
                        { peer: self.peer, queue_id: id.as_str(), code: 250u16 },
                        "{}: stored {}",
                        self.peer,
                        id.as_str()
                    );
                    Ok(id)
                }
                Err(e) => {
                    log_event!(
                        Info,
                        "not_stored",
                        { peer: self.peer, queue_id: id.as_str(), error: crate::log::display(&e) },
                        "{}: message {} not stored: {e}",
                        self.peer,
                        id.as_str()
                    );
                    Err(match e {
                        DeliveryError::TooBig => StoreError::TooBig,
                        DeliveryError::Temporary(_) => StoreError::Failed,
                    })
                }
            },
            Message::Failed => Err(StoreError::Failed),
            Message::Idle => {
                debug_assert!(false, "Step::Store without Step::Begin");
                Err(StoreError::Failed)
            }
        }
    }

    /// Drops the message in progress.
    async fn discard(&mut self) {
        if let Message::Open(message, _) = std::mem::replace(&mut self.message, Message::Idle) {
            self.shard.sink.abort(message).await;
        }
    }

    /// Gives the connection a large buffer while data flows, its small one otherwise (kept
    /// aside meanwhile, so that switching allocates nothing).
    fn size_buffer(&mut self) {
        let data = self.session.receiving_data();
        if data && !self.large {
            if let Some(mut large) = self.shard.take_large() {
                large.extend_from_slice(&self.buf);
                self.small = std::mem::replace(&mut self.buf, large);
                self.small.clear();
                self.large = true;
            }
        } else if !data && self.large && self.buf.len() <= SMALL_BUFFER / 2 {
            let mut small = std::mem::take(&mut self.small);
            small.extend_from_slice(&self.buf);
            self.shard
                .give_large(std::mem::replace(&mut self.buf, small));
            self.large = false;
        }
        let want = if self.large {
            LARGE_BUFFER
        } else {
            SMALL_BUFFER
        };
        if self.buf.capacity() - self.buf.len() < want / 4 {
            self.buf.reserve(want / 2);
        }
    }
}

/// An empty slot for an operation of the type `make` would start (never called: it only
/// names the type).
fn idle<F>(_make: impl FnOnce() -> F) -> Option<F> {
    None
}

/// Completes with the operation in `slot`; never, when the slot is empty.
fn in_slot<F: Future>(mut slot: Pin<&mut Option<F>>) -> impl Future<Output = F::Output> + '_ {
    std::future::poll_fn(move |cx| match slot.as_mut().as_pin_mut() {
        Some(operation) => operation.poll(cx),
        None => Poll::Pending,
    })
}

/// The earlier of two optional deadlines.
fn earliest(
    a: Option<tokio::time::Instant>,
    b: Option<tokio::time::Instant>,
) -> Option<tokio::time::Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
