//! deploy/kubernetes/ checked without a cluster: every manifest against the
//! Kubernetes API schemas (kubernetes-validate, strict, pinned versions), the
//! ServiceMonitor against the schema in deploy/kubernetes/schemas/, the
//! ConfigMap's config through `letta-proxy --check` with the environment and
//! files the Deployment gives the container, and the settings that must agree
//! across objects (selectors, ports, probes, grace periods).

mod deploy_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use deploy_common::*;
use serde_json::Value;

/// Kubernetes versions the manifests are validated against: the oldest still
/// common in managed clusters, and a recent one.
const K8S_VERSIONS: &[&str] = &["1.30.0", "1.34.0"];

fn dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

/// The manifests kustomization.yaml applies, as `(file, document)`.
fn manifests(py: &Path) -> Vec<(String, Value)> {
    let k = yaml(py, &dir().join("kustomization.yaml"));
    k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|f| {
            let f = f.as_str().unwrap().to_string();
            let doc = yaml(py, &dir().join(&f));
            (f, doc)
        })
        .collect()
}

fn kind<'a>(all: &'a [(String, Value)], kind: &str) -> &'a Value {
    &all.iter()
        .find(|(_, d)| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
        .1
}

#[test]
fn kustomization_lists_every_manifest() {
    let Some(py) = python_with_yaml("kustomization") else {
        return;
    };
    let listed: Vec<String> = manifests(&py).into_iter().map(|(f, _)| f).collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut l = listed.clone();
    l.sort();
    assert_eq!(l, on_disk);
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let Some(py) = python_with_yaml("kubernetes-validate") else {
        return;
    };
    let Some(kv) = tool_or_skip("kubernetes-validate", "kubernetes manifests") else {
        return;
    };
    let files: Vec<String> = manifests(&py)
        .into_iter()
        .filter(|(_, d)| d["apiVersion"] != "monitoring.coreos.com/v1")
        .map(|(f, _)| f)
        .collect();
    assert!(files.len() >= 5, "{files:?}");
    for v in K8S_VERSIONS {
        let out = run(Command::new(&kv)
            .args(["--strict", "-k", v])
            .args(&files)
            .current_dir(dir()));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "Kubernetes {v}: {text}");
        assert_eq!(
            text.matches(" passed for resource ").count(),
            files.len(),
            "Kubernetes {v}: every file validated: {text}"
        );
    }
}

