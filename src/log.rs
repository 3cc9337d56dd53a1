//! Leveled logging to stderr, one line per event: `2026-11-29T01:02:03.456Z INFO message`.
//!
//! ringmx logs little (start-up, the backend chosen, shutdown, faults), so this is deliberately
//! small: a global level set once from `RINGMX_LOG`, four macros that skip formatting entirely
//! when their level is off, and one `write` per line on a locked stderr so that lines from shard
//! threads never interleave. Control characters in a message (which may quote client input such
//! as a HELO name) are escaped, so a message is always exactly one line.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

/// How important a log line is; a line is written when its level is at most the global one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Level {
    /// Something failed and ringmx cannot do what it was asked.
    Error = 0,
    /// Something is off but ringmx carries on (a fallback, a refused client).
    Warn = 1,
    /// Start-up, shutdown and other rare events worth keeping.
    Info = 2,
    /// Detail for finding bugs; off in production.
    Debug = 3,
}

impl Level {
    /// The lowercase name accepted by `RINGMX_LOG`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    /// The uppercase label written in each log line.
    pub fn label(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }

    /// The level stored as `n` in the global atomic (anything out of range reads as Debug).
    fn from_u8(n: u8) -> Level {
        match n {
            0 => Level::Error,
            1 => Level::Warn,
            2 => Level::Info,
            _ => Level::Debug,
        }
    }
}

impl fmt::Display for Level {
    /// Writes the lowercase name, so that `Display` and `FromStr` round-trip.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a `Level`: the text was none of `error`, `warn`, `info`, `debug`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseLevelError;

impl fmt::Display for ParseLevelError {
    /// Says which names are accepted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected error, warn, info or debug")
    }
}

impl std::error::Error for ParseLevelError {}

impl FromStr for Level {
    type Err = ParseLevelError;

    /// Parses `error`, `warn`, `info` or `debug`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Level, ParseLevelError> {
        [Level::Error, Level::Warn, Level::Info, Level::Debug]
            .into_iter()
            .find(|level| s.eq_ignore_ascii_case(level.as_str()))
            .ok_or(ParseLevelError)
    }
}

/// The global level; `Info` until `set_level` is called.
static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// A line's buffer is kept between lines unless it grew past this (one huge message should not
/// pin its memory for the life of the thread).
const BUFFER_KEEP_BYTES_MAX: usize = 16 * 1024;

thread_local! {
    /// Each thread's line buffer, reused so that a log line allocates nothing in steady state.
    static BUFFER: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Sets the global level; call once at start-up, before the shards start.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// The global level now in force.
pub fn level() -> Level {
    Level::from_u8(LEVEL.load(Ordering::Relaxed))
}

/// Whether a line at `level` would be written.
#[inline]
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one line at `level` to stderr; the macros call this after checking `enabled`.
#[doc(hidden)]
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    let now = chrono::Utc::now();
    // A Display impl that itself logs would find the buffer borrowed: give it a fresh one.
    let written = BUFFER.try_with(|cell| match cell.try_borrow_mut() {
        Ok(mut line) => {
            emit(&mut line, now, level, args);
            if line.capacity() > BUFFER_KEEP_BYTES_MAX {
                *line = String::new();
            }
        }
        Err(_) => emit(&mut String::new(), now, level, args),
    });
    // The thread-local is gone while the thread is exiting.
    if written.is_err() {
        emit(&mut String::new(), now, level, args);
    }
}

/// Formats the whole line into `line` and writes it to stderr with one locked `write_all`.
fn emit(
    line: &mut String,
    now: chrono::DateTime<chrono::Utc>,
    level: Level,
    args: fmt::Arguments<'_>,
) {
    format_line(line, now, level, args);
    // Nothing sensible can be done when stderr is closed or full: the line is dropped.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Replaces `line` with `TIMESTAMP LEVEL message\n`, control characters escaped.
fn format_line(
    line: &mut String,
    now: chrono::DateTime<chrono::Utc>,
    level: Level,
    args: fmt::Arguments<'_>,
) {
    line.clear();
    let _ = write!(
        line,
        "{} {} ",
        now.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        level.label()
    );
    let message_start = line.len();
    let _ = line.write_fmt(args);
    escape_controls(line, message_start);
    line.push('\n');
}

/// Replaces control characters in `line[from..]` by escapes (`\n`, `\r`, `\t`, `\u{1b}`, ...).
fn escape_controls(line: &mut String, from: usize) {
    if !line[from..].chars().any(char::is_control) {
        return;
    }
    let message = line.split_off(from);
    for c in message.chars() {
        match c {
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{{{:x}}}", c as u32);
            }
            c => line.push(c),
        }
    }
}

