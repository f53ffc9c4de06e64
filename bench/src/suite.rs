//! The side-by-side suite: Tessera against nginx on the same files, same CPUs, same
//! load generator, in one run.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::load::{self, Mode, Report, Spec, Workload};
use crate::plot;

#[derive(clap::Args)]
pub struct SuiteArgs {
    /// The tessera binary [default: beside this one, else target/release/tessera].
    #[arg(long, env = "TESSERA_BIN")]
    tessera_bin: Option<PathBuf>,
    /// The nginx binary (Debian's package: /usr/sbin/nginx).
    #[arg(long, env = "NGINX_BIN", default_value = "/usr/sbin/nginx")]
    nginx_bin: PathBuf,
    /// Server cores (event loops / nginx workers).
    #[arg(long, default_value_t = 1)]
    cores: usize,
    /// Also run the peak workloads on each of these core counts (e.g. 1,2,4,8).
    #[arg(long, value_parser = parse_cpus)]
    scaling: Option<List>,
    /// CPUs for the load generator [default: the CPUs after the servers']. Named
    /// here they may overlap the servers' (a small machine): then compare server
    /// CPU per request, not req/s.
    #[arg(long, value_parser = parse_cpus)]
    load_cpus: Option<List>,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds measured per run (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Include the 100 MiB object.
    #[arg(long)]
    large: bool,
    /// Also run the objects over HTTP/3: Tessera against Caddy (Debian's package).
    #[arg(long)]
    h3: bool,
    /// The caddy binary (Debian's package: /usr/bin/caddy).
    #[arg(long, env = "CADDY_BIN", default_value = "/usr/bin/caddy")]
    caddy_bin: PathBuf,
    /// HTTP/3 requests at once per connection.
    #[arg(long, default_value_t = 2)]
    h3_streams: usize,
    /// HTTP/3 connections (each its own UDP socket).
    #[arg(long, default_value_t = 32)]
    h3_connections: usize,
    /// The HTTP/3 load generator receives one datagram per call, without UDP GRO.
    #[arg(long)]
    h3_no_gro: bool,
    /// Only these workloads (comma separated names, see the table).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Fractions of the peak offered in the open-loop latency runs.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75,0.9")]
    loads: Vec<f64>,
    /// Peaks only: no open-loop latency runs (the quick regression mode).
    #[arg(long)]
    peaks_only: bool,
    /// Where JSON and PNGs go.
    #[arg(long, default_value = "bench/out")]
    out: PathBuf,
}

/// A list of numbers written `0,2,4-7`.
#[derive(Debug, Clone)]
pub struct List(pub Vec<usize>);

/// `0,2,4-7` -> [0, 2, 4, 5, 6, 7].
pub fn parse_cpus(s: &str) -> Result<List, String> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (
                    a.parse::<usize>().map_err(|e| e.to_string())?,
                    b.parse::<usize>().map_err(|e| e.to_string())?,
                );
                out.extend(a..=b);
            }
            None => out.push(
                part.parse()
                    .map_err(|e: std::num::ParseIntError| e.to_string())?,
            ),
        }
    }
    Ok(List(out))
}

