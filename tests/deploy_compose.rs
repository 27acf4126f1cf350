//! docker-compose.yml checked without a Docker engine: the compose tools'
//! validation, the proxy's config under exactly the environment the compose
//! file gives it, the healthcheck command run for real, and the lifecycle
//! settings (stop grace, start order, mounted config folder).

mod deploy_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use deploy_common::*;
use serde_json::Value;

const TOKEN: &str = "compose-test-token";

fn compose_vars() -> BTreeMap<String, String> {
    // What a user exports before `docker compose up` (README).
    BTreeMap::from([
        ("LETTA_PROXY_ADMIN_TOKEN".to_string(), TOKEN.to_string()),
        ("OPENAI_API_KEY".to_string(), "sk-test".to_string()),
    ])
}

/// docker-compose.yml with `${…}` resolved from `vars`, as JSON.
fn compose(py: &Path, vars: &BTreeMap<String, String>) -> Result<Value, String> {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let text = interpolate(&text, vars)?;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("docker-compose.yml");
    std::fs::write(&p, text).unwrap();
    Ok(yaml(py, &p))
}

/// `ENV` lines of the Dockerfile's runtime stage (the image's environment).
fn image_env() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let runtime = text
        .split("\nFROM ")
        .last()
        .expect("a runtime stage after the builder");
    runtime
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("ENV KEY=value");
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

/// The environment the letta-proxy container gets: the image's, then the
/// compose file's `environment:` (which wins).
fn container_env(svc: &Value) -> BTreeMap<String, String> {
    let mut env = image_env();
    match &svc["environment"] {
        Value::Object(m) => {
            for (k, v) in m {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                env.insert(k.clone(), v);
            }
        }
        Value::Null => {}
        other => panic!("environment as a map, please: {other}"),
    }
    env
}

/// Maps a path inside the container to the repository through the service's
/// bind mounts (`./host:/container[:ro]`).
fn host_path(svc: &Value, container: &str) -> Option<PathBuf> {
    let mounts = svc["volumes"].as_array()?;
    mounts.iter().filter_map(|m| m.as_str()).find_map(|m| {
        let mut parts = m.split(':');
        let (src, dst) = (parts.next()?, parts.next()?);
        if !src.starts_with("./") {
            return None; // a named volume
        }
        let rest = container.strip_prefix(dst)?;
        let rest = rest.trim_start_matches('/');
        let base = root().join(&src[2..]);
        Some(if rest.is_empty() {
            base
        } else {
            base.join(rest)
        })
    })
}

fn service<'a>(c: &'a Value, name: &str) -> &'a Value {
    let s = &c["services"][name];
    assert!(s.is_object(), "service {name} missing");
    s
}

