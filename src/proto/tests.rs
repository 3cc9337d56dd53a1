//! Session tests: transcripts (client bytes in, exact reply bytes and stored message bytes out)
//! for every row of SPEC §4.2, the EHLO extensions, MAIL parameters, BDAT, both bare-LF modes,
//! the SMTP smuggling vectors and the protocol margins hostile clients probe (command order,
//! RCPT between BDAT chunks, unreadable BDAT sizes, HTTP verbs, junk and recipient overshoot,
//! SMTPUTF8 addresses); then property tests: a valid multi-message transcript split at random
//! points gives the same replies, stored bytes and trace headers as the unsplit run, and random
//! input never panics, only ever produces well-formed reply lines, and every stored message's
//! `Delivered-To:` lines are exactly the recipients that got `250`.
//!
//! The expected replies are written out here byte for byte, not taken from `reply.rs`, so a
//! changed reply text fails a test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::sim::Sim;
use super::*;

const GREETING: &str = "220 localhost ESMTP ringmx\r\n";
const MAIL_OK: &str = "250 2.1.0 Ok\r\n";
const RCPT_OK: &str = "250 2.1.5 Ok\r\n";
const GO_AHEAD: &str = "354 End data with <CR><LF>.<CR><LF>\r\n";
const OK: &str = "250 2.0.0 Ok\r\n";
const BYE: &str = "221 2.0.0 Bye\r\n";
const UNKNOWN: &str = "500 5.5.1 Error: command not recognized\r\n";
const LINE_TOO_LONG: &str = "500 5.5.2 Error: line too long\r\n";
const BARE_LF_COMMAND: &str = "500 5.5.2 Error: bare <LF> received\r\n";
const BAD_SENDER: &str = "501 5.1.7 Bad sender address syntax\r\n";
const BAD_RECIPIENT: &str = "501 5.1.3 Bad recipient address syntax\r\n";
const BAD_PARAMETER: &str = "555 5.5.4 Unsupported option\r\n";
const NEED_MAIL: &str = "503 5.5.1 Error: need MAIL command\r\n";
const NEED_RCPT: &str = "503 5.5.1 Error: need RCPT command\r\n";
const NESTED_MAIL: &str = "503 5.5.1 Error: nested MAIL command\r\n";
const DATA_AFTER_BDAT: &str = "503 5.5.1 Error: DATA after BDAT\r\n";
const TOO_BIG: &str = "552 5.3.4 Error: message file too big\r\n";
const TOO_MANY_RECIPIENTS: &str = "452 4.5.3 Error: too many recipients\r\n";
const RELAY_DENIED: &str = "550 5.7.1 Error: recipient domain not accepted here\r\n";
const BARE_LF_DATA: &str =
    "550 5.6.0 Error: bare <LF> or <CR> in message data (see RFC 5321 2.3.8)\r\n";
const SPOOL_FAILED: &str = "451 4.3.0 Error: queue file write error\r\n";
const TIMEOUT: &str = "421 4.4.2 localhost Error: timeout exceeded\r\n";
const TOO_MANY_ERRORS: &str = "421 4.7.0 localhost Error: too many errors\r\n";
const TOO_MANY_JUNK: &str = "421 4.7.0 localhost Error: too many junk commands\r\n";
const SHUTTING_DOWN: &str =
    "421 4.3.2 localhost Service shutting down, closing transmission channel\r\n";
const NEED_HELO: &str = "503 5.5.1 Error: send HELO/EHLO first\r\n";
const BDAT_NEEDS_EHLO: &str = "503 5.5.1 Error: BDAT needs EHLO (CHUNKING)\r\n";
const RCPT_AFTER_BDAT: &str = "503 5.5.1 Error: RCPT after BDAT\r\n";
const BDAT_UNREADABLE: &str = "501 5.5.4 Syntax: BDAT size [LAST]\r\n";
const FOREIGN: &str = "421 4.7.0 localhost Error: this is an SMTP server, not HTTP\r\n";

/// The EHLO reply of SPEC §4.1 for host `localhost` and this size limit.
fn ehlo_reply(max_message_size: u64) -> String {
    format!(
        "250-localhost\r\n250-PIPELINING\r\n250-SIZE {max_message_size}\r\n250-8BITMIME\r\n\
         250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
    )
}

/// The reply to the `n`th stored message of a `Sim` (its queue IDs count up from 00000001).
fn queued(n: u32) -> String {
    format!("250 2.0.0 Ok: queued as {n:08}\r\n")
}

/// A greeted `Sim` with the default configuration changed by `edit`.
fn sim_with(edit: impl FnOnce(&mut Config)) -> Sim {
    let mut config = Config::default();
    edit(&mut config);
    let mut sim = Sim::new(config);
    let host = sim.take_replies();
    assert!(host.starts_with("220 ") && host.ends_with(" ESMTP ringmx\r\n"));
    sim
}

/// A greeted `Sim` that has said EHLO, default configuration changed by `edit`.
fn ready_with(edit: impl FnOnce(&mut Config)) -> Sim {
    let mut config = Config::default();
    edit(&mut config);
    let size = config.max_message_size;
    let mut sim = sim_with(|c| *c = config);
    assert_eq!(say(&mut sim, "EHLO client.example\r\n"), ehlo_reply(size));
    sim
}

/// A greeted `Sim` with the default configuration that has said EHLO.
fn ready() -> Sim {
    ready_with(|_| {})
}

/// Feeds `input` as one read and returns the replies it produced.
fn say(sim: &mut Sim, input: &str) -> String {
    say_bytes(sim, input.as_bytes())
}

/// Feeds `input` as one read and returns the replies it produced.
fn say_bytes(sim: &mut Sim, input: &[u8]) -> String {
    sim.feed(input);
    sim.take_replies()
}

/// Concatenates reply texts.
fn replies(parts: &[&str]) -> String {
    parts.concat()
}

/// An envelope for one recipient, as one pipelined string.
const ENVELOPE: &str = "MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n";

// ---- SPEC §4.2, row by row ----------------------------------------------------------------

#[test]
fn greeting_names_the_host() {
    let mut sim = Sim::new(Config {
        hostname: "mx.example".to_string(),
        ..Config::default()
    });
    assert_eq!(sim.take_replies(), "220 mx.example ESMTP ringmx\r\n");
    let mut sim = Sim::new(Config::default());
    assert_eq!(sim.take_replies(), GREETING);
}

#[test]
fn ehlo_advertises_exactly_the_spec_extensions() {
    let mut sim = sim_with(|c| c.max_message_size = 12345);
    assert_eq!(say(&mut sim, "EHLO client.example\r\n"), ehlo_reply(12345));
    // Case-insensitive, and a second EHLO is answered the same way.
    assert_eq!(say(&mut sim, "ehlo other.example\r\n"), ehlo_reply(12345));
    assert_eq!(
        say(&mut sim, "HELO client.example\r\n"),
        "250 localhost\r\n"
    );
    assert_eq!(
        say(&mut sim, "HELO\r\n"),
        "501 5.5.4 Syntax: HELO hostname\r\n"
    );
    assert_eq!(
        say(&mut sim, "EHLO \r\n"),
        "501 5.5.4 Syntax: EHLO hostname\r\n"
    );
}

#[test]
fn message_is_stored_and_answered_with_its_queue_id() {
    let mut sim = ready();
    assert_eq!(say(&mut sim, "MAIL FROM:<a@b.example>\r\n"), MAIL_OK);
    assert_eq!(say(&mut sim, "RCPT TO:<c@d.example>\r\n"), RCPT_OK);
    assert_eq!(say(&mut sim, "DATA\r\n"), GO_AHEAD);
    assert_eq!(say(&mut sim, "Subject: hi\r\n\r\nhello\r\n"), "");
    assert_eq!(say(&mut sim, ".\r\n"), queued(1));
    assert_eq!(sim.messages, vec![b"Subject: hi\r\n\r\nhello\r\n".to_vec()]);
    // The next transaction gets the next ID.
    let second = format!("{ENVELOPE}DATA\r\nx\r\n.\r\n");
    assert_eq!(
        say(&mut sim, &second),
        replies(&[MAIL_OK, RCPT_OK, GO_AHEAD, &queued(2)])
    );
    assert_eq!(sim.messages[1], b"x\r\n");
    assert_eq!(sim.stored_count, 2);
    assert_eq!(sim.session.messages_stored(), 2);
    assert_eq!(say(&mut sim, "QUIT\r\n"), BYE);
    assert!(sim.closed);
}

#[test]
fn unknown_commands_get_500_5_5_1() {
    let mut sim = ready();
    for line in [
        "XYZZY\r\n",
        "STARTTLSX\r\n",
        "\r\n",
        "AUTH PLAIN\r\n",
        "MAILFROM:<>\r\n",
    ] {
        assert_eq!(say(&mut sim, line), UNKNOWN, "{line:?}");
    }
    // The session goes on.
    assert_eq!(say(&mut sim, "NOOP\r\n"), OK);
}

#[test]
fn commands_are_case_insensitive() {
    let mut sim = ready();
    let input =
        "mail from:<a@b.example>\r\nRcPt To:<c@d.example>\r\ndata\r\nx\r\n.\r\nnoop\r\nquit\r\n";
    assert_eq!(
        say(&mut sim, input),
        replies(&[MAIL_OK, RCPT_OK, GO_AHEAD, &queued(1), OK, BYE])
    );
}

#[test]
fn line_over_512_octets_gets_500_5_5_2_and_the_session_goes_on() {
    // 510 octets of text plus CRLF is exactly the limit: accepted.
    let mut sim = ready();
    let at_limit = format!("NOOP {}\r\n", "a".repeat(505));
    assert_eq!(at_limit.len(), 512);
    assert_eq!(say(&mut sim, &at_limit), OK);

    // One more octet, with the next command pipelined in the same read.
    let over = format!("NOOP {}\r\nNOOP\r\n", "a".repeat(506));
    assert_eq!(say(&mut sim, &over), replies(&[LINE_TOO_LONG, OK]));

    // Far over, in one read with the rest of a session after it.
    let far = format!(
        "MAIL FROM:<{}@b.example>\r\n{ENVELOPE}QUIT\r\n",
        "x".repeat(5000)
    );
    assert_eq!(
        say(&mut sim, &far),
        replies(&[LINE_TOO_LONG, MAIL_OK, RCPT_OK, BYE])
    );
}

