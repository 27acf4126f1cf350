//! The admin API, served on `server.admin_listen` (loopback by default).
//!
//! Read: `GET /-/backends`, plus everything the main listener answers itself
//! (`/metrics`, `/-/stats`, `/-/status`, `/-/healthy`, `/-/ready`).
//! Mutate (each call logged): `POST /-/backends` (add), `DELETE /-/backends/{name}`
//! (remove; in-flight requests finish), `POST /-/backends/{name}/drain` and
//! `/undrain`, `PUT /-/strategy`, `POST /-/reload`, `POST /-/cache/purge`.
//! With `admin.token` set, every call needs `Authorization: Bearer <token>`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::reload;
use crate::config::BackendConfig;
use crate::proxy::Proxy;

/// The admin router for `proxy`.
pub fn router(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route("/-/backends", get(list_backends).post(add_backend))
        .route("/-/backends/{name}", delete(remove_backend))
        .route("/-/backends/{name}/drain", post(drain))
        .route("/-/backends/{name}/undrain", post(undrain))
        .route("/-/strategy", put(set_strategy).post(set_strategy))
        .route("/-/reload", post(reload_config))
        .route("/-/cache/purge", post(purge_cache))
        .fallback(read_only)
        .layer(axum::middleware::from_fn_with_state(
            proxy.clone(),
            require_token,
        ))
        .with_state(proxy)
}

/// Compares a presented token with the configured one in constant time: both
/// are hashed first, so neither the position of the first difference nor the
/// token's length shows in the time taken.
fn token_matches(given: &str, token: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let (g, t) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(token.as_bytes()),
    );
    g.ct_eq(&t).into()
}

fn error(status: StatusCode, kind: &str, message: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({"error": {"kind": kind, "message": message.to_string()}})),
    )
        .into_response()
}

async fn require_token(
    State(proxy): State<Arc<Proxy>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = proxy
        .config()
        .admin
        .token
        .as_deref()
        .filter(|t| !t.is_empty())
    {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| token_matches(g, token));
        if !ok {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "admin token required",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static value"),
            );
            return r;
        }
    }
    next.run(req).await
}

/// Everything else: the read-only endpoints of the main listener.
async fn read_only(State(proxy): State<Arc<Proxy>>, req: axum::extract::Request) -> Response {
    match super::endpoints::answer(&proxy, &req) {
        Some(resp) => resp.into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", "unknown admin path"),
    }
}

async fn list_backends(State(proxy): State<Arc<Proxy>>) -> Response {
    let now = proxy.upstreams.now_ns();
    let set = proxy.upstreams.load();
    let list: Vec<_> = set
        .backends
        .iter()
        .map(|b| {
            json!({
                "name": &*b.name,
                "url": format!("http://{}", b.url.authority),
                "weight": b.weight(),
                "max_in_flight": b.max_in_flight(),
                "in_flight": b.in_flight(),
                "healthy": b.is_healthy(),
                "ejected": b.outlier.is_ejected(now),
                "draining": b.is_draining(),
            })
        })
        .collect();
    Json(json!({"strategy": set.strategy.name(), "backends": list})).into_response()
}

async fn add_backend(
    State(proxy): State<Arc<Proxy>>,
    headers: HeaderMap,
    Json(b): Json<BackendConfig>,
) -> Response {
    let name = b.name.clone();
    let result = proxy.update(|c| {
        if c.backends.iter().any(|x| x.name == b.name) {
            return Err(format!("backend {:?} already exists", b.name));
        }
        c.backends.push(b);
        Ok(())
    });
    audit(&headers, "add backend", &name);
    match result {
        Ok(_) => (StatusCode::CREATED, Json(json!({"added": name}))).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, "invalid_backend", e),
    }
}

