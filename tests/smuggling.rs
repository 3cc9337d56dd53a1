//! SMTP smuggling end to end (SPEC §4.3, the CVE-2023-51764 family) against the real binary.
//!
//! Every non-standard terminator — `\n.\n`, `\r.\r`, `\r\n.\n`, `\n.\r\n`, `\r\n.\r`,
//! `\r.\r\n`, `\n.\r`, `\r.\n` — is followed by a smuggled `MAIL FROM`/`RCPT TO`/`DATA`/evil
//! body and then the real CRLF `.` CRLF, sent pipelined in one write, lockstep, and a byte at a
//! time, in both `RINGMX_BARE_LF` modes, and inside BDAT chunks (one chunk, or split inside the
//! vector). The replies are counted exactly up to the close after QUIT, so a reply to any
//! smuggled command fails the test; the spool must hold exactly the messages the client meant:
//! in `reject` mode the DATA message gets `550 5.6.0` and nothing is stored, in `normalize`
//! mode one message is stored holding the smuggled text as data (bare LF stored as CRLF), and
//! BDAT stores its chunks byte-exact.

mod common;

use std::collections::HashMap;
use std::io::Write as _;

use common::*;

const SENDER: &str = "sender@origin.example";
const RCPTS: &[&str] = &["rcpt@rcpt.example"];

/// The non-standard terminators.
const VECTORS: &[(&str, &[u8])] = &[
    ("LF.LF", b"\n.\n"),
    ("CR.CR", b"\r.\r"),
    ("CRLF.LF", b"\r\n.\n"),
    ("LF.CRLF", b"\n.\r\n"),
    ("CRLF.CR", b"\r\n.\r"),
    ("CR.CRLF", b"\r.\r\n"),
    ("LF.CR", b"\n.\r"),
    ("CR.LF", b"\r.\n"),
];

/// What a smuggler appends after the fake terminator.
const SMUGGLED: &[u8] = b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@rcpt.example>\r\n\
DATA\r\nFrom: <ceo@victim.example>\r\n\r\nevil body";

/// The trace headers of a message from `Client::ehlo` on 127.0.0.1.
fn template() -> Expected<'static> {
    Expected {
        sender: SENDER,
        recipients: RCPTS,
        helo: "client.example",
        peer: "127.0.0.1",
        protocol: "ESMTP",
        body: b"",
    }
}

/// The two shapes of DATA payload (with the real terminator at the end): the smuggled
/// message's own CRLF.CRLF is the real end, or the vector repeats and real data follows.
fn data_payloads(vector: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let mut a = b"Subject: smuggling\r\n\r\nhello".to_vec();
    a.extend_from_slice(vector);
    a.extend_from_slice(SMUGGLED);
    let mut b = a.clone();
    a.extend_from_slice(b"\r\n.\r\n");
    b.extend_from_slice(vector);
    b.extend_from_slice(b"tail\r\n.\r\n");
    vec![("ends-with-smuggled-dot", a), ("vector-twice", b)]
}

/// What `normalize` mode stores for DATA bytes `data` (ending in CRLF.CRLF): a bare LF becomes
/// CRLF but starts no line, a bare CR is kept, a `.` after CRLF is dropped, and only CRLF `.`
/// CRLF ends the data. A byte-at-a-time model, written from SPEC §4.3.
fn normalize_model(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut line_start = true;
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        if line_start && b == b'.' {
            if data[i + 1..].starts_with(b"\r\n") {
                return out;
            }
            i += 1;
            line_start = false;
            continue;
        }
        if b == b'\r' && data.get(i + 1) == Some(&b'\n') {
            out.extend_from_slice(b"\r\n");
            i += 2;
            line_start = true;
            continue;
        }
        if b == b'\n' {
            out.extend_from_slice(b"\r\n");
        } else {
            out.push(b);
        }
        i += 1;
        line_start = false;
    }
    panic!(
        "payload without CRLF.CRLF: {:?}",
        String::from_utf8_lossy(data)
    );
}

/// How the client sends a case.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Everything, QUIT included, in one write.
    Pipelined,
    /// One command, one reply.
    Lockstep,
    /// Lockstep, but the message data one byte per write.
    Bytewise,
}