#[test]
fn long_line_split_over_many_reads_is_drained() {
    let mut sim = ready();
    for _ in 0..10 {
        assert_eq!(say(&mut sim, &"b".repeat(300)), "");
    }
    assert_eq!(say(&mut sim, "bbb\r\nNO"), LINE_TOO_LONG);
    assert_eq!(say(&mut sim, "OP\r\n"), OK);
    // A long line whose LF arrives exactly at a read boundary.
    assert_eq!(say(&mut sim, &"c".repeat(600)), "");
    assert_eq!(say(&mut sim, "\r"), "");
    assert_eq!(say(&mut sim, "\n"), LINE_TOO_LONG);
    assert_eq!(say(&mut sim, "NOOP\r\n"), OK);
}

#[test]
fn argument_syntax_errors_get_501() {
    let mut sim = ready_with(|c| c.max_errors = 100);
    let cases = [
        (
            "MAIL TO:<a@b.example>\r\n",
            "501 5.5.4 Syntax: MAIL FROM:<address>\r\n",
        ),
        ("MAIL FROM:<a..b@x.example>\r\n", BAD_SENDER),
        ("MAIL FROM:a@x.example\r\n", BAD_SENDER),
        ("MAIL FROM:<a@x.example\r\n", BAD_SENDER),
        (
            "MAIL FROM:<a@b.example> SIZE=x\r\n",
            "501 5.5.4 Syntax: SIZE=number\r\n",
        ),
        (
            "QUIT now\r\n",
            "501 5.5.4 Syntax: this command takes no argument\r\n",
        ),
        (
            "DATA x\r\n",
            "501 5.5.4 Syntax: this command takes no argument\r\n",
        ),
        ("VRFY\r\n", "501 5.5.4 Syntax: VRFY address\r\n"),
    ];
    for (line, want) in cases {
        assert_eq!(say(&mut sim, line), want, "{line:?}");
    }
    assert_eq!(say(&mut sim, "MAIL FROM:<a@b.example>\r\n"), MAIL_OK);
    let rcpt_cases = [
        ("RCPT TO:<nodomain>\r\n", BAD_RECIPIENT),
        ("RCPT TO:<>\r\n", BAD_RECIPIENT),
        ("RCPT TO:<u@-bad.example>\r\n", BAD_RECIPIENT),
        (
            "RCPT FROM:<u@x.example>\r\n",
            "501 5.5.4 Syntax: RCPT TO:<address>\r\n",
        ),
    ];
    for (line, want) in rcpt_cases {
        assert_eq!(say(&mut sim, line), want, "{line:?}");
    }
}

#[test]
fn bad_sequence_gets_503() {
    let mut sim = ready();
    assert_eq!(say(&mut sim, "RCPT TO:<c@d.example>\r\n"), NEED_MAIL);
    assert_eq!(say(&mut sim, "DATA\r\n"), NEED_MAIL);
    assert_eq!(say(&mut sim, "MAIL FROM:<a@b.example>\r\n"), MAIL_OK);
    assert_eq!(say(&mut sim, "DATA\r\n"), NEED_RCPT);
    assert_eq!(say(&mut sim, "MAIL FROM:<a@b.example>\r\n"), NESTED_MAIL);
    // The first transaction survives the errors.
    assert_eq!(
        say(&mut sim, "RCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\n"),
        replies(&[RCPT_OK, GO_AHEAD, &queued(1)])
    );
    // RSET ends the transaction: RCPT is out of sequence again.
    assert_eq!(
        say(&mut sim, "MAIL FROM:<a@b.example>\r\nRSET\r\n"),
        replies(&[MAIL_OK, OK])
    );
    assert_eq!(say(&mut sim, "RCPT TO:<c@d.example>\r\n"), NEED_MAIL);
}

#[test]
fn size_parameter_over_the_limit_gets_552() {
    let mut sim = ready_with(|c| c.max_message_size = 1000);
    assert_eq!(
        say(&mut sim, "MAIL FROM:<a@b.example> SIZE=1001\r\n"),
        TOO_BIG
    );
    // No transaction was started.
    assert_eq!(say(&mut sim, "RCPT TO:<c@d.example>\r\n"), NEED_MAIL);
    assert_eq!(
        say(&mut sim, "MAIL FROM:<a@b.example> SIZE=1000\r\n"),
        MAIL_OK
    );
}

#[test]
fn real_size_over_the_limit_is_drained_then_552() {
    let mut sim = ready_with(|c| c.max_message_size = 100);
    // Exactly at the limit (after unstuffing): stored.
    let body_100 = format!(".{}\r\n", "y".repeat(97));
    let stuffed = format!(".{body_100}");
    let input = format!("{ENVELOPE}DATA\r\n{stuffed}.\r\n");
    assert_eq!(
        say(&mut sim, &input),
        replies(&[MAIL_OK, RCPT_OK, GO_AHEAD, &queued(1)])
    );
    assert_eq!(sim.messages, vec![body_100.into_bytes()]);

    // One byte over, across several reads, with command-looking lines inside: all drained.
    assert_eq!(
        say(&mut sim, &format!("{ENVELOPE}DATA\r\n")),
        replies(&[MAIL_OK, RCPT_OK, GO_AHEAD])
    );
    assert_eq!(say(&mut sim, &"z".repeat(99)), "");
    assert_eq!(say(&mut sim, "\r\nQUIT\r\nMAIL FROM:<x@y.example>\r\n"), "");
    assert_eq!(say(&mut sim, ".\r\nNOOP\r\n"), replies(&[TOO_BIG, OK]));
    assert_eq!(sim.messages.len(), 1);
    assert!(!sim.closed);
    // The session goes on with a fresh transaction.
    assert_eq!(
        say(&mut sim, &format!("{ENVELOPE}DATA\r\nsmall\r\n.\r\n")),
        replies(&[MAIL_OK, RCPT_OK, GO_AHEAD, &queued(2)])
    );
    assert_eq!(sim.messages[1], b"small\r\n");
}

#[test]
fn too_many_recipients_get_452() {
    let mut sim = ready_with(|c| c.max_recipients = 2);
    let input = "MAIL FROM:<a@b.example>\r\nRCPT TO:<r1@d.example>\r\nRCPT TO:<r2@d.example>\r\n\
                 RCPT TO:<r3@d.example>\r\nDATA\r\nbody\r\n.\r\n";
    assert_eq!(
        say(&mut sim, input),
        replies(&[
            MAIL_OK,
            RCPT_OK,
            RCPT_OK,
            TOO_MANY_RECIPIENTS,
            GO_AHEAD,
            &queued(1)
        ])
    );
    // The limit is per transaction.
    let again = "MAIL FROM:<a@b.example>\r\nRCPT TO:<r1@d.example>\r\nRCPT TO:<r2@d.example>\r\n";
    assert_eq!(say(&mut sim, again), replies(&[MAIL_OK, RCPT_OK, RCPT_OK]));
}

#[test]
fn recipient_domain_not_accepted_gets_550_5_7_1() {
    let mut sim = ready_with(|c| c.domains = vec!["example.com".to_string()]);
    assert_eq!(
        say(&mut sim, "MAIL FROM:<a@elsewhere.example>\r\n"),
        MAIL_OK
    );
    assert_eq!(say(&mut sim, "RCPT TO:<u@other.example>\r\n"), RELAY_DENIED);
    assert_eq!(
        say(&mut sim, "RCPT TO:<u@sub.example.com>\r\n"),
        RELAY_DENIED
    );
    assert_eq!(say(&mut sim, "RCPT TO:<u@EXAMPLE.com>\r\n"), RCPT_OK);
    assert_eq!(say(&mut sim, "RCPT TO:<Postmaster>\r\n"), RCPT_OK);
    assert_eq!(say(&mut sim, "RCPT TO:<\"a@b\"@example.com>\r\n"), RCPT_OK);
    // With no domain list, every domain is accepted.
    let mut open = ready();
    assert_eq!(
        say(
            &mut open,
            "MAIL FROM:<a@b.example>\r\nRCPT TO:<u@other.example>\r\n"
        ),
        replies(&[MAIL_OK, RCPT_OK])
    );
}

#[test]
fn spool_failure_gets_451_and_nothing_is_stored() {
    let mut sim = ready();
    sim.fail_next_store = true;
    assert_eq!(
        say(&mut sim, &format!("{ENVELOPE}DATA\r\nlost\r\n.\r\n")),
        replies(&[MAIL_OK, RCPT_OK, GO_AHEAD, SPOOL_FAILED])
    );
    assert!(sim.messages.is_empty());
    assert_eq!(sim.stored_count, 0);
    // The transaction is over; the next one is stored.
    assert_eq!(say(&mut sim, "RCPT TO:<c@d.example>\r\n"), NEED_MAIL);
    assert_eq!(
        say(&mut sim, &format!("{ENVELOPE}DATA\r\nkept\r\n.\r\n")),
        replies(&[MAIL_OK, RCPT_OK, GO_AHEAD, &queued(2)])
    );
    assert_eq!(sim.messages, vec![b"kept\r\n".to_vec()]);
}

#[test]
fn idle_timeout_gets_421_4_4_2_and_close() {
    let mut sim = ready();
    sim.timeout();
    assert_eq!(sim.take_replies(), TIMEOUT);
    assert!(sim.closed);
    assert_eq!(say(&mut sim, "NOOP\r\n"), "");

    // In the middle of message data: nothing is stored.
    let mut sim = ready();
    say(&mut sim, &format!("{ENVELOPE}DATA\r\npartial"));
    sim.timeout();
    assert_eq!(sim.take_replies(), TIMEOUT);
    assert!(sim.closed);
    assert_eq!(say(&mut sim, "\r\n.\r\n"), "");
    assert!(sim.messages.is_empty());
}

#[test]
fn deadlines_follow_the_config() {
    let config = Config {
        command_timeout: Duration::from_secs(10),
        data_timeout: Duration::from_secs(20),
        min_data_rate: 100,
        ..Config::default()
    };
    let start = Instant::now();
    let mut session = Session::new(Arc::new(config), start);
    let mut out = Output::new();
    assert_eq!(session.deadline(), Some(start + Duration::from_secs(10)));
    // A spurious wake-up before the deadline changes nothing.
    let early = start + Duration::from_secs(9);
    assert_eq!(session.handle_timeout(early, &mut out), Step::Read);
    assert!(out.replies.is_empty());

    let t1 = start + Duration::from_secs(5);
    let input = format!("EHLO c.example\r\n{ENVELOPE}DATA\r\n");
    let (n, step) = session.handle_input(input.as_bytes(), t1, &mut out);
    assert_eq!((n, step), (input.len(), Step::Begin));
    assert_eq!(session.deadline(), Some(t1 + Duration::from_secs(20)));
    // 1000 bytes at 100 B/s earn 10 s more on the transfer deadline, but the idle deadline
    // (20 s after the last read) still bounds it.
    let t2 = t1 + Duration::from_secs(15);
    let body = vec![b'x'; 1000];
    session.handle_input(&body, t2, &mut out);
    assert_eq!(session.deadline(), Some(t1 + Duration::from_secs(30)));
    out.replies.clear();
    assert_eq!(
        session.handle_timeout(t1 + Duration::from_secs(30), &mut out),
        Step::Close
    );
    assert_eq!(out.replies, TIMEOUT.as_bytes());
}

