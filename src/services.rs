//! The services this node runs, and what it lends each of them (the
//! `service-api` crate's [`Node`]): the store, the cluster view, the ledger,
//! its config section, a data directory and its metrics.
//!
//! Which services exist is decided here, in the binary: the data plane knows
//! services only through the `service-api` interface, and no service knows
//! another. Every node runs the CDN (`tessera-cdn`), site hosting
//! (`tessera-hosting`), edge functions (`tessera-functions`) and IPFS
//! (`tessera-ipfs`: the gateway and pinning); the test build (feature
//! `test-services`) adds the ones `TESSERA_TEST_SERVICES` names.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use controlplane::cluster::{Cluster, MemberInfo};
use dataplane::http::{self, Route};
use dataplane::server::{ControlPlane, LedgerCall};
use dataplane::store::Store;
use service_api::{Alone, Built, ClusterView, Hash, Ledger, Member, Metrics, Node};

use controlplane::chain::Chain;

use crate::peering::Peering;

/// The cluster as services see it.
struct NodeCluster {
    cluster: Arc<Cluster>,
    peering: Arc<Peering>,
    store: Arc<Store>,
    replication: usize,
}

fn member(m: &MemberInfo) -> Member {
    Member {
        id: m.id.clone(),
        addr: m.addr,
        region: m.region.clone(),
        alive: m.state == "alive" && m.verified,
        rtt_ms: m.rtt_ms,
    }
}

impl ClusterView for NodeCluster {
    fn node_id(&self) -> String {
        self.cluster.id().to_string()
    }

    fn members(&self) -> Vec<Member> {
        let me = self.node_id();
        self.cluster
            .members()
            .iter()
            .filter(|m| m.id != me)
            .map(member)
            .collect()
    }

    fn homes(&self, hash: &Hash) -> Vec<Member> {
        let members = self.cluster.members();
        controlplane::routing::rank(hash, &members, self.replication, false)
            .into_iter()
            .filter_map(|r| members.iter().find(|m| m.id == r.id).map(member))
            .collect()
    }

    fn fetch(&self, hash: &Hash) -> bool {
        self.peering.fetch_missing(&self.store, hash)
    }

    fn fetch_delta(
        &self,
        hash: &Hash,
        base: Option<&Hash>,
        from: std::net::SocketAddr,
    ) -> Option<service_api::Delta> {
        self.peering.fetch_delta(&self.store, hash, base, from)
    }

    fn unseal(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        self.cluster.unseal(sealed)
    }

    fn seal_to(&self, node: &str, plain: &[u8]) -> Option<Vec<u8>> {
        let id: controlplane::identity::NodeId = node.parse().ok()?;
        id.seal(plain).ok()
    }

    fn sign_request(&self, method: &str, path: &str) -> Vec<(String, String)> {
        let (time, sig) = self
            .cluster
            .sign_request(|t| http::peer_message(method.as_bytes(), path.as_bytes(), t.as_bytes()));
        vec![
            (http::PEER_HEADER.into(), self.cluster.id().to_string()),
            (http::PEER_TIME_HEADER.into(), time),
            (http::PEER_SIG_HEADER.into(), sig),
        ]
    }

    fn signed_by(
        &self,
        method: &str,
        path: &str,
        header: &dyn Fn(&str) -> Option<Vec<u8>>,
    ) -> Option<String> {
        let id = header(&http::PEER_HEADER.to_ascii_lowercase())?;
        let time = header(&http::PEER_TIME_HEADER.to_ascii_lowercase())?;
        let sig = header(&http::PEER_SIG_HEADER.to_ascii_lowercase())?;
        let message = http::peer_message(method.as_bytes(), path.as_bytes(), &time);
        let verify = self.cluster.peer_verifier();
        verify(&id, &time, &sig, &message).then(|| String::from_utf8_lossy(&id).into_owned())
    }
}

/// The ledger as services see it.
struct NodeLedger(Arc<Chain>);

impl Ledger for NodeLedger {
    fn running(&self) -> bool {
        true
    }

    fn submit(&self, tx: &[u8]) -> Result<(), String> {
        let call = LedgerCall {
            route: http::LedgerRoute::Tx,
            body: tx.to_vec(),
            peer: None,
        };
        let reply = crate::ledger::answer(&self.0, call);
        if reply.status.code() < 300 {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&reply.body).trim().to_string())
        }
    }

    fn read(&self, what: &str) -> Result<String, String> {
        let Route::Ledger(route) = http::route(format!("/ledger/{what}").as_bytes()) else {
            return Err(format!("not a ledger path: {what}"));
        };
        if route.is_post() || matches!(route, http::LedgerRoute::Unknown) {
            return Err(format!("not a ledger path: {what}"));
        }
        let reply = crate::ledger::answer(
            &self.0,
            LedgerCall {
                route,
                body: Vec::new(),
                peer: None,
            },
        );
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        if reply.status.code() < 300 {
            Ok(text)
        } else {
            Err(text.trim().to_string())
        }
    }
}

/// What the node has for its services.
pub struct Lend<'a> {
    pub store: Arc<Store>,
    pub control: Arc<dyn ControlPlane>,
    pub cluster: Option<(Arc<Cluster>, Arc<Peering>)>,
    pub chain: Option<Arc<Chain>>,
    pub deployments: Option<Arc<crate::deployments::Deployments>>,
    pub replication: usize,
    pub redirect: bool,
    pub listen: std::net::SocketAddr,
    pub data_dir: &'a Path,
    pub sections: &'a std::collections::BTreeMap<String, service_api::toml::Table>,
}

