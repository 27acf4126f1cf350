//! The monitoring shipped in deploy/: alert rules checked and unit-tested by
//! promtool, and every Grafana panel's query evaluated by a real Prometheus
//! that scrapes a real letta-proxy under a load that makes the events happen
//! (a cache hit, a retry, an ejection, queue waits and shedding, a failed
//! reload, 5xx answers, a stream, ordered agent writes), with Redis as the
//! shared cache tier and for coordination (write leases, the instance
//! registry). A query that errors or returns no series fails the test.

mod deploy_common;
#[path = "support/port.rs"]
mod port;
#[path = "support/redis.rs"]
#[allow(dead_code)]
mod redis_server;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deploy_common::*;
use letta_proxy::standin::{Mode, StandIn};
use port::free_port;
use serde_json::Value;

const AGENT: &str = "agent-00000000-0000-4000-8000-000000000001";

fn prom_dir() -> std::path::PathBuf {
    root().join("deploy/prometheus")
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = tool_or_skip("promtool", "alert rules") else {
        return;
    };
    let out = run(Command::new(&promtool)
        .args(["check", "rules", "alerts.yml"])
        .current_dir(prom_dir()));
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(Command::new(&promtool)
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(prom_dir()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("SUCCESS"), "{text}");
}

/// Every alert of alerts.yml has a unit test in which it fires.
#[test]
fn every_alert_has_a_unit_test_that_fires_it() {
    let Some(py) = python_with_yaml("alert coverage") else {
        return;
    };
    let rules = yaml(&py, &prom_dir().join("alerts.yml"));
    let tests = yaml(&py, &prom_dir().join("alerts_test.yml"));
    let alerts: Vec<&str> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert!(alerts.len() >= 7, "{alerts:?}");
    for alert in alerts {
        let fired = tests["tests"].as_array().unwrap().iter().any(|t| {
            t["alert_rule_test"].as_array().is_some_and(|cases| {
                cases.iter().any(|c| {
                    c["alertname"] == alert
                        && c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty())
                })
            })
        });
        assert!(fired, "alert {alert} has no unit test in which it fires");
    }
}

/// Kills the child when dropped (bounded cleanup whatever the test does).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client() -> reqwest::Client {
    // reqwest is built with rustls and no provider of its own: ours.
    letta_proxy::tls::install_default_provider();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn wait_until<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the `/metrics` sample of family `name` carrying every label of
