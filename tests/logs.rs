//! The hand-written access line is, byte for byte, what `tracing-subscriber`
//! prints for the same event with the binary's subscriber: text (no colour)
//! and JSON, every field, escaping included. Only the timestamp differs (two
//! clocks read), and both have the same RFC 3339 shape.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use letta_proxy::config::LogFormat;
use letta_proxy::observe::access::{self, Line};
use letta_proxy::observe::logs;

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// What the subscriber prints for `line`'s event.
fn via_tracing(format: LogFormat, line: &Line<'_>) -> String {
    let out = Captured::default();
    let subscriber = logs::subscriber(
        format,
        false,
        tracing_subscriber::EnvFilter::new("info"),
        out.clone(),
    );
    tracing::subscriber::with_default(subscriber, || access::event(line));
    let bytes = out.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

fn by_hand(format: LogFormat, line: &Line<'_>) -> String {
    let mut buf = Vec::new();
    match format {
        LogFormat::Text => access::text(&mut buf, SystemTime::now(), line),
        LogFormat::Json => access::json(&mut buf, SystemTime::now(), line),
    }
    String::from_utf8(buf).unwrap()
}

const TIMESTAMP: usize = "2026-11-28T06:19:27.123456Z".len();

/// `(timestamp, rest)` of a line of either shape.
fn split_timestamp(format: LogFormat, line: &str) -> (&str, String) {
    let start = match format {
        LogFormat::Text => 0,
        LogFormat::Json => "{\"timestamp\":\"".len(),
    };
    let stamp = &line[start..start + TIMESTAMP];
    let rest = format!("{}{}", &line[..start], &line[start + TIMESTAMP..]);
    (stamp, rest)
}

fn lines() -> Vec<Line<'static>> {
    let base = Line {
        request_id: "0af7651916cd43dd8448eb211c80319c",
        method: "GET",
        route: "/v1/agents/{agent_id}",
        status: 200,
        backend: "letta-a",
        cache: "miss",
        micros: 1_120,
        bytes: 1_536,
        complete: true,
    };
    vec![
        base.clone(),
        Line {
            status: 499,
            backend: "none",
            cache: "none",
            micros: 0,
            bytes: 0,
            complete: false,
            ..base.clone()
        },
        Line {
            method: "POST",
            route: "/v1/agents/{agent_id}/messages/stream",
            micros: 61_000_007,
            bytes: u64::MAX,
            ..base.clone()
        },
        // A client's own x-request-id: any visible ASCII, tab included.
        Line {
            request_id: "say \"hi\"\\\tnow",
            ..base.clone()
        },
        Line {
            request_id: "",
            backend: "réplica-ü",
            ..base
        },
    ]
}

#[test]
fn the_hand_written_access_line_is_the_subscribers_line() {
    for format in [LogFormat::Text, LogFormat::Json] {
        for line in lines() {
            let expected = via_tracing(format, &line);
            let got = by_hand(format, &line);
            let (stamp_e, rest_e) = split_timestamp(format, &expected);
            let (stamp_g, rest_g) = split_timestamp(format, &got);
            assert_eq!(rest_g, rest_e, "{format:?} {line:?}");
            for stamp in [stamp_e, stamp_g] {
                assert!(
                    stamp.ends_with('Z') && humantime::parse_rfc3339(stamp).is_ok(),
                    "{stamp}"
                );
            }
        }
    }
}

#[test]
fn a_json_line_is_one_json_object() {
    for line in lines() {
        let v: serde_json::Value = serde_json::from_str(&by_hand(LogFormat::Json, &line)).unwrap();
        assert_eq!(v["target"], "letta_proxy::access");
        assert_eq!(v["request_id"], line.request_id);
        assert_eq!(v["bytes"], line.bytes);
    }
}
