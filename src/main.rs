//! `letta-proxy`: binds, loads the config, and hands over to the library.
//!
//! `letta-proxy health URL` is a tiny HTTP(S) probe for container
//! healthchecks (`letta_proxy::health::check`).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use letta_proxy::config::{BackendConfig, Config, DEFAULT_CONFIG_PATH};
use letta_proxy::standin::StandIn;
use letta_proxy::Gateway;

/// Reverse proxy and load balancer for Letta servers.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Config file (TOML). Default: config/letta-proxy.toml if present, else built-in defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the config, print a summary and exit (0 valid, 2 invalid).
    #[arg(long)]
    check: bool,
    /// Start three stand-in Letta backends on loopback and the proxy in front of them.
    #[arg(long)]
    demo: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// GET an http:// or https:// URL; exit 0 on a 2xx answer within the
    /// timeout, 1 otherwise. For container healthchecks (the image has no
    /// curl), e.g. `letta-proxy health http://127.0.0.1:8300/-/ready`. Reads no config.
    Health {
        /// The URL to probe, e.g. http://127.0.0.1:8300/-/ready.
        url: String,
        /// PEM CA certificates to trust for an https:// URL instead of the system roots.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Longest time for the whole exchange (connect, headers, body).
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before anything builds a TLS configuration (the Redis client's among them).
    letta_proxy::tls::install_default_provider();
    if let Some(Command::Health {
        url,
        ca_file,
        timeout,
    }) = &cli.command
    {
        return health(url, ca_file.as_deref(), *timeout);
    }
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("letta-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let logs = letta_proxy::observe::logs::install(&config.log);
    if cli.check {
        println!(
            "config ok: listen {}, strategy {}, {} backend(s): {}",
            config.server.listen,
            config.balancer.strategy.as_str(),
            config.backends.len(),
            config
                .backends
                .iter()
                .map(|b| format!("{}={}", b.name, b.url))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(files) = &config.server.tls {
            // Loaded once already by validation: this cannot fail differently now.
            if let Ok(tls) = letta_proxy::tls::ServerTls::load(files) {
                let cert = tls.certificate();
                println!(
                    "https: {} ({}), valid until {}",
                    cert.path.display(),
                    cert.subject,
                    cert.not_after_text()
                );
                if let Some(problem) = cert.problem(std::time::SystemTime::now()) {
                    println!("warning: {problem}");
                }
            }
        }
        return ExitCode::SUCCESS;
    }
    // Reloads re-read the file the config came from.
    let path = cli.config.clone().or_else(|| {
        let default = PathBuf::from(DEFAULT_CONFIG_PATH);
        default.exists().then_some(default)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(run(config, path, cli.demo));
    // Every log line written (the runtime's last tasks' too) before the
    // final error, not after it.
    drop(runtime);
    drop(logs);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("letta-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `letta-proxy health URL`: prints the status (or the error) so `docker
/// inspect` shows why a check failed.
fn health(url: &str, ca_file: Option<&std::path::Path>, timeout: Duration) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("letta-proxy health: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(letta_proxy::health::check::check(url, ca_file, timeout)) {
        Ok(status) if status.is_success() => {
            println!("{url}: {status}");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("letta-proxy health: {url}: {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("letta-proxy health: {url}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mut config: Config, path: Option<PathBuf>, demo: bool) -> anyhow::Result<()> {
    let mut standins = Vec::new();
    if demo {
        config.backends.clear();
        for name in ["letta-a", "letta-b", "letta-c"] {
            let s = StandIn::start(name)
                .await
                .context("starting a stand-in backend")?;
            config.backends.push(BackendConfig::new(name, s.url()));
            standins.push(s);
        }
    }
    let addr = config.server.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(
        listen = %local,
        strategy = config.balancer.strategy.as_str(),
        backends = config.backends.len(),
        "letta-proxy listening"
    );
    if demo {
        print_demo(local, &standins);
    }
    // The demo's backends are made up at start: a reload from the file would drop them.
    let gateway = match (path, demo) {
        (Some(path), false) => Gateway::from_file(config, path).await?,
        _ => Gateway::from_config(config).await?,
    };
    letta_proxy::serve_gateway(listener, gateway, shutdown_signal()).await?;
    Ok(())
}

fn print_demo(addr: std::net::SocketAddr, standins: &[StandIn]) {
    let agent = "agent-00000000-0000-4000-8000-000000000001";
    println!("\nletta-proxy demo: http://{addr} balances over three stand-in Letta servers:");
    for s in standins {
        println!("  {:<8} {}", s.name, s.url());
    }
    println!("\nTry (each answer names the replica in x-letta-proxy-backend):");
    // `cache-control: no-cache` sends every request to a replica: without it the
    // cache would answer all but the first from memory, naming one replica.
    println!("  # round robin: no-cache skips the cache, so each request reaches the next replica");
    println!("  for i in 1 2 3 4 5 6; do curl -s -D - -o /dev/null -H 'cache-control: no-cache' http://{addr}/v1/agents/{agent} | grep -i x-letta-proxy-backend; done");
    println!("  # the cache: the first read is fetched (x-cache: MISS), the second answered from memory (HIT)");
    println!("  for i in 1 2; do curl -s -D - -o /dev/null http://{addr}/v1/tools/ | grep -i x-cache; done");
    println!("  curl -N -X POST 'http://{addr}/v1/agents/{agent}/messages/stream?events=5&interval_ms=300'");
    println!("  curl -s -i http://{addr}/v1/agents            # Letta-style 307 to /v1/agents/");
    println!("  curl -s http://{addr}/-/ready");
    println!("  curl -s http://{addr}/metrics | grep letta_proxy_backend_requests_total");
    println!("\nCtrl-C stops (in-flight streams get server.shutdown_grace to finish).\n");
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
