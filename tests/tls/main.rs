//! The TLS building blocks over real loopback sockets, with certificates made
//! by the test (a CA, server leaves, client certificates): the listener's
//! handshake (ALPN, versions, mTLS, reload, failures and their metric), the
//! file errors `--check` shows, the backend client (trust, SNI, ALPN, client
//! certificate) and the plain-HTTP redirect.

mod certs;
mod proxy;
#[path = "../support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use certs::{Issued, Pki};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use letta_proxy::backend::BackendUrl;
use letta_proxy::config::{BackendConfig, Config, ServerTlsConfig};
use letta_proxy::tls::{
    Alpn, BackendTls, CertProblem, HandshakeError, ServerTls, TlsConnectError, TlsError, TlsMetrics,
};
use prometheus::Registry;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

fn init() {
    letta_proxy::tls::install_default_provider();
}

fn files(leaf: &Issued, client_ca: Option<&Path>) -> ServerTlsConfig {
    ServerTlsConfig {
        cert_file: leaf.cert_file.clone(),
        key_file: leaf.key_file.clone(),
        client_ca_file: client_ca.map(Path::to_path_buf),
        redirect_http_listen: None,
    }
}

// ------------------------------------------------------------ an HTTPS test server

type Body = BoxBody<Bytes, Infallible>;
/// The body chunks of the next `/stream` request, sent by the test.
type StreamSlot = Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>;

/// `ServerTls::accept` in an accept loop, then hyper by ALPN; every handshake
/// failure is left to the metrics. Answers `<version> <alpn>`, or streams
/// `/stream` from the test's channel.
struct TestServer {
    addr: SocketAddr,
    tls: Arc<ServerTls>,
    registry: Registry,
    stream: StreamSlot,
}

async fn https_server(tls: ServerTls) -> TestServer {
    let registry = Registry::new();
    let tls = Arc::new(tls.with_metrics(TlsMetrics::new(&registry).unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stream: StreamSlot = Arc::new(Mutex::new(None));
    let (t, s) = (tls.clone(), stream.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let (tls, slot) = (t.clone(), s.clone());
            tokio::spawn(async move {
                let Ok(accepted) = tls.accept(tcp, peer).await else {
                    return;
                };
                let alpn = accepted.alpn;
                let svc = service_fn(move |req: Request<Incoming>| {
                    let slot = slot.clone();
                    async move { Ok::<_, Infallible>(answer(req, alpn, &slot)) }
                });
                let io = TokioIo::new(accepted.stream);
                let _ = match alpn {
                    Alpn::H2 => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await
                    }
                    Alpn::Http11 => {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await
                    }
                };
            });
        }
    });
    TestServer {
        addr,
        tls,
        registry,
        stream,
    }
}

fn answer(req: Request<Incoming>, alpn: Alpn, slot: &StreamSlot) -> Response<Body> {
    if req.uri().path() == "/stream" {
        let rx = slot.lock().unwrap().take().expect("the test set a stream");
        let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        return Response::new(StreamBody::new(chunks).boxed());
    }
    let text = format!("{:?} {}", req.version(), alpn.as_str());
    Response::new(Full::new(Bytes::from(text)).boxed())
}

/// `letta_proxy_tls_handshake_failures_total{reason}` (or another family's counter).
fn counter(registry: &Registry, family: &str, label: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == family)
        .flat_map(|f| f.get_metric())
        .filter(|m| m.get_label().iter().any(|l| l.value() == label))
        .map(|m| m.get_counter().value() as u64)
        .sum()
}

