//! Active health checks: the prober and its scheduler, one task for the whole
//! set, probing every backend of the *current* set each interval (so a reload's
//! new backends are probed without restarting anything), stopped by a token.
//!
//! The verdicts live with each backend (`backend::health_state`, a pure
//! threshold state machine; `backend::outlier` for passive ejection); this
//! module only feeds them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::health_state::Transition;
use crate::backend::{Backend, Upstreams};
use crate::config::{HealthConfig, SharedConfig};

type ProbeClient = Client<HttpConnector, Empty<Bytes>>;

/// Starts probing the backends of `upstreams` until `stop`. Settings are read
/// from the config in force at every round, so a reload changes path, interval
/// and thresholds.
pub fn spawn(
    upstreams: Arc<Upstreams>,
    config: SharedConfig,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.load().health.timeout));
    connector.set_nodelay(true);
    // Probes use their own small pool so they never queue behind proxied traffic.
    let client: ProbeClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector);
    tokio::spawn(async move {
        loop {
            let config = config.load_full();
            let cfg = &config.health;
            if cfg.enabled {
                let set = upstreams.load_full();
                let probes = set.backends.iter().map(|b| probe_one(&client, b, cfg));
                futures_util::future::join_all(probes).await;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(cfg.interval) => {}
            }
        }
    })
}

async fn probe_one(client: &ProbeClient, backend: &Arc<Backend>, cfg: &HealthConfig) {
    let ok = probe(client, backend, &cfg.path, cfg.timeout).await;
    let transition = backend.observe_probe(ok, cfg.unhealthy_threshold, cfg.healthy_threshold);
    match transition {
        Some(Transition::WentDown) => {
            tracing::warn!(backend = %backend.name, path = %cfg.path, "backend is down (active health check)");
        }
        Some(Transition::CameUp) => {
            backend.outlier.readmit();
            tracing::info!(backend = %backend.name, "backend is up again (active health check)");
        }
        // Ejected by traffic but answering probes: the ejection stands until its
        // cooldown ends; probes judge liveness, traffic judges quality.
        None => {}
    }
}

/// One probe: `GET path` answered 2xx within `timeout`.
pub async fn probe(client: &ProbeClient, backend: &Backend, path: &str, timeout: Duration) -> bool {
    let uri: Uri = match format!("http://{}{}", backend.url.authority, path).parse() {
        Ok(u) => u,
        Err(_) => return false,
    };
    let req = Request::get(uri)
        .header("user-agent", "letta-proxy-health")
        .body(Empty::new())
        .expect("valid probe request");
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) => resp.status().is_success(),
        _ => false,
    }
}
