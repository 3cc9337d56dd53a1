//! Facts about the client's host that explain a difference between kernels (CPU vulnerability
//! mitigations, frequency governor, virtualisation, network sysctls, io_uring availability,
//! glibc), recorded under `host.facts` in the JSON result with the same names `scripts/bench`
//! uses, so `scripts/compare` lists the ones that differ between any two results. Each is read
//! from /proc or /sys; one that cannot be read is absent (unknown), never a guess.
use serde::Serialize;
use std::collections::BTreeMap;

/// The facts, grouped as in scripts/bench's `host.facts`.
#[derive(Serialize)]
pub struct Facts {
    io_uring: IoUring,
    #[serde(skip_serializing_if = "Option::is_none")]
    vulnerabilities: Option<BTreeMap<String, String>>,
    mitigations_boot_option: String,
    cpu_governor: String,
    virtualization: Virtualization,
    net: BTreeMap<&'static str, Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    glibc: Option<String>,
}

#[derive(Serialize)]
struct IoUring {
    /// `kernel.io_uring_disabled` (0 allowed, 1 privileged only, 2 off).
    disabled_sysctl: Option<String>,
}

#[derive(Serialize)]
struct Virtualization {
    /// The CPU's hypervisor flag (/proc/cpuinfo).
    hypervisor_flag: Option<bool>,
}

/// A file's content, trimmed, or None.
fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Reads every fact from this host.
pub fn collect() -> Facts {
    let vulnerabilities = std::fs::read_dir("/sys/devices/system/cpu/vulnerabilities")
        .ok()
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    read(&e.path().to_string_lossy()).map(|v| (name, v))
                })
                .collect()
        });
    let cmdline = read("/proc/cmdline").unwrap_or_default();
    let mitigations_boot_option = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("mitigations="))
        .map_or("(not set: kernel default)".to_string(), str::to_string);
    let mut governors: Vec<String> = std::fs::read_dir("/sys/devices/system/cpu")
        .map(|dir| {
            dir.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix("cpu")
                        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                })
                .filter_map(|e| read(&format!("{}/cpufreq/scaling_governor", e.path().display())))
                .collect()
        })
        .unwrap_or_default();
    governors.sort();
    governors.dedup();
    let cpu_governor = if governors.is_empty() {
        "none (no cpufreq)".to_string()
    } else {
        governors.join(",")
    };
    let hypervisor_flag = read("/proc/cpuinfo").and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("flags"))
            .map(|l| l.split_whitespace().any(|f| f == "hypervisor"))
    });
    let sysctl = |p: &str| {
        read(&format!("/proc/sys/{p}")).map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    let net = [
        ("somaxconn", "net/core/somaxconn"),
        ("tcp_rmem", "net/ipv4/tcp_rmem"),
        ("tcp_wmem", "net/ipv4/tcp_wmem"),
        ("busy_poll", "net/core/busy_poll"),
        ("busy_read", "net/core/busy_read"),
        ("tcp_max_syn_backlog", "net/ipv4/tcp_max_syn_backlog"),
    ]
    .into_iter()
    .map(|(k, p)| (k, sysctl(p)))
    .collect();
    Facts {
        io_uring: IoUring {
            disabled_sysctl: read("/proc/sys/kernel/io_uring_disabled"),
        },
        vulnerabilities,
        mitigations_boot_option,
        cpu_governor,
        virtualization: Virtualization { hypervisor_flag },
        net,
        glibc: glibc(),
    }
}

/// glibc's version, as scripts/bench records it ("glibc 2.36"), or None on another libc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn glibc() -> Option<String> {
    // SAFETY: gnu_get_libc_version takes no arguments and returns a pointer to a static,
    // NUL-terminated string that lives as long as the process.
    let v = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
    Some(format!("glibc {}", v.to_string_lossy()))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn glibc() -> Option<String> {
    None
}
