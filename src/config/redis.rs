//! `[redis]`: where the shared Redis is and how it is treated. One section for
//! everything the proxy keeps in Redis (the cache's shared tier, write leases,
//! the instance registry).
//!
//! The Redis keys that used to live under `[cache]` (`redis_url`,
//! `redis_prefix`, `redis_timeout`, `redis_connect_timeout`,
//! `redis_breaker_failures`, `redis_cooldown`) keep working: [`move_legacy_keys`]
//! moves them into `[redis]` in the file and [`rename_legacy_env`] renames their
//! environment overrides, before the defaults are merged under them; the proxy
//! logs a deprecation warning naming each one when it starts its Redis client.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[redis]`: the Redis shared by every proxy instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// A standalone Redis: `redis://[user:password@]host:port[/db]`, or
    /// `rediss://…` for TLS. Unset (and no `cluster_nodes`): no Redis.
    pub url: Option<String>,
    /// Seed nodes of a Redis Cluster (`redis://host:port` or `rediss://…`, all
    /// the same scheme); the rest of the cluster is discovered from them.
    pub cluster_nodes: Vec<String>,
    /// PEM file of the CA certificate(s) that sign the Redis server's
    /// certificate (`rediss://` only); unset: the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key and channel; instances share state only when their
    /// prefixes match.
    pub prefix: String,
    /// Longest any single Redis call may take, everything included (waiting
    /// for the connection, redirections inside a cluster, the answer). A
    /// slower call is a cache miss, or a fallback to per-instance ordering.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Time allowed to open a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Consecutive failed calls after which Redis is not called for `breaker_cooldown`.
    pub breaker_failures: u32,
    /// How long Redis is left alone after `breaker_failures` failures (then one probe).
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// Lifetime of a write lease that is not renewed (renewed every third of
    /// it while the write runs): how long an agent stays blocked when the
    /// instance holding its lease dies.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often an instance tells the registry it is alive; an instance
    /// missing for three heartbeats is dropped and its share given back.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Deprecated `[cache]` keys this section was filled from (logged at start).
    #[serde(skip)]
    pub deprecated: Vec<String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            cluster_nodes: Vec::new(),
            ca_file: None,
            prefix: "letta-proxy".into(),
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(5),
            heartbeat: Duration::from_secs(1),
            deprecated: Vec::new(),
        }
    }
}

/// `[cache]` key → `[redis]` key, for configs written before `[redis]` existed.
pub const LEGACY_KEYS: &[(&str, &str)] = &[
    ("redis_url", "url"),
    ("redis_prefix", "prefix"),
    ("redis_timeout", "timeout"),
    ("redis_connect_timeout", "connect_timeout"),
    ("redis_breaker_failures", "breaker_failures"),
    ("redis_cooldown", "breaker_cooldown"),
];

/// Renames environment variables of the legacy keys
/// (`LETTA_PROXY__CACHE__REDIS_URL` → `LETTA_PROXY__REDIS__URL`); returns the
/// notes to log. An error names both variables when both are set differently.
pub fn rename_legacy_env(
    env: &mut [(String, String)],
    prefix: &str,
) -> Result<Vec<String>, String> {
    let mut notes = Vec::new();
    for i in 0..env.len() {
        let Some(key) = env[i].0.strip_prefix(prefix) else {
            continue;
        };
        let lower = key.to_ascii_lowercase();
        let Some((old, new)) = lower
            .strip_prefix("cache__")
            .and_then(|k| LEGACY_KEYS.iter().find(|(o, _)| *o == k))
        else {
            continue;
        };
        let renamed = format!("{prefix}REDIS__{}", new.to_ascii_uppercase());
        let value = env[i].1.clone();
        if let Some((_, v)) = env
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&renamed))
            .filter(|(_, v)| *v != value)
        {
            return Err(format!(
                "{} and {renamed} are both set, to different values ({value:?}, {v:?}): keep {renamed}",
                env[i].0
            ));
        }
        notes.push(format!(
            "{} (cache.{old}) is deprecated: use {renamed} (redis.{new})",
            env[i].0
        ));
        env[i].0 = renamed;
    }
    Ok(notes)
}

