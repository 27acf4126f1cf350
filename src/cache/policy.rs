//! What is cacheable: pure decisions on a request and on a response.
//!
//! [`Policy::plan`] looks at the method, path and a few headers only (no key,
//! no allocation) so requests the cache does not touch pay almost nothing.
//! [`Policy::storable`] decides whether a response may be kept and for how long.

use std::time::Duration;

use http::{header, HeaderMap, Method, StatusCode};

use super::config::{CacheConfig, CacheRule};
use super::key::HeaderRules;

/// What the cache does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Not the cache's business: forwarded untouched.
    Pass,
    /// A cacheable read (GET/HEAD) with the rule's TTL.
    Read { ttl: Duration, bypass: Bypass },
    /// An opt-in cached agent turn (POST …/messages, keyed by body).
    Message { ttl: Duration, bypass: Bypass },
    /// A request that may change state: invalidates what it touches on 2xx.
    Write,
}

/// A client's `Cache-Control` on a cacheable request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// Use the cache.
    No,
    /// `no-cache` (or `Pragma: no-cache`): skip the lookup, store the fresh answer.
    Refresh,
    /// `no-store`: skip the lookup, drop any entry, store nothing.
    NoStore,
}

/// Why a response was not stored (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Status,
    Stream,
    NoStore,
    Cookie,
    Vary,
    TooLarge,
}

impl NotStored {
    pub fn label(self) -> &'static str {
        match self {
            NotStored::Status => "status",
            NotStored::Stream => "stream",
            NotStored::NoStore => "no_store",
            NotStored::Cookie => "cookie",
            NotStored::Vary => "vary",
            NotStored::TooLarge => "too_large",
        }
    }
}

/// A path glob, split into segments once.
#[derive(Debug, Clone)]
struct Glob(Vec<Seg>);

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Lit(String),
    One,
    Any,
}

impl Glob {
    fn new(pattern: &str) -> Glob {
        Glob(
            pattern
                .split('/')
                .skip(1)
                .map(|s| match s {
                    "*" => Seg::One,
                    "**" => Seg::Any,
                    lit => Seg::Lit(lit.to_string()),
                })
                .collect(),
        )
    }

    fn matches(&self, segs: &[&str]) -> bool {
        match_from(&self.0, segs)
    }
}

/// Routes never cached whatever the rules say (Letta 0.16.8): the hidden
/// pass-through routes forward almost every request header to another service
/// (`routers/v1/git_http.py:250`, `anthropic.py:269`, `zai.py:265`), and these
/// GETs have side effects (`tools.py:858` stores an OAuth result,
/// `mcp_servers.py:215` opens an OAuth session).
const NEVER_CACHED: &[&str] = &[
    "/v1/git/",
    "/v1/anthropic/",
    "/v1/zai/",
    "/v1/tools/mcp/oauth/",
    "/v1/mcp-servers/connect/",
];

/// Most path segments a rule can match: deeper than any Letta route.
const MAX_SEGMENTS: usize = 16;

/// Splits `path` into its segments once, for every rule to match against.
/// `None` when it is deeper than [`MAX_SEGMENTS`].
fn split_path(path: &str) -> Option<([&str; MAX_SEGMENTS], usize)> {
    let mut segs = path.split('/');
    segs.next(); // before the leading '/'
    let mut buf: [&str; MAX_SEGMENTS] = [""; MAX_SEGMENTS];
    let mut n = 0;
    for s in segs {
        *buf.get_mut(n)? = s;
        n += 1;
    }
    Some((buf, n))
}

fn match_from(pat: &[Seg], path: &[&str]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((Seg::Any, rest)) => (0..=path.len()).any(|i| match_from(rest, &path[i..])),
        Some((seg, rest)) => match path.split_first() {
            None => false,
            Some((p, prest)) => {
                let ok = match seg {
                    Seg::Lit(l) => l == p,
                    Seg::One => !p.is_empty(),
                    Seg::Any => unreachable!(),
                };
                ok && match_from(rest, prest)
            }
        },
    }
}

#[derive(Debug, Clone)]
struct Rule {
    glob: Glob,
    get: bool,
    head: bool,
    post: bool,
    ttl: Option<Duration>,
}

/// The compiled `[cache]` decisions.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `cache.enabled` as reloaded: off, every request passes through.
    pub enabled: bool,
    /// `cache.suppress_unchanged_writes`.
    pub suppress: bool,
    rules: Vec<Rule>,
    default_ttl: Duration,
    pub max_entry_size: u64,
    /// Which request headers are keyed, ignored, or unknown.
    pub headers: HeaderRules,
}

