//! Tests of the benchmark scripts (SPEC §7): `scripts/compare` on two committed fixture files
//! from two different hosts (table, ratios, the "host differs" note, a well-formed SVG with one
//! bar per run and metric), and `scripts/bench` end to end on one tiny scenario against the
//! built `ringmx` and `ringmx-loadgen`. The scripts are Python 3 (standard library only); without
//! `python3` these tests say so and skip. Every child process runs under a deadline, and no
//! test asserts on speed: only that the figures are there and consistent.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Longest a `scripts/compare` call may take (it reads two small files).
const COMPARE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the end-to-end `scripts/bench` run may take: one 1 s scenario plus start and stop.
const BENCH_TIMEOUT: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/results").join(name)
}

/// Whether python3 runs here; prints a skip line for `test` when it does not.
fn have_python(test: &str) -> bool {
    let ok = Command::new("python3")
        .arg("-c")
        .arg("import sys; sys.exit(0 if sys.version_info >= (3, 7) else 1)")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        // Under CI the peer must be there (scripts/test installs it): a skip would pass silently.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: python3 (3.7 or later) is not available and CI=true"
        );
        eprintln!("{test}: skipped, python3 (3.7 or later) is not available");
    }
    ok
}

/// Runs `script` (under scripts/) with `args`, killing it past `timeout`.
fn run_script(script: &str, args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new("python3")
        .arg(repo().join("scripts").join(script))
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    // Drain both pipes in threads so a chatty child cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().expect("stdout");
    let mut err_pipe = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            // SIGKILL to python only: scripts/bench's own SIGTERM handler would stop its
            // children, but a hung script must not hang the test either.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            let status = child.wait().expect("wait");
            let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
            panic!("scripts/{script} {args:?} ran past {timeout:?} ({status}); stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------
// A minimal XML checker: enough to say an SVG is well-formed and to count its elements.

/// The elements of a well-formed XML document as (name, attributes text), in document order;
/// an error names the first problem (unbalanced or mismatched tags, a bad `&`, stray `<`).
fn xml_elements(doc: &str) -> Result<Vec<(String, String)>, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut elements = Vec::new();
    let mut rest = doc.trim_start();
    let mut roots = 0;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            check_text(rest)?;
            if !stack.is_empty() || !rest.trim().is_empty() {
                return Err(format!(
                    "text after the last tag: {:?}",
                    &rest[..rest.len().min(40)]
                ));
            }
            break;
        };
        check_text(&rest[..lt])?;
        if stack.is_empty() && !rest[..lt].trim().is_empty() {
            return Err("text outside the root element".into());
        }
        rest = &rest[lt..];
        let (end_marker, skip) = if rest.starts_with("<?") {
            ("?>", true)
        } else if rest.starts_with("<!--") {
            ("-->", true)
        } else {
            (">", false)
        };
        let Some(end) = rest.find(end_marker) else {
            return Err("unterminated tag".into());
        };
        let tag = &rest[..end + end_marker.len()];
        rest = &rest[end + end_marker.len()..];
        if skip {
            continue;
        }
        let inner = &tag[1..tag.len() - 1];
        if let Some(name) = inner.strip_prefix('/') {
            match stack.pop() {
                Some(open) if open == name.trim() => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
            continue;
        }
        let self_closing = inner.ends_with('/');
        let inner = inner.trim_end_matches('/');
        let name_end = inner
            .find(|c: char| c.is_whitespace())
            .unwrap_or(inner.len());
        let name = &inner[..name_end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_alphanumeric() || "-_:.".contains(c))
        {
            return Err(format!("bad element name in {tag:?}"));
        }
        let attrs = &inner[name_end..];
        if attrs.matches('"').count() % 2 != 0 || attrs.contains('<') {
            return Err(format!("bad attributes in {tag:?}"));
        }
        check_text(attrs)?;
        if stack.is_empty() {
            roots += 1;
        }
        elements.push((name.to_string(), attrs.to_string()));
        if !self_closing {
            stack.push(name.to_string());
        }
    }
    if !stack.is_empty() {
        return Err(format!("unclosed elements {stack:?}"));
    }
    if roots != 1 {
        return Err(format!("{roots} root elements"));
    }
    Ok(elements)
}

