//! The binary's contract: `--check` validates, bad configs fail with a message
//! that names the key and the file, exit code 2.

#[path = "support/port.rs"]
mod port;

use std::process::Command;

use port::free_port;

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_letta-proxy"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

#[test]
fn the_shipped_config_checks_ok() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/letta-proxy.toml");
    let (code, out, err) = run(&["--config", path, "--check"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("config ok") && out.contains("127.0.0.1:8300"),
        "{out}"
    );
}

#[test]
fn an_unknown_key_is_named_with_its_file() {
    let f = write("[server]\nlisten = \"127.0.0.1:1\"\nconect_timeout = \"1s\"\n");
    let p = f.path().to_str().unwrap();
    let (code, _, err) = run(&["--config", p, "--check"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("conect_timeout") && err.contains(p), "{err}");
}

#[test]
fn broken_files_fail_clearly() {
    for (text, needle) in [
        ("[server\n", "invalid config"),
        ("[balancer]\nstrategy = \"fastest\"\n", "fastest"),
        ("[server]\nconnect_timeout = 5\n", "connect_timeout"),
        (
            "[[backends]]\nname = \"a\"\nurl = \"ftp://x:1\"\n",
            "backends[0].url",
        ),
        (
            "[[backends]]\nname = \"a\"\nurl = \"https://x:1\"\ntls_ca_file = \"/nonexistent/ca.pem\"\n",
            "/nonexistent/ca.pem",
        ),
        (
            "[server.tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n",
            "/nonexistent/cert.pem",
        ),
    ] {
        let f = write(text);
        let (code, _, err) = run(&["--config", f.path().to_str().unwrap(), "--check"], &[]);
        assert_eq!(code, 2, "{text}");
        assert!(err.contains(needle), "{text}: {err}");
    }
    let (code, _, err) = run(&["--config", "/nonexistent/letta.toml", "--check"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/letta.toml"), "{err}");
}

#[test]
fn environment_overrides_apply_and_are_validated() {
    let f = write("");
    let p = f.path().to_str().unwrap();
    let (code, out, _) = run(
        &["--config", p, "--check"],
        &[("LETTA_PROXY__BALANCER__STRATEGY", "random")],
    );
    assert_eq!(code, 0);
    assert!(out.contains("strategy random"), "{out}");
    let (code, _, err) = run(
        &["--config", p, "--check"],
        &[("LETTA_PROXY__SERVER__LISTEN", "not-an-address")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("LETTA_PROXY__SERVER__LISTEN"), "{err}");
}

/// The real binary: JSON access log without secrets, SIGHUP reload, SIGTERM exit 0.
#[tokio::test]
async fn the_binary_logs_reloads_on_sighup_and_exits_cleanly_on_sigterm() {
    use std::time::Duration;

    let backend = letta_proxy::standin::StandIn::start("be1").await.unwrap();
    let port = free_port();
    let text = |strategy: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[balancer]\nstrategy = \"{strategy}\"\n[health]\nenabled = false\n\
             [log]\nformat = \"json\"\n[[backends]]\nname = \"be1\"\nurl = \"{}\"\n",
            backend.url()
        )
    };
    let file = write(&text("round_robin"));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_letta-proxy"))
        .args(["--config", file.path().to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    // reqwest is built with rustls and no provider of its own: ours.
    letta_proxy::tls::install_default_provider();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let url =
        format!("http://127.0.0.1:{port}/v1/agents/agent-00000000-0000-4000-8000-000000000001");
    let resp = first_answer(|| c.get(&url).header("authorization", "Bearer sk-top-secret")).await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    std::fs::write(file.path(), text("random")).unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    // Wait for the reload to be visible, then stop.
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = c.get(&metrics).send().await.unwrap().text().await.unwrap();
        if m.contains("letta_proxy_config_reloads_total{result=\"success\"} 1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP reload not seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = stop_and_read_stderr(child);
    assert!(!logs.contains("sk-top-secret"), "secrets never logged");
    let access: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "letta_proxy::access")
        .collect();
    let first = access
        .iter()
        .find(|v| v["route"] == "/v1/agents/{agent_id}")
        .expect("access line");
    assert_eq!(first["status"], 200);
    assert_eq!(first["backend"], "be1");
    assert_eq!(first["request_id"].as_str().unwrap().len(), 32);
    assert!(first["duration_ms"].is_number() && first["bytes"].as_u64().unwrap() > 0);
    assert!(logs.contains("config reloaded"), "{logs}");
}

/// `letta-proxy health URL`: the container healthcheck (the image has no curl).
/// 0 on a 2xx answer, 1 on anything else, within its timeout; reads no config.
#[tokio::test]
async fn the_health_subcommand_exits_0_on_2xx_and_1_otherwise() {
    use std::time::{Duration, Instant};
    let backend = letta_proxy::standin::StandIn::start("h").await.unwrap();
    let health = |url: String, timeout: &'static str| {
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_letta-proxy"))
                .args(["health", "--timeout", timeout, &url])
                // A broken config must not fail the probe: it reads none.
                .env("LETTA_PROXY__SERVER__LISTEN", "not-an-address")
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
                started.elapsed(),
            )
        })
    };
    let (code, err, _) = health(format!("{}/v1/health/", backend.url()), "5s")
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let (code, err, _) = health(format!("{}/v1/agents/x?status=503", backend.url()), "5s")
        .await
        .unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("503"), "{err}");
    let (code, _, _) = health(format!("{}/v1/agents/x?status=404", backend.url()), "5s")
        .await
        .unwrap();
    assert_eq!(code, Some(1));
    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/-/ready", closed.local_addr().unwrap());
    drop(closed);
    let (code, _, _) = health(dead, "5s").await.unwrap();
    assert_eq!(code, Some(1));
    // A server that accepts and never answers: the timeout bounds the probe.
    let (code, err, took) = health(format!("{}/v1/agents/x?hang=1", backend.url()), "300ms")
        .await
        .unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("300ms"), "{err}");
    assert!(took < Duration::from_secs(10), "bounded: {took:?}");
    // http:// and https:// only (https is tested with the TLS tests).
    let (code, err, _) = health("ftp://127.0.0.1:1/".into(), "1s").await.unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("https://"), "{err}");
}

