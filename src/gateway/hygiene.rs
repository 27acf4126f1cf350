//! Request rules checked before anything reads a request (routing, the cache,
//! write ordering): a request two parts of the system could read differently
//! is refused, not forwarded.
//!
//! - Two `Host` headers, or an absolute-form target / `:authority` naming
//!   another host than `Host` (RFC 9112 §3.2, RFC 9113 §8.3.1): 400. The proxy
//!   and Letta must agree on the host (Letta builds redirects from it).
//! - Headers larger than `server.max_header_size` in total: 431.
//! - A path with dot segments (`/../`, `/./`) or with a percent-encoded
//!   character that decodes to something a server may treat as plain text
//!   (`%2e`, `%2f`, `%5c`, an encoded letter, digit, `-`, `_`, `~`, or NUL): 400.
//!   Letta's server decodes the path before routing, so `/v1/agents/%61gent-1`
//!   reaches agent `agent-1` while the proxy, classifying bytes, would see no
//!   agent at all and skip its write ordering. Refusing such paths keeps the
//!   proxy's view of which agent or block a request writes equal to Letta's.
//!   Encoded characters that are not plain text (`%20`, UTF-8 bytes) pass.
//!
//! Framing is hyper's: two different `Content-Length`s, a `Transfer-Encoding`
//! that does not end in `chunked`, folded header lines and bad chunk sizes are
//! refused by its parser; `Content-Length` with `Transfer-Encoding` is read by
//! the chunked encoding alone and the connection closed after the answer (RFC
//! 9112 §6.1), so bytes after the body can never be taken for a request. The
//! proxy re-frames every body it forwards.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{header, HeaderMap, HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::body::Full;
use crate::config::SharedConfig;
use crate::error::ProxyError;

/// Refuses requests that break the rules below before anything routes them.
#[derive(Clone)]
pub struct HygieneLayer {
    config: SharedConfig,
}

impl HygieneLayer {
    pub fn new(config: SharedConfig) -> HygieneLayer {
        HygieneLayer { config }
    }
}

impl<S> Layer<S> for HygieneLayer {
    type Service = Hygiene<S>;

    fn layer(&self, inner: S) -> Hygiene<S> {
        Hygiene {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The rules around `S`.
#[derive(Clone)]
pub struct Hygiene<S> {
    inner: S,
    config: SharedConfig,
}

impl<S, B, RB> Service<Request<B>> for Hygiene<S>
where
    S: Service<Request<B>, Response = Response<RB>, Error = Infallible>,
    RB: From<Full>,
{
    type Response = Response<RB>;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response<RB>, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let limit = self.config.load().server.max_header_size;
        match check(&req, usize::try_from(limit).unwrap_or(usize::MAX)) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(e) => {
                tracing::debug!(error = %e, "request refused");
                let mut resp = e.to_response().map(|b| RB::from(Full::new(b)));
                // The rest of the connection cannot be trusted to be framed as
                // the client meant.
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                Either::Left(ready(Ok(resp)))
            }
        }
    }
}

/// Checks `req` against the rules above.
pub fn check<B>(req: &Request<B>, max_header_size: usize) -> Result<(), ProxyError> {
    let headers = req.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    if let (Some(host), Some(authority)) = (host, req.uri().authority()) {
        if !host
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
        {
            return Err(ProxyError::BadRequest(
                "the request target names another host than the Host header",
            ));
        }
    }
    if header_bytes(headers) > max_header_size {
        return Err(ProxyError::HeadersTooLarge {
            limit: max_header_size,
        });
    }
    check_path(req.uri().path()).map_err(ProxyError::BadRequest)
}

/// The size of the header section as sent on HTTP/1.1 (`name: value\r\n` per line).
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

/// Refuses paths whose meaning depends on who decodes them.
pub fn check_path(path: &str) -> Result<(), &'static str> {
    let bytes = path.as_bytes();
    // Nearly every path holds none of the three bytes every refusal needs:
    // one scan for them instead of the three checks below.
    if !bytes.iter().any(|b| matches!(b, b'\\' | b'.' | b'%')) {
        return Ok(());
    }
    if bytes.contains(&b'\\') {
        return Err("a backslash in the path");
    }
    for seg in path.split('/') {
        if seg == "." || seg == ".." {
            return Err("a dot segment in the path");
        }
    }
    let mut i = 0;
    while let Some(off) = bytes[i..].iter().position(|&b| b == b'%') {
        let at = i + off;
        let decoded = bytes
            .get(at + 1..at + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or("a malformed percent-encoding in the path")?;
        let ambiguous = decoded.is_ascii_alphanumeric()
            || matches!(decoded, b'-' | b'.' | b'_' | b'~' | b'/' | b'\\' | 0);
        if ambiguous {
            return Err("a percent-encoded character that must be sent as is (or a dot, slash, backslash or NUL) in the path");
        }
        i = at + 3;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(target);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn ordinary_requests_pass() {
        let ok = [
            "/v1/agents/",
            "/v1/agents/agent-1/messages",
            "/v1/agents/agent-1/core-memory/blocks/my%20label",
            "/v1/tools/caf%C3%A9",
            "/v1/agents//x",
            "/v1/agents/agent-1.json",
            "/-/status",
        ];
        for p in ok {
            check(&req(p, &[("host", "proxy:8300")]), 64 << 10)
                .unwrap_or_else(|e| panic!("{p}: {e}"));
        }
        check(
            &req("http://proxy:8300/v1/agents/", &[("host", "PROXY:8300")]),
            64 << 10,
        )
        .unwrap();
    }

    #[test]
    fn ambiguous_requests_are_refused() {
        let bad_paths = [
            "/v1/agents/agent-1/../agent-2/messages",
            "/v1/agents/./agent-1",
            "/v1/agents/agent-1/..",
            "/v1/agents/%2e%2e/agent-2",
            "/v1/agents/%2E/x",
            "/v1/agents/agent-1%2f..%2fagent-2",
            "/v1/agents/agent-1%2F",
            "/v1/agents/%61gent-1/messages",
            "/v1/agents/agent%2D1",
            "/v1/agents/agent-1%5c",
            "/v1/agents/agent-1%00",
            "/v1/agents/agent-1%",
            "/v1/agents/agent-1%zz",
        ];
        for p in bad_paths {
            let e = check(&req(p, &[]), 64 << 10).unwrap_err();
            assert_eq!(e.status(), 400, "{p}");
        }
        let mut two_hosts = req("/v1/agents/", &[("host", "a")]);
        two_hosts
            .headers_mut()
            .append(header::HOST, "b".parse().unwrap());
        assert_eq!(check(&two_hosts, 64 << 10).unwrap_err().status(), 400);
        let other = req("http://evil.example/v1/agents/", &[("host", "proxy:8300")]);
        assert_eq!(check(&other, 64 << 10).unwrap_err().status(), 400);
        let big = "x".repeat(70_000);
        let large = req("/v1/agents/", &[("x-big", &big)]);
        assert_eq!(check(&large, 64 << 10).unwrap_err().status(), 431);
    }
}
