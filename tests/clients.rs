//! Real SMTP clients against the real `ringmx` binary on loopback: the `lettre` crate, Python's
//! `smtplib`, `swaks` and Postfix's `smtp-source`. Each stored message is checked against what
//! the client says it sent, byte for byte where the client lets us know the bytes exactly.
//! A client that is not installed is skipped with a message (the project's test script
//! installs swaks and postfix).

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::*;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox};
use lettre::transport::smtp::extension::ClientId;
use lettre::{Message, SmtpTransport, Transport};

/// How long any external client may run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

fn mailbox(s: &str) -> Mailbox {
    s.parse().unwrap()
}

/// lettre: several messages, one with lines starting with '.', one with an 8-bit UTF-8 body;
/// stored bytes are exactly lettre's formatted message (plus the CRLF lettre puts before the
/// end-of-data dot).
#[test]
fn lettre_messages() {
    let server = Server::start(&[]);
    let transport = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(server.addr().port())
        .hello_name(ClientId::Domain("client.example".into()))
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let builder = || {
        Message::builder()
            .from(mailbox("Sender <s@y.example>"))
            .to(mailbox("u@x.example"))
            .to(mailbox("V.User@X.example"))
    };
    let messages = [
        builder()
            .subject("plain")
            .header(ContentType::TEXT_PLAIN)
            .body(String::from("Hello from lettre.\nSecond line.\n"))
            .unwrap(),
        builder()
            .subject("dots")
            .header(ContentType::TEXT_PLAIN)
            .body(String::from(
                ".leading dot\n..two dots\n.\nafter a lone dot\nend\n",
            ))
            .unwrap(),
        builder()
            .subject("Grüße 8-bit")
            .header(ContentType::TEXT_PLAIN)
            .body(
                Body::new_with_encoding(
                    String::from("Hällo wörld — ünïcödé 📬\n.dotted ütf-8\n"),
                    ContentTransferEncoding::EightBit,
                )
                .unwrap(),
            )
            .unwrap(),
    ];
    let mut sent = HashMap::new();
    for message in &messages {
        let response = transport
            .send(message)
            .unwrap_or_else(|e| panic!("lettre send: {e}\n{}", server.log_text()));
        let first = response.first_line().unwrap_or_default().to_string();
        let id = queue_id(&first).unwrap_or_else(|| panic!("no ID in {first:?}"));
        let mut body = message.formatted();
        body.extend_from_slice(b"\r\n");
        assert!(sent.insert(id, body).is_none());
    }
    let eight_bit = &messages[2].formatted();
    assert!(
        eight_bit.windows(2).any(|w| w == "ä".as_bytes()),
        "the third message should carry raw 8-bit bytes"
    );
    let template = Expected {
        sender: "s@y.example",
        recipients: &["u@x.example", "V.User@X.example"],
        helo: "client.example",
        peer: "127.0.0.1",
        protocol: "ESMTP",
        body: b"",
    };
    check_spool_matches(&server.new_files(), &sent, &template);
}

/// Runs a Python script with the server's port as its argument; `None` (after a skip line)
/// when python3 is not available.
fn python(script: &str, port: u16, test: &str) -> Option<String> {
    if find_program("python3").is_none() {
        skip_or_fail(test, "python3 is not on PATH");
        return None;
    }
    let mut command = Command::new("python3");
    command.arg("-c").arg(script).arg(port.to_string());
    let (status, stdout, stderr) = run_bounded(command, CLIENT_TIMEOUT);
    assert!(status.success(), "python3 failed: {status:?}\n{stderr}");
    Some(stdout)
}

