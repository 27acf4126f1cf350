//! Real `redis-server`s for tests: a standalone server (plain or TLS) and a
//! six-node Redis Cluster, each on free loopback ports, with no persistence,
//! in a temp dir of its own, killed on drop (as redis-rs's own test harness
//! does).
//!
//! Where `redis-server` (or `redis-cli`, for a cluster) is not installed, the
//! starters print a loud notice and return `None` (the test returns early),
//! unless `LETTA_PROXY_REQUIRE_REDIS=1` (CI), where they panic instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::port::free_port;

/// Whether `tool --version` runs; if not, a loud skip (or a panic in CI).
fn installed(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if found {
        return true;
    }
    if std::env::var("LETTA_PROXY_REQUIRE_REDIS").as_deref() == Ok("1") {
        panic!("LETTA_PROXY_REQUIRE_REDIS=1 but {tool} is not installed");
    }
    eprintln!();
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    eprintln!("!! {tool} is not installed: this Redis test is SKIPPED.");
    eprintln!("!! Install it (apt-get install redis-server redis-tools) to run it; CI");
    eprintln!("!! sets LETTA_PROXY_REQUIRE_REDIS=1 so a missing Redis fails there.");
    eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
    false
}

/// How a server is reached (plain TCP or TLS).
#[derive(Clone)]
pub enum Transport {
    Plain,
    /// Server certificate + key and the CA that signed it, as files.
    Tls(Certs),
}

pub struct RedisServer {
    pub port: u16,
    transport: Transport,
    child: Option<Child>,
    _dir: tempfile::TempDir,
    /// Where a TLS server's certificates are.
    _certs: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub fn start() -> Option<RedisServer> {
        if !installed("redis-server") {
            return None;
        }
        Some(RedisServer::start_with(Transport::Plain))
    }

