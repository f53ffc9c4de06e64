//! The ledger's rules: delivery receipts and the state machine that charges
//! clients and credits nodes for verified bytes. Sans-IO and deterministic:
//! [`State::apply`] is a pure function of the state and one signed transaction,
//! and [`State::advance`] of the state and the ledger clock, so every replica
//! that applies the same transactions in the same order holds the same state.
//! [`crate::chain`] replicates it.
//!
//! A client signs a [`Receipt`] after it has received and verified bytes from a
//! node; the node collects receipts and submits them in a [`Tx::SubmitReceipts`]
//! signed with its own key. The ledger rejects, with a reason: a receipt whose
//! client signature fails (forged), one whose (client, node, sequence) it has
//! seen (replay), one for another epoch than the open one (stale), one whose
//! client cannot pay (over budget), and one naming another node than the
//! submitter. When the ledger clock passes the epoch's length
//! ([`State::advance`]) the epoch closes: each node's reputation becomes the
//! median of at least [`MIN_REPORTERS`] other nodes' [`Tx::Report`] scores, the
//! pool clients paid is shared by charged bytes × reputation (rounding to the
//! treasury), and the next committee is the staked nodes with most stake ×
//! reputation.
//!
//! Wire form of a transaction: postcard(`Tx`) + sender public key (32) +
//! signature (64) over `"tessera-tx-v1" || postcard(Tx) || nonce`; decoding is
//! bounded ([`MAX_TX_BYTES`]) and fuzzed (`fuzz/fuzz_targets/ledger_tx.rs`).

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Largest transaction accepted from the network.
pub const MAX_TX_BYTES: usize = 256 * 1024;
/// At most this many receipts in one submission.
pub const MAX_RECEIPTS_PER_TX: usize = 1024;
const TX_DOMAIN: &[u8] = b"tessera-tx-v1";
const RECEIPT_DOMAIN: &[u8] = b"tessera-receipt-v1";

pub type Key = [u8; 32];

/// What a client says it received from a node, after verifying it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub client: Key,
    pub node: Key,
    pub service: u16,
    pub content: [u8; 32],
    pub bytes: u64,
    pub epoch: u64,
    /// Per-client sequence number: (client, node, seq) is spent once.
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReceipt {
    pub receipt: Receipt,
    #[serde(with = "sig_bytes")]
    pub sig: [u8; 64],
}

mod sig_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let v: &[u8] = Deserialize::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("signature is not 64 bytes"))
    }
}

impl Receipt {
    fn message(&self) -> Vec<u8> {
        let mut m = RECEIPT_DOMAIN.to_vec();
        m.extend_from_slice(&postcard::to_stdvec(self).unwrap_or_default());
        m
    }

    pub fn sign(self, client: &SigningKey) -> SignedReceipt {
        let sig = client.sign(&self.message()).to_bytes();
        SignedReceipt { receipt: self, sig }
    }

    /// Signs with a key kept like a node's (`tessera get` keeps the client's
    /// key that way, in its own directory).
    pub fn sign_with(self, client: &crate::identity::NodeKey) -> SignedReceipt {
        let sig = client.sign(&self.message());
        SignedReceipt { receipt: self, sig }
    }
}

impl SignedReceipt {
    /// Whether the client named in the receipt signed it.
    pub fn verify(&self) -> bool {
        VerifyingKey::from_bytes(&self.receipt.client).is_ok_and(|k| {
            k.verify(
                &self.receipt.message(),
                &ed25519_dalek::Signature::from_bytes(&self.sig),
            )
            .is_ok()
        })
    }
}

/// A node's durable log of the receipts clients handed in, until it submits
/// them: records of `length (u32 LE) || postcard(SignedReceipt)`, appended and
/// fsynced before the client is told they were accepted. A torn last record (a
/// crash mid-append) is ignored when read.
pub struct ReceiptLog {
    file: std::sync::Mutex<std::fs::File>,
    node: Key,
}

impl ReceiptLog {
    /// Opens (or makes) the log; a torn last record from a crash mid-append is
    /// cut off first, so that new records follow whole ones.
    pub fn open(path: &std::path::Path, node: Key) -> std::io::Result<ReceiptLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let len = file.metadata()?.len();
        let (_, whole) = Self::read_from(path, 0, usize::MAX)?;
        if whole < len {
            tracing::warn!(
                "receipt log {}: dropping a torn last record ({} bytes)",
                path.display(),
                len - whole
            );
            file.set_len(whole)?;
            file.sync_data()?;
        }
        Ok(ReceiptLog {
            file: std::sync::Mutex::new(file),
            node,
        })
    }

    /// Checks a batch from a client (postcard `Vec<SignedReceipt>`): every
    /// receipt must be signed by its client and name this node. All or nothing:
    /// one bad receipt refuses the batch and nothing is written.
    pub fn accept(&self, body: &[u8]) -> Result<usize, String> {
        use std::io::Write;
        let receipts: Vec<SignedReceipt> = match postcard::take_from_bytes(body) {
            Ok((r, [])) => r,
            _ => return Err("not a receipt batch".into()),
        };
        let mut out = Vec::new();
        for (i, r) in receipts.iter().enumerate() {
            if r.receipt.node != self.node {
                return Err(format!("receipt {i} names another node"));
            }
            if !r.verify() {
                return Err(format!("receipt {i} is not signed by its client"));
            }
            let rec = postcard::to_stdvec(r).map_err(|e| e.to_string())?;
            out.extend_from_slice(&(rec.len() as u32).to_le_bytes());
            out.extend_from_slice(&rec);
        }
        let mut f = self
            .file
            .lock()
            .map_err(|_| "receipt log poisoned".to_string())?;
        f.write_all(&out).map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        Ok(receipts.len())
    }

    /// Reads every whole record of a log.
    pub fn read(path: &std::path::Path) -> std::io::Result<Vec<SignedReceipt>> {
        Ok(Self::read_from(path, 0, usize::MAX)?.0)
    }

    /// Reads up to `max` whole records from byte `offset` on; returns them and
    /// the offset just past the last one (where the next read starts). A log
    /// that does not exist yet is empty.
    pub fn read_from(
        path: &std::path::Path,
        offset: u64,
        max: usize,
    ) -> std::io::Result<(Vec<SignedReceipt>, u64)> {
        use std::io::{Read, Seek};
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(e),
        };
        file.seek(std::io::SeekFrom::Start(offset))?;
        let mut reader = std::io::BufReader::new(file);
        let mut out = Vec::new();
        let mut at = offset;
        let mut rec = Vec::new();
        while out.len() < max {
            let mut head = [0u8; 4];
            if reader.read_exact(&mut head).is_err() {
                break;
            }
            let len = u32::from_le_bytes(head) as usize;
            if len > MAX_RECEIPT_RECORD {
                break;
            }
            rec.resize(len, 0);
            if reader.read_exact(&mut rec).is_err() {
                break;
            }
            match postcard::from_bytes::<SignedReceipt>(&rec) {
                Ok(r) => out.push(r),
                Err(_) => break,
            }
            at += 4 + len as u64;
        }
        Ok((out, at))
    }
}