/// CRDs have no schema in kubernetes-validate: the ServiceMonitor is checked
/// against deploy/kubernetes/schemas/servicemonitor-v1.json.
#[test]
fn the_service_monitor_matches_its_crd_schema() {
    let Some(cj) = tool_or_skip("check-jsonschema", "ServiceMonitor") else {
        return;
    };
    let out = run(Command::new(cj)
        .args([
            "--schemafile",
            "schemas/servicemonitor-v1.json",
            "servicemonitor.yaml",
        ])
        .current_dir(dir()));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn matches(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("matchLabels");
    !sel.is_empty() && sel.iter().all(|(k, v)| &labels[k] == v)
}

#[test]
fn objects_agree_on_labels_ports_probes_and_grace() {
    let Some(py) = python_with_yaml("kubernetes invariants") else {
        return;
    };
    let all = manifests(&py);
    let deploy = kind(&all, "Deployment");
    let pod = &deploy["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    assert!(deploy["spec"]["replicas"].as_u64().unwrap() >= 2);
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
        "a rollout never drops below the replica count"
    );
    assert!(matches(
        &deploy["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let pdb = kind(&all, "PodDisruptionBudget");
    assert!(matches(&pdb["spec"]["selector"]["matchLabels"], pod_labels));
    assert!(
        pdb["spec"]["minAvailable"].as_u64().unwrap()
            < deploy["spec"]["replicas"].as_u64().unwrap(),
        "a PDB equal to the replica count would block every drain"
    );
    let svc = kind(&all, "Service");
    assert!(matches(&svc["spec"]["selector"], pod_labels));

    let c = &pod["spec"]["containers"][0];
    let port_named = |name: &str| {
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("container port {name}"))
    };
    let http = port_named("http");
    let svc_port = &svc["spec"]["ports"][0];
    assert_eq!(svc_port["targetPort"], "http");
    // Probes: readiness on /-/ready, liveness on /-/healthy, on the main listener.
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/-/ready");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/-/healthy");
    for p in ["readinessProbe", "livenessProbe"] {
        assert_eq!(c[p]["httpGet"]["port"], "http", "{p}");
    }
    // The ServiceMonitor scrapes the Service's port by name.
    let sm = kind(&all, "ServiceMonitor");
    assert!(matches(
        &sm["spec"]["selector"]["matchLabels"],
        &svc["metadata"]["labels"]
    ));
    assert_eq!(sm["spec"]["endpoints"][0]["port"], svc_port["name"]);
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    // Requests set (the scheduler places pods by them), memory limited.
    for r in ["cpu", "memory"] {
        assert!(c["resources"]["requests"][r].is_string(), "requests.{r}");
    }
    assert!(c["resources"]["limits"]["memory"].is_string());

    // The config the pod runs: its listen port is the container port, and the
    // kubelet waits longer than preStop + shutdown_grace before SIGKILL.
    let (cfg, _) = pod_config(&py, &all);
    assert_eq!(u64::from(cfg.server.listen.port()), http);
    let pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .expect("preStop exec");
    assert_eq!(pre_stop[0], "sleep", "{pre_stop:?}");
    let wait = Duration::from_secs(pre_stop[1].as_str().unwrap().parse().unwrap());
    let grace = Duration::from_secs(
        pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap(),
    );
    assert!(
        grace >= wait + cfg.server.shutdown_grace + Duration::from_secs(5),
        "terminationGracePeriodSeconds {grace:?} < preStop {wait:?} + shutdown_grace {:?} + 5 s",
        cfg.server.shutdown_grace
    );
    assert!(cfg.server.shutdown_grace >= Duration::from_secs(10));
}

/// The pod's filesystem and environment, laid out in a temporary folder: the
/// ConfigMap's files at their mount path, the Secret's items at theirs, the
/// image's ENV and the container's env (secretKeyRef values from the Secret).
/// Returns the loaded config and what `--check` needs.
fn pod_config(py: &Path, all: &[(String, Value)]) -> (letta_proxy::Config, PodFiles) {
    let files = PodFiles::new(py, all);
    let env: Vec<(String, String)> = files.env.clone().into_iter().collect();
    let cfg = letta_proxy::Config::load(Some(&files.config), env)
        .unwrap_or_else(|e| panic!("the ConfigMap's config does not load: {e}"));
    // The token the proxy will require is the Secret's, read from the mounted file.
    assert_eq!(
        cfg.admin.token.as_deref(),
        Some(files.token.as_str()),
        "admin.token_file resolves to the Secret's admin-token"
    );
    (cfg, files)
}

struct PodFiles {
    _dir: tempfile::TempDir,
    config: PathBuf,
    env: BTreeMap<String, String>,
    token: String,
}

impl PodFiles {
    fn new(_py: &Path, all: &[(String, Value)]) -> PodFiles {
        let dir = tempfile::tempdir().unwrap();
        let deploy = kind(all, "Deployment");
        let spec = &deploy["spec"]["template"]["spec"];
        let c = &spec["containers"][0];
        let secret = kind(all, "Secret");
        let cm = kind(all, "ConfigMap");
        let local = |container_path: &str| dir.path().join(container_path.trim_start_matches('/'));
        let mounts = c["volumeMounts"].as_array().unwrap();
        for v in spec["volumes"].as_array().unwrap() {
            let name = v["name"].as_str().unwrap();
            let mount = mounts
                .iter()
                .find(|m| m["name"] == name)
                .and_then(|m| m["mountPath"].as_str())
                .unwrap_or_else(|| panic!("volume {name} not mounted"));
            let target = local(mount);
            std::fs::create_dir_all(&target).unwrap();
            if v["configMap"]["name"] == cm["metadata"]["name"] {
                for (file, text) in cm["data"].as_object().unwrap() {
                    std::fs::write(target.join(file), text.as_str().unwrap()).unwrap();
                }
            } else if v["secret"]["secretName"] == secret["metadata"]["name"] {
                for item in v["secret"]["items"].as_array().unwrap() {
                    let value = str_at(secret, &format!("/stringData/{}", str_at(item, "/key")));
                    std::fs::write(target.join(str_at(item, "/path")), value).unwrap();
                }
            } else {
                panic!("volume {name}: neither the ConfigMap nor the Secret");
            }
        }
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let i = args.iter().position(|a| *a == "--config").unwrap();
        let config = local(args[i + 1]);
        assert!(
            config.is_file(),
            "--config {} is not in a mounted volume",
            args[i + 1]
        );
        // Absolute paths inside the config (token_file) point into the layout.
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replace("\"/etc/", &format!("\"{}/etc/", dir.path().display()));
        std::fs::write(&config, text).unwrap();

        // Environment: the image's ENV, then the container's env.
        let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
        let runtime = dockerfile.split("\nFROM ").last().unwrap();
        let mut env: BTreeMap<String, String> = runtime
            .lines()
            .filter_map(|l| l.strip_prefix("ENV "))
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.trim().to_string(), v.trim().to_string())
            })
            .collect();
        for e in c["env"].as_array().into_iter().flatten() {
            let name = str_at(e, "/name").to_string();
            let value = if let Some(v) = e["value"].as_str() {
                v.to_string()
            } else {
                let r = &e["valueFrom"]["secretKeyRef"];
                assert_eq!(r["name"], secret["metadata"]["name"], "{name}");
                str_at(secret, &format!("/stringData/{}", str_at(r, "/key"))).to_string()
            };
            env.insert(name, value);
        }
        let token = str_at(secret, "/stringData/admin-token").to_string();
        PodFiles {
            _dir: dir,
            config,
            env,
            token,
        }
    }
}

/// The binary accepts the ConfigMap's config exactly as the pod would run it,
/// and the Secret's values are what it uses.
#[test]
fn the_configmap_passes_check_with_the_pods_environment_and_secret() {
    let Some(py) = python_with_yaml("ConfigMap --check") else {
        return;
    };
    let all = manifests(&py);
    let (cfg, files) = pod_config(&py, &all);
    let (code, out, err) = proxy(
        &["--config", files.config.to_str().unwrap(), "--check"],
        &files.env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("listen 0.0.0.0:8300"), "{out}");
    assert!(
        cfg.backends.len() >= 2,
        "one [[backends]] entry per Letta replica"
    );
    // The Redis URL of the Secret is the one in [redis], through the environment.
    assert_eq!(
        cfg.redis.url.as_deref(),
        Some(str_at(kind(&all, "Secret"), "/stringData/redis-url"))
    );
    assert!(cfg.admin.watch_config);
    // The replicas coordinate through that Redis: writes to one agent ordered
    // across pods, per-backend caps shared out.
    assert!(cfg.redis.is_configured() && cfg.limits.coordinate);
}
