//! One connection: moves bytes between the socket, the session and the spool.
//!
//! The loop is: send the replies the session wrote, read (racing the session's deadline and
//! the shutdown signal), hand the bytes to the session, and obey its `Step`s. Message data is
//! written to the spool file straight from the receive buffer, as the ranges the session
//! returned. Replies of one batch of pipelined commands go out in one write, after any
//! message in the batch is durable. A connection waiting for commands holds only a small
//! buffer; a large one is taken from the shard's pool while message data flows.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};

use super::{Phase, Refused, Shard, LARGE_BUFFER, SMALL_BUFFER};
use crate::driver::{peer_has_sent, Driver};
use crate::proto::{self, Output, Session, Step};
use crate::spool::Draft;
use crate::tls::stream::TlsStream;
use crate::{log_debug, log_info};

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
}

/// Serves one accepted connection to its end.
pub(crate) async fn serve<D: Driver>(stream: D::Stream, peer: SocketAddr, shard: &Rc<Shard<D>>) {
    let config = &shard.config;
    let started = Instant::now();
    let admission = match shard.shared.admit(config, peer.ip()) {
        Ok(admission) => admission,
        Err(refused) => {
            let mut reply = Vec::with_capacity(128);
            match refused {
                Refused::TooManyConnections => {
                    proto::write_too_many_connections(&shard.session_config.hostname, &mut reply)
                }
                Refused::TooManyFromAddress => {
                    proto::write_too_many_from_address(&shard.session_config.hostname, &mut reply)
                }
            }
            let _ = D::write_all(&stream, reply).await;
            log_info!("{peer}: refused at connect (connection limit)");
            return;
        }
    };

    let mut session = Session::new(Arc::clone(&shard.session_config), started);
    let mut out = Output::new();
    let mut phase = shard.phase.clone();

    if !config.greet_delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(config.greet_delay) => {}
            _ = phase.changed() => {}
        }
        if config.reject_early_talkers && peer_has_sent(D::stream_fd(&stream)) {
            session.reject_early_talker(&mut out);
            let _ = D::write_all(&stream, std::mem::take(&mut out.replies)).await;
            log_info!("{peer}: early talker refused");
            drop(admission);
            return;
        }
    }
    session.greeting(&mut out);

    let mut conn = Conn::<D> {
        shard,
        peer,
        buf: BytesMut::with_capacity(SMALL_BUFFER),
        large: false,
        scratch: Vec::with_capacity(512),
        draft: None,
        failed: false,
        bytes: 0,
        tls: None,
        start_tls: false,
    };
    let end = conn.run(&stream, &mut session, &mut out, &mut phase).await;
    if let Some(draft) = conn.draft.take() {
        if let Some(spool) = &shard.spool {
            spool.abort(draft).await;
        }
    }
    if conn.large {
        shard.give_large(std::mem::take(&mut conn.buf));
    }
    drop(admission);
    log_info!(
        "{peer}: session ended ({end:?}) after {} ms, {} message(s), {} byte(s) in",
        started.elapsed().as_millis(),
        session.messages_stored(),
        conn.bytes
    );
}

/// The per-connection state the loop carries.
struct Conn<'a, D: Driver> {
    shard: &'a Rc<Shard<D>>,
    peer: SocketAddr,
    buf: BytesMut,
    /// `buf` is a large buffer from the pool.
    large: bool,
    /// Reused buffer for replies in flight and spool headers.
    scratch: Vec<u8>,
    draft: Option<Draft<D>>,
    /// The current message's spool file could not be created: its end gets 451.
    failed: bool,
    bytes: u64,
    /// The TLS layer, once STARTTLS succeeded.
    tls: Option<TlsStream>,
    /// The session asked for STARTTLS in the input just processed.
    start_tls: bool,
}

