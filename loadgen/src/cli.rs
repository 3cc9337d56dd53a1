//! Command-line options and their checked conversion into run settings.
//! Every value a user gives is parsed and bounded here, once, so the run path never has to
//! second-guess its inputs: sizes with k/m suffixes or ranges, durations like `30s`, rates.
use crate::proxy::ProxyVersion;
use clap::Parser;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// Largest message we will generate: beyond this the tool measures memcpy, not SMTP.
pub const SIZE_MAX_BYTES: usize = 64 << 20;
/// Most recipients per message: RFC 5321 asks servers to take at least 100.
pub const RECIPIENTS_MAX: usize = 1000;
/// Most connections: each costs a socket and two buffers; past this use several hosts.
pub const CONNECTIONS_MAX: usize = 100_000;
/// Most BDAT transactions in flight per connection (`--depth`): one write carries them all.
pub const DEPTH_MAX: usize = 16;

/// Command line of ringmx-loadgen (clap derive; doc comments are the `--help` text).
#[derive(Parser, Debug)]
#[command(
    name = "ringmx-loadgen",
    version,
    about = "SMTP load generator: throughput and latency percentiles of any SMTP server",
    long_about = "SMTP load generator: drives persistent SMTP sessions against any server and \
reports messages/s, MB/s, sessions/s and HdrHistogram latency percentiles (connect+greeting, \
per message, per session). With --rate it runs an open loop at fixed intended send times and \
measures latency from those times, so server stalls are not hidden (coordinated omission). \
Run load tests only against hosts you own or are allowed to load.",
    after_help = "EXAMPLES:\n  \
ringmx-loadgen --target 127.0.0.1:2525 --connections 50 --duration 30s --size 1k..100k\n  \
ringmx-loadgen --target mx1:25 --target mx2:25 --rate 2000 --duration 1m --warmup 5s --json out.json\n  \
ringmx-loadgen --target 127.0.0.1:2525 --messages 100000 --bdat --recipients 3"
)]
pub struct Args {
    /// SMTP server to load; repeat to spread connections round-robin over several servers.
    #[arg(long = "target", value_name = "HOST:PORT", required = true)]
    pub targets: Vec<String>,

    /// Concurrent SMTP sessions in total.
    #[arg(short = 'c', long, default_value_t = 10)]
    pub connections: usize,

    /// Worker threads, each with its own event loop and share of the connections [default: CPUs available].
    #[arg(short = 't', long)]
    pub threads: Option<usize>,

    /// Messages per session, then QUIT and reconnect; 0 keeps each session for the whole run.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub messages_per_session: u64,

    /// Message size in bytes, with optional k/m suffix (KiB/MiB), or a range MIN..MAX from which
    /// 16 sizes are drawn uniformly once and reused.
    #[arg(short = 's', long, default_value = "4k", value_name = "SIZE|MIN..MAX")]
    pub size: String,

    /// Recipients (RCPT TO) per message.
    #[arg(short = 'r', long, default_value_t = 1, value_name = "N")]
    pub recipients: usize,

    /// Require PIPELINING (RFC 2920): fail if a target does not advertise it. Without this flag
    /// or --no-pipelining, pipelining is used whenever the target advertises it.
    #[arg(long, conflicts_with = "no_pipelining")]
    pub pipelining: bool,

    /// Never pipeline: send each command and wait for its reply (lockstep).
    #[arg(long)]
    pub no_pipelining: bool,

    /// Send messages with BDAT (RFC 3030 CHUNKING) instead of DATA; fails if not advertised.
    #[arg(long)]
    pub bdat: bool,

    /// With --bdat and PIPELINING: up to N whole transactions (MAIL, RCPT, BDAT LAST and the
    /// chunk) in flight per connection, written together in one write, replies read in order.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub depth: usize,

    /// Stop after N measured messages (accepted, refused or failed) in total.
    #[arg(short = 'n', long, value_name = "N")]
    pub messages: Option<u64>,

    /// Stop after this long, not counting warm-up: 500ms, 30s, 2m, 1h [default: 10s unless --messages].
    #[arg(short = 'd', long, value_name = "TIME")]
    pub duration: Option<String>,

    /// Warm-up time before measuring; its messages count in no statistic.
    #[arg(long, default_value = "0s", value_name = "TIME")]
    pub warmup: String,

    /// Open loop: N messages per second in total, at fixed intended times spread evenly over the
    /// connections; latency counts from the intended time. Without it: closed loop.
    #[arg(long, value_name = "N[/s]")]
    pub rate: Option<String>,

