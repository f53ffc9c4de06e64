//! The deployments API on a node: `POST /deployments` takes an owner-signed
//! transaction (`Tx::Deploy` or `Tx::Undeploy`), `GET /deployments[/{name}]`
//! lists them with their placement and health, `GET
//! /deployments/_account/{id}` gives an owner's next nonce.
//!
//! Where they are recorded: in the replicated ledger when the node runs one
//! (the transaction goes to its mempool, 202, and is ordered like any other),
//! else in the node's own database (`deployments.redb`, applied at once, 200).
//! Either way the rules are the ledger's (`State::apply`): signature, nonce,
//! owner. Before either, the node checks the spec with the service's own
//! checks, so a malformed spec is refused with what is wrong and never
//! recorded.
//!
//! Placement is computed here from the live, verified members (the pure
//! function in `controlplane::placement`), the same on every node.

use std::sync::Arc;

use controlplane::chain::Chain;
use controlplane::cluster::Cluster;
use controlplane::deploy::LocalRegistry;
use controlplane::ledger::{self, Deployment, Reject, SignedTx, Tx};
use controlplane::placement::{self, Candidate};
use dataplane::http::{DeployRoute, Status};
use service_api::Reply;

/// The services a deployment may name, with their spec checks. A site's
/// live version must be in `store` whole (the client uploads it first), its
/// manifest valid: a deploy that stopped half-way is refused here and
/// changes nothing.
pub fn check_spec(
    service: &str,
    spec: &[u8],
    store: &dataplane::store::Store,
) -> Result<(), String> {
    match service {
        "cdn" => tessera_cdn::ZoneSpec::parse(spec).map(|_| ()),
        "site" => {
            let spec = tessera_hosting::SiteSpec::parse(spec)?;
            let live =
                dataplane::http::parse_hex32(spec.live.as_bytes()).ok_or("live: not a hash")?;
            let read = |hash: &[u8; 32]| -> Option<Vec<u8>> {
                let (file, size) = store.open_blob(&dataplane::BlobHash(*hash)).ok()?;
                if size > tessera_hosting::MAX_MANIFEST_BYTES as u64 {
                    return None;
                }
                let mut out = vec![0u8; size as usize];
                std::os::unix::fs::FileExt::read_exact_at(&file, &mut out, 0).ok()?;
                Some(out)
            };
            let bytes = read(&live).ok_or_else(|| {
                format!(
                    "version {} is not on this node: upload the manifest and its files first",
                    spec.live
                )
            })?;
            let manifest = tessera_hosting::Manifest::parse(&bytes)?;
            let missing = manifest
                .blobs()
                .filter(|h| !matches!(store.info(&dataplane::BlobHash(*h)), Ok(Some(_))))
                .count();
            if missing > 0 {
                return Err(format!(
                    "version {}: {missing} of its files are not on this node: upload them first",
                    spec.live
                ));
            }
            Ok(())
        }
        "function" => {
            let spec = tessera_functions::FunctionSpec::parse(spec)?;
            let (file, size) = store
                .open_blob(&dataplane::BlobHash(spec.code_hash()))
                .map_err(|_| {
                    format!(
                        "the script {} is not on this node: upload it first",
                        spec.code
                    )
                })?;
            if size > tessera_functions::MAX_COMPONENT_BYTES {
                return Err(format!(
                    "the script is {size} bytes; at most {}",
                    tessera_functions::MAX_COMPONENT_BYTES
                ));
            }
            let mut source = vec![0u8; size as usize];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut source, 0)
                .map_err(|e| format!("cannot read the script: {e}"))?;
            if spec.kind == "wasm" {
                // Compiled (seconds for a large component) by the service's
                // watcher, which refuses it there if it does not link.
                return if tessera_functions::wasm::is_wasm(&source) {
                    Ok(())
                } else {
                    Err("kind = \"wasm\", but the code is not WebAssembly".into())
                };
            }
            tessera_functions::check_script("worker", &source)
        }
        "ipfs" => tessera_ipfs::pins::PinSpec::parse(spec).map(|_| ()),
        other => Err(format!(
            "there is no service named {other:?} (services: cdn, site, function, ipfs)"
        )),
    }
}

enum Record {
    Local(Box<LocalRegistry>),
    Ledger(Arc<Chain>),
}

pub struct Deployments {
    record: Record,
    /// Held while a service's delegated transaction is signed and recorded
    /// (with a ledger: until it is committed), so two in a row never reuse
    /// a nonce.
    delegated: std::sync::Mutex<()>,
    cluster: Arc<Cluster>,
    /// Specs are stored content-addressed too (served at `/blobs/{spec_hash}`).
    store: Arc<dataplane::store::Store>,
}

fn json(status: Status, v: serde_json::Value) -> Reply {
    Reply::new(status, "application/json", format!("{v}\n"))
}

