//! The IPFS Pinning Service API (v1.0.0) and the pins it makes.
//!
//! - **Accounts.** A request carries `Authorization: Bearer <token>`. A token
//!   is `tsr1_` and a delegated ed25519 key (its 32-byte seed, base64url):
//!   the account's owner made it with `tessera ipfs token`, which records a
//!   grant in the ledger (`Tx::Grant`: this key may manage the owner's `ipfs`
//!   deployments). The node asks [`service_api::Deployments::delegate`]
//!   which account the key acts for; no grant, 401. Revoking the grant
//!   revokes the token everywhere.
//! - **A pin is a deployment** of the service `ipfs`, named by its request
//!   id, its spec the pin ([`PinSpec`]: CID, name, origins, meta, when it was
//!   asked for), signed with the token's key. Placement chooses the nodes
//!   (replicas 2 unless `meta` says `replicas`); the origins are kept in the
//!   spec, so in the ledger, for as long as the pin lives, and every node
//!   that saw the pin keeps them for good (`pins.redb`, table `origins`),
//!   after the pin is gone, as where that CID may be fetched from.
//! - **The watcher** fetches each pin placed on this node (whole DAG, every
//!   block verified, from the origins and from peers), pins its blobs so they
//!   are never evicted, and lets go of them when the pin moves away or is
//!   removed (a blob another pin still holds stays pinned). A pin no source
//!   can serve is `failed`, with why, and is tried again every minute.
//! - **Status** is `queued` until the deployment is recorded, then
//!   `pinning`, then `pinned` once every placed node holds it all, or
//!   `failed` when a placed node gave up. Other nodes are asked
//!   (`GET /pins/_status/{id}`) at most once a second per pin, so Kubo
//!   polling every second costs one lookup.
//! - **Billing**: per pin, bytes held × time and bytes served, reported in
//!   the ledger's byte units ([`UNITS_PER_GIB_HOUR`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine as _;
use cid::Cid;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use service_api::{Change, Hash, Method, Node, OwnedRequest, Reply, RequestBody, Status};

use crate::index::Index;
use crate::service::Ipfs;
use crate::{cid_text, parse_cid};

/// The service name pins are deployed under.
pub const SERVICE: &str = "ipfs";
/// What a bearer token begins with.
pub const TOKEN_PREFIX: &str = "tsr1_";
/// Holding 1 GiB for an hour costs what serving this many bytes does.
pub const UNITS_PER_GIB_HOUR: u64 = 1 << 20;
/// The longest pin request body.
const MAX_PIN_BODY: u64 = 64 * 1024;
/// Most origins a pin may name (the spec says nothing; Kubo sends its own
/// addresses, a handful).
pub const MAX_ORIGINS: usize = 20;
/// Most `meta` entries.
pub const MAX_META: usize = 64;
/// How long a status from another node is reused.
const STATUS_TTL: Duration = Duration::from_secs(1);

const HELD: TableDefinition<&str, &[u8]> = TableDefinition::new("held");
/// Root CID (bytes) → the origins any pin of it ever named (JSON list):
/// kept after the pins are gone, so content that fell off IPFS can still
/// be fetched from where it once was.
const ORIGINS: TableDefinition<&[u8], &str> = TableDefinition::new("origins");
/// Most origins kept per CID (the first named win).
const MAX_KEPT_ORIGINS: usize = 32;

/// Adds the origins in `new` that `kept` lacks, up to [`MAX_KEPT_ORIGINS`];
/// whether `kept` changed.
fn merge_origins(kept: &mut Vec<String>, new: &[String]) -> bool {
    let mut changed = false;
    for o in new {
        if kept.len() >= MAX_KEPT_ORIGINS {
            break;
        }
        if !kept.contains(o) {
            kept.push(o.clone());
            changed = true;
        }
    }
    changed
}

/// A pin as recorded in its deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinSpec {
    pub cid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub origins: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// RFC 3339, when the pin was asked for.
    pub created: String,
}

impl PinSpec {
    /// Parses and checks a pin's spec; Err says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<PinSpec, String> {
        let spec: PinSpec = service_api::parse_spec(bytes)?;
        spec.check()?;
        Ok(spec)
    }

    pub fn check(&self) -> Result<(), String> {
        parse_cid(self.cid.as_bytes()).ok_or_else(|| format!("{:?} is not a CID", self.cid))?;
        if self.name.as_ref().is_some_and(|n| n.len() > 255) {
            return Err("a name is at most 255 characters".into());
        }
        if self.origins.len() > MAX_ORIGINS {
            return Err(format!("at most {MAX_ORIGINS} origins"));
        }
        if let Some(o) = self
            .origins
            .iter()
            .find(|o| o.len() > 1024 || origin_url(o).is_none())
        {
            return Err(format!(
                "origin {o:?} is not an HTTP(S) URL or an /ip4|/ip6|/dns…/tcp/…/http(s) multiaddr"
            ));
        }
        if self.meta.len() > MAX_META
            || self
                .meta
                .iter()
                .any(|(k, v)| k.len() > 255 || v.len() > 2048)
        {
            return Err(format!(
                "at most {MAX_META} meta entries, keys of 255 and values of 2048 bytes"
            ));
        }
        Ok(())
    }

    pub fn root(&self) -> Option<Cid> {
        parse_cid(self.cid.as_bytes())
    }
}

