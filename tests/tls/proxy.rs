//! The proxy itself over TLS, on real loopback sockets: its HTTPS listener
//! (HTTP/2 and HTTP/1.1 by ALPN, curl as a real client, SSE, mTLS, the
//! certificate renewed under an open stream, the redirect listener) and
//! `https://` backends (a trusted one over HTTP/2 with its health probes, an
//! untrusted one answered 502).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use letta_proxy::config::{Config, ServerTlsConfig};
use letta_proxy::standin::StandIn;
use letta_proxy::tls::ServerTls;
use tokio::net::{TcpListener, TcpStream};

use super::certs::{Issued, Pki};
use super::support::{self, eventually, TestProxy, AGENT};
use super::{client_config, init, tls_connect, BOTH};

const WITHIN: Duration = Duration::from_secs(20);

/// A config for `backends` (TOML `[[backends]]` entries) with `extra` before them.
fn config(extra: &str, backends: &str) -> Config {
    let text = format!(
        "[health]\nenabled = false\n[cache]\nenabled = false\n[server]\nshutdown_grace = \"5s\"\n{extra}\n{backends}"
    );
    Config::from_toml(&text, "test config", std::iter::empty()).expect("valid test config")
}

fn plain_backend(s: &StandIn) -> String {
    format!(
        "[[backends]]\nname = \"{}\"\nurl = \"{}\"\n",
        s.name,
        s.url()
    )
}

fn with_listener_tls(mut c: Config, leaf: &Issued, client_ca: Option<&Path>) -> Config {
    c.server.tls = Some(ServerTlsConfig {
        cert_file: leaf.cert_file.clone(),
        key_file: leaf.key_file.clone(),
        client_ca_file: client_ca.map(Path::to_path_buf),
        redirect_http_listen: None,
    });
    c
}

/// The proxy on an HTTPS listener (a certificate for `localhost` from a new
/// PKI named `name`) in front of one plain stand-in, `be1`.
async fn https_proxy(name: &str) -> (Pki, StandIn, TestProxy) {
    init();
    let pki = Pki::new(name);
    let leaf = pki.server("proxy", &[]);
    let s = StandIn::start("be1").await.unwrap();
    let proxy = TestProxy::start(with_listener_tls(
        config("", &plain_backend(&s)),
        &leaf,
        None,
    ))
    .await;
    (pki, s, proxy)
}

/// An HTTP/2 or HTTP/1.1 connection to the proxy's HTTPS listener, by `alpn`.
enum Conn {
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
}

impl Conn {
    async fn open(
        addr: std::net::SocketAddr,
        pki: &Pki,
        alpn: &[u8],
        cert: Option<&Issued>,
    ) -> Conn {
        let stream = tls_connect(addr, client_config(pki.ca_file(), &[alpn], cert, BOTH))
            .await
            .expect("TLS handshake with the proxy");
        let io = TokioIo::new(stream);
        if alpn == b"h2" {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Conn::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Conn::H1(send)
        }
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        port: u16,
    ) -> hyper::Result<http::Response<Incoming>> {
        let builder = Request::builder().method(method);
        match self {
            Conn::H2(s) => {
                let req = builder
                    .uri(format!("https://localhost:{port}{path}"))
                    .body(Empty::new())
                    .unwrap();
                s.send_request(req).await
            }
            Conn::H1(s) => {
                let req = builder
                    .uri(path)
                    .header("host", format!("localhost:{port}"))
                    .body(Empty::new())
                    .unwrap();
                s.send_request(req).await
            }
        }
    }
}

async fn json(body: Incoming) -> serde_json::Value {
    serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap()
}

// ------------------------------------------------------------ the HTTPS listener