fn text(status: Status, t: &str) -> Reply {
    Reply::text(status, &format!("{t}\n"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Deployments {
    pub fn open(
        data_dir: &std::path::Path,
        store: Arc<dataplane::store::Store>,
        cluster: Arc<Cluster>,
        chain: Option<Arc<Chain>>,
    ) -> anyhow::Result<Deployments> {
        let record = match chain {
            Some(chain) => Record::Ledger(chain),
            None => {
                let path = data_dir.join("deployments.redb");
                Record::Local(Box::new(LocalRegistry::open(&path).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot open the deployments database {}: {e}",
                        path.display()
                    )
                })?))
            }
        };
        Ok(Deployments {
            record,
            delegated: std::sync::Mutex::new(()),
            cluster,
            store,
        })
    }

    fn all(&self) -> std::collections::BTreeMap<String, Deployment> {
        match &self.record {
            Record::Local(r) => r.deployments(),
            Record::Ledger(c) => c.with_state(|s| s.deployments.clone()),
        }
    }

    fn nonce(&self, id: &[u8; 32]) -> u64 {
        match &self.record {
            Record::Local(r) => r.nonce(id),
            Record::Ledger(c) => c.with_state(|s| s.nonces.get(id).copied().unwrap_or(0)),
        }
    }

    /// On the store-I/O pool: one API request.
    pub fn answer(&self, route: DeployRoute, body: Option<Vec<u8>>) -> Reply {
        match (route, body) {
            (DeployRoute::All, Some(body)) => self.submit(&body),
            (DeployRoute::All, None) => {
                let view = self.view();
                let list: Vec<serde_json::Value> = self
                    .all()
                    .iter()
                    .map(|(name, d)| describe(name, d, &view))
                    .collect();
                json(Status::Ok, serde_json::json!({ "deployments": list }))
            }
            (DeployRoute::One(name), _) => match self.all().get(name.as_str()) {
                Some(d) => json(Status::Ok, describe(name.as_str(), d, &self.view())),
                None => text(
                    Status::NotFound,
                    &format!("no deployment named {}", name.as_str()),
                ),
            },
            (DeployRoute::Account(id), _) => {
                json(Status::Ok, serde_json::json!({ "nonce": self.nonce(&id) }))
            }
            (DeployRoute::Unknown, _) => text(
                Status::NotFound,
                "deployment routes: /deployments, /deployments/{name}, /deployments/_account/{id}",
            ),
        }
    }

    fn submit(&self, body: &[u8]) -> Reply {
        let stx = match SignedTx::decode(body) {
            Ok(stx) => stx,
            Err(e) => return text(Status::BadRequest, &format!("transaction refused: {e}")),
        };
        let name = match &stx.tx {
            Tx::Deploy(d) => {
                if let Err(e) = ledger::check_deploy_spec(d) {
                    return text(Status::BadRequest, &format!("deployment refused: {e}"));
                }
                if let Err(why) = check_spec(&d.service, &d.spec, &self.store) {
                    return text(
                        Status::BadRequest,
                        &format!("deployment refused: {}: {why}", d.service),
                    );
                }
                if let Err(e) = self.store.put_reader(&d.spec[..]) {
                    tracing::warn!("cannot store the spec of {}: {e}", d.name);
                }
                d.name.clone()
            }
            Tx::Undeploy { name } => name.clone(),
            Tx::Grant { service, .. } => format!("grant:{service}"),
            Tx::Revoke { .. } => "revoke".into(),
            _ => return text(
                Status::BadRequest,
                "transaction refused: /deployments takes Deploy, Undeploy, Grant and Revoke only",
            ),
        };
        if !stx.verify() {
            return text(
                Status::BadRequest,
                &format!("transaction refused: {}", Reject::BadSignature),
            );
        }
        match &self.record {
            Record::Local(r) => match r.apply(&stx) {
                Ok(()) => {
                    let all = r.deployments();
                    let version = all.get(&name).map_or(0, |d| d.version);
                    json(
                        Status::Ok,
                        serde_json::json!({ "name": name, "version": version, "recorded": true }),
                    )
                }
                Err(e) => text(refusal_status(&e), &format!("transaction refused: {e}")),
            },
            Record::Ledger(chain) => {
                // Refused at once if the committed state would refuse it.
                let mut check = chain.with_state(|s| ledger::State {
                    deployments: s.deployments.clone(),
                    nonces: s.nonces.clone(),
                    grants: s.grants.clone(),
                    ..ledger::State::default()
                });
                let params = ledger::Params {
                    price_per_byte: 0,
                    dev_deposits: false,
                    epoch_ms: u64::MAX,
                    committee_size: 0,
                    min_stake: 0,
                };
                if let Err(e) = check.apply(&params, &stx) {
                    return text(refusal_status(&e), &format!("transaction refused: {e}"));
                }
                match chain.submit(body, false) {
                    Ok(()) => json(
                        Status::Accepted,
                        serde_json::json!({ "name": name, "queued": true }),
                    ),
                    Err(why) => text(Status::BadRequest, &format!("transaction refused: {why}")),
                }
            }
        }
    }

    /// The live, verified members as placement candidates.
    fn view(&self) -> View {
        let members = self.cluster.members();
        let reputation = match &self.record {
            Record::Ledger(c) => c.with_state(|s| s.reputation.clone()),
            Record::Local(_) => Default::default(),
        };
        let candidates = members
            .iter()
            .filter(|m| m.state == "alive" && m.verified)
            .map(|m| Candidate {
                id: m.id.clone(),
                region: m.region.clone(),
                load: m.load_permille.unwrap_or(0),
                reputation: dataplane::http::parse_hex32(m.id.as_bytes())
                    .and_then(|k| reputation.get(&k).copied())
                    .unwrap_or(1000),
            })
            .collect();
        View {
            candidates,
            members,
        }
    }
}

