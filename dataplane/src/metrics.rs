//! Counters and latency histograms, one set per core, merged only when `/metrics`
//! is scraped.
//!
//! Each core is the only writer of its [`CoreStats`]: counters are relaxed atomics
//! on the core's own cache lines (no contention), and the latency histogram lives on
//! the core and is copied into [`CoreStats::published`] once a second. A scrape
//! therefore sees counters as of now and latencies as of the last second.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

use crate::http::{ROUTE_LABELS, STATUSES};
use crate::store::Store;

const ROUTES: usize = ROUTE_LABELS.len();
const CODES: usize = STATUSES.len();

/// Latency is recorded in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn new_latency_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts; fall back to auto-resize
    // rather than panic if that ever changes.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| {
        let mut h = Histogram::new(3).unwrap_or_else(|_| unreachable_histogram());
        h.auto(true);
        h
    })
}

#[cold]
fn unreachable_histogram() -> Histogram<u64> {
    // Histogram::new(3) only fails for sigfig > 5.
    std::process::abort()
}

/// One core's statistics. Aligned so two cores never share a cache line.
#[repr(align(128))]
pub struct CoreStats {
    requests: [[AtomicU64; CODES]; ROUTES],
    /// 1 once the core's io_uring runs completions cooperatively
    /// (`IORING_SETUP_COOP_TASKRUN`), 0 where the kernel refused it.
    pub io_uring_cooperative: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Body bytes that went file -> pipe -> socket without entering user space.
    pub zero_copy_bytes: AtomicU64,
    pub zero_copy_responses: AtomicU64,
    pub copied_body_bytes: AtomicU64,
    /// Body bytes that were read into user space (verified streams).
    pub copied_bytes: AtomicU64,
    pub connections_open: AtomicU64,
    /// Idle keep-alive connections that kept their buffers (below the
    /// parking count), as of the core's last tick.
    pub idle_with_buffers: AtomicU64,
    /// Idle keep-alive connections with no task, only their socket in the
    /// core's epoll set, as of the core's last tick.
    pub idle_in_kernel: AtomicU64,
    /// Read and write buffers the core holds for the next connections, as of
    /// its last decay (every half second).
    pub spare_buffers: AtomicU64,
    /// Spare read and write buffers freed after half a second unused.
    pub spare_buffers_freed: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub timeouts: AtomicU64,
    /// Stored blobs whose bytes failed verification while being served.
    pub corrupt_detected: AtomicU64,
    /// Blob opens served from the core's open-file cache.
    pub open_cache_hits: AtomicU64,
    /// Verified streams spliced whole from `blobs/<hash>.bao`.
    pub kept_stream_responses: AtomicU64,
    pub h3_connections_total: AtomicU64,
    pub h3_requests: AtomicU64,
    pub h3_datagrams_received: AtomicU64,
    pub h3_datagrams_sent: AtomicU64,
    /// Datagrams that reached a core other than their connection's and were handed over.
    pub h3_datagrams_forwarded: AtomicU64,
    pub h3_paced: AtomicU64,
    pub h3_retries: AtomicU64,
    pub h3_datagrams_dropped: AtomicU64,
    /// HTTP/3 body bytes taken straight from a mapped blob into quiche.
    pub h3_body_bytes_from_mmap: AtomicU64,
    pub published: Mutex<Histogram<u64>>,
}

impl Default for CoreStats {
    fn default() -> Self {
        Self {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            io_uring_cooperative: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            zero_copy_bytes: AtomicU64::new(0),
            zero_copy_responses: AtomicU64::new(0),
            copied_body_bytes: AtomicU64::new(0),
            copied_bytes: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            idle_with_buffers: AtomicU64::new(0),
            idle_in_kernel: AtomicU64::new(0),
            spare_buffers: AtomicU64::new(0),
            spare_buffers_freed: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            corrupt_detected: AtomicU64::new(0),
            open_cache_hits: AtomicU64::new(0),
            kept_stream_responses: AtomicU64::new(0),
            h3_connections_total: AtomicU64::new(0),
            h3_requests: AtomicU64::new(0),
            h3_datagrams_received: AtomicU64::new(0),
            h3_datagrams_sent: AtomicU64::new(0),
            h3_datagrams_forwarded: AtomicU64::new(0),
            h3_paced: AtomicU64::new(0),
            h3_retries: AtomicU64::new(0),
            h3_datagrams_dropped: AtomicU64::new(0),
            h3_body_bytes_from_mmap: AtomicU64::new(0),
            published: Mutex::new(new_latency_histogram()),
        }
    }
}

