//! JetStream delivery against a real nats-server on loopback: the sink's payload and headers,
//! its start-up check, its size limit, and its behaviour while the server is gone and after it
//! comes back on the same store.

mod common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::nats::*;
use ringmx::delivery::jetstream::{probe, size_limit, Jetstream, Probe, Publication, Settings};
use ringmx::delivery::{DeliveryError, MessageStart, Recipients, Sink};
use ringmx::scan::Part;

const SUBJECT: &str = "ringmx.inbound";
const STREAM: &str = "MAIL";

fn settings(url: &str, ack_timeout_ms: u64) -> Settings {
    Settings {
        url: url.to_string(),
        subject: SUBJECT.to_string(),
        ack_timeout: Duration::from_millis(ack_timeout_ms),
    }
}

/// A single node with the stream `MAIL` on `ringmx.inbound`, or None when skipped.
fn node_with_stream(test: &str, options: &NodeOptions) -> Option<NatsNode> {
    let binary = nats_server(test)?;
    let node = NatsNode::start(&binary, options);
    create_stream(&node.url(), &StreamSpec::new(STREAM, SUBJECT));
    Some(node)
}

/// One message as the connection hands it over: trace headers, then parts of receive buffers.
struct Sample {
    id: String,
    sender: String,
    recipients: Vec<String>,
    head: Vec<u8>,
    /// (buffer, parts, base) per append.
    chunks: Vec<(BytesMut, Vec<Part>, usize)>,
    /// The payload the stream must hold.
    expected: Vec<u8>,
}

fn sample(n: usize) -> Sample {
    let id = format!("{:020X}", 0xABC0_0000_0000u64 + n as u64);
    // SMTPUTF8 envelopes too: header values are UTF-8, not only ASCII.
    let sender = match n % 5 {
        0 => String::new(),
        1 => format!("j\u{f6}rg{n}@b\u{fc}cher.example"),
        _ => format!("sender{n}@example.org"),
    };
    let recipients: Vec<String> = (0..1 + n % 3)
        .map(|r| match (n + r) % 4 {
            0 => format!("\u{7528}\u{6237}{r}+{n}@\u{4f8b}\u{3048}.example"),
            _ => format!("rcpt{r}+{n}@example.net"),
        })
        .collect();
    let head = format!("Return-Path: <{sender}>\r\nReceived: test {n}\r\n").into_bytes();
    let mut expected = head.clone();
    let mut chunks = Vec::new();
    // A buffer with a command prefix (base), body lines split by a removed stuffing dot and a
    // constant CRLF, then a second buffer: the shapes the scanner produces.
    let first = format!("MAIL FROM:<x>\r\nSubject: {n}\r\n..dotted line\r\nbody {n}\n");
    let base = "MAIL FROM:<x>\r\n".len();
    let line1 = format!("Subject: {n}\r\n");
    let parts = vec![
        Part::Input(0..line1.len() + 1),
        Part::Input(line1.len() + 2..first.len() - base - 1),
        Part::Static(b"\r\n"),
    ];
    expected.extend_from_slice(format!("Subject: {n}\r\n.dotted line\r\nbody {n}\r\n").as_bytes());
    chunks.push((BytesMut::from(first.as_bytes()), parts, base));
    let big: Vec<u8> = (0..(n * 997) % 70_000)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let mut second = BytesMut::from(&big[..]);
    second.extend_from_slice(b"\r\n");
    expected.extend_from_slice(&second);
    chunks.push((second.clone(), vec![Part::Input(0..second.len())], 0));
    Sample {
        id,
        sender,
        recipients,
        head,
        chunks,
        expected,
    }
}

/// Begins a message of `s`'s envelope with `head`.
async fn begin(sink: &Jetstream, s: &Sample, head: &[u8]) -> Publication {
    let text: String = s.recipients.concat();
    let ends: Vec<usize> = s
        .recipients
        .iter()
        .scan(0, |end, r| {
            *end += r.len();
            Some(*end)
        })
        .collect();
    let start = MessageStart {
        id: &s.id,
        sender: &s.sender,
        recipients: Recipients::new(&text, &ends),
    };
    let (started, back) = sink.begin(&start, head.to_vec()).await;
    assert_eq!(back, head, "begin gives the head back");
    started.expect("begin")
}

