//! The TLS layer against a real rustls client, in memory: handshakes for TLS 1.3 and 1.2 with
//! the facts the Received header states, plaintext both ways split at every awkward size and
//! squeezed through a small receive buffer, garbage and truncation, and the certificate store's
//! reload rules (a new pair is taken, a broken one is refused and the old one kept).

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::*;

/// A certificate for `localhost` and its key, as PEM files in a temporary directory.
struct Pair {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    Pair {
        _dir: dir,
        cert,
        key,
        der: made.cert.der().clone(),
    }
}

/// A rustls client that trusts only `der`, limited to `version`.
fn client(
    der: &CertificateDer<'static>,
    version: &'static rustls::SupportedProtocolVersion,
) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap()
}

/// Plaintext the server layer produced so far, and the connection's receive buffer limit.
const PLAIN_MAX: usize = 4096;

/// Moves records between the client and the server until neither has anything to send.
/// Ciphertext from the client reaches the server in pieces of `split` bytes; plaintext the
/// server decrypts lands in `plain` (drained into `got` whenever it fills).
fn pump(
    client: &mut ClientConnection,
    server: &mut TlsLayer,
    split: usize,
    got: &mut Vec<u8>,
) -> Result<(), TlsError> {
    let mut plain = BytesMut::with_capacity(PLAIN_MAX);
    for _ in 0..10_000 {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let mut pos = 0;
        while pos < wire.len() {
            let end = (pos + split).min(wire.len());
            let mut piece = &wire[pos..end];
            while !piece.is_empty() {
                let done = server.receive(piece, &mut plain, PLAIN_MAX)?;
                piece = &piece[done.consumed..];
                got.extend_from_slice(&plain);
                plain.clear();
            }
            pos = end;
        }
        // Anything left in the layer once the buffer was emptied.
        loop {
            let done = server.receive(&[], &mut plain, PLAIN_MAX)?;
            assert_eq!(done.consumed, 0);
            got.extend_from_slice(&plain);
            plain.clear();
            if !done.pending {
                break;
            }
        }
        let mut back = Vec::new();
        server.take_ciphertext(&mut back);
        if wire.is_empty() && back.is_empty() {
            return Ok(());
        }
        let mut rd = &back[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets().unwrap();
        }
    }
    panic!("pump did not settle");
}

/// Reads all plaintext the client has received.
fn client_plaintext(client: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match client.reader().read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    out
}

/// A message-like payload with every byte value and CRLFs.
fn payload(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            if i % 77 == 76 {
                b'\n'
            } else {
                (i * 7 % 251) as u8
            }
        })
        .collect()
}

fn handshake_and_traffic(version: &'static rustls::SupportedProtocolVersion, want: &str) {
    let p = pair();
    let config = load_pair(&p.cert, &p.key).unwrap();
    for split in [1, 5, 6, 100, 16_389, 1 << 20] {
        let mut server = TlsLayer::new(Arc::clone(&config)).unwrap();
        let mut c = client(&p.der, version);
        let mut got = Vec::new();
        assert!(server.is_handshaking());
        assert_eq!(server.facts(), None);
        pump(&mut c, &mut server, split, &mut got).unwrap();
        assert!(!server.is_handshaking());
        assert!(!c.is_handshaking());
        let facts = server.facts().unwrap();
        assert_eq!(facts.version, want);
        assert!(facts.cipher.starts_with("TLS_"), "{facts:?}");
        assert!(!facts.cipher.starts_with("TLS13_"), "{facts:?}");
        assert!(got.is_empty());

        // Client to server: 200 KiB, more than the receive buffer holds at once.
        let data = payload(200 * 1024 + 3);
        for chunk in data.chunks(30_000) {
            c.writer().write_all(chunk).unwrap();
            pump(&mut c, &mut server, split, &mut got).unwrap();
        }
        assert!(got == data, "split {split}: plaintext differs");

        // Server to client: replies.
        server.send(b"250 2.0.0 Ok\r\n").unwrap();
        got.clear();
        pump(&mut c, &mut server, split, &mut got).unwrap();
        assert_eq!(client_plaintext(&mut c), b"250 2.0.0 Ok\r\n");

        // close_notify from the client is reported.
        c.send_close_notify();
        let mut wire = Vec::new();
        c.write_tls(&mut wire).unwrap();
        let mut plain = BytesMut::new();
        let done = server.receive(&wire, &mut plain, PLAIN_MAX).unwrap();
        assert!(done.closed);
        assert_eq!(done.consumed, wire.len());
    }
}

#[test]
fn tls13_handshake_facts_and_traffic() {
    handshake_and_traffic(&rustls::version::TLS13, "TLSv1.3");
}

#[test]
fn tls12_handshake_facts_and_traffic() {
    handshake_and_traffic(&rustls::version::TLS12, "TLSv1.2");
}

