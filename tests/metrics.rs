//! The Prometheus endpoint (SPEC §8) over real HTTP on loopback: `GET /metrics` answers text
//! that `promtool check metrics` accepts, other paths 404, other methods 405; and, against the
//! real server, the counters rise by exactly what a test sent.

mod common;

use std::sync::Arc;

use common::ops::{http, http_raw, peer, promtool_check, sample};
use ringmx::metrics::http::Endpoint;
use ringmx::metrics::{Connection, Metrics, Tls};

/// An endpoint on an ephemeral loopback port serving `metrics`.
fn endpoint(metrics: &Arc<Metrics>) -> Endpoint {
    let listener = Endpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    Endpoint::start(listener, Arc::clone(metrics)).unwrap()
}

#[test]
fn endpoint_answers_get_metrics_and_refuses_the_rest() {
    let spool = tempfile::tempdir().unwrap();
    let metrics = Metrics::new(2, Some(spool.path().to_path_buf()), "uring");
    let shard = metrics.shard(1);
    shard.connection(Connection::Accepted);
    shard.tls_handshake(Tls::Failed);
    shard.replies(b"250 2.0.0 Ok: queued as X\r\n");
    shard.store_latency(std::time::Duration::from_millis(2));
    let endpoint = endpoint(&metrics);
    let addr = endpoint.local_addr();

    let ok = http(addr, "GET", "/metrics");
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(
        ok.headers
            .contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        ok.headers
    );
    assert_eq!(
        sample(&ok.body, "ringmx_connections_total{result=\"accepted\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&ok.body, "ringmx_tls_handshakes_total{result=\"failed\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&ok.body, "ringmx_replies_total{code=\"250\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&ok.body, "ringmx_message_store_seconds_count"),
        Some(1.0)
    );
    assert!(sample(&ok.body, "ringmx_spool_free_bytes").unwrap() > 0.0);

    assert_eq!(http(addr, "GET", "/").status, 404);
    assert_eq!(http(addr, "GET", "/metricsx").status, 404);
    assert_eq!(http(addr, "GET", "/favicon.ico").status, 404);
    for method in ["POST", "PUT", "DELETE", "HEAD", "PATCH"] {
        let r = http(addr, method, "/metrics");
        assert_eq!(r.status, 405, "{method}");
        assert!(r.headers.contains("Allow: GET"), "{method}: {}", r.headers);
    }
    assert_eq!(http_raw(addr, b"EHLO mx.example\r\n\r\n").status, 400);
    // Still serving after all that.
    assert_eq!(http(addr, "GET", "/metrics?x=1").status, 200);
}

#[test]
fn endpoint_survives_clients_that_stall_or_vanish() {
    use std::io::Write;
    let metrics = Metrics::new(1, None, "epoll");
    let endpoint = endpoint(&metrics);
    let addr = endpoint.local_addr();
    // Half a request, then silence; a connection closed at once; one byte at a time.
    let mut stalled = std::net::TcpStream::connect(addr).unwrap();
    stalled.write_all(b"GET /metr").unwrap();
    drop(std::net::TcpStream::connect(addr).unwrap());
    let mut slow = std::net::TcpStream::connect(addr).unwrap();
    for b in b"GET /metrics HTTP/1.1\r\n\r\n" {
        slow.write_all(&[*b]).unwrap();
    }
    let mut response = String::new();
    std::io::Read::read_to_string(&mut slow, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert_eq!(http(addr, "GET", "/metrics").status, 200);
    drop(stalled);
}

#[test]
fn promtool_accepts_the_output() {
    let Some(promtool) = peer("promtool", "prometheus", "promtool_accepts_the_output") else {
        return;
    };
    let spool = tempfile::tempdir().unwrap();
    let metrics = Metrics::new(3, Some(spool.path().to_path_buf()), "uring");
    for id in 0..3 {
        let shard = metrics.shard(id);
        shard.connection(Connection::Accepted);
        shard.session_started();
        shard.replies(b"220 hi\r\n250 ok\r\n421 4.3.2 bye\r\n");
        shard.message_stored(2);
        shard.fsync_latency(std::time::Duration::from_micros(700));
        shard.store_latency(std::time::Duration::from_millis(20));
    }
    let endpoint = endpoint(&metrics);
    let body = http(endpoint.local_addr(), "GET", "/metrics").body;
    promtool_check(&promtool, &body).unwrap_or_else(|e| panic!("{e}\n{body}"));
}
