//! Hot reload: re-read the config file and apply it without dropping anything.
//!
//! Triggers: SIGHUP, `POST /-/reload` on the admin listener, and (opt-in,
//! `admin.watch_config`) a change of the file's modification time. A file that
//! does not parse or validate changes nothing: the old config keeps serving, and
//! the error is logged, counted and returned to the caller.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::proxy::Proxy;

/// What a successful reload changed, for the log and the admin answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    pub source: String,
    pub strategy: &'static str,
    pub backends: Vec<String>,
    pub duration_ms: f64,
}

/// Reloads `proxy` from the file it was started with (`None` = nothing to reload from).
pub fn reload(proxy: &Proxy) -> Result<ReloadReport, ReloadError> {
    let started = std::time::Instant::now();
    let path = proxy.config_path().ok_or(ReloadError::NoFile)?;
    let result = Config::load(Some(&path), std::env::vars());
    let metrics = &proxy.metrics;
    match result {
        Ok(config) => {
            let report = ReloadReport {
                source: path.display().to_string(),
                strategy: config.balancer.strategy.as_str(),
                backends: config.backends.iter().map(|b| b.name.clone()).collect(),
                duration_ms: 0.0,
            };
            proxy.apply(config);
            metrics.reloads.with_label_values(&["success"]).inc();
            metrics.last_reload_success.set(unix_now());
            let report = ReloadReport {
                duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                ..report
            };
            tracing::info!(source = %report.source, strategy = report.strategy, backends = ?report.backends, "config reloaded");
            Ok(report)
        }
        Err(e) => {
            metrics.reloads.with_label_values(&["failure"]).inc();
            tracing::error!(error = %e, "config reload failed; the previous config stays in force");
            Err(ReloadError::Invalid(e))
        }
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the proxy was not started from a config file; nothing to reload")]
    NoFile,
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Reloads on SIGHUP until `stop`.
pub fn spawn_sighup(proxy: Arc<Proxy>, stop: CancellationToken) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; reload with POST /-/reload");
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            tracing::info!("SIGHUP: reloading config");
            let _ = reload(&proxy);
        }
    });
    #[cfg(not(unix))]
    let _ = (proxy, stop);
}

/// Reloads when the config file's modification time changes (polled every
/// `every`; no platform watcher needed, and editors that replace the file are seen too).
pub fn spawn_watch(proxy: Arc<Proxy>, path: PathBuf, every: Duration, stop: CancellationToken) {
    tokio::spawn(async move {
        let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut last = mtime(&path);
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = mtime(&path);
            if now.is_some() && now != last {
                last = now;
                tracing::info!(path = %path.display(), "config file changed: reloading");
                let _ = reload(&proxy);
            }
        }
    });
}
