//! The ledger's rules (issue 6, first slice): delivery receipts and the state
//! machine that charges clients and credits nodes for verified bytes. Sans-IO and
//! deterministic: [`State::apply`] is a pure function of the state and one signed
//! transaction, so every replica that applies the same transactions in the same
//! order holds the same state. Replication by a BFT engine is not built yet.
//!
//! A client signs a [`Receipt`] after it has received and verified bytes from a
//! node; the node collects receipts and submits them in a [`Tx::SubmitReceipts`]
//! signed with its own key. The ledger rejects, with a reason: a receipt whose
//! client signature fails (forged), one whose (client, node, sequence) it has
//! seen (replay), one for another epoch than the open one (stale), one whose
//! client cannot pay (over budget), and one naming another node than the
//! submitter. At [`Tx::CloseEpoch`] each node is credited what its accepted
//! receipts charged, weighted by its reputation (in thousandths), and the epoch
//! advances.
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
    pub fn open(path: &std::path::Path, node: Key) -> std::io::Result<ReceiptLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
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
        let bytes = std::fs::read(path)?;
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while rest.len() >= 4 {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let Some(rec) = rest.get(4..4 + len) else {
                break;
            };
            match postcard::from_bytes::<SignedReceipt>(rec) {
                Ok(r) => out.push(r),
                Err(_) => break,
            }
            rest = &rest[4 + len..];
        }
        Ok(out)
    }
}

/// A ledger transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tx {
    /// Dev/test mode: credit the sender's account.
    Deposit { amount: u64 },
    /// A node registers with a stake (taken from its balance).
    RegisterNode { stake: u64 },
    /// A node submits receipts clients signed for it.
    SubmitReceipts { receipts: Vec<SignedReceipt> },
    /// Close the open epoch: pay nodes, open the next.
    CloseEpoch { epoch: u64 },
    /// Set a node's reputation in thousandths (the aggregation that produces it
    /// is a later step).
    SetReputation { node: Key, permille: u16 },
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

    fn verify(&self) -> bool {
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
    #[error("too many receipts in one transaction")]
    TooManyReceipts,
}

/// Why one receipt in a submission was not paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReceiptReject {
    Forged,
    Replayed,
    Stale,
    OverBudget,
    OtherNode,
}

/// What applying a transaction did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub accepted_receipts: usize,
    pub rejected_receipts: Vec<(usize, ReceiptReject)>,
    /// Rewards paid at an epoch close, by node.
    pub rewards: BTreeMap<Key, u64>,
}

/// Ledger parameters every replica must share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Charged to a client per delivered byte, in the ledger's smallest unit.
    pub price_per_byte: u64,
    pub dev_deposits: bool,
    /// Accounts allowed to close epochs and set reputation (the committee).
    pub operators: BTreeSet<Key>,
}

/// The replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    pub epoch: u64,
    pub balances: BTreeMap<Key, u64>,
    pub nonces: BTreeMap<Key, u64>,
    pub stakes: BTreeMap<Key, u64>,
    /// Reputation in thousandths (1000 when never set).
    pub reputation: BTreeMap<Key, u16>,
    /// (client, node, seq) already paid.
    pub spent: BTreeSet<(Key, Key, u64)>,
    /// What the open epoch owes each node before reputation.
    pub earned: BTreeMap<Key, u64>,
    /// Rewards paid per closed epoch, by node.
    pub rewards: BTreeMap<u64, BTreeMap<Key, u64>>,
}

