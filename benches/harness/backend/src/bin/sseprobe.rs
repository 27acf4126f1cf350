//! SSE probe: C concurrent workers, each repeatedly opens an SSE stream (POST by default)
//! on a keep-alive HTTP/1.1 connection and measures
//!   hdr_ms   : time to response headers
//!   ttfb_ms  : time to the first body bytes (first SSE event)   <- buffering shows up here
//!   total_ms : time to the end of the stream
//! for the given duration (bounded: each stream also has a hard 15 s timeout).
//! Prints one JSON object on stdout.
//!
//! Usage: sseprobe --url http://127.0.0.1:18081/v1/agents/a1/messages/stream?events=10&interval_ms=50
//!                 [--concurrency 32] [--duration 10] [--method POST|GET] [--gzip]
//! (--gzip sends Accept-Encoding: gzip; events are then counted only if uncompressed)

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Default)]
struct Stats {
    hdr: Vec<f64>,
    ttfb: Vec<f64>,
    total: Vec<f64>,
    events_min: u64,
    events_max: u64,
    errors: u64,
    non_200: u64,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn jnum(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".into()
    }
}

async fn one_stream(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    authority: &str,
    path: &str,
    method: &str,
    gzip: bool,
) -> Result<(f64, f64, f64, u64, u16), String> {
    let body = if method == "POST" {
        Bytes::from_static(br#"{"messages":[{"role":"user","content":"hello, stream please"}],"stream_tokens":true}"#)
    } else {
        Bytes::new()
    };
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .header("accept", "text/event-stream");
    if method == "POST" {
        b = b.header("content-type", "application/json");
    }
    if gzip {
        b = b.header("accept-encoding", "gzip");
    }
    let req = b.body(Full::new(body)).map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let hdr = t0.elapsed().as_secs_f64() * 1e3;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut ttfb = f64::NAN;
    let mut events = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(d) = frame.data_ref() {
            if d.is_empty() {
                continue;
            }
            if ttfb.is_nan() {
                ttfb = t0.elapsed().as_secs_f64() * 1e3;
            }
            events += d.windows(2).filter(|w| w == b"\n\n").count() as u64;
        }
    }
    let total = t0.elapsed().as_secs_f64() * 1e3;
    Ok((hdr, ttfb, total, events, status))
}

async fn worker(
    addr: String,
    authority: String,
    path: String,
    method: String,
    gzip: bool,
    deadline: Instant,
) -> Stats {
    let mut st = Stats {
        events_min: u64::MAX,
        ..Default::default()
    };
    let mut conn: Option<http1::SendRequest<Full<Bytes>>> = None;
    while Instant::now() < deadline {
        if conn.is_none() {
            match TcpStream::connect(&addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    match http1::handshake(TokioIo::new(s)).await {
                        Ok((sender, c)) => {
                            tokio::spawn(async move {
                                let _ = c.await;
                            });
                            conn = Some(sender);
                        }
                        Err(_) => {
                            st.errors += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                Err(_) => {
                    st.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let sender = conn.as_mut().unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(15),
            one_stream(sender, &authority, &path, &method, gzip),
        )
        .await;
        match r {
            Ok(Ok((hdr, ttfb, total, events, status))) => {
                if status != 200 {
                    st.non_200 += 1;
                }
                st.hdr.push(hdr);
                if ttfb.is_finite() {
                    st.ttfb.push(ttfb);
                }
                st.total.push(total);
                st.events_min = st.events_min.min(events);
                st.events_max = st.events_max.max(events);
            }
            _ => {
                st.errors += 1;
                conn = None;
            }
        }
    }
    st
}

fn main() {
    let mut url = String::new();
    let mut conc = 32usize;
    let mut dur = 10.0f64;
    let mut method = "POST".to_string();
    let mut gzip = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--url" => url = args.next().unwrap(),
            "--concurrency" | "-c" => conc = args.next().unwrap().parse().unwrap(),
            "--duration" | "-d" => dur = args.next().unwrap().parse().unwrap(),
            "--method" => method = args.next().unwrap().to_uppercase(),
            "--gzip" => gzip = true,
            other => panic!("unknown arg {other}"),
        }
    }
    let rest = url
        .strip_prefix("http://")
        .expect("--url http://host:port/path");
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(dur);
    let results = rt.block_on(async {
        let mut hs = Vec::new();
        for _ in 0..conc {
            hs.push(tokio::spawn(worker(
                authority.clone(),
                authority.clone(),
                path.clone(),
                method.clone(),
                gzip,
                deadline,
            )));
        }
        let mut out = Vec::new();
        for h in hs {
            out.push(h.await.unwrap());
        }
        out
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut all = Stats {
        events_min: u64::MAX,
        ..Default::default()
    };
    for s in results {
        all.hdr.extend(s.hdr);
        all.ttfb.extend(s.ttfb);
        all.total.extend(s.total);
        all.events_min = all.events_min.min(s.events_min);
        all.events_max = all.events_max.max(s.events_max);
        all.errors += s.errors;
        all.non_200 += s.non_200;
    }
    let n = all.total.len();
    let ttfb_mean = if all.ttfb.is_empty() {
        f64::NAN
    } else {
        all.ttfb.iter().sum::<f64>() / all.ttfb.len() as f64
    };
    println!(
        "{{\"streams\":{n},\"errors\":{},\"non_200\":{},\"elapsed_s\":{},\"streams_per_s\":{},\"events_min\":{},\"events_max\":{},\"hdr_ms\":{{\"p50\":{},\"p99\":{}}},\"ttfb_ms\":{{\"mean\":{},\"p50\":{},\"p99\":{},\"max\":{}}},\"total_ms\":{{\"p50\":{},\"p99\":{}}}}}",
        all.errors,
        all.non_200,
        jnum(elapsed),
        jnum(n as f64 / elapsed),
        if all.events_min == u64::MAX { 0 } else { all.events_min },
        all.events_max,
        jnum(pct(&mut all.hdr, 50.0)),
        jnum(pct(&mut all.hdr, 99.0)),
        jnum(ttfb_mean),
        jnum(pct(&mut all.ttfb, 50.0)),
        jnum(pct(&mut all.ttfb, 99.0)),
        jnum(pct(&mut all.ttfb, 100.0)),
        jnum(pct(&mut all.total, 50.0)),
        jnum(pct(&mut all.total, 99.0)),
    );
}
