//! `tessera ipfs …`: the client side of the IPFS service.
//!
//! - `token` makes a bearer token for the Pinning Service API: a fresh
//!   ed25519 key that this client's account grants its `ipfs` deployments to
//!   (`Tx::Grant`, signed with the client's key). The token is kept in the
//!   client's directory (`ipfs-token`, 0600) and printed, for Kubo
//!   (`ipfs pin remote service add`) or any other client of the API.
//! - `add` imports a file or folder as UnixFS with `ipfs-car`'s settings
//!   (the same CIDs), sends it to the node as a CAR and pins it.
//! - `pin`, `ls`, `unpin` speak the Pinning Service API.
//! - `get` fetches a CAR, checks every block against its CID and that the
//!   DAG is whole, and writes the file or folder out.

use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use controlplane::ledger::Tx;
use tessera_ipfs::{car, dag, import, pins, Cid};

use crate::ledger::NodeArg;

#[derive(clap::Subcommand)]
pub enum IpfsCommand {
    /// Make a bearer token for the pinning API, granted to this client's account.
    Token(TokenArgs),
    /// Import a file or folder (UnixFS, the CIDs ipfs-car gives) and pin it.
    Add(AddArgs),
    /// Pin a CID (fetched from its origins or the network's nodes).
    Pin(PinArgs),
    /// List this account's pins.
    Ls(LsArgs),
    /// Remove a pin by its request id.
    Unpin(UnpinArgs),
    /// Fetch a CID as a CAR, verify every block, and write it out.
    Get(GetArgs),
}

#[derive(clap::Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub node: NodeArg,
}

#[derive(clap::Args)]
pub struct Auth {
    /// The bearer token (default: the one `tessera ipfs token` saved).
    #[arg(long, env = "TESSERA_IPFS_TOKEN")]
    pub token: Option<String>,
}

#[derive(clap::Args)]
pub struct AddArgs {
    pub path: PathBuf,
    /// Include names that begin with '.'.
    #[arg(long)]
    pub hidden: bool,
    /// A single file is not wrapped in a directory.
    #[arg(long)]
    pub no_wrap: bool,
    /// Also write the CAR here.
    #[arg(long)]
    pub car: Option<PathBuf>,
    /// Import only; do not pin.
    #[arg(long)]
    pub no_pin: bool,
    /// The pin's name.
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub auth: Auth,
    #[command(flatten)]
    pub node: NodeArg,
}

#[derive(clap::Args)]
pub struct PinArgs {
    pub cid: String,
    /// The pin's name (the spec's `name`, for `ls` and filters).
    #[arg(long)]
    pub name: Option<String>,
    /// Where the content may be fetched from: a gateway URL or an
    /// /ip4/…/tcp/…/http multiaddr (repeat for more).
    #[arg(long = "origin")]
    pub origins: Vec<String>,
    /// How many nodes keep it.
    #[arg(long)]
    pub replicas: Option<u16>,
    /// Wait until it is pinned (or failed), 120 s at most.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub auth: Auth,
    #[command(flatten)]
    pub node: NodeArg,
}

#[derive(clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub auth: Auth,
    #[command(flatten)]
    pub node: NodeArg,
}

#[derive(clap::Args)]
pub struct UnpinArgs {
    pub requestid: String,
    #[command(flatten)]
    pub auth: Auth,
    #[command(flatten)]
    pub node: NodeArg,
}

#[derive(clap::Args)]
pub struct GetArgs {
    pub cid: String,
    /// Where to write it (default: the CID).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub node: NodeArg,
}

fn token_path() -> PathBuf {
    crate::client::client_dir().join("ipfs-token")
}

fn token(auth: &Auth) -> anyhow::Result<String> {
    if let Some(t) = &auth.token {
        return Ok(t.clone());
    }
    let path = token_path();
    let t = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no token: run `tessera ipfs token` first (or pass --token) [{}]",
            path.display()
        )
    })?;
    Ok(t.trim().to_string())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

fn base(node: &NodeArg) -> String {
    node.node.trim_end_matches('/').to_string()
}

