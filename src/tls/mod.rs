//! STARTTLS for ringmx (SPEC §4.5): the certificate store and the TLS layer over a connection.
//!
//! `CertStore` holds the server's rustls configuration built from `RINGMX_TLS_CERT` and
//! `RINGMX_TLS_KEY`. It is reloaded on SIGHUP and when either file's modification time changes
//! (checked at most once a second by `spawn_watcher`): new sessions take the new pair, sessions
//! in progress keep the one they started with, and a pair that fails to load is logged while
//! the old one stays in use.
//!
//! `TlsLayer` is sans-IO, like the SMTP session: the connection loop feeds it the ciphertext it
//! read, takes plaintext into its receive buffer, gives it reply plaintext and takes ciphertext
//! to send. It never touches a socket, so both backends share it and tests drive it in memory
//! against a rustls client. It wraps rustls's buffered `ServerConnection`: each record's
//! ciphertext is copied into rustls's deframer and decrypted there in place, rustls copies the
//! plaintext into a queue of its own (one allocation per record), and `TlsLayer::receive`
//! copies it once more into the connection's receive buffer. rustls 0.23's unbuffered API
//! would save only the first copy: it decrypts in the caller's buffer, but its `ReadTraffic`
//! still hands application data out of that same internal queue (the in-place path is a TODO
//! in `rustls::unbuffered`), so it is not used; `benches/tls.rs` prices the copies.
//!
//! The crypto provider is *ring*: it builds from Rust and C/assembly with only a C compiler
//! (no cmake, NASM or Go, which aws-lc-rs may need), builds in a fraction of aws-lc-sys's
//! time, and its AES-GCM and ChaCha20-Poly1305 use the same AES-NI/CLMUL/AVX2 assembly as
//! BoringSSL, so bulk record speed, the part that matters for mail, is on a par.

use std::io::{self, BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ProtocolVersion, ServerConnection};

pub mod stream;

use crate::proto::TlsFacts;
use crate::{log_info, log_warn};

/// How often the watcher looks at the files' modification times (SPEC: at most once a second).
const MTIME_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often the watcher looks for a SIGHUP that arrived.
const SIGHUP_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Plaintext and ciphertext rustls may hold for sending before `send` refuses more: replies
/// are bounded to 16 KiB by the session (SPEC §4.1), so this only catches a logic error.
const SEND_BUFFER_LIMIT: usize = 64 * 1024;

/// Loads a certificate chain and its private key (PEM) into a server configuration that offers
/// TLS 1.3 and 1.2 with ring. Fails with a message naming the file and the problem.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", cert.display()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))?;
    // Resumption makes a returning sender's handshake cheap: TLS 1.3 tickets, and TLS 1.2
    // session IDs from rustls's default in-memory cache.
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS tickets: {e}"))?;
    Ok(Arc::new(config))
}

/// The modification times of the certificate and key files (`None` for one that cannot be read).
type Stamp = (Option<SystemTime>, Option<SystemTime>);

/// The server's current certificate and key, shared by all shards and reloadable.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<rustls::ServerConfig>>,
    /// The files' modification times when they were last looked at.
    stamp: RwLock<Stamp>,
}

impl CertStore {
    /// Loads the pair; an error here stops start-up.
    pub fn open(cert_path: &Path, key_path: &Path) -> Result<CertStore, String> {
        let stamp = stamp_of(cert_path, key_path);
        let config = load_pair(cert_path, key_path)?;
        Ok(CertStore {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: RwLock::new(config),
            stamp: RwLock::new(stamp),
        })
    }

