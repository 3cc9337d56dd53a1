//! The Prometheus endpoint (SPEC §8) over real HTTP on loopback: `GET /metrics` answers text
//! that `promtool check metrics` accepts, other paths 404, other methods 405; and, against the
//! real server, the counters rise by exactly what a test sent.

mod common;

use std::sync::Arc;

use common::ops::{http, http_raw, metrics_addr, peer, promtool_check, sample, scrape};
use common::{exited_with, run_to_exit, send_lockstep, transaction, Client, Server};
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

/// The sample `series` in `text`, which must be there.
fn get(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"))
}

/// `after - before` for `series`.
fn delta(before: &str, after: &str, series: &str) -> f64 {
    get(after, series) - get(before, series)
}

/// Waits until the server's open sessions are back to `want` (a session's end is counted
/// just after its last reply is sent).
fn wait_sessions(server: &Server, want: f64) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = scrape(server);
        if get(&text, "ringmx_sessions_active") == want {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessions never reached {want}:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn counters_rise_by_exactly_what_a_session_sent() {
    let server = Server::start(&[("RINGMX_METRICS_LISTEN", "127.0.0.1:0")]);
    let before = scrape(&server);
    assert_eq!(get(&before, "ringmx_sessions_active"), 0.0);
    let mut sent = 0usize;
    let mut client = Client::greeted(server.addr());
    let ehlo = b"EHLO client.example\r\n";
    client.send(ehlo);
    client.expect("250");
    sent += ehlo.len();
    // Two messages in lockstep (2 and 1 recipients), one pipelined with 3 recipients.
    let bodies: [&[u8]; 3] = [
        b"Subject: one\r\n\r\nfirst\r\n",
        b"Subject: two\r\n\r\n.dot\r\nsecond\r\n",
        b"Subject: three\r\n\r\nthird\r\n",
    ];
    send_lockstep(
        &mut client,
        "a@x.example",
        &["b@y.example", "c@y.example"],
        bodies[0],
    );
    send_lockstep(&mut client, "a@x.example", &["d@y.example"], bodies[1]);
    for (rcpts, body) in [(2usize, bodies[0]), (1, bodies[1])] {
        // MAIL, RCPTs, DATA, the stuffed body, as send_lockstep wrote them.
        let mut bytes = "MAIL FROM:<a@x.example>\r\n".len();
        bytes += rcpts * "RCPT TO:<b@y.example>\r\n".len();
        bytes += "DATA\r\n".len() + common::dot_stuffed(body).len();
        sent += bytes;
    }
    let pipelined = transaction(
        "a@x.example",
        &["e@y.example", "f@y.example", "g@y.example"],
        bodies[2],
    );
    client.send(&pipelined);
    sent += pipelined.len();
    for _ in 0..4 {
        client.expect("250 2.1.");
    }
    client.expect("354");
    client.expect_queued();
    // Two errors, then QUIT.
    let junk = b"FOO\r\nRCPT TO:<x@y.example>\r\nQUIT\r\n";
    client.send(junk);
    sent += junk.len();
    client.expect("500");
    client.expect("503");
    client.expect("221");
    drop(client);
    let after = wait_sessions(&server, 0.0);
    let d = |series: &str| delta(&before, &after, series);
    assert_eq!(d("ringmx_connections_total{result=\"accepted\"}"), 1.0);
    assert_eq!(d("ringmx_messages_total"), 3.0);
    assert_eq!(d("ringmx_recipients_total"), 6.0);
    assert_eq!(d("ringmx_bytes_received_total"), sent as f64);
    assert_eq!(d("ringmx_replies_total{code=\"220\"}"), 1.0);
    // EHLO, 3 MAIL, 6 RCPT, 3 stored.
    assert_eq!(d("ringmx_replies_total{code=\"250\"}"), 13.0);
    assert_eq!(d("ringmx_replies_total{code=\"354\"}"), 3.0);
    assert_eq!(d("ringmx_replies_total{code=\"500\"}"), 1.0);
    assert_eq!(d("ringmx_replies_total{code=\"503\"}"), 1.0);
    assert_eq!(d("ringmx_replies_total{code=\"221\"}"), 1.0);
    assert_eq!(d("ringmx_message_store_seconds_count"), 3.0);
    assert!(d("ringmx_message_store_seconds_sum") > 0.0);
    // Each message's file fsync, and at least one directory fsync.
    assert!(d("ringmx_fsync_seconds_count") >= 4.0, "{after}");
    assert!(get(&after, "ringmx_spool_free_bytes") > 0.0);
    for refused in ["refused_limit", "refused_per_ip", "refused_shutdown"] {
        let series = format!("ringmx_connections_total{{result=\"{refused}\"}}");
        assert_eq!(d(&series), 0.0, "{series}");
    }
}

#[test]
fn refused_connections_are_counted_by_reason() {
    let server = Server::start(&[
        ("RINGMX_METRICS_LISTEN", "127.0.0.1:0"),
        ("RINGMX_LIMIT_EXEMPT", ""),
        ("RINGMX_MAX_CONNECTIONS_PER_IP", "1"),
    ]);
    let held = Client::greeted(server.addr());
    for _ in 0..2 {
        let mut refused = Client::connect(server.addr());
        refused.expect("421 4.7.0");
    }
    let text = wait_sessions(&server, 1.0);
    assert_eq!(
        get(&text, "ringmx_connections_total{result=\"refused_per_ip\"}"),
        2.0
    );
    assert_eq!(
        get(&text, "ringmx_connections_total{result=\"accepted\"}"),
        1.0
    );
    assert_eq!(get(&text, "ringmx_replies_total{code=\"421\"}"), 2.0);
    drop(held);
    let server = Server::start(&[
        ("RINGMX_METRICS_LISTEN", "127.0.0.1:0"),
        ("RINGMX_MAX_CONNECTIONS", "1"),
    ]);
    let _held = Client::greeted(server.addr());
    let mut refused = Client::connect(server.addr());
    refused.expect("421 4.3.2");
    let text = scrape(&server);
    assert_eq!(
        get(&text, "ringmx_connections_total{result=\"refused_limit\"}"),
        1.0
    );
}

#[test]
fn promtool_accepts_the_servers_output_and_smtp_port_does_not_serve_it() {
    let server = Server::start(&[("RINGMX_METRICS_LISTEN", "127.0.0.1:0")]);
    let mut client = Client::ehlo(server.addr());
    send_lockstep(
        &mut client,
        "a@x.example",
        &["b@y.example"],
        b"Subject: x\r\n\r\nx\r\n",
    );
    // The SMTP port is not an HTTP port: an HTTP request there gets an SMTP refusal (500, or
    // 421 where HTTP verbs close the session), never metrics.
    let mut smtp = Client::greeted(server.addr());
    smtp.send(b"GET /metrics HTTP/1.1\r\n\r\n");
    let reply = smtp.read_reply();
    assert!(
        reply.starts_with("500 ") || reply.starts_with("421 "),
        "{reply}"
    );
    let addr = metrics_addr(&server);
    assert_ne!(addr.port(), server.addr().port());
    assert_eq!(http(addr, "GET", "/").status, 404);
    assert_eq!(http(addr, "POST", "/metrics").status, 405);
    let text = scrape(&server);
    let info = format!(
        "ringmx_build_info{{version=\"{}\",backend=",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&info), "{text}");
    let Some(promtool) = peer(
        "promtool",
        "prometheus",
        "promtool_accepts_the_servers_output",
    ) else {
        return;
    };
    promtool_check(&promtool, &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
}

#[test]
fn metrics_listen_errors_stop_start_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let spool = tempfile::tempdir().unwrap();
    let spool = spool.path().display().to_string();
    let (status, log) = run_to_exit(
        &[
            ("RINGMX_LISTEN", "127.0.0.1:0"),
            ("RINGMX_SPOOL", &spool),
            ("RINGMX_METRICS_LISTEN", &addr),
        ],
        std::time::Duration::from_secs(10),
    );
    assert!(exited_with(status, 1), "{status:?} {log:?}");
    assert!(
        log.iter()
            .any(|l| l.contains("RINGMX_METRICS_LISTEN") && l.contains(&addr)),
        "{log:?}"
    );
    let (status, log) = run_to_exit(
        &[("RINGMX_METRICS_LISTEN", "localhost:9425")],
        std::time::Duration::from_secs(10),
    );
    assert!(exited_with(status, 2), "{status:?} {log:?}");
}

#[test]
fn idle_connections_cannot_hold_the_endpoint() {
    let metrics = Metrics::new(1, None, "uring");
    let endpoint = endpoint(&metrics);
    let addr = endpoint.local_addr();
    // More idle connections than the endpoint serves at once, none sending a byte.
    let idle: Vec<std::net::TcpStream> = (0..80)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // They are dropped after the request-head timeout and a scrape gets through again.
    let served = common::poll(std::time::Duration::from_secs(15), || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        if s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").is_err() {
            return false;
        }
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        response.starts_with("HTTP/1.1 200 OK")
    });
    assert!(served, "the endpoint never served again");
    drop(idle);
}