pub fn run(cmd: IpfsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        IpfsCommand::Token(a) => make_token(a),
        IpfsCommand::Add(a) => add(a),
        IpfsCommand::Pin(a) => pin(a),
        IpfsCommand::Ls(a) => ls(a),
        IpfsCommand::Unpin(a) => unpin(a),
        IpfsCommand::Get(a) => get(a),
    }
}

fn make_token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let seed: [u8; 32] = rand::random();
    let delegate = ed25519_dalek::SigningKey::from_bytes(&seed)
        .verifying_key()
        .to_bytes();
    crate::deploy_cli::send(
        &args.node,
        Tx::Grant {
            delegate,
            service: pins::SERVICE.into(),
        },
    )?;
    let token = pins::token_for(&seed);
    let path = token_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode_0600()
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{token}")?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

fn api(
    method: &str,
    url: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let agent = agent();
    let auth = format!("Bearer {token}");
    let mut resp = match (method, body) {
        ("POST", Some(b)) => agent
            .post(url)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .send(b.to_string().as_bytes()),
        ("DELETE", _) => agent.delete(url).header("authorization", &auth).call(),
        _ => agent.get(url).header("authorization", &auth).call(),
    }
    .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string()?;
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    if status >= 300 {
        let why = v["error"]["details"].as_str().unwrap_or(text.trim());
        bail!("{url}: {status}: {why}");
    }
    Ok((status, v))
}

fn add(args: AddArgs) -> anyhow::Result<ExitCode> {
    let token = token(&args.auth)?;
    let mut sections = tempfile::tempfile()?;
    let mut blocks = 0u64;
    let mut sink = |cid: Cid, bytes: Vec<u8>| -> std::io::Result<()> {
        let mut out = Vec::with_capacity(bytes.len() + 48);
        car::section(&mut out, &cid, &bytes);
        blocks += 1;
        sections.write_all(&out)
    };
    let root = import::add_path(
        &args.path,
        &import::Options {
            hidden: args.hidden,
            no_wrap: args.no_wrap,
        },
        &mut sink,
    )
    .with_context(|| format!("cannot import {}", args.path.display()))?;
    sections.flush()?;
    let head = car::header(&[root.cid]);
    if let Some(out) = &args.car {
        let mut f = std::fs::File::create(out)?;
        f.write_all(&head)?;
        sections.rewind()?;
        std::io::copy(&mut sections, &mut f)?;
    }
    sections.rewind()?;
    let base = base(&args.node);
    let body = std::io::Cursor::new(head).chain(sections);
    let mut resp = agent()
        .post(format!("{base}/ipfs/_import"))
        .header("authorization", &format!("Bearer {token}"))
        .header("content-type", car::MEDIA_TYPE)
        .send(ureq::SendBody::from_owned_reader(body))
        .with_context(|| format!("cannot reach {base}"))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string()?;
    if status != 200 {
        bail!("the node refused the import: {status}: {}", text.trim());
    }
    if !args.no_pin {
        let mut pin = serde_json::json!({"cid": root.cid.to_string()});
        if let Some(n) = &args.name {
            pin["name"] = serde_json::Value::String(n.clone());
        }
        api("POST", &format!("{base}/pins"), &token, Some(pin))?;
    }
    if args.node.json {
        println!(
            "{}",
            serde_json::json!({"cid": root.cid.to_string(), "blocks": blocks, "bytes": root.content})
        );
    } else {
        println!("{}", root.cid);
    }
    Ok(ExitCode::SUCCESS)
}

