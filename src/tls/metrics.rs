//! TLS metric families, registered on the proxy's registry.

use prometheus::{Gauge, IntCounter, IntCounterVec, Opts, Registry};
use rustls::ProtocolVersion;

use super::accept::{Alpn, REASONS};
use super::CertInfo;

/// Handshake counts and the served certificate's expiry.
#[derive(Clone)]
pub struct TlsMetrics {
    /// `letta_proxy_tls_handshakes_total{tls_version, alpn}`, resolved once:
    /// [TLS 1.2, TLS 1.3] x [h2, http/1.1].
    handshakes: [[IntCounter; 2]; 2],
    /// `letta_proxy_tls_handshake_failures_total{reason}`.
    failures: IntCounterVec,
    /// `letta_proxy_tls_certificate_reloads_total{result}`.
    reloads: IntCounterVec,
    /// `letta_proxy_tls_certificate_not_after_timestamp_seconds`.
    not_after: Gauge,
}

impl TlsMetrics {
    /// Creates the families and registers them on `registry`.
    pub fn new(registry: &Registry) -> Result<TlsMetrics, prometheus::Error> {
        let handshakes = IntCounterVec::new(
            Opts::new(
                "letta_proxy_tls_handshakes_total",
                "Completed client TLS handshakes, by protocol version and negotiated ALPN.",
            ),
            &["tls_version", "alpn"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "letta_proxy_tls_handshake_failures_total",
                "Client TLS handshakes that did not complete: timeout, closed, io, incompatible, \
                 no_application_protocol, client_certificate, alert_received, malformed, other.",
            ),
            &["reason"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "letta_proxy_tls_certificate_reloads_total",
                "Reloads of the listener's certificate files (ok, error: the old certificate stays).",
            ),
            &["result"],
        )?;
        let not_after = Gauge::new(
            "letta_proxy_tls_certificate_not_after_timestamp_seconds",
            "End of validity (notAfter) of the certificate served to new connections, Unix seconds.",
        )?;
        registry.register(Box::new(handshakes.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(not_after.clone()))?;
        // Every series exists from the start, so rate() and alerts see zeros.
        for reason in REASONS {
            failures.with_label_values(&[reason]);
        }
        for result in ["ok", "error"] {
            reloads.with_label_values(&[result]);
        }
        let by_alpn = |v: &str| {
            [Alpn::H2, Alpn::Http11].map(|a| handshakes.with_label_values(&[v, a.as_str()]))
        };
        Ok(TlsMetrics {
            handshakes: [by_alpn("1.2"), by_alpn("1.3")],
            failures,
            reloads,
            not_after,
        })
    }

    pub(crate) fn handshake_ok(&self, version: Option<ProtocolVersion>, alpn: Alpn) {
        let v = usize::from(version == Some(ProtocolVersion::TLSv1_3));
        let a = usize::from(alpn == Alpn::Http11);
        self.handshakes[v][a].inc();
    }

    pub(crate) fn handshake_failed(&self, reason: &str) {
        self.failures.with_label_values(&[reason]).inc();
    }

    pub(crate) fn reloaded(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    pub(crate) fn set_certificate(&self, cert: &CertInfo) {
        self.not_after.set(cert.not_after as f64);
    }
}
