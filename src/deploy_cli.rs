//! `tessera deploy`, `tessera deployments`, `tessera undeploy`: the client
//! side of the deployments API. Transactions are signed with this client's
//! key (its identity in `~/.config/tessera/client/`), which owns what it
//! deploys.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use controlplane::ledger::{DeploySpec, SignedTx, Tx};

use crate::ledger::{agent, client_key, get_json, NodeArg};

#[derive(clap::Args)]
pub struct DeployArgs {
    /// The service to run: cdn, site, function.
    pub service: String,
    /// site: the folder to deploy (`./public`); function: the script
    /// (`./worker.js`, one bundled ES module).
    pub path: Option<PathBuf>,
    /// The deployment's name (a DNS label: a-z, 0-9, '-').
    #[arg(long)]
    pub name: String,
    /// cdn: the origin to pull from (http:// or https://).
    #[arg(long)]
    pub origin: Option<String>,
    /// The whole spec, a TOML or JSON file (instead of --origin).
    #[arg(long, conflicts_with = "origin")]
    pub spec: Option<PathBuf>,
    /// How many nodes run it (default 1; a redeployed site keeps its count).
    #[arg(long)]
    pub replicas: Option<u16>,
    /// site: versions to keep (pinned, for rollback and previews), the new
    /// one included; older ones are pruned.
    #[arg(long, default_value_t = tessera_hosting::DEFAULT_KEEP)]
    pub keep: usize,
    /// site: a custom host name it answers for too (repeat for more).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// A region to run in (repeat for more); none: anywhere.
    #[arg(long = "region")]
    pub regions: Vec<String>,
    #[command(flatten)]
    pub function: crate::function_cli::FunctionArgs,
    #[command(flatten)]
    pub node: NodeArg,
}

#[derive(clap::Args)]
pub struct UndeployArgs {
    pub name: String,
    #[command(flatten)]
    pub node: NodeArg,
}

