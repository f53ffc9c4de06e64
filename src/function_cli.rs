//! `tessera deploy function`: a script checked here (it must compile),
//! uploaded as a blob unless the network has it, and deployed with one
//! signed change whose spec names its hash, its bindings and its limits.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use controlplane::ledger::{DeploySpec, Tx};
use tessera_functions::{FunctionSpec, Limits};

use crate::deploy_cli::{send, DeployArgs};
use crate::ledger::{agent, get_json};

/// The function's bindings and limits on the command line.
#[derive(clap::Args, Default)]
pub struct FunctionArgs {
    /// function: a plain-text binding, NAME=VALUE (repeat for more).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// function: a secret binding, NAME=VALUE (not printed by `tessera
    /// deployments`).
    #[arg(long = "secret", value_name = "NAME=VALUE")]
    pub secrets: Vec<String>,
    /// function: a KV namespace binding (repeat for more; JavaScript only).
    #[arg(long = "kv", value_name = "NAME")]
    pub kv: Vec<String>,
    /// function: CPU time per request, ms (default 50).
    #[arg(long)]
    pub cpu_ms: Option<u64>,
    /// function: wall time per request, ms (default 30000).
    #[arg(long)]
    pub wall_ms: Option<u64>,
    /// function: memory, MiB (default 128).
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// function: fetch() calls per request (default 50).
    #[arg(long)]
    pub subrequests: Option<u32>,
}

fn pairs(
    list: &[String],
    what: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    list.iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => bail!("--{what} {p}: NAME=VALUE"),
        })
        .collect()
}

