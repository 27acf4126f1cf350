//! What a request tells Letta about *who* is asking and *how* to answer: the
//! one list the cache key, `/-/batch` and the logs share.
//!
//! Derived from Letta 0.16.8's own source (the `letta-0.16.8` sdist, paths
//! relative to its `letta/` package) and checked against a running server in
//! secure mode; each name says where it is read. Letta matches header names
//! case-insensitively and reads only the *first* value of a repeated header,
//! so the cache key takes every value, in order.
//!
//! A header in none of the three lists below makes a request skip the cache
//! (`x-cache: BYPASS`): an answer is only ever shared between requests the
//! backend would answer the same way, and a header the proxy knows nothing
//! about might be one that changes the answer (a newer Letta, a gateway behind
//! the proxy). `cache.ignore_headers` extends the list of harmless ones.

/// Headers that decide who is asking or which data is visible. Two requests
/// that differ in any of them never share a cached answer.
pub const IDENTITY: &[(&str, &str)] = &[
    // `Bearer <password>`: server/rest_api/middleware/check_password.py:25.
    ("authorization", "check_password.py:25"),
    // `password <password>`, accepted instead of Authorization: check_password.py:24.
    ("x-bare-password", "check_password.py:24"),
    // The actor, hence organisation and every visible row: server/rest_api/dependencies.py:39.
    ("user_id", "dependencies.py:39"),
    // Filters tool lists and counts: dependencies.py:41 -> routers/v1/tools.py:149,270.
    ("x-project-id", "dependencies.py:41"),
    // Declared by several routers, scoped on by Letta Cloud: routers/v1/agents.py:618.
    ("x-project", "routers/v1/agents.py:618"),
    // Forwarded to the git storage service: routers/v1/git_http.py:289-294.
    ("x-organization-id", "routers/v1/git_http.py:289"),
    // The caller's own LLM key on the pass-through routes: proxy_helpers.py:145-148.
    ("x-api-key", "server/rest_api/proxy_helpers.py:145"),
    ("anthropic-api-key", "server/rest_api/proxy_helpers.py:146"),
    // Picks the agent whose memory is injected: routers/v1/anthropic.py:104.
    ("x-letta-agent-id", "routers/v1/anthropic.py:104"),
    // Not read by Letta; forwarded upstream by git_http.py:276 and proxy_helpers.py:139,
    // and what an authentication gateway in front of Letta reads.
    ("cookie", "git_http.py:276"),
    // Not read by Letta (the proxy does not forward it: hop-by-hop); what a
    // gateway in front of the proxy may authenticate with.
    ("proxy-authorization", "gateway credential"),
];

/// Headers that change the answer's form for the same caller: the default
/// `cache.vary_headers` (a trailing `*` matches a prefix).
pub const SHAPE: &[(&str, &str)] = &[
    // SDK 1.0 or legacy client: answer shape of agent reads, utils.py:1435-1490.
    ("user-agent", "dependencies.py:40, utils.py:1435"),
    // Read by `is_1_0_sdk_version` (dependencies.py:43); the rest of the
    // SDK's platform headers vary with it so each SDK build keeps its own answers.
    ("x-stainless-*", "dependencies.py:43, utils.py:1447"),
    // MCP OAuth redirect choice: services/mcp_server_manager.py:1336.
    ("x-letta-source", "mcp_server_manager.py:1336"),
    // Execution-path switches: dependencies.py:44-50.
    ("x-experimental-*", "dependencies.py:44-50"),
    // Unit of GET /v1/embeddings/total_storage_size: routers/v1/embeddings.py:15.
    ("storage_unit", "routers/v1/embeddings.py:15"),
    // CORS response headers: starlette/middleware/cors.py:154-165.
    ("origin", "starlette cors.py:154"),
    // Not read by Letta 0.16.8 (no content negotiation, no compression), kept
    // so a Letta that starts negotiating cannot mix representations.
    ("accept", "content negotiation"),
    ("accept-encoding", "content negotiation"),
];

/// Headers that never change Letta's answer to a read: transport, tracing,
/// browser chatter, and the SDK's per-attempt counters. The default
/// `cache.ignore_headers` (a trailing `*` matches a prefix). Ignored headers
/// win over a `vary_headers` prefix, so `x-stainless-retry-count` does not
/// split entries per retry.
pub const IGNORED: &[&str] = &[
    // Transport and framing (hop-by-hop ones are removed before forwarding).
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-type",
    "expect",
    // Set or extended by proxies; Letta only logs the client address.
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "forwarded",
    "x-real-ip",
    "via",
    // Request ids and tracing.
    "x-request-id",
    "x-correlation-id",
    "traceparent",
    "tracestate",
    "baggage",
    "sentry-trace",
    "b3",
    "x-b3-*",
    "x-amzn-trace-id",
    "x-cloud-trace-context",
    "x-datadog-*",
    // Letta logs them (middleware/logging.py:53,57); x-agent-id is the default affinity header.
    "x-agent-id",
    "x-run-id",
    "run-id",
    // Write context only (billing, step request ids, agent import): dependencies.py:51-53.
    "x-billing-*",
    "x-api-request-log-id",
    "x-override-embedding-model",
    // The SDK's per-attempt values (_base_client.py:450-457, _response.py:658).
    "x-stainless-retry-count",
    "x-stainless-read-timeout",
    "x-stainless-timeout",
    "x-stainless-raw-response",
    // Browser headers Letta never reads.
    "referer",
    "accept-language",
    "sec-fetch-*",
    "sec-ch-*",
    "sec-gpc",
    "dnt",
    "priority",
    "upgrade-insecure-requests",
    // Handled by the cache itself (no-cache / no-store from the client).
    "cache-control",
    "pragma",
];

/// Whether `name` (lowercase) says who is asking.
pub fn is_identity(name: &str) -> bool {
    IDENTITY.iter().any(|(n, _)| *n == name)
}

/// Whether `name` (lowercase) is in a `SHAPE`-style list with `*` prefixes.
pub fn matches(list: &[&str], name: &str) -> bool {
    list.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => *p == name,
    })
}

/// Headers a `/-/batch` sub-request inherits from the batch request: the
/// caller's identity and the headers that shape Letta's answers for it.
pub fn is_inherited(name: &str) -> bool {
    is_identity(name) && name != "proxy-authorization"
        || SHAPE.iter().any(|(p, _)| matches(&[p], name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lists_do_not_overlap_and_are_lowercase() {
        for (n, _) in IDENTITY.iter().chain(SHAPE) {
            assert_eq!(n.to_ascii_lowercase(), *n);
            assert!(!matches(IGNORED, n), "{n} is both keyed and ignored");
        }
        for n in IGNORED {
            assert_eq!(n.to_ascii_lowercase(), *n);
            assert!(!is_identity(n), "{n}");
        }
    }

    #[test]
    fn batch_sub_requests_inherit_every_credential() {
        for n in [
            "authorization",
            "x-bare-password",
            "user_id",
            "cookie",
            "x-organization-id",
        ] {
            assert!(is_inherited(n), "{n}");
        }
        assert!(is_inherited("x-stainless-package-version"));
        assert!(is_inherited("user-agent"));
        assert!(!is_inherited("content-type"));
        assert!(!is_inherited("proxy-authorization"));
    }
}