#[test]
fn quit_gets_221_and_nothing_after_it_is_answered() {
    let mut sim = ready();
    assert_eq!(
        say(&mut sim, "QUIT\r\nNOOP\r\nMAIL FROM:<a@b.example>\r\n"),
        BYE
    );
    assert!(sim.closed);
    assert_eq!(say(&mut sim, "NOOP\r\n"), "");
}

#[test]
fn shutdown_when_idle_gets_421_4_3_2_at_once() {
    let mut sim = ready();
    sim.shutdown();
    assert_eq!(sim.take_replies(), SHUTTING_DOWN);
    assert!(sim.closed);
    assert_eq!(say(&mut sim, "NOOP\r\n"), "");
}

#[test]
fn shutdown_mid_transaction_lets_the_message_finish() {
    let mut sim = ready();
    assert_eq!(
        say(&mut sim, &format!("{ENVELOPE}DATA\r\nfirst half ")),
        replies(&[MAIL_OK, RCPT_OK, GO_AHEAD])
    );
    sim.shutdown();
    assert_eq!(sim.take_replies(), "");
    assert!(!sim.closed);
    assert_eq!(
        say(&mut sim, "second half\r\n.\r\nNOOP\r\n"),
        replies(&[&queued(1), SHUTTING_DOWN])
    );
    assert!(sim.closed);
    assert_eq!(sim.messages, vec![b"first half second half\r\n".to_vec()]);

    // Between MAIL and DATA the transaction may finish too; a new one may not start.
    let mut sim = ready();
    assert_eq!(say(&mut sim, "MAIL FROM:<a@b.example>\r\n"), MAIL_OK);
    sim.shutdown();
    assert_eq!(sim.take_replies(), "");
    assert_eq!(
        say(&mut sim, "RCPT TO:<c@d.example>\r\nBDAT 2 LAST\r\nhi"),
        replies(&[RCPT_OK, &queued(1), SHUTTING_DOWN])
    );
    assert!(sim.closed);
    assert_eq!(sim.messages, vec![b"hi".to_vec()]);
}

#[test]
fn error_limit_closes_with_421_4_7_0() {
    let mut sim = ready_with(|c| c.max_errors = 4);
    // Errors of every kind count: 500, 501, 503, 555.
    let input = "XYZZ\r\nMAIL FROM:<bad>\r\nRCPT TO:<c@d.example>\r\n\
                 MAIL FROM:<a@b.example> FOO=1\r\nDATA\r\nNOOP\r\n";
    assert_eq!(
        say(&mut sim, input),
        replies(&[
            UNKNOWN,
            BAD_SENDER,
            NEED_MAIL,
            BAD_PARAMETER,
            TOO_MANY_ERRORS
        ])
    );
    assert!(sim.closed);
}

#[test]
fn error_limit_counts_refused_messages_and_long_lines() {
    let mut sim = ready_with(|c| c.max_errors = 2);
    let long = format!("{}\r\n", "n".repeat(600));
    let input = format!("{long}{ENVELOPE}DATA\r\nbare\nlf\r\n.\r\n{long}NOOP\r\n");
    assert_eq!(
        say(&mut sim, &input),
        replies(&[
            LINE_TOO_LONG,
            MAIL_OK,
            RCPT_OK,
            GO_AHEAD,
            BARE_LF_DATA,
            TOO_MANY_ERRORS
        ])
    );
    assert!(sim.closed);
}

#[test]
fn error_count_starts_again_after_a_delivered_message() {
    // As Postfix's smtpd_hard_error_limit: errors "without delivering mail".
    let mut sim = ready_with(|c| c.max_errors = 2);
    let input = format!("XYZZ\r\nXYZZ\r\n{ENVELOPE}DATA\r\nx\r\n.\r\nXYZZ\r\nXYZZ\r\nXYZZ\r\n");
    assert_eq!(
        say(&mut sim, &input),
        replies(&[
            UNKNOWN,
            UNKNOWN,
            MAIL_OK,
            RCPT_OK,
            GO_AHEAD,
            &queued(1),
            UNKNOWN,
            UNKNOWN,
            TOO_MANY_ERRORS,
        ])
    );
    assert!(sim.closed);
}

#[test]
fn junk_limit_closes_with_421_4_7_0() {
    let mut sim = ready_with(|c| c.max_junk_commands = 4);
    let input = "NOOP\r\nRSET\r\nVRFY someone\r\nHELP\r\nNOOP\r\nNOOP\r\n";
    assert_eq!(
        say(&mut sim, input),
        replies(&[
            OK,
            OK,
            "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n",
            "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n",
            TOO_MANY_JUNK,
        ])
    );
    assert!(sim.closed);
}

#[test]
fn early_talker_is_refused() {
    let mut session = Session::new(Arc::new(Config::default()), Instant::now());
    let mut out = Output::new();
    assert_eq!(session.reject_early_talker(&mut out), Step::Close);
    assert_eq!(
        out.replies,
        b"554 5.5.1 Error: client sent data before the greeting\r\n"
    );
    let (_, step) = session.handle_input(b"NOOP\r\n", Instant::now(), &mut out);
    assert_eq!(step, Step::Close);
}

#[test]
fn connection_limit_replies() {
    let mut out = Vec::new();
    write_too_many_connections("mx.example", &mut out);
    assert_eq!(out, b"421 4.3.2 mx.example Error: too many connections\r\n");
    out.clear();
    write_too_many_from_address("mx.example", &mut out);
    assert_eq!(
        out,
        b"421 4.7.0 mx.example Error: too many connections from your address\r\n"
    );
}

// ---- MAIL parameters and addresses ------------------------------------------------------

#[test]
fn mail_parameters_size_body_smtputf8() {
    let mut sim = ready();
    for line in [
        "MAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME SMTPUTF8\r\n",
        "MAIL FROM:<a@b.example> body=7bit size=0\r\n",
        "MAIL FROM:<a@b.example> BODY=8BITMIME\r\n",
    ] {
        assert_eq!(say(&mut sim, line), MAIL_OK, "{line:?}");
        assert_eq!(say(&mut sim, "RSET\r\n"), OK);
    }
    let cases = [
        ("MAIL FROM:<a@b.example> AUTH=<>\r\n", BAD_PARAMETER),
        ("MAIL FROM:<a@b.example> RET=FULL\r\n", BAD_PARAMETER),
        ("MAIL FROM:<a@b.example> SMTPUTF8=yes\r\n", BAD_PARAMETER),
        (
            "MAIL FROM:<a@b.example> BODY=BINARYMIME\r\n",
            "501 5.5.4 Syntax: BODY=7BIT or BODY=8BITMIME\r\n",
        ),
    ];
    for (line, want) in cases {
        assert_eq!(say(&mut sim, line), want, "{line:?}");
    }
    assert_eq!(
        say(
            &mut sim,
            "MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example> NOTIFY=NEVER\r\n"
        ),
        replies(&[MAIL_OK, BAD_PARAMETER])
    );
}

#[test]
fn utf8_addresses_only_with_smtputf8() {
    let mut sim = ready();
    assert_eq!(
        say(&mut sim, "MAIL FROM:<jörg@bücher.example>\r\n"),
        BAD_SENDER
    );
    assert_eq!(say(&mut sim, "MAIL FROM:<a@b.example>\r\n"), MAIL_OK);
    assert_eq!(
        say(&mut sim, "RCPT TO:<jörg@bücher.example>\r\n"),
        BAD_RECIPIENT
    );
    assert_eq!(say(&mut sim, "RSET\r\n"), OK);
    let input = "MAIL FROM:<jörg@bücher.example> SMTPUTF8\r\nRCPT TO:<ñandú@例え.example>\r\n\
                 DATA\r\nSubject: héllo\r\n.\r\n";
    assert_eq!(
        say(&mut sim, input),
        replies(&[MAIL_OK, RCPT_OK, GO_AHEAD, &queued(1)])
    );
    assert_eq!(sim.messages, vec!["Subject: héllo\r\n".as_bytes().to_vec()]);
    // Bytes that are not UTF-8 are never an address.
    let raw = b"MAIL FROM:<j\xffrg@x.example> SMTPUTF8\r\n";
    assert_eq!(say_bytes(&mut sim, raw), BAD_SENDER);
}

#[test]
fn null_sender_is_accepted() {
    let mut sim = ready();
    let input = "MAIL FROM:<>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nbounce\r\n.\r\n";
    assert_eq!(
        say(&mut sim, input),
        replies(&[MAIL_OK, RCPT_OK, GO_AHEAD, &queued(1)])
    );
    assert_eq!(sim.messages, vec![b"bounce\r\n".to_vec()]);
}

/// Drives a bare `Session` to `Step::Store` and returns it, for envelope checks.
fn session_at_store(input: &str) -> Session {
    let mut session = Session::new(Arc::new(Config::default()), Instant::now());
    let mut out = Output::new();
    let (begun, step) = session.handle_input(input.as_bytes(), Instant::now(), &mut out);
    assert_eq!(step, Step::Begin);
    let (n, step) = session.handle_input(&input.as_bytes()[begun..], Instant::now(), &mut out);
    assert_eq!((begun + n, step), (input.len(), Step::Store));
    session
}

#[test]
fn envelope_keeps_addresses_exactly_as_written() {
    let session = session_at_store(
        "EHLO client.example\r\nMAIL FROM:<@r.example:Ann@B.example>\r\n\
         RCPT TO:<\"x y\"@C.example>\r\nRCPT TO:<Postmaster>\r\nRCPT TO:<z@[192.0.2.1]>\r\n\
         DATA\r\nx\r\n.\r\n",
    );
    let envelope = session.envelope();
    assert_eq!(envelope.helo, "client.example");
    assert_eq!(envelope.sender, "Ann@B.example");
    assert_eq!(envelope.protocol, "ESMTP");
    assert_eq!(envelope.recipient_count(), 3);
    let rcpts: Vec<&str> = envelope.recipients().collect();
    assert_eq!(rcpts, ["\"x y\"@C.example", "Postmaster", "z@[192.0.2.1]"]);

    let session =
        session_at_store("HELO c\r\nMAIL FROM:<> \r\nRCPT TO:<u@d.example>\r\nDATA\r\n.\r\n");
    assert_eq!(session.envelope().sender, "");
    assert_eq!(session.envelope().protocol, "SMTP");

    let session = session_at_store(
        "EHLO c\r\nMAIL FROM:<é@d.example> SMTPUTF8\r\nRCPT TO:<u@d.example>\r\nDATA\r\n.\r\n",
    );
    assert_eq!(session.envelope().protocol, "UTF8SMTP");
    assert_eq!(session.envelope().sender, "é@d.example");
}

