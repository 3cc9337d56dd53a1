//! The TLS layer bound to a connection's socket through the driver interface: the handshake
//! with its deadline, reads that return plaintext in the connection's receive buffer, and
//! replies sealed into records before they are written. Both backends share it because it uses
//! only `Driver::read` and `Driver::write_all`.
//!
//! Reads and writes of one connection run at the same time in the connection loop, so neither
//! operation borrows this state: a read owns the ciphertext buffer (`take_read_buffer`) until
//! it completes and `decrypt` turns what it read into plaintext; replies are sealed into a
//! ciphertext buffer first (`seal`), and the write owns that buffer until the kernel is done.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, BytesMut};

use super::{TlsError, TlsLayer};
use crate::driver::Driver;
use crate::proto::TlsFacts;

/// Room kept for one read of ciphertext: a whole record (16 KiB of plaintext, its header and
/// the AEAD's overhead) fits, so a record never needs two reads just for lack of room.
const CIPHER_READ_ROOM: usize = 16 * 1024 + 512;

/// Why a handshake failed, for the log line and the handshake counter.
#[derive(Debug)]
pub enum HandshakeError {
    /// It took longer than the handshake deadline.
    Timeout,
    /// The client closed the connection before it finished.
    Closed,
    /// A protocol error (garbage, a bad record, an alert, no shared cipher suite).
    Tls(TlsError),
    /// The socket failed.
    Io(io::Error),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Timeout => write!(f, "timed out"),
            HandshakeError::Closed => write!(f, "client closed the connection"),
            HandshakeError::Tls(e) => write!(f, "{e}"),
            HandshakeError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// What `decrypt` produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decrypted {
    /// This many plaintext bytes were appended to the receive buffer.
    Plain(usize),
    /// The client sent close_notify.
    Closed,
    /// No whole record is buffered: read more ciphertext.
    NeedMore,
}

/// One connection's TLS state: the layer and the ciphertext on its way in and out.
#[derive(Debug)]
pub struct TlsStream {
    layer: TlsLayer,
    /// Ciphertext read but not yet fed to the layer (a partial record, or the rest of a read
    /// that yielded more plaintext than the receive buffer could take).
    cipher: BytesMut,
    /// Plaintext waits in the layer for room in the receive buffer.
    pending: bool,
    /// A reusable buffer for the next sealed records.
    spare: Vec<u8>,
    facts: Option<TlsFacts>,
}

impl TlsStream {
    /// Runs the server side of the handshake on `stream` (after `220 Ready to start TLS`
    /// went out). Application data the client sent right behind its Finished message is
    /// decrypted into `plain` (up to its capacity) and kept for the session.
    pub async fn accept<D: Driver>(
        stream: &D::Stream,
        config: Arc<rustls::ServerConfig>,
        plain: &mut BytesMut,
        timeout: Duration,
    ) -> Result<TlsStream, HandshakeError> {
        let layer = TlsLayer::new(config).map_err(HandshakeError::Tls)?;
        let mut tls = TlsStream {
            layer,
            cipher: BytesMut::with_capacity(CIPHER_READ_ROOM),
            pending: false,
            spare: Vec::with_capacity(1024),
            facts: None,
        };
        match tokio::time::timeout(timeout, tls.handshake::<D>(stream, plain)).await {
            Ok(Ok(())) => Ok(tls),
            Ok(Err(e)) => {
                // Tell the client why, if rustls has an alert for it; the connection closes.
                if tls.layer.wants_write() {
                    let mut alert = std::mem::take(&mut tls.spare);
                    tls.layer.take_ciphertext(&mut alert);
                    let _ = tokio::time::timeout(timeout, D::write_all(stream, alert)).await;
                }
                Err(e)
            }
            Err(_) => Err(HandshakeError::Timeout),
        }
    }

