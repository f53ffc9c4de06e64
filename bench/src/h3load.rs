//! The HTTP/3 load engine: quiche clients over plain non-blocking UDP sockets, one
//! thread per worker (pinned like the HTTP/1.1 engine), `ppoll(2)` for readiness
//! and timers. Each connection has its own socket (its own 4-tuple, so the
//! server's `SO_REUSEPORT` spreads connections over its cores as it would for
//! real clients) and carries up to `streams` requests at once.
//!
//! Pacing is the HTTP/1.1 engine's: open loop with intended send times (latency
//! from the intended time, coordinated omission corrected), or closed loop (each
//! finished request starts the next on the same connection). Certificates are not
//! verified: benchmark servers use self-signed ones. Sockets receive with UDP GRO
//! unless told not to (`Spec::h3_gro`): on loopback a client without it makes the
//! server's softirq split every GSO burst (see bench/README.md).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use quiche::h3::NameValue;
use rand::{Rng, SeedableRng};
use rand_distr::Distribution;

use crate::load::{Report, Schedule, Spec, Workload};

/// The largest UDP payload the load generator accepts and sends (a 1500-byte
/// MTU less IPv6 and UDP headers), as the node and most QUIC stacks use.
const MAX_DATAGRAM: usize = 1452;
/// Server name sent in the TLS handshake (Caddy picks its site by it).
const SNI: &str = "localhost";

struct InFlight {
    stream: u64,
    intended: Instant,
    status: u16,
    bytes: u64,
}

struct Client {
    socket: UdpSocket,
    local: SocketAddr,
    peer: SocketAddr,
    conn: quiche::Connection,
    h3: Option<quiche::h3::Connection>,
    /// The socket receives GRO-coalesced bursts (see [`receive`]).
    gro: bool,
    inflight: Vec<InFlight>,
    born: Instant,
}

/// Runs the load over HTTP/3; `streams` requests at most at once per connection.
pub fn run(spec: &Spec, streams: usize) -> anyhow::Result<Report> {
    if let Workload::Upload { .. } = spec.workload {
        anyhow::bail!("the HTTP/3 load engine sends GETs only; measure uploads over HTTP/1.1");
    }
    anyhow::ensure!(streams > 0, "need at least one stream per connection");
    crate::load::run_threads(spec, move |spec, index, conns, start| {
        worker(spec, index, conns, start, streams)
    })
}

fn quiche_config() -> anyhow::Result<quiche::Config> {
    let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION)?;
    config.set_application_protos(quiche::h3::APPLICATION_PROTOCOL)?;
    config.verify_peer(false);
    config.set_max_idle_timeout(30_000);
    config.set_max_recv_udp_payload_size(MAX_DATAGRAM);
    config.set_max_send_udp_payload_size(MAX_DATAGRAM);
    config.set_initial_max_data(256 << 20);
    config.set_initial_max_stream_data_bidi_local(64 << 20);
    config.set_initial_max_stream_data_bidi_remote(1 << 20);
    config.set_initial_max_stream_data_uni(1 << 20);
    config.set_initial_max_streams_bidi(1024);
    config.set_initial_max_streams_uni(16);
    config.set_disable_active_migration(true);
    Ok(config)
}

fn connect(
    peer: SocketAddr,
    config: &mut quiche::Config,
    rng: &mut rand::rngs::SmallRng,
    gro: bool,
) -> io::Result<Client> {
    let bind: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(io::Error::other)?;
    let socket = UdpSocket::bind(bind)?;
    socket.connect(peer)?;
    socket.set_nonblocking(true)?;
    grow_buffers(&socket);
    // A kernel without UDP GRO delivers one datagram a call, which `receive`
    // handles as well.
    let gro = gro && dataplane::sys::enable_udp_gro(socket.as_raw_fd());
    let local = socket.local_addr()?;
    let mut scid = [0u8; 16];
    rng.fill(&mut scid);
    let scid = quiche::ConnectionId::from_ref(&scid);
    let conn = quiche::connect(Some(SNI), &scid, local, peer, config)
        .map_err(|e| io::Error::other(format!("QUIC connect: {e}")))?;
    Ok(Client {
        socket,
        local,
        peer,
        conn,
        h3: None,
        gro,
        inflight: Vec::with_capacity(64),
        born: Instant::now(),
    })
}

