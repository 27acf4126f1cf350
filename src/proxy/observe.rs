//! What is recorded about every request, wherever it was answered (a backend,
//! the cache, the proxy's own error): the request id, the duration histogram,
//! the active-requests gauge, the sliding stats window and the access log line.
//!
//! [`Observation::begin`] runs before the request enters the stack and
//! [`Observation::finish`] attaches the record to the response body, so it is
//! written once, when the body ends (a stream counts whole) or is dropped. The
//! backend that answered is known to the response body itself.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response};

use super::body::{BodyOutcome, OnComplete, ResponseBody};
use super::{headers, with_rng, Proxy};
use crate::backend::Backend;
use crate::routes;

/// A request being observed.
pub struct Observation {
    proxy: Arc<Proxy>,
    start: Instant,
    method: Method,
    route: &'static str,
    request_id: HeaderValue,
    /// `[metrics] enabled`: off skips the per-request families (the stats window
    /// and access log are separate switches).
    metrics: bool,
    /// Set once the record is written (by the body's end or on drop).
    recorded: bool,
}

impl Observation {
    /// Starts observing `req`: counts it active and makes sure it has an `x-request-id`.
    pub fn begin<B>(proxy: &Arc<Proxy>, req: &mut Request<B>) -> Observation {
        let metrics = proxy.metrics_enabled();
        if metrics {
            proxy.metrics.active_requests.inc();
        }
        let request_id = with_rng(|rng| headers::ensure_request_id(req.headers_mut(), rng));
        Observation {
            proxy: proxy.clone(),
            start: Instant::now(),
            method: req.method().clone(),
            route: routes::classify(req.uri().path()).template,
            request_id,
            metrics,
            recorded: false,
        }
    }

    /// Returns `resp` with the request id set and the record attached to its body.
    pub fn finish(self, mut resp: Response<ResponseBody>) -> Response<ResponseBody> {
        resp.headers_mut()
            .insert(headers::REQUEST_ID.clone(), self.request_id.clone());
        let record = Record {
            backend: resp.body().served_by().cloned(),
            status: resp.status().as_u16(),
            cache: cache_label(resp.headers().get("x-cache")),
            obs: self,
        };
        resp.body_mut().on_end(Box::new(record));
        resp
    }

    fn record(
        &mut self,
        status: u16,
        backend: Option<&Backend>,
        cache: &'static str,
        outcome: BodyOutcome,
    ) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let p = &self.proxy;
        let elapsed = self.start.elapsed();
        let digits = status_digits(status);
        let status_str = std::str::from_utf8(&digits).unwrap_or("000");
        let backend_name = backend.map_or("none", |b| &b.name);
        if self.metrics {
            p.metrics
                .request_duration
                .with_label_values(&[self.method.as_str(), self.route, status_str, backend_name])
                .observe(elapsed.as_secs_f64());
            p.metrics.active_requests.dec();
        }
        let failed = status >= 500 || !outcome.ok;
        let now = p.upstreams.now_ns();
        p.window.record(now, elapsed, failed);
        if let Some(b) = backend {
            b.window.record(now, elapsed, failed);
            if !outcome.ok {
                b.metrics.body_errors.inc();
            }
        }
        if p.access_log() {
            tracing::info!(
                target: "letta_proxy::access",
                request_id = self.request_id.to_str().unwrap_or(""),
                method = self.method.as_str(),
                route = self.route,
                status,
                backend = backend_name,
                cache,
                // Whole microseconds: `1.12` rather than `1.1196089999999999`.
                duration_ms = elapsed.as_micros() as f64 / 1000.0,
                bytes = outcome.bytes,
                complete = outcome.ok,
            );
        }
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        // The client left before any response: nginx's 499 "client closed request".
        self.record(
            499,
            None,
            "none",
            BodyOutcome {
                ok: false,
                bytes: 0,
            },
        );
    }
}

struct Record {
    obs: Observation,
    backend: Option<Arc<Backend>>,
    status: u16,
    cache: &'static str,
}

impl OnComplete for Record {
    fn complete(mut self: Box<Self>, outcome: BodyOutcome) {
        let backend = self.backend.take();
        let (status, cache) = (self.status, self.cache);
        self.obs.record(status, backend.as_deref(), cache, outcome);
    }
}

fn cache_label(v: Option<&HeaderValue>) -> &'static str {
    match v.map(|v| v.as_bytes()) {
        Some(b"HIT") => "hit",
        Some(b"MISS") => "miss",
        Some(b"BYPASS") => "bypass",
        _ => "none",
    }
}

fn status_digits(s: u16) -> [u8; 3] {
    let s = s.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}
