//! Configuration: the TOML file, `LETTA_PROXY__SECTION__KEY` overrides, validation.
//!
//! Loading is three steps so each error names where it came from: parse the file
//! into a TOML table, overlay environment variables onto that table, then
//! deserialize with `deny_unknown_fields` (a misspelt key is an error that names
//! it) and validate what types cannot express (unique backend names, URLs).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::balance::BalancerConfig;

mod cache;
mod env;
mod redis;
mod size;
mod url;

pub use cache::{default_rules, default_vary, CacheConfig, CacheRule};

/// The configuration in force, shared by every part of the proxy and swapped
/// whole by a reload: a request loads it once and sees one version throughout.
pub type SharedConfig = std::sync::Arc<arc_swap::ArcSwap<Config>>;

pub use crate::tls::ServerTlsConfig;
pub use redis::RedisConfig;
pub use size::{de_size, parse_size};
pub use url::BackendUrl;

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "LETTA_PROXY__";
/// Config file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "config/letta-proxy.toml";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config in {origin}: {source}")]
    Parse {
        origin: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid config in {origin}: {path}: {source}")]
    Field {
        origin: String,
        /// Where in the config, e.g. `server.connect_timeout` or `backends[1].url`.
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid environment override {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid config in {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// The whole configuration. Sections mirror the TOML file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub balancer: BalancerConfig,
    pub backends: Vec<BackendConfig>,
    pub health: HealthConfig,
    pub cache: CacheConfig,
    pub redis: RedisConfig,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            balancer: BalancerConfig::default(),
            backends: vec![BackendConfig::new("letta", "http://127.0.0.1:8283")],
            health: HealthConfig::default(),
            cache: CacheConfig::default(),
            redis: RedisConfig::default(),
            limits: LimitsConfig::default(),
            metrics: MetricsConfig::default(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// `[server]`: listeners, timeouts, body limit, upstream pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the main listener (clients and `/metrics`).
    pub listen: SocketAddr,
    /// Address of the admin listener; `None` disables it.
    pub admin_listen: Option<SocketAddr>,
    /// Time allowed to open a TCP connection to a backend.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed between sending a request and receiving the response headers.
    /// Long by default: a non-streamed Letta agent turn answers only when the LLM is done.
    #[serde(with = "humantime_serde")]
    pub response_header_timeout: Duration,
    /// Longest silence allowed inside a response body (between two chunks).
    /// There is no total deadline: an SSE stream may last as long as it keeps talking.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// Time a client has to send its request headers (slowloris guard).
    #[serde(with = "humantime_serde")]
    pub client_header_timeout: Duration,
    /// How long shutdown waits for in-flight requests and streams.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Largest request body accepted (413 above). Letta accepts file uploads.
    #[serde(deserialize_with = "de_size")]
    pub max_body_size: u64,
    /// Largest request header section accepted, all headers together (431 above).
    #[serde(deserialize_with = "de_size")]
    pub max_header_size: u64,
    /// Pass the client's `Host` to backends (Letta builds redirect URLs from it).
    pub preserve_host: bool,
    /// Idle keep-alive connections to a backend are closed after this long.
    /// Below the backend's own keep-alive (Letta's server, uvicorn, closes
    /// after 5 s: `uvicorn_timeout_keep_alive` in letta/settings.py), so a
    /// request never goes out on a connection the backend is closing: a write
    /// lost that way could not be resent and would be a 502.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Most idle keep-alive connections kept per backend.
    pub pool_max_idle_per_backend: usize,
    /// Most concurrent client connections; further accepts wait.
    pub max_connections: usize,
    /// `[server.tls]`: HTTPS on `listen` when present.
    pub tls: Option<ServerTlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8300)),
            admin_listen: None,
            connect_timeout: Duration::from_secs(3),
            response_header_timeout: Duration::from_secs(600),
            body_idle_timeout: Duration::from_secs(300),
            client_header_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            max_body_size: 100 * 1024 * 1024,
            max_header_size: 64 * 1024,
            preserve_host: true,
            pool_idle_timeout: Duration::from_secs(4),
            pool_max_idle_per_backend: 1024,
            max_connections: 10_000,
            tls: None,
        }
    }
}

