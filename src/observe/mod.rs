//! [`ObserveLayer`]: what is recorded about every forwarded request, wherever
//! it was answered (a backend, the cache, a limit, the proxy's own error): the
//! active-requests gauge, the duration histogram, the overall stats window and
//! the access log line ([`access`]). In tower's layer / service / future
//! shape. [`logs`] sets up the process's logs.
//!
//! The record is attached to the response body ([`Record`], a body watch) and
//! written once, when the body ends (a stream counts whole) or is dropped. If
//! the client leaves before any response, the future's drop records nginx's 499
//! "client closed request". This is also where a request is classified once
//! ([`Classified`], in the request's extensions) for every layer below.
//!
//! The request id is set above this layer ([`request_id::RequestIdLayer`]) and read here.

pub mod access;
pub mod logs;
pub mod request_id;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response};
use http_body::Body;
use tower::{Layer, Service};

use crate::backend::Upstreams;
use crate::body::{Outcome, Watch, Watched};
use crate::config::SharedConfig;
use crate::metrics::Metrics;
use crate::routes::Classified;
use crate::stats::window::Window;

/// `x-cache`, read for the access log.
static X_CACHE: http::HeaderName = http::HeaderName::from_static("x-cache");

/// What the records of every request go to.
pub struct Recorder {
    pub config: SharedConfig,
    pub metrics: Metrics,
    /// Recent outcomes over every backend, for `/-/stats`.
    pub window: Window,
    /// The clock of the stats windows.
    pub upstreams: Arc<Upstreams>,
}

/// Puts observation in front of a service.
#[derive(Clone)]
pub struct ObserveLayer {
    recorder: Arc<Recorder>,
}

impl ObserveLayer {
    pub fn new(recorder: Arc<Recorder>) -> ObserveLayer {
        ObserveLayer { recorder }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;

    fn layer(&self, inner: S) -> ObserveService<S> {
        ObserveService {
            inner,
            recorder: self.recorder.clone(),
        }
    }
}

/// Observation around `S`.
#[derive(Clone)]
pub struct ObserveService<S> {
    inner: S,
    recorder: Arc<Recorder>,
}

impl<S, ReqB, B> Service<Request<ReqB>> for ObserveService<S>
where
    S: Service<Request<ReqB>, Response = Response<B>, Error = Infallible>,
    S::Future: Unpin,
    B: Body,
{
    type Response = Response<Watched<B, Record>>;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let config = self.recorder.config.load();
        let metrics = config.metrics.enabled;
        if metrics {
            self.recorder.metrics.active_requests.inc();
        }
        let classified = Classified::of(req.uri().path());
        let template = classified.route(req.uri().path()).template;
        req.extensions_mut().insert(classified);
        let request_id = req
            .headers()
            .get(&request_id::REQUEST_ID)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static(""));
        let started = Started {
            recorder: self.recorder.clone(),
            start: Instant::now(),
            method: req.method().clone(),
            route: template,
            request_id,
            metrics,
            access_log: config.log.access_log,
        };
        ObserveFuture {
            inner: self.inner.call(req),
            started: Some(started),
        }
    }
}

/// What is known of a request before its answer.
struct Started {
    recorder: Arc<Recorder>,
    start: Instant,
    method: Method,
    route: &'static str,
    request_id: HeaderValue,
    /// `[metrics] enabled`, as of the request's start.
    metrics: bool,
    access_log: bool,
}

/// The future of [`ObserveService`]: the inner one, then the record attached.
pub struct ObserveFuture<F> {
    inner: F,
    started: Option<Started>,
}

impl<F, B> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>> + Unpin,
    B: Body,
{
    type Output = Result<Response<Watched<B, Record>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let resp = match ready!(Pin::new(&mut self.inner).poll(cx)) {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let started = self.started.take().expect("polled after completion");
        let record = Record {
            status: resp.status().as_u16(),
            backend: resp.headers().get(&crate::proxy::headers::BACKEND).cloned(),
            cache: cache_label(resp.headers().get(&X_CACHE)),
            started,
        };
        Poll::Ready(Ok(resp.map(|b| Watched::new(b, record))))
    }
}

impl<F> Drop for ObserveFuture<F> {
    fn drop(&mut self) {
        // Dropped before an answer: the client left. nginx's 499.
        if let Some(started) = self.started.take() {
            let record = Record {
                status: 499,
                backend: None,
                cache: "none",
                started,
            };
            record.write(Outcome {
                complete: false,
                bytes: 0,
            });
        }
    }
}

/// A request's record, written when its response body ends.
pub struct Record {
    started: Started,
    status: u16,
    /// `x-letta-proxy-backend` of the answer: which replica, if any.
    backend: Option<HeaderValue>,
    cache: &'static str,
}

impl Watch for Record {
    fn finish(self, outcome: Outcome) {
        self.write(outcome);
    }
}

impl Record {
    fn write(self, outcome: Outcome) {
        let s = &self.started;
        let r = &s.recorder;
        let elapsed = s.start.elapsed();
        let backend = self
            .backend
            .as_ref()
            .and_then(|b| b.to_str().ok())
            .unwrap_or("none");
        if s.metrics {
            let digits = status_digits(self.status);
            let status = std::str::from_utf8(&digits).unwrap_or("000");
            r.metrics
                .request_duration
                .with_label_values(&[s.method.as_str(), s.route, status, backend])
                .observe(elapsed.as_secs_f64());
            r.metrics.active_requests.dec();
        }
        let failed = self.status >= 500 || !outcome.complete;
        r.window.record(r.upstreams.now_ns(), elapsed, failed);
        if s.access_log {
            access::log(&access::Line {
                request_id: s.request_id.to_str().unwrap_or(""),
                method: s.method.as_str(),
                route: s.route,
                status: self.status,
                backend,
                cache: self.cache,
                micros: elapsed.as_micros().try_into().unwrap_or(u64::MAX),
                bytes: outcome.bytes,
                complete: outcome.complete,
            });
        }
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
