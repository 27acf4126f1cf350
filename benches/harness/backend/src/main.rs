//! Cheap imitation of Letta's REST API, used as the upstream for proxy benchmarks.
//!
//! Usage: backend [--port 18081] [--threads 1] [--name be1]
//!
//! Routes (HTTP/1.1, keep-alive, TCP_NODELAY):
//!   GET  /v1/health/                          -> small JSON
//!   GET  /v1/agents/{id}                      -> ~2 KB JSON
//!   POST /v1/agents/{id}/messages[?delay_ms=N] -> JSON echo of the body (after N ms)
//!   GET|POST /v1/agents/{id}/messages/stream[?events=N&interval_ms=M]
//!                                             -> text/event-stream, N events M ms apart,
//!                                                first event sent immediately
//!   GET  /__stats                             -> {"requests":N,"connections":M} accepted by this process
//!
//! Every response carries `x-backend: <name>` so distribution across backends can be checked.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, Infallible>;

static REQUESTS: AtomicU64 = AtomicU64::new(0);
static CONNS: AtomicU64 = AtomicU64::new(0);
static NAME: OnceLock<String> = OnceLock::new();
static AGENT_TAIL: OnceLock<String> = OnceLock::new();

fn name() -> &'static str {
    NAME.get().map(|s| s.as_str()).unwrap_or("be")
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-backend", name())
        .body(full(body))
        .unwrap()
}

fn query_u64(q: Option<&str>, keys: &[&str]) -> Option<u64> {
    let q = q?;
    for pair in q.split('&') {
        let mut it = pair.splitn(2, '=');
        let k = it.next()?;
        let v = it.next().unwrap_or("");
        if keys.contains(&k) {
            return v.parse().ok();
        }
    }
    None
}

/// A realistic-looking ~2 KB agent state document (tail precomputed once).
fn agent_tail() -> &'static str {
    AGENT_TAIL.get_or_init(|| {
        let mut s = String::new();
        s.push_str(r#","name":"bench-agent","description":"Synthetic agent used for reverse-proxy benchmarks","agent_type":"memgpt_agent","llm_config":{"model":"gpt-4o-mini","model_endpoint_type":"openai","model_endpoint":"https://example.invalid/v1","context_window":128000,"put_inner_thoughts_in_kwargs":true,"temperature":0.7,"max_tokens":4096},"embedding_config":{"embedding_endpoint_type":"openai","embedding_model":"text-embedding-3-small","embedding_dim":1536,"embedding_chunk_size":300},"memory":{"blocks":["#);
        for i in 0..6 {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&format!(
                r#"{{"id":"block-{i:04}-5f2c9a1e-7d3b-4c21-9e8f","label":"block_{i}","limit":5000,"value":"The user prefers concise answers. Block {i} keeps persona and human notes for the benchmark agent."}}"#
            ));
        }
        s.push_str(r#"]},"tools":[{"name":"send_message","tool_type":"letta_core"},{"name":"conversation_search","tool_type":"letta_core"},{"name":"archival_memory_insert","tool_type":"letta_core"},{"name":"archival_memory_search","tool_type":"letta_core"}],"tags":["bench","proxy","synthetic"],"created_at":"2025-01-01T00:00:00Z","updated_at":"2025-01-01T00:00:00Z","metadata":{"pad":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}}"#);
        s
    })
}