/// `labels` (`key="value"` strings), 0 when there is none.
async fn sample(c: &reqwest::Client, base: &str, name: &str, labels: &[&str]) -> f64 {
    let text = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| {
            (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                && labels.iter().all(|lv| l.contains(lv))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// An instant query through Prometheus's HTTP API: `Ok(series)` or `Err(error)`.
async fn query(c: &reqwest::Client, prom: &str, q: &str) -> Result<Vec<Value>, String> {
    let r = c
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The values of a `label_values(selector, label)` variable, as Grafana gets them.
async fn label_values(c: &reqwest::Client, prom: &str, def: &str) -> Vec<String> {
    let inner = def
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unsupported variable query {def}"));
    let (selector, label) = inner.rsplit_once(',').unwrap();
    let v: Value = c
        .get(format!("{prom}/api/v1/label/{}/values", label.trim()))
        .query(&[("match[]", selector.trim())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "success", "{def}: {v}");
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Grafana's "All" of a multi-value variable inside `=~"…"`: the values,
/// regex-escaped (with PromQL string escaping), joined as `(a|b)`.
fn all_regex(values: &[String]) -> String {
    let esc: Vec<String> = values
        .iter()
        .map(|v| {
            v.chars()
                .map(|c| {
                    if "\\.+*?()|[]{}^$".contains(c) {
                        format!("\\\\{c}")
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        })
        .collect();
    format!("({})", esc.join("|"))
}

fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
    // Longest names first, so `$__rate_interval` is not read as `$__range`-ish prefixes.
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = expr.to_string();
    for n in names {
        out = out
            .replace(&format!("${{{n}}}"), &vars[n])
            .replace(&format!("${n}"), &vars[n]);
    }
    out
}

/// Every query of the dashboard: `(panel title, expr)`, rows' nested panels included.
fn dashboard_queries(d: &Value) -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            if let Some(inner) = p["panels"].as_array() {
                walk(inner, out);
            }
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(
                    !expr.is_empty(),
                    "panel {} has a target without expr",
                    p["title"]
                );
                out.push((p["title"].as_str().unwrap_or("?").to_string(), expr.into()));
            }
        }
    }
    let mut out = Vec::new();
    walk(d["panels"].as_array().unwrap(), &mut out);
    out
}

/// Metric names used by an expression (letta-proxy's, OTel HTTP and process families).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < bytes.len()
                && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'_')
            {
                i += 1;
            }
            let word = &expr[start..i];
            let quoted = start > 0 && (bytes[start - 1] == b'"' || bytes[start - 1] == b'$');
            if !quoted
                && ["letta_proxy_", "http_server_", "process_"]
                    .iter()
                    .any(|p| word.starts_with(p))
            {
                names.push(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The real thing: letta-proxy (the binary) over three stand-in backends and a
/// real Redis, Prometheus scraping it every second with alerts.yml loaded, a
/// bounded load that makes each event happen, then every panel query.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_query_returns_series_from_a_real_prometheus() {
    let Some(prometheus) = tool_or_skip("prometheus", "dashboard queries") else {
        return;
    };
    let Some(redis) = redis_server::RedisServer::start() else {
        return;
    };
    let dashboard: Value = serde_json::from_slice(
        &std::fs::read(root().join("deploy/grafana/letta-proxy.json")).unwrap(),
    )
    .unwrap();
    let c = client();

    // Backends: a and b behave; c will fail on demand.
    let a = StandIn::start("a").await.unwrap();
    let b = StandIn::start("b").await.unwrap();
    let flaky = StandIn::start("c").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg_path = dir.path().join("letta-proxy.toml");
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
[health]
# One probe round at start, then traffic alone judges (passive ejection).
interval = "1h"
passive_failures = 3
ejection_time = "2s"
[limits]
max_in_flight_per_backend = 2
queue_size = 2
queue_timeout = "300ms"
# Coordination on (the default with [redis]): the letta_proxy_coord_* series.
coordinate = true
[redis]
url = "{redis}"
[cache]
enabled = true
[[backends]]
name = "a"
url = "{a}"
[[backends]]
name = "b"
url = "{b}"
[[backends]]
name = "c"
url = "{c}"
"#,
        redis = redis.url(),
        a = a.url(),
        b = b.url(),
        c = flaky.url(),
    );
    std::fs::write(&cfg_path, &config).unwrap();
    let _proxy = Proc(
        Command::new(env!("CARGO_BIN_EXE_letta-proxy"))
            .arg("--config")
            .arg(&cfg_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let admin_base = format!("http://127.0.0.1:{admin}");
    wait_until(Duration::from_secs(30), "proxy ready", || async {
        c.get(format!("{base}/-/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    wait_until(Duration::from_secs(10), "Redis connected", || async {
        sample(&c, &base, "letta_proxy_cache_redis_available", &[]).await == 1.0
    })
    .await;

    // Prometheus: scrape every second, rules evaluated every second.
    let prom_port = free_port();
    let prom = format!("http://127.0.0.1:{prom_port}");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: letta-proxy\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n",
            rules = prom_dir().join("alerts.yml").display()
        ),
    )
    .unwrap();
    let _prom = Proc(
        Command::new(&prometheus)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(30), "Prometheus scraping", || async {
        query(&c, &prom, "up{job=\"letta-proxy\"} == 1")
            .await
            .is_ok_and(|r| !r.is_empty())
    })
    .await;

    // 1. Cache: the same read again and again (a MISS, then HITs; stored in Redis too).
    // The first answer is stored by a task of its own once its body ended, so the next
    // read may still miss: read until nine hits were counted (at most 50 reads).
    let mut hits = 0.0;
    for _ in 0..50 {
        let r = c.get(format!("{base}/v1/tools/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        hits = sample(
            &c,
            &base,
            "letta_proxy_cache_lookups_total",
            &["result=\"hit\"", "tier=\"l1\""],
        )
        .await;
        if hits >= 9.0 {
            break;
        }
    }
    assert!(hits >= 9.0, "L1 hits after 50 reads: {hits}");

    // 2. Retries and an ejection: c answers 503; safe reads landing on it go to
    //    another backend, and its consecutive failures eject it.
    flaky.set_mode(Mode::Fail(503));
    for i in 0..60 {
        let r = c
            .get(format!("{base}/v1/runs/?i={i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a retried read still succeeds");
        r.bytes().await.unwrap();
        if sample(
            &c,
            &base,
            "letta_proxy_backend_ejections_total",
            &["backend=\"c\""],
        )
        .await
            >= 1.0
        {
            break;
        }
    }
    assert!(
        sample(
            &c,
            &base,
            "letta_proxy_backend_ejections_total",
            &["backend=\"c\""]
        )
        .await
            >= 1.0
    );
    assert!(
        sample(
            &c,
            &base,
            "letta_proxy_retries_total",
            &["reason=\"status\""]
        )
        .await
            >= 1.0
    );
    flaky.set_mode(Mode::Normal);

    // 3. Queue waits and shedding: 2 slots per backend, a queue of 2 waiting up to
    //    300 ms. Slow requests fill it (queue_full, queue_timeout), short ones wait
    //    and get a slot (queue_wait observed).
    for delay in [600, 120, 120] {
        let burst = (0..16).map(|i| {
            let c = c.clone();
            let url = format!("{base}/v1/runs/?delay_ms={delay}&burst={i}");
            async move { c.get(url).send().await.map(|r| r.status().as_u16()) }
        });
        let codes: Vec<u16> = futures_util::future::join_all(burst)
            .await
            .into_iter()
            .map(|r| r.unwrap_or(0))
            .collect();
        assert!(codes.contains(&200), "{codes:?}");
    }
    assert!(
        sample(
            &c,
            &base,
            "letta_proxy_rejections_total",
            &["reason=\"queue_full\""]
        )
        .await
            >= 1.0
    );
    assert!(sample(&c, &base, "letta_proxy_queue_wait_seconds_count", &[]).await >= 1.0);

    // 4. A failed reload (the old config keeps serving), then a good one.
    std::fs::write(
        &cfg_path,
        format!("{config}\n[balancer]\nstrategy = \"fastest\"\n"),
    )
    .unwrap();
    let r = c
        .post(format!("{admin_base}/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    std::fs::write(&cfg_path, &config).unwrap();
    let r = c
        .post(format!("{admin_base}/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // 5. Ordered writes to one agent (the second waits), and a stream.
    let writes = (0..2).map(|i| {
        let c = c.clone();
        let url = format!("{base}/v1/agents/{AGENT}?delay_ms=150&w={i}");
        async move { c.patch(url).body("{}").send().await.map(|r| r.status()) }
    });
    for s in futures_util::future::join_all(writes).await {
        assert!(s.unwrap().is_success());
    }
    assert!(
        sample(
            &c,
            &base,
            "letta_proxy_coord_leases_total",
            &["outcome=\"acquired\""]
        )
        .await
            >= 2.0,
        "the ordered writes took write leases in Redis"
    );
    let r = c
        .post(format!(
            "{base}/v1/agents/{AGENT}/messages/stream?events=3&interval_ms=20"
        ))
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("[DONE]"));

    // The names used by the dashboard and the alerts all exist on /metrics.
    let exposed = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rules_text = std::fs::read_to_string(prom_dir().join("alerts.yml")).unwrap();
    let mut used: Vec<String> = dashboard_queries(&dashboard)
        .iter()
        .flat_map(|(_, e)| metric_names(e))
        .chain(metric_names(&rules_text))
        .collect();
    used.sort();
    used.dedup();
    for name in &used {
        if name.starts_with("letta_proxy_tls_") {
            // Exposed only with [server.tls] (this proxy is plain HTTP); tests/tls checks them.
            continue;
        }
        let found = exposed
            .lines()
            .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")));
        assert!(
            found,
            "{name} is used by the dashboard or alerts but not exposed"
        );
    }

    // Query phase: a bounded trickle of load keeps every rate() window populated
    // (reads that hit, reads answered 500 by a backend, a shed burst), and each
    // panel query must return at least one series without error.
    let vars_static = BTreeMap::from([
        ("__rate_interval".to_string(), "20s".to_string()),
        ("__interval".to_string(), "2s".to_string()),
        ("__range".to_string(), "10m".to_string()),
    ]);
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut round = 0;
    let failures = loop {
        round += 1;
        for path in [
            "/v1/tools/",
            "/v1/runs/?status=500",
            "/v1/runs/",
            "/v1/agents/",
        ] {
            if let Ok(r) = c.get(format!("{base}{path}")).send().await {
                let _ = r.bytes().await;
            }
        }
        let burst = (0..8).map(|i| {
            let c = c.clone();
            let url = format!("{base}/v1/runs/?delay_ms=400&r={round}&i={i}");
            async move { c.get(url).send().await.map(|r| r.status()) }
        });
        futures_util::future::join_all(burst).await;
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Variables as Grafana resolves them: "All" of each label_values query.
        let mut vars = vars_static.clone();
        for v in dashboard["templating"]["list"].as_array().unwrap() {
            let name = v["name"].as_str().unwrap().to_string();
            match v["type"].as_str().unwrap() {
                "datasource" => {
                    vars.insert(name, "prometheus".into());
                }
                "query" => {
                    let def = substitute(v["definition"].as_str().unwrap(), &vars);
                    let values = label_values(&c, &prom, &def).await;
                    if values.is_empty() {
                        vars.insert(name, String::new());
                    } else {
                        vars.insert(name, all_regex(&values));
                    }
                }
                other => panic!("variable type {other} not handled"),
            }
        }
        let mut failures = Vec::new();
        for (title, expr) in &queries {
            let q = substitute(expr, &vars);
            match query(&c, &prom, &q).await {
                Ok(r) if !r.is_empty() => {}
                Ok(_) => failures.push(format!("{title}: no series for {q}")),
                Err(e) => failures.push(format!("{title}: error {e} for {q}")),
            }
        }
        if vars.values().any(String::is_empty) {
            failures.push(format!("a variable has no values: {vars:?}"));
        }
        if failures.is_empty() || Instant::now() > deadline {
            break failures;
        }
    };
    assert!(
        failures.is_empty(),
        "after {round} rounds, {} of {} panel queries failed:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n")
    );
    eprintln!(
        "all {} dashboard queries returned series after {round} round(s)",
        queries.len()
    );

    // The events happened, as Prometheus stored them.
    for (what, q) in [
        (
            "a cache hit",
            "letta_proxy_cache_lookups_total{result=\"hit\"} > 0",
        ),
        ("a retry", "letta_proxy_retries_total > 0"),
        (
            "an ejection",
            "letta_proxy_backend_ejections_total{backend=\"c\"} > 0",
        ),
        (
            "shedding",
            "letta_proxy_rejections_total{reason=\"queue_full\"} > 0",
        ),
        ("a queue wait", "letta_proxy_queue_wait_seconds_count > 0"),
        (
            "a failed reload",
            "letta_proxy_config_reloads_total{result=\"failure\"} > 0",
        ),
        ("Redis up", "letta_proxy_cache_redis_available == 1"),
        (
            "Redis calls",
            "letta_proxy_cache_redis_duration_seconds_count > 0",
        ),
        (
            "5xx answers",
            "http_server_request_duration_seconds_count{http_response_status_code=\"500\"} > 0",
        ),
    ] {
        let r = query(&c, &prom, q).await.unwrap();
        assert!(!r.is_empty(), "{what}: {q} is empty");
    }

    // The real Prometheus loaded the rules and evaluates them without error;
    // the ejection and the failed reload fire their alerts.
    let v: Value = c
        .get(format!("{prom}/api/v1/rules"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rules: Vec<&Value> = v["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert!(rules.len() >= 7, "{v}");
    for r in &rules {
        assert_eq!(
            r["health"], "ok",
            "rule {} evaluates with an error: {r}",
            r["name"]
        );
    }
    wait_until(Duration::from_secs(20), "alerts firing", || async {
        let v: Value = match c.get(format!("{prom}/api/v1/alerts")).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => return false,
        };
        let firing = |name: &str| {
            v["data"]["alerts"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|x| x["labels"]["alertname"] == name && x["state"] == "firing")
            })
        };
        firing("LettaProxyBackendEjected") && firing("LettaProxyConfigReloadFailed")
    })
    .await;
}