// ---- BDAT (RFC 3030) ------------------------------------------------------------------------

#[test]
fn bdat_last_stores_the_chunk_byte_exact() {
    let mut sim = ready();
    // A chunk is taken byte-exact: no dot-unstuffing, no terminator, bare LF allowed.
    let chunk = "a\r\n.\r\n..b\nc\r";
    let input = format!("{ENVELOPE}BDAT {} LAST\r\n{chunk}NOOP\r\n", chunk.len());
    assert_eq!(
        say(&mut sim, &input),
        replies(&[MAIL_OK, RCPT_OK, &queued(1), OK])
    );
    assert_eq!(sim.messages, vec![chunk.as_bytes().to_vec()]);
}

#[test]
fn bdat_in_several_chunks_and_reads() {
    let mut sim = ready();
    assert_eq!(
        say(&mut sim, &format!("{ENVELOPE}BDAT 3\r\nabcBDAT 4\r\nde")),
        replies(&[MAIL_OK, RCPT_OK, "250 2.0.0 Ok: 3 octets received\r\n"])
    );
    assert_eq!(say(&mut sim, "f"), "");
    assert_eq!(
        say(&mut sim, "gBDAT 0\r\nbdat 2 last\r\nhi"),
        replies(&[
            "250 2.0.0 Ok: 4 octets received\r\n",
            "250 2.0.0 Ok: 0 octets received\r\n",
            &queued(1),
        ])
    );
    assert_eq!(sim.messages, vec![b"abcdefghi".to_vec()]);
}

#[test]
fn bdat_over_the_size_limit_gets_552_and_its_chunk_is_consumed() {
    let mut sim = ready_with(|c| c.max_message_size = 10);
    let input = format!("{ENVELOPE}BDAT 6\r\n123456BDAT 5 LAST\r\nabcdeNOOP\r\n");
    assert_eq!(
        say(&mut sim, &input),
        replies(&[
            MAIL_OK,
            RCPT_OK,
            "250 2.0.0 Ok: 6 octets received\r\n",
            TOO_BIG,
            OK
        ])
    );
    assert!(sim.messages.is_empty());
    // The transaction is gone.
    assert_eq!(say(&mut sim, "BDAT 1 LAST\r\nx"), NEED_MAIL);
    // Exactly at the limit is fine.
    let input = format!("{ENVELOPE}BDAT 10 LAST\r\n0123456789");
    assert_eq!(
        say(&mut sim, &input),
        replies(&[MAIL_OK, RCPT_OK, &queued(1)])
    );
    assert_eq!(sim.messages, vec![b"0123456789".to_vec()]);
}

#[test]
fn data_after_bdat_gets_503() {
    let mut sim = ready();
    let input = format!("{ENVELOPE}BDAT 2\r\nabDATA\r\nBDAT 1 LAST\r\nc");
    assert_eq!(
        say(&mut sim, &input),
        replies(&[
            MAIL_OK,
            RCPT_OK,
            "250 2.0.0 Ok: 2 octets received\r\n",
            DATA_AFTER_BDAT,
            &queued(1),
        ])
    );
    assert_eq!(sim.messages, vec![b"abc".to_vec()]);
}

#[test]
fn bdat_out_of_sequence_consumes_its_chunk_and_gets_503() {
    let mut sim = ready();
    // The chunk holds a command: it must not run.
    assert_eq!(
        say(&mut sim, "BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n"),
        replies(&[NEED_MAIL, OK])
    );
    assert!(!sim.closed);
    assert_eq!(
        say(
            &mut sim,
            "MAIL FROM:<a@b.example>\r\nBDAT 6\r\nQUIT\r\nNOOP\r\n"
        ),
        replies(&[MAIL_OK, NEED_RCPT, OK])
    );
    assert!(sim.messages.is_empty());
    // A chunk split over reads is still skipped whole.
    assert_eq!(say(&mut sim, "RSET\r\nBDAT 10\r\nQUIT"), OK);
    assert_eq!(say(&mut sim, "\r\nQUI"), "");
    assert_eq!(say(&mut sim, "TNOOP\r\n"), replies(&[NEED_MAIL, OK]));
    assert!(!sim.closed);
}

#[test]
fn rset_after_bdat_drops_the_chunks() {
    let mut sim = ready();
    let input = format!("{ENVELOPE}BDAT 3\r\nabcRSET\r\n{ENVELOPE}BDAT 3 LAST\r\nxyz");
    assert_eq!(
        say(&mut sim, &input),
        replies(&[
            MAIL_OK,
            RCPT_OK,
            "250 2.0.0 Ok: 3 octets received\r\n",
            OK,
            MAIL_OK,
            RCPT_OK,
            &queued(1),
        ])
    );
    assert_eq!(sim.messages, vec![b"xyz".to_vec()]);
}

// ---- Bare LF, both modes --------------------------------------------------------------------

#[test]
fn reject_mode_refuses_bare_lf_and_bare_cr_data_after_its_real_end() {
    for body in [
        "a\nb\r\n",
        "a\rb\r\n",
        "line\r\n\n.\nz\r\n",
        "x\r\n.\rMAIL\r\n",
    ] {
        let mut sim = ready();
        let input = format!("{ENVELOPE}DATA\r\n{body}.\r\nNOOP\r\n");
        assert_eq!(
            say(&mut sim, &input),
            replies(&[MAIL_OK, RCPT_OK, GO_AHEAD, BARE_LF_DATA, OK]),
            "{body:?}"
        );
        assert!(sim.messages.is_empty());
        // The session goes on with a fresh transaction.
        assert_eq!(say(&mut sim, "RCPT TO:<c@d.example>\r\n"), NEED_MAIL);
        assert_eq!(
            say(&mut sim, &format!("{ENVELOPE}DATA\r\nclean\r\n.\r\n")),
            replies(&[MAIL_OK, RCPT_OK, GO_AHEAD, &queued(1)])
        );
    }
}

#[test]
fn reject_mode_refuses_a_command_ended_by_bare_lf() {
    let mut sim = ready();
    assert_eq!(say(&mut sim, "NOOP\n"), BARE_LF_COMMAND);
    // The bare-LF command is not run.
    assert_eq!(
        say(
            &mut sim,
            "MAIL FROM:<a@b.example>\nRCPT TO:<c@d.example>\r\n"
        ),
        replies(&[BARE_LF_COMMAND, NEED_MAIL])
    );
    assert_eq!(say(&mut sim, "QUIT\n"), BARE_LF_COMMAND);
    assert!(!sim.closed);
}

#[test]
fn normalize_mode_stores_bare_lf_as_crlf_and_keeps_bare_cr() {
    let mut sim = ready_with(|c| c.bare_lf = BareLf::Normalize);
    assert_eq!(say(&mut sim, "NOOP\n"), OK);
    let input = "MAIL FROM:<a@b.example>\nRCPT TO:<c@d.example>\nDATA\n\
                 one\ntwo\r\nthr\ree\n..four\r\n.\r\nQUIT\n";
    assert_eq!(
        say(&mut sim, input),
        replies(&[MAIL_OK, RCPT_OK, GO_AHEAD, &queued(1), BYE])
    );
    assert_eq!(
        sim.messages,
        // A line start for dot-unstuffing is only ever after CRLF (as for the terminator),
        // so the stuffed-looking line after a bare LF keeps both dots.
        vec![b"one\r\ntwo\r\nthr\ree\r\n..four\r\n".to_vec()]
    );
}

#[test]
fn normalize_mode_still_ends_data_only_at_crlf_dot_crlf() {
    let mut sim = ready_with(|c| c.bare_lf = BareLf::Normalize);
    let input = format!("{ENVELOPE}DATA\r\nx\n.\nNOOP\r\n.\r\n");
    assert_eq!(
        say(&mut sim, &input),
        replies(&[MAIL_OK, RCPT_OK, GO_AHEAD, &queued(1)])
    );
    assert_eq!(sim.messages, vec![b"x\r\n.\r\nNOOP\r\n".to_vec()]);
}

// ---- SMTP smuggling -------------------------------------------------------------------------

/// The non-standard terminators of the SMTP smuggling family (CVE-2023-51764 and kin).
const SMUGGLING_VECTORS: &[&str] = &["\n.\n", "\r.\r", "\r\n.\n", "\n.\r\n", "\r\n.\r", "\r.\r\n"];

/// The commands a smuggler hopes the server runs after a fake terminator.
const SMUGGLED: &str =
    "MAIL FROM:<admin@bank.example>\r\nRCPT TO:<victim@d.example>\r\nDATA\r\nSubject: fake\r\n";

/// Builds a session's input with one smuggling attempt, then QUIT.
fn smuggling_input(vector: &str) -> String {
    format!("EHLO c.example\r\n{ENVELOPE}DATA\r\nSubject: real\r\n\r\nbody{vector}{SMUGGLED}\r\n.\r\nQUIT\r\n")
}

/// Runs `input` through a fresh `Sim`, cut into reads at `cuts`.
fn run_cut(config: &Config, input: &[u8], cuts: &[usize]) -> Sim {
    let mut sim = Sim::new(config.clone());
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        let cut = cut.clamp(from, input.len());
        sim.feed(&input[from..cut]);
        from = cut;
    }
    sim
}

#[test]
fn smuggled_commands_are_never_run_in_normalize_mode() {
    let config = Config {
        bare_lf: BareLf::Normalize,
        ..Config::default()
    };
    let want_replies = replies(&[
        GREETING,
        &ehlo_reply(config.max_message_size),
        MAIL_OK,
        RCPT_OK,
        GO_AHEAD,
        &queued(1),
        BYE,
    ]);
    for vector in SMUGGLING_VECTORS {
        let input = smuggling_input(vector);
        for cut in 0..=input.len() {
            let mut sim = run_cut(&config, input.as_bytes(), &[cut]);
            assert_eq!(sim.take_replies(), want_replies, "{vector:?} cut {cut}");
            assert_eq!(sim.messages.len(), 1, "{vector:?} cut {cut}");
            let stored = &sim.messages[0];
            let text = String::from_utf8_lossy(stored);
            assert!(
                text.contains("MAIL FROM:<admin@bank.example>\r\n")
                    && text.contains("RCPT TO:<victim@d.example>\r\nDATA\r\nSubject: fake"),
                "{vector:?} cut {cut}: smuggled text is data: {text:?}"
            );
            assert!(text.starts_with("Subject: real\r\n\r\nbody"));
        }
    }
}