/// Every `&` in text or attributes must start an entity.
fn check_text(s: &str) -> Result<(), String> {
    for (i, _) in s.match_indices('&') {
        let entity = &s[i..s.len().min(i + 12)];
        let ok = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#"]
            .iter()
            .any(|e| entity.starts_with(e));
        if !ok {
            return Err(format!("bare & at {entity:?}"));
        }
    }
    Ok(())
}

/// The bars of a chart written by scripts/compare, as their data-metric values.
fn svg_bars(svg: &str) -> Vec<String> {
    let elements = xml_elements(svg).unwrap_or_else(|e| panic!("SVG not well-formed: {e}"));
    assert_eq!(
        elements.first().map(|e| e.0.as_str()),
        Some("svg"),
        "root must be <svg>"
    );
    elements
        .iter()
        .filter(|(name, attrs)| name == "rect" && attrs.contains("class=\"bar\""))
        .map(|(_, attrs)| {
            let start = attrs
                .find("data-metric=\"")
                .expect("bar without data-metric")
                + 13;
            attrs[start..start + attrs[start..].find('"').unwrap()].to_string()
        })
        .collect()
}

#[test]
fn xml_checker_rejects_what_it_should() {
    assert!(xml_elements("<svg><rect/></svg>").is_ok());
    assert!(xml_elements(
        "<?xml version=\"1.0\"?>\n<svg a=\"1\"><g><text>a &amp; b</text></g></svg>"
    )
    .is_ok());
    assert!(xml_elements("<svg><g></svg>").is_err());
    assert!(xml_elements("<svg><text>a & b</text></svg>").is_err());
    assert!(xml_elements("<svg></svg><svg></svg>").is_err());
    assert!(xml_elements("<svg><rect a=\"1/></svg>").is_err());
}

// ---------------------------------------------------------------------------------------------
// scripts/compare

#[test]
fn compare_two_hosts_table_ratios_and_note() {
    if !have_python("compare_two_hosts_table_ratios_and_note") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("chart.svg");
    let a = fixture("host-a.json");
    let b = fixture("host-b.json");
    let out = run_script(
        "compare",
        &[
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
        ],
        COMPARE_TIMEOUT,
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "compare failed: {stdout}\n{}",
        text(&out.stderr)
    );

    // The hosts differ in kernel, CPU model and cores, and the output says so plainly.
    let note = stdout
        .lines()
        .find(|l| l.contains("host differs"))
        .unwrap_or_else(|| panic!("no host-differs note in:\n{stdout}"));
    assert!(
        note.contains("6.1.0-28-amd64") && note.contains("6.18.44-fc-v857"),
        "{note}"
    );
    assert!(
        note.contains("Xeon") && note.contains("cores 8 (vs 2)"),
        "{note}"
    );

    // Ratios against the same server and setting in the first file: file 2's 1k-closed run has
    // twice the msgs/s, half the p99 and half the CPU per message of file 1's.
    let row = |scenario: &str, file: &str| -> String {
        let mut in_scenario = false;
        for line in stdout.lines() {
            if !line.starts_with('[') && !line.starts_with("file") {
                in_scenario = line.starts_with(scenario);
            }
            if in_scenario && line.starts_with(file) && line.contains("uring discard shards=2") {
                return line.to_string();
            }
        }
        panic!("no {file} row in {scenario}:\n{stdout}");
    };
    let first = row("1k-closed", "[1]");
    assert!(first.contains("base"), "{first}");
    let second = row("1k-closed", "[2]");
    let ratios: Vec<&str> = second
        .split_whitespace()
        .filter(|w| w.ends_with('x') && w.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(ratios, ["2.00x", "0.50x", "0.50x"], "{second}");
    // 100k in file 2 has no `summary`: compare derives the figures from the loadgen JSON.
    let big = row("100k", "[2]");
    assert!(big.contains("2500") && big.contains("256.0"), "{big}");
    let ratios: Vec<&str> = big
        .split_whitespace()
        .filter(|w| w.ends_with('x') && w.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(ratios, ["0.50x", "2.00x", "2.00x"], "{big}");
    // A failed run is shown with its error, not left out.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("epoll discard shards=2")
                && l.contains("error: server did not start")),
        "{stdout}"
    );

    // The chart: well-formed, one throughput and one p99 bar per run that has figures
    // (1k-closed: two ringmx runs and smtp-sink; 100k: two ringmx runs; the failed run: none).
    let chart = std::fs::read_to_string(&svg).expect("chart written");
    let bars = svg_bars(&chart);
    assert_eq!(bars.len(), 10, "{bars:?}");
    assert_eq!(bars.iter().filter(|m| *m == "msgs_per_s").count(), 5);
    assert_eq!(bars.iter().filter(|m| *m == "p99_ms").count(), 5);
    assert!(
        chart.contains("host differs"),
        "the chart carries the note too"
    );
}

