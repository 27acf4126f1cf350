//! letta-proxy inside an axum application: the gateway's router nested under
//! `/letta`, behind the application's own bearer-token check and CORS layer.
//!
//! ```text
//! EMBED_TOKEN=s3cret cargo run --example embed -- config/letta-proxy.toml 127.0.0.1:8080
//! curl -H 'authorization: Bearer s3cret' http://127.0.0.1:8080/letta/v1/agents/
//! ```
//!
//! and from Python, `Letta(base_url="http://127.0.0.1:8080/letta", api_key="s3cret")`:
//! the SDK sends its API key as that bearer token.
//!
//! Everything the standalone proxy does happens under `/letta`: balancing,
//! the cache, write ordering, limits, metrics (`/letta/metrics`), the proxy
//! paths (`/letta/-/ready`), and Letta's redirects come back with the
//! `/letta` prefix. The application's token is checked in constant time and
//! removed before the request goes on: the Letta servers behind sit on a
//! private network and trust the application.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::{header, StatusCode};
use letta_proxy::config::Config;
use letta_proxy::Gateway;
use subtle::ConstantTimeEq;
use tower_http::cors::CorsLayer;

/// The application: its own routes, and Letta under `/letta` for callers with the token.
pub fn app(gateway: &Gateway, token: &str) -> Router {
    let token: Arc<[u8]> = Arc::from(token.as_bytes());
    let letta = gateway
        .router()
        .layer(middleware::from_fn_with_state(token, require_bearer));
    Router::new()
        .route(
            "/",
            get(|| async { "an application with Letta under /letta\n" }),
        )
        .nest("/letta", letta)
        // Browsers (the ADE, a web app) may call it from another origin.
        .layer(CorsLayer::permissive())
}

/// Lets through requests with `Authorization: Bearer <token>`, minus that header.
async fn require_bearer(State(token): State<Arc<[u8]>>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::as_bytes)
        .unwrap_or_default();
    if !bool::from(presented.ct_eq(&token)) {
        let body = serde_json::json!({
            "error": { "kind": "unauthorized", "message": "a valid bearer token is required" }
        });
        let mut resp = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    req.headers_mut().remove(header::AUTHORIZATION);
    next.run(req).await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    letta_proxy::tls::install_default_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let config_path = args.next();
    let listen: SocketAddr = args
        .next()
        .as_deref()
        .unwrap_or("127.0.0.1:8080")
        .parse()
        .context("the second argument is the address to listen on")?;
    let token = std::env::var("EMBED_TOKEN").context("set EMBED_TOKEN to the bearer token")?;
    anyhow::ensure!(!token.is_empty(), "EMBED_TOKEN is empty");
    let config = Config::load(config_path.as_deref().map(Path::new), std::env::vars())?;
    let gateway = Gateway::from_config(config).await?;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "application listening; Letta under /letta");
    // `ConnectInfo` gives the gateway the client's address (X-Forwarded-For, logs).
    let service = app(&gateway, &token).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Stops the gateway's background tasks (health probes, Redis).
    gateway.shutdown();
    Ok(())
}