#[tokio::test]
async fn https_listener_speaks_h2_and_http11_and_tells_letta_the_client_used_https() {
    let (pki, _backend, proxy) = https_proxy("listener").await;
    let port = proxy.addr.port();

    for (alpn, version) in [
        (&b"h2"[..], Version::HTTP_2),
        (b"http/1.1", Version::HTTP_11),
    ] {
        let mut conn = Conn::open(proxy.addr, &pki, alpn, None).await;
        let resp = conn.send(Method::GET, "/__headers", port).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.version(),
            version,
            "ALPN {}",
            String::from_utf8_lossy(alpn)
        );
        assert_eq!(resp.headers()["x-letta-proxy-backend"], "be1");
        let seen = json(resp.into_body()).await;
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
        assert_eq!(seen["headers"]["host"], format!("localhost:{port}"));

        // Letta's trailing-slash redirect (built from the Host it saw, over
        // plain HTTP) must keep the client on HTTPS.
        let resp = conn
            .send(Method::GET, "/v1/agents?limit=2", port)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(
            resp.headers()["location"],
            format!("https://localhost:{port}/v1/agents/?limit=2")
        );
    }

    let text = proxy.gateway.metrics().render();
    let not_after = text
        .lines()
        .find_map(|l| l.strip_prefix("letta_proxy_tls_certificate_not_after_timestamp_seconds "))
        .expect("the certificate's expiry is exported (alerts.yml uses it)");
    let cert = proxy.gateway.stats().tls.unwrap().certificate;
    assert_eq!(not_after.parse::<f64>().unwrap(), cert.not_after as f64);
    for alpn in ["h2", "http/1.1"] {
        let line =
            format!("letta_proxy_tls_handshakes_total{{alpn=\"{alpn}\",tls_version=\"1.3\"}} 1");
        assert!(text.contains(&line), "{line} in:\n{text}");
    }
}

/// An idle HTTPS keep-alive connection is parked (hyper's buffers freed,
/// the TLS session kept) and serves the next request on the same session.
#[tokio::test]
async fn an_idle_https_connection_is_parked_and_keeps_its_tls_session() {
    let (pki, _backend, proxy) = https_proxy("parked").await;
    let port = proxy.addr.port();
    let mut conn = Conn::open(proxy.addr, &pki, b"http/1.1", None).await;
    for round in 1..=2 {
        let resp = conn.send(Method::GET, "/__headers", port).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "round {round}");
        assert_eq!(
            json(resp.into_body()).await["headers"]["x-forwarded-proto"],
            "https"
        );
        let metrics = proxy.gateway.metrics();
        eventually(WITHIN, "the idle HTTPS connection parked", || async {
            metrics.client_connections_idle.get() == 1
        })
        .await;
    }
    let text = proxy.gateway.metrics().render();
    let one = "letta_proxy_tls_handshakes_total{alpn=\"http/1.1\",tls_version=\"1.3\"} 1";
    assert!(
        text.contains(one),
        "one handshake for both requests:\n{text}"
    );
}

/// reqwest (rustls, the CA added by hand) negotiates h2 by ALPN, as the
/// Letta SDKs' HTTP stacks do.
#[tokio::test]
async fn reqwest_gets_http2_from_the_https_listener() {
    let (pki, _backend, proxy) = https_proxy("reqwest").await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.ca_file()).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .resolve("localhost", proxy.addr)
        .no_proxy()
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/v1/agents/{AGENT}", proxy.addr.port());
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.headers()["x-letta-proxy-backend"], "be1");
}

#[tokio::test]
async fn https_listener_survives_plain_http_and_counts_it() {
    let (pki, s, proxy) = https_proxy("plain").await;

    // Plain HTTP to the HTTPS port: the handshake fails, nothing is forwarded.
    let plain = support::client().get(proxy.url("/v1/tools/")).send().await;
    assert!(plain.is_err(), "plain HTTP must not get an answer");
    eventually(WITHIN, "the failure is counted as malformed", || async {
        proxy
            .gateway
            .metrics()
            .render()
            .contains("letta_proxy_tls_handshake_failures_total{reason=\"malformed\"} 1")
    })
    .await;
    assert_eq!(s.stats.requests(), 0);

    // The listener goes on.
    let mut conn = Conn::open(proxy.addr, &pki, b"h2", None).await;
    let resp = conn
        .send(Method::GET, "/-/ready", proxy.addr.port())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

// curl blocks its thread: the proxy runs on the other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http2_gets_answers_and_an_sse_stream_through_the_https_listener() {
    let (pki, _backend, proxy) = https_proxy("curl").await;
    let port = proxy.addr.port();
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--http2", "--max-time", "20", "--noproxy", "*"])
            .arg("--cacert")
            .arg(pki.ca_file())
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(args)
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let head = curl(&[
        "-o",
        "/dev/null",
        "-D",
        "-",
        &format!("https://localhost:{port}/v1/agents/{AGENT}"),
    ]);
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert!(head.contains("x-letta-proxy-backend: be1"), "{head}");

    let stream = curl(&[
        "-N",
        "-X",
        "POST",
        &format!(
            "https://localhost:{port}/v1/agents/{AGENT}/messages/stream?events=4&interval_ms=20"
        ),
    ]);
    assert_eq!(
        stream.matches("data: ").count(),
        5,
        "4 events and [DONE]:\n{stream}"
    );
    assert!(stream.trim_end().ends_with("data: [DONE]"), "{stream}");
}

