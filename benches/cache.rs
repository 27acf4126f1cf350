//! The cache's cost and payoff.
//!
//! - `cache/key`: computing a key for an SDK-shaped request (identity, vary headers, query).
//! - `cache/l1_hit_through_layer`: one request through the cache layer answered
//!   from L1, response body read (target: well under 20 µs); `cache/pass_through_layer`
//!   the layer's cost on a request it does not cache; `cache/write_through_layer`
//!   an agent turn (`POST …/messages`, the harness's 1 KB body) through the
//!   layer's write path: tags planned, held, invalidated on the answer and again
//!   when its body ends (the layer's whole cost on the load benches' POST row).
//! - then, outside criterion, a bounded load loop over loopback: requests per
//!   second of cache hits versus proxied misses (same proxy, same stand-in
//!   backend, same client), printed as a table.
//!
//! `cargo bench --bench cache` (`CACHE_BENCH_LOAD=0` skips the load loop);
//! criterion's medians land in `target/criterion/cache/*/new/estimates.json`.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::BodyExt;
use letta_proxy::body::{Full, InboundBody};
use letta_proxy::cache::key::{self, Domain, HeaderRules};
use letta_proxy::cache::Cache;
use letta_proxy::config::CacheConfig;
use tower::{Layer, Service, ServiceExt};

const AGENT_PATH: &str = "/v1/agents/agent-6f1e3c2a-1b2c-4d5e-8f90-0123456789ab";

fn sdk_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        (
            "authorization",
            "Bearer sk-let-0123456789abcdef0123456789abcdef",
        ),
        ("user-agent", "Letta/Python 1.12.1"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate"),
        ("x-stainless-lang", "python"),
        ("x-stainless-package-version", "1.12.1"),
        ("x-stainless-os", "Linux"),
        ("x-stainless-arch", "x64"),
        ("x-stainless-runtime", "CPython"),
        ("x-stainless-runtime-version", "3.12.3"),
        ("x-stainless-retry-count", "0"),
        ("x-project", "default-project"),
    ] {
        h.insert(k, v.parse().unwrap());
    }
    h
}

fn bench_key(c: &mut Criterion) {
    let config = CacheConfig::default();
    let rules = HeaderRules::new(&config.vary_headers, &config.ignore_headers);
    let headers = sdk_headers();
    let method = Method::GET;
    c.bench_function("cache/key", |b| {
        b.iter(|| {
            key::compute(
                Domain::Response,
                &method,
                black_box(AGENT_PATH),
                black_box(Some("include=agent.blocks&limit=10")),
                &headers,
                &rules,
                None,
            )
            .expect("SDK headers are all keyed or ignored")
        })
    });
}

/// An agent's state as Letta returns it, about 2 KiB.
fn agent_json() -> Bytes {
    let blocks: Vec<String> = (0..4)
        .map(|i| format!(r#"{{"id":"block-{i}a1b2c3d-1b2c-4d5e-8f90-0123456789ab","label":"b{i}","value":"{}"}}"#, "x".repeat(200)))
        .collect();
    Bytes::from(format!(
        r#"{{"id":"{}","name":"bench","memory":{{"blocks":[{}]}},"tools":[]}}"#,
        &AGENT_PATH[11..],
        blocks.join(",")
    ))
}

fn backend() -> impl Service<
    Request<InboundBody>,
    Response = Response<Full>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<Full>, Infallible>>,
> + Clone
       + Send
       + 'static {
    let body = agent_json();
    tower::service_fn(move |_req: Request<InboundBody>| {
        let mut r = Response::new(Full::new(body.clone()));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        std::future::ready(Ok::<_, Infallible>(r))
    })
}

fn request(path: &str, headers: &HeaderMap) -> Request<InboundBody> {
    let mut r = Request::new(InboundBody::from(Bytes::new()));
    *r.uri_mut() = path.parse().unwrap();
    *r.headers_mut() = headers.clone();
    r
}

/// The load benches' POST (`benches/harness/lua/post1k.lua`): a message create
/// with a 1,024-byte JSON body.
fn turn(path: &str, headers: &HeaderMap) -> Request<InboundBody> {
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}],"stream_steps":false,"x":"0123456789"}}"#,
        "x".repeat(943)
    );
    let mut r = request(path, headers);
    *r.method_mut() = Method::POST;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r.headers_mut()
        .insert("content-length", body.len().to_string().parse().unwrap());
    *r.body_mut() = InboundBody::from(Bytes::from(body));
    r
}

