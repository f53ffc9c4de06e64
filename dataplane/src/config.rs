//! Node settings with embedded defaults. The binary layers a TOML file, `TESSERA_*`
//! environment variables and flags over [`NodeConfig::default`], in that order.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// What a node does when asked for a blob it does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMiss {
    Fetch,
    Redirect,
    None,
}

impl std::str::FromStr for OnMiss {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fetch" => Ok(OnMiss::Fetch),
            "redirect" => Ok(OnMiss::Redirect),
            "none" => Ok(OnMiss::None),
            _ => Err(format!("{s:?}: want fetch, redirect or none")),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// TCP address of the HTTP/1.1 listener (every core binds it with `SO_REUSEPORT`).
    pub listen: SocketAddr,
    /// Event loops, one per core, each pinned to its core. 0: one per available CPU.
    pub cores: usize,
    /// Where blobs, outboards and metadata live.
    pub data_dir: PathBuf,
    /// Store size limit; unpinned blobs are evicted least-recently-used above it.
    pub max_store_bytes: u64,
    /// Disk for whole verified streams of blobs asked for whole more than once
    /// (`blobs/<hash>.bao`), beside `max_store_bytes`: such a stream is then
    /// spliced like plain bytes, not read, hashed and copied again. 0: none kept.
    pub stream_cache_bytes: u64,
    /// Bearer token for DELETE and pin/unpin. None: those routes are refused.
    pub admin_token: Option<String>,
    /// Largest upload accepted (413 above).
    pub max_body_bytes: u64,
    /// Request line plus headers (431 above). Also the per-connection read buffer.
    pub max_header_bytes: usize,
    /// Headers per request (431 above); at most 64.
    pub max_headers: usize,
    /// Open connections per core; more are answered 503 and closed.
    pub max_connections_per_core: usize,
    /// Above this many open connections on a core, a keep-alive connection that
    /// waits for its next request holds no buffers: it waits for readability and
    /// takes its read and write buffers (and splice pipe) from the core's pools when
    /// bytes arrive. Below it, each connection keeps its read buffer (one less
    /// submission per request); its write buffer and pipe wait in the pools
    /// either way. 0: always release them.
    pub park_idle_above_connections: usize,
    /// A connection that keeps its read buffer while idle (see above) parks
    /// anyway once it has waited this long (after between half of it and all
    /// of it): only connections between close requests keep a buffer, as
    /// nginx keeps none. 0: only the connection count makes them park.
    pub park_idle_after_ms: u64,
    /// Above this many open connections on a core, an idle keep-alive
    /// connection that holds no buffers (see above) gives up its task as well:
    /// the core keeps only its socket, in an epoll set that the kernel wakes
    /// when bytes arrive, and starts a task for it then (one allocation per
    /// wake, which is why a few connections do not do it). New connections
    /// wait there for their first bytes too. 0: always.
    pub kernel_idle_above_connections: usize,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout_ms: u64,
    /// A request head (or an upload) that stalls for this long is cut off (slowloris).
    pub header_timeout_ms: u64,
    /// On SIGTERM, in-flight requests get this long to finish.
    pub shutdown_grace_ms: u64,
    /// Submission queue entries of each core's io_uring.
    pub io_uring_entries: u32,
    /// Size asked for each connection's splice pipe (the kernel may cap it).
    pub pipe_bytes: usize,
    /// Bodies up to this many bytes are copied (one `pread`) into the response
    /// buffer and go out with the head in one io_uring write; larger ones are
    /// spliced. For a page or four, two splice calls cost more than the copy.
    /// 0 splices everything.
    pub copy_body_max_bytes: usize,
    /// Open blob files each core keeps cached (each holds a descriptor).
    pub open_file_cache_entries: usize,
    /// Serve HTTP/3 on UDP at the same address as `listen`.
    pub h3: bool,
    /// TLS certificate chain (PEM) for HTTP/3. None: a self-signed one is made in
    /// `data_dir/tls/` on first start.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM), with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// QUIC connections per core; more are ignored (the client retries elsewhere).
    pub h3_max_connections_per_core: usize,
    /// Concurrent request streams a client may open per connection.
    pub h3_max_streams_per_connection: u64,
    /// Connection-wide flow-control window, bytes.
    pub h3_max_data_bytes: u64,
    /// Per-stream flow-control window, bytes.
    pub h3_max_stream_data_bytes: u64,
    /// A QUIC connection idle this long is closed.
    pub h3_idle_timeout_ms: u64,
    /// Validate client addresses with a QUIC Retry before keeping any state
    /// (one more round trip per connection; defends against spoofed floods).
    pub h3_retry: bool,
    /// Socket buffer asked for each core's UDP socket (the kernel caps it at
    /// net.core.rmem_max / wmem_max; a warning says so).
    pub udp_buffer_bytes: usize,
    /// Other nodes' client-facing addresses to join the cluster through.
    pub join: Vec<SocketAddr>,
    /// This node's region label (for latency-aware routing).
    pub region: String,
    /// A member that stops answering gossip is declared down this long after it
    /// is first suspected.
    pub gossip_down_after_ms: u64,
    /// Gossip probe period (one random member probed per period).
    pub gossip_probe_ms: u64,
    /// Home nodes per blob (rendezvous hashing over live members).
    pub replication: usize,
    /// A request for a blob this node lacks: `fetch` it from peers and serve it,
    /// `redirect` the client (307) to the best node for it, or answer `none` (404).
    pub on_miss: OnMiss,
    /// Caps each verified-stream transfer to another node at this many bytes a
    /// second (0: no cap); clients are never capped.
    pub peer_transfer_bytes_per_sec: u64,
    /// On a membership change, offer every blob held here to its current homes
    /// that lack it (a joining node receives its share).
    pub rebalance: bool,
    /// The replicated ledger (`[ledger]`); off unless a genesis committee is set.
    pub ledger: LedgerConfig,
    /// Each service's own section (`[services.NAME]`), handed to that service
    /// as it is; the service checks it at start.
    pub services: std::collections::BTreeMap<String, service_api::toml::Table>,
}

