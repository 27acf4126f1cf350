//! The response cache through real sockets, in-process tier: what is cached,
//! for whom, headers, bypass, what is never stored, coalescing, metrics. Writes
//! are in `tests/cache_writes.rs`, the Redis tier in `tests/cache_redis.rs`.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use support::cache::*;
use support::{client, standins};

const TOOLS: &str = "/v1/tools/";

#[tokio::test]
async fn a_repeated_read_is_a_hit_with_age_and_the_same_body() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    let first = n.get(TOOLS, &[]).await;
    assert_eq!((first.status, first.x_cache()), (200, "MISS"));
    let second = n.get(TOOLS, &[]).await;
    assert_eq!((second.status, second.x_cache()), (200, "HIT"));
    assert_eq!(
        second.seq(),
        first.seq(),
        "the stored answer, not a new one"
    );
    assert_eq!(second.headers["age"], "0");
    assert!(second.headers.contains_key("x-request-id"));
    assert_ne!(
        second.headers["x-request-id"],
        first.headers["x-request-id"]
    );
    assert_eq!(calls(&s[0], TOOLS), 1);
    // The query is part of the key, in any order.
    n.get("/v1/tools/?a=1&b=2", &[]).await;
    assert_eq!(n.get("/v1/tools/?b=2&a=1", &[]).await.x_cache(), "HIT");
}

#[tokio::test]
async fn uncacheable_routes_pass_through_untouched() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    let history = format!("/v1/agents/{A}/messages");
    for path in [
        history.as_str(),
        "/v1/runs/run-1",
        "/v1/health/",
        "/not-letta",
    ] {
        for _ in 0..2 {
            let r = n.get(path, &[]).await;
            assert_eq!(r.x_cache(), "-", "{path}: no x-cache off cacheable routes");
        }
        if path != "/v1/health/" {
            // (the stand-in does not log its health route)
            assert_eq!(
                calls(&s[0], path),
                2,
                "{path} reached the backend each time"
            );
        }
    }
    // A read-only POST (search) is not cached either.
    let search = format!("/v1/agents/{A}/archival-memory/search");
    for _ in 0..2 {
        n.send(Method::POST, &search, &[], Some("{}")).await;
    }
    assert_eq!(calls(&s[0], &search), 2);
}

#[tokio::test]
async fn callers_never_share_an_entry() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    let path = format!("/v1/agents/{A}");
    // Every header Letta 0.16.8 reads to decide who is asking, and the ones
    // that shape its answer (src/identity.rs).
    let identities: [&[(&str, &str)]; 16] = [
        &[],
        &[("authorization", "Bearer alice")],
        &[("authorization", "Bearer bob")],
        // Letta accepts the password in either header: both are credentials.
        &[("x-bare-password", "password alice")],
        &[("x-bare-password", "password bob")],
        &[("cookie", "session=alice")],
        &[("proxy-authorization", "Basic YWxpY2U6")],
        &[("x-organization-id", "org-1")],
        &[("authorization", "Bearer alice"), ("user_id", "user-1")],
        &[("authorization", "Bearer alice"), ("x-project", "p1")],
        &[("authorization", "Bearer alice"), ("x-project-id", "p2")],
        &[
            ("authorization", "Bearer alice"),
            ("user-agent", "Letta/Python 1.12"),
        ],
        &[
            ("authorization", "Bearer alice"),
            ("x-stainless-package-version", "1.12.1"),
        ],
        &[("authorization", "Bearer alice"), ("storage_unit", "MB")],
        // Letta reads the first of two values: another caller.
        &[
            ("authorization", "Bearer bob"),
            ("authorization", "Bearer alice"),
        ],
        &[
            ("authorization", "Bearer alice"),
            ("authorization", "Bearer bob"),
        ],
    ];
    let mut seqs = Vec::new();
    for id in identities {
        let r = n.get(&path, id).await;
        assert_eq!(
            r.x_cache(),
            "MISS",
            "{id:?} must not see another caller's entry"
        );
        seqs.push(r.seq());
    }
    for (id, seq) in identities.iter().zip(seqs) {
        let r = n.get(&path, id).await;
        assert_eq!(
            (r.x_cache(), r.seq()),
            ("HIT", seq),
            "{id:?} gets its own entry back"
        );
    }
    assert_eq!(calls(&s[0], &path), identities.len());
}

#[tokio::test]
async fn an_answer_given_for_a_password_is_never_served_without_it() {
    // The attack of issue 12: a read with X-BARE-PASSWORD fills the cache, the
    // same read without credentials must not be answered from it.
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    let path = format!("/v1/agents/{A}");
    let r = n.get(&path, &[("x-bare-password", "password pw")]).await;
    assert_eq!(r.x_cache(), "MISS");
    assert_eq!(
        n.get(&path, &[("x-bare-password", "password pw")])
            .await
            .x_cache(),
        "HIT"
    );
    for other in [
        &[][..],
        &[("x-bare-password", "password wrong")][..],
        &[("authorization", "Bearer wrong")][..],
        &[("authorization", "Bearer pw")][..],
    ] {
        let r = n.get(&path, other).await;
        assert_eq!(r.x_cache(), "MISS", "{other:?} must reach the backend");
    }
    assert_eq!(calls(&s[0], &path), 5);
}

