//! STARTTLS against the real `ringmx` binary (SPEC §4.5), on both backends where it matters:
//! real clients (`openssl s_client -starttls smtp`, Python's `smtplib.starttls`, `swaks --tls`,
//! a rustls client) with certificates made by `openssl req -x509` in the test; messages stored
//! byte-exact with `with ESMTPS` and the `(using TLSv1.x with cipher ...)` comment; the
//! CVE-2011-0411 injection (commands pipelined behind STARTTLS never run); certificate reload by
//! SIGHUP and by modification time, a broken pair keeping the old one; and hostile clients:
//! a ClientHello without STARTTLS, garbage in the handshake, a stalled handshake, a close
//! mid-handshake, a truncated record mid-DATA. Each of those ends its connection with nothing
//! in `new/` or `tmp/` and no descriptor left open.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ringmx_wire::ReplyReader;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

/// How long any external client may run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// `program` on PATH; `None` after a skip line, or a panic under `CI=true` (a CI run must never
/// pass by skipping).
fn need(program: &str, test: &str) -> Option<PathBuf> {
    let found = find_program(program);
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: {program} is not on PATH (scripts/test installs it)");
        }
        eprintln!("SKIP {test}: {program} is not on PATH");
    }
    found
}

/// A self-signed RSA certificate for `localhost` made by `openssl req -x509`, with its key.
struct Pair {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Pair {
    /// A new pair whose certificate has serial number `serial`.
    fn new(serial: u32) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        make_pair(serial, &cert, &key);
        Pair { dir, cert, key }
    }

    /// The environment that serves this pair.
    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("RINGMX_TLS_CERT", self.cert.display().to_string()),
            ("RINGMX_TLS_KEY", self.key.display().to_string()),
        ]
    }

    /// The DER of the certificate now in the file.
    fn der(&self) -> Vec<u8> {
        der_of(&self.cert)
    }
}

/// Writes a new certificate (serial `serial`) and key to `cert` and `key`.
fn make_pair(serial: u32, cert: &Path, key: &Path) {
    let (status, _, stderr) = run_bounded(
        {
            let mut c = Command::new("openssl");
            c.args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
            ])
            .args(["-set_serial", &serial.to_string()])
            .arg("-keyout")
            .arg(key)
            .arg("-out")
            .arg(cert);
            c
        },
        CLIENT_TIMEOUT,
    );
    assert!(status.success(), "openssl req: {stderr}");
}

/// The DER of the first certificate in a PEM file.
fn der_of(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

/// Starts a server on `backend` serving `pair`, with `extra` variables.
fn tls_server(backend: &str, pair: &Pair, extra: &[(&str, &str)], test: &str) -> Option<Server> {
    let vars = pair.vars();
    let mut all: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (*n, v.as_str())).collect();
    all.extend_from_slice(extra);
    start_backend(backend, &all, test)
}

/// A rustls client over one TCP connection, after STARTTLS.
struct TlsClient {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    replies: ReplyReader,
}

/// A rustls client configuration that trusts exactly `ca` (PEM), limited to `versions`.
fn client_config(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der_of(ca))).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Greeting, EHLO (which must offer STARTTLS), STARTTLS and the 220, all in plain text.
fn plain_until_starttls(addr: SocketAddr) -> TcpStream {
    let mut client = Client::greeted(addr);
    client.send(b"EHLO client.example\r\n");
    let ehlo = client.expect("250");
    assert!(ehlo.contains("250-STARTTLS\r\n"), "{ehlo}");
    client.send(b"STARTTLS\r\n");
    assert_eq!(client.read_reply(), "220 2.0.0 Ready to start TLS\r\n");
    client.stream().try_clone().unwrap()
}

impl TlsClient {
    /// Connects, negotiates STARTTLS trusting `ca`, and completes the handshake.
    fn connect(addr: SocketAddr, ca: &Path) -> TlsClient {
        let tcp = plain_until_starttls(addr);
        TlsClient::handshake(tcp, client_config(ca, rustls::DEFAULT_VERSIONS))
    }