/// smtplib.sendmail with two recipients and a byte string holding dot lines and 8-bit text:
/// no recipient refused, and the stored bytes are exactly the message.
#[test]
fn python_smtplib_sendmail() {
    let server = Server::start(&[]);
    let message: &[u8] = "From: <s@y.example>\r\nTo: <u@x.example>\r\nSubject: smtplib\r\n\r\n\
        Hello from smtplib.\r\n.leading dot\r\n.\r\n..two\r\nGr\u{fc}\u{df}e 8-bit\r\nend\r\n"
        .as_bytes();
    let hex: String = message.iter().map(|b| format!("{b:02x}")).collect();
    let script = format!(
        r#"
import smtplib, sys
port = int(sys.argv[1])
msg = bytes.fromhex("{hex}")
with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=10) as s:
    refused = s.sendmail("s@y.example", ["u@x.example", "w@x.example"], msg)
    print("REFUSED", refused)
"#
    );
    let Some(out) = python(&script, server.addr().port(), "python_smtplib_sendmail") else {
        return;
    };
    assert!(out.contains("REFUSED {}"), "{out}");
    let files = server.new_files();
    assert_eq!(files.len(), 1);
    let want = Expected {
        sender: "s@y.example",
        recipients: &["u@x.example", "w@x.example"],
        helo: "client.example",
        peer: "127.0.0.1",
        protocol: "ESMTP",
        body: message,
    };
    check_stored(&files[0].0, &files[0].1, &want);
}

/// smtplib.send_message with SMTPUTF8 to and from UTF-8 addresses: stored under
/// `with UTF8SMTP`, addresses as written, and exactly the bytes smtplib flattened.
#[test]
fn python_smtplib_send_message_smtputf8() {
    let server = Server::start(&[]);
    let script = r#"
import smtplib, sys, io, email.generator
from email.message import EmailMessage
port = int(sys.argv[1])
m = EmailMessage()
m["From"] = "Sénder <sénder@y.example>"
m["To"] = "üser@x.example"
m["Subject"] = "Grüße"
m.set_content("Hällo wörld\n.dot line\n")
# The bytes send_message sends for an international message.
b = io.BytesIO()
email.generator.BytesGenerator(b, policy=m.policy.clone(utf8=True)).flatten(m, linesep="\r\n")
with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=10) as s:
    refused = s.send_message(m, mail_options=["SMTPUTF8"])
    print("REFUSED", refused)
print("FLAT", b.getvalue().hex())
"#;
    let Some(out) = python(
        script,
        server.addr().port(),
        "python_smtplib_send_message_smtputf8",
    ) else {
        return;
    };
    assert!(out.contains("REFUSED {}"), "{out}");
    let flat_hex = out
        .lines()
        .find_map(|l| l.strip_prefix("FLAT "))
        .expect("FLAT line");
    let flat: Vec<u8> = (0..flat_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&flat_hex[i..i + 2], 16).unwrap())
        .collect();
    let files = server.new_files();
    assert_eq!(files.len(), 1);
    let want = Expected {
        sender: "sénder@y.example",
        recipients: &["üser@x.example"],
        helo: "client.example",
        peer: "127.0.0.1",
        protocol: "UTF8SMTP",
        body: &flat,
    };
    check_stored(&files[0].0, &files[0].1, &want);
}

/// `swaks` on PATH, or `None` after a skip line.
fn swaks(test: &str) -> Option<std::path::PathBuf> {
    let found = find_program("swaks");
    if found.is_none() {
        skip_or_fail(test, "swaks is not on PATH (apt-get install swaks)");
    }
    found
}

/// A swaks command against `server` with the common options.
fn swaks_command(path: &std::path::Path, server: &Server) -> Command {
    let mut command = Command::new(path);
    command
        .arg("--server")
        .arg(server.addr().to_string())
        .args(["--to", "u@x.example", "--from", "s@y.example"])
        .args(["--helo", "client.example", "--timeout", "10"]);
    command
}

fn swaks_template() -> Expected<'static> {
    Expected {
        sender: "s@y.example",
        recipients: &["u@x.example"],
        helo: "client.example",
        peer: "127.0.0.1",
        protocol: "ESMTP",
        body: b"",
    }
}

/// swaks with --body, plain and with --pipeline: accepted, stored with swaks's headers and the
/// body.
#[test]
fn swaks_body_and_pipeline() {
    let Some(path) = swaks("swaks_body_and_pipeline") else {
        return;
    };
    let server = Server::start(&[]);
    for (n, pipeline) in [false, true].into_iter().enumerate() {
        let text = format!("swaks body number {n}");
        let mut command = swaks_command(&path, &server);
        command.args(["--body", &text]);
        if pipeline {
            command.arg("--pipeline");
        }
        let (status, stdout, stderr) = run_bounded(command, CLIENT_TIMEOUT);
        assert!(status.success(), "swaks: {status:?}\n{stdout}\n{stderr}");
        assert!(stdout.contains("250 2.0.0 Ok: queued as "), "{stdout}");
        if pipeline {
            assert!(stdout.contains("PIPELINING"), "{stdout}");
        }
        let files = server.new_files();
        assert_eq!(files.len(), n + 1);
        let hit = files
            .iter()
            .find(|(_, bytes)| bytes.windows(text.len()).any(|w| w == text.as_bytes()))
            .unwrap_or_else(|| panic!("no stored message holds {text:?}"));
        let (id, body) = check_trace(&hit.0, &hit.1, &swaks_template());
        assert!(stdout.contains(&format!("queued as {id}")), "{stdout}");
        assert!(
            body.starts_with(b"Date: "),
            "{:?}",
            String::from_utf8_lossy(body)
        );
        assert!(body.ends_with(b"\r\n"));
    }
}