/// No signed receipt encodes to more than this (a larger length is a torn or
/// damaged record).
const MAX_RECEIPT_RECORD: usize = 1024;

/// A ledger transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tx {
    /// Dev/test mode: credit the sender's account.
    Deposit { amount: u64 },
    /// A node registers with a stake (taken from its balance).
    RegisterNode { stake: u64 },
    /// A node submits receipts clients signed for it.
    SubmitReceipts { receipts: Vec<SignedReceipt> },
    /// A registered node's scores (thousandths) for other nodes in the open
    /// epoch, from its own measurements (liveness, verified transfers); a later
    /// report from the same node replaces the earlier one per subject.
    Report { epoch: u64, scores: Vec<(Key, u16)> },
    /// A staked node registers a service id (it becomes its owner) or, as its
    /// owner, changes its name or price.
    RegisterService {
        service: u16,
        name: String,
        price_per_byte: u64,
    },
    /// Creates the deployment `name` (the sender becomes its owner) or, as
    /// its owner, changes it (a new version when anything differs).
    Deploy(DeploySpec),
    /// As its owner, removes a deployment.
    Undeploy { name: String },
    /// A staked node reports bytes it served for deployments since its last
    /// report (increments). At the epoch's end each deployment's owner is
    /// charged for them and the nodes earn it (see [`State::charge_usage`]).
    ReportUsage { usage: Vec<(String, u64)> },
    /// The sender (an account) lets `delegate` create, change and remove
    /// the sender's deployments of `service`, as the sender: what a bearer
    /// token of a service's API (the IPFS pinning API) carries. One grant
    /// per delegate; a later grant by the same account replaces it.
    Grant { delegate: Key, service: String },
    /// The sender takes back a grant it made.
    Revoke { delegate: Key },
}

/// A delegated key's grant (see [`Tx::Grant`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub owner: Key,
    pub service: String,
}

/// What a customer asks the network to run: a named instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploySpec {
    /// A DNS label: 1 to 63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
    pub name: String,
    /// The service it is an instance of (`cdn`, ...).
    pub service: String,
    /// The service's own config for it, TOML or JSON, as the owner wrote it.
    pub spec: Vec<u8>,
    pub replicas: u16,
    /// Regions to run in; empty: anywhere.
    pub regions: Vec<String>,
}

/// Longest deployment spec.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// Most replicas of one deployment.
pub const MAX_REPLICAS: u16 = 64;
/// Most regions one deployment may name.
pub const MAX_REGIONS: usize = 16;

/// A deployment as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub spec: DeploySpec,
    pub owner: Key,
    /// BLAKE3 of `spec.spec`: the spec's content address.
    pub spec_hash: [u8; 32],
    /// 1 when created, one more at each change.
    pub version: u64,
}

/// Whether `name` may name a deployment (a DNS label, so that it can be a host
/// name's first label).
pub fn valid_deployment_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Checks a deployment's form (the service's own check of its spec is the
/// node's, before it submits).
pub fn check_deploy_spec(d: &DeploySpec) -> Result<(), Reject> {
    if !valid_deployment_name(&d.name) {
        return Err(Reject::BadDeployment(
            "a deployment name is 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'",
        ));
    }
    if d.service.is_empty() || d.service.len() > MAX_SERVICE_NAME {
        return Err(Reject::BadDeployment("service names are 1 to 64 bytes"));
    }
    if d.spec.len() > MAX_SPEC_BYTES {
        return Err(Reject::BadDeployment("the spec is over 64 KiB"));
    }
    if d.replicas == 0 || d.replicas > MAX_REPLICAS {
        return Err(Reject::BadDeployment("replicas are 1 to 64"));
    }
    if d.regions.len() > MAX_REGIONS || d.regions.iter().any(|r| r.is_empty() || r.len() > 64) {
        return Err(Reject::BadDeployment(
            "at most 16 regions, each 1 to 64 bytes",
        ));
    }
    Ok(())
}

/// Receipts name the service that delivered; service 1 (blob delivery) is
/// built in and charged at [`Params::price_per_byte`] unless registered.
pub const BLOB_SERVICE: u16 = 1;
/// Longest service name.
pub const MAX_SERVICE_NAME: usize = 64;

/// An entry of the service registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub owner: Key,
    pub price_per_byte: u64,
}

/// A transaction as it travels: the body, who sent it, their nonce, signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTx {
    pub tx: Tx,
    pub sender: Key,
    pub nonce: u64,
    pub sig: [u8; 64],
}

impl SignedTx {
    pub fn new(tx: Tx, nonce: u64, key: &SigningKey) -> SignedTx {
        let body = postcard::to_stdvec(&tx).unwrap_or_default();
        let sig = key.sign(&tx_message(&body, nonce)).to_bytes();
        SignedTx {
            tx,
            sender: key.verifying_key().to_bytes(),
            nonce,
            sig,
        }
    }

    /// Same as [`SignedTx::new`] with the node's key.
    pub fn new_with(tx: Tx, nonce: u64, key: &crate::identity::NodeKey) -> SignedTx {
        SignedTx::new(tx, nonce, key.signing_key())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = postcard::to_stdvec(&self.tx).unwrap_or_default();
        out.extend_from_slice(&self.nonce.to_le_bytes());
        out.extend_from_slice(&self.sender);
        out.extend_from_slice(&self.sig);
        out
    }

