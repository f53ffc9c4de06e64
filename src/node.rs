//! `tessera run`: configuration layering and the node's lifecycle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use controlplane::cluster::{Cluster, ClusterConfig};
use dataplane::config::NodeConfig;
use dataplane::server::{ControlPlane, Hooks, LedgerCall, LedgerReply, Server};
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
    /// Join the cluster through this node's client-facing address (repeatable).
    #[arg(long, env = "TESSERA_JOIN", value_delimiter = ',')]
    join: Vec<SocketAddr>,
    /// This node's region label.
    #[arg(long, env = "TESSERA_REGION")]
    region: Option<String>,
    /// Declare a silent member down this long after it is suspected.
    #[arg(long, env = "TESSERA_GOSSIP_DOWN_AFTER_MS")]
    gossip_down_after_ms: Option<u64>,
    /// Gossip probe period.
    #[arg(long, env = "TESSERA_GOSSIP_PROBE_MS")]
    gossip_probe_ms: Option<u64>,
    /// A blob this node lacks: fetch (from peers, then serve), redirect (307 to
    /// the best node) or none (404).
    #[arg(long, env = "TESSERA_ON_MISS")]
    on_miss: Option<dataplane::config::OnMiss>,
    /// Home nodes per blob.
    #[arg(long, env = "TESSERA_REPLICATION")]
    replication: Option<usize>,
    /// Cap each transfer to another node at this many bytes a second (0: none).
    #[arg(long, env = "TESSERA_PEER_TRANSFER_BYTES_PER_SEC")]
    peer_transfer_bytes_per_sec: Option<u64>,
    /// Offer held blobs to their new homes when membership changes (true/false).
    #[arg(long, env = "TESSERA_REBALANCE")]
    rebalance: Option<bool>,
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
        max_connections_per_core,
        region,
        gossip_down_after_ms,
        gossip_probe_ms,
        on_miss,
        replication,
        peer_transfer_bytes_per_sec,
        rebalance
    );
    if !args.join.is_empty() {
        cfg.join = args.join.clone();
    }
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

/// The control plane as the data plane sees it: the cluster's views, peering
/// (fetch on miss, replication) and the ledger.
struct NodeControl {
    members: Arc<dyn Fn() -> String + Send + Sync>,
    route: Arc<controlplane::cluster::RouteFn>,
    locate: Arc<controlplane::cluster::LocateFn>,
    verify_peer: Arc<controlplane::cluster::VerifyPeerFn>,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
    peering: Option<Arc<crate::peering::Peering>>,
    on_stored: Option<Arc<crate::peering::OnStored>>,
    chain: Option<Arc<controlplane::chain::Chain>>,
    receipts: Option<controlplane::ledger::ReceiptLog>,
    deployments: Option<Arc<crate::deployments::Deployments>>,
}

impl ControlPlane for NodeControl {
    fn members(&self) -> Option<String> {
        Some((self.members)())
    }

    fn route(&self, hash: &[u8; 32], holds: bool) -> Option<String> {
        Some((self.route)(hash, holds))
    }

    fn metrics(&self, out: &mut String) {
        out.push_str(&(self.metrics)());
        if let Some(chain) = &self.chain {
            out.push_str(&crate::ledger::metrics(chain));
        }
    }

    fn verify_peer(&self, id: &[u8], time: &[u8], sig: &[u8], message: &[u8]) -> bool {
        (self.verify_peer)(id, time, sig, message)
    }

    fn locate(&self, hash: &[u8; 32]) -> Option<std::net::SocketAddr> {
        (self.locate)(hash)
    }

    fn fetches(&self) -> bool {
        self.peering.is_some()
    }

    fn fetch_missing(&self, store: &Store, hash: &[u8; 32]) -> bool {
        self.peering
            .as_ref()
            .is_some_and(|p| p.fetch_missing(store, hash))
    }

    fn stored(&self, hash: &[u8; 32]) {
        if let Some(queue) = &self.on_stored {
            queue(hash);
        }
    }

    fn store_receipts(&self, body: &[u8]) -> Option<Result<usize, String>> {
        self.receipts.as_ref().map(|log| log.accept(body))
    }

    fn deployments(
        &self,
        route: dataplane::http::DeployRoute,
        body: Option<Vec<u8>>,
    ) -> Option<service_api::Reply> {
        self.deployments.as_ref().map(|d| d.answer(route, body))
    }

