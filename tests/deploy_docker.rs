//! The Dockerfile checked without Docker: every `COPY` source is in the build
//! context that .dockerignore leaves, every file the build reads is in it, the
//! stages hand over what they should, and the runtime stage's settings agree
//! (listen address, healthcheck port, non-root user).
//!
//! With `LETTA_PROXY_DOCKER_BUILD=1` (CI), the builder stage's `RUN` line is run
//! as written, outside Docker, in a copy of the build context (its `/out/`
//! moved into a temporary folder, `target/` kept under this repository's
//! `target/docker-build/` between runs), and the binary it makes is run with the
//! image's environment.

mod deploy_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use deploy_common::*;

/// One instruction: keyword and its arguments (continuations joined).
#[derive(Debug, Clone)]
struct Instr {
    op: String,
    args: String,
}

/// Parses the Dockerfile into stages: `(stage name, instructions)`; the global
/// `ARG`s before the first `FROM` go to a stage named "".
fn parse_dockerfile() -> Vec<(String, Vec<Instr>)> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if t.starts_with('#') {
            continue; // a comment inside a continued instruction
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            logical.push(std::mem::take(&mut cur));
        }
    }
    let mut stages: Vec<(String, Vec<Instr>)> = vec![(String::new(), Vec::new())];
    for l in logical {
        let (op, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let instr = Instr {
            op: op.to_ascii_uppercase(),
            args: args.split_whitespace().collect::<Vec<_>>().join(" "),
        };
        if instr.op == "FROM" {
            let name = instr
                .args
                .split_once(" AS ")
                .or_else(|| instr.args.split_once(" as "))
                .map(|(_, n)| n.trim().to_string())
                .unwrap_or_default();
            stages.push((name, vec![instr]));
        } else {
            stages.last_mut().unwrap().1.push(instr);
        }
    }
    stages
}

fn stage<'a>(stages: &'a [(String, Vec<Instr>)], name: &str) -> &'a [Instr] {
    &stages
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no stage {name}"))
        .1
}

/// .dockerignore patterns (the forms it documents: `dir/`, `**/dir/`, names,
/// `*` inside a component).
fn ignore_patterns() -> Vec<String> {
    std::fs::read_to_string(root().join(".dockerignore"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            assert!(
                !l.starts_with('!'),
                "exceptions (!) are not understood here: {l}"
            );
            l.trim_start_matches('/').trim_end_matches('/').to_string()
        })
        .collect()
}

fn glob_component(pat: &str, s: &str) -> bool {
    match pat.split_once('*') {
        None => pat == s,
        Some((pre, post)) => {
            s.len() >= pre.len() + post.len()
                && s.starts_with(pre)
                && (post.contains('*') || s.ends_with(post))
                && (!post.contains('*') || glob_component(post, &s[pre.len()..]))
        }
    }
}

/// Whether `rel` (a path relative to the context) is excluded by `pat`.
fn ignored_by(pat: &str, rel: &str) -> bool {
    let path: Vec<&str> = rel.split('/').collect();
    let (anywhere, pat) = match pat.strip_prefix("**/") {
        Some(p) => (true, p),
        None => (false, pat),
    };
    let pat: Vec<&str> = pat.split('/').collect();
    let starts = if anywhere {
        (0..path.len()).collect::<Vec<_>>()
    } else {
        vec![0]
    };
    starts.into_iter().any(|s| {
        path.len() >= s + pat.len()
            && pat
                .iter()
                .zip(&path[s..])
                .all(|(p, c)| glob_component(p, c))
    })
}

/// The files Docker would send as the build context: the repository's tracked
/// files (what a clone has), minus .dockerignore.
fn context_files() -> Vec<String> {
    let out = run(Command::new("git")
        .args(["ls-files", "--cached", "--others", "--exclude-standard"])
        .current_dir(root()));
    assert!(out.status.success(), "git ls-files");
    let patterns = ignore_patterns();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|f| root().join(f).is_file())
        .filter(|f| !patterns.iter().any(|p| ignored_by(p, f)))
        .map(str::to_string)
        .collect()
}