    /// Decodes a transaction from the network; checks nothing but its form
    /// ([`State::apply`] checks the signature).
    pub fn decode(wire: &[u8]) -> Result<SignedTx, Reject> {
        if wire.len() > MAX_TX_BYTES {
            return Err(Reject::Malformed("too large"));
        }
        if wire.len() < 8 + 32 + 64 + 1 {
            return Err(Reject::Malformed("truncated"));
        }
        let (body, tail) = wire.split_at(wire.len() - 8 - 32 - 64);
        let tx: Tx = match postcard::take_from_bytes(body) {
            Ok((tx, [])) => tx,
            _ => return Err(Reject::Malformed("body")),
        };
        let mut nonce = [0u8; 8];
        nonce.copy_from_slice(&tail[..8]);
        let mut sender = [0u8; 32];
        sender.copy_from_slice(&tail[8..40]);
        let mut sig = [0u8; 64];
        sig.copy_from_slice(&tail[40..]);
        Ok(SignedTx {
            tx,
            sender,
            nonce: u64::from_le_bytes(nonce),
            sig,
        })
    }

    /// Whether the sender's key signed this body and nonce.
    pub fn verify(&self) -> bool {
        let body = postcard::to_stdvec(&self.tx).unwrap_or_default();
        VerifyingKey::from_bytes(&self.sender).is_ok_and(|k| {
            k.verify(
                &tx_message(&body, self.nonce),
                &ed25519_dalek::Signature::from_bytes(&self.sig),
            )
            .is_ok()
        })
    }
}

fn tx_message(body: &[u8], nonce: u64) -> Vec<u8> {
    let mut m = TX_DOMAIN.to_vec();
    m.extend_from_slice(body);
    m.extend_from_slice(&nonce.to_le_bytes());
    m
}

/// Why a transaction or a receipt was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("malformed transaction: {0}")]
    Malformed(&'static str),
    #[error("transaction signature does not verify")]
    BadSignature,
    #[error("nonce {got} is not the next one ({want})")]
    BadNonce { got: u64, want: u64 },
    #[error("deposits are only allowed in dev mode")]
    DepositsDisabled,
    #[error("balance too low")]
    InsufficientBalance,
    #[error("not a registered node")]
    NotANode,
    #[error("epoch {0} is not the open epoch")]
    WrongEpoch(u64),
    #[error("too many entries in one transaction")]
    TooMany,
    #[error("a node cannot score itself")]
    SelfReport,
    #[error("service {0} belongs to another node")]
    NotOwner(u16),
    #[error("service names are 1 to 64 bytes")]
    BadName,
    #[error("malformed deployment: {0}")]
    BadDeployment(&'static str),
    #[error("deployment {0} belongs to another owner")]
    NotDeploymentOwner(String),
    #[error("no deployment named {0}")]
    NoSuchDeployment(String),
    #[error("the key is already another account's delegate")]
    DelegateTaken,
    #[error("no such grant of this account")]
    NoSuchGrant,
}

/// Why one receipt in a submission was not paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReceiptReject {
    Forged,
    Replayed,
    Stale,
    OverBudget,
    OtherNode,
    UnknownService,
}

impl ReceiptReject {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptReject::Forged => "forged",
            ReceiptReject::Replayed => "replayed",
            ReceiptReject::Stale => "stale",
            ReceiptReject::OverBudget => "over-budget",
            ReceiptReject::OtherNode => "other-node",
            ReceiptReject::UnknownService => "unknown-service",
        }
    }
}

/// What applying a transaction did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub accepted_receipts: usize,
    pub rejected_receipts: Vec<(usize, ReceiptReject)>,
}

/// Ledger parameters every replica must share (part of the genesis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Charged to a client per delivered byte, in the ledger's smallest unit.
    pub price_per_byte: u64,
    pub dev_deposits: bool,
    /// Epoch length in block-time milliseconds.
    pub epoch_ms: u64,
    /// Seats in the committee chosen at each epoch's end.
    pub committee_size: usize,
    /// Least stake that makes a node a committee candidate.
    pub min_stake: u64,
}

/// Fewest distinct reporters whose median sets a node's reputation; below it
/// the reputation stays as it was (one or two voices decide nothing).
pub const MIN_REPORTERS: usize = 3;
/// A new committee needs at least this many candidates (3f+1 with f = 1).
pub const MIN_COMMITTEE: usize = 4;

/// What an epoch's end did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EpochClose {
    pub epoch: u64,
    /// Total charged to clients in the epoch (the reward pool).
    pub pool: u64,
    pub rewards: BTreeMap<Key, u64>,
    /// The reputation each paid node's share was weighted by.
    pub reputation: BTreeMap<Key, u16>,
    /// Whether the committee for the next epoch differs from this one.
    pub committee_changed: bool,
    /// What each deployment's owner was charged for reported use.
    pub zones: BTreeMap<String, u64>,
}

/// The replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct State {
    pub epoch: u64,
    /// Block time at which the open epoch began (0: no block yet).
    pub epoch_start_ms: u64,
    /// Time of the last applied block.
    pub time_ms: u64,
    /// Blocks applied.
    pub height: u64,
    /// The members that replicate the ledger this epoch.
    pub committee: Vec<Key>,
    pub balances: BTreeMap<Key, u64>,
    pub nonces: BTreeMap<Key, u64>,
    pub stakes: BTreeMap<Key, u64>,
    /// Reputation in thousandths (1000 when never set).
    pub reputation: BTreeMap<Key, u16>,
    /// (client, node, seq) already paid in the open epoch (older receipts are
    /// stale anyway, so the set is emptied at each epoch's end).
    pub spent: BTreeSet<(Key, Key, u64)>,
    /// What clients were charged in the open epoch for each node's deliveries.
    pub earned: BTreeMap<Key, u64>,
    /// Open epoch's reports: subject -> reporter -> score.
    pub reports: BTreeMap<Key, BTreeMap<Key, u16>>,
    /// Closed epochs, by number.
    pub closed: BTreeMap<u64, EpochClose>,
    /// Rounding remainders and pools no one could be paid from.
    pub treasury: u64,
    /// The service registry.
    pub services: BTreeMap<u16, Service>,
    /// Deployments, by name.
    pub deployments: BTreeMap<String, Deployment>,
    /// Open epoch's reported use: deployment -> node -> bytes.
    pub usage: BTreeMap<String, BTreeMap<Key, u64>>,
    /// Receipts refused so far, per submitting node and reason.
    pub refusals: BTreeMap<Key, BTreeMap<ReceiptReject, u64>>,
    /// Delegated keys, by key (see [`Tx::Grant`]).
    pub grants: BTreeMap<Key, Grant>,
}

impl State {
    /// The genesis state: the first committee and nothing else.
    pub fn genesis(committee: Vec<Key>) -> State {
        State {
            committee,
            ..State::default()
        }
    }

