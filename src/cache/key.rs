//! Cache keys: what makes two requests "the same request from the same caller".
//!
//! A key is SHA-256 (truncated to 128 bits) over, each length-prefixed so no two
//! field lists can collide by concatenation: a domain tag, the method, the path
//! byte for byte (Letta routes `/x` and `/x/` differently), the query with its
//! parameters sorted, the caller's identity headers, the `vary_headers`, and
//! for the message cache the body's hash. SHA-256 and not a faster hash: the key
//! is the only thing standing between two tenants' answers, so it must not be
//! collidable on purpose (and with SHA-NI it costs well under a microsecond).

use http::{HeaderMap, Method};
use sha2::{Digest, Sha256};

/// Headers that say who is asking. Never shared across values, whatever the route.
pub const IDENTITY_HEADERS: &[&str] = &[
    "authorization",
    "user_id",
    "x-project",
    "x-project-id",
    "x-api-key",
];

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

/// Which request headers select the answer, compiled from `cache.vary_headers`.
#[derive(Debug, Clone)]
pub struct Vary {
    exact: Vec<http::HeaderName>,
    prefixes: Vec<String>,
}

impl Vary {
    /// Compiles validated `vary_headers` (lowercase; a trailing `*` is a prefix).
    pub fn new(names: &[String]) -> Vary {
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for n in names {
            match n.strip_suffix('*') {
                Some(p) => prefixes.push(p.to_string()),
                None => {
                    if let Ok(h) = http::HeaderName::from_bytes(n.as_bytes()) {
                        exact.push(h);
                    }
                }
            }
        }
        Vary { exact, prefixes }
    }

    /// Whether a response's `Vary: name` is covered by the key.
    pub fn covers(&self, name: &str) -> bool {
        let name = name.trim().to_ascii_lowercase();
        IDENTITY_HEADERS.contains(&name.as_str())
            || self.exact.iter().any(|h| h.as_str() == name)
            || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }
}

/// Feeds `bytes` with its length first, so fields cannot run into each other.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u32).to_le_bytes());
    h.update(bytes);
}

/// Every value of header `name`, in order, as one field (absent and empty differ).
fn header_field(h: &mut Sha256, headers: &HeaderMap, name: &str) {
    let mut values = headers.get_all(name).iter().peekable();
    if values.peek().is_none() {
        h.update([0u8]);
        return;
    }
    h.update([1u8]);
    for v in values {
        field(h, v.as_bytes());
    }
}

/// The key of a request.
pub fn compute(
    domain: Domain,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    vary: &Vary,
    body_hash: Option<&[u8; 32]>,
) -> CacheKey {
    let mut h = Sha256::new();
    h.update(match domain {
        Domain::Response => b"letta-proxy/response/1\0",
        Domain::Suppression => b"letta-proxy/suppress/1\0",
    });
    field(&mut h, method.as_str().as_bytes());
    field(&mut h, path.as_bytes());
    normalized_query(&mut h, query.unwrap_or(""));
    for name in IDENTITY_HEADERS {
        header_field(&mut h, headers, name);
    }
    for name in &vary.exact {
        header_field(&mut h, headers, name.as_str());
    }
    if !vary.prefixes.is_empty() {
        // Matching headers in name order (a HeaderMap's order is insertion order).
        let mut matched: Vec<(&str, &[u8])> = headers
            .iter()
            .filter(|(n, _)| vary.prefixes.iter().any(|p| n.as_str().starts_with(p)))
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        matched.sort_unstable();
        h.update((matched.len() as u32).to_le_bytes());
        for (n, v) in matched {
            field(&mut h, n.as_bytes());
            field(&mut h, v);
        }
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
    CacheKey(out)
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

    fn key(method: &str, pq: &str, headers: &[(&str, &str)]) -> CacheKey {
        let vary = Vary::new(
            &crate::cache::config::DEFAULT_VARY
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        );
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
            &vary,
            None,
        )
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
        let base = key(
            "GET",
            "/v1/agents/?limit=5",
            &[("authorization", "Bearer a")],
        );
        let differ = [
            key(
                "HEAD",
                "/v1/agents/?limit=5",
                &[("authorization", "Bearer a")],
            ),
            key(
                "GET",
                "/v1/agents?limit=5",
                &[("authorization", "Bearer a")],
            ),
            key(
                "GET",
                "/v1/agents/?limit=6",
                &[("authorization", "Bearer a")],
            ),
            key("GET", "/v1/agents/", &[("authorization", "Bearer a")]),
            key(
                "GET",
                "/v1/agents/?limit=5",
                &[("authorization", "Bearer b")],
            ),
            key("GET", "/v1/agents/?limit=5", &[]),
            key("GET", "/v1/agents/?limit=5", &[("authorization", "")]),
            key(
                "GET",
                "/v1/agents/?limit=5",
                &[("authorization", "Bearer a"), ("user_id", "user-1")],
            ),
            key(
                "GET",
                "/v1/agents/?limit=5",
                &[("authorization", "Bearer a"), ("x-project", "p")],
            ),
            key(
                "GET",
                "/v1/agents/?limit=5",
                &[("authorization", "Bearer a"), ("x-project-id", "p")],
            ),
            key(
                "GET",
                "/v1/agents/?limit=5",
                &[
                    ("authorization", "Bearer a"),
                    ("user-agent", "Letta/Python 1.0"),
                ],
            ),
            key(
                "GET",
                "/v1/agents/?limit=5",
                &[
                    ("authorization", "Bearer a"),
                    ("x-stainless-package-version", "1.12.1"),
                ],
            ),
            key(
                "GET",
                "/v1/agents/?limit=5",
                &[
                    ("authorization", "Bearer a"),
                    ("x-experimental-letta-v1-agent", "true"),
                ],
            ),
        ];
        for (i, k) in differ.iter().enumerate() {
            assert_ne!(*k, base, "variant {i}");
        }
        // Headers outside identity and vary (retry counters, timeouts) do not split entries.
        let same = key(
            "GET",
            "/v1/agents/?limit=5",
            &[
                ("authorization", "Bearer a"),
                ("x-stainless-retry-count", "1"),
                ("x-request-id", "abc"),
            ],
        );
        assert_eq!(same, base);
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
        let v = Vary::new(&["user-agent".into(), "x-experimental-*".into()]);
        assert!(v.covers("Authorization"));
        assert!(v.covers("user-agent"));
        assert!(v.covers("X-Experimental-Foo"));
        assert!(!v.covers("cookie"));
    }
}