#[test]
fn smuggled_commands_are_never_run_in_reject_mode() {
    let config = Config::default();
    let want_replies = replies(&[
        GREETING,
        &ehlo_reply(config.max_message_size),
        MAIL_OK,
        RCPT_OK,
        GO_AHEAD,
        BARE_LF_DATA,
        BYE,
    ]);
    for vector in SMUGGLING_VECTORS {
        let input = smuggling_input(vector);
        for cut in 0..=input.len() {
            let mut sim = run_cut(&config, input.as_bytes(), &[cut]);
            assert_eq!(sim.take_replies(), want_replies, "{vector:?} cut {cut}");
            assert!(sim.messages.is_empty(), "{vector:?} cut {cut}");
        }
    }
}

#[test]
fn smuggling_exact_stored_bytes() {
    let config = Config {
        bare_lf: BareLf::Normalize,
        ..Config::default()
    };
    let cases: &[(&str, &str)] = &[
        ("\n.\n", "\r\n.\r\n"),
        ("\r.\r", "\r.\r"),
        ("\r\n.\n", "\r\n\r\n"),
        ("\n.\r\n", "\r\n.\r\n"),
        ("\r\n.\r", "\r\n\r"),
        ("\r.\r\n", "\r.\r\n"),
    ];
    for (vector, stored_as) in cases {
        let sim = run_cut(&config, smuggling_input(vector).as_bytes(), &[]);
        let want = format!("Subject: real\r\n\r\nbody{stored_as}{SMUGGLED}\r\n");
        assert_eq!(sim.messages, vec![want.into_bytes()], "{vector:?}");
    }
}

// ---- Pipelining -----------------------------------------------------------------------------

#[test]
fn pipelined_session_is_answered_in_order() {
    let input = "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<r1@d.example>\r\n\
                 RCPT TO:<bad>\r\nRCPT TO:<r2@d.example>\r\nDATA\r\none\r\n..two\r\n.\r\n\
                 MAIL FROM:<> BODY=8BITMIME\r\nRCPT TO:<r3@d.example>\r\nBDAT 5\r\nhelloBDAT 6 LAST\r\n\
                 world!NOOP\r\nXYZZ\r\nQUIT\r\nNOOP\r\n";
    let mut sim = Sim::new(Config::default());
    sim.feed(input.as_bytes());
    assert_eq!(
        sim.take_replies(),
        replies(&[
            GREETING,
            &ehlo_reply(26_214_400),
            MAIL_OK,
            RCPT_OK,
            BAD_RECIPIENT,
            RCPT_OK,
            GO_AHEAD,
            &queued(1),
            MAIL_OK,
            RCPT_OK,
            "250 2.0.0 Ok: 5 octets received\r\n",
            &queued(2),
            OK,
            UNKNOWN,
            BYE,
        ])
    );
    assert_eq!(
        sim.messages,
        vec![b"one\r\n.two\r\n".to_vec(), b"helloworld!".to_vec()]
    );
    assert!(sim.closed);
}

#[test]
fn pipelined_session_byte_by_byte_is_the_same() {
    let input = format!(
        "EHLO c.example\r\n{ENVELOPE}DATA\r\n..x\r\n...\r\n.\r\n{ENVELOPE}BDAT 3 LAST\r\n\r\n.QUIT\r\n"
    );
    let whole = run_cut(&Config::default(), input.as_bytes(), &[]);
    let cuts: Vec<usize> = (1..input.len()).collect();
    let bytewise = run_cut(&Config::default(), input.as_bytes(), &cuts);
    assert_eq!(whole.replies, bytewise.replies);
    assert_eq!(whole.messages, bytewise.messages);
    assert_eq!(
        whole.messages,
        vec![b".x\r\n..\r\n".to_vec(), b"\r\n.".to_vec()]
    );
    assert!(bytewise.closed);
}

// ---- Protocol margins (hostile and unusual clients) -----------------------------------------

/// The `Delivered-To:` addresses in rendered trace headers, in order.
fn delivered_to(headers: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(headers)
        .split("\r\n")
        .filter_map(|line| line.strip_prefix("Delivered-To: "))
        .map(str::to_owned)
        .collect()
}

/// For each `queued as` reply, how many `250 2.1.5` replies its transaction got (counted from
/// its last `250 2.1.0`).
fn rcpt_oks_per_stored_message(replies: &[u8]) -> Vec<usize> {
    let mut counts = Vec::new();
    let mut oks = 0;
    for line in String::from_utf8_lossy(replies).split("\r\n") {
        if line.starts_with("250 2.1.0") {
            oks = 0;
        } else if line.starts_with("250 2.1.5") {
            oks += 1;
        } else if line.contains("queued as ") {
            counts.push(oks);
        }
    }
    counts
}

#[test]
fn rcpt_after_the_first_bdat_chunk_gets_503_however_the_bytes_arrive() {
    // One command at a time, as the client in the report did.
    let mut sim = ready();
    assert_eq!(
        say(
            &mut sim,
            "MAIL FROM:<a@b.example>\r\nRCPT TO:<first@d.example>\r\n"
        ),
        replies(&[MAIL_OK, RCPT_OK])
    );
    assert_eq!(
        say(&mut sim, "BDAT 6\r\nhello\n"),
        "250 2.0.0 Ok: 6 octets received\r\n"
    );
    assert_eq!(
        say(&mut sim, "RCPT TO:<second@d.example>\r\n"),
        RCPT_AFTER_BDAT
    );
    assert_eq!(say(&mut sim, "BDAT 6 LAST\r\nworld\n"), queued(1));
    assert_eq!(sim.messages, vec![b"hello\nworld\n".to_vec()]);
    assert_eq!(delivered_to(&sim.headers[0]), ["first@d.example"]);
    assert_eq!(sim.recipients, vec![vec!["first@d.example".to_string()]]);

    // The same bytes in one read, and byte by byte: the same replies and the same file.
    let input = "EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<first@d.example>\r\nBDAT 6\r\n\
                 hello\nRCPT TO:<second@d.example>\r\nBDAT 6 LAST\r\nworld\nQUIT\r\n";
    let whole = run_cut(&Config::default(), input.as_bytes(), &[]);
    let cuts: Vec<usize> = (1..input.len()).collect();
    let bytewise = run_cut(&Config::default(), input.as_bytes(), &cuts);
    assert_eq!(whole.replies, bytewise.replies);
    assert_eq!(whole.headers, bytewise.headers);
    assert_eq!(delivered_to(&whole.headers[0]), ["first@d.example"]);
    assert_eq!(rcpt_oks_per_stored_message(&whole.replies), [1]);
    // Before the first chunk, RCPT is still fine; a refused first chunk does not count.
    let mut sim = ready();
    let input = "MAIL FROM:<a@b.example>\r\nBDAT 2\r\nxyRCPT TO:<r@d.example>\r\nBDAT 1 LAST\r\nz";
    assert_eq!(
        say(&mut sim, input),
        replies(&[MAIL_OK, NEED_RCPT, RCPT_OK, &queued(1)])
    );
    assert_eq!(delivered_to(&sim.headers[0]), ["r@d.example"]);
}

#[test]
fn repeated_helo_and_ehlo_count_as_junk() {
    let mut sim = sim_with(|c| c.max_junk_commands = 3);
    // The first greeting is free; three more are tolerated; the next one closes.
    assert_eq!(say(&mut sim, "EHLO a\r\n"), ehlo_reply(26_214_400));
    assert_eq!(
        say(&mut sim, "EHLO a\r\nHELO a\r\nEHLO a\r\n"),
        replies(&[
            &ehlo_reply(26_214_400),
            "250 localhost\r\n",
            &ehlo_reply(26_214_400)
        ])
    );
    assert_eq!(say(&mut sim, "HELO a\r\nNOOP\r\n"), TOO_MANY_JUNK);
    assert!(sim.closed);

    // A stored message starts the count again (SPEC §3).
    let mut sim = sim_with(|c| c.max_junk_commands = 1);
    let input = format!("EHLO a\r\nEHLO a\r\n{ENVELOPE}DATA\r\nx\r\n.\r\nEHLO a\r\nEHLO a\r\n");
    assert_eq!(
        say(&mut sim, &input),
        replies(&[
            &ehlo_reply(26_214_400),
            &ehlo_reply(26_214_400),
            MAIL_OK,
            RCPT_OK,
            GO_AHEAD,
            &queued(1),
            &ehlo_reply(26_214_400),
            TOO_MANY_JUNK,
        ])
    );
}

#[test]
fn empty_non_last_bdat_chunks_count_as_junk() {
    let mut sim = ready_with(|c| c.max_junk_commands = 2);
    let zero = "250 2.0.0 Ok: 0 octets received\r\n";
    assert_eq!(
        say(
            &mut sim,
            &format!("{ENVELOPE}BDAT 0\r\nBDAT 0\r\nBDAT 000\r\n")
        ),
        replies(&[MAIL_OK, RCPT_OK, zero, zero, TOO_MANY_JUNK])
    );
    assert!(sim.closed);
    assert!(sim.messages.is_empty());
    // A non-empty chunk and an empty LAST chunk are not junk.
    let mut sim = ready_with(|c| c.max_junk_commands = 0);
    assert_eq!(
        say(&mut sim, &format!("{ENVELOPE}BDAT 1\r\nxBDAT 0 LAST\r\n")),
        replies(&[
            MAIL_OK,
            RCPT_OK,
            "250 2.0.0 Ok: 1 octets received\r\n",
            &queued(1)
        ])
    );
}

#[test]
fn recipients_far_past_the_limit_count_as_errors() {
    let mut sim = ready_with(|c| {
        c.max_recipients = 2;
        c.max_errors = 3;
    });
    assert_eq!(say(&mut sim, "MAIL FROM:<a@b.example>\r\n"), MAIL_OK);
    // max_recipients + RCPT_OVERSHOOT commands are answered without counting.
    let rcpt = "RCPT TO:<r@d.example>\r\n";
    let free = rcpt.repeat(2 + RCPT_OVERSHOOT);
    let mut want = replies(&[RCPT_OK, RCPT_OK]);
    want.push_str(&TOO_MANY_RECIPIENTS.repeat(RCPT_OVERSHOOT));
    assert!(say(&mut sim, &free) == want, "the first 1002 RCPTs");
    // Each further one is an error: three are tolerated, the fourth closes.
    assert_eq!(
        say(&mut sim, &rcpt.repeat(3)),
        TOO_MANY_RECIPIENTS.repeat(3)
    );
    assert!(!sim.closed);
    assert_eq!(say(&mut sim, rcpt), TOO_MANY_ERRORS);
    assert!(sim.closed);
    // A new transaction starts the overshoot count again.
    let mut sim = ready_with(|c| {
        c.max_recipients = 1;
        c.max_errors = 0;
    });
    let input = format!(
        "MAIL FROM:<a@b.example>\r\n{}RSET\r\nMAIL FROM:<a@b.example>\r\n{}",
        rcpt.repeat(1 + RCPT_OVERSHOOT),
        rcpt.repeat(1 + RCPT_OVERSHOOT)
    );
    let answered = say(&mut sim, &input);
    assert!(!sim.closed);
    assert!(!answered.contains("421"), "closed early");
    assert_eq!(say(&mut sim, rcpt), TOO_MANY_ERRORS);
}