    /// Reputation of a node in thousandths.
    pub fn reputation_of(&self, node: &Key) -> u16 {
        self.reputation.get(node).copied().unwrap_or(1000)
    }

    /// Moves block time forward to `time_ms`, closing the open epoch when it has
    /// run its length. Call once per block, before its transactions.
    pub fn advance(&mut self, params: &Params, time_ms: u64) -> Option<EpochClose> {
        self.height += 1;
        self.time_ms = self.time_ms.max(time_ms);
        if self.epoch_start_ms == 0 {
            self.epoch_start_ms = self.time_ms;
            return None;
        }
        let len = params.epoch_ms.max(1);
        let elapsed = self.time_ms.saturating_sub(self.epoch_start_ms);
        if elapsed < len {
            return None;
        }
        let close = self.close_epoch(params);
        // Fixed-length epochs on the block clock; a long silence skips ahead.
        self.epoch_start_ms += elapsed / len * len;
        Some(close)
    }

    fn close_epoch(&mut self, params: &Params) -> EpochClose {
        // Reputation: the median of distinct reporters' scores (the reporters
        // were registered nodes when they reported, never the subject).
        for (subject, by) in std::mem::take(&mut self.reports) {
            if by.len() < MIN_REPORTERS {
                continue;
            }
            let mut scores: Vec<u16> = by.into_values().collect();
            scores.sort_unstable();
            self.reputation
                .insert(subject, scores[(scores.len() - 1) / 2]);
        }
        let zones = self.charge_usage(params);
        // Rewards: the pool clients paid, shared by charged bytes × reputation.
        let earned = std::mem::take(&mut self.earned);
        let pool: u128 = earned.values().map(|&v| v as u128).sum();
        let weights: Vec<(Key, u128)> = earned
            .iter()
            .map(|(n, &v)| (*n, v as u128 * self.reputation_of(n) as u128))
            .collect();
        let total: u128 = weights.iter().map(|(_, w)| w).sum();
        let mut rewards = BTreeMap::new();
        let reputation = earned.keys().map(|n| (*n, self.reputation_of(n))).collect();
        let mut paid: u128 = 0;
        for (node, w) in weights {
            if let Some(r) = (pool * w).checked_div(total) {
                paid += r;
                let r = r as u64;
                let b = self.balances.entry(node).or_default();
                *b = b.saturating_add(r);
                rewards.insert(node, r);
            }
        }
        self.treasury = self.treasury.saturating_add((pool - paid) as u64);
        // The next committee: the staked nodes with the most stake × reputation.
        let mut candidates: Vec<(u128, Key)> = self
            .stakes
            .iter()
            .filter(|(_, &s)| s >= params.min_stake.max(1))
            .map(|(n, &s)| (s as u128 * self.reputation_of(n) as u128, *n))
            .filter(|(w, _)| *w > 0)
            .collect();
        let mut committee_changed = false;
        if candidates.len() >= MIN_COMMITTEE.min(params.committee_size.max(1)) {
            candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut next: Vec<Key> = candidates
                .into_iter()
                .take(params.committee_size.max(1))
                .map(|(_, k)| k)
                .collect();
            next.sort_unstable();
            let mut now = self.committee.clone();
            now.sort_unstable();
            if next != now {
                self.committee = next;
                committee_changed = true;
            }
        }
        self.spent.clear();
        let close = EpochClose {
            epoch: self.epoch,
            zones,
            pool: pool as u64,
            rewards,
            reputation,
            committee_changed,
        };
        self.closed.insert(self.epoch, close.clone());
        self.epoch += 1;
        close
    }

    /// Applies one transaction; on `Err` the state is unchanged.
    pub fn apply(&mut self, params: &Params, stx: &SignedTx) -> Result<Outcome, Reject> {
        if !stx.verify() {
            return Err(Reject::BadSignature);
        }
        let want = self.nonces.get(&stx.sender).copied().unwrap_or(0);
        if stx.nonce != want {
            return Err(Reject::BadNonce {
                got: stx.nonce,
                want,
            });
        }
        let sender = stx.sender;
        let mut outcome = Outcome::default();
        match &stx.tx {
            Tx::Deposit { amount } => {
                if !params.dev_deposits {
                    return Err(Reject::DepositsDisabled);
                }
                let b = self.balances.entry(sender).or_default();
                *b = b.saturating_add(*amount);
            }
            Tx::RegisterNode { stake } => {
                let b = self.balances.get(&sender).copied().unwrap_or(0);
                if b < *stake {
                    return Err(Reject::InsufficientBalance);
                }
                self.balances.insert(sender, b - stake);
                let s = self.stakes.entry(sender).or_default();
                *s = s.saturating_add(*stake);
            }
            Tx::SubmitReceipts { receipts } => {
                if !self.stakes.contains_key(&sender) {
                    return Err(Reject::NotANode);
                }
                if receipts.len() > MAX_RECEIPTS_PER_TX {
                    return Err(Reject::TooMany);
                }
                for (i, r) in receipts.iter().enumerate() {
                    match self.check_receipt(params, &sender, r) {
                        Ok(charge) => {
                            let rc = &r.receipt;
                            self.spent.insert((rc.client, rc.node, rc.seq));
                            if let Some(b) = self.balances.get_mut(&rc.client) {
                                *b -= charge;
                            }
                            let e = self.earned.entry(sender).or_default();
                            *e = e.saturating_add(charge);
                            outcome.accepted_receipts += 1;
                        }
                        Err(why) => {
                            *self
                                .refusals
                                .entry(sender)
                                .or_default()
                                .entry(why)
                                .or_default() += 1;
                            outcome.rejected_receipts.push((i, why));
                        }
                    }
                }
            }
            Tx::Report { epoch, scores } => {
                if !self.stakes.contains_key(&sender) {
                    return Err(Reject::NotANode);
                }
                if *epoch != self.epoch {
                    return Err(Reject::WrongEpoch(*epoch));
                }
                if scores.len() > MAX_RECEIPTS_PER_TX {
                    return Err(Reject::TooMany);
                }
                if scores.iter().any(|(n, _)| *n == sender) {
                    return Err(Reject::SelfReport);
                }
                for (node, score) in scores {
                    self.reports
                        .entry(*node)
                        .or_default()
                        .insert(sender, (*score).min(1000));
                }
            }
            Tx::RegisterService {
                service,
                name,
                price_per_byte,
            } => {
                if !self.stakes.contains_key(&sender) {
                    return Err(Reject::NotANode);
                }
                if name.is_empty() || name.len() > MAX_SERVICE_NAME {
                    return Err(Reject::BadName);
                }
                if self
                    .services
                    .get(service)
                    .is_some_and(|s| s.owner != sender)
                {
                    return Err(Reject::NotOwner(*service));
                }
                self.services.insert(
                    *service,
                    Service {
                        name: name.clone(),
                        owner: sender,
                        price_per_byte: *price_per_byte,
                    },
                );
            }
            Tx::Deploy(d) => self.deploy(sender, d)?,
            Tx::ReportUsage { usage } => {
                if !self.stakes.contains_key(&sender) {
                    return Err(Reject::NotANode);
                }
                if usage.len() > MAX_RECEIPTS_PER_TX {
                    return Err(Reject::TooMany);
                }
                if let Some((zone, _)) = usage
                    .iter()
                    .find(|(z, _)| !self.deployments.contains_key(z))
                {
                    return Err(Reject::NoSuchDeployment(zone.clone()));
                }
                for (zone, bytes) in usage {
                    let b = self
                        .usage
                        .entry(zone.clone())
                        .or_default()
                        .entry(sender)
                        .or_default();
                    *b = b.saturating_add(*bytes);
                }
            }
            Tx::Undeploy { name } => match self.deployments.get(name) {
                None => return Err(Reject::NoSuchDeployment(name.clone())),
                Some(old) if self.acting_for(&sender, &old.spec.service) != old.owner => {
                    return Err(Reject::NotDeploymentOwner(name.clone()))
                }
                Some(_) => {
                    self.deployments.remove(name);
                }
            },
            Tx::Grant { delegate, service } => {
                if service.is_empty() || service.len() > MAX_SERVICE_NAME {
                    return Err(Reject::BadName);
                }
                if *delegate == sender || self.grants.contains_key(&sender) {
                    return Err(Reject::Malformed("a delegate cannot grant"));
                }
                if self.grants.get(delegate).is_some_and(|g| g.owner != sender) {
                    return Err(Reject::DelegateTaken);
                }
                self.grants.insert(
                    *delegate,
                    Grant {
                        owner: sender,
                        service: service.clone(),
                    },
                );
            }
            Tx::Revoke { delegate } => match self.grants.get(delegate) {
                Some(g) if g.owner == sender => {
                    self.grants.remove(delegate);
                }
                _ => return Err(Reject::NoSuchGrant),
            },
        }
        self.nonces.insert(sender, want + 1);
        Ok(outcome)
    }