/// Waits (bounded) until the failure counter for `reason` reaches `n`.
async fn failures_reach(server: &TestServer, reason: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = counter(
            &server.registry,
            "letta_proxy_tls_handshake_failures_total",
            reason,
        );
        if seen >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "handshake failures {{reason={reason}}} stayed at {seen}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ------------------------------------------------------------ raw clients

/// A rustls client trusting `ca`, offering `alpn`, optionally with a client certificate.
fn client_config(
    ca: &Path,
    alpn: &[&[u8]],
    client_cert: Option<&Issued>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(letta_proxy::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client_cert {
        Some(c) => builder
            .with_client_auth_cert(
                rustls::pki_types::CertificateDer::pem_file_iter(&c.cert_file)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect(),
                rustls::pki_types::PrivateKeyDer::from_pem_file(&c.key_file).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// One HTTP/1.1 GET on a fresh TLS connection; the body, or the error.
async fn get_h1(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    path: &str,
) -> Result<String, hyper::Error> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = send.send_request(get(path)).await?;
    Ok(text(resp.into_body()).await)
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap()
}

async fn text(body: Incoming) -> String {
    String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

// ------------------------------------------------------------ the listener

#[tokio::test]
async fn tls_listener_negotiates_h2_and_http11_by_alpn() {
    init();
    let pki = Pki::new("alpn");
    let leaf = pki.server("server", &[]);
    let server = https_server(ServerTls::load(&files(&leaf, None)).unwrap()).await;

    // A client offering h2 and http/1.1 gets h2 and speaks HTTP/2.
    let stream = tls_connect(
        server.addr,
        client_config(pki.ca_file(), &[b"h2", b"http/1.1"], None, BOTH),
    )
    .await
    .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://localhost/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(text(resp.into_body()).await, "HTTP/2.0 h2");

    // Offering only http/1.1 gets HTTP/1.1.
    let stream = tls_connect(
        server.addr,
        client_config(pki.ca_file(), &[b"http/1.1"], None, BOTH),
    )
    .await
    .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(get_h1(stream, "/").await.unwrap(), "HTTP/1.1 http/1.1");

    // A client without ALPN gets HTTP/1.1.
    let stream = tls_connect(server.addr, client_config(pki.ca_file(), &[], None, BOTH))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    assert_eq!(get_h1(stream, "/").await.unwrap(), "HTTP/1.1 http/1.1");

    // A client offering only protocols we do not speak is refused (RFC 7301).
    let refused = tls_connect(
        server.addr,
        client_config(pki.ca_file(), &[b"spdy/3"], None, BOTH),
    )
    .await;
    assert!(refused.is_err(), "no common ALPN protocol must fail");
    failures_reach(&server, "no_application_protocol", 1).await;
    assert_eq!(
        counter(&server.registry, "letta_proxy_tls_handshakes_total", "h2"),
        1
    );
}

#[tokio::test]
async fn tls_listener_takes_tls12_and_refuses_tls11() {
    init();
    let pki = Pki::new("versions");
    let server = https_server(ServerTls::load(&files(&pki.server("s", &[]), None)).unwrap()).await;

    let tls12 = client_config(
        pki.ca_file(),
        &[b"http/1.1"],
        None,
        &[&rustls::version::TLS12],
    );
    let stream = tls_connect(server.addr, tls12).await.unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(get_h1(stream, "/").await.unwrap(), "HTTP/1.1 http/1.1");

    // No TLS library we have will still speak TLS 1.1, so the ClientHello is
    // written by hand: legacy_version 3.2, no supported_versions extension, two
    // TLS 1.1-era suites (ECDHE-RSA-AES128-SHA, AES128-SHA), no compression.
    let mut hello = vec![0x03, 0x02];
    hello.extend([0u8; 32]); // random
    hello.push(0); // session id
    hello.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]);
    hello.extend([0x01, 0x00]);
    let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
    handshake.extend(&hello);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend(&handshake);
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&record).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut reply))
        .await
        .expect("the server answers and closes")
        .unwrap();
    // An alert record (content type 21), fatal, handshake_failure (40): no ServerHello.
    assert_eq!(reply.first(), Some(&0x15), "reply {reply:02x?}");
    assert_eq!(&reply[5..7], &[2, 40], "reply {reply:02x?}");
    failures_reach(&server, "incompatible", 1).await;
}