#[test]
fn iana_names_cover_the_providers_suites() {
    for suite in rustls::crypto::ring::default_provider().cipher_suites {
        let code = u16::from(suite.suite());
        let name = iana_name(code).unwrap_or_else(|| panic!("{:?}", suite.suite()));
        let rustls_name = format!("{:?}", suite.suite());
        assert_eq!(rustls_name.replace("TLS13_", "TLS_"), name);
    }
}

#[test]
fn garbage_and_plain_smtp_fail_the_handshake() {
    let p = pair();
    let config = load_pair(&p.cert, &p.key).unwrap();
    for input in [
        &b"EHLO client.example\r\n"[..],
        b"\x16\x03\x01\x00\x05hello",
        b"\x17\x03\x03\x00\x10AAAAAAAAAAAAAAAA",
        &[0u8; 64],
        &[0xff; 64],
    ] {
        let mut server = TlsLayer::new(Arc::clone(&config)).unwrap();
        let mut plain = BytesMut::new();
        let result = server.receive(input, &mut plain, PLAIN_MAX);
        assert!(result.is_err(), "{input:?} was accepted");
        assert!(plain.is_empty());
    }
}

#[test]
fn a_truncated_record_yields_nothing() {
    let p = pair();
    let config = load_pair(&p.cert, &p.key).unwrap();
    let mut server = TlsLayer::new(config).unwrap();
    let mut c = client(&p.der, &rustls::version::TLS13);
    let mut got = Vec::new();
    pump(&mut c, &mut server, 1 << 20, &mut got).unwrap();
    c.writer()
        .write_all(b"MAIL FROM:<a@b.example>\r\n")
        .unwrap();
    let mut wire = Vec::new();
    c.write_tls(&mut wire).unwrap();
    let mut plain = BytesMut::new();
    let done = server
        .receive(&wire[..wire.len() - 1], &mut plain, PLAIN_MAX)
        .unwrap();
    assert_eq!(
        done.plaintext, 0,
        "a record was released before its tag was checked"
    );
    // A flipped bit in the rest is an authentication failure, not plaintext.
    let mut last = wire[wire.len() - 1];
    last ^= 1;
    assert!(server.receive(&[last], &mut plain, PLAIN_MAX).is_err());
    assert!(plain.is_empty());
}

#[test]
fn a_mismatched_pair_or_bad_files_are_refused() {
    let a = pair();
    let b = pair();
    let e = load_pair(&a.cert, &b.key).unwrap_err();
    assert!(e.contains(&a.cert.display().to_string()), "{e}");
    let e = load_pair(&a.cert, &a.cert).unwrap_err();
    assert!(e.contains(&a.cert.display().to_string()), "{e}");
    let e = load_pair(&a.key, &a.key).unwrap_err();
    assert!(
        e.contains("no certificate") || e.contains(&a.key.display().to_string()),
        "{e}"
    );
    let missing = a.cert.with_file_name("missing.pem");
    let e = load_pair(&missing, &a.key).unwrap_err();
    assert!(e.contains("missing.pem"), "{e}");
}

#[test]
fn store_reloads_a_new_pair_and_keeps_the_old_one_when_broken() {
    let a = pair();
    let b = pair();
    let store = CertStore::open(&a.cert, &a.key).unwrap();
    let first = store.current();
    assert!(store.reload_if_changed().is_none());

    // A broken key: refused, the old configuration stays.
    std::fs::write(
        &a.key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    bump_mtime(&a.key);
    assert!(matches!(store.reload_if_changed(), Some(Err(_))));
    assert!(Arc::ptr_eq(&first, &store.current()));
    // Not retried until a file changes again.
    assert!(store.reload_if_changed().is_none());

    // The new pair arrives: taken, and a client now sees the new certificate.
    std::fs::copy(&b.cert, &a.cert).unwrap();
    std::fs::copy(&b.key, &a.key).unwrap();
    bump_mtime(&a.cert);
    assert!(matches!(store.reload_if_changed(), Some(Ok(()))));
    let second = store.current();
    assert!(!Arc::ptr_eq(&first, &second));
    let mut server = TlsLayer::new(second).unwrap();
    let mut c = client(&b.der, &rustls::version::TLS13);
    pump(&mut c, &mut server, 1 << 20, &mut Vec::new()).unwrap();
    assert!(!c.is_handshaking());
    // A session begun with the old configuration still works with the old certificate.
    let mut old = TlsLayer::new(first).unwrap();
    let mut c = client(&a.der, &rustls::version::TLS13);
    pump(&mut c, &mut old, 1 << 20, &mut Vec::new()).unwrap();
    assert!(!c.is_handshaking());

    // An explicit reload (SIGHUP) of a broken pair keeps the current one.
    std::fs::write(&a.cert, "not pem").unwrap();
    let current = store.current();
    assert!(store.reload().is_err());
    assert!(Arc::ptr_eq(&current, &store.current()));
}

/// Moves a file's modification time a few seconds on, as a rewrite by a renewal tool would.
fn bump_mtime(path: &std::path::Path) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    file.set_modified(later).unwrap();
}
