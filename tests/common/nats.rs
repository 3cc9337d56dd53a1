//! Real `nats-server` processes with JetStream for the tests: one node or a three-node cluster
//! on loopback, each on free ports with a temporary store directory, killed and restarted on the
//! same store and ports. Streams are created and read back through the JetStream API with
//! async-nats on a small tokio runtime of the test's own. Every wait is bounded.
//!
//! `scripts/test` installs nats-server when it is missing. Without it a test is skipped with a
//! line saying so, except under `CI=true`, where it fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{find_program, poll, skip_or_fail};

/// How long a node may take to answer its health check (JetStream ready, in a cluster a meta
/// leader elected).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on every JetStream API call the tests make.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// The nats-server binary, or None (after saying why) when the test must be skipped; under
/// `CI=true` a missing server fails the test instead.
pub fn nats_server(test: &str) -> Option<PathBuf> {
    let path = find_program("nats-server");
    if path.is_none() {
        skip_or_fail(
            test,
            "nats-server is not installed (scripts/test installs it)",
        );
    }
    path
}

pub use super::free_port;

/// How many times a node (or a cluster) is set up afresh on new ports when one exits before it
/// is ready (a port taken by another process between its choice and the node's bind).
const START_ATTEMPTS: usize = 3;

/// One nats-server process and what it needs to be started again the same way.
pub struct NatsNode {
    binary: PathBuf,
    pub name: String,
    pub port: u16,
    pub http_port: u16,
    pub cluster_port: Option<u16>,
    config: PathBuf,
    store: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    _dir: Arc<tempfile::TempDir>,
}

/// Options of a single node.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// `max_payload` in bytes (the server's default, 1 MiB, when None).
    pub max_payload: Option<usize>,
}

impl NatsNode {
    /// Starts one JetStream node on free ports with a fresh store; waits until it is ready.
    pub fn start(binary: &Path, options: &NodeOptions) -> NatsNode {
        let dir = Arc::new(
            tempfile::Builder::new()
                .prefix("ringmx-nats-")
                .tempdir()
                .expect("temporary directory"),
        );
        for attempt in 1..=START_ATTEMPTS {
            let mut node = NatsNode::configure(binary, "n1", Arc::clone(&dir), options, None);
            node.spawn();
            if node.ready_or_exited() {
                return node;
            }
            let _ = std::fs::remove_dir_all(&node.store);
            assert!(
                attempt < START_ATTEMPTS,
                "nats-server exited before it was ready, {START_ATTEMPTS} times; last log:\n{}",
                node.log_text()
            );
        }
        unreachable!("the last attempt returns or fails")
    }

