//! The spool never loses or replaces an acknowledged message (SPEC §4.4): not across a
//! restart with the real-time clock set back, not when a second ringmx starts on the same
//! spool while the first is mid-message, and a host name too long for spool file names stops
//! start-up instead of failing every message.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::*;

const SENDER: &str = "sender@origin.example";
const RCPTS: &[&str] = &["rcpt@dest.example"];

/// An LD_PRELOAD library whose clock_gettime(CLOCK_REALTIME) runs `CLOCK_BACK_SECS` seconds
/// behind the real clock (as after an NTP step back or a VM restore), built with the C
/// compiler the build already needs (mimalloc is C).
fn clock_shim(dir: &Path) -> Option<PathBuf> {
    const SOURCE: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
typedef int (*real_fn)(clockid_t, struct timespec *);
int clock_gettime(clockid_t id, struct timespec *ts) {
    static real_fn real;
    if (!real) real = (real_fn)dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(id, ts);
    if (rc == 0 && id == CLOCK_REALTIME) {
        const char *back = getenv("CLOCK_BACK_SECS");
        if (back) ts->tv_sec -= atol(back);
    }
    return rc;
}
"#;
    let source = dir.join("clockback.c");
    let library = dir.join("clockback.so");
    std::fs::write(&source, SOURCE).ok()?;
    let compiler = find_program("cc").or_else(|| find_program("gcc"))?;
    let mut command = Command::new(compiler);
    command
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl");
    let (status, _, err) = run_bounded(command, Duration::from_secs(60));
    if !status.success() {
        eprintln!("cc failed: {err}");
        return None;
    }
    Some(library)
}

/// `count` bodies tagged `tag`.
fn bodies(tag: &str, count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|n| sample_body(tag, n, n % 7 * 100))
        .collect()
}

/// Every message acknowledged across a restart whose clock is set back to the moment the
/// first run began is in new/, byte for byte, under its own name: no name is reused and no
/// file replaced.
#[test]
fn restart_with_the_clock_set_back_keeps_every_message() {
    let work = tempfile::tempdir().expect("tempdir");
    let Some(shim) = clock_shim(work.path()) else {
        skip_or_fail(
            "restart_with_the_clock_set_back_keeps_every_message",
            "no C compiler to build the clock shim",
        );
        return;
    };
    let spool = work.path().join("spool");
    let spool_text = spool.display().to_string();
    let shim_text = shim.display().to_string();
    let started = SystemTime::now();
    let mut sent: HashMap<String, Vec<u8>> = HashMap::new();

    // First run on the real clock.
    let server = Server::start(&[("RINGMX_SPOOL", &spool_text)]);
    for s in 0..3 {
        let ids = pipelined_session(server.addr(), SENDER, RCPTS, bodies(&format!("a{s}"), 200));
        sent.extend(ids);
    }
    drop(server);

    // Second run, the clock set back to when the first began (and a bit more), so the
    // second run's clock walks through the first one's times again.
    let back = started.elapsed().unwrap_or_default().as_secs() + 1;
    let back_text = back.to_string();
    let server = Server::start(&[
        ("RINGMX_SPOOL", &spool_text),
        ("LD_PRELOAD", &shim_text),
        ("CLOCK_BACK_SECS", &back_text),
    ]);
    // The queue ID's first 14 hex digits are its clock time in microseconds.
    let micros = |id: &str| u64::from_str_radix(&id[..14], 16).expect("hex time");
    let first_run_last = sent.keys().map(|id| micros(id)).max().expect("IDs");
    for s in 0..3 {
        let ids = pipelined_session(server.addr(), SENDER, RCPTS, bodies(&format!("b{s}"), 200));
        // The first session runs inside the first run's times. Later ones may run past them
        // when this run is slower than the first (a busy machine), which proves nothing
        // about the shim.
        let earliest = ids.keys().map(|id| micros(id)).min().expect("IDs");
        assert!(
            s > 0 || earliest < first_run_last,
            "the clock shim did not set the clock back ({earliest} >= {first_run_last})"
        );
        for (id, body) in ids {
            assert!(
                sent.insert(id.clone(), body).is_none(),
                "queue ID {id} reused"
            );
        }
    }
    assert_eq!(sent.len(), 1200);
    let files = read_files(&spool.join("new"));
    check_spool_matches(&files, &sent, &expected(SENDER, RCPTS));
    drop(server);
}