/// Runs one message through the sink: begin, appends, commit.
async fn deliver(sink: &Jetstream, s: &Sample) -> Result<(), DeliveryError> {
    let mut m = begin(sink, s, &s.head).await;
    for (buf, parts, base) in &s.chunks {
        let back = sink.append(&mut m, buf.clone(), parts, *base, false).await;
        assert_eq!(&back, buf, "append gives the buffer back untouched");
    }
    sink.commit(m).await
}

fn check_sample(stored: &StoredMessage, s: &Sample) {
    assert_eq!(stored.subject, SUBJECT);
    assert!(stored.payload == s.expected, "payload of {} differs", s.id);
    assert_eq!(stored.header("Nats-Msg-Id"), vec![s.id.clone()]);
    assert_eq!(stored.header("Ringmx-Mail-From"), vec![s.sender.clone()]);
    assert_eq!(stored.header("Ringmx-Rcpt-To"), s.recipients);
}

#[test]
fn payload_is_byte_exact_with_envelope_headers_and_retries_are_stored_once() {
    let Some(node) = node_with_stream("payload", &NodeOptions::default()) else {
        return;
    };
    let settings = settings(&node.url(), 5000);
    let found = probe(&settings).expect("probe");
    assert_eq!(found.stream, STREAM);
    assert_eq!(found.message_max, 1024 * 1024);
    let samples: Vec<Sample> = (0..40).map(sample).collect();
    block_on(async {
        let sink = Jetstream::connect(&settings, &found, 0)
            .await
            .expect("connect");
        // Many publishes in flight at once from one connection.
        let results = futures_join_all(samples.iter().map(|s| deliver(&sink, s)).collect()).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        // A retry of an acknowledged message (same queue ID) is de-duplicated by the stream.
        deliver(&sink, &samples[3]).await.expect("retry");
    });
    let stored = stream_messages(&node.url(), STREAM);
    assert_eq!(stored.len(), samples.len());
    for s in &samples {
        let found: Vec<&StoredMessage> = stored
            .iter()
            .filter(|m| m.header("Nats-Msg-Id") == vec![s.id.clone()])
            .collect();
        assert_eq!(found.len(), 1, "{} stored {} times", s.id, found.len());
        check_sample(found[0], s);
    }
}

/// Awaits every future concurrently on the current task (no extra dependency for join_all).
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|v| v.expect("finished")).collect()
}

#[test]
fn the_sink_runs_on_a_tokio_uring_shard_runtime() {
    let Some(node) = node_with_stream("uring runtime", &NodeOptions::default()) else {
        return;
    };
    let settings = settings(&node.url(), 5000);
    let found = probe(&settings).expect("probe");
    let samples: Vec<Sample> = (100..110).map(sample).collect();
    // tokio-uring may be refused (seccomp, io_uring_disabled): then there is nothing to check.
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tokio_uring::start(async {
            let sink = Jetstream::connect(&settings, &found, 1)
                .await
                .expect("connect");
            for s in &samples {
                deliver(&sink, s).await.expect("deliver");
            }
        })
    }));
    if ran.is_err() {
        common::skip_or_fail("uring runtime", "io_uring cannot be set up here");
        return;
    }
    let stored = stream_messages(&node.url(), STREAM);
    assert_eq!(stored.len(), samples.len());
    for (m, s) in stored.iter().zip(&samples) {
        check_sample(m, s);
    }
}

#[test]
fn a_message_larger_than_max_payload_is_refused_whole_and_never_published() {
    let options = NodeOptions {
        max_payload: Some(128 * 1024),
    };
    let Some(node) = node_with_stream("too big", &options) else {
        return;
    };
    let settings = settings(&node.url(), 5000);
    let found = probe(&settings).expect("probe");
    assert_eq!(found.message_max, 128 * 1024);
    assert_eq!(
        size_limit(26_214_400, found.message_max).unwrap(),
        64 * 1024
    );
    block_on(async {
        let sink = Jetstream::connect(&settings, &found, 0)
            .await
            .expect("connect");
        // Just under and just over what fits with the NATS headers: the boundary is exact.
        let s = sample(7);
        let mut m = begin(&sink, &s, &s.head).await;
        let headers = format!(
            "NATS/1.0\r\nNats-Msg-Id: {}\r\nRingmx-Mail-From: {}\r\n\r\n",
            s.id, s.sender
        )
        .len()
            + s.recipients
                .iter()
                .map(|r| "Ringmx-Rcpt-To: \r\n".len() + r.len())
                .sum::<usize>();
        let fill = 128 * 1024 - headers - s.head.len();
        let body = BytesMut::from(&vec![b'x'; fill][..]);
        let body = sink
            .append(&mut m, body, &[Part::Input(0..fill)], 0, false)
            .await;
        assert_eq!(m.len(), 128 * 1024 - headers);
        sink.commit(m)
            .await
            .expect("a message that exactly fits is published");

        // Same header sizes as before, two bytes more of body.
        let mut s = sample(8);
        s.recipients = sample(7).recipients;
        let mut m = begin(&sink, &s, &s.head).await;
        let _ = sink
            .append(
                &mut m,
                body,
                &[Part::Input(0..fill), Part::Static(b"\r\n")],
                0,
                true,
            )
            .await;
        assert_eq!(m.len(), 0, "the copy stops and its memory is freed");
        assert!(matches!(sink.commit(m).await, Err(DeliveryError::TooBig)));
    });
    let stored = stream_messages(&node.url(), STREAM);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].header("Nats-Msg-Id"), vec![sample(7).id]);
}