impl State {
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
                *self.stakes.entry(sender).or_default() += stake;
            }
            Tx::SubmitReceipts { receipts } => {
                if !self.stakes.contains_key(&sender) {
                    return Err(Reject::NotANode);
                }
                if receipts.len() > MAX_RECEIPTS_PER_TX {
                    return Err(Reject::TooManyReceipts);
                }
                for (i, r) in receipts.iter().enumerate() {
                    match self.check_receipt(params, &sender, r) {
                        Ok(charge) => {
                            let rc = &r.receipt;
                            self.spent.insert((rc.client, rc.node, rc.seq));
                            if let Some(b) = self.balances.get_mut(&rc.client) {
                                *b -= charge;
                            }
                            *self.earned.entry(sender).or_default() += charge;
                            outcome.accepted_receipts += 1;
                        }
                        Err(why) => outcome.rejected_receipts.push((i, why)),
                    }
                }
            }
            Tx::CloseEpoch { epoch } => {
                if !params.operators.contains(&sender) {
                    return Err(Reject::NotANode);
                }
                if *epoch != self.epoch {
                    return Err(Reject::WrongEpoch(*epoch));
                }
                let mut paid = BTreeMap::new();
                for (node, amount) in std::mem::take(&mut self.earned) {
                    let rep = self.reputation.get(&node).copied().unwrap_or(1000) as u128;
                    let reward = (amount as u128 * rep / 1000) as u64;
                    *self.balances.entry(node).or_default() += reward;
                    paid.insert(node, reward);
                }
                self.rewards.insert(self.epoch, paid.clone());
                outcome.rewards = paid;
                self.epoch += 1;
            }
            Tx::SetReputation { node, permille } => {
                if !params.operators.contains(&sender) {
                    return Err(Reject::NotANode);
                }
                self.reputation.insert(*node, (*permille).min(1000));
            }
        }
        self.nonces.insert(sender, want + 1);
        Ok(outcome)
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
        let charge = rc.bytes.saturating_mul(params.price_per_byte);
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

    struct Net {
        state: State,
        params: Params,
        nonces: BTreeMap<Key, u64>,
    }

    impl Net {
        fn new(operator: &SigningKey) -> Net {
            Net {
                state: State::default(),
                params: Params {
                    price_per_byte: 2,
                    dev_deposits: true,
                    operators: [operator.verifying_key().to_bytes()].into(),
                },
                nonces: BTreeMap::new(),
            }
        }

        fn send(&mut self, k: &SigningKey, tx: Tx) -> Result<Outcome, Reject> {
            let who = k.verifying_key().to_bytes();
            let nonce = *self.nonces.get(&who).unwrap_or(&0);
            // Through the wire form, as a replica would receive it.
            let wire = SignedTx::new(tx, nonce, k).encode();
            let r = self.state.apply(&self.params, &SignedTx::decode(&wire)?);
            if r.is_ok() {
                self.nonces.insert(who, nonce + 1);
            }
            r
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
            client: client.verifying_key().to_bytes(),
            node: node.verifying_key().to_bytes(),
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
        let (op, a, b, c1, c2) = (key(1), key(2), key(3), key(4), key(5));
        let mut net = Net::new(&op);
        for k in [&a, &b] {
            net.send(k, Tx::Deposit { amount: 100 }).expect("deposit");
            net.send(k, Tx::RegisterNode { stake: 50 })
                .expect("register");
        }
        net.send(&c1, Tx::Deposit { amount: 10_000 })
            .expect("deposit");
        net.send(&c2, Tx::Deposit { amount: 1_000 })
            .expect("deposit");
        net.send(
            &op,
            Tx::SetReputation {
                node: b.verifying_key().to_bytes(),
                permille: 500,
            },
        )
        .expect("reputation");
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
        let out = net.send(&op, Tx::CloseEpoch { epoch: 0 }).expect("close");
        // Independent computation: a earned (1000 + 100) × 2 at reputation 1.0,
        // b earned 2000 × 2 at reputation 0.5.
        let (ka, kb) = (a.verifying_key().to_bytes(), b.verifying_key().to_bytes());
        assert_eq!(out.rewards.get(&ka), Some(&2200));
        assert_eq!(out.rewards.get(&kb), Some(&2000));
        assert_eq!(
            net.state.balances[&c1.verifying_key().to_bytes()],
            10_000 - 2000 - 4000
        );
        assert_eq!(net.state.balances[&ka], 50 + 2200);
        assert_eq!(net.state.epoch, 1);
    }

    #[test]
    fn forged_replayed_stale_over_budget_and_foreign_receipts_are_refused() {
        let (op, a, b, c) = (key(1), key(2), key(3), key(4));
        let mut net = Net::new(&op);
        net.send(&a, Tx::Deposit { amount: 10 }).expect("deposit");
        net.send(&a, Tx::RegisterNode { stake: 10 })
            .expect("register");
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
        // A receipt from a closed epoch is stale afterwards too.
        net.send(&op, Tx::CloseEpoch { epoch: 0 }).expect("close");
        let out = net
            .send(
                &a,
                Tx::SubmitReceipts {
                    receipts: vec![receipt(&c, &a, 10, 0, 9)],
                },
            )
            .expect("submit");
        assert_eq!(out.rejected_receipts, vec![(0, ReceiptReject::Stale)]);
    }

    #[test]
    fn bad_transactions_leave_the_state_unchanged() {
        let (op, a, mallory) = (key(1), key(2), key(3));
        let mut net = Net::new(&op);
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
        forged.sender = a.verifying_key().to_bytes();
        assert_eq!(
            net.state.apply(&net.params, &forged),
            Err(Reject::BadSignature)
        );
        // Only the committee closes epochs.
        assert_eq!(
            net.send(&mallory, Tx::CloseEpoch { epoch: 0 }),
            Err(Reject::NotANode)
        );
        // Not a node: cannot submit receipts.
        assert_eq!(
            net.send(&mallory, Tx::SubmitReceipts { receipts: vec![] }),
            Err(Reject::NotANode)
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
