//! Cache keys: what makes two requests "the same request from the same caller".
//!
//! A key is SHA-256 (truncated to 128 bits) over, each length-prefixed so no two
//! field lists can collide by concatenation: a domain tag, the method, the path
//! byte for byte (Letta routes `/x` and `/x/` differently), the query with its
//! parameters sorted, every header that says who is asking or shapes the
//! answer (name and every value, in order), and for the message cache the
//! body's hash. SHA-256 and not a faster hash: the key is the only thing
//! standing between two tenants' answers, so it must not be collidable on
//! purpose (and with SHA-NI it costs well under a microsecond).
//!
//! Which headers count is [`HeaderRules`]: the caller's identity
//! ([`crate::identity::IDENTITY`], always), `cache.vary_headers` and
//! `cache.ignore_headers`. A request carrying a header in none of them has no
//! key ([`Unkeyed`]): the cache cannot tell whether that header changes the
//! answer, so the request goes to a backend and its answer is not kept.

use http::{HeaderMap, HeaderName, Method};
use rustc_hash::FxHashMap;
use sha2::{Digest, Sha256};

use crate::identity;

/// What a key is for; keeps a remembered write from ever matching a cached read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A cached GET/HEAD (or, with a body hash, an opt-in message POST).
    Response,
    /// The last successful block write of a caller (unchanged-write suppression).
    Suppression,
}

/// A 128-bit cache key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 16]);

impl CacheKey {
    /// Lowercase hex, as used in Redis keys.
    pub fn hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(32);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 0xf) as usize] as char);
        }
        s
    }
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CacheKey({})", self.hex())
    }
}

/// The request carries a header the cache cannot classify: no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unkeyed(pub HeaderName);

/// How a request header takes part in the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Says who is asking: always in the key.
    Identity,
    /// Shapes the answer (`vary_headers`): in the key.
    Vary,
    /// Known not to change the answer (`ignore_headers`): left out.
    Ignored,
}

/// Request headers classified for keys, compiled from `[cache]` once.
#[derive(Debug, Clone)]
pub struct HeaderRules {
    exact: FxHashMap<HeaderName, Class>,
    /// Checked in order when no exact name matches: ignored prefixes first, so
    /// `x-stainless-retry-count` is not split per retry by an `x-stainless-*` vary.
    prefixes: Vec<(Box<str>, Class)>,
}

impl HeaderRules {
    /// Compiles validated lists (lowercase; a trailing `*` is a prefix);
    /// `ignore` adds to [`identity::IGNORED`].
    pub fn new(vary: &[String], ignore: &[String]) -> HeaderRules {
        let ignore: Vec<String> = identity::IGNORED
            .iter()
            .map(|n| n.to_string())
            .chain(ignore.iter().cloned())
            .collect();
        let ignore = &ignore[..];
        let mut exact = FxHashMap::default();
        let mut ignored_prefixes = Vec::new();
        let mut vary_prefixes = Vec::new();
        for (list, class, prefixes) in [
            (ignore, Class::Ignored, &mut ignored_prefixes),
            (vary, Class::Vary, &mut vary_prefixes),
        ] {
            for n in list {
                match n.strip_suffix('*') {
                    Some(p) => prefixes.push((Box::from(p), class)),
                    None => {
                        if let Ok(h) = HeaderName::from_bytes(n.as_bytes()) {
                            // A name in both lists is keyed: keying more is the safe side.
                            exact.insert(h, class);
                        }
                    }
                }
            }
        }
        for (n, _) in identity::IDENTITY {
            exact.insert(HeaderName::from_static(n), Class::Identity);
        }
        ignored_prefixes.extend(vary_prefixes);
        HeaderRules {
            exact,
            prefixes: ignored_prefixes,
        }
    }

    /// How `name` takes part in the key; `None` when no list names it.
    pub fn class(&self, name: &HeaderName) -> Option<Class> {
        if let Some(c) = self.exact.get(name) {
            return Some(*c);
        }
        let n = name.as_str();
        self.prefixes
            .iter()
            .find(|(p, _)| n.starts_with(&**p))
            .map(|(_, c)| *c)
    }

