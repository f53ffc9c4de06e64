//! The ledger's wiring into the node and its command-line client.
//!
//! - [`HttpTransport`]: consensus messages and transactions between committee
//!   members as signed node-to-node requests (`POST /ledger/msg`, `/ledger/tx`),
//!   one sender thread and one kept-alive connection per peer, a bounded queue
//!   that drops when a peer cannot keep up (AlephBFT re-requests what it lacks).
//! - [`handler`]: the `/ledger/...` routes the data plane hands over.
//! - [`start_duties`]: what the node itself sends to the ledger: its stake on
//!   first start (dev networks deposit it first), the receipts clients handed
//!   it (`receipts.log`, in order, from a byte cursor kept in the data dir and
//!   moved only once the ledger committed them), and once per epoch its scores for the
//!   other staked nodes from its own measurements (the share of samples alive
//!   and verified, weighted 20 % by round trip against the median, times the
//!   share of transfers from it that delivered verified bytes, minus 250 per
//!   transfer from it that failed verification).
//! - `tessera account | ledger status | rewards | reputation`: the client side.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use controlplane::chain::{Chain, Transport};
use controlplane::cluster::Cluster;
use controlplane::ledger::{Key, ReceiptLog, SignedTx, State, Tx};
use dataplane::http::{LedgerRoute, Status};
use dataplane::server::{LedgerCall, LedgerReply};

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 4096;

fn hex(k: &Key) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

enum Out {
    Msg(Vec<u8>),
    Tx(Vec<u8>),
}

/// Signed HTTP requests to other nodes, found through the membership view.
pub struct HttpTransport {
    cluster: Arc<Cluster>,
    agent: ureq::Agent,
    me: String,
    queues: Mutex<HashMap<Key, flume::Sender<Out>>>,
    weak: std::sync::Weak<HttpTransport>,
}

impl HttpTransport {
    pub fn new(cluster: Arc<Cluster>) -> Arc<HttpTransport> {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(2)))
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Arc::new_cyclic(|weak| HttpTransport {
            me: cluster.id().to_string(),
            cluster,
            agent,
            queues: Mutex::new(HashMap::new()),
            weak: weak.clone(),
        })
    }

    fn addr_of(&self, id: &Key) -> Option<std::net::SocketAddr> {
        let want = hex(id);
        self.cluster
            .members()
            .into_iter()
            .find(|m| m.id == want && m.state != "down")
            .map(|m| m.addr)
    }

    fn signed<B>(
        &self,
        req: ureq::RequestBuilder<B>,
        method: &str,
        path: &str,
    ) -> ureq::RequestBuilder<B> {
        crate::peering::sign_request(&self.cluster, &self.me, req, method, path)
    }

    fn queue(self: &Arc<Self>, to: &Key, out: Out) {
        let Ok(mut queues) = self.queues.lock() else {
            return;
        };
        let tx = queues.entry(*to).or_insert_with(|| {
            let (tx, rx) = flume::bounded(PEER_QUEUE);
            let me = self.clone();
            let peer = *to;
            let _ = std::thread::Builder::new()
                .name("ledger-send".into())
                .spawn(move || me.sender(peer, rx));
            tx
        });
        let _ = tx.try_send(out);
    }

    /// One peer's sender: posts each queued item on a kept-alive connection.
    fn sender(self: Arc<Self>, peer: Key, rx: flume::Receiver<Out>) {
        let mut addr = None;
        let mut looked = Instant::now() - Duration::from_secs(10);
        while let Ok(out) = rx.recv() {
            if addr.is_none() || looked.elapsed() > Duration::from_secs(2) {
                addr = self.addr_of(&peer);
                looked = Instant::now();
            }
            let Some(a) = addr else { continue };
            let (path, body) = match out {
                Out::Msg(b) => ("/ledger/msg", b),
                Out::Tx(b) => ("/ledger/tx", b),
            };
            let req = self.agent.post(format!("http://{a}{path}"));
            let sent = self
                .signed(req, "POST", path)
                .header("Content-Type", "application/octet-stream")
                .send(&body[..]);
            if let Ok(mut resp) = sent {
                let _ = resp.body_mut().read_to_vec();
            } else {
                addr = None;
            }
        }
    }
}