#[test]
fn probe_fails_with_one_line_without_server_stream_or_jetstream() {
    let Some(binary) = nats_server("probe") else {
        return;
    };
    // Nothing listens.
    let url = format!("nats://127.0.0.1:{}", free_port());
    let line = probe(&settings(&url, 1000)).unwrap_err();
    assert!(
        line.contains("cannot connect") && line.contains(&url),
        "{line}"
    );
    assert!(!line.contains('\n'), "{line}");

    // A server, but no stream captures the subject.
    let node = NatsNode::start(&binary, &NodeOptions::default());
    create_stream(&node.url(), &StreamSpec::new("OTHER", "other.>"));
    let line = probe(&settings(&node.url(), 1000)).unwrap_err();
    assert!(line.contains("no stream captures subject"), "{line}");
    assert!(!line.contains('\n'), "{line}");

    // A wildcard stream captures it; its own message limit, smaller than max_payload, counts.
    let mut spec = StreamSpec::new("ALL", "ringmx.>");
    spec.max_message_size = 300_000;
    create_stream(&node.url(), &spec);
    let found = probe(&settings(&node.url(), 1000)).expect("probe");
    assert_eq!(
        found,
        Probe {
            stream: "ALL".into(),
            message_max: 300_000,
            server_version: found.server_version.clone(),
            warning: None,
        }
    );
}

#[test]
fn a_lost_server_gives_prompt_refusals_then_acceptance_resumes_by_itself() {
    let Some(mut node) = node_with_stream("lost server", &NodeOptions::default()) else {
        return;
    };
    let ack_timeout_ms = 500;
    let settings = settings(&node.url(), ack_timeout_ms);
    let found = probe(&settings).expect("probe");
    let mut acknowledged = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let sink = Jetstream::connect(&settings, &found, 0)
            .await
            .expect("connect");
        for n in 200..210 {
            deliver(&sink, &sample(n)).await.expect("before the loss");
            acknowledged.push(sample(n).id);
        }
        node.kill();
        // While it is gone every message is refused as temporary, within the deadline (plus
        // scheduling slack), never hanging.
        for n in 210..215 {
            let began = Instant::now();
            let result = deliver(&sink, &sample(n)).await;
            assert!(
                matches!(result, Err(DeliveryError::Temporary(_))),
                "{result:?}"
            );
            assert!(
                began.elapsed() < Duration::from_millis(ack_timeout_ms) + Duration::from_secs(5)
            );
        }
        node.restart();
        // The connection comes back in the background; acceptance resumes without a restart.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut n = 300;
        loop {
            let s = sample(n);
            match deliver(&sink, &s).await {
                Ok(()) => {
                    acknowledged.push(s.id);
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "still refused: {e}"),
            }
            n += 1;
        }
        for n in 400..410 {
            deliver(&sink, &sample(n)).await.expect("after the restart");
            acknowledged.push(sample(n).id);
        }
    });
    let stored = stream_messages(&node.url(), STREAM);
    for id in &acknowledged {
        let count = stored
            .iter()
            .filter(|m| m.header("Nats-Msg-Id") == vec![id.clone()])
            .count();
        assert_eq!(count, 1, "acknowledged {id} stored {count} times");
    }
}

// ---------------------------------------------------------------------------------------------
// The server end to end: ringmx with RINGMX_DELIVERY=jetstream, real SMTP clients, real
// nats-server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{
    check_stored, exited_with, poll, queue_id, run_to_exit, sample_body, transaction, Client,
    Expected, Server, HOSTNAME,
};