/// The server under test and the messages it must hold (ID → stored body).
struct Spool {
    server: Server,
    normalize: bool,
    want: HashMap<String, Vec<u8>>,
}

impl Spool {
    fn start(bare_lf: &str) -> Spool {
        Spool {
            server: Server::start(&[("RINGMX_BARE_LF", bare_lf)]),
            normalize: bare_lf == "normalize",
            want: HashMap::new(),
        }
    }

    /// Checks that `new/` holds exactly the wanted messages and `tmp/` nothing.
    fn check(&self, what: &str) {
        let files = self.server.new_files();
        assert_eq!(
            files.len(),
            self.want.len(),
            "{what}: {} file(s) in new/, want {}",
            files.len(),
            self.want.len()
        );
        check_spool_matches(&files, &self.want, &template());
        assert!(
            self.server
                .wait_tmp_empty(std::time::Duration::from_secs(5)),
            "{what}: tmp/ not empty"
        );
    }

    /// Reads the reply to a smuggling message's end and records what must be stored.
    fn end_of_data(&mut self, client: &mut Client, data: &[u8], what: &str) {
        let reply = client.read_reply();
        if self.normalize {
            assert!(reply.starts_with("250 2.0.0 "), "{what}: got {reply:?}");
            let id = queue_id(&reply).unwrap();
            self.want.insert(id, normalize_model(data));
        } else {
            assert!(reply.starts_with("550 5.6.0"), "{what}: got {reply:?}");
        }
    }

    /// One DATA case: the smuggling message, then a legitimate one, then QUIT; every reply
    /// counted up to the close.
    fn data_case(&mut self, vector: &str, shape: &str, data: &[u8], mode: Mode) {
        let what = format!("DATA {vector} {shape} {mode:?}");
        let legit = sample_body(&what, 0, 0);
        let mut client = Client::greeted(self.server.addr());
        match mode {
            Mode::Pipelined => {
                let mut script = b"EHLO client.example\r\n".to_vec();
                script.extend_from_slice(
                    format!("MAIL FROM:<{SENDER}>\r\nRCPT TO:<{}>\r\nDATA\r\n", RCPTS[0])
                        .as_bytes(),
                );
                script.extend_from_slice(data);
                script.extend_from_slice(&transaction(SENDER, RCPTS, &legit));
                script.extend_from_slice(b"QUIT\r\n");
                client.send(&script);
                client.expect("250-");
                client.expect("250 2.1.0");
                client.expect("250 2.1.5");
                client.expect("354 ");
                self.end_of_data(&mut client, data, &what);
                client.expect("250 2.1.0");
                client.expect("250 2.1.5");
                client.expect("354 ");
                let id = client.expect_queued();
                self.want.insert(id, legit);
            }
            Mode::Lockstep | Mode::Bytewise => {
                client.send(b"EHLO client.example\r\n");
                client.expect("250-");
                client.send(format!("MAIL FROM:<{SENDER}>\r\n").as_bytes());
                client.expect("250 2.1.0");
                client.send(format!("RCPT TO:<{}>\r\n", RCPTS[0]).as_bytes());
                client.expect("250 2.1.5");
                client.send(b"DATA\r\n");
                client.expect("354 ");
                if matches!(mode, Mode::Bytewise) {
                    client.send_bytewise(data);
                } else {
                    client.send(data);
                }
                self.end_of_data(&mut client, data, &what);
                let id = send_lockstep(&mut client, SENDER, RCPTS, &legit);
                self.want.insert(id, legit);
                client.send(b"QUIT\r\n");
            }
        }
        client.expect("221 2.0.0");
        let rest = client.read_until_closed();
        assert_eq!(rest, "", "{what}: replies to smuggled commands");
        self.check(&what);
    }