fn pin(args: PinArgs) -> anyhow::Result<ExitCode> {
    let token = token(&args.auth)?;
    let base = base(&args.node);
    let mut pin = serde_json::json!({"cid": args.cid, "origins": args.origins});
    if let Some(n) = &args.name {
        pin["name"] = serde_json::Value::String(n.clone());
    }
    if let Some(r) = args.replicas {
        pin["meta"] = serde_json::json!({"replicas": r.to_string()});
    }
    let (_, mut status) = api("POST", &format!("{base}/pins"), &token, Some(pin))?;
    let id = status["requestid"].as_str().unwrap_or("").to_string();
    if args.wait {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !matches!(status["status"].as_str(), Some("pinned" | "failed")) {
            if Instant::now() > deadline {
                bail!("{id}: still {} after 120 s", status["status"]);
            }
            std::thread::sleep(Duration::from_millis(500));
            status = api("GET", &format!("{base}/pins/{id}"), &token, None)?.1;
        }
    }
    if args.node.json {
        println!("{status}");
    } else {
        println!("{id} {}", status["status"].as_str().unwrap_or("?"));
    }
    Ok(if status["status"] == "failed" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let token = token(&args.auth)?;
    let url = format!(
        "{}/pins?status=queued,pinning,pinned,failed&limit=1000",
        base(&args.node)
    );
    let (_, v) = api("GET", &url, &token, None)?;
    if args.node.json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    for r in v["results"].as_array().into_iter().flatten() {
        println!(
            "{}\t{}\t{}\t{}",
            r["requestid"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            r["pin"]["cid"].as_str().unwrap_or(""),
            r["pin"]["name"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn unpin(args: UnpinArgs) -> anyhow::Result<ExitCode> {
    let token = token(&args.auth)?;
    api(
        "DELETE",
        &format!("{}/pins/{}", base(&args.node), args.requestid),
        &token,
        None,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Blocks of a CAR, each checked against its CID on the way in.
struct Fetched(HashMap<Cid, Vec<u8>>);

impl dag::Blocks for Fetched {
    fn block(&self, cid: &Cid) -> Result<Option<Vec<u8>>, String> {
        if let Some(b) = tessera_ipfs::identity_block(cid) {
            return Ok(Some(b.to_vec()));
        }
        Ok(self.0.get(cid).cloned())
    }
}

fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let root: Cid = tessera_ipfs::parse_cid(args.cid.as_bytes())
        .with_context(|| format!("{:?} is not a CID", args.cid))?;
    let url = format!(
        "{}/ipfs/{}?format=car&dag-scope=all",
        base(&args.node),
        tessera_ipfs::cid_text(&root)
    );
    let resp = agent()
        .get(&url)
        .header("accept", car::MEDIA_TYPE)
        .call()
        .with_context(|| format!("cannot reach {url}"))?;
    if resp.status() != 200 {
        bail!("{url}: {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut reader = car::CarReader::new(body.as_reader()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut blocks = HashMap::new();
    while let Some((cid, block)) = reader.next_block().map_err(|e| anyhow::anyhow!("{e}"))? {
        tessera_ipfs::verify_block(&cid, &block)
            .map_err(|e| anyhow::anyhow!("block {cid} refused: {e}"))?;
        blocks.insert(cid, block);
    }
    let store = Fetched(blocks);
    let out = args
        .output
        .unwrap_or_else(|| PathBuf::from(tessera_ipfs::cid_text(&root)));
    write_out(&store, &root, &out)?;
    eprintln!("{} verified, written to {}", root, out.display());
    Ok(ExitCode::SUCCESS)
}

fn write_out(store: &Fetched, cid: &Cid, out: &Path) -> anyhow::Result<()> {
    match dag::entity(store, cid).map_err(|e| anyhow::anyhow!("{e}"))? {
        dag::Entity::File { size } => {
            let mut f = std::fs::File::create(out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            dag::read_file(store, cid, 0, size, &mut |b| {
                f.write_all(b)
                    .map_err(|e| dag::WalkError::Bad(e.to_string()))
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        dag::Entity::Directory { entries } => {
            std::fs::create_dir_all(out)?;
            for e in entries {
                if e.name.is_empty() || e.name.contains('/') || e.name == "." || e.name == ".." {
                    bail!("a directory entry named {:?}", e.name);
                }
                write_out(store, &e.cid, &out.join(&e.name))?;
            }
        }
        dag::Entity::Other => bail!("{cid} is not a UnixFS file or directory"),
    }
    Ok(())
}
