//! Header rules of a forwarding proxy (RFC 9110 §7.6.1), done in place on the
//! request's own `HeaderMap` so nothing is copied.
//!
//! - hop-by-hop headers go: `Connection` and every header it names, `Keep-Alive`,
//!   `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-*`;
//! - `X-Forwarded-For` gets the client address appended; `X-Forwarded-Proto`
//!   (`https` on the HTTPS listener) and `X-Forwarded-Host` are set unless an
//!   outer proxy already set them;
//! - everything else (`Authorization`, `User-Agent`, `X-Stainless-*`, `X-Project`)
//!   passes untouched: Letta varies its answers on them.

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

use crate::config::BackendUrl;
/// `x-letta-proxy-backend`: which replica answered.
pub static BACKEND: HeaderName = HeaderName::from_static("x-letta-proxy-backend");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether `name` is hop-by-hop by definition (not counting what `Connection` names).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == header::PROXY_AUTHORIZATION
        || *name == header::PROXY_AUTHENTICATE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Removes hop-by-hop headers, including those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) headers present instead of nine lookups: most
    // requests carry none of them, and then this is all it costs.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        // Every `Connection` line counts (a repeated header is one list).
        let plain = headers.get_all(header::CONNECTION).iter().all(|v| {
            v.as_bytes().eq_ignore_ascii_case(b"keep-alive")
                || v.as_bytes().eq_ignore_ascii_case(b"close")
        });
        if plain {
            // Only the header itself; `keep-alive` is removed below anyway.
        } else {
            // Split as bytes: a value with an obs-text byte elsewhere still names headers.
            let named: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok())
                .collect();
            for name in named {
                headers.remove(&name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    for name in [
        &KEEP_ALIVE,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHORIZATION,
        &header::PROXY_AUTHENTICATE,
    ] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

/// Appends the client address (when known: an application embedding the
/// gateway may not say) to `X-Forwarded-For`, and sets `-Proto` (`https` when
/// the client came over TLS) and `-Host` when no outer proxy set them.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    client_ip: Option<IpAddr>,
    host: Option<&HeaderValue>,
    over_tls: bool,
) {
    // One lookup per header (`entry`), not a look then an insert.
    if let Some(client_ip) = client_ip {
        let mut ip_buf = [0u8; 64];
        let ip = format_ip(client_ip, &mut ip_buf);
        match headers.entry(&X_FORWARDED_FOR) {
            // Every earlier hop, from every `X-Forwarded-For` line in order (a
            // repeated header is one comma-separated list, RFC 9110 §5.3), then ours.
            Entry::Occupied(mut earlier) => {
                let mut v = Vec::with_capacity(64);
                for prev in earlier.iter() {
                    if !prev.is_empty() {
                        v.extend_from_slice(prev.as_bytes());
                        v.extend_from_slice(b", ");
                    }
                }
                v.extend_from_slice(ip);
                if let Ok(xff) = HeaderValue::from_bytes(&v) {
                    // Replaces every earlier line with the one list.
                    earlier.insert(xff);
                }
            }
            Entry::Vacant(none) => {
                if let Ok(xff) = HeaderValue::from_bytes(ip) {
                    none.insert(xff);
                }
            }
        }
    }
    if let Entry::Vacant(none) = headers.entry(&X_FORWARDED_PROTO) {
        let proto = if over_tls { "https" } else { "http" };
        none.insert(HeaderValue::from_static(proto));
    }
    if let Some(host) = host {
        if let Entry::Vacant(none) = headers.entry(&X_FORWARDED_HOST) {
            none.insert(host.clone());
        }
    }
}

/// Whether the client used HTTPS, by `X-Forwarded-Proto` as it is sent on
/// (ours, or the first proxy's in front of us).
pub fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get(&X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|first| first.trim().eq_ignore_ascii_case("https"))
}

fn format_ip(ip: IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    match ip {
        // The usual client, written without `core::fmt`: its `Display` (each
        // octet through the formatter) was 2 % of a proxied request's
        // instructions (benches/instructions.sh).
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                let mut digits = itoa::Buffer::new();
                let d = digits.format(octet).as_bytes();
                buf[n..n + d.len()].copy_from_slice(d);
                n += d.len();
            }
            &buf[..n]
        }
        IpAddr::V6(_) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            // An IPv6 address is at most 45 bytes: always fits.
            let _ = write!(cursor, "{ip}");
            let n = cursor.position() as usize;
            &buf[..n]
        }
    }
}

/// The client's side of the proxy, where a redirect must point.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide<'a> {
    /// The host the client addressed (`Host` or `:authority`).
    pub host: Option<&'a HeaderValue>,
    /// The client used HTTPS (to us or to a proxy in front).
    pub https: bool,
    /// Where the gateway is mounted in an embedding application (`/letta`), or "".
    pub mount: &'a str,
}