#[test]
fn dockerignore_matching_works_as_docker_does_for_its_forms() {
    assert!(ignored_by("target", "target/release/x"));
    assert!(ignored_by("tests/e2e", "tests/e2e/run.sh"));
    assert!(!ignored_by("tests/e2e", "tests/cli.rs"));
    assert!(ignored_by("**/__pycache__", "tests/e2e/__pycache__/a.pyc"));
    assert!(ignored_by("Dockerfile", "Dockerfile"));
    assert!(!ignored_by("Dockerfile", "docs/Dockerfile.md"));
    assert!(ignored_by("*.md", "README.md"));
}

#[test]
fn every_copy_source_and_every_file_the_build_reads_is_in_the_context() {
    let stages = parse_dockerfile();
    let ctx = context_files();
    let has = |p: &str| {
        ctx.iter()
            .any(|f| f == p || f.starts_with(&format!("{p}/")))
    };
    for (name, instrs) in &stages {
        for i in instrs.iter().filter(|i| i.op == "COPY" || i.op == "ADD") {
            if i.args.starts_with("--from=") {
                continue;
            }
            let words: Vec<&str> = i.args.split(' ').filter(|w| !w.starts_with("--")).collect();
            for src in &words[..words.len() - 1] {
                let src = src.trim_start_matches("./").trim_end_matches('/');
                if src == "." {
                    assert!(!ctx.is_empty(), "empty context");
                } else {
                    assert!(
                        has(src),
                        "stage {name}: COPY {src}: not in the build context"
                    );
                }
            }
        }
    }
    // What `cargo build --locked --bin letta-proxy` reads: the manifest, the lock
    // file, every declared target's file, every file include_str!'d by src/.
    for f in ["Cargo.toml", "Cargo.lock", "src/main.rs", "src/lib.rs"] {
        assert!(has(f), "{f} not in the build context");
    }
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    for b in manifest["bench"].as_array().into_iter().flatten() {
        let name = b["name"].as_str().unwrap();
        let path = b
            .get("path")
            .and_then(|p| p.as_str())
            .map(str::to_string)
            .unwrap_or(format!("benches/{name}.rs"));
        assert!(
            has(&path),
            "[[bench]] {path}: cargo parses it, but not in the context"
        );
    }
    let mut includes = 0;
    for f in ctx
        .iter()
        .filter(|f| f.starts_with("src/") && f.ends_with(".rs"))
    {
        let text = std::fs::read_to_string(root().join(f)).unwrap();
        for part in text.split("include_str!(\"").skip(1) {
            let rel = part.split('"').next().unwrap();
            let target = Path::new(f).parent().unwrap().join(rel);
            let norm = normalise(&target);
            includes += 1;
            assert!(has(&norm), "{f} includes {norm}, not in the build context");
        }
    }
    assert!(includes >= 1);
}

fn normalise(p: &Path) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(s) => out.push(s.to_string_lossy().into()),
            _ => {}
        }
    }
    out.join("/")
}

/// The builder's RUN line without its BuildKit `--mount` options.
fn build_command(stages: &[(String, Vec<Instr>)]) -> String {
    let run: Vec<&Instr> = stage(stages, "builder")
        .iter()
        .filter(|i| i.op == "RUN")
        .collect();
    assert_eq!(run.len(), 1, "one RUN in the builder");
    run[0]
        .args
        .split(' ')
        .filter(|w| !w.starts_with("--mount="))
        .collect::<Vec<_>>()
        .join(" ")
}

