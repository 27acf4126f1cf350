//! A backend's base URL, parsed once: `http://host[:port]` (port 80 when absent).

use http::uri::{Authority, Scheme};
use http::Uri;

/// Scheme and authority of a backend; requests keep their own path and query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl BackendUrl {
    /// Parses `http://host[:port][/]`; without a port, 80. The authority kept
    /// always names the port, so it can be connected to as it is. HTTPS and
    /// paths are refused: the proxy speaks plain HTTP/1.1 to Letta replicas on a
    /// private network.
    pub fn parse(s: &str) -> Result<BackendUrl, String> {
        let uri: Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(
                    "https:// backends are not supported yet: TLS to backends is \
                            not built; use http:// on a private network"
                        .into(),
                )
            }
            Some(other) => return Err(format!("scheme {other:?} is not supported (use http://)")),
            None => return Err("missing scheme (use http://host:port)".into()),
        }
        let authority = uri.authority().cloned().ok_or("missing host")?;
        if authority.host().is_empty() {
            return Err("missing host".into());
        }
        if authority.as_str().contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") | Some("/") => {}
            Some(p) => {
                return Err(format!(
                    "a path ({p:?}) is not supported; give only scheme, host and port"
                ))
            }
        }
        let authority = match authority.port_u16() {
            Some(_) => authority,
            None => format!("{}:80", authority.host())
                .parse()
                .map_err(|e| format!("invalid host: {e}"))?,
        };
        Ok(BackendUrl {
            scheme: Scheme::HTTP,
            authority,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_http_and_refuses_the_rest() {
        assert!(BackendUrl::parse("http://127.0.0.1:8283").is_ok());
        assert!(BackendUrl::parse("http://letta-1:8283/").is_ok());
        for bad in [
            "https://x:1",
            "127.0.0.1:8283",
            "http://x:1/v1",
            "http://u:p@x:1",
            "nope",
        ] {
            assert!(BackendUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_missing_port_is_80() {
        let u = BackendUrl::parse("http://letta").unwrap();
        assert_eq!(u.authority.as_str(), "letta:80");
        let u = BackendUrl::parse("http://[::1]/").unwrap();
        assert_eq!(u.authority.as_str(), "[::1]:80");
        let u = BackendUrl::parse("http://letta:8283").unwrap();
        assert_eq!(u.authority.as_str(), "letta:8283");
        let e = BackendUrl::parse("https://letta:443").unwrap_err();
        assert!(e.contains("not supported yet"), "{e}");
    }
}
