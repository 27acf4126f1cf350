//! Table tests of [`super`]: globs, request plans, response storability.

use super::*;
use crate::cache::config::CacheConfig;

const A: &str = "agent-6f1e3c2a-1b2c-4d5e-8f90-0123456789ab";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn policy_with(extra: Vec<CacheRule>) -> Policy {
    let mut c = CacheConfig::default();
    let mut rules = extra;
    rules.extend(c.rules);
    c.rules = rules;
    c.validate().unwrap();
    Policy::new(&c, None)
}

#[test]
fn globs() {
    let cases = [
        ("/v1/tools/**", "/v1/tools", true),
        ("/v1/tools/**", "/v1/tools/", true),
        ("/v1/tools/**", "/v1/tools/tool-1/x", true),
        ("/v1/tools/**", "/v1/toolsx", false),
        ("/v1/agents/*/messages", "/v1/agents/a/messages", true),
        ("/v1/agents/*/messages", "/v1/agents//messages", false),
        (
            "/v1/agents/*/messages",
            "/v1/agents/a/messages/stream",
            false,
        ),
        ("/v1/**/messages/**", "/v1/agents/a/messages", true),
        ("/v1/**/messages/**", "/v1/messages/batches", true),
        ("/v1/**/files/**", "/v1/folders/f/files/", true),
        ("/v1/**/files/**", "/v1/agents/a", false),
    ];
    for (g, p, want) in cases {
        let (buf, n) = split_path(p).expect("shallow path");
        assert_eq!(Glob::new(g).matches(&buf[..n]), want, "{g} vs {p}");
    }
}

#[test]
fn pass_through_and_side_effect_routes_are_never_cached_whatever_the_rules() {
    // Even a rule that caches everything.
    let p = policy_with(vec![CacheRule {
        path: "/v1/**".into(),
        methods: vec!["GET".into()],
        cache: true,
        ttl: Some(Duration::from_secs(60)),
    }]);
    let none = HeaderMap::new();
    for path in [
        "/v1/git/agent-1/state.git/info/refs",
        "/v1/anthropic/v1/models",
        "/v1/zai/v1/models",
        "/v1/tools/mcp/oauth/callback",
        "/v1/mcp-servers/connect/mcp-1",
    ] {
        assert_eq!(
            p.plan(&Method::GET, path, false, &none),
            Plan::Pass,
            "{path}"
        );
    }
    assert!(matches!(
        p.plan(&Method::GET, "/v1/tools/", false, &none),
        Plan::Read { .. }
    ));
}

#[test]
fn paths_deeper_than_any_letta_route_are_never_cached() {
    // A rule like `/v1/agents/** cache = false` must not be escaped by depth.
    let p = policy_with(vec![]);
    let none = HeaderMap::new();
    let deep = format!("/v1/agents/{A}{}", "/x".repeat(MAX_SEGMENTS));
    assert_eq!(p.plan(&Method::GET, &deep, false, &none), Plan::Pass);
    let shallow = format!("/v1/agents/{A}");
    assert_ne!(p.plan(&Method::GET, &shallow, false, &none), Plan::Pass);
}

#[test]
fn request_plans() {
    let p = policy_with(vec![]);
    let none = HeaderMap::new();
    let read = |ttl| Plan::Read {
        ttl: Duration::from_secs(ttl),
        bypass: Bypass::No,
    };
    let get = Method::GET;
    let cases: Vec<(Method, String, bool, HeaderMap, Plan)> = vec![
        (
            get.clone(),
            format!("/v1/agents/{A}"),
            false,
            none.clone(),
            read(10),
        ),
        (
            Method::HEAD,
            "/v1/tools/".into(),
            false,
            none.clone(),
            read(300),
        ),
        (
            get.clone(),
            "/v1/sources/".into(),
            false,
            none.clone(),
            read(30),
        ),
        (
            get.clone(),
            format!("/v1/agents/{A}/messages"),
            false,
            none.clone(),
            Plan::Pass,
        ),
        (
            get.clone(),
            "/v1/runs/run-1".into(),
            false,
            none.clone(),
            Plan::Pass,
        ),
        (
            get.clone(),
            "/v1/health/".into(),
            false,
            none.clone(),
            Plan::Pass,
        ),
        (
            get.clone(),
            "/v1/folders/f/files".into(),
            false,
            none.clone(),
            Plan::Pass,
        ),
        (
            get.clone(),
            "/metrics-ish".into(),
            false,
            none.clone(),
            Plan::Pass,
        ),
        (
            get.clone(),
            "/v1/tools/".into(),
            false,
            headers(&[("range", "bytes=0-1")]),
            Plan::Pass,
        ),
        (
            get.clone(),
            "/v1/tools/".into(),
            false,
            headers(&[("content-length", "3")]),
            Plan::Pass,
        ),
        (
            get.clone(),
            "/v1/tools/".into(),
            false,
            headers(&[("cache-control", "max-age=0, no-cache")]),
            Plan::Read {
                ttl: Duration::from_secs(300),
                bypass: Bypass::Refresh,
            },
        ),
        (
            get.clone(),
            "/v1/tools/".into(),
            false,
            headers(&[("pragma", "no-cache")]),
            Plan::Read {
                ttl: Duration::from_secs(300),
                bypass: Bypass::Refresh,
            },
        ),
        (
            get.clone(),
            "/v1/tools/".into(),
            false,
            headers(&[("cache-control", "no-store")]),
            Plan::Read {
                ttl: Duration::from_secs(300),
                bypass: Bypass::NoStore,
            },
        ),
        (
            Method::POST,
            format!("/v1/agents/{A}/messages"),
            false,
            none.clone(),
            Plan::Write,
        ),
        (
            Method::POST,
            format!("/v1/agents/{A}/archival-memory/search"),
            true,
            none.clone(),
            Plan::Pass,
        ),
        (
            Method::PATCH,
            "/v1/blocks/b".into(),
            false,
            none.clone(),
            Plan::Write,
        ),
        (
            Method::DELETE,
            format!("/v1/agents/{A}"),
            false,
            none.clone(),
            Plan::Write,
        ),
        (
            Method::PUT,
            "/v1/tools/".into(),
            false,
            none.clone(),
            Plan::Write,
        ),
        (
            Method::OPTIONS,
            "/v1/tools/".into(),
            false,
            none.clone(),
            Plan::Pass,
        ),
        (
            Method::PATCH,
            "/-/drain".into(),
            false,
            none.clone(),
            Plan::Pass,
        ),
    ];
    for (m, path, ro, h, want) in cases {
        assert_eq!(p.plan(&m, &path, ro, &h), want, "{m} {path}");
    }
}

