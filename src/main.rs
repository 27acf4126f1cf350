//! `letta-proxy`: binds, loads the config, and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;

use letta_proxy::config::{BackendConfig, Config, LogConfig, LogFormat, DEFAULT_CONFIG_PATH};
use letta_proxy::standin::StandIn;
use letta_proxy::Proxy;

/// Reverse proxy and load balancer for Letta servers.
#[derive(Parser, Debug)]
#[command(version, about)]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("letta-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log);
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
    match runtime.block_on(run(config, path, cli.demo)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("letta-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
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
    let mut proxy = Proxy::new(config);
    // The demo's backends are made up at start: a reload from the file would drop them.
    if let (Some(path), false) = (path, demo) {
        proxy = proxy.with_config_path(path);
    }
    letta_proxy::serve_proxy(listener, Arc::new(proxy), shutdown_signal()).await?;
    Ok(())
}

fn print_demo(addr: std::net::SocketAddr, standins: &[StandIn]) {
    let agent = "agent-00000000-0000-4000-8000-000000000001";
    println!("\nletta-proxy demo: http://{addr} balances over three stand-in Letta servers:");
    for s in standins {
        println!("  {:<8} {}", s.name, s.url());
    }
    println!("\nTry (each answer names the replica in x-letta-proxy-backend):");
    println!("  for i in 1 2 3 4 5 6; do curl -s -D - -o /dev/null http://{addr}/v1/agents/{agent} | grep -i x-letta-proxy-backend; done");
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