    /// One BDAT case: the vector, the smuggled commands and even a real CRLF.CRLF inside the
    /// chunk(s) are data, stored byte-exact; split chunks cut through the vector.
    fn bdat_case(&mut self, vector_name: &str, vector: &[u8], split: bool, pipelined: bool) {
        let what = format!("BDAT {vector_name} split={split} pipelined={pipelined}");
        let mut chunk = b"Subject: smuggling\r\n\r\nhello".to_vec();
        let cut = chunk.len() + 1;
        chunk.extend_from_slice(vector);
        chunk.extend_from_slice(SMUGGLED);
        chunk.extend_from_slice(b"\r\n.\r\nQUIT\r\nMAIL FROM:<evil2@attacker.example>\r\n");
        let pieces: Vec<&[u8]> = if split {
            vec![&chunk[..cut], &chunk[cut..]]
        } else {
            vec![&chunk[..]]
        };
        let mut client = Client::greeted(self.server.addr());
        let mut commands: Vec<Vec<u8>> = vec![
            b"EHLO client.example\r\n".to_vec(),
            format!("MAIL FROM:<{SENDER}>\r\n").into_bytes(),
            format!("RCPT TO:<{}>\r\n", RCPTS[0]).into_bytes(),
        ];
        for (i, piece) in pieces.iter().enumerate() {
            let last = if i + 1 == pieces.len() { " LAST" } else { "" };
            let mut c = format!("BDAT {}{last}\r\n", piece.len()).into_bytes();
            c.extend_from_slice(piece);
            commands.push(c);
        }
        commands.push(b"QUIT\r\n".to_vec());
        let mut expect: Vec<String> = vec!["250-".into(), "250 2.1.0".into(), "250 2.1.5".into()];
        for (i, piece) in pieces.iter().enumerate() {
            if i + 1 < pieces.len() {
                expect.push(format!("250 2.0.0 Ok: {} octets received", piece.len()));
            } else {
                expect.push("250 2.0.0 Ok: queued as ".into());
            }
        }
        expect.push("221 2.0.0".into());
        let mut id = None;
        if pipelined {
            let script: Vec<u8> = commands.concat();
            client.stream().write_all(&script).unwrap();
        }
        for (command, want) in commands.iter().zip(&expect) {
            if !pipelined {
                client.send(command);
            }
            let reply = client.expect(want);
            if want.contains("queued") {
                id = queue_id(&reply);
            }
        }
        assert_eq!(client.read_until_closed(), "", "{what}: extra replies");
        self.want.insert(id.expect("queued"), chunk);
        self.check(&what);
    }
}

/// Runs every DATA case (vectors × payload shapes × send modes) against one server.
fn data_cases(bare_lf: &str) {
    let mut spool = Spool::start(bare_lf);
    for (name, vector) in VECTORS {
        for (shape, data) in data_payloads(vector) {
            for mode in [Mode::Pipelined, Mode::Lockstep, Mode::Bytewise] {
                spool.data_case(name, shape, &data, mode);
            }
        }
    }
    // Two messages per case in normalize mode (smuggling one + legitimate), one in reject.
    let per_case = if spool.normalize { 2 } else { 1 };
    assert_eq!(spool.want.len(), VECTORS.len() * 2 * 3 * per_case);
}

#[test]
fn smuggling_in_data_reject_mode() {
    data_cases("reject");
}

#[test]
fn smuggling_in_data_normalize_mode() {
    data_cases("normalize");
}

#[test]
fn smuggling_in_bdat_both_modes() {
    for mode in ["reject", "normalize"] {
        let mut spool = Spool::start(mode);
        for (name, vector) in VECTORS {
            for split in [false, true] {
                for pipelined in [false, true] {
                    spool.bdat_case(name, vector, split, pipelined);
                }
            }
        }
    }
}

/// The model itself: a standard terminator ends the data, stuffing is removed, and a bare LF
/// becomes CRLF without starting a line.
#[test]
fn normalize_model_sanity() {
    assert_eq!(normalize_model(b"a\r\n..b\r\n.\r\n"), b"a\r\n.b\r\n");
    assert_eq!(normalize_model(b"a\n.\nb\r\n.\r\n"), b"a\r\n.\r\nb\r\n");
    assert_eq!(normalize_model(b"a\r\n.\rb\r\n.\r\n"), b"a\r\n\rb\r\n");
}