    fn ledger(&self, call: LedgerCall) -> Option<LedgerReply> {
        self.chain
            .as_ref()
            .map(|chain| crate::ledger::answer(chain, call))
    }
}

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
            stream_cache_bytes: cfg.stream_cache_bytes,
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
    let replication = cfg.replication;
    let data_dir = cfg.data_dir.clone();
    // The control plane: gossip membership on its own thread, on our port.
    let cluster = if listen.port() == 0 {
        tracing::warn!("listening on port 0: no cluster membership (peers need a fixed port)");
        None
    } else {
        let cluster = Cluster::start(
            key.clone(),
            ClusterConfig {
                addr: listen,
                join: cfg.join.clone(),
                region: cfg.region.clone(),
                capacity_bytes: cfg.max_store_bytes,
                down_after: Duration::from_millis(cfg.gossip_down_after_ms),
                probe_period: Duration::from_millis(cfg.gossip_probe_ms),
                own_socket: !cfg.h3,
                data_dir: Some(cfg.data_dir.clone()),
                load: Some({
                    let store = store.clone();
                    Arc::new(move || {
                        let max = store.max_bytes().max(1);
                        (store.used_bytes().saturating_mul(1000) / max).min(1000) as u16
                    })
                }),
            },
        )
        .context("cannot start the control plane")?;
        Some(Arc::new(cluster))
    };
    let peering = cluster
        .as_ref()
        .map(|c| crate::peering::Peering::new(c.clone(), replication, cfg.rebalance));
    let on_stored = match &peering {
        Some(p) => Some(
            p.start_replicator(store.clone())
                .context("cannot start the replicator")?,
        ),
        None => None,
    };
    // The replicated ledger, when this network has one.
    let chain = match &cluster {
        Some(c) if !cfg.ledger.genesis.is_empty() => {
            let chain = crate::ledger::start(key.clone(), c.clone(), &cfg)?;
            crate::ledger::start_duties(chain.clone(), c.clone(), key.clone(), &cfg)
                .context("cannot start the ledger duties")?;
            Some(chain)
        }
        _ => None,
    };
    let receipts = match &cluster {
        Some(c) => Some(
            controlplane::ledger::ReceiptLog::open(&data_dir.join("receipts.log"), c.id().0)
                .context("cannot open the receipt log")?,
        ),
        None => None,
    };
    let lent_cluster = cluster.clone().zip(peering.clone());
    let deployments = match &cluster {
        Some(c) => Some(Arc::new(crate::deployments::Deployments::open(
            &data_dir,
            store.clone(),
            c.clone(),
            chain.clone(),
        )?)),
        None => None,
    };
    let control: Arc<dyn ControlPlane> = match &cluster {
        Some(c) => Arc::new(NodeControl {
            members: c.members_renderer(),
            route: c.route_renderer(replication),
            locate: c.locator(replication),
            verify_peer: c.peer_verifier(),
            metrics: c.metrics_renderer(),
            peering,
            on_stored,
            chain: chain.clone(),
            receipts,
            deployments: deployments.clone(),
        }),
        None => Arc::new(dataplane::server::NoControlPlane),
    };
    let lend = crate::services::Lend {
        store: store.clone(),
        control: control.clone(),
        cluster: lent_cluster,
        chain: chain.clone(),
        deployments: deployments.clone(),
        replication,
        redirect: cfg.on_miss == dataplane::config::OnMiss::Redirect,
        // Where a service reaches this node itself (a wildcard listen address
        // is reached on loopback).
        listen: if listen.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listen.port())
        } else {
            listen
        },
        data_dir: &data_dir,
        sections: &cfg.services,
    };
    let services = match crate::services::build(&lend) {
        Ok(services) => services,
        // A service's config the operator must mend.
        Err(why) => {
            eprintln!("error: {why:#}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let hooks = Hooks {
        services,
        control,
        control_inbox: cluster.as_ref().map(|c| c.inbox()),
    };
    let server = match Server::start_with(cfg, store, shutdown.clone(), hooks) {
        Ok(server) => server,
        // Two services on one mount: the operator's configuration to mend.
        Err(dataplane::server::ServerError::Services(why)) => {
            eprintln!("error: {why}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
        Err(e) => return Err(e.into()),
    };
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
    // Leaving: the others hear it now, not after a failure-detection timeout.
    if let Some(c) = cluster {
        c.leave();
    }
    tracing::info!("stopping: finishing requests in flight");
    let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    server.wait();
    if let Some(chain) = chain {
        chain.shutdown();
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