/// `[ledger]`: receipts, rewards and reputation replicated by a BFT committee.
/// Every node of one network must use the same genesis and parameters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// Node ids (64 hex digits) of the first committee; empty: no ledger.
    /// 3f+1 members tolerate f faulty ones (4 tolerate 1).
    pub genesis: Vec<String>,
    /// Epoch length in milliseconds of ledger time.
    pub epoch_ms: u64,
    /// Delay between a member's consensus units (one ordering round).
    pub unit_ms: u64,
    /// Charged to a client per delivered byte.
    pub price_per_byte: u64,
    /// Dev/test networks: accounts may credit themselves (`tessera account
    /// --deposit`), and nodes stake from a self-deposit.
    pub dev_deposits: bool,
    /// Seats in each epoch's committee.
    pub committee_size: usize,
    /// Stake this node registers with on start (0: it does not register).
    pub stake: u64,
    /// Least stake that makes a node a committee candidate.
    pub min_stake: u64,
    /// How often the node submits its receipts log and its peer scores.
    pub submit_ms: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            genesis: Vec::new(),
            epoch_ms: 3_600_000,
            unit_ms: 500,
            price_per_byte: 1,
            dev_deposits: false,
            committee_size: 4,
            stake: 0,
            min_stake: 1,
            submit_ms: 2_000,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            cores: 0,
            data_dir: default_data_dir(),
            max_store_bytes: 64 << 30,
            stream_cache_bytes: 4 << 30,
            admin_token: None,
            max_body_bytes: 16 << 30,
            max_header_bytes: 16 << 10,
            max_headers: 64,
            max_connections_per_core: 16_384,
            park_idle_above_connections: 256,
            park_idle_after_ms: 500,
            kernel_idle_above_connections: 1024,
            idle_timeout_ms: 60_000,
            header_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            io_uring_entries: 1024,
            pipe_bytes: 1 << 20,
            copy_body_max_bytes: 16 << 10,
            open_file_cache_entries: 1024,
            h3: true,
            tls_cert: None,
            tls_key: None,
            h3_max_connections_per_core: 4096,
            h3_max_streams_per_connection: 128,
            h3_max_data_bytes: 32 << 20,
            h3_max_stream_data_bytes: 8 << 20,
            h3_idle_timeout_ms: 30_000,
            h3_retry: false,
            udp_buffer_bytes: 8 << 20,
            join: Vec::new(),
            region: String::new(),
            gossip_down_after_ms: 3_000,
            gossip_probe_ms: 1_000,
            replication: 3,
            on_miss: OnMiss::Fetch,
            peer_transfer_bytes_per_sec: 0,
            rebalance: true,
            ledger: LedgerConfig::default(),
            services: Default::default(),
        }
    }
}

fn core_count_limit(cfg: &NodeConfig) -> usize {
    cfg.core_count()
}

/// `$XDG_DATA_HOME/tessera`, else `~/.local/share/tessera`, else `./tessera-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("tessera");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/tessera");
    }
    PathBuf::from("tessera-data")
}

impl NodeConfig {
    /// Cores to run, resolving 0 to the CPUs this process may use.
    pub fn core_count(&self) -> usize {
        if self.cores > 0 {
            self.cores
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }

    /// Checks values that would make the node misbehave rather than fail.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_headers == 0 || self.max_headers > crate::http::MAX_HEADERS {
            return Err(format!(
                "max_headers must be between 1 and {}",
                crate::http::MAX_HEADERS
            ));
        }
        if self.max_header_bytes < 256 {
            return Err("max_header_bytes must be at least 256".into());
        }
        if self.max_connections_per_core == 0 {
            return Err("max_connections_per_core must be at least 1".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("tls_cert and tls_key go together: set both or neither".into());
        }
        if self.h3 && core_count_limit(self) > 255 {
            return Err("HTTP/3 steers packets by a one-byte core index: at most 255 cores".into());
        }
        let l = &self.ledger;
        if l.genesis
            .iter()
            .any(|g| g.len() != 64 || !g.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err("ledger.genesis holds node ids: 64 hex digits each".into());
        }
        if l.unit_ms < 10 || l.epoch_ms < 10 * l.unit_ms {
            return Err(
                "ledger.unit_ms must be at least 10 and ledger.epoch_ms at least ten units".into(),
            );
        }
        // AlephBFT numbers rounds with 16 bits: an epoch must end before then.
        if l.epoch_ms / l.unit_ms > 60_000 {
            return Err("ledger.epoch_ms / ledger.unit_ms must stay below 60000 rounds".into());
        }
        if l.submit_ms == 0 || l.committee_size == 0 {
            return Err("ledger.submit_ms and ledger.committee_size must be at least 1".into());
        }
        if matches!(&self.admin_token, Some(t) if t.len() < 16) {
            return Err("admin_token must be at least 16 characters".into());
        }
        Ok(())
    }
}
