//! Load generator for `benches/tls.sh`: every request on a new connection with
//! a full TLS handshake, so the server's handshake rate and cost are measured.
//!
//! Why not wrk or `openssl s_time`: wrk keeps the TLS session between its
//! reconnections and resumes it (measured: 523 of 527 handshakes resumed with
//! `Connection: close`), and `s_time -new` is one sequential OpenSSL client
//! that spends more CPU per handshake than the server, so on the one core the
//! load gets it measures itself. This client makes no session cache, offers
//! X25519 only (as OpenSSL 3.0 clients such as curl and Python do) and skips
//! checking the server's certificate (loopback benchmark only: it connects to
//! 127.0.0.1 and nothing else), which keeps its own cost per handshake well
//! below the server's.
//!
//! ```text
//! tls_handshakes ADDR PATH SECONDS CONCURRENCY [plain]
//! ```
//! sends `GET PATH` with `Connection: close` to ADDR (127.0.0.1 only) from
//! CONCURRENCY connections at a time for SECONDS, then prints one JSON line:
//! `{"handshakes":N,"errors":E,"seconds":S,"rate":R,"client_cpu_s":C,"negotiated":"..."}`
//! (`client_cpu_s`: this process's user + system CPU time, to tell whether the load
//! generator, rather than the server, set the rate).
//! `plain` does the same without TLS (the TCP-only baseline).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Accepts any certificate and signature: the benchmark measures the server.
#[derive(Debug)]
struct AnyServer(Vec<SignatureScheme>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

fn client_config() -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .kx_groups
        .retain(|g| g.name() == rustls::NamedGroup::X25519);
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("provider supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(schemes)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Sends the request and reads until the server closes; true on a 200.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &[u8]) -> bool {
    let mut buf = Vec::with_capacity(1024);
    if s.write_all(request).await.is_err() || s.read_to_end(&mut buf).await.is_err() {
        // A TLS peer that closes without close_notify is fine here.
        return buf.starts_with(b"HTTP/1.1 200");
    }
    buf.starts_with(b"HTTP/1.1 200")
}

/// User + system CPU seconds of this process so far (Linux: /proc/self/stat).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at state (field 3).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state; 100 Hz on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: tls_handshakes ADDR PATH SECONDS CONCURRENCY [plain]");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[0].parse().expect("ADDR is ip:port");
    assert!(addr.ip().is_loopback(), "loopback targets only");
    let path = args[1].clone();
    let seconds: f64 = args[2].parse().expect("SECONDS");
    let concurrency: usize = args[3].parse().expect("CONCURRENCY");
    let plain = args.get(4).is_some_and(|a| a == "plain");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let request: Arc<[u8]> = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .into_bytes()
        .into();
        let connector = tokio_rustls::TlsConnector::from(client_config());
        let name = ServerName::try_from("localhost").expect("valid name");
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let negotiated = Arc::new(Mutex::new(String::new()));
        let cpu0 = cpu_seconds();
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(seconds);
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (request, connector, name) = (request.clone(), connector.clone(), name.clone());
            let (ok, errors, negotiated) = (ok.clone(), errors.clone(), negotiated.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let Ok(tcp) = TcpStream::connect(addr).await else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let good = if plain {
                        exchange(tcp, &request).await
                    } else {
                        match connector.connect(name.clone(), tcp).await {
                            Ok(tls) => {
                                {
                                    let mut n = negotiated.lock().expect("not poisoned");
                                    if n.is_empty() {
                                        let c = tls.get_ref().1;
                                        *n = format!(
                                            "{:?} {:?} {:?}",
                                            c.protocol_version(),
                                            c.negotiated_cipher_suite().map(|s| s.suite()),
                                            c.negotiated_key_exchange_group().map(|g| g.name())
                                        );
                                    }
                                }
                                exchange(tls, &request).await
                            }
                            Err(_) => false,
                        }
                    };
                    let counter = if good { &ok } else { &errors };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let secs = start.elapsed().as_secs_f64();
        let n = ok.load(Ordering::Relaxed);
        println!(
            "{{\"handshakes\":{n},\"errors\":{},\"seconds\":{secs:.3},\"rate\":{:.1},\"client_cpu_s\":{:.2},\"negotiated\":\"{}\"}}",
            errors.load(Ordering::Relaxed),
            n as f64 / secs,
            cpu_seconds() - cpu0,
            if plain { "plain".to_string() } else { negotiated.lock().expect("not poisoned").clone() }
        );
    });
}
