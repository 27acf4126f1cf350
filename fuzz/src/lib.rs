//! What the fuzz targets share: a plain-text form of a request, so the seed
//! corpus under `fuzz/corpus/` can be written and read by people, and a
//! percent-decoder that decodes paths the way Letta's server does.
//!
//! The text form of a request:
//!
//! ```text
//! GET /v1/agents/agent-1/messages?limit=5
//! authorization: Bearer secret
//! user-agent: letta-client/1.0.0
//! @ip: 10.0.0.7
//! ```
//!
//! The first line is the method and the request target; each further line a
//! header (`name: value`, split at the first colon), or, when it starts with
//! `@`, an option of the target (which client address, which backend...).
//! Lines end with `\n` (a `\r` before it is dropped), so no value can hold a
//! line break, as on the wire.

#![forbid(unsafe_code)]

use http::{HeaderMap, HeaderName, HeaderValue};

/// A request in the text form above, as borrowed bytes.
#[derive(Debug, Default)]
pub struct TextRequest<'a> {
    pub method: &'a [u8],
    pub target: &'a [u8],
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    pub options: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> TextRequest<'a> {
    /// Parses `data`; never fails (missing parts are empty).
    pub fn parse(data: &'a [u8]) -> TextRequest<'a> {
        let mut lines = data
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let mut req = TextRequest::default();
        if let Some(first) = lines.next() {
            let mut parts = first.splitn(2, |&b| b == b' ');
            req.method = parts.next().unwrap_or_default();
            req.target = parts.next().unwrap_or_default();
        }
        for line in lines {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
            match name.strip_prefix(b"@") {
                Some(option) => req.options.push((option, value)),
                None => req.headers.push((name, value)),
            }
        }
        req
    }

    /// The option `name`, as text.
    pub fn option(&self, name: &str) -> Option<&'a str> {
        self.options
            .iter()
            .find(|(n, _)| *n == name.as_bytes())
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The headers that are valid on the wire, in order (what hyper would
    /// hand the proxy; it refuses the others before any rule sees them).
    pub fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                map.append(n, v);
            }
        }
        map
    }
}

/// `value` without the spaces and tabs around it (RFC 9110 §5.5).
fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    &value[start..end.max(start)]
}

/// Decodes every `%XX` escape of `path`, as uvicorn does before Letta routes a
/// request (`scope["path"]`); malformed escapes are kept as they are.
pub fn percent_decode(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_form_parses() {
        let r = TextRequest::parse(b"GET /v1/x?a=1\r\nhost: a:1\n@ip: ::1\nbad line\nx-e:\n");
        assert_eq!(r.method, b"GET");
        assert_eq!(r.target, b"/v1/x?a=1");
        assert_eq!(r.headers, vec![(&b"host"[..], &b"a:1"[..]), (b"x-e", b"")]);
        assert_eq!(r.option("ip"), Some("::1"));
    }

    #[test]
    fn paths_decode_like_uvicorn() {
        assert_eq!(percent_decode("/v1/a%2Fb%20c%zz%4"), "/v1/a/b c%zz%4");
        assert_eq!(percent_decode("%41"), "A");
    }
}