#[tokio::test]
async fn tls_listener_mtls_accepts_a_good_client_certificate_and_refuses_the_rest() {
    init();
    let pki = Pki::new("mtls");
    let leaf = pki.server("server", &[]);
    let good = pki.client("good-client");
    let foreign_pki = Pki::new("foreign");
    let foreign = foreign_pki.client("foreign-client");
    let server = https_server(ServerTls::load(&files(&leaf, Some(pki.ca_file()))).unwrap()).await;

    let ok = tls_connect(
        server.addr,
        client_config(pki.ca_file(), &[b"http/1.1"], Some(&good), BOTH),
    )
    .await
    .unwrap();
    assert_eq!(get_h1(ok, "/").await.unwrap(), "HTTP/1.1 http/1.1");

    // In TLS 1.3 the client finishes first; the server's verdict arrives with
    // the first read. Either way no request may succeed.
    let without = async {
        let s = tls_connect(
            server.addr,
            client_config(pki.ca_file(), &[b"http/1.1"], None, BOTH),
        )
        .await
        .map_err(|e| e.to_string())?;
        get_h1(s, "/").await.map_err(|e| e.to_string())
    };
    assert!(
        without.await.is_err(),
        "no client certificate must be refused"
    );
    failures_reach(&server, "client_certificate", 1).await;

    let wrong = async {
        let s = tls_connect(
            server.addr,
            client_config(pki.ca_file(), &[b"http/1.1"], Some(&foreign), BOTH),
        )
        .await
        .map_err(|e| e.to_string())?;
        get_h1(s, "/").await.map_err(|e| e.to_string())
    };
    assert!(
        wrong.await.is_err(),
        "a certificate from another CA must be refused"
    );
    failures_reach(&server, "client_certificate", 2).await;
}

#[tokio::test]
async fn tls_reload_serves_the_new_certificate_to_new_connections_while_an_open_stream_finishes() {
    init();
    let pki = Pki::new("reload");
    let first = pki.server("first", &[]);
    let second = pki.server("second", &[]);
    let mismatched = pki.server("third", &[]);
    // The listener reads `live.pem` / `live.key`, rewritten below as a deploy would.
    let live = files(&first, None);
    let live = ServerTlsConfig {
        cert_file: pki.dir().join("live.pem"),
        key_file: pki.dir().join("live.key"),
        ..live
    };
    std::fs::copy(&first.cert_file, &live.cert_file).unwrap();
    std::fs::copy(&first.key_file, &live.key_file).unwrap();
    let server = https_server(ServerTls::load(&live).unwrap()).await;
    let config = client_config(pki.ca_file(), &[b"http/1.1"], None, BOTH);
    let peer_cert = |s: &tokio_rustls::client::TlsStream<TcpStream>| {
        s.get_ref().1.peer_certificates().unwrap()[0].clone()
    };

    // An open connection with a streamed response in progress.
    let old = tls_connect(server.addr, config.clone()).await.unwrap();
    assert_eq!(peer_cert(&old), first.der);
    let (tx, rx) = mpsc::channel(4);
    *server.stream.lock().unwrap() = Some(rx);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(old))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send.send_request(get("/stream")).await.unwrap();
    let mut body = resp.into_body();
    tx.send(Bytes::from_static(b"before ")).await.unwrap();
    let chunk = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&chunk[..], b"before ");

    // Deploy the second certificate and reload.
    let stamp = server.tls.files_stamp();
    std::fs::copy(&second.cert_file, &live.cert_file).unwrap();
    std::fs::copy(&second.key_file, &live.key_file).unwrap();
    assert_ne!(
        server.tls.files_stamp(),
        stamp,
        "the watcher sees the change"
    );
    let info = server.tls.reload().unwrap();
    assert_eq!(info.subject, "CN=second");

    let new = tls_connect(server.addr, config.clone()).await.unwrap();
    assert_eq!(
        peer_cert(&new),
        second.der,
        "new connections get the new certificate"
    );

    // The stream opened before the reload goes on and ends normally, and its
    // connection still serves the next request.
    tx.send(Bytes::from_static(b"after")).await.unwrap();
    drop(tx);
    let mut rest = Vec::from(chunk);
    while let Some(frame) = body.frame().await {
        rest.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert_eq!(rest, b"before after");
    let again = send.send_request(get("/")).await.unwrap();
    assert_eq!(text(again.into_body()).await, "HTTP/1.1 http/1.1");

    // A bad deploy (a key that is not the certificate's) is refused, file
    // named, and the second certificate stays.
    std::fs::copy(&mismatched.key_file, &live.key_file).unwrap();
    let err = server.tls.reload().unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("live.key"), "{err}");
    let still = tls_connect(server.addr, config).await.unwrap();
    assert_eq!(peer_cert(&still), second.der);
    assert_eq!(
        counter(
            &server.registry,
            "letta_proxy_tls_certificate_reloads_total",
            "ok"
        ),
        1
    );
    assert_eq!(
        counter(
            &server.registry,
            "letta_proxy_tls_certificate_reloads_total",
            "error"
        ),
        1
    );
}