impl Transport for HttpTransport {
    fn send_msg(&self, to: &Key, body: Vec<u8>) {
        if let Some(me) = self.weak.upgrade() {
            me.queue(to, Out::Msg(body));
        }
    }

    fn send_tx(&self, to: &Key, body: Vec<u8>) {
        if let Some(me) = self.weak.upgrade() {
            me.queue(to, Out::Tx(body));
        }
    }

    fn fetch_boundary(&self, from: &Key, ask: controlplane::chain::Ask) -> Option<Vec<u8>> {
        let a = self.addr_of(from)?;
        let path = match ask {
            controlplane::chain::Ask::Epoch(e) => format!("/ledger/boundary/{e}"),
            controlplane::chain::Ask::NewestAfter(e) => format!("/ledger/boundary/after/{e}"),
        };
        let req = self.agent.get(format!("http://{a}{path}"));
        let mut resp = self.signed(req, "GET", &path).call().ok()?;
        if resp.status() != 200 {
            return None;
        }
        resp.body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .ok()
    }
}

/// Opens and starts this node's replica.
pub fn start(
    key: controlplane::NodeKey,
    cluster: Arc<Cluster>,
    cfg: &dataplane::config::NodeConfig,
) -> anyhow::Result<Arc<Chain>> {
    let l = &cfg.ledger;
    let mut genesis = Vec::new();
    for g in &l.genesis {
        let id: controlplane::NodeId = g
            .parse()
            .map_err(|e| anyhow::anyhow!("ledger.genesis {g}: {e}"))?;
        genesis.push(id.0);
    }
    let transport = HttpTransport::new(cluster);
    let chain = Chain::open(
        key,
        controlplane::chain::ChainConfig {
            dir: cfg.data_dir.join("ledger"),
            genesis,
            params: controlplane::ledger::Params {
                price_per_byte: l.price_per_byte,
                dev_deposits: l.dev_deposits,
                epoch_ms: l.epoch_ms,
                committee_size: l.committee_size,
                min_stake: l.min_stake,
            },
            unit_ms: l.unit_ms,
        },
        transport,
    )
    .context("cannot open the ledger")?;
    chain.start().context("cannot start the ledger")?;
    Ok(chain)
}

fn json(status: Status, v: serde_json::Value) -> LedgerReply {
    LedgerReply {
        status,
        content_type: "application/json",
        body: format!("{v}\n").into_bytes(),
    }
}

fn text(status: Status, t: &str) -> LedgerReply {
    LedgerReply {
        status,
        content_type: "text/plain",
        body: format!("{t}\n").into_bytes(),
    }
}

