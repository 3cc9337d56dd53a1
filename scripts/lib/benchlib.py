"""Helpers shared by scripts/bench and scripts/compare: /proc readers, host facts, durations,
and the one summary of a ringmx-loadgen JSON result both scripts use. Standard library only."""

import datetime
import os
import platform
import re
import shutil
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


def median(values):
    """The median of numbers (the mean of the middle two for an even count); None when empty."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def median_summary(summaries):
    """Per figure, the median over repeated runs' summaries (each figure on its own)."""
    out = {}
    for key in summaries[0]:
        vals = [s.get(key) for s in summaries]
        nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
        m = median(nums) if nums else None
        out[key] = round(m, 3) if isinstance(m, float) else m
    return out


def spread(summaries):
    """Per figure, the range over repeated runs: min, max, and (max - min) / median as `rel`.
    scripts/compare calls a difference between two cells real only when their ranges do not
    overlap."""
    out = {}
    for key in summaries[0]:
        nums = [s.get(key) for s in summaries]
        nums = [v for v in nums if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not nums:
            continue
        m = median(nums)
        out[key] = {"n": len(nums), "min": min(nums), "max": max(nums),
                    "rel": round((max(nums) - min(nums)) / m, 4) if m else None}
    return out


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


# ---------------------------------------------------------------------------------------------
# Kernel facts: what decides an SMTP server's speed on Linux beyond the kernel release string.
# scripts/compare prints the ones that differ between result files; a fact a file lacks is
# unknown there, never a difference.

# IORING_FEAT_* bits (include/uapi/linux/io_uring.h), in bit order.
IORING_FEATURES = ["SINGLE_MMAP", "NODROP", "SUBMIT_STABLE", "RW_CUR_POS", "CUR_PERSONALITY",
                   "FAST_POLL", "POLL_32BITS", "SQPOLL_NONFIXED", "EXT_ARG", "NATIVE_WORKERS",
                   "RSRC_TAGS", "CQE_SKIP", "LINKED_FILE", "REG_REG_RING", "RECVSEND_BUNDLE",
                   "MIN_TIMEOUT", "RW_ATTR", "NO_IOWAIT"]
# IORING_SETUP_* flags worth knowing for a server like ringmx (it asks for the first two).
IORING_SETUP_FLAGS = [("COOP_TASKRUN", 1 << 8), ("SINGLE_ISSUER", 1 << 12),
                      ("TASKRUN_FLAG", (1 << 9) | (1 << 8)), ("SUBMIT_ALL", 1 << 7),
                      ("DEFER_TASKRUN", (1 << 13) | (1 << 12)), ("NO_SQARRAY", 1 << 16)]
RINGMX_SETUP_FLAGS = ["COOP_TASKRUN", "SINGLE_ISSUER"]  # src/driver/uring.rs
# IORING_OP_* by number, for the probe's list.
IORING_OPS = ["NOP", "READV", "WRITEV", "FSYNC", "READ_FIXED", "WRITE_FIXED", "POLL_ADD",
              "POLL_REMOVE", "SYNC_FILE_RANGE", "SENDMSG", "RECVMSG", "TIMEOUT", "TIMEOUT_REMOVE",
              "ACCEPT", "ASYNC_CANCEL", "LINK_TIMEOUT", "CONNECT", "FALLOCATE", "OPENAT", "CLOSE",
              "FILES_UPDATE", "STATX", "READ", "WRITE", "FADVISE", "MADVISE", "SEND", "RECV",
              "OPENAT2", "EPOLL_CTL", "SPLICE", "PROVIDE_BUFFERS", "REMOVE_BUFFERS", "TEE",
              "SHUTDOWN", "RENAMEAT", "UNLINKAT", "MKDIRAT", "SYMLINKAT", "LINKAT", "MSG_RING",
              "FSETXATTR", "SETXATTR", "FGETXATTR", "GETXATTR", "SOCKET", "URING_CMD", "SEND_ZC",
              "SENDMSG_ZC", "READ_MULTISHOT", "WAITID", "FUTEX_WAIT", "FUTEX_WAKE", "FUTEX_WAITV",
              "FIXED_FD_INSTALL", "FTRUNCATE", "BIND", "LISTEN", "RECV_ZC", "EPOLL_WAIT",
              "READV_FIXED", "WRITEV_FIXED", "PIPE"]
SYS_IO_URING_SETUP = {"x86_64": 425, "aarch64": 425}
SYS_IO_URING_REGISTER = {"x86_64": 427, "aarch64": 427}
IORING_REGISTER_PROBE = 8


def io_uring_facts():
    """io_uring as this kernel offers it: the sysctl, features from io_uring_setup, which setup
    flags it accepts (a probe: ringmx's log does not name the flags it got) and the opcodes
    IORING_REGISTER_PROBE reports. Standard library only (ctypes)."""
    import ctypes
    import errno as errno_mod
    out = {"disabled_sysctl": _read("/proc/sys/kernel/io_uring_disabled")}
    arch = platform.machine()
    if arch not in SYS_IO_URING_SETUP:
        out["error"] = f"no syscall numbers for {arch}"
        return out
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long

    def setup(flags):
        params = ctypes.create_string_buffer(120)  # struct io_uring_params
        ctypes.memmove(ctypes.addressof(params) + 8, ctypes.byref(ctypes.c_uint32(flags)), 4)
        fd = libc.syscall(SYS_IO_URING_SETUP[arch], ctypes.c_uint(8), params)
        if fd < 0:
            return None, ctypes.get_errno(), params
        return fd, 0, params

    fd, err, params = setup(0)
    if fd is None:
        out["setup"] = f"failed: {errno_mod.errorcode.get(err, err)}"
        return out
    out["setup"] = "ok"
    features = ctypes.c_uint32.from_buffer_copy(params.raw[20:24]).value
    out["features_hex"] = hex(features)
    out["features"] = [n for i, n in enumerate(IORING_FEATURES) if features & (1 << i)]
    unknown = features & ~((1 << len(IORING_FEATURES)) - 1)
    if unknown:
        out["features"].append(f"unknown:{hex(unknown)}")
    nops = 256
    probe = ctypes.create_string_buffer(16 + 8 * nops)
    r = libc.syscall(SYS_IO_URING_REGISTER[arch], ctypes.c_uint(fd), ctypes.c_uint(IORING_REGISTER_PROBE),
                     probe, ctypes.c_uint(nops))
    if r < 0:
        out["probe"] = f"failed: {errno_mod.errorcode.get(ctypes.get_errno(), '?')}"
    else:
        raw = probe.raw
        ops_len = raw[1]
        supported = []
        for i in range(ops_len):
            op, _resv, flags = raw[16 + 8 * i], raw[17 + 8 * i], int.from_bytes(raw[18 + 8 * i:20 + 8 * i], "little")
            if flags & 1:  # IO_URING_OP_SUPPORTED
                supported.append(IORING_OPS[op] if op < len(IORING_OPS) else f"op{op}")
        out["last_op"] = raw[0]
        out["ops_supported"] = len(supported)
        out["ops"] = supported
    os.close(fd)
    accepted = []
    for name, flag in IORING_SETUP_FLAGS:
        f2, _e, _p = setup(flag)
        if f2 is not None:
            accepted.append(name)
            os.close(f2)
    out["setup_flags_accepted"] = accepted
    out["ringmx_setup_flags"] = [f for f in RINGMX_SETUP_FLAGS if f in accepted]
    out["ringmx_setup_flags_source"] = ("probe: the flags ringmx asks for (src/driver/uring.rs) that "
                                        "this kernel accepts; ringmx does not log the flags it got")
    return out


def vulnerabilities():
    """/sys/devices/system/cpu/vulnerabilities/*: the mitigations in force, by name."""
    d = "/sys/devices/system/cpu/vulnerabilities"
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return None
    return {n: _read(os.path.join(d, n)) for n in names}


def governor():
    """The CPU frequency governor(s), or a note when the kernel exposes no cpufreq (a VM)."""
    govs = set()
    base = "/sys/devices/system/cpu"
    for name in os.listdir(base):
        if re.fullmatch(r"cpu\d+", name):
            g = _read(os.path.join(base, name, "cpufreq", "scaling_governor"))
            if g:
                govs.add(g)
    return ",".join(sorted(govs)) if govs else "none (no cpufreq)"


def virtualization():
    """Whether this runs in a VM and which: the CPU's hypervisor flag, and systemd-detect-virt's
    answers for VMs and for containers (each None when unknown)."""
    flags = re.search(r"^flags\s*:\s*(.*)$", _read("/proc/cpuinfo", "") or "", re.M)

    def detect(opt):
        if not shutil.which("systemd-detect-virt"):
            return None
        try:
            r = subprocess.run(["systemd-detect-virt", opt], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() or None  # "none" comes with exit status 1

    return {
        "hypervisor_flag": None if flags is None else " hypervisor" in f" {flags.group(1)}",
        "vm": detect("--vm"),
        "container": detect("--container"),
    }


def mount_of(path):
    """(mount point, fstype, device, options) of the mount holding path (longest prefix)."""
    path = os.path.realpath(path)
    best = ("", "?", "?", "")
    for line in (_read("/proc/mounts", "") or "").splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
            best = (mnt, parts[2], parts[0], parts[3])
    return best


def spool_facts(spool_dir):
    """The spool's file system: type, mount options and, for ext4, whether it has a journal
    (a journalled ext4 has an entry under /proc/fs/jbd2/ named after its device)."""
    mnt, fstype, device, options = mount_of(spool_dir)
    out = {"filesystem": fstype, "mount_options": options, "device": device, "mount_point": mnt}
    if fstype in ("ext3", "ext4"):
        dev = os.path.basename(os.path.realpath(device)) if device.startswith("/dev/") else device
        try:
            journals = os.listdir("/proc/fs/jbd2")
            out["journal"] = any(j.rsplit("-", 1)[0] == dev for j in journals)
        except OSError:
            out["journal"] = None
    return out


def net_facts():
    """The network settings that bound a loopback benchmark."""
    keys = {"somaxconn": "net/core/somaxconn", "tcp_rmem": "net/ipv4/tcp_rmem",
            "tcp_wmem": "net/ipv4/tcp_wmem", "busy_poll": "net/core/busy_poll",
            "busy_read": "net/core/busy_read", "tcp_max_syn_backlog": "net/ipv4/tcp_max_syn_backlog"}
    return {k: re.sub(r"\s+", " ", _read(f"/proc/sys/{p}") or "") or None for k, p in keys.items()}


def listen_backlog(port):
    """The backlog of the socket listening on 127.0.0.1:port as the kernel holds it (`ss`
    shows it as Send-Q: what the server asked for, capped at net.core.somaxconn)."""
    out = _cmd(["ss", "-ltnH", f"sport = :{port}"])
    if not out:
        return None
    fields = out.splitlines()[0].split()
    return int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else None


def cargo_profile(repo, profile="release"):
    """The [profile.NAME] settings of the workspace's Cargo.toml, as text key -> value."""
    text = _read(os.path.join(repo, "Cargo.toml"), "") or ""
    m = re.search(r"^\[profile\." + re.escape(profile) + r"\]\s*\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if not m:
        return {}
    out = {}
    for line in m.group(1).splitlines():
        kv = re.match(r"\s*([A-Za-z0-9_-]+)\s*=\s*(.+?)\s*$", line)
        if kv:
            out[kv.group(1)] = kv.group(2).strip('"')
    return out


def kernel_facts(spool_dir):
    """Every fact scripts/compare looks at, grouped; each is None/absent where unknown."""
    cmdline = _read("/proc/cmdline", "") or ""
    m = re.search(r"(?:^|\s)mitigations=(\S+)", cmdline)
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        glibc = None
    return {
        "io_uring": io_uring_facts(),
        "vulnerabilities": vulnerabilities(),
        "mitigations_boot_option": m.group(1) if m else "(not set: kernel default)",
        "cpu_governor": governor(),
        "virtualization": virtualization(),
        "spool": spool_facts(spool_dir),
        "net": net_facts(),
        "glibc": glibc,
    }
