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
    /// The service to run: cdn.
    pub service: String,
    /// The deployment's name (a DNS label: a-z, 0-9, '-').
    #[arg(long)]
    pub name: String,
    /// cdn: the origin to pull from (http:// or https://).
    #[arg(long)]
    pub origin: Option<String>,
    /// The whole spec, a TOML or JSON file (instead of --origin).
    #[arg(long, conflicts_with = "origin")]
    pub spec: Option<PathBuf>,
    /// How many nodes run it.
    #[arg(long, default_value_t = 1)]
    pub replicas: u16,
    /// A region to run in (repeat for more); none: anywhere.
    #[arg(long = "region")]
    pub regions: Vec<String>,
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
fn send(node: &NodeArg, tx: Tx) -> anyhow::Result<serde_json::Value> {
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
            replicas: args.replicas,
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
    }
    Ok(ExitCode::SUCCESS)
}