#[test]
fn docker_compose_config_accepts_the_file_and_demands_the_admin_token() {
    let Some(dc) = tool_or_skip("docker-compose", "compose config") else {
        return;
    };
    let out = run(Command::new(&dc)
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(root())
        .env_remove("LETTA_PROXY_ADMIN_TOKEN")
        .envs(compose_vars()));
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the token, compose refuses to start anything (no default token).
    let out = run(Command::new(&dc)
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(root())
        .env_remove("LETTA_PROXY_ADMIN_TOKEN"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("LETTA_PROXY_ADMIN_TOKEN"),
        "compose must demand LETTA_PROXY_ADMIN_TOKEN: {err}"
    );
}

#[test]
fn the_compose_file_matches_the_compose_specification() {
    let Some(cj) = tool_or_skip("check-jsonschema", "compose schema") else {
        return;
    };
    let out = run(Command::new(cj)
        .args([
            "--builtin-schema",
            "vendor.compose-spec",
            "docker-compose.yml",
        ])
        .current_dir(root()));
    assert!(
        out.status.success(),
        "compose-spec: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 12: the proxy restart-looped because compose.toml's admin listener
/// needed a token nobody gave it. Every config file must pass `--check` with
/// the container's exact environment, through the path the compose file mounts.
#[test]
fn every_config_file_checks_with_the_compose_environment() {
    let Some(py) = python_with_yaml("config --check") else {
        return;
    };
    let c = compose(&py, &compose_vars()).unwrap();
    let svc = service(&c, "letta-proxy");
    let env = container_env(svc);
    assert_eq!(
        env.get("LETTA_PROXY__ADMIN__TOKEN").map(String::as_str),
        Some(TOKEN)
    );
    // The file the container is started with, found through the bind mount.
    let args: Vec<&str> = svc["command"]
        .as_array()
        .expect("command as a list")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let i = args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config");
    let started_with = host_path(svc, args[i + 1]).expect("--config lies in a bind mount");
    assert!(started_with.is_file(), "{}", started_with.display());
    let (code, out, err) = proxy(
        &["--config", started_with.to_str().unwrap(), "--check"],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listen 0.0.0.0:8300"), "{out}");

    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("config")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue; // prometheus.yml is Prometheus's (checked by promtool)
        }
        let (code, out, err) = proxy(&["--config", p.to_str().unwrap(), "--check"], &env);
        assert_eq!(code, 0, "{}: {err}", p.display());
        // The image listens on all interfaces whatever the file says.
        assert!(
            out.contains("listen 0.0.0.0:8300"),
            "{}: {out}",
            p.display()
        );
        checked += 1;
    }
    assert!(checked >= 3, "config/*.toml checked: {checked}");

    // A digit-only token (what `openssl rand -hex` can give, rarely) is a token too.
    let mut vars = compose_vars();
    vars.insert("LETTA_PROXY_ADMIN_TOKEN".into(), "123456".into());
    let digits = container_env(service(&compose(&py, &vars).unwrap(), "letta-proxy"));
    let (code, _, err) = proxy(
        &["--config", started_with.to_str().unwrap(), "--check"],
        &digits,
    );
    assert_eq!(code, 0, "digit-only token: {err}");

    // The environment is what makes compose.toml valid: without the token it is not.
    let mut bare = env.clone();
    bare.remove("LETTA_PROXY__ADMIN__TOKEN");
    let (code, _, err) = proxy(
        &["--config", started_with.to_str().unwrap(), "--check"],
        &bare,
    );
    assert_eq!(code, 2, "without the token: {err}");
    assert!(err.contains("admin.token"), "{err}");
}

#[test]
fn docker_stops_the_proxy_only_after_its_shutdown_grace() {
    let Some(py) = python_with_yaml("stop grace") else {
        return;
    };
    let c = compose(&py, &compose_vars()).unwrap();
    let svc = service(&c, "letta-proxy");
    let stop = duration(str_at(svc, "/stop_grace_period"));
    let env: Vec<(String, String)> = container_env(svc).into_iter().collect();
    let cfg = letta_proxy::Config::load(Some(&root().join("config/compose.toml")), env).unwrap();
    assert!(
        stop >= cfg.server.shutdown_grace + std::time::Duration::from_secs(5),
        "stop_grace_period {stop:?} must exceed shutdown_grace {:?} by a margin",
        cfg.server.shutdown_grace
    );
}

#[test]
fn the_proxy_starts_with_one_healthy_replica_and_mounts_the_config_folder() {
    let Some(py) = python_with_yaml("start order") else {
        return;
    };
    let c = compose(&py, &compose_vars()).unwrap();
    let svc = service(&c, "letta-proxy");
    let deps = svc["depends_on"].as_object().expect("depends_on as a map");
    let letta: Vec<(&String, &str)> = deps
        .iter()
        .filter(|(k, _)| k.starts_with("letta-") && *k != "letta-migrate")
        .map(|(k, v)| (k, v["condition"].as_str().unwrap_or("service_started")))
        .collect();
    let healthy = letta
        .iter()
        .filter(|(_, cond)| *cond == "service_healthy")
        .count();
    assert_eq!(
        healthy, 1,
        "exactly one Letta replica must be waited for healthy: {letta:?}"
    );
    // The others are started after that one (letta-2 waits for letta-1).
    let (first, _) = letta.iter().find(|(_, c)| *c == "service_healthy").unwrap();
    for (name, _) in letta.iter().filter(|(n, _)| n != first) {
        let d = &service(&c, name)["depends_on"][first.as_str()]["condition"];
        assert_eq!(d, "service_healthy", "{name} should wait for {first}");
    }
    // A folder, not a file, is mounted: an editor's save-by-rename is seen inside.
    let mount = svc["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .find(|v| v.starts_with("./config"))
        .expect("config mounted");
    let src = root().join(mount.split(':').next().unwrap().trim_start_matches("./"));
    assert!(src.is_dir(), "{mount}: mount the folder, not a file");
    let env: Vec<(String, String)> = container_env(svc).into_iter().collect();
    let cfg = letta_proxy::Config::load(Some(&root().join("config/compose.toml")), env).unwrap();
    assert!(cfg.admin.watch_config, "compose.toml should reload on save");
}

/// The healthcheck's exact command, run with the binary against a real proxy
/// (its address substituted for the container's 127.0.0.1:8300): 0 while a
/// backend is usable, 1 when none is.
#[tokio::test]
async fn the_compose_healthcheck_command_reports_readiness() {
    let Some(py) = python_with_yaml("healthcheck") else {
        return;
    };
    let c = compose(&py, &compose_vars()).unwrap();
    let test: Vec<String> = service(&c, "letta-proxy")["healthcheck"]["test"]
        .as_array()
        .expect("healthcheck.test as a list")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(test[0], "CMD", "exec form: the image has no shell tools");
    assert_eq!(test[1], "letta-proxy");
    assert!(
        test.iter().any(|a| a.contains("127.0.0.1:8300")),
        "{test:?}"
    );

    let backend = letta_proxy::standin::StandIn::start("b").await.unwrap();
    let mut config = letta_proxy::Config::default();
    config.backends[0].url = backend.url();
    config.health.interval = std::time::Duration::from_millis(50);
    config.health.unhealthy_threshold = 1;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(letta_proxy::serve(listener, config, async {
        let _ = stop_rx.await;
    }));
    let argv: Vec<String> = test[2..]
        .iter()
        .map(|a| a.replace("127.0.0.1:8300", &addr.to_string()))
        .collect();
    let probe = move || {
        let argv = argv.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_letta-proxy"))
                    .args(&argv)
                    .output()
                    .unwrap()
                    .status
                    .code()
            })
            .await
            .unwrap()
        }
    };
    let wait_for = |want: i32| {
        let probe = probe.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let got = probe().await;
                if got == Some(want) {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "healthcheck exit {got:?}, want {want}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(0).await;
    backend.set_mode(letta_proxy::standin::Mode::Fail(500));
    wait_for(1).await;
    let _ = stop_tx.send(());
    let _ = server.await;
}

#[test]
fn prometheus_config_and_its_rules_pass_promtool() {
    let Some(py) = python_with_yaml("prometheus config") else {
        return;
    };
    let Some(promtool) = tool_or_skip("promtool", "prometheus config") else {
        return;
    };
    let c = compose(&py, &compose_vars()).unwrap();
    let svc = service(&c, "prometheus");
    let cfg_path = host_path(svc, "/etc/prometheus/prometheus.yml").expect("config mounted");
    // Lay the container's /etc/prometheus out in a temporary folder, from the mounts.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    let mut rules = 0;
    for m in svc["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
    {
        let mut parts = m.split(':');
        let (src, dst) = (parts.next().unwrap(), parts.next().unwrap());
        if let Some(rel) = dst.strip_prefix("/etc/prometheus/rules/") {
            std::fs::create_dir_all(dir.path().join("rules")).unwrap();
            std::fs::copy(root().join(&src[2..]), dir.path().join("rules").join(rel)).unwrap();
            rules += 1;
        }
    }
    assert!(
        rules >= 1,
        "the alert rules are mounted where rule_files looks"
    );
    let local = text.replace(
        "/etc/prometheus/rules/",
        &format!("{}/rules/", dir.path().display()),
    );
    assert_ne!(local, text, "rule_files points at /etc/prometheus/rules/");
    let p = dir.path().join("prometheus.yml");
    std::fs::write(&p, local).unwrap();
    let out = run(Command::new(promtool).arg("check").arg("config").arg(&p));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check config: {all}");
    assert!(
        all.contains("alerts.yml") && all.contains("SUCCESS"),
        "{all}"
    );
}

#[test]
fn grafana_provisioning_points_at_the_mounted_dashboard() {
    let Some(py) = python_with_yaml("grafana provisioning") else {
        return;
    };
    let c = compose(&py, &compose_vars()).unwrap();
    let svc = service(&c, "grafana");
    let provider = host_path(svc, "/etc/grafana/provisioning/dashboards/letta-proxy.yml")
        .expect("dashboard provider mounted");
    let p = yaml(&py, &provider);
    let folder = str_at(&p, "/providers/0/options/path");
    let dash = host_path(svc, &format!("{folder}/letta-proxy.json"))
        .expect("the provider's folder holds the mounted dashboard");
    let d: Value = serde_json::from_slice(&std::fs::read(&dash).unwrap()).unwrap();
    assert_eq!(d["uid"], "letta-proxy");
    let ds = host_path(svc, "/etc/grafana/provisioning/datasources/prometheus.yml")
        .expect("data source mounted");
    let ds = yaml(&py, &ds);
    assert_eq!(str_at(&ds, "/datasources/0/url"), "http://prometheus:9090");
    // The dashboard's panels use the provisioned data source's uid.
    let uid = str_at(&ds, "/datasources/0/uid");
    let text = std::fs::read_to_string(&dash).unwrap();
    assert!(
        text.contains(uid),
        "dashboard refers to data source uid {uid}"
    );
}

#[test]
fn no_deployment_file_names_a_folder_outside_the_repository() {
    let mut files = vec![
        root().join("docker-compose.yml"),
        root().join("Dockerfile"),
        root().join(".dockerignore"),
    ];
    // config/e2e.toml belongs to the e2e kit; these are the deployment files.
    files.push(root().join("config/compose.toml"));
    files.push(root().join("config/prometheus.yml"));
    let mut stack = vec![root().join("deploy")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    // Split so that this file does not name the folder itself.
    let sibling = format!("../{}", "shared");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        assert!(!text.contains(&sibling), "{} names {sibling}", f.display());
    }
}