/// An origin as a base URL to fetch from over the trustless gateway
/// protocol: an `http(s)://` URL as it is, or a multiaddr that says
/// `/http` or `/https` (`/ip4/1.2.3.4/tcp/8080/http`, `/dns4/host/tcp/443/https`,
/// a `/p2p/…` tail ignored). A libp2p-only multiaddr (no `/http`) is None:
/// this node speaks no bitswap.
pub fn origin_url(origin: &str) -> Option<String> {
    if let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    {
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return None;
        }
        return Some(origin.trim_end_matches('/').to_string());
    }
    let parts: Vec<&str> = origin.split('/').collect();
    if parts.len() < 6 || !parts[0].is_empty() {
        return None;
    }
    let host = match parts[1] {
        "ip4" => parts[2].parse::<std::net::Ipv4Addr>().ok()?.to_string(),
        "ip6" => format!("[{}]", parts[2].parse::<std::net::Ipv6Addr>().ok()?),
        "dns" | "dns4" | "dns6" => {
            let h = parts[2];
            if h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                return None;
            }
            h.to_string()
        }
        _ => return None,
    };
    if parts[3] != "tcp" {
        return None;
    }
    let port: u16 = parts[4].parse().ok()?;
    let scheme = match parts[5] {
        "http" => "http",
        "https" | "tls" => "https",
        _ => return None,
    };
    Some(format!("{scheme}://{host}:{port}"))
}

/// A pin's state on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    Pinning,
    Pinned { bytes: u64, blocks: u64 },
    Failed(String),
}

/// What the watcher knows of a pin placed here.
struct Held {
    spec_hash: Hash,
    state: Local,
    /// When a failed fetch may be tried again.
    retry_at: Option<Instant>,
    running: bool,
}

/// What the API and the gateway read of the pins (one snapshot per round).
#[derive(Default)]
struct View {
    /// Root → origins, over every pin of the network.
    origins: HashMap<Cid, Vec<String>>,
    /// Root → the nodes its pins are placed on (client addresses).
    placed: HashMap<Cid, Vec<SocketAddr>>,
    /// Root → pins of it (for billing what is served).
    names: HashMap<Cid, String>,
}

#[derive(Default)]
struct Use {
    /// Byte-milliseconds held, not yet turned into units.
    held_byte_ms: u128,
    units: u64,
}

pub struct Pins {
    node: Node,
    index: Arc<Index>,
    db: redb::Database,
    held: Mutex<HashMap<String, Held>>,
    view: ArcSwap<View>,
    /// Pins asked for here that the deployments do not show yet (the ledger
    /// orders them first): request id → (owner, spec).
    queued: Mutex<HashMap<String, (String, PinSpec, Instant)>>,
    /// Other nodes' answers for their part of a pin, cached a second.
    remote: Mutex<HashMap<String, RemoteStatus>>,
    /// What `ORIGINS` holds.
    kept_origins: ArcSwap<HashMap<Cid, Vec<String>>>,
    /// Raw blocks the core serves, counted for the pins that hold them.
    meter: ArcSwap<CoreMeter>,
    /// The pins held here changed: `meter` is rebuilt at the next round.
    meter_stale: std::sync::atomic::AtomicBool,
    usage: Mutex<HashMap<String, Use>>,
    /// The service, for the watcher's threads.
    me: Mutex<Weak<Ipfs>>,
    replicas: u16,
    pinned_gauge: Arc<AtomicU64>,
    pinned_bytes: Arc<AtomicU64>,
}

fn now_rfc3339() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let millis = now.subsec_millis();
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn api_error(status: Status, reason: &str, details: &str) -> Reply {
    Reply::new(
        status,
        "application/json",
        format!(
            "{}\n",
            serde_json::json!({"error": {"reason": reason, "details": details}})
        ),
    )
}

fn json(status: Status, v: &serde_json::Value) -> Reply {
    Reply::new(status, "application/json", format!("{v}\n"))
}