    /// The handshake's record exchange, with no deadline of its own.
    async fn handshake<D: Driver>(
        &mut self,
        stream: &D::Stream,
        plain: &mut BytesMut,
    ) -> Result<(), HandshakeError> {
        loop {
            if self.layer.wants_write() {
                let mut wire = std::mem::take(&mut self.spare);
                wire.clear();
                self.layer.take_ciphertext(&mut wire);
                let (written, wire) = D::write_all(stream, wire).await;
                self.spare = wire;
                written.map_err(HandshakeError::Io)?;
            }
            if !self.layer.is_handshaking() {
                // A finished handshake always has a version and a suite ringmx offered.
                self.facts = self.layer.facts();
                debug_assert!(self.facts.is_some(), "handshake done without facts");
                return match self.facts {
                    Some(_) => Ok(()),
                    None => Err(HandshakeError::Io(io::Error::other(
                        "handshake done without a known version and cipher suite",
                    ))),
                };
            }
            if self.cipher.is_empty() {
                let n = self
                    .read_cipher::<D>(stream)
                    .await
                    .map_err(HandshakeError::Io)?;
                if n == 0 {
                    return Err(HandshakeError::Closed);
                }
            }
            let max = plain.capacity();
            let done = self
                .layer
                .receive(&self.cipher, plain, max)
                .map_err(HandshakeError::Tls)?;
            self.cipher.advance(done.consumed);
            self.pending = done.pending;
            if done.closed {
                return Err(HandshakeError::Closed);
            }
        }
    }

    /// The negotiated protocol version and cipher suite (set once `accept` succeeded).
    pub fn facts(&self) -> Option<TlsFacts> {
        self.facts
    }

    /// Reads more ciphertext from the socket into `cipher`; returns the bytes read (0: EOF).
    async fn read_cipher<D: Driver>(&mut self, stream: &D::Stream) -> io::Result<usize> {
        if self.cipher.capacity() - self.cipher.len() < CIPHER_READ_ROOM {
            self.cipher.reserve(CIPHER_READ_ROOM);
        }
        let (result, cipher) = D::read(stream, std::mem::take(&mut self.cipher)).await;
        self.cipher = cipher;
        result
    }

    /// Decrypts the ciphertext already read into `plain`, up to its capacity (it never grows).
    /// A TLS error is an `io::Error` of kind `InvalidData`; the connection must end.
    pub fn decrypt(&mut self, plain: &mut BytesMut) -> io::Result<Decrypted> {
        if self.cipher.is_empty() && !self.pending {
            return Ok(Decrypted::NeedMore);
        }
        let max = plain.capacity();
        let done = self
            .layer
            .receive(&self.cipher, plain, max)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        self.cipher.advance(done.consumed);
        self.pending = done.pending;
        if done.plaintext > 0 {
            return Ok(Decrypted::Plain(done.plaintext));
        }
        if done.closed {
            return Ok(Decrypted::Closed);
        }
        if self.pending {
            // No room in `plain` at all: the connection must consume before decrypting more.
            return Err(io::Error::other("TLS read with a full receive buffer"));
        }
        // Only a partial record, or records without data (a key update).
        Ok(Decrypted::NeedMore)
    }

    /// The ciphertext buffer, with room for a whole record, for the next socket read; give
    /// it back with `put_read_buffer` when the read completes.
    pub fn take_read_buffer(&mut self) -> BytesMut {
        if self.cipher.capacity() - self.cipher.len() < CIPHER_READ_ROOM {
            self.cipher.reserve(CIPHER_READ_ROOM);
        }
        std::mem::take(&mut self.cipher)
    }

    /// Takes back the ciphertext buffer after a read (the new bytes after the old ones).
    pub fn put_read_buffer(&mut self, cipher: BytesMut) {
        self.cipher = cipher;
    }

    /// Seals reply plaintext into records; returns the ciphertext to write, in a buffer that
    /// the caller writes and may keep (`replies` becomes the next spare buffer). With `last`,
    /// a close_notify alert follows the replies.
    pub fn seal(&mut self, replies: Vec<u8>, last: bool) -> io::Result<Vec<u8>> {
        self.layer
            .send(&replies)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if last {
            self.layer.close();
        }
        let mut wire = std::mem::replace(&mut self.spare, replies);
        wire.clear();
        self.layer.take_ciphertext(&mut wire);
        Ok(wire)
    }
}