#[tokio::test]
async fn tls_expired_certificate_is_reported_at_load_and_refused_at_reload() {
    init();
    let pki = Pki::new("expiry");
    let expired = pki.server_valid("expired", ((2020, 1, 1), (2021, 1, 1)));
    let current = pki.server_valid("current", ((2020, 1, 1), (2090, 1, 1)));

    // At start an expired certificate loads (the proxy must come up) but is reported.
    let tls = ServerTls::load(&files(&expired, None)).unwrap();
    let info = tls.certificate();
    assert_eq!(info.not_after, 1_609_459_200); // 2021-01-01T00:00:00Z
    let problem = info.problem(SystemTime::now()).expect("reported");
    assert!(matches!(problem, CertProblem::Expired { .. }), "{problem}");
    assert!(problem.to_string().contains("2021"), "{problem}");

    // The expiry gauge shows the served certificate.
    let registry = Registry::new();
    let tls = ServerTls::load(&files(&current, None))
        .unwrap()
        .with_metrics(TlsMetrics::new(&registry).unwrap());
    let gauge = |r: &Registry| {
        r.gather()
            .iter()
            .find(|f| f.name() == "letta_proxy_tls_certificate_not_after_timestamp_seconds")
            .map(|f| f.get_metric()[0].get_gauge().value())
    };
    assert_eq!(gauge(&registry), Some(tls.certificate().not_after as f64));

    // A reload to an expired certificate is refused and the current one stays.
    let err = tls.reload_from(&files(&expired, None)).unwrap_err();
    assert!(matches!(err, TlsError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("expired.pem"), "{err}");
    assert_eq!(tls.certificate().subject, "CN=current");

    // Soon and not-yet are reported too (times chosen around the validity).
    let day = Duration::from_secs(86_400);
    let end = SystemTime::UNIX_EPOCH + Duration::from_secs(tls.certificate().not_after as u64);
    assert_eq!(tls.certificate().problem(end - 60 * day), None);
    assert!(matches!(
        tls.certificate()
            .problem(end - 3 * day - Duration::from_secs(60)),
        Some(CertProblem::ExpiresSoon { days_left: 3, .. })
    ));
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(tls.certificate().not_before as u64);
    assert!(matches!(
        tls.certificate().problem(start - day),
        Some(CertProblem::NotYetValid { .. })
    ));
}

#[tokio::test]
async fn tls_handshake_failures_are_counted_by_reason_and_the_listener_goes_on() {
    init();
    let pki = Pki::new("failures");
    let leaf = pki.server("s", &[]);
    let tls = ServerTls::load(&files(&leaf, None))
        .unwrap()
        .with_handshake_timeout(Duration::from_millis(200));
    let server = https_server(tls).await;

    // Silent client: the handshake deadline ends it.
    let silent = TcpStream::connect(server.addr).await.unwrap();
    failures_reach(&server, "timeout", 1).await;
    drop(silent);
    // Gone at once (a TCP health check).
    drop(TcpStream::connect(server.addr).await.unwrap());
    failures_reach(&server, "closed", 1).await;
    // Plain HTTP on the HTTPS port.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    failures_reach(&server, "malformed", 1).await;
    // A client that does not trust our certificate says so with an alert.
    let other_ca = Pki::new("other");
    assert!(tls_connect(
        server.addr,
        client_config(other_ca.ca_file(), &[b"http/1.1"], None, BOTH)
    )
    .await
    .is_err());
    failures_reach(&server, "alert_received", 1).await;

    // The listener still serves.
    let ok = tls_connect(
        server.addr,
        client_config(pki.ca_file(), &[b"http/1.1"], None, BOTH),
    )
    .await
    .unwrap();
    assert_eq!(get_h1(ok, "/").await.unwrap(), "HTTP/1.1 http/1.1");
}

#[tokio::test]
async fn tls_accept_reports_a_timeout_as_such() {
    init();
    let pki = Pki::new("timeout");
    let tls = ServerTls::load(&files(&pki.server("s", &[]), None))
        .unwrap()
        .with_handshake_timeout(Duration::from_millis(100));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (tcp, peer) = listener.accept().await.unwrap();
    let err = match tls.accept(tcp, peer).await {
        Err(e) => e,
        Ok(_) => panic!("a silent client cannot complete a handshake"),
    };
    assert!(matches!(err, HandshakeError::Timeout(_)), "{err}");
    assert_eq!(err.reason(), "timeout");
}

// ------------------------------------------------------------ file errors (--check)

#[test]
fn tls_file_errors_name_the_file() {
    init();
    let pki = Pki::new("errors");
    let a = pki.server("a", &[]);
    let b = pki.server("b", &[]);

    // A key that belongs to another certificate.
    let err = ServerTls::load(&ServerTlsConfig {
        key_file: b.key_file.clone(),
        ..files(&a, None)
    })
    .err()
    .expect("mismatched key refused");
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("b.key") && msg.contains("a.pem"), "{msg}");

    // Missing file.
    let missing = pki.dir().join("nope.pem");
    let err = ServerTls::load(&ServerTlsConfig {
        cert_file: missing.clone(),
        ..files(&a, None)
    })
    .err()
    .unwrap();
    assert!(matches!(err, TlsError::Read { .. }), "{err}");
    assert!(err.to_string().contains("nope.pem"), "{err}");
    assert_eq!(err.path(), Some(missing.as_path()));

    // A key file given as the certificate, and a certificate given as the key.
    let err = ServerTls::load(&ServerTlsConfig {
        cert_file: a.key_file.clone(),
        ..files(&a, None)
    })
    .err()
    .unwrap();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    assert!(err.to_string().contains("a.key"), "{err}");
    let err = ServerTls::load(&ServerTlsConfig {
        key_file: a.cert_file.clone(),
        ..files(&a, None)
    })
    .err()
    .unwrap();
    assert!(matches!(err, TlsError::NoKey { .. }), "{err}");

    // Garbage between PEM markers.
    let broken = pki.dir().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = ServerTls::load(&ServerTlsConfig {
        cert_file: broken,
        ..files(&a, None)
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("broken.pem"), "{err}");

    // A client CA file without a certificate in it.
    let err = ServerTls::load(&files(&a, Some(&a.key_file)))
        .err()
        .unwrap();
    assert!(matches!(err, TlsError::NoCaCertificates { .. }), "{err}");
    assert!(err.to_string().contains("a.key"), "{err}");

    // A combined file (certificate and key in one) works for both keys.
    let combined = pki.dir().join("combined.pem");
    let mut both = std::fs::read(&a.cert_file).unwrap();
    both.extend(std::fs::read(&a.key_file).unwrap());
    std::fs::write(&combined, both).unwrap();
    ServerTls::load(&ServerTlsConfig {
        cert_file: combined.clone(),
        key_file: combined,
        client_ca_file: None,
        redirect_http_listen: None,
    })
    .unwrap();
}

#[test]
fn tls_config_keys_parse_and_bad_files_fail_validation_with_the_file_named() {
    init();
    let pki = Pki::new("config");
    let leaf = pki.server("server", &[]);
    let client = pki.client("client");
    let other = pki.server("other", &[]);
    let toml = |key_file: &Path| {
        format!(
            r#"
[server]
listen = "127.0.0.1:8443"
[server.tls]
cert_file = "{cert}"
key_file = "{key}"
client_ca_file = "{ca}"
redirect_http_listen = "127.0.0.1:8080"
[[backends]]
name = "a"
url = "https://letta-a.internal"
tls_ca_file = "{ca}"
tls_cert_file = "{ccert}"
tls_key_file = "{ckey}"
tls_server_name = "letta.internal"
http2 = true
[[backends]]
name = "b"
url = "http://127.0.0.1:8283"
"#,
            cert = leaf.cert_file.display(),
            key = key_file.display(),
            ca = pki.ca_file().display(),
            ccert = client.cert_file.display(),
            ckey = client.key_file.display(),
        )
    };
    let c = Config::from_toml(&toml(&leaf.key_file), "tls.toml", std::iter::empty()).unwrap();
    let t = c.server.tls.as_ref().unwrap();
    assert_eq!(t.cert_file, leaf.cert_file);
    assert_eq!(t.client_ca_file.as_deref(), Some(pki.ca_file()));
    assert_eq!(
        t.redirect_http_listen,
        Some("127.0.0.1:8080".parse().unwrap())
    );
    let a = &c.backends[0];
    assert_eq!(a.tls_server_name.as_deref(), Some("letta.internal"));
    assert!(a.http2 && a.tls_cert_file.is_some() && a.tls_key_file.is_some());
    assert!(!c.backends[1].http2 && c.backends[1].tls_ca_file.is_none());

    // The keys can come from the environment like any other.
    let c = Config::from_toml(
        "",
        "env",
        [
            (
                "LETTA_PROXY__SERVER__TLS__CERT_FILE".to_string(),
                leaf.cert_file.display().to_string(),
            ),
            (
                "LETTA_PROXY__SERVER__TLS__KEY_FILE".to_string(),
                leaf.key_file.display().to_string(),
            ),
        ],
    )
    .unwrap();
    assert_eq!(c.server.tls.unwrap().key_file, leaf.key_file);

    // The --check path: a mismatched key fails loading the config, file named.
    let err = Config::from_toml(&toml(&other.key_file), "tls.toml", std::iter::empty())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("other.key") && err.contains("[server.tls]"),
        "{err}"
    );

    let fails = |text: &str| {
        Config::from_toml(text, "t.toml", std::iter::empty())
            .unwrap_err()
            .to_string()
    };
    let err = fails(&format!(
        "[[backends]]\nname = \"a\"\nurl = \"http://x:1\"\ntls_ca_file = \"{}\"\n",
        pki.ca_file().display()
    ));
    assert!(
        err.contains("backends[0].tls_ca_file needs an https:// url"),
        "{err}"
    );
    let err = fails("[[backends]]\nname = \"a\"\nurl = \"http://x:1\"\nhttp2 = true\n");
    assert!(err.contains("backends[0].http2"), "{err}");
    let err = fails(&format!(
        "[[backends]]\nname = \"a\"\nurl = \"https://x\"\ntls_cert_file = \"{}\"\n",
        client.cert_file.display()
    ));
    assert!(
        err.contains("tls_cert_file and tls_key_file together"),
        "{err}"
    );
    let err = fails(&format!(
        "[[backends]]\nname = \"a\"\nurl = \"https://x\"\ntls_ca_file = \"{}\"\n",
        pki.dir().join("absent-ca.pem").display()
    ));
    assert!(
        err.contains("absent-ca.pem") && err.contains("backends[0] (a)"),
        "{err}"
    );
    let err = fails(
        "[server]\nlisten = \"127.0.0.1:8443\"\n[server.tls]\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"/nonexistent/k.pem\"\n",
    );
    assert!(err.contains("/nonexistent/c.pem"), "{err}");
    let err = fails(&format!(
        "[server]\nlisten = \"127.0.0.1:8443\"\n[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nredirect_http_listen = \"127.0.0.1:8443\"\n",
        leaf.cert_file.display(),
        leaf.key_file.display()
    ));
    assert!(err.contains("already used"), "{err}");
    let err = fails("[server.tls]\ncert_file = \"c\"\nkey_file = \"k\"\nkey_fiel = \"x\"\n");
    assert!(err.contains("key_fiel"), "{err}");
}

