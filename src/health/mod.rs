//! Active health checks: the prober and its scheduler, one task for the whole
//! set, probing every backend of the *current* set each interval (so a reload's
//! new backends are probed without restarting anything), stopped by a token.
//!
//! The verdicts live with each backend (`backend::health_state`, a pure
//! threshold state machine; `backend::outlier` for passive ejection); this
//! module only feeds them. [`check`] is the `letta-proxy health URL` command.

pub mod check;

use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{header, HeaderValue, Request, Uri};
use http_body_util::BodyExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::health_state::Transition;
use crate::backend::pool::{fit_to_connection, Pooled};
use crate::backend::{Backend, Upstreams};
use crate::body::slot::RequestBody;
use crate::config::{HealthConfig, SharedConfig};

/// A health answer longer than this is not read to its end (its connection is
/// closed instead of reused).
const MAX_PROBE_BODY: usize = 64 * 1024;

/// Starts probing the backends of `upstreams` until `stop`. Settings are read
/// from the config in force at every round, so a reload changes path, interval
/// and thresholds.
pub fn spawn(
    upstreams: Arc<Upstreams>,
    config: SharedConfig,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let config = config.load_full();
            let cfg = &config.health;
            if cfg.enabled {
                let set = upstreams.load_full();
                let probes = set.backends.iter().map(|b| probe_one(b, cfg));
                futures_util::future::join_all(probes).await;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(cfg.interval) => {}
            }
        }
    })
}

async fn probe_one(backend: &Arc<Backend>, cfg: &HealthConfig) {
    let ok = probe(backend, &cfg.path, cfg.timeout).await;
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

/// One probe: `GET path` answered 2xx within `timeout`, over the backend's
/// own pool, so it speaks what proxied traffic speaks (TLS, HTTP/2) and keeps
/// an idle connection warm instead of opening one per round.
pub async fn probe(backend: &Backend, path: &str, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, probe_once(backend, path))
        .await
        .unwrap_or(false)
}

async fn probe_once(backend: &Backend, path: &str) -> bool {
    let Ok(pq) = PathAndQuery::try_from(path) else {
        return false;
    };
    let mut conn = match backend.pool.checkout(&backend.url).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(backend = %backend.name, error = %e, "health probe: cannot connect");
            return false;
        }
    };
    let resp = loop {
        match ask(backend, &mut conn, &pq).await {
            Ok(resp) => break resp,
            // A connection kept from the last round may be closed by the
            // backend just as the probe reuses it (uvicorn, Letta's server,
            // drops idle connections after 5 s, the default probe interval):
            // that says nothing about the backend, so one fresh try. A probe
            // is a GET, safe to send twice.
            Err(_) if conn.reused => match backend.pool.connect(&backend.url).await {
                Ok(fresh) => conn = fresh,
                Err(e) => {
                    tracing::debug!(backend = %backend.name, error = %e, "health probe: cannot connect");
                    return false;
                }
            },
            Err(e) => {
                tracing::debug!(backend = %backend.name, error = %e, "health probe failed");
                return false;
            }
        }
    };
    let ok = resp.status().is_success();
    // Read the answer to its end so the connection can serve again.
    let mut body = resp.into_body();
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        match frame.map(|f| f.into_data()) {
            Ok(Ok(data)) => read += data.len(),
            Ok(Err(_)) => {}
            Err(_) => return ok,
        }
        if read > MAX_PROBE_BODY {
            return ok;
        }
    }
    conn.release();
    ok
}

/// Sends the probe's `GET` on `conn` and waits for the answer's head.
async fn ask(
    backend: &Backend,
    conn: &mut Pooled,
    pq: &PathAndQuery,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
    conn.ready().await?;
    let mut req = Request::new(RequestBody::empty());
    *req.uri_mut() = Uri::from(pq.clone());
    let host = HeaderValue::from_str(backend.url.authority.as_str()).expect("a valid authority");
    req.headers_mut().insert(header::HOST, host);
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("letta-proxy-health"),
    );
    fit_to_connection(&mut req, &backend.url, conn.is_h2());
    conn.try_send(req).await.map_err(|e| e.into_error())
}
