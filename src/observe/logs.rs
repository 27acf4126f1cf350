//! The process's logs: `tracing` events formatted as text or JSON and written
//! to stderr, and the access log's hand-written line ([`super::access`]) to
//! the same writer.
//!
//! Lines are formatted on the thread that logs and written by a thread of
//! their own (`tracing-appender`), through a buffer flushed whenever no line
//! is waiting: one `write` per burst of lines, not one per line on a runtime
//! thread. Not lossy: a full queue makes the logger wait, as a slow stderr did
//! before. Lines still queued are written when the returned guard drops.

use std::io::{IsTerminal, Write};

use tracing::Subscriber;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use super::access;
use crate::config::{LogConfig, LogFormat};

/// Sets the global subscriber for `log` (`RUST_LOG` wins over `log.level`)
/// and, unless stderr is a terminal (coloured text), the hand-written access
/// line. Keep the guard until the end of `main`.
pub fn install(log: &LogConfig) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| "info".into());
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("letta-proxy-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let ansi = log.format == LogFormat::Text && std::io::stderr().is_terminal();
    subscriber(log.format, ansi, filter, writer.clone()).init();
    if !ansi {
        access::install(access::Sink {
            format: log.format,
            // A clone per line, as the subscriber's `make_writer` does: one
            // whole line per channel message, never split between writers.
            write: Box::new(move |line| {
                let _ = writer.clone().write_all(line);
            }),
        });
    }
    guard
}

/// The subscriber [`install`] sets, writing to `writer`: the shapes the
/// hand-written access line must match.
pub fn subscriber<W>(
    format: LogFormat,
    ansi: bool,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
    }
}
