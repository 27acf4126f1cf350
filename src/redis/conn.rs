//! One connection type for a standalone Redis and a Redis Cluster, so the
//! cache and the coordination code are written once.
//!
//! Standalone: redis-rs's `ConnectionManager` (one multiplexed connection that
//! reconnects by itself). Cluster: redis-rs's async `ClusterConnection` (a
//! multiplexed connection per node, commands routed by the slot of their first
//! key, redirections and failovers followed by itself). Both are cheap clones
//! of a handle; both implement `ConnectionLike`, so `redis::Script`,
//! `redis::pipe()` and `redis::cmd` run on [`Conn`] unchanged.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture,
    RedisResult, TlsCertificates, Value,
};

use super::slot;
use crate::config::RedisConfig;

/// A live connection handle (clone it per call).
#[derive(Clone)]
pub enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Runs `cmd` on the node that owns `key`'s slot (a cluster routes keyless
    /// commands such as SCAN to a random node otherwise).
    pub async fn query_on_node_of<T: redis::FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        key: &str,
    ) -> RedisResult<T> {
        match self {
            Conn::Standalone(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let route = redis::cluster_routing::Route::new(
                    slot::slot(key.as_bytes()),
                    redis::cluster_routing::SlotAddr::Master,
                );
                let v = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                redis::from_owned_redis_value(v)
            }
        }
    }
}

/// Where the Redis is and how to reach it; opens [`Conn`]s and pub/sub
/// connections.
pub enum Target {
    Standalone(Client),
    Cluster(Box<Cluster>),
}

/// A Redis Cluster's client and what per-node connections need.
pub struct Cluster {
    client: ClusterClient,
    /// The first seed node: credentials and TLS for per-node connections.
    seed: ConnectionInfo,
    certs: Option<TlsCertificates>,
}

impl Target {
    /// Builds the client for a configured `[redis]` (nothing connects yet).
    pub fn new(c: &RedisConfig) -> Result<Target, super::RedisError> {
        let certs = match &c.ca_file {
            Some(path) => {
                let pem = super::tls::read_ca(path)?;
                Some(TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                })
            }
            None => None,
        };
        if c.uses_tls() {
            // redis-rs builds its TLS configuration on the process default provider.
            crate::tls::install_default_provider();
        }
        if let Some(url) = &c.url {
            let client = match &certs {
                Some(certs) => Client::build_with_tls(url.as_str(), certs.clone()),
                None => Client::open(url.as_str()),
            }
            .map_err(|source| super::RedisError::Client {
                key: "redis.url",
                source,
            })?;
            return Ok(Target::Standalone(client));
        }
        let seed = c
            .cluster_nodes
            .first()
            .ok_or(super::RedisError::NotConfigured)?
            .as_str()
            .into_connection_info()
            .map_err(|source| super::RedisError::Client {
                key: "redis.cluster_nodes",
                source,
            })?;
        let mut builder = ClusterClientBuilder::new(c.cluster_nodes.iter().map(String::as_str))
            .connection_timeout(c.connect_timeout)
            // Our own per-call timeout bounds everything; a few quick retries
            // inside it follow MOVED/ASK and a failover in progress.
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(100);
        if let Some(certs) = &certs {
            builder = builder.certs(certs.clone());
        }
        let client = builder
            .build()
            .map_err(|source| super::RedisError::Client {
                key: "redis.cluster_nodes",
                source,
            })?;
        Ok(Target::Cluster(Box::new(Cluster {
            client,
            seed,
            certs,
        })))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// Opens the command connection (it reconnects by itself afterwards).
    pub async fn open(&self, connect_timeout: Duration) -> RedisResult<Conn> {
        match self {
            Target::Standalone(client) => {
                // No response timeout here: every call is bounded by the
                // caller's one timeout (`redis.timeout`).
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(connect_timeout)
                    .set_number_of_retries(1)
                    .set_max_delay(1000);
                client
                    .get_connection_manager_with_config(cfg)
                    .await
                    .map(Conn::Standalone)
            }
            Target::Cluster(c) => c.client.get_async_connection().await.map(Conn::Cluster),
        }
    }

    /// A client for one node of the cluster, with the seed's credentials and
    /// TLS settings (for a sharded pub/sub subscription on that node).
    pub fn node_client(&self, host: &str, port: u16) -> RedisResult<Client> {
        let Target::Cluster(c) = self else {
            unreachable!("node_client is only asked of a cluster");
        };
        let (seed, certs) = (&c.seed, &c.certs);
        let mut info = seed.clone();
        info.addr = match &seed.addr {
            ConnectionAddr::TcpTls { .. } => ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure: false,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host.to_string(), port),
        };
        // Sharded messages arrive as RESP3 pushes.
        info.redis.protocol = redis::ProtocolVersion::RESP3;
        match certs {
            Some(certs) => Client::build_with_tls(info, certs.clone()),
            None => Client::open(info),
        }
    }

    /// The standalone client (pub/sub opens its own connection from it).
    pub fn standalone(&self) -> Option<&Client> {
        match self {
            Target::Standalone(c) => Some(c),
            Target::Cluster(_) => None,
        }
    }
}
