//! `[cache]`: what is cached, for how long, and where. Redis itself is
//! configured in `[redis]` ([`super::RedisConfig`]).
//!
//! Every key has a default (shown in `config/letta-proxy.toml`); unknown keys are
//! errors. Rules are checked here once, so the request path only sees compiled,
//! valid rules (`cache::policy`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::de_size;

/// `[cache]`: the response cache (in-process tier, optional shared Redis tier).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub enabled: bool,
    /// Time to live of a cached response when no rule sets one.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Memory budget of the in-process tier (bodies, headers, keys, tags).
    #[serde(deserialize_with = "de_size")]
    pub max_bytes: u64,
    /// Largest response body stored; larger answers stream through uncached.
    #[serde(deserialize_with = "de_size")]
    pub max_entry_size: u64,
    /// Request headers besides the caller's identity that select the answer:
    /// Letta shapes responses by SDK version, CORS by `Origin`. A trailing `*`
    /// matches a prefix (`x-experimental-*`).
    pub vary_headers: Vec<String>,
    /// More request headers known not to change an answer, besides the
    /// built-in ones ([`crate::identity::IGNORED`]: transport, tracing, browser
    /// chatter, the SDK's retry counter). A request carrying a header that is
    /// neither identity, `vary_headers` nor ignored is not answered from the
    /// cache: nobody can say it would get the same answer. (To key on a
    /// built-in ignored header, list it in `vary_headers`.)
    pub ignore_headers: Vec<String>,
    /// Route rules, first match wins; requests no rule matches use `ttl`.
    pub rules: Vec<CacheRule>,
    /// Answer a block write identical to the last one (same caller, same block,
    /// nothing written to the block or its agent since) without reaching Letta.
    pub suppress_unchanged_writes: bool,
    /// How long a remembered block write is trusted (writes made to Letta
    /// around the proxy are invisible to it).
    #[serde(with = "humantime_serde")]
    pub suppress_ttl: Duration,
    /// Longest wait of a request for an identical request already fetching the
    /// same answer; past it the request goes to a backend itself.
    #[serde(with = "humantime_serde")]
    pub coalesce_timeout: Duration,
    /// A miss whose answer takes longer than this is not stored: the
    /// bookkeeping that keeps slow answers from overwriting newer writes lasts this long.
    #[serde(with = "humantime_serde")]
    pub fill_timeout: Duration,
    /// Largest write body read into memory to find the Letta ids it names and
    /// to hash it (suppression, message cache). Larger writes stream untouched.
    #[serde(deserialize_with = "de_size")]
    pub max_scan_body: u64,
}

/// One `[[cache.rules]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheRule {
    /// Path glob: `*` matches one segment, `**` any number (including none).
    pub path: String,
    /// Methods the rule applies to: `GET`, `HEAD`, and `POST` for the opt-in
    /// message cache (`/v1/agents/*/messages` only).
    #[serde(default = "read_methods")]
    pub methods: Vec<String>,
    /// Whether matching requests are cached at all.
    #[serde(default = "yes")]
    pub cache: bool,
    /// Time to live; `cache.ttl` when unset.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

fn read_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}

fn yes() -> bool {
    true
}

/// Default `vary_headers`: what Letta 0.16.8 and its CORS layer read from a
/// request (besides identity) when shaping an answer; see [`crate::identity::SHAPE`].
pub fn default_vary() -> Vec<String> {
    crate::identity::SHAPE
        .iter()
        .map(|(n, _)| n.to_string())
        .collect()
}

fn off(path: &str) -> CacheRule {
    CacheRule {
        path: path.into(),
        methods: read_methods(),
        cache: false,
        ttl: None,
    }
}

fn ttl(path: &str, secs: u64) -> CacheRule {
    CacheRule {
        path: path.into(),
        methods: read_methods(),
        cache: true,
        ttl: Some(Duration::from_secs(secs)),
    }
}

/// Default rules: probes always reach a backend; state Letta changes by
/// itself (message histories, runs, jobs, steps and their traces,
/// conversations, file processing) is never cached; slow-changing catalogues
/// live long; agents and blocks short. `tests/routes.rs` checks the outcome for
/// every Letta 0.16.8 route against `tests/data/letta-0.16.8-routes.tsv`.
pub fn default_rules() -> Vec<CacheRule> {
    vec![
        off("/v1/health/**"),
        off("/v1/ready/**"),
        off("/v1/**/messages/**"),
        off("/v1/runs/**"),
        off("/v1/_internal_runs/**"),
        off("/v1/jobs/**"),
        off("/v1/steps/**"),
        off("/v1/telemetry/**"),
        off("/v1/conversations/**"),
        off("/v1/**/files/**"),
        ttl("/v1/tools/**", 300),
        ttl("/v1/models/**", 300),
        ttl("/v1/agents/**", 10),
        ttl("/v1/blocks/**", 10),
    ]
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            ttl: Duration::from_secs(30),
            max_bytes: 64 * 1024 * 1024,
            max_entry_size: 1024 * 1024,
            vary_headers: default_vary(),
            ignore_headers: Vec::new(),
            rules: default_rules(),
            suppress_unchanged_writes: false,
            suppress_ttl: Duration::from_secs(300),
            coalesce_timeout: Duration::from_secs(5),
            fill_timeout: Duration::from_secs(60),
            max_scan_body: 64 * 1024,
        }
    }
}

