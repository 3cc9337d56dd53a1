//! What the TLS layer costs on the receive path, in bytes/s of plaintext: `TlsLayer::receive`
//! taking 1 MiB of application data in full 16 KiB records (AES-256-GCM, TLS 1.3) into a
//! 64 KiB receive buffer, against the ceiling of the same bytes moved by `memcpy` once. The
//! layer wraps rustls's buffered connection, which moves every byte three times (ciphertext
//! into its deframer, plaintext into its own queue, plaintext into the receive buffer); the
//! memcpy line puts a price on each of those copies beside the decryption itself.
//! The plaintext is checked against what the client sent before anything is timed.

use std::io::Write as _;
use std::sync::Arc;

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringmx::tls::{load_pair, TlsLayer};
use rustls::pki_types::{CertificateDer, ServerName};

/// Plaintext per run.
const TOTAL: usize = 1 << 20;
/// The connection's receive buffer while data flows.
const PLAIN_MAX: usize = 64 * 1024;

/// A server configuration and a client configuration that trusts it.
fn configs() -> (
    Arc<rustls::ServerConfig>,
    Arc<rustls::ClientConfig>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    let server = load_pair(&cert, &key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(made.cert.der().to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (server, Arc::new(client), dir)
}

/// A server layer past its handshake and the client's ciphertext for `TOTAL` bytes of `data`.
fn connected(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
    data: &[u8],
) -> (TlsLayer, Vec<u8>) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = rustls::ClientConnection::new(Arc::clone(client), name).unwrap();
    let mut s = TlsLayer::new(Arc::clone(server)).unwrap();
    let mut plain = BytesMut::with_capacity(PLAIN_MAX);
    while c.is_handshaking() || s.is_handshaking() {
        let mut wire = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        s.receive(&wire, &mut plain, PLAIN_MAX).unwrap();
        let mut back = Vec::new();
        s.take_ciphertext(&mut back);
        let mut rd = &back[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
    }
    let mut wire = Vec::with_capacity(TOTAL + TOTAL / 64);
    c.set_buffer_limit(None);
    c.writer().write_all(data).unwrap();
    while c.wants_write() {
        c.write_tls(&mut wire).unwrap();
    }
    (s, wire)
}

/// Feeds all of `wire` through the layer, emptying the receive buffer as the session would;
/// returns the plaintext bytes delivered (and the bytes themselves when `keep`).
fn receive_all(
    s: &mut TlsLayer,
    wire: &[u8],
    plain: &mut BytesMut,
    keep: Option<&mut Vec<u8>>,
) -> usize {
    let mut total = 0;
    let mut pos = 0;
    let mut keep = keep;
    loop {
        let done = s.receive(&wire[pos..], plain, PLAIN_MAX).unwrap();
        pos += done.consumed;
        total += plain.len();
        if let Some(k) = keep.as_mut() {
            k.extend_from_slice(plain);
        }
        plain.clear();
        if pos == wire.len() && !done.pending {
            return total;
        }
    }
}

fn tls(c: &mut Criterion) {
    let (server, client, _dir) = configs();
    let data: Vec<u8> = (0..TOTAL).map(|i| (i * 31 % 251) as u8).collect();

    // Check before timing.
    let (mut s, wire) = connected(&server, &client, &data);
    let mut plain = BytesMut::with_capacity(PLAIN_MAX);
    let mut got = Vec::new();
    assert_eq!(
        receive_all(&mut s, &wire, &mut plain, Some(&mut got)),
        TOTAL
    );
    assert!(got == data);

    let mut group = c.benchmark_group("tls-receive");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.bench_function("TlsLayer::receive 1MiB AES-256-GCM", |b| {
        b.iter_batched(
            || connected(&server, &client, &data),
            |(mut s, wire)| {
                let mut plain = BytesMut::with_capacity(PLAIN_MAX);
                black_box(receive_all(&mut s, &wire, &mut plain, None))
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("memcpy 1MiB (one copy)", |b| {
        let mut dst = vec![0u8; TOTAL];
        b.iter(|| {
            dst.copy_from_slice(black_box(&data));
            black_box(&dst);
        })
    });
    group.finish();
}

criterion_group!(benches, tls);
criterion_main!(benches);