fn image_env(stages: &[(String, Vec<Instr>)]) -> BTreeMap<String, String> {
    stage(stages, "runtime")
        .iter()
        .filter(|i| i.op == "ENV")
        .map(|i| {
            let (k, v) = i.args.split_once('=').expect("ENV KEY=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn the_stages_hand_over_the_binary_and_agree_on_the_runtime_settings() {
    let stages = parse_dockerfile();
    let cmd = build_command(&stages);
    assert_eq!(
        cmd,
        "cargo build --release --locked --bin letta-proxy && install -D -m 0755 target/release/letta-proxy /out/letta-proxy",
        "the build command changed: update this test and the CI step that runs it"
    );
    let rt = stage(&stages, "runtime");
    let copy = rt
        .iter()
        .find(|i| i.op == "COPY" && i.args.starts_with("--from=builder"))
        .expect("runtime copies from the builder");
    assert!(copy.args.contains("/out/letta-proxy"), "{copy:?}");
    // The toolchain is at least what Cargo.toml asks for.
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    let need = manifest["package"]["rust-version"].as_str().unwrap();
    let arg = stage(&stages, "")
        .iter()
        .find_map(|i| i.args.strip_prefix("RUST_VERSION="))
        .expect("ARG RUST_VERSION");
    let v = |s: &str| -> Vec<u32> { s.split('.').map(|x| x.parse().unwrap()).collect() };
    assert!(
        v(arg) >= v(need),
        "RUST_VERSION {arg} < rust-version {need}"
    );

    // Listens on all interfaces in the image, on the port the healthcheck probes.
    let env = image_env(&stages);
    let listen: std::net::SocketAddr = env["LETTA_PROXY__SERVER__LISTEN"].parse().unwrap();
    assert!(listen.ip().is_unspecified(), "{listen}");
    let hc = rt
        .iter()
        .find(|i| i.op == "HEALTHCHECK")
        .expect("HEALTHCHECK");
    let cmd_json = hc.args.split_once("CMD ").expect("HEALTHCHECK CMD").1;
    let argv: Vec<String> = serde_json::from_str(cmd_json).expect("exec form");
    assert_eq!(
        &argv[..2],
        ["letta-proxy", "health"],
        "no curl in the image"
    );
    assert!(
        argv.iter()
            .any(|a| a.contains(&format!("127.0.0.1:{}/", listen.port()))),
        "{argv:?}"
    );
    let expose = rt.iter().find(|i| i.op == "EXPOSE").unwrap();
    assert!(expose
        .args
        .split(' ')
        .any(|p| p == listen.port().to_string()));
    let user = rt.iter().find(|i| i.op == "USER").expect("USER");
    assert_ne!(user.args, "root");
    // The image's default command reads a file the image carries.
    let cmd: Vec<String> =
        serde_json::from_str(&rt.iter().find(|i| i.op == "CMD").unwrap().args).unwrap();
    let i = cmd.iter().position(|a| a == "--config").unwrap();
    assert!(
        rt.iter()
            .any(|c| c.op == "COPY" && c.args.ends_with(&format!(" {}", cmd[i + 1]))),
        "CMD reads {} but no COPY puts it there",
        cmd[i + 1]
    );
}

/// The builder's command, run for real (heavy: a full release build).
#[test]
fn the_builder_command_builds_a_binary_that_runs_with_the_image_environment() {
    if std::env::var("LETTA_PROXY_DOCKER_BUILD").as_deref() != Ok("1") {
        eprintln!(
            "\n********** SKIPPED: the Dockerfile's build command (a full release build) runs \
             only with LETTA_PROXY_DOCKER_BUILD=1, as in CI **********\n"
        );
        return;
    }
    let stages = parse_dockerfile();
    let ctx_dir = tempfile::tempdir().unwrap();
    for f in context_files() {
        let dst = ctx_dir.path().join(&f);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(root().join(&f), dst).unwrap();
    }
    let out_dir = tempfile::tempdir().unwrap();
    let persistent: PathBuf = root().join("target/docker-build");
    std::fs::create_dir_all(&persistent).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&persistent, ctx_dir.path().join("target")).unwrap();
    let cmd = build_command(&stages).replace(" /out/", &format!(" {}/", out_dir.path().display()));
    let mut sh = Command::new("sh");
    sh.args(["-c", &cmd]).current_dir(ctx_dir.path());
    // Nothing from the outer `cargo test` may steer the inner build.
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") && k != "CARGO_HOME" || k.starts_with("RUSTC") {
            sh.env_remove(k);
        }
    }
    let started = std::time::Instant::now();
    let status = sh.status().unwrap();
    assert!(status.success(), "`{cmd}` failed");
    eprintln!("builder command took {:.0?}", started.elapsed());
    let bin = out_dir.path().join("letta-proxy");
    let v = run(Command::new(&bin).arg("--version"));
    assert!(v.status.success() && String::from_utf8_lossy(&v.stdout).contains("letta-proxy"));
    // The image's default command, with the image's environment.
    let env = image_env(&stages);
    let out = run(Command::new(&bin)
        .args(["--config", "config/letta-proxy.toml", "--check"])
        .current_dir(ctx_dir.path())
        .env_clear()
        .envs(&env));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("listen 0.0.0.0:8300"), "{text}");
}