/// A server process that is stopped when dropped (also on a failed run), and killed by
/// the kernel if this process dies first.
struct Server {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_pinned(cmd: &mut Command, cpus: &[usize]) -> anyhow::Result<Child> {
    let cpus = cpus.to_vec();
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (prctl, sched_setaffinity) on stack data.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in &cpus {
                libc::CPU_SET(c, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            Ok(())
        });
    }
    Ok(cmd.spawn()?)
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn wait_http(addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok((200, _)) = http(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").as_bytes(),
        ) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("server on {addr} did not answer {path}")
}

/// One blocking request on a fresh connection: (status, body).
fn http(addr: SocketAddr, raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(raw)?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no head")?
        + 4;
    let status = std::str::from_utf8(&all[9..12])?.parse()?;
    Ok((status, all[split..].to_vec()))
}

fn start_tessera(bin: &Path, dir: &Path, cores: usize, cpus: &[usize]) -> anyhow::Result<Server> {
    let addr = free_addr()?;
    let child = spawn_pinned(
        Command::new(bin)
            .args([
                "run",
                "--cores",
                &cores.to_string(),
                "--listen",
                &addr.to_string(),
                "--data-dir",
            ])
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
        cpus,
    )
    .with_context(|| format!("starting {}", bin.display()))?;
    let server = Server {
        name: "tessera",
        child,
        addr,
    };
    wait_http(addr, "/healthz")?;
    Ok(server)
}

fn start_nginx(
    bin: &Path,
    dir: &Path,
    www: &Path,
    cores: usize,
    cpus: &[usize],
) -> anyhow::Result<Server> {
    let addr = free_addr()?;
    let conf_dir = dir.join(format!("nginx-{cores}"));
    std::fs::create_dir_all(&conf_dir)?;
    let ncpu = cpus.iter().max().copied().unwrap_or(0) + 1;
    let masks: Vec<String> = cpus[..cores]
        .iter()
        .map(|&c| {
            (0..ncpu)
                .rev()
                .map(|i| if i == c { '1' } else { '0' })
                .collect()
        })
        .collect();
    let d = conf_dir.display();
    let conf = format!(
        "worker_processes {cores};\nworker_cpu_affinity {};\nworker_rlimit_nofile 65536;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 16384; }}\nhttp {{\n access_log off;\n sendfile on;\n tcp_nopush on;\n keepalive_requests 1000000;\n\
         client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         server {{ listen {addr} reuseport; root {}; }}\n}}\n",
        masks.join(" "),
        www.display()
    );
    let conf_path = conf_dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let child = spawn_pinned(
        Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null()),
        cpus,
    )
    .with_context(|| format!("starting {} (Debian: apt-get install nginx)", bin.display()))?;
    let server = Server {
        name: "nginx",
        child,
        addr,
    };
    wait_http(addr, "/4k")?;
    Ok(server)
}

/// Caddy (Debian's 2.6) serving `www` over HTTPS and HTTP/3 on one port, with
/// `GOMAXPROCS` = cores and its threads pinned to the same CPUs.
fn start_caddy(
    bin: &Path,
    dir: &Path,
    www: &Path,
    tls: &Path,
    cores: usize,
    cpus: &[usize],
) -> anyhow::Result<Server> {
    let addr = free_addr()?;
    let conf_dir = dir.join(format!("caddy-{cores}"));
    std::fs::create_dir_all(&conf_dir)?;
    let conf = format!(
        "{{\n admin off\n auto_https disable_redirects\n skip_install_trust\n servers {{\n  protocols h1 h2 h3\n }}\n log {{\n  level ERROR\n }}\n}}\n\
         https://:{port} {{\n bind {ip}\n tls {cert} {key}\n root * {root}\n file_server\n}}\n",
        port = addr.port(),
        ip = addr.ip(),
        cert = tls.join("cert.pem").display(),
        key = tls.join("key.pem").display(),
        root = www.display(),
    );
    let conf_path = conf_dir.join("Caddyfile");
    std::fs::write(&conf_path, conf)?;
    let child = spawn_pinned(
        Command::new(bin)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&conf_path)
            .env("GOMAXPROCS", cores.to_string())
            .env("XDG_DATA_HOME", conf_dir.join("data"))
            .env("XDG_CONFIG_HOME", conf_dir.join("config"))
            .env("HOME", &conf_dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(conf_dir.join("stderr"))?),
        cpus,
    )
    .with_context(|| format!("starting {} (Debian: apt-get install caddy)", bin.display()))?;
    let server = Server {
        name: "caddy",
        child,
        addr,
    };
    // Up once its TLS port accepts; then it must serve the 4 KiB file over HTTP/3.
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!(
                "caddy did not start: {}",
                std::fs::read_to_string(conf_dir.join("stderr")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(server)
}

/// CPU seconds (user + system) used so far by a process and its children.
fn cpu_seconds(pid: u32) -> f64 {
    // SAFETY: sysconf with a valid name has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for e in entries.flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces): state is field 3.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid: u32 = f.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        if p == pid || ppid == pid {
            let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            total += (ut + st) / ticks;
        }
    }
    total
}

