//! Table tests of [`super`]: globs, request plans, response storability.

use super::*;
use crate::config::CacheConfig;

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

fn plan(p: &Policy, m: &Method, path: &str, h: &HeaderMap) -> Plan {
    p.plan(m, path, &crate::routes::classify(path), h)
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
        assert_eq!(plan(&p, &Method::GET, path, &none), Plan::Pass, "{path}");
    }
    assert!(matches!(
        plan(&p, &Method::GET, "/v1/tools/", &none),
        Plan::Read { .. }
    ));
}

#[test]
fn paths_deeper_than_any_letta_route_are_never_cached() {
    // A rule like `/v1/agents/** cache = false` must not be escaped by depth.
    let p = policy_with(vec![]);
    let none = HeaderMap::new();
    let deep = format!("/v1/agents/{A}{}", "/x".repeat(MAX_SEGMENTS));
    assert_eq!(plan(&p, &Method::GET, &deep, &none), Plan::Pass);
    let shallow = format!("/v1/agents/{A}");
    assert_ne!(plan(&p, &Method::GET, &shallow, &none), Plan::Pass);
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
    let cases: Vec<(Method, String, HeaderMap, Plan)> = vec![
        (
            get.clone(),
            format!("/v1/agents/{A}"),
            none.clone(),
            read(10),
        ),
        (Method::HEAD, "/v1/tools/".into(), none.clone(), read(300)),
        (get.clone(), "/v1/sources/".into(), none.clone(), read(30)),
        (
            get.clone(),
            format!("/v1/agents/{A}/messages"),
            none.clone(),
            Plan::Pass,
        ),
        (
            get.clone(),
            "/v1/runs/run-1".into(),
            none.clone(),
            Plan::Pass,
        ),
        (get.clone(), "/v1/health/".into(), none.clone(), Plan::Pass),
        (
            get.clone(),
            "/v1/folders/f/files".into(),
            none.clone(),
            Plan::Pass,
        ),
        (get.clone(), "/metrics-ish".into(), none.clone(), Plan::Pass),
        (
            get.clone(),
            "/v1/tools/".into(),
            headers(&[("range", "bytes=0-1")]),
            Plan::Pass,
        ),
        (
            get.clone(),
            "/v1/tools/".into(),
            headers(&[("content-length", "3")]),
            Plan::Pass,
        ),
        (
            get.clone(),
            "/v1/tools/".into(),
            headers(&[("cache-control", "max-age=0, no-cache")]),
            Plan::Read {
                ttl: Duration::from_secs(300),
                bypass: Bypass::Refresh,
            },
        ),
        (
            get.clone(),
            "/v1/tools/".into(),
            headers(&[("pragma", "no-cache")]),
            Plan::Read {
                ttl: Duration::from_secs(300),
                bypass: Bypass::Refresh,
            },
        ),
        (
            get.clone(),
            "/v1/tools/".into(),
            headers(&[("cache-control", "no-store")]),
            Plan::Read {
                ttl: Duration::from_secs(300),
                bypass: Bypass::NoStore,
            },
        ),
        (
            Method::POST,
            format!("/v1/agents/{A}/messages"),
            none.clone(),
            Plan::Write,
        ),
        // A read-only POST (Letta's archival-memory search is a GET).
        (
            Method::POST,
            "/v1/agents/messages/search".into(),
            none.clone(),
            Plan::Pass,
        ),
        (
            Method::PATCH,
            "/v1/blocks/b".into(),
            none.clone(),
            Plan::Write,
        ),
        (
            Method::DELETE,
            format!("/v1/agents/{A}"),
            none.clone(),
            Plan::Write,
        ),
        (Method::PUT, "/v1/tools/".into(), none.clone(), Plan::Write),
        (
            Method::OPTIONS,
            "/v1/tools/".into(),
            none.clone(),
            Plan::Pass,
        ),
        (Method::PATCH, "/-/drain".into(), none.clone(), Plan::Pass),
        (
            get.clone(),
            format!("/latest/agents/{A}/messages"),
            none.clone(),
            Plan::Pass,
        ),
        (
            get.clone(),
            format!("/latest/agents/{A}"),
            none.clone(),
            read(10),
        ),
        (
            Method::POST,
            format!("/latest/agents/{A}/messages"),
            none.clone(),
            Plan::Write,
        ),
        (
            Method::POST,
            "/v1/git/agent-1/state.git/git-receive-pack".into(),
            none.clone(),
            Plan::Write,
        ),
    ];
    for (m, path, h, want) in cases {
        assert_eq!(plan(&p, &m, &path, &h), want, "{m} {path}");
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
    let got = plan(
        &p,
        &Method::POST,
        &format!("/v1/agents/{A}/messages"),
        &HeaderMap::new(),
    );
    assert_eq!(
        got,
        Plan::Message {
            ttl: Duration::from_secs(60),
            bypass: Bypass::No
        }
    );
    // The stream route is not matched (and SSE is never stored anyway).
    let got = plan(
        &p,
        &Method::POST,
        &format!("/v1/agents/{A}/messages/stream"),
        &HeaderMap::new(),
    );
    assert_eq!(got, Plan::Write);
    // GET of the history is still off.
    let got = plan(
        &p,
        &Method::GET,
        &format!("/v1/agents/{A}/messages"),
        &HeaderMap::new(),
    );
    assert_eq!(got, Plan::Pass);
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
