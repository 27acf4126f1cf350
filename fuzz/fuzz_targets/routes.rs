//! Route classification (`routes::classify`) on any path:
//!
//! - never panics, and is deterministic;
//! - `Classified::of(path).route(path)` (what travels in a request's
//!   extensions) equals `classify(path)`;
//! - the ids it extracts are whole segments of the path with Letta's prefix;
//! - a template shows only Letta's words and `{placeholders}`, never a value;
//! - `/latest/...` is classified like `/v1/...` (Letta serves both), and the
//!   default cache policy plans both alike;
//! - for a path the hygiene rules accept, the classification of the path as
//!   sent equals that of the path as Letta decodes it: the proxy and Letta
//!   agree on which agent and block a request writes, and whether it writes.
//!
//! Input: the path, as bytes (seeds: Letta 0.16.8's routes with real ids).

#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, Method};
use letta_proxy::cache::policy::Policy;
use letta_proxy::config::CacheConfig;
use letta_proxy::gateway::hygiene::check_path;
use letta_proxy::routes::{classify, Classified, Route, OTHER};
use letta_proxy_fuzz::percent_decode;
use libfuzzer_sys::fuzz_target;

fn policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| Policy::new(&CacheConfig::default(), None))
}

/// Whether `id` is one whole segment of `path`, found where it points.
fn is_segment_of(id: &str, path: &str) -> bool {
    let (start, end) = (
        id.as_ptr() as usize - path.as_ptr() as usize,
        id.as_ptr() as usize - path.as_ptr() as usize + id.len(),
    );
    path.get(start..end) == Some(id)
        && path[..start].ends_with('/')
        && (end == path.len() || path[end..].starts_with('/'))
}

/// Everything but the template and the ids' positions; the ids decoded the
/// way Letta's server decodes a path when `decode`.
fn meaning(r: &Route<'_>, decode: bool) -> impl PartialEq + std::fmt::Debug {
    let id = |i: Option<&str>| {
        i.map(|i| {
            if decode {
                percent_decode(i)
            } else {
                i.to_string()
            }
        })
    };
    (
        r.kind,
        id(r.agent_id),
        id(r.block_id),
        r.read_only_post,
        r.streaming,
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let r = classify(path);
    assert_eq!(r, classify(path), "not deterministic");
    // Ranges are kept as u16: http::Uri refuses longer targets anyway.
    if path.len() < u16::MAX as usize {
        assert_eq!(Classified::of(path).route(path), r, "{path:?}");
    }
    if let Some(a) = r.agent_id {
        assert!(
            a.starts_with("agent-") && is_segment_of(a, path),
            "{path:?}: {a:?}"
        );
    }
    if let Some(b) = r.block_id {
        assert!(
            b.starts_with("block-") && is_segment_of(b, path),
            "{path:?}: {b:?}"
        );
    }
    let t = r.template;
    if t != OTHER {
        assert!(t == "/v1" || t.starts_with("/v1/") || t == "/latest" || t.starts_with("/latest/"));
        for seg in t.split('/').skip(2) {
            let placeholder = seg.starts_with('{') && seg.ends_with('}');
            // A word shows only if it is one of Letta's: alone, it stays a word.
            let word = || classify(&format!("/v1/{seg}")).template == format!("/v1/{seg}");
            assert!(
                seg.is_empty() || seg == "…" || placeholder || word(),
                "{path:?}: template {t:?} shows {seg:?}"
            );
        }
    }
    // /latest is /v1.
    let v1 = path
        .strip_prefix("/v1")
        .filter(|rest| rest.is_empty() || rest.starts_with('/'));
    if let Some(rest) = v1 {
        let latest = format!("/latest{rest}");
        let l = classify(&latest);
        assert_eq!(
            meaning(&l, false),
            meaning(&r, false),
            "{path:?} vs {latest:?}"
        );
        if l.template != OTHER && t != OTHER {
            assert_eq!(l.template.strip_prefix("/latest"), t.strip_prefix("/v1"));
        }
        let none = HeaderMap::new();
        for m in [Method::GET, Method::POST, Method::PATCH] {
            assert_eq!(
                policy().plan(&m, &latest, &l, &none),
                policy().plan(&m, path, &r, &none),
                "{m} {path:?}"
            );
        }
    }
    // The path as Letta sees it.
    if check_path(path).is_ok() {
        let decoded = percent_decode(path);
        let d = classify(&decoded);
        assert_eq!(
            meaning(&d, false),
            meaning(&r, true),
            "{path:?} decodes to {decoded:?}"
        );
        for m in [Method::GET, Method::POST, Method::PUT] {
            assert_eq!(d.is_read(&m), r.is_read(&m));
        }
    }
});