/// Rewrites a `Location` so it points where the client can follow it:
///
/// - an absolute URL naming `backend` is moved to the address the client used:
///   Letta builds its trailing-slash 307s from `Host`, so with `preserve_host`
///   off, or behind another proxy, they would name the replica;
/// - a URL on the client's host keeps the client's scheme: Letta only sees
///   plain HTTP, so behind the HTTPS listener its `http://` would send the
///   client off TLS (it is never downgraded);
/// - when the gateway is mounted under a prefix in an application's router,
///   a location on the client's host gets the prefix back (Letta answered for
///   the path without it).
///
/// Other hosts are left alone.
pub fn rewrite_location(headers: &mut HeaderMap, backend: &BackendUrl, client: ClientSide<'_>) {
    let Some(loc) = headers.get(header::LOCATION).and_then(|l| l.to_str().ok()) else {
        return;
    };
    let host = client.host.and_then(|h| h.to_str().ok());
    let mount = client.mount;
    let client_scheme = if client.https { "https" } else { "http" };
    let rewritten = if let Some(rest) = loc.strip_prefix("//") {
        // A network-path reference (RFC 3986 §4.2): an authority follows and
        // the client resolves it with the scheme it used, so only the host
        // (and the mount) may need changing, never the scheme.
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let at_backend = authority.eq_ignore_ascii_case(backend.authority.as_str());
        let at_client = host.is_some_and(|h| authority.eq_ignore_ascii_case(h));
        match host {
            Some(h) if at_backend => Some(format!("//{h}{mount}{path}")),
            Some(_) if at_client && !mount.is_empty() => {
                Some(format!("//{authority}{mount}{path}"))
            }
            _ => None,
        }
    } else if let Some(path) = loc.strip_prefix('/') {
        // Relative to the host: only the mount is missing.
        (!mount.is_empty()).then(|| format!("{mount}/{path}"))
    } else {
        let Some((scheme, rest)) = loc.split_once("://") else {
            return;
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let at_backend = authority.eq_ignore_ascii_case(backend.authority.as_str())
            && scheme.eq_ignore_ascii_case(backend.scheme.as_str());
        // Only an http(s) URL is one to move; anything else before `://` is
        // another scheme or not a scheme at all (a relative path holding it).
        let web = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
        let at_client = web && host.is_some_and(|h| authority.eq_ignore_ascii_case(h));
        let upgrade = client.https && scheme.eq_ignore_ascii_case("http");
        match (host, at_backend, at_client) {
            (Some(h), true, _) => Some(format!("{client_scheme}://{h}{mount}{path}")),
            (Some(_), false, true) if upgrade || !mount.is_empty() => {
                let scheme = if upgrade { "https" } else { scheme };
                Some(format!("{scheme}://{authority}{mount}{path}"))
            }
            _ => None,
        }
    };
    if let Some(v) = rewritten.and_then(|r| HeaderValue::from_str(&r).ok()) {
        headers.insert(header::LOCATION, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("authorization", "Bearer tok"),
            ("user-agent", "Letta/Python 1.0"),
            ("x-stainless-os", "Linux"),
            ("x-project", "p"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["authorization", "user-agent", "x-project", "x-stainless-os"]
        );
        assert_eq!(h["authorization"], "Bearer tok");
    }

    #[test]
    fn every_connection_line_is_honoured() {
        // Found by fuzz/fuzz_targets/headers.rs: only the first `Connection`
        // line was read, so `keep-alive` there let a header the second one
        // names through to the backend.
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("connection", "x-secret-hop"),
            ("x-secret-hop", "1"),
            ("authorization", "Bearer tok"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["authorization"]);
        // A byte that is not text elsewhere in the value does not hide a name.
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-secret-hop, \xff").unwrap(),
        );
        h.append("x-secret-hop", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn forwarded_headers_append_and_keep_outer_values() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ]);
        let host = HeaderValue::from_static("proxy.example:8300");
        add_forwarded(
            &mut h,
            Some("127.0.0.1".parse().unwrap()),
            Some(&host),
            false,
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(forwarded_https(&h), "the outer proxy's scheme counts");
        assert_eq!(h["x-forwarded-host"], "proxy.example:8300");
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, Some("::1".parse().unwrap()), None, false);
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!forwarded_https(&h));
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, None, None, true);
        assert_eq!(h["x-forwarded-proto"], "https", "the HTTPS listener");
        // Found by fuzz/fuzz_targets/headers.rs: a second X-Forwarded-For line was dropped.
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", ""),
            ("x-forwarded-for", "198.51.100.2, 192.0.2.1"),
        ]);
        add_forwarded(&mut h, Some("10.0.0.7".parse().unwrap()), None, false);
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["203.0.113.9, 198.51.100.2, 192.0.2.1, 10.0.0.7"]
        );
        let mut h = map(&[("x-forwarded-for", "203.0.113.9")]);
        add_forwarded(&mut h, None, None, false);
        assert_eq!(
            h["x-forwarded-for"], "203.0.113.9",
            "no address known: unchanged"
        );
    }

    #[test]
    fn location_pointing_at_the_backend_is_rewritten_to_the_client_host() {
        let backend = BackendUrl::parse("http://127.0.0.1:8283").unwrap();
        let host = HeaderValue::from_static("localhost:8300");
        let client = ClientSide {
            host: Some(&host),
            https: false,
            mount: "",
        };
        let mut h = map(&[("location", "http://127.0.0.1:8283/v1/agents/?limit=5")]);
        rewrite_location(&mut h, &backend, client);
        assert_eq!(h["location"], "http://localhost:8300/v1/agents/?limit=5");
        for other in [
            "/v1/agents/",
            "http://elsewhere:1/x",
            "https://127.0.0.1:8283/x",
            "http://localhost:8300/v1/agents/",
        ] {
            let mut h = map(&[("location", other)]);
            rewrite_location(&mut h, &backend, client);
            assert_eq!(h["location"], other);
        }
    }

    #[test]
    fn only_http_urls_and_network_paths_name_a_host() {
        // Found by fuzz/fuzz_targets/headers.rs: `//host/x` names a host (RFC
        // 3986 §4.2); it was taken for a path and given the mount, so the
        // client was sent to `/letta//host/x` on the gateway.
        let backend = BackendUrl::parse("http://127.0.0.1:8283").unwrap();
        let host = HeaderValue::from_static("app.example");
        let client = ClientSide {
            host: Some(&host),
            https: true,
            mount: "/letta",
        };
        for (loc, want) in [
            ("//elsewhere.example/x", "//elsewhere.example/x"),
            (
                "//127.0.0.1:8283/v1/tools/",
                "//app.example/letta/v1/tools/",
            ),
            ("//app.example/v1/tools/", "//app.example/letta/v1/tools/"),
            ("/v1/tools/", "/letta/v1/tools/"),
            // Found by the same target: `://` inside a path, or after a word
            // that is not http(s), makes no URL to move.
            (
                "/v1/x?next=http://app.example/",
                "/letta/v1/x?next=http://app.example/",
            ),
            ("ftp://app.example/x", "ftp://app.example/x"),
        ] {
            let mut h = map(&[("location", loc)]);
            rewrite_location(&mut h, &backend, client);
            assert_eq!(h["location"], want, "{loc}");
        }
    }

    #[test]
    fn behind_https_redirects_stay_on_https() {
        let host = HeaderValue::from_static("letta.example");
        let client = ClientSide {
            host: Some(&host),
            https: true,
            mount: "",
        };
        let plain = BackendUrl::parse("http://10.0.0.5:8283").unwrap();
        let tls = BackendUrl::parse("https://letta-a.internal").unwrap();
        for (backend, loc, want) in [
            // Letta saw plain HTTP with the client's Host (preserve_host).
            (
                &plain,
                "http://letta.example/v1/agents/",
                "https://letta.example/v1/agents/",
            ),
            // preserve_host off: Letta named itself.
            (
                &plain,
                "http://10.0.0.5:8283/v1/tools/",
                "https://letta.example/v1/tools/",
            ),
            (
                &tls,
                "https://letta-a.internal/v1/tools/",
                "https://letta.example/v1/tools/",
            ),
            // Already HTTPS, relative, or another host: unchanged.
            (
                &plain,
                "https://letta.example/v1/x/",
                "https://letta.example/v1/x/",
            ),
            (&plain, "/v1/agents/", "/v1/agents/"),
            (&plain, "http://elsewhere/x", "http://elsewhere/x"),
        ] {
            let mut h = map(&[("location", loc)]);
            rewrite_location(&mut h, backend, client);
            assert_eq!(h["location"], want, "{loc}");
        }
    }

    #[test]
    fn a_mounted_gateway_keeps_its_prefix_in_redirects() {
        let backend = BackendUrl::parse("http://127.0.0.1:8283").unwrap();
        let host = HeaderValue::from_static("app.example");
        let client = ClientSide {
            host: Some(&host),
            https: false,
            mount: "/letta",
        };
        for (loc, want) in [
            (
                "http://app.example/v1/agents/",
                "http://app.example/letta/v1/agents/",
            ),
            (
                "https://app.example/v1/agents/",
                "https://app.example/letta/v1/agents/",
            ),
            (
                "http://127.0.0.1:8283/v1/agents/",
                "http://app.example/letta/v1/agents/",
            ),
            ("/v1/agents/", "/letta/v1/agents/"),
            ("http://elsewhere/v1/agents/", "http://elsewhere/v1/agents/"),
        ] {
            let mut h = map(&[("location", loc)]);
            rewrite_location(&mut h, &backend, client);
            assert_eq!(h["location"], want, "{loc}");
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "10.0.200.9",
            "::1",
            "::ffff:192.0.2.1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = [0u8; 64];
            assert_eq!(format_ip(ip, &mut buf), ip.to_string().as_bytes());
        }
    }
}
