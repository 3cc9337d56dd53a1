//! Configuration from `RINGMX_*` environment variables (SPEC §3); the only reader of the
//! environment in ringmx.
//!
//! `VARIABLES` is the one table of settings: each entry owns its name, its default, its help
//! text and its parser (with the bounds, each with its reason), so `from_vars`, `ringmx
//! --help`, the README table (checked by a test) and the unknown-variable check cannot drift
//! apart. `from_env` gathers the raw inputs (the variables, the CPUs this process may run on,
//! the system host name) and hands them to `from_vars`, which is pure and unit-tested. A bad
//! value or an unknown `RINGMX_*` name (a typo must never fall back to a default silently) is
//! a `ConfigError` whose `Display` is one line naming the variable, the value and what is
//! accepted.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::log::{Level, LogFormat};
use crate::scan::BareLf;

/// The prefix that marks a variable as ringmx's.
const PREFIX: &str = "RINGMX_";
/// Listen addresses: more than a host has interfaces is a mistake.
const LISTEN_ADDRESSES_MAX: usize = 64;
/// Shards: far past any CPU count; each costs a thread and a ring.
const SHARDS_MAX: u64 = 1024;
/// The smallest message size limit: room for headers and a line of text.
const MESSAGE_SIZE_MIN: u64 = 1024;
/// The largest message size limit: 2 GiB, past which offsets and memory plans break.
const MESSAGE_SIZE_MAX: u64 = 2 * 1024 * 1024 * 1024;
/// Recipients per transaction: the envelope lives in memory.
const RECIPIENTS_MAX: u64 = 100_000;
/// Connections: bounded by descriptors long before this.
const CONNECTIONS_MAX: u64 = 1_000_000;
/// Timeouts: a day is already far past RFC 5321's advice.
const TIMEOUT_SECS_MAX: u64 = 86_400;
/// Shutdown grace: an hour; supervisors kill long before.
const SHUTDOWN_GRACE_SECS_MAX: u64 = 3_600;
/// Exempt networks: a list, not a routing table.
const LIMIT_EXEMPT_MAX: usize = 1_024;
/// Error and junk counts per session.
const SESSION_COUNT_MAX: u64 = 1_000_000;
/// Minimum data rate: 1 GB/s, past which no client could keep its deadline.
const MIN_DATA_RATE_MAX: u64 = 1_000_000_000;
/// TLS handshake deadline: past 10 minutes a stalled handshake only holds a slot.
const TLS_HANDSHAKE_SECS_MAX: u64 = 600;
/// Greeting delay: five minutes, RFC 5321's initial 220 timeout.
const GREET_DELAY_MS_MAX: u64 = 300_000;
/// Accepted domains: a list, not a database.
const DOMAINS_MAX: usize = 10_000;
/// io_uring queue sizes the kernel takes (powers of two).
const RING_ENTRIES_MIN: u64 = 8;
const RING_ENTRIES_MAX: u64 = 32_768;
/// PROXY header timeout: a balancer sends its header at once; a minute is plenty.
const PROXY_TIMEOUT_SECS_MAX: u64 = 60;
/// NATS server URLs: each is a separate connection attempt target on reconnect.
const NATS_URLS_MAX: usize = 64;
/// NATS subject length: nats-server has no hard limit, but a subject is sent with every
/// message and a long one is a typo, not a design.
const NATS_SUBJECT_BYTES_MAX: usize = 255;
/// Acknowledgement wait: at least 10 ms (a loopback round trip and a disk write), at most
/// 10 minutes, the time a client waits for the reply to its end of data (RFC 5321 4.5.3.2.6).
const NATS_ACK_TIMEOUT_MS_MIN: u64 = 10;
/// See `NATS_ACK_TIMEOUT_MS_MIN`.
const NATS_ACK_TIMEOUT_MS_MAX: u64 = 600_000;
/// Characters of a bad value quoted in an error line.
const ERROR_VALUE_CHARS_MAX: usize = 200;
/// The longest host name whose spool file names fit in 255 octets (NAME_MAX).
pub const HOSTNAME_SPOOL_MAX: usize =
    crate::delivery::maildir::FILE_NAME_MAX - crate::delivery::maildir::FILE_NAME_OVERHEAD;

/// One configuration variable.
pub struct Variable {
    pub name: &'static str,
    /// The default: a literal value (parsed like a value from the environment when the
    /// variable is unset) or, when `computed`, a description of how it is found at start-up.
    pub default: &'static str,
    /// The default is found at start-up (`Host`), not a literal value.
    pub computed: bool,
    /// What it means, for `--help` and the README.
    pub meaning: &'static str,
    /// Parses a value into the configuration being built; the error says what is accepted.
    apply: fn(&str, &mut ServerConfig) -> Result<(), String>,
}