    /// Envelope sender; a lowercase n in curly braces becomes a counter 0..1023 (1024 precomputed
    /// senders, as in the default); without it every message has the same sender.
    #[arg(
        long,
        default_value = "loadgen{n}@loadgen.example",
        value_name = "TEMPLATE"
    )]
    pub from: String,

    /// Envelope recipient; a lowercase n in curly braces becomes a counter 0..1023, so the
    /// recipients of one message differ (up to 1024).
    #[arg(long, default_value = "user{n}@example.com", value_name = "TEMPLATE")]
    pub to: String,

    /// Name sent in EHLO.
    #[arg(long, default_value = "loadgen.example", value_name = "NAME")]
    pub ehlo: String,

    /// Write the full result (settings, host, counters, percentiles, histograms) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// No progress line on stderr.
    #[arg(short = 'q', long)]
    pub quiet: bool,

    /// Send a PROXY protocol header first on every connection (v1 text, v2 binary), as a TCP
    /// balancer in front of the server would, with the connection's real local and peer addresses.
    #[arg(long, value_name = "v1|v2")]
    pub proxy: Option<String>,

    /// Bind each connection to one of these local addresses, round robin, so the server sees as
    /// many clients (e.g. 127.0.0.2,127.0.0.3: all of 127/8 is loopback on Linux).
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',')]
    pub source: Vec<String>,

    /// Longest wait for any one reply or write before the session counts a timeout.
    #[arg(long, default_value = "30s", value_name = "TIME")]
    pub timeout: String,
}

/// How `--pipelining`/`--no-pipelining` were given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipeMode {
    /// Pipeline when the target advertises PIPELINING.
    Auto,
    /// Pipeline; a target without PIPELINING is an error.
    Require,
    /// Never pipeline.
    Off,
}

impl PipeMode {
    /// Name used in the summary and JSON.
    pub fn name(self) -> &'static str {
        match self {
            PipeMode::Auto => "auto",
            PipeMode::Require => "on",
            PipeMode::Off => "off",
        }
    }
}

/// Validated settings of one run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub targets: Vec<String>,
    pub target_addrs: Vec<SocketAddr>,
    pub connections: usize,
    pub threads: usize,
    pub messages_per_session: u64,
    pub size_text: String,
    pub size_min_bytes: usize,
    pub size_max_bytes: usize,
    pub recipients: usize,
    pub pipelining: PipeMode,
    pub bdat: bool,
    pub messages: Option<u64>,
    pub duration: Option<Duration>,
    pub warmup: Duration,
    pub rate_per_s: Option<f64>,
    pub from: String,
    pub to: String,
    pub ehlo: String,
    pub json: Option<PathBuf>,
    pub quiet: bool,
    pub timeout: Duration,
    pub proxy: Option<ProxyVersion>,
    /// Local addresses to bind connections to, round robin (empty: the kernel picks).
    pub sources: Vec<IpAddr>,
    /// BDAT transactions in flight per connection (1: one at a time).
    pub depth: usize,
}

impl Settings {
    /// Checks every option and resolves the targets; the error names the option and value.
    pub fn from_args(a: Args) -> Result<Settings, String> {
        if a.connections == 0 || a.connections > CONNECTIONS_MAX {
            return Err(format!(
                "--connections {}: must be 1..={CONNECTIONS_MAX}",
                a.connections
            ));
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = a.threads.unwrap_or(cpus);
        if threads == 0 {
            return Err("--threads 0: need at least one thread".into());
        }
        let threads = threads.min(a.connections);
        let (size_min_bytes, size_max_bytes) = parse_size_range(&a.size)?;
        if a.recipients == 0 || a.recipients > RECIPIENTS_MAX {
            return Err(format!(
                "--recipients {}: must be 1..={RECIPIENTS_MAX}",
                a.recipients
            ));
        }
        let mut duration = a
            .duration
            .as_deref()
            .map(|d| parse_duration(d).map_err(|e| format!("--duration {d}: {e}")))
            .transpose()?;
        if duration.is_none() && a.messages.is_none() {
            duration = Some(Duration::from_secs(10));
        }
        if duration == Some(Duration::ZERO) {
            return Err("--duration 0: must be positive".into());
        }
        if a.messages == Some(0) {
            return Err("--messages 0: must be positive".into());
        }
        let warmup =
            parse_duration(&a.warmup).map_err(|e| format!("--warmup {}: {e}", a.warmup))?;
        let timeout =
            parse_duration(&a.timeout).map_err(|e| format!("--timeout {}: {e}", a.timeout))?;
        if timeout < Duration::from_millis(1) {
            return Err(format!("--timeout {}: must be at least 1ms", a.timeout));
        }
        let rate_per_s = a
            .rate
            .as_deref()
            .map(|r| parse_rate(r).map_err(|e| format!("--rate {r}: {e}")))
            .transpose()?;
        for (name, t) in [("--from", &a.from), ("--to", &a.to)] {
            check_address_template(t).map_err(|e| format!("{name} {t}: {e}"))?;
        }
        if a.ehlo.is_empty() || a.ehlo.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            return Err(format!(
                "--ehlo {:?}: must be a non-empty name without spaces",
                a.ehlo
            ));
        }
        let mut target_addrs = Vec::with_capacity(a.targets.len());
        for t in &a.targets {
            let addr = t
                .to_socket_addrs()
                .map_err(|e| format!("--target {t}: {e} (expected HOST:PORT)"))?
                .next()
                .ok_or_else(|| format!("--target {t}: resolves to no address"))?;
            target_addrs.push(addr);
        }
        if a.depth == 0 || a.depth > DEPTH_MAX {
            return Err(format!("--depth {}: must be 1..={DEPTH_MAX}", a.depth));
        }
        if a.depth > 1 && (!a.bdat || a.no_pipelining) {
            return Err(format!(
                "--depth {}: needs --bdat and pipelining (a DATA transaction waits for its 354)",
                a.depth
            ));
        }
        let proxy = a
            .proxy
            .as_deref()
            .map(|p| ProxyVersion::parse(p).map_err(|e| format!("--proxy {p}: {e}")))
            .transpose()?;
        let mut sources = Vec::with_capacity(a.source.len());
        for src in &a.source {
            let ip: IpAddr = src
                .trim()
                .parse()
                .map_err(|_| format!("--source {src}: not an IP address"))?;
            sources.push(ip);
        }
        if !sources.is_empty() {
            for (t, addr) in a.targets.iter().zip(&target_addrs) {
                if !sources.iter().any(|s| s.is_ipv4() == addr.is_ipv4()) {
                    return Err(format!(
                        "--source: no address of the same family as --target {t} ({addr})"
                    ));
                }
            }
        }
        let pipelining = if a.no_pipelining {
            PipeMode::Off
        } else if a.pipelining {
            PipeMode::Require
        } else {
            PipeMode::Auto
        };
        Ok(Settings {
            targets: a.targets,
            target_addrs,
            connections: a.connections,
            threads,
            messages_per_session: a.messages_per_session,
            size_text: a.size,
            size_min_bytes,
            size_max_bytes,
            recipients: a.recipients,
            pipelining,
            bdat: a.bdat,
            messages: a.messages,
            duration,
            warmup,
            rate_per_s,
            from: a.from,
            to: a.to,
            ehlo: a.ehlo,
            json: a.json,
            quiet: a.quiet,
            timeout,
            proxy,
            sources,
            depth: a.depth,
        })
    }
}

