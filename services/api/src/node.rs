//! What the node lends a service: the store, the cluster view, the ledger, its
//! own config section, data directory and metrics. A service gets one [`Node`]
//! when the binary builds it, and keeps what it needs of it.
//!
//! Every method here may block (disk, peers, consensus): call them from
//! [`crate::Service::handle`] or a thread of the service's own, never from
//! [`crate::Service::decide`].

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A blob's BLAKE3 hash.
pub type Hash = [u8; 32];

/// The node's content-addressed store.
pub trait BlobStore: Send + Sync {
    /// The blob's size, if the store holds it.
    fn size(&self, hash: &Hash) -> Option<u64>;
    /// Up to `len` bytes of the blob from `offset` (fewer at its end).
    fn read(&self, hash: &Hash, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Stores what `from` yields; its hash and size. Stored blobs are verified
    /// when served like any other.
    fn put(&self, from: &mut dyn io::Read) -> io::Result<(Hash, u64)>;
    /// Stores what `from` yields only if it hashes to `expected` (else an
    /// `InvalidData` error and nothing is kept): content fetched from
    /// somewhere untrusted under a hash somebody vouched for.
    fn put_expecting(&self, expected: &Hash, from: &mut dyn io::Read) -> io::Result<u64>;
    /// Pins blobs the store holds (never evicted to make room) or unpins
    /// them, in one write; blobs it lacks are passed over. How many it holds.
    /// One flag per blob, shared by every service: a service unpins only
    /// what it pinned and no longer needs.
    fn pin(&self, hashes: &[Hash], pinned: bool) -> io::Result<usize> {
        let _ = (hashes, pinned);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// A cluster member as a service sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Node id (ed25519 public key), hex.
    pub id: String,
    /// Its client-facing address.
    pub addr: SocketAddr,
    pub region: String,
    /// Alive by gossip and its identity verified.
    pub alive: bool,
    /// Measured round trip, ms.
    pub rtt_ms: Option<f64>,
}

/// The cluster as this node sees it.
/// What [`ClusterView::fetch_delta`] moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    /// Bytes that came over the network (the hash tree, the changed groups
    /// with their proofs; everything when the fetch fell back to a whole one).
    pub fetched: u64,
    /// Bytes taken from the base, unchanged.
    pub reused: u64,
    /// The blob was here already: nothing moved.
    pub existed: bool,
}

pub trait ClusterView: Send + Sync {
    /// This node's id, hex.
    fn node_id(&self) -> String;
    /// Every member this node knows of, itself left out.
    fn members(&self) -> Vec<Member>;
    /// The nodes that should hold `hash` (rendezvous over live members), best
    /// first for this node.
    fn homes(&self, hash: &Hash) -> Vec<Member>;
    /// Fetches a blob this node lacks from its peers into the store, every
    /// chunk group verified on arrival; true once stored.
    fn fetch(&self, hash: &Hash) -> bool;
    /// Fetches `hash` from the node at `from` into the store, reusing every
    /// chunk group of `base` (an earlier version held here) that did not
    /// change: only the blob's hash tree and its changed 16 KiB groups cross
    /// the network, each checked against `hash`. Falls back to
    /// [`ClusterView::fetch`] when `from` cannot serve the parts. None when the
    /// blob could not be stored.
    fn fetch_delta(&self, hash: &Hash, base: Option<&Hash>, from: SocketAddr) -> Option<Delta> {
        let _ = (base, from);
        self.fetch(hash).then_some(Delta::default())
    }
    /// Opens a box sealed to this node's key (libsodium's `crypto_box_seal`
    /// to the X25519 form of the node's ed25519 key); None if it does not
    /// open. What a deployer seals to nodes (a function's secrets).
    fn unseal(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let _ = sealed;
        None
    }
    /// Seals `plain` to the node `node` (id, hex): only its key opens it.
    fn seal_to(&self, node: &str, plain: &[u8]) -> Option<Vec<u8>> {
        let _ = (node, plain);
        None
    }
    /// Headers that sign a request from this node to another (this node's
    /// id, the time, an ed25519 signature over method, path and time). The
    /// body is not covered: a service that needs it signed puts its hash in
    /// the path. Empty where the node is in no cluster.
    fn sign_request(&self, method: &str, path: &str) -> Vec<(String, String)> {
        let _ = (method, path);
        Vec::new()
    }
    /// The id of the live member that signed a request, if its signature
    /// checks out (made by [`ClusterView::sign_request`], within a minute of
    /// this node's clock); `header` looks up the request's headers.
    fn signed_by(
        &self,
        method: &str,
        path: &str,
        header: &dyn Fn(&str) -> Option<Vec<u8>>,
    ) -> Option<String> {
        let _ = (method, path, header);
        None
    }
}

/// The network's replicated ledger.
pub trait Ledger: Send + Sync {
    /// Whether this node takes part in a ledger (else every call is an Err).
    fn running(&self) -> bool;
    /// Submits a signed transaction (the ledger's wire form, as `POST
    /// /ledger/tx` takes it); Ok once it is queued for ordering, Err(why) when
    /// the committed state refuses it.
    fn submit(&self, tx: &[u8]) -> Result<(), String>;
    /// Reads committed state as JSON, as `GET /ledger/{what}` answers:
    /// `status`, `account/{id}`, `rewards/{epoch}`, `reputation`.
    fn read(&self, what: &str) -> Result<String, String>;
}

/// A deployment of a service (a CDN zone, a site, ...), as its service sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    pub version: u64,
    /// The spec as its owner wrote it (the service's own format).
    pub spec: Vec<u8>,
    /// BLAKE3 of `spec`.
    pub spec_hash: Hash,
    /// The owner's key, hex.
    pub owner: String,
    /// Placement chose this node to run it.
    pub here: bool,
    /// The other nodes placement chose (client-facing addresses), nearest
    /// first by measured round trip.
    pub elsewhere: Vec<SocketAddr>,
}