fn agent_json(id: &str) -> Bytes {
    let tail = agent_tail();
    let mut s = String::with_capacity(tail.len() + 64);
    s.push_str(r#"{"id":""#);
    s.push_str(id);
    s.push_str(r#"","served_by":""#);
    s.push_str(name());
    s.push('"');
    s.push_str(tail);
    Bytes::from(s)
}

fn sse(agent: String, events: u64, interval_ms: u64) -> Response<Body> {
    let stream = futures_util::stream::unfold(0u64, move |i| {
        let agent = agent.clone();
        async move {
            if i >= events {
                return None;
            }
            if i > 0 && interval_ms > 0 {
                tokio::time::sleep(Duration::from_millis(interval_ms)).await;
            }
            let data = if i + 1 == events {
                "data: [DONE]\n\n".to_string()
            } else {
                format!(
                    "event: message\ndata: {{\"agent_id\":\"{agent}\",\"seq\":{i},\"message_type\":\"assistant_message\",\"content\":\"token chunk {i}\"}}\n\n"
                )
            };
            Some((Ok::<_, Infallible>(Frame::data(Bytes::from(data))), i + 1))
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-backend", name())
        .body(StreamBody::new(stream).boxed())
        .unwrap()
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(|s| s.to_owned());
    let q = query.as_deref();
    let method = req.method().clone();

    if path == "/v1/health/" || path == "/v1/health" {
        return Ok(json(
            StatusCode::OK,
            format!(
                r#"{{"status":"ok","version":"0.0.0-bench","backend":"{}"}}"#,
                name()
            ),
        ));
    }
    if path == "/__stats" {
        return Ok(json(
            StatusCode::OK,
            format!(
                r#"{{"backend":"{}","requests":{},"connections":{}}}"#,
                name(),
                REQUESTS.load(Ordering::Relaxed),
                CONNS.load(Ordering::Relaxed)
            ),
        ));
    }
    if let Some(rest) = path.strip_prefix("/v1/agents/") {
        let mut parts = rest.split('/');
        let id = parts.next().unwrap_or("").to_owned();
        let p1 = parts.next();
        let p2 = parts.next();
        match (method.clone(), p1, p2) {
            (Method::GET, None, _) | (Method::GET, Some(""), None) => {
                return Ok(json(StatusCode::OK, agent_json(&id)));
            }
            (Method::POST, Some("messages"), None) => {
                let body = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => return Ok(json(StatusCode::BAD_REQUEST, "{\"error\":\"body\"}")),
                };
                if let Some(d) = query_u64(q, &["delay_ms"]) {
                    if d > 0 {
                        tokio::time::sleep(Duration::from_millis(d)).await;
                    }
                }
                let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
                let mut out = Vec::with_capacity(body.len() + 96);
                out.extend_from_slice(br#"{"agent_id":""#);
                out.extend_from_slice(id.as_bytes());
                out.extend_from_slice(br#"","backend":""#);
                out.extend_from_slice(name().as_bytes());
                out.extend_from_slice(
                    format!(r#"","received_bytes":{},"echo":"#, body.len()).as_bytes(),
                );
                if matches!(first, Some(b'{') | Some(b'[')) {
                    out.extend_from_slice(&body);
                } else {
                    out.extend_from_slice(b"null");
                }
                out.push(b'}');
                return Ok(json(StatusCode::OK, out));
            }
            (Method::GET, Some("messages"), Some("stream"))
            | (Method::POST, Some("messages"), Some("stream")) => {
                // drain any request body first
                let _ = req.into_body().collect().await;
                let events = query_u64(q, &["events", "n"]).unwrap_or(10).max(1);
                let interval = query_u64(q, &["interval_ms", "ms"]).unwrap_or(50);
                return Ok(sse(id, events, interval));
            }
            _ => {}
        }
    }
    Ok(json(StatusCode::NOT_FOUND, "{\"detail\":\"Not Found\"}"))
}

async fn serve(addr: SocketAddr) {
    // explicit large accept backlog: load generators open hundreds of connections at once
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_reuseaddr(true).expect("reuseaddr");
    sock.bind(addr).expect("bind");
    let listener: TcpListener = sock.listen(4096).expect("listen");
    eprintln!("backend {} listening on http://{}", name(), addr);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("accept error: {e}");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        CONNS.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

fn main() {
    let mut port: u16 = 18081;
    let mut threads: usize = 1;
    let mut nm: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|v| v.parse().ok()).expect("--port N"),
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--threads N")
            }
            "--name" => nm = args.next(),
            "-h" | "--help" => {
                println!("backend [--port 18081] [--threads 1] [--name be1]");
                return;
            }
            other => panic!("unknown arg {other}"),
        }
    }
    NAME.set(nm.unwrap_or_else(|| format!("be{port}"))).ok();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("runtime");
    rt.block_on(serve(addr));
}
