//! The TLS layer bound to a connection's socket through the driver interface: the handshake
//! with its deadline, reads that return plaintext in the connection's receive buffer, and
//! replies sealed into records before they are written. Both backends share it because it uses
//! only `Driver::read` and `Driver::write_all`.
//!
//! Reads and writes of one connection run at the same time in the connection loop, so the
//! write side never borrows this state: replies are sealed into a ciphertext buffer first
//! (`seal`), and the write owns that buffer until the kernel is done with it.

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
                self.facts = self.layer.facts();
                debug_assert!(self.facts.is_some(), "handshake done without facts");
                return Ok(());
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

    /// The negotiated protocol version and cipher suite.
    pub fn facts(&self) -> TlsFacts {
        self.facts.unwrap_or(TlsFacts {
            version: "TLS",
            cipher: "unknown",
        })
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

    /// Reads plaintext into the spare capacity of `buf` (without growing it), as
    /// `Driver::read` does for a plain connection: returns the bytes added, 0 when the client
    /// closed (close_notify, or TCP EOF even in the middle of a record: a truncated record is
    /// never delivered). A TLS error is an `io::Error` of kind `InvalidData`.
    pub async fn read<D: Driver>(
        &mut self,
        stream: &D::Stream,
        mut buf: BytesMut,
    ) -> (io::Result<usize>, BytesMut) {
        let max = buf.capacity();
        // Bounded: each turn either reads from the socket or returns.
        loop {
            if !self.cipher.is_empty() || self.pending {
                let done = match self.layer.receive(&self.cipher, &mut buf, max) {
                    Ok(done) => done,
                    Err(e) => {
                        let e = io::Error::new(io::ErrorKind::InvalidData, e.to_string());
                        return (Err(e), buf);
                    }
                };
                self.cipher.advance(done.consumed);
                self.pending = done.pending;
                if done.plaintext > 0 {
                    return (Ok(done.plaintext), buf);
                }
                if done.closed {
                    return (Ok(0), buf);
                }
                if self.pending {
                    // No room in `buf` at all: the caller must consume before reading.
                    let e = io::Error::other("TLS read with a full receive buffer");
                    return (Err(e), buf);
                }
                // Only a partial record (or records without data, such as a key update).
            }
            match self.read_cipher::<D>(stream).await {
                Ok(0) => return (Ok(0), buf),
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
        }
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