#[derive(Serialize, Clone)]
pub struct Summary {
    pub offered_rps: Option<f64>,
    pub rps: f64,
    pub gbytes_per_s: f64,
    pub completed: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub p9999_ms: f64,
    pub max_ms: f64,
    /// The load generator's share of its threads' time on a CPU (near 1.0: it
    /// may be the limit, not the server).
    pub load_busy: f64,
    /// The server's CPU time per completed request, in microseconds (open-loop
    /// runs: at a light load a request costs more, as each one wakes the
    /// server on its own).
    pub server_cpu_us_per_request: Option<f64>,
}

pub fn summary(r: &Report) -> Summary {
    Summary {
        offered_rps: r.offered_rate,
        rps: r.rps(),
        gbytes_per_s: r.bytes_per_sec() / 1e9,
        completed: r.completed,
        errors: r.errors(),
        p50_ms: r.ms(0.5),
        p90_ms: r.ms(0.9),
        p99_ms: r.ms(0.99),
        p999_ms: r.ms(0.999),
        p9999_ms: r.ms(0.9999),
        max_ms: r.ms(1.0),
        load_busy: r.load_busy,
        server_cpu_us_per_request: None,
    }
}

#[derive(Serialize, Clone)]
pub struct Measured {
    pub server: String,
    pub workload: String,
    pub cores: usize,
    pub peak: Summary,
    pub cpu_seconds: f64,
    pub cpu_seconds_per_gb: f64,
    pub cpu_seconds_per_million_requests: f64,
    pub latency_curve: Vec<Summary>,
}

/// A workload, and the paths each server serves it under.
struct Named {
    name: &'static str,
    tessera: Workload,
    /// The same workload for the peer server (nginx over HTTP/1.1, Caddy over HTTP/3).
    nginx: Option<Workload>,
    /// HTTP/3 with this many streams per connection, against Caddy.
    h3: Option<usize>,
}

fn get(paths: Vec<String>) -> Workload {
    Workload::Get {
        paths,
        zipf: None,
        range: None,
        headers: String::new(),
    }
}