#[test]
fn bdat_sizes_with_leading_zeros_are_read() {
    let mut sim = ready();
    let input = format!("{ENVELOPE}BDAT 00000000000000000005 LAST\r\nhelloQUIT\r\n");
    assert_eq!(
        say(&mut sim, &input),
        replies(&[MAIL_OK, RCPT_OK, &queued(1), BYE])
    );
    assert_eq!(sim.messages, vec![b"hello".to_vec()]);
}

#[test]
fn unreadable_bdat_size_gets_501_and_close_and_nothing_after_it_runs() {
    for line in [
        "BDAT\r\n",
        "BDAT 5x\r\n",
        "BDAT -5\r\n",
        "BDAT 18446744073709551616 LAST\r\n",
        "BDAT 10 FIRST\r\n",
        "BDAT 5 LAST LAST\r\n",
        "bdat 0x5\r\n",
        "BDAT\t5\r\n",
    ] {
        let mut sim = ready();
        let input = format!("{ENVELOPE}{line}hello{ENVELOPE}DATA\r\nx\r\n.\r\nQUIT\r\n");
        assert_eq!(
            say(&mut sim, &input),
            replies(&[MAIL_OK, RCPT_OK, BDAT_UNREADABLE]),
            "{line:?}"
        );
        assert!(sim.closed, "{line:?}");
        assert!(sim.messages.is_empty());
    }
    // Before EHLO, and with the chunk's first bytes in the same read: the same.
    let mut sim = sim_with(|_| {});
    assert_eq!(say(&mut sim, "BDAT 1.5\r\nNOOP\r\n"), BDAT_UNREADABLE);
    assert!(sim.closed);
    // A BDAT line too long to keep has no size to trust either.
    let mut sim = ready();
    let long = format!("BDAT {}5 LAST\r\nNOOP\r\n", "0".repeat(600));
    assert_eq!(say(&mut sim, &long), BDAT_UNREADABLE);
    assert!(sim.closed);
    // A long non-BDAT line is only drained.
    let mut sim = ready();
    let long = format!("BDATX {}\r\nNOOP\r\n", "0".repeat(600));
    assert_eq!(say(&mut sim, &long), replies(&[LINE_TOO_LONG, OK]));
}

#[test]
fn bdat_line_ended_by_bare_lf_still_frames_its_chunk() {
    // Reject mode: the command is refused, but its chunk is skipped, not run.
    let mut sim = ready();
    let input = format!("{ENVELOPE}BDAT 6 LAST\nQUIT\r\nNOOP\r\n");
    assert_eq!(
        say(&mut sim, &input),
        replies(&[MAIL_OK, RCPT_OK, BARE_LF_COMMAND, OK])
    );
    assert!(!sim.closed);
    assert!(sim.messages.is_empty());
    // Mid-message the transaction ends: a chunk is missing from it.
    let input = "BDAT 2\r\nabBDAT 2\ncdBDAT 1 LAST\r\ne";
    assert_eq!(
        say(&mut sim, input),
        replies(&[
            "250 2.0.0 Ok: 2 octets received\r\n",
            BARE_LF_COMMAND,
            NEED_MAIL
        ])
    );
    assert!(sim.messages.is_empty());
    // Unreadable: close.
    assert_eq!(say(&mut sim, "BDAT x\nNOOP\r\n"), BDAT_UNREADABLE);
    assert!(sim.closed);
}

#[test]
fn size_parameter_of_20_digits_gets_552_and_21_digits_501() {
    let mut sim = ready();
    for line in [
        "MAIL FROM:<a@b.example> SIZE=99999999999999999999\r\n",
        "MAIL FROM:<a@b.example> SIZE=18446744073709551616\r\n",
        "MAIL FROM:<a@b.example> SIZE=10000000000000000000\r\n",
        "MAIL FROM:<a@b.example> SIZE=26214401\r\n",
    ] {
        assert_eq!(say(&mut sim, line), TOO_BIG, "{line:?}");
    }
    assert_eq!(
        say(
            &mut sim,
            "MAIL FROM:<a@b.example> SIZE=000000000000000000000\r\n"
        ),
        "501 5.5.4 Syntax: SIZE=number\r\n"
    );
    assert_eq!(
        say(
            &mut sim,
            "MAIL FROM:<a@b.example> SIZE=00000000000026214400\r\n"
        ),
        MAIL_OK
    );
}

#[test]
fn mail_commands_before_helo_get_503() {
    let mut sim = sim_with(|_| {});
    for line in [
        "MAIL FROM:<a@b.example>\r\n",
        "RCPT TO:<c@d.example>\r\n",
        "DATA\r\n",
        "MAIL FROM:<a@b.example> SIZE=10\r\n",
    ] {
        assert_eq!(say(&mut sim, line), NEED_HELO, "{line:?}");
    }
    // BDAT: the chunk is consumed, then the reply; nothing in it runs.
    assert_eq!(
        say(&mut sim, "BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n"),
        replies(&[NEED_HELO, OK])
    );
    // Commands that need no greeting still work, and so does the session after EHLO.
    assert_eq!(say(&mut sim, "RSET\r\nNOOP\r\n"), replies(&[OK, OK]));
    let input = format!("EHLO c\r\n{ENVELOPE}DATA\r\nx\r\n.\r\n");
    assert_eq!(
        say(&mut sim, &input),
        replies(&[
            &ehlo_reply(26_214_400),
            MAIL_OK,
            RCPT_OK,
            GO_AHEAD,
            &queued(1)
        ])
    );
    // The pipelined attack in one read: nothing is stored, every mail command is refused.
    let mut sim = sim_with(|_| {});
    let input = format!("{ENVELOPE}DATA\r\nx\r\n.\r\n");
    assert_eq!(
        say(&mut sim, &input),
        replies(&[NEED_HELO, NEED_HELO, NEED_HELO, UNKNOWN, UNKNOWN])
    );
    assert!(sim.messages.is_empty());
}

#[test]
fn after_plain_helo_there_are_no_extensions() {
    let mut sim = sim_with(|_| {});
    assert_eq!(say(&mut sim, "HELO c.example\r\n"), "250 localhost\r\n");
    for line in [
        "MAIL FROM:<a@b.example> SIZE=10\r\n",
        "MAIL FROM:<a@b.example> BODY=8BITMIME\r\n",
        "MAIL FROM:<\u{e9}@b.example> SMTPUTF8\r\n",
        "MAIL FROM:<a@b.example> SIZE=x\r\n",
    ] {
        assert_eq!(say(&mut sim, line), BAD_PARAMETER, "{line:?}");
    }
    assert_eq!(say(&mut sim, ENVELOPE), replies(&[MAIL_OK, RCPT_OK]));
    assert_eq!(
        say(&mut sim, "RCPT TO:<e@d.example> NOTIFY=NEVER\r\n"),
        BAD_PARAMETER
    );
    // BDAT: chunk consumed, then 503; the transaction survives for DATA.
    assert_eq!(
        say(&mut sim, "BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n"),
        replies(&[BDAT_NEEDS_EHLO, OK])
    );
    assert!(!sim.closed);
    assert_eq!(
        say(&mut sim, "DATA\r\nSubject: x\r\n.\r\n"),
        replies(&[GO_AHEAD, &queued(1)])
    );
    assert_eq!(sim.messages, vec![b"Subject: x\r\n".to_vec()]);
    let headers = String::from_utf8_lossy(&sim.headers[0]).into_owned();
    assert!(headers.contains(" with SMTP id "), "{headers:?}");
}

#[test]
fn http_verbs_get_421_and_close() {
    for request in [
        "GET / HTTP/1.1\r\nHost: mx\r\n\r\n",
        "get /index.html HTTP/1.0\r\n",
        "HEAD / HTTP/1.1\r\n",
        "PUT /x HTTP/1.1\r\n",
        "CONNECT mx.example:25 HTTP/1.1\r\n",
        "OPTIONS * HTTP/1.1\r\n",
        "POST /\n",
    ] {
        let mut sim = sim_with(|_| {});
        assert_eq!(say(&mut sim, request), FOREIGN, "{request:?}");
        assert!(sim.closed, "{request:?}");
    }
    // The reported attack: an HTTP POST whose body holds SMTP commands, in any split.
    let post = format!(
        "POST /form HTTP/1.1\r\nHost: mx\r\nContent-Length: 99\r\n\r\nEHLO x\r\n{ENVELOPE}DATA\r\n\
         spam\r\n.\r\n"
    );
    for cut in 0..=post.len() {
        let mut sim = run_cut(&Config::default(), post.as_bytes(), &[cut]);
        assert_eq!(
            sim.take_replies(),
            replies(&[GREETING, FOREIGN]),
            "cut {cut}"
        );
        assert!(sim.messages.is_empty());
    }
    // A request line too long to keep is recognised from its start.
    let mut sim = ready();
    let long = format!("POST /{} HTTP/1.1\r\n{ENVELOPE}", "a".repeat(700));
    assert_eq!(say(&mut sim, &long), FOREIGN);
    assert!(sim.closed);
    // In the middle of a session too.
    let mut sim = ready();
    assert_eq!(
        say(&mut sim, &format!("{ENVELOPE}GET /\r\nDATA\r\n")),
        replies(&[MAIL_OK, RCPT_OK, FOREIGN])
    );
}

#[test]
fn smtputf8_addresses_refuse_controls_bidi_and_invalid_idna() {
    let mut sim = ready_with(|c| c.max_errors = 100);
    let senders = [
        "MAIL FROM:<a\u{85}b\u{e9}@b.example> SMTPUTF8\r\n",
        "MAIL FROM:<\u{202e}\u{e9}@b.example> SMTPUTF8\r\n",
        "MAIL FROM:<\u{e9}@b\u{fc}\u{ad}cher.example> SMTPUTF8\r\n",
    ];
    for line in senders {
        assert_eq!(say(&mut sim, line), BAD_SENDER, "{line:?}");
    }
    assert_eq!(
        say(&mut sim, "MAIL FROM:<\u{e9}@b.example> SMTPUTF8\r\n"),
        MAIL_OK
    );
    let recipients = [
        "RCPT TO:<\u{e9}\u{2028}@d.example>\r\n",
        "RCPT TO:<\u{e9}\u{200f}@d.example>\r\n",
        "RCPT TO:<\u{e9}\u{2066}x@d.example>\r\n",
        "RCPT TO:<u@\u{4f8b}\u{3048}\u{3002}example>\r\n",
        "RCPT TO:<u@\u{2665}.example>\r\n",
        "RCPT TO:<\"\u{e9}\u{9c}\"@d.example>\r\n",
    ];
    for line in recipients {
        assert_eq!(say(&mut sim, line), BAD_RECIPIENT, "{line:?}");
    }
    assert_eq!(
        say(
            &mut sim,
            "RCPT TO:<\u{f1}and\u{fa}@\u{4f8b}\u{3048}.example>\r\n"
        ),
        RCPT_OK
    );
}