/// The `/ledger/...` routes.
pub fn answer(chain: &Chain, call: LedgerCall) -> LedgerReply {
    match call.route {
        // Whole-state snapshots are for other nodes catching up, not for anyone
        // who asks (each is the size of the ledger).
        LedgerRoute::Boundary(_) | LedgerRoute::BoundaryAfter(_) if call.peer.is_none() => text(
            Status::Unauthorized,
            "state snapshots go to other nodes only (signed node requests)",
        ),
        LedgerRoute::Status => {
            let s = chain.stats_json();
            json(Status::Ok, s)
        }
        LedgerRoute::Account(k) => chain.with_state(|s| {
            json(
                Status::Ok,
                serde_json::json!({
                    "id": hex(&k),
                    "balance": s.balances.get(&k).copied().unwrap_or(0),
                    "nonce": s.nonces.get(&k).copied().unwrap_or(0),
                    "stake": s.stakes.get(&k).copied().unwrap_or(0),
                    "reputation": s.reputation_of(&k),
                    "epoch": s.epoch,
                    "receipts_refused": s.refusals.get(&k).map(|m| {
                        m.iter().map(|(why, n)| (why.as_str(), *n)).collect::<HashMap<_, _>>()
                    }).unwrap_or_default(),
                }),
            )
        }),
        LedgerRoute::Rewards(e) => chain.with_state(|s| match s.closed.get(&e) {
            Some(c) => json(
                Status::Ok,
                serde_json::json!({
                    "epoch": e,
                    "pool": c.pool,
                    "committee_changed": c.committee_changed,
                    "rewards": c.rewards.iter().map(|(k, v)| (hex(k), *v)).collect::<HashMap<_, _>>(),
                    "reputation": c.reputation.iter().map(|(k, v)| (hex(k), *v)).collect::<HashMap<_, _>>(),
                    "deployments_charged": c.zones,
                }),
            ),
            None => text(
                Status::NotFound,
                &format!("epoch {e} has not closed (the open epoch is {})", s.epoch),
            ),
        }),
        LedgerRoute::Reputation => chain.with_state(|s| {
            let nodes: Vec<serde_json::Value> = s
                .stakes
                .iter()
                .map(|(k, stake)| {
                    serde_json::json!({
                        "id": hex(k),
                        "reputation": s.reputation_of(k),
                        "stake": stake,
                        "reports_this_epoch": s.reports.get(k).map(|r| r.len()).unwrap_or(0),
                        "committee": s.committee.contains(k),
                    })
                })
                .collect();
            json(Status::Ok, serde_json::json!({"epoch": s.epoch, "nodes": nodes}))
        }),
        LedgerRoute::BoundaryAfter(e) => match chain.boundary(controlplane::chain::Ask::NewestAfter(e)) {
            Some(b) => LedgerReply {
                status: Status::Ok,
                content_type: "application/octet-stream",
                body: b,
            },
            None => text(Status::NotFound, &format!("no epoch start kept after {e}")),
        },
        LedgerRoute::Boundary(e) => match chain.boundary(controlplane::chain::Ask::Epoch(e)) {
            Some(b) => LedgerReply {
                status: Status::Ok,
                content_type: "application/octet-stream",
                body: b,
            },
            None => text(Status::NotFound, &format!("no state kept for epoch {e}")),
        },
        LedgerRoute::Tx => match chain.submit(&call.body, call.peer.is_some()) {
            Ok(()) => json(Status::Accepted, serde_json::json!({"accepted": true})),
            Err(why) => text(Status::BadRequest, &format!("transaction refused: {why}")),
        },
        LedgerRoute::Msg => match call.peer {
            None => text(
                Status::Unauthorized,
                "consensus messages come from committee members (signed node requests)",
            ),
            Some(peer) => match chain.deliver(&peer, &call.body) {
                Ok(()) => LedgerReply {
                    status: Status::Accepted,
                    content_type: "text/plain",
                    body: Vec::new(),
                },
                Err(why) => text(Status::BadRequest, why),
            },
        },
        LedgerRoute::Unknown => text(
            Status::NotFound,
            "ledger routes: status, account/{id}, rewards/{epoch}, reputation, tx",
        ),
    }
}

/// Extension for rendering the chain's status (kept here: JSON is the binary's).
trait StatusJson {
    fn stats_json(&self) -> serde_json::Value;
}