async fn remove_backend(
    State(proxy): State<Arc<Proxy>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let result = proxy.update(|c| {
        let before = c.backends.len();
        c.backends.retain(|b| b.name != name);
        if c.backends.len() == before {
            return Err(format!("no backend named {name:?}"));
        }
        Ok(())
    });
    audit(&headers, "remove backend", &name);
    match result {
        Ok(_) => Json(json!({"removed": name, "note": "requests in flight on it finish"}))
            .into_response(),
        Err(e) if e.starts_with("no backend") => error(StatusCode::NOT_FOUND, "not_found", e),
        Err(e) => error(StatusCode::BAD_REQUEST, "invalid_change", e),
    }
}

fn set_draining(proxy: &Proxy, name: &str, draining: bool) -> Response {
    let set = proxy.upstreams.load();
    match set.backends.iter().find(|b| &*b.name == name) {
        Some(b) => {
            b.set_draining(draining);
            Json(json!({"backend": name, "draining": draining, "in_flight": b.in_flight()}))
                .into_response()
        }
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no backend named {name:?}"),
        ),
    }
}

async fn drain(
    State(proxy): State<Arc<Proxy>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    audit(&headers, "drain backend", &name);
    set_draining(&proxy, &name, true)
}

async fn undrain(
    State(proxy): State<Arc<Proxy>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    audit(&headers, "undrain backend", &name);
    set_draining(&proxy, &name, false)
}

#[derive(Deserialize)]
struct StrategyChange {
    strategy: String,
}

async fn set_strategy(
    State(proxy): State<Arc<Proxy>>,
    headers: HeaderMap,
    Json(s): Json<StrategyChange>,
) -> Response {
    audit(&headers, "switch strategy", &s.strategy);
    let kind = match serde_json::from_value(json!(s.strategy)) {
        Ok(k) => k,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_strategy",
                format!("unknown strategy {:?}", s.strategy),
            )
        }
    };
    match proxy.update(|c| {
        c.balancer.strategy = kind;
        Ok(())
    }) {
        Ok(c) => Json(json!({"strategy": c.balancer.strategy.as_str()})).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, "invalid_strategy", e),
    }
}

async fn reload_config(State(proxy): State<Arc<Proxy>>, headers: HeaderMap) -> Response {
    audit(&headers, "reload config", "");
    match reload::reload(&proxy) {
        Ok(report) => Json(json!({"reloaded": report})).into_response(),
        Err(reload::ReloadError::NoFile) => error(
            StatusCode::CONFLICT,
            "no_config_file",
            reload::ReloadError::NoFile,
        ),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Purge {
    /// A Letta id (`agent-…`, `block-…`): every cached answer that mentions it.
    id: Option<String>,
    /// A path prefix (`/v1/tools`): every cached answer under it.
    prefix: Option<String>,
}

async fn purge_cache(
    State(proxy): State<Arc<Proxy>>,
    headers: HeaderMap,
    Json(p): Json<Purge>,
) -> Response {
    audit(
        &headers,
        "purge cache",
        p.id.as_deref().or(p.prefix.as_deref()).unwrap_or(""),
    );
    match (p.id, p.prefix) {
        (Some(id), None) => {
            Json(json!({"purged_id": id, "entries": proxy.purge_cache_id(&id).await}))
                .into_response()
        }
        (None, Some(prefix)) => Json(
            json!({"purged_prefix": prefix, "entries": proxy.purge_cache_prefix(&prefix).await}),
        )
        .into_response(),
        _ => error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "give exactly one of `id` or `prefix`",
        ),
    }
}

fn audit(headers: &HeaderMap, action: &str, target: &str) {
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info!(target: "letta_proxy::admin", action, target, user_agent = agent, "admin call");
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn tokens_match_only_exactly() {
        assert!(token_matches("s3cret", "s3cret"));
        for wrong in ["", "s3cre", "s3cret ", "S3cret", "s3cret-and-more"] {
            assert!(!token_matches(wrong, "s3cret"), "{wrong:?}");
        }
    }
}
