//! The plain-HTTP listener of `redirect_http_listen`: every request is sent to
//! the same host and path over HTTPS.
//!
//! 308 Permanent Redirect, not 301: a client follows a 301 with a GET whatever
//! its method, so an SDK's POST to `http://` would silently become a GET;
//! after a 308 it repeats the same method and body. Every HTTP client the Letta
//! SDKs use (httpx, fetch, requests) follows 308.
//!
//! The port: when the client's `Host` names no port (it came through the
//! standard port 80, perhaps via a load balancer or a Kubernetes Service), the
//! target is the standard port 443 and the URL carries none; when it names one
//! (`localhost:8080`), the client reaches the proxy directly and is sent to the
//! HTTPS listener's own port.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

/// Time a client has to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to `req` on the plain-HTTP listener; `https_port` is the port of
/// the HTTPS listener.
pub fn redirect<B>(req: &Request<B>, https_port: u16) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .filter(|a| !a.host().is_empty() && !a.as_str().contains('@'));
    let Some(host) = host else {
        return text(StatusCode::BAD_REQUEST, "a Host header is required\n");
    };
    let port = match host.port_u16() {
        None | Some(80) => String::new(),
        Some(_) if https_port == 443 => String::new(),
        Some(_) => format!(":{https_port}"),
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{}{port}{path}", host.host());
    match HeaderValue::try_from(location) {
        Ok(location) => {
            let mut resp = text(StatusCode::PERMANENT_REDIRECT, "use https\n");
            resp.headers_mut().insert(header::LOCATION, location);
            resp
        }
        Err(_) => text(StatusCode::BAD_REQUEST, "invalid request target\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Serves redirects on `listener` until `shutdown` completes, then lets open
/// connections finish their current exchange (at most one second).
pub async fn serve(listener: TcpListener, https_port: u16, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "redirect listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
            Ok::<_, Infallible>(redirect(&req, https_port))
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "redirect connection ended with an error");
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(host: Option<&str>, target: &str, https_port: u16) -> (StatusCode, Option<String>) {
        let mut req = Request::builder().uri(target);
        if let Some(h) = host {
            req = req.header(header::HOST, h);
        }
        let resp = redirect(&req.body(()).unwrap(), https_port);
        let loc = resp
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap().to_string());
        (resp.status(), loc)
    }

    #[test]
    fn redirects_keep_host_path_and_query_with_308() {
        let (status, loc) = location(Some("letta.example.com"), "/v1/agents/?limit=5", 443);
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            loc.as_deref(),
            Some("https://letta.example.com/v1/agents/?limit=5")
        );
    }

    #[test]
    fn the_port_follows_the_address_the_client_used() {
        // Standard port (no port in Host, or :80): standard HTTPS port.
        assert_eq!(
            location(Some("letta.example.com:80"), "/x", 8443)
                .1
                .as_deref(),
            Some("https://letta.example.com/x")
        );
        assert_eq!(
            location(Some("letta.example.com"), "/x", 8443).1.as_deref(),
            Some("https://letta.example.com/x")
        );
        // A port of its own: the HTTPS listener's.
        assert_eq!(
            location(Some("localhost:8080"), "/", 8443).1.as_deref(),
            Some("https://localhost:8443/")
        );
        assert_eq!(
            location(Some("[::1]:8080"), "/", 8443).1.as_deref(),
            Some("https://[::1]:8443/")
        );
        assert_eq!(
            location(Some("localhost:8080"), "/", 443).1.as_deref(),
            Some("https://localhost/")
        );
    }

    #[test]
    fn a_request_without_a_usable_host_is_refused() {
        assert_eq!(location(None, "/", 443), (StatusCode::BAD_REQUEST, None));
        assert_eq!(location(Some(""), "/", 443).0, StatusCode::BAD_REQUEST);
        assert_eq!(location(Some("a b"), "/", 443).0, StatusCode::BAD_REQUEST);
        assert_eq!(
            location(Some("user@evil"), "/", 443).0,
            StatusCode::BAD_REQUEST
        );
        // HTTP/1.1 absolute-form carries the host in the target.
        assert_eq!(
            location(None, "http://letta.example.com/v1/", 443)
                .1
                .as_deref(),
            Some("https://letta.example.com/v1/")
        );
    }
}