impl StatusJson for Chain {
    fn stats_json(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        let st = &self.stats;
        let p = self.params();
        self.with_state(|s| {
            serde_json::json!({
                "epoch": s.epoch,
                "epoch_ms": p.epoch_ms,
                "epoch_start_ms": s.epoch_start_ms,
                "time_ms": s.time_ms,
                "height": s.height,
                "committee": s.committee.iter().map(hex).collect::<Vec<_>>(),
                "accounts": s.balances.len(),
                "nodes": s.stakes.len(),
                "treasury": s.treasury,
                "price_per_byte": p.price_per_byte,
                "dev_deposits": p.dev_deposits,
                "closed_epochs": s.closed.len(),
                "services": s.services.iter().map(|(id, svc)| serde_json::json!({
                    "id": id,
                    "name": svc.name,
                    "owner": hex(&svc.owner),
                    "price_per_byte": svc.price_per_byte,
                })).collect::<Vec<_>>(),
                "units_applied": st.units.load(Relaxed),
                "txs_applied": st.txs_applied.load(Relaxed),
                "txs_refused": st.txs_refused.load(Relaxed),
                "txs_duplicate": st.txs_duplicate.load(Relaxed),
                "receipts_accepted": st.receipts_accepted.load(Relaxed),
                "receipts_refused": st.receipts_refused.load(Relaxed),
                "catchups": st.catchups.load(Relaxed),
                "mempool": self.mempool_len(),
            })
        })
    }
}

/// Prometheus lines for the ledger.
pub fn metrics(chain: &Chain) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let st = &chain.stats;
    let (epoch, height) = chain.with_state(|s| (s.epoch, s.height));
    format!(
        "# TYPE tessera_ledger_epoch gauge\ntessera_ledger_epoch {epoch}\n\
         # TYPE tessera_ledger_units_total counter\ntessera_ledger_units_total {height}\n\
         # TYPE tessera_ledger_txs_total counter\n\
         tessera_ledger_txs_total{{result=\"applied\"}} {}\n\
         tessera_ledger_txs_total{{result=\"refused\"}} {}\n\
         # TYPE tessera_ledger_receipts_total counter\n\
         tessera_ledger_receipts_total{{result=\"accepted\"}} {}\n\
         tessera_ledger_receipts_total{{result=\"refused\"}} {}\n\
         # TYPE tessera_ledger_catchups_total counter\ntessera_ledger_catchups_total {}\n",
        st.txs_applied.load(Relaxed),
        st.txs_refused.load(Relaxed),
        st.receipts_accepted.load(Relaxed),
        st.receipts_refused.load(Relaxed),
        st.catchups.load(Relaxed),
    )
}

/// What the node owes the ledger, sent one transaction at a time (each waits
/// for the previous one's nonce to be committed; one that is not committed in
/// 15 s is sent again).
pub fn start_duties(
    chain: Arc<Chain>,
    cluster: Arc<Cluster>,
    key: controlplane::NodeKey,
    cfg: &dataplane::config::NodeConfig,
) -> std::io::Result<()> {
    let stake = cfg.ledger.stake;
    let dev = cfg.ledger.dev_deposits;
    let epoch_ms = cfg.ledger.epoch_ms;
    let period = Duration::from_millis(cfg.ledger.submit_ms);
    let dir = cfg.data_dir.clone();
    std::thread::Builder::new()
        .name("ledger-duties".into())
        .spawn(move || {
            let mut duties = Duties {
                chain,
                cluster,
                key,
                stake,
                dev,
                epoch_ms,
                log: dir.join("receipts.log"),
                cursor_path: dir.join("ledger").join("receipts.cursor"),
                inflight: None,
                reported: None,
                usage_sent: HashMap::new(),
                uptime: Uptime::default(),
                started: Instant::now(),
            };
            loop {
                std::thread::sleep(period);
                duties.tick();
            }
        })
        .map(|_| ())
}

enum Job {
    Deposit,
    Register,
    Receipts {
        upto: u64,
    },
    Report {
        epoch: u64,
    },
    /// Served bytes per deployment, as totals since start, once committed.
    Usage {
        totals: Vec<(String, u64)>,
    },
}

struct Duties {
    chain: Arc<Chain>,
    cluster: Arc<Cluster>,
    key: controlplane::NodeKey,
    stake: u64,
    dev: bool,
    epoch_ms: u64,
    log: PathBuf,
    cursor_path: PathBuf,
    /// (nonce, job, sent at)
    inflight: Option<(u64, Job, Instant)>,
    reported: Option<u64>,
    /// Served bytes per deployment already reported (totals since start).
    usage_sent: HashMap<String, u64>,
    uptime: Uptime,
    started: Instant,
}

