//! An in-memory driver for the session: feeds bytes, obeys each `Step` like the real drivers
//! do, and keeps the replies and the stored messages. Used by the transcript and property
//! tests, the fuzz targets and the session benchmark; it does no I/O.
//!
//! Like the real drivers it renders a message's trace headers at `Step::Begin`, when the
//! sink's file is created, so a test can check that the headers name every recipient that got
//! `250`, however the input was split.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::trace::{write_trace, Trace};
use super::{Config, Output, Part, Session, Step, StoreError};

/// The client address written in the simulated trace headers.
pub const SIM_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

/// A session wired to an in-memory spool.
pub struct Sim {
    pub session: Session,
    out: Output,
    /// Input received but not yet consumed (a partial command line).
    pending: Vec<u8>,
    /// Every reply byte sent, in order.
    pub replies: Vec<u8>,
    /// Every stored message's data, in order (unless `keep_messages` is off).
    pub messages: Vec<Vec<u8>>,
    /// Every stored message's trace headers, rendered when its file would have been created.
    pub headers: Vec<Vec<u8>>,
    /// Every stored message's recipients as the session's envelope held them at the store.
    pub recipients: Vec<Vec<String>>,
    /// The trace headers of the message being received, once begun.
    current_headers: Option<Vec<u8>>,
    /// The message being received (its bytes when `keep_messages`, and its length).
    current: Vec<u8>,
    current_len: u64,
    /// Keep message bytes (off for benchmarks, which only count them).
    pub keep_messages: bool,
    /// Data bytes stored in all.
    pub stored_bytes: u64,
    /// Messages stored in all.
    pub stored_count: u64,
    /// Make the next store fail (as a full disk would).
    pub fail_next_store: bool,
    /// The session asked to close.
    pub closed: bool,
    /// A message was begun (`Step::Begin`) and not yet stored or discarded.
    open: bool,
    /// Most reply bytes ever waiting at once.
    pub replies_waiting_max: usize,
    now: Instant,
    id: [u8; 8],
}

impl Sim {
    /// A simulated connection that has been greeted.
    pub fn new(config: Config) -> Sim {
        let now = Instant::now();
        let session = Session::new(Arc::new(config), now);
        let mut sim = Sim {
            session,
            out: Output::new(),
            pending: Vec::new(),
            replies: Vec::new(),
            messages: Vec::new(),
            headers: Vec::new(),
            recipients: Vec::new(),
            current_headers: None,
            current: Vec::new(),
            current_len: 0,
            keep_messages: true,
            stored_bytes: 0,
            stored_count: 0,
            fail_next_store: false,
            closed: false,
            open: false,
            replies_waiting_max: 0,
            now,
            id: *b"00000000",
        };
        sim.session.greeting(&mut sim.out);
        sim.flush();
        sim
    }

    /// Delivers `bytes` as one read.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.closed {
            return;
        }
        self.pending.extend_from_slice(bytes);
        let mut pos = 0;
        loop {
            let (n, step) =
                self.session
                    .handle_input(&self.pending[pos..], self.now, &mut self.out);
            self.take_body(pos);
            pos += n;
            self.replies_waiting_max = self.replies_waiting_max.max(self.out.replies.len());
            match step {
                Step::Read if self.out.replies_full() => {
                    // Replies full: send them, then feed the rest again.
                    self.flush();
                }
                Step::Read => break,
                Step::Begin => {
                    assert!(!self.open, "Step::Begin while a message is open");
                    self.open = true;
                    self.begin();
                }
                Step::Store => {
                    assert!(self.open, "Step::Store without Step::Begin");
                    self.next_id();
                    let ok = !std::mem::take(&mut self.fail_next_store);
                    if ok {
                        self.stored_count += 1;
                        self.stored_bytes += self.current_len;
                        if self.keep_messages {
                            self.messages.push(std::mem::take(&mut self.current));
                            self.headers
                                .push(self.current_headers.take().unwrap_or_default());
                            let envelope = self.session.envelope();
                            self.recipients
                                .push(envelope.recipients().map(str::to_owned).collect());
                        }
                    }
                    self.discard();
                    let id = std::str::from_utf8(&self.id).unwrap_or("0");
                    let result = if ok { Ok(id) } else { Err(StoreError::Failed) };
                    if self.session.handle_stored(result, &mut self.out) == Step::Close {
                        self.closed = true;
                        break;
                    }
                }
                Step::Discard => self.discard(),
                Step::Close => {
                    self.discard();
                    self.closed = true;
                    break;
                }
            }
        }
        self.pending.drain(..pos);
        self.flush();
    }

    /// Fires the session's deadline.
    pub fn timeout(&mut self) {
        if let Some(deadline) = self.session.deadline() {
            if self.session.handle_timeout(deadline, &mut self.out) == Step::Close {
                self.closed = true;
                self.discard();
            }
        }
        self.flush();
    }

    /// Starts a graceful shutdown.
    pub fn shutdown(&mut self) {
        if self.session.handle_shutdown(&mut self.out) == Step::Close {
            self.closed = true;
        }
        self.flush();
    }

    /// The replies sent so far as text, then forgets them.
    pub fn take_replies(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.replies)).into_owned()
    }

    /// Appends the body parts of the last call (ranges of `pending[base..]`).
    fn take_body(&mut self, base: usize) {
        assert!(
            self.out.body.is_empty() || self.open,
            "message data without Step::Begin"
        );
        if self.keep_messages {
            for part in &self.out.body {
                match part {
                    Part::Input(r) => self
                        .current
                        .extend_from_slice(&self.pending[base + r.start..base + r.end]),
                    Part::Static(s) => self.current.extend_from_slice(s),
                }
            }
        }
        for part in &self.out.body {
            self.current_len += match part {
                Part::Input(r) => r.len(),
                Part::Static(s) => s.len(),
            } as u64;
        }
        self.out.body.clear();
    }

    /// "Begins" the message in the sink: renders its trace headers from the envelope as it
    /// is now, as the real drivers do.
    fn begin(&mut self) {
        if !self.keep_messages {
            return;
        }
        let mut id = self.id;
        Self::increment(&mut id);
        let mut headers = Vec::new();
        let envelope = self.session.envelope();
        let trace = Trace {
            envelope: &envelope,
            peer: SIM_CLIENT,
            hostname: "sim.example",
            id: std::str::from_utf8(&id).unwrap_or("0"),
            now: DateTime::<Utc>::UNIX_EPOCH,
            tls: None,
        };
        write_trace(&mut headers, &trace);
        self.current_headers = Some(headers);
    }

    /// Forgets the message being received.
    fn discard(&mut self) {
        self.open = false;
        self.current.clear();
        self.current_len = 0;
        self.current_headers = None;
    }

    /// "Sends" the replies.
    fn flush(&mut self) {
        self.replies.extend_from_slice(&self.out.replies);
        self.out.replies.clear();
    }

    /// A new queue ID (8 decimal digits).
    fn next_id(&mut self) {
        Self::increment(&mut self.id);
    }

    /// Counts an 8-digit decimal ID up by one.
    fn increment(id: &mut [u8; 8]) {
        for d in id.iter_mut().rev() {
            if *d == b'9' {
                *d = b'0';
            } else {
                *d += 1;
                break;
            }
        }
    }
}
