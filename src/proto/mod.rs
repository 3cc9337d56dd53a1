//! The SMTP session: a deterministic state machine with no I/O, no clock and no io_uring.
//!
//! Inputs are `handle_*` calls (bytes received, the spool's verdict, a timeout, shutdown) with
//! the current time passed in; outputs go to an `Output` the driver owns and reuses: reply
//! bytes to send, and the message data as `Part`s — ranges of the very input slice the driver
//! passed in, so message bytes reach the spool file without being copied. A `Step` tells the
//! driver what to do next. Every reply of RFC 5321 with its RFC 3463 enhanced code, the EHLO
//! extensions of SPEC §4.1, BDAT, both bare-LF modes and every client-controlled limit live
//! here, so all of it is testable byte by byte (see `tests.rs`).
//!
//! In steady state a session allocates nothing per message: the envelope's strings, the
//! recipient list and the caller's output buffers keep their capacity between transactions.
//! The trace headers a stored message starts with are rendered by `trace`, also without I/O.
//!
//! Hostile-client rules enforced here (SPEC §4.1): commands out of order (mail before HELO/
//! EHLO, RCPT after the first BDAT chunk) get `503 5.5.1`; ESMTP extensions exist only after
//! EHLO; a BDAT line whose size cannot be read closes the session (the chunk cannot be
//! framed); another protocol's verb (`GET`, `POST`...) gets `421 4.7.0` and close; repeated
//! HELO/EHLO and empty non-LAST chunks count as junk, recipients far past the limit as errors.

pub mod command;
mod idna2008;
mod reply;
#[doc(hidden)]
pub mod sim;
pub mod trace;

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::envelope::Recipients;
use crate::scan::{self, DataScanner, Line, Scan};
pub use crate::scan::{BareLf, Part};
use command::{Bad, Command};
pub use trace::TlsFacts;

/// The settings a session obeys; built once by the server's configuration and shared.
#[derive(Clone, Debug)]
pub struct Config {
    /// Name in the greeting, the EHLO reply and 421 replies.
    pub hostname: String,
    /// Largest message accepted, in bytes of unstuffed data (advertised as SIZE).
    pub max_message_size: u64,
    /// Recipients per transaction.
    pub max_recipients: usize,
    /// Client errors tolerated in a session; the next one gets 421 4.7.0.
    pub max_errors: u32,
    /// NOOP/RSET/VRFY/HELP, repeated HELO/EHLO and empty non-LAST BDAT chunks tolerated
    /// between two delivered messages; the next gets 421 4.7.0.
    pub max_junk_commands: u32,
    /// Recipient domains accepted (lowercase); empty accepts all.
    pub domains: Vec<String>,
    /// What a bare LF or bare CR in data (and a bare LF ending a command) means.
    pub bare_lf: BareLf,
    /// Idle time allowed while waiting for a command.
    pub command_timeout: Duration,
    /// Idle time allowed between reads of message data; also the base of the data deadline.
    pub data_timeout: Duration,
    /// Bytes per second of extra data deadline (Postfix smtpd_min_data_rate); 0 disables.
    pub min_data_rate: u64,
    /// A certificate is loaded and TLS is not turned off: EHLO offers STARTTLS.
    pub starttls: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            hostname: "localhost".to_string(),
            max_message_size: 26_214_400,
            max_recipients: 100,
            max_errors: 10,
            max_junk_commands: 100,
            domains: Vec::new(),
            bare_lf: BareLf::Reject,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            min_data_rate: 500,
            starttls: false,
        }
    }
}

/// Reply bytes that may wait in `Output::replies`: once they come within one command's
/// replies of it (`Output::replies_full`) the session consumes no more input until the driver
/// has sent them, so no client can make a connection hold more reply memory than this however
/// many commands it pipelines — and the buffer never grows past it.
pub const REPLY_BUFFER_MAX: usize = 16 * 1024;

/// The most reply bytes one command line can produce (the EHLO reply is the longest).
const COMMAND_REPLIES_MAX: usize = 1024;

/// The buffers a session writes into; owned by the driver and reused for the whole session.
#[derive(Debug, Default)]
pub struct Output {
    /// Reply bytes to send, in order.
    pub replies: Vec<u8>,
    /// Message data produced by the last `handle_input` call, as parts of its input.
    pub body: Vec<Part>,
}

impl Output {
    /// True when the replies waiting are within one command's replies of `REPLY_BUFFER_MAX`:
    /// send them before feeding more input.
    pub fn replies_full(&self) -> bool {
        self.replies.len() + COMMAND_REPLIES_MAX > REPLY_BUFFER_MAX
    }

