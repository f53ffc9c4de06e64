//! `tessera`: the node software of the Tessera edge network, and its command-line client.
//!
//! This binary only wires things together: `run` layers the configuration and starts
//! the data plane ([`dataplane::server`]); `put`/`get` are HTTP clients that stream
//! and verify; `store verify` re-hashes a data directory. The real work lives in the
//! `dataplane` crate.

mod client;
mod deploy_cli;
mod deployments;
mod function_cli;
mod h3client;
mod ipfs_cli;
mod ledger;
mod node;
mod peering;
mod services;
mod site_cli;
#[cfg(feature = "test-services")]
mod test_services;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Tessera edge node: content-addressed BLAKE3 blob storage and serving"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (with no flags: a single node on 127.0.0.1:8080 with embedded defaults).
    Run(Box<node::RunArgs>),
    /// Upload files to a node; prints each file's hash.
    Put(client::PutArgs),
    /// Download a blob as a verified stream, checking every 16 KiB chunk group.
    Get(client::GetArgs),
    /// Inspect the local blob store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// The cluster as a node sees it.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The node's identity (ed25519 key pair in the data dir).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// This client's ledger account (its key: ~/.config/tessera/client/).
    Account(ledger::AccountArgs),
    /// The replicated ledger as a node sees it.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Rewards paid to nodes for a closed epoch.
    Rewards(ledger::RewardsArgs),
    /// Every staked node's reputation.
    Reputation(ledger::NodeArg),
    /// Create a deployment of a service (or change it: run it again), owned
    /// by this client's key.
    Deploy(Box<deploy_cli::DeployArgs>),
    /// List deployments with their placement and health.
    Deployments(ledger::NodeArg),
    /// Remove a deployment (its owner only).
    Undeploy(deploy_cli::UndeployArgs),
    /// Purge a CDN zone's cache on every node that runs it (its owner only).
    Purge(deploy_cli::PurgeArgs),
    /// Point a site at a version it keeps (the one before the live one if
    /// none is given).
    Rollback(site_cli::RollbackArgs),
    /// IPFS: a pinning token, import (UnixFS, ipfs-car's CIDs), pins, verified get.
    Ipfs {
        #[command(subcommand)]
        command: ipfs_cli::IpfsCommand,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Epoch, committee, ledger time, services, counters.
    Status(ledger::NodeArg),
    /// Register a service (or change its name or price) as a staked node.
    Service(ledger::ServiceArgs),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// List the members: id, client-facing address, region, state, RTT.
    Members(client::MembersArgs),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print the node id (its public key) and where the key file is.
    Show {
        /// The node's data directory (default: the node's default).
        #[arg(long, env = "TESSERA_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// One JSON object: {"id", "key_file"}.
        #[arg(long)]
        json: bool,
    },
    /// Make the key if there is none (e.g. to name a genesis committee before
    /// the first start), then show it.
    Init {
        #[arg(long, env = "TESSERA_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Re-hash every blob and list the corrupt ones (exit status 1 if any).
    Verify {
        /// The node's data directory (default: the node's default).
        #[arg(long, env = "TESSERA_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Move corrupt blobs to quarantine/ so they are no longer served.
        #[arg(long)]
        quarantine: bool,
    },
}

/// Whether log lines get ANSI colours: only when stderr is a terminal, and never
/// with `NO_COLOR` set to anything but the empty string (no-color.org), so logs
/// written to a file, a pipe or the journal stay plain text.
fn log_colours(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn main() -> std::process::ExitCode {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(log_colours(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => node::run(*args),
        Command::Put(args) => client::put(args),
        Command::Get(args) => client::get(args),
        Command::Store {
            command:
                StoreCommand::Verify {
                    data_dir,
                    quarantine,
                },
        } => store_verify(data_dir, quarantine),
        Command::Cluster {
            command: ClusterCommand::Members(args),
        } => client::members(args),
        Command::Keys {
            command: KeysCommand::Show { data_dir, json },
        } => keys_show(data_dir, json, false),
        Command::Keys {
            command: KeysCommand::Init { data_dir, json },
        } => keys_show(data_dir, json, true),
        Command::Account(args) => ledger::account(args),
        Command::Ledger {
            command: LedgerCommand::Status(args),
        } => ledger::status(args),
        Command::Ledger {
            command: LedgerCommand::Service(args),
        } => ledger::service(args),
        Command::Rewards(args) => ledger::rewards(args),
        Command::Reputation(args) => ledger::reputation(args),
        Command::Deploy(args) => deploy_cli::deploy(*args),
        Command::Deployments(args) => deploy_cli::list(args),
        Command::Undeploy(args) => deploy_cli::undeploy(args),
        Command::Purge(args) => deploy_cli::purge(args),
        Command::Rollback(args) => site_cli::rollback(args),
        Command::Ipfs { command } => ipfs_cli::run(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn keys_show(
    data_dir: Option<PathBuf>,
    json: bool,
    create: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let dir = data_dir.unwrap_or_else(dataplane::config::default_data_dir);
    let key = if create {
        std::fs::create_dir_all(&dir)?;
        controlplane::NodeKey::load_or_create(&dir)?.0
    } else {
        controlplane::NodeKey::load(&dir)?
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"id": key.id().to_string(), "key_file": key.path()})
        );
    } else {
        println!("node id   {}", key.id());
        println!("key file  {}", key.path().display());
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn store_verify(
    data_dir: Option<PathBuf>,
    quarantine: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let dir = data_dir.unwrap_or_else(dataplane::config::default_data_dir);
    if !dir.join("blobs").is_dir() {
        anyhow::bail!(
            "{} is not a Tessera data directory (no blobs/ inside); pass --data-dir",
            dir.display()
        );
    }
    let (checked, corrupt) = dataplane::store::verify_dir(&dir, quarantine)?;
    for c in &corrupt {
        println!("corrupt {} {}", c.hash, c.reason);
    }
    eprintln!(
        "checked {checked} blobs in {}: {} corrupt{}",
        dir.display(),
        corrupt.len(),
        if quarantine && !corrupt.is_empty() {
            " (moved to quarantine/)"
        } else {
            ""
        }
    );
    Ok(if corrupt.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}
