//! `tessera run`: configuration layering and the node's lifecycle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dataplane::config::NodeConfig;
use dataplane::server::Server;
use dataplane::store::{Store, StoreConfig};
use sd_notify::NotifyState;

/// Every setting can come from the TOML file, a `TESSERA_*` variable or a flag;
/// later ones win: defaults < file < environment < flags.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// TOML config file (keys as in `NodeConfig`, e.g. `listen = "0.0.0.0:8080"`).
    #[arg(long, env = "TESSERA_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: ~/.local/share/tessera].
    #[arg(long, env = "TESSERA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "TESSERA_LISTEN")]
    listen: Option<SocketAddr>,
    /// Event loops, one pinned per core [default: every available CPU].
    #[arg(long, env = "TESSERA_CORES")]
    cores: Option<usize>,
    /// Store size limit in bytes; unpinned blobs are evicted above it.
    #[arg(long, env = "TESSERA_MAX_STORE_BYTES")]
    max_store_bytes: Option<u64>,
    /// Largest upload in bytes.
    #[arg(long, env = "TESSERA_MAX_BODY_BYTES")]
    max_body_bytes: Option<u64>,
    /// Bearer token for DELETE and pin/unpin (without one those are refused).
    #[arg(long, env = "TESSERA_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Close keep-alive connections idle this long.
    #[arg(long, env = "TESSERA_IDLE_TIMEOUT_MS")]
    idle_timeout_ms: Option<u64>,
    /// Cut off request heads and uploads that stall this long.
    #[arg(long, env = "TESSERA_HEADER_TIMEOUT_MS")]
    header_timeout_ms: Option<u64>,
    /// Time in-flight requests get after SIGTERM.
    #[arg(long, env = "TESSERA_SHUTDOWN_GRACE_MS")]
    shutdown_grace_ms: Option<u64>,
    /// Connections per core before new ones are refused with 503.
    #[arg(long, env = "TESSERA_MAX_CONNECTIONS_PER_CORE")]
    max_connections_per_core: Option<usize>,
}

/// Builds the configuration: defaults, then the file, then env and flags.
pub fn load_config(args: &RunArgs) -> anyhow::Result<NodeConfig> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("invalid config file {}", path.display()))?
        }
        None => NodeConfig::default(),
    };
    macro_rules! layer {
        ($($field:ident),*) => { $( if let Some(v) = args.$field.clone() { cfg.$field = v; } )* };
    }
    layer!(
        data_dir,
        listen,
        cores,
        max_store_bytes,
        max_body_bytes,
        idle_timeout_ms,
        header_timeout_ms,
        shutdown_grace_ms,
        max_connections_per_core
    );
    if let Some(t) = args.admin_token.clone() {
        cfg.admin_token = Some(t);
    }
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    Ok(cfg)
}

/// Exit status for a configuration or identity problem an operator must fix
/// (sysexits' EX_CONFIG); the systemd unit does not restart on it.
pub const EXIT_CONFIG: u8 = 78;

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(&args)?;
    // The node's identity: made on first start, then always the same. A key file
    // that cannot be used stops the node with what to do, not a restart loop.
    let key = match controlplane::NodeKey::load_or_create(&cfg.data_dir) {
        Ok((key, made)) => {
            if made {
                tracing::info!(id = %key.id(), file = %key.path().display(), "made a new node key");
            }
            key
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    tracing::info!(id = %key.id(), "node identity");
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, shutdown.clone())
            .context("cannot install signal handler")?;
    }
    let store = Store::open(
        &cfg.data_dir,
        StoreConfig {
            max_bytes: cfg.max_store_bytes,
        },
    )
    .with_context(|| format!("cannot open the store in {}", cfg.data_dir.display()))?;
    let store = Arc::new(store);
    tracing::info!(
        blobs = store.blob_count(),
        bytes = store.used_bytes(),
        dir = %cfg.data_dir.display(),
        "store open"
    );
    let cores = cfg.core_count();
    let listen = cfg.listen;
    let server = Server::start(cfg, store, shutdown.clone())?;
    tracing::info!(%listen, cores, "listening on http://{listen}");
    // Tell a notify-aware supervisor (systemd Type=notify) we serve; a no-op without
    // NOTIFY_SOCKET.
    let status = format!("serving on http://{listen} with {cores} cores");
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
    while !shutdown.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("stopping: finishing requests in flight");
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    server.wait();
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