/// A second ringmx started on the same spool (a rolling restart over SO_REUSEPORT) leaves the
/// first one's message in progress alone: the first one's client gets its 250 and the file.
#[test]
fn second_instance_keeps_the_first_ones_message_in_progress() {
    for backend in ["epoll", "uring"] {
        let test = format!("second_instance_keeps_the_first_ones_message_in_progress/{backend}");
        let spool = tempfile::tempdir().expect("spool");
        let spool_text = spool.path().display().to_string();
        let vars = [
            ("RINGMX_SPOOL", spool_text.as_str()),
            ("RINGMX_SHARDS", "1"),
        ];
        let Some(first) = start_backend(backend, &vars, &test) else {
            continue;
        };
        let body = sample_body("overlap", 1, 50_000);
        let stuffed = dot_stuffed(&body);
        let (head, tail) = stuffed.split_at(stuffed.len() / 2);
        let mut client = Client::ehlo(first.addr());
        client.send(format!("MAIL FROM:<{SENDER}>\r\n").as_bytes());
        client.expect("250 ");
        client.send(format!("RCPT TO:<{}>\r\n", RCPTS[0]).as_bytes());
        client.expect("250 ");
        client.send(b"DATA\r\n");
        client.expect("354 ");
        client.send(head);
        assert!(
            poll(Duration::from_secs(5), || first.tmp_files().len() == 1),
            "{test}: the first instance's file is not in tmp/"
        );

        let second = start_backend(backend, &vars, &test).expect("second instance");
        assert!(
            !second.log_text().contains("removed"),
            "{test}: the second instance removed files:\n{}",
            second.log_text()
        );
        assert!(
            second.log_text().contains("kept 1 file(s)"),
            "{test}: {}",
            second.log_text()
        );
        assert_eq!(first.tmp_files().len(), 1, "{test}: tmp/ file gone");

        client.send(tail);
        let id = client.expect_queued();
        let files = read_files(&spool.path().join("new"));
        let sent = HashMap::from([(id, body.clone())]);
        check_spool_matches(&files, &sent, &expected(SENDER, RCPTS));
        drop(second);
        drop(first);
    }
}

/// Files of a writer that is gone are removed at start-up; files of a live one are not.
#[test]
fn start_up_removes_only_dead_writers_tmp_files() {
    let spool = tempfile::tempdir().expect("spool");
    let spool_text = spool.path().display().to_string();
    let tmp = spool.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let id = "0".repeat(32);
    // Above the kernel's PID limit (2^22): never running.
    let dead = tmp.join(format!("{id}.4194305.{HOSTNAME}"));
    let live = tmp.join(format!("{id}.{}.{HOSTNAME}", std::process::id()));
    std::fs::write(&dead, b"partial").unwrap();
    std::fs::write(&live, b"partial").unwrap();
    let server = Server::start(&[("RINGMX_SPOOL", &spool_text)]);
    assert!(!dead.exists(), "{}", server.log_text());
    assert!(live.exists(), "{}", server.log_text());
    assert!(server.log_text().contains("removed 1 stale file(s)"));
}

/// A host name whose spool file names would pass 255 octets stops start-up (exit 2, one line)
/// instead of answering 451 to every message.
#[test]
fn host_name_too_long_for_file_names_is_refused_at_start() {
    let label = "h".repeat(55);
    let long = [label.as_str(); 4].join(".");
    assert!(long.len() < 253);
    let started = Instant::now();
    let (status, lines) = run_to_exit(
        &[("RINGMX_HOSTNAME", &long), ("RINGMX_LISTEN", "127.0.0.1:0")],
        Duration::from_secs(10),
    );
    assert!(exited_with(status, 2), "{status:?} {lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("RINGMX_HOSTNAME") && lines[0].contains("255"),
        "{lines:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