    /// Writes the node's configuration file; `cluster` = (its cluster port, every node's).
    fn configure(
        binary: &Path,
        name: &str,
        dir: Arc<tempfile::TempDir>,
        options: &NodeOptions,
        cluster: Option<(u16, &[u16])>,
    ) -> NatsNode {
        let port = free_port();
        let http_port = free_port();
        let store = dir.path().join(format!("{name}-store"));
        let mut conf = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http_port}\n\
             jetstream {{\n  store_dir: {store:?}\n}}\n"
        );
        if let Some(max) = options.max_payload {
            conf.push_str(&format!("max_payload: {max}\n"));
        }
        if let Some((own, all)) = cluster {
            let routes: Vec<String> = all
                .iter()
                .filter(|p| **p != own)
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            conf.push_str(&format!(
                "cluster {{\n  name: ringmx-test\n  listen: 127.0.0.1:{own}\n  routes: [{}]\n}}\n",
                routes.join(", ")
            ));
        }
        let config = dir.path().join(format!("{name}.conf"));
        std::fs::write(&config, conf).expect("write nats-server configuration");
        NatsNode {
            binary: binary.to_path_buf(),
            name: name.to_string(),
            port,
            http_port,
            cluster_port: cluster.map(|(own, _)| own),
            config,
            store,
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
            _dir: dir,
        }
    }

    /// Starts the process (not waiting for readiness).
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let mut child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.binary.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
    }

    /// Waits until `/healthz` answers 200 (true) or the process has exited (false; a port of
    /// its was taken); a node neither ready nor gone within `READY_TIMEOUT` fails the test.
    fn ready_or_exited(&mut self) -> bool {
        let mut exited = false;
        let ready = poll(READY_TIMEOUT, || {
            exited = !self.running();
            exited || self.healthy()
        });
        if exited {
            self.child = None;
            return false;
        }
        assert!(
            ready,
            "nats-server {} not ready within {READY_TIMEOUT:?}; log:\n{}",
            self.name,
            self.log_text()
        );
        true
    }

    /// Waits until `/healthz` answers 200 (JetStream up and, in a cluster, current).
    pub fn wait_ready(&self) {
        let ready = poll(READY_TIMEOUT, || self.healthy());
        assert!(
            ready,
            "nats-server {} not ready within {READY_TIMEOUT:?}; log:\n{}",
            self.name,
            self.log_text()
        );
    }

    /// Whether the health endpoint answers 200 now.
    pub fn healthy(&self) -> bool {
        self.http_get("/healthz").is_some_and(|answer| {
            answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
        })
    }

    /// The whole answer of the monitoring endpoint to `GET path`, or None if it cannot be
    /// reached.
    pub fn http_get(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.http_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        Some(answer)
    }

    /// The names of the clients connected to this node now.
    pub fn client_names(&self) -> Vec<String> {
        let answer = self.http_get("/connz?limit=1024").unwrap_or_default();
        answer
            .split("\"name\":")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
            .map(str::to_string)
            .collect()
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The store directory (kept across restarts).
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// SIGKILL and reap; the store stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again on the same store and ports and waits until it is ready.
    pub fn restart(&mut self) {
        self.kill();
        // The ports were ours a moment ago; a restart that finds one taken by another test is
        // retried briefly rather than failed at once.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.spawn();
            if poll(Duration::from_secs(3), || self.healthy()) {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if !exited || Instant::now() > deadline {
                break;
            }
            self.child = None;
        }
        self.wait_ready();
    }

    /// Sends `signal` to the process (SIGSTOP/SIGCONT make a peer that stalls).
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("node running").id() as i32;
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill {signal}: {}", std::io::Error::last_os_error());
    }

    /// Stops the process (SIGSTOP) and waits until every one of its threads has stopped: the
    /// signal takes effect only once a thread of it runs, which on a busy machine can be
    /// milliseconds after kill(2) returned, while its other threads still answer.
    pub fn stall(&self) {
        self.signal(libc::SIGSTOP);
        let pid = self.child.as_ref().expect("node running").id();
        let stopped = poll(Duration::from_secs(10), || {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return false;
            };
            tasks.flatten().all(|task| {
                // The state is the first field after the parenthesised command name.
                std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                    stat.rsplit_once(')')
                        .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
                })
            })
        });
        assert!(stopped, "nats-server {} did not stop on SIGSTOP", self.name);
    }

    /// Whether the process is running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Everything the node logged.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A three-node JetStream cluster on loopback.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
}

impl NatsCluster {
    /// Starts `n` nodes routed to each other and waits until every one is ready.
    pub fn start(binary: &Path, n: usize) -> NatsCluster {
        let dir = Arc::new(
            tempfile::Builder::new()
                .prefix("ringmx-nats-cluster-")
                .tempdir()
                .expect("temporary directory"),
        );
        for attempt in 1..=START_ATTEMPTS {
            let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
            let mut nodes: Vec<NatsNode> = (0..n)
                .map(|i| {
                    NatsNode::configure(
                        binary,
                        &format!("n{}", i + 1),
                        Arc::clone(&dir),
                        &NodeOptions::default(),
                        Some((cluster_ports[i], &cluster_ports)),
                    )
                })
                .collect();
            for node in &mut nodes {
                node.spawn();
            }
            // A node that exited (a port taken) leaves the others without a quorum: look for
            // one at every turn rather than wait for health checks that cannot pass.
            let mut exited = false;
            let ready = poll(READY_TIMEOUT, || {
                exited = nodes.iter_mut().any(|node| !node.running());
                exited || nodes.iter().all(NatsNode::healthy)
            });
            let log: Vec<String> = nodes.iter().map(NatsNode::log_text).collect();
            if !exited {
                assert!(
                    ready,
                    "the cluster was not ready within {READY_TIMEOUT:?}; logs:\n{}",
                    log.join("\n----\n")
                );
                return NatsCluster { nodes };
            }
            // The nodes still running are killed as they drop; their stores are started over.
            drop(nodes);
            for i in 0..n {
                let _ = std::fs::remove_dir_all(dir.path().join(format!("n{}-store", i + 1)));
            }
            assert!(
                attempt < START_ATTEMPTS,
                "a node of the cluster exited before it was ready, {START_ATTEMPTS} times; \
                 logs:\n{}",
                log.join("\n----\n")
            );
        }
        unreachable!("the last attempt returns or fails")
    }