/// Signs `tx` at this client's next nonce and hands it to the node; waits
/// (30 s at most) until a ledger committed it.
pub fn send(node: &NodeArg, tx: Tx) -> anyhow::Result<serde_json::Value> {
    let base = node.node.trim_end_matches('/');
    let agent = agent();
    let key = client_key()?;
    let account = format!("{base}/deployments/_account/{}", key.id());
    let nonce = get_json(&agent, &account)?["nonce"].as_u64().unwrap_or(0);
    let wire = SignedTx::new_with(tx, nonce, &key).encode();
    let mut resp = agent
        .post(format!("{base}/deployments"))
        .header("Content-Type", "application/octet-stream")
        .send(&wire[..])
        .with_context(|| format!("cannot reach {base}"))?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string()?;
    match status {
        200 => Ok(serde_json::from_str(&body)?),
        202 => {
            let deadline = Instant::now() + Duration::from_secs(30);
            while get_json(&agent, &account)?["nonce"].as_u64().unwrap_or(0) <= nonce {
                if Instant::now() > deadline {
                    bail!("the ledger took the transaction but has not committed it within 30 s");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(serde_json::from_str(&body)?)
        }
        _ => bail!("{}", body.trim()),
    }
}

pub fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    if args.service == "site" {
        return crate::site_cli::deploy(args);
    }
    if args.service == "function" {
        return crate::function_cli::deploy(args);
    }
    let spec = match (&args.spec, &args.origin) {
        (Some(path), _) => std::fs::read(path)
            .with_context(|| format!("cannot read the spec {}", path.display()))?,
        (None, Some(origin)) => {
            format!("origin = {}\n", toml::Value::String(origin.clone())).into_bytes()
        }
        (None, None) => bail!("say what to run: --origin URL, or --spec FILE"),
    };
    let name = args.name.clone();
    let v = send(
        &args.node,
        Tx::Deploy(DeploySpec {
            name: args.name,
            service: args.service,
            spec,
            replicas: args.replicas.unwrap_or(1),
            regions: args.regions,
        }),
    )?;
    let base = args.node.node.trim_end_matches('/');
    let d = get_json(&agent(), &format!("{base}/deployments/{name}"))?;
    if args.node.json {
        println!("{d}");
    } else {
        let _ = v;
        println!(
            "deployed {name} (version {}, {} of {} replicas placed: {})",
            d["version"],
            d["placement"].as_array().map_or(0, Vec::len),
            d["replicas"],
            d["health"].as_str().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn undeploy(args: UndeployArgs) -> anyhow::Result<ExitCode> {
    send(
        &args.node,
        Tx::Undeploy {
            name: args.name.clone(),
        },
    )?;
    if !args.node.json {
        println!("removed {}", args.name);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn list(node: NodeArg) -> anyhow::Result<ExitCode> {
    let base = node.node.trim_end_matches('/');
    let v = get_json(&agent(), &format!("{base}/deployments"))?;
    if node.json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<6} {:>7} {:>8}  {:<10} {:<16} PLACEMENT",
        "NAME", "SERVICE", "VERSION", "REPLICAS", "HEALTH", "REGIONS"
    );
    for d in v["deployments"].as_array().into_iter().flatten() {
        let regions: Vec<&str> = d["regions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str())
            .collect();
        let placed: Vec<String> = d["placement"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                format!(
                    "{}@{}",
                    n["id"].as_str().map_or("?", |s| &s[..8.min(s.len())]),
                    n["addr"].as_str().unwrap_or("?")
                )
            })
            .collect();
        println!(
            "{:<24} {:<6} {:>7} {:>8}  {:<10} {:<16} {}",
            d["name"].as_str().unwrap_or("?"),
            d["service"].as_str().unwrap_or("?"),
            d["version"],
            d["replicas"],
            d["health"].as_str().unwrap_or("?"),
            if regions.is_empty() {
                "any".to_string()
            } else {
                regions.join(",")
            },
            placed.join(" ")
        );
        if d["service"] == "site" {
            for line in crate::site_cli::versions_lines(d) {
                println!("{line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true)))]
pub struct PurgeArgs {
    /// The zone (a CDN deployment's name).
    pub zone: String,
    /// One path, with its query if it has one (`/img/a.png`).
    #[arg(long, group = "what")]
    pub url: Option<String>,
    /// Every path that starts with this.
    #[arg(long, group = "what")]
    pub prefix: Option<String>,
    /// Every object the origin tagged so (`Surrogate-Key`, `Cache-Tag`).
    #[arg(long, group = "what")]
    pub tag: Option<String>,
    /// Everything in the zone.
    #[arg(long, group = "what")]
    pub all: bool,
    /// Mark stale (revalidated on the next request) instead of dropping.
    #[arg(long)]
    pub soft: bool,
    #[command(flatten)]
    pub node: NodeArg,
}

/// `tessera purge`: a purge signed with this client's key (the zone's owner),
/// sent to one node, which passes it on to the zone's other nodes.
pub fn purge(args: PurgeArgs) -> anyhow::Result<ExitCode> {
    use tessera_cdn::purge::{Purge, What};
    let (what, value) = match (&args.url, &args.prefix, &args.tag) {
        (Some(u), _, _) => (What::Url, u.clone()),
        (_, Some(p), _) => (What::Prefix, p.clone()),
        (_, _, Some(t)) => (What::Tag, t.clone()),
        _ => (What::All, String::new()),
    };
    let key = client_key()?;
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let p = Purge::signed(
        key.signing_key(),
        &args.zone,
        what,
        &value,
        args.soft,
        time_ms,
        rand::random(),
    );
    let base = args.node.node.trim_end_matches('/');
    let mut resp = agent()
        .post(format!("{base}/cdn/_purge/{}", args.zone))
        .header("Content-Type", "application/json")
        .send(serde_json::to_vec(&p)?.as_slice())
        .with_context(|| format!("cannot reach {base}"))?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string()?;
    if status != 200 {
        bail!("{}", body.trim());
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    if args.node.json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let replicas = v["replicas"].as_array().cloned().unwrap_or_default();
    let failed: Vec<&str> = replicas
        .iter()
        .filter(|r| r["ok"] != true)
        .filter_map(|r| r["addr"].as_str())
        .collect();
    println!(
        "purged {} object(s) at {base}{}; passed on to {} other node(s){}",
        v["purged"],
        if args.soft { " (soft)" } else { "" },
        replicas.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(", not taken by {}", failed.join(", "))
        }
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
