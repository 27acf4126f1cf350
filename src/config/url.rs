//! A backend's base URL, parsed once: `http://host[:port]` or `https://host[:port]`.

use http::uri::{Authority, Scheme};
use http::Uri;

/// Scheme and authority of a backend; requests keep their own path and query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    pub scheme: Scheme,
    /// As written in the config (the port may be implied by the scheme).
    pub authority: Authority,
    /// The port to connect to: the URL's, else 80 for `http`, 443 for `https`.
    pub port: u16,
}

impl BackendUrl {
    /// Parses `http://host[:port][/]` or `https://host[:port][/]`. Paths,
    /// credentials and other schemes are refused: requests keep their own path.
    pub fn parse(s: &str) -> Result<BackendUrl, String> {
        let uri: Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
        let (scheme, default_port) = match uri.scheme_str() {
            Some("http") => (Scheme::HTTP, 80),
            Some("https") => (Scheme::HTTPS, 443),
            Some(other) => {
                return Err(format!(
                    "scheme {other:?} is not supported (use http:// or https://)"
                ))
            }
            None => return Err("missing scheme (use http://host:port)".into()),
        };
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
        let port = authority.port_u16().unwrap_or(default_port);
        Ok(BackendUrl {
            scheme,
            authority,
            port,
        })
    }

    /// Whether requests to this backend go over TLS (`https://`).
    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }

    /// The host without IPv6 brackets: what to resolve, and the default TLS server name.
    pub fn host(&self) -> &str {
        let h = self.authority.host();
        h.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_http_and_https_and_refuses_the_rest() {
        assert!(BackendUrl::parse("http://127.0.0.1:8283").is_ok());
        assert!(BackendUrl::parse("http://letta-1:8283/").is_ok());
        assert!(BackendUrl::parse("https://letta-1:8443/").is_ok());
        for bad in [
            "ftp://x:1",
            "127.0.0.1:8283",
            "http://x:1/v1",
            "https://x/v1",
            "http://u:p@x:1",
            "https://u@x",
            "nope",
        ] {
            assert!(BackendUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_port_defaults_to_the_schemes() {
        let u = BackendUrl::parse("https://letta.internal").unwrap();
        assert_eq!(
            (u.port, u.is_tls(), u.host()),
            (443, true, "letta.internal")
        );
        let u = BackendUrl::parse("http://letta.internal").unwrap();
        assert_eq!((u.port, u.is_tls()), (80, false));
        let u = BackendUrl::parse("https://[::1]:8443").unwrap();
        assert_eq!((u.port, u.host()), (8443, "::1"));
        assert_eq!(u.authority.as_str(), "[::1]:8443");
    }
}