    /// At an epoch's end: each deployment's owner pays for the bytes nodes
    /// reported serving for it, at `price_per_byte`, and the nodes earn it
    /// (then shared like delivery charges). The bound on a node that
    /// over-reports: with two or more reporters for a deployment, a node is
    /// paid for at most twice the median of their reports; never more than
    /// the owner's balance is taken (reporters in node-id order). What each
    /// deployment was charged is kept in the epoch's close.
    fn charge_usage(&mut self, params: &Params) -> BTreeMap<String, u64> {
        let mut charged = BTreeMap::new();
        for (zone, by) in std::mem::take(&mut self.usage) {
            let Some(owner) = self.deployments.get(&zone).map(|d| d.owner) else {
                continue;
            };
            let mut claims: Vec<u64> = by.values().copied().collect();
            claims.sort_unstable();
            let cap = if claims.len() >= 2 {
                claims[(claims.len() - 1) / 2].saturating_mul(2)
            } else {
                u64::MAX
            };
            let mut total = 0u64;
            for (node, bytes) in by {
                let want = bytes.min(cap).saturating_mul(params.price_per_byte);
                let balance = self.balances.get(&owner).copied().unwrap_or(0);
                let charge = want.min(balance);
                if charge == 0 {
                    continue;
                }
                self.balances.insert(owner, balance - charge);
                let e = self.earned.entry(node).or_default();
                *e = e.saturating_add(charge);
                total += charge;
            }
            charged.insert(zone, total);
        }
        charged
    }

    /// The account `sender` acts for in `service`: its grantor when it is a
    /// delegate of that service, else itself.
    pub fn acting_for(&self, sender: &Key, service: &str) -> Key {
        match self.grants.get(sender) {
            Some(g) if g.service == service => g.owner,
            _ => *sender,
        }
    }

    fn deploy(&mut self, sender: Key, d: &DeploySpec) -> Result<(), Reject> {
        check_deploy_spec(d)?;
        let sender = self.acting_for(&sender, &d.service);
        let version = match self.deployments.get(&d.name) {
            Some(old) if old.owner != sender => {
                return Err(Reject::NotDeploymentOwner(d.name.clone()))
            }
            Some(old) if old.spec == *d => old.version,
            Some(old) => old.version + 1,
            None => 1,
        };
        self.deployments.insert(
            d.name.clone(),
            Deployment {
                spec: d.clone(),
                owner: sender,
                spec_hash: *blake3::hash(&d.spec).as_bytes(),
                version,
            },
        );
        Ok(())
    }