#[test]
fn the_usual_flags_still_work_beside_the_subcommand() {
    let (code, out, _) = run(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(out.starts_with("letta-proxy "), "{out}");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/letta-proxy.toml");
    let (code, out, _) = run(&["-c", path, "--check"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("config ok"), "{out}");
    // The subcommand and the run flags do not mix.
    let (code, _, err) = run(&["--check", "health", "http://127.0.0.1:1/"], &[]);
    assert_eq!(code, 2, "{err}");
}

/// The `--demo` lines tell the truth: the round-robin loop shows each replica
/// in turn (the cache does not answer it), and the cache loop shows a MISS
/// then a HIT. The printed commands are parsed and sent as curl would.
#[tokio::test]
async fn the_demo_commands_show_round_robin_and_a_cache_hit() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/letta-proxy.toml");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_letta-proxy"))
        .args(["--demo", "-c", path])
        .env("LETTA_PROXY__SERVER__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for l in std::io::BufReader::new(stdout).lines().take(40) {
            let l = l.unwrap();
            let end = l.contains("Ctrl-C stops");
            lines.push(l);
            if end {
                break;
            }
        }
        lines
    });
    let lines = tokio::time::timeout(Duration::from_secs(30), lines)
        .await
        .expect("demo printed its lines")
        .unwrap();
    let loop_line = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle) && l.contains("curl"))
            .unwrap_or_else(|| panic!("no line with {needle}: {lines:#?}"))
            .clone()
    };
    // `for i in 1 2 3 …; do curl … -H 'k: v' … http://… | grep …; done`
    let parse = |line: &str| {
        let count = line
            .split("for i in ")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .split_whitespace()
            .count();
        let curl = line
            .split("curl ")
            .nth(1)
            .unwrap()
            .split(" | ")
            .next()
            .unwrap();
        let headers: Vec<(String, String)> = curl
            .split("-H '")
            .skip(1)
            .map(|h| {
                let h = h.split('\'').next().unwrap();
                let (k, v) = h.split_once(':').unwrap();
                (k.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let url = curl
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap()
            .to_string();
        (count, headers, url)
    };
    // reqwest is built with rustls and no provider of its own: ours.
    letta_proxy::tls::install_default_provider();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let send = |headers: Vec<(String, String)>, url: String| {
        let c = c.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let mut req = c.get(&url);
                for (k, v) in &headers {
                    req = req.header(k, v);
                }
                match req.send().await {
                    Ok(r) => break r,
                    Err(e) => {
                        assert!(Instant::now() < deadline, "{url}: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    };

    let (n, headers, url) = parse(&loop_line("x-letta-proxy-backend"));
    assert_eq!(n, 6);
    let mut seen = Vec::new();
    for _ in 0..n {
        let r = send(headers.clone(), url.clone()).await;
        assert_eq!(r.status(), 200);
        seen.push(
            r.headers()["x-letta-proxy-backend"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    // Round robin over three: a cycle of three distinct replicas, repeated.
    let mut first3 = seen[..3].to_vec();
    first3.sort();
    first3.dedup();
    assert_eq!(first3.len(), 3, "round robin shows every replica: {seen:?}");
    assert_eq!(seen[..3], seen[3..], "in turn: {seen:?}");

    let (n, headers, url) = parse(&loop_line("x-cache"));
    assert_eq!(n, 2);
    let x_cache = |r: &reqwest::Response| r.headers()["x-cache"].to_str().unwrap().to_string();
    let first = send(headers.clone(), url.clone()).await;
    assert_eq!(
        (first.status().as_u16(), x_cache(&first)),
        (200, "MISS".into())
    );
    // The answer is stored once its body has ended (off the request path): a
    // person typing the loop's second curl sees a HIT; poll briefly for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = send(headers.clone(), url.clone()).await;
        assert_eq!(r.status(), 200);
        if x_cache(&r) == "HIT" {
            break;
        }
        assert!(Instant::now() < deadline, "no cache hit: {}", x_cache(&r));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The binary's stderr around one proxied GET, in `format`, with `RUST_LOG`
/// when given; stopped by SIGTERM (which writes every queued line).
async fn logs_of_one_request(format: &str, rust_log: Option<&str>) -> String {
    let backend = letta_proxy::standin::StandIn::start("be1").await.unwrap();
    let port = free_port();
    let file = write(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[health]\nenabled = false\n\
         [log]\nformat = \"{format}\"\n[[backends]]\nname = \"be1\"\nurl = \"{}\"\n",
        backend.url()
    ));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_letta-proxy"));
    cmd.args(["--config", file.path().to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped());
    if let Some(filter) = rust_log {
        cmd.env("RUST_LOG", filter);
    }
    let child = cmd.spawn().unwrap();
    letta_proxy::tls::install_default_provider();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let url =
        format!("http://127.0.0.1:{port}/v1/agents/agent-00000000-0000-4000-8000-000000000001");
    let resp = first_answer(|| c.get(&url)).await;
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    stop_and_read_stderr(child)
}

/// The answer to `request` once the binary listens: sent again every 20 ms
/// while the connection is refused, for at most 20 s.
async fn first_answer(request: impl Fn() -> reqwest::RequestBuilder) -> reqwest::Response {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match request().send().await {
            Ok(r) => return r,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("proxy never came up: {e}"),
        }
    }
}

/// SIGTERM, a graceful exit (0), and what the process wrote on stderr.
fn stop_and_read_stderr(mut child: std::process::Child) -> String {
    use std::io::Read;
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert_eq!(child.wait().unwrap().code(), Some(0), "graceful exit");
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    logs
}

/// The binary writes the access line by hand (`observe::access`); it keeps
/// the text shape and obeys `RUST_LOG` like any other event.
#[tokio::test]
async fn the_binarys_text_access_line_follows_rust_log() {
    let logs = logs_of_one_request("text", None).await;
    let line = logs
        .lines()
        .find(|l| l.contains(" INFO letta_proxy::access: "))
        .unwrap_or_else(|| panic!("no access line: {logs}"));
    assert!(
        humantime::parse_rfc3339(line.split(' ').next().unwrap()).is_ok(),
        "{line}"
    );
    assert!(
        line.contains(" method=\"GET\" route=\"/v1/agents/{agent_id}\" status=200 backend=\"be1\"")
            && line.ends_with(" complete=true"),
        "{line}"
    );

    let logs = logs_of_one_request("text", Some("info,letta_proxy::access=off")).await;
    assert!(logs.contains("letta-proxy listening"), "{logs}");
    assert!(!logs.contains("letta_proxy::access"), "{logs}");
}