#[tokio::test]
async fn a_header_the_key_cannot_place_skips_the_cache() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    let path = "/v1/tools/";
    n.get(path, &[]).await;
    // An unknown header might change the answer: not looked up, not stored.
    for _ in 0..2 {
        let r = n.get(path, &[("x-tenant", "acme")]).await;
        assert_eq!((r.status, r.x_cache()), (200, "BYPASS"));
    }
    assert_eq!(calls(&s[0], path), 3);
    assert_eq!(
        n.metric("letta_proxy_cache_requests_total{outcome=\"unkeyed\"}")
            .await,
        2.0
    );
    // Known-harmless headers (tracing, the SDK's retry counter) do not.
    let r = n
        .get(
            path,
            &[
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("x-stainless-retry-count", "2"),
            ],
        )
        .await;
    assert_eq!(r.x_cache(), "HIT");
    // Configured ones neither.
    let s2 = standins(1).await;
    let n2 = Node::start(cache_config(&[&s2[0]], "ignore_headers = [\"x-tenant\"]\n")).await;
    n2.get(path, &[("x-tenant", "acme")]).await;
    assert_eq!(
        n2.get(path, &[("x-tenant", "other")]).await.x_cache(),
        "HIT"
    );
}

#[tokio::test]
async fn refusals_are_never_stored_and_never_invalidate() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    let path = format!("/v1/agents/{A}");
    // A 401 or 403 from the backend is not kept: the next call asks again.
    for status in [401, 403] {
        let p = format!("{path}?status={status}");
        for _ in 0..2 {
            let r = n.get(&p, &[]).await;
            assert_eq!((r.status, r.x_cache()), (status, "MISS"));
        }
        assert_eq!(calls(&s[0], &p), 2);
    }
    // A refused write leaves what is cached alone.
    n.get(&path, &[]).await;
    for status in [401, 403] {
        let r = n
            .send(
                Method::PATCH,
                &format!("{path}?status={status}"),
                &[],
                Some("{\"name\":\"x\"}"),
            )
            .await;
        assert_eq!(r.status, status);
        assert_eq!(
            n.get(&path, &[]).await.x_cache(),
            "HIT",
            "after a {status} write"
        );
    }
}

#[tokio::test]
async fn event_streams_are_never_cached_nor_buffered() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    let path = format!("/v1/agents/{A}/feed/stream?events=3&interval_ms=300");
    for _ in 0..2 {
        let r = client().get(n.url(&path)).send().await.unwrap();
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let mut body = r.bytes_stream();
        let first = body.next().await.unwrap().unwrap();
        assert!(first.starts_with(b"data: {\"seq\":0"), "{first:?}");
        assert_eq!(s[0].stats.active(), 1, "first event arrived mid-stream");
        while body.next().await.is_some() {}
    }
    assert_eq!(calls(&s[0], &path), 2);
    assert_eq!(n.cache.l1_entries().await, 0);
}

#[tokio::test]
async fn no_cache_refreshes_and_no_store_drops() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    let old = n.get(TOOLS, &[]).await.seq();
    let fresh = n.get(TOOLS, &[("cache-control", "no-cache")]).await;
    assert_eq!(fresh.x_cache(), "BYPASS");
    assert!(fresh.seq() > old);
    let after = n.get(TOOLS, &[]).await;
    assert_eq!(
        (after.x_cache(), after.seq()),
        ("HIT", fresh.seq()),
        "refreshed"
    );
    let r = n.get(TOOLS, &[("pragma", "no-cache")]).await;
    assert_eq!(r.x_cache(), "BYPASS");
    let r = n.get(TOOLS, &[("cache-control", "no-store")]).await;
    assert_eq!(r.x_cache(), "BYPASS");
    assert_eq!(
        n.get(TOOLS, &[]).await.x_cache(),
        "MISS",
        "no-store dropped the entry"
    );
}

#[tokio::test]
async fn what_the_backend_forbids_or_fails_is_not_stored() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "max_entry_size = \"300B\"")).await;
    // Ten tool ids make the answer larger than max_entry_size.
    let ids: Vec<String> = (0..10)
        .map(|i| format!("tool-{i}a1b2c3d-1b2c-4d5e-8f90-0123456789ab"))
        .collect();
    let big = format!("/v1/tools/?mention={}", ids.join(","));
    for path in [
        "/v1/tools/?cache_control=no-store",
        "/v1/tools/?cache_control=private",
        "/v1/tools/?cache_control=max-age%3D0",
        "/v1/tools/?vary=X-Tenant",
        "/v1/tools/?status=404",
        "/v1/tools/?status=500",
        &big,
    ] {
        n.get(path, &[]).await;
        assert_eq!(n.get(path, &[]).await.x_cache(), "MISS", "{path}");
    }
    n.get("/v1/tools/?vary=Origin", &[]).await;
    assert_eq!(n.get("/v1/tools/?vary=Origin", &[]).await.x_cache(), "HIT");
}

