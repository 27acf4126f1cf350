//! One client handshake on the HTTPS listener, under a deadline.
//!
//! A failed handshake is the client's problem, never the listener's: it is
//! counted by [`HandshakeError::reason`] (a small fixed set, for the
//! `letta_proxy_tls_handshake_failures_total{reason}` metric), logged at debug,
//! and the connection is dropped.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

use super::{ServerTls, ALPN_H2};

/// The application protocol the handshake settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `h2`: serve HTTP/2.
    H2,
    /// `http/1.1`, or no ALPN at all (curl --http1.1, old clients): serve HTTP/1.1.
    Http11,
}

impl Alpn {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Alpn::H2 => "h2",
            Alpn::Http11 => "http/1.1",
        }
    }
}

/// A completed handshake.
pub struct Accepted<IO> {
    pub stream: TlsStream<IO>,
    pub alpn: Alpn,
}

/// Why a client's handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake not completed within {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake refused: {0}")]
    Tls(#[source] rustls::Error),
    #[error("TLS handshake failed: {0}")]
    Io(#[source] std::io::Error),
}

/// Every value [`HandshakeError::reason`] returns (the metric's label set).
pub const REASONS: &[&str] = &[
    "timeout",
    "closed",
    "io",
    "incompatible",
    "no_application_protocol",
    "client_certificate",
    "alert_received",
    "malformed",
    "other",
];

impl HandshakeError {
    /// A bounded label: what kind of client problem this was.
    pub fn reason(&self) -> &'static str {
        use rustls::Error as E;
        match self {
            HandshakeError::Timeout(_) => "timeout",
            HandshakeError::Io(e) => match e.kind() {
                // Port scanners, TCP health checks, clients that gave up.
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe => "closed",
                _ => "io",
            },
            HandshakeError::Tls(e) => match e {
                // No common version (TLS 1.1 and older), cipher suite, group or signature scheme.
                E::PeerIncompatible(_) => "incompatible",
                E::NoApplicationProtocol => "no_application_protocol",
                // Only client certificates are verified on this side.
                E::NoCertificatesPresented | E::InvalidCertificate(_) => "client_certificate",
                // The client refused us: often it does not trust our certificate.
                E::AlertReceived(_) => "alert_received",
                // Not TLS (plain HTTP sent to the HTTPS port) or a broken peer.
                E::InvalidMessage(_)
                | E::PeerMisbehaved(_)
                | E::InappropriateMessage { .. }
                | E::InappropriateHandshakeMessage { .. } => "malformed",
                _ => "other",
            },
        }
    }

    /// tokio-rustls reports TLS errors as `io::Error`s wrapping a `rustls::Error`.
    fn from_io(e: std::io::Error) -> HandshakeError {
        if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
            let inner = e.into_inner().expect("checked above");
            return HandshakeError::Tls(*inner.downcast::<rustls::Error>().expect("checked above"));
        }
        HandshakeError::Io(e)
    }
}

impl ServerTls {
    /// Runs the server side of the handshake on `io` (a just-accepted connection
    /// from `peer`) with the current configuration. Failures are counted (when
    /// metrics are attached) and logged at debug here; the caller only drops
    /// the connection.
    pub async fn accept<IO>(&self, io: IO, peer: SocketAddr) -> Result<Accepted<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.rustls_config());
        let result = match tokio::time::timeout(self.handshake_timeout, acceptor.accept(io)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(HandshakeError::from_io(e)),
            Err(_) => Err(HandshakeError::Timeout(self.handshake_timeout)),
        };
        match result {
            Ok(stream) => {
                let (_, conn) = stream.get_ref();
                let alpn = match conn.alpn_protocol() {
                    Some(p) if p == ALPN_H2 => Alpn::H2,
                    _ => Alpn::Http11,
                };
                if let Some(m) = &self.metrics {
                    m.handshake_ok(conn.protocol_version(), alpn);
                }
                Ok(Accepted { stream, alpn })
            }
            Err(e) => {
                if let Some(m) = &self.metrics {
                    m.handshake_failed(e.reason());
                }
                tracing::debug!(%peer, reason = e.reason(), error = %e, "TLS handshake failed");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn reasons_are_bounded_and_tell_client_problems_apart() {
        let io = |k: ErrorKind| HandshakeError::Io(Error::from(k));
        let tls = HandshakeError::Tls;
        let cases = [
            (HandshakeError::Timeout(Duration::from_secs(1)), "timeout"),
            (io(ErrorKind::UnexpectedEof), "closed"),
            (io(ErrorKind::ConnectionReset), "closed"),
            (io(ErrorKind::PermissionDenied), "io"),
            (
                tls(rustls::Error::PeerIncompatible(
                    rustls::PeerIncompatible::Tls12NotOffered,
                )),
                "incompatible",
            ),
            (
                tls(rustls::Error::NoApplicationProtocol),
                "no_application_protocol",
            ),
            (
                tls(rustls::Error::NoCertificatesPresented),
                "client_certificate",
            ),
            (
                tls(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                )),
                "client_certificate",
            ),
            (
                tls(rustls::Error::AlertReceived(
                    rustls::AlertDescription::UnknownCA,
                )),
                "alert_received",
            ),
            (
                tls(rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                )),
                "malformed",
            ),
            (tls(rustls::Error::DecryptError), "other"),
        ];
        for (err, want) in cases {
            assert_eq!(err.reason(), want, "{err}");
            assert!(REASONS.contains(&want));
        }
        // tokio-rustls wraps rustls errors in io::Error: they are unwrapped.
        let wrapped = Error::new(ErrorKind::InvalidData, rustls::Error::NoApplicationProtocol);
        assert_eq!(
            HandshakeError::from_io(wrapped).reason(),
            "no_application_protocol"
        );
    }
}
