//! TLS to one `https://` backend: its rustls client configuration and handshake.
//!
//! Built once per backend from its `[[backends]]` entry: trust (the system
//! roots, or `tls_ca_file` alone), an optional client certificate, the name
//! checked and sent as SNI (`tls_server_name`, else the URL's host) and the
//! ALPN offer (`h2` and `http/1.1` with `http2 = true`, else `http/1.1`).
//! Session resumption stays on (rustls keeps tickets per server name), so a
//! reconnect to a backend usually skips the full handshake.
//!
//! [`BackendTls::connect`] runs only the handshake: the caller puts the TCP
//! connect and it under one deadline (`server.connect_timeout`). Its error is a
//! connect failure ([`TlsConnectError`]): no request byte has been sent, so
//! the request may go to the next backend whatever its method.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::ServerName;
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::ClientOptions;
use super::{pem, provider, TlsError, ALPN_H2, ALPN_HTTP11};

/// How the proxy speaks TLS to one backend.
#[derive(Clone)]
pub struct BackendTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    offers_h2: bool,
}

/// A completed handshake with a backend.
pub struct TlsConnected<IO> {
    pub stream: TlsStream<IO>,
    /// The backend picked `h2`: speak HTTP/2 on this connection.
    pub h2: bool,
}

/// A TLS handshake with a backend that did not complete: a connect failure.
#[derive(Debug, thiserror::Error)]
pub enum TlsConnectError {
    /// The TLS layer refused: certificate not trusted or not for this name,
    /// no common protocol, an alert from the backend.
    #[error("TLS handshake with {server_name} refused: {source}")]
    Refused {
        server_name: String,
        #[source]
        source: rustls::Error,
    },
    /// The connection failed during the handshake (reset, closed).
    #[error("TLS handshake with {server_name} failed: {source}")]
    Io {
        server_name: String,
        #[source]
        source: std::io::Error,
    },
}

impl TlsConnectError {
    /// Whether the backend's certificate was the problem (not trusted, wrong
    /// name, expired): a configuration error rather than an outage.
    pub fn is_certificate_error(&self) -> bool {
        matches!(
            self,
            TlsConnectError::Refused {
                source: rustls::Error::InvalidCertificate(_),
                ..
            }
        )
    }
}

impl BackendTls {
    /// The client configuration of one `https://` backend.
    pub fn new(b: &ClientOptions<'_>) -> Result<BackendTls, TlsError> {
        let roots = match b.ca_file {
            Some(ca) => pem::roots(ca)?,
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Crypto)?
            .with_root_certificates(roots);
        let mut config = match b.client_cert {
            Some((cert, key)) => {
                let key = pem::certified_key(cert, key)?;
                builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key)))
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = if b.http2 {
            vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()]
        } else {
            vec![ALPN_HTTP11.to_vec()]
        };
        let name = b.server_name;
        let server_name =
            ServerName::try_from(name.to_string()).map_err(|_| TlsError::BadServerName {
                name: name.to_string(),
            })?;
        Ok(BackendTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            offers_h2: b.http2,
        })
    }

    /// Runs the client handshake on `io`, an open connection to the backend.
    /// No timeout of its own: the caller's connect deadline covers it.
    pub async fn connect<IO>(&self, io: IO) -> Result<TlsConnected<IO>, TlsConnectError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match self.connector.connect(self.server_name.clone(), io).await {
            Ok(stream) => {
                let h2 = stream.get_ref().1.alpn_protocol() == Some(ALPN_H2);
                Ok(TlsConnected { stream, h2 })
            }
            Err(e) => Err(self.error(e)),
        }
    }

    /// The name sent as SNI and checked against the certificate.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// Whether `h2` is offered (`http2 = true`).
    pub fn offers_h2(&self) -> bool {
        self.offers_h2
    }

    fn error(&self, e: std::io::Error) -> TlsConnectError {
        let server_name = self.server_name.to_str().into_owned();
        if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
            let inner = e.into_inner().expect("checked above");
            let source = *inner.downcast::<rustls::Error>().expect("checked above");
            return TlsConnectError::Refused {
                server_name,
                source,
            };
        }
        TlsConnectError::Io {
            server_name,
            source: e,
        }
    }
}

/// The operating system's trust store (on Debian /etc/ssl/certs, from the
/// ca-certificates package; `SSL_CERT_FILE` / `SSL_CERT_DIR` override), read once.
fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                return Err(if errors.is_empty() {
                    "none found".to_string()
                } else {
                    errors.join("; ")
                });
            }
            Ok(Arc::new(store))
        })
        .clone()
        .map_err(|message| TlsError::NoSystemRoots { message })
}
