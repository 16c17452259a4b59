//! `ca-server`: the gRPC certificate authority for healthcare-security service terminals.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ca-server",
    version,
    about = "The SM2 certificate authority for healthcare-security service terminals"
)]
struct Cli {
    /// Log as JSON lines instead of human text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new CA in DIR on the embedded default (softtoken HSM, redb registry): token and
    /// PINs, root and issuing keys in the token, certificates, TLS, the first admin identity,
    /// DIR/ca-server.toml and DIR/cactl.toml.
    Init {
        /// The directory to create the CA in.
        #[arg(long)]
        data_dir: PathBuf,
        /// A file holding the HSM user PIN to use (default: generate one into DIR/secrets/).
        #[arg(long)]
        pin_file: Option<PathBuf>,
        /// gRPC listen address to configure.
        #[arg(long, default_value = "127.0.0.1:7443")]
        grpc: String,
        /// HTTP listen address to configure.
        #[arg(long, default_value = "127.0.0.1:7080")]
        http: String,
        /// Admin identities to make (identities/admin, identities/admin-2, …). Dual control
        /// (bulk revocation, new admins, re-keying) needs two; with 1 it is reported unavailable.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=9))]
        admins: u32,
        /// `prompt`: ask each admin's key passphrase twice at the terminal (not echoed), admin
        /// first, instead of generating them into 0600 files.
        #[arg(long, value_parser = ["prompt"])]
        admin_passphrase: Option<String>,
    },
    /// Measure: the crypto limit in this process (through the configured HSM), then certificates
    /// per second end to end against the running server, as the station IDENTITY.
    Bench {
        /// The server's configuration file.
        #[arg(long, env = "HSCA_CONFIG")]
        config: PathBuf,
        /// A station identity bound to --manufacturer.
        #[arg(long)]
        identity: PathBuf,
        /// Manufacturer code the station may issue for.
        #[arg(long, default_value = "HSTM")]
        manufacturer: String,
        /// Concurrent gRPC connections.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Certificates to issue.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Threads for the crypto limit (default: the machine's cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Restore a backup made by `cactl backup` into the configured registry path, which must not
    /// exist (move the damaged one away first). The backup's audit chain is verified first.
    Restore {
        /// The server's configuration file.
        #[arg(long, env = "HSCA_CONFIG")]
        config: PathBuf,
        /// The backup file.
        #[arg(long)]
        from: PathBuf,
    },
    /// Bring the configured PostgreSQL registry's schema up to date (`serve` refuses any other
    /// schema version). Safe to run while other instances serve, and from several at once.
    /// With --from, then copy a redb registry (stopped) into it: the PostgreSQL registry must be
    /// empty; the audit chain is verified before and after and must end at the same head.
    Migrate {
        /// The server's configuration file (`[registry] url = "postgres://…"`).
        #[arg(long, env = "HSCA_CONFIG")]
        config: PathBuf,
        /// A redb registry (DIR/registry.redb) to copy in; its server must be stopped.
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Serve gRPC over TLS and HTTP (health, readiness, metrics) until SIGTERM.
    Serve {
        /// The configuration file written by `init`.
        #[arg(long, env = "HSCA_CONFIG")]
        config: PathBuf,
        /// Start even though the registry's audit chain lacks the newest head in the anchor log
        /// (it was truncated or rolled back); the acceptance is audited and shown by /readyz.
        #[arg(long)]
        accept_audit_rollback: bool,
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
        Command::Init { data_dir, pin_file, grpc, http, admins, admin_passphrase } => {
            // Asked before anything is made: a mistyped passphrase leaves nothing behind.
            let admin_passphrases = match admin_passphrase {
                Some(_) => (1..=admins)
                    .map(|n| {
                        let label = format!("the {} key", ca_server::init::admin_name(n));
                        proto::identity::prompt_new_passphrase(&label).map(ca_server::init::AdminPassphrase)
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                None => Vec::new(),
            };
            let report = ca_server::init::init(
                &data_dir,
                &ca_server::init::Options { pin_file, grpc: Some(grpc), http: Some(http), admins, admin_passphrases },
            )?;
            println!("created a new CA in {}", data_dir.display());
            println!("  root certificate:     {}", report.root.display());
            println!("  issuing certificate:  {}", report.issuing.display());
            for identity in &report.admin_identities {
                println!("  admin identity:       {}", identity.display());
            }
            if report.admin_identities.len() < 2 {
                println!("  dual control:         unavailable with one admin (init --admins 2)");
            }
            println!("  server configuration: {}", report.config.display());
            println!("  cactl configuration:  {}", report.cactl.display());
            println!("next: ca-server serve --config {}", report.config.display());
            Ok(())
        }
        Command::Bench { config, identity, manufacturer, concurrency, count, threads } => {
            let (_, ca) = ca_server::serve::load_signing(&config)?;
            let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            use ca_server::bench::{LimitWork, crypto_limit};
            let minimum = crypto_limit(&ca, threads, count, LimitWork::Minimum)?;
            let as_issued = crypto_limit(&ca, threads, count, LimitWork::AsIssued)?;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let e2e =
                rt.block_on(ca_server::bench::end_to_end(&identity, &ca.policy, &manufacturer, concurrency, count))?;
            ca_server::bench::print(&[minimum, as_issued, e2e]);
            Ok(())
        }
        Command::Restore { config, from } => {
            let cfg = ca_server::config::Loaded::read(&config)?;
            let ca_server::config::RegistryLocation::Redb(target) = cfg.registry_location()? else {
                anyhow::bail!(
                    "a PostgreSQL registry is restored with pg_restore, point-in-time recovery, or `ca-server migrate --from BACKUP` into an empty database"
                );
            };
            let summary = registry::Registry::restore(&from, &target)?;
            println!(
                "restored {} to {}: audit chain verified, {} entries",
                from.display(),
                target.display(),
                summary.entries
            );
            Ok(())
        }
        Command::Migrate { config, from } => {
            let cfg = ca_server::config::Loaded::read(&config)?;
            let ca_server::config::RegistryLocation::Postgres(url) = cfg.registry_location()? else {
                anyhow::bail!("[registry] is a redb file: it needs no migration (only PostgreSQL registries do)");
            };
            let applied = registry::Registry::migrate_postgres(&url)?;
            match applied.as_slice() {
                [] => println!("registry schema is current (version {})", registry::POSTGRES_SCHEMA_VERSION),
                _ => println!("registry schema migrated: applied versions {applied:?}"),
            }
            if let Some(from) = from {
                let summary = registry::Registry::copy_redb_to_postgres(&from, &url)?;
                println!(
                    "copied {} into PostgreSQL: audit chain verified, {} entries, head {}",
                    from.display(),
                    summary.entries,
                    summary.head
                );
            }
            Ok(())
        }
        Command::Serve { config, accept_audit_rollback } => {
            // Load (HSM, registry, policy) before the runtime: a bad configuration fails at once.
            let opts = ca_server::serve::LoadOptions { accept_audit_rollback };
            let (cfg, ca) = ca_server::serve::load_with(&config, &opts)?;
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(ca_server::serve::serve(cfg, ca))
        }
    }
}
