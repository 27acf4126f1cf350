//! One `POST /-/batch` of 100 GETs against 100 sequential client calls, over
//! loopback through a real proxy and two stand-in backends (issue 6).

use criterion::{criterion_group, criterion_main, Criterion};
use letta_proxy::config::{BackendConfig, Config};
use letta_proxy::standin::StandIn;
use letta_proxy::Gateway;

fn batch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (addr, _backends) = rt.block_on(async {
        let a = StandIn::start("be1").await.unwrap();
        let b = StandIn::start("be2").await.unwrap();
        let mut cfg = Config {
            backends: [&a, &b]
                .iter()
                .map(|s| BackendConfig::new(s.name.clone(), s.url()))
                .collect(),
            ..Config::default()
        };
        cfg.health.enabled = false;
        cfg.cache.enabled = false;
        cfg.log.access_log = false;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gateway = Gateway::from_config(cfg).await.unwrap();
        tokio::spawn(letta_proxy::serve_gateway(
            listener,
            gateway,
            std::future::pending(),
        ));
        (addr, (a, b))
    });
    // reqwest is built with rustls and no provider of its own: ours.
    letta_proxy::tls::install_default_provider();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let paths: Vec<String> = (0..100)
        .map(|i| format!("/v1/blocks/block-{i:08x}-0000-4000-8000-000000000000"))
        .collect();
    let body = serde_json::json!({
        "concurrency": 16,
        "requests": paths.iter().map(|p| serde_json::json!({"method": "GET", "path": p})).collect::<Vec<_>>(),
    });
    let mut g = c.benchmark_group("batch_100_gets");
    g.sample_size(20);
    g.bench_function("sequential_client_calls", |b| {
        b.iter(|| {
            rt.block_on(async {
                for p in &paths {
                    let r = client
                        .get(format!("http://{addr}{p}"))
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success());
                    r.bytes().await.unwrap();
                }
            })
        })
    });
    g.bench_function("one_batch", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = client
                    .post(format!("http://{addr}/-/batch"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
                r.bytes().await.unwrap();
            })
        })
    });
    g.finish();
}

criterion_group!(benches, batch);
criterion_main!(benches);