    /// Whether a response's `Vary: name` is covered by the key.
    pub fn covers(&self, name: &str) -> bool {
        let name = name.trim().to_ascii_lowercase();
        HeaderName::from_bytes(name.as_bytes())
            .ok()
            .and_then(|h| self.class(&h))
            .is_some_and(|c| c != Class::Ignored)
    }
}

/// Feeds `bytes` with its length first, so fields cannot run into each other.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u32).to_le_bytes());
    h.update(bytes);
}

/// The key of a request, or [`Unkeyed`] when it carries a header the rules
/// do not classify.
pub fn compute(
    domain: Domain,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    rules: &HeaderRules,
    body_hash: Option<&[u8; 32]>,
) -> Result<CacheKey, Unkeyed> {
    // One pass over the request's headers: keep the keyed ones, refuse the unknown.
    let mut keyed: Vec<(&str, &[u8])> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        match rules.class(name) {
            Some(Class::Identity | Class::Vary) => keyed.push((name.as_str(), value.as_bytes())),
            Some(Class::Ignored) => {}
            None => return Err(Unkeyed(name.clone())),
        }
    }
    // By name; stable, so the values of a repeated header keep their order
    // (Letta reads the first one: `a, b` and `b, a` are different callers).
    keyed.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    h.update(match domain {
        Domain::Response => b"letta-proxy/response/2\0",
        Domain::Suppression => b"letta-proxy/suppress/2\0",
    });
    field(&mut h, method.as_str().as_bytes());
    field(&mut h, path.as_bytes());
    normalized_query(&mut h, query.unwrap_or(""));
    h.update((keyed.len() as u32).to_le_bytes());
    for (name, value) in keyed {
        field(&mut h, name.as_bytes());
        field(&mut h, value);
    }
    match body_hash {
        Some(b) => {
            h.update([1u8]);
            h.update(b);
        }
        None => h.update([0u8]),
    }
    let digest = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    Ok(CacheKey(out))
}

/// The query's `&`-separated parameters, sorted (stable for repeated names, so
/// `a=1&a=2` and `a=2&a=1` stay distinct: list order can matter to Letta).
fn normalized_query(h: &mut Sha256, query: &str) {
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    params.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    h.update((params.len() as u32).to_le_bytes());
    for p in params {
        field(h, p.as_bytes());
    }
}

fn name_of(param: &str) -> &str {
    param.split_once('=').map_or(param, |(n, _)| n)
}