/// A node's first seconds (joining, verifying records) are not measured.
const MEASURE_AFTER: Duration = Duration::from_secs(5);

/// What this node saw of the other staked nodes during the open epoch.
#[derive(Default)]
struct Uptime {
    epoch: u64,
    /// id -> (samples, samples alive and verified, bad transfers at the first)
    nodes: HashMap<Key, (u32, u32, u64)>,
    /// id -> (transfers served, transfers failed) when first sampled.
    transfers_at_start: HashMap<Key, (u64, u64)>,
    /// id -> measured round trip (EWMA from the signed pings), latest seen.
    rtt_ms: HashMap<Key, f64>,
}

/// What the node's duties read of the committed state (a few fields, not a
/// copy of the whole ledger each tick).
struct Mine {
    epoch: u64,
    /// Ledger time since the open epoch began.
    into_epoch_ms: u64,
    nonce: u64,
    balance: u64,
    staked: bool,
    /// The other staked nodes.
    peers: Vec<Key>,
}

impl Mine {
    fn of(s: &State, me: &Key) -> Mine {
        Mine {
            epoch: s.epoch,
            into_epoch_ms: s.time_ms.saturating_sub(s.epoch_start_ms),
            nonce: s.nonces.get(me).copied().unwrap_or(0),
            balance: s.balances.get(me).copied().unwrap_or(0),
            staked: s.stakes.contains_key(me),
            peers: s.stakes.keys().filter(|k| *k != me).copied().collect(),
        }
    }
}

impl Uptime {
    fn sample(&mut self, mine: &Mine, members: &[controlplane::cluster::MemberInfo]) {
        if self.epoch != mine.epoch {
            *self = Uptime {
                epoch: mine.epoch,
                ..Uptime::default()
            };
        }
        for k in &mine.peers {
            let id = hex(k);
            let m = members.iter().find(|m| m.id == id);
            self.transfers_at_start
                .entry(*k)
                .or_insert(m.map_or((0, 0), |m| (m.served_transfers, m.failed_transfers)));
            let e = self
                .nodes
                .entry(*k)
                .or_insert((0, 0, m.map_or(0, |m| m.bad_transfers)));
            e.0 += 1;
            if m.is_some_and(|m| m.state == "alive" && m.verified) {
                e.1 += 1;
            }
            if let Some(rtt) = m.and_then(|m| m.rtt_ms) {
                self.rtt_ms.insert(*k, rtt);
            }
        }
    }

    /// Scores in thousandths: the share of samples the node was alive and
    /// verified, 80 % of it as is and 20 % scaled by how its round trip
    /// compares with the median round trip to the others (at least half);
    /// times the share of this epoch's transfers from it that delivered
    /// verified bytes (when this node asked it for any); less 250 per transfer
    /// from it that failed verification this epoch.
    fn scores(&self, members: &[controlplane::cluster::MemberInfo]) -> Vec<(Key, u16)> {
        let mut rtts: Vec<f64> = self.rtt_ms.values().copied().collect();
        rtts.sort_by(f64::total_cmp);
        let median = rtts.get(rtts.len().saturating_sub(1) / 2).copied();
        self.nodes
            .iter()
            .filter(|(_, (samples, _, _))| *samples >= 3)
            .map(|(k, (samples, alive, bad_before))| {
                let id = hex(k);
                let m = members.iter().find(|m| m.id == id);
                let bad = m.map_or(0, |m| m.bad_transfers.saturating_sub(*bad_before));
                let (ok0, failed0) = self.transfers_at_start.get(k).copied().unwrap_or_default();
                let ok = m.map_or(0, |m| m.served_transfers.saturating_sub(ok0));
                let failed = m.map_or(0, |m| m.failed_transfers.saturating_sub(failed0));
                let delivered = if ok + failed > 0 {
                    ok as f64 / (ok + failed) as f64
                } else {
                    1.0
                };
                let up = *alive as f64 / (*samples).max(1) as f64;
                let near = match (median, self.rtt_ms.get(k)) {
                    // Below 10 ms every round trip counts as near (noise).
                    (Some(m), Some(&r)) => (m.max(10.0) / r.max(10.0)).clamp(0.5, 1.0),
                    _ => 1.0,
                };
                let score = (1000.0 * up * (0.8 + 0.2 * near) * delivered) as u64;
                (*k, score.saturating_sub(250 * bad) as u16)
            })
            .collect()
    }
}

