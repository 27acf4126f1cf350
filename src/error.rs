//! Errors the proxy itself answers with, and the one place that maps them to HTTP.
//!
//! Every error a client can see is a [`ProxyError`]; [`ProxyError::status`] is the
//! whole status policy (502 unreachable or broken upstream, 503 nothing usable or
//! overloaded, 504 upstream too slow, 413 body too large, 400 malformed request).
//! The body is always `{"error": {"kind": "...", "message": "..."}}` and never
//! carries an internal address: backends are named, not located.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// An error produced by the proxy rather than relayed from a backend.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request cannot be forwarded as it is (bad URI, bad header).
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    /// The request's headers are larger than `server.max_header_size`.
    #[error("request headers larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    /// The request body is larger than `server.max_body_size`.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// No backend is usable (all down, draining or at their cap).
    #[error("no usable backend")]
    NoBackend,
    /// The proxy or every backend is at its concurrency limit.
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    /// No connection could be opened to the backend; nothing was sent.
    /// `reason` is a fixed phrase (never an address): a client seeing a
    /// certificate refusal knows it is the proxy's configuration, not an outage.
    #[error("backend {backend} is unreachable ({reason})")]
    Connect {
        backend: String,
        reason: &'static str,
        #[source]
        source: BoxError,
    },
    /// The backend closed or broke the exchange after the request was sent.
    #[error("backend {backend} failed")]
    Upstream {
        backend: String,
        #[source]
        source: BoxError,
    },
    /// The backend did not answer in time.
    #[error("backend {backend} timed out ({what})")]
    Timeout { backend: String, what: &'static str },
}

/// Boxed source error (hyper's and the client's errors differ in type).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Seconds a client is told to wait before retrying a 503.
const RETRY_AFTER_SECS: u64 = 1;

impl ProxyError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::NoBackend | ProxyError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Stable machine-readable kind, the `error.kind` field of the body.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::HeadersTooLarge { .. } => "headers_too_large",
            ProxyError::NoBackend => "no_backend",
            ProxyError::Overloaded(_) => "overloaded",
            ProxyError::Connect { .. } => "upstream_unreachable",
            ProxyError::Upstream { .. } => "upstream_error",
            ProxyError::Timeout { .. } => "upstream_timeout",
        }
    }

    /// How long a client should wait before retrying, for 503s.
    pub fn retry_after(&self) -> Option<Duration> {
        matches!(self, ProxyError::NoBackend | ProxyError::Overloaded(_))
            .then(|| Duration::from_secs(RETRY_AFTER_SECS))
    }

    /// The JSON body and headers a client receives.
    pub fn to_response(&self) -> Response<Bytes> {
        let body = serde_json::json!({
            "error": { "kind": self.kind(), "message": self.to_string() }
        });
        let mut resp = Response::new(Bytes::from(body.to_string()));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(after) = self.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs()));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> BoxError {
        Box::new(std::io::Error::other("boom"))
    }

    #[test]
    fn every_error_maps_to_its_status_and_kind() {
        let cases: Vec<(ProxyError, u16, &str)> = vec![
            (ProxyError::BadRequest("bad uri"), 400, "bad_request"),
            (
                ProxyError::BodyTooLarge { limit: 10 },
                413,
                "body_too_large",
            ),
            (ProxyError::NoBackend, 503, "no_backend"),
            (ProxyError::Overloaded("queue full"), 503, "overloaded"),
            (
                ProxyError::Connect {
                    backend: "a".into(),
                    reason: "connection failed",
                    source: io(),
                },
                502,
                "upstream_unreachable",
            ),
            (
                ProxyError::Upstream {
                    backend: "a".into(),
                    source: io(),
                },
                502,
                "upstream_error",
            ),
            (
                ProxyError::Timeout {
                    backend: "a".into(),
                    what: "response headers",
                },
                504,
                "upstream_timeout",
            ),
        ];
        for (err, status, kind) in cases {
            let resp = err.to_response();
            assert_eq!(resp.status().as_u16(), status, "{err}");
            let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
            assert_eq!(v["error"]["kind"], kind);
            assert_eq!(v["error"]["message"], err.to_string());
            assert_eq!(resp.headers()["content-type"], "application/json");
            assert_eq!(
                resp.headers().contains_key("retry-after"),
                status == 503,
                "{err}"
            );
        }
    }

    #[test]
    fn messages_name_the_backend_never_its_address() {
        let e = ProxyError::Connect {
            backend: "letta-a".into(),
            reason: "connection failed",
            source: Box::new(std::io::Error::other("tcp connect error 127.0.0.1:8283")),
        };
        assert_eq!(
            e.to_string(),
            "backend letta-a is unreachable (connection failed)"
        );
    }
}