// ------------------------------------------------------------ backends (client side)

fn backend(url: &str) -> BackendConfig {
    BackendConfig::new("be", url)
}

fn backend_tls(b: &BackendConfig) -> BackendTls {
    try_backend_tls(b).unwrap()
}

fn try_backend_tls(b: &BackendConfig) -> Result<BackendTls, letta_proxy::tls::TlsError> {
    let url = BackendUrl::parse(&b.url).unwrap();
    BackendTls::new(&b.tls_options(&url).expect("https backend"))
}

async fn connect(
    tls: &BackendTls,
    addr: SocketAddr,
) -> Result<letta_proxy::tls::TlsConnected<TcpStream>, TlsConnectError> {
    tls.connect(TcpStream::connect(addr).await.unwrap()).await
}

#[tokio::test]
async fn tls_backend_client_verifies_against_its_ca_file_and_refuses_an_unknown_ca() {
    init();
    let pki = Pki::new("backend");
    let server = https_server(
        ServerTls::load(&files(&pki.server("letta", &["letta.internal"]), None)).unwrap(),
    )
    .await;
    let port = server.addr.port();

    let mut b = backend(&format!("https://127.0.0.1:{port}"));
    b.tls_ca_file = Some(pki.ca_file().to_path_buf());
    let conn = connect(&backend_tls(&b), server.addr).await.unwrap();
    assert!(!conn.h2);
    assert_eq!(get_h1_client(conn.stream).await, "HTTP/1.1 http/1.1");

    // SNI and the checked name come from tls_server_name when set.
    b.tls_server_name = Some("letta.internal".into());
    connect(&backend_tls(&b), server.addr).await.unwrap();
    b.tls_server_name = Some("someone-else.internal".into());
    let err = connect(&backend_tls(&b), server.addr).await.err().unwrap();
    assert!(err.is_certificate_error(), "{err}");

    // Another CA: refused, typed as a TLS handshake failure (a connect failure).
    let other = Pki::new("unknown");
    let mut b = backend(&format!("https://localhost:{port}"));
    b.tls_ca_file = Some(other.ca_file().to_path_buf());
    let err = connect(&backend_tls(&b), server.addr).await.err().unwrap();
    assert!(
        matches!(
            &err,
            TlsConnectError::Refused {
                source: rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_certificate_error());
    assert!(err.to_string().contains("localhost"), "{err}");

    // Without tls_ca_file the system roots are used: they load, and do not
    // trust the test CA.
    let b = backend(&format!("https://localhost:{port}"));
    let err = connect(&backend_tls(&b), server.addr).await.err().unwrap();
    assert!(err.is_certificate_error(), "{err}");
}

/// HTTP/1.1 GET over a backend connection.
async fn get_h1_client(stream: tokio_rustls::client::TlsStream<TcpStream>) -> String {
    get_h1(stream, "/").await.unwrap()
}

#[tokio::test]
async fn tls_backend_h2_is_negotiated_when_offered_and_allowed() {
    init();
    let pki = Pki::new("h2");
    let server =
        https_server(ServerTls::load(&files(&pki.server("letta", &[]), None)).unwrap()).await;
    let mut b = backend(&format!("https://localhost:{}", server.addr.port()));
    b.tls_ca_file = Some(pki.ca_file().to_path_buf());

    // http2 = true: the backend picks h2, and HTTP/2 is spoken.
    b.http2 = true;
    let tls = backend_tls(&b);
    assert!(tls.offers_h2());
    let conn = connect(&tls, server.addr).await.unwrap();
    assert!(conn.h2);
    let (mut send, c) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(conn.stream))
            .await
            .unwrap();
    tokio::spawn(c);
    let req = Request::get("https://localhost/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(text(resp.into_body()).await, "HTTP/2.0 h2");

    // http2 = false (the default): HTTP/1.1 even though the backend offers h2.
    b.http2 = false;
    let conn = connect(&backend_tls(&b), server.addr).await.unwrap();
    assert!(!conn.h2);
    assert_eq!(get_h1_client(conn.stream).await, "HTTP/1.1 http/1.1");
}

#[tokio::test]
async fn tls_backend_presents_its_client_certificate() {
    init();
    let pki = Pki::new("backend-mtls");
    let server = https_server(
        ServerTls::load(&files(&pki.server("letta", &[]), Some(pki.ca_file()))).unwrap(),
    )
    .await;
    let client = pki.client("proxy");
    let mut b = backend(&format!("https://localhost:{}", server.addr.port()));
    b.tls_ca_file = Some(pki.ca_file().to_path_buf());
    b.tls_cert_file = Some(client.cert_file.clone());
    b.tls_key_file = Some(client.key_file.clone());
    let conn = connect(&backend_tls(&b), server.addr).await.unwrap();
    assert_eq!(get_h1_client(conn.stream).await, "HTTP/1.1 http/1.1");

    // Without it the backend refuses (at the first read in TLS 1.3).
    b.tls_cert_file = None;
    b.tls_key_file = None;
    let refused = async {
        let conn = connect(&backend_tls(&b), server.addr)
            .await
            .map_err(|e| e.to_string())?;
        get_h1(conn.stream, "/").await.map_err(|e| e.to_string())
    };
    assert!(refused.await.is_err());
    failures_reach(&server, "client_certificate", 1).await;

    // A client key that is not the certificate's is refused when loading, file named.
    let other = pki.client("other");
    b.tls_cert_file = Some(client.cert_file.clone());
    b.tls_key_file = Some(other.key_file.clone());
    let err = try_backend_tls(&b).err().unwrap();
    assert!(err.to_string().contains("other.key"), "{err}");
}

#[test]
fn tls_backend_plain_http_has_no_tls() {
    let b = backend("http://127.0.0.1:8283");
    assert!(b.tls_options(&BackendUrl::parse(&b.url).unwrap()).is_none());
}

// ------------------------------------------------------------ redirect listener

#[tokio::test]
async fn tls_redirect_listener_sends_clients_to_https_and_refuses_requests_without_host() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(letta_proxy::tls::redirect::serve(listener, 8443, async {
        let _ = stopped.await;
    }));

    // reqwest is built with rustls and no provider of its own: ours.
    letta_proxy::tls::install_default_provider();
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .post(format!("http://{addr}/v1/agents/?limit=2"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        resp.headers()["location"],
        "https://127.0.0.1:8443/v1/agents/?limit=2"
    );

    // HTTP/1.0 without Host: 400.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(reply.starts_with("HTTP/1.0 400"), "{reply}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the redirect listener stops on shutdown")
        .unwrap();
}