/// One `[[backends]]` entry: a Letta server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Unique name, used in metrics and the `x-letta-proxy-backend` header.
    pub name: String,
    /// Base URL, `http://host[:port]` or `https://host[:port]` (no path).
    pub url: String,
    /// Relative share of traffic (>= 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Most requests in flight on this backend; `limits.max_in_flight_per_backend` when unset.
    #[serde(default)]
    pub max_in_flight: Option<u64>,
    /// `https://` only: PEM CA certificates that sign the backend's certificate
    /// (instead of the system roots).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// `https://` only: PEM client certificate chain presented to the backend (with `tls_key_file`).
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// `https://` only: PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// `https://` only: name sent as SNI and checked against the certificate (default: the URL's host).
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// `https://` only: offer HTTP/2 by ALPN (HTTP/1.1 when the backend does not pick it).
    #[serde(default)]
    pub http2: bool,
}

impl BackendConfig {
    /// How to speak TLS to this backend (its URL parsed as `url`); `None` for `http://`.
    pub fn tls_options<'a>(&'a self, url: &'a BackendUrl) -> Option<crate::tls::ClientOptions<'a>> {
        url.is_tls().then(|| crate::tls::ClientOptions {
            ca_file: self.tls_ca_file.as_deref(),
            client_cert: self
                .tls_cert_file
                .as_deref()
                .zip(self.tls_key_file.as_deref()),
            server_name: self.tls_server_name.as_deref().unwrap_or(url.host()),
            http2: self.http2,
        })
    }

    /// A backend with weight 1, no cap of its own and no TLS options.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> BackendConfig {
        BackendConfig {
            name: name.into(),
            url: url.into(),
            weight: 1,
            max_in_flight: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_server_name: None,
            http2: false,
        }
    }
}

fn one() -> u32 {
    1
}

/// `[health]`: active probes of each backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub enabled: bool,
    /// Probed path; Letta's liveness endpoint by default.
    pub path: String,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failed probes that mark a backend down.
    pub unhealthy_threshold: u32,
    /// Consecutive good probes that bring it back.
    pub healthy_threshold: u32,
    /// Passive checks: consecutive connection errors, timeouts or 5xx from real
    /// traffic that eject a backend (0 disables).
    pub passive_failures: u32,
    /// First ejection's length; doubled on every repeat, up to `max_ejection_time`.
    #[serde(with = "humantime_serde")]
    pub ejection_time: Duration,
    #[serde(with = "humantime_serde")]
    pub max_ejection_time: Duration,
    /// Most backends ejected at once, in percent of the set (at least one may be).
    pub max_ejected_percent: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            path: "/v1/health/".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            passive_failures: 5,
            ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

/// `[limits]`: concurrency caps that protect the proxy and the backends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most requests in flight through the whole proxy (0 = unlimited).
    pub max_in_flight: u64,
    /// Default cap per backend when a backend sets none (0 = unlimited).
    pub max_in_flight_per_backend: u64,
    /// Requests that may wait for a backend slot when every backend is at its cap.
    pub queue_size: usize,
    /// Longest wait in that queue before 503 + `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Run writes to one agent (or block) one at a time, in arrival order.
    pub serialize_agent_writes: bool,
    /// Longest wait for an agent's earlier writes before 503. Long: agent turns take minutes.
    #[serde(with = "humantime_serde")]
    pub agent_write_timeout: Duration,
    /// With `[redis]` configured: order writes across every instance sharing
    /// the Redis (leases) and split per-backend caps between the live
    /// instances. Off: each instance on its own.
    pub coordinate: bool,
    /// Retries of safe requests allowed, as a percentage of requests (a budget,
    /// so retries cannot multiply load during an outage).
    pub retry_budget_percent: u32,
    /// Retries allowed per second whatever the traffic (the budget's floor).
    pub retry_min_per_second: u32,
    /// Largest request body kept in memory so a safe request can be retried.
    #[serde(deserialize_with = "de_size")]
    pub retry_max_body: u64,
    /// Most sub-requests in one `POST /-/batch`.
    pub batch_max_requests: usize,
    /// Most sub-requests of one batch in flight at once (a batch may ask for fewer).
    pub batch_max_concurrency: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_in_flight: 0,
            max_in_flight_per_backend: 0,
            queue_size: 1000,
            queue_timeout: Duration::from_secs(30),
            serialize_agent_writes: true,
            agent_write_timeout: Duration::from_secs(600),
            coordinate: true,
            retry_budget_percent: 20,
            retry_min_per_second: 10,
            retry_max_body: 64 * 1024,
            batch_max_requests: 100,
            batch_max_concurrency: 16,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Record per-request metrics and serve `GET /metrics`. Off saves the
    /// histogram update per request; per-backend counters are always kept (the
    /// balancer and `/-/stats` use them).
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true }
    }
}

