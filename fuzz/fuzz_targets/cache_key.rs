//! Cache keys (`cache::key::compute`) on any method, path, query and headers,
//! with the default header rules:
//!
//! - never panics, and the same request gives the same key;
//! - a request carrying an unclassified header has no key;
//! - every identity header takes part: adding one value of one changes the key;
//! - the order of a repeated keyed header's values matters (Letta reads the
//!   first: `Authorization: a, b` and `b, a` are different callers);
//! - ignored headers do not take part, and query parameters with distinct
//!   names may come in any order;
//! - the domains (a cached read, a remembered write) never share a key.
//!
//! Input: a request in the text form of `letta_proxy_fuzz` (seeds: the
//! headers the Python and TypeScript SDKs, curl and a browser send).

#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use letta_proxy::cache::key::{compute, Class, Domain, HeaderRules};
use letta_proxy::config::CacheConfig;
use letta_proxy::identity::IDENTITY;
use letta_proxy_fuzz::TextRequest;
use libfuzzer_sys::fuzz_target;

fn rules() -> &'static HeaderRules {
    static R: OnceLock<HeaderRules> = OnceLock::new();
    R.get_or_init(|| {
        let c = CacheConfig::default();
        HeaderRules::new(&c.vary_headers, &c.ignore_headers)
    })
}

fuzz_target!(|data: &[u8]| {
    let req = TextRequest::parse(data);
    let Ok(method) = Method::from_bytes(req.method) else {
        return;
    };
    let Ok(target) = std::str::from_utf8(req.target) else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let headers = req.header_map();
    let body = req
        .option("body")
        .map(|b| letta_proxy::cache::key::body_hash(b.as_bytes()));
    let key = |domain, h: &HeaderMap, q: Option<&str>| {
        compute(domain, &method, path, q, h, rules(), body.as_ref())
    };
    let k = key(Domain::Response, &headers, query);
    assert_eq!(
        k,
        key(Domain::Response, &headers, query),
        "not deterministic"
    );
    let unclassified = headers.keys().find(|n| rules().class(n).is_none());
    let k = match (k, unclassified) {
        (Ok(k), None) => k,
        (Err(e), Some(_)) => {
            assert!(rules().class(&e.0).is_none());
            return;
        }
        (k, u) => panic!("key {k:?} with unclassified header {u:?}"),
    };
    assert_ne!(Ok(k), key(Domain::Suppression, &headers, query));

    // One more identity value always splits the key.
    let credential = req.option("credential").unwrap_or("Bearer other");
    if let Ok(v) = HeaderValue::from_str(credential) {
        for (name, _) in IDENTITY {
            let mut more = headers.clone();
            more.append(HeaderName::from_static(name), v.clone());
            assert_ne!(
                Ok(k),
                key(Domain::Response, &more, query),
                "{name} left out"
            );
        }
    }

    // Value order of a keyed header.
    for name in headers.keys() {
        let values: Vec<&HeaderValue> = headers.get_all(name).iter().collect();
        let keyed = matches!(rules().class(name), Some(Class::Identity | Class::Vary));
        if values.len() < 2 || !keyed {
            continue;
        }
        let mut reversed = headers.clone();
        reversed.remove(name);
        for v in values.iter().rev() {
            reversed.append(name.clone(), (*v).clone());
        }
        let same = values.iter().eq(values.iter().rev());
        assert_eq!(
            Ok(k) == key(Domain::Response, &reversed, query),
            same,
            "order of {name} values"
        );
    }

    // Ignored headers take no part.
    let mut quiet = headers.clone();
    quiet.append("x-request-id", HeaderValue::from_static("req-1"));
    quiet.append("x-stainless-retry-count", HeaderValue::from_static("2"));
    assert_eq!(Ok(k), key(Domain::Response, &quiet, query));

    // Query parameters with distinct names, in any order.
    if let Some(q) = query {
        let params: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
        let mut names: Vec<&str> = params
            .iter()
            .map(|p| p.split('=').next().unwrap_or(p))
            .collect();
        names.sort_unstable();
        names.dedup();
        if names.len() == params.len() {
            let reversed: Vec<&str> = params.iter().rev().copied().collect();
            assert_eq!(
                Ok(k),
                key(Domain::Response, &headers, Some(&reversed.join("&")))
            );
        }
    }
});