    /// Starts a TLS-only server (`--port 0 --tls-port …`) whose certificate
    /// is signed by a CA made for this test.
    pub fn start_tls() -> Option<RedisServer> {
        if !installed("redis-server") {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = Certs::generate(dir.path());
        let mut s = RedisServer::start_with(Transport::Tls(certs));
        s._certs = Some(dir);
        Some(s)
    }

    fn start_with(transport: Transport) -> RedisServer {
        // A port can be taken between probing and binding: retry a few times.
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let mut server = RedisServer {
                port,
                transport: transport.clone(),
                child: None,
                _dir: dir,
                _certs: None,
            };
            server.spawn();
            if server.wait_ready(Duration::from_secs(5)) {
                return server;
            }
            server.kill();
        }
        panic!("redis-server did not start");
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        match &self.transport {
            Transport::Plain => {
                cmd.args(["--port", &self.port.to_string()]);
            }
            Transport::Tls(c) => {
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&c.server_cert)
                    .arg("--tls-key-file")
                    .arg(&c.server_key)
                    .arg("--tls-ca-cert-file")
                    .arg(&c.ca_cert)
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self._dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
    }

    fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false; // exited: port taken
            }
            if let Ok(client) = self.client() {
                if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) {
                    if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                        return true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.transport {
            Transport::Plain => redis::Client::open(self.url().as_str()),
            Transport::Tls(c) => redis::Client::build_with_tls(
                self.url().as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(&c.ca_cert).unwrap()),
                },
            ),
        }
    }

    pub fn url(&self) -> String {
        match self.transport {
            Transport::Plain => format!("redis://127.0.0.1:{}", self.port),
            Transport::Tls(_) => format!("rediss://127.0.0.1:{}", self.port),
        }
    }

    /// The CA file of a TLS server.
    pub fn ca_file(&self) -> Option<&Path> {
        match &self.transport {
            Transport::Tls(c) => Some(&c.ca_cert),
            Transport::Plain => None,
        }
    }

    /// Kills the server at once (SIGKILL), like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a fresh, empty server on the same port after [`RedisServer::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        assert!(
            self.wait_ready(Duration::from_secs(5)),
            "redis-server restarted"
        );
    }

    /// A plain connection, to look inside.
    pub fn connection(&self) -> redis::Connection {
        self.client()
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Certificates made for one test: a CA, and a server certificate for
/// `localhost` / `127.0.0.1` signed by it, as PEM files.
#[derive(Clone)]
pub struct Certs {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl Certs {
    pub fn generate(dir: &Path) -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "letta-proxy test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let certs = Certs {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        };
        std::fs::write(&certs.ca_cert, ca.pem()).unwrap();
        std::fs::write(&certs.server_cert, cert.pem()).unwrap();
        std::fs::write(&certs.server_key, key.serialize_pem()).unwrap();
        certs
    }
}

/// One node of a [`RedisCluster`].
struct Node {
    port: u16,
    _dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Node {
    fn spawn(port: u16, bus_port: u16) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            // Explicit bus port (Redis 7+): port + 10000 may be out of range or taken.
            .args(["--cluster-port", &bus_port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            // Failover within a couple of seconds of a master's death.
            .args(["--cluster-node-timeout", "1000"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        Node {
            port,
            _dir: dir,
            child: Some(child),
        }
    }

    fn connection(&self, timeout: Duration) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port).as_str())?
            .get_connection_with_timeout(timeout)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Redis Cluster of six nodes (three masters, one replica each) on
/// loopback, created with `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<Node>,
}

impl RedisCluster {
    pub fn start() -> Option<RedisCluster> {
        if !installed("redis-server") || !installed("redis-cli") {
            return None;
        }
        for _ in 0..3 {
            if let Some(c) = RedisCluster::try_start() {
                return Some(c);
            }
        }
        panic!("could not start a Redis Cluster");
    }

    fn try_start() -> Option<RedisCluster> {
        let ports: Vec<(u16, u16)> = (0..6).map(|_| (free_port(), free_port())).collect();
        let mut cluster = RedisCluster {
            nodes: ports.iter().map(|&(p, b)| Node::spawn(p, b)).collect(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        for n in &cluster.nodes {
            while n.connection(Duration::from_millis(200)).is_err() {
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run redis-cli");
        if !status.success() {
            return None;
        }
        cluster
            .wait_healthy(Duration::from_secs(20))
            .then_some(())?;
        Some(cluster)
    }

    /// Until every live node says the cluster is ok, every slot is served
    /// and every replica's link to its master is up.
    pub fn wait_healthy(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.healthy() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn healthy(&self) -> bool {
        let mut masters = 0;
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Ok(mut c) = n.connection(Duration::from_millis(300)) else {
                return false;
            };
            let info: String = match redis::cmd("CLUSTER").arg("INFO").query(&mut c) {
                Ok(i) => i,
                Err(_) => return false,
            };
            if !info.contains("cluster_state:ok") || !info.contains("cluster_slots_ok:16384") {
                return false;
            }
            let repl: String = match redis::cmd("INFO").arg("replication").query(&mut c) {
                Ok(i) => i,
                Err(_) => return false,
            };
            if repl.contains("role:master") {
                masters += 1;
            } else if !repl.contains("master_link_status:up") {
                return false;
            }
        }
        masters == 3
    }

    /// Seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// `cluster_nodes = [...]` for a `[redis]` section.
    pub fn toml_nodes(&self) -> String {
        let quoted: Vec<String> = self.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!("cluster_nodes = [{}]", quoted.join(", "))
    }

    /// The port of the master serving `key`'s slot now.
    pub fn master_of(&self, key: &str) -> u16 {
        self.try_master_of(key).expect("a master for the key")
    }

    fn try_master_of(&self, key: &str) -> Option<u16> {
        let live = self.nodes.iter().find(|n| n.child.is_some())?;
        let mut c = live.connection(Duration::from_secs(2)).ok()?;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut c)
            .ok()?;
        let ranges: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut c).ok()?;
        for r in ranges {
            let redis::Value::Array(parts) = r else {
                continue;
            };
            let (
                Some(redis::Value::Int(a)),
                Some(redis::Value::Int(b)),
                Some(redis::Value::Array(m)),
            ) = (parts.first(), parts.get(1), parts.get(2))
            else {
                continue;
            };
            if (*a..=*b).contains(&slot) {
                if let Some(redis::Value::Int(port)) = m.get(1) {
                    return Some(*port as u16);
                }
            }
        }
        None
    }

    /// Kills (SIGKILL) the node listening on `port`.
    pub fn kill(&mut self, port: u16) {
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node on that port");
        n.kill();
    }

    /// Until a live master other than `old` serves `key`'s slot (failover
    /// done); returns its port.
    pub fn wait_failover(&self, key: &str, old: u16, within: Duration) -> u16 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(port) = self.try_master_of(key).filter(|p| *p != old) {
                return port;
            }
            assert!(Instant::now() < deadline, "no failover within {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}