    fn check_receipt(
        &self,
        params: &Params,
        submitter: &Key,
        r: &SignedReceipt,
    ) -> Result<u64, ReceiptReject> {
        let rc = &r.receipt;
        if !r.verify() {
            return Err(ReceiptReject::Forged);
        }
        if rc.node != *submitter {
            return Err(ReceiptReject::OtherNode);
        }
        if rc.epoch != self.epoch {
            return Err(ReceiptReject::Stale);
        }
        if self.spent.contains(&(rc.client, rc.node, rc.seq)) {
            return Err(ReceiptReject::Replayed);
        }
        let price = match self.services.get(&rc.service) {
            Some(s) => s.price_per_byte,
            None if rc.service == BLOB_SERVICE => params.price_per_byte,
            None => return Err(ReceiptReject::UnknownService),
        };
        let charge = rc.bytes.saturating_mul(price);
        if self.balances.get(&rc.client).copied().unwrap_or(0) < charge {
            return Err(ReceiptReject::OverBudget);
        }
        Ok(charge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn id(k: &SigningKey) -> Key {
        k.verifying_key().to_bytes()
    }

    struct Net {
        state: State,
        params: Params,
        nonces: BTreeMap<Key, u64>,
        clock: u64,
    }

    impl Net {
        fn new() -> Net {
            let mut net = Net {
                state: State::genesis(vec![]),
                params: Params {
                    price_per_byte: 2,
                    dev_deposits: true,
                    epoch_ms: 1000,
                    committee_size: 4,
                    min_stake: 1,
                },
                nonces: BTreeMap::new(),
                clock: 1_000_000,
            };
            net.tick(0);
            net
        }

        /// One block `ms` after the last: may close the epoch.
        fn tick(&mut self, ms: u64) -> Option<EpochClose> {
            self.clock += ms;
            self.state.advance(&self.params, self.clock)
        }

        fn send(&mut self, k: &SigningKey, tx: Tx) -> Result<Outcome, Reject> {
            let who = id(k);
            let nonce = *self.nonces.get(&who).unwrap_or(&0);
            // Through the wire form, as a replica would receive it.
            let wire = SignedTx::new(tx, nonce, k).encode();
            let r = self.state.apply(&self.params, &SignedTx::decode(&wire)?);
            if r.is_ok() {
                self.nonces.insert(who, nonce + 1);
            }
            r
        }

        fn node(&mut self, k: &SigningKey, stake: u64) {
            self.send(k, Tx::Deposit { amount: stake })
                .expect("deposit");
            self.send(k, Tx::RegisterNode { stake }).expect("register");
        }

        fn report(&mut self, from: &SigningKey, about: &SigningKey, score: u16) {
            let epoch = self.state.epoch;
            self.send(
                from,
                Tx::Report {
                    epoch,
                    scores: vec![(id(about), score)],
                },
            )
            .expect("report");
        }
    }

    fn receipt(
        client: &SigningKey,
        node: &SigningKey,
        bytes: u64,
        epoch: u64,
        seq: u64,
    ) -> SignedReceipt {
        Receipt {
            client: id(client),
            node: id(node),
            service: 1,
            content: [9; 32],
            bytes,
            epoch,
            seq,
        }
        .sign(client)
    }

    #[test]
    fn receipts_charge_clients_and_pay_nodes_by_reputation() {
        let (a, b, c, d, c1, c2) = (key(2), key(3), key(6), key(7), key(4), key(5));
        let mut net = Net::new();
        for k in [&a, &b, &c, &d] {
            net.node(k, 50);
        }
        net.send(&c1, Tx::Deposit { amount: 10_000 })
            .expect("deposit");
        net.send(&c2, Tx::Deposit { amount: 1_000 })
            .expect("deposit");
        // Three peers measured b at half.
        for r in [&a, &c, &d] {
            net.report(r, &b, 500);
        }
        let out = net
            .send(
                &a,
                Tx::SubmitReceipts {
                    receipts: vec![receipt(&c1, &a, 1000, 0, 0), receipt(&c2, &a, 100, 0, 0)],
                },
            )
            .expect("submit");
        assert_eq!(out.accepted_receipts, 2);
        let out = net
            .send(
                &b,
                Tx::SubmitReceipts {
                    receipts: vec![receipt(&c1, &b, 2000, 0, 1)],
                },
            )
            .expect("submit");
        assert_eq!(out.accepted_receipts, 1);
        assert_eq!(net.tick(999), None, "the epoch is not over yet");
        let close = net.tick(1).expect("epoch 0 closes at 1000 ms");
        // Independent computation: the pool is what clients paid, (1100 + 2000)
        // bytes × 2; a's weight 2200 × 1000, b's 4000 × 500 (median of reports).
        let pool: u128 = 6200;
        let (wa, wb): (u128, u128) = (2200 * 1000, 4000 * 500);
        let (ra, rb) = (
            (pool * wa / (wa + wb)) as u64,
            (pool * wb / (wa + wb)) as u64,
        );
        assert_eq!(close.pool, 6200);
        assert_eq!(close.rewards.get(&id(&a)), Some(&ra));
        assert_eq!(close.rewards.get(&id(&b)), Some(&rb));
        assert_eq!(net.state.treasury, 6200 - ra - rb);
        assert_eq!(net.state.balances[&id(&c1)], 10_000 - 2000 - 4000);
        assert_eq!(net.state.balances[&id(&a)], ra);
        assert_eq!(net.state.reputation_of(&id(&b)), 500);
        assert_eq!(net.state.epoch, 1);
        assert_eq!(net.state.closed[&0], close);
    }

    #[test]
    fn a_lone_liar_neither_sinks_nor_lifts_a_node() {
        let ks: Vec<SigningKey> = (10..15).map(key).collect();
        let mut net = Net::new();
        for k in &ks {
            net.node(k, 10);
        }
        // ks[0] is good: three say 1000, the liar says 0.
        for r in &ks[1..4] {
            net.report(r, &ks[0], 1000);
        }
        net.report(&ks[4], &ks[0], 0);
        // ks[1] is bad: three say 0, the liar says 1000.
        for r in [&ks[0], &ks[2], &ks[3]] {
            net.report(r, &ks[1], 0);
        }
        net.report(&ks[4], &ks[1], 1000);
        // ks[2] has only two reporters: unchanged.
        net.report(&ks[0], &ks[2], 0);
        net.report(&ks[1], &ks[2], 0);
        net.tick(1000).expect("close");
        assert_eq!(net.state.reputation_of(&id(&ks[0])), 1000);
        assert_eq!(net.state.reputation_of(&id(&ks[1])), 0);
        assert_eq!(net.state.reputation_of(&id(&ks[2])), 1000);
        // A node cannot score itself; reports are for the open epoch only.
        assert_eq!(
            net.send(
                &ks[0],
                Tx::Report {
                    epoch: 1,
                    scores: vec![(id(&ks[0]), 1000)]
                }
            ),
            Err(Reject::SelfReport)
        );
        assert_eq!(
            net.send(
                &ks[0],
                Tx::Report {
                    epoch: 0,
                    scores: vec![]
                }
            ),
            Err(Reject::WrongEpoch(0))
        );
    }

    #[test]
    fn the_next_committee_is_chosen_by_stake_and_reputation() {
        let ks: Vec<SigningKey> = (20..26).map(key).collect();
        let mut net = Net::new();
        for (i, k) in ks.iter().enumerate() {
            net.node(k, 10 + i as u64);
        }
        // The two largest stakes, but ks[5] is scored 0 by three peers.
        for r in &ks[0..3] {
            net.report(r, &ks[5], 0);
        }
        let close = net.tick(1000).expect("close");
        assert!(close.committee_changed);
        let mut want: Vec<Key> = [&ks[1], &ks[2], &ks[3], &ks[4]]
            .iter()
            .map(|k| id(k))
            .collect();
        want.sort_unstable();
        assert_eq!(net.state.committee, want);
        let close = net.tick(1000).expect("close");
        assert!(!close.committee_changed, "same candidates, same committee");
    }

    #[test]
    fn forged_replayed_stale_over_budget_and_foreign_receipts_are_refused() {
        let (a, b, c) = (key(2), key(3), key(4));
        let mut net = Net::new();
        net.node(&a, 10);
        net.send(&c, Tx::Deposit { amount: 1000 }).expect("deposit");
        let mut forged = receipt(&c, &a, 10, 0, 0);
        forged.receipt.bytes = 400; // altered after signing
        let good = receipt(&c, &a, 10, 0, 1);
        let out = net
            .send(
                &a,
                Tx::SubmitReceipts {
                    receipts: vec![
                        forged,
                        good.clone(),
                        good,                          // replay in the same batch
                        receipt(&c, &a, 10, 7, 2),     // another epoch
                        receipt(&c, &a, 10_000, 0, 3), // more than the client has
                        receipt(&c, &b, 10, 0, 4),     // for another node
                    ],
                },
            )
            .expect("submit");
        assert_eq!(out.accepted_receipts, 1);
        assert_eq!(
            out.rejected_receipts,
            vec![
                (0, ReceiptReject::Forged),
                (2, ReceiptReject::Replayed),
                (3, ReceiptReject::Stale),
                (4, ReceiptReject::OverBudget),
                (5, ReceiptReject::OtherNode),
            ]
        );
        // A receipt from a closed epoch is stale afterwards too, and the one
        // already paid stays refused (stale before replayed).
        net.tick(1000).expect("close");
        let out = net
            .send(
                &a,
                Tx::SubmitReceipts {
                    receipts: vec![receipt(&c, &a, 10, 0, 9), receipt(&c, &a, 10, 0, 1)],
                },
            )
            .expect("submit");
        assert_eq!(
            out.rejected_receipts,
            vec![(0, ReceiptReject::Stale), (1, ReceiptReject::Stale)]
        );
    }

    #[test]
    fn the_receipt_log_reads_from_a_cursor_and_drops_a_torn_tail() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("receipts.log");
        let (c, a) = (key(4), key(2));
        let log = ReceiptLog::open(&path, id(&a)).expect("open");
        let batch = |seqs: std::ops::Range<u64>| {
            let v: Vec<SignedReceipt> = seqs.map(|s| receipt(&c, &a, 10, 0, s)).collect();
            postcard::to_stdvec(&v).expect("encode")
        };
        assert_eq!(log.accept(&batch(0..3)), Ok(3));
        let (first, at) = ReceiptLog::read_from(&path, 0, 2).expect("read");
        assert_eq!(
            first.iter().map(|r| r.receipt.seq).collect::<Vec<_>>(),
            [0, 1]
        );
        let (rest, end) = ReceiptLog::read_from(&path, at, 100).expect("read");
        assert_eq!(rest.iter().map(|r| r.receipt.seq).collect::<Vec<_>>(), [2]);
        assert_eq!(end, std::fs::metadata(&path).expect("meta").len());
        // A crash mid-append leaves half a record; reopening cuts it off, so
        // the next batch is readable after the first.
        drop(log);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("reopen")
            .write_all(&[200, 0, 0, 0, 1, 2, 3])
            .expect("torn");
        let log = ReceiptLog::open(&path, id(&a)).expect("open");
        assert_eq!(log.accept(&batch(3..5)), Ok(2));
        let (all, _) = ReceiptLog::read_from(&path, 0, 100).expect("read");
        assert_eq!(all.len(), 5);
        let (none, at) = ReceiptLog::read_from(&dir.path().join("none"), 0, 9).expect("none");
        assert!(none.is_empty() && at == 0);
    }

    fn deploy_tx(name: &str, spec: &str, replicas: u16) -> Tx {
        Tx::Deploy(DeploySpec {
            name: name.into(),
            service: "cdn".into(),
            spec: spec.as_bytes().to_vec(),
            replicas,
            regions: vec!["eu-west".into()],
        })
    }

    #[test]
    fn deployments_belong_to_their_owner_and_version_on_change() {
        let (alice, bob) = (key(20), key(21));
        let mut net = Net::new();
        net.send(&alice, deploy_tx("shop", "origin = 'a'", 2))
            .expect("create");
        let d = &net.state.deployments["shop"];
        assert_eq!((d.version, d.owner), (1, id(&alice)));
        assert_eq!(d.spec_hash, *blake3::hash(b"origin = 'a'").as_bytes());
        // The same again: no new version (but the nonce moves on).
        net.send(&alice, deploy_tx("shop", "origin = 'a'", 2))
            .expect("same");
        assert_eq!(net.state.deployments["shop"].version, 1);
        net.send(&alice, deploy_tx("shop", "origin = 'b'", 2))
            .expect("change");
        assert_eq!(net.state.deployments["shop"].version, 2);
        // Somebody else may neither change nor remove it.
        assert_eq!(
            net.send(&bob, deploy_tx("shop", "origin = 'evil'", 1)),
            Err(Reject::NotDeploymentOwner("shop".into()))
        );
        assert_eq!(
            net.send(
                &bob,
                Tx::Undeploy {
                    name: "shop".into()
                }
            ),
            Err(Reject::NotDeploymentOwner("shop".into()))
        );
        assert_eq!(net.state.deployments["shop"].version, 2);
        // A replayed transaction: the nonce is used.
        let replay = SignedTx::new(deploy_tx("shop", "origin = 'a'", 2), 0, &alice);
        assert_eq!(
            net.state.apply(&net.params, &replay),
            Err(Reject::BadNonce { got: 0, want: 3 })
        );
        // A forged signature.
        let mut forged = SignedTx::new(
            Tx::Undeploy {
                name: "shop".into(),
            },
            3,
            &alice,
        );
        forged.sig[0] ^= 1;
        assert_eq!(
            net.state.apply(&net.params, &forged),
            Err(Reject::BadSignature)
        );
        net.send(
            &alice,
            Tx::Undeploy {
                name: "shop".into(),
            },
        )
        .expect("undeploy");
        assert!(net.state.deployments.is_empty());
        assert_eq!(
            net.send(
                &alice,
                Tx::Undeploy {
                    name: "shop".into()
                }
            ),
            Err(Reject::NoSuchDeployment("shop".into()))
        );
    }

    #[test]
    fn reported_use_is_charged_to_the_owner_and_an_over_report_is_capped() {
        let (owner, a, b, c) = (key(30), key(31), key(32), key(33));
        let mut net = Net::new();
        net.node(&a, 10);
        net.node(&b, 10);
        net.send(&owner, Tx::Deposit { amount: 100_000 })
            .expect("deposit");
        net.send(&owner, deploy_tx("shop", "origin = 'x'", 2))
            .expect("deploy");
        let report = |bytes| Tx::ReportUsage {
            usage: vec![("shop".into(), bytes)],
        };
        // Increments add up; an unknown deployment or a node without stake
        // is refused.
        net.send(&a, report(400)).expect("report");
        net.send(&a, report(600)).expect("report");
        net.send(&b, report(10_000)).expect("an over-report");
        assert_eq!(net.send(&c, report(5)), Err(Reject::NotANode));
        assert_eq!(
            net.send(
                &a,
                Tx::ReportUsage {
                    usage: vec![("nosuch".into(), 5)]
                }
            ),
            Err(Reject::NoSuchDeployment("nosuch".into()))
        );
        let close = net.tick(2000).expect("the epoch closes");
        // a: 1,000 bytes; b claimed 10,000 and is paid for twice the median
        // (2,000); at 2 per byte the owner pays 6,000.
        assert_eq!(close.zones["shop"], 6000);
        assert_eq!(net.state.balances[&id(&owner)], 100_000 - 6000);
        assert_eq!(close.pool, 6000);
        assert_eq!(close.rewards[&id(&a)], 2000);
        assert_eq!(close.rewards[&id(&b)], 4000);
        assert!(net.state.usage.is_empty());
        // An owner with too little left pays what it has, no more.
        net.send(&a, report(1_000_000)).expect("report");
        let close = net.tick(2000).expect("the next epoch closes");
        assert_eq!(close.zones["shop"], 94_000);
        assert_eq!(net.state.balances[&id(&owner)], 0);
    }

    #[test]
    fn malformed_deployments_say_what_is_wrong() {
        let alice = key(22);
        let mut net = Net::new();
        for (tx, what) in [
            (deploy_tx("Shop", "", 1), "deployment name"),
            (deploy_tx("-shop", "", 1), "deployment name"),
            (deploy_tx(&"a".repeat(64), "", 1), "deployment name"),
            (deploy_tx("shop", "", 0), "replicas"),
            (deploy_tx("shop", "", 65), "replicas"),
            (
                deploy_tx("shop", &"x".repeat(MAX_SPEC_BYTES + 1), 1),
                "64 KiB",
            ),
        ] {
            let err = net.send(&alice, tx).expect_err("refused");
            assert!(err.to_string().contains(what), "{err}");
        }
        assert!(valid_deployment_name("shop-2") && valid_deployment_name("a"));
        assert!(net.state.deployments.is_empty());
    }

    #[test]
    fn services_are_registered_by_nodes_and_price_their_receipts() {
        let (a, b, c) = (key(2), key(3), key(4));
        let mut net = Net::new();
        net.node(&a, 10);
        net.node(&b, 10);
        net.send(&c, Tx::Deposit { amount: 1000 }).expect("deposit");
        let svc = |price| Tx::RegisterService {
            service: 7,
            name: "edge-fn".into(),
            price_per_byte: price,
        };
        net.send(&a, svc(5)).expect("register");
        assert_eq!(net.send(&b, svc(1)), Err(Reject::NotOwner(7)));
        assert_eq!(net.send(&c, svc(1)), Err(Reject::NotANode));
        let mut r = receipt(&c, &a, 10, 0, 0);
        r.receipt.service = 7;
        let r = r.receipt.sign(&c);
        let mut unknown = receipt(&c, &a, 10, 0, 1).receipt;
        unknown.service = 9;
        let out = net
            .send(
                &a,
                Tx::SubmitReceipts {
                    receipts: vec![r, unknown.sign(&c)],
                },
            )
            .expect("submit");
        assert_eq!(
            out.rejected_receipts,
            vec![(1, ReceiptReject::UnknownService)]
        );
        assert_eq!(net.state.balances[&id(&c)], 1000 - 50);
        assert_eq!(
            net.state.refusals[&id(&a)].get(&ReceiptReject::UnknownService),
            Some(&1)
        );
    }

    #[test]
    fn bad_transactions_leave_the_state_unchanged() {
        let (a, mallory) = (key(2), key(3));
        let mut net = Net::new();
        net.send(&a, Tx::Deposit { amount: 5 }).expect("deposit");
        let before = net.state.clone();
        // Wrong nonce (a replayed transaction).
        let replay = SignedTx::new(Tx::Deposit { amount: 5 }, 0, &a);
        assert_eq!(
            net.state.apply(&net.params, &replay),
            Err(Reject::BadNonce { got: 0, want: 1 })
        );
        // Signed by one key, claiming another sender.
        let mut forged = SignedTx::new(Tx::Deposit { amount: 1 << 40 }, 0, &mallory);
        forged.sender = id(&a);
        assert_eq!(
            net.state.apply(&net.params, &forged),
            Err(Reject::BadSignature)
        );
        // Staking more than the balance; reporting or submitting unregistered.
        assert_eq!(
            net.send(&a, Tx::RegisterNode { stake: 6 }),
            Err(Reject::InsufficientBalance)
        );
        assert_eq!(
            net.send(
                &mallory,
                Tx::Report {
                    epoch: 0,
                    scores: vec![(id(&a), 0)]
                }
            ),
            Err(Reject::NotANode)
        );
        assert_eq!(
            net.send(&mallory, Tx::SubmitReceipts { receipts: vec![] }),
            Err(Reject::NotANode)
        );
        assert_eq!(net.state, before);
        // Deposits only in dev mode.
        net.params.dev_deposits = false;
        assert_eq!(
            net.send(&a, Tx::Deposit { amount: 1 }),
            Err(Reject::DepositsDisabled)
        );
        assert_eq!(net.state, before);
        // Malformed wire input: an error, never a panic.
        let wire = SignedTx::new(Tx::Deposit { amount: 5 }, 1, &a).encode();
        for len in 0..wire.len() {
            assert!(SignedTx::decode(&wire[..len]).is_err() || len == wire.len());
        }
        assert!(SignedTx::decode(&vec![0xff; MAX_TX_BYTES + 1]).is_err());
    }
}
