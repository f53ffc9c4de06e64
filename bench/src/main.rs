//! `tessera-bench`: the load generator and the side-by-side suite that benchmarkers
//! can trust.
//!
//! - `load`: one run against one server: open loop (constant arrival rate, latency
//!   from each request's intended send time, so coordinated omission is corrected) or
//!   closed loop (peak throughput). HdrHistogram per worker, merged; prints p50 to
//!   max, throughput and errors; writes the `.hgrm` percentile distribution and JSON.
//! - `suite`: Tessera against nginx (Debian's, `sendfile on`, same worker count and
//!   CPUs) on the same files, over HTTP/1.1, load generator pinned to other CPUs:
//!   peak throughput, latency at fractions of the peak, CPU-seconds per GB and per
//!   million requests, and a core-scaling mode. Writes JSON and PNG plots, prints a
//!   table with ratios, and stops every server it started, also on failure.
//!
//! HTTP/3 (against Caddy) joins when the data plane speaks it.

mod h3load;
mod isolate;
mod load;
mod plot;
mod suite;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tessera-bench",
    about = "Load generator and side-by-side benchmarks for Tessera"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load one server and report latency percentiles and throughput.
    Load(LoadArgs),
    /// Tessera vs nginx on the same files: tables, JSON and plots.
    Suite(suite::SuiteArgs),
    /// A function's isolates in-process: compile once, then the cost of a
    /// request in a new isolate (cold) and in a warm one, and an idle
    /// isolate's heap.
    Isolate(isolate::IsolateArgs),
}

#[derive(clap::Args)]
struct LoadArgs {
    /// Server address.
    #[arg(long)]
    addr: SocketAddr,
    /// Paths to GET (repeatable); one is picked per request.
    #[arg(long = "path", required_unless_present = "upload_bytes")]
    paths: Vec<String>,
    /// Pick paths by Zipf popularity with this exponent (e.g. 1.0) instead of uniformly.
    #[arg(long)]
    zipf: Option<f64>,
    /// Random byte ranges of LEN bytes within objects of SIZE bytes: SIZE:LEN.
    #[arg(long, value_parser = parse_range)]
    range: Option<(u64, u64)>,
    /// Ask for the verified stream (Accept: application/x-bao).
    #[arg(long)]
    verified: bool,
    /// An extra request header, `Name: value` (repeatable; HTTP/1.1). A
    /// `Host` given here replaces the default one.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Upload this many fresh random bytes per request (POST /blobs) instead of GETs.
    #[arg(long)]
    upload_bytes: Option<usize>,
    /// Requests per second across all connections (open loop). Without it: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// CPUs for the worker threads, e.g. 1,2,3 or 8-15.
    #[arg(long, value_parser = suite::parse_cpus)]
    cpus: Option<suite::List>,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Use HTTP/3 (QUIC to the same port over UDP; certificates are not verified).
    #[arg(long)]
    h3: bool,
    /// With --h3: requests at once on each connection.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// With --h3: receive one datagram per call, without UDP GRO (on loopback the
    /// server's CPU then also pays for splitting its GSO bursts for this client).
    #[arg(long)]
    no_gro: bool,
    /// Write the percentile distribution (.hgrm) here.
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Write a JSON summary here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once(':').ok_or("expected SIZE:LEN")?;
    let size = a.parse::<u64>().map_err(|e| e.to_string())?;
    let len = b.parse::<u64>().map_err(|e| e.to_string())?;
    if len == 0 || len > size {
        return Err("LEN must be between 1 and SIZE".into());
    }
    Ok((size, len))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Load(a) => {
            let workload = match a.upload_bytes {
                Some(bytes) => load::Workload::Upload {
                    path: "/blobs".into(),
                    bytes,
                },
                None => load::Workload::Get {
                    paths: a.paths,
                    zipf: a.zipf,
                    range: a.range,
                    headers: {
                        // Host first, so the request writer sees it.
                        let mut lines = a.headers.clone();
                        lines.sort_by_key(|h| !h.to_ascii_lowercase().starts_with("host:"));
                        let mut h: String = lines
                            .iter()
                            .map(|l| {
                                let (n, v) = l.split_once(':').unwrap_or((l, ""));
                                let n = if n.eq_ignore_ascii_case("host") {
                                    "Host"
                                } else {
                                    n
                                };
                                format!("{n}:{v}\r\n")
                            })
                            .collect();
                        if a.verified {
                            h.push_str("Accept: application/x-bao\r\n");
                        }
                        h
                    },
                },
            };
            let spec = load::Spec {
                addr: a.addr,
                workload,
                mode: match a.rate {
                    Some(rate) => load::Mode::Open { rate },
                    None => load::Mode::Closed,
                },
                connections: a.connections,
                threads: a.threads,
                cpus: a.cpus.map(|l| l.0).unwrap_or_default(),
                duration: Duration::from_secs_f64(a.duration + a.warmup),
                warmup: Duration::from_secs_f64(a.warmup),
                timeout: Duration::from_secs_f64(a.timeout),
                h3_streams: a.h3.then_some(a.streams),
                h3_gro: !a.no_gro,
            };
            let report = load::run(&spec)?;
            print_report(&report);
            if let Some(path) = a.hgrm {
                let mut f = std::fs::File::create(&path)?;
                load::write_hgrm(&report.histogram, &mut f)?;
            }
            if let Some(path) = a.json {
                std::fs::write(
                    path,
                    serde_json::to_string_pretty(&suite::summary(&report))?,
                )?;
            }
            if report.completed == 0 {
                anyhow::bail!("no request completed");
            }
            Ok(())
        }
        Command::Suite(args) => suite::run(args),
        Command::Isolate(args) => isolate::run(args),
    }
}

fn print_report(r: &load::Report) {
    if let Some(rate) = r.offered_rate {
        println!(
            "offered   {rate:.0} req/s (open loop, latency from intended send time): {} scheduled",
            r.scheduled
        );
    } else {
        println!("closed loop");
    }
    println!(
        "completed {} in {:.1}s: {:.0} req/s, {:.3} GB/s",
        r.completed,
        r.measured.as_secs_f64(),
        r.rps(),
        r.bytes_per_sec() / 1e9
    );
    println!(
        "generator {:.2} CPU-s, {:.0}% busy (its threads' time on a CPU)",
        r.load_cpu_seconds,
        r.load_busy * 100.0
    );
    println!(
        "errors    {} (status {}, i/o {}, timeout {})",
        r.errors(),
        r.errors_status,
        r.errors_io,
        r.errors_timeout
    );
    println!(
        "latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3}",
        r.ms(0.5),
        r.ms(0.9),
        r.ms(0.99),
        r.ms(0.999),
        r.ms(0.9999),
        r.ms(1.0)
    );
}
