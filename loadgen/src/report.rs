//! Results for people and for programs: the summary table on stdout and the `--json` file
//! (schema_version 1, documented in loadgen/README.md). The JSON carries the histograms as
//! base64 HdrHistogram V2 so runs can be merged and re-plotted later, and the host facts
//! (kernel, CPU, cores, memory) so runs on different kernels and hosts can be compared.
use crate::cli::Settings;
use crate::plan::Outcome;
use crate::stats::ThreadStats;
use base64::Engine;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Version of the JSON layout; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// Percentiles of one histogram, in microseconds.
#[derive(Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
}

/// Percentiles of `h` (all zero when empty).
fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles {
            count: 0,
            min: 0,
            mean: 0.0,
            p50: 0,
            p90: 0,
            p99: 0,
            p99_9: 0,
            max: 0,
        };
    }
    Percentiles {
        count: h.len(),
        min: h.min(),
        mean: (h.mean() * 10.0).round() / 10.0,
        p50: h.value_at_quantile(0.50),
        p90: h.value_at_quantile(0.90),
        p99: h.value_at_quantile(0.99),
        p99_9: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

/// Base64 of the compressed HdrHistogram V2 encoding of `h` (as in HdrHistogram log files).
fn encode(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    match V2DeflateSerializer::new().serialize(h, &mut buf) {
        Ok(_) => base64::engine::general_purpose::STANDARD.encode(&buf),
        Err(_) => String::new(),
    }
}

/// Messages, bytes and sessions per second of measured time.
fn rates(o: &Outcome) -> (f64, f64, f64) {
    let secs = o.elapsed.as_secs_f64().max(1e-9);
    (
        o.stats.accepted as f64 / secs,
        o.stats.bytes_sent as f64 / 1e6 / secs,
        o.stats.sessions_opened as f64 / secs,
    )
}

/// How well the open-loop schedule was kept: the pacer's own lateness and what fell behind.
#[derive(Serialize)]
pub struct PacerReport {
    /// Messages the pacer waited for (their connection was free before they were due).
    pub paced: u64,
    /// Messages already due when their connection became free: held up by earlier replies.
    pub behind: u64,
    /// Lateness of the paced messages, intended time to the moment they were sent, in µs.
    pub lateness_us: Percentiles,
    pub target_p99_us: u64,
    /// The pacer's p99 lateness is within the target (true when nothing was paced).
    pub kept: bool,
    /// What the figures mean, in one or two sentences (also printed in the summary).
    pub verdict: String,
}

/// The pacer report of an open-loop run; None in closed loop.
pub fn pacer_report(s: &Settings, o: &Outcome) -> Option<PacerReport> {
    let rate = s.rate_per_s?;
    let st = &o.stats;
    let lat = percentiles(&st.lateness);
    let target = crate::pacer::LATENESS_TARGET_US;
    let kept = lat.count == 0 || lat.p99 <= target;
    let started = st.accepted + st.refused + st.failed;
    let total = (lat.count + st.behind).max(1);
    let behind_pct = 100.0 * st.behind as f64 / total as f64;
    let sent_rate = started as f64 / o.elapsed.as_secs_f64().max(1e-9);
    let mut verdict = if lat.count == 0 {
        "no message waited for its time (each was due when its connection became free)".to_string()
    } else if kept {
        format!(
            "schedule kept: the pacer sent {} messages within {} µs of their intended time at p99 ({} µs)",
            lat.count, target, lat.p99
        )
    } else {
        format!(
            "WARNING: the client could not keep the rate: the pacer's p99 lateness is {} µs (target {} µs; max {} µs), so message latencies include up to that much of the client's own delay (CPU starved or above its maximum rate: add --threads or lower --rate)",
            lat.p99, target, lat.max
        )
    };
    if behind_pct >= 1.0 {
        verdict.push_str(&format!(
            "; {} messages ({behind_pct:.1}%) were already due when their connection became free: replies came slower than {rate} msg/s over {} connections allows (their latency counts from the intended time, as it should); sent {sent_rate:.1} msg/s",
            st.behind, s.connections
        ));
    }
    Some(PacerReport {
        paced: lat.count,
        behind: st.behind,
        lateness_us: lat,
        target_p99_us: target,
        kept,
        verdict,
    })
}

/// Prints the summary table on stdout.
pub fn print_summary(s: &Settings, o: &Outcome) {
    let st = &o.stats;
    let (mps, mbps, sps) = rates(o);
    let mode = match s.rate_per_s {
        Some(r) => format!("open loop at {r} msg/s"),
        None => "closed loop".to_string(),
    };
    let pipe = if o.pipelining_used.iter().all(|&p| p) {
        "on"
    } else if o.pipelining_used.iter().any(|&p| p) {
        "mixed"
    } else {
        "off"
    };
    println!(
        "ringmx-loadgen: {} | {} connections on {} thread(s) | {mode} | pipelining {pipe} | {}{} | size {} | {} rcpt",
        s.targets.join(","),
        s.connections,
        s.threads,
        if s.bdat { "BDAT" } else { "DATA" },
        if s.depth > 1 {
            format!(" depth {}", s.depth)
        } else {
            String::new()
        },
        s.size_text,
        s.recipients,
    );
    if s.proxy.is_some() || !s.sources.is_empty() {
        let sources: Vec<String> = s.sources.iter().map(|a| a.to_string()).collect();
        println!(
            "PROXY header {}   source addresses {}",
            s.proxy.map_or("none", |p| p.name()),
            if sources.is_empty() {
                "any".to_string()
            } else {
                sources.join(",")
            }
        );
    }
    println!(
        "measured {:.3} s (stopped by {}), warm-up {:.3} s",
        o.elapsed.as_secs_f64(),
        o.stopped_by.name(),
        s.warmup.as_secs_f64()
    );
    println!(
        "messages   accepted {}   refused {}   failed {}",
        st.accepted, st.refused, st.failed
    );
    println!(
        "throughput {mps:.1} msgs/s   {mbps:.2} MB/s   {sps:.2} sessions/s   ({} sessions, {} opened while measuring)",
        st.sessions, st.sessions_opened
    );
    println!(
        "errors     connect {}   timeouts {}   i/o {}   protocol {}   closed by server {}",
        st.connect_errors, st.timeouts, st.io_errors, st.protocol_errors, st.closed_by_server
    );
    println!(
        "latency ms {:<18} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, h) in [
        ("connect+greeting", &st.connect),
        ("message", &st.message),
        ("session", &st.session),
    ] {
        let p = percentiles(h);
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "           {name:<18} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            p.count,
            ms(p.p50),
            ms(p.p90),
            ms(p.p99),
            ms(p.p99_9),
            ms(p.max)
        );
    }
    let fmt = |t: &[(u16, u64)]| {
        if t.is_empty() {
            "none".to_string()
        } else {
            t.iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    if let Some(p) = pacer_report(s, o) {
        let l = &p.lateness_us;
        println!(
            "pacer lateness µs  count {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}   behind schedule {}",
            l.count, l.p50, l.p90, l.p99, l.p99_9, l.max, p.behind
        );
        println!("{}", p.verdict);
    }
    println!(
        "refused by code: {}",
        fmt(&ThreadStats::codes(&st.refused_by_code))
    );
    println!(
        "replies not 2xx/3xx by code: {}",
        fmt(&ThreadStats::codes(&st.replies_by_code))
    );
}

/// Facts about the machine the load generator ran on.
#[derive(Serialize)]
struct Host {
    hostname: String,
    kernel_release: String,
    kernel_version: String,
    machine: String,
    cpu_model: String,
    cores: usize,
    cores_online: usize,
    memory_total_bytes: u64,
    /// What explains a difference between kernels (named as scripts/bench names them).
    facts: crate::facts::Facts,
}

/// A field of `struct utsname` as a string.
fn uts_field(f: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = f
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Reads the host facts from uname(2), /proc/cpuinfo and /proc/meminfo.
fn host() -> Host {
    // SAFETY: utsname is plain old data; zeroed is a valid value, and uname fills it in.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname for the duration of the call.
    let ok = unsafe { libc::uname(&mut u) } == 0;
    let (hostname, release, version, machine) = if ok {
        (
            uts_field(&u.nodename),
            uts_field(&u.release),
            uts_field(&u.version),
            uts_field(&u.machine),
        )
    } else {
        Default::default()
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| {
            l.starts_with("model name") || l.starts_with("Model") || l.starts_with("CPU part")
        })
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let cores_online = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let memory_total_bytes = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    Host {
        hostname,
        kernel_release: release,
        kernel_version: version,
        machine,
        cpu_model,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cores_online,
        memory_total_bytes,
        facts: crate::facts::collect(),
    }
}

/// The load settings as given (after defaults).
#[derive(Serialize)]
struct JsonSettings<'a> {
    targets: &'a [String],
    connections: usize,
    threads: usize,
    messages_per_session: u64,
    size: &'a str,
    size_min_bytes: usize,
    size_max_bytes: usize,
    message_sizes_bytes: &'a [usize],
    recipients: usize,
    pipelining: &'static str,
    pipelining_used: &'a [bool],
    bdat: bool,
    messages: Option<u64>,
    duration_s: Option<f64>,
    warmup_s: f64,
    rate_per_s: Option<f64>,
    mode: &'static str,
    from: &'a str,
    to: &'a str,
    ehlo: &'a str,
    timeout_s: f64,
    proxy: Option<&'static str>,
    sources: Vec<String>,
    depth: usize,
}

/// The counters of the run.
#[derive(Serialize)]
struct Counters {
    messages_accepted: u64,
    messages_refused: u64,
    messages_failed: u64,
    bytes_sent: u64,
    sessions: u64,
    sessions_opened: u64,
    messages_behind_schedule: u64,
    connect_errors: u64,
    timeouts: u64,
    io_errors: u64,
    protocol_errors: u64,
    closed_by_server: u64,
}

/// The whole JSON document (schema_version 1).
#[derive(Serialize)]
struct Report<'a> {
    schema_version: u32,
    tool: &'static str,
    tool_version: &'static str,
    argv: &'a [String],
    settings: JsonSettings<'a>,
    targets: &'a [crate::probe::TargetInfo],
    host: Host,
    server_env: BTreeMap<String, String>,
    start_time: String,
    end_time: String,
    elapsed_s: f64,
    stopped_by: &'static str,
    counters: Counters,
    refused_by_code: BTreeMap<String, u64>,
    replies_by_code: BTreeMap<String, u64>,
    messages_per_s: f64,
    megabytes_per_s: f64,
    sessions_per_s: f64,
    latency_us: BTreeMap<&'static str, Percentiles>,
    /// Open loop only: how well the schedule was kept.
    pacer: Option<PacerReport>,
    histograms: BTreeMap<&'static str, String>,
}

/// Writes the JSON result to `path`.
pub fn write_json(path: &Path, s: &Settings, o: &Outcome) -> std::io::Result<()> {
    let st = &o.stats;
    let (mps, mbps, sps) = rates(o);
    let codes = |t| {
        ThreadStats::codes(t)
            .into_iter()
            .map(|(c, n)| (c.to_string(), n))
            .collect::<BTreeMap<_, _>>()
    };
    let hists = [
        ("connect", &st.connect),
        ("message", &st.message),
        ("session", &st.session),
    ];
    let mut histograms: BTreeMap<&'static str, String> =
        hists.iter().map(|(n, h)| (*n, encode(h))).collect();
    if s.rate_per_s.is_some() {
        histograms.insert("pacer_lateness", encode(&st.lateness));
    }
    let r = Report {
        schema_version: SCHEMA_VERSION,
        tool: "ringmx-loadgen",
        tool_version: env!("CARGO_PKG_VERSION"),
        argv: &o.argv,
        settings: JsonSettings {
            targets: &s.targets,
            connections: s.connections,
            threads: s.threads,
            messages_per_session: s.messages_per_session,
            size: &s.size_text,
            size_min_bytes: s.size_min_bytes,
            size_max_bytes: s.size_max_bytes,
            message_sizes_bytes: &o.message_sizes,
            recipients: s.recipients,
            pipelining: s.pipelining.name(),
            pipelining_used: &o.pipelining_used,
            bdat: s.bdat,
            messages: s.messages,
            duration_s: s.duration.map(|d| d.as_secs_f64()),
            warmup_s: s.warmup.as_secs_f64(),
            rate_per_s: s.rate_per_s,
            mode: if s.rate_per_s.is_some() {
                "open"
            } else {
                "closed"
            },
            from: &s.from,
            to: &s.to,
            ehlo: &s.ehlo,
            timeout_s: s.timeout.as_secs_f64(),
            proxy: s.proxy.map(|p| p.name()),
            sources: s.sources.iter().map(|a| a.to_string()).collect(),
            depth: s.depth,
        },
        targets: &o.targets,
        host: host(),
        server_env: std::env::vars()
            .filter(|(k, _)| k.starts_with("RINGMX_"))
            .collect(),
        start_time: o.start_wall.to_rfc3339(),
        end_time: o.end_wall.to_rfc3339(),
        elapsed_s: o.elapsed.as_secs_f64(),
        stopped_by: o.stopped_by.name(),
        counters: Counters {
            messages_accepted: st.accepted,
            messages_refused: st.refused,
            messages_failed: st.failed,
            bytes_sent: st.bytes_sent,
            sessions: st.sessions,
            sessions_opened: st.sessions_opened,
            messages_behind_schedule: st.behind,
            connect_errors: st.connect_errors,
            timeouts: st.timeouts,
            io_errors: st.io_errors,
            protocol_errors: st.protocol_errors,
            closed_by_server: st.closed_by_server,
        },
        refused_by_code: codes(&st.refused_by_code),
        replies_by_code: codes(&st.replies_by_code),
        messages_per_s: mps,
        megabytes_per_s: mbps,
        sessions_per_s: sps,
        latency_us: hists.iter().map(|(n, h)| (*n, percentiles(h))).collect(),
        pacer: pacer_report(s, o),
        histograms,
    };
    let text = serde_json::to_string_pretty(&r).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_encoding_round_trips() {
        let mut h = crate::stats::new_histogram();
        for v in [1, 250, 1000, 1001, 50_000, 7_000_000] {
            h.record(v).unwrap();
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encode(&h))
            .unwrap();
        assert_eq!(&bytes[..4], &[0x1c, 0x84, 0x93, 0x14]);
        let back: Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut &bytes[..])
            .unwrap();
        assert_eq!(back.len(), 6);
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert_eq!(back.max(), h.max());
    }
}