fn bench_layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let registry = prometheus::Registry::new();
    let cache = rt.block_on(async {
        Cache::start(
            &CacheConfig::default(),
            None,
            &registry,
            tokio_util::sync::CancellationToken::new(),
        )
    });
    let svc = cache.layer().layer(backend());
    let headers = sdk_headers();
    // Fill: the first call misses and stores at the end of its body.
    rt.block_on(async {
        let r = svc
            .clone()
            .oneshot(request(AGENT_PATH, &headers))
            .await
            .unwrap();
        r.into_body().collect().await.unwrap();
        for _ in 0..100 {
            if cache.l1_entries().await == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let r = svc
            .clone()
            .oneshot(request(AGENT_PATH, &headers))
            .await
            .unwrap();
        assert_eq!(r.headers()["x-cache"], "HIT", "warm-up stored the entry");
    });
    c.bench_function("cache/l1_hit_through_layer", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = svc
                    .clone()
                    .oneshot(request(AGENT_PATH, &headers))
                    .await
                    .unwrap();
                black_box(r.into_body().collect().await.unwrap().to_bytes())
            })
        })
    });
    let uncached = format!("{AGENT_PATH}/messages");
    c.bench_function("cache/pass_through_layer", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = svc
                    .clone()
                    .oneshot(request(&uncached, &headers))
                    .await
                    .unwrap();
                black_box(r.into_body().collect().await.unwrap().to_bytes())
            })
        })
    });
    c.bench_function("cache/write_through_layer", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = svc
                    .clone()
                    .oneshot(turn(&uncached, &headers))
                    .await
                    .unwrap();
                let body = r.into_body().collect().await.unwrap().to_bytes();
                // The turn's second invalidation runs in a task spawned when
                // its body ended: let it run inside the measured iteration.
                tokio::task::yield_now().await;
                black_box(body)
            })
        })
    });
}

/// Requests per second of `n` GETs made by `concurrency` workers; `path(i)`
/// names the i-th request's target.
async fn load(
    base: &str,
    n: usize,
    concurrency: usize,
    path: impl Fn(usize) -> String + Send + Sync + 'static,
) -> (f64, Duration) {
    // reqwest is built with rustls and no provider of its own: ours.
    letta_proxy::tls::install_default_provider();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let path = Arc::new(path);
    let deadline = Instant::now() + Duration::from_secs(20);
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, path, base) =
                (client.clone(), next.clone(), path.clone(), base.to_string());
            tokio::spawn(async move {
                let mut done = 0usize;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n || Instant::now() > deadline {
                        return done;
                    }
                    let r = client
                        .get(format!("{base}{}", path(i)))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                    done += 1;
                }
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    let took = start.elapsed();
    (total as f64 / took.as_secs_f64(), took)
}

/// Hits versus proxied misses over loopback, same proxy and backend.
fn hits_versus_misses() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let standin = letta_proxy::standin::StandIn::start("be1").await.unwrap();
        let text = format!(
            "[health]\nenabled = false\n[log]\naccess_log = false\n[cache]\nmax_bytes = \"256MiB\"\n\
             [[backends]]\nname = \"be1\"\nurl = \"{}\"\n",
            standin.url()
        );
        let config = letta_proxy::Config::from_toml(&text, "bench", std::iter::empty()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(letta_proxy::serve(listener, config, async {
            let _ = rx.await;
        }));
        let n = 20_000;
        let c = 32;
        // Warm connections and the one cached entry.
        load(&base, 200, c, |_| "/v1/tools/".to_string()).await;
        let (hits, t_hits) = load(&base, n, c, |_| "/v1/tools/".to_string()).await;
        let (misses, t_misses) = load(&base, n, c, |i| format!("/v1/tools/?miss={i}")).await;
        println!();
        println!("hits vs proxied misses, {n} GETs each, {c} concurrent clients, loopback, 2 cores shared by client, proxy and stand-in:");
        println!("  cache hits (x-cache: HIT)       {hits:>9.0} req/s  ({t_hits:.2?})");
        println!("  proxied misses (x-cache: MISS)  {misses:>9.0} req/s  ({t_misses:.2?})");
        println!("  ratio                           {:>9.2}x", hits / misses);
        let _ = tx.send(());
    });
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_key(&mut c);
    bench_layer(&mut c);
    c.final_summary();
    // The load loop takes a few seconds; `CACHE_BENCH_LOAD=0` skips it.
    if std::env::var("CACHE_BENCH_LOAD").as_deref() != Ok("0") {
        hits_versus_misses();
    }
}