impl Duties {
    fn tick(&mut self) {
        let me = self.key.id().0;
        let mine = self.chain.with_state(|s| Mine::of(s, &me));
        let members = self.cluster.members();
        // Measure only once this node's own view of the cluster has settled.
        if self.started.elapsed() >= MEASURE_AFTER {
            self.uptime.sample(&mine, &members);
        }
        let committed = mine.nonce;
        if let Some((nonce, job, at)) = &self.inflight {
            if committed > *nonce {
                match job {
                    Job::Receipts { upto } => write_cursor(&self.cursor_path, *upto),
                    Job::Report { epoch } => self.reported = Some(*epoch),
                    Job::Usage { totals } => self.usage_sent.extend(totals.iter().cloned()),
                    Job::Deposit | Job::Register => {}
                }
                self.inflight = None;
            } else if at.elapsed() < Duration::from_secs(15) {
                return;
            } else {
                self.inflight = None;
            }
        }
        let Some((job, tx)) = self.next_job(&mine, &members) else {
            return;
        };
        let wire = SignedTx::new_with(tx, committed, &self.key).encode();
        match self.chain.submit(&wire, false) {
            Ok(()) => self.inflight = Some((committed, job, Instant::now())),
            Err(e) => tracing::warn!("ledger: cannot submit: {e}"),
        }
    }

    fn next_job(
        &self,
        mine: &Mine,
        members: &[controlplane::cluster::MemberInfo],
    ) -> Option<(Job, Tx)> {
        if self.stake > 0 && !mine.staked {
            let balance = mine.balance;
            if balance >= self.stake {
                return Some((Job::Register, Tx::RegisterNode { stake: self.stake }));
            }
            if self.dev {
                return Some((
                    Job::Deposit,
                    Tx::Deposit {
                        amount: self.stake - balance,
                    },
                ));
            }
            return None;
        }
        if !mine.staked {
            return None;
        }
        // The log from the cursor (a byte offset) on: one batch at a time.
        let cursor = read_cursor(&self.cursor_path);
        let batch =
            ReceiptLog::read_from(&self.log, cursor, controlplane::ledger::MAX_RECEIPTS_PER_TX);
        if let Ok((receipts, upto)) = batch {
            if !receipts.is_empty() {
                return Some((Job::Receipts { upto }, Tx::SubmitReceipts { receipts }));
            }
        }
        // What this node served for deployments since its last report: the
        // owners are charged for it at the epoch's end.
        if let Some(job) = self.usage_job() {
            return Some(job);
        }
        // Scores once per epoch, from half of it onwards (measured, not guessed).
        let half = mine.into_epoch_ms >= self.epoch_ms / 2;
        if self.reported != Some(mine.epoch) && half && self.uptime.epoch == mine.epoch {
            let scores = self.uptime.scores(members);
            if !scores.is_empty() {
                return Some((
                    Job::Report { epoch: mine.epoch },
                    Tx::Report {
                        epoch: mine.epoch,
                        scores,
                    },
                ));
            }
        }
        None
    }
}

