//! The systemd unit and environment file in dist/: `systemd-analyze verify` accepts the unit
//! (with ExecStart pointing at the binary just built), its stop timeout outlasts the shutdown
//! grace, its descriptor limit covers its connection limit, and the environment file names
//! every variable ringmx reads with a value ringmx accepts.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::ops::peer;
use common::run_bounded;

/// The unit as shipped.
fn unit() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/ringmx.service"))
        .expect("dist/ringmx.service")
}

/// The environment file as shipped.
fn env_file() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/ringmx.env"))
        .expect("dist/ringmx.env")
}

/// The values of every `key=` line of the unit, in order.
fn settings<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .collect()
}

/// The `RINGMX_*=value` pairs of the unit's `Environment=` lines.
fn unit_environment(unit: &str) -> Vec<(String, String)> {
    settings(unit, "Environment")
        .into_iter()
        .map(|pair| {
            let (name, value) = pair.split_once('=').expect("NAME=value");
            (name.to_string(), value.to_string())
        })
        .collect()
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Some(analyze) = peer(
        "systemd-analyze",
        "systemd",
        "systemd_analyze_verifies_the_unit",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ringmx.service");
    let unit = unit().replace("/usr/local/bin/ringmx", env!("CARGO_BIN_EXE_ringmx"));
    std::fs::write(&path, unit).unwrap();
    let mut command = Command::new(analyze);
    command.arg("verify").arg(&path);
    let (status, stdout, stderr) = run_bounded(command, Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{stdout}\n{stderr}");
    // Warnings (an unknown key, a setting in the wrong section) fail the test as well.
    assert!(
        stderr.trim().is_empty() && stdout.trim().is_empty(),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn unit_fits_ringmx() {
    let unit = unit();
    assert_eq!(settings(&unit, "ExecStart"), ["/usr/local/bin/ringmx"]);
    assert_eq!(settings(&unit, "ExecReload"), ["/bin/kill -HUP $MAINPID"]);
    assert_eq!(settings(&unit, "KillSignal"), ["SIGTERM"]);
    assert_eq!(settings(&unit, "NoNewPrivileges"), ["yes"]);
    assert_eq!(settings(&unit, "ProtectSystem"), ["strict"]);
    assert_eq!(
        settings(&unit, "AmbientCapabilities"),
        ["CAP_NET_BIND_SERVICE"]
    );
    assert_eq!(
        settings(&unit, "EnvironmentFile"),
        ["-/etc/ringmx/ringmx.env"]
    );
    // The spool is under the state directory, the one path the unit makes writable.
    let env = unit_environment(&unit);
    let spool = env
        .iter()
        .find(|(n, _)| n == "RINGMX_SPOOL")
        .map(|(_, v)| v.as_str());
    assert_eq!(spool, Some("/var/lib/ringmx/spool"));
    assert_eq!(settings(&unit, "StateDirectory"), ["ringmx"]);
    // The unit's settings are ones ringmx accepts.
    let config = ringmx::config::from_vars(env, vec![0, 1], "mx.example.com")
        .unwrap_or_else(|e| panic!("the unit's Environment= is refused: {e}"));
    // systemd's SIGKILL must not come before the end of the shutdown grace.
    let stop = settings(&unit, "TimeoutStopSec")[0]
        .trim_end_matches('s')
        .parse::<u64>()
        .unwrap();
    assert!(
        Duration::from_secs(stop) >= config.shutdown_grace + Duration::from_secs(10),
        "TimeoutStopSec={stop}s against a grace of {:?}",
        config.shutdown_grace
    );
    // Two descriptors per connection (socket, message file) and room for the rest.
    let nofile: usize = settings(&unit, "LimitNOFILE")[0].parse().unwrap();
    assert!(
        nofile >= 2 * config.max_connections + 1024,
        "LimitNOFILE={nofile}"
    );
    // The system-call filter keeps io_uring.
    let filter = settings(&unit, "SystemCallFilter").join(" ");
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(filter.contains(call), "{call} missing from {filter}");
    }
    assert!(!filter.contains("~@aio") && !filter.contains("~@system-service"));
    assert_eq!(settings(&unit, "SystemCallErrorNumber"), ["EPERM"]);
}

#[test]
fn env_file_names_every_variable_with_an_accepted_value() {
    let file = env_file();
    let mut lines = Vec::new();
    for line in file.lines() {
        if let Some(pair) = line.strip_prefix("#RINGMX_") {
            let (name, value) = pair.split_once('=').expect("#NAME=value");
            lines.push((format!("RINGMX_{name}"), value.to_string()));
        } else {
            // Nothing is set by the file as shipped: every setting line is commented out.
            assert!(
                line.is_empty() || line.starts_with('#'),
                "uncommented line: {line}"
            );
        }
    }
    for variable in ringmx::config::VARIABLES {
        let name = variable.name;
        assert!(
            lines.iter().any(|(n, _)| n == name),
            "{name} is not in dist/ringmx.env"
        );
    }
    // Uncommented, every line ringmx knows is accepted, alone and all together (except the
    // certificate and key, whose example paths exist only on an operator's host).
    let known: Vec<(String, String)> = lines
        .into_iter()
        .filter(|(n, _)| ringmx::config::VARIABLES.iter().any(|v| v.name == n))
        .filter(|(n, _)| !n.starts_with("RINGMX_TLS_CERT") && !n.starts_with("RINGMX_TLS_KEY"))
        .collect();
    for pair in &known {
        ringmx::config::from_vars([pair.clone()], vec![0, 1], "mx.example.com")
            .unwrap_or_else(|e| panic!("dist/ringmx.env: {e}"));
    }
    ringmx::config::from_vars(known, vec![0, 1], "mx.example.com")
        .unwrap_or_else(|e| panic!("dist/ringmx.env as a whole: {e}"));
}