/// SHA-256 of a body (suppression and message-cache keys).
pub fn body_hash(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> HeaderRules {
        let c = crate::config::CacheConfig::default();
        HeaderRules::new(&c.vary_headers, &c.ignore_headers)
    }

    fn try_key(method: &str, pq: &str, headers: &[(&str, &str)]) -> Result<CacheKey, Unkeyed> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (path, query) = match pq.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (pq, None),
        };
        compute(
            Domain::Response,
            &method.parse().unwrap(),
            path,
            query,
            &map,
            &rules(),
            None,
        )
    }

    fn key(method: &str, pq: &str, headers: &[(&str, &str)]) -> CacheKey {
        try_key(method, pq, headers).unwrap()
    }

    #[test]
    fn same_request_same_key_and_query_order_does_not_matter() {
        let a = key(
            "GET",
            "/v1/agents/?limit=5&name=x",
            &[("authorization", "Bearer a")],
        );
        let b = key(
            "GET",
            "/v1/agents/?name=x&limit=5",
            &[("authorization", "Bearer a")],
        );
        assert_eq!(a, b);
        assert_eq!(a.hex().len(), 32);
    }

    #[test]
    fn every_part_of_the_request_that_selects_the_answer_changes_the_key() {
        let auth = ("authorization", "Bearer a");
        let base = key("GET", "/v1/agents/?limit=5", &[auth]);
        let mut differ = vec![
            key("HEAD", "/v1/agents/?limit=5", &[auth]),
            key("GET", "/v1/agents?limit=5", &[auth]),
            key("GET", "/v1/agents/?limit=6", &[auth]),
            key("GET", "/v1/agents/", &[auth]),
            key(
                "GET",
                "/v1/agents/?limit=5",
                &[("authorization", "Bearer b")],
            ),
            key("GET", "/v1/agents/?limit=5", &[]),
            key("GET", "/v1/agents/?limit=5", &[("authorization", "")]),
            // The same credential in Letta's other header is another caller.
            key(
                "GET",
                "/v1/agents/?limit=5",
                &[("x-bare-password", "Bearer a")],
            ),
        ];
        // Every identity header, and the headers that shape the answer.
        for (name, value) in [
            ("x-bare-password", "password a"),
            ("user_id", "user-1"),
            ("x-project", "p"),
            ("x-project-id", "p"),
            ("x-organization-id", "org-1"),
            ("cookie", "session=1"),
            ("proxy-authorization", "Basic x"),
            ("x-api-key", "k"),
            ("user-agent", "Letta/Python 1.0"),
            ("x-stainless-package-version", "1.12.1"),
            ("x-experimental-letta-v1-agent", "true"),
            ("x-letta-source", "letta-code"),
            ("storage_unit", "MB"),
            ("accept", "text/html"),
            ("accept-encoding", "gzip"),
            ("origin", "https://app.letta.com"),
        ] {
            differ.push(key("GET", "/v1/agents/?limit=5", &[auth, (name, value)]));
        }
        for (i, k) in differ.iter().enumerate() {
            assert_ne!(*k, base, "variant {i}");
            for (j, other) in differ.iter().enumerate().skip(i + 1) {
                assert_ne!(k, other, "variants {i} and {j}");
            }
        }
        // Headers that describe the attempt, not the request, do not split entries.
        let same = key(
            "GET",
            "/v1/agents/?limit=5",
            &[
                auth,
                ("x-stainless-retry-count", "1"),
                ("x-stainless-read-timeout", "60"),
                ("x-request-id", "abc"),
                ("traceparent", "00-abc-def-01"),
                ("host", "proxy:8300"),
            ],
        );
        assert_eq!(same, base);
    }

    #[test]
    fn repeated_credentials_are_keyed_in_order() {
        // Letta reads the first value: these are two different callers.
        let a = key(
            "GET",
            "/v1/agents/",
            &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
        );
        let b = key(
            "GET",
            "/v1/agents/",
            &[("authorization", "Bearer b"), ("authorization", "Bearer a")],
        );
        assert_ne!(a, b);
    }

    #[test]
    fn an_unknown_header_leaves_the_request_without_a_key() {
        let e = try_key("GET", "/v1/agents/", &[("x-tenant", "t1")]).unwrap_err();
        assert_eq!(e.0, "x-tenant");
    }

    #[test]
    fn fields_cannot_be_shifted_into_each_other() {
        // Path "/a" + query "b" vs path "/ab": the length prefixes keep them apart.
        let a = key("GET", "/v1/a?b", &[]);
        let b = key("GET", "/v1/ab", &[]);
        assert_ne!(a, b);
        let c = key("GET", "/v1/x", &[("authorization", "x"), ("user_id", "")]);
        let d = key("GET", "/v1/x", &[("authorization", ""), ("user_id", "x")]);
        assert_ne!(c, d);
    }

    #[test]
    fn vary_covers_identity_and_configured_headers() {
        let v = HeaderRules::new(&["user-agent".into(), "x-experimental-*".into()], &[]);
        assert!(v.covers("Authorization"));
        assert!(v.covers("X-BARE-PASSWORD"));
        assert!(v.covers("user-agent"));
        assert!(v.covers("X-Experimental-Foo"));
        assert!(!v.covers("x-tenant"));
        let d = rules();
        assert!(d.covers("cookie"));
        let keyed_referer = HeaderRules::new(&["referer".into()], &[]);
        assert!(
            keyed_referer.covers("referer"),
            "vary wins over a built-in ignore"
        );
        assert!(
            !d.covers("x-request-id"),
            "an ignored header is not in the key"
        );
    }
}