impl CacheConfig {
    /// Checks what the types cannot; messages name the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.ttl.is_zero() {
            return Err("cache.ttl must be longer than 0s".into());
        }
        if self.max_entry_size > self.max_bytes {
            return Err("cache.max_entry_size must not exceed cache.max_bytes".into());
        }
        if self.max_entry_size > u32::MAX as u64 / 2 {
            return Err("cache.max_entry_size must be under 2GiB".into());
        }
        for (name, d) in [
            ("fill_timeout", self.fill_timeout),
            ("coalesce_timeout", self.coalesce_timeout),
            ("suppress_ttl", self.suppress_ttl),
        ] {
            if d.is_zero() {
                return Err(format!("cache.{name} must be longer than 0s"));
            }
        }
        for (key, list) in [
            ("vary_headers", &self.vary_headers),
            ("ignore_headers", &self.ignore_headers),
        ] {
            for (i, h) in list.iter().enumerate() {
                let name = h.strip_suffix('*').unwrap_or(h);
                if name.is_empty()
                    || http::HeaderName::from_bytes(name.as_bytes()).is_err()
                    || name.bytes().any(|b| b.is_ascii_uppercase())
                {
                    return Err(format!(
                        "cache.{key}[{i}] {h:?} must be a lowercase header name (a trailing * matches a prefix)"
                    ));
                }
            }
        }
        for (i, h) in self.ignore_headers.iter().enumerate() {
            // A prefix that covers a credential would drop it from the key.
            let covers_identity = match h.strip_suffix('*') {
                Some(p) => crate::identity::IDENTITY
                    .iter()
                    .any(|(n, _)| n.starts_with(p)),
                None => crate::identity::is_identity(h),
            };
            if covers_identity {
                return Err(format!(
                    "cache.ignore_headers[{i}] {h:?} covers a header that says who is asking; identity headers are always part of the key"
                ));
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            r.validate().map_err(|e| format!("cache.rules[{i}]: {e}"))?;
        }
        Ok(())
    }
}

impl CacheRule {
    fn validate(&self) -> Result<(), String> {
        if !(self.path == "/v1" || self.path.starts_with("/v1/")) {
            return Err(format!("path {:?} must start with /v1/", self.path));
        }
        if self
            .path
            .split('/')
            .any(|s| s.contains('*') && s != "*" && s != "**")
        {
            return Err(format!(
                "path {:?}: * and ** must be whole segments",
                self.path
            ));
        }
        if self.methods.is_empty() {
            return Err("methods must not be empty".into());
        }
        for m in &self.methods {
            match m.as_str() {
                "GET" | "HEAD" => {}
                "POST" => {
                    // Only an agent turn can be cached: every other POST writes or
                    // is a search whose answer changes with the data.
                    let last = self.path.trim_end_matches('/').rsplit('/').next();
                    if !self.path.starts_with("/v1/agents/") || last != Some("messages") {
                        return Err(format!(
                            "POST is only cacheable on /v1/agents/*/messages (the opt-in message cache), not {:?}",
                            self.path
                        ));
                    }
                }
                other => {
                    return Err(format!(
                        "method {other:?} cannot be cached (GET, HEAD, or POST for messages)"
                    ))
                }
            }
        }
        if self.ttl.is_some_and(|t| t.is_zero()) {
            return Err("ttl must be longer than 0s (use cache = false)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        CacheConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_rules_are_named() {
        let cases: &[(CacheRule, &str)] = &[
            (off("/agents/**"), "must start with /v1/"),
            (off("/v1/age*ts"), "whole segments"),
            (
                CacheRule {
                    methods: vec!["POST".into()],
                    ..ttl("/v1/blocks/*", 5)
                },
                "only cacheable on /v1/agents/*/messages",
            ),
            (
                CacheRule {
                    methods: vec!["PATCH".into()],
                    ..ttl("/v1/blocks/*", 5)
                },
                "cannot be cached",
            ),
            (
                CacheRule {
                    ttl: Some(Duration::ZERO),
                    ..ttl("/v1/blocks/*", 5)
                },
                "longer than 0s",
            ),
        ];
        for (rule, want) in cases {
            let c = CacheConfig {
                rules: vec![rule.clone()],
                ..CacheConfig::default()
            };
            let e = c.validate().unwrap_err();
            assert!(e.contains("cache.rules[0]") && e.contains(want), "{e}");
        }
        let ok = CacheRule {
            methods: vec!["POST".into()],
            ..ttl("/v1/agents/*/messages", 60)
        };
        ok.validate().unwrap();
    }

    #[test]
    fn bad_vary_headers_are_named() {
        let c = CacheConfig {
            vary_headers: vec!["User-Agent".into()],
            ..CacheConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("vary_headers[0]"));
        for bad in ["authorization", "x-bare-*", "*"] {
            let c = CacheConfig {
                ignore_headers: vec![bad.into()],
                ..CacheConfig::default()
            };
            let e = c.validate().unwrap_err();
            assert!(e.contains("ignore_headers[0]"), "{bad}: {e}");
        }
    }
}