    /// Runs the handshake over `tcp` (after the 220).
    fn handshake(tcp: TcpStream, config: Arc<rustls::ClientConfig>) -> TlsClient {
        let name = ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .unwrap_or_else(|e| panic!("handshake: {e}"));
        }
        TlsClient {
            tls,
            replies: ReplyReader::exact(0),
        }
    }

    /// The certificate the server presented.
    fn peer_cert(&self) -> Vec<u8> {
        self.tls.conn.peer_certificates().unwrap()[0].to_vec()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).unwrap();
        self.tls.flush().unwrap();
    }

    /// Reads one whole reply, checked to the letter of RFC 5321.
    fn reply(&mut self) -> String {
        loop {
            let after = |r: &ReplyReader| String::from_utf8_lossy(r.pending()).into_owned();
            match self.replies.next_reply() {
                Ok(Some(reply)) => {
                    return String::from_utf8_lossy(self.replies.text(&reply)).into_owned()
                }
                Ok(None) => {}
                Err(e) => panic!("bad reply ({e:?}): {:?}", after(&self.replies)),
            }
            let n = self
                .tls
                .read(self.replies.spare())
                .unwrap_or_else(|e| panic!("read: {e} after {:?}", after(&self.replies)));
            assert!(n > 0, "closed after {:?}", after(&self.replies));
            self.replies.filled(n);
        }
    }

    fn expect(&mut self, prefix: &str) -> String {
        let reply = self.reply();
        assert!(reply.starts_with(prefix), "want {prefix:?}, got {reply:?}");
        reply
    }

    /// EHLO inside TLS (no STARTTLS offered any more).
    fn ehlo(&mut self) {
        self.send(b"EHLO client.example\r\n");
        let reply = self.expect("250");
        assert!(!reply.contains("STARTTLS"), "{reply}");
    }

    /// One message, pipelined; returns its queue ID.
    fn message(&mut self, rcpt: &str, body: &[u8]) -> String {
        let mut wire =
            format!("MAIL FROM:<s@y.example>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n").into_bytes();
        self.send(&wire);
        self.expect("250 2.1.0");
        self.expect("250 2.1.5");
        self.expect("354");
        wire.clear();
        wire.extend_from_slice(&dot_stuffed(body));
        self.send(&wire);
        let reply = self.expect("250 2.0.0 Ok: queued as ");
        queue_id(&reply).unwrap()
    }
}

/// Checks a stored TLS message byte for byte: trace headers with `with ESMTPS` and the TLS
/// comment for `version`/`cipher`, then exactly `body`.
fn check_tls_file(file: &[u8], id: &str, rcpt: &str, version: &str, cipher: &str, body: &[u8]) {
    let text = String::from_utf8_lossy(file);
    let head = format!(
        "Return-Path: <s@y.example>\r\nDelivered-To: {rcpt}\r\n\
         Received: from client.example ([127.0.0.1])\r\n\
         \t(using {version} with cipher {cipher})\r\n\
         \tby {HOSTNAME} (ringmx) with ESMTPS id {id}\r\n\tfor <{rcpt}>; "
    );
    assert!(text.starts_with(&head), "want {head:?}\nfile {text:?}");
    let date_end = head.len() + text[head.len()..].find("\r\n").unwrap() + 2;
    assert!(file[date_end..] == *body, "body differs: {text:?}");
}

/// The queue ID in a spool file's Received header.
fn id_in(file: &[u8]) -> String {
    let text = String::from_utf8_lossy(file);
    let from = text.find(" id ").expect("no id") + 4;
    let len = text[from..].find("\r\n").expect("no line end");
    text[from..from + len].to_string()
}

/// The spool file holding queue ID `id`.
fn file_with_id(server: &Server, id: &str) -> Vec<u8> {
    let needle = format!(" id {id}\r\n");
    server
        .new_files()
        .into_iter()
        .find(|(_, bytes)| String::from_utf8_lossy(bytes).contains(&needle))
        .unwrap_or_else(|| panic!("no file with id {id}"))
        .1
}

/// Open descriptors of the server process.
fn fd_count(server: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits until the server holds no more descriptors than `baseline` (connections closed).
fn assert_fds_back(server: &Server, baseline: usize, what: &str) {
    assert!(
        poll(Duration::from_secs(10), || fd_count(server) <= baseline),
        "{what}: {} descriptors open, {baseline} before",
        fd_count(server)
    );
}

/// Nothing in `new/` and, once sessions are over, nothing in `tmp/`.
fn assert_spool_empty(server: &Server, what: &str) {
    assert!(server.new_files().is_empty(), "{what}: a file in new/");
    assert!(
        server.wait_tmp_empty(Duration::from_secs(10)),
        "{what}: a file left in tmp/"
    );
}

/// Reads until the server closes the connection (bounded by `timeout`); true if it did.
fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
        if start.elapsed() > timeout {
            return false;
        }
    }
}

