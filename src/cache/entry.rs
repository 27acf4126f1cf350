//! A stored answer, its wire format in Redis, and the response built from it.
//!
//! The Redis form is a small length-prefixed binary record (version byte first)
//! rather than JSON: bodies are bytes, and decoding a hit must be cheap. A
//! record that does not decode is a miss, never an error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use super::tags::Tag;
use crate::body::Full;

const FORMAT: u8 = 1;

/// Response headers never stored: per-exchange or per-client values.
const NOT_STORED: &[&str] = &["x-request-id", "date", "age", "x-cache", "set-cookie"];

/// `x-cache`, on every answer to a cacheable request.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// Set on a write answered from memory without reaching Letta.
pub static SUPPRESSED: HeaderName = HeaderName::from_static("x-letta-proxy-suppressed");

pub static HIT: HeaderValue = HeaderValue::from_static("HIT");
pub static MISS: HeaderValue = HeaderValue::from_static("MISS");
pub static BYPASS: HeaderValue = HeaderValue::from_static("BYPASS");

/// Headers every answer from an entry gets on top of the stored ones
/// (`x-cache` and `age` here, `x-request-id` by the request-id layer on its
/// way out): room is kept for them so that the clone an answer starts from
/// takes them without growing (and so rehashing) its table.
const ADDED_ON_ANSWER: usize = 3;

/// Distinguishes entries stored under the same key over time (tag index bookkeeping).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A cached answer.
#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Unix milliseconds when the backend's answer was stored (for `age`).
    pub stored_at_ms: u64,
    pub ttl: Duration,
    pub tags: Box<[Tag]>,
    /// For a remembered write: the hash of the request body it answered.
    pub request_hash: Option<[u8; 32]>,
    /// Local identity of this entry value (not stored in Redis).
    pub id: u64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The headers worth keeping from a backend answer.
