//! The request hygiene rules (`gateway::hygiene::check` and `check_path`), on
//! any request target and headers:
//!
//! - never panic;
//! - a path they accept has no dot segment, no backslash, no NUL, and keeps
//!   its segments when Letta's server percent-decodes it (no encoded slash),
//!   so the proxy and Letta read the same path;
//! - a request they accept has at most one `Host`, agrees with its absolute
//!   target's authority, and fits `max_header_size`.
//!
//! Input: a request in the text form of `letta_proxy_fuzz`; option `@max:`
//! sets the header size limit (default 64 KiB).

#![no_main]

use http::{header, Request};
use letta_proxy::gateway::hygiene::{check, check_path};
use letta_proxy_fuzz::{percent_decode, TextRequest};
use libfuzzer_sys::fuzz_target;

/// Checks what an accepted path must be.
fn accepted_path(path: &str) {
    assert!(!path.contains('\\'), "{path:?}");
    let decoded = percent_decode(path);
    assert_eq!(
        decoded.split('/').count(),
        path.split('/').count(),
        "{path:?} gains segments when decoded: {decoded:?}"
    );
    for seg in decoded.split('/') {
        assert!(
            seg != "." && seg != "..",
            "{path:?} has a dot segment once decoded"
        );
    }
    // Raw control bytes never get this far (hyper refuses them in a target);
    // an encoded NUL or backslash must not.
    assert!(path.contains('\0') || !decoded.contains('\0'), "{path:?}");
    assert!(!decoded.contains('\\'), "{path:?}");
}

fuzz_target!(|data: &[u8]| {
    let req = TextRequest::parse(data);
    // The path alone, whatever the target looks like.
    if let Ok(target) = std::str::from_utf8(req.target) {
        let path = target.split('?').next().unwrap_or(target);
        if check_path(path).is_ok() {
            accepted_path(path);
        }
    }
    // The whole request, as hyper would hand it over.
    let mut b = Request::builder().uri(req.target);
    if let Ok(m) = http::Method::from_bytes(req.method) {
        b = b.method(m);
    }
    let Ok(mut request) = b.body(()) else {
        return;
    };
    *request.headers_mut() = req.header_map();
    let max = req
        .option("max")
        .and_then(|m| m.parse().ok())
        .unwrap_or(64 << 10);
    if check(&request, max).is_ok() {
        let h = request.headers();
        let hosts: Vec<_> = h.get_all(header::HOST).iter().collect();
        assert!(hosts.len() <= 1, "two Host headers accepted");
        if let (Some(host), Some(authority)) = (hosts.first(), request.uri().authority()) {
            assert!(host
                .as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes()));
        }
        let size: usize = h.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        assert!(
            size <= max,
            "{size} bytes of headers accepted under a {max} limit"
        );
        accepted_path(request.uri().path());
    }
});
