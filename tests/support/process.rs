//! letta-proxy as a process of its own (the binary cargo built for the
//! tests), on a free loopback port, for what only separate processes show:
//! a `kill -9` while holding a lease, the same config giving the same answer
//! in two processes. Killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::port::free_port;

pub struct ProxyProcess {
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// Starts `letta-proxy --config <file with config_toml>` listening on a
    /// free port, and waits until `/-/ready` answers 200 (at most 30 s).
    pub async fn start(config_toml: &str) -> ProxyProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("letta-proxy.toml");
        std::fs::write(&path, config_toml).expect("write config");
        // A port can be taken between probing and binding: try a few.
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new(env!("CARGO_BIN_EXE_letta-proxy"))
                .arg("--config")
                .arg(&path)
                .env("LETTA_PROXY__SERVER__LISTEN", format!("127.0.0.1:{port}"))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn letta-proxy");
            let mut p = ProxyProcess {
                port,
                child: Some(child),
                _dir: tempfile::tempdir().expect("temp dir"),
            };
            if p.wait_ready(Duration::from_secs(30)).await {
                p._dir = dir;
                return p;
            }
            p.kill();
        }
        panic!("letta-proxy did not start");
    }

    async fn wait_ready(&mut self, within: Duration) -> bool {
        let c = super::client();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false; // exited (port taken?)
            }
            if let Ok(r) = c.get(self.url("/-/ready")).send().await {
                if r.status() == 200 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGKILL: the process dies at once, saying goodbye to no one.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (a clean stop), then waits for the exit (at most `within`).
    pub fn terminate(&mut self, within: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