impl Deployments {
    fn grant(&self, delegate: &[u8; 32]) -> Option<ledger::Grant> {
        match &self.record {
            Record::Local(r) => r.grant(delegate),
            Record::Ledger(c) => c.with_state(|s| s.grants.get(delegate).cloned()),
        }
    }
}

impl service_api::Deployments for Deployments {
    fn delegate(&self, seed: &[u8; 32], service: &str) -> Option<(String, String)> {
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        let id = key.verifying_key().to_bytes();
        let g = self.grant(&id)?;
        (g.service == service).then(|| (hex(&id), hex(&g.owner)))
    }

    fn change_as(&self, seed: &[u8; 32], change: &service_api::Change) -> Result<(), String> {
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        let id = key.verifying_key().to_bytes();
        let tx = match &change.spec {
            Some(spec) => Tx::Deploy(ledger::DeploySpec {
                name: change.name.clone(),
                service: change.service.clone(),
                spec: spec.clone(),
                replicas: change.replicas,
                regions: change.regions.clone(),
            }),
            None => Tx::Undeploy {
                name: change.name.clone(),
            },
        };
        let _one_at_a_time = self.delegated.lock().unwrap_or_else(|p| p.into_inner());
        let nonce = self.nonce(&id);
        let wire = SignedTx::new(tx, nonce, &key).encode();
        let reply = self.submit(&wire);
        if reply.status.code() >= 300 {
            return Err(String::from_utf8_lossy(reply.body.bytes())
                .trim()
                .to_string());
        }
        // Queued for the ledger: the next one needs this one's nonce spent.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.nonce(&id) <= nonce {
            if std::time::Instant::now() > deadline {
                return Err("the ledger has not committed the change within 30 s".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(())
    }

    fn of(&self, service: &str) -> Vec<service_api::Instance> {
        let view = self.view();
        let me = self.cluster.id().to_string();
        let rtt = |addr: &std::net::SocketAddr| {
            view.members
                .iter()
                .find(|m| m.addr == *addr)
                .and_then(|m| m.rtt_ms.or(m.est_rtt_ms))
                .unwrap_or(f64::MAX)
        };
        self.all()
            .into_iter()
            .filter(|(_, d)| d.spec.service == service)
            .map(|(name, d)| {
                let p = place(&name, &d, &view);
                let mut elsewhere: Vec<std::net::SocketAddr> = p
                    .nodes
                    .iter()
                    .filter(|id| **id != me)
                    .filter_map(|id| view.members.iter().find(|m| m.id == *id))
                    .map(|m| m.addr)
                    .collect();
                elsewhere.sort_by(|a, b| rtt(a).total_cmp(&rtt(b)));
                service_api::Instance {
                    version: d.version,
                    spec: d.spec.spec.clone(),
                    spec_hash: d.spec_hash,
                    owner: hex(&d.owner),
                    here: p.nodes.contains(&me),
                    elsewhere,
                    name,
                }
            })
            .collect()
    }
}

fn place(name: &str, d: &Deployment, view: &View) -> placement::Placement {
    placement::place(
        placement::Ask {
            name,
            replicas: d.spec.replicas as usize,
            regions: &d.spec.regions,
        },
        &view.candidates,
    )
}

fn refusal_status(e: &Reject) -> Status {
    match e {
        Reject::NotDeploymentOwner(_) => Status::Forbidden,
        Reject::NoSuchDeployment(_) => Status::NotFound,
        _ => Status::BadRequest,
    }
}

struct View {
    candidates: Vec<Candidate>,
    members: Vec<controlplane::cluster::MemberInfo>,
}

/// A deployment as the API shows it: its record, where it is placed, and the
/// health of that placement.
fn describe(name: &str, d: &Deployment, view: &View) -> serde_json::Value {
    let p = place(name, d, view);
    let nodes: Vec<serde_json::Value> = p
        .nodes
        .iter()
        .filter_map(|id| view.members.iter().find(|m| m.id == *id))
        .map(|m| {
            serde_json::json!({
                "id": m.id,
                "addr": m.addr.to_string(),
                "region": m.region,
                "state": m.state,
            })
        })
        .collect();
    let health = match (p.nodes.len(), p.missing) {
        (0, _) => "unplaced",
        (_, 0) => "placed",
        _ => "degraded",
    };
    serde_json::json!({
        "name": name,
        "service": d.spec.service,
        "owner": hex(&d.owner),
        "version": d.version,
        "replicas": d.spec.replicas,
        "regions": d.spec.regions,
        "spec_hash": hex(&d.spec_hash),
        "spec": String::from_utf8_lossy(&d.spec.spec),
        "placement": nodes,
        "missing": p.missing,
        "health": health,
    })
}