fn put_blob(addr: SocketAddr, data: &[u8]) -> anyhow::Result<String> {
    let mut req = format!(
        "POST /blobs HTTP/1.1\r\nHost: b\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        data.len()
    )
    .into_bytes();
    req.extend_from_slice(data);
    let (status, body) = http(addr, &req)?;
    if status != 201 {
        bail!(
            "upload refused: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(v["hash"].as_str().context("no hash")?.to_string())
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut data = vec![0u8; len];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn random_file(path: &Path, len: usize, seed: u64) -> anyhow::Result<Vec<u8>> {
    let data = random_bytes(len, seed);
    std::fs::write(path, &data)?;
    Ok(data)
}

pub fn run(args: SuiteArgs) -> anyhow::Result<()> {
    let cpus_online = std::thread::available_parallelism()?.get();
    let max_cores = args
        .scaling
        .iter()
        .flat_map(|l| l.0.iter())
        .copied()
        .chain([args.cores])
        .max()
        .unwrap_or(1);
    let server_cpus: Vec<usize> = (0..max_cores).collect();
    let load_cpus = args
        .load_cpus
        .clone()
        .map(|l| l.0)
        .unwrap_or_else(|| (max_cores..cpus_online).collect());
    if load_cpus.is_empty() {
        bail!("need CPUs for the load generator apart from the servers' 0..{max_cores}; this machine has {cpus_online}");
    }
    // Load CPUs named on the command line may overlap the servers' (a machine
    // with too few CPUs): then req/s is not the servers' alone, though server
    // CPU per request and the ratios between servers still hold.
    if load_cpus.iter().any(|c| server_cpus.contains(c)) {
        eprintln!(
            "the load generator shares CPUs with the servers (0..{max_cores}): compare server CPU per request, not req/s"
        );
    }
    let tessera_bin = match args.tessera_bin.clone() {
        Some(b) => b,
        None => {
            let beside = std::env::current_exe()?.with_file_name("tessera");
            if beside.exists() {
                beside
            } else {
                PathBuf::from("target/release/tessera")
            }
        }
    };
    std::fs::create_dir_all(&args.out)?;
    let work = tempfile::Builder::new()
        .prefix("tessera-suite-")
        .tempdir()?;
    let www = work.path().join("www");
    std::fs::create_dir_all(&www)?;
    // nginx workers run as an unprivileged user when started as root.
    for p in [work.path(), www.as_path()] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let mut objects: Vec<(&'static str, usize)> =
        vec![("4k", 4096), ("64k", 65536), ("1m", 1 << 20)];
    if args.large {
        objects.push(("100m", 100 << 20));
    }
    let mut files = BTreeMap::new();
    for (i, (name, len)) in objects.iter().enumerate() {
        files.insert(*name, random_file(&www.join(name), *len, i as u64)?);
    }
    // The Zipf workload's thousand small files, only when it runs (writing and
    // uploading them is most of a short suite's set-up).
    let wants_many = args
        .only
        .as_ref()
        .is_none_or(|only| only.iter().any(|w| w == "zipf-4k"));
    let many_count = if wants_many { 1000 } else { 0 };
    let mut many = Vec::new();
    for i in 0..many_count {
        many.push(random_file(
            &www.join(format!("z{i}")),
            4096,
            1000 + i as u64,
        )?);
    }
    // A second 1 MiB blob, Tessera's alone, for `verified-checked-1m` (see there):
    // the first one's stream is kept once `verified-1m` has asked for it twice,
    // and a range of a kept stream is spliced from the copy too.
    let checked = random_bytes(1 << 20, 99);
    let mut results: Vec<Measured> = Vec::new();
    let core_counts: Vec<usize> = match &args.scaling {
        Some(list) => list.0.clone(),
        None => vec![args.cores],
    };
    for &cores in &core_counts {
        let cpus = &server_cpus[..cores];
        let tessera = start_tessera(
            &tessera_bin,
            &work.path().join(format!("data-{cores}")),
            cores,
            cpus,
        )?;
        let nginx = start_nginx(&args.nginx_bin, work.path(), &www, cores, cpus)?;
        // Caddy serves the same files over HTTP/3 with the certificate Tessera made.
        let caddy = if args.h3 {
            Some(start_caddy(
                &args.caddy_bin,
                work.path(),
                &www,
                &work.path().join(format!("data-{cores}")).join("tls"),
                cores,
                cpus,
            )?)
        } else {
            None
        };
        let mut hash = BTreeMap::new();
        for (name, data) in &files {
            hash.insert(*name, put_blob(tessera.addr, data)?);
        }
        let checked_hash = put_blob(tessera.addr, &checked)?;
        let many_hashes: Vec<String> = many
            .iter()
            .map(|d| put_blob(tessera.addr, d))
            .collect::<anyhow::Result<_>>()?;
        // Nothing left to write back while measuring: nginx's copies were
        // written without fsync, and writeback on a server's CPU skews the
        // first workloads.
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        // Same bytes from both before anything is measured.
        for (name, data) in &files {
            let (_, a) = http(
                tessera.addr,
                format!(
                    "GET /blobs/{} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
                    hash[name]
                )
                .as_bytes(),
            )?;
            let (nstatus, b) = http(
                nginx.addr,
                format!("GET /{name} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").as_bytes(),
            )?;
            if nstatus != 200 {
                bail!(
                    "nginx answered {nstatus} for /{name}: {}",
                    String::from_utf8_lossy(&b)
                );
            }
            if &a != data || &b != data {
                bail!(
                    "servers disagree on {name}: tessera sent {} bytes ({}), nginx {} bytes ({}), file has {}",
                    a.len(),
                    if &a == data { "same" } else { "different" },
                    b.len(),
                    if &b == data { "same" } else { "different" },
                    data.len()
                );
            }
        }
        // Over HTTP/3 both must answer each object with 200 and its full length
        // (Tessera's HTTP/3 bytes are checked byte for byte in tests/h3.rs).
        if let Some(caddy) = &caddy {
            for (name, data) in &files {
                for (addr, path) in [
                    (tessera.addr, format!("/blobs/{}", hash[name])),
                    (caddy.addr, format!("/{name}")),
                ] {
                    let probe = Spec {
                        addr,
                        workload: get(vec![path.clone()]),
                        mode: Mode::Closed,
                        connections: 1,
                        threads: 1,
                        cpus: load_cpus.clone(),
                        // Long enough for a handful of whole answers.
                        duration: Duration::from_millis(250),
                        warmup: Duration::ZERO,
                        timeout: Duration::from_secs(10),
                        h3_streams: Some(1),
                        h3_gro: !args.h3_no_gro,
                    };
                    let r = load::run(&probe)?;
                    if r.completed == 0
                        || r.errors() > 0
                        || r.bytes != r.completed * data.len() as u64
                    {
                        bail!(
                            "HTTP/3 check of {addr}{path} failed: {} completed, {} errors, {} bytes (want {} each)",
                            r.completed,
                            r.errors(),
                            r.bytes,
                            data.len()
                        );
                    }
                }
            }
        }
        let mut workloads: Vec<Named> = Vec::new();
        for (name, _) in &objects {
            workloads.push(Named {
                name,
                tessera: get(vec![format!("/blobs/{}", hash[name])]),
                nginx: Some(get(vec![format!("/{name}")])),
                h3: None,
            });
        }
        let zipf = |paths: Vec<String>| Workload::Get {
            paths,
            zipf: Some(1.0),
            range: None,
            headers: String::new(),
        };
        workloads.push(Named {
            name: "zipf-4k",
            tessera: zipf(many_hashes.iter().map(|h| format!("/blobs/{h}")).collect()),
            nginx: Some(zipf((0..many_count).map(|i| format!("/z{i}")).collect())),
            h3: None,
        });
        let ranged = |path: String| Workload::Get {
            paths: vec![path],
            zipf: None,
            range: Some((1 << 20, 65536)),
            headers: String::new(),
        };
        workloads.push(Named {
            name: "range-64k-of-1m",
            tessera: ranged(format!("/blobs/{}", hash["1m"])),
            nginx: Some(ranged("/1m".into())),
            h3: None,
        });
        workloads.push(Named {
            name: "verified-1m",
            tessera: Workload::Get {
                paths: vec![format!("/blobs/{}", hash["1m"])],
                zipf: None,
                range: None,
                headers: "Accept: application/x-bao\r\n".into(),
            },
            nginx: None,
            h3: None,
        });
        // A whole stream asked for as the range `0-` of a blob never asked for
        // whole: no copy of it is kept, so this is the stream checked subtree
        // by subtree as it is sent.
        workloads.push(Named {
            name: "verified-checked-1m",
            tessera: Workload::Get {
                paths: vec![format!("/blobs/{checked_hash}")],
                zipf: None,
                range: None,
                headers: "Accept: application/x-bao\r\nRange: bytes=0-\r\n".into(),
            },
            nginx: None,
            h3: None,
        });
        workloads.push(Named {
            name: "upload-64k",
            tessera: Workload::Upload {
                path: "/blobs".into(),
                bytes: 65536,
            },
            nginx: None,
            h3: None,
        });
        if caddy.is_some() {
            for (name, _) in &objects {
                workloads.push(Named {
                    name: match *name {
                        "4k" => "h3-4k",
                        "64k" => "h3-64k",
                        "1m" => "h3-1m",
                        _ => "h3-100m",
                    },
                    tessera: get(vec![format!("/blobs/{}", hash[name])]),
                    nginx: Some(get(vec![format!("/{name}")])),
                    h3: Some(args.h3_streams),
                });
            }
            // The verified stream over HTTP/3 (Tessera alone: no peer has one).
            workloads.push(Named {
                name: "h3-verified-1m",
                tessera: get(vec![format!("/blobs/{}?format=bao", hash["1m"])]),
                nginx: None,
                h3: Some(args.h3_streams),
            });
        }
        if let Some(only) = &args.only {
            workloads.retain(|w| only.iter().any(|o| o == w.name));
        }
        // Scaling runs only need the peak of the basic objects.
        let scaling_only = args.scaling.is_some() && cores != args.cores;
        for w in &workloads {
            if scaling_only && !matches!(w.name, "4k" | "1m" | "h3-4k" | "h3-1m") {
                continue;
            }
            let peer = match (w.h3, caddy.as_ref()) {
                (Some(_), Some(c)) => c,
                _ => &nginx,
            };
            // Peaks first; then both servers get the same offered loads, fractions
            // of the lower peak, so their latency curves share an x axis.
            let mut runs = Vec::new();
            for (server, workload) in [(&tessera, Some(&w.tessera)), (peer, w.nginx.as_ref())] {
                let Some(workload) = workload else { continue };
                runs.push((
                    server,
                    workload,
                    measure(&args, server, workload, w.h3, w.name, cores, &load_cpus)?,
                ));
            }
            let floor = runs
                .iter()
                .map(|r| r.2.peak.rps)
                .fold(f64::INFINITY, f64::min);
            for (server, workload, mut m) in runs {
                if !scaling_only && !args.peaks_only && floor.is_finite() && floor > 0.0 {
                    for &f in &args.loads {
                        let cpu_before = cpu_seconds(server.child.id());
                        let r = load::run(&spec(
                            &args,
                            server.addr,
                            workload,
                            w.h3,
                            &load_cpus,
                            Mode::Open { rate: floor * f },
                        ))?;
                        // The whole run's CPU (warm-up too) over all its requests.
                        let cpu = cpu_seconds(server.child.id()) - cpu_before;
                        let mut s = summary(&r);
                        let all =
                            r.completed as f64 * (args.duration + args.warmup) / args.duration;
                        s.server_cpu_us_per_request = (all > 0.0).then(|| cpu / all * 1e6);
                        println!(
                            "  {:<8} open loop {:>9.0} req/s offered: {:>9.0} done, p50 {:.3} ms, p99 {:.3} ms, server {:.1} us CPU/request",
                            server.name,
                            floor * f,
                            s.rps,
                            s.p50_ms,
                            s.p99_ms,
                            s.server_cpu_us_per_request.unwrap_or(0.0)
                        );
                        m.latency_curve.push(s);
                    }
                }
                results.push(m);
            }
            print_row(&results, w.name, cores);
        }
    }
    let json = serde_json::json!({
        "date": chrono_like_now(),
        "machine": machine(),
        "load_cpus": load_cpus,
        "connections": args.connections,
        "duration_s": args.duration,
        "results": results,
    });
    let json_path = args.out.join("suite.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
    println!("wrote {}", json_path.display());
    for png in plot::render(&results, &args.out)? {
        println!("wrote {}", png.display());
    }
    Ok(())
}

fn spec(
    args: &SuiteArgs,
    addr: SocketAddr,
    workload: &Workload,
    h3_streams: Option<usize>,
    load_cpus: &[usize],
    mode: Mode,
) -> Spec {
    let threads = load_cpus.len().min(8);
    Spec {
        addr,
        workload: workload.clone(),
        mode,
        connections: match h3_streams {
            Some(_) => args.h3_connections.max(threads),
            None => args.connections.max(threads),
        },
        threads,
        cpus: load_cpus.to_vec(),
        duration: Duration::from_secs_f64(args.duration + args.warmup),
        warmup: Duration::from_secs_f64(args.warmup),
        timeout: Duration::from_secs(30),
        h3_streams,
        h3_gro: !args.h3_no_gro,
    }
}

/// Peak throughput (closed loop) and the server's CPU cost during it.
fn measure(
    args: &SuiteArgs,
    server: &Server,
    workload: &Workload,
    h3_streams: Option<usize>,
    name: &str,
    cores: usize,
    load_cpus: &[usize],
) -> anyhow::Result<Measured> {
    let cpu_before = cpu_seconds(server.child.id());
    let peak = load::run(&spec(
        args,
        server.addr,
        workload,
        h3_streams,
        load_cpus,
        Mode::Closed,
    ))?;
    // Scale the whole run's CPU to the measured window (warm-up included in both).
    let cpu = (cpu_seconds(server.child.id()) - cpu_before) * args.duration
        / (args.duration + args.warmup);
    let gb = peak.bytes as f64 / 1e9;
    let mreq = peak.completed as f64 / 1e6;
    Ok(Measured {
        server: server.name.to_string(),
        workload: name.to_string(),
        cores,
        peak: summary(&peak),
        cpu_seconds: cpu,
        cpu_seconds_per_gb: if gb > 0.0 { cpu / gb } else { 0.0 },
        cpu_seconds_per_million_requests: if mreq > 0.0 { cpu / mreq } else { 0.0 },
        latency_curve: Vec::new(),
    })
}

fn print_row(results: &[Measured], workload: &str, cores: usize) {
    let find = |s: &str| {
        results
            .iter()
            .find(|m| m.server == s && m.workload == workload && m.cores == cores)
    };
    let t = find("tessera");
    let n = find("nginx").or_else(|| find("caddy"));
    let fmt = |m: Option<&Measured>| match m {
        Some(m) => format!(
            "{:>10.0} {:>7.2} {:>8.3} {:>8.2} {:>8.1}",
            m.peak.rps,
            m.peak.gbytes_per_s,
            m.peak.p99_ms,
            m.cpu_seconds_per_gb,
            m.cpu_seconds_per_million_requests
        ),
        None => format!("{:>10} {:>7} {:>8} {:>8} {:>8}", "-", "-", "-", "-", "-"),
    };
    static HEADER: std::sync::Once = std::sync::Once::new();
    HEADER.call_once(|| {
        println!(
            "{:<16} {:>5} | {:>10} {:>7} {:>8} {:>8} {:>8} | {:>10} {:>7} {:>8} {:>8} {:>8} | {:>6} | {:>9}",
            "workload", "cores", "T req/s", "T GB/s", "T p99ms", "T cs/GB", "T cs/Mr", "P req/s", "P GB/s", "P p99ms", "P cs/GB", "P cs/Mr", "T/P", "load T/P"
        );
    });
    // How busy the load generator's threads were in each run (percent).
    let pct =
        |m: Option<&Measured>| m.map_or("-".into(), |m| format!("{:.0}", m.peak.load_busy * 100.0));
    let busy = format!("{}/{}", pct(t), pct(n));
    let ratio = match (t, n) {
        (Some(t), Some(n)) if n.peak.rps > 0.0 => format!("{:.2}", t.peak.rps / n.peak.rps),
        _ => "-".into(),
    };
    println!(
        "{workload:<16} {cores:>5} | {} | {} | {ratio:>6} | {:>9}",
        fmt(t),
        fmt(n),
        busy
    );
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{} CPUs, {cpu}, Linux {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        kernel.trim()
    )
}

fn chrono_like_now() -> String {
    let out = Command::new("date").args(["-u", "+%FT%TZ"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
