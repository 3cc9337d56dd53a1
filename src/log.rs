//! Leveled logging to stderr, one line per event: `2026-11-29T01:02:03.456Z INFO message`, or
//! with `RINGMX_LOG_FORMAT=json` one JSON object per line for log shippers:
//! `{"timestamp":"2026-11-29T01:02:03.456Z","level":"info","event":"session_end",
//! "peer":"192.0.2.7:40000","duration_ms":12,"message":"..."}`.
//!
//! ringmx logs little (start-up, the backend chosen, sessions, shutdown, faults), so this is
//! deliberately small: a global level and format set once at start-up, macros that skip
//! formatting entirely when their level is off, and one `write` per line on a locked stderr so
//! that lines from shard threads never interleave. `log_event!` names the event and carries
//! typed fields (peer, queue ID, reply code, duration) that the JSON form writes as keys; the
//! plain macros are events named `message`. Control characters in a text message (which may
//! quote client input such as a HELO name) are escaped, so a line is always exactly one line;
//! in JSON every string is escaped as JSON requires.

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

/// How log lines are written (`RINGMX_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// `TIMESTAMP LEVEL message`, for people.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The global level; `Info` until `set_level` is called.
static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
/// The global format: 0 text, 1 JSON.
static FORMAT: AtomicU8 = AtomicU8::new(0);

/// Keys every JSON line has; fields must not reuse them.
const RESERVED_KEYS: [&str; 4] = ["timestamp", "level", "event", "message"];

/// A field's value, as the JSON form writes it: numbers and booleans bare, the rest as strings.
#[derive(Clone, Copy)]
pub enum Value<'a> {
    /// A whole number.
    U64(u64),
    /// A signed whole number.
    I64(i64),
    /// A number with a fraction (written `null` when not finite).
    F64(f64),
    /// `true` or `false`.
    Bool(bool),
    /// Text, escaped as a JSON string.
    Str(&'a str),
    /// Anything else written by its `Display`, escaped as a JSON string.
    Display(&'a dyn fmt::Display),
    /// No value (`null`).
    Null,
}

/// Turns a field's value into a `Value`; `log_event!` calls it on each field.
pub trait ToValue {
    /// The value to write.
    fn to_value(&self) -> Value<'_>;
}

/// Implements `ToValue` for unsigned integers.
macro_rules! unsigned_values {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value<'_> {
                Value::U64(*self as u64)
            }
        }
    )*};
}
unsigned_values!(u8, u16, u32, u64, usize);

/// Implements `ToValue` for signed integers.
macro_rules! signed_values {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value<'_> {
                Value::I64(*self as i64)
            }
        }
    )*};
}
signed_values!(i8, i16, i32, i64, isize);

/// Implements `ToValue` for types written by their `Display`.
macro_rules! display_values {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value<'_> {
                Value::Display(self)
            }
        }
    )*};
}
display_values!(
    std::net::SocketAddr,
    std::net::IpAddr,
    std::path::Display<'_>,
    std::io::Error
);

impl ToValue for f64 {
    fn to_value(&self) -> Value<'_> {
        Value::F64(*self)
    }
}

impl ToValue for bool {
    fn to_value(&self) -> Value<'_> {
        Value::Bool(*self)
    }
}

impl ToValue for str {
    fn to_value(&self) -> Value<'_> {
        Value::Str(self)
    }
}

impl ToValue for String {
    fn to_value(&self) -> Value<'_> {
        Value::Str(self)
    }
}

impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value<'_> {
        (**self).to_value()
    }
}

impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value<'_> {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

/// A value written by its `Display`: `log_event!(..., { id: log::display(&id) }, ...)`.
pub struct DisplayValue<'a, T: fmt::Display>(&'a T);

impl<T: fmt::Display> ToValue for DisplayValue<'_, T> {
    fn to_value(&self) -> Value<'_> {
        Value::Display(self.0)
    }
}