/// Every variable, in SPEC §3's order. Entries are applied in this order.
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "RINGMX_LISTEN",
        default: "127.0.0.1:2525",
        computed: false,
        meaning: "comma-separated socket addresses, IPv4 and [IPv6]:port",
        apply: |s, c| {
            c.listen = parse_listen(s)?;
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_SHARDS",
        default: "CPUs this process may run on",
        computed: true,
        meaning: "shard threads, each with its own io_uring and SO_REUSEPORT listener per address",
        apply: |s, c| {
            c.shards = number(s, 1, SHARDS_MAX)? as usize;
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_PIN",
        default: "1",
        computed: false,
        meaning: "pin shard i to the i-th allowed CPU",
        apply: |s, c| {
            c.pin = flag(s)? && !c.cpus.is_empty();
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_HOSTNAME",
        default: "the system host name",
        computed: true,
        meaning: "name in the greeting, EHLO reply and Received header",
        apply: |s, c| {
            check_host_name(s)?;
            if s.len() > HOSTNAME_SPOOL_MAX {
                return Err(format!(
                    "at most {HOSTNAME_SPOOL_MAX} octets, so that spool file names \
                     (queue ID, PID and host name) stay within 255"
                ));
            }
            c.session.hostname = s.to_string();
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_SPOOL",
        default: "./spool",
        computed: false,
        meaning: "Maildir root; tmp/ and new/ are created if missing",
        apply: |s, c| {
            if s.is_empty() || s.chars().any(char::is_control) {
                return Err("expected a directory path without control characters".into());
            }
            c.spool = PathBuf::from(s);
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_DELIVERY",
        default: "maildir",
        computed: false,
        meaning: "maildir, jetstream (NATS JetStream) or discard (accept and drop, for benchmarks and sinks)",
        apply: |s, c| {
            let choices = [
                ("maildir", Delivery::Maildir),
                ("jetstream", Delivery::Jetstream),
                ("discard", Delivery::Discard),
            ];
            {
                c.delivery = one_of(s, &choices)?;
                Ok(())
            }
        },
    },
    Variable {
        name: "RINGMX_FSYNC",
        default: "1",
        computed: false,
        meaning: "0 skips fsync (benchmarks only: a crash can lose acknowledged mail); syncfs makes \
                  messages durable with syncfs(2) calls of the spool's file system shared by the \
                  messages that finish together (for a spool on a file system of its own)",
        apply: |s, c| {
            (c.fsync, c.syncfs) = if s.eq_ignore_ascii_case("syncfs") {
                (true, true)
            } else {
                (flag(s).map_err(|_| "expected 0, 1 or syncfs".to_string())?, false)
            };
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_MAX_MESSAGE_SIZE",
        default: "26214400",
        computed: false,
        meaning: "bytes; advertised as SIZE n",
        apply: |s, c| {
            c.session.max_message_size = number(s, MESSAGE_SIZE_MIN, MESSAGE_SIZE_MAX)?;
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_MAX_RECIPIENTS",
        default: "100",
        computed: false,
        meaning: "per transaction",
        apply: |s, c| {
            c.session.max_recipients = number(s, 1, RECIPIENTS_MAX)? as usize;
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_MAX_CONNECTIONS",
        default: "10000",
        computed: false,
        meaning: "whole server; past it new sessions get 421 4.3.2 and are closed",
        apply: |s, c| {
            c.max_connections = number(s, 1, CONNECTIONS_MAX)? as usize;
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_COMMAND_TIMEOUT_SECS",
        default: "300",
        computed: false,
        meaning: "idle time allowed while waiting for a command",
        apply: |s, c| {
            c.session.command_timeout = secs(number(s, 1, TIMEOUT_SECS_MAX)?);
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_DATA_TIMEOUT_SECS",
        default: "600",
        computed: false,
        meaning: "idle time allowed between reads of message data",
        apply: |s, c| {
            c.session.data_timeout = secs(number(s, 1, TIMEOUT_SECS_MAX)?);
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_SHUTDOWN_GRACE_SECS",
        default: "30",
        computed: false,
        meaning: "after SIGTERM/SIGINT, time given to transactions in flight",
        apply: |s, c| {
            c.shutdown_grace = secs(number(s, 0, SHUTDOWN_GRACE_SECS_MAX)?);
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_MAX_CONNECTIONS_PER_IP",
        default: "100",
        computed: false,
        meaning: "per client address; past it 421 4.7.0",
        apply: |s, c| {
            c.max_connections_per_ip = number(s, 1, CONNECTIONS_MAX)? as usize;
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_LIMIT_EXEMPT",
        default: "127.0.0.0/8,::1/128",
        computed: false,
        meaning: "client networks exempt from the per-IP limit (empty: none)",
        apply: |s, c| {
            c.limit_exempt = parse_nets(s)?;
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_MAX_ERRORS",
        default: "10",
        computed: false,
        meaning: "syntax/sequence errors per session; past it 421 4.7.0 and close",
        apply: |s, c| {
            c.session.max_errors = number(s, 0, SESSION_COUNT_MAX)? as u32;
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_MAX_JUNK_COMMANDS",
        default: "100",
        computed: false,
        meaning: "NOOP, RSET, VRFY, HELP, repeated HELO/EHLO and empty BDAT chunks per \
                  session; past it 421 4.7.0 and close",
        apply: |s, c| {
            c.session.max_junk_commands = number(s, 0, SESSION_COUNT_MAX)? as u32;
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_MIN_DATA_RATE",
        default: "500",
        computed: false,
        meaning:
            "bytes per extra second of DATA/BDAT deadline beyond RINGMX_DATA_TIMEOUT_SECS (0: off)",
        apply: |s, c| {
            c.session.min_data_rate = number(s, 0, MIN_DATA_RATE_MAX)?;
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_GREET_DELAY_MS",
        default: "0",
        computed: false,
        meaning: "wait before the 220 greeting (to catch early talkers)",
        apply: |s, c| {
            c.greet_delay = Duration::from_millis(number(s, 0, GREET_DELAY_MS_MAX)?);
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_REJECT_EARLY_TALKERS",
        default: "0",
        computed: false,
        meaning: "1: a client that sends before the greeting gets 554 5.5.1 and is closed",
        apply: |s, c| {
            c.reject_early_talkers = flag(s)?;
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_DOMAINS",
        default: "",
        computed: false,
        meaning: "comma-separated recipient domains accepted (empty: all); others get 550 5.7.1",
        apply: |s, c| {
            c.session.domains = parse_domains(s)?;
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_BARE_LF",
        default: "reject",
        computed: false,
        meaning: "reject or normalize",
        apply: |s, c| {
            let choices = [("reject", BareLf::Reject), ("normalize", BareLf::Normalize)];
            {
                c.session.bare_lf = one_of(s, &choices)?;
                Ok(())
            }
        },
    },
    Variable {
        name: "RINGMX_BACKEND",
        default: "auto",
        computed: false,
        meaning: "uring, epoll or auto (io_uring, else epoll with a warning that says why)",
        apply: |s, c| {
            let choices = [
                ("auto", Backend::Auto),
                ("uring", Backend::Uring),
                ("epoll", Backend::Epoll),
            ];
            {
                c.backend = one_of(s, &choices)?;
                Ok(())
            }
        },
    },
    Variable {
        name: "RINGMX_RING_ENTRIES",
        default: "1024",
        computed: false,
        meaning: "io_uring submission queue size per shard",
        apply: |s, c| match number(s, RING_ENTRIES_MIN, RING_ENTRIES_MAX) {
            Ok(n) if n.is_power_of_two() => {
                c.ring_entries = n as u32;
                Ok(())
            }
            _ => Err(format!(
                "expected a power of two from {RING_ENTRIES_MIN} to {RING_ENTRIES_MAX}"
            )),
        },
    },
    Variable {
        name: "RINGMX_LOG",
        default: "info",
        computed: false,
        meaning: "error, warn, info or debug",
        apply: |s, c| {
            c.log_level = s.parse::<Level>().map_err(|e| e.to_string())?;
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_LOG_FORMAT",
        default: "text",
        computed: false,
        meaning: "text or json (one JSON object per line, same events)",
        apply: |s, c| {
            c.log_format = one_of(s, &[("text", LogFormat::Text), ("json", LogFormat::Json)])?;
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_IPV6_PREFIX",
        default: "64",
        computed: false,
        meaning:
            "IPv6 clients are counted for the per-IP limit by this prefix (one /64 = one client)",
        apply: |s, c| {
            c.ipv6_prefix = number(s, 1, 128)? as u8;
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_TLS_CERT",
        default: "",
        computed: false,
        meaning: "PEM certificate chain for STARTTLS; set together with RINGMX_TLS_KEY",
        apply: |s, c| {
            c.tls = tls_path(s)?.map(|cert| TlsFiles {
                cert,
                key: PathBuf::new(),
            });
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_TLS_KEY",
        default: "",
        computed: false,
        meaning: "PEM private key for STARTTLS; set together with RINGMX_TLS_CERT",
        apply: |s, c| match (tls_path(s)?, c.tls.as_mut()) {
            (Some(key), Some(files)) => {
                files.key = key;
                Ok(())
            }
            (None, None) => Ok(()),
            (None, Some(_)) => {
                Err("unset while RINGMX_TLS_CERT is set; expected both or neither".into())
            }
            (Some(_), None) => {
                Err("set while RINGMX_TLS_CERT is unset; expected both or neither".into())
            }
        },
    },
    Variable {
        name: "RINGMX_TLS",
        default: "may",
        computed: false,
        meaning: "may (offer STARTTLS when a certificate is set) or off",
        apply: |s, c| {
            if !one_of(s, &[("may", true), ("off", false)])? {
                c.tls = None;
            }
            c.session.starttls = c.tls.is_some();
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_TLS_HANDSHAKE_TIMEOUT_SECS",
        default: "30",
        computed: false,
        meaning: "a TLS handshake that takes longer is dropped",
        apply: |s, c| {
            c.tls_handshake_timeout = secs(number(s, 1, TLS_HANDSHAKE_SECS_MAX)?);
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_PROXY_FROM",
        default: "",
        computed: false,
        meaning: "networks (CIDR list) whose connections must begin with a PROXY v1 or v2 header (empty: off)",
        apply: |s, c| {
            c.proxy_from = parse_nets(s)?;
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_NATS_URL",
        default: "nats://127.0.0.1:4222",
        computed: false,
        meaning: "with RINGMX_DELIVERY=jetstream: NATS server URLs, comma-separated",
        apply: |s, c| {
            c.nats.url = parse_nats_urls(s)?;
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_PROXY_TIMEOUT_SECS",
        default: "5",
        computed: false,
        meaning: "time allowed for that header",
        apply: |s, c| {
            c.proxy_timeout = secs(number(s, 1, PROXY_TIMEOUT_SECS_MAX)?);
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_NATS_SUBJECT",
        default: "ringmx.inbound",
        computed: false,
        meaning: "subject each accepted message is published to (no wildcards)",
        apply: |s, c| {
            check_nats_subject(s)?;
            c.nats.subject = s.to_string();
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_METRICS_LISTEN",
        default: "",
        computed: false,
        meaning: "address of the Prometheus endpoint, e.g. 127.0.0.1:9425 (empty: off)",
        apply: |s, c| {
            c.metrics_listen = if s.is_empty() {
                None
            } else {
                Some(s.parse::<SocketAddr>().map_err(|_| {
                    "expected an address:port such as 127.0.0.1:9425 or [::1]:9425, or empty \
                     for off"
                        .to_string()
                })?)
            };
            Ok(())
        },
    },
    Variable {
        name: "RINGMX_NATS_ACK_TIMEOUT_MS",
        default: "5000",
        computed: false,
        meaning: "no acknowledgement from the stream by then: 451 4.3.0",
        apply: |s, c| {
            c.nats.ack_timeout = Duration::from_millis(number(
                s,
                NATS_ACK_TIMEOUT_MS_MIN,
                NATS_ACK_TIMEOUT_MS_MAX,
            )?);
            Ok(())
        },
    },
];

/// A PEM file path for STARTTLS; empty means unset.
fn tls_path(s: &str) -> Result<Option<PathBuf>, String> {
    if s.chars().any(char::is_control) {
        return Err("expected a file path without control characters".into());
    }
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

/// Seconds as a `Duration`.
fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// What happens to an accepted message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Written to the Maildir spool and made durable before 250.
    Maildir,
    /// Published to a NATS JetStream stream and acknowledged by it before 250.
    Jetstream,
    /// Read and dropped (benchmarks and sinks).
    Discard,
}

impl Delivery {
    /// The name as written in `RINGMX_DELIVERY`.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Maildir => "maildir",
            Delivery::Jetstream => "jetstream",
            Delivery::Discard => "discard",
        }
    }
}

/// The I/O backend asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring when it can be set up, else epoll with a warning.
    Auto,
    /// io_uring or fail start-up.
    Uring,
    /// epoll only.
    Epoll,
}

/// An IP network in CIDR form, such as `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The network address (host bits zero when built by `new` or parsed).
    pub addr: IpAddr,
    /// Leading bits that must match: 0..=32 for IPv4, 0..=128 for IPv6.
    pub prefix: u8,
}

impl IpNet {
    /// The network `addr/prefix`, or None if the prefix is too long or host bits are set.
    /// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) becomes the IPv4 one (`10.0.0.0/8`).
    pub fn new(addr: IpAddr, prefix: u8) -> Option<IpNet> {
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > max {
            return None;
        }
        let net = IpNet { addr, prefix }.canonical();
        (net.masked() == net.addr).then_some(net)
    }

    /// Whether `ip` is in this network; an IPv4-mapped IPv6 address matches IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let net = self.canonical();
        match (net.addr, canonical_ip(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = mask_u32(net.prefix);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = mask_u128(net.prefix);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }

    /// The same network with an IPv4-mapped IPv6 address (prefix 96 or more) as IPv4.
    fn canonical(self) -> IpNet {
        match self.addr {
            IpAddr::V6(v6) if self.prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => IpNet {
                    addr: IpAddr::V4(v4),
                    prefix: self.prefix - 96,
                },
                None => self,
            },
            _ => self,
        }
    }

    /// The address with its host bits cleared.
    fn masked(self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_u32(self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_u128(self.prefix))),
        }
    }
}

impl fmt::Display for IpNet {
    /// Writes `addr/prefix`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    /// Parses `addr/prefix` or a bare address (a single host); the error says what is wrong.
    fn from_str(s: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match digits(p).and_then(|p| p.parse::<u8>().ok()) {
                Some(p) if p <= max => p,
                _ => return Err(format!("{s:?} has a prefix length that is not 0 to {max}")),
            },
        };
        IpNet::new(addr, prefix)
            .ok_or_else(|| format!("{s:?} has host bits set past the /{prefix}"))
    }
}

/// The client a per-address limit counts `ip` as: an IPv4-mapped IPv6 address as its IPv4
/// address, any other IPv6 address as its network of `ipv6_prefix` bits (a /64 is one client:
/// one host may hold all of it).
pub fn client_of(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask_u128(ipv6_prefix))),
        v4 => v4,
    }
}

/// The IPv4 address inside an IPv4-mapped IPv6 address, else the address itself.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// A 32-bit mask with the `prefix` leading bits set (prefix clamped to 32).
fn mask_u32(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// A 128-bit mask with the `prefix` leading bits set (prefix clamped to 128).
fn mask_u128(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => u128::MAX << (128 - u32::from(p.min(128))),
    }
}

/// `s` if it is 1 to 20 ASCII digits, so that `+5`, `-0`, `1e3` or `0x10` are refused.
fn digits(s: &str) -> Option<&str> {
    (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())).then_some(s)
}

/// The whole server's settings, built once at start-up by `from_env`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Addresses to listen on; each shard has its own SO_REUSEPORT socket per address.
    pub listen: Vec<SocketAddr>,
    /// Shard threads, 1..=1024.
    pub shards: usize,
    /// Pin shard i to `cpus[i % cpus.len()]`; always false when `cpus` is empty.
    pub pin: bool,
    /// The CPU ids this process may run on, ascending and without repeats.
    pub cpus: Vec<usize>,
    /// Maildir root.
    pub spool: PathBuf,
    /// What happens to accepted messages.
    pub delivery: Delivery,
    /// Whether messages are made durable before 250 (false only for benchmarks).
    pub fsync: bool,
    /// With `fsync`: by shared syncfs(2) calls of the spool's file system instead of a fsync per
    /// file and of `new/` (`RINGMX_FSYNC=syncfs`).
    pub syncfs: bool,
    /// Sessions open at once in the whole server.
    pub max_connections: usize,
    /// After SIGTERM/SIGINT, time given to transactions in flight.
    pub shutdown_grace: Duration,
    /// Sessions open at once from one client address.
    pub max_connections_per_ip: usize,
    /// Client networks the per-IP limit does not apply to.
    pub limit_exempt: Vec<IpNet>,
    /// IPv6 clients are one client per network of this prefix for the per-IP limit.
    pub ipv6_prefix: u8,
    /// Wait before the 220 greeting.
    pub greet_delay: Duration,
    /// Whether a client that sends before the greeting gets 554 5.5.1 and is closed.
    pub reject_early_talkers: bool,
    /// The I/O backend asked for.
    pub backend: Backend,
    /// io_uring submission queue entries per shard (a power of two).
    pub ring_entries: u32,
    /// The log level.
    pub log_level: Level,
    /// How log lines are written: text or JSON.
    pub log_format: LogFormat,
    /// Networks whose connections must begin with a PROXY header (empty: none).
    pub proxy_from: Vec<IpNet>,
    /// Time allowed for that header.
    pub proxy_timeout: Duration,
    /// Where the Prometheus endpoint listens (None: off).
    pub metrics_listen: Option<SocketAddr>,
    /// Where `RINGMX_DELIVERY=jetstream` publishes (read and checked whatever the delivery).
    pub nats: crate::delivery::jetstream::Settings,
    /// The certificate and key for STARTTLS; `None` when TLS is not offered.
    pub tls: Option<TlsFiles>,
    /// Time allowed for a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// The settings each SMTP session obeys.
    pub session: crate::proto::Config,
}

/// The PEM files STARTTLS serves (read at start-up and on every reload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A variable that stops start-up; `Display` is one line: `NAME="value": what is accepted`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable's name.
    name: String,
    /// The value it had (or the system's value it defaulted to).
    value: String,
    /// What is wrong and what is accepted.
    problem: String,
}

impl ConfigError {
    /// An error for `name` having `value`, with `problem` saying what is accepted.
    fn new(name: &str, value: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            name: name.to_string(),
            value: value.to_string(),
            problem: problem.into(),
        }
    }

    /// The variable's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The offending value.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for ConfigError {
    /// Writes `NAME="value": problem` on one line, the value escaped and cut if very long.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name: String = self.name.chars().flat_map(char::escape_debug).collect();
        let mut value: String = self.value.chars().take(ERROR_VALUE_CHARS_MAX).collect();
        if value.len() < self.value.len() {
            value.push('…');
        }
        write!(f, "{name}={value:?}: {}", self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// Reads the environment, the CPUs this process may run on and the host name, and builds the
/// configuration (see `from_vars`).
pub fn from_env() -> Result<ServerConfig, ConfigError> {
    use std::os::unix::ffi::OsStrExt as _;
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        if !name.as_bytes().starts_with(PREFIX.as_bytes()) {
            continue;
        }
        let lossy_name = name.to_string_lossy();
        let lossy_value = value.to_string_lossy();
        let (Some(name), Some(value)) = (name.to_str(), value.to_str()) else {
            return Err(ConfigError::new(
                &lossy_name,
                &lossy_value,
                "not valid UTF-8; expected a UTF-8 value",
            ));
        };
        vars.push((name.to_string(), value.to_string()));
    }
    from_vars(vars, allowed_cpus(), &system_hostname())
}

/// Builds the configuration from `vars` (all but `RINGMX_*` ignored; for a repeated name the
/// last wins), the allowed CPU ids (the default shard count and the pinning order) and the
/// system host name (the default `RINGMX_HOSTNAME`). Pure: reads nothing else.
pub fn from_vars<I: IntoIterator<Item = (String, String)>>(
    vars: I,
    cpus: Vec<usize>,
    system_hostname: &str,
) -> Result<ServerConfig, ConfigError> {
    let vars: BTreeMap<String, String> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(PREFIX))
        .collect();
    // Unknown names first: a typo is the likeliest reason a value seems ignored.
    for (name, value) in &vars {
        if known(name).is_none() {
            let problem = match suggest(name) {
                Some(near) => format!("unknown variable; did you mean {near}?"),
                None => format!(
                    "unknown variable; ringmx reads only the {} RINGMX_* variables of its spec",
                    VARIABLES.len()
                ),
            };
            return Err(ConfigError::new(name, value, problem));
        }
    }
    let mut cpus = cpus;
    cpus.sort_unstable();
    cpus.dedup();
    let default_shards = (cpus.len() as u64).clamp(1, SHARDS_MAX).to_string();
    let mut config = ServerConfig::unset(cpus);
    for variable in VARIABLES {
        let (value, problem_prefix) = match vars.get(variable.name) {
            Some(value) => (value.as_str(), ""),
            None if !variable.computed => (variable.default, ""),
            None => match variable.name {
                "RINGMX_SHARDS" => (default_shards.as_str(), ""),
                "RINGMX_HOSTNAME" => (
                    system_hostname,
                    "unset, and the system host name will not do: ",
                ),
                other => unreachable!("{other} has a computed default nobody computes"),
            },
        };
        (variable.apply)(value.trim(), &mut config).map_err(|problem| {
            ConfigError::new(variable.name, value, format!("{problem_prefix}{problem}"))
        })?;
    }
    Ok(config)
}

impl ServerConfig {
    /// A configuration with every variable still to apply: `from_vars` sets each field from
    /// its variable's value or default.
    fn unset(cpus: Vec<usize>) -> ServerConfig {
        ServerConfig {
            listen: Vec::new(),
            shards: 1,
            pin: false,
            cpus,
            spool: PathBuf::new(),
            delivery: Delivery::Maildir,
            fsync: true,
            syncfs: false,
            max_connections: 1,
            shutdown_grace: Duration::ZERO,
            max_connections_per_ip: 1,
            limit_exempt: Vec::new(),
            ipv6_prefix: 128,
            greet_delay: Duration::ZERO,
            reject_early_talkers: false,
            backend: Backend::Auto,
            ring_entries: RING_ENTRIES_MIN as u32,
            log_level: Level::Info,
            log_format: LogFormat::Text,
            proxy_from: Vec::new(),
            proxy_timeout: Duration::ZERO,
            metrics_listen: None,
            nats: crate::delivery::jetstream::Settings {
                url: String::new(),
                subject: String::new(),
                ack_timeout: Duration::ZERO,
            },
            tls: None,
            tls_handshake_timeout: Duration::ZERO,
            session: crate::proto::Config::default(),
        }
    }

    /// Whether a connection from `ip` must begin with a PROXY header.
    pub fn is_proxy_source(&self, ip: IpAddr) -> bool {
        self.proxy_from.iter().any(|net| net.contains(ip))
    }
}

/// The `VARIABLES` entry named `name`.
fn known(name: &str) -> Option<&'static Variable> {
    VARIABLES.iter().find(|variable| variable.name == name)
}

/// A whole number from `min` to `max`; the error says so.
fn number(s: &str, min: u64, max: u64) -> Result<u64, String> {
    digits(s)
        .and_then(|d| d.parse::<u64>().ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("expected a whole number from {min} to {max}"))
}

/// `0` (false) or `1` (true).
fn flag(s: &str) -> Result<bool, String> {
    match s {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err("expected 0 or 1".to_string()),
    }
}

/// One of the named choices, ignoring ASCII case; the error lists them.
fn one_of<T: Copy>(s: &str, choices: &[(&str, T)]) -> Result<T, String> {
    if let Some((_, value)) = choices
        .iter()
        .find(|(name, _)| s.eq_ignore_ascii_case(name))
    {
        return Ok(*value);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    Err(match names.split_last() {
        Some((last, [])) => format!("expected {last}"),
        Some((last, rest)) => format!("expected {} or {last}", rest.join(", ")),
        None => "expected nothing".to_string(),
    })
}

/// The items of a comma-separated list, trimmed; empty items are refused.
fn list_items<'a>(s: &'a str, max: usize, what: &str) -> Result<Vec<&'a str>, String> {
    let items: Vec<&str> = s.split(',').map(str::trim).collect();
    if items.len() > max {
        return Err(format!("expected at most {max} {what}, comma-separated"));
    }
    if items.iter().any(|item| item.is_empty()) {
        return Err(format!("empty item; expected {what}, comma-separated"));
    }
    Ok(items)
}

/// `RINGMX_LISTEN`: one or more distinct socket addresses, comma-separated.
fn parse_listen(s: &str) -> Result<Vec<SocketAddr>, String> {
    const WHAT: &str = "socket addresses such as 0.0.0.0:25 or [::]:25";
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for item in list_items(s, LISTEN_ADDRESSES_MAX, WHAT)? {
        let addr: SocketAddr = item
            .parse()
            .map_err(|_| format!("{item:?} is not an address:port; expected {WHAT}"))?;
        if addrs.contains(&addr) {
            return Err(format!(
                "{item:?} is listed twice; expected distinct {WHAT}"
            ));
        }
        addrs.push(addr);
    }
    Ok(addrs)
}

/// `RINGMX_NATS_URL`: one or more NATS server URLs (`nats://host:port`, `tls://host:port` or
/// `host:port`), comma-separated, kept as written (the client library takes the list).
fn parse_nats_urls(s: &str) -> Result<String, String> {
    const WHAT: &str = "NATS URLs such as nats://127.0.0.1:4222";
    let items = list_items(s, NATS_URLS_MAX, WHAT)?;
    for item in &items {
        if !item.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{item:?} holds spaces or control or non-ASCII characters; expected {WHAT}"
            ));
        }
        if let Err(e) = item.parse::<async_nats::ServerAddr>() {
            return Err(format!("{item:?} is not a NATS URL ({e}); expected {WHAT}"));
        }
    }
    Ok(items.join(","))
}

/// `RINGMX_NATS_SUBJECT`: a literal NATS subject: dot-separated non-empty tokens of printable
/// ASCII without spaces, and no wildcard token (`*`, `>`), since messages are published to it.
fn check_nats_subject(s: &str) -> Result<(), String> {
    const WHAT: &str = "a subject such as ringmx.inbound (dot-separated tokens, no wildcards)";
    if s.is_empty() || s.len() > NATS_SUBJECT_BYTES_MAX {
        return Err(format!(
            "expected 1 to {NATS_SUBJECT_BYTES_MAX} bytes: {WHAT}"
        ));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "spaces and control or non-ASCII characters are not allowed; expected {WHAT}"
        ));
    }
    if s.split('.')
        .any(|token| token.is_empty() || token == "*" || token == ">")
    {
        return Err(format!("empty or wildcard token; expected {WHAT}"));
    }
    Ok(())
}

/// `RINGMX_LIMIT_EXEMPT`: CIDR networks, comma-separated; empty means none.
fn parse_nets(s: &str) -> Result<Vec<IpNet>, String> {
    const WHAT: &str = "networks such as 10.0.0.0/8 or 2001:db8::/32";
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let mut nets = Vec::new();
    for item in list_items(s, LIMIT_EXEMPT_MAX, WHAT)? {
        let net: IpNet = item.parse().map_err(|e| format!("{e}; expected {WHAT}"))?;
        if !nets.contains(&net) {
            nets.push(net);
        }
    }
    Ok(nets)
}

/// `RINGMX_DOMAINS`: domain names, comma-separated, lowercased and without repeats; empty
/// means all.
fn parse_domains(s: &str) -> Result<Vec<String>, String> {
    const WHAT: &str = "domain names such as example.com";
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let mut domains: Vec<String> = Vec::new();
    for item in list_items(s, DOMAINS_MAX, WHAT)? {
        check_host_name(item).map_err(|e| format!("{item:?}: {e}"))?;
        let domain = item.to_ascii_lowercase();
        if !domains.contains(&domain) {
            domains.push(domain);
        }
    }
    Ok(domains)
}

/// Checks that `name` is a plausible DNS host name: dot-separated labels of 1 to 63 letters,
/// digits and hyphens, no hyphen at either end of a label, 253 characters in all, not an IP.
fn check_host_name(name: &str) -> Result<(), String> {
    const ACCEPTED: &str = "expected a host name such as mx.example.com (letters, digits, \
                            hyphens; dot-separated labels of 1 to 63; at most 253 in all)";
    let plausible = !name.is_empty()
        && name.len() <= 253
        && name.parse::<Ipv4Addr>().is_err()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if plausible {
        Ok(())
    } else {
        Err(ACCEPTED.to_string())
    }
}

/// The known variable nearest to the unknown `name`, if it is close enough to be a typo or
/// `name` is a known one with a word added (`RINGMX_LOG_LEVEL` for `RINGMX_LOG`).
fn suggest(name: &str) -> Option<&'static str> {
    // Names are short; a very long one is no typo and would make the distance costly.
    const NAME_LEN_MAX: usize = 64;
    if name.len() > NAME_LEN_MAX {
        return None;
    }
    let typed = name.to_ascii_uppercase();
    let suffix_len = typed.len().saturating_sub(PREFIX.len());
    let threshold = (suffix_len / 3).max(2);
    VARIABLES
        .iter()
        .map(|variable| {
            let known = variable.name;
            (levenshtein(typed.as_bytes(), known.as_bytes()), known)
        })
        .filter(|(distance, known)| {
            *distance <= threshold
                || typed
                    .strip_prefix(known)
                    .is_some_and(|r| r.starts_with('_'))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

/// The edit distance (insertions, deletions, substitutions) between two byte strings.
fn levenshtein(a: &[u8], b: &[u8]) -> usize {
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The CPU ids this process may run on (sched_getaffinity), else 0..available_parallelism.
pub fn allowed_cpus() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: cpu_set_t is plain data for which all zero bits is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, writable cpu_set_t of the size passed; pid 0 is this thread.
        let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
        if rc == 0 {
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                // SAFETY: `i` is below CPU_SETSIZE, the number of bits in `set`.
                .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
                .collect();
            if !cpus.is_empty() {
                return cpus;
            }
        }
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n).collect()
}

/// The system host name (gethostname), or an empty string if it cannot be read.
pub fn system_hostname() -> String {
    // POSIX HOST_NAME_MAX is at least 255; one more byte for the terminating NUL.
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast::<libc::c_char>(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    // A truncated name may lack its NUL: take the bytes up to the first NUL or the end.
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration for `vars` on a 4-CPU machine called mx.example.com.
    fn config(vars: &[(&str, &str)]) -> Result<ServerConfig, ConfigError> {
        from_vars(
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            vec![0, 1, 2, 3],
            "mx.example.com",
        )
    }

    /// The error line for `name=value`, which must be refused.
    fn refused(name: &str, value: &str) -> String {
        match config(&[(name, value)]) {
            Ok(_) => panic!("{name}={value:?} was accepted"),
            Err(e) => {
                assert_eq!(e.name(), name);
                assert_eq!(e.value(), value);
                let line = e.to_string();
                assert!(!line.contains('\n'), "{line}");
                assert!(line.starts_with(&format!("{name}=")), "{line}");
                line
            }
        }
    }

    /// The address `s`, for brevity.
    fn exempt(c: &ServerConfig, ip: IpAddr) -> bool {
        c.limit_exempt.iter().any(|net| net.contains(ip))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The network `s`, for brevity.
    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn proxy_metrics_and_log_format() {
        let c = config(&[
            ("RINGMX_PROXY_FROM", "10.0.0.0/8, 2001:db8::/32"),
            ("RINGMX_PROXY_TIMEOUT_SECS", "2"),
            ("RINGMX_METRICS_LISTEN", "[::1]:9425"),
            ("RINGMX_LOG_FORMAT", "JSON"),
        ])
        .unwrap();
        assert_eq!(c.proxy_from, vec![net("10.0.0.0/8"), net("2001:db8::/32")]);
        assert!(c.is_proxy_source(ip("10.1.2.3")));
        assert!(c.is_proxy_source(ip("::ffff:10.1.2.3")));
        assert!(c.is_proxy_source(ip("2001:db8::25")));
        assert!(!c.is_proxy_source(ip("192.0.2.1")));
        assert_eq!(c.proxy_timeout, Duration::from_secs(2));
        assert_eq!(c.metrics_listen, Some("[::1]:9425".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);
        refused("RINGMX_PROXY_FROM", "10.0.0.1/8");
        refused("RINGMX_PROXY_FROM", "10.0.0.0/8,,");
        refused("RINGMX_PROXY_TIMEOUT_SECS", "0");
        refused("RINGMX_PROXY_TIMEOUT_SECS", "61");
        refused("RINGMX_METRICS_LISTEN", "9425");
        refused("RINGMX_METRICS_LISTEN", "localhost:9425");
        let line = refused("RINGMX_LOG_FORMAT", "logfmt");
        assert!(line.contains("expected text or json"), "{line}");
    }

    #[test]
    fn nats_settings_are_checked() {
        let c = config(&[]).unwrap();
        assert_eq!(c.nats.url, "nats://127.0.0.1:4222");
        assert_eq!(c.nats.subject, "ringmx.inbound");
        assert_eq!(c.nats.ack_timeout, Duration::from_millis(5000));
        let c = config(&[
            (
                "RINGMX_NATS_URL",
                "nats://a.example:4222, tls://b.example:4443,c.example:4222",
            ),
            ("RINGMX_NATS_SUBJECT", "mail.in.mx-1"),
            ("RINGMX_NATS_ACK_TIMEOUT_MS", "10"),
            ("RINGMX_DELIVERY", "jetstream"),
        ])
        .unwrap();
        assert_eq!(c.delivery, Delivery::Jetstream);
        assert_eq!(
            c.nats.url,
            "nats://a.example:4222,tls://b.example:4443,c.example:4222"
        );
        assert_eq!(c.nats.subject, "mail.in.mx-1");
        assert_eq!(c.nats.ack_timeout, Duration::from_millis(10));
        for bad in [
            "",
            "nats://a:4222,",
            "http://a:80",
            "nats://a b:4222",
            "nats://a:99999",
        ] {
            refused("RINGMX_NATS_URL", bad);
        }
        for bad in [
            "", "a..b", ".a", "a.", "a.*", "a.>", ">", "a b", "a\tb", "é",
        ] {
            refused("RINGMX_NATS_SUBJECT", bad);
        }
        refused("RINGMX_NATS_SUBJECT", &"a".repeat(256));
        for bad in ["0", "9", "600001", "1s", "-1"] {
            refused("RINGMX_NATS_ACK_TIMEOUT_MS", bad);
        }
        let line = refused("RINGMX_NATS_SUBJECT", "ringmx.*");
        assert!(line.contains("wildcard"), "{line}");
    }

    #[test]
    fn defaults_with_an_empty_environment() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c.listen,
            vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.shards, 4);
        assert!(c.pin);
        assert_eq!(c.cpus, vec![0, 1, 2, 3]);
        assert_eq!(c.spool, PathBuf::from("./spool"));
        assert_eq!(c.delivery, Delivery::Maildir);
        assert!(c.fsync);
        assert!(!c.syncfs);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.max_connections_per_ip, 100);
        assert_eq!(c.limit_exempt, vec![net("127.0.0.0/8"), net("::1/128")]);
        assert_eq!(c.greet_delay, Duration::ZERO);
        assert!(!c.reject_early_talkers);
        assert_eq!(c.backend, Backend::Auto);
        assert_eq!(c.ring_entries, 1024);
        assert_eq!(c.log_level, Level::Info);
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.proxy_from.is_empty());
        assert!(!c.is_proxy_source(ip("127.0.0.1")));
        assert_eq!(c.proxy_timeout, Duration::from_secs(5));
        assert_eq!(c.metrics_listen, None);
        let s = &c.session;
        let d = crate::proto::Config::default();
        assert_eq!(s.hostname, "mx.example.com");
        assert_eq!(s.max_message_size, d.max_message_size);
        assert_eq!(s.max_recipients, d.max_recipients);
        assert_eq!(s.max_errors, d.max_errors);
        assert_eq!(s.max_junk_commands, d.max_junk_commands);
        assert!(s.domains.is_empty());
        assert_eq!(s.bare_lf, BareLf::Reject);
        assert_eq!(s.command_timeout, d.command_timeout);
        assert_eq!(s.data_timeout, d.data_timeout);
        assert_eq!(s.min_data_rate, d.min_data_rate);
        assert!(exempt(&c, ip("127.0.0.2")));
        assert!(exempt(&c, ip("::ffff:127.0.0.1")));
        assert!(!exempt(&c, ip("192.0.2.1")));
    }

    #[test]
    fn other_variables_are_ignored() {
        let c = config(&[("PATH", "/bin"), ("RINGMX", "x"), ("ringmx_shards", "x")]).unwrap();
        assert_eq!(c.shards, 4);
    }

    #[test]
    fn literal_defaults_parse_like_values() {
        // Setting each variable to its documented default changes nothing.
        let base = format!("{:?}", config(&[]).unwrap());
        for variable in VARIABLES.iter().filter(|v| !v.computed) {
            let (name, default) = (&variable.name, &variable.default);
            let c = config(&[(name, default)]).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(format!("{c:?}"), base, "{name}");
        }
    }

    #[test]
    fn every_variable_is_its_own_parser_and_listed_once() {
        for (i, variable) in VARIABLES.iter().enumerate() {
            let name = variable.name;
            assert!(name.starts_with(PREFIX), "{name}");
            assert!(!variable.meaning.is_empty(), "{name}");
            assert!(
                VARIABLES[..i].iter().all(|other| other.name != name),
                "{name} twice"
            );
            // Garbage is refused by the variable's own parser, not as unknown.
            let line = refused(name, "\u{1}garbage");
            assert!(!line.contains("unknown variable"), "{line}");
            assert!(line.starts_with(name), "{line}");
        }
        assert_eq!(VARIABLES.len(), 37);
    }

    #[test]
    fn the_readme_table_lists_every_variable_with_its_default() {
        let readme = include_str!("../README.md");
        for variable in VARIABLES {
            let row = readme
                .lines()
                .find(|line| line.starts_with(&format!("| `{}`", variable.name)))
                .unwrap_or_else(|| panic!("README has no row for {}", variable.name));
            if !variable.computed && !variable.default.is_empty() {
                assert!(
                    row.contains(&format!("`{}`", variable.default)),
                    "README row of {} lacks its default {:?}: {row}",
                    variable.name,
                    variable.default
                );
            }
        }
    }

    #[test]
    fn the_session_defaults_are_the_variables_defaults() {
        let mut from_table = config(&[]).unwrap().session;
        let mut default = crate::proto::Config::default();
        from_table.hostname.clear();
        default.hostname.clear();
        assert_eq!(format!("{from_table:?}"), format!("{default:?}"));
    }

    #[test]
    fn ipv6_prefix_and_hostname_length() {
        assert_eq!(config(&[]).unwrap().ipv6_prefix, 64);
        assert_eq!(
            config(&[("RINGMX_IPV6_PREFIX", "48")]).unwrap().ipv6_prefix,
            48
        );
        for bad in ["0", "129", "x", "-1"] {
            let line = refused("RINGMX_IPV6_PREFIX", bad);
            assert!(line.contains("from 1 to 128"), "{line}");
        }
        let label = "a".repeat(60);
        let long = [label.as_str(); 4].join(".");
        assert!(long.len() > HOSTNAME_SPOOL_MAX && long.len() <= 253);
        let line = refused("RINGMX_HOSTNAME", &long);
        assert!(line.contains("255"), "{line}");
        let fits = &long[..HOSTNAME_SPOOL_MAX];
        let fits = fits.trim_end_matches(['.', '-']);
        assert!(config(&[("RINGMX_HOSTNAME", fits)]).is_ok(), "{fits}");
    }

    #[test]
    fn listen_addresses_ipv4_and_ipv6() {
        let c = config(&[("RINGMX_LISTEN", "0.0.0.0:25, [::]:25,[2001:db8::1]:2525")]).unwrap();
        let want: Vec<SocketAddr> = ["0.0.0.0:25", "[::]:25", "[2001:db8::1]:2525"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(c.listen, want);
        assert!(c.listen[1].is_ipv6());
        for bad in [
            "",
            "127.0.0.1",
            "::1:25",
            "localhost:25",
            "127.0.0.1:65536",
            "127.0.0.1:25,",
            "127.0.0.1:25,127.0.0.1:25",
            "[::1]",
        ] {
            refused("RINGMX_LISTEN", bad);
        }
        let line = refused("RINGMX_LISTEN", "127.0.0.1:25,foo");
        assert_eq!(
            line,
            "RINGMX_LISTEN=\"127.0.0.1:25,foo\": \"foo\" is not an address:port; \
             expected socket addresses such as 0.0.0.0:25 or [::]:25"
        );
        let many = vec!["127.0.0.1:1"; LISTEN_ADDRESSES_MAX + 1].join(",");
        refused("RINGMX_LISTEN", &many);
    }

    #[test]
    fn shards_and_cpus() {
        assert_eq!(config(&[("RINGMX_SHARDS", "1")]).unwrap().shards, 1);
        assert_eq!(config(&[("RINGMX_SHARDS", " 1024 ")]).unwrap().shards, 1024);
        for bad in [
            "0",
            "1025",
            "-1",
            "+2",
            "abc",
            "",
            "4.0",
            "99999999999999999999999",
        ] {
            refused("RINGMX_SHARDS", bad);
        }
        assert_eq!(
            refused("RINGMX_SHARDS", "abc"),
            "RINGMX_SHARDS=\"abc\": expected a whole number from 1 to 1024"
        );
        // The default follows the allowed CPUs, sorted and deduplicated, within bounds.
        let c = from_vars(Vec::new(), vec![5, 3, 3, 9], "h").unwrap();
        assert_eq!((c.shards, c.cpus.clone(), c.pin), (3, vec![3, 5, 9], true));
        let c = from_vars(Vec::new(), (0..2000).collect(), "h").unwrap();
        assert_eq!(c.shards, 1024);
        // Nothing is known of the CPUs: one shard, no pinning.
        let c = from_vars(Vec::new(), Vec::new(), "h").unwrap();
        assert_eq!((c.shards, c.pin), (1, false));
    }

    #[test]
    fn flags() {
        for name in ["RINGMX_PIN", "RINGMX_REJECT_EARLY_TALKERS"] {
            let get = |c: &ServerConfig| match name {
                "RINGMX_PIN" => c.pin,
                _ => c.reject_early_talkers,
            };
            assert!(!get(&config(&[(name, "0")]).unwrap()));
            assert!(get(&config(&[(name, "1")]).unwrap()));
            for bad in ["", "2", "true", "yes", "on", "01"] {
                let line = refused(name, bad);
                assert!(line.ends_with(": expected 0 or 1"), "{line}");
            }
        }
    }

    #[test]
    fn fsync_takes_0_1_or_syncfs() {
        let get = |v: &str| {
            let c = config(&[("RINGMX_FSYNC", v)]).unwrap();
            (c.fsync, c.syncfs)
        };
        assert_eq!(get("0"), (false, false));
        assert_eq!(get("1"), (true, false));
        assert_eq!(get("syncfs"), (true, true));
        assert_eq!(get("SyncFS"), (true, true));
        for bad in ["", "2", "true", "fs", "syncfs0", "sync"] {
            let line = refused("RINGMX_FSYNC", bad);
            assert!(line.ends_with(": expected 0, 1 or syncfs"), "{line}");
        }
    }

    #[test]
    fn choices() {
        let c = config(&[
            ("RINGMX_DELIVERY", "discard"),
            ("RINGMX_BACKEND", "EPOLL"),
            ("RINGMX_BARE_LF", "normalize"),
            ("RINGMX_LOG", "debug"),
        ])
        .unwrap();
        assert_eq!(c.delivery, Delivery::Discard);
        assert_eq!(c.backend, Backend::Epoll);
        assert_eq!(c.session.bare_lf, BareLf::Normalize);
        assert_eq!(c.log_level, Level::Debug);
        assert_eq!(
            config(&[("RINGMX_BACKEND", "uring")]).unwrap().backend,
            Backend::Uring
        );
        assert_eq!(
            config(&[("RINGMX_LOG", "error")]).unwrap().log_level,
            Level::Error
        );
        assert_eq!(
            refused("RINGMX_DELIVERY", "mbox"),
            "RINGMX_DELIVERY=\"mbox\": expected maildir, jetstream or discard"
        );
        assert_eq!(
            refused("RINGMX_BACKEND", "io_uring"),
            "RINGMX_BACKEND=\"io_uring\": expected auto, uring or epoll"
        );
        assert_eq!(
            refused("RINGMX_BARE_LF", "accept"),
            "RINGMX_BARE_LF=\"accept\": expected reject or normalize"
        );
        assert_eq!(
            refused("RINGMX_LOG", "trace"),
            "RINGMX_LOG=\"trace\": expected error, warn, info or debug"
        );
    }

    #[test]
    fn spool() {
        let c = config(&[("RINGMX_SPOOL", "/var/spool/ringmx")]).unwrap();
        assert_eq!(c.spool, PathBuf::from("/var/spool/ringmx"));
        refused("RINGMX_SPOOL", "");
        refused("RINGMX_SPOOL", "  ");
    }

    #[test]
    fn numbers_and_their_bounds() {
        // (name, smallest, largest) accepted; one past either end is refused.
        let bounds: &[(&str, u64, u64)] = &[
            ("RINGMX_MAX_MESSAGE_SIZE", 1024, 2_147_483_648),
            ("RINGMX_MAX_RECIPIENTS", 1, 100_000),
            ("RINGMX_MAX_CONNECTIONS", 1, 1_000_000),
            ("RINGMX_COMMAND_TIMEOUT_SECS", 1, 86_400),
            ("RINGMX_DATA_TIMEOUT_SECS", 1, 86_400),
            ("RINGMX_SHUTDOWN_GRACE_SECS", 0, 3_600),
            ("RINGMX_MAX_CONNECTIONS_PER_IP", 1, 1_000_000),
            ("RINGMX_MAX_ERRORS", 0, 1_000_000),
            ("RINGMX_MAX_JUNK_COMMANDS", 0, 1_000_000),
            ("RINGMX_MIN_DATA_RATE", 0, 1_000_000_000),
            ("RINGMX_GREET_DELAY_MS", 0, 300_000),
        ];
        for &(name, min, max) in bounds {
            for good in [min, max] {
                let c = config(&[(name, &good.to_string())]).unwrap();
                let got = match name {
                    "RINGMX_MAX_MESSAGE_SIZE" => c.session.max_message_size,
                    "RINGMX_MAX_RECIPIENTS" => c.session.max_recipients as u64,
                    "RINGMX_MAX_CONNECTIONS" => c.max_connections as u64,
                    "RINGMX_COMMAND_TIMEOUT_SECS" => c.session.command_timeout.as_secs(),
                    "RINGMX_DATA_TIMEOUT_SECS" => c.session.data_timeout.as_secs(),
                    "RINGMX_SHUTDOWN_GRACE_SECS" => c.shutdown_grace.as_secs(),
                    "RINGMX_MAX_CONNECTIONS_PER_IP" => c.max_connections_per_ip as u64,
                    "RINGMX_MAX_ERRORS" => u64::from(c.session.max_errors),
                    "RINGMX_MAX_JUNK_COMMANDS" => u64::from(c.session.max_junk_commands),
                    "RINGMX_MIN_DATA_RATE" => c.session.min_data_rate,
                    "RINGMX_GREET_DELAY_MS" => c.greet_delay.as_millis() as u64,
                    _ => unreachable!(),
                };
                assert_eq!(got, good, "{name}");
            }
            let expected = format!(": expected a whole number from {min} to {max}");
            let mut bad = vec![(max + 1).to_string(), "x".into(), "1e3".into(), "".into()];
            if min > 0 {
                bad.push((min - 1).to_string());
            }
            for value in bad {
                let line = refused(name, &value);
                assert!(line.ends_with(&expected), "{line}");
            }
        }
    }

    #[test]
    fn ring_entries_are_a_power_of_two() {
        for good in [8u32, 16, 1024, 32_768] {
            let c = config(&[("RINGMX_RING_ENTRIES", &good.to_string())]).unwrap();
            assert_eq!(c.ring_entries, good);
        }
        for bad in ["0", "4", "1000", "65536", "x"] {
            assert_eq!(
                refused("RINGMX_RING_ENTRIES", bad),
                format!("RINGMX_RING_ENTRIES={bad:?}: expected a power of two from 8 to 32768")
            );
        }
    }

    #[test]
    fn hostname() {
        let c = config(&[("RINGMX_HOSTNAME", "MX1.Example.NET")]).unwrap();
        assert_eq!(c.session.hostname, "MX1.Example.NET");
        let c = from_vars(Vec::new(), vec![0], "container-0a1b2c").unwrap();
        assert_eq!(c.session.hostname, "container-0a1b2c");
        let long_label = "a".repeat(64);
        let long_name = vec!["a".repeat(63); 4].join(".");
        for bad in [
            "",
            "mx example.com",
            "mx..example.com",
            ".example.com",
            "example.com.",
            "-mx.example.com",
            "mx-.example.com",
            "mx_1.example.com",
            "192.0.2.1",
            "[192.0.2.1]",
            "mx.example.com\r\n250 forged",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            refused("RINGMX_HOSTNAME", bad);
        }
        // An unusable system host name is reported as such, with what to do.
        let err = from_vars(Vec::new(), vec![0], "").unwrap_err();
        assert_eq!(err.name(), "RINGMX_HOSTNAME");
        assert!(err.to_string().starts_with(
            "RINGMX_HOSTNAME=\"\": unset, and the system host name will not do: expected"
        ));
        // ... but a set RINGMX_HOSTNAME makes the system's irrelevant.
        let vars = vec![("RINGMX_HOSTNAME".to_string(), "mx.example.org".to_string())];
        assert_eq!(
            from_vars(vars, vec![0], "").unwrap().session.hostname,
            "mx.example.org"
        );
    }

    #[test]
    fn domains() {
        let c = config(&[("RINGMX_DOMAINS", "Example.COM, example.org,example.com")]).unwrap();
        assert_eq!(c.session.domains, vec!["example.com", "example.org"]);
        assert!(config(&[("RINGMX_DOMAINS", "")])
            .unwrap()
            .session
            .domains
            .is_empty());
        for bad in ["example.com,", ",", "exa mple.com", "@example.com", "a..b"] {
            refused("RINGMX_DOMAINS", bad);
        }
    }

    #[test]
    fn limit_exempt() {
        let c = config(&[(
            "RINGMX_LIMIT_EXEMPT",
            "10.0.0.0/8, 192.0.2.7, 2001:db8::/32, ::ffff:172.16.0.0/108",
        )])
        .unwrap();
        assert_eq!(
            c.limit_exempt,
            vec![
                net("10.0.0.0/8"),
                net("192.0.2.7/32"),
                net("2001:db8::/32"),
                net("172.16.0.0/12")
            ]
        );
        assert!(exempt(&c, ip("172.31.255.255")));
        assert!(exempt(&c, ip("::ffff:10.1.2.3")));
        assert!(!exempt(&c, ip("127.0.0.1")));
        assert!(config(&[("RINGMX_LIMIT_EXEMPT", "")])
            .unwrap()
            .limit_exempt
            .is_empty());
        for bad in [
            "10.0.0.0/33",
            "10.0.0.1/8",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/08x",
            "10/8",
            "host.example",
            "10.0.0.0/8,",
        ] {
            refused("RINGMX_LIMIT_EXEMPT", bad);
        }
        assert_eq!(
            refused("RINGMX_LIMIT_EXEMPT", "10.0.0.1/8"),
            "RINGMX_LIMIT_EXEMPT=\"10.0.0.1/8\": \"10.0.0.1/8\" has host bits set past the /8; \
             expected networks such as 10.0.0.0/8 or 2001:db8::/32"
        );
    }

    #[test]
    fn ip_net_containment() {
        let v4 = net("192.168.0.0/16");
        assert!(v4.contains(ip("192.168.255.1")));
        assert!(!v4.contains(ip("192.169.0.1")));
        assert!(v4.contains(ip("::ffff:192.168.1.1")));
        assert!(!v4.contains(ip("::192.168.1.1")));
        assert!(!v4.contains(ip("2001:db8::1")));
        let v6 = net("2001:db8:abcd::/48");
        assert!(v6.contains(ip("2001:db8:abcd:ffff::1")));
        assert!(!v6.contains(ip("2001:db8:abce::1")));
        assert!(!v6.contains(ip("192.168.1.1")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(net("0.0.0.0/0").contains(ip("::ffff:203.0.113.9")));
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
        assert!(net("::1").contains(ip("::1")));
        assert!(!net("::1").contains(ip("::2")));
        // A mapped network is the IPv4 one; built by hand it matches the same.
        assert_eq!(net("::ffff:10.0.0.0/104"), net("10.0.0.0/8"));
        let by_hand = IpNet {
            addr: ip("::ffff:10.0.0.0"),
            prefix: 104,
        };
        assert!(by_hand.contains(ip("10.9.9.9")));
        assert!(by_hand.contains(ip("::ffff:10.9.9.9")));
        // Out-of-range prefixes built by hand do not panic.
        assert!(IpNet {
            addr: ip("10.0.0.1"),
            prefix: 200
        }
        .contains(ip("10.0.0.1")));
        assert!(IpNet::new(ip("10.0.0.0"), 33).is_none());
        assert!(IpNet::new(ip("10.0.0.1"), 32).is_some());
        assert_eq!(net("2001:db8::/32").to_string(), "2001:db8::/32");
    }

    #[test]
    fn unknown_variables_suggest_the_nearest() {
        assert_eq!(
            refused("RINGMX_SHRADS", "4"),
            "RINGMX_SHRADS=\"4\": unknown variable; did you mean RINGMX_SHARDS?"
        );
        for (typo, near) in [
            ("RINGMX_MAXCONNECTIONS", "RINGMX_MAX_CONNECTIONS"),
            ("RINGMX_FSNYC", "RINGMX_FSYNC"),
            ("RINGMX_shards", "RINGMX_SHARDS"),
            ("RINGMX_DOMAIN", "RINGMX_DOMAINS"),
            (
                "RINGMX_MAX_CONNECTION_PER_IP",
                "RINGMX_MAX_CONNECTIONS_PER_IP",
            ),
            ("RINGMX_LOG_LEVEL", "RINGMX_LOG"),
        ] {
            let line = refused(typo, "1");
            assert!(line.ends_with(&format!("did you mean {near}?")), "{line}");
        }
        let line = refused("RINGMX_QUUX", "1");
        assert!(line.contains("unknown variable") && !line.contains("did you mean"));
        let long = format!("RINGMX_{}", "X".repeat(1000));
        assert!(!refused(&long, "").contains("did you mean"));
        // Unknown names are reported before bad values.
        let err = config(&[("RINGMX_SHARDS", "x"), ("RINGMX_ZZZ", "1")]).unwrap_err();
        assert_eq!(err.name(), "RINGMX_ZZZ");
    }

    #[test]
    fn levenshtein_distances() {
        assert_eq!(levenshtein(b"", b""), 0);
        assert_eq!(levenshtein(b"abc", b""), 3);
        assert_eq!(levenshtein(b"", b"abc"), 3);
        assert_eq!(levenshtein(b"kitten", b"sitting"), 3);
        assert_eq!(levenshtein(b"SHRADS", b"SHARDS"), 2);
        assert_eq!(levenshtein(b"flaw", b"lawn"), 2);
    }

    #[test]
    fn error_lines_are_single_lines_with_escaped_values() {
        let line = refused("RINGMX_SHARDS", "4\n5");
        assert_eq!(
            line,
            "RINGMX_SHARDS=\"4\\n5\": expected a whole number from 1 to 1024"
        );
        let long = "9".repeat(1000);
        let line = refused("RINGMX_SHARDS", &long);
        assert!(
            line.contains(&format!("\"{}…\"", "9".repeat(200))),
            "{line}"
        );
        let err = ConfigError::new("RINGMX_X\nY", "v", "p");
        assert_eq!(err.to_string(), "RINGMX_X\\nY=\"v\": p");
    }

    #[test]
    fn from_env_reads_this_process() {
        // Only checks the system probes; the environment of a test run is not ours to set.
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
        let name = system_hostname();
        assert!(!name.contains('\0'));
        let clean = std::env::vars_os().all(|(k, _)| !k.to_string_lossy().starts_with(PREFIX));
        if clean && check_host_name(&name).is_ok() {
            let c = from_env().unwrap();
            assert_eq!(c.cpus, cpus);
            assert_eq!(c.session.hostname, name);
        }
    }

    #[test]
    fn tls_needs_both_files_and_may() {
        let c = config(&[]).unwrap();
        assert_eq!(c.tls, None);
        assert!(!c.session.starttls);
        assert_eq!(c.tls_handshake_timeout, Duration::from_secs(30));
        let pair = [
            ("RINGMX_TLS_CERT", "/etc/ringmx/cert.pem"),
            ("RINGMX_TLS_KEY", "/etc/ringmx/key.pem"),
        ];
        let c = config(&pair).unwrap();
        assert_eq!(
            c.tls,
            Some(TlsFiles {
                cert: PathBuf::from("/etc/ringmx/cert.pem"),
                key: PathBuf::from("/etc/ringmx/key.pem"),
            })
        );
        assert!(c.session.starttls);
        let c = config(&[pair[0], pair[1], ("RINGMX_TLS", "off")]).unwrap();
        assert_eq!(c.tls, None);
        assert!(!c.session.starttls);
        let line = config(&[pair[0]]).unwrap_err().to_string();
        assert!(
            line.starts_with("RINGMX_TLS_KEY") && line.contains("both or neither"),
            "{line}"
        );
        let line = config(&[pair[1]]).unwrap_err().to_string();
        assert!(
            line.starts_with("RINGMX_TLS_KEY") && line.contains("RINGMX_TLS_CERT is unset"),
            "{line}"
        );
        assert!(refused("RINGMX_TLS", "must").contains("may or off"));
        assert!(refused("RINGMX_TLS_HANDSHAKE_TIMEOUT_SECS", "0").contains("1 to 600"));
        let c = config(&[("RINGMX_TLS_HANDSHAKE_TIMEOUT_SECS", "5")]).unwrap();
        assert_eq!(c.tls_handshake_timeout, Duration::from_secs(5));
    }
}