impl Duties {
    fn usage_job(&self) -> Option<(Job, Tx)> {
        let served = crate::services::served_bytes();
        let totals: Vec<(String, u64)> = self.chain.with_state(|s| {
            served
                .into_iter()
                .filter(|(zone, _)| s.deployments.contains_key(zone))
                .collect()
        });
        let usage: Vec<(String, u64)> = totals
            .iter()
            .filter_map(|(zone, total)| {
                let sent = self.usage_sent.get(zone).copied().unwrap_or(0);
                (*total > sent).then(|| (zone.clone(), total - sent))
            })
            .collect();
        (!usage.is_empty()).then_some((Job::Usage { totals }, Tx::ReportUsage { usage }))
    }
}

fn read_cursor(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn write_cursor(path: &Path, v: u64) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, v.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

// ---- The command-line client ----

/// `--node` for the ledger commands.
#[derive(clap::Args)]
pub struct NodeArg {
    /// A node's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "TESSERA_NODE")]
    pub node: String,
    /// Print the node's JSON answer as it is.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct AccountArgs {
    #[command(flatten)]
    pub node: NodeArg,
    /// Dev/test networks: credit this account first (waits until committed).
    #[arg(long, conflicts_with = "id")]
    pub deposit: Option<u64>,
    /// Show another account (a node id or a client's key) instead of this
    /// client's own.
    #[arg(long)]
    pub id: Option<String>,
}

#[derive(clap::Args)]
pub struct RewardsArgs {
    #[command(flatten)]
    pub node: NodeArg,
    /// A closed epoch.
    #[arg(long)]
    pub epoch: u64,
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

pub fn get_json(agent: &ureq::Agent, url: &str) -> anyhow::Result<serde_json::Value> {
    let mut resp = agent
        .get(url)
        .call()
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let body = resp.body_mut().read_to_string()?;
    if status != 200 {
        bail!("{url}: {status}: {}", body.trim());
    }
    Ok(serde_json::from_str(&body)?)
}

pub fn client_key() -> anyhow::Result<controlplane::NodeKey> {
    Ok(controlplane::NodeKey::load_or_create(&crate::client::client_dir())?.0)
}

/// `tessera account`: this client's balance and nonce; `--deposit` first.
pub fn account(args: AccountArgs) -> anyhow::Result<std::process::ExitCode> {
    let base = args.node.node.trim_end_matches('/').to_string();
    let agent = agent();
    let id = match &args.id {
        Some(id) => id.clone(),
        None => {
            let key = client_key()?;
            if let Some(amount) = args.deposit {
                commit(&agent, &base, &key, Tx::Deposit { amount })?;
            }
            key.id().to_string()
        }
    };
    let v = get_json(&agent, &format!("{base}/ledger/account/{id}"))?;
    if args.node.json {
        println!("{v}");
    } else {
        println!("account   {id}");
        println!("balance   {}", v["balance"]);
        println!("nonce     {}", v["nonce"]);
        if v["stake"].as_u64().unwrap_or(0) > 0 {
            println!("stake     {}", v["stake"]);
            println!("reputation {}", v["reputation"]);
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Signs `tx` with `key` at its next nonce, hands it to the node and waits
/// (30 s at most) until the ledger committed it.
fn commit(
    agent: &ureq::Agent,
    base: &str,
    key: &controlplane::NodeKey,
    tx: Tx,
) -> anyhow::Result<()> {
    let url = format!("{base}/ledger/account/{}", key.id());
    let nonce = get_json(agent, &url)?["nonce"].as_u64().unwrap_or(0);
    let wire = SignedTx::new_with(tx, nonce, key).encode();
    let mut resp = agent
        .post(format!("{base}/ledger/tx"))
        .header("Content-Type", "application/octet-stream")
        .send(&wire[..])?;
    if resp.status() != 202 {
        bail!(
            "transaction refused: {}",
            resp.body_mut().read_to_string()?.trim()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_json(agent, &url)?["nonce"].as_u64().unwrap_or(0) <= nonce {
        if Instant::now() > deadline {
            bail!("the transaction was not committed within 30 s (it may still be, or have been refused by the ledger's rules: see `tessera ledger status`)");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub node: NodeArg,
    /// The registering node's data directory (its key signs).
    #[arg(long, env = "TESSERA_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Service id receipts name (1 is blob delivery).
    #[arg(long)]
    pub id: u16,
    #[arg(long)]
    pub name: String,
    /// Charged to clients per delivered byte.
    #[arg(long)]
    pub price_per_byte: u64,
}

/// `tessera ledger service`: a staked node registers a service (or, as its
/// owner, changes its name or price).
pub fn service(args: ServiceArgs) -> anyhow::Result<std::process::ExitCode> {
    let dir = args
        .data_dir
        .unwrap_or_else(dataplane::config::default_data_dir);
    let key = controlplane::NodeKey::load(&dir)?;
    let base = args.node.node.trim_end_matches('/').to_string();
    let agent = agent();
    commit(
        &agent,
        &base,
        &key,
        Tx::RegisterService {
            service: args.id,
            name: args.name,
            price_per_byte: args.price_per_byte,
        },
    )?;
    // Committed does not mean accepted: the registry says whether it took it.
    let st = get_json(&agent, &format!("{base}/ledger/status"))?;
    let owner = key.id().to_string();
    let listed = st["services"].as_array().into_iter().flatten().any(|v| {
        v["id"].as_u64() == Some(args.id as u64)
            && v["owner"].as_str() == Some(owner.as_str())
            && v["price_per_byte"].as_u64() == Some(args.price_per_byte)
    });
    if !listed {
        bail!("the ledger did not register service {} (is this node staked, and the id not another node's?)", args.id);
    }
    println!("service {} registered by {owner}", args.id);
    Ok(std::process::ExitCode::SUCCESS)
}

/// `tessera ledger status`.
pub fn status(args: NodeArg) -> anyhow::Result<std::process::ExitCode> {
    let base = args.node.trim_end_matches('/');
    let v = get_json(&agent(), &format!("{base}/ledger/status"))?;
    if args.json {
        println!("{v}");
    } else {
        println!("epoch          {}", v["epoch"]);
        println!(
            "committee      {} members",
            v["committee"].as_array().map_or(0, |a| a.len())
        );
        println!("ledger time    {} ms", v["time_ms"]);
        println!("units applied  {}", v["height"]);
        println!("accounts       {}", v["accounts"]);
        println!("nodes          {}", v["nodes"]);
        println!(
            "receipts       {} accepted, {} refused",
            v["receipts_accepted"], v["receipts_refused"]
        );
        println!("mempool        {}", v["mempool"]);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `tessera rewards --epoch N`.
pub fn rewards(args: RewardsArgs) -> anyhow::Result<std::process::ExitCode> {
    let base = args.node.node.trim_end_matches('/');
    let v = get_json(&agent(), &format!("{base}/ledger/rewards/{}", args.epoch))?;
    if args.node.json {
        println!("{v}");
    } else {
        println!("epoch {}: pool {}", v["epoch"], v["pool"]);
        if let Some(map) = v["rewards"].as_object() {
            for (id, r) in map {
                println!("{id}  {r}");
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `tessera reputation`.
pub fn reputation(args: NodeArg) -> anyhow::Result<std::process::ExitCode> {
    let base = args.node.trim_end_matches('/');
    let v = get_json(&agent(), &format!("{base}/ledger/reputation"))?;
    if args.json {
        println!("{v}");
    } else {
        println!("epoch {}", v["epoch"]);
        for n in v["nodes"].as_array().into_iter().flatten() {
            println!(
                "{}  reputation {}  stake {}{}",
                n["id"].as_str().unwrap_or(""),
                n["reputation"],
                n["stake"],
                if n["committee"].as_bool() == Some(true) {
                    "  committee"
                } else {
                    ""
                }
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