/// Moves the legacy `cache.redis_*` keys of a parsed config file into
/// `[redis]` (before the defaults are merged under it). Returns the notes to log, one per key moved; an error
/// names both keys when both are set to different values.
pub fn move_legacy_keys(root: &mut toml::Value) -> Result<Vec<String>, String> {
    let Some(table) = root.as_table_mut() else {
        return Ok(Vec::new());
    };
    let Some(toml::Value::Table(cache)) = table.get_mut("cache") else {
        return Ok(Vec::new());
    };
    let mut moved = Vec::new();
    for (old, _) in LEGACY_KEYS {
        if let Some(v) = cache.remove(*old) {
            moved.push((*old, v));
        }
    }
    if moved.is_empty() {
        return Ok(Vec::new());
    }
    let redis = table
        .entry("redis")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(redis) = redis.as_table_mut() else {
        return Err("[redis] must be a table".into());
    };
    let mut notes = Vec::new();
    for (old, value) in moved {
        let new = LEGACY_KEYS
            .iter()
            .find(|(o, _)| *o == old)
            .map(|(_, n)| *n)
            .expect("listed");
        match redis.get(new) {
            Some(existing) if *existing != value => {
                return Err(format!(
                    "cache.{old} and redis.{new} are both set, to different values: keep redis.{new} (cache.{old} is deprecated)"
                ));
            }
            Some(_) => {}
            None => {
                redis.insert(new.to_string(), value);
            }
        }
        notes.push(format!(
            "cache.{old} is deprecated: use {new} in the [redis] section"
        ));
    }
    Ok(notes)
}

impl RedisConfig {
    /// Whether a Redis is configured (standalone or cluster).
    pub fn is_configured(&self) -> bool {
        self.url.is_some() || !self.cluster_nodes.is_empty()
    }

    /// Whether the configured Redis is reached over TLS.
    pub fn uses_tls(&self) -> bool {
        let tls = |u: &String| u.starts_with("rediss://");
        self.url.iter().any(tls) || self.cluster_nodes.iter().any(tls)
    }

    /// How long an instance may miss heartbeats before it is considered gone.
    pub fn dead_after(&self) -> Duration {
        self.heartbeat * 3
    }

    /// Checks what the types cannot; messages name the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.url.is_some() && !self.cluster_nodes.is_empty() {
            return Err(
                "redis.url and redis.cluster_nodes are both set: use url for a standalone Redis, cluster_nodes for a Redis Cluster".into(),
            );
        }
        if let Some(url) = &self.url {
            check_url(url).map_err(|e| format!("redis.url {url:?}: {e}"))?;
        }
        for (i, node) in self.cluster_nodes.iter().enumerate() {
            if !(node.starts_with("redis://") || node.starts_with("rediss://")) {
                return Err(format!(
                    "redis.cluster_nodes[{i}] {node:?} must start with redis:// or rediss://"
                ));
            }
            check_url(node).map_err(|e| format!("redis.cluster_nodes[{i}] {node:?}: {e}"))?;
        }
        if !self.cluster_nodes.is_empty() {
            let tls = self.cluster_nodes[0].starts_with("rediss://");
            if let Some(i) = self
                .cluster_nodes
                .iter()
                .position(|n| n.starts_with("rediss://") != tls)
            {
                return Err(format!(
                    "redis.cluster_nodes[{i}]: every seed node must use the same scheme (redis:// or rediss://)"
                ));
            }
        }
        if let Some(path) = &self.ca_file {
            if self.is_configured() && !self.uses_tls() {
                return Err(format!(
                    "redis.ca_file {} is set but the Redis URL is not rediss:// (TLS)",
                    path.display()
                ));
            }
            crate::tls::check_ca_file(path).map_err(|e| format!("redis.ca_file: {e}"))?;
        }
        if self.prefix.is_empty()
            || self
                .prefix
                .chars()
                .any(|c| c.is_whitespace() || c == '{' || c == '}')
        {
            return Err(format!(
                "redis.prefix {:?} must be non-empty, without spaces or braces (braces mark Redis Cluster hash tags)",
                self.prefix
            ));
        }
        for (name, d) in [
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
            ("breaker_cooldown", self.breaker_cooldown),
            ("heartbeat", self.heartbeat),
        ] {
            if d.is_zero() {
                return Err(format!("redis.{name} must be longer than 0s"));
            }
        }
        if self.breaker_failures == 0 {
            return Err("redis.breaker_failures must be at least 1".into());
        }
        if self.lease_ttl < Duration::from_millis(300) {
            return Err(
                "redis.lease_ttl must be at least 300ms (it is renewed every third of it)".into(),
            );
        }
        if self.lease_ttl / 3 <= self.timeout {
            return Err(format!(
                "redis.lease_ttl ({:?}) must be more than three times redis.timeout ({:?}): a renewal must be able to finish before the lease runs out",
                self.lease_ttl, self.timeout
            ));
        }
        Ok(())
    }
}

