//! Cost of one `pick()` for every strategy at 3, 64 and 1,024 backends, plus
//! the peak-EWMA estimator each response feeds.
//!
//! The view is static plain values with the totals precomputed, as the live
//! set's counters provide them, so the numbers are the strategies' own cost
//! (dynamic dispatch included, as the proxy calls them). Loads are uniform in
//! 0..8 in flight: busy enough that `agent_affinity` refuses about a third of
//! home backends for the load bound and walks on, which is its slow path.
//!
//! `cargo bench --bench pick`; medians land in
//! `target/criterion/pick/<strategy>/<backends>/new/estimates.json`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use letta_proxy::balance::{
    build, BackendSpec, BalancerConfig, LoadView, PeakEwma, PickRequest, StrategyKind,
};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

const SIZES: [usize; 3] = [3, 64, 1024];

/// A backend set frozen in time.
struct StaticView {
    in_flight: Vec<u64>,
    latency_ns: Vec<u64>,
    total: u64,
}

impl StaticView {
    fn new(n: usize, rng: &mut SmallRng) -> StaticView {
        let in_flight: Vec<u64> = (0..n).map(|_| rng.random_range(0..8)).collect();
        let latency_ns = (0..n)
            .map(|_| rng.random_range(20_000_000..200_000_000))
            .collect();
        StaticView {
            total: in_flight.iter().sum(),
            in_flight,
            latency_ns,
        }
    }
}

impl LoadView for StaticView {
    fn len(&self) -> usize {
        self.in_flight.len()
    }
    fn eligible(&self, _: usize) -> bool {
        true
    }
    fn in_flight(&self, i: usize) -> u64 {
        self.in_flight[i]
    }
    fn latency_ns(&self, i: usize) -> u64 {
        self.latency_ns[i]
    }
    fn total_in_flight(&self) -> u64 {
        self.total
    }
    fn eligible_count(&self) -> usize {
        self.in_flight.len()
    }
}

fn agent_ids(count: usize, rng: &mut SmallRng) -> Vec<String> {
    (0..count)
        .map(|_| format!("agent-{:032x}", rng.random::<u128>()))
        .collect()
}

fn pick(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(42);
    let agents = agent_ids(4096, &mut rng);
    let variants: [(&str, StrategyKind, usize); 6] = [
        ("round_robin", StrategyKind::RoundRobin, 8),
        ("random", StrategyKind::Random, 8),
        ("least_connections", StrategyKind::LeastConnections, 8),
        (
            "least_connections_scan",
            StrategyKind::LeastConnections,
            usize::MAX,
        ),
        ("least_latency", StrategyKind::LeastLatency, 8),
        ("agent_affinity", StrategyKind::AgentAffinity, 8),
    ];
    let mut group = c.benchmark_group("pick");
    for n in SIZES {
        let names: Vec<String> = (0..n).map(|i| format!("letta-{i}")).collect();
        let specs: Vec<BackendSpec<'_>> = names
            .iter()
            .map(|name| BackendSpec { name, weight: 1 })
            .collect();
        let view = StaticView::new(n, &mut rng);
        for (label, kind, scan_threshold) in variants {
            let cfg = BalancerConfig {
                strategy: kind,
                scan_threshold,
                ..BalancerConfig::default()
            };
            let strategy = build(&cfg, &specs);
            let mut rng = SmallRng::seed_from_u64(7);
            let mut next = 0usize;
            let with_agent = kind == StrategyKind::AgentAffinity;
            group.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| {
                b.iter(|| {
                    next = (next + 1) % agents.len();
                    let req = PickRequest {
                        agent_id: with_agent.then(|| agents[next].as_str()),
                    };
                    let rng: &mut dyn RngCore = &mut rng;
                    black_box(strategy.pick(black_box(&view), &req, rng))
                })
            });
        }
    }
    group.finish();
}

fn ewma(c: &mut Criterion) {
    let e = PeakEwma::new(Duration::from_secs(10), Duration::from_secs(1));
    let mut now = 0u64;
    c.bench_function("ewma/observe", |b| {
        b.iter(|| {
            now += 1_000_000;
            e.observe(black_box(Duration::from_millis(40)), now);
        })
    });
    c.bench_function("ewma/get", |b| {
        b.iter(|| {
            now += 1_000;
            black_box(e.get(black_box(now)))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = pick, ewma
}
criterion_main!(benches);