/// `[admin]`: the admin API on `server.admin_listen`.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token required by every admin call; mandatory when `admin_listen`
    /// is not a loopback address.
    pub token: Option<String>,
    /// A file holding the token (a Kubernetes or compose secret), read at every
    /// load and reload; surrounding whitespace is ignored. Excludes `token`.
    pub token_file: Option<PathBuf>,
    /// Reload the config when its file changes (checked every 2 s).
    pub watch_config: bool,
}

impl AdminConfig {
    /// Reads `token_file` into `token`.
    fn read_token_file(&mut self) -> Result<(), String> {
        let Some(path) = &self.token_file else {
            return Ok(());
        };
        if self.token.is_some() {
            return Err("admin.token and admin.token_file are both set: keep one".into());
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("admin.token_file {}: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("admin.token_file {} is empty", path.display()));
        }
        self.token = Some(token.to_string());
        Ok(())
    }
}

impl std::fmt::Debug for AdminConfig {
    // Never print the token (configs are logged when debugging).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("watch_config", &self.watch_config)
            .finish()
    }
}

/// `[log]`: logs on stderr.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (for people) or `json` (one object per line, for collectors).
    pub format: LogFormat,
    /// Default level filter (`RUST_LOG` wins when set), e.g. `info`, `letta_proxy=debug`.
    pub level: String,
    /// One line per request: id, route template, backend, status, duration,
    /// cache result, bytes. Never `Authorization` or bodies.
    pub access_log: bool,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
            access_log: true,
        }
    }
}

