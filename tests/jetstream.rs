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
    let sender = if n % 5 == 0 {
        String::new()
    } else {
        format!("sender{n}@example.org")
    };
    let recipients: Vec<String> = (0..1 + n % 3)
        .map(|r| format!("rcpt{r}+{n}@example.net"))
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
        let back = sink.append(&mut m, buf.clone(), parts, *base).await;
        assert_eq!(&back, buf, "append gives the buffer back untouched");
    }
    sink.commit(m).await
}

fn check_stored(stored: &StoredMessage, s: &Sample) {
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
        check_stored(found[0], s);
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
        eprintln!("uring runtime: skipped: io_uring is not available here");
        return;
    }
    let stored = stream_messages(&node.url(), STREAM);
    assert_eq!(stored.len(), samples.len());
    for (m, s) in stored.iter().zip(&samples) {
        check_stored(m, s);
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
        let body = sink.append(&mut m, body, &[Part::Input(0..fill)], 0).await;
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