    /// The configuration new sessions use.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Loads the pair again. On failure the old pair stays in use and the error is returned.
    pub fn reload(&self) -> Result<(), String> {
        *self.stamp.write().unwrap_or_else(|e| e.into_inner()) =
            stamp_of(&self.cert_path, &self.key_path);
        let config = load_pair(&self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// Reloads when either file's modification time changed since it was last looked at.
    /// Returns `None` when nothing changed, else the reload's result.
    pub fn reload_if_changed(&self) -> Option<Result<(), String>> {
        let now = stamp_of(&self.cert_path, &self.key_path);
        if now == *self.stamp.read().unwrap_or_else(|e| e.into_inner()) {
            return None;
        }
        Some(self.reload())
    }

    /// Starts the thread that reloads the pair on SIGHUP and on a change of modification
    /// time. SIGHUP no longer ends the process once this is called.
    pub fn spawn_watcher(self: &Arc<CertStore>) -> io::Result<()> {
        let hup = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(libc::SIGHUP, Arc::clone(&hup))?;
        let store = Arc::clone(self);
        std::thread::Builder::new()
            .name("ringmx-tls-reload".to_string())
            .spawn(move || {
                let ticks_per_check =
                    (MTIME_CHECK_INTERVAL.as_millis() / SIGHUP_POLL_INTERVAL.as_millis()) as u32;
                let mut tick = 0u32;
                loop {
                    std::thread::sleep(SIGHUP_POLL_INTERVAL);
                    tick += 1;
                    let result = if hup.swap(false, Ordering::Relaxed) {
                        Some(("SIGHUP", store.reload()))
                    } else if tick >= ticks_per_check {
                        tick = 0;
                        store
                            .reload_if_changed()
                            .map(|result| ("file change", result))
                    } else {
                        None
                    };
                    match result {
                        Some((why, Ok(()))) => log_info!(
                            "TLS certificate reloaded ({why}): {}",
                            store.cert_path.display()
                        ),
                        Some((why, Err(e))) => {
                            log_warn!("TLS certificate not reloaded ({why}), old pair kept: {e}")
                        }
                        None => {}
                    }
                }
            })?;
        Ok(())
    }
}

/// The modification times of both files now.
fn stamp_of(cert: &Path, key: &Path) -> Stamp {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (mtime(cert), mtime(key))
}

/// Why a TLS connection cannot go on.
#[derive(Debug)]
pub enum TlsError {
    /// The peer broke the protocol (bad record, failed handshake, alert).
    Protocol(rustls::Error),
    /// An internal limit was hit (the caller fed more than the layer accepts).
    Buffer(io::Error),
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Protocol(e) => write!(f, "{e}"),
            TlsError::Buffer(e) => write!(f, "{e}"),
        }
    }
}

/// What one `receive` call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Ciphertext bytes taken from the input; the caller keeps the rest for the next call.
    pub consumed: usize,
    /// Plaintext bytes appended to the receive buffer.
    pub plaintext: usize,
    /// The peer sent close_notify: no more plaintext will come.
    pub closed: bool,
    /// Plaintext is still waiting in the layer because the receive buffer was full: call
    /// `receive` again (with no new input if need be) before reading the socket.
    pub pending: bool,
}

/// One connection's TLS state: ciphertext in, plaintext out, and the reverse.
pub struct TlsLayer {
    conn: ServerConnection,
}

impl std::fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLayer")
            .field("handshaking", &self.conn.is_handshaking())
            .finish()
    }
}

