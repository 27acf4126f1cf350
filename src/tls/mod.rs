//! TLS: HTTPS for clients (`[server.tls]`), `https://` backends, the plain-HTTP
//! redirect listener, and the checks `--check` runs on their files.
//!
//! The pieces, each usable alone:
//!
//! - [`ServerTls`] ([`server`]): the listener's rustls configuration from PEM
//!   files (TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, optional client
//!   certificates), reloadable without touching open connections, with the
//!   leaf's validity ([`CertInfo`]) for logs and `/-/status`.
//! - [`ServerTls::accept`] ([`accept`]): one handshake under a deadline; a failure
//!   is a [`HandshakeError`] with a bounded `reason` for the metric.
//! - [`BackendTls`] ([`client`]): one backend's client configuration (system
//!   roots or a CA file, optional client certificate, SNI, ALPN) and its
//!   handshake, whose failure ([`TlsConnectError`]) is a connect failure.
//! - [`redirect`]: the `redirect_http_listen` service.
//! - [`TlsMetrics`] ([`metrics`]): handshake counters and certificate expiry.
//!
//! A leaf: it knows files and names, not the proxy's configuration (which
//! holds [`ServerTlsConfig`] and builds [`ClientOptions`] for each backend).
//!
//! ## One crypto provider: aws-lc-rs
//!
//! Every rustls user in the build (this module, tokio-rustls, the Redis client's
//! `rediss://`) must compile the same provider: with two, rustls cannot pick a
//! process default and `ClientConfig::builder()` panics. aws-lc-rs is the one
//! because handshakes are what an edge proxy spends its CPU on: measured here
//! (server side of full TLS 1.3 handshakes, one core) it did about 1.2x the
//! handshakes of ring with an ECDSA P-256 certificate and 1.9x with RSA-2048,
//! and it brings the post-quantum hybrid key exchange (X25519MLKEM768) for
//! clients that offer it. On x86_64 and aarch64 Linux it builds with a C
//! compiler only (no cmake, no nasm, no bindgen). [`provider`] is the one value
//! used everywhere here; [`install_default_provider`] makes it the process
//! default for libraries that build their own rustls configurations.

pub mod accept;
pub mod client;
mod error;
pub mod metrics;
mod pem;
pub mod redirect;
pub mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use serde::{Deserialize, Serialize};

pub use accept::{Accepted, Alpn, HandshakeError};
pub use client::{BackendTls, TlsConnectError, TlsConnected};
pub use error::TlsError;
pub use metrics::TlsMetrics;
pub use server::{CertInfo, CertProblem, ServerTls};

/// `[server.tls]`: certificate and key for HTTPS on `server.listen`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain, leaf first (re-read on reload).
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the leaf.
    pub key_file: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate they signed (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Plain-HTTP listener that answers every request with a redirect to HTTPS.
    #[serde(default)]
    pub redirect_http_listen: Option<SocketAddr>,
}

/// In a request's extensions: it arrived over TLS (the HTTPS listener puts
/// it there; an application embedding the gateway behind its own TLS may too).
/// The proxy then sends `X-Forwarded-Proto: https` and keeps Letta's redirects on HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTls {
    /// The protocol ALPN settled on.
    pub alpn: Alpn,
}

/// How to speak TLS to one `https://` backend.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions<'a> {
    /// PEM CA certificates to trust instead of the system roots.
    pub ca_file: Option<&'a Path>,
    /// PEM client certificate chain and its key, presented when asked.
    pub client_cert: Option<(&'a Path, &'a Path)>,
    /// Sent as SNI and checked against the certificate.
    pub server_name: &'a str,
    /// Offer HTTP/2 by ALPN.
    pub http2: bool,
}

/// ALPN identifiers, in the server's order of preference.
pub(crate) const ALPN_H2: &[u8] = b"h2";
pub(crate) const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Checks that `path` is a PEM file of CA certificates rustls can trust (the
/// `ca_file` options: a missing, unreadable or empty file is named).
pub fn check_ca_file(path: &Path) -> Result<(), TlsError> {
    pem::roots(path).map(|_| ())
}

/// The crypto provider of every TLS configuration the proxy builds.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Makes [`provider`] the process-wide default, for libraries that call
/// `rustls::ClientConfig::builder()` themselves (redis-rs for `rediss://`).
/// Idempotent; call it once at start, before any such library runs.
pub fn install_default_provider() {
    // Err means a default is already installed: the first one stays, which is
    // this same provider unless another crate installed its own on purpose.
    let _ = CryptoProvider::install_default((*provider()).clone());
}
