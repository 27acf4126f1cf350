//! The binary's contract: `--check` validates, bad configs fail with a message
//! that names the key and the file, exit code 2.

use std::process::Command;

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
    use std::io::Read;
    use std::time::Duration;

    let backend = letta_proxy::standin::StandIn::start("be1").await.unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let text = |strategy: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[balancer]\nstrategy = \"{strategy}\"\n[health]\nenabled = false\n\
             [log]\nformat = \"json\"\n[[backends]]\nname = \"be1\"\nurl = \"{}\"\n",
            backend.url()
        )
    };
    let file = write(&text("round_robin"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_letta-proxy"))
        .args(["--config", file.path().to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let c = reqwest::Client::builder().no_proxy().build().unwrap();
    let url =
        format!("http://127.0.0.1:{port}/v1/agents/agent-00000000-0000-4000-8000-000000000001");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let resp = loop {
        match c
            .get(&url)
            .header("authorization", "Bearer sk-top-secret")
            .send()
            .await
        {
            Ok(r) => break r,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("proxy never came up: {e}"),
        }
    };
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
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "graceful exit");
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
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
