//! The HTTPS listener's rustls configuration: built from `[server.tls]`,
//! swapped whole on reload.
//!
//! Why the whole `ServerConfig` is swapped rather than only the certificate
//! behind a resolver: a reload must also pick up a new `client_ca_file`, which
//! lives in the client verifier, and it must not let a session ticket issued
//! under the old CA skip the new one's check. Each generation therefore has its
//! own verifier, ticket keys and session cache. A handshake takes the current
//! generation once (an `ArcSwap` load) and its connection keeps it to the end,
//! so a reload never touches an open connection or stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::SingleCertAndKey;
use rustls::ServerConfig;

use super::ServerTlsConfig;
use super::{metrics::TlsMetrics, pem, provider, TlsError, ALPN_H2, ALPN_HTTP11};

/// A certificate this close to its end is reported ([`CertProblem::ExpiresSoon`]).
/// Renewal (cert-manager, certbot) normally happens with 30 days left, so 14
/// days left means renewal is failing.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// The HTTPS side of the main listener: current configuration, reload, handshakes
/// ([`ServerTls::accept`]).
pub struct ServerTls {
    current: ArcSwap<Generation>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) metrics: Option<TlsMetrics>,
}

/// What one load of the files produced.
struct Generation {
    files: ServerTlsConfig,
    config: Arc<ServerConfig>,
    cert: CertInfo,
}

impl ServerTls {
    /// Reads the files of `files` and builds the configuration. An expired
    /// certificate is accepted here (the proxy must be able to start) and shows in
    /// [`CertInfo::problem`], which the caller logs and reports.
    pub fn load(files: &ServerTlsConfig) -> Result<ServerTls, TlsError> {
        Ok(ServerTls {
            current: ArcSwap::from_pointee(Generation::build(files)?),
            handshake_timeout: Duration::from_secs(10),
            metrics: None,
        })
    }

    /// Longest time a client gets to complete its handshake (default 10 s).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> ServerTls {
        self.handshake_timeout = timeout;
        self
    }

    /// Counts handshakes and reloads in `metrics`, and exports the certificate's expiry.
    pub fn with_metrics(mut self, metrics: TlsMetrics) -> ServerTls {
        metrics.set_certificate(&self.certificate());
        self.metrics = Some(metrics);
        self
    }

    /// Re-reads the current files (SIGHUP, admin reload, file change).
    pub fn reload(&self) -> Result<CertInfo, TlsError> {
        let files = self.current.load().files.clone();
        self.reload_from(&files)
    }

    /// Loads `files` (possibly new paths from a reloaded config) and makes them
    /// current for new connections. On error, including a certificate that has
    /// already expired, the current configuration stays and the error names the
    /// file. Open connections are never affected.
    pub fn reload_from(&self, files: &ServerTlsConfig) -> Result<CertInfo, TlsError> {
        let result = Generation::build(files).and_then(|g| {
            if let Some(CertProblem::Expired { .. }) = g.cert.problem(SystemTime::now()) {
                return Err(TlsError::Expired {
                    path: files.cert_file.clone(),
                    not_after: format_time(g.cert.not_after),
                });
            }
            Ok(g)
        });
        if let Some(m) = &self.metrics {
            m.reloaded(result.is_ok());
        }
        let generation = result?;
        let cert = generation.cert.clone();
        if let Some(m) = &self.metrics {
            m.set_certificate(&cert);
        }
        self.current.store(Arc::new(generation));
        Ok(cert)
    }

    /// The leaf certificate served to new connections.
    pub fn certificate(&self) -> CertInfo {
        self.current.load().cert.clone()
    }

    /// The rustls configuration new connections get.
    pub fn rustls_config(&self) -> Arc<ServerConfig> {
        self.current.load().config.clone()
    }

    /// Size and modification time of the current files; a different value later
    /// means they changed and a reload is due (for a polling watcher).
    pub fn files_stamp(&self) -> FilesStamp {
        let g = self.current.load();
        let mut paths: Vec<&Path> = vec![&g.files.cert_file, &g.files.key_file];
        paths.extend(g.files.client_ca_file.as_deref());
        FilesStamp(
            paths
                .into_iter()
                .map(|p| {
                    // `metadata` follows symlinks: a Kubernetes secret update swaps
                    // the link target, which changes the target's mtime.
                    std::fs::metadata(p)
                        .ok()
                        .map(|m| (m.len(), m.modified().unwrap_or(UNIX_EPOCH)))
                })
                .collect(),
        )
    }
}