pub fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl CoreStats {
    pub fn count_request(&self, route: usize, status: usize) {
        if let Some(c) = self.requests.get(route).and_then(|r| r.get(status)) {
            bump(c, 1);
        }
    }

    /// Copies the core's histogram out for scrapes; skipped if a scrape holds it.
    pub fn publish(&self, local: &Histogram<u64>) {
        if let Ok(mut slot) = self.published.try_lock() {
            slot.reset();
            let _ = slot.add(local);
        }
    }
}

/// All cores' statistics.
pub struct Metrics {
    pub cores: Vec<CoreStats>,
}

impl Metrics {
    pub fn new(cores: usize) -> Self {
        Self {
            cores: (0..cores).map(|_| CoreStats::default()).collect(),
        }
    }

    fn sum(&self, f: impl Fn(&CoreStats) -> &AtomicU64) -> u64 {
        self.cores
            .iter()
            .map(|c| f(c).load(Ordering::Relaxed))
            .sum()
    }

    /// Prometheus text exposition format.
    pub fn render(&self, store: &Store) -> String {
        let mut out = String::with_capacity(8192);
        let _ = writeln!(
            out,
            "# HELP tessera_http_requests_total HTTP requests by route and status."
        );
        let _ = writeln!(out, "# TYPE tessera_http_requests_total counter");
        for (r, route) in ROUTE_LABELS.iter().enumerate() {
            for (s, status) in STATUSES.iter().enumerate() {
                let n: u64 = self
                    .cores
                    .iter()
                    .map(|c| c.requests[r][s].load(Ordering::Relaxed))
                    .sum();
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "tessera_http_requests_total{{route=\"{route}\",status=\"{}\"}} {n}",
                        status.code()
                    );
                }
            }
        }
        let counters: [(&str, &str, u64); 27] = [
            (
                "tessera_h3_connections_total",
                "QUIC connections accepted.",
                self.sum(|c| &c.h3_connections_total),
            ),
            (
                "tessera_h3_requests_total",
                "HTTP/3 requests answered.",
                self.sum(|c| &c.h3_requests),
            ),
            (
                "tessera_h3_datagrams_received_total",
                "UDP receives (a GRO receive may hold several datagrams).",
                self.sum(|c| &c.h3_datagrams_received),
            ),
            (
                "tessera_h3_datagrams_sent_total",
                "QUIC packets sent.",
                self.sum(|c| &c.h3_datagrams_sent),
            ),
            (
                "tessera_h3_retries_total",
                "QUIC Retry packets sent (address validation, h3_retry).",
                self.sum(|c| &c.h3_retries),
            ),
            (
                "tessera_h3_paced_total",
                "Times a QUIC connection was held back by its pacer (quiche's SendInfo.at).",
                self.sum(|c| &c.h3_paced),
            ),
            (
                "tessera_h3_datagrams_forwarded_total",
                "Datagrams handed to the core that owns their connection (migration, rebinding).",
                self.sum(|c| &c.h3_datagrams_forwarded),
            ),
            (
                "tessera_h3_datagrams_dropped_total",
                "Datagrams dropped: unparsable, unknown connection, or refused by QUIC.",
                self.sum(|c| &c.h3_datagrams_dropped),
            ),
            (
                "tessera_h3_body_bytes_from_mmap_total",
                "HTTP/3 body bytes read from mapped blobs.",
                self.sum(|c| &c.h3_body_bytes_from_mmap),
            ),
            (
                "tessera_open_cache_hits_total",
                "Blob opens served from a core's open-file cache.",
                self.sum(|c| &c.open_cache_hits),
            ),
            (
                "tessera_bytes_sent_total",
                "Bytes written to clients, heads included.",
                self.sum(|c| &c.bytes_sent),
            ),
            (
                "tessera_bytes_received_total",
                "Upload body bytes received.",
                self.sum(|c| &c.bytes_received),
            ),
            (
                "tessera_zero_copy_bytes_total",
                "Blob bytes sent by splice from page cache to socket, never in user space.",
                self.sum(|c| &c.zero_copy_bytes),
            ),
            (
                "tessera_zero_copy_responses_total",
                "Responses whose body took the zero-copy path.",
                self.sum(|c| &c.zero_copy_responses),
            ),
            (
                "tessera_small_body_bytes_total",
                "Bodies at most copy_body_max_bytes, copied with one pread and sent with their head.",
                self.sum(|c| &c.copied_body_bytes),
            ),
            (
                "tessera_kept_stream_responses_total",
                "Verified streams (whole, or a range's pieces) spliced from their kept copy, not read, hashed and copied again.",
                self.sum(|c| &c.kept_stream_responses),
            ),
            (
                "tessera_copied_bytes_total",
                "Blob bytes read into user space to be verified (verified streams).",
                self.sum(|c| &c.copied_bytes),
            ),
            (
                "tessera_connections_total",
                "Connections accepted.",
                self.sum(|c| &c.connections_total),
            ),
            (
                "tessera_connections_refused_total",
                "Connections refused because a core was at its limit.",
                self.sum(|c| &c.connections_refused),
            ),
            (
                "tessera_timeouts_total",
                "Connections closed for idling or stalling (slowloris).",
                self.sum(|c| &c.timeouts),
            ),
            (
                "tessera_corrupt_blobs_detected_total",
                "Stored chunk groups that failed verification while being served.",
                self.sum(|c| &c.corrupt_detected),
            ),
            (
                "tessera_io_uring_cooperative_cores",
                "Cores whose io_uring runs completions at the core's next system call (IORING_SETUP_COOP_TASKRUN) instead of interrupting it for each; a kernel before 5.19 refuses this, and then 0.",
                self.sum(|c| &c.io_uring_cooperative),
            ),
            (
                "tessera_connections_open",
                "Connections open now.",
                self.sum(|c| &c.connections_open),
            ),
            (
                "tessera_idle_connections_with_buffers",
                "Idle keep-alive connections holding their read buffers (at most park_idle_above_connections per core, none for longer than park_idle_after_ms; the rest hold none).",
                self.sum(|c| &c.idle_with_buffers),
            ),
            (
                "tessera_idle_connections_in_kernel",
                "Idle keep-alive connections with no task: only their socket, in the core's epoll set (above kernel_idle_above_connections per core).",
                self.sum(|c| &c.idle_in_kernel),
            ),
            (
                "tessera_spare_connection_buffers",
                "Read and write buffers the cores hold for the next connections; those unused for half a second go back to the kernel.",
                self.sum(|c| &c.spare_buffers),
            ),
            (
                "tessera_spare_connection_buffers_freed_total",
                "Spare connection read and write buffers freed after half a second unused (the heap is then trimmed).",
                self.sum(|c| &c.spare_buffers_freed),
            ),
        ];
        for (name, help, value) in counters {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let _ = writeln!(out, "# HELP tessera_store_bytes Bytes of blobs stored.\n# TYPE tessera_store_bytes gauge\ntessera_store_bytes {}", store.used_bytes());
        let _ = writeln!(out, "# HELP tessera_store_limit_bytes Store size limit.\n# TYPE tessera_store_limit_bytes gauge\ntessera_store_limit_bytes {}", store.max_bytes());
        let _ = writeln!(out, "# HELP tessera_store_blobs Blobs stored.\n# TYPE tessera_store_blobs gauge\ntessera_store_blobs {}", store.blob_count());
        let (kept_bytes, kept) = store.stream_cache_usage();
        let _ = writeln!(out, "# HELP tessera_kept_stream_bytes Bytes of whole verified streams kept on disk.\n# TYPE tessera_kept_stream_bytes gauge\ntessera_kept_stream_bytes {kept_bytes}");
        let _ = writeln!(out, "# HELP tessera_kept_streams Whole verified streams kept on disk.\n# TYPE tessera_kept_streams gauge\ntessera_kept_streams {kept}");

        let _ = writeln!(out, "# HELP tessera_request_latency_seconds Request latency, head parsed to response written, per core and merged (updated each second).");
        let _ = writeln!(out, "# TYPE tessera_request_latency_seconds summary");
        let mut merged = new_latency_histogram();
        for (i, core) in self.cores.iter().enumerate() {
            let h = match core.published.lock() {
                Ok(h) => h.clone(),
                Err(p) => p.into_inner().clone(),
            };
            let _ = merged.add(&h);
            write_summary(&mut out, &i.to_string(), &h);
        }
        write_summary(&mut out, "all", &merged);
        out
    }
}

fn write_summary(out: &mut String, core: &str, h: &Histogram<u64>) {
    for q in [0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
        let v = h.value_at_quantile(q) as f64 / 1e6;
        let _ = writeln!(
            out,
            "tessera_request_latency_seconds{{core=\"{core}\",quantile=\"{q}\"}} {v}"
        );
    }
    let sum = h.mean() * h.len() as f64 / 1e6;
    let _ = writeln!(
        out,
        "tessera_request_latency_seconds_sum{{core=\"{core}\"}} {sum}"
    );
    let _ = writeln!(
        out,
        "tessera_request_latency_seconds_count{{core=\"{core}\"}} {}",
        h.len()
    );
}
