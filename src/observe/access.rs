//! The access log line: one per request, target `letta_proxy::access`.
//!
//! Formatted through `tracing` a line cost about 15,000 instructions, two
//! thirds of them `core::fmt` (ten fields, each through a visitor and a
//! `Debug` impl; the timestamp field by field). When the process's logs are
//! set up by [`super::logs::install`] (the binary) the line is instead written
//! by hand, as nginx and Envoy write theirs from a format compiled ahead:
//! bytes appended to one buffer, integers by `itoa`, and handed to the same
//! writer as every other log line. Byte for byte it is the line
//! `tracing-subscriber` prints for the same event, in text and in JSON (the
//! tests compare both); `RUST_LOG` and `[log] level` still decide whether it
//! is written, through `tracing::enabled!`.
//!
//! Without that setup (the library embedded in an application, the tests) the
//! line is an ordinary `tracing` event, so the application's subscriber sees it.

use std::cell::Cell;
use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;

/// The target every access line is logged under (the hand-written shapes spell it out too).
pub const TARGET: &str = "letta_proxy::access";

/// What one access line says.
#[derive(Debug, Clone)]
pub struct Line<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    /// The route template, never the path (ids stay out of the log).
    pub route: &'a str,
    pub status: u16,
    pub backend: &'a str,
    pub cache: &'a str,
    /// Whole microseconds from the request's start to its body's end.
    pub micros: u64,
    pub bytes: u64,
    pub complete: bool,
}

/// Takes one whole line (ending in `\n`).
pub type WriteLine = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Where hand-written lines go, in which shape.
pub struct Sink {
    pub format: LogFormat,
    pub write: WriteLine,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// From now on, access lines are written by hand to `sink`. Once per process
/// (the first call wins), with the global `tracing` subscriber whose output
/// the lines must match.
pub fn install(sink: Sink) {
    let _ = SINK.set(sink);
}

/// Logs `line`, if `RUST_LOG` / `[log] level` let `letta_proxy::access` info through.
pub fn log(line: &Line<'_>) {
    match SINK.get() {
        Some(sink) => {
            if tracing::enabled!(target: TARGET, tracing::Level::INFO) {
                let mut buf = Vec::with_capacity(320);
                let now = SystemTime::now();
                match sink.format {
                    LogFormat::Text => text(&mut buf, now, line),
                    LogFormat::Json => json(&mut buf, now, line),
                }
                (sink.write)(&buf);
            }
        }
        None => event(line),
    }
}

/// The line as a `tracing` event: what the hand-written forms reproduce.
pub fn event(line: &Line<'_>) {
    tracing::info!(
        target: TARGET,
        request_id = line.request_id,
        method = line.method,
        route = line.route,
        status = line.status,
        backend = line.backend,
        cache = line.cache,
        // Whole microseconds: `1.12` rather than `1.1196089999999999`.
        duration_ms = line.micros as f64 / 1000.0,
        bytes = line.bytes,
        complete = line.complete,
    );
}

/// `tracing-subscriber`'s full text format without colours:
/// `<time>  INFO letta_proxy::access: request_id="…" method="GET" … complete=true`.
pub fn text(buf: &mut Vec<u8>, now: SystemTime, line: &Line<'_>) {
    timestamp(buf, now);
    buf.extend_from_slice(b"  INFO letta_proxy::access:");
    fields(
        buf,
        line,
        |buf, name| {
            buf.push(b' ');
            buf.extend_from_slice(name.as_bytes());
            buf.push(b'=');
        },
        debug_str,
    );
    buf.push(b'\n');
}

/// `tracing-subscriber`'s JSON format with the event's fields flattened:
/// `{"timestamp":"…","level":"INFO","request_id":"…",…,"target":"letta_proxy::access"}`.
pub fn json(buf: &mut Vec<u8>, now: SystemTime, line: &Line<'_>) {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(buf, now);
    buf.extend_from_slice(b"\",\"level\":\"INFO\"");
    fields(
        buf,
        line,
        |buf, name| {
            buf.extend_from_slice(b",\"");
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(b"\":");
        },
        json_str,
    );
    buf.extend_from_slice(b",\"target\":\"letta_proxy::access\"}\n");
}

/// The event's fields in its order, each after `key(name)`; strings by `string`,
/// numbers and booleans as both shapes write them.
fn fields(
    buf: &mut Vec<u8>,
    line: &Line<'_>,
    key: impl Fn(&mut Vec<u8>, &str),
    string: impl Fn(&mut Vec<u8>, &str),
) {
    key(buf, "request_id");
    string(buf, line.request_id);
    key(buf, "method");
    string(buf, line.method);
    key(buf, "route");
    string(buf, line.route);
    key(buf, "status");
    integer(buf, line.status);
    key(buf, "backend");
    string(buf, line.backend);
    key(buf, "cache");
    string(buf, line.cache);
    key(buf, "duration_ms");
    millis(buf, line.micros);
    key(buf, "bytes");
    integer(buf, line.bytes);
    key(buf, "complete");
    buf.extend_from_slice(if line.complete { b"true" } else { b"false" });
}

/// RFC 3339 in UTC with microseconds, as `tracing-subscriber`'s default timer:
/// `2026-11-28T06:19:27.123456Z`. The date and time of day are formatted
/// once a second per thread (by humantime); the microseconds every line.
fn timestamp(buf: &mut Vec<u8>, now: SystemTime) {
    thread_local! {
        static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        let mut full = Vec::with_capacity(20);
        let _ = write!(
            full,
            "{}",
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs))
        );
        // `YYYY-MM-DDTHH:MM:SS` of `YYYY-MM-DDTHH:MM:SSZ`.
        if let Some(prefix) = full.get(..19) {
            text.copy_from_slice(prefix);
        }
        SECOND.set((secs, text));
    }
    buf.extend_from_slice(&text);
    let micros = since.subsec_micros();
    let mut digits = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'Z'];
    let mut rest = micros;
    for d in digits[1..7].iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    buf.extend_from_slice(&digits);
}