/// Parses `1024`, `4k`, `1m` (k = 1024) into bytes.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, mult) = match t.as_bytes().last() {
        Some(b'k' | b'K') => (&t[..t.len() - 1], 1024),
        Some(b'm' | b'M') => (&t[..t.len() - 1], 1024 * 1024),
        _ => (t, 1),
    };
    let n: usize = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (bytes, 4k, 1m)"))?;
    n.checked_mul(mult)
        .filter(|&b| b <= SIZE_MAX_BYTES)
        .ok_or_else(|| format!("{s:?} is over the limit of {SIZE_MAX_BYTES} bytes"))
}

/// Parses `SIZE` or `MIN..MAX` into an inclusive byte range.
pub fn parse_size_range(s: &str) -> Result<(usize, usize), String> {
    let r = match s.split_once("..") {
        Some((lo, hi)) => (parse_size(lo)?, parse_size(hi)?),
        None => {
            let b = parse_size(s)?;
            (b, b)
        }
    };
    if r.0 > r.1 {
        return Err(format!("--size {s}: MIN is above MAX"));
    }
    if r.0 == 0 {
        return Err(format!("--size {s}: must be at least 1 byte"));
    }
    Ok(r)
}

/// Parses `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit_s) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| "expected a time such as 500ms, 30s, 2m or 1h".to_string())?;
    if !v.is_finite() || v < 0.0 || v * unit_s > 366.0 * 86400.0 {
        return Err("out of range (0 to one year)".into());
    }
    Ok(Duration::from_secs_f64(v * unit_s))
}

/// Parses `N` or `N/s` messages per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let v: f64 = t
        .parse()
        .map_err(|_| "expected messages per second, e.g. 500 or 500/s".to_string())?;
    if !v.is_finite() || v <= 0.0 || v > 1e8 {
        return Err("must be above 0 and at most 100000000".into());
    }
    Ok(v)
}

/// Rejects address templates that would break the command line they are sent in.
fn check_address_template(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Ok(()); // null reverse-path `<>` is allowed for MAIL FROM
    }
    if t.bytes()
        .any(|b| b <= b' ' || b == b'<' || b == b'>' || b == 0x7f)
    {
        return Err("no spaces, control characters or angle brackets allowed".into());
    }
    if t.len() > 200 {
        return Err("longer than 200 characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert!(parse_size("x").is_err());
        assert!(parse_size("100m").is_err());
        assert_eq!(parse_size_range("1k..100k"), Ok((1024, 102_400)));
        assert!(parse_size_range("2k..1k").is_err());
        assert!(parse_size_range("0").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("500"), Ok(500.0));
        assert_eq!(parse_rate("2.5/s"), Ok(2.5));
        assert!(parse_rate("0").is_err());
    }
}