// ---- Property tests -------------------------------------------------------------------------

/// One message of a generated session: its recipients, its body lines (without line ends) and
/// how it is sent.
#[derive(Clone, Debug)]
struct GenMessage {
    recipients: usize,
    lines: Vec<Vec<u8>>,
    /// `None`: DATA. `Some(cuts)`: BDAT, the body cut into chunks at these offsets.
    bdat: Option<Vec<usize>>,
}

impl GenMessage {
    /// The message bytes as they must be stored.
    fn body(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for line in &self.lines {
            body.extend_from_slice(line);
            body.extend_from_slice(b"\r\n");
        }
        body
    }
}

/// A body line: no CR or LF, often starting with a dot, sometimes longer than any command.
fn line_strategy() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop::sample::select(vec![b'.', b'a', b'Z', b' ', b'\t', b':', 0xc3, 0xa9]);
    prop_oneof![
        9 => prop::collection::vec(byte.clone(), 0..60),
        1 => prop::collection::vec(byte, 500..3000),
    ]
}

fn message_strategy() -> impl Strategy<Value = GenMessage> {
    (
        1usize..5,
        prop::collection::vec(line_strategy(), 0..12),
        prop::option::of(prop::collection::vec(0usize..4000, 0..4)),
    )
        .prop_map(|(recipients, lines, bdat)| GenMessage {
            recipients,
            lines,
            bdat,
        })
}

/// The client's bytes for a whole session, and the replies a correct server sends to them.
fn transcript(messages: &[GenMessage], max_message_size: u64) -> (Vec<u8>, String) {
    let mut input = b"EHLO client.example\r\n".to_vec();
    let mut want = replies(&[GREETING, &ehlo_reply(max_message_size)]);
    for (n, message) in messages.iter().enumerate() {
        input.extend_from_slice(b"MAIL FROM:<sender@client.example>\r\n");
        want.push_str(MAIL_OK);
        for r in 0..message.recipients {
            input.extend_from_slice(format!("RCPT TO:<r{r}@ringmx.example>\r\n").as_bytes());
            want.push_str(RCPT_OK);
        }
        let body = message.body();
        match &message.bdat {
            None => {
                input.extend_from_slice(b"DATA\r\n");
                want.push_str(GO_AHEAD);
                ringmx_wire::dot_stuff(&mut input, &body);
            }
            Some(cuts) => {
                let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(body.len())).collect();
                bounds.sort_unstable();
                bounds.push(body.len());
                let mut from = 0;
                for (i, &to) in bounds.iter().enumerate() {
                    let last = i + 1 == bounds.len();
                    let size = to - from;
                    let command = if last {
                        format!("BDAT {size} LAST\r\n")
                    } else {
                        want.push_str(&format!("250 2.0.0 Ok: {size} octets received\r\n"));
                        format!("BDAT {size}\r\n")
                    };
                    input.extend_from_slice(command.as_bytes());
                    input.extend_from_slice(&body[from..to]);
                    from = to;
                }
            }
        }
        want.push_str(&queued(n as u32 + 1));
    }
    input.extend_from_slice(b"QUIT\r\n");
    want.push_str(BYE);
    (input, want)
}

/// Checks that `replies` is a sequence of whole replies written to the letter of RFC 5321:
/// three digits (2xx to 5xx), a space or a hyphen, text without CR or LF, then CRLF; a hyphen
/// line is followed by a line of the same code.
fn check_replies(replies: &[u8]) -> Result<(), TestCaseError> {
    let checked = ringmx_wire::check_replies(replies);
    prop_assert!(
        checked.is_ok(),
        "{:?} in {:?}",
        checked,
        String::from_utf8_lossy(replies)
    );
    Ok(())
}

/// Fragments random sessions are built from: commands, terminators, line-end debris, a long
/// line and raw bytes.
fn fragment_strategy() -> impl Strategy<Value = Vec<u8>> {
    let words: Vec<&'static [u8]> = vec![
        b"EHLO c.example\r\n",
        b"HELO c\r\n",
        b"MAIL FROM:<a@b.example>\r\n",
        b"MAIL FROM:<> SMTPUTF8 BODY=8BITMIME\r\n",
        b"MAIL FROM:<a@b.example> SIZE=99999999\r\n",
        b"RCPT TO:<c@d.example>\r\n",
        b"RCPT TO:<x@other.example>\r\n",
        "RCPT TO:<\u{e9}@d.example>\r\n".as_bytes(),
        b"DATA\r\n",
        b"BDAT 7\r\n",
        b"BDAT 3 LAST\r\n",
        b"BDAT 0 LAST\r\n",
        b"BDAT 0\r\n",
        b"BDAT 0004\r\n",
        b"BDAT 2\n",
        b"MAIL FROM:<a@b.example> SIZE=99999999999999999999\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"VRFY x\r\n",
        b"HELP\r\n",
        b".\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b".",
        b"..",
        b"\r\n.\r\n",
        b"\n.\n",
        b"\r.\r\n",
        b"x\n",
        b"text ",
    ];
    prop_oneof![
        20 => prop::sample::select(words).prop_map(|w| w.to_vec()),
        4 => prop::collection::vec(any::<u8>(), 0..16),
        1 => Just(vec![b'L'; 700]),
        1 => Just(b"QUIT\r\n".to_vec()),
        // Lines that end the session at once: an unreadable chunk size, another protocol.
        1 => prop::sample::select(vec![&b"BDAT x\r\n"[..], b"GET / HTTP/1.1\r\n"])
            .prop_map(|w| w.to_vec()),
    ]
}