fn integer(buf: &mut Vec<u8>, n: impl itoa::Integer) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `micros / 1000` as `f64`'s `Debug` (and JSON's shortest form) prints it:
/// `1.12`, `0.007`, `5.0`. Exact below 2^53 µs: the quotient is the double
/// nearest a decimal of three places, whose shortest form is that decimal.
fn millis(buf: &mut Vec<u8>, micros: u64) {
    integer(buf, micros / 1000);
    let frac = micros % 1000;
    buf.push(b'.');
    if frac == 0 {
        buf.push(b'0');
        return;
    }
    let digits = [
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let len = if digits[2] != b'0' {
        3
    } else if digits[1] != b'0' {
        2
    } else {
        1
    };
    buf.extend_from_slice(&digits[..len]);
}

/// `s` in quotes, copied as is when it is printable ASCII that neither
/// `Debug` nor JSON escapes, else as `escaped` writes it (quotes included).
fn quoted(buf: &mut Vec<u8>, s: &str, escaped: impl FnOnce(&mut Vec<u8>, &str)) {
    if s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
    {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        escaped(buf, s);
    }
}

/// `s` as `<str as Debug>` prints it (how `tracing-subscriber` prints a string field).
fn debug_str(buf: &mut Vec<u8>, s: &str) {
    quoted(buf, s, |buf, s| {
        let _ = write!(buf, "{s:?}");
    });
}

/// `s` as `serde_json` writes a string.
fn json_str(buf: &mut Vec<u8>, s: &str) {
    quoted(buf, s, |buf, s| {
        let _ = serde_json::to_writer(&mut *buf, s);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_print_as_f64_does() {
        for micros in [
            0u64,
            1,
            7,
            10,
            100,
            999,
            1000,
            1001,
            1120,
            1196,
            5000,
            123_456_789,
            (1 << 40) + 3,
        ] {
            let mut buf = Vec::new();
            millis(&mut buf, micros);
            let expected = format!("{:?}", micros as f64 / 1000.0);
            assert_eq!(String::from_utf8(buf).unwrap(), expected, "{micros} µs");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        // Within one second (the cached part) and into the next.
        for (nanos, secs, text) in [
            (123_456_789, 1_700_000_000, "2023-11-14T22:13:20.123456Z"),
            (7_000, 1_700_000_000, "2023-11-14T22:13:20.000007Z"),
            (999_999_999, 1_700_000_000, "2023-11-14T22:13:20.999999Z"),
            (0, 1_700_000_001, "2023-11-14T22:13:21.000000Z"),
            (1_000, 1_767_225_599, "2025-12-31T23:59:59.000001Z"),
        ] {
            let t = UNIX_EPOCH + Duration::new(secs, nanos);
            let mut buf = Vec::new();
            timestamp(&mut buf, t);
            assert_eq!(String::from_utf8(buf).unwrap(), text);
            assert_eq!(text, humantime::format_rfc3339_micros(t).to_string());
        }
    }

    #[test]
    fn strings_are_escaped_as_debug_and_json_escape_them() {
        for s in [
            "plain-id",
            "with \"quotes\"",
            "back\\slash",
            "tab\there",
            "é",
        ] {
            let mut d = Vec::new();
            debug_str(&mut d, s);
            assert_eq!(String::from_utf8(d).unwrap(), format!("{s:?}"));
            let mut j = Vec::new();
            json_str(&mut j, s);
            assert_eq!(
                String::from_utf8(j).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }
}