    /// Empty output buffers with room for typical replies and data.
    pub fn new() -> Output {
        Output {
            replies: Vec::with_capacity(1024),
            body: Vec::with_capacity(64),
        }
    }
}

/// What the driver must do after a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write `out.body` to the open message (if any), send the replies, read more input —
    /// unless `out.replies_full()`: then send the replies first and
    /// feed the rest of the input again before reading.
    Read,
    /// A message begins (DATA was accepted, or the first BDAT chunk): begin it in the sink
    /// with its trace headers, rendered from `envelope()`, then feed the rest of the input.
    /// The envelope does not change until the message is stored or discarded.
    Begin,
    /// The message is complete: write `out.body`, make the message durable, then call
    /// `handle_stored` before feeding the rest of the input.
    Store,
    /// The message in progress is refused (its reply is already written): remove any spool
    /// file begun for it, then feed the rest of the input.
    Discard,
    /// Send the replies, then close the connection (remove any unfinished spool file).
    Close,
    /// Send the replies (`220 Ready to start TLS`), drop any input after the STARTTLS line
    /// (already consumed: RFC 3207 and CVE-2011-0411), run the TLS handshake, then call
    /// `handle_tls_established`.
    StartTls,
}

/// Why a message handed over with `Step::Store` was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Storage failed (disk full, I/O error, no acknowledgement): `451 4.3.0`.
    Failed,
    /// The stored form would be larger than the sink takes: `552 5.3.4`.
    TooBig,
}

/// Where the session is in the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for a command line.
    Command,
    /// Dropping the rest of a command line over the length limit.
    DrainLine,
    /// Receiving DATA bytes up to CRLF `.` CRLF.
    Data,
    /// Receiving a BDAT chunk of `remaining` bytes; `fail` is the reply when the chunk is being
    /// skipped (RFC 3030 says a refused chunk is still read).
    Bdat {
        size: u64,
        remaining: u64,
        last: bool,
        fail: Option<Refusal>,
    },
    /// The message is complete and the driver is storing it.
    Storing,
    /// `220 Ready to start TLS` was sent; the driver is running the handshake.
    TlsHandshake,
    /// The session is over.
    Closed,
}

/// Why a BDAT chunk is skipped (its reply follows the chunk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// No HELO/EHLO yet.
    NeedHelo,
    /// Plain HELO: CHUNKING was never offered.
    NeedEhlo,
    NeedMail,
    NeedRcpt,
    TooBig,
    /// The BDAT line ended in a bare LF (reject mode): refused like any such command, but its
    /// chunk is still framed and skipped so no chunk byte is read as a command.
    BareLf,
}

/// What the client said to open the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hello {
    /// Nothing yet: mail commands are out of sequence.
    None,
    /// Plain HELO: RFC 5321 SMTP without extensions.
    Helo,
    /// EHLO: the extensions of SPEC §4.1.
    Ehlo,
}

/// RCPT commands a transaction may send past `max_recipients` before each further one also
/// counts as an error (as Postfix's `smtpd_recipient_overshoot_limit`): a client that keeps
/// sending recipients after `452` is not delivering mail, it is using the server.
pub const RCPT_OVERSHOOT: usize = 1000;

/// The current mail transaction's envelope, with buffers kept across transactions.
#[derive(Debug, Default)]
struct Transaction {
    /// MAIL was accepted.
    active: bool,
    sender: String,
    /// All recipients back to back; `rcpt_ends[i]` is where recipient `i` ends.
    rcpt_text: String,
    rcpt_ends: Vec<usize>,
    smtputf8: bool,
    /// Unstuffed data bytes accepted so far.
    data_bytes: u64,
    /// The data went over the size limit; the rest is read and dropped.
    too_big: bool,
    /// A BDAT chunk was taken (DATA and RCPT are now out of sequence).
    bdat: bool,
    /// RCPT commands seen in this transaction (accepted or not), for `RCPT_OVERSHOOT`.
    rcpt_commands: usize,
}

impl Transaction {
    /// Forgets the transaction, keeping the buffers' capacity.
    fn reset(&mut self) {
        self.active = false;
        self.sender.clear();
        self.rcpt_text.clear();
        self.rcpt_ends.clear();
        self.smtputf8 = false;
        self.data_bytes = 0;
        self.too_big = false;
        self.bdat = false;
        self.rcpt_commands = 0;
    }
}