impl TlsLayer {
    /// A server-side TLS state for a connection that just got `220 Ready to start TLS`.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Result<TlsLayer, TlsError> {
        let mut conn = ServerConnection::new(config).map_err(TlsError::Protocol)?;
        conn.set_buffer_limit(Some(SEND_BUFFER_LIMIT));
        Ok(TlsLayer { conn })
    }

    /// True until the handshake is complete.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Feeds ciphertext from `input` and appends the plaintext it yields to `plain`, without
    /// letting `plain` grow past `plain_max` bytes. Stops early (with `consumed` short of the
    /// input) when `plain` is full: the caller hands the plaintext to the session, then calls
    /// again with the rest. After an error the connection must be closed (any alert for the
    /// peer is in the ciphertext to send).
    pub fn receive(
        &mut self,
        input: &[u8],
        plain: &mut BytesMut,
        plain_max: usize,
    ) -> Result<Received, TlsError> {
        let mut done = Received {
            consumed: 0,
            plaintext: 0,
            closed: false,
            pending: false,
        };
        loop {
            done.plaintext += self.drain_plaintext(plain, plain_max)?;
            if self.conn.reader().fill_buf().is_ok_and(|b| !b.is_empty()) {
                // `plain` is full; the rest waits in rustls.
                done.pending = true;
                return Ok(done);
            }
            if done.consumed == input.len() || done.closed {
                return Ok(done);
            }
            let mut rest = &input[done.consumed..];
            let n = self.conn.read_tls(&mut rest).map_err(TlsError::Buffer)?;
            done.consumed += n;
            let state = self
                .conn
                .process_new_packets()
                .map_err(TlsError::Protocol)?;
            done.closed = state.peer_has_closed();
            if n == 0 {
                return Ok(done);
            }
        }
    }

    /// Copies decrypted plaintext waiting in rustls into `plain` (up to `plain_max` bytes in
    /// all); returns the bytes copied.
    fn drain_plaintext(
        &mut self,
        plain: &mut BytesMut,
        plain_max: usize,
    ) -> Result<usize, TlsError> {
        let mut copied = 0;
        loop {
            let room = plain_max.saturating_sub(plain.len());
            if room == 0 {
                return Ok(copied);
            }
            let mut reader = self.conn.reader();
            let chunk = match reader.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(copied),
                // A TCP close without close_notify is reported by the caller's read of 0.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(copied),
                Err(e) => return Err(TlsError::Buffer(e)),
            };
            if chunk.is_empty() {
                return Ok(copied);
            }
            let take = chunk.len().min(room);
            plain.extend_from_slice(&chunk[..take]);
            reader.consume(take);
            copied += take;
        }
    }

    /// Encrypts reply plaintext; the records are taken with `take_ciphertext`.
    pub fn send(&mut self, plaintext: &[u8]) -> Result<(), TlsError> {
        self.conn
            .writer()
            .write_all(plaintext)
            .map_err(TlsError::Buffer)
    }

    /// Queues a close_notify alert (before closing the connection).
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }

    /// True when there are records (handshake, alerts, replies) to send.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Appends every record waiting to be sent to `out`; returns the bytes appended.
    pub fn take_ciphertext(&mut self, out: &mut Vec<u8>) -> usize {
        let mut total = 0;
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total
    }

    /// The negotiated protocol version and cipher suite, once the handshake is complete.
    pub fn facts(&self) -> Option<TlsFacts> {
        if self.conn.is_handshaking() {
            return None;
        }
        let version = match self.conn.protocol_version()? {
            ProtocolVersion::TLSv1_3 => "TLSv1.3",
            ProtocolVersion::TLSv1_2 => "TLSv1.2",
            other => {
                debug_assert!(
                    false,
                    "rustls negotiated {other:?}, which ringmx does not offer"
                );
                return None;
            }
        };
        let suite = self.conn.negotiated_cipher_suite()?.suite();
        let cipher = iana_name(u16::from(suite));
        debug_assert!(cipher.is_some(), "no IANA name for {suite:?}");
        Some(TlsFacts {
            version,
            cipher: cipher?,
        })
    }
}

/// The IANA registry name of every cipher suite the ring provider offers (rustls's own names
/// for TLS 1.3 suites carry a `TLS13_` prefix that is not the registry's).
fn iana_name(code: u16) -> Option<&'static str> {
    Some(match code {
        0x1301 => "TLS_AES_128_GCM_SHA256",
        0x1302 => "TLS_AES_256_GCM_SHA384",
        0x1303 => "TLS_CHACHA20_POLY1305_SHA256",
        0xc02b => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        0xc02c => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        0xcca9 => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        0xc02f => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        0xc030 => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        0xcca8 => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
