//! Cache test harness: a proxy instance whose cache the test can watch, a
//! config with the cache on, and small request helpers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use letta_proxy::cache::Cache;
use letta_proxy::config::Config;
use letta_proxy::standin::StandIn;
use letta_proxy::Gateway;
use reqwest::header::HeaderMap;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const A: &str = "agent-6f1e3c2a-1b2c-4d5e-8f90-0123456789ab";
pub const A2: &str = "agent-7f1e3c2a-1b2c-4d5e-8f90-0123456789ab";
pub const B: &str = "block-0a1b2c3d-1b2c-4d5e-8f90-0123456789ab";
pub const B2: &str = "block-1a1b2c3d-1b2c-4d5e-8f90-0123456789ab";

/// A config with the cache on over `backends` (round robin, probes off);
/// `extra` is appended to `[cache]` (keys first, then any `[[cache.rules]]`).
pub fn cache_config(backends: &[&StandIn], extra: &str) -> Config {
    let mut text = String::from(
        "[balancer]\nstrategy = \"round_robin\"\n[health]\nenabled = false\n\
         [server]\nshutdown_grace = \"2s\"\n[log]\naccess_log = false\n[cache]\nenabled = true\n",
    );
    text.push_str(extra);
    text.push('\n');
    for s in backends {
        text.push_str(&format!(
            "[[backends]]\nname = \"{}\"\nurl = \"{}\"\n",
            s.name,
            s.url()
        ));
    }
    Config::from_toml(&text, "cache test config", std::iter::empty()).expect("valid config")
}

/// One proxy instance with its cache in reach.
pub struct Node {
    pub addr: SocketAddr,
    pub gateway: Gateway,
    pub cache: Arc<Cache>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), letta_proxy::ServeError>>,
}

impl Node {
    pub async fn start(config: Config) -> Node {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gateway = Gateway::from_config(config).await.unwrap();
        let cache = gateway.cache().expect("the cache is on").clone();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(letta_proxy::serve_gateway(
            listener,
            gateway.clone(),
            async {
                let _ = rx.await;
            },
        ));
        Node {
            addr,
            gateway,
            cache,
            stop: Some(tx),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// GET `path` with `headers`; returns the answer with its body read.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(reqwest::Method::GET, path, headers, None).await
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let mut rb = super::client().request(method, self.url(path));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = rb.send().await.expect("request reaches the proxy");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body");
        Answer {
            status,
            headers,
            json: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        }
    }

    /// The value of the first `/metrics` sample starting with `prefix`.
    pub async fn metric(&self, prefix: &str) -> f64 {
        super::sample(&super::scrape(&self.url("/metrics")).await, prefix).unwrap_or(0.0)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// A response, read.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub json: serde_json::Value,
}

impl Answer {
    /// `x-cache`, or `-` when absent.
    pub fn x_cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .map_or("-", |v| v.to_str().unwrap())
    }

    /// Which request of the stand-in produced this answer.
    pub fn seq(&self) -> u64 {
        self.json["served_seq"].as_u64().expect("stand-in answer")
    }
}

/// Requests the stand-in received for exactly `uri` (path and query).
pub fn calls(s: &StandIn, uri: &str) -> usize {
    s.stats.log().iter().filter(|(_, u, _)| u == uri).count()
}

/// Polls `f` until it holds (10 ms steps) or panics after `within`.
pub async fn until<F, Fut>(within: Duration, what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    super::eventually(within, what, f).await;
}