/// Two result files from one host under two kernels, each cell the median of 3 repeats: the
/// facts that differ (a mitigation, the spool's journal and mount options) are listed above the
/// tables and nothing else is (glibc is missing from the second file: unknown, not a
/// difference); each ratio says whether it exceeds the repeats' spread; the chart draws it.
#[test]
fn compare_kernels_lists_differing_facts_and_noise() {
    if !have_python("compare_kernels_lists_differing_facts_and_noise") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("chart.svg");
    let (a, b) = (fixture("kernel-a.json"), fixture("kernel-b.json"));
    let out = run_script(
        "compare",
        &[
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
        ],
        COMPARE_TIMEOUT,
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "compare failed: {stdout}\n{}",
        text(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.starts_with("Facts that differ"))
        .unwrap_or_else(|| panic!("no facts section in:\n{stdout}"));
    let facts: Vec<&str> = lines[head + 1..]
        .iter()
        .take_while(|l| l.starts_with("  "))
        .copied()
        .collect();
    assert_eq!(
        facts,
        [
            "  mitigations: spectre_v2: [1] Mitigation: Retpolines; STIBP: disabled  |  [2] Vulnerable",
            "  spool journal: [1] ext4 without journal  |  [2] ext4 with journal",
            "  spool mount options: [1] rw,relatime  |  [2] rw,relatime,data=ordered",
        ],
        "{stdout}"
    );
    assert!(!stdout.contains("glibc"), "a missing fact is no difference");
    // The facts section comes before the first table.
    let first_table = lines
        .iter()
        .position(|l| l.starts_with("1k-closed"))
        .unwrap();
    assert!(head < first_table, "{stdout}");

    let row = |scenario: &str| -> String {
        let at = lines.iter().position(|l| l.starts_with(scenario)).unwrap();
        lines[at..]
            .iter()
            .find(|l| l.starts_with("[2]"))
            .unwrap()
            .to_string()
    };
    // 1k-closed: 7000 (6800..7300) against 10000 (9500..10500): the ranges are apart.
    let closed = row("1k-closed");
    assert!(closed.contains("±3.6%"), "{closed}");
    assert!(closed.contains("0.70x real"), "{closed}");
    assert!(closed.contains("1.50x real"), "{closed}");
    // 100k: 510 (490..530) against 500 (480..520): within the noise.
    let big = row("100k");
    assert!(big.contains("1.02x noise"), "{big}");
    // CPU per message has no spread in these files: it cannot be told from noise.
    assert!(big.contains("1.00x ?"), "{big}");

    let chart = std::fs::read_to_string(&svg).expect("chart written");
    assert_eq!(svg_bars(&chart).len(), 8);
    assert_eq!(
        chart.matches("<g class=\"spread\"").count(),
        8,
        "a whisker per bar"
    );
}

/// Without repeats there is no spread: a ratio is marked '?', never 'real'.
#[test]
fn compare_single_runs_cannot_call_a_difference_real() {
    if !have_python("compare_single_runs_cannot_call_a_difference_real") {
        return;
    }
    let (a, b) = (fixture("host-a.json"), fixture("host-b.json"));
    let out = run_script(
        "compare",
        &[a.to_str().unwrap(), b.to_str().unwrap(), "--no-svg"],
        COMPARE_TIMEOUT,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("2.00x ?"), "{stdout}");
    assert!(!stdout.contains(" real"), "{stdout}");
    assert!(!stdout.contains(" noise"), "{stdout}");
}

#[test]
fn compare_one_file_baseline_server_and_default_chart_path() {
    if !have_python("compare_one_file_baseline_server_and_default_chart_path") {
        return;
    }
    // The default chart goes next to the first input: copy the fixture somewhere writable.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("host-a.json");
    std::fs::copy(fixture("host-a.json"), &input).unwrap();
    let out = run_script(
        "compare",
        &[input.to_str().unwrap(), "--baseline", "smtp-sink"],
        COMPARE_TIMEOUT,
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "compare failed: {stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        !stdout.contains("host differs"),
        "one file, one host:\n{stdout}"
    );
    // ringmx against smtp-sink in the same file: 2x the msgs/s, 0.5x the CPU per message.
    let ringmx = stdout
        .lines()
        .find(|l| l.starts_with("[1]") && l.contains("ringmx") && l.contains("40 000"))
        .unwrap_or_else(|| panic!("no ringmx 1k-closed row:\n{stdout}"));
    let ratios: Vec<&str> = ringmx
        .split_whitespace()
        .filter(|w| w.ends_with('x') && w.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(ratios, ["2.00x", "2.00x", "0.50x"], "{ringmx}");
    let sink = stdout
        .lines()
        .find(|l| l.contains("smtp-sink") && l.starts_with("[1]"))
        .unwrap();
    assert!(sink.trim_end().ends_with("base"), "{sink}");
    let chart = dir.path().join("host-a.svg");
    let bars = svg_bars(&std::fs::read_to_string(&chart).expect("chart next to the input"));
    assert_eq!(
        bars.len(),
        6,
        "1k-closed: ringmx and smtp-sink; 100k: ringmx; two bars each"
    );
}

#[test]
fn compare_wide_table_and_group_filter() {
    if !have_python("compare_wide_table_and_group_filter") {
        return;
    }
    let a = fixture("host-a.json");
    let out = run_script(
        "compare",
        &[
            a.to_str().unwrap(),
            "--wide",
            "--group",
            "matrix",
            "--no-svg",
        ],
        COMPARE_TIMEOUT,
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "compare failed: {stdout}\n{}",
        text(&out.stderr)
    );
    // One row per server and setting, one column per scenario: msgs/s / p99 ms.
    let row = stdout
        .lines()
        .find(|l| l.starts_with("[1]") && l.contains("uring discard shards=2"))
        .unwrap_or_else(|| panic!("no ringmx row:\n{stdout}"));
    assert!(
        row.contains("40 000 / 10.0") && row.contains("5000 / 20.0"),
        "{row}"
    );
    assert!(
        !stdout.contains("smtp-sink  "),
        "peers are another group:\n{stdout}"
    );
}

#[test]
fn compare_refuses_what_it_cannot_read() {
    if !have_python("compare_refuses_what_it_cannot_read") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"something\": \"else\"}").unwrap();
    let out = run_script("compare", &[bad.to_str().unwrap()], COMPARE_TIMEOUT);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("neither a scripts/bench result"));
}

