//! The control plane: swapping the configuration in force and telling every
//! part. Forwarding never waits for it: a request loads the configuration
//! once and sees one version from start to end.
//!
//! Triggers: `POST /-/reload` and the admin edits (`update`), SIGHUP and the
//! config file's modification time (`server::reload`). A file that does not
//! parse or validate changes nothing: the old config keeps serving, and the
//! error is logged, counted and returned.

use std::sync::Arc;
use std::time::SystemTime;

use super::Gateway;
use crate::config::{Config, ConfigError};

/// What a successful reload changed, for the log and the admin answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    pub source: String,
    pub strategy: &'static str,
    pub backends: Vec<String>,
    pub duration_ms: f64,
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

impl Gateway {
    /// Applies a new, validated configuration: backends (kept ones keep their
    /// state and pools), strategy, limits, health, cache rules. Listener
    /// addresses, connection limits and the upstream pool settings stay as
    /// they were until a restart.
    pub fn apply(&self, config: Config) {
        let _one_at_a_time = self.parts.changing.lock().expect("config lock poisoned");
        self.apply_locked(config);
    }

    /// Changes the running config with `edit` (admin calls), validating the
    /// result. A later reload from the file replaces such edits.
    pub fn update(
        &self,
        edit: impl FnOnce(&mut Config) -> Result<(), String>,
    ) -> Result<Arc<Config>, String> {
        let _one_at_a_time = self.parts.changing.lock().expect("config lock poisoned");
        let mut next = (*self.config()).clone();
        edit(&mut next)?;
        next.validate()?;
        self.apply_locked(next);
        Ok(self.config())
    }

    fn apply_locked(&self, config: Config) {
        let p = &self.parts;
        let config = Arc::new(config);
        p.upstreams.replace(&config);
        p.limits.reload(config.limits.max_in_flight);
        p.proxy.reload(config.clone());
        if let Some(c) = &p.cache {
            c.follow(&config);
        }
        p.config.store(config);
    }

    /// Re-reads the listener's certificate files, as `config` names them. A
    /// failure keeps the current certificate (and is logged and counted);
    /// turning HTTPS on or off needs a restart, since the listener stays.
    fn reload_tls(&self, config: &Config) {
        match (&self.parts.tls, &config.server.tls) {
            (Some(tls), Some(files)) => match tls.reload_from(files) {
                Ok(cert) => tracing::info!(
                    path = %cert.path.display(),
                    subject = %cert.subject,
                    not_after = %cert.not_after_text(),
                    "TLS certificate reloaded"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "TLS certificate reload failed; the current certificate stays"
                ),
            },
            (None, None) => {}
            _ => tracing::warn!(
                "[server.tls] added or removed: the listener changes protocol only on restart"
            ),
        }
    }

    /// Re-reads the listener's certificate files named by the config in force
    /// (SIGHUP without a config file; the certificate watcher).
    pub fn reload_certificates(&self) {
        self.reload_tls(&self.config());
    }

    /// Re-reads the file the gateway was started from and applies it, and
    /// re-reads the listener's certificate files.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let started = std::time::Instant::now();
        let path = self.config_path().cloned().ok_or(ReloadError::NoFile)?;
        let metrics = self.metrics();
        match Config::load(Some(&path), std::env::vars()) {
            Ok(config) => {
                let report = ReloadReport {
                    source: path.display().to_string(),
                    strategy: config.balancer.strategy.as_str(),
                    backends: config.backends.iter().map(|b| b.name.clone()).collect(),
                    duration_ms: 0.0,
                };
                // The certificate files are re-read on every reload, changed or not.
                self.reload_tls(&config);
                self.apply(config);
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

    /// Drops cached answers that mention the Letta id `id` (here, in Redis, on
    /// every instance); `None` when the cache is off.
    pub async fn purge_cache_id(&self, id: &str) -> Option<usize> {
        Some(self.cache()?.purge_id(id).await)
    }

    /// Drops cached answers under the path `prefix`; `None` when the cache is off.
    pub async fn purge_cache_prefix(&self, prefix: &str) -> Option<usize> {
        Some(self.cache()?.purge_prefix(prefix).await)
    }
}