/// A read-only view of the envelope of the message being stored.
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'a> {
    /// The HELO/EHLO name ("" if the client sent none).
    pub helo: &'a str,
    /// The reverse-path as written ("" for the null sender).
    pub sender: &'a str,
    /// RFC 3848 / RFC 6531 protocol name for the Received header.
    pub protocol: &'static str,
    rcpt_text: &'a str,
    rcpt_ends: &'a [usize],
}

impl<'a> Envelope<'a> {
    /// Recipients in RCPT order, each exactly as the client wrote it.
    pub fn recipients(&self) -> impl Iterator<Item = &'a str> + 'a {
        let text = self.rcpt_text;
        let ends = self.rcpt_ends;
        (0..ends.len()).map(move |i| &text[if i == 0 { 0 } else { ends[i - 1] }..ends[i]])
    }

    /// Number of recipients.
    pub fn recipient_count(&self) -> usize {
        self.rcpt_ends.len()
    }

    /// The recipients as a plain view for delivery.
    pub fn recipient_list(&self) -> Recipients<'a> {
        Recipients::new(self.rcpt_text, self.rcpt_ends)
    }
}

/// One SMTP server session.
#[derive(Debug)]
pub struct Session {
    config: Arc<Config>,
    state: State,
    helo: String,
    hello: Hello,
    txn: Transaction,
    scanner: DataScanner,
    errors: u32,
    junk: u32,
    /// Time of the last input (or of the session's start).
    last_input: Instant,
    /// The start of the current DATA/BDAT transfer plus the data timeout, and the bytes received
    /// in it (for the minimum data rate deadline, which each byte received moves on).
    transfer_stop: Instant,
    transfer_bytes: u64,
    shutting_down: bool,
    messages_stored: u64,
    /// Set once the TLS handshake completed (STARTTLS); never cleared.
    tls: Option<TlsFacts>,
}

impl Session {
    /// A new session for a connection accepted at `now`.
    pub fn new(config: Arc<Config>, now: Instant) -> Session {
        let scanner = DataScanner::new(config.bare_lf);
        Session {
            config,
            state: State::Command,
            helo: String::new(),
            hello: Hello::None,
            txn: Transaction::default(),
            scanner,
            errors: 0,
            junk: 0,
            last_input: now,
            transfer_stop: now,
            transfer_bytes: 0,
            shutting_down: false,
            messages_stored: 0,
            tls: None,
        }
    }

    /// Writes the `220` greeting.
    pub fn greeting(&self, out: &mut Output) {
        push_all(
            &mut out.replies,
            &[
                b"220 ",
                self.config.hostname.as_bytes(),
                b" ESMTP ringmx\r\n",
            ],
        );
    }

    /// Refuses a client that talked before the greeting (`554 5.5.1`); the session is over.
    pub fn reject_early_talker(&mut self, out: &mut Output) -> Step {
        out.replies.extend_from_slice(reply::EARLY_TALKER);
        self.state = State::Closed;
        Step::Close
    }

    /// True while message data (DATA or a BDAT chunk) is being received.
    pub fn receiving_data(&self) -> bool {
        matches!(self.state, State::Data | State::Bdat { .. })
    }

    /// Messages stored in this session so far.
    pub fn messages_stored(&self) -> u64 {
        self.messages_stored
    }