impl Policy {
    /// Compiles a validated config. `affinity_header` (the balancer's, read by
    /// the proxy only) is one more header that never changes an answer.
    pub fn new(c: &CacheConfig, affinity_header: Option<&str>) -> Policy {
        let mut ignore = c.ignore_headers.clone();
        if let Some(h) = affinity_header {
            let h = h.to_ascii_lowercase();
            if !crate::identity::is_identity(&h) {
                ignore.push(h);
            }
        }
        let rules = c
            .rules
            .iter()
            .map(|r: &CacheRule| {
                let has = |m: &str| r.methods.iter().any(|x| x == m);
                Rule {
                    glob: Glob::new(&r.path),
                    get: has("GET"),
                    head: has("HEAD"),
                    post: has("POST"),
                    ttl: r.cache.then_some(r.ttl.unwrap_or(c.ttl)),
                }
            })
            .collect();
        Policy {
            enabled: c.enabled,
            suppress: c.suppress_unchanged_writes,
            rules,
            default_ttl: c.ttl,
            max_entry_size: c.max_entry_size,
            headers: HeaderRules::new(&c.vary_headers, &ignore),
        }
    }

    /// The rule TTL for `method` on `path`: `Some` when cacheable.
    fn ttl_for(&self, method: &Method, path: &str) -> Option<Duration> {
        // Split once, not once per rule: this runs on every cacheable request.
        // Deeper than any Letta route: never cached (no rule could be checked).
        let (buf, n) = split_path(path)?;
        let segs = &buf[..n];
        for r in &self.rules {
            let applies = match *method {
                Method::GET => r.get,
                Method::HEAD => r.head,
                Method::POST => r.post,
                _ => false,
            };
            if applies && r.glob.matches(segs) {
                return r.ttl;
            }
        }
        // No rule: reads are cacheable with the default TTL, POSTs never.
        matches!(*method, Method::GET | Method::HEAD).then_some(self.default_ttl)
    }

    /// What to do with a request to `path` (no query).
    pub fn plan(
        &self,
        method: &Method,
        path: &str,
        read_only_post: bool,
        headers: &HeaderMap,
    ) -> Plan {
        if !(path.starts_with("/v1/") || path == "/v1") {
            return Plan::Pass;
        }
        if NEVER_CACHED.iter().any(|p| path.starts_with(p)) {
            return Plan::Pass;
        }
        match *method {
            Method::GET | Method::HEAD => {
                // A body on a read or a partial read is not something to share.
                if headers.contains_key(header::RANGE) || has_body(headers) {
                    return Plan::Pass;
                }
                match self.ttl_for(method, path) {
                    Some(ttl) => Plan::Read {
                        ttl,
                        bypass: bypass(headers),
                    },
                    None => Plan::Pass,
                }
            }
            Method::OPTIONS => Plan::Pass,
            Method::POST if read_only_post => Plan::Pass,
            Method::POST => match self.ttl_for(method, path) {
                Some(ttl) => Plan::Message {
                    ttl,
                    bypass: bypass(headers),
                },
                None => Plan::Write,
            },
            _ => Plan::Write,
        }
    }

    /// Whether a response may be stored, and for how long (the rule's TTL,
    /// shortened by the backend's `max-age`).
    pub fn storable(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        ttl: Duration,
    ) -> Result<Duration, NotStored> {
        if status != StatusCode::OK {
            return Err(NotStored::Status);
        }
        if headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"))
        {
            return Err(NotStored::Stream);
        }
        if headers.contains_key(header::SET_COOKIE) {
            return Err(NotStored::Cookie);
        }
        let mut ttl = ttl;
        for v in headers.get_all(header::CACHE_CONTROL) {
            let Ok(v) = v.to_str() else {
                return Err(NotStored::NoStore);
            };
            for d in v.split(',').map(|d| d.trim().to_ascii_lowercase()) {
                let (name, arg) = d.split_once('=').unwrap_or((&d, ""));
                match name {
                    "no-store" | "private" | "no-cache" => return Err(NotStored::NoStore),
                    "max-age" | "s-maxage" => match arg.trim_matches('"').parse::<u64>() {
                        Ok(0) | Err(_) => return Err(NotStored::NoStore),
                        Ok(s) => ttl = ttl.min(Duration::from_secs(s)),
                    },
                    _ => {}
                }
            }
        }
        for v in headers.get_all(header::VARY) {
            let Ok(v) = v.to_str() else {
                return Err(NotStored::Vary);
            };
            if v.split(',')
                .any(|n| n.trim() == "*" || !self.headers.covers(n))
            {
                return Err(NotStored::Vary);
            }
        }
        if content_length(headers).is_some_and(|n| n > self.max_entry_size) {
            return Err(NotStored::TooLarge);
        }
        Ok(ttl)
    }
}

fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING) || content_length(h).is_some_and(|n| n > 0)
}

pub fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn bypass(h: &HeaderMap) -> Bypass {
    let mut out = Bypass::No;
    let directives = h
        .get_all(header::CACHE_CONTROL)
        .iter()
        .chain(h.get_all(header::PRAGMA).iter());
    for v in directives {
        for d in v.to_str().unwrap_or("").split(',') {
            match d.trim().to_ascii_lowercase().as_str() {
                "no-store" => return Bypass::NoStore,
                "no-cache" => out = Bypass::Refresh,
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