/// The bytes of a real TLS ClientHello (from rustls), as a client would send first.
fn client_hello(ca: &Path) -> Vec<u8> {
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn =
        rustls::ClientConnection::new(client_config(ca, rustls::DEFAULT_VERSIONS), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

// ---- real clients ---------------------------------------------------------------------------

/// `openssl s_client -starttls smtp`, TLS 1.3 and TLS 1.2, on both backends: the message is
/// stored byte-exact, stamped ESMTPS with the version and the IANA name of the cipher suite.
#[test]
fn openssl_s_client_starttls() {
    let Some(openssl) = need("openssl", "openssl_s_client_starttls") else {
        return;
    };
    let pair = Pair::new(1);
    for backend in ["uring", "epoll"] {
        let Some(server) = tls_server(backend, &pair, &[], "openssl_s_client_starttls") else {
            continue;
        };
        // Flags, then the version and cipher as ringmx stamps them and as OpenSSL names it.
        let cases: [(&[&str], &str, &str, &str); 3] = [
            (
                &["-tls1_3"],
                "TLSv1.3",
                "TLS_AES_256_GCM_SHA384",
                "TLS_AES_256_GCM_SHA384",
            ),
            (
                &["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
                "TLSv1.3",
                "TLS_CHACHA20_POLY1305_SHA256",
                "TLS_CHACHA20_POLY1305_SHA256",
            ),
            (
                &["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
                "TLSv1.2",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "ECDHE-RSA-AES128-GCM-SHA256",
            ),
        ];
        for (n, (flags, version, cipher, openssl_name)) in cases.iter().enumerate() {
            let rcpt = format!("u{n}@x.example");
            let body = format!("Subject: s_client {n}\r\n\r\n.dot line\r\nbody {backend}\r\n");
            let script = format!(
                "EHLO client.example\nMAIL FROM:<s@y.example>\nRCPT TO:<{rcpt}>\nDATA\n\
                 Subject: s_client {n}\n\n..dot line\nbody {backend}\n.\nQUIT\n"
            );
            let mut child = Command::new(&openssl)
                .args(["s_client", "-starttls", "smtp", "-crlf", "-ign_eof"])
                .args(["-connect", &server.addr().to_string()])
                .args(["-CAfile", &pair.cert.display().to_string()])
                .args(["-verify_return_error", "-verify_hostname", "localhost"])
                .args(*flags)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            let deadline = Instant::now() + CLIENT_TIMEOUT;
            while child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "s_client did not finish");
                std::thread::sleep(Duration::from_millis(20));
            }
            let mut out = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(
                out.contains("221 2.0.0"),
                "{backend} {flags:?}: {out}\n{err}"
            );
            assert!(
                out.contains(&format!("Cipher is {openssl_name}")),
                "{backend} {flags:?}: {out}"
            );
            let line = out.lines().find(|l| l.contains("queued as")).unwrap();
            let id = queue_id(line).unwrap();
            check_tls_file(
                &file_with_id(&server, &id),
                &id,
                &rcpt,
                version,
                cipher,
                body.as_bytes(),
            );
        }
        assert!(server
            .log_text()
            .lines()
            .all(|l| !l.contains("TLS handshake failed")));
    }
}

/// Python's `smtplib` with `starttls()`: sendmail inside TLS, stored byte-exact.
#[test]
fn python_smtplib_starttls() {
    let Some(python) = need("python3", "python_smtplib_starttls") else {
        return;
    };
    let pair = Pair::new(2);
    let Some(server) = tls_server("epoll", &pair, &[], "python_smtplib_starttls") else {
        return;
    };
    let script = format!(
        "import smtplib, ssl, sys\n\
         ctx = ssl.create_default_context(cafile={cafile:?})\n\
         s = smtplib.SMTP('localhost', {port}, local_hostname='client.example', timeout=10)\n\
         s.ehlo()\n\
         assert s.has_extn('starttls'), s.esmtp_features\n\
         code, _ = s.starttls(context=ctx)\n\
         assert code == 220\n\
         s.ehlo()\n\
         assert not s.has_extn('starttls')\n\
         print(s.sock.version(), s.sock.cipher()[0])\n\
         s.sendmail('s@y.example', ['p@x.example'], b'Subject: py\\r\\n\\r\\nfrom python\\r\\n')\n\
         s.quit()\n",
        cafile = pair.cert.display().to_string(),
        port = server.addr().port()
    );
    let (status, out, err) = run_bounded(
        {
            let mut c = Command::new(python);
            c.arg("-c").arg(script);
            c
        },
        CLIENT_TIMEOUT,
    );
    assert!(status.success(), "{out}\n{err}\n{}", server.log_text());
    assert!(out.starts_with("TLSv1.3 TLS_AES_256_GCM_SHA384"), "{out}");
    let files = server.new_files();
    assert_eq!(files.len(), 1);
    let id = id_in(&files[0].1);
    check_tls_file(
        &files[0].1,
        &id,
        "p@x.example",
        "TLSv1.3",
        "TLS_AES_256_GCM_SHA384",
        b"Subject: py\r\n\r\nfrom python\r\n",
    );
}

/// `swaks --tls`: the message goes through inside TLS and swaks sees the TLS session.
#[test]
fn swaks_tls() {
    let Some(swaks) = need("swaks", "swaks_tls") else {
        return;
    };
    let pair = Pair::new(3);
    let Some(server) = tls_server("uring", &pair, &[], "swaks_tls") else {
        return;
    };
    let (status, out, err) = run_bounded(
        {
            let mut c = Command::new(swaks);
            c.args(["--server", &server.addr().to_string()])
                .args(["--tls", "--helo", "client.example"])
                .args(["--from", "s@y.example", "--to", "w@x.example"])
                .args(["--body", "from swaks"]);
            c
        },
        CLIENT_TIMEOUT,
    );
    assert!(status.success(), "{out}\n{err}\n{}", server.log_text());
    assert!(out.contains("TLS started"), "{out}");
    let files = server.new_files();
    assert_eq!(files.len(), 1, "{out}");
    let text = String::from_utf8_lossy(&files[0].1);
    assert!(
        text.contains("\r\n\t(using TLSv1.3 with cipher TLS_"),
        "{text}"
    );
    assert!(text.contains(" with ESMTPS id "), "{text}");
    assert!(text.contains("\r\n\r\nfrom swaks\r\n"), "{text}");
}

// ---- protocol rules --------------------------------------------------------------------------

/// CVE-2011-0411: MAIL and RCPT pipelined behind STARTTLS in the same packet never run; inside
/// TLS the session starts over (EHLO offers no STARTTLS, a second one gets 503).
#[test]
fn commands_pipelined_after_starttls_are_dropped() {
    let pair = Pair::new(4);
    for backend in ["uring", "epoll"] {
        let Some(server) = tls_server(backend, &pair, &[], "pipelined_after_starttls") else {
            continue;
        };
        let mut client = Client::greeted(server.addr());
        client.send(b"EHLO client.example\r\n");
        client.expect("250");
        client.send(b"STARTTLS\r\nMAIL FROM:<evil@y.example>\r\nRCPT TO:<u@x.example>\r\n");
        assert_eq!(client.read_reply(), "220 2.0.0 Ready to start TLS\r\n");
        let tcp = client.stream().try_clone().unwrap();
        let mut tls =
            TlsClient::handshake(tcp, client_config(&pair.cert, rustls::DEFAULT_VERSIONS));
        tls.ehlo();
        tls.send(b"RCPT TO:<u@x.example>\r\n");
        assert_eq!(tls.reply(), "503 5.5.1 Error: need MAIL command\r\n");
        tls.send(b"STARTTLS\r\n");
        assert_eq!(tls.reply(), "503 5.5.1 TLS already active\r\n");
        let id = tls.message("u@x.example", b"Subject: after\r\n\r\nclean\r\n");
        let file = file_with_id(&server, &id);
        let text = String::from_utf8_lossy(&file);
        assert!(text.starts_with("Return-Path: <s@y.example>\r\n"), "{text}");
        assert!(!text.contains("evil"), "{text}");
        tls.send(b"QUIT\r\n");
        tls.expect("221");
    }
}

/// Without a certificate STARTTLS is neither offered nor accepted (502), and inside a
/// transaction it is refused (503).
#[test]
fn starttls_refusals() {
    let server = Server::start(&[]);
    let mut client = Client::greeted(server.addr());
    client.send(b"EHLO client.example\r\n");
    assert!(!client.expect("250").contains("STARTTLS"));
    client.send(b"STARTTLS\r\n");
    assert_eq!(client.read_reply(), "502 5.5.1 STARTTLS not offered\r\n");
    drop(server);

    let pair = Pair::new(5);
    let server = tls_server("epoll", &pair, &[], "starttls_refusals").unwrap();
    let mut client = Client::greeted(server.addr());
    client.send(b"EHLO client.example\r\nMAIL FROM:<s@y.example>\r\nSTARTTLS\r\n");
    client.expect("250");
    client.expect("250 2.1.0");
    assert_eq!(
        client.read_reply(),
        "503 5.5.1 STARTTLS not allowed inside a mail transaction\r\n"
    );
    // RINGMX_TLS=off turns it off with the certificate set.
    let vars = pair.vars();
    let server = Server::start(&[
        (vars[0].0, vars[0].1.as_str()),
        (vars[1].0, vars[1].1.as_str()),
        ("RINGMX_TLS", "off"),
    ]);
    let mut client = Client::greeted(server.addr());
    client.send(b"EHLO client.example\r\nSTARTTLS\r\n");
    assert!(!client.expect("250").contains("STARTTLS"));
    assert_eq!(client.read_reply(), "502 5.5.1 STARTTLS not offered\r\n");
}

/// A certificate that cannot be loaded stops start-up with one line naming it.
#[test]
fn a_bad_pair_stops_start_up() {
    let a = Pair::new(6);
    let b = Pair::new(7);
    let (status, log) = run_to_exit(
        &[
            ("RINGMX_TLS_CERT", &a.cert.display().to_string()),
            ("RINGMX_TLS_KEY", &b.key.display().to_string()),
        ],
        Duration::from_secs(10),
    );
    assert!(!status.success());
    assert!(
        log.iter()
            .any(|l| l.contains("RINGMX_TLS_CERT") && l.contains("cert.pem")),
        "{log:?}"
    );
    let (status, log) = run_to_exit(
        &[("RINGMX_TLS_CERT", &a.cert.display().to_string())],
        Duration::from_secs(10),
    );
    assert!(exited_with(status, 2), "{status:?} {log:?}");
}

// ---- reload ----------------------------------------------------------------------------------

/// SIGHUP and a change of modification time each make new sessions use the new pair; a session
/// open across the reload keeps working; a broken pair is logged and the old one kept.
#[test]
fn certificate_reload() {
    let pair = Pair::new(10);
    let server = tls_server("epoll", &pair, &[], "certificate_reload").unwrap();
    let first = pair.der();
    let mut open = TlsClient::connect(server.addr(), &pair.cert);
    assert_eq!(open.peer_cert(), first);
    open.ehlo();

    // SIGHUP: the files change but keep their old modification times, so only the signal can
    // make the server notice.
    let stamp = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let (cert_time, key_time) = (stamp(&pair.cert), stamp(&pair.key));
    let staged = pair.dir.path().join("staged");
    std::fs::create_dir(&staged).unwrap();
    let old = staged.join("old.pem");
    std::fs::copy(&pair.cert, &old).unwrap();
    make_pair(11, &staged.join("cert.pem"), &staged.join("key.pem"));
    std::fs::copy(staged.join("cert.pem"), &pair.cert).unwrap();
    std::fs::copy(staged.join("key.pem"), &pair.key).unwrap();
    for (path, time) in [(&pair.cert, cert_time), (&pair.key, key_time)] {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(time)
            .unwrap();
    }
    // Past the once-a-second check, the old certificate is still served.
    std::thread::sleep(Duration::from_millis(1500));
    let c = TlsClient::connect(server.addr(), &old);
    assert_eq!(c.peer_cert(), first);
    drop(c);
    let second = der_of(&pair.cert);
    assert_ne!(first, second);
    let signal = unsafe_free_kill(server.pid(), "HUP");
    assert!(signal, "kill -HUP failed");
    assert!(
        server.wait_log("TLS certificate reloaded (SIGHUP)", Duration::from_secs(5)),
        "{}",
        server.log_text()
    );
    let mut after = TlsClient::connect(server.addr(), &pair.cert);
    assert_eq!(after.peer_cert(), second);
    after.ehlo();
    let id = after.message("r1@x.example", b"Subject: after HUP\r\n\r\nnew pair\r\n");
    assert!(!file_with_id(&server, &id).is_empty());
    // The session opened before the reload goes on with its pair.
    let id = open.message("r0@x.example", b"Subject: across\r\n\r\nold pair\r\n");
    assert!(!file_with_id(&server, &id).is_empty());

    // A change of modification time, no signal.
    make_pair(12, &staged.join("cert.pem"), &staged.join("key.pem"));
    std::fs::copy(staged.join("cert.pem"), &pair.cert).unwrap();
    std::fs::copy(staged.join("key.pem"), &pair.key).unwrap();
    let third = der_of(&pair.cert);
    assert!(
        server.wait_log(
            "TLS certificate reloaded (file change)",
            Duration::from_secs(5)
        ),
        "{}",
        server.log_text()
    );
    let mut c = TlsClient::connect(server.addr(), &pair.cert);
    assert_eq!(c.peer_cert(), third);
    c.ehlo();

    // A broken key: logged, the third pair stays in use.
    std::fs::write(
        &pair.key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    assert!(
        server.wait_log(
            "not reloaded (file change), old pair kept",
            Duration::from_secs(5)
        ),
        "{}",
        server.log_text()
    );
    let mut c = TlsClient::connect(server.addr(), &pair.cert);
    assert_eq!(c.peer_cert(), third);
    c.ehlo();
    c.message("r2@x.example", b"Subject: kept\r\n\r\nstill served\r\n");
}

/// Sends a signal with kill(1).
fn unsafe_free_kill(pid: i32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

// ---- hostile clients -------------------------------------------------------------------------

/// Every way a client can break TLS ends its connection, logged with the client address, with
/// nothing in the spool and no descriptor left open; the server goes on serving.
#[test]
fn hostile_tls_clients() {
    let pair = Pair::new(20);
    for backend in ["uring", "epoll"] {
        let Some(server) = tls_server(
            backend,
            &pair,
            &[
                ("RINGMX_TLS_HANDSHAKE_TIMEOUT_SECS", "1"),
                ("RINGMX_METRICS_LISTEN", "127.0.0.1:0"),
            ],
            "hostile_tls_clients",
        ) else {
            continue;
        };
        // A first session warms up whatever the server allocates once.
        let mut warm = TlsClient::connect(server.addr(), &pair.cert);
        warm.ehlo();
        warm.send(b"QUIT\r\n");
        warm.expect("221");
        drop(warm);
        std::thread::sleep(Duration::from_millis(200));
        let baseline = fd_count(&server);
        assert!(baseline > 0);
        let hello = client_hello(&pair.cert);

        // A ClientHello sent without STARTTLS is not SMTP: it never starts TLS and the session
        // goes on in plain text until the client gives up.
        let mut client = Client::greeted(server.addr());
        client.send(&hello);
        client.send(b"\r\nQUIT\r\n");
        let rest = client.read_until_closed();
        assert!(
            rest.contains("221 2.0.0") || rest.contains("421 4.7.0"),
            "{backend}: {rest:?}"
        );
        assert!(!rest.contains("220 2.0.0"), "{backend}: {rest:?}");
        assert_fds_back(&server, baseline, "ClientHello without STARTTLS");

        // Garbage where the ClientHello should be.
        let mut tcp = plain_until_starttls(server.addr());
        tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(
            closed_within(&mut tcp, Duration::from_secs(5)),
            "{backend}: garbage"
        );
        assert!(server.wait_log("TLS handshake failed", Duration::from_secs(5)));
        assert_fds_back(&server, baseline, "garbage in the handshake");

        // A stalled handshake: nothing after the 220, then half a ClientHello.
        for sent in [&[][..], &hello[..hello.len() / 2]] {
            let mut tcp = plain_until_starttls(server.addr());
            tcp.write_all(sent).unwrap();
            let start = Instant::now();
            assert!(
                closed_within(&mut tcp, Duration::from_secs(10)),
                "{backend}: stall"
            );
            assert!(start.elapsed() >= Duration::from_millis(900));
            assert_fds_back(&server, baseline, "stalled handshake");
        }
        assert!(
            server.wait_log("TLS handshake failed: timed out", Duration::from_secs(5)),
            "{}",
            server.log_text()
        );

        // A close mid-handshake.
        let mut tcp = plain_until_starttls(server.addr());
        tcp.write_all(&hello[..hello.len() / 3]).unwrap();
        drop(tcp);
        assert_fds_back(&server, baseline, "close mid-handshake");
        assert!(
            server.wait_log(
                "TLS handshake failed: client closed",
                Duration::from_secs(5)
            ),
            "{}",
            server.log_text()
        );

        // A truncated record in the middle of DATA, then the client vanishes.
        let mut tls = TlsClient::connect(server.addr(), &pair.cert);
        tls.ehlo();
        tls.send(b"MAIL FROM:<s@y.example>\r\nRCPT TO:<t@x.example>\r\nDATA\r\n");
        tls.expect("250");
        tls.expect("250");
        tls.expect("354");
        tls.send(&vec![b'a'; 40_000]);
        tls.tls
            .conn
            .writer()
            .write_all(b"more data\r\n.\r\n")
            .unwrap();
        let mut record = Vec::new();
        tls.tls.conn.write_tls(&mut record).unwrap();
        tls.tls.sock.write_all(&record[..record.len() - 3]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        drop(tls);
        assert_fds_back(&server, baseline, "truncated record mid-DATA");
        assert_spool_empty(&server, "truncated record");

        // The server still serves TLS.
        let mut ok = TlsClient::connect(server.addr(), &pair.cert);
        ok.ehlo();
        let id = ok.message("ok@x.example", b"Subject: ok\r\n\r\nstill here\r\n");
        assert!(!file_with_id(&server, &id).is_empty());
        for line in server
            .log()
            .iter()
            .filter(|l| l.contains("TLS handshake failed"))
        {
            assert!(line.contains("127.0.0.1:"), "{line}");
        }
        // Counted: the warm-up, the truncated session and the last one succeeded; the garbage
        // and the close failed; the two stalls timed out.
        let metrics = common::ops::scrape(&server);
        let count = |result: &str| {
            let series = format!("ringmx_tls_handshakes_total{{result=\"{result}\"}}");
            common::ops::sample(&metrics, &series).unwrap_or_else(|| panic!("{series}"))
        };
        assert_eq!(count("ok"), 3.0, "{backend}");
        assert_eq!(count("failed"), 2.0, "{backend}");
        assert_eq!(count("timeout"), 2.0, "{backend}");
    }
}

/// 20 TLS sessions at once, each with many messages of odd sizes, on both backends: every
/// message stored byte-exact.
#[test]
fn concurrent_tls_sessions() {
    let pair = Pair::new(30);
    for backend in ["uring", "epoll"] {
        let Some(server) = tls_server(backend, &pair, &[], "concurrent_tls_sessions") else {
            continue;
        };
        let addr = server.addr();
        let threads: Vec<_> = (0..20)
            .map(|t| {
                let ca = pair.cert.clone();
                std::thread::spawn(move || {
                    let mut c = TlsClient::connect(addr, &ca);
                    c.ehlo();
                    let mut sent = Vec::new();
                    for m in 0..15 {
                        let body =
                            sample_body(&format!("t{t}m{m}"), 1, (t * 7919 + m * 104_729) % 70_000);
                        let rcpt = format!("t{t}m{m}@x.example");
                        let id = c.message(&rcpt, &body);
                        sent.push((id, rcpt, body));
                    }
                    c.send(b"QUIT\r\n");
                    c.expect("221");
                    let version = c.tls.conn.protocol_version().unwrap();
                    assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
                    sent
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            all.extend(t.join().unwrap());
        }
        assert_eq!(server.new_files().len(), 300);
        for (id, rcpt, body) in all {
            let file = file_with_id(&server, &id);
            check_tls_file(
                &file,
                &id,
                &rcpt,
                "TLSv1.3",
                "TLS_AES_256_GCM_SHA384",
                &body,
            );
        }
    }
}

/// `ringmx-loadgen --starttls=require --tls-ca`: every message accepted inside TLS.
#[test]
fn loadgen_starttls() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_ringmx"));
    let loadgen = exe.with_file_name("ringmx-loadgen");
    if !loadgen.exists() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{} not built", loadgen.display());
        }
        eprintln!("SKIP loadgen_starttls: {} not built", loadgen.display());
        return;
    }
    let pair = Pair::new(40);
    let server = tls_server("epoll", &pair, &[], "loadgen_starttls").unwrap();
    let json = pair.dir.path().join("result.json");
    let (status, out, err) = run_bounded(
        {
            let mut c = Command::new(&loadgen);
            c.args(["--target", &format!("localhost:{}", server.addr().port())])
                .args(["--connections", "4", "--messages", "200", "--size", "1k"])
                .args(["--starttls=require", "--tls-ca"])
                .arg(&pair.cert)
                .arg("--json")
                .arg(&json)
                .arg("--quiet");
            c
        },
        Duration::from_secs(60),
    );
    assert!(status.success(), "{out}\n{err}");
    let result = std::fs::read_to_string(&json).unwrap();
    assert!(
        result.contains("\"starttls\": \"require\"") || result.contains("\"starttls\":\"require\""),
        "{result}"
    );
    assert_eq!(server.new_files().len(), 200, "{out}");
    for (_, file) in server.new_files() {
        let text = String::from_utf8_lossy(&file);
        assert!(text.contains(" with ESMTPS id "), "{text}");
    }
    // Against a server without STARTTLS, =require refuses to run.
    let plain = Server::start(&[]);
    let (status, _, err) = run_bounded(
        {
            let mut c = Command::new(&loadgen);
            c.args(["--target", &plain.addr().to_string()]).args([
                "--messages",
                "1",
                "--starttls=require",
                "--quiet",
            ]);
            c
        },
        Duration::from_secs(60),
    );
    assert!(!status.success());
    assert!(err.contains("STARTTLS"), "{err}");
}

/// The SMTP smuggling vectors sent inside TLS are refused exactly as in plain text: the
/// message ends only at its real CRLF `.` CRLF, is answered 550 5.6.0, nothing after the fake
/// terminator runs, and the session goes on.
#[test]
fn smuggling_vectors_inside_tls() {
    let pair = Pair::new(50);
    for backend in ["uring", "epoll"] {
        let Some(server) = tls_server(backend, &pair, &[], "smuggling_vectors_inside_tls") else {
            continue;
        };
        let mut tls = TlsClient::connect(server.addr(), &pair.cert);
        tls.ehlo();
        for vector in ["\n.\r\n", "\n.\n", "\r.\r\n", "\r.\r"] {
            tls.send(b"MAIL FROM:<s@y.example>\r\nRCPT TO:<v@x.example>\r\nDATA\r\n");
            tls.expect("250 2.1.0");
            tls.expect("250 2.1.5");
            tls.expect("354");
            let data = format!(
                "Subject: x\r\n\r\nhi{vector}MAIL FROM:<evil@y.example>\r\n\
                 RCPT TO:<evil@x.example>\r\nDATA\r\nsmuggled\r\n.\r\n"
            );
            tls.send(data.as_bytes());
            let reply = tls.reply();
            assert!(
                reply.starts_with("550 5.6.0"),
                "{backend} {vector:?}: {reply}"
            );
        }
        let id = tls.message("v@x.example", b"Subject: clean\r\n\r\nclean\r\n");
        let files = server.new_files();
        assert_eq!(files.len(), 1, "{backend}");
        let text = String::from_utf8_lossy(&files[0].1);
        assert!(text.contains(&id) && !text.contains("evil") && !text.contains("smuggled"));
    }
}

/// A client stalled in its handshake does not hold up the end of a shutdown: the server exits
/// once the grace is over.
#[test]
fn shutdown_does_not_wait_for_a_handshake() {
    let pair = Pair::new(60);
    let mut server = tls_server(
        "epoll",
        &pair,
        &[
            ("RINGMX_SHUTDOWN_GRACE_SECS", "1"),
            ("RINGMX_TLS_HANDSHAKE_TIMEOUT_SECS", "600"),
        ],
        "shutdown_does_not_wait_for_a_handshake",
    )
    .unwrap();
    let _stalled = plain_until_starttls(server.addr());
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.is_some(), "still running: {}", server.log_text());
}

/// lettre with rustls (`Tls::Required`, trusting only the test's certificate): messages sent
/// inside STARTTLS are stored byte-exact, stamped ESMTPS with the TLS comment.
#[test]
fn lettre_rustls_starttls() {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::transport::smtp::extension::ClientId;
    use lettre::{Message, SmtpTransport, Transport};

    let pair = Pair::new(70);
    let Some(server) = tls_server("uring", &pair, &[], "lettre_rustls_starttls") else {
        return;
    };
    let pem = std::fs::read(&pair.cert).unwrap();
    let tls = TlsParameters::builder("localhost".to_string())
        .add_root_certificate(Certificate::from_pem(&pem).unwrap())
        .build_rustls()
        .unwrap();
    let transport = SmtpTransport::builder_dangerous("localhost")
        .port(server.addr().port())
        .tls(Tls::Required(tls))
        .hello_name(ClientId::Domain("client.example".into()))
        .timeout(Some(Duration::from_secs(10)))
        .build();
    for n in 0..3 {
        let message = Message::builder()
            .from("Sender <s@y.example>".parse().unwrap())
            .to(format!("l{n}@x.example").parse().unwrap())
            .subject(format!("lettre {n}"))
            .header(ContentType::TEXT_PLAIN)
            .body(format!("Hello over TLS.\n.leading dot {n}\n"))
            .unwrap();
        let response = transport
            .send(&message)
            .unwrap_or_else(|e| panic!("lettre send: {e}\n{}", server.log_text()));
        let first = response.first_line().unwrap_or_default().to_string();
        let id = queue_id(&first).unwrap_or_else(|| panic!("no ID in {first:?}"));
        let mut body = message.formatted();
        body.extend_from_slice(b"\r\n");
        check_tls_file(
            &file_with_id(&server, &id),
            &id,
            &format!("l{n}@x.example"),
            "TLSv1.3",
            "TLS_AES_256_GCM_SHA384",
            &body,
        );
    }
}
