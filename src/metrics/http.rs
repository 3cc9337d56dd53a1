//! The metrics endpoint: `GET /metrics` over HTTP/1.x on `RINGMX_METRICS_LISTEN`, served by a
//! thread of its own (a tokio current-thread runtime), never by a shard and never on the SMTP
//! port, so a scrape costs the shards nothing but the reads of their counters.
//!
//! It is deliberately tiny: one request per connection (`Connection: close`), the request head
//! parsed by `httparse` and bounded in size and time, `GET /metrics` answered with the text
//! exposition, any other path 404, any other method 405. A client that sends too much, too
//! slowly, or opens too many connections is dropped: the endpoint is for a Prometheus server,
//! and nothing a client does can make it hold more than `CONNECTIONS_MAX` small buffers.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::Metrics;

/// Largest request head read (request line and headers); Prometheus sends a few hundred bytes.
const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Time a client has to send its request head (a scraper sends it at once), so that idle
/// connections cannot hold the endpoint's slots for long.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a client has for the whole exchange, reading the answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; past it new ones are closed at once.
const CONNECTIONS_MAX: usize = 64;
/// Headers parsed per request; more is a malformed request.
const HEADERS_MAX: usize = 64;

/// What a request head amounts to so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The head is not complete yet: read more.
    Incomplete,
    /// The whole response to write, then close.
    Respond(Vec<u8>),
}

/// Answers the request whose head starts `head`; `render` is called only for `GET /metrics`.
/// Pure apart from `render`, for tests.
pub fn answer(head: &[u8], render: impl FnOnce() -> String) -> Answer {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Partial) if head.len() < REQUEST_BYTES_MAX => Answer::Incomplete,
        Ok(httparse::Status::Partial) => Answer::Respond(response(
            "431 Request Header Fields Too Large",
            None,
            "request head too large\n",
        )),
        Err(_) => Answer::Respond(response("400 Bad Request", None, "bad request\n")),
        Ok(httparse::Status::Complete(_)) => {
            let path = request.path.unwrap_or("");
            let path = path.split_once('?').map_or(path, |(path, _query)| path);
            if request.method != Some("GET") {
                Answer::Respond(response(
                    "405 Method Not Allowed",
                    Some("Allow: GET\r\n"),
                    "only GET is served\n",
                ))
            } else if path != "/metrics" {
                Answer::Respond(response(
                    "404 Not Found",
                    None,
                    "not found; metrics are at /metrics\n",
                ))
            } else {
                let body = render();
                let mut out = response_head(
                    "200 OK",
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    None,
                    body.len(),
                );
                out.extend_from_slice(body.as_bytes());
                Answer::Respond(out)
            }
        }
    }
}

/// A plain-text response with `body`.
fn response(status: &str, extra_headers: Option<&str>, body: &str) -> Vec<u8> {
    let mut out = response_head(
        status,
        "text/plain; charset=utf-8",
        extra_headers,
        body.len(),
    );
    out.extend_from_slice(body.as_bytes());
    out
}

/// The status line and headers of a response whose body is `length` bytes.
fn response_head(status: &str, content_type: &str, extra: Option<&str>, length: usize) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n{}Connection: close\r\n\r\n",
        extra.unwrap_or("")
    )
    .into_bytes()
}

/// The running endpoint; dropping it stops it.
pub struct Endpoint {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Endpoint {
    /// Binds the endpoint's listener (at start-up, so a bad address stops start-up).
    pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// Serves `metrics` on `listener` from a new thread.
    pub fn start(listener: std::net::TcpListener, metrics: Arc<Metrics>) -> io::Result<Endpoint> {
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ringmx-metrics".to_string())
            .spawn(move || {
                runtime.block_on(async move {
                    let local = tokio::task::LocalSet::new();
                    local
                        .run_until(async move {
                            tokio::select! {
                                _ = serve(listener, metrics) => {}
                                _ = stop_rx => {}
                            }
                        })
                        .await;
                });
            })?;
        Ok(Endpoint {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections for ever, each served by a task of its own.
async fn serve(listener: std::net::TcpListener, metrics: Arc<Metrics>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            crate::log_error!("metrics endpoint cannot listen: {e}");
            return;
        }
    };
    let open = Rc::new(Cell::new(0usize));
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                crate::log_warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.get() >= CONNECTIONS_MAX {
            drop(stream);
            continue;
        }
        open.set(open.get() + 1);
        let open = Rc::clone(&open);
        let metrics = Arc::clone(&metrics);
        tokio::task::spawn_local(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, serve_one(stream, &metrics)).await;
            open.set(open.get() - 1);
        });
    }
}

/// Reads one request head and writes its answer.
async fn serve_one(mut stream: tokio::net::TcpStream, metrics: &Arc<Metrics>) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read_head = async {
        loop {
            let room = (REQUEST_BYTES_MAX - head.len()).min(chunk.len());
            let n = stream.read(&mut chunk[..room]).await?;
            if n == 0 {
                return Ok(None);
            }
            head.extend_from_slice(&chunk[..n]);
            if let Answer::Respond(out) = answer(&head, || metrics.render()) {
                return Ok::<_, io::Error>(Some(out));
            }
        }
    };
    let out = match tokio::time::timeout(HEAD_TIMEOUT, read_head).await {
        Ok(Ok(Some(out))) => out,
        Ok(Ok(None)) | Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
    };
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn respond(head: &[u8]) -> String {
        match answer(head, || "ringmx_x 1\n".to_string()) {
            Answer::Respond(out) => String::from_utf8(out).unwrap(),
            Answer::Incomplete => panic!("incomplete: {head:?}"),
        }
    }

    #[test]
    fn get_metrics_and_the_rest() {
        let ok = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(ok.contains("Content-Length: 11\r\n"));
        assert!(ok.ends_with("\r\n\r\nringmx_x 1\n"));
        assert!(respond(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200"));
        assert!(respond(b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(respond(b"GET /metrics/ HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(respond(b"GET /METRICS HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        for method in ["POST", "HEAD", "PUT", "DELETE", "OPTIONS", "get"] {
            let head = format!("{method} /metrics HTTP/1.1\r\n\r\n");
            let out = respond(head.as_bytes());
            assert!(out.starts_with("HTTP/1.1 405"), "{method}: {out}");
            assert!(out.contains("Allow: GET\r\n"));
        }
        assert!(respond(b"EHLO x\r\n\r\n").starts_with("HTTP/1.1 400"));
        assert!(respond(b"\x00\x01\x02\r\n\r\n").starts_with("HTTP/1.1 400"));
    }

    #[test]
    fn a_head_arrives_in_pieces_and_is_bounded() {
        let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..head.len() {
            assert_eq!(answer(&head[..cut], || unreachable!()), Answer::Incomplete);
        }
        let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        long.resize(REQUEST_BYTES_MAX, b'a');
        assert!(respond(&long).starts_with("HTTP/1.1 431"));
    }
}
