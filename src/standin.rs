//! A stand-in Letta server: enough of Letta's REST shape to show the proxy
//! working without Letta (`letta-proxy --demo`) and to test it over real sockets.
//!
//! Every answer names the replica that served it (`x-standin-name` and a
//! `served_by` field). Query parameters make it misbehave on demand, on any path:
//! `delay_ms=N` waits before the headers, `status=N` answers with that status,
//! `hang=1` never answers; `blocks=`/`mention=` put ids in the JSON,
//! `cache_control=`/`vary=` set those response headers (cache tests); a
//! `served_seq` field tells a fresh answer from a replayed one.
//! `POST …/messages/stream?events=N&interval_ms=M` streams N Server-Sent
//! Events M ms apart, then `data: [DONE]`. `/__echo` streams the
//! request body back; `/__headers` returns the request headers; `/__bytes?n=N`
//! streams N deterministic bytes. [`Stats`] records what reached it (with the
//! peak number of writes to one agent or block at once), and
//! [`StandIn::set_mode`] makes the whole replica hang or fail (health included).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How a stand-in behaves, for every request including health probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answers normally.
    Normal,
    /// Accepts requests and never answers.
    Hang,
    /// Answers every request with this status.
    Fail(u16),
    /// Answers normally after this many milliseconds (a slow replica).
    Slow(u16),
}

/// What reached a stand-in, for assertions.
#[derive(Debug, Default)]
pub struct Stats {
    /// Current [`Mode`], encoded: 0 normal, 1 hang, 100..=599 the status to fail
    /// with, 1_000_000 + ms slow.
    mode: AtomicU64,
    /// Requests received (any path).
    pub requests: AtomicU64,
    /// Requests being handled right now (until the response body ends).
    pub active: AtomicU64,
    /// Highest `active` seen.
    pub peak_active: AtomicU64,
    /// `(method, path, x-request-id)` of every request, in arrival order.
    pub log: Mutex<Vec<(String, String, String)>>,
    /// Per agent or block id: writes (not GET/HEAD) being handled now, and
    /// the most at once — Letta's races need two at once on one id.
    writes: Mutex<HashMap<String, (u64, u64)>>,
}

impl Stats {
    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
    /// Requests being handled now.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::SeqCst)
    }
    /// Highest concurrency seen.
    pub fn peak(&self) -> u64 {
        self.peak_active.load(Ordering::SeqCst)
    }
    /// Copy of the request log.
    pub fn log(&self) -> Vec<(String, String, String)> {
        self.log.lock().expect("stats log poisoned").clone()
    }
    /// Most writes to agent or block `id` handled at once (until each
    /// response body ended).
    pub fn peak_writes(&self, id: &str) -> u64 {
        let writes = self.writes.lock().expect("stats writes poisoned");
        writes.get(id).map_or(0, |(_, peak)| *peak)
    }
    /// Writes to agent or block `id` being handled now.
    pub fn writes_now(&self, id: &str) -> u64 {
        let writes = self.writes.lock().expect("stats writes poisoned");
        writes.get(id).map_or(0, |(now, _)| *now)
    }
}

/// The agent or block a write targets (`/v1/agents/{id}/…`, `/v1/blocks/{id}`).
fn written_id(method: &Method, path: &str) -> Option<String> {
    if method == Method::GET || method == Method::HEAD {
        return None;
    }
    let mut parts = path.split('/').filter(|s| !s.is_empty());
    match (parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some("agents" | "blocks"), Some(id)) => Some(id.to_string()),
        _ => None,
    }
}

#[derive(Clone)]
struct App {
    name: Arc<str>,
    stats: Arc<Stats>,
    /// Serving HTTPS: its own redirects say so.
    https: bool,
}

/// A running stand-in; stops when [`StandIn::stop`] is called or it is dropped.
pub struct StandIn {
    pub name: String,
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    /// Serves HTTPS (`https://` URL).
    tls: bool,
    /// The accept loop; it owns every connection task, so aborting it drops them all.
    task: JoinHandle<()>,
}

