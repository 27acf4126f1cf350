//! Paths the proxy answers itself on the main listener: `GET /metrics`,
//! `GET /-/healthy` (the process is up), `GET /-/ready` (some backend is usable),
//! `GET /-/stats` (JSON figures) and `GET /-/status` (a page showing them).
//! Other `/-/` paths are the proxy's namespace and never forwarded; with
//! `[metrics] enabled = false`, `/metrics` is forwarded like any other path.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, Method, StatusCode};

use super::Gateway;
use crate::body::InboundBody;

/// `/metrics`: the Prometheus text exposition, or forwarded when metrics are off.
pub(super) async fn metrics(State(g): State<Gateway>, req: Request) -> Response {
    if !g.config().metrics.enabled {
        return g.dispatch(req.map(InboundBody::from)).await.into_response();
    }
    if let Some(refused) = only_reads(req.method()) {
        return refused;
    }
    let upstreams = g.upstreams();
    let now = upstreams.now_ns();
    for b in upstreams.load().backends.iter() {
        g.metrics().set_backend_healthy(&b.name, b.is_usable(now));
        g.metrics().set_backend_idle(&b.name, b.pool.idle_counts());
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        g.metrics().render(),
    )
        .into_response()
}

/// Every other `/-/…` path of the main listener.
pub(super) async fn owned(State(g): State<Gateway>, req: Request) -> Response {
    answer(&g, req.uri().path(), req.method())
}

/// The read-only proxy paths, shared with the admin listener.
pub(super) fn answer(g: &Gateway, path: &str, method: &Method) -> Response {
    if let Some(refused) = only_reads(method) {
        return refused;
    }
    match path {
        "/-/healthy" => json(StatusCode::OK, "healthy", "letta-proxy is running"),
        "/-/ready" => {
            let upstreams = g.upstreams();
            if upstreams.load().any_usable(upstreams.now_ns()) {
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
            let body = serde_json::to_string_pretty(&g.stats()).expect("stats serialize");
            (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response()
        }
        "/-/status" => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            crate::stats::STATUS_PAGE,
        )
            .into_response(),
        _ => json(StatusCode::NOT_FOUND, "not_found", "unknown proxy path"),
    }
}

fn only_reads(method: &Method) -> Option<Response> {
    (method != Method::GET && method != Method::HEAD).then(|| {
        json(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET and HEAD",
        )
    })
}

/// A JSON answer: `{"status", "message"}` for success, the error shape otherwise.
pub(super) fn json(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = if status.is_success() {
        serde_json::json!({ "status": kind, "message": message })
    } else {
        serde_json::json!({ "error": { "kind": kind, "message": message } })
    };
    (status, axum::Json(body)).into_response()
}