fn config_strategy() -> impl Strategy<Value = Config> {
    (
        any::<bool>(),
        20u64..3000,
        1usize..4,
        0u32..30,
        0u32..30,
        any::<bool>(),
    )
        .prop_map(
            |(normalize, max_message_size, max_recipients, max_errors, max_junk, domains)| Config {
                bare_lf: if normalize {
                    BareLf::Normalize
                } else {
                    BareLf::Reject
                },
                max_message_size,
                max_recipients,
                max_errors,
                max_junk_commands: max_junk,
                domains: if domains {
                    vec!["d.example".to_string()]
                } else {
                    Vec::new()
                },
                ..Config::default()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A valid multi-message session gives the model's replies and stored bytes, however its
    /// bytes are cut into reads.
    #[test]
    fn valid_session_split_anywhere_is_identical(
        messages in prop::collection::vec(message_strategy(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40),
        normalize in any::<bool>(),
    ) {
        let config = Config {
            bare_lf: if normalize { BareLf::Normalize } else { BareLf::Reject },
            ..Config::default()
        };
        let (input, want) = transcript(&messages, config.max_message_size);
        let bodies: Vec<Vec<u8>> = messages.iter().map(GenMessage::body).collect();

        let whole = run_cut(&config, &input, &[]);
        prop_assert_eq!(String::from_utf8_lossy(&whole.replies), want);
        prop_assert_eq!(&whole.messages, &bodies);
        prop_assert!(whole.closed);
        for (message, headers) in messages.iter().zip(&whole.headers) {
            let want: Vec<String> =
                (0..message.recipients).map(|r| format!("r{r}@ringmx.example")).collect();
            prop_assert_eq!(delivered_to(headers), want);
        }

        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        let split = run_cut(&config, &input, &cuts);
        prop_assert_eq!(&split.replies, &whole.replies);
        prop_assert_eq!(&split.messages, &whole.messages);
        prop_assert!(split.closed);
    }

    /// Random input never panics, only ever gets well-formed replies, and is handled the same
    /// whole or cut into reads.
    #[test]
    fn random_input_gets_well_formed_replies_however_split(
        fragments in prop::collection::vec(fragment_strategy(), 0..60),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
        config in config_strategy(),
    ) {
        let input = fragments.concat();
        let whole = run_cut(&config, &input, &[]);
        check_replies(&whole.replies)?;
        let queued = whole.replies.windows(10).filter(|w| w == b"queued as ").count();
        prop_assert_eq!(queued as u64, whole.stored_count);
        prop_assert_eq!(whole.messages.len() as u64, whole.stored_count);
        for message in &whole.messages {
            prop_assert!(message.len() as u64 <= config.max_message_size);
        }
        // Every recipient that got 250 is in the stored message's headers, and no other.
        let oks = rcpt_oks_per_stored_message(&whole.replies);
        prop_assert_eq!(oks.len(), whole.headers.len());
        for ((headers, rcpts), ok) in whole.headers.iter().zip(&whole.recipients).zip(oks) {
            prop_assert_eq!(&delivered_to(headers), rcpts);
            prop_assert_eq!(rcpts.len(), ok);
        }

        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        cuts.sort_unstable();
        let split = run_cut(&config, &input, &cuts);
        prop_assert_eq!(&split.replies, &whole.replies);
        prop_assert_eq!(&split.messages, &whole.messages);
        prop_assert_eq!(&split.headers, &whole.headers);
        prop_assert_eq!(split.closed, whole.closed);
    }

    /// Arbitrary bytes, not just our fragments.
    #[test]
    fn arbitrary_bytes_never_panic(
        input in prop::collection::vec(any::<u8>(), 0..600),
        config in config_strategy(),
    ) {
        let sim = run_cut(&config, &input, &[]);
        check_replies(&sim.replies)?;
    }
}

// ---- STARTTLS (RFC 3207, SPEC §4.5) ------------------------------------------------------

const TLS_READY: &str = "220 2.0.0 Ready to start TLS\r\n";
const TLS_NOT_OFFERED: &str = "502 5.5.1 STARTTLS not offered\r\n";
const TLS_ACTIVE: &str = "503 5.5.1 TLS already active\r\n";
const TLS_IN_TRANSACTION: &str = "503 5.5.1 STARTTLS not allowed inside a mail transaction\r\n";

/// The EHLO reply when STARTTLS is offered.
fn ehlo_reply_tls(max_message_size: u64) -> String {
    ehlo_reply(max_message_size).replace("250 CHUNKING", "250-STARTTLS\r\n250 CHUNKING")
}

/// A greeted `Sim` with a certificate configured.
fn tls_sim() -> Sim {
    sim_with(|c| c.starttls = true)
}

#[test]
fn starttls_is_advertised_only_with_a_certificate_and_before_tls() {
    let mut sim = sim_with(|_| {});
    assert_eq!(say(&mut sim, "EHLO c.example\r\n"), ehlo_reply(26_214_400));
    assert_eq!(say(&mut sim, "STARTTLS\r\n"), TLS_NOT_OFFERED);
    assert_eq!(sim.tls_handshakes, 0);
    assert!(!sim.closed);

    let mut sim = tls_sim();
    assert_eq!(
        say(&mut sim, "EHLO c.example\r\n"),
        ehlo_reply_tls(26_214_400)
    );
    assert_eq!(say(&mut sim, "starttls\r\n"), TLS_READY);
    assert_eq!(sim.tls_handshakes, 1);
    // The session starts over: the EHLO name is forgotten, the new EHLO offers no STARTTLS.
    assert_eq!(sim.session.envelope().helo, "");
    assert_eq!(sim.session.tls(), Some(sim.tls_facts));
    assert_eq!(say(&mut sim, "EHLO c.example\r\n"), ehlo_reply(26_214_400));
    assert_eq!(say(&mut sim, "STARTTLS\r\n"), TLS_ACTIVE);
    assert_eq!(sim.tls_handshakes, 1);
    assert!(!sim.closed);
}

#[test]
fn starttls_arguments_and_transaction_are_refused() {
    let mut sim = tls_sim();
    assert_eq!(
        say(&mut sim, "EHLO c.example\r\n"),
        ehlo_reply_tls(26_214_400)
    );
    assert_eq!(
        say(&mut sim, "STARTTLS now\r\n"),
        "501 5.5.4 Syntax: this command takes no argument\r\n"
    );
    assert_eq!(say(&mut sim, "MAIL FROM:<a@b.example>\r\n"), MAIL_OK);
    assert_eq!(say(&mut sim, "STARTTLS\r\n"), TLS_IN_TRANSACTION);
    assert_eq!(say(&mut sim, "RCPT TO:<c@d.example>\r\n"), RCPT_OK);
    assert_eq!(say(&mut sim, "STARTTLS\r\n"), TLS_IN_TRANSACTION);
    assert_eq!(say(&mut sim, "RSET\r\n"), OK);
    assert_eq!(say(&mut sim, "STARTTLS\r\n"), TLS_READY);
    assert_eq!(sim.tls_handshakes, 1);
}

#[test]
fn input_pipelined_after_starttls_is_never_executed() {
    // CVE-2011-0411: the commands arrive in the same read as STARTTLS.
    for tail in [
        "MAIL FROM:<evil@b.example>\r\nRCPT TO:<c@d.example>\r\n",
        "QUIT\r\n",
        "EHLO x\r\nSTARTTLS\r\n",
        "DATA\r\n",
        "MAIL FROM:<partial",
    ] {
        let mut sim = tls_sim();
        assert_eq!(
            say(&mut sim, "EHLO c.example\r\n"),
            ehlo_reply_tls(26_214_400)
        );
        let replies = say(&mut sim, &format!("STARTTLS\r\n{tail}"));
        assert_eq!(replies, TLS_READY, "{tail:?}");
        assert!(!sim.closed);
        assert_eq!(sim.tls_handshakes, 1);
        // Inside TLS the session starts clean: no sender left over, nothing half-read.
        assert_eq!(say(&mut sim, "EHLO c.example\r\n"), ehlo_reply(26_214_400));
        assert_eq!(say(&mut sim, "RCPT TO:<c@d.example>\r\n"), NEED_MAIL);
        assert_eq!(say(&mut sim, "MAIL FROM:<a@b.example>\r\n"), MAIL_OK);
    }
    // The same holds when EHLO and STARTTLS themselves came pipelined.
    let mut sim = tls_sim();
    let replies = say(
        &mut sim,
        "EHLO c.example\r\nSTARTTLS\r\nMAIL FROM:<e@b.example>\r\n",
    );
    assert_eq!(replies, ehlo_reply_tls(26_214_400) + TLS_READY);
    // The session starts over: nothing before a new EHLO.
    assert_eq!(
        say(&mut sim, "MAIL FROM:<a@b.example>\r\n"),
        "503 5.5.1 Error: send HELO/EHLO first\r\n"
    );
    assert_eq!(say(&mut sim, "EHLO c.example\r\n"), ehlo_reply(26_214_400));
    assert_eq!(say(&mut sim, "RCPT TO:<c@d.example>\r\n"), NEED_MAIL);
}

#[test]
fn a_message_inside_tls_is_stamped_esmtps() {
    let mut sim = tls_sim();
    say(&mut sim, "EHLO c.example\r\nSTARTTLS\r\n");
    assert_eq!(sim.session.envelope().protocol, "SMTP");
    say(&mut sim, "EHLO c.example\r\n");
    assert_eq!(say(&mut sim, ENVELOPE), replies(&[MAIL_OK, RCPT_OK]));
    let envelope = sim.session.envelope();
    assert_eq!(envelope.helo, "c.example");
    assert_eq!(
        sim.session.tls(),
        Some(TlsFacts {
            version: "TLSv1.3",
            cipher: "TLS_AES_256_GCM_SHA384"
        })
    );
    assert_eq!(
        say(&mut sim, "DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"),
        replies(&[GO_AHEAD, &queued(1)])
    );
    assert_eq!(sim.messages, vec![b"Subject: x\r\n\r\nhi\r\n".to_vec()]);
    say(
        &mut sim,
        "MAIL FROM:<a@b.example> SMTPUTF8\r\nRCPT TO:<c@d.example>\r\nDATA\r\nhi\r\n.\r\n",
    );
    assert_eq!(sim.messages.len(), 2);
    let trace = |i: usize| String::from_utf8_lossy(&sim.headers[i]).into_owned();
    let tls_line = "\r\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n\tby ";
    assert!(trace(0).contains(tls_line), "{}", trace(0));
    assert!(trace(0).contains(" with ESMTPS id "), "{}", trace(0));
    assert!(trace(1).contains(" with UTF8SMTPS id "), "{}", trace(1));
    // Without TLS the names stay the plain ones.
    let mut plain = ready();
    say(&mut plain, ENVELOPE);
    say(&mut plain, "DATA\r\nhi\r\n.\r\n");
    let text = String::from_utf8_lossy(&plain.headers[0]).into_owned();
    assert!(
        text.contains(" with ESMTP id ") && !text.contains("using"),
        "{text}"
    );
    assert_eq!(plain.session.tls(), None);
}

#[test]
fn starttls_without_a_certificate_counts_as_an_error() {
    let mut sim = sim_with(|c| c.max_errors = 2);
    say(&mut sim, "EHLO c.example\r\n");
    assert_eq!(say(&mut sim, "STARTTLS\r\n"), TLS_NOT_OFFERED);
    assert_eq!(say(&mut sim, "STARTTLS\r\n"), TLS_NOT_OFFERED);
    assert_eq!(say(&mut sim, "STARTTLS\r\n"), TOO_MANY_ERRORS);
    assert!(sim.closed);
}

proptest! {
    /// However a STARTTLS session's bytes are split into reads, what follows STARTTLS in the
    /// read that carries it never runs, and a message sent after the handshake is stored
    /// byte-exact.
    #[test]
    fn starttls_split_anywhere(cut in 0usize..40) {
        let head = "EHLO c.example\r\nSTARTTLS\r\n";
        let cut = cut.min(head.len());
        let mut sim = tls_sim();
        sim.feed(&head.as_bytes()[..cut]);
        sim.feed(&head.as_bytes()[cut..]);
        prop_assert_eq!(sim.tls_handshakes, 1);
        let replies = sim.take_replies();
        prop_assert_eq!(replies, ehlo_reply_tls(26_214_400) + TLS_READY);
        let rest = format!("EHLO c.example\r\n{ENVELOPE}DATA\r\nhi\r\n.\r\n");
        sim.feed(rest.as_bytes());
        prop_assert_eq!(sim.messages.clone(), vec![b"hi\r\n".to_vec()]);
    }
}

#[test]
fn the_trace_of_a_tls_message_names_version_and_cipher() {
    use chrono::TimeZone as _;
    let mut sim = tls_sim();
    sim.tls_facts = TlsFacts {
        version: "TLSv1.2",
        cipher: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    };
    say(&mut sim, "EHLO c.example\r\nSTARTTLS\r\n");
    say(
        &mut sim,
        "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n",
    );
    let envelope = sim.session.envelope();
    let now = chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
    let mut head = Vec::new();
    let trace = trace::Trace {
        envelope: &envelope,
        peer: "192.0.2.7".parse().unwrap(),
        hostname: "mx.example",
        id: "QID1",
        now,
        tls: sim.session.tls(),
    };
    trace::write_trace(&mut head, &trace);
    assert_eq!(
        String::from_utf8(head).unwrap(),
        "Return-Path: <a@b.example>\r\nDelivered-To: c@d.example\r\n\
         Received: from c.example ([192.0.2.7])\r\n\
         \t(using TLSv1.2 with cipher TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)\r\n\
         \tby mx.example (ringmx) with ESMTPS id QID1\r\n\
         \tfor <c@d.example>; Fri, 02 Jan 2026 03:04:05 +0000\r\n"
    );
    // Without TLS there is no comment line.
    let mut head = Vec::new();
    trace::write_trace(&mut head, &trace::Trace { tls: None, ..trace });
    let text = String::from_utf8(head).unwrap();
    assert!(text.contains("([192.0.2.7])\r\n\tby mx.example"), "{text}");
}

#[test]
fn the_ehlo_starttls_requires_is_not_junk() {
    let mut sim = sim_with(|c| {
        c.starttls = true;
        c.max_junk_commands = 0;
    });
    assert_eq!(
        say(&mut sim, "EHLO c.example\r\n"),
        ehlo_reply_tls(26_214_400)
    );
    assert_eq!(say(&mut sim, "STARTTLS\r\n"), TLS_READY);
    assert_eq!(say(&mut sim, "EHLO c.example\r\n"), ehlo_reply(26_214_400));
    assert!(!sim.closed);
    // A further EHLO is a repeat, and junk.
    assert_eq!(
        say(&mut sim, "EHLO c.example\r\n"),
        "421 4.7.0 localhost Error: too many junk commands\r\n"
    );
}

#[test]
fn decimals_are_written_as_formatting_writes_them() {
    for n in (0..=1000).chain([26_214_400, 1 << 53, u64::MAX - 1, u64::MAX]) {
        let mut out = b"x".to_vec();
        super::push_decimal(&mut out, n);
        assert_eq!(out, format!("x{n}").into_bytes());
    }
}
