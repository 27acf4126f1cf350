//! What the gateway's layers cost per request, without sockets: the router
//! (hygiene, catch-panic, axum's routing, request ids, sensitive headers,
//! observation, limits) around a service that answers at once, against that
//! service alone and against pieces of the stack. The difference is the
//! stack's own CPU per request (issue 13's budget, issue 17's user time).

use std::convert::Infallible;
use std::future::{ready, Ready};

use axum::body::Body;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::BodyExt;
use letta_proxy::body::{Full, InboundBody};
use letta_proxy::config::Config;
use letta_proxy::Gateway;
use tower::{Layer, Service, ServiceExt};

const PATH: &str = "/v1/agents/agent-00000000-0000-4000-8000-000000000001";

/// Answers 200 with a small body at once.
#[derive(Clone)]
struct Answer;

impl Service<Request<InboundBody>> for Answer {
    type Response = Response<Full>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Full>, Infallible>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<InboundBody>) -> Self::Future {
        ready(Ok(Response::new(Full::new(Bytes::from_static(
            b"{\"id\":1}",
        )))))
    }
}

/// A request as the Python SDK sends it.
fn request() -> Request<Body> {
    Request::get(PATH)
        .header("host", "127.0.0.1:8300")
        .header("user-agent", "Letta/Python 1.12.1")
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, deflate")
        .header("x-stainless-lang", "python")
        .header("x-stainless-package-version", "1.12.1")
        .header("authorization", "Bearer secret")
        .body(Body::empty())
        .unwrap()
}

fn config() -> Config {
    let text = "[cache]\nenabled = false\n[health]\nenabled = false\n[log]\naccess_log = false\n[limits]\nserialize_agent_writes = false\n[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n";
    Config::from_toml(text, "bench", std::iter::empty()).unwrap()
}

fn stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let gateway = rt.block_on(Gateway::from_config(config())).unwrap();
    let router = gateway.router_over(Answer);

    c.bench_function("stack/inner_service_alone", |b| {
        b.iter(|| {
            rt.block_on(async {
                let resp = Answer
                    .oneshot(request().map(InboundBody::from))
                    .await
                    .unwrap();
                resp.into_body().collect().await.unwrap();
            })
        })
    });
    c.bench_function("stack/gateway_router_over_it", |b| {
        b.iter(|| {
            rt.block_on(async {
                let resp = router.clone().oneshot(request()).await.unwrap();
                resp.into_body().collect().await.unwrap();
            })
        })
    });
    // The same layers added one at a time, innermost first.
    let shared: letta_proxy::config::SharedConfig =
        std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(config()));
    let metrics = letta_proxy::metrics::Metrics::new();
    let upstreams = std::sync::Arc::new(letta_proxy::backend::Upstreams::new(
        &shared.load(),
        metrics.clone(),
    ));
    let recorder = std::sync::Arc::new(letta_proxy::observe::Recorder {
        config: shared.clone(),
        metrics: metrics.clone(),
        window: Default::default(),
        upstreams,
    });
    let limits = letta_proxy::limit::Limits::new(shared.clone(), metrics.clone(), None);
    let limit = letta_proxy::limit::LimitLayer::new(limits).layer(Answer);
    let observe = letta_proxy::observe::ObserveLayer::new(recorder).layer(limit.clone());
    let sensitive = tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer::new([
        http::header::AUTHORIZATION,
        http::header::COOKIE,
    ])
    .layer(observe.clone());
    let ids = letta_proxy::observe::request_id::RequestIdLayer.layer(sensitive.clone());
    let hygienic =
        letta_proxy::gateway::hygiene::HygieneLayer::new(shared.clone()).layer(ids.clone());
    let caught = letta_proxy::gateway::panic::CatchPanicLayer.layer(hygienic.clone());
    let routed = axum::Router::new()
        .route("/metrics", axum::routing::any(|| async { "" }))
        .route("/-/{*path}", axum::routing::any(|| async { "" }))
        .fallback_service(
            caught
                .clone()
                .map_request(|r: Request<Body>| r.map(InboundBody::from)),
        );
    macro_rules! bench {
        ($name:expr, $svc:expr, $req:expr) => {
            c.bench_function($name, |b| {
                b.iter(|| {
                    rt.block_on(async {
                        let resp = $svc.clone().oneshot($req).await.unwrap();
                        resp.into_body().collect().await.unwrap();
                    })
                })
            });
        };
    }
    let inbound = || request().map(InboundBody::from);
    bench!("stack/cumulative_1_limit", limit, inbound());
    bench!("stack/cumulative_2_observe", observe, inbound());
    bench!("stack/cumulative_3_sensitive_headers", sensitive, inbound());
    bench!("stack/cumulative_4_request_ids", ids, inbound());
    bench!("stack/cumulative_5_hygiene", hygienic, inbound());
    bench!("stack/cumulative_6_catch_panic", caught, inbound());
    bench!("stack/cumulative_7_axum_router", routed, request());
}

criterion_group!(benches, stack);
criterion_main!(benches);