impl StandIn {
    /// Starts a stand-in named `name` on `127.0.0.1:0`.
    pub async fn start(name: &str) -> std::io::Result<StandIn> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Ok(StandIn::serve(name, listener))
    }

    /// Serves a stand-in named `name` on `listener`.
    pub fn serve(name: &str, listener: TcpListener) -> StandIn {
        StandIn::serve_with(name, listener, None)
    }

    /// Serves a stand-in named `name` over HTTPS on `listener` (HTTP/2 or
    /// HTTP/1.1 by ALPN), for tests of `https://` backends.
    pub fn serve_tls(
        name: &str,
        listener: TcpListener,
        tls: Arc<crate::tls::ServerTls>,
    ) -> StandIn {
        StandIn::serve_with(name, listener, Some(tls))
    }

    fn serve_with(
        name: &str,
        listener: TcpListener,
        tls: Option<Arc<crate::tls::ServerTls>>,
    ) -> StandIn {
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let stats = Arc::new(Stats::default());
        let app = router(App {
            name: Arc::from(name),
            stats: stats.clone(),
            https: tls.is_some(),
        });
        let https = tls.is_some();
        let task = tokio::spawn(accept_loop(listener, app, tls));
        StandIn {
            name: name.to_string(),
            addr,
            stats,
            tls: https,
            task,
        }
    }

    /// Changes how the stand-in answers from now on.
    pub fn set_mode(&self, mode: Mode) {
        let code = match mode {
            Mode::Normal => 0,
            Mode::Hang => 1,
            Mode::Fail(status) => u64::from(status),
            Mode::Slow(ms) => SLOW + u64::from(ms),
        };
        self.stats.mode.store(code, Ordering::SeqCst);
    }

    /// `http://127.0.0.1:port` (`https://` when serving TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting and drops every open connection, like a killed process:
    /// requests in progress are cut, pooled keep-alive connections die.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `app` with every connection task in a `JoinSet` owned by this future,
/// so aborting the future closes every connection at once.
async fn accept_loop(listener: TcpListener, app: Router, tls: Option<Arc<crate::tls::ServerTls>>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let tls = tls.clone();
        conns.spawn(async move {
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            use hyper_util::rt::TokioIo;
            match tls {
                None => {
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                }
                Some(tls) => {
                    let peer = stream.peer_addr().unwrap_or(([0, 0, 0, 0], 0).into());
                    if let Ok(accepted) = tls.accept(stream, peer).await {
                        let _ = builder
                            .serve_connection(TokioIo::new(accepted.stream), svc)
                            .await;
                    }
                }
            }
        });
    }
}

/// Offset of [`Mode::Slow`] in the encoded mode.
const SLOW: u64 = 1_000_000;

/// Applies the replica-wide [`Mode`]: `Some(response)` when it overrides the answer.
async fn misbehave(app: &App) -> Option<Response> {
    match app.stats.mode.load(Ordering::SeqCst) {
        0 => None,
        1 => std::future::pending().await,
        slow if slow >= SLOW => {
            tokio::time::sleep(Duration::from_millis(slow - SLOW)).await;
            None
        }
        status => {
            let status =
                StatusCode::from_u16(status as u16).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = serde_json::json!({"detail": "stand-in failing on purpose", "served_by": &*app.name});
            Some(named(app, (status, axum::Json(body)).into_response()))
        }
    }
}

fn router(app: App) -> Router {
    Router::new()
        .route("/v1/health/", get(health))
        .route("/v1/agents", any(redirect_to_slash))
        .route("/__echo", any(echo))
        .route("/__headers", any(echo_headers))
        .route("/__bytes", get(bytes))
        .fallback(any(letta))
        .with_state(app)
}

/// Counts a request for its whole life, response body included.
struct Active(Arc<Stats>, Option<String>);

impl Active {
    fn enter(app: &App, method: &Method, uri: &Uri, headers: &HeaderMap) -> Active {
        let s = &app.stats;
        s.requests.fetch_add(1, Ordering::SeqCst);
        let now = s.active.fetch_add(1, Ordering::SeqCst) + 1;
        s.peak_active.fetch_max(now, Ordering::SeqCst);
        let rid = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        s.log
            .lock()
            .expect("stats log poisoned")
            .push((method.to_string(), uri.to_string(), rid));
        let written = written_id(method, uri.path());
        if let Some(id) = &written {
            let mut writes = s.writes.lock().expect("stats writes poisoned");
            let (now, peak) = writes.entry(id.clone()).or_default();
            *now += 1;
            *peak = (*peak).max(*now);
        }
        Active(s.clone(), written)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(id) = &self.1 {
            let mut writes = self.0.writes.lock().expect("stats writes poisoned");
            if let Some((now, _)) = writes.get_mut(id) {
                *now -= 1;
            }
        }
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

type Params = Query<HashMap<String, String>>;

fn param<T: std::str::FromStr>(q: &HashMap<String, String>, k: &str) -> Option<T> {
    q.get(k).and_then(|v| v.parse().ok())
}

fn named(app: &App, mut r: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&app.name) {
        r.headers_mut().insert("x-standin-name", v);
    }
    r
}

async fn health(State(app): State<App>) -> Response {
    if let Some(r) = misbehave(&app).await {
        return r;
    }
    named(
        &app,
        axum::Json(serde_json::json!({"status": "ok", "version": "standin"})).into_response(),
    )
}

/// Letta answers a collection path without its trailing slash with a 307 to an
/// absolute URL built from `Host`.
async fn redirect_to_slash(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    // `Host` on HTTP/1.1, `:authority` on HTTP/2.
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    let q = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let scheme = if app.https { "https" } else { "http" };
    let loc = format!("{scheme}://{host}{}/{q}", uri.path());
    let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&loc).expect("valid location"),
    );
    named(&app, r)
}