/// Large receive buffers: a burst of a large object must not be dropped by the
/// client's own socket (best effort; the kernel caps it at `rmem_max`).
fn grow_buffers(socket: &UdpSocket) {
    let size: libc::c_int = 8 << 20;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: a valid socket descriptor and a c_int option value of the given size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

struct Picker {
    paths: Vec<String>,
    zipf: Option<rand_distr::Zipf<f64>>,
    range: Option<(u64, u64)>,
    extra: Vec<(String, String)>,
}

impl Picker {
    fn new(workload: &Workload) -> Picker {
        match workload {
            Workload::Get {
                paths,
                zipf,
                range,
                headers,
            } => Picker {
                paths: paths.clone(),
                zipf: zipf.and_then(|s| rand_distr::Zipf::new(paths.len() as f64, s).ok()),
                range: *range,
                extra: headers
                    .split("\r\n")
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect(),
            },
            Workload::Upload { .. } => Picker {
                paths: vec!["/".into()],
                zipf: None,
                range: None,
                extra: Vec::new(),
            },
        }
    }

    fn request(&self, rng: &mut rand::rngs::SmallRng, authority: &str) -> Vec<quiche::h3::Header> {
        let i = match &self.zipf {
            Some(z) => (z.sample(rng) as usize)
                .saturating_sub(1)
                .min(self.paths.len() - 1),
            None => rng.random_range(0..self.paths.len()),
        };
        let mut h = vec![
            quiche::h3::Header::new(b":method", b"GET"),
            quiche::h3::Header::new(b":scheme", b"https"),
            quiche::h3::Header::new(b":authority", authority.as_bytes()),
            quiche::h3::Header::new(b":path", self.paths[i].as_bytes()),
        ];
        if let Some((object, len)) = self.range {
            let first = rng.random_range(0..object.saturating_sub(len).max(1));
            h.push(quiche::h3::Header::new(
                b"range",
                format!("bytes={}-{}", first, first + len - 1).as_bytes(),
            ));
        }
        for (n, v) in &self.extra {
            h.push(quiche::h3::Header::new(n.as_bytes(), v.as_bytes()));
        }
        h
    }
}

fn worker(
    spec: &Spec,
    index: usize,
    conns: &[usize],
    start: Instant,
    streams: usize,
) -> anyhow::Result<Report> {
    crate::load::pin(spec, index);
    let mut config = quiche_config()?;
    let h3_config = quiche::h3::Config::new()?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(index as u64 * 104_729 + 7);
    let picker = Picker::new(&spec.workload);
    let authority = format!("{SNI}:{}", spec.addr.port());
    let end = start + spec.duration;
    let record_from = start + spec.warmup;
    let mut report = Report::empty();
    // Open loop: each connection owns an equal share of the rate, phase-shifted.
    let schedules: Vec<Option<Schedule>> = conns
        .iter()
        .map(|&c| Schedule::new(spec.mode, start, spec.connections, c))
        .collect();
    let interval = schedules.first().copied().flatten().map(|s| s.interval);
    let mut next: Vec<Instant> = schedules
        .iter()
        .map(|s| s.map_or(start, |s| s.first))
        .collect();
    report.scheduled = schedules
        .iter()
        .flatten()
        .map(|s| s.count_in(record_from, end))
        .sum();
    let mut clients: Vec<Option<Client>> = conns.iter().map(|_| None).collect();
    let mut buf = vec![0u8; 65_536];
    let mut out = vec![0u8; MAX_DATAGRAM];
    let mut pollfds: Vec<libc::pollfd> = Vec::with_capacity(conns.len());
    let now = Instant::now();
    if start > now {
        std::thread::sleep(start - now);
    }
    let mut last_sweep = Instant::now();
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        // (Re)connect, start HTTP/3 once the handshake is done, send what is due.
        for (slot, client) in clients.iter_mut().enumerate() {
            let dead = client
                .as_ref()
                .is_some_and(|c| c.conn.is_closed() || c.conn.is_draining());
            if dead {
                if let Some(c) = client.take() {
                    for f in &c.inflight {
                        if f.intended >= record_from {
                            report.errors_io += 1;
                        }
                    }
                }
            }
            let c = match client {
                Some(c) => c,
                None => match connect(spec.addr, &mut config, &mut rng, spec.h3_gro) {
                    Ok(c) => client.insert(c),
                    Err(_) => {
                        report.errors_io += 1;
                        continue;
                    }
                },
            };
            if c.h3.is_none() && c.conn.is_established() {
                c.h3 = quiche::h3::Connection::with_transport(&mut c.conn, &h3_config).ok();
            }
            if let Some(h3) = c.h3.as_mut() {
                loop {
                    let intended = match interval {
                        Some(iv) => {
                            if next[slot] > now || next[slot] >= end {
                                break;
                            }
                            let t = next[slot];
                            if c.inflight.len() >= streams {
                                // Behind: the request keeps its intended time.
                                break;
                            }
                            next[slot] += iv;
                            t
                        }
                        None => {
                            if c.inflight.len() >= streams {
                                break;
                            }
                            now
                        }
                    };
                    let headers = picker.request(&mut rng, &authority);
                    match h3.send_request(&mut c.conn, &headers, true) {
                        Ok(stream) => c.inflight.push(InFlight {
                            stream,
                            intended,
                            status: 0,
                            bytes: 0,
                        }),
                        Err(quiche::h3::Error::StreamBlocked)
                        | Err(quiche::h3::Error::TransportError(quiche::Error::StreamLimit)) => {
                            if let Some(iv) = interval {
                                next[slot] -= iv;
                            }
                            break;
                        }
                        Err(_) => {
                            if intended >= record_from {
                                report.errors_io += 1;
                            }
                            break;
                        }
                    }
                }
            }
            flush(c, &mut out);
        }
        // Requests stuck past the timeout, or a handshake that never finishes:
        // counted, and the connection replaced.
        if now.duration_since(last_sweep) > Duration::from_millis(100) {
            last_sweep = now;
            for client in clients.iter_mut() {
                let unfinished = client.as_ref().is_some_and(|c| {
                    !c.conn.is_established() && now.duration_since(c.born) > spec.timeout
                });
                if unfinished {
                    *client = None;
                    report.errors_timeout += 1;
                    continue;
                }
                let stuck = client.as_ref().is_some_and(|c| {
                    c.inflight
                        .iter()
                        .any(|f| now.saturating_duration_since(f.intended) > spec.timeout)
                });
                if stuck {
                    if let Some(c) = client.take() {
                        for f in &c.inflight {
                            if f.intended >= record_from {
                                report.errors_timeout += 1;
                            }
                        }
                    }
                }
            }
        }
        // Sleep until a datagram, a QUIC timer, or the next intended send.
        let mut wake = end;
        pollfds.clear();
        for (slot, client) in clients.iter().enumerate() {
            let Some(c) = client else { continue };
            if let Some(t) = c.conn.timeout_instant() {
                wake = wake.min(t);
            }
            if interval.is_some() && c.h3.is_some() && c.inflight.len() < streams {
                wake = wake.min(next[slot]);
            }
            pollfds.push(libc::pollfd {
                fd: c.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let wait = wake
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `pollfds` is a valid array of `len` pollfd structs; `ts` is a
        // valid timespec; a null signal mask leaves the mask unchanged.
        unsafe {
            libc::ppoll(
                pollfds.as_mut_ptr(),
                pollfds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            );
        }
        let now = Instant::now();
        for client in clients.iter_mut().flatten() {
            receive(client, &mut buf);
            if client.conn.timeout_instant().is_some_and(|t| t <= now) {
                client.conn.on_timeout();
            }
            if client.h3.is_some() {
                process(client, &mut buf, &mut report, record_from, now);
            }
        }
    }
    // Done: close each connection, as a browser does when it leaves, so the
    // server is not left holding answers to a client that has gone.
    for c in clients.iter_mut().flatten() {
        let _ = c.conn.close(true, 0x100, b"done"); // H3_NO_ERROR
        flush(c, &mut out);
    }
    Ok(report)
}

fn flush(c: &mut Client, out: &mut [u8]) {
    loop {
        match c.conn.send(out) {
            Ok((n, _)) => match c.socket.send(&out[..n]) {
                Ok(_) => {}
                // Socket buffer full: quiche resends what is lost.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            },
            Err(_) => return,
        }
    }
}

fn receive(c: &mut Client, buf: &mut [u8]) {
    let info = quiche::RecvInfo {
        from: c.peer,
        to: c.local,
    };
    loop {
        if c.gro {
            // One call per coalesced burst: datagrams of `segment` bytes each, the
            // last possibly shorter.
            match dataplane::sys::recv_udp(c.socket.as_raw_fd(), buf) {
                Ok((n, _, segment)) => {
                    for datagram in buf[..n].chunks_mut(segment.max(1)) {
                        let _ = c.conn.recv(datagram, info);
                    }
                }
                Err(_) => return,
            }
            continue;
        }
        match c.socket.recv(buf) {
            Ok(n) => {
                let _ = c.conn.recv(&mut buf[..n], info);
            }
            Err(_) => return,
        }
    }
}

fn process(
    c: &mut Client,
    buf: &mut [u8],
    report: &mut Report,
    record_from: Instant,
    now: Instant,
) {
    let Some(h3) = c.h3.as_mut() else { return };
    loop {
        match h3.poll(&mut c.conn) {
            Ok((stream, quiche::h3::Event::Headers { list, .. })) => {
                if let Some(f) = c.inflight.iter_mut().find(|f| f.stream == stream) {
                    f.status = list
                        .iter()
                        .find(|h| h.name() == b":status")
                        .and_then(|h| std::str::from_utf8(h.value()).ok()?.parse().ok())
                        .unwrap_or(0);
                }
            }
            Ok((stream, quiche::h3::Event::Data)) => {
                let mut got = 0u64;
                while let Ok(n) = h3.recv_body(&mut c.conn, stream, buf) {
                    got += n as u64;
                }
                if let Some(f) = c.inflight.iter_mut().find(|f| f.stream == stream) {
                    f.bytes += got;
                }
            }
            Ok((stream, quiche::h3::Event::Finished)) => {
                if let Some(i) = c.inflight.iter().position(|f| f.stream == stream) {
                    let f = c.inflight.swap_remove(i);
                    if f.intended >= record_from {
                        if (200..300).contains(&f.status) {
                            let micros = now.saturating_duration_since(f.intended).as_micros();
                            let _ = report.histogram.record((micros as u64).max(1));
                            report.completed += 1;
                            report.bytes += f.bytes;
                        } else {
                            report.errors_status += 1;
                        }
                    }
                }
            }
            Ok((stream, quiche::h3::Event::Reset(_))) => {
                if let Some(i) = c.inflight.iter().position(|f| f.stream == stream) {
                    let f = c.inflight.swap_remove(i);
                    if f.intended >= record_from {
                        report.errors_io += 1;
                    }
                }
            }
            Ok((_, quiche::h3::Event::GoAway)) => {
                let _ = c.conn.close(true, 0, b"goaway");
                return;
            }
            Ok(_) => {}
            Err(quiche::h3::Error::Done) => return,
            Err(_) => {
                let _ = c.conn.close(true, 0x101, b"h3 error");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Mode;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use dataplane::config::NodeConfig;
    use dataplane::server::Server;
    use dataplane::store::{Store, StoreConfig};

    fn spec(addr: SocketAddr, path: String, mode: Mode, streams: usize, gro: bool) -> Spec {
        Spec {
            addr,
            workload: Workload::Get {
                paths: vec![path],
                zipf: None,
                range: None,
                headers: String::new(),
            },
            mode,
            connections: 2,
            threads: 1,
            cpus: Vec::new(),
            duration: Duration::from_millis(1500),
            warmup: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
            h3_streams: Some(streams),
            h3_gro: gro,
        }
    }

    /// Against the real data plane (in process, HTTP/3 on): whole responses are
    /// counted with their bytes, a 404 is a status error, open loop keeps its rate.
    #[test]
    fn counts_whole_responses_from_a_real_node() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(Store::open(dir.path(), StoreConfig::new(1 << 30)).expect("store"));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31) as u8).collect();
        let hash = store.put_reader(&data[..]).expect("put").hash;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let config = NodeConfig {
            listen: addr,
            cores: 1,
            data_dir: dir.path().to_path_buf(),
            ..NodeConfig::default()
        };
        let shutdown = Arc::new(AtomicBool::new(false));
        let server = Server::start(config, store, shutdown.clone()).expect("start");

        // Received with GRO (coalesced bursts split back into datagrams) and
        // without: the same whole responses either way.
        for gro in [true, false] {
            let r = run(
                &spec(addr, format!("/blobs/{hash}"), Mode::Closed, 4, gro),
                4,
            )
            .expect("run");
            assert!(r.completed > 10, "{} completed (GRO {gro})", r.completed);
            assert_eq!(r.errors(), 0, "GRO {gro}");
            assert_eq!(r.bytes, r.completed * data.len() as u64, "GRO {gro}");
            // The generator's own CPU: some, and never more than its one thread's time.
            assert!(r.load_cpu_seconds > 0.0, "{}", r.load_cpu_seconds);
            assert!(r.load_busy > 0.0 && r.load_busy <= 1.01, "{}", r.load_busy);
        }

        let missing = format!("/blobs/{}", "0".repeat(64));
        let r = run(&spec(addr, missing, Mode::Closed, 1, true), 1).expect("run");
        assert_eq!(r.completed, 0);
        assert!(r.errors_status > 0);

        // Open loop at 200 req/s: the 1 s measured holds 200 intended sends
        // (5 ms apart over the two connections), whatever the machine's load.
        // How many of them completed in time is a speed, measured in bench/,
        // not asserted here; each one that did was counted whole.
        let r = run(
            &spec(
                addr,
                format!("/blobs/{hash}"),
                Mode::Open { rate: 200.0 },
                8,
                true,
            ),
            8,
        )
        .expect("run");
        assert_eq!(r.scheduled, 200);
        assert!(r.completed <= r.scheduled, "{} completed", r.completed);
        assert_eq!(r.errors(), 0);
        assert_eq!(r.bytes, r.completed * data.len() as u64);
        shutdown.store(true, std::sync::atomic::Ordering::SeqCst);
        server.wait();
    }
}
