//! `fleet-server`: watches deployed terminals through their signed heartbeats.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// The fleet service: verifies the signed heartbeats of deployed terminals, applies the anomaly
/// rules of policies/fleet.toml (clone, relocation, counterfeit, tamper, silent), keeps
/// deduplicated alerts (`cactl alerts`), and asks the CA for holds and keyCompromise
/// revocations as its `monitor` principal. Separate from the CA: terminals never reach the CA.
#[derive(Parser)]
#[command(name = "fleet-server", version)]
struct Cli {
    /// Log as JSON lines instead of human text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a service directory: TLS certificate, the shipped rules (DIR/policies/fleet.toml)
    /// and DIR/fleet-server.toml naming the monitor identity.
    Init {
        /// The directory to create.
        #[arg(long)]
        data_dir: PathBuf,
        /// The identity file of a `monitor` principal (`cactl principal add --role monitor`).
        #[arg(long)]
        ca_identity: PathBuf,
        /// gRPC listen address (heartbeats, alerts).
        #[arg(long, default_value = "127.0.0.1:7543")]
        grpc: String,
        /// HTTP listen address (/healthz, /readyz, /metrics).
        #[arg(long, default_value = "127.0.0.1:7580")]
        http: String,
    },
    /// Serve until SIGTERM: gRPC over TLS, HTTP health and metrics, the silence sweep.
    Serve {
        /// The configuration written by `init`.
        #[arg(long, env = "HSCA_FLEET_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if cli.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    match cli.command {
        Command::Init { data_dir, ca_identity, grpc, http } => {
            let made = fleet::config::init(&data_dir, &ca_identity, &grpc, &http)?;
            println!("created a fleet service in {}", data_dir.display());
            println!("  configuration: {}", made.config.display());
            println!("  TLS CA for terminals and cactl: {}", made.tls_ca.display());
            println!("next: fleet-server serve --config {}", made.config.display());
            Ok(())
        }
        Command::Serve { config } => {
            let cfg = fleet::config::Loaded::read(&config)?;
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(fleet::server::serve(cfg))
        }
    }
}