/// See [`ServerTls::files_stamp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesStamp(Vec<Option<(u64, SystemTime)>>);

impl Generation {
    fn build(files: &ServerTlsConfig) -> Result<Generation, TlsError> {
        let key = pem::certified_key(&files.cert_file, &files.key_file)?;
        let cert = CertInfo::parse(&files.cert_file, &key.cert[0])?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Crypto)?;
        let builder = match &files.client_ca_file {
            Some(ca) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(pem::roots(ca)?, provider())
                        .build()
                        .map_err(|e| TlsError::Unusable {
                            path: ca.clone(),
                            message: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(key)));
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
        // Stateless, rotating ticket keys (as nginx does by default): resumption
        // for any number of clients without a server-side cache to size.
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(TlsError::Crypto)?;
        Ok(Generation {
            files: files.clone(),
            config: Arc::new(config),
            cert,
        })
    }
}

/// What the proxy tells people about its certificate (logs, `/-/status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    /// The file it came from.
    pub path: PathBuf,
    /// Subject distinguished name, e.g. `CN=letta.example.com`.
    pub subject: String,
    /// DNS names of the subjectAltName extension.
    pub dns_names: Vec<String>,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity (notAfter), Unix seconds.
    pub not_after: i64,
}

/// Something wrong with a certificate's validity period at a given time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertProblem {
    /// Past notAfter: clients refuse it.
    Expired { not_after: i64 },
    /// Before notBefore: clients refuse it (or the clock is wrong).
    NotYetValid { not_before: i64 },
    /// Less than [`EXPIRY_WARNING`] left.
    ExpiresSoon { not_after: i64, days_left: u64 },
}

impl std::fmt::Display for CertProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            CertProblem::Expired { not_after } => {
                write!(f, "certificate expired on {}", format_time(not_after))
            }
            CertProblem::NotYetValid { not_before } => {
                write!(
                    f,
                    "certificate not valid before {}",
                    format_time(not_before)
                )
            }
            CertProblem::ExpiresSoon {
                not_after,
                days_left,
            } => write!(
                f,
                "certificate expires in {days_left} day(s), on {}",
                format_time(not_after)
            ),
        }
    }
}

impl CertInfo {
    /// Reads the validity and names of `der` (the leaf of `path`).
    pub fn parse(path: &Path, der: &CertificateDer<'_>) -> Result<CertInfo, TlsError> {
        let bad = |message: String| TlsError::BadCertificate {
            path: path.to_path_buf(),
            message,
        };
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
        let dns_names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(bad(format!("subjectAltName: {e}"))),
        };
        Ok(CertInfo {
            path: path.to_path_buf(),
            subject: cert.subject().to_string(),
            dns_names,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// What is wrong with the validity period at `now`, if anything.
    pub fn problem(&self, now: SystemTime) -> Option<CertProblem> {
        let now = match now.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(_) => 0,
        };
        if now > self.not_after {
            return Some(CertProblem::Expired {
                not_after: self.not_after,
            });
        }
        if now < self.not_before {
            return Some(CertProblem::NotYetValid {
                not_before: self.not_before,
            });
        }
        let left = (self.not_after - now) as u64;
        (left < EXPIRY_WARNING.as_secs()).then_some(CertProblem::ExpiresSoon {
            not_after: self.not_after,
            days_left: left / 86_400,
        })
    }

    /// notAfter as a date people read (RFC 2822).
    pub fn not_after_text(&self) -> String {
        format_time(self.not_after)
    }
}

/// Unix seconds as an RFC 2822 date (the decimal number when out of range).
fn format_time(secs: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(secs)
        .ok()
        .and_then(|t| t.to_rfc2822().ok())
        .unwrap_or_else(|| format!("@{secs}"))
}
