//! Node settings with embedded defaults. The binary layers a TOML file, `TESSERA_*`
//! environment variables and flags over [`NodeConfig::default`], in that order.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

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
    /// Open blob files each core keeps cached (each holds a descriptor).
    pub open_file_cache_entries: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            cores: 0,
            data_dir: default_data_dir(),
            max_store_bytes: 64 << 30,
            admin_token: None,
            max_body_bytes: 16 << 30,
            max_header_bytes: 16 << 10,
            max_headers: 64,
            max_connections_per_core: 16_384,
            idle_timeout_ms: 60_000,
            header_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            io_uring_entries: 1024,
            pipe_bytes: 1 << 20,
            open_file_cache_entries: 1024,
        }
    }
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
        if matches!(&self.admin_token, Some(t) if t.len() < 16) {
            return Err("admin_token must be at least 16 characters".into());
        }
        Ok(())
    }
}