pub fn kept_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(h.len());
    for (k, v) in h {
        if !NOT_STORED.contains(&k.as_str()) {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

impl Entry {
    pub fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        ttl: Duration,
        tags: Vec<Tag>,
    ) -> Entry {
        headers.reserve(ADDED_ON_ANSWER);
        Entry {
            status,
            headers,
            body,
            stored_at_ms: now_ms(),
            ttl,
            tags: tags.into_boxed_slice(),
            request_hash: None,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Time left to live, `None` when already expired.
    pub fn remaining(&self, now_ms: u64) -> Option<Duration> {
        let age = Duration::from_millis(now_ms.saturating_sub(self.stored_at_ms));
        self.ttl.checked_sub(age).filter(|d| !d.is_zero())
    }

    /// Memory charged to the in-process tier.
    pub fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        let tags: usize = self.tags.iter().map(|t| t.len() + 24).sum();
        (self.body.len() + headers + tags + 160).min(u32::MAX as usize) as u32
    }

    /// The client's response: stored status, headers and body, plus `x-cache`
    /// (`HIT` for cached reads) and `age`.
    pub fn to_response(&self, x_cache: Option<&HeaderValue>) -> Response<Full> {
        let mut r = Response::new(Full::new(self.body.clone()));
        *r.status_mut() = self.status;
        // A clone copies the stored map's table as it is: no stored header is
        // hashed again, as appending each to a new map did.
        let h = r.headers_mut();
        *h = self.headers.clone();
        if let Some(x) = x_cache {
            h.insert(X_CACHE.clone(), x.clone());
        }
        let age = now_ms().saturating_sub(self.stored_at_ms) / 1000;
        h.insert(header::AGE, HeaderValue::from(age));
        r
    }

    /// The Redis record.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = BytesMut::with_capacity(self.body.len() + 512);
        b.put_u8(FORMAT);
        b.put_u16(self.status.as_u16());
        b.put_u64(self.stored_at_ms);
        b.put_u64(self.ttl.as_millis() as u64);
        b.put_u16(self.headers.len() as u16);
        for (k, v) in &self.headers {
            b.put_u16(k.as_str().len() as u16);
            b.put_slice(k.as_str().as_bytes());
            b.put_u32(v.len() as u32);
            b.put_slice(v.as_bytes());
        }
        b.put_u16(self.tags.len() as u16);
        for t in self.tags.iter() {
            b.put_u16(t.len() as u16);
            b.put_slice(t.as_bytes());
        }
        b.put_u32(self.body.len() as u32);
        b.put_slice(&self.body);
        b.to_vec()
    }

    /// Decodes a Redis record; `None` for anything malformed or from another version.
    pub fn decode(raw: Bytes) -> Option<Entry> {
        let mut b = raw;
        if b.remaining() < 1 + 2 + 8 + 8 + 2 || b.get_u8() != FORMAT {
            return None;
        }
        let status = StatusCode::from_u16(b.get_u16()).ok()?;
        let stored_at_ms = b.get_u64();
        let ttl = Duration::from_millis(b.get_u64());
        let n = b.get_u16() as usize;
        let mut headers = HeaderMap::with_capacity(n + ADDED_ON_ANSWER);
        for _ in 0..n {
            let name = take(&mut b, 2)?;
            let value = take(&mut b, 4)?;
            headers.append(
                HeaderName::from_bytes(&name).ok()?,
                HeaderValue::from_maybe_shared(value).ok()?,
            );
        }
        if b.remaining() < 2 {
            return None;
        }
        let n = b.get_u16() as usize;
        let mut tags = Vec::with_capacity(n);
        for _ in 0..n {
            let t = take(&mut b, 2)?;
            tags.push(Arc::from(std::str::from_utf8(&t).ok()?));
        }
        let body = take(&mut b, 4)?;
        if b.has_remaining() {
            return None;
        }
        Some(Entry {
            status,
            headers,
            body,
            stored_at_ms,
            ttl,
            tags: tags.into_boxed_slice(),
            request_hash: None,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }
}

/// A length-prefixed field (`width` = 2 or 4 bytes of length), zero-copy.
fn take(b: &mut Bytes, width: usize) -> Option<Bytes> {
    if b.remaining() < width {
        return None;
    }
    let len = if width == 2 {
        b.get_u16() as usize
    } else {
        b.get_u32() as usize
    };
    (b.remaining() >= len).then(|| b.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h.append("x-multi", "1".parse().unwrap());
        h.append("x-multi", "2".parse().unwrap());
        Entry::new(
            StatusCode::OK,
            h,
            Bytes::from_static(b"{\"id\":\"x\"}"),
            Duration::from_secs(30),
            vec![Arc::from("agent-x"), Arc::from("c:agents")],
        )
    }

    #[test]
    fn redis_records_round_trip() {
        let e = sample();
        let d = Entry::decode(Bytes::from(e.encode())).unwrap();
        assert_eq!(d.status, e.status);
        assert_eq!(d.headers, e.headers);
        assert_eq!(d.body, e.body);
        assert_eq!(d.stored_at_ms, e.stored_at_ms);
        assert_eq!(d.ttl, e.ttl);
        assert_eq!(d.tags, e.tags);
    }

    #[test]
    fn malformed_records_are_misses() {
        let raw = sample().encode();
        for cut in [0, 1, 5, 20, raw.len() - 1] {
            assert!(
                Entry::decode(Bytes::copy_from_slice(&raw[..cut])).is_none(),
                "cut {cut}"
            );
        }
        let mut v2 = raw.clone();
        v2[0] = 2;
        assert!(Entry::decode(Bytes::from(v2)).is_none());
        let mut longer = raw;
        longer.push(0);
        assert!(Entry::decode(Bytes::from(longer)).is_none());
    }

    #[test]
    fn per_exchange_headers_are_not_kept_and_hits_say_so() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "abc".parse().unwrap());
        h.insert("date", "now".parse().unwrap());
        h.insert("x-letta-proxy-backend", "be1".parse().unwrap());
        let kept = kept_headers(&h);
        assert_eq!(kept.len(), 1);
        let e = sample();
        let r = e.to_response(Some(&HIT));
        assert_eq!(r.headers()["x-cache"], "HIT");
        assert_eq!(r.headers()["age"], "0");
        assert_eq!(r.headers().get_all("x-multi").iter().count(), 2);
    }

    #[test]
    fn remaining_life() {
        let e = sample();
        assert_eq!(e.remaining(e.stored_at_ms), Some(Duration::from_secs(30)));
        assert!(e.remaining(e.stored_at_ms + 30_000).is_none());
    }
}