    /// Every node's client URL, comma-separated (what `RINGMX_NATS_URL` takes).
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(NatsNode::url).collect();
        urls.join(",")
    }
}

/// A stored message as a consumer reads it.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    pub sequence: u64,
    pub subject: String,
    /// Every header value in order, by name.
    pub headers: Vec<(String, Vec<String>)>,
    pub payload: Vec<u8>,
}

impl StoredMessage {
    /// The values of header `name`, in order (none if absent).
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

/// A stream to create.
#[derive(Clone, Debug)]
pub struct StreamSpec {
    pub name: String,
    pub subjects: Vec<String>,
    pub replicas: usize,
    /// The stream's largest message in bytes (-1: the server's max_payload).
    pub max_message_size: i32,
}

impl StreamSpec {
    /// A file-backed R1 stream `name` capturing `subject`.
    pub fn new(name: &str, subject: &str) -> StreamSpec {
        StreamSpec {
            name: name.to_string(),
            subjects: vec![subject.to_string()],
            replicas: 1,
            max_message_size: -1,
        }
    }
}

/// Runs `future` on a fresh current-thread tokio runtime, bounded by `API_TIMEOUT`.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(async {
            tokio::time::timeout(API_TIMEOUT * 6, future)
                .await
                .expect("JetStream API calls did not finish in time")
        })
}

/// Connects a test client to `url` (comma-separated URLs for a cluster).
async fn connect(url: &str) -> async_nats::jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(API_TIMEOUT)
        .connect(url.split(',').collect::<Vec<_>>())
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(API_TIMEOUT);
    js
}

/// Creates the stream (file storage), retrying while a cluster is still electing leaders.
pub fn create_stream(url: &str, spec: &StreamSpec) {
    block_on(async {
        let js = connect(url).await;
        let config = async_nats::jetstream::stream::Config {
            name: spec.name.clone(),
            subjects: spec.subjects.clone(),
            num_replicas: spec.replicas,
            max_message_size: spec.max_message_size,
            storage: async_nats::jetstream::stream::StorageType::File,
            // Direct gets come back as plain messages whose repeated headers keep every value
            // (async-nats' raw-message get keeps only the last one of a repeated header).
            allow_direct: true,
            ..Default::default()
        };
        let mut last = String::new();
        for _ in 0..50 {
            match js.create_stream(config.clone()).await {
                Ok(_) => return,
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("create stream {}: {last}", spec.name);
    })
}

/// Every message in stream `name`, in sequence order, read through the JetStream API (retried
/// while a cluster recovers from a lost node).
pub fn stream_messages(url: &str, name: &str) -> Vec<StoredMessage> {
    block_on(async {
        let js = connect(url).await;
        let mut last = String::new();
        for _ in 0..50 {
            match read_all(&js, name).await {
                Ok(messages) => return messages,
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("read stream {name}: {last}");
    })
}

async fn read_all(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> Result<Vec<StoredMessage>, String> {
    let mut stream = js.get_stream(name).await.map_err(|e| e.to_string())?;
    let state = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .clone();
    let mut messages = Vec::with_capacity(state.messages as usize);
    if state.messages == 0 {
        return Ok(messages);
    }
    for sequence in state.first_sequence..=state.last_sequence {
        let message = match stream.direct_get(sequence).await {
            Ok(message) => message,
            Err(e) if e.to_string().contains("not found") => continue,
            Err(e) => return Err(format!("message {sequence}: {e}")),
        };
        // The headers the server adds to a direct get are not the publisher's.
        let mut headers: Vec<(String, Vec<String>)> = message
            .headers
            .iter()
            .filter(|(name, _)| {
                !name.to_string().starts_with("Nats-") || name.to_string() == "Nats-Msg-Id"
            })
            .map(|(name, values)| {
                (
                    name.to_string(),
                    values.iter().map(|v| v.as_str().to_string()).collect(),
                )
            })
            .collect();
        headers.sort();
        messages.push(StoredMessage {
            sequence: message.sequence,
            subject: message.subject.to_string(),
            headers,
            payload: message.payload.to_vec(),
        });
    }
    if messages.len() as u64 != state.messages {
        return Err(format!(
            "stream says {} messages, read {}",
            state.messages,
            messages.len()
        ));
    }
    Ok(messages)
}