#[tokio::test]
async fn sse_over_https_h2_arrives_event_by_event() {
    let (pki, s, proxy) = https_proxy("sse").await;
    let mut conn = Conn::open(proxy.addr, &pki, b"h2", None).await;
    let path = format!("/v1/agents/{AGENT}/messages/stream?events=40&interval_ms=100");
    let resp = conn
        .send(Method::POST, &path, proxy.addr.port())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = loop {
        let frame = body.frame().await.expect("a frame").unwrap();
        if let Ok(data) = frame.into_data() {
            break data;
        }
    };
    assert!(
        String::from_utf8_lossy(&first).starts_with("data: "),
        "{first:?}"
    );
    // The first event is here while the backend is still streaming: nothing
    // waited for the end.
    assert_eq!(
        s.stats.active(),
        1,
        "the stream is still open at the backend"
    );
    assert_eq!(
        proxy.total_in_flight(),
        1,
        "and counted in flight until it ends"
    );
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
    eventually(WITHIN, "in flight back to 0", || async {
        proxy.total_in_flight() == 0
    })
    .await;
}

#[tokio::test]
async fn mtls_listener_serves_clients_with_a_certificate_and_refuses_the_rest() {
    init();
    let pki = Pki::new("mtls");
    let leaf = pki.server("proxy", &[]);
    let good = pki.client("client-good");
    let strangers = Pki::new("strangers");
    let stranger = strangers.client("client-stranger");
    let s = StandIn::start("be1").await.unwrap();
    let proxy = TestProxy::start(with_listener_tls(
        config("", &plain_backend(&s)),
        &leaf,
        Some(pki.ca_file()),
    ))
    .await;
    let port = proxy.addr.port();

    let mut conn = Conn::open(proxy.addr, &pki, b"h2", Some(&good)).await;
    let resp = conn.send(Method::GET, "/v1/tools/", port).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // TLS 1.3: the client finishes its side first; the refusal arrives on the
    // first read. Either way no request reaches a backend.
    for cert in [None, Some(&stranger)] {
        let config = client_config(pki.ca_file(), &[b"http/1.1"], cert, BOTH);
        if let Ok(stream) = tls_connect(proxy.addr, config).await {
            let got = super::get_h1(stream, "/v1/tools/").await;
            assert!(
                got.is_err(),
                "answered without a trusted client certificate: {got:?}"
            );
        }
    }
    eventually(WITHIN, "both refusals counted", || async {
        proxy
            .gateway
            .metrics()
            .render()
            .contains("letta_proxy_tls_handshake_failures_total{reason=\"client_certificate\"} 2")
    })
    .await;
    assert_eq!(
        s.stats.requests(),
        1,
        "only the trusted client's request arrived"
    );
}

/// Replaces `dst`'s certificate and key with `src`'s the way a renewal does:
/// new files renamed over the old ones.
fn renew(src: &Issued, dst_cert: &Path, dst_key: &Path) {
    let tmp =
        |p: &Path| p.with_file_name(format!("{}.tmp", p.file_name().unwrap().to_str().unwrap()));
    std::fs::copy(&src.key_file, tmp(dst_key)).unwrap();
    std::fs::copy(&src.cert_file, tmp(dst_cert)).unwrap();
    std::fs::rename(tmp(dst_key), dst_key).unwrap();
    std::fs::rename(tmp(dst_cert), dst_cert).unwrap();
}

