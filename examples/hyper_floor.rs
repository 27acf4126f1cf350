//! The floor under letta-proxy's request path: a reverse proxy that only
//! forwards, on the libraries letta-proxy is built on (hyper's HTTP/1 server
//! and client, hyper-util's connection pool, tokio's multi-threaded runtime).
//! No header rules, hygiene, limits, cache, metrics or log: what a request
//! costs before any of the proxy's own work. `FLOOR=1 benches/instructions.sh`
//! counts its instructions per request beside letta-proxy's and nginx's.
//!
//! ```text
//! cargo run --release --example hyper_floor -- --config config/letta-proxy.toml
//! ```
//!
//! Reads `server.listen` and the backends' URLs from the config; round robin.
//! With `--static N` it forwards nothing and answers every request with N
//! bytes of JSON from memory: the floor under a cache hit
//! (`FLOOR=1 CACHE=hits benches/instructions.sh`).
//!
//! With `--current-thread` it runs on tokio's single-threaded runtime (one
//! first-in-first-out run queue) instead of the multi-threaded one (a LIFO
//! slot and a 256-task local queue before a shared one): how much of the
//! latency tail at many connections is the scheduler's (`FLOOR=1
//! benches/scaling.sh`).
//!
//! Not a proxy to deploy: it forwards hop-by-hop headers, has no timeouts and
//! answers a dead backend with a closed connection.

#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http::uri::{Authority, Parts, Scheme};
use http::{header, HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use letta_proxy::config::Config;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut runtime = if args.iter().any(|a| a == "--current-thread") {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    runtime.enable_all().build()?.block_on(run(args))
}

async fn run(args: Vec<String>) -> anyhow::Result<()> {
    let path = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .context("usage: hyper_floor --config FILE")?;
    let config = Config::load(Some(Path::new(path)), std::iter::empty())?;
    let listener = tokio::net::TcpListener::bind(config.server.listen).await?;
    if let Some(i) = args.iter().position(|a| a == "--static") {
        let size: usize = args.get(i + 1).context("--static N")?.parse()?;
        return answer_from_memory(listener, size).await;
    }
    let backends = config
        .backends
        .iter()
        .map(|b| {
            let uri: Uri = b.url.parse()?;
            let parts = uri.into_parts();
            Ok((
                parts.scheme.context("a backend URL without a scheme")?,
                parts.authority.context("a backend URL without a host")?,
            ))
        })
        .collect::<anyhow::Result<Vec<(Scheme, Authority)>>>()?;
    anyhow::ensure!(!backends.is_empty(), "no backends in the config");
    let backends: Arc<[(Scheme, Authority)]> = backends.into();
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (client, backends, next) = (client.clone(), backends.clone(), next.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (scheme, authority) =
                    &backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
                let (mut head, body) = req.into_parts();
                let mut target = Parts::default();
                target.scheme = Some(scheme.clone());
                target.authority = Some(authority.clone());
                target.path_and_query = head.uri.path_and_query().cloned();
                head.uri = Uri::from_parts(target).expect("scheme, authority and path");
                client.request(Request::from_parts(head, body))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Every request answered with the same `size` bytes (a JSON string), as a
/// cache hit is: a shared buffer, a content type, no backend.
async fn answer_from_memory(listener: tokio::net::TcpListener, size: usize) -> anyhow::Result<()> {
    let body = Bytes::from(format!("\"{}\"", "x".repeat(size.saturating_sub(2))));
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let mut resp = Response::new(Full::new(body.clone()));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                std::future::ready(Ok::<_, std::convert::Infallible>(resp))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