#[test]
fn the_message_cache_is_opt_in_per_route() {
    let p = policy_with(vec![CacheRule {
        path: "/v1/agents/*/messages".into(),
        methods: vec!["POST".into()],
        cache: true,
        ttl: Some(Duration::from_secs(60)),
    }]);
    let plan = p.plan(
        &Method::POST,
        &format!("/v1/agents/{A}/messages"),
        false,
        &HeaderMap::new(),
    );
    assert_eq!(
        plan,
        Plan::Message {
            ttl: Duration::from_secs(60),
            bypass: Bypass::No
        }
    );
    // The stream route is not matched (and SSE is never stored anyway).
    let plan = p.plan(
        &Method::POST,
        &format!("/v1/agents/{A}/messages/stream"),
        false,
        &HeaderMap::new(),
    );
    assert_eq!(plan, Plan::Write);
    // GET of the history is still off.
    let plan = p.plan(
        &Method::GET,
        &format!("/v1/agents/{A}/messages"),
        false,
        &HeaderMap::new(),
    );
    assert_eq!(plan, Plan::Pass);
}

#[test]
fn response_storability() {
    let p = policy_with(vec![]);
    let ttl = Duration::from_secs(30);
    let ok = StatusCode::OK;
    let cases: Vec<(StatusCode, HeaderMap, Result<Duration, NotStored>)> = vec![
        (
            ok,
            headers(&[("content-type", "application/json")]),
            Ok(ttl),
        ),
        (
            StatusCode::NOT_FOUND,
            HeaderMap::new(),
            Err(NotStored::Status),
        ),
        (
            StatusCode::TEMPORARY_REDIRECT,
            HeaderMap::new(),
            Err(NotStored::Status),
        ),
        (
            StatusCode::NO_CONTENT,
            HeaderMap::new(),
            Err(NotStored::Status),
        ),
        (
            ok,
            headers(&[("content-type", "text/event-stream; charset=utf-8")]),
            Err(NotStored::Stream),
        ),
        (
            ok,
            headers(&[("cache-control", "no-store")]),
            Err(NotStored::NoStore),
        ),
        (
            ok,
            headers(&[("cache-control", "Private")]),
            Err(NotStored::NoStore),
        ),
        (
            ok,
            headers(&[("cache-control", "no-cache")]),
            Err(NotStored::NoStore),
        ),
        (
            ok,
            headers(&[("cache-control", "max-age=0")]),
            Err(NotStored::NoStore),
        ),
        (
            ok,
            headers(&[("cache-control", "public, max-age=5")]),
            Ok(Duration::from_secs(5)),
        ),
        (ok, headers(&[("cache-control", "max-age=500")]), Ok(ttl)),
        (
            ok,
            headers(&[("set-cookie", "a=b")]),
            Err(NotStored::Cookie),
        ),
        (ok, headers(&[("vary", "*")]), Err(NotStored::Vary)),
        (ok, headers(&[("vary", "X-Tenant")]), Err(NotStored::Vary)),
        // Credentials are always in the key.
        (ok, headers(&[("vary", "Cookie")]), Ok(ttl)),
        // An ignored header is not in the key: an answer that varies on it cannot be kept.
        (
            ok,
            headers(&[("vary", "X-Request-Id")]),
            Err(NotStored::Vary),
        ),
        (
            ok,
            headers(&[("vary", "Origin, Accept-Encoding, Authorization")]),
            Ok(ttl),
        ),
        (
            ok,
            headers(&[("content-length", "1048577")]),
            Err(NotStored::TooLarge),
        ),
        (ok, headers(&[("content-length", "1048576")]), Ok(ttl)),
    ];
    for (status, h, want) in cases {
        assert_eq!(p.storable(status, &h, ttl), want, "{status} {h:?}");
    }
}
