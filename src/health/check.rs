//! `letta-proxy health URL`: one GET for container healthchecks (the runtime
//! image carries no curl), over plain HTTP or HTTPS.
//!
//! It reads no config on purpose: a healthcheck that fails because of a config
//! typo would hide the typo behind "unhealthy". For an HTTPS listener the
//! certificate is checked like any client would (system roots, or `ca_file`),
//! against the URL's host.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::tls::{BackendTls, ClientOptions};

/// GETs `url` and reads the answer to its end, all within `timeout`; the
/// status on success. `ca_file` replaces the system roots for `https://`.
pub async fn check(
    url: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> anyhow::Result<StatusCode> {
    match tokio::time::timeout(timeout, get(url, ca_file)).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!(
            "no complete answer within {}",
            humantime::format_duration(timeout)
        ),
    }
}

async fn get(url: &str, ca_file: Option<&Path>) -> anyhow::Result<StatusCode> {
    let uri: Uri = url.parse().context("not a URL")?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => anyhow::bail!("expected an http:// or https:// URL"),
    };
    let authority = uri.authority().context("the URL names no host")?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let stream = TcpStream::connect((host, port))
        .await
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.uri_mut() = Uri::from(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    req.headers_mut().insert(
        header::HOST,
        HeaderValue::from_str(authority.as_str()).context("invalid host")?,
    );
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("letta-proxy-health"),
    );
    if !tls {
        return exchange(stream, req).await;
    }
    let options = ClientOptions {
        ca_file,
        client_cert: None,
        server_name: host,
        http2: false,
    };
    let connector = BackendTls::new(&options)?;
    let connected = connector.connect(stream).await?;
    exchange(connected.stream, req).await
}

async fn exchange<IO>(io: IO, req: Request<Empty<Bytes>>) -> anyhow::Result<StatusCode>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.context("request failed")?;
    let status = resp.status();
    // Read the body to its end, so a server that breaks mid-answer fails the check.
    resp.into_body()
        .collect()
        .await
        .context("reading the body")?;
    Ok(status)
}