/// Wraps any `Display` type as a field value.
pub fn display<T: fmt::Display>(value: &T) -> DisplayValue<'_, T> {
    DisplayValue(value)
}

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

/// Sets the global format; call once at start-up, before the shards start.
pub fn set_format(format: LogFormat) {
    FORMAT.store(
        match format {
            LogFormat::Text => 0,
            LogFormat::Json => 1,
        },
        Ordering::Relaxed,
    );
}

/// The global format now in force.
pub fn format() -> LogFormat {
    match FORMAT.load(Ordering::Relaxed) {
        0 => LogFormat::Text,
        _ => LogFormat::Json,
    }
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

/// One log event: its level, name, fields and human message.
#[derive(Clone, Copy)]
pub struct Event<'a> {
    /// How important it is.
    pub level: Level,
    /// Its name in snake case (`session_end`); `message` for the plain macros.
    pub name: &'static str,
    /// Typed fields, written as JSON keys (and left out of the text form, whose message says
    /// what a person needs).
    pub fields: &'a [(&'static str, Value<'a>)],
    /// The human message.
    pub message: fmt::Arguments<'a>,
}

/// Writes one plain line at `level` to stderr; the macros call this after checking `enabled`.
#[doc(hidden)]
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    write_event(&Event {
        level,
        name: "message",
        fields: &[],
        message: args,
    });
}

/// Writes one event to stderr in the global format; `log_event!` calls this after checking
/// `enabled`.
#[doc(hidden)]
pub fn write_event(event: &Event<'_>) {
    let now = chrono::Utc::now();
    let format = format();
    // A Display impl that itself logs would find the buffer borrowed: give it a fresh one.
    let written = BUFFER.try_with(|cell| match cell.try_borrow_mut() {
        Ok(mut line) => {
            emit(&mut line, now, format, event);
            if line.capacity() > BUFFER_KEEP_BYTES_MAX {
                *line = String::new();
            }
        }
        Err(_) => emit(&mut String::new(), now, format, event),
    });
    // The thread-local is gone while the thread is exiting.
    if written.is_err() {
        emit(&mut String::new(), now, format, event);
    }
}

