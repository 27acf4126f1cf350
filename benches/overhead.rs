//! Per-request costs of the layers around forwarding, in isolation:
//! the wait queue and the per-agent write lock when uncontended (issue 5),
//! the metrics record of one request (issue 6), route classification and the
//! header rules (issue 8), and a config reload with 100 backends (issue 6).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use letta_proxy::backend::queue::{Attempt, WaitQueue};
use letta_proxy::config::{BackendConfig, Config};
use letta_proxy::limit::ordering::WriteOrdering;
use letta_proxy::metrics::Metrics;
use letta_proxy::observe::request_id::new_request_id;
use letta_proxy::proxy::headers;
use letta_proxy::{routes, Gateway};

fn limits(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let queue = WaitQueue::new(1000, Duration::from_secs(30));
    let slots = AtomicU64::new(0);
    c.bench_function("queue/acquire_uncontended", |b| {
        b.iter(|| {
            rt.block_on(queue.acquire(|| {
                slots.fetch_add(1, Ordering::Relaxed);
                Attempt::Got(())
            }))
            .unwrap()
        })
    });
    let writes = WriteOrdering::new();
    c.bench_function("agent_write_lock/uncontended", |b| {
        b.iter(|| {
            let turn = rt.block_on(writes.turn(
                "agent-6f1e3c2a-1b2c-4d5e-8f90-0123456789ab",
                Duration::from_secs(1),
            ));
            drop(turn.unwrap());
        })
    });
    c.bench_function("block_on/baseline", |b| b.iter(|| rt.block_on(async {})));
}

fn metrics(c: &mut Criterion) {
    let m = Metrics::new();
    c.bench_function("metrics/record_one_request", |b| {
        b.iter(|| {
            m.active_requests.inc();
            m.request_duration
                .with_label_values(&["GET", "/v1/agents/{agent_id}", "200", "letta-a"])
                .observe(0.0012);
            m.active_requests.dec();
        })
    });
}

fn hot_functions(c: &mut Criterion) {
    let path = "/v1/agents/agent-6f1e3c2a-1b2c-4d5e-8f90-0123456789ab/messages/stream";
    c.bench_function("routes/classify", |b| {
        b.iter(|| routes::classify(std::hint::black_box(path)))
    });
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("host", "127.0.0.1:8300"),
        ("user-agent", "Letta/Python 1.12.1"),
        ("authorization", "Bearer sk-123"),
        ("x-stainless-package-version", "1.12.1"),
        ("accept", "application/json"),
        ("connection", "keep-alive"),
    ] {
        base.insert(
            http::header::HeaderName::from_static(k),
            HeaderValue::from_static(v),
        );
    }
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    c.bench_function("headers/request_rules", |b| {
        b.iter_batched(
            || base.clone(),
            |mut h| {
                headers::strip_hop_by_hop(&mut h);
                let host = h.get("host").cloned();
                headers::add_forwarded(&mut h, Some(peer.ip()), host.as_ref(), false);
                h.insert("x-request-id", new_request_id());
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn reload(c: &mut Criterion) {
    let config = |n: usize, strategy: &str| {
        // Loopback addresses: nothing is ever contacted, but never point outside.
        let mut cfg = Config {
            backends: (0..n)
                .map(|i| {
                    BackendConfig::new(
                        format!("letta-{i}"),
                        format!("http://127.0.{}.{}:8283", i / 250, i % 250 + 1),
                    )
                })
                .collect(),
            ..Config::default()
        };
        cfg.balancer.strategy = serde_json::from_value(serde_json::json!(strategy)).unwrap();
        cfg
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut first = config(100, "round_robin");
    first.health.enabled = false;
    let gateway = rt.block_on(Gateway::from_config(first)).unwrap();
    let a = config(100, "agent_affinity");
    let b = config(100, "least_connections");
    let mut flip = false;
    // Parse + validate + swap, as a reload does (the file read excluded).
    c.bench_function("reload/apply_100_backends", |bench| {
        bench.iter(|| {
            flip = !flip;
            let next = if flip { a.clone() } else { b.clone() };
            next.validate().unwrap();
            gateway.apply(next);
        })
    });
}

criterion_group!(benches, limits, metrics, hot_functions, reload);
criterion_main!(benches);