const SENDER: &str = "bulk@sender.example";
const RCPT: &str = "user@rcpt.example";

/// Starts ringmx publishing to `url` on two shards.
fn ringmx(url: &str, vars: &[(&str, &str)]) -> Server {
    let mut all = vec![
        ("RINGMX_DELIVERY", "jetstream"),
        ("RINGMX_NATS_URL", url),
        ("RINGMX_NATS_SUBJECT", SUBJECT),
        ("RINGMX_SHARDS", "2"),
    ];
    all.extend_from_slice(vars);
    Server::start(&all)
}

/// Clients sending messages until told to stop (or until each has sent `per_worker`), with
/// what came back.
struct Load {
    stop: AtomicBool,
    /// Queue ID of every 250, with the body it acknowledged.
    acked: Mutex<HashMap<String, Vec<u8>>>,
    acked_count: AtomicUsize,
    /// 451 4.3.0 replies to end of data.
    temporary: AtomicUsize,
}

impl Load {
    fn acked(&self) -> usize {
        self.acked_count.load(Ordering::SeqCst)
    }

    fn temporary(&self) -> usize {
        self.temporary.load(Ordering::SeqCst)
    }
}

/// Starts `workers` client threads; each opens sessions of `per_session` pipelined
/// transactions until `per_worker` messages (None: until `stop`). Any reply other than 250 or
/// 451 4.3.0 at end of data, and any reply that takes longer than the client's read timeout
/// (a hang), fails the worker.
fn start_load(
    addr: SocketAddr,
    workers: usize,
    per_session: usize,
    per_worker: Option<usize>,
) -> (Arc<Load>, Vec<std::thread::JoinHandle<()>>) {
    let load = Arc::new(Load {
        stop: AtomicBool::new(false),
        acked: Mutex::new(HashMap::new()),
        acked_count: AtomicUsize::new(0),
        temporary: AtomicUsize::new(0),
    });
    let threads = (0..workers)
        .map(|w| {
            let load = Arc::clone(&load);
            std::thread::spawn(move || {
                let mut n = 0;
                let done = |n: usize| {
                    load.stop.load(Ordering::SeqCst) || per_worker.is_some_and(|max| n >= max)
                };
                while !done(n) {
                    let mut client = Client::ehlo(addr);
                    for _ in 0..per_session {
                        if done(n) {
                            break;
                        }
                        let body = sample_body(&format!("w{w}"), n, (n * 131) % 3000);
                        client.send(&transaction(SENDER, &[RCPT], &body));
                        client.expect("250 2.1.0");
                        client.expect("250 2.1.5");
                        client.expect("354 ");
                        let reply = client.read_reply();
                        if reply.starts_with("250 ") {
                            let id = queue_id(&reply).expect("queue ID in 250");
                            let prior = load.acked.lock().unwrap().insert(id.clone(), body);
                            assert!(prior.is_none(), "queue ID {id} given twice");
                            load.acked_count.fetch_add(1, Ordering::SeqCst);
                        } else if reply.starts_with("451 4.3.0") {
                            load.temporary.fetch_add(1, Ordering::SeqCst);
                        } else {
                            panic!("worker {w}: unexpected reply to end of data: {reply:?}");
                        }
                        n += 1;
                    }
                    client.send(b"QUIT\r\n");
                    client.expect("221");
                }
            })
        })
        .collect();
    (load, threads)
}

/// Stops the load and waits for its workers; a worker that failed fails the test.
fn finish(load: &Load, threads: Vec<std::thread::JoinHandle<()>>) {
    load.stop.store(true, Ordering::SeqCst);
    for thread in threads {
        thread.join().expect("a load worker failed");
    }
}

