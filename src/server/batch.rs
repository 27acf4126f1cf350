//! `POST /-/batch`: many Letta calls in one round trip, with partial failures.
//!
//! The body is `{"requests": [{"method", "path", "headers"?, "body"?}, …],
//! "concurrency"?: n}`. Each sub-request goes through the whole stack (cache,
//! limits, balancer, retries) as if the client had sent it, carrying the outer
//! request's identity and answer-shaping headers ([`crate::identity`]: the
//! credentials whichever header carries them, `user_id`, the project and
//! organisation, `User-Agent`, `X-Stainless-*`, …) unless it sets its own. The
//! answer lists every result in request order with its status, headers and body;
//! one failure never fails the others.

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::proxy::body::{InboundBody, ResponseBody};
use crate::proxy::ClientAddr;

/// Largest sub-response body included in a batch answer.
const MAX_SUB_RESPONSE: usize = 8 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    requests: Vec<SubRequest>,
    concurrency: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubRequest {
    method: String,
    path: String,
    #[serde(default)]
    headers: serde_json::Map<String, Value>,
    body: Option<Value>,
}

fn fail(status: StatusCode, kind: &str, message: &str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(
        json!({"error": {"kind": kind, "message": message}}).to_string(),
    ));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Answers a batch; `outer` is the batch request itself.
pub async fn handle(stack: &super::Stack, outer: Request<InboundBody>) -> Response<ResponseBody> {
    let limits = stack.proxy.config().limits.clone();
    let (parts, body) = outer.into_parts();
    let Ok(collected) = http_body_util::Limited::new(body, 16 * 1024 * 1024)
        .collect()
        .await
    else {
        return fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "batch body over 16 MiB or unreadable",
        );
    };
    let batch: Batch = match serde_json::from_slice(&collected.to_bytes()) {
        Ok(b) => b,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("invalid batch: {e}"),
            )
        }
    };
    if batch.requests.len() > limits.batch_max_requests {
        let msg = format!(
            "at most {} sub-requests per batch",
            limits.batch_max_requests
        );
        return fail(StatusCode::BAD_REQUEST, "bad_request", &msg);
    }
    let concurrency = batch
        .concurrency
        .unwrap_or(limits.batch_max_concurrency)
        .clamp(1, limits.batch_max_concurrency.max(1));
    let identity: HeaderMap = parts
        .headers
        .iter()
        .filter(|(k, _)| crate::identity::is_inherited(k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let client = parts.extensions.get::<ClientAddr>().copied();
    let results: Vec<Value> = futures_util::stream::iter(batch.requests.into_iter().enumerate())
        .map(|(i, sub)| {
            let (stack, identity) = (stack.clone(), identity.clone());
            async move { run_one(&stack, i, sub, &identity, client).await }
        })
        .buffered(concurrency)
        .collect()
        .await;
    let ok = results
        .iter()
        .filter(|r| r["status"].as_u64().is_some_and(|s| s < 400))
        .count();
    let answer = json!({"results": results, "succeeded": ok, "failed": results.len() - ok});
    let mut r = Response::new(ResponseBody::full(answer.to_string()));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn run_one(
    stack: &super::Stack,
    index: usize,
    sub: SubRequest,
    identity: &HeaderMap,
    client: Option<ClientAddr>,
) -> Value {
    let invalid = |msg: String| json!({"index": index, "status": 400, "error": {"kind": "bad_request", "message": msg}});
    let Ok(method) = Method::from_bytes(sub.method.to_ascii_uppercase().as_bytes()) else {
        return invalid(format!("invalid method {:?}", sub.method));
    };
    if !sub.path.starts_with("/v1/") {
        return invalid(format!("path {:?} must start with /v1/", sub.path));
    }
    let body = match &sub.body {
        None => Bytes::new(),
        Some(Value::String(s)) => Bytes::from(s.clone()),
        Some(v) => Bytes::from(v.to_string()),
    };
    let mut req = match Request::builder()
        .method(method)
        .uri(&sub.path)
        .body(InboundBody::from(body.clone()))
    {
        Ok(r) => r,
        Err(e) => return invalid(format!("invalid request: {e}")),
    };
    let h = req.headers_mut();
    // Every value, in order: Letta reads the first of a repeated header.
    for name in identity.keys() {
        h.remove(name);
        for v in identity.get_all(name) {
            h.append(name.clone(), v.clone());
        }
    }
    for (k, v) in &sub.headers {
        let (Ok(name), Some(Ok(value))) = (
            HeaderName::from_bytes(k.as_bytes()),
            v.as_str().map(HeaderValue::from_str),
        ) else {
            return invalid(format!("invalid header {k:?}"));
        };
        h.insert(name, value);
    }
    if sub.body.is_some() {
        if sub.body.as_ref().is_some_and(|b| !b.is_string())
            && !h.contains_key(http::header::CONTENT_TYPE)
        {
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    if let Some(c) = client {
        req.extensions_mut().insert(c);
    }
    let resp = stack.dispatch(req).await;
    let status = resp.status().as_u16();
    let headers: serde_json::Map<String, Value> = resp
        .headers()
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.as_str().to_string(),
                Value::String(v.to_str().ok()?.to_string()),
            ))
        })
        .collect();
    let is_json = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    let bytes = match http_body_util::Limited::new(resp.into_body(), MAX_SUB_RESPONSE)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return json!({"index": index, "status": 502, "headers": headers,
                          "error": {"kind": "upstream_error", "message": format!("response body failed: {e}")}})
        }
    };
    let body = if is_json {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    } else {
        Value::String(String::from_utf8_lossy(&bytes).into_owned())
    };
    json!({"index": index, "status": status, "headers": headers, "body": body})
}