/// Holds `guard` until `body` has been sent whole.
fn tracked(body: Body, guard: Active) -> Body {
    let stream = body.into_data_stream().map(move |chunk| {
        let _keep = &guard;
        chunk
    });
    Body::from_stream(stream)
}

async fn letta(State(app): State<App>, Query(q): Params, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let guard = Active::enter(&app, &parts.method, &parts.uri, &parts.headers);
    if let Some(r) = misbehave(&app).await {
        return r;
    }
    if param::<u8>(&q, "hang") == Some(1) {
        std::future::pending::<()>().await;
    }
    if let Some(ms) = param::<u64>(&q, "delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let path = parts.uri.path().to_string();
    let status = param::<u16>(&q, "status")
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    if path.ends_with("/messages/stream") || path.ends_with("/stream") {
        let events = param::<u32>(&q, "events").unwrap_or(5);
        let interval = Duration::from_millis(param::<u64>(&q, "interval_ms").unwrap_or(20));
        return named(&app, sse(&app.name, events, interval, guard));
    }
    // Drain the request body so writes look like Letta's (it reads them).
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let mut json = serde_json::json!({
        "id": path.rsplit('/').find(|s| !s.is_empty()).unwrap_or(""),
        "path": path,
        "method": parts.method.as_str(),
        "served_by": &*app.name,
        // Which request of this replica produced the answer: a cached answer
        // shows an older number than a fresh one.
        "served_seq": app.stats.requests.load(Ordering::SeqCst),
        "request_bytes": body.len(),
        "object": "stand-in",
    });
    // `blocks=a,b`: the answer lists these blocks as an agent's memory does;
    // `mention=a,b`: it names these ids (as an agent's state names its tools).
    if let Some(list) = q.get("blocks") {
        let blocks: Vec<_> = list
            .split(',')
            .filter(|b| !b.is_empty())
            .map(|b| serde_json::json!({"id": b}))
            .collect();
        json["blocks"] = serde_json::json!(blocks);
        json["memory"] = serde_json::json!({ "blocks": blocks });
    }
    if let Some(list) = q.get("mention") {
        json["mentions"] = serde_json::json!(list.split(',').collect::<Vec<_>>());
    }
    let mut r = (status, axum::Json(json)).into_response();
    // `cache_control=…`, `vary=…`: response headers a cache must honour.
    for (param, name) in [
        ("cache_control", header::CACHE_CONTROL),
        ("vary", header::VARY),
    ] {
        if let Some(v) = q.get(param).and_then(|v| HeaderValue::from_str(v).ok()) {
            r.headers_mut().insert(name, v);
        }
    }
    *r.body_mut() = tracked(std::mem::take(r.body_mut()), guard);
    named(&app, r)
}

fn sse(name: &str, events: u32, interval: Duration, guard: Active) -> Response {
    let name = name.to_string();
    let stream = futures_util::stream::unfold(0u32, move |i| {
        let name = name.clone();
        async move {
            if i > events {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            let chunk = if i == events {
                "data: [DONE]\n\n".to_string()
            } else {
                format!("data: {{\"seq\":{i},\"served_by\":\"{name}\",\"message_type\":\"assistant_message\"}}\n\n")
            };
            Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), i + 1))
        }
    })
    .map(move |c| {
        let _keep = &guard;
        c
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn echo(State(app): State<App>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let guard = Active::enter(&app, &parts.method, &parts.uri, &parts.headers);
    let mut r = Response::new(tracked(body, guard));
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        r.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    named(&app, r)
}

async fn echo_headers(State(app): State<App>, req: Request) -> Response {
    let _guard = Active::enter(&app, req.method(), req.uri(), req.headers());
    let mut map = serde_json::Map::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        match map.get_mut(k.as_str()) {
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&v);
            }
            _ => {
                map.insert(k.as_str().to_string(), serde_json::Value::String(v));
            }
        }
    }
    let out = serde_json::json!({
        "headers": map,
        "uri": req.uri().to_string(),
        "method": req.method().as_str(),
        "version": format!("{:?}", req.version()),
    });
    named(&app, axum::Json(out).into_response())
}

async fn bytes(State(app): State<App>, Query(q): Params, req: Request) -> Response {
    let guard = Active::enter(&app, req.method(), req.uri(), req.headers());
    let n: usize = param(&q, "n").unwrap_or(1024);
    const CHUNK: usize = 64 * 1024;
    let stream = futures_util::stream::iter((0..n).step_by(CHUNK).map(move |start| {
        let end = (start + CHUNK).min(n);
        Ok::<_, std::io::Error>(Bytes::from(pattern(start, end)))
    }));
    let mut r = Response::new(tracked(Body::from_stream(stream), guard));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    named(&app, r)
}

/// Bytes `start..end` of the deterministic pattern `/__bytes` serves.
pub fn pattern(start: usize, end: usize) -> Vec<u8> {
    (start..end)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}