impl<D: Driver> Conn<'_, D> {
    /// The read–process–reply loop. Returns how the session ended.
    async fn run(
        &mut self,
        stream: &D::Stream,
        session: &mut Session,
        out: &mut Output,
        phase: &mut tokio::sync::watch::Receiver<Phase>,
    ) -> End {
        let mut closing: Option<End> = None;
        let mut draining = false;
        let write_timeout = self.shard.session_config.command_timeout;
        loop {
            // Replies to send go from `scratch`, leaving `out.replies` empty with its capacity.
            let sending = !out.replies.is_empty();
            let mut replies = std::mem::take(&mut self.scratch);
            if sending {
                replies.clear();
                std::mem::swap(&mut replies, &mut out.replies);
            }
            if let Some(end) = closing {
                if sending {
                    let wire = match &mut self.tls {
                        Some(tls) => tls.seal(replies, true),
                        None => Ok(replies),
                    };
                    if let Ok(wire) = wire {
                        let write = D::write_all(stream, wire);
                        let _ = tokio::time::timeout(write_timeout, write).await;
                    }
                }
                return end;
            }
            let replies = match &mut self.tls {
                Some(tls) if sending => match tls.seal(replies, false) {
                    Ok(wire) => wire,
                    Err(_) => return End::WriteError,
                },
                _ => replies,
            };
            self.size_buffer(session.receiving_data());

            // Send the replies and read the next input at once: both operations are handed to
            // the kernel together. A client that reads nothing for a whole command timeout is
            // dropped, so it cannot hold a connection (or our reply bytes) for ever. The read
            // keeps its buffer while we react to the deadline or shutdown, so no received byte
            // is dropped; input is processed only once the replies before it are out.
            let deadline = session.deadline().map(tokio::time::Instant::from_std);
            let write_deadline = sending.then(|| tokio::time::Instant::now() + write_timeout);
            // The futures live in this block, so the read lets go of the TLS layer before
            // the input is processed.
            let (result, buf) = {
                let write = async {
                    if sending {
                        Some(D::write_all(stream, replies).await)
                    } else {
                        None
                    }
                };
                let read_buf = std::mem::take(&mut self.buf);
                let tls = self.tls.as_mut();
                let read = async move {
                    match tls {
                        Some(tls) => tls.read::<D>(stream, read_buf).await,
                        None => D::read(stream, read_buf).await,
                    }
                };
                tokio::pin!(write);
                tokio::pin!(read);
                let mut write_pending = sending;
                let mut read_done = None;
                let done = loop {
                    tokio::select! {
                        biased;
                        written = &mut write, if write_pending => {
                            write_pending = false;
                            match written {
                                Some((Ok(()), sent)) => self.scratch = sent,
                                Some((Err(_), _)) => return End::WriteError,
                                None => {}
                            }
                            if let Some(done) = read_done.take() {
                                break done;
                            }
                        }
                        done = &mut read, if read_done.is_none() => {
                            if !write_pending {
                                break done;
                            }
                            read_done = Some(done);
                        }
                        _ = sleep_until(write_deadline), if write_pending => return End::WriteError,
                        _ = sleep_until(deadline), if !write_pending => {
                            if session.handle_timeout(Instant::now(), out) == Step::Close {
                                log_debug!("{}: timeout", self.peer);
                                closing = Some(End::Timeout);
                                break (Ok(0), BytesMut::new());
                            }
                        }
                        changed = phase.changed(), if !draining || *phase.borrow() != Phase::Stopping => {
                            let now_phase = if changed.is_ok() { *phase.borrow() } else { Phase::Stopping };
                            if now_phase == Phase::Stopping {
                                return End::Shutdown;
                            }
                            if !draining {
                                draining = true;
                                if session.handle_shutdown(out) == Step::Close {
                                    closing = Some(End::Shutdown);
                                    break (Ok(0), BytesMut::new());
                                }
                            }
                        }
                    }
                };
                if write_pending {
                    // Closing with replies still on their way: let them finish first (a lost
                    // `250` would make the client send its message again).
                    let finish = tokio::time::timeout_at(
                        write_deadline.unwrap_or_else(tokio::time::Instant::now),
                        &mut write,
                    );
                    match finish.await {
                        Ok(Some((Ok(()), sent))) => self.scratch = sent,
                        _ => return End::WriteError,
                    }
                }
                done
            };
            if closing.is_some() {
                // The timeout or shutdown reply is in `out`; the loop top sends it. The read
                // in flight was cancelled with its buffer.
                if self.large {
                    self.shard.give_large(BytesMut::new());
                    self.large = false;
                }
                self.buf = BytesMut::with_capacity(SMALL_BUFFER);
                continue;
            }
            self.buf = buf;
            match result {
                Ok(0) => return End::PeerClosed,
                Ok(n) => self.bytes += n as u64,
                Err(_) => return End::ReadError,
            }
            if let Some(end) = self.process(session, out).await {
                // The last replies (221, 421) go out at the loop top, then the session ends.
                closing = Some(if draining { End::Shutdown } else { end });
            }
            if std::mem::take(&mut self.start_tls) {
                if let Err(end) = self.start_tls(stream, session, out).await {
                    return end;
                }
                // The client may have sent its first command right behind its Finished.
                if !self.buf.is_empty() {
                    if let Some(end) = self.process(session, out).await {
                        closing = Some(if draining { End::Shutdown } else { end });
                    }
                }
            }
        }
    }

    /// After `220 Ready to start TLS` is in `out`: sends it, drops any input that followed
    /// STARTTLS (CVE-2011-0411; the session consumed it already), runs the handshake within
    /// its deadline and tells the session. A failure ends the connection.
    async fn start_tls(
        &mut self,
        stream: &D::Stream,
        session: &mut Session,
        out: &mut Output,
    ) -> Result<(), End> {
        let store = self.shard.tls.as_ref().ok_or(End::TlsFailed)?;
        let write_timeout = self.shard.session_config.command_timeout;
        let mut replies = std::mem::take(&mut self.scratch);
        replies.clear();
        std::mem::swap(&mut replies, &mut out.replies);
        let write = D::write_all(stream, replies);
        match tokio::time::timeout(write_timeout, write).await {
            Ok((Ok(()), sent)) => self.scratch = sent,
            _ => return Err(End::WriteError),
        }
        debug_assert!(self.buf.is_empty(), "input after STARTTLS left unconsumed");
        self.buf.clear();
        let timeout = self.shard.config.tls_handshake_timeout;
        match TlsStream::accept::<D>(stream, store.current(), &mut self.buf, timeout).await {
            Ok(tls) => {
                let facts = tls.facts();
                log_debug!(
                    "{}: TLS established, {} with {}",
                    self.peer,
                    facts.version,
                    facts.cipher
                );
                session.handle_tls_established(facts, Instant::now());
                self.tls = Some(tls);
                Ok(())
            }
            Err(e) => {
                log_info!("{}: TLS handshake failed: {e}", self.peer);
                Err(End::TlsFailed)
            }
        }
    }

    /// Feeds the received bytes to the session and carries out its steps. Returns `Some` when
    /// the session is over (its last replies are in `out`).
    async fn process(&mut self, session: &mut Session, out: &mut Output) -> Option<End> {
        let mut pos = 0;
        let now = Instant::now();
        let end = loop {
            let (n, step) = session.handle_input(&self.buf[pos..], now, out);
            if !out.body.is_empty() {
                self.write_body(session, &out.body, pos).await;
                out.body.clear();
            }
            pos += n;
            match step {
                Step::Read => break None,
                Step::Store => {
                    let result = self.store(session).await;
                    let step = match &result {
                        Ok(id) => session.handle_stored(Ok(id.as_str()), out),
                        Err(()) => session.handle_stored(Err(()), out),
                    };
                    if step == Step::Close {
                        break Some(End::Shutdown);
                    }
                }
                Step::Discard => self.discard().await,
                Step::Close => break Some(End::Closed),
                Step::StartTls => {
                    self.start_tls = true;
                    break None;
                }
            }
        };
        self.buf.advance(pos);
        end
    }

    /// Writes the parts the session just produced (ranges of `buf[base..]`) to the draft,
    /// starting the draft first if this is the message's first data.
    async fn write_body(&mut self, session: &Session, parts: &[proto::Part], base: usize) {
        let Some(spool) = &self.shard.spool else {
            return;
        };
        if self.draft.is_none() {
            if self.failed {
                return;
            }
            self.begin(session).await;
        }
        if let Some(draft) = &mut self.draft {
            let buf = std::mem::take(&mut self.buf);
            self.buf = spool.append(draft, parts, base, buf).await;
        }
    }

    /// Creates the spool file for the current message; a failure is remembered for a 451.
    async fn begin(&mut self, session: &Session) {
        let Some(spool) = &self.shard.spool else {
            return;
        };
        let id = self.shard.next_id();
        let scratch = std::mem::take(&mut self.scratch);
        let (draft, scratch) = spool
            .begin(id, &session.envelope(), self.peer.ip(), scratch)
            .await;
        self.scratch = scratch;
        match draft {
            Ok(draft) => self.draft = Some(draft),
            Err(e) => {
                log_info!("{}: spool file not created: {e}", self.peer);
                self.failed = true;
            }
        }
    }

    /// Makes the message durable; returns its queue ID or `Err` for a 451.
    async fn store(&mut self, session: &Session) -> Result<crate::spool::QueueId, ()> {
        let Some(spool) = &self.shard.spool else {
            // Discard delivery: accepted and dropped, but still given an ID.
            return Ok(self.shard.next_id());
        };
        if self.draft.is_none() && !self.failed {
            self.begin(session).await;
        }
        self.failed = false;
        let Some(draft) = self.draft.take() else {
            return Err(());
        };
        spool
            .commit(draft)
            .await
            .map_err(|e| log_info!("{}: message not stored: {e}", self.peer))
    }

    /// Drops the message in progress.
    async fn discard(&mut self) {
        self.failed = false;
        if let (Some(spool), Some(draft)) = (&self.shard.spool, self.draft.take()) {
            spool.abort(draft).await;
        }
    }

    /// Gives the connection a large buffer while data flows, a small one otherwise.
    fn size_buffer(&mut self, data: bool) {
        if data && !self.large {
            if let Some(mut large) = self.shard.take_large() {
                large.extend_from_slice(&self.buf);
                self.buf = large;
                self.large = true;
            }
        } else if !data && self.large && self.buf.len() <= SMALL_BUFFER / 2 {
            let mut small = BytesMut::with_capacity(SMALL_BUFFER);
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

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
