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
            "[[backends]]\nname = \"a\"\nurl = \"https://x:1\"\n",
            "backends[0].url",
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
