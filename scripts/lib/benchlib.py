"""Helpers shared by scripts/bench and scripts/compare: /proc readers, host facts, durations,
and the one summary of a ringmx-loadgen JSON result both scripts use. Standard library only."""

import datetime
import os
import platform
import re
import subprocess

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Processes whose presence makes a benchmark noisy on a shared build machine.
BUSY_NAMES = ("cargo", "rustc", "cc1", "cc1plus", "ld", "clippy-driver", "rustdoc")


def proc_stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (so index 0 is field 3, the state)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2:].split()


def proc_cpu_s(pid, children=False):
    """utime+stime of a process in seconds (all its threads); with children, plus cutime+cstime
    (children it has reaped). 0 when the process is gone."""
    try:
        f = proc_stat_fields(pid)
    except (OSError, ValueError):
        return 0.0
    ticks = int(f[11]) + int(f[12])  # utime, stime (fields 14, 15)
    if children:
        ticks += int(f[13]) + int(f[14])  # cutime, cstime (fields 16, 17)
    return ticks / CLK_TCK


def alive(pid):
    """Whether pid runs (a zombie waiting for its reaper does not)."""
    try:
        return pid > 0 and proc_stat_fields(pid)[0] != "Z"
    except (OSError, ValueError, IndexError):
        return False


def tree_pids(root):
    """root and all its descendants that are alive now."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                parent[int(name)] = int(proc_stat_fields(name)[1])
            except (OSError, ValueError, IndexError):
                pass
    kids = {}
    for pid, ppid in parent.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo and len(out) < 100_000:  # bounded: a pid table is never that big
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def interpolate(samples, t):
    """Value at wall time t from (time, value) samples sorted by time, linear in between."""
    if not samples:
        return 0.0
    if t <= samples[0][0]:
        return samples[0][1]
    for (t0, v0), (t1, v1) in zip(samples, samples[1:]):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return samples[-1][1]


def parse_duration_s(text):
    """ringmx-loadgen's duration syntax: 500ms, 30s, 2m, 1h (a bare number is seconds)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*", text)
    if not m:
        raise ValueError(f"bad duration {text!r}: use e.g. 500ms, 3s, 2m")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def rfc3339_to_epoch(text):
    """Seconds since the epoch for an RFC 3339 time (any fraction length, Z or an offset)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text.strip())
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    base = datetime.datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.timestamp() + (float(m.group(2)) if m.group(2) else 0.0)


def summary(lg, server_cpu_us_per_msg=None):
    """The figures compare and the README quote, from one ringmx-loadgen JSON result."""
    lat = lg.get("latency_us", {}).get("message", {})
    c = lg.get("counters", {})

    def ms(key):
        v = lat.get(key)
        return round(v / 1000.0, 3) if v is not None and lat.get("count") else None

    return {
        "msgs_per_s": round(lg.get("messages_per_s", 0.0), 1),
        "mb_per_s": round(lg.get("megabytes_per_s", 0.0), 2),
        "sessions_per_s": round(lg.get("sessions_per_s", 0.0), 1),
        "p50_ms": ms("p50"),
        "p99_ms": ms("p99"),
        "p999_ms": ms("p99_9"),
        "max_ms": ms("max"),
        "accepted": c.get("messages_accepted"),
        "refused": c.get("messages_refused"),
        "failed": c.get("messages_failed"),
        "server_cpu_us_per_msg": server_cpu_us_per_msg,
    }


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def busy_processes():
    """How many compiler/cargo processes run now (other people's builds on a shared machine)."""
    n = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if comm in BUSY_NAMES:
                n[comm] = n.get(comm, 0) + 1
    return n


def _read(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def _cmd(argv, cwd=None):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd)
        return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def filesystem_of(path):
    """(fstype, device) of the mount that holds path, from /proc/mounts (longest prefix)."""
    path = os.path.realpath(path)
    best = ("", "?", "?")
    for line in (_read("/proc/mounts", "") or "").splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best[0]):
            best = (mnt, parts[2], parts[0])
    return best[1], best[2]


def host_facts(spool_dir):
    """Where the benchmark ran, in the same terms as ringmx-loadgen's `host` object, plus what a
    reader needs to judge the figures: load, other builds, the spool's filesystem."""
    cpuinfo = _read("/proc/cpuinfo", "") or ""
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo", "") or "", re.M)
    osr = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', _read("/etc/os-release", "") or "", re.M)
    fstype, device = filesystem_of(spool_dir)
    uname = platform.uname()
    return {
        "hostname": socket_hostname(),
        "kernel_release": uname.release,
        "kernel_version": uname.version,
        "machine": uname.machine,
        "os": osr.group(1) if osr else None,
        "cpu_model": model.group(1).strip() if model else None,
        "cores": len(os.sched_getaffinity(0)),
        "cores_online": os.cpu_count(),
        "virtualized": bool(flags and " hypervisor" in f" {flags.group(1)}"),
        "memory_total_bytes": int(mem.group(1)) * 1024 if mem else None,
        "io_uring_disabled": _read("/proc/sys/kernel/io_uring_disabled"),
        "spool_filesystem": fstype,
        "spool_device": device,
        "loadavg_start": loadavg(),
        "busy_processes_start": busy_processes(),
        "rustc": _cmd(["rustc", "-V"]),
        "python": platform.python_version(),
    }


def socket_hostname():
    import socket
    return socket.gethostname()


def ringmx_facts(repo, server_bin):
    """Which ringmx was measured: crate version, git commit and whether the tree was dirty."""
    version = None
    cargo = _read(os.path.join(repo, "Cargo.toml"), "") or ""
    m = re.search(r'^\[package\][^\[]*?^version\s*=\s*"([^"]+)"', cargo, re.M | re.S)
    if m:
        version = m.group(1)
    pinned = _read(os.path.join(repo, ".bench-commit"))  # an exported tree names its commit
    if pinned:
        commit, status = pinned, ""
    else:
        status = _cmd(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
        commit = _cmd(["git", "rev-parse", "HEAD"], cwd=repo)
    try:
        built = datetime.datetime.fromtimestamp(os.stat(server_bin).st_mtime, datetime.timezone.utc)
        built = built.isoformat(timespec="seconds")
    except OSError:
        built = None
    return {
        "version": version,
        "git_commit": commit,
        "git_dirty": bool(status) if status is not None else None,
        "binary": server_bin,
        "binary_mtime": built,
    }


def postconf_default(name):
    """A Postfix built-in default (`postconf -d NAME`), or None without Postfix."""
    out = _cmd(["postconf", "-d", "-h", name])
    return out or None
