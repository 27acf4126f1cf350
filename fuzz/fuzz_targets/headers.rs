//! The forwarding header rules (`proxy::headers`), on any headers:
//!
//! - `strip_hop_by_hop` leaves no hop-by-hop header and none that any
//!   `Connection` value names, and keeps every other header, values in order;
//! - `add_forwarded` keeps every earlier `X-Forwarded-For` entry in order and
//!   appends the client address, sets `X-Forwarded-Proto` (`https` over TLS),
//!   and keeps an outer proxy's `-Proto` and `-Host`;
//! - `rewrite_location` never panics, leaves a `Location` naming another host
//!   (or no http(s) URL at all) alone, moves one naming the backend to the
//!   client's host and scheme, gives a path (`/x`) only the mount, keeps a
//!   network-path reference (`//host/x`) one, and never turns an `https://`
//!   location into `http://`.
//!
//! Input: a request in the text form of `letta_proxy_fuzz`; options `@ip:`
//! (client address), `@backend:` (backend URL, `http://` or `https://`),
//! `@mount:` (the gateway's mount prefix), `@tls:` (`1`: the client came over TLS).

#![no_main]

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName};
use letta_proxy::config::BackendUrl;
use letta_proxy::proxy::headers::{
    add_forwarded, forwarded_https, rewrite_location, strip_hop_by_hop, ClientSide,
};
use letta_proxy_fuzz::TextRequest;
use libfuzzer_sys::fuzz_target;

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
];

fn strip(before: &HeaderMap) {
    let mut h = before.clone();
    strip_hop_by_hop(&mut h);
    let named: Vec<HeaderName> = before
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok())
        .collect();
    for n in HOP_BY_HOP {
        assert!(!h.contains_key(*n), "{n} forwarded");
    }
    for n in &named {
        assert!(!h.contains_key(n), "{n}, named by Connection, forwarded");
    }
    for name in before.keys() {
        if HOP_BY_HOP.contains(&name.as_str()) || named.contains(name) {
            continue;
        }
        let was: Vec<_> = before.get_all(name).iter().collect();
        let is: Vec<_> = h.get_all(name).iter().collect();
        assert_eq!(was, is, "{name} changed");
    }
    assert!(
        h.keys().all(|n| before.contains_key(n)),
        "a header appeared"
    );
}

fn forwarded(
    before: &HeaderMap,
    ip: Option<IpAddr>,
    host: Option<&http::HeaderValue>,
    tls: bool,
) -> bool {
    let mut h = before.clone();
    add_forwarded(&mut h, ip, host, tls);
    let xff = |m: &HeaderMap| -> Vec<String> {
        m.get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split(',')
                    .map(|e| e.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .filter(|e| !e.is_empty())
            .collect()
    };
    let mut want = xff(before);
    if let Some(ip) = ip {
        want.push(ip.to_string());
    }
    assert_eq!(xff(&h), want, "X-Forwarded-For entries");
    assert!(h.contains_key("x-forwarded-proto"));
    if !before.contains_key("x-forwarded-proto") {
        assert_eq!(forwarded_https(&h), tls, "our own X-Forwarded-Proto");
    }
    for outer in ["x-forwarded-proto", "x-forwarded-host"] {
        if before.contains_key(outer) {
            assert_eq!(
                before.get_all(outer).iter().collect::<Vec<_>>(),
                h.get_all(outer).iter().collect::<Vec<_>>(),
                "an outer proxy's {outer} replaced"
            );
        }
    }
    forwarded_https(&h)
}

fn location(before: &HeaderMap, backend: &BackendUrl, client: ClientSide<'_>) {
    let mut h = before.clone();
    rewrite_location(&mut h, backend, client);
    let (Some(old), Some(new)) = (before.get(header::LOCATION), h.get(header::LOCATION)) else {
        return;
    };
    let (Ok(old), Ok(new)) = (old.to_str(), new.to_str()) else {
        return;
    };
    let client_host = client.host.and_then(|v| v.to_str().ok());
    if let Some(rest) = old.strip_prefix("//") {
        // A network-path reference: a host follows, the scheme stays the client's.
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let at_backend = authority.eq_ignore_ascii_case(backend.authority.as_str());
        let at_client = client_host.is_some_and(|c| authority.eq_ignore_ascii_case(c));
        if !at_backend && !at_client {
            assert_eq!(
                old, new,
                "a network-path Location naming another host rewritten"
            );
        }
        assert!(new.starts_with("//"), "{old} changed kind: {new}");
        if let (true, Some(c)) = (at_backend, client_host) {
            let want = format!("//{c}{}{path}", client.mount);
            if http::HeaderValue::from_str(&want).is_ok() {
                assert_eq!(new, want);
            }
        }
        return;
    }
    if let Some(path) = old.strip_prefix('/') {
        // A path on the client's host (whatever it holds, even `://`): only
        // the mount may be added.
        let want = match client.mount {
            "" => old.to_string(),
            mount => format!("{mount}/{path}"),
        };
        if http::HeaderValue::from_str(&want).is_ok() {
            assert_eq!(new, want, "a path-absolute Location");
        }
        return;
    }
    let Some((scheme, rest)) = old.split_once("://") else {
        assert_eq!(old, new, "a Location with no scheme rewritten");
        return;
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        assert_eq!(old, new, "a Location that is not an http(s) URL rewritten");
        return;
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let at_backend = scheme.eq_ignore_ascii_case(backend.scheme.as_str())
        && authority.eq_ignore_ascii_case(backend.authority.as_str());
    let at_client = client_host.is_some_and(|c| authority.eq_ignore_ascii_case(c));
    if !at_backend && !at_client {
        assert_eq!(old, new, "a Location naming another host rewritten");
    }
    if scheme.eq_ignore_ascii_case("https") {
        assert!(!new.starts_with("http://"), "{old} downgraded to {new}");
    }
    if at_backend {
        if let Some(c) = client_host {
            let s = if client.https { "https" } else { "http" };
            let want = format!("{s}://{c}{}{path}", client.mount);
            if http::HeaderValue::from_str(&want).is_ok() {
                assert_eq!(new, want);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let req = TextRequest::parse(data);
    let headers = req.header_map();
    strip(&headers);
    let ip: Option<IpAddr> = req.option("ip").and_then(|ip| ip.parse().ok());
    let host = headers.get(header::HOST);
    let tls = req.option("tls") == Some("1");
    let https = forwarded(&headers, ip, host, tls);
    let backend = req
        .option("backend")
        .and_then(|b| BackendUrl::parse(b).ok())
        .unwrap_or_else(|| BackendUrl::parse("http://127.0.0.1:8283").expect("a valid URL"));
    let mount = req.option("mount").unwrap_or("");
    location(&headers, &backend, ClientSide { host, https, mount });
});