#[tokio::test]
async fn concurrent_identical_misses_make_one_backend_request() {
    let s = standins(1).await;
    let n = std::sync::Arc::new(Node::start(cache_config(&[&s[0]], "")).await);
    let path = "/v1/tools/?delay_ms=300";
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let n = n.clone();
            tokio::spawn(async move { n.get(path, &[]).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        seqs.push(r.seq());
    }
    assert_eq!(calls(&s[0], path), 1, "one request reached the backend");
    assert!(
        seqs.iter().all(|x| *x == seqs[0]),
        "all got the same answer"
    );
    let coalesced = n
        .metric("letta_proxy_cache_requests_total{outcome=\"coalesced\"}")
        .await;
    assert!(coalesced >= 1.0, "coalesced {coalesced}");
}

#[tokio::test]
async fn a_disabled_cache_is_not_in_the_stack() {
    let s = standins(1).await;
    let p = support::TestProxy::start(cache_config(&[&s[0]], "").tap(|c| c.cache.enabled = false))
        .await;
    for _ in 0..2 {
        let r = client().get(p.url(TOOLS)).send().await.unwrap();
        assert!(r.headers().get("x-cache").is_none());
    }
    assert_eq!(calls(&s[0], TOOLS), 2);
}

#[tokio::test]
async fn the_cache_reports_itself_in_metrics() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    n.get(TOOLS, &[]).await;
    // Once stored, the next read is an L1 hit (not a join of the fill).
    until(Duration::from_secs(2), "entry stored", || async {
        n.cache.l1_entries().await == 1
    })
    .await;
    n.get(TOOLS, &[]).await;
    n.send(
        Method::DELETE,
        "/v1/tools/tool-0a1b2c3d-1b2c-4d5e-8f90-0123456789ab",
        &[],
        None,
    )
    .await;
    let m = |k: &'static str| n.metric(k);
    assert_eq!(
        m("letta_proxy_cache_lookups_total{result=\"hit\",tier=\"l1\"}").await,
        1.0
    );
    assert_eq!(
        m("letta_proxy_cache_lookups_total{result=\"miss\",tier=\"l1\"}").await,
        1.0
    );
    assert_eq!(m("letta_proxy_cache_stores_total{tier=\"l1\"}").await, 1.0);
    assert_eq!(
        m("letta_proxy_cache_invalidations_total{origin=\"local\"}").await,
        1.0
    );
    assert!(m("letta_proxy_cache_invalidated_entries_total{tier=\"l1\"}").await >= 1.0);
    let text = support::scrape(&n.url("/metrics")).await;
    for family in [
        "letta_proxy_cache_l1_entries",
        "letta_proxy_cache_l1_bytes",
        "letta_proxy_cache_evictions_total",
    ] {
        assert!(text.contains(family), "{family}");
    }
}

/// Edits a value in place and returns it (config tweaks in one expression).
trait Tap: Sized {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}
impl<T> Tap for T {}

#[tokio::test]
async fn cache_rules_follow_a_reload() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    n.get(TOOLS, &[]).await;
    assert_eq!(n.get(TOOLS, &[]).await.x_cache(), "HIT");
    let off = "[[cache.rules]]\npath = \"/v1/tools/**\"\ncache = false";
    n.proxy.apply(cache_config(&[&s[0]], off));
    let r = n.get(TOOLS, &[]).await;
    assert_eq!(r.x_cache(), "-", "tools are no longer a cacheable route");
    let mut disabled = cache_config(&[&s[0]], "");
    disabled.cache.enabled = false;
    n.proxy.apply(disabled);
    assert_eq!(
        n.get("/v1/sources/", &[]).await.x_cache(),
        "-",
        "cache switched off"
    );
}

#[tokio::test]
async fn admin_purges_drop_entries_by_id_and_by_collection() {
    let s = standins(1).await;
    let n = Node::start(cache_config(&[&s[0]], "")).await;
    let agent = format!("/v1/agents/{A}");
    let other = format!("/v1/agents/{A2}");
    for p in [agent.as_str(), other.as_str(), TOOLS, "/v1/tools/?name=x"] {
        n.get(p, &[]).await;
        assert_eq!(n.get(p, &[]).await.x_cache(), "HIT", "{p}");
    }
    assert!(n.proxy.purge_cache_id(A).await >= 1);
    assert_eq!(n.get(&agent, &[]).await.x_cache(), "MISS");
    assert_eq!(n.get(&other, &[]).await.x_cache(), "HIT");
    assert_eq!(n.proxy.purge_cache_prefix("/v1/tools").await, 2);
    assert_eq!(n.get(TOOLS, &[]).await.x_cache(), "MISS");
    assert_eq!(n.get("/v1/tools/?name=x", &[]).await.x_cache(), "MISS");
    assert_eq!(
        n.get(&other, &[]).await.x_cache(),
        "HIT",
        "other collections stay"
    );
}