async fn served_certificate(addr: std::net::SocketAddr, pki: &Pki) -> Vec<u8> {
    let stream = tls_connect(addr, client_config(pki.ca_file(), &[b"h2"], None, BOTH))
        .await
        .unwrap();
    let (_, conn) = stream.get_ref();
    conn.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_renewed_certificate_is_served_to_new_connections_while_an_open_stream_finishes() {
    init();
    let pki = Pki::new("renew");
    let old = pki.server("old", &[]);
    let new = pki.server("new", &[]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key): (PathBuf, PathBuf) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    renew(&old, &cert, &key);
    let s = StandIn::start("be1").await.unwrap();
    let mut c = config("", &plain_backend(&s));
    c.server.tls = Some(ServerTlsConfig {
        cert_file: cert.clone(),
        key_file: key.clone(),
        client_ca_file: None,
        redirect_http_listen: None,
    });
    let proxy = TestProxy::start(c).await;
    assert_eq!(served_certificate(proxy.addr, &pki).await, old.der.to_vec());

    // A stream opened under the old certificate...
    let mut conn = Conn::open(proxy.addr, &pki, b"h2", None).await;
    let path = format!("/v1/agents/{AGENT}/messages/stream?events=30&interval_ms=100");
    let resp = conn
        .send(Method::POST, &path, proxy.addr.port())
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while got.is_empty() {
        if let Ok(d) = body.frame().await.unwrap().unwrap().into_data() {
            got.extend_from_slice(&d);
        }
    }

    // ...while the files are renewed: the watcher notices, new connections get
    // the new certificate.
    renew(&new, &cert, &key);
    let expected = new.der.to_vec();
    eventually(
        WITHIN,
        "new connections get the renewed certificate",
        || {
            let expected = expected.clone();
            let pki = &pki;
            let addr = proxy.addr;
            async move { served_certificate(addr, pki).await == expected }
        },
    )
    .await;
    assert_eq!(s.stats.active(), 1, "the old stream is still open");

    // The old stream goes on to its end, whole.
    got.extend_from_slice(&body.collect().await.unwrap().to_bytes());
    let text = String::from_utf8(got).unwrap();
    assert_eq!(text.matches("data: ").count(), 31, "30 events and [DONE]");
    let metrics = proxy.gateway.metrics().render();
    assert!(
        metrics.contains("letta_proxy_tls_certificate_reloads_total{result=\"ok\"}"),
        "{metrics}"
    );
    let stats = proxy.gateway.stats();
    assert_eq!(stats.tls.unwrap().certificate.subject, "CN=new");
}

#[tokio::test]
async fn the_redirect_listener_sends_plain_http_clients_to_the_https_listener() {
    init();
    let pki = Pki::new("redirect");
    let leaf = pki.server("proxy", &[]);
    let s = StandIn::start("be1").await.unwrap();
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = free.local_addr().unwrap();
    drop(free);
    let mut c = with_listener_tls(config("", &plain_backend(&s)), &leaf, None);
    c.server.tls.as_mut().unwrap().redirect_http_listen = Some(plain_addr);
    let proxy = TestProxy::start(c).await;
    eventually(WITHIN, "the redirect listener is up", || async {
        TcpStream::connect(plain_addr).await.is_ok()
    })
    .await;
    let url = format!("http://localhost:{}/v1/agents/?limit=3", plain_addr.port());
    let resp = support::client()
        .post(&url)
        .header("host", format!("localhost:{}", plain_addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::PERMANENT_REDIRECT,
        "308 keeps the POST a POST"
    );
    assert_eq!(
        resp.headers()["location"],
        format!("https://localhost:{}/v1/agents/?limit=3", proxy.addr.port())
    );
    assert_eq!(s.stats.requests(), 0, "nothing forwarded in plain text");
}

// ------------------------------------------------------------ https:// backends

async fn https_standin(name: &str, leaf: &Issued) -> StandIn {
    let tls = ServerTls::load(&ServerTlsConfig {
        cert_file: leaf.cert_file.clone(),
        key_file: leaf.key_file.clone(),
        client_ca_file: None,
        redirect_http_listen: None,
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    StandIn::serve_tls(name, listener, Arc::new(tls))
}

#[tokio::test]
async fn an_https_backend_is_reached_over_http2_and_probed_over_tls() {
    init();
    let pki = Pki::new("backend");
    let s = https_standin("secure", &pki.server("letta-secure", &[])).await;
    let backends = format!(
        "[[backends]]\nname = \"secure\"\nurl = \"{}\"\nhttp2 = true\ntls_ca_file = \"{}\"\n",
        s.url(),
        pki.ca_file().display()
    );
    let health = "[health]\nenabled = true\ninterval = \"100ms\"\ntimeout = \"2s\"\nunhealthy_threshold = 1\nhealthy_threshold = 1\n";
    // preserve_host off: the backend sees (and builds redirects from) its own name.
    let text =
        format!("[cache]\nenabled = false\n[server]\npreserve_host = false\n{health}{backends}");
    let c = Config::from_toml(&text, "test config", std::iter::empty()).unwrap();
    let proxy = TestProxy::start(c).await;
    let http = support::client();

    let resp = http.get(proxy.url("/__headers")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(seen["version"], "HTTP/2.0", "ALPN chose h2 to the backend");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");

    // Letta's redirect names the backend over https: the client gets the proxy.
    let resp = http.get(proxy.url("/v1/agents?x=1")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        resp.headers()["location"],
        format!("http://{}/v1/agents/?x=1", proxy.addr)
    );

    // A stream through the TLS connection, whole.
    let resp = http
        .post(proxy.url(&format!(
            "/v1/agents/{AGENT}/messages/stream?events=3&interval_ms=10"
        )))
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert_eq!(text.matches("data: ").count(), 4, "{text}");

    // Health probes speak TLS too: the backend goes down and comes back with
    // them (nothing else could bring it back: there is no traffic).
    s.set_mode(letta_proxy::standin::Mode::Fail(503));
    eventually(WITHIN, "probes mark it down", || async {
        http.get(proxy.url("/-/ready"))
            .send()
            .await
            .unwrap()
            .status()
            == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    s.set_mode(letta_proxy::standin::Mode::Normal);
    eventually(WITHIN, "and up again", || async {
        http.get(proxy.url("/-/ready"))
            .send()
            .await
            .unwrap()
            .status()
            == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn an_https_backend_with_an_untrusted_certificate_is_a_clear_502() {
    init();
    let pki = Pki::new("untrusted");
    let other = Pki::new("other");
    let s = https_standin("secure", &pki.server("letta-secure", &[])).await;
    // Trusting another CA: the handshake fails on the certificate.
    let backends = format!(
        "[[backends]]\nname = \"secure\"\nurl = \"{}\"\ntls_ca_file = \"{}\"\n",
        s.url(),
        other.ca_file().display()
    );
    let proxy = TestProxy::start(config("", &backends)).await;
    let resp = support::client()
        .get(proxy.url("/v1/tools/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let err: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["kind"], "upstream_unreachable");
    let message = err["error"]["message"].as_str().unwrap();
    assert_eq!(
        message,
        "backend secure is unreachable (its TLS certificate was not accepted)"
    );
    assert_eq!(s.stats.requests(), 0, "no request byte reached it");
}

/// `letta-proxy health https://…` (the container healthcheck of an HTTPS
/// listener) checks the certificate like a client: with the CA it passes,
/// without it the refusal is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_subcommand_checks_an_https_listener_with_its_ca() {
    let (pki, _backend, proxy) = https_proxy("healthcmd").await;
    let url = format!("https://localhost:{}/-/ready", proxy.addr.port());
    let run = |ca: Option<&Path>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_letta-proxy"));
        cmd.args(["health", &url, "--timeout", "10s"]);
        if let Some(ca) = ca {
            cmd.arg("--ca-file").arg(ca);
        }
        let out = cmd.output().expect("letta-proxy runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(Some(pki.ca_file()));
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run(None);
    assert_eq!(code, Some(1));
    assert!(err.contains("certificate"), "{err}");
}