/// swaks --data with dot lines (swaks stuffs them): the stored message is the data exactly,
/// plus the empty line swaks adds before the end-of-data dot.
#[test]
fn swaks_data_with_dot_lines() {
    let Some(path) = swaks("swaks_data_with_dot_lines") else {
        return;
    };
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let data: &[u8] = b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nafter\r\n";
    let file = dir.path().join("message.eml");
    std::fs::write(&file, data).unwrap();
    let mut command = swaks_command(&path, &server);
    command.arg("--data").arg(&file).arg("--pipeline");
    let (status, stdout, stderr) = run_bounded(command, CLIENT_TIMEOUT);
    assert!(status.success(), "swaks: {status:?}\n{stdout}\n{stderr}");
    let files = server.new_files();
    assert_eq!(files.len(), 1);
    let mut want_body = data.to_vec();
    want_body.extend_from_slice(b"\r\n");
    let want = Expected {
        body: &want_body,
        ..swaks_template()
    };
    let id = check_stored(&files[0].0, &files[0].1, &want);
    assert!(stdout.contains(&format!("queued as {id}")), "{stdout}");
}

/// Postfix's smtp-source: 5 sessions sending 100 messages of 1 KiB (one per connection), then
/// 2 sessions sending 50 each over one connection (-d): every message stored, once.
#[test]
fn smtp_source_messages() {
    const SMTP_SOURCE: &str = "/usr/sbin/smtp-source";
    if find_program(SMTP_SOURCE).is_none() {
        skip_or_fail(
            "smtp_source_messages",
            &format!("{SMTP_SOURCE} not found (apt-get install postfix)"),
        );
        return;
    }
    let server = Server::start(&[]);
    let run = |extra: &[&str], count: usize| {
        let mut command = Command::new(SMTP_SOURCE);
        command
            .args(extra)
            .args(["-m", &count.to_string(), "-l", "1024"])
            .args([
                "-M",
                "client.example",
                "-f",
                "s@y.example",
                "-t",
                "u@x.example",
            ])
            .arg(server.addr().to_string());
        let (status, stdout, stderr) = run_bounded(command, CLIENT_TIMEOUT);
        assert!(
            status.success(),
            "smtp-source: {status:?}\n{stdout}\n{stderr}"
        );
    };
    let template = Expected {
        sender: "s@y.example",
        recipients: &["u@x.example"],
        helo: "client.example",
        peer: "127.0.0.1",
        // smtp-source says HELO.
        protocol: "SMTP",
        body: b"",
    };
    let check = |want_files: usize| {
        let files = server.new_files();
        assert_eq!(files.len(), want_files, "{}", server.log_text());
        for (name, bytes) in &files {
            let (id, body) = check_trace(name, bytes, &template);
            assert_eq!(name, &format!("{id}.{HOSTNAME}"));
            let split = body
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .unwrap_or_else(|| panic!("{name}: no header/body split"));
            assert!(body.starts_with(b"From: <s@y.example>\r\n"), "{name}");
            let text = &body[split + 4..];
            assert!(text.len() >= 1024, "{name}: body of {} bytes", text.len());
            assert!(text.ends_with(b"\r\n"), "{name}");
            assert!(
                text.iter()
                    .all(|&b| b == b'X' || b.is_ascii_digit() || b == b'\r' || b == b'\n'),
                "{name}: unexpected body bytes"
            );
        }
        assert!(server.tmp_files().is_empty());
    };
    run(&["-s", "5"], 100);
    check(100);
    run(&["-d", "-s", "2"], 50);
    check(150);
}
