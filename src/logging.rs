//! Where log lines go: stderr, through a buffer (nginx's `access_log … buffer=
//! flush=`).
//!
//! One `write(2)` per access line cost 16–20 % of a core's req/s (benches/load.sh
//! features). Lines are appended to one in-memory buffer instead and written out
//! when it passes `log.buffer`, every `log.flush_interval`, at exit, and at once
//! for any WARN or ERROR line (which also carries out what was buffered before it,
//! so order is kept). `log.buffer = 0` writes every line as it comes.
//!
//! What a crash can lose: at most `flush_interval` worth of INFO lines, as with
//! nginx's buffered access log. A clean exit (SIGTERM, SIGINT) loses nothing:
//! the [`FlushGuard`] returned by [`init`] writes the rest when dropped.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogConfig, LogFormat};

/// Log lines waiting for one `write(2)`.
pub struct Sink {
    buf: Mutex<Vec<u8>>,
    /// Write out once this many bytes are waiting (0: every line at once).
    limit: usize,
}

impl Sink {
    pub fn new(limit: usize) -> Arc<Sink> {
        Arc::new(Sink {
            buf: Mutex::new(Vec::with_capacity(limit)),
            limit,
        })
    }

    /// Writes out everything waiting.
    pub fn flush(&self) {
        let mut buf = self.lock();
        Self::write_out(&mut buf);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock leaves at worst a partial line: keep logging.
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_out(buf: &mut Vec<u8>) {
        if buf.is_empty() {
            return;
        }
        // Nowhere to report a failed write to stderr; the lines are dropped either way.
        let _ = std::io::stderr().lock().write_all(buf);
        buf.clear();
    }

    /// Bytes waiting (for tests).
    pub fn pending(&self) -> usize {
        self.lock().len()
    }
}

/// The writer for one log line.
pub struct LineWriter<'a> {
    sink: &'a Sink,
    /// WARN and ERROR: out at once, with what was waiting before.
    urgent: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut buf = self.sink.lock();
        buf.extend_from_slice(line);
        if self.urgent || buf.len() >= self.sink.limit {
            Sink::write_out(&mut buf);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter {
            sink: self,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter<'a> {
        LineWriter {
            sink: self,
            // tracing orders levels by verbosity: ERROR < WARN < INFO.
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

/// Writes out what is buffered when dropped (hold it until `main` returns).
pub struct FlushGuard(Arc<Sink>);

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// Installs the global subscriber from `[log]` (`RUST_LOG` wins over `level`)
/// and, when buffering, a thread that writes out every `flush_interval`.
pub fn init(log: &LogConfig) -> FlushGuard {
    let sink = Sink::new(usize::try_from(log.buffer).unwrap_or(usize::MAX));
    if log.buffer > 0 {
        let (sink, every) = (sink.clone(), log.flush_interval);
        std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || loop {
                std::thread::sleep(every.max(Duration::from_millis(10)));
                sink.flush();
            })
            .expect("spawn the log flush thread");
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(SharedSink(sink.clone()));
    match log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    FlushGuard(sink)
}

/// The sink as the subscriber holds it (shared with the flush thread and guard).
struct SharedSink(Arc<Sink>);

impl<'a> MakeWriter<'a> for SharedSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        self.0.make_writer()
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter<'a> {
        self.0.make_writer_for(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sink: &Sink, level: Level, text: &str) {
        let mut w = LineWriter {
            sink,
            urgent: level <= Level::WARN,
        };
        w.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn info_lines_wait_until_the_buffer_fills() {
        let sink = Sink::new(64);
        line(&sink, Level::INFO, "first access line\n");
        line(&sink, Level::INFO, "second access line\n");
        assert_eq!(sink.pending(), 37, "both lines wait in memory");
        line(
            &sink,
            Level::INFO,
            "a third line that takes the buffer over its limit\n",
        );
        assert_eq!(sink.pending(), 0, "written out once over the limit");
    }

    #[test]
    fn warnings_go_out_at_once_with_what_waited() {
        let sink = Sink::new(1 << 16);
        line(&sink, Level::INFO, "access\n");
        assert_eq!(sink.pending(), 7);
        line(&sink, Level::WARN, "backend down\n");
        assert_eq!(sink.pending(), 0);
        line(&sink, Level::ERROR, "error\n");
        assert_eq!(sink.pending(), 0);
    }

    #[test]
    fn a_zero_buffer_writes_every_line() {
        let sink = Sink::new(0);
        line(&sink, Level::INFO, "access\n");
        assert_eq!(sink.pending(), 0);
    }

    #[test]
    fn flush_empties_the_buffer() {
        let sink = Sink::new(1 << 16);
        line(&sink, Level::INFO, "access\n");
        sink.flush();
        assert_eq!(sink.pending(), 0);
        let guard = FlushGuard(sink.clone());
        line(&sink, Level::INFO, "access\n");
        drop(guard);
        assert_eq!(sink.pending(), 0, "the guard writes out the rest");
    }
}
