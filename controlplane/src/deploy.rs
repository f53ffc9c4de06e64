//! Deployments on a node without a ledger: the same signed transactions
//! ([`Tx::Deploy`], [`Tx::Undeploy`]) under the same rules as the replicated
//! ledger ([`State::apply`]: signature, nonce, owner), kept in the node's own
//! database instead. The HTTP API and the CLI cannot tell the two apart.
//!
//! Each change is one fsynced redb transaction holding the deployment and the
//! sender's next nonce together, so a crash leaves either both or neither.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::ledger::{Deployment, Key, Params, Reject, SignedTx, State, Tx};

const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");
const NONCES: TableDefinition<&[u8], u64> = TableDefinition::new("nonces");
const GRANTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("grants");

/// What one transaction changed, to record.
enum Changed {
    Deployment(String),
    Grant(Key),
}

/// The node's own record of deployments.
pub struct LocalRegistry {
    db: redb::Database,
    /// Deployments and nonces (the rest of the state is unused here).
    state: Mutex<State>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl LocalRegistry {
    /// Opens (or makes) the registry at `path`.
    pub fn open(path: &Path) -> Result<LocalRegistry, String> {
        let db = redb::Database::create(path).map_err(err)?;
        let mut state = State::default();
        {
            let w = db.begin_write().map_err(err)?;
            w.open_table(DEPLOYMENTS).map_err(err)?;
            w.open_table(NONCES).map_err(err)?;
            w.open_table(GRANTS).map_err(err)?;
            w.commit().map_err(err)?;
        }
        let r = db.begin_read().map_err(err)?;
        for row in r
            .open_table(DEPLOYMENTS)
            .map_err(err)?
            .iter()
            .map_err(err)?
        {
            let (name, value) = row.map_err(err)?;
            let d: Deployment = postcard::from_bytes(value.value())
                .map_err(|e| format!("deployment {}: {e}", name.value()))?;
            state.deployments.insert(name.value().to_string(), d);
        }
        for row in r.open_table(GRANTS).map_err(err)?.iter().map_err(err)? {
            let (key, value) = row.map_err(err)?;
            let key: Key = key
                .value()
                .try_into()
                .map_err(|_| "a grant's key is not 32 bytes".to_string())?;
            let g: crate::ledger::Grant =
                postcard::from_bytes(value.value()).map_err(|e| format!("a grant: {e}"))?;
            state.grants.insert(key, g);
        }
        for row in r.open_table(NONCES).map_err(err)?.iter().map_err(err)? {
            let (key, nonce) = row.map_err(err)?;
            let key: Key = key
                .value()
                .try_into()
                .map_err(|_| "a nonce row with a bad key".to_string())?;
            state.nonces.insert(key, nonce.value());
        }
        drop(r);
        Ok(LocalRegistry {
            db,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a signed deployment transaction; Err: why it is refused
    /// (nothing changes). Storage errors are `Reject::Malformed` with a
    /// message too, never a partial change.
    pub fn apply(&self, stx: &SignedTx) -> Result<(), Reject> {
        let change = match &stx.tx {
            Tx::Deploy(d) => Changed::Deployment(d.name.clone()),
            Tx::Undeploy { name } => Changed::Deployment(name.clone()),
            Tx::Grant { delegate, .. } | Tx::Revoke { delegate } => Changed::Grant(*delegate),
            _ => {
                return Err(Reject::Malformed(
                    "this node runs no ledger: it takes deployment transactions only",
                ))
            }
        };
        let mut state = self.lock();
        let mut next = State {
            deployments: state.deployments.clone(),
            nonces: state.nonces.clone(),
            grants: state.grants.clone(),
            ..State::default()
        };
        let params = Params {
            price_per_byte: 0,
            dev_deposits: false,
            epoch_ms: u64::MAX,
            committee_size: 0,
            min_stake: 0,
        };
        next.apply(&params, stx)?;
        let nonce = next.nonces.get(&stx.sender).copied().unwrap_or(0);
        self.persist(&change, &next, &stx.sender, nonce)
            .map_err(|e| {
                tracing::error!("cannot record a deployment change: {e}");
                Reject::Malformed("the node could not record it; see its log")
            })?;
        state.deployments = next.deployments;
        state.nonces = next.nonces;
        state.grants = next.grants;
        Ok(())
    }

    fn persist(
        &self,
        change: &Changed,
        next: &State,
        sender: &Key,
        nonce: u64,
    ) -> Result<(), String> {
        let w = self.db.begin_write().map_err(err)?;
        {
            match change {
                Changed::Deployment(name) => {
                    let mut t = w.open_table(DEPLOYMENTS).map_err(err)?;
                    match next.deployments.get(name) {
                        Some(d) => {
                            let v = postcard::to_stdvec(d).map_err(err)?;
                            t.insert(name.as_str(), v.as_slice()).map_err(err)?;
                        }
                        None => {
                            t.remove(name.as_str()).map_err(err)?;
                        }
                    }
                }
                Changed::Grant(delegate) => {
                    let mut t = w.open_table(GRANTS).map_err(err)?;
                    match next.grants.get(delegate) {
                        Some(g) => {
                            let v = postcard::to_stdvec(g).map_err(err)?;
                            t.insert(delegate.as_slice(), v.as_slice()).map_err(err)?;
                        }
                        None => {
                            t.remove(delegate.as_slice()).map_err(err)?;
                        }
                    }
                }
            }
            let mut n = w.open_table(NONCES).map_err(err)?;
            n.insert(sender.as_slice(), nonce).map_err(err)?;
        }
        w.commit().map_err(err)
    }

    /// The account a delegated key acts for in `service`, if granted.
    pub fn grant(&self, delegate: &Key) -> Option<crate::ledger::Grant> {
        self.lock().grants.get(delegate).cloned()
    }

    pub fn deployments(&self) -> BTreeMap<String, Deployment> {
        self.lock().deployments.clone()
    }

    /// The next nonce `key` must use.
    pub fn nonce(&self, key: &Key) -> u64 {
        self.lock().nonces.get(key).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::DeploySpec;
    use ed25519_dalek::SigningKey;

    fn spec(name: &str, text: &str) -> Tx {
        Tx::Deploy(DeploySpec {
            name: name.into(),
            service: "cdn".into(),
            spec: text.as_bytes().to_vec(),
            replicas: 1,
            regions: vec![],
        })
    }

    #[test]
    fn survives_a_restart_and_keeps_the_rules() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("deployments.redb");
        let alice = SigningKey::from_bytes(&[1; 32]);
        let bob = SigningKey::from_bytes(&[2; 32]);
        {
            let reg = LocalRegistry::open(&path).expect("open");
            reg.apply(&SignedTx::new(spec("shop", "a"), 0, &alice))
                .expect("create");
            reg.apply(&SignedTx::new(spec("shop", "b"), 1, &alice))
                .expect("update");
            assert_eq!(
                reg.apply(&SignedTx::new(spec("shop", "c"), 0, &bob)),
                Err(Reject::NotDeploymentOwner("shop".into()))
            );
            assert_eq!(
                reg.apply(&SignedTx::new(Tx::Deposit { amount: 1 }, 0, &bob)),
                Err(Reject::Malformed(
                    "this node runs no ledger: it takes deployment transactions only"
                ))
            );
        }
        let reg = LocalRegistry::open(&path).expect("reopen");
        let all = reg.deployments();
        assert_eq!(all["shop"].version, 2);
        assert_eq!(all["shop"].spec.spec, b"b");
        assert_eq!(reg.nonce(&alice.verifying_key().to_bytes()), 2);
        // The old nonce is spent across the restart too.
        assert_eq!(
            reg.apply(&SignedTx::new(spec("shop", "a"), 1, &alice)),
            Err(Reject::BadNonce { got: 1, want: 2 })
        );
        reg.apply(&SignedTx::new(
            Tx::Undeploy {
                name: "shop".into(),
            },
            2,
            &alice,
        ))
        .expect("undeploy");
        drop(reg);
        assert!(LocalRegistry::open(&path)
            .expect("reopen")
            .deployments()
            .is_empty());
    }

    #[test]
    fn a_delegate_acts_for_its_grantor_in_one_service_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("deployments.redb");
        let owner = SigningKey::from_bytes(&[3; 32]);
        let token = SigningKey::from_bytes(&[4; 32]);
        let stranger = SigningKey::from_bytes(&[5; 32]);
        let pin = |name: &str| {
            Tx::Deploy(DeploySpec {
                name: name.into(),
                service: "ipfs".into(),
                spec: b"{}".to_vec(),
                replicas: 1,
                regions: vec![],
            })
        };
        let delegate = token.verifying_key().to_bytes();
        {
            let reg = LocalRegistry::open(&path).expect("open");
            reg.apply(&SignedTx::new(
                Tx::Grant {
                    delegate,
                    service: "ipfs".into(),
                },
                0,
                &owner,
            ))
            .expect("grant");
            // Another account cannot take the same delegate.
            assert_eq!(
                reg.apply(&SignedTx::new(
                    Tx::Grant {
                        delegate,
                        service: "ipfs".into()
                    },
                    0,
                    &stranger
                )),
                Err(Reject::DelegateTaken)
            );
            reg.apply(&SignedTx::new(pin("p1"), 0, &token))
                .expect("pin");
        }
        let reg = LocalRegistry::open(&path).expect("reopen");
        assert_eq!(
            reg.grant(&delegate).map(|g| g.owner),
            Some(owner.verifying_key().to_bytes())
        );
        let all = reg.deployments();
        assert_eq!(
            all["p1"].owner,
            owner.verifying_key().to_bytes(),
            "owned by the grantor"
        );
        // The delegate may not touch the owner's other services.
        reg.apply(&SignedTx::new(spec("shop", "a"), 1, &owner))
            .expect("owner's zone");
        assert_eq!(
            reg.apply(&SignedTx::new(spec("shop", "b"), 1, &token)),
            Err(Reject::NotDeploymentOwner("shop".into()))
        );
        assert_eq!(
            reg.apply(&SignedTx::new(
                Tx::Undeploy {
                    name: "shop".into()
                },
                1,
                &token
            )),
            Err(Reject::NotDeploymentOwner("shop".into()))
        );
        reg.apply(&SignedTx::new(
            Tx::Undeploy { name: "p1".into() },
            1,
            &token,
        ))
        .expect("the delegate removes a pin");
        // Revoked: the delegate's pins are its own account's again.
        reg.apply(&SignedTx::new(Tx::Revoke { delegate }, 2, &owner))
            .expect("revoke");
        assert!(reg.grant(&delegate).is_none());
        reg.apply(&SignedTx::new(pin("p2"), 2, &token))
            .expect("pin");
        assert_eq!(reg.deployments()["p2"].owner, delegate);
    }
}