/// Every acknowledged message is in `stored` exactly once, byte-exact, with its envelope
/// headers; returns how many stored messages were never acknowledged (a publish whose 451
/// came before its late acknowledgement).
fn check_acknowledged(stored: &[StoredMessage], acked: &HashMap<String, Vec<u8>>) -> usize {
    let mut by_id: HashMap<String, Vec<&StoredMessage>> = HashMap::new();
    for m in stored {
        let ids = m.header("Nats-Msg-Id");
        assert_eq!(
            ids.len(),
            1,
            "message {} has Nats-Msg-Id {ids:?}",
            m.sequence
        );
        by_id.entry(ids[0].clone()).or_default().push(m);
    }
    for (id, body) in acked {
        let found = by_id.get(id).map_or(0, Vec::len);
        assert_eq!(found, 1, "acknowledged {id} is stored {found} times");
        let m = by_id[id][0];
        assert_eq!(m.subject, SUBJECT);
        assert_eq!(m.header("Ringmx-Mail-From"), vec![SENDER.to_string()]);
        assert_eq!(m.header("Ringmx-Rcpt-To"), vec![RCPT.to_string()]);
        let want = Expected {
            sender: SENDER,
            recipients: &[RCPT],
            helo: "client.example",
            peer: "127.0.0.1",
            protocol: "ESMTP",
            body,
        };
        let header_id = check_stored(id, &m.payload, &want);
        assert_eq!(&header_id, id, "the Received header names the 250's ID");
    }
    by_id.len() - acked.len()
}

#[test]
fn messages_over_sessions_and_two_shards_are_published_once_byte_exact() {
    let Some(node) = node_with_stream("end to end", &NodeOptions::default()) else {
        return;
    };
    let server = ringmx(&node.url(), &[]);
    let ehlo = {
        let mut client = Client::greeted(server.addr());
        client.send(b"EHLO client.example\r\n");
        client.expect("250")
    };
    assert!(
        ehlo.contains("SIZE 983040"),
        "1 MiB max_payload less 64 KiB: {ehlo}"
    );
    let log = server.log();
    assert!(log[0].contains("ringmx starting"), "first line: {log:?}");
    assert!(
        log.iter()
            .any(|l| l.contains("jetstream: subject ringmx.inbound on stream MAIL")),
        "{log:?}"
    );
    // Each shard has its own connection to the server.
    let mut names = Vec::new();
    assert!(
        poll(Duration::from_secs(10), || {
            names = node.client_names();
            names
                .iter()
                .filter(|n| n.starts_with("ringmx shard "))
                .count()
                == 2
        }),
        "connections: {names:?}"
    );
    let (load, threads) = start_load(server.addr(), 6, 7, Some(20));
    for thread in threads {
        thread.join().expect("a load worker failed");
    }
    assert_eq!(load.acked(), 120);
    assert_eq!(load.temporary(), 0);
    let stored = stream_messages(&node.url(), STREAM);
    assert_eq!(stored.len(), 120, "exactly one stream message per 250");
    let acked = load.acked.lock().unwrap();
    assert_eq!(check_acknowledged(&stored, &acked), 0);
    // 18 sessions were spread over both shards by the kernel (the queue ID holds the shard
    // in hex digits 14-15; all 18 on one shard has a chance of 2^-17).
    let shards: std::collections::BTreeSet<&str> = acked.keys().map(|id| &id[14..16]).collect();
    assert_eq!(shards.into_iter().collect::<Vec<_>>(), ["00", "01"]);
}

