//! What triggers a reload of a standalone proxy besides the admin API:
//! SIGHUP, and (opt-in, `admin.watch_config`) a change of the config file's
//! modification time. The reload itself is the gateway's ([`Gateway::reload`]):
//! a file that does not parse or validate changes nothing.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;

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
            let _ = gateway.reload();
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