/// A change to a deployment that a service makes for a customer, signed with
/// a key the customer's account granted (see [`Deployments::change_as`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub service: String,
    /// The new spec; None removes the deployment.
    pub spec: Option<Vec<u8>>,
    pub replicas: u16,
    pub regions: Vec<String>,
}

/// The network's deployments and their placement.
pub trait Deployments: Send + Sync {
    /// Every deployment of `service` (placed here or not).
    fn of(&self, service: &str) -> Vec<Instance>;
    /// The account a delegated key acts for in `service`: the key (an
    /// ed25519 seed, what a bearer token carries) and the owner's id, both
    /// hex, when the owner granted that key for that service; None else.
    fn delegate(&self, seed: &[u8; 32], service: &str) -> Option<(String, String)> {
        let _ = (seed, service);
        None
    }
    /// Records `change`, signed with the delegated key `seed`, under the
    /// same rules as an owner's own deploy (the owner is the account that
    /// granted the key). Ok once recorded or queued for the ledger.
    fn change_as(&self, seed: &[u8; 32], change: &Change) -> Result<(), String> {
        let _ = (seed, change);
        Err("this node records no deployments".into())
    }
}

/// What a node without a cluster or ledger lends (tests, a node on port 0).
pub struct Alone;

impl Deployments for Alone {
    fn of(&self, _service: &str) -> Vec<Instance> {
        Vec::new()
    }
}

impl ClusterView for Alone {
    fn node_id(&self) -> String {
        String::new()
    }
    fn members(&self) -> Vec<Member> {
        Vec::new()
    }
    fn homes(&self, _hash: &Hash) -> Vec<Member> {
        Vec::new()
    }
    fn fetch(&self, _hash: &Hash) -> bool {
        false
    }
}

impl Ledger for Alone {
    fn running(&self) -> bool {
        false
    }
    fn submit(&self, _tx: &[u8]) -> Result<(), String> {
        Err("this node runs no ledger".into())
    }
    fn read(&self, _what: &str) -> Result<String, String> {
        Err("this node runs no ledger".into())
    }
}

/// A service's own metrics, rendered in `/metrics` as
/// `tessera_{service}_{name}{service="{service}"}`. Register them when the
/// service is built; updating one is an atomic add.
#[derive(Clone, Default)]
pub struct Metrics {
    list: Arc<Mutex<Vec<Metric>>>,
    /// Renderers of metrics with labels of the service's own (per zone, per
    /// site, ...), called at each scrape.
    families: Arc<Mutex<Vec<Family>>>,
}

/// Writes Prometheus text lines for labelled metrics (see [`Metrics::family`]).
pub type Family = Arc<dyn Fn(&mut String) + Send + Sync>;

struct Metric {
    name: String,
    help: String,
    gauge: bool,
    value: Arc<AtomicU64>,
}

impl Metrics {
    /// A counter (`_total` is appended to its name).
    pub fn counter(&self, name: &str, help: &str) -> Arc<AtomicU64> {
        self.register(format!("{name}_total"), help, false)
    }

    pub fn gauge(&self, name: &str, help: &str) -> Arc<AtomicU64> {
        self.register(name.to_string(), help, true)
    }