impl Config {
    /// Loads the config the CLI asked for: `path` if given, else
    /// [`DEFAULT_CONFIG_PATH`] when it exists, else built-in defaults; then the
    /// environment overrides from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (read(p)?, p.display().to_string()),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => (
                read(Path::new(DEFAULT_CONFIG_PATH))?,
                DEFAULT_CONFIG_PATH.to_string(),
            ),
            None => (String::new(), "built-in defaults".to_string()),
        };
        Config::from_toml(&text, &origin, env)
    }

    /// Parses `text` (from `origin`, used in messages), overlays `env`, validates.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let parse_err = |e: toml::de::Error| ConfigError::Parse {
            origin: origin.to_string(),
            source: Box::new(e),
        };
        let mut file = toml::Value::Table(toml::from_str(text).map_err(parse_err)?);
        // `[cache] redis_*` keys written before `[redis]` existed, in the file
        // and in the environment, are read as their `[redis]` names.
        let invalid = |message| ConfigError::Invalid {
            origin: origin.to_string(),
            message,
        };
        let mut deprecated = redis::move_legacy_keys(&mut file).map_err(invalid)?;
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        deprecated.extend(redis::rename_legacy_env(&mut env, ENV_PREFIX).map_err(invalid)?);
        // The defaults, with the file on top, with the environment on top.
        let mut root = toml::Value::try_from(Config::default()).expect("defaults serialize");
        env::merge(&mut root, file);
        let mut overridden = Vec::new();
        // Sorted, so `BACKENDS__1__…` is applied before `BACKENDS__2__…` whatever the
        // environment's order.
        env.sort();
        for (var, value) in env {
            if let Some(key) = var.strip_prefix(ENV_PREFIX) {
                env::apply_override(&mut root, key, &value).map_err(|message| {
                    ConfigError::Env {
                        var: var.clone(),
                        message,
                    }
                })?;
                overridden.push(var);
            }
        }
        let origin = if overridden.is_empty() {
            origin.to_string()
        } else {
            format!("{origin} (with {})", overridden.join(", "))
        };
        let mut config: Config =
            serde_path_to_error::deserialize(env::Lenient(root)).map_err(|e| {
                ConfigError::Field {
                    origin: origin.clone(),
                    path: e.path().to_string(),
                    source: Box::new(e.into_inner()),
                }
            })?;
        config
            .admin
            .read_token_file()
            .map_err(|message| ConfigError::Invalid {
                origin: origin.clone(),
                message,
            })?;
        config.redis.deprecated = deprecated;
        config
            .validate()
            .map_err(|message| ConfigError::Invalid { origin, message })?;
        Ok(config)
    }

    /// Checks what the types cannot: backend names, URLs, weights, strategy options,
    /// TLS settings (their files are read: a bad certificate fails here, file named).
    pub fn validate(&self) -> Result<(), String> {
        if self.backends.is_empty() {
            return Err("at least one [[backends]] entry is required".into());
        }
        let mut names = HashSet::new();
        for (i, b) in self.backends.iter().enumerate() {
            if b.name.is_empty() || !b.name.chars().all(|c| c.is_ascii_graphic()) {
                return Err(format!(
                    "backends[{i}].name {:?} must be non-empty printable ASCII without spaces",
                    b.name
                ));
            }
            if !names.insert(b.name.as_str()) {
                return Err(format!("backends[{i}].name {:?} is used twice", b.name));
            }
            if b.weight == 0 {
                return Err(format!("backends[{i}].weight must be at least 1"));
            }
            BackendUrl::parse(&b.url).map_err(|e| format!("backends[{i}].url {:?}: {e}", b.url))?;
        }
        self.balancer
            .validate()
            .map_err(|e| format!("[balancer]: {e}"))?;
        if !self.health.path.starts_with('/') {
            return Err(format!(
                "health.path {:?} must start with '/'",
                self.health.path
            ));
        }
        if self.health.unhealthy_threshold == 0 || self.health.healthy_threshold == 0 {
            return Err("health thresholds must be at least 1".into());
        }
        if let Some(admin) = self.server.admin_listen {
            let token_set = self.admin.token.as_deref().is_some_and(|t| !t.is_empty());
            if !admin.ip().is_loopback() && !token_set {
                return Err(format!(
                    "server.admin_listen {admin} is not a loopback address: set admin.token"
                ));
            }
        }
        if !(1024..=16 << 20).contains(&self.server.max_header_size) {
            return Err("server.max_header_size must be between 1KiB and 16MiB".into());
        }
        if self.server.max_connections == 0 {
            return Err("server.max_connections must be at least 1".into());
        }
        self.cache.validate()?;
        self.redis.validate()?;
        self.validate_tls()?;
        Ok(())
    }

    /// Checks `[server.tls]` and the `tls_*` / `http2` keys of every backend,
    /// and loads their files, so `--check` and a reload fail on a missing,
    /// unreadable or mismatched certificate or key, naming the file. An expired
    /// certificate is not an error here: it is reported at start and in
    /// `/-/status`.
    fn validate_tls(&self) -> Result<(), String> {
        if let Some(tls) = &self.server.tls {
            if let Some(redirect) = tls.redirect_http_listen {
                let taken = [Some(self.server.listen), self.server.admin_listen];
                if redirect.port() != 0 && taken.contains(&Some(redirect)) {
                    return Err(format!(
                        "server.tls.redirect_http_listen {redirect} is already used by another listener"
                    ));
                }
            }
            crate::tls::ServerTls::load(tls).map_err(|e| format!("[server.tls]: {e}"))?;
        }
        for (i, b) in self.backends.iter().enumerate() {
            let url = BackendUrl::parse(&b.url).map_err(|e| format!("backends[{i}].url: {e}"))?;
            let Some(options) = b.tls_options(&url) else {
                let set = [
                    ("tls_ca_file", b.tls_ca_file.is_some()),
                    ("tls_cert_file", b.tls_cert_file.is_some()),
                    ("tls_key_file", b.tls_key_file.is_some()),
                    ("tls_server_name", b.tls_server_name.is_some()),
                    ("http2", b.http2),
                ];
                if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
                    return Err(format!(
                        "backends[{i}].{key} needs an https:// url (url is {:?})",
                        b.url
                    ));
                }
                continue;
            };
            if b.tls_cert_file.is_some() != b.tls_key_file.is_some() {
                return Err(format!(
                    "backends[{i}]: set tls_cert_file and tls_key_file together (a client certificate needs its key)"
                ));
            }
            crate::tls::BackendTls::new(&options)
                .map_err(|e| format!("backends[{i}] ({}): {e}", b.name))?;
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8300");
        assert_eq!(c.backends.len(), 1);
        assert_eq!(c.backends[0].url, "http://127.0.0.1:8283");
        assert!(c.cache.enabled && !c.redis.is_configured());
    }

    #[test]
    fn the_shipped_config_file_is_valid_and_matches_the_defaults() {
        let text = include_str!("../../config/letta-proxy.toml");
        let c = load(text, &[]).unwrap();
        let d = Config::default();
        assert_eq!(c.server.listen, d.server.listen);
        assert_eq!(
            c.server.response_header_timeout,
            d.server.response_header_timeout
        );
        assert_eq!(c.server.max_body_size, d.server.max_body_size);
        assert_eq!(c.backends[0].url, d.backends[0].url);
        let (cc, dc) = (&c.cache, &d.cache);
        assert_eq!(
            cc.rules, dc.rules,
            "[[cache.rules]] in the file = the defaults"
        );
        assert_eq!(cc.vary_headers, dc.vary_headers);
        assert_eq!(cc.ignore_headers, dc.ignore_headers);
        assert_eq!(
            (cc.ttl, cc.max_bytes, cc.max_entry_size, cc.max_scan_body),
            (dc.ttl, dc.max_bytes, dc.max_entry_size, dc.max_scan_body)
        );
        assert_eq!(
            (cc.fill_timeout, cc.coalesce_timeout),
            (dc.fill_timeout, dc.coalesce_timeout)
        );
        assert_eq!(c.redis, d.redis, "[redis] in the file = the defaults");
        assert_eq!(c.limits.coordinate, d.limits.coordinate);
        assert_eq!(cc.suppress_unchanged_writes, dc.suppress_unchanged_writes);
    }

    #[test]
    fn unknown_keys_are_named_with_the_file() {
        let e = load("[server]\nlisen = \"127.0.0.1:1\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen") && e.contains("test.toml"), "{e}");
        let e = load("[sever]\n", &[]).unwrap_err().to_string();
        assert!(e.contains("sever"), "{e}");
    }

    #[test]
    fn durations_and_sizes_are_strings() {
        let c = load(
            "[server]\nconnect_timeout = \"250ms\"\nmax_body_size = \"32MiB\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.server.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.server.max_body_size, 32 << 20);
        let e = load("[server]\nconnect_timeout = \"soon\"\n", &[]).unwrap_err();
        assert!(
            e.to_string().contains("connect_timeout") || e.to_string().contains("soon"),
            "{e}"
        );
    }

    #[test]
    fn environment_overrides_any_key() {
        let c = load(
            "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n",
            &[
                ("LETTA_PROXY__BALANCER__STRATEGY", "random"),
                ("LETTA_PROXY__SERVER__LISTEN", "127.0.0.1:9999"),
                ("LETTA_PROXY__BACKENDS__0__WEIGHT", "3"),
                ("LETTA_PROXY__BACKENDS__1__NAME", "b"),
                ("LETTA_PROXY__BACKENDS__1__URL", "http://127.0.0.1:2"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.balancer.strategy.as_str(), "random");
        assert_eq!(c.server.listen.port(), 9999);
        assert_eq!(c.backends[0].weight, 3);
        assert_eq!(c.backends[1].name, "b");
        let e = load("", &[("LETTA_PROXY__SERVER__NOPE", "1")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope") && e.contains("LETTA_PROXY__SERVER__NOPE"),
            "{e}"
        );
    }

    #[test]
    fn semantic_errors_are_clear() {
        let two = "[[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n";
        let e = load(&format!("{two}{two}"), &[]).unwrap_err().to_string();
        assert!(e.contains("used twice"), "{e}");
        let e = load("[[backends]]\nname = \"a\"\nurl = \"ftp://x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("backends[0].url"), "{e}");
        let e = load("backends = []\n", &[]).unwrap_err().to_string();
        assert!(e.contains("at least one"), "{e}");
    }

    #[test]
    fn overrides_are_typed_by_their_field() {
        // No [[backends]] in the file: the override changes the default backend.
        let c = load(
            "",
            &[
                ("LETTA_PROXY__BACKENDS__0__URL", "http://10.0.0.5:8283"),
                ("LETTA_PROXY__ADMIN__TOKEN", "123456"),
                ("LETTA_PROXY__SERVER__MAX_CONNECTIONS", "5000"),
                ("LETTA_PROXY__CACHE__ENABLED", "false"),
                ("LETTA_PROXY__BALANCER__AFFINITY_EPSILON", "1"),
                ("LETTA_PROXY__CACHE__VARY_HEADERS", "user-agent, accept"),
            ],
        )
        .unwrap();
        assert_eq!(c.backends.len(), 1);
        assert_eq!(c.backends[0].url, "http://10.0.0.5:8283");
        assert_eq!(c.backends[0].name, "letta");
        assert_eq!(c.admin.token.as_deref(), Some("123456"));
        assert_eq!(c.server.max_connections, 5000);
        assert!(!c.cache.enabled);
        assert_eq!(c.balancer.affinity_epsilon, 1.0);
        assert_eq!(c.cache.vary_headers, ["user-agent", "accept"]);
        // A second backend from the environment alone.
        let c = load(
            "",
            &[
                ("LETTA_PROXY__BACKENDS__1__NAME", "b"),
                ("LETTA_PROXY__BACKENDS__1__URL", "http://10.0.0.6:8283"),
                ("LETTA_PROXY__BACKENDS__1__MAX_IN_FLIGHT", "7"),
            ],
        )
        .unwrap();
        assert_eq!(c.backends[1].max_in_flight, Some(7));
        // A wrong value names the key it was meant for.
        let e = load("", &[("LETTA_PROXY__SERVER__MAX_CONNECTIONS", "lots")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.max_connections") && e.contains("lots"),
            "{e}"
        );
    }

    #[test]
    fn the_admin_token_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let text = format!("[admin]\ntoken_file = {:?}\n", path.display().to_string());
        let c = load(&text, &[]).unwrap();
        assert_eq!(c.admin.token.as_deref(), Some("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"), "Debug never shows it");
        let e = load(&text, &[("LETTA_PROXY__ADMIN__TOKEN", "x")]).unwrap_err();
        assert!(e.to_string().contains("both set"), "{e}");
        let missing = "[admin]\ntoken_file = \"/nonexistent/token\"\n";
        let e = load(missing, &[]).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/token"), "{e}");
    }

    #[test]
    fn legacy_cache_redis_keys_still_work() {
        let c = load(
            "[cache]\nredis_url = \"redis://127.0.0.1:6390\"\nredis_timeout = \"20ms\"\n",
            &[("LETTA_PROXY__CACHE__REDIS_PREFIX", "old")],
        )
        .unwrap();
        assert_eq!(c.redis.url.as_deref(), Some("redis://127.0.0.1:6390"));
        assert_eq!(c.redis.timeout, Duration::from_millis(20));
        assert_eq!(c.redis.prefix, "old");
        assert_eq!(c.redis.deprecated.len(), 3, "{:?}", c.redis.deprecated);
        let e = load(
            "[cache]\nredis_url = \"redis://a:1\"\n[redis]\nurl = \"redis://b:1\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("cache.redis_url") && e.contains("redis.url"),
            "{e}"
        );
        let e = load("[redis]\ncluster_nodes = [\"10.0.0.1:7000\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("redis.cluster_nodes[0]"), "{e}");
    }
}