/// Seals `secrets` to every node the network knows (`GET /cluster/members`
/// of the node deployed through, itself included), into `spec`: the spec
/// carries their names and a box per node, never the values.
fn seal(
    base: &str,
    spec: &mut FunctionSpec,
    secrets: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<()> {
    if secrets.is_empty() {
        return Ok(());
    }
    let members = get_json(&agent(), &format!("{base}/cluster/members")).with_context(|| {
        format!("secrets are sealed to the network's nodes, but {base} lists no members")
    })?;
    let ids: Vec<String> = members
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if ids.is_empty() {
        bail!("secrets are sealed to the network's nodes, but {base} lists no members");
    }
    spec.seal_secrets(secrets, &ids, |id, plain| {
        let id: controlplane::identity::NodeId =
            id.parse().map_err(|e| format!("node id {id}: {e}"))?;
        id.seal(plain).map_err(|e| format!("sealing to {id}: {e}"))
    })
    .map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    if let Some(spec) = &args.spec {
        // A spec written by hand: sent as it is (its script must already
        // be on the network; the node checks), but its `[secrets]` sealed.
        let read =
            std::fs::read(spec).with_context(|| format!("cannot read {}", spec.display()))?;
        let mut parsed: FunctionSpec = service_api::parse_spec(&read)
            .map_err(|e| anyhow::anyhow!("{}: {e}", spec.display()))?;
        let text = if parsed.secrets.is_empty() {
            read
        } else {
            let secrets = std::mem::take(&mut parsed.secrets);
            seal(args.node.node.trim_end_matches('/'), &mut parsed, &secrets)?;
            toml::to_string(&parsed)?.into_bytes()
        };
        FunctionSpec::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", spec.display()))?;
        send(
            &args.node,
            Tx::Deploy(DeploySpec {
                name: args.name.clone(),
                service: "function".into(),
                spec: text,
                replicas: args.replicas.unwrap_or(1),
                regions: args.regions.clone(),
            }),
        )?;
        println!("deployed function {} from {}", args.name, spec.display());
        return Ok(ExitCode::SUCCESS);
    }
    let Some(path) = args.path.clone() else {
        bail!(
            "say which script to deploy: tessera deploy function --name {} ./worker.js",
            args.name
        );
    };
    let source = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    // A script is compiled here (its syntax errors shown at once); a
    // component only checked for its magic and size here, since compiling
    // one takes seconds: the node compiles it and says if it refuses it.
    if tessera_functions::wasm::is_wasm(&source) {
        if source.len() as u64 > tessera_functions::MAX_COMPONENT_BYTES {
            bail!(
                "{}: {} bytes; a component may have {}",
                path.display(),
                source.len(),
                tessera_functions::MAX_COMPONENT_BYTES
            );
        }
    } else {
        tessera_functions::check_script(&args.name, &source)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    let hash = blake3::hash(&source);
    let code = tessera_functions::hex(hash.as_bytes());
    let f = &args.function;
    let defaults = Limits::default();
    let kind = if tessera_functions::wasm::is_wasm(&source) {
        "wasm"
    } else {
        "js"
    };
    let mut spec = FunctionSpec {
        code: code.clone(),
        kind: kind.into(),
        vars: pairs(&f.vars, "var")?,
        secrets: Default::default(),
        secret_names: Vec::new(),
        sealed_secrets: Default::default(),
        kv: f.kv.clone(),
        limits: Limits {
            cpu_ms: f.cpu_ms.unwrap_or(defaults.cpu_ms),
            wall_ms: f.wall_ms.unwrap_or(defaults.wall_ms),
            memory_mb: f.memory_mb.unwrap_or(defaults.memory_mb),
            subrequests: f.subrequests.unwrap_or(defaults.subrequests),
            ..defaults
        },
    };
    let base = args.node.node.trim_end_matches('/').to_string();
    seal(&base, &mut spec, &pairs(&f.secrets, "secret")?)?;
    spec.check().map_err(|e| anyhow::anyhow!("{e}"))?;
    let agent = agent();
    let present = agent
        .head(format!("{base}/blobs/{code}"))
        .call()
        .with_context(|| format!("cannot reach {base}"))?
        .status()
        == 200;
    if !present {
        let mut resp = agent
            .post(format!("{base}/blobs"))
            .header("Content-Type", "application/octet-stream")
            .send(&source[..])
            .with_context(|| format!("uploading the script to {base}"))?;
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        if resp.status() != 201 && resp.status() != 200 {
            bail!(
                "the node refused the script: {} {}",
                resp.status(),
                body.trim()
            );
        }
    }
    let spec_text = toml::to_string(&spec)?;
    let spec_hash = tessera_functions::hex(blake3::hash(spec_text.as_bytes()).as_bytes());
    send(
        &args.node,
        Tx::Deploy(DeploySpec {
            name: args.name.clone(),
            service: "function".into(),
            spec: spec_text.into_bytes(),
            replicas: args.replicas.unwrap_or(1),
            regions: args.regions.clone(),
        }),
    )?;
    // Wait until the node runs this version (script, bindings, limits).
    // (A large component takes the node a while to compile.)
    let wait = if kind == "wasm" { 300 } else { 60 };
    let deadline = Instant::now() + Duration::from_secs(wait);
    let status = loop {
        if let Ok(v) = get_json(&agent, &format!("{base}/fn/_status/{}", args.name)) {
            if v["spec"].as_str() == Some(spec_hash.as_str()) {
                break v;
            }
            if v["refused"]["spec"].as_str() == Some(spec_hash.as_str()) {
                bail!(
                    "the deployment is recorded, but {base} refused it: {}",
                    v["refused"]["why"].as_str().unwrap_or("?")
                );
            }
        }
        if Instant::now() > deadline {
            bail!("the deployment is recorded, but {base} does not run it within {wait} s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let suffix = status["host_suffix"].as_str().unwrap_or("fn.localhost");
    let port = base
        .rsplit_once(':')
        .map(|(_, p)| p)
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let url = format!("http://{}.{suffix}{port}/", args.name);
    if args.node.json {
        println!(
            "{}",
            serde_json::json!({ "name": args.name, "code": code, "uploaded": !present, "url": url })
        );
    } else {
        println!(
            "deployed function {}: script {} ({} bytes{})",
            args.name,
            &code[..12],
            source.len(),
            if present {
                ", already on the network"
            } else {
                ""
            }
        );
        println!("  {url}");
        println!("  {base}/fn/{}/", args.name);
    }
    Ok(ExitCode::SUCCESS)
}