#[test]
fn size_comes_from_max_payload_and_a_payload_that_still_does_not_fit_gets_552() {
    let options = NodeOptions {
        max_payload: Some(256 * 1024),
    };
    let Some(node) = node_with_stream("size", &options) else {
        return;
    };
    let server = ringmx(&node.url(), &[("RINGMX_MAX_RECIPIENTS", "300")]);
    let mut client = Client::greeted(server.addr());
    client.send(b"EHLO client.example\r\n");
    let ehlo = client.expect("250");
    let size = 256 * 1024 - 64 * 1024;
    assert!(ehlo.contains(&format!("SIZE {size}\r\n")), "{ehlo}");
    client.send(format!("MAIL FROM:<{SENDER}> SIZE={}\r\n", size + 1).as_bytes());
    client.expect("552 5.3.4");

    // Within SIZE, but 200 long recipients make the trace and envelope headers outgrow the
    // 64 KiB kept for them: refused after the data, nothing published.
    let domain = format!("{}.{}.example", "d".repeat(60), "e".repeat(60));
    let recipients: Vec<String> = (0..200)
        .map(|i| format!("{}{i:03}@{domain}", "r".repeat(60)))
        .collect();
    let rcpts: Vec<&str> = recipients.iter().map(String::as_str).collect();
    let mut body = sample_body("big", 0, size - 4000);
    body.truncate(size - 10);
    body.extend_from_slice(b"\r\n");
    client.send(format!("MAIL FROM:<{SENDER}>\r\n").as_bytes());
    client.expect("250 2.1.0");
    for rcpt in &rcpts {
        client.send(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
        client.expect("250 2.1.5");
    }
    client.send(b"DATA\r\n");
    client.expect("354 ");
    client.send(&common::dot_stuffed(&body));
    client.expect("552 5.3.4");
    // The session goes on.
    let small = sample_body("small", 1, 0);
    client.send(&transaction(SENDER, &[RCPT], &small));
    client.expect("250 2.1.0");
    client.expect("250 2.1.5");
    client.expect("354 ");
    let id = queue_id(&client.expect("250 ")).unwrap();
    let stored = stream_messages(&node.url(), STREAM);
    assert_eq!(stored.len(), 1);
    let acked = HashMap::from([(id, small)]);
    assert_eq!(check_acknowledged(&stored, &acked), 0);
}

#[test]
fn start_up_without_server_or_stream_exits_1_with_one_line() {
    let Some(binary) = nats_server("start-up") else {
        return;
    };
    let url = format!("nats://127.0.0.1:{}", free_port());
    let vars = |url: &str| {
        vec![
            ("RINGMX_DELIVERY".to_string(), "jetstream".to_string()),
            ("RINGMX_NATS_URL".to_string(), url.to_string()),
            ("RINGMX_NATS_ACK_TIMEOUT_MS".to_string(), "1000".to_string()),
            ("RINGMX_LISTEN".to_string(), "127.0.0.1:0".to_string()),
            ("RINGMX_HOSTNAME".to_string(), HOSTNAME.to_string()),
        ]
    };
    let run = |url: &str| {
        let vars = vars(url);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        run_to_exit(&vars, Duration::from_secs(30))
    };
    let (status, lines) = run(&url);
    assert!(exited_with(status, 1), "{status:?} {lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("cannot connect to NATS at") && lines[0].contains(&url),
        "{lines:?}"
    );

    let node = NatsNode::start(&binary, &NodeOptions::default());
    create_stream(&node.url(), &StreamSpec::new("OTHER", "other.>"));
    let (status, lines) = run(&node.url());
    assert!(exited_with(status, 1), "{status:?} {lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("no stream captures subject \"ringmx.inbound\""),
        "{lines:?}"
    );
}

#[test]
fn nats_server_killed_mid_load_and_restarted_loses_nothing_and_acceptance_resumes() {
    let Some(mut node) = node_with_stream("kill and restart", &NodeOptions::default()) else {
        return;
    };
    let server = ringmx(&node.url(), &[("RINGMX_NATS_ACK_TIMEOUT_MS", "1000")]);
    let (load, threads) = start_load(server.addr(), 4, 25, None);
    let bounded = |what: &str, done: &dyn Fn() -> bool| {
        assert!(
            poll(Duration::from_secs(60), done),
            "{what}: acked {}, 451 {}",
            load.acked(),
            load.temporary()
        );
    };
    bounded("before the kill", &|| load.acked() >= 60);
    node.kill();
    // Sessions get 451 (the workers fail on a hang: their read timeout is 10 s).
    bounded("451 while it is gone", &|| load.temporary() >= 8);
    let acked_before_restart = load.acked();
    node.restart();
    bounded("acceptance resumes", &|| {
        load.acked() >= acked_before_restart + 60
    });
    finish(&load, threads);
    let stored = stream_messages(&node.url(), STREAM);
    let acked = load.acked.lock().unwrap();
    let unacknowledged = check_acknowledged(&stored, &acked);
    eprintln!(
        "kill and restart: {} acknowledged, {} answered 451, {} stored without a 250",
        acked.len(),
        load.temporary(),
        unacknowledged
    );
}

