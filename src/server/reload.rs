//! What triggers a reload of a standalone proxy besides the admin API:
//! SIGHUP, (opt-in, `admin.watch_config`) a change of the config file's
//! modification time, and a change of the HTTPS certificate files (always
//! watched: cert-manager and certbot renew them in place). The reload itself
//! is the gateway's ([`Gateway::reload`]): a file that does not parse or
//! validate changes nothing, a certificate that does not load keeps the old one.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::gateway::{Gateway, ReloadError};

/// Reloads on SIGHUP until `stop`.
pub fn spawn_sighup(gateway: Gateway, stop: CancellationToken) {
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
            if let Err(ReloadError::NoFile) = gateway.reload() {
                // Started without a file: there is still a certificate to re-read.
                gateway.reload_certificates();
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (gateway, stop);
}

/// Reloads when the config file's modification time changes (polled every
/// `every`; no platform watcher needed, and editors that replace the file are seen too).
pub fn spawn_watch(gateway: Gateway, path: PathBuf, every: Duration, stop: CancellationToken) {
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
                let _ = gateway.reload();
            }
        }
    });
}

/// Re-reads the listener's certificate and key when their files change
/// (size or modification time, polled every `every`; a Kubernetes secret
/// update swaps a symlink, which the stat follows). A half-written pair fails
/// to load and keeps the old certificate; the next change is tried again.
pub fn spawn_cert_watch(gateway: Gateway, every: Duration, stop: CancellationToken) {
    let Some(tls) = gateway.server_tls().cloned() else {
        return;
    };
    tokio::spawn(async move {
        let mut last = tls.files_stamp();
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = tls.files_stamp();
            if now != last {
                tracing::info!("TLS certificate files changed: reloading them");
                gateway.reload_certificates();
                // After a reload to new paths, watch those.
                last = tls.files_stamp();
            }
        }
    });
}
