//! Shared test harness: stand-in Letta backends and a proxy on 127.0.0.1:0,
//! a client that never uses an environment proxy, and a polling `eventually`.
#![allow(dead_code)]

pub mod cache;
pub mod coord;
pub mod port;
pub mod process;
pub mod redis;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use letta_proxy::config::{BackendConfig, Config};
use letta_proxy::standin::StandIn;
use letta_proxy::Gateway;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const AGENT: &str = "agent-00000000-0000-4000-8000-000000000001";

/// A proxy serving on a free loopback port, stopped on drop.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub gateway: Gateway,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), letta_proxy::ServeError>>>,
}

impl TestProxy {
    /// Starts a proxy for `config` (its `server.listen` is ignored).
    pub async fn start(config: Config) -> TestProxy {
        TestProxy::start_gateway(Gateway::from_config(config).await.unwrap()).await
    }

    /// Starts a proxy that reloads from `path`.
    pub async fn start_with_path(config: Config, path: &std::path::Path) -> TestProxy {
        let g = Gateway::from_file(config, path.to_path_buf())
            .await
            .unwrap();
        TestProxy::start_gateway(g).await
    }

    async fn start_gateway(gateway: Gateway) -> TestProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(letta_proxy::serve_gateway(
            listener,
            gateway.clone(),
            async {
                let _ = rx.await;
            },
        ));
        TestProxy {
            addr,
            gateway,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Triggers graceful shutdown and returns the server task.
    pub fn shutdown(&mut self) -> JoinHandle<Result<(), letta_proxy::ServeError>> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("shut down once")
    }

    /// In-flight count of backend `name` as the proxy sees it.
    pub fn in_flight(&self, name: &str) -> u64 {
        let set = self.gateway.upstreams().load();
        set.backends
            .iter()
            .find(|b| &*b.name == name)
            .map(|b| b.in_flight())
            .expect("backend exists")
    }

    /// Sum of in-flight counts over every backend.
    pub fn total_in_flight(&self) -> u64 {
        self.gateway
            .upstreams()
            .load()
            .backends
            .iter()
            .map(|b| b.in_flight())
            .sum()
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Starts `n` stand-ins named `be1..ben`.
pub async fn standins(n: usize) -> Vec<StandIn> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.push(StandIn::start(&format!("be{i}")).await.unwrap());
    }
    v
}

/// A config balancing over `backends` with `strategy`, health probes off
/// (tests drive health themselves) and the cache off (repeated reads must
/// reach the backends; `tests/cache.rs` turns it on).
pub fn config_for(backends: &[&StandIn], strategy: &str) -> Config {
    let mut text = format!(
        "[balancer]\nstrategy = \"{strategy}\"\n[health]\nenabled = false\n[server]\nshutdown_grace = \"5s\"\n[cache]\nenabled = false\n"
    );
    for s in backends {
        text.push_str(&format!(
            "[[backends]]\nname = \"{}\"\nurl = \"{}\"\n",
            s.name,
            s.url()
        ));
    }
    Config::from_toml(&text, "test config", std::iter::empty()).expect("valid test config")
}

/// A backend entry for an address nothing listens on (connection refused).
pub fn dead_backend(name: &str) -> BackendConfig {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    BackendConfig::new(name, format!("http://{addr}"))
}

/// An HTTP client for tests: no environment proxy, no pooling surprises.
pub fn client() -> reqwest::Client {
    // reqwest is built with rustls and no provider of its own: ours.
    letta_proxy::tls::install_default_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The backend `name` at `addr` as the proxy holds it (its pool, its
/// counters), without a prober: for tests that drive the pool directly.
pub fn backend_at(name: &str, addr: SocketAddr) -> Arc<letta_proxy::backend::Backend> {
    let mut cfg = Config {
        backends: vec![BackendConfig::new(name, format!("http://{addr}"))],
        ..Default::default()
    };
    cfg.health.enabled = false;
    let upstreams =
        letta_proxy::backend::Upstreams::new(&cfg, letta_proxy::metrics::Metrics::new());
    upstreams.load().backends[0].clone()
}

/// A backend below HTTP: a listener on 127.0.0.1:0 that counts the
/// connections it accepts and hands each socket to `serve` on a task of its
/// own (for what a real server would not do: answer once then drop a
/// connection, close on a signal, ...).
pub async fn raw_backend<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(sock));
        }
    });
    (addr, accepted)
}

/// Polls `cond` every 10 ms until it holds or `within` passes; panics with `what`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fetches `/metrics` and returns the value of the first sample whose line starts
/// with `prefix` (e.g. `letta_proxy_backend_in_flight{backend="be1"}`).
pub async fn metric(proxy: &TestProxy, prefix: &str) -> Option<f64> {
    sample(&scrape(&proxy.url("/metrics")).await, prefix)
}

/// The body of `GET url` as text (a `/metrics` scrape, mostly).
pub async fn scrape(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the first sample in Prometheus `text` whose line starts with `prefix`.
pub fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Everything the peer sends on `conn` until it closes the connection or is
/// quiet for 700 ms, as text.
pub async fn read_until_quiet(conn: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_millis(700), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which backend answered.
pub fn backend_of(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-letta-proxy-backend")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}