#[test]
fn a_cluster_node_killed_mid_load_loses_no_acknowledged_message() {
    let Some(binary) = nats_server("cluster") else {
        return;
    };
    let mut cluster = NatsCluster::start(&binary, 3);
    let mut spec = StreamSpec::new(STREAM, SUBJECT);
    spec.replicas = 3;
    create_stream(&cluster.urls(), &spec);
    let server = ringmx(&cluster.urls(), &[("RINGMX_NATS_ACK_TIMEOUT_MS", "2000")]);
    let (load, threads) = start_load(server.addr(), 4, 25, None);
    let bounded = |what: &str, done: &dyn Fn() -> bool| {
        assert!(
            poll(Duration::from_secs(60), done),
            "{what}: acked {}, 451 {}",
            load.acked(),
            load.temporary()
        );
    };
    bounded("before the kill", &|| load.acked() >= 60);
    // The node a shard publishes through, so that the shard must fail over.
    let victim = (0..3)
        .find(|&i| {
            cluster.nodes[i]
                .client_names()
                .iter()
                .any(|n| n.starts_with("ringmx shard "))
        })
        .expect("a node with a ringmx shard connected");
    cluster.nodes[victim].kill();
    let acked_at_kill = load.acked();
    bounded("acceptance continues on the quorum", &|| {
        load.acked() >= acked_at_kill + 60
    });
    finish(&load, threads);
    let survivors: Vec<String> = (0..3)
        .filter(|&i| i != victim)
        .map(|i| cluster.nodes[i].url())
        .collect();
    let survivors = survivors.join(",");
    let stored = stream_messages(&survivors, STREAM);
    let acked = load.acked.lock().unwrap();
    let unacknowledged = check_acknowledged(&stored, &acked);
    eprintln!(
        "cluster: {} acknowledged, {} answered 451, {} stored without a 250",
        acked.len(),
        load.temporary(),
        unacknowledged
    );
}

#[test]
fn on_epoll_an_abandoned_message_is_never_published_and_sigterm_stops_cleanly() {
    let Some(node) = node_with_stream("epoll", &NodeOptions::default()) else {
        return;
    };
    let mut server = ringmx(&node.url(), &[("RINGMX_BACKEND", "epoll")]);
    // A client that vanishes in the middle of its data, at odd points.
    for cut in [1, 100, 1300, 2500] {
        let mut client = Client::ehlo(server.addr());
        let body = sample_body("abandoned", cut, 3000);
        let mut bytes = transaction(SENDER, &[RCPT], &body);
        bytes.truncate(bytes.len() - 3 - (body.len() - cut.min(body.len() - 1)));
        client.send(&bytes);
        client.expect("250 2.1.0");
        client.expect("250 2.1.5");
        client.expect("354 ");
        drop(client);
    }
    let (load, threads) = start_load(server.addr(), 2, 5, Some(10));
    for thread in threads {
        thread.join().expect("a load worker failed");
    }
    assert_eq!(load.acked(), 20);
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| exited_with(s, 0)),
        "{status:?}; log:\n{}",
        server.log_text()
    );
    let stored = stream_messages(&node.url(), STREAM);
    assert_eq!(stored.len(), 20, "only the acknowledged messages");
    assert_eq!(check_acknowledged(&stored, &load.acked.lock().unwrap()), 0);
}

#[test]
fn a_stalled_nats_server_gets_451_within_the_deadline_not_a_hang() {
    let Some(node) = node_with_stream("stall", &NodeOptions::default()) else {
        return;
    };
    let server = ringmx(&node.url(), &[("RINGMX_NATS_ACK_TIMEOUT_MS", "500")]);
    let mut client = Client::ehlo(server.addr());
    let mut send = |n: usize| {
        let body = sample_body("stall", n, 100);
        client.send(&transaction(SENDER, &[RCPT], &body));
        client.expect("250 2.1.0");
        client.expect("250 2.1.5");
        client.expect("354 ");
        (client.read_reply(), body)
    };
    let (reply, body) = send(0);
    let first = queue_id(&reply).unwrap_or_else(|| panic!("{reply}"));
    // The server stops answering but keeps its sockets open: the connection looks alive, so
    // only the deadline ends the wait (the client's read timeout, 10 s, would catch a hang).
    node.stall();
    for n in 1..4 {
        let (reply, _) = send(n);
        assert!(reply.starts_with("451 4.3.0"), "{reply}");
    }
    node.signal(libc::SIGCONT);
    let mut acked = HashMap::from([(first, body)]);
    let mut refused_after = 0;
    assert!(
        poll(Duration::from_secs(30), || {
            let (reply, body) = send(100);
            refused_after += usize::from(queue_id(&reply).is_none());
            match queue_id(&reply) {
                Some(id) => {
                    acked.insert(id, body);
                    true
                }
                None => false,
            }
        }),
        "acceptance did not resume"
    );
    let stored = stream_messages(&node.url(), STREAM);
    // The stalled publishes reach the stream once it runs again: stored without a 250.
    let unacknowledged = check_acknowledged(&stored, &acked);
    assert!(unacknowledged <= 3 + refused_after, "{unacknowledged}");
}
