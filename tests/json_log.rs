//! `RINGMX_LOG_FORMAT=json` (SPEC §3): every line the real server writes is one JSON object
//! with `timestamp`, `level`, `event` and `message`, and the events carry their fields (peer,
//! queue ID, reply code, duration) as typed keys, for log shippers.

mod common;

use std::time::Duration;

use common::{send_lockstep, Client, Server};
use serde_json::Value;

/// The server's log so far, each line parsed (a line that is not a JSON object fails).
fn events(server: &Server) -> Vec<Value> {
    server
        .log()
        .iter()
        .map(|line| {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(v.is_object(), "{line}");
            for key in ["timestamp", "level", "event", "message"] {
                assert!(v[key].is_string(), "{key} missing: {line}");
            }
            v
        })
        .collect()
}

/// Polls until an event named `name` satisfying `matches` is logged; returns it.
fn wait_event(server: &Server, name: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    let done = common::poll(Duration::from_secs(10), || {
        found = events(server)
            .into_iter()
            .find(|v| v["event"] == name && matches(v));
        found.is_some()
    });
    assert!(done, "no {name} event in:\n{}", server.log_text());
    found.unwrap()
}

#[test]
fn every_line_is_a_json_object_with_the_events_fields() {
    let server = Server::start(&[
        ("RINGMX_LOG_FORMAT", "json"),
        ("RINGMX_LOG", "debug"),
        ("RINGMX_LIMIT_EXEMPT", ""),
        ("RINGMX_MAX_CONNECTIONS_PER_IP", "1"),
    ]);
    let start = wait_event(&server, "start", |_| true);
    assert_eq!(start["level"], "info");
    assert_eq!(start["listen"], server.addr().to_string());
    assert!(start["shards"].is_u64());
    assert!(start["fsync"].is_boolean());
    let ts = start["timestamp"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");

    let mut client = Client::ehlo(server.addr());
    let id = send_lockstep(
        &mut client,
        "a@x.example",
        &["b@y.example"],
        b"Subject: j\r\n\r\nj\r\n",
    );
    let mut refused = Client::connect(server.addr());
    refused.expect("421 4.7.0");
    client.send(b"QUIT\r\n");
    client.expect("221");
    drop(client);

    let stored = wait_event(&server, "stored", |v| v["queue_id"] == id.as_str());
    assert_eq!(stored["level"], "debug");
    assert_eq!(stored["code"], 250);
    let refused = wait_event(&server, "refused", |_| true);
    assert_eq!(refused["code"], 421);
    assert_eq!(refused["reason"], "per-IP limit");
    assert!(refused["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let end = wait_event(&server, "session_end", |v| v["messages"] == 1);
    assert_eq!(end["end"], "closed");
    assert!(end["duration_ms"].is_u64());
    assert!(end["bytes_in"].as_u64().unwrap() > 0);
    assert!(end["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
}

#[test]
fn proxy_outcomes_are_events_too() {
    let server = Server::start(&[
        ("RINGMX_LOG_FORMAT", "json"),
        ("RINGMX_PROXY_FROM", "127.0.0.0/8"),
    ]);
    let mut client = Client::connect(server.addr());
    client.send(b"PROXY TCP4 \"}{\x1b 1.2.3.4 1 2\r\n");
    let _ = client.read_until_closed();
    let event = wait_event(&server, "proxy_header", |_| true);
    assert_eq!(event["result"], "malformed");
    assert_eq!(event["level"], "info");
}