impl Lend<'_> {
    /// The [`Node`] for the service named `name`: its data directory made.
    fn node(&self, name: &str) -> anyhow::Result<Node> {
        let data_dir = self.data_dir.join("services").join(name);
        std::fs::create_dir_all(&data_dir).with_context(|| {
            format!(
                "service {name}: cannot create its data directory {}",
                data_dir.display()
            )
        })?;
        let cluster: Arc<dyn ClusterView> = match &self.cluster {
            Some((cluster, peering)) => Arc::new(NodeCluster {
                cluster: cluster.clone(),
                peering: peering.clone(),
                store: self.store.clone(),
                replication: self.replication,
            }),
            None => Arc::new(Alone),
        };
        let ledger: Arc<dyn Ledger> = match &self.chain {
            Some(chain) => Arc::new(NodeLedger(chain.clone())),
            None => Arc::new(Alone),
        };
        let deployments: Arc<dyn service_api::Deployments> = match &self.deployments {
            Some(d) => d.clone(),
            None => Arc::new(Alone),
        };
        Ok(Node {
            deployments,
            redirect_elsewhere: self.redirect,
            listen: Some(self.listen),
            store: Arc::new(dataplane::server::services::ServiceStore {
                store: self.store.clone(),
                control: self.control.clone(),
            }),
            cluster,
            ledger,
            config: self.sections.get(name).cloned().unwrap_or_default(),
            data_dir,
            metrics: Metrics::default(),
        })
    }
}

/// A service's constructor: given what the node lends it, the service, or
/// why it cannot start (a bad config section, say), in words for the operator.
pub type Factory = fn(&Node) -> Result<Arc<dyn service_api::Service>, String>;

/// The node's CDN, once built: the ledger duties read what it served.
pub static CDN: std::sync::OnceLock<Arc<tessera_cdn::Cdn>> = std::sync::OnceLock::new();

fn make_cdn(node: &Node) -> Result<Arc<dyn service_api::Service>, String> {
    let cdn = tessera_cdn::Cdn::new(node)?;
    let _ = CDN.set(cdn.clone());
    Ok(cdn)
}

/// The node's site hosting, once built.
pub static SITES: std::sync::OnceLock<Arc<tessera_hosting::Sites>> = std::sync::OnceLock::new();

fn make_sites(node: &Node) -> Result<Arc<dyn service_api::Service>, String> {
    let sites = tessera_hosting::Sites::new(node)?;
    let _ = SITES.set(sites.clone());
    Ok(sites)
}

/// The node's edge functions, once built.
pub static FUNCTIONS: std::sync::OnceLock<Arc<tessera_functions::Functions>> =
    std::sync::OnceLock::new();

fn make_functions(node: &Node) -> Result<Arc<dyn service_api::Service>, String> {
    let functions = tessera_functions::Functions::new(node)?;
    // A function's ctx.revalidate marks stale what the zones it is the
    // origin of (`origin = "fn:NAME"`) cached on this node.
    if let Some(cdn) = CDN.get().cloned() {
        functions.set_revalidator(Arc::new(move |f: &str, kind: &str, what: &str| {
            cdn.revalidate_origin(&format!("fn:{f}"), kind, what)
        }));
    }
    let _ = FUNCTIONS.set(functions.clone());
    Ok(functions)
}

/// The node's IPFS service, once built.
pub static IPFS: std::sync::OnceLock<Arc<tessera_ipfs::Ipfs>> = std::sync::OnceLock::new();

fn make_ipfs(node: &Node) -> Result<Arc<dyn service_api::Service>, String> {
    let ipfs = tessera_ipfs::Ipfs::new(node)?;
    let _ = IPFS.set(ipfs.clone());
    Ok(ipfs)
}

/// Body bytes served per deployment by this node's services since it
/// started (deployment names are unique across services).
pub fn served_bytes() -> Vec<(String, u64)> {
    let mut all = Vec::new();
    if let Some(cdn) = CDN.get() {
        all.extend(cdn.served_bytes());
    }
    if let Some(sites) = SITES.get() {
        all.extend(sites.served_bytes());
    }
    // A function's compute is billed in the same units (see
    // `tessera_functions::UNITS_PER_CPU_MS`).
    if let Some(functions) = FUNCTIONS.get() {
        all.extend(functions.usage_units());
    }
    // A pin's bytes held over time and its bytes served, in the same units
    // (see `tessera_ipfs::pins::UNITS_PER_GIB_HOUR`).
    if let Some(ipfs) = IPFS.get() {
        all.extend(ipfs.usage_units());
    }
    all
}

/// The services to build: (name, constructor). The test build adds the ones
/// `TESSERA_TEST_SERVICES` names.
fn factories() -> Vec<(String, Factory)> {
    let list: Vec<(String, Factory)> = vec![
        ("cdn".into(), make_cdn),
        ("site".into(), make_sites),
        ("function".into(), make_functions),
        ("ipfs".into(), make_ipfs),
    ];
    #[cfg(feature = "test-services")]
    let list = [list, crate::test_services::from_env()].concat();
    list
}

/// Builds every service. Err: the message that stops the node.
pub fn build(lend: &Lend<'_>) -> anyhow::Result<Vec<Built>> {
    for name in lend.sections.keys() {
        if !factories().iter().any(|(n, _)| n == name) {
            anyhow::bail!("[services.{name}] in the config: this node has no service named {name}");
        }
    }
    factories()
        .into_iter()
        .map(|(name, make)| {
            let node = lend.node(&name)?;
            let service = make(&node).map_err(|why| anyhow::anyhow!("service {name}: {why}"))?;
            Ok(Built {
                service,
                metrics: node.metrics,
            })
        })
        .collect()
}
