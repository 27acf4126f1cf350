//! Paths the proxy answers itself on the main listener: `GET /metrics`,
//! `GET /-/healthy` (the process is up), `GET /-/ready` (some backend is usable),
//! `GET /-/stats` (JSON figures) and `GET /-/status` (a page showing them).
//! Other `/-/` paths are the proxy's namespace and never forwarded.

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::proxy::body::ResponseBody;
use crate::proxy::Proxy;

/// Answers `req` if it is for a proxy-owned path.
pub fn answer<B>(proxy: &Proxy, req: &Request<B>) -> Option<Response<ResponseBody>> {
    let path = req.uri().path();
    if path != "/metrics" && !path.starts_with("/-/") {
        return None;
    }
    if path == "/metrics" && !proxy.config().metrics.enabled {
        return None;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Some(json(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET and HEAD",
        ));
    }
    Some(match path {
        "/metrics" => {
            let now = proxy.upstreams.now_ns();
            for b in proxy.upstreams.load().backends.iter() {
                proxy.metrics.set_backend_healthy(&b.name, b.is_usable(now));
            }
            let mut r = Response::new(ResponseBody::full(proxy.metrics.render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/-/healthy" => json(StatusCode::OK, "healthy", "letta-proxy is running"),
        "/-/ready" => {
            if proxy.upstreams.load().any_usable(proxy.upstreams.now_ns()) {
                json(StatusCode::OK, "ready", "at least one backend is usable")
            } else {
                let mut r = json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_backend",
                    "no usable backend",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1));
                r
            }
        }
        "/-/stats" => {
            let body = serde_json::to_string_pretty(&crate::stats::snapshot(proxy))
                .expect("stats serialize");
            let mut r = Response::new(ResponseBody::full(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        "/-/status" => {
            let mut r = Response::new(ResponseBody::full(crate::stats::STATUS_PAGE));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        }
        _ => json(StatusCode::NOT_FOUND, "not_found", "unknown proxy path"),
    })
}

fn json(status: StatusCode, kind: &str, message: &str) -> Response<ResponseBody> {
    let body = if status.is_success() {
        serde_json::json!({ "status": kind, "message": message })
    } else {
        serde_json::json!({ "error": { "kind": kind, "message": message } })
    };
    let mut r = Response::new(ResponseBody::full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