/// Logs a line at level ERROR: `log_error!("spool {}: {}", path.display(), err)`.
#[macro_export]
macro_rules! log_error {
    ($($arg:tt)+) => {
        if $crate::log::enabled($crate::log::Level::Error) {
            $crate::log::write($crate::log::Level::Error, ::std::format_args!($($arg)+));
        }
    };
}

/// Logs a line at level WARN: `log_warn!("io_uring unavailable ({}), using epoll", why)`.
#[macro_export]
macro_rules! log_warn {
    ($($arg:tt)+) => {
        if $crate::log::enabled($crate::log::Level::Warn) {
            $crate::log::write($crate::log::Level::Warn, ::std::format_args!($($arg)+));
        }
    };
}

/// Logs a line at level INFO: `log_info!("{}", config.summary())`.
#[macro_export]
macro_rules! log_info {
    ($($arg:tt)+) => {
        if $crate::log::enabled($crate::log::Level::Info) {
            $crate::log::write($crate::log::Level::Info, ::std::format_args!($($arg)+));
        }
    };
}

/// Logs a line at level DEBUG; its arguments are not even evaluated when DEBUG is off.
#[macro_export]
macro_rules! log_debug {
    ($($arg:tt)+) => {
        if $crate::log::enabled($crate::log::Level::Debug) {
            $crate::log::write($crate::log::Level::Debug, ::std::format_args!($($arg)+));
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_parses_and_round_trips() {
        for level in [Level::Error, Level::Warn, Level::Info, Level::Debug] {
            assert_eq!(level.as_str().parse::<Level>(), Ok(level));
            assert_eq!(level.to_string().parse::<Level>(), Ok(level));
            assert_eq!(level.label().parse::<Level>(), Ok(level));
            assert_eq!(Level::from_u8(level as u8), level);
        }
        assert_eq!("".parse::<Level>(), Err(ParseLevelError));
        assert_eq!("warning".parse::<Level>(), Err(ParseLevelError));
        assert_eq!("trace".parse::<Level>(), Err(ParseLevelError));
        assert!(Level::Error < Level::Debug);
    }

    #[test]
    fn line_format_is_one_line_with_utc_millis() {
        let mut line = String::new();
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-29T01:02:03.456789Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        emit(
            &mut line,
            now,
            Level::Warn,
            format_args!("x={} y={}", 1, "two"),
        );
        assert_eq!(line, "2026-11-29T01:02:03.456Z WARN x=1 y=two\n");
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut line = String::from("T INFO ");
        line.push_str("helo evil\r\n2026 ERROR forged\x1b[0m\tend");
        escape_controls(&mut line, 7);
        assert_eq!(
            line,
            "T INFO helo evil\\r\\n2026 ERROR forged\\u{1b}[0m\\tend"
        );
        let mut clean = String::from("T INFO plain é");
        escape_controls(&mut clean, 7);
        assert_eq!(clean, "T INFO plain é");
    }

    #[test]
    fn disabled_levels_skip_argument_evaluation() {
        // The only test that touches the global level; it restores the default.
        set_level(Level::Warn);
        assert_eq!(level(), Level::Warn);
        assert!(enabled(Level::Error) && enabled(Level::Warn));
        assert!(!enabled(Level::Info) && !enabled(Level::Debug));
        let mut evaluated = false;
        crate::log_debug!("{}", {
            evaluated = true;
            1
        });
        assert!(!evaluated);
        set_level(Level::Info);
        assert_eq!(level(), Level::Info);
    }
}