/// What `redis::Client` would refuse, said at load time.
fn check_url(url: &str) -> Result<(), String> {
    use redis::IntoConnectionInfo;
    url.into_connection_info().map(|_| ()).map_err(|e| {
        let s = e.to_string();
        // The crate's message for an unknown scheme is generic.
        if !url.contains("://") {
            format!("{s} (expected redis://host:port or rediss://host:port)")
        } else {
            s
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Value {
        toml::Value::Table(toml::from_str(text).unwrap())
    }

    #[test]
    fn defaults_are_valid_and_unconfigured() {
        let c = RedisConfig::default();
        c.validate().unwrap();
        assert!(!c.is_configured());
    }

    #[test]
    fn legacy_cache_keys_move_to_redis() {
        let mut t = table(
            "[cache]\nenabled = true\nredis_url = \"redis://h:1\"\nredis_cooldown = \"2s\"\n",
        );
        let notes = move_legacy_keys(&mut t).unwrap();
        assert_eq!(notes.len(), 2);
        assert!(
            notes[0].contains("cache.redis_url is deprecated"),
            "{notes:?}"
        );
        assert_eq!(t["redis"]["url"].as_str(), Some("redis://h:1"));
        assert_eq!(t["redis"]["breaker_cooldown"].as_str(), Some("2s"));
        assert!(t["cache"].get("redis_url").is_none());
        assert_eq!(t["cache"]["enabled"].as_bool(), Some(true));
    }

    #[test]
    fn legacy_and_new_keys_must_agree() {
        let mut t = table("[cache]\nredis_url = \"redis://a:1\"\n[redis]\nurl = \"redis://a:1\"\n");
        assert_eq!(move_legacy_keys(&mut t).unwrap().len(), 1);
        let mut t = table("[cache]\nredis_url = \"redis://a:1\"\n[redis]\nurl = \"redis://b:1\"\n");
        let e = move_legacy_keys(&mut t).unwrap_err();
        assert!(
            e.contains("cache.redis_url") && e.contains("redis.url"),
            "{e}"
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let cases: Vec<(RedisConfig, &str)> = vec![
            (
                RedisConfig {
                    url: Some("redis://a:1".into()),
                    cluster_nodes: vec!["redis://b:1".into()],
                    ..Default::default()
                },
                "both set",
            ),
            (
                RedisConfig {
                    url: Some("http://a:1".into()),
                    ..Default::default()
                },
                "redis.url",
            ),
            (
                RedisConfig {
                    cluster_nodes: vec!["redis://a:1".into(), "rediss://b:1".into()],
                    ..Default::default()
                },
                "redis.cluster_nodes[1]",
            ),
            (
                RedisConfig {
                    cluster_nodes: vec!["a:1".into()],
                    ..Default::default()
                },
                "redis.cluster_nodes[0]",
            ),
            (
                RedisConfig {
                    url: Some("redis://a:1".into()),
                    ca_file: Some("/nonexistent/ca.pem".into()),
                    ..Default::default()
                },
                "not rediss://",
            ),
            (
                RedisConfig {
                    url: Some("rediss://a:1".into()),
                    ca_file: Some("/nonexistent/ca.pem".into()),
                    ..Default::default()
                },
                "/nonexistent/ca.pem",
            ),
            (
                RedisConfig {
                    prefix: "{x}".into(),
                    ..Default::default()
                },
                "redis.prefix",
            ),
            (
                RedisConfig {
                    timeout: Duration::ZERO,
                    ..Default::default()
                },
                "redis.timeout",
            ),
            (
                RedisConfig {
                    breaker_failures: 0,
                    ..Default::default()
                },
                "redis.breaker_failures",
            ),
            (
                RedisConfig {
                    lease_ttl: Duration::from_millis(100),
                    ..Default::default()
                },
                "redis.lease_ttl",
            ),
            (
                RedisConfig {
                    lease_ttl: Duration::from_secs(1),
                    timeout: Duration::from_millis(400),
                    ..Default::default()
                },
                "three times redis.timeout",
            ),
        ];
        for (c, want) in cases {
            let e = c.validate().unwrap_err();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }
}