/// Formats the whole line into `line` and writes it to stderr with one locked `write_all`.
fn emit(
    line: &mut String,
    now: chrono::DateTime<chrono::Utc>,
    format: LogFormat,
    event: &Event<'_>,
) {
    match format {
        LogFormat::Text => format_line(line, now, event.level, event.message),
        LogFormat::Json => format_json(line, now, event),
    }
    // Nothing sensible can be done when stderr is closed or full: the line is dropped.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Replaces `line` with the event as one JSON object and a newline.
fn format_json(line: &mut String, now: chrono::DateTime<chrono::Utc>, event: &Event<'_>) {
    line.clear();
    let _ = write!(
        line,
        "{{\"timestamp\":\"{}\",\"level\":\"{}\",\"event\":",
        now.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        event.level.as_str()
    );
    push_json_str(line, event.name);
    for (key, value) in event.fields {
        debug_assert!(!RESERVED_KEYS.contains(key), "field {key} is reserved");
        line.push(',');
        push_json_str(line, key);
        line.push(':');
        match *value {
            Value::U64(n) => {
                let _ = write!(line, "{n}");
            }
            Value::I64(n) => {
                let _ = write!(line, "{n}");
            }
            Value::F64(x) if x.is_finite() => {
                let _ = write!(line, "{x}");
            }
            Value::F64(_) | Value::Null => line.push_str("null"),
            Value::Bool(b) => line.push_str(if b { "true" } else { "false" }),
            Value::Str(s) => push_json_str(line, s),
            Value::Display(d) => push_json_display(line, d),
        }
    }
    line.push_str(",\"message\":");
    push_json_display(line, &event.message);
    line.push_str("}\n");
}

/// Appends `value`'s `Display` output as a JSON string.
fn push_json_display(line: &mut String, value: &dyn fmt::Display) {
    let start = line.len();
    let _ = write!(line, "{value}");
    let text = line.split_off(start);
    push_json_str(line, &text);
}

/// Appends `s` as a JSON string: quotes, backslashes and control characters escaped (RFC 8259).
fn push_json_str(line: &mut String, s: &str) {
    line.push('"');
    for c in s.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{:04x}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
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

/// Logs a named event with typed fields:
/// `log_event!(Info, "session_end", { peer: peer, duration_ms: ms }, "{peer}: session ended")`.
/// The text form writes the message; the JSON form the name, the fields and the message.
#[macro_export]
macro_rules! log_event {
    ($level:ident, $name:expr, { $($key:ident : $value:expr),* $(,)? }, $($arg:tt)+) => {
        if $crate::log::enabled($crate::log::Level::$level) {
            $crate::log::write_event(&$crate::log::Event {
                level: $crate::log::Level::$level,
                name: $name,
                fields: &[$((
                    ::std::stringify!($key),
                    $crate::log::ToValue::to_value(&$value),
                )),*],
                message: ::std::format_args!($($arg)+),
            });
        }
    };
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
        format_line(
            &mut line,
            now,
            Level::Warn,
            format_args!("x={} y={}", 1, "two"),
        );
        assert_eq!(line, "2026-11-29T01:02:03.456Z WARN x=1 y=two\n");
    }

    /// The JSON line for an event with every kind of field, parsed back.
    #[test]
    fn json_lines_are_objects_with_typed_fields() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-29T01:02:03.456789Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let peer: std::net::SocketAddr = "[2001:db8::1]:25".parse().unwrap();
        let helo = "evil\r\n\"}{\u{1b}\\ é\u{2028}";
        let none: Option<u64> = None;
        let id = display(&"1A2B");
        let fields = [
            ("peer", peer.to_value()),
            ("queue_id", id.to_value()),
            ("code", 250u16.to_value()),
            ("delta", (-3i32).to_value()),
            ("ratio", 0.5f64.to_value()),
            ("nan", f64::NAN.to_value()),
            ("tls", true.to_value()),
            ("helo", helo.to_value()),
            ("none", none.to_value()),
        ];
        let event = Event {
            level: Level::Info,
            name: "session_end",
            fields: &fields,
            message: format_args!("{peer}: helo {helo}"),
        };
        let mut line = String::new();
        format_json(&mut line, now, &event);
        assert!(line.ends_with("}\n"));
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["timestamp"], "2026-11-29T01:02:03.456Z");
        assert_eq!(v["level"], "info");
        assert_eq!(v["event"], "session_end");
        assert_eq!(v["peer"], "[2001:db8::1]:25");
        assert_eq!(v["queue_id"], "1A2B");
        assert_eq!(v["code"], 250);
        assert_eq!(v["delta"], -3);
        assert_eq!(v["ratio"], 0.5);
        assert!(v["nan"].is_null());
        assert_eq!(v["tls"], true);
        assert_eq!(v["helo"], helo);
        assert!(v["none"].is_null());
        assert_eq!(v["message"], format!("{peer}: helo {helo}"));
        // The keys come in a fixed order: timestamp, level, event, fields, message.
        assert!(line.starts_with("{\"timestamp\":"));
        assert!(line.find("\"event\"").unwrap() < line.find("\"peer\"").unwrap());
        assert!(line.find("\"none\"").unwrap() < line.find("\"message\"").unwrap());
    }

    #[test]
    fn every_character_survives_a_json_round_trip() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let mut line = String::new();
        push_json_str(&mut line, &all);
        assert!(!line.chars().any(|c| c.is_control()));
        let back: String = serde_json::from_str(&line).unwrap();
        assert_eq!(back, all);
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
        crate::log_event!(Debug, "never", { x: {
            evaluated = true;
            1u8
        } }, "{}", 1);
        assert!(!evaluated);
        set_level(Level::Info);
        assert_eq!(level(), Level::Info);
        assert_eq!(format(), LogFormat::Text);
    }
}
