//! Shared by the deployment tests (`tests/deploy_*.rs`): finding the external
//! tools (docker-compose, check-jsonschema, kubernetes-validate, promtool,
//! prometheus, python3 with PyYAML), reading YAML through PyYAML, running the
//! binary, and compose-style `${VAR}` interpolation.
//!
//! A missing tool makes a test print a loud notice and return (skip), unless
//! `LETTA_PROXY_REQUIRE_DEPLOY_TOOLS=1` (as in CI, after
//! `deploy/ci/install-tools.sh`): then it fails.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `true` when missing tools must fail the test instead of skipping it.
pub fn tools_required() -> bool {
    std::env::var("LETTA_PROXY_REQUIRE_DEPLOY_TOOLS").is_ok_and(|v| v == "1")
}

/// Directories searched for tools besides `PATH`: the virtualenvs that
/// `deploy/ci/install-tools.sh` makes under `LETTA_PROXY_TOOLS_DIR`.
fn extra_dirs() -> Vec<PathBuf> {
    let base = std::env::var_os("LETTA_PROXY_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/letta-proxy-deploy-tools")
        });
    vec![base.join("py/bin"), base.join("compose/bin")]
}

/// Finds `name` among the tool virtualenvs, then on `PATH`.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    extra_dirs()
        .into_iter()
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The tool, or `None` after a loud skip notice (a panic under
/// `LETTA_PROXY_REQUIRE_DEPLOY_TOOLS=1`).
pub fn tool_or_skip(name: &str, test: &str) -> Option<PathBuf> {
    if let Some(p) = find_tool(name) {
        return Some(p);
    }
    let msg = format!(
        "{test}: `{name}` not found (run deploy/ci/install-tools.sh, or set \
         LETTA_PROXY_TOOLS_DIR / PATH)"
    );
    if tools_required() {
        panic!("{msg}; LETTA_PROXY_REQUIRE_DEPLOY_TOOLS=1 forbids skipping");
    }
    eprintln!("\n********** SKIPPED: {msg} **********\n");
    None
}

/// A Python interpreter that can `import yaml`, or `None` after a skip notice.
pub fn python_with_yaml(test: &str) -> Option<PathBuf> {
    let candidates = extra_dirs()
        .into_iter()
        .map(|d| d.join("python3"))
        .chain(find_tool("python3"));
    for py in candidates {
        if !py.is_file() {
            continue;
        }
        let ok = Command::new(&py)
            .args(["-c", "import yaml"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    let msg = format!("{test}: no python3 with PyYAML (run deploy/ci/install-tools.sh)");
    if tools_required() {
        panic!("{msg}; LETTA_PROXY_REQUIRE_DEPLOY_TOOLS=1 forbids skipping");
    }
    eprintln!("\n********** SKIPPED: {msg} **********\n");
    None
}

/// Every YAML document of `path`, as JSON values (PyYAML's safe loader).
pub fn yaml_docs(py: &Path, path: &Path) -> Vec<serde_json::Value> {
    let script = "import sys, json, yaml\n\
                  docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
                  json.dump(docs, sys.stdout)\n";
    let out = Command::new(py)
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "YAML of {} does not parse: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("python printed JSON") {
        serde_json::Value::Array(v) => v,
        other => panic!("expected a list of documents, got {other}"),
    }
}

/// The one YAML document of `path`.
pub fn yaml(py: &Path, path: &Path) -> serde_json::Value {
    let mut docs = yaml_docs(py, path);
    assert_eq!(docs.len(), 1, "{} holds one document", path.display());
    docs.remove(0)
}

/// Runs a command and returns its output, panicking only when it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// `(exit code, stdout, stderr)` of the letta-proxy binary with exactly `env`
/// (nothing inherited: what a container would see).
pub fn proxy(args: &[&str], env: &BTreeMap<String, String>) -> (i32, String, String) {
    let out = run(Command::new(env!("CARGO_BIN_EXE_letta-proxy"))
        .args(args)
        .env_clear()
        .envs(env)
        .current_dir(std::env::temp_dir()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Compose-style interpolation of `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
/// `${VAR:?message}` and `${VAR?message}` from `vars`. `Err` names the variable
/// of a `?` form that is unset (or empty, for `:?`).
pub fn interpolate(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
        let expr = &after[..end];
        rest = &after[end + 1..];
        let name_len = expr
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(expr.len());
        let (name, op) = expr.split_at(name_len);
        let value = vars.get(name);
        let set = value.is_some();
        let non_empty = value.is_some_and(|v| !v.is_empty());
        let v = value.cloned().unwrap_or_default();
        let resolved = match op {
            "" => v,
            o if o.starts_with(":-") => {
                if non_empty {
                    v
                } else {
                    o[2..].to_string()
                }
            }
            o if o.starts_with('-') => {
                if set {
                    v
                } else {
                    o[1..].to_string()
                }
            }
            o if o.starts_with(":?") => {
                if non_empty {
                    v
                } else {
                    return Err(format!("{name}: {}", &o[2..]));
                }
            }
            o if o.starts_with('?') => {
                if set {
                    v
                } else {
                    return Err(format!("{name}: {}", &o[1..]));
                }
            }
            o => return Err(format!("unsupported interpolation ${{{name}{o}}}")),
        };
        out.push_str(&resolved);
    }
    out.push_str(rest);
    Ok(out)
}

/// A string field of a JSON value, by a `/`-separated pointer.
pub fn str_at<'a>(v: &'a serde_json::Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(|x| x.as_str())
        .unwrap_or_else(|| panic!("{pointer} is not a string in {v}"))
}

/// Parses a Go/compose/Kubernetes-style duration (`40s`, `1m30s`, `500ms`).
pub fn duration(s: &str) -> std::time::Duration {
    humantime::parse_duration(s).unwrap_or_else(|e| panic!("duration {s:?}: {e}"))
}