    /// The envelope of the current transaction.
    pub fn envelope(&self) -> Envelope<'_> {
        // SMTPUTF8 can only be set after EHLO (MAIL parameters need it); the check is kept
        // so a HELO session can never be stamped UTF8SMTP.
        let protocol = match (self.hello, self.txn.smtputf8) {
            (Hello::Ehlo, true) => "UTF8SMTP",
            (Hello::Ehlo, false) => "ESMTP",
            (Hello::Helo | Hello::None, _) => "SMTP",
        };
        Envelope {
            helo: &self.helo,
            sender: &self.txn.sender,
            protocol,
            rcpt_text: &self.txn.rcpt_text,
            rcpt_ends: &self.txn.rcpt_ends,
        }
    }

    /// When the session times out if no input arrives; `None` while the driver is storing.
    pub fn deadline(&self) -> Option<Instant> {
        let config = &self.config;
        match self.state {
            State::Command | State::DrainLine => Some(self.last_input + config.command_timeout),
            State::Data | State::Bdat { .. } => {
                let idle = self.last_input + config.data_timeout;
                if config.min_data_rate == 0 {
                    return Some(idle);
                }
                let earned = Duration::from_secs(self.transfer_bytes / config.min_data_rate);
                Some(idle.min(self.transfer_stop + earned))
            }
            State::Storing | State::Closed | State::TlsHandshake => None,
        }
    }

    /// The TLS facts, once the session runs inside TLS.
    pub fn tls(&self) -> Option<TlsFacts> {
        self.tls
    }

    /// Reports that the TLS handshake after `Step::StartTls` completed. The session starts
    /// over (RFC 3207 4.2): the client must send EHLO again, which no longer offers STARTTLS.
    pub fn handle_tls_established(&mut self, facts: TlsFacts, now: Instant) {
        debug_assert_eq!(
            self.state,
            State::TlsHandshake,
            "handle_tls_established without Step::StartTls"
        );
        self.tls = Some(facts);
        self.helo.clear();
        self.hello = Hello::None;
        self.txn.reset();
        self.last_input = now;
        self.state = State::Command;
    }

    /// Reports that the deadline passed: `421 4.4.2` and close. Returns `Step::Read` if the
    /// deadline has not in fact passed (a spurious wake-up).
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Output) -> Step {
        match self.deadline() {
            Some(deadline) if now >= deadline => {
                let _ = write!(
                    out.replies,
                    "{}{}{}",
                    reply::TIMEOUT.0,
                    self.config.hostname,
                    reply::TIMEOUT.1
                );
                self.state = State::Closed;
                Step::Close
            }
            _ => Step::Read,
        }
    }

    /// Begins a graceful shutdown: a session idle between transactions is answered
    /// `421 4.3.2` at once (`Step::Close`); one in a transaction may finish it and gets the 421
    /// at its next command boundary after that.
    pub fn handle_shutdown(&mut self, out: &mut Output) -> Step {
        self.shutting_down = true;
        if self.state == State::Command && !self.txn.active {
            self.close_shutting_down(out)
        } else {
            Step::Read
        }
    }

    /// Ends the session at the end of the shutdown grace, whatever it was doing: `421 4.3.2`.
    pub fn handle_stop(&mut self, out: &mut Output) -> Step {
        self.shutting_down = true;
        if self.state == State::Closed {
            return Step::Close;
        }
        self.close_shutting_down(out)
    }

    /// Reports the sink's verdict on the message after `Step::Store`: `Ok(queue_id)` once it
    /// is durable (`250`), else `451 4.3.0` or `552 5.3.4` as the error says.
    pub fn handle_stored(&mut self, result: Result<&str, StoreError>, out: &mut Output) -> Step {
        debug_assert_eq!(
            self.state,
            State::Storing,
            "handle_stored without Step::Store"
        );
        match result {
            Ok(id) => {
                out.replies.extend_from_slice(reply::QUEUED);
                out.replies.extend_from_slice(id.as_bytes());
                out.replies.extend_from_slice(b"\r\n");
                self.messages_stored += 1;
                self.errors = 0;
                self.junk = 0;
            }
            Err(StoreError::Failed) => out.replies.extend_from_slice(reply::SPOOL_FAILED),
            Err(StoreError::TooBig) => out.replies.extend_from_slice(reply::TOO_BIG),
        }
        self.txn.reset();
        self.state = State::Command;
        if self.shutting_down {
            return self.close_shutting_down(out);
        }
        Step::Read
    }

    /// Feeds received bytes. Returns how many bytes of `input` were consumed (the driver keeps
    /// the rest, a partial command line, for the next call) and what to do next. `out.body`
    /// receives the message data found in `input`; the caller clears it after use.
    pub fn handle_input(&mut self, input: &[u8], now: Instant, out: &mut Output) -> (usize, Step) {
        if !input.is_empty() {
            self.last_input = now;
        }
        let mut pos = 0;
        loop {
            match self.state {
                State::Closed => return (pos, Step::Close),
                State::Storing => {
                    debug_assert!(false, "handle_input while the message is being stored");
                    return (pos, Step::Store);
                }
                State::TlsHandshake => {
                    debug_assert!(false, "handle_input during the TLS handshake");
                    return (input.len(), Step::StartTls);
                }
                State::DrainLine => {
                    let (n, found) = scan::drain_line(&input[pos..]);
                    pos += n;
                    if !found {
                        return (pos, Step::Read);
                    }
                    self.state = State::Command;
                    if let Some(step) = self.client_error(reply::LINE_TOO_LONG, out) {
                        return (pos, step);
                    }
                }
                State::Command if out.replies_full() => {
                    return (pos, Step::Read);
                }
                State::Command => match scan::split_line(&input[pos..]) {
                    Line::Partial => return (pos, Step::Read),
                    Line::TooLong { consumed } => {
                        let start = &input[pos..pos + consumed];
                        if command::is_foreign(start) {
                            return (pos + consumed, self.close_foreign(out));
                        }
                        if command::is_bdat(start) {
                            // A BDAT line too long to keep has no size to trust.
                            return (pos + consumed, self.close_unreadable_chunk(out));
                        }
                        pos += consumed;
                        self.state = State::DrainLine;
                    }
                    Line::Complete {
                        text,
                        consumed,
                        bare_lf,
                    } => {
                        let line = &input[pos + text.start..pos + text.end];
                        pos += consumed;
                        let step = if command::is_foreign(line) {
                            Some(self.close_foreign(out))
                        } else if bare_lf && self.config.bare_lf == BareLf::Reject {
                            self.bare_lf_command(line, now, out)
                        } else {
                            self.command(line, now, out)
                        };
                        if step == Some(Step::StartTls) {
                            // Whatever followed STARTTLS in this input is dropped unread.
                            return (input.len(), Step::StartTls);
                        }
                        if let Some(step) = step {
                            return (pos, step);
                        }
                    }
                },
                State::Data => {
                    let before = out.body.len();
                    let scan = self.scanner.scan(&input[pos..], pos, &mut out.body);
                    let end = match scan {
                        Scan::More => input.len(),
                        Scan::End(n) => pos + n,
                    };
                    self.transfer_bytes += (end - pos) as u64;
                    self.account_data(before, out);
                    pos = end;
                    if let Scan::End(_) = scan {
                        return (pos, self.end_of_data(out));
                    }
                    return (pos, Step::Read);
                }
                State::Bdat {
                    size,
                    remaining,
                    last,
                    fail,
                } => {
                    let take = remaining.min((input.len() - pos) as u64) as usize;
                    if take == 0 && remaining > 0 {
                        return (pos, Step::Read);
                    }
                    if fail.is_none() && take > 0 {
                        debug_assert!(self.txn.active && self.txn.bdat);
                        out.body.push(Part::Input(pos..pos + take));
                        self.txn.data_bytes += take as u64;
                    }
                    self.transfer_bytes += take as u64;
                    pos += take;
                    let remaining = remaining - take as u64;
                    if remaining > 0 {
                        self.state = State::Bdat {
                            size,
                            remaining,
                            last,
                            fail,
                        };
                        return (pos, Step::Read);
                    }
                    self.state = State::Command;
                    if let Some(step) = self.end_of_chunk(size, last, fail, out) {
                        return (pos, step);
                    }
                }
            }
        }
    }

    /// Checks the data parts just added against the size limit; past it, drops them and marks
    /// the message too big (the rest is still read up to its end).
    fn account_data(&mut self, from: usize, out: &mut Output) {
        if self.txn.too_big {
            out.body.truncate(from);
            return;
        }
        let added: usize = out.body[from..]
            .iter()
            .map(|part| match part {
                Part::Input(r) => r.len(),
                Part::Static(s) => s.len(),
            })
            .sum();
        self.txn.data_bytes += added as u64;
        if self.txn.data_bytes > self.config.max_message_size {
            self.txn.too_big = true;
            out.body.truncate(from);
        }
    }

    /// Answers the end of DATA: refuse (too big, bare line endings) or hand over for storage.
    fn end_of_data(&mut self, out: &mut Output) -> Step {
        let refusal = if self.txn.too_big {
            Some(reply::TOO_BIG)
        } else if self.scanner.saw_bare_line_ending() {
            Some(reply::BARE_LF_DATA)
        } else {
            None
        };
        match refusal {
            Some(text) => {
                self.txn.reset();
                self.state = State::Command;
                self.client_error(text, out).unwrap_or(Step::Discard)
            }
            None => {
                self.state = State::Storing;
                Step::Store
            }
        }
    }

    /// Answers the end of a BDAT chunk.
    fn end_of_chunk(
        &mut self,
        size: u64,
        last: bool,
        fail: Option<Refusal>,
        out: &mut Output,
    ) -> Option<Step> {
        if let Some(why) = fail {
            let text = match why {
                Refusal::NeedHelo => reply::NEED_HELO,
                Refusal::NeedEhlo => reply::BDAT_NEEDS_EHLO,
                Refusal::NeedMail => reply::NEED_MAIL,
                Refusal::NeedRcpt => reply::NEED_RCPT,
                Refusal::TooBig => reply::TOO_BIG,
                Refusal::BareLf => reply::BARE_LF_COMMAND,
            };
            let had_data = self.txn.bdat;
            // A message that lost a chunk can never be stored: its transaction ends.
            if why == Refusal::TooBig || (why == Refusal::BareLf && had_data) {
                self.txn.reset();
            }
            if let Some(step) = self.client_error(text, out) {
                return Some(step);
            }
            return had_data.then_some(Step::Discard);
        }
        if last {
            self.state = State::Storing;
            return Some(Step::Store);
        }
        if size == 0 {
            // An empty non-LAST chunk moves no mail: junk (SPEC §3).
            if let Some(step) = self.junk_command(out) {
                return Some(step);
            }
        }
        out.replies.extend_from_slice(b"250 2.0.0 Ok: ");
        push_decimal(&mut out.replies, size);
        out.replies.extend_from_slice(b" octets received\r\n");
        None
    }

    /// Answers a command line ended by a bare LF in reject mode: `500 5.5.2`, not run. A BDAT
    /// line is still framed — a readable size has its chunk skipped before the reply, an
    /// unreadable one closes the session — so no chunk byte is ever read as a command.
    fn bare_lf_command(&mut self, line: &[u8], now: Instant, out: &mut Output) -> Option<Step> {
        match command::parse(line, true) {
            Ok(Command::Bdat { size, last }) => {
                self.start_chunk(size, last, Some(Refusal::BareLf), now)
            }
            Err(Bad::Chunk) => Some(self.close_unreadable_chunk(out)),
            _ => self.client_error(reply::BARE_LF_COMMAND, out),
        }
    }

    /// Enters the BDAT state for a chunk of `size` bytes (skipped if `fail`). Returns
    /// `Step::Begin` when this is the first chunk taken for the message.
    fn start_chunk(
        &mut self,
        size: u64,
        last: bool,
        fail: Option<Refusal>,
        now: Instant,
    ) -> Option<Step> {
        let first = !self.txn.bdat;
        if first {
            // The first chunk of a message starts its data deadline.
            self.transfer_stop = now + self.config.data_timeout;
            self.transfer_bytes = 0;
        }
        self.txn.bdat |= fail.is_none();
        self.state = State::Bdat {
            size,
            remaining: size,
            last,
            fail,
        };
        (first && fail.is_none()).then_some(Step::Begin)
    }

    /// Runs one command line. Returns a step when the driver must act before going on.
    fn command(&mut self, line: &[u8], now: Instant, out: &mut Output) -> Option<Step> {
        // Before any HELO/EHLO a parameter is parsed as usual (the command is refused with
        // 503 anyway); after plain HELO no extension, so no parameter, exists.
        let command = match command::parse(line, self.hello != Hello::Helo) {
            Ok(command) => command,
            Err(Bad::Chunk) => return Some(self.close_unreadable_chunk(out)),
            Err(bad) => {
                if self.shutting_down && !self.txn.active {
                    return Some(self.close_shutting_down(out));
                }
                return self.bad_command(bad, out);
            }
        };
        if self.shutting_down && !self.txn.active && !matches!(command, Command::Quit) {
            return Some(self.close_shutting_down(out));
        }
        if self.hello == Hello::None
            && matches!(
                command,
                Command::Mail { .. } | Command::Rcpt { .. } | Command::Data
            )
        {
            return self.client_error(reply::NEED_HELO, out);
        }
        match command {
            Command::Helo(name) | Command::Ehlo(name) => {
                if self.hello != Hello::None {
                    // Only the first greeting is free (SPEC §3).
                    if let Some(step) = self.junk_command(out) {
                        return Some(step);
                    }
                }
                self.hello = if matches!(command, Command::Ehlo(_)) {
                    Hello::Ehlo
                } else {
                    Hello::Helo
                };
                self.helo.clear();
                self.helo.push_str(name);
                let had_data = self.txn.bdat;
                self.txn.reset();
                let host = &self.config.hostname;
                if self.hello == Hello::Ehlo {
                    push_all(
                        &mut out.replies,
                        &[b"250-", host.as_bytes(), b"\r\n250-PIPELINING\r\n250-SIZE "],
                    );
                    push_decimal(&mut out.replies, self.config.max_message_size);
                    out.replies.extend_from_slice(
                        b"\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n",
                    );
                    if self.config.starttls && self.tls.is_none() {
                        out.replies.extend_from_slice(b"250-STARTTLS\r\n");
                    }
                    out.replies.extend_from_slice(b"250 CHUNKING\r\n");
                } else {
                    push_all(&mut out.replies, &[b"250 ", host.as_bytes(), b"\r\n"]);
                }
                had_data.then_some(Step::Discard)
            }
            Command::Mail { from, params } => {
                if self.txn.active {
                    return self.client_error(reply::NESTED_MAIL, out);
                }
                if params
                    .size
                    .is_some_and(|size| size > self.config.max_message_size)
                {
                    return self.client_error(reply::TOO_BIG, out);
                }
                self.txn.reset();
                self.txn.active = true;
                self.txn.sender.push_str(from);
                self.txn.smtputf8 = params.smtputf8;
                out.replies.extend_from_slice(reply::MAIL_OK);
                None
            }
            Command::Rcpt { to } => {
                if !self.txn.active {
                    return self.client_error(reply::NEED_MAIL, out);
                }
                if self.txn.bdat {
                    // The trace headers are written with the first chunk: a recipient added
                    // later would get 250 and never be in the stored message.
                    return self.client_error(reply::RCPT_AFTER_BDAT, out);
                }
                self.txn.rcpt_commands = self.txn.rcpt_commands.saturating_add(1);
                let overshoot = self.txn.rcpt_commands
                    > self.config.max_recipients.saturating_add(RCPT_OVERSHOOT);
                if command::is_non_ascii(to) && !self.txn.smtputf8 {
                    return self.client_error(reply::BAD_RECIPIENT, out);
                }
                if self.txn.rcpt_ends.len() >= self.config.max_recipients {
                    if overshoot {
                        return self.client_error(reply::TOO_MANY_RECIPIENTS, out);
                    }
                    out.replies.extend_from_slice(reply::TOO_MANY_RECIPIENTS);
                    return None;
                }
                if !self.domain_accepted(to) {
                    return self.client_error(reply::RELAY_DENIED, out);
                }
                if overshoot {
                    // Far past the limit yet accepted (earlier RCPTs were refused): it still
                    // counts, so the overshoot stays bounded by the error limit.
                    if let Some(step) = self.count_error(out) {
                        return Some(step);
                    }
                }
                self.txn.rcpt_text.push_str(to);
                self.txn.rcpt_ends.push(self.txn.rcpt_text.len());
                out.replies.extend_from_slice(reply::RCPT_OK);
                None
            }
            Command::Data => {
                if let Some(text) = self.data_sequence_error() {
                    return self.client_error(text, out);
                }
                if self.txn.bdat {
                    return self.client_error(reply::DATA_AFTER_BDAT, out);
                }
                out.replies.extend_from_slice(reply::DATA_GO_AHEAD);
                self.scanner.reset();
                self.state = State::Data;
                self.transfer_stop = now + self.config.data_timeout;
                self.transfer_bytes = 0;
                Some(Step::Begin)
            }
            Command::Bdat { size, last } => {
                let limit = self.config.max_message_size;
                let fail = if self.hello == Hello::None {
                    Some(Refusal::NeedHelo)
                } else if self.hello == Hello::Helo {
                    Some(Refusal::NeedEhlo)
                } else if !self.txn.active {
                    Some(Refusal::NeedMail)
                } else if self.txn.rcpt_ends.is_empty() {
                    Some(Refusal::NeedRcpt)
                } else if self.txn.data_bytes.saturating_add(size) > limit {
                    Some(Refusal::TooBig)
                } else {
                    None
                };
                self.start_chunk(size, last, fail, now)
            }
            Command::Rset => {
                if let Some(step) = self.junk_command(out) {
                    return Some(step);
                }
                let had_data = self.txn.bdat;
                self.txn.reset();
                out.replies.extend_from_slice(reply::OK);
                had_data.then_some(Step::Discard)
            }
            Command::Noop => self.junk_command(out).or_else(|| {
                out.replies.extend_from_slice(reply::OK);
                None
            }),
            Command::Vrfy => self.junk_command(out).or_else(|| {
                out.replies.extend_from_slice(reply::VRFY);
                None
            }),
            Command::Help => self.junk_command(out).or_else(|| {
                out.replies.extend_from_slice(reply::HELP);
                None
            }),
            Command::StartTls => {
                if !self.config.starttls {
                    return self.client_error(reply::TLS_NOT_OFFERED, out);
                }
                if self.tls.is_some() {
                    return self.client_error(reply::TLS_ACTIVE, out);
                }
                if self.txn.active {
                    return self.client_error(reply::TLS_IN_TRANSACTION, out);
                }
                out.replies.extend_from_slice(reply::TLS_READY);
                self.state = State::TlsHandshake;
                Some(Step::StartTls)
            }
            Command::Quit => {
                out.replies.extend_from_slice(reply::BYE);
                self.state = State::Closed;
                Some(Step::Close)
            }
        }
    }

    /// The reply for DATA/BDAT out of sequence, if it is.
    fn data_sequence_error(&self) -> Option<&'static [u8]> {
        if !self.txn.active {
            Some(reply::NEED_MAIL)
        } else if self.txn.rcpt_ends.is_empty() {
            Some(reply::NEED_RCPT)
        } else {
            None
        }
    }

    /// True when the recipient's domain is one we accept.
    fn domain_accepted(&self, rcpt: &str) -> bool {
        if self.config.domains.is_empty() || rcpt.eq_ignore_ascii_case("postmaster") {
            return true;
        }
        let domain = command::domain_of(rcpt);
        self.config
            .domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// Answers a command line that did not parse.
    fn bad_command(&mut self, bad: Bad, out: &mut Output) -> Option<Step> {
        match bad {
            Bad::Unknown => self.client_error(reply::UNKNOWN, out),
            Bad::Sender => self.client_error(reply::BAD_SENDER, out),
            Bad::Recipient => self.client_error(reply::BAD_RECIPIENT, out),
            Bad::Parameter => self.client_error(reply::BAD_PARAMETER, out),
            Bad::Chunk => Some(self.close_unreadable_chunk(out)),
            Bad::Syntax(usage) => self.count_error(out).or_else(|| {
                let _ = write!(out.replies, "501 5.5.4 {usage}\r\n");
                None
            }),
        }
    }

    /// Writes a client-error reply and counts it (see `count_error`).
    fn client_error(&mut self, text: &[u8], out: &mut Output) -> Option<Step> {
        self.count_error(out).or_else(|| {
            out.replies.extend_from_slice(text);
            None
        })
    }

    /// Counts a client error; past the error limit, writes `421 4.7.0` in place of the error's
    /// own reply and closes the session.
    fn count_error(&mut self, out: &mut Output) -> Option<Step> {
        self.errors += 1;
        if self.errors > self.config.max_errors {
            self.close_with(reply::TOO_MANY_ERRORS, out);
            return Some(Step::Close);
        }
        None
    }

    /// `501 5.5.4` for a BDAT line whose chunk size cannot be read, and close: the chunk's
    /// length is unknown, so nothing after it may ever be read as a command (SPEC §4.1).
    fn close_unreadable_chunk(&mut self, out: &mut Output) -> Step {
        let _ = write!(out.replies, "501 5.5.4 {}\r\n", command::BDAT_USAGE);
        self.state = State::Closed;
        Step::Close
    }

    /// `421 4.7.0` for a line in another protocol (an HTTP request), and close at once.
    fn close_foreign(&mut self, out: &mut Output) -> Step {
        self.close_with(reply::FOREIGN_PROTOCOL, out);
        Step::Close
    }

    /// Counts a junk command (NOOP, RSET, VRFY, HELP, a repeated HELO/EHLO, an empty non-LAST
    /// chunk); past the limit, `421 4.7.0` and close.
    fn junk_command(&mut self, out: &mut Output) -> Option<Step> {
        self.junk += 1;
        if self.junk > self.config.max_junk_commands {
            self.close_with(reply::TOO_MANY_JUNK, out);
            return Some(Step::Close);
        }
        None
    }

    /// Writes a `421` reply (prefix, host name, suffix) and ends the session.
    fn close_with(&mut self, text: (&str, &str), out: &mut Output) {
        let _ = write!(out.replies, "{}{}{}", text.0, self.config.hostname, text.1);
        self.state = State::Closed;
    }

    /// `421 4.3.2` for a server shutting down, and close.
    fn close_shutting_down(&mut self, out: &mut Output) -> Step {
        self.close_with(reply::SHUTTING_DOWN, out);
        Step::Close
    }
}

/// Appends the pieces in order (replies made on every connection or chunk are put together
/// without the formatting machinery).
fn push_all(out: &mut Vec<u8>, pieces: &[&[u8]]) {
    for piece in pieces {
        out.extend_from_slice(piece);
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The `421 4.3.2` reply for a connection over the server's connection limit.
pub fn write_too_many_connections(hostname: &str, out: &mut Vec<u8>) {
    let _ = write!(
        out,
        "{}{}{}",
        reply::TOO_MANY_CONNECTIONS.0,
        hostname,
        reply::TOO_MANY_CONNECTIONS.1
    );
}

/// The `421 4.7.0` reply for a client address over its connection limit.
pub fn write_too_many_from_address(hostname: &str, out: &mut Vec<u8>) {
    let _ = write!(
        out,
        "{}{}{}",
        reply::TOO_MANY_FROM_ADDRESS.0,
        hostname,
        reply::TOO_MANY_FROM_ADDRESS.1
    );
}

#[cfg(test)]
mod tests;