#[test]
fn scripts_print_help() {
    if !have_python("scripts_print_help") {
        return;
    }
    for script in ["bench", "compare"] {
        let out = run_script(script, &["--help"], COMPARE_TIMEOUT);
        assert!(
            out.status.success(),
            "{script} --help: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stdout).contains("usage: scripts/"), "{script}");
    }
}

// ---------------------------------------------------------------------------------------------
// scripts/bench end to end

#[test]
fn bench_one_tiny_scenario_end_to_end() {
    if !have_python("bench_one_tiny_scenario_end_to_end") {
        return;
    }
    let server = Path::new(env!("CARGO_BIN_EXE_ringmx"));
    let loadgen = server.with_file_name("ringmx-loadgen");
    if !loadgen.exists() {
        eprintln!(
            "bench_one_tiny_scenario_end_to_end: skipped, {} is not built (cargo test --workspace builds it)",
            loadgen.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let result = dir.path().join("result.json");
    let out = run_script(
        "bench",
        &[
            "--no-build",
            "--server-bin",
            server.to_str().unwrap(),
            "--loadgen-bin",
            loadgen.to_str().unwrap(),
            "--only",
            "churn",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--repeat",
            "2",
            "--backends",
            "auto",
            "--deliveries",
            "discard",
            "--shards",
            "1",
            "--spool-dir",
            dir.path().to_str().unwrap(),
            "--out",
            result.to_str().unwrap(),
        ],
        BENCH_TIMEOUT,
    );
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed ({}):\n{stderr}",
        out.status
    );

    // The file parses and holds the one run, with its settings, loadgen JSON and server CPU.
    let check = Command::new("python3")
        .arg("-c")
        .arg(
            "import json, sys\n\
             d = json.load(open(sys.argv[1]))\n\
             assert d['schema'] == 'ringmx-bench/1'\n\
             assert d['host']['kernel_release'] and d['host']['cores'] >= 1\n\
             runs = d['runs']\n\
             assert len(runs) == 1, len(runs)\n\
             r = runs[0]\n\
             assert r['scenario'] == 'churn' and r['server'] == 'ringmx' and r['error'] is None, r.get('error')\n\
             assert r['env']['RINGMX_DELIVERY'] == 'discard' and r['env']['RINGMX_SHARDS'] == '1'\n\
             lg = r['loadgen']\n\
             assert lg['tool'] == 'ringmx-loadgen'\n\
             assert lg['server_env']['RINGMX_DELIVERY'] == 'discard'\n\
             assert lg['settings']['messages_per_session'] == 1\n\
             assert lg['counters']['messages_accepted'] > 0\n\
             reps = r['repeats']\n\
             assert len(reps) == 2 and r['median_of'] == 2, r.get('repeats')\n\
             acc = sorted(x['summary']['accepted'] for x in reps)\n\
             assert r['summary']['accepted'] == (acc[0] + acc[1]) / 2, (r['summary'], acc)\n\
             assert lg['counters']['messages_accepted'] in acc\n\
             sp = r['spread']['msgs_per_s']\n\
             assert sp['n'] == 2 and sp['min'] <= r['summary']['msgs_per_s'] <= sp['max'], sp\n\
             assert r['server_cpu']['cpu_s'] >= 0 and r['server_cpu']['window_s'] > 0\n\
             f = d['host']['facts']\n\
             assert f['io_uring']['disabled_sysctl'] is not None\n\
             assert f['spool']['filesystem'] and 'mount_options' in f['spool']\n\
             assert f['net']['somaxconn'] and 'ringmx_listen_backlog' in f['net']\n\
             assert isinstance(f['vulnerabilities'], dict) and f['glibc']\n\
             assert d['ringmx']['build_profile'] == 'release' and d['options']['repeat'] == 2\n\
             print('ok')\n",
        )
        .arg(&result)
        .output()
        .expect("python3");
    assert!(
        check.status.success(),
        "result file check failed: {}\n{}",
        text(&check.stderr),
        std::fs::read_to_string(&result).unwrap_or_default()
    );

    // And compare reads it and draws its chart.
    let svg = dir.path().join("result.svg");
    let out = run_script("compare", &[result.to_str().unwrap()], COMPARE_TIMEOUT);
    assert!(out.status.success(), "compare: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("churn"));
    let bars = svg_bars(&std::fs::read_to_string(&svg).expect("chart"));
    assert_eq!(bars.len(), 2, "one run: a throughput and a p99 bar");
    // Nothing it started is left: the spools and its work directory are gone.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ringmx-bench"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