    fn register(&self, name: String, help: &str, gauge: bool) -> Arc<AtomicU64> {
        let value = Arc::new(AtomicU64::new(0));
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.push(Metric {
            name,
            help: help.to_string(),
            gauge,
            value: value.clone(),
        });
        value
    }

    /// Metrics whose labels the service knows only as it runs (a zone, a
    /// site): `render` is called at each scrape and writes whole Prometheus
    /// lines, `# HELP`/`# TYPE` included.
    pub fn family(&self, render: Family) {
        let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        families.push(render);
    }

    /// Prometheus text for the service named `service`.
    pub fn render(&self, service: &str, out: &mut String) {
        for f in self
            .families
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            f(out);
        }
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        let prefix = service.replace('-', "_");
        for m in list.iter() {
            let kind = if m.gauge { "gauge" } else { "counter" };
            let full = format!("tessera_{prefix}_{}", m.name);
            let _ = writeln!(out, "# HELP {full} {}", m.help);
            let _ = writeln!(out, "# TYPE {full} {kind}");
            let _ = writeln!(
                out,
                "{full}{{service=\"{service}\"}} {}",
                m.value.load(Ordering::Relaxed)
            );
        }
    }
}

/// Everything the node lends one service.
#[derive(Clone)]
pub struct Node {
    pub store: Arc<dyn BlobStore>,
    pub cluster: Arc<dyn ClusterView>,
    pub ledger: Arc<dyn Ledger>,
    /// The deployments of every service and where they are placed.
    pub deployments: Arc<dyn Deployments>,
    /// The operator asked for redirects rather than fetching on this node's
    /// behalf (`on_miss = "redirect"`): a request for a deployment that runs
    /// elsewhere is answered `307` to that node instead of being proxied.
    pub redirect_elsewhere: bool,
    /// The service's section of the node's config file (`[services.NAME]`),
    /// empty when there is none.
    pub config: toml::Table,
    /// This node's client-facing address, for a service that asks another
    /// service on the same node over HTTP (a CDN zone whose origin is a
    /// function). None where the node has none (tests).
    pub listen: Option<SocketAddr>,
    /// A directory of the service's own (`{data_dir}/services/{name}`),
    /// created before the service is built.
    pub data_dir: PathBuf,
    pub metrics: Metrics,
}

impl Node {
    /// The config section as the service's own type; Err says what is wrong,
    /// in words for the operator.
    pub fn config<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        toml::Value::Table(self.config.clone())
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_the_service_name() {
        let m = Metrics::default();
        let hits = m.counter("hits", "Cache hits.");
        let size = m.gauge("entries", "Entries held.");
        hits.fetch_add(3, Ordering::Relaxed);
        size.store(7, Ordering::Relaxed);
        let mut out = String::new();
        m.render("my-cdn", &mut out);
        assert!(out.contains("# TYPE tessera_my_cdn_hits_total counter"));
        assert!(out.contains("tessera_my_cdn_hits_total{service=\"my-cdn\"} 3"));
        assert!(out.contains("# TYPE tessera_my_cdn_entries gauge"));
        assert!(out.contains("tessera_my_cdn_entries{service=\"my-cdn\"} 7"));
    }

    #[test]
    fn config_sections_deserialize_or_say_why_not() {
        #[derive(serde::Deserialize)]
        struct Conf {
            greeting: String,
        }
        let mut node = Node {
            store: Arc::new(NoStore),
            cluster: Arc::new(Alone),
            ledger: Arc::new(Alone),
            deployments: Arc::new(Alone),
            redirect_elsewhere: false,
            listen: None,
            config: toml::from_str("greeting = \"hi\"").expect("toml"),
            data_dir: PathBuf::new(),
            metrics: Metrics::default(),
        };
        assert_eq!(node.config::<Conf>().expect("valid").greeting, "hi");
        node.config = toml::from_str("greeting = 3").expect("toml");
        let why = node.config::<Conf>().err().expect("invalid");
        assert!(why.contains("string"), "{why}");
    }

    struct NoStore;
    impl BlobStore for NoStore {
        fn size(&self, _: &Hash) -> Option<u64> {
            None
        }
        fn read(&self, _: &Hash, _: u64, _: usize) -> io::Result<Vec<u8>> {
            Err(io::ErrorKind::NotFound.into())
        }
        fn put(&self, _: &mut dyn io::Read) -> io::Result<(Hash, u64)> {
            Err(io::ErrorKind::Unsupported.into())
        }
        fn put_expecting(&self, _: &Hash, _: &mut dyn io::Read) -> io::Result<u64> {
            Err(io::ErrorKind::Unsupported.into())
        }
    }
}
