//! `x-request-id`: kept when the client sent one, generated otherwise (by
//! tower-http's `SetRequestId` with this generator), returned on the answer and
//! sent to the backend.

use http::{HeaderName, HeaderValue, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

/// `x-request-id`.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// 32 lowercase hex digits (128 random bits) from a per-thread RNG: no lock,
/// no syscall per request (a UUID crate would add a dependency for the same).
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomId;

impl MakeRequestId for RandomId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        Some(RequestId::new(new_request_id()))
    }
}

/// A fresh request id.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let raw: [u8; 16] = crate::proxy::with_rng(rand::Rng::random);
    let mut out = [0u8; 32];
    for (i, b) in raw.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 0xf) as usize];
    }
    // Shared from the start: the id is cloned onto the response, the backend's
    // request and the log record, and a copied buffer would be moved to a
    // shared one (a second allocation) on its first clone.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out))
        .expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_32_hex_digits_and_differ() {
        let a = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a, new_request_id());
    }
}