fn query_params(query: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &[u8]| -> String {
        let s: Vec<u8> = s
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'%' {
                if let Some(v) = s
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(s[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    query
        .split(|&b| b == b'&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.iter().position(|&b| b == b'=') {
            Some(i) => (decode(&kv[..i]), decode(&kv[i + 1..])),
            None => (decode(kv), String::new()),
        })
        .collect()
}

/// A fresh request id: 26 characters of base32, a valid deployment name.
fn request_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    let enc = spec
        .encoding()
        .unwrap_or_else(|_| data_encoding::BASE32_NOPAD.clone());
    format!("p{}", enc.encode(&bytes))
}

/// The ed25519 seed a bearer token carries.
pub fn token_seed(token: &str) -> Option<[u8; 32]> {
    let b64 = token.strip_prefix(TOKEN_PREFIX)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .ok()?;
    bytes.try_into().ok()
}

/// A bearer token for a delegated key's seed.
pub fn token_for(seed: &[u8; 32]) -> String {
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(seed)
    )
}

impl Pins {
    pub(crate) fn new(node: &Node, index: Arc<Index>) -> Result<Arc<Pins>, String> {
        let db = redb::Database::create(node.data_dir.join("pins.redb"))
            .map_err(|e| format!("cannot open the pins' database: {e}"))?;
        {
            let w = db.begin_write().map_err(|e| e.to_string())?;
            w.open_table(HELD).map_err(|e| e.to_string())?;
            w.open_table(ORIGINS).map_err(|e| e.to_string())?;
            w.commit().map_err(|e| e.to_string())?;
        }
        let mut kept = HashMap::new();
        {
            let r = db.begin_read().map_err(|e| e.to_string())?;
            let t = r.open_table(ORIGINS).map_err(|e| e.to_string())?;
            for row in t.iter().map_err(|e| e.to_string())? {
                let (k, v) = row.map_err(|e| e.to_string())?;
                if let (Ok(cid), Ok(list)) = (
                    Cid::try_from(k.value()),
                    serde_json::from_str::<Vec<String>>(v.value()),
                ) {
                    kept.insert(cid, list);
                }
            }
        }
        let replicas = node
            .config
            .get("replicas")
            .and_then(|v| v.as_integer())
            .map_or(2, |r| r.clamp(1, 64) as u16);
        Ok(Arc::new(Pins {
            node: node.clone(),
            index,
            db,
            held: Mutex::new(HashMap::new()),
            view: ArcSwap::from_pointee(View::default()),
            queued: Mutex::new(HashMap::new()),
            remote: Mutex::new(HashMap::new()),
            kept_origins: ArcSwap::from_pointee(kept),
            meter: ArcSwap::from_pointee(CoreMeter::default()),
            meter_stale: std::sync::atomic::AtomicBool::new(true),
            usage: Mutex::new(HashMap::new()),
            me: Mutex::new(Weak::new()),
            replicas,
            pinned_gauge: node
                .metrics
                .gauge("pins_pinned", "Pins placed here and held whole."),
            pinned_bytes: node
                .metrics
                .gauge("pinned_bytes", "Bytes of the pins held here."),
        }))
    }

    /// The origins recorded for `root` by any pin of it, now or before.
    pub fn origins_for(&self, root: &Cid) -> Vec<String> {
        let mut out = self
            .view
            .load()
            .origins
            .get(root)
            .cloned()
            .unwrap_or_default();
        if let Some(kept) = self.kept_origins.load().get(root) {
            merge_origins(&mut out, kept);
        }
        out
    }

    /// Records the origins the pins name, for good (`ORIGINS`); written
    /// only when one is new.
    fn keep_origins(&self, now: &HashMap<Cid, Vec<String>>) {
        let kept = self.kept_origins.load();
        let mut changed: Vec<(Cid, Vec<String>)> = Vec::new();
        for (cid, list) in now {
            let old = kept.get(cid);
            // Most rounds change nothing: nothing is copied for them.
            if old
                .is_some_and(|o| o.len() >= MAX_KEPT_ORIGINS || list.iter().all(|x| o.contains(x)))
            {
                continue;
            }
            let mut merged = old.cloned().unwrap_or_default();
            if merge_origins(&mut merged, list) {
                changed.push((*cid, merged));
            }
        }
        if changed.is_empty() {
            return;
        }
        let write = || -> Result<(), String> {
            let w = self.db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut t = w.open_table(ORIGINS).map_err(|e| e.to_string())?;
                for (cid, list) in &changed {
                    let v = serde_json::to_string(list).map_err(|e| e.to_string())?;
                    t.insert(&cid.to_bytes()[..], v.as_str())
                        .map_err(|e| e.to_string())?;
                }
            }
            w.commit().map_err(|e| e.to_string())
        };
        if let Err(why) = write() {
            tracing::warn!("ipfs: cannot record origins: {why}");
            return;
        }
        let mut next = HashMap::clone(&kept);
        next.extend(changed);
        self.kept_origins.store(Arc::new(next));
    }

    /// The nodes pins of `root` are placed on.
    pub fn placed_for(&self, root: &Cid) -> Vec<SocketAddr> {
        self.view
            .load()
            .placed
            .get(root)
            .cloned()
            .unwrap_or_default()
    }

    /// Counts bytes served for the pin of `root`, if there is one.
    pub fn served(&self, root: &Cid, bytes: u64) {
        let view = self.view.load();
        if let Some(name) = view.names.get(root) {
            let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
            usage.entry(name.clone()).or_default().units += bytes;
        }
    }

    /// The core's meter: raw blocks served, per pin.
    pub fn meter(&self) -> arc_swap::Guard<Arc<CoreMeter>> {
        self.meter.load()
    }

    /// Moves what the core counted into the pins' usage; rebuilds the
    /// core's meter when the pins held here changed.
    fn drain_meter(&self) {
        let stale = self.meter_stale.swap(false, Ordering::Relaxed);
        let next = stale.then(|| {
            let mut m = CoreMeter::default();
            for name in self.held_names() {
                let i = m.pins.len();
                for b in self.held_blobs(&name) {
                    m.by_blob.entry(b).or_insert(i);
                }
                m.pins.push((name, AtomicU64::new(0)));
            }
            Arc::new(m)
        });
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        match next {
            Some(m) => self.meter.swap(m).drain(&mut usage),
            None => self.meter.load().drain(&mut usage),
        }
    }

    pub fn usage_units(&self) -> Vec<(String, u64)> {
        self.drain_meter();
        let usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        usage.iter().map(|(n, u)| (n.clone(), u.units)).collect()
    }

    /// The account a request's bearer token acts for, or the 401 to answer.
    pub fn authorize(&self, req: &OwnedRequest) -> Result<([u8; 32], String), Reply> {
        let unauthorized = |details: &str| {
            api_error(Status::Unauthorized, "UNAUTHORIZED", details)
                .header("www-authenticate", "Bearer")
        };
        let Some(auth) = req.header("authorization") else {
            return Err(unauthorized("an Authorization: Bearer token is required"));
        };
        let auth = String::from_utf8_lossy(auth);
        let Some(token) = auth
            .strip_prefix("Bearer ")
            .or_else(|| auth.strip_prefix("bearer "))
        else {
            return Err(unauthorized(
                "the Authorization header is not a Bearer token",
            ));
        };
        let Some(seed) = token_seed(token.trim()) else {
            return Err(unauthorized(
                "not a token of this network (tessera ipfs token makes one)",
            ));
        };
        match self.node.deployments.delegate(&seed, SERVICE) {
            Some((_, owner)) => Ok((seed, owner)),
            None => Err(unauthorized(
                "this token is not granted to an account (or its grant was revoked)",
            )),
        }
    }

    pub fn handle(&self, req: &OwnedRequest, body: RequestBody) -> Reply {
        let path = String::from_utf8_lossy(&req.path).into_owned();
        if let Some(id) = path.strip_prefix("/pins/_status/") {
            return self.local_status(id);
        }
        let (seed, owner) = match self.authorize(req) {
            Ok(a) => a,
            Err(r) => return r,
        };
        let id = path.strip_prefix("/pins/").filter(|s| !s.is_empty());
        match (req.method, id) {
            (Method::Get, None) if path == "/pins" || path == "/pins/" => {
                self.list(&owner, &req.query)
            }
            (Method::Post, None) if path == "/pins" || path == "/pins/" => {
                match read_pin(body) {
                    Ok(pin) => self.add(&seed, &owner, pin, None),
                    Err(r) => r,
                }
            }
            (Method::Get, Some(id)) => match self.find(&owner, id) {
                Some(status) => json(Status::Ok, &status),
                None => api_error(Status::NotFound, "NOT_FOUND", "no pin by that request id"),
            },
            (Method::Post, Some(id)) => {
                if self.find(&owner, id).is_none() {
                    return api_error(Status::NotFound, "NOT_FOUND", "no pin by that request id");
                }
                match read_pin(body) {
                    Ok(pin) => self.add(&seed, &owner, pin, Some(id)),
                    Err(r) => r,
                }
            }
            (Method::Delete, Some(id)) => {
                if self.find(&owner, id).is_none() {
                    return api_error(Status::NotFound, "NOT_FOUND", "no pin by that request id");
                }
                match self.remove(&seed, id) {
                    Ok(()) => Reply::new(Status::Accepted, "text/plain", Vec::new()),
                    Err(why) => api_error(Status::InternalServerError, "INTERNAL_SERVER_ERROR", &why),
                }
            }
            _ => api_error(
                Status::BadRequest,
                "BAD_REQUEST",
                "the Pinning Service API has GET and POST /pins, GET, POST and DELETE /pins/{requestid}",
            ),
        }
    }

    fn add(&self, seed: &[u8; 32], owner: &str, pin: PinRequest, replace: Option<&str>) -> Reply {
        let spec = PinSpec {
            cid: pin.cid.clone(),
            name: pin.name.clone(),
            origins: pin.origins.clone(),
            meta: pin.meta.clone(),
            created: now_rfc3339(),
        };
        if let Err(why) = spec.check() {
            return api_error(Status::BadRequest, "BAD_REQUEST", &why);
        }
        let replicas = pin
            .meta
            .get("replicas")
            .and_then(|r| r.parse::<u16>().ok())
            .unwrap_or(self.replicas)
            .clamp(1, 64);
        let regions: Vec<String> = pin
            .meta
            .get("regions")
            .map(|r| {
                r.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let id = request_id();
        let bytes = serde_json::to_vec(&spec).unwrap_or_default();
        let change = Change {
            name: id.clone(),
            service: SERVICE.into(),
            spec: Some(bytes),
            replicas,
            regions,
        };
        if let Err(why) = self.node.deployments.change_as(seed, &change) {
            return api_error(Status::BadRequest, "BAD_REQUEST", &why);
        }
        if let Some(old) = replace {
            if let Err(why) = self.remove(seed, old) {
                tracing::warn!("ipfs: replacing pin {old}: {why}");
            }
        }
        self.queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id.clone(),
                (owner.to_string(), spec.clone(), Instant::now()),
            );
        self.pin_now_if_whole(&id, &spec);
        let status = self.find(owner, &id).unwrap_or_else(|| {
            let me: Vec<SocketAddr> = self.node.listen.into_iter().collect();
            status_json(&id, "queued", &spec, &me, None)
        });
        json(Status::Accepted, &status)
    }

    /// A pin placed here whose DAG this node already holds whole is pinned
    /// at once, not at the watcher's next round (so its status says
    /// `pinned` in the answer to the request that made it).
    fn pin_now_if_whole(&self, id: &str, spec: &PinSpec) {
        let Some(root) = spec.root() else {
            return;
        };
        if !self.index.has(&root) {
            return;
        }
        let Some(inst) = self
            .node
            .deployments
            .of(SERVICE)
            .into_iter()
            .find(|i| i.name == id && i.here)
        else {
            return;
        };
        // A large DAG is left to the watcher's round.
        let Ok((cids, bytes)) = crate::service::held_dag(&self.index, &root, 100_000) else {
            return;
        };
        let blobs = self.index.blobs(&cids);
        if self.index.store().pin(&blobs, true).is_err()
            || self.record_held(id, Some(&blobs)).is_err()
        {
            return;
        }
        self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id.to_string(),
            Held {
                spec_hash: inst.spec_hash,
                state: Local::Pinned {
                    bytes,
                    blocks: cids.len() as u64,
                },
                retry_at: None,
                running: false,
            },
        );
    }

    fn remove(&self, seed: &[u8; 32], id: &str) -> Result<(), String> {
        self.queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.node.deployments.change_as(
            seed,
            &Change {
                name: id.to_string(),
                service: SERVICE.into(),
                spec: None,
                replicas: 1,
                regions: Vec::new(),
            },
        )
    }

    /// The owner's pins: (request id, spec, status, info, delegates).
    fn owned(&self, owner: &str) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for inst in self.node.deployments.of(SERVICE) {
            if inst.owner != owner {
                continue;
            }
            let Ok(spec) = PinSpec::parse(&inst.spec) else {
                continue;
            };
            seen.insert(inst.name.clone());
            let (status, info) = self.status_of(&inst);
            let mut nodes = inst.elsewhere.clone();
            if inst.here {
                if let Some(me) = self.node.listen {
                    nodes.insert(0, me);
                }
            }
            if nodes.is_empty() {
                nodes.extend(self.node.listen);
            }
            out.push(status_json(
                &inst.name,
                &status,
                &spec,
                &nodes,
                info.as_deref(),
            ));
        }
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        queued
            .retain(|id, (_, _, at)| !seen.contains(id) && at.elapsed() < Duration::from_secs(600));
        for (id, (o, spec, _)) in queued.iter() {
            if o == owner {
                let me: Vec<SocketAddr> = self.node.listen.into_iter().collect();
                out.push(status_json(id, "queued", spec, &me, None));
            }
        }
        out
    }

    fn find(&self, owner: &str, id: &str) -> Option<serde_json::Value> {
        self.owned(owner)
            .into_iter()
            .find(|s| s["requestid"].as_str() == Some(id))
    }

    fn list(&self, owner: &str, query: &[u8]) -> Reply {
        let params = query_params(query);
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let cids: Option<Vec<String>> = get("cid").map(|c| {
            c.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        });
        if let Some(c) = &cids {
            if c.len() > 10 {
                return api_error(Status::BadRequest, "BAD_REQUEST", "at most 10 CIDs");
            }
            if let Some(bad) = c.iter().find(|c| parse_cid(c.as_bytes()).is_none()) {
                return api_error(
                    Status::BadRequest,
                    "BAD_REQUEST",
                    &format!("{bad:?} is not a CID"),
                );
            }
        }
        let limit = match get("limit") {
            None => 10,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => return api_error(Status::BadRequest, "BAD_REQUEST", "limit is 1 to 1000"),
            },
        };
        let statuses: Option<Vec<String>> = match get("status") {
            None => None,
            Some(s) => {
                let list: Vec<String> = s.split(',').map(|x| x.trim().to_string()).collect();
                if list
                    .iter()
                    .any(|x| !["queued", "pinning", "pinned", "failed"].contains(&x.as_str()))
                {
                    return api_error(
                        Status::BadRequest,
                        "BAD_REQUEST",
                        "status is a list of queued, pinning, pinned and failed",
                    );
                }
                Some(list)
            }
        };
        let matching = get("match").unwrap_or("exact");
        if !["exact", "iexact", "partial", "ipartial"].contains(&matching) {
            return api_error(
                Status::BadRequest,
                "BAD_REQUEST",
                "match is exact, iexact, partial or ipartial",
            );
        }
        let name = get("name");
        if name.is_some_and(|n| n.len() > 255) {
            return api_error(
                Status::BadRequest,
                "BAD_REQUEST",
                "a name is at most 255 characters",
            );
        }
        let before = get("before");
        let after = get("after");
        for t in [before, after].into_iter().flatten() {
            if !looks_like_time(t) {
                return api_error(
                    Status::BadRequest,
                    "BAD_REQUEST",
                    "before and after are RFC 3339 times",
                );
            }
        }
        let meta: Option<BTreeMap<String, String>> = match get("meta") {
            None => None,
            Some(m) => match serde_json::from_str(m) {
                Ok(v) => Some(v),
                Err(_) => {
                    return api_error(
                        Status::BadRequest,
                        "BAD_REQUEST",
                        "meta is a JSON object of strings",
                    )
                }
            },
        };
        let any_filter = cids.is_some()
            || name.is_some()
            || before.is_some()
            || after.is_some()
            || meta.is_some();
        let mut results: Vec<serde_json::Value> = self
            .owned(owner)
            .into_iter()
            .filter(|s| {
                let pin = &s["pin"];
                let status = s["status"].as_str().unwrap_or("");
                let created = s["created"].as_str().unwrap_or("");
                // With no filter at all only successful pins are listed,
                // as the spec says; any filter lists every status.
                let wanted_status = match &statuses {
                    Some(list) => list.iter().any(|x| x == status),
                    None => any_filter || status == "pinned",
                };
                wanted_status
                    && cids.as_ref().is_none_or(|c| {
                        let pc = pin["cid"].as_str().unwrap_or("");
                        c.iter().any(|x| same_cid(x, pc))
                    })
                    && name.is_none_or(|n| {
                        let pn = pin["name"].as_str().unwrap_or("");
                        match matching {
                            "exact" => pn == n,
                            "iexact" => pn.eq_ignore_ascii_case(n),
                            "partial" => pn.contains(n),
                            _ => pn.to_lowercase().contains(&n.to_lowercase()),
                        }
                    })
                    && before.is_none_or(|b| created < b)
                    && after.is_none_or(|a| created > a)
                    && meta.as_ref().is_none_or(|m| {
                        m.iter()
                            .all(|(k, v)| pin["meta"][k].as_str() == Some(v.as_str()))
                    })
            })
            .collect();
        results.sort_by(|a, b| {
            b["created"]
                .as_str()
                .unwrap_or("")
                .cmp(a["created"].as_str().unwrap_or(""))
        });
        let count = results.len();
        results.truncate(limit);
        json(
            Status::Ok,
            &serde_json::json!({"count": count, "results": results}),
        )
    }

    /// `GET /pins/_status/{id}`: this node's state of a pin placed on it
    /// (what other nodes ask; it says nothing but the state).
    fn local_status(&self, id: &str) -> Reply {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let (status, info) = match held.get(id).map(|h| &h.state) {
            Some(Local::Pinning) => ("pinning", None),
            Some(Local::Pinned { .. }) => ("pinned", None),
            Some(Local::Failed(why)) => ("failed", Some(why.clone())),
            None => ("queued", None),
        };
        json(
            Status::Ok,
            &serde_json::json!({"status": status, "info": info}),
        )
    }

    /// A pin's status over the nodes it is placed on.
    fn status_of(&self, inst: &service_api::Instance) -> (String, Option<String>) {
        let mut states: Vec<(String, Option<String>)> = Vec::new();
        if inst.here {
            let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            states.push(match held.get(&inst.name).map(|h| &h.state) {
                Some(Local::Pinned { .. }) => ("pinned".into(), None),
                Some(Local::Failed(why)) => ("failed".into(), Some(why.clone())),
                _ => ("pinning".into(), None),
            });
        }
        for addr in &inst.elsewhere {
            states.push(self.remote_status(&inst.name, addr));
        }
        if states.is_empty() {
            return ("queued".into(), None);
        }
        if let Some((_, why)) = states.iter().find(|(s, _)| s == "failed") {
            if !states.iter().any(|(s, _)| s == "pinning" || s == "queued") {
                return ("failed".into(), why.clone());
            }
        }
        if states.iter().all(|(s, _)| s == "pinned") {
            return ("pinned".into(), None);
        }
        if states.iter().all(|(s, _)| s == "queued") {
            return ("queued".into(), None);
        }
        ("pinning".into(), None)
    }

    fn remote_status(&self, id: &str, addr: &SocketAddr) -> (String, Option<String>) {
        let key = format!("{id}@{addr}");
        if let Some((at, s, info)) = self
            .remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            if at.elapsed() < STATUS_TTL {
                return (s.clone(), info.clone());
            }
        }
        let url = format!("http://{addr}/pins/_status/{id}");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            .build()
            .into();
        let got = agent
            .get(&url)
            .call()
            .ok()
            .filter(|r| r.status() == 200)
            .and_then(|r| r.into_body().read_to_string().ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .map(|v| {
                (
                    v["status"].as_str().unwrap_or("queued").to_string(),
                    v["info"].as_str().map(str::to_string),
                )
            })
            .unwrap_or(("queued".into(), None));
        let mut remote = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        if remote.len() > 100_000 {
            remote.clear();
        }
        remote.insert(key, (Instant::now(), got.0.clone(), got.1.clone()));
        got
    }

    // --- the watcher's side ---

    fn held_blobs(&self, name: &str) -> Vec<Hash> {
        let Ok(r) = self.db.begin_read() else {
            return Vec::new();
        };
        let Ok(t) = r.open_table(HELD) else {
            return Vec::new();
        };
        t.get(name)
            .ok()
            .flatten()
            .map(|v| {
                v.value()
                    .chunks_exact(32)
                    .map(|c| {
                        let mut h = [0u8; 32];
                        h.copy_from_slice(c);
                        h
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn held_names(&self) -> Vec<String> {
        let Ok(r) = self.db.begin_read() else {
            return Vec::new();
        };
        let Ok(t) = r.open_table(HELD) else {
            return Vec::new();
        };
        let Ok(iter) = t.iter() else {
            return Vec::new();
        };
        iter.filter_map(|row| row.ok().map(|(k, _)| k.value().to_string()))
            .collect()
    }

    fn record_held(&self, name: &str, blobs: Option<&[Hash]>) -> Result<(), String> {
        self.meter_stale.store(true, Ordering::Relaxed);
        let w = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut t = w.open_table(HELD).map_err(|e| e.to_string())?;
            match blobs {
                Some(b) => {
                    t.insert(name, b.concat().as_slice())
                        .map_err(|e| e.to_string())?;
                }
                None => {
                    t.remove(name).map_err(|e| e.to_string())?;
                }
            }
        }
        w.commit().map_err(|e| e.to_string())
    }

    /// Lets go of a pin's blobs that no other pin here holds.
    fn release(&self, name: &str) {
        let mine = self.held_blobs(name);
        let mut others: HashSet<Hash> = HashSet::new();
        for n in self.held_names() {
            if n != name {
                others.extend(self.held_blobs(&n));
            }
        }
        let free: Vec<Hash> = mine.into_iter().filter(|h| !others.contains(h)).collect();
        if let Err(e) = self.index.store().pin(&free, false) {
            tracing::warn!("ipfs: unpinning {name}: {e}");
        }
        if let Err(e) = self.record_held(name, None) {
            tracing::warn!("ipfs: {name}: {e}");
        }
    }
}

/// A Pin object of the API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinRequest {
    cid: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    origins: Vec<String>,
    #[serde(default)]
    meta: BTreeMap<String, String>,
}

fn read_pin(body: RequestBody) -> Result<PinRequest, Reply> {
    let mut bytes = Vec::new();
    if body.take(MAX_PIN_BODY + 1).read_to_end(&mut bytes).is_err() {
        return Err(api_error(
            Status::BadRequest,
            "BAD_REQUEST",
            "the body could not be read",
        ));
    }
    if bytes.len() as u64 > MAX_PIN_BODY {
        return Err(api_error(
            Status::PayloadTooLarge,
            "PAYLOAD_TOO_LARGE",
            "a pin is at most 64 KiB",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        api_error(
            Status::BadRequest,
            "BAD_REQUEST",
            &format!("not a Pin object: {e}"),
        )
    })
}

fn same_cid(a: &str, b: &str) -> bool {
    match (parse_cid(a.as_bytes()), parse_cid(b.as_bytes())) {
        (Some(x), Some(y)) => x.hash() == y.hash() && x.codec() == y.codec() || x == y,
        _ => a == b,
    }
}

fn looks_like_time(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && (b[10] == b'T' || b[10] == b't')
}

fn status_json(
    id: &str,
    status: &str,
    spec: &PinSpec,
    nodes: &[SocketAddr],
    info: Option<&str>,
) -> serde_json::Value {
    let mut pin = serde_json::json!({"cid": spec.cid, "origins": spec.origins, "meta": spec.meta});
    if let Some(n) = &spec.name {
        pin["name"] = serde_json::Value::String(n.clone());
    }
    let mut info_map = serde_json::Map::new();
    if let Some(i) = info {
        info_map.insert(
            "status_details".into(),
            serde_json::Value::String(i.to_string()),
        );
    }
    serde_json::json!({
        "requestid": id,
        "status": status,
        "created": spec.created,
        "pin": pin,
        "delegates": nodes.iter().map(crate::service::multiaddr).collect::<Vec<_>>(),
        "info": info_map,
    })
}

/// Starts the watcher thread for `ipfs`.
pub(crate) fn start_watcher(ipfs: &Arc<Ipfs>) {
    *ipfs.pins.me.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(ipfs);
    let weak = Arc::downgrade(ipfs);
    let every = Duration::from_millis(ipfs.config.watch_ms.max(50));
    let _ = std::thread::Builder::new()
        .name("ipfs-pins".into())
        .spawn(move || {
            let mut last = Instant::now();
            loop {
                std::thread::sleep(every);
                let Some(ipfs) = weak.upgrade() else {
                    return;
                };
                let elapsed = last.elapsed();
                last = Instant::now();
                watch_round(&ipfs, elapsed);
            }
        });
}

/// Bytes of raw blocks served on the core, per pin held here: the core adds
/// to a pin's counter (a lookup and an atomic add, nothing allocated), the
/// watcher moves the counts into the pins' usage every round.
#[derive(Default)]
pub struct CoreMeter {
    /// Blob → index into `pins` (one pin per blob: the first that holds it).
    by_blob: HashMap<Hash, usize, crate::DigestState>,
    pins: Vec<(String, AtomicU64)>,
}

impl CoreMeter {
    /// The counter of the pin that holds `blob`, if one does.
    pub fn of(&self, blob: &Hash) -> Option<&AtomicU64> {
        self.by_blob.get(blob).map(|&i| &self.pins[i].1)
    }

    fn drain(&self, usage: &mut HashMap<String, Use>) {
        for (name, n) in &self.pins {
            let b = n.swap(0, Ordering::Relaxed);
            if b > 0 {
                usage.entry(name.clone()).or_default().units += b;
            }
        }
    }
}

/// When another node answered for its part of a pin: its status and info.
type RemoteStatus = (Instant, String, Option<String>);

/// Most pins fetched at once on one node.
const FETCHES_AT_ONCE: usize = 4;
/// How long a failed pin waits before it is tried again.
const RETRY_FAILED: Duration = Duration::from_secs(60);

fn watch_round(ipfs: &Arc<Ipfs>, elapsed: Duration) {
    let pins = &ipfs.pins;
    let all = ipfs.node.deployments.of(SERVICE);
    let mut view = View::default();
    let mut here: HashMap<String, (Hash, PinSpec)> = HashMap::new();
    for inst in &all {
        let Ok(spec) = PinSpec::parse(&inst.spec) else {
            continue;
        };
        let Some(root) = spec.root() else {
            continue;
        };
        view.origins
            .entry(root)
            .or_default()
            .extend(spec.origins.iter().cloned());
        let placed = view.placed.entry(root).or_default();
        placed.extend(inst.elsewhere.iter().copied());
        if inst.here {
            if let Some(me) = ipfs.node.listen {
                placed.push(me);
            }
            here.insert(inst.name.clone(), (inst.spec_hash, spec.clone()));
        }
        view.names.entry(root).or_insert_with(|| inst.name.clone());
    }
    pins.keep_origins(&view.origins);
    pins.drain_meter();
    pins.view.store(Arc::new(view));

    // Pins that left this node (removed, or placed elsewhere now).
    for name in pins.held_names() {
        if !here.contains_key(&name) {
            pins.release(&name);
            pins.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
        }
    }
    let mut to_start = Vec::new();
    {
        let mut held = pins.held.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|n, _| here.contains_key(n));
        let running = held.values().filter(|h| h.running).count();
        let mut slots = FETCHES_AT_ONCE.saturating_sub(running);
        for (name, (hash, spec)) in &here {
            let h = held.entry(name.clone()).or_insert(Held {
                spec_hash: *hash,
                state: Local::Pinning,
                retry_at: None,
                running: false,
            });
            if h.spec_hash != *hash {
                h.spec_hash = *hash;
                h.state = Local::Pinning;
            }
            let due = match &h.state {
                Local::Pinning => true,
                Local::Failed(_) => h.retry_at.is_none_or(|t| Instant::now() >= t),
                Local::Pinned { .. } => false,
            };
            if due && !h.running && slots > 0 {
                h.running = true;
                slots -= 1;
                to_start.push((name.clone(), spec.clone()));
            }
        }
        let (mut count, mut bytes) = (0u64, 0u64);
        let mut usage = pins.usage.lock().unwrap_or_else(|p| p.into_inner());
        for (name, h) in held.iter() {
            if let Local::Pinned { bytes: b, .. } = h.state {
                count += 1;
                bytes += b;
                let u = usage.entry(name.clone()).or_default();
                u.held_byte_ms += u128::from(b) * elapsed.as_millis();
                // 1 GiB-hour = UNITS_PER_GIB_HOUR units.
                let per_unit = (1u128 << 30) * 3_600_000 / u128::from(UNITS_PER_GIB_HOUR);
                let whole = u.held_byte_ms / per_unit;
                u.units += whole as u64;
                u.held_byte_ms -= whole * per_unit;
            }
        }
        pins.pinned_gauge.store(count, Ordering::Relaxed);
        pins.pinned_bytes.store(bytes, Ordering::Relaxed);
    }
    for (name, spec) in to_start {
        let ipfs = ipfs.clone();
        let _ = std::thread::Builder::new()
            .name("ipfs-pin".into())
            .spawn(move || {
                let state = pin_here(&ipfs, &name, &spec);
                let mut held = ipfs.pins.held.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(h) = held.get_mut(&name) {
                    h.running = false;
                    if let Local::Failed(why) = &state {
                        tracing::warn!("ipfs: pin {name} ({}): {why}", spec.cid);
                        h.retry_at = Some(Instant::now() + RETRY_FAILED);
                    }
                    h.state = state;
                }
            });
    }
}

/// Fetches a pin's whole DAG, verifies that every block is here, and pins
/// the blobs that hold them.
fn pin_here(ipfs: &Arc<Ipfs>, name: &str, spec: &PinSpec) -> Local {
    let Some(root) = spec.root() else {
        return Local::Failed("not a CID".into());
    };
    if !ipfs.fetch_dag(&root, &root) {
        return Local::Failed(match ipfs.first_missing(&root) {
            Some(m) if m == root => format!("no origin or peer could serve {}", cid_text(&root)),
            Some(m) => format!(
                "no origin or peer could serve block {} of {}",
                cid_text(&m),
                cid_text(&root)
            ),
            None => format!("{} could not be read back", cid_text(&root)),
        });
    }
    // Named once more just before they are pinned (a block may have gone
    // since: evicted, or dropped by another fetch).
    let (cids, bytes) = match crate::service::held_dag(&ipfs.index, &root, usize::MAX) {
        Ok(got) => got,
        Err(m) => {
            return Local::Failed(format!(
                "the DAG under {} is not whole: {} is gone",
                cid_text(&root),
                m.map_or_else(|| "a block".into(), |m| cid_text(&m))
            ))
        }
    };
    let blobs = ipfs.index.blobs(&cids);
    if let Err(e) = ipfs.index.store().pin(&blobs, true) {
        return Local::Failed(format!("cannot pin its blocks: {e}"));
    }
    if let Err(e) = ipfs.pins.record_held(name, Some(&blobs)) {
        return Local::Failed(format!("cannot record its blocks: {e}"));
    }
    Local::Pinned {
        bytes,
        blocks: cids.len() as u64,
    }
}

/// The service as an `Arc`, for a streamed answer's producer.
pub(crate) fn service_arc(ipfs: &Ipfs) -> Option<Arc<Ipfs>> {
    ipfs.pins
        .me
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .upgrade()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_pin_specs_are_refused_with_a_reason() {
        let good = br#"{"cid":"bafkqaaa","name":"n","origins":["https://gw.example"],"meta":{"a":"b"},"created":"2026-01-01T00:00:00Z"}"#;
        assert!(PinSpec::parse(good).is_ok());
        crate::testing::damaged(good, 3000, 3, 5, |bytes| {
            if let Err(why) = PinSpec::parse(bytes) {
                assert!(!why.is_empty());
            }
        });
    }

    #[test]
    fn origins_are_merged_without_repeats_and_bounded() {
        let mut kept = vec!["a".to_string()];
        assert!(!merge_origins(&mut kept, &["a".into()]));
        assert!(merge_origins(&mut kept, &["b".into(), "a".into()]));
        assert_eq!(kept, ["a", "b"]);
        let many: Vec<String> = (0..100).map(|i| format!("o{i}")).collect();
        assert!(merge_origins(&mut kept, &many));
        assert_eq!(kept.len(), MAX_KEPT_ORIGINS);
        assert!(!merge_origins(&mut kept, &["late".into()]));
    }

    #[test]
    fn origins_become_gateway_urls() {
        assert_eq!(
            origin_url("/ip4/127.0.0.1/tcp/8080/http").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            origin_url("/dns4/example.com/tcp/443/https/p2p/12D3KooWabc").as_deref(),
            Some("https://example.com:443")
        );
        assert_eq!(
            origin_url("/ip6/::1/tcp/80/http").as_deref(),
            Some("http://[::1]:80")
        );
        assert_eq!(
            origin_url("https://gw.example/").as_deref(),
            Some("https://gw.example")
        );
        for bad in [
            "/ip4/1.2.3.4/tcp/4001/p2p/12D3KooW",
            "/ip4/x/tcp/80/http",
            "ftp://x",
            "",
            "/dns4/a b/tcp/1/http",
        ] {
            assert_eq!(origin_url(bad), None, "{bad}");
        }
    }

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        let seed = [7u8; 32];
        let t = token_for(&seed);
        assert!(t.starts_with(TOKEN_PREFIX));
        assert_eq!(token_seed(&t), Some(seed));
        assert_eq!(token_seed("tsr1_short"), None);
        assert_eq!(token_seed("Bearer x"), None);
    }

    #[test]
    fn specs_are_checked() {
        let ok = br#"{"cid":"bafkqaaa","created":"2026-01-01T00:00:00.000Z"}"#;
        assert!(PinSpec::parse(ok).is_ok());
        let bad = br#"{"cid":"nope","created":"x"}"#;
        assert!(PinSpec::parse(bad).is_err());
        let origins = format!(
            r#"{{"cid":"bafkqaaa","created":"x","origins":[{}]}}"#,
            vec!["\"http://a\""; MAX_ORIGINS + 1].join(",")
        );
        assert!(PinSpec::parse(origins.as_bytes()).is_err());
        assert!(looks_like_time(&now_rfc3339()), "{}", now_rfc3339());
        assert!(request_id().len() == 27 && request_id() != request_id());
    }
}
