//! `tessera deploy site`, `tessera rollback`: the client side of site
//! hosting.
//!
//! A deploy builds the version on this machine (every file hashed, text
//! compressed, `_redirects` and `_headers` checked: a mistake is reported
//! before anything is sent), uploads only the blobs the network lacks, then
//! the manifest, and then points the site at the new version with one signed
//! deployment change. Until that change is recorded nothing a visitor sees
//! has changed; a deploy stopped before it leaves only unreferenced blobs,
//! which the store evicts like any other unpinned ones. It then waits until
//! the node serves the new version.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use controlplane::ledger::{DeploySpec, Tx};
use indicatif::{ProgressBar, ProgressStyle};
use tessera_hosting::{SiteSpec, VersionInfo, PREVIEW_PREFIX};

use crate::deploy_cli::{send, DeployArgs};
use crate::ledger::{agent, get_json, NodeArg};

/// Uploads in flight at once.
const UPLOADERS: usize = 4;

fn bar(len: u64, template: &str, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// The site's spec as recorded, if it exists (and is a site).
fn current(base: &str, name: &str) -> anyhow::Result<Option<(SiteSpec, serde_json::Value)>> {
    let mut resp = agent()
        .get(format!("{base}/deployments/{name}"))
        .call()
        .with_context(|| format!("cannot reach {base}"))?;
    if resp.status() == 404 {
        return Ok(None);
    }
    let body = resp.body_mut().read_to_string()?;
    if resp.status() != 200 {
        bail!("{base}/deployments/{name}: {}", body.trim());
    }
    let d: serde_json::Value = serde_json::from_str(&body)?;
    if d["service"] != "site" {
        bail!("{name} is a {} deployment, not a site", d["service"]);
    }
    let spec = SiteSpec::parse(d["spec"].as_str().unwrap_or("").as_bytes())
        .map_err(|e| anyhow::anyhow!("the recorded spec of {name}: {e}"))?;
    Ok(Some((spec, d)))
}

/// Whether the network has the blob (the node answers from its store or
/// from a peer).
fn has(agent: &ureq::Agent, base: &str, hash: &str) -> anyhow::Result<bool> {
    let resp = agent
        .head(format!("{base}/blobs/{hash}"))
        .call()
        .with_context(|| format!("cannot reach {base}"))?;
    Ok(resp.status() == 200)
}

fn upload(
    agent: &ureq::Agent,
    base: &str,
    blob: &tessera_hosting::build::Blob,
) -> anyhow::Result<()> {
    let hash = hex(&blob.hash);
    let mut reader = blob
        .reader()
        .with_context(|| format!("cannot read the file of {hash}"))?;
    let mut resp = agent
        .post(format!("{base}/blobs"))
        .header("Content-Length", blob.size.to_string())
        .header("Content-Type", "application/octet-stream")
        .send(ureq::SendBody::from_reader(&mut reader))
        .with_context(|| format!("uploading {hash} to {base}"))?;
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    if resp.status() != 201 && resp.status() != 200 {
        bail!("the node refused {hash}: {} {}", resp.status(), body.trim());
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).context("the node's answer is not JSON")?;
    if v["hash"].as_str() != Some(hash.as_str()) {
        bail!(
            "the node stored {hash} under {}: the file changed while it was sent",
            v["hash"]
        );
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Waits (60 s at most) until the node serves `id` for `name`.
fn wait_live(base: &str, name: &str, id: &str) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(v) = get_json(&agent(), &format!("{base}/sites/_status/{name}")) {
            if v["live"].as_str() == Some(id) {
                return Ok(v);
            }
        }
        if Instant::now() > deadline {
            bail!("the deployment is recorded, but {base} has not switched {name} to {id} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `http://{name}.sites.localhost:{port}/` for the node at `base`.
fn site_url(base: &str, label: &str, suffix: &str) -> String {
    let port = url_port(base);
    format!("http://{label}.{suffix}{port}/")
}

fn url_port(base: &str) -> String {
    let rest = base.split("://").nth(1).unwrap_or(base);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((_, p)) if p.bytes().all(|b| b.is_ascii_digit()) => format!(":{p}"),
        _ => String::new(),
    }
}

pub fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let Some(dir) = args.path.clone() else {
        bail!(
            "say which folder to deploy: tessera deploy site --name {} ./public",
            args.name
        );
    };
    let base = args.node.node.trim_end_matches('/').to_string();
    let name = args.name.clone();
    let quiet = args.node.json;
    // 1. The version, built and checked here.
    let hashing = if quiet {
        ProgressBar::hidden()
    } else {
        bar(0, "{msg} [{bar:30}] {pos}/{len} files", "hashing")
    };
    let built = tessera_hosting::build::build(&dir, &mut |done, total| {
        hashing.set_length(total as u64);
        hashing.set_position(done as u64);
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    hashing.finish_and_clear();
    let previous = current(&base, &name)?;
    // 2. Only what the network lacks.
    let agent = agent();
    let total_bytes: u64 = built.blobs.iter().map(|b| b.size).sum();
    let sending = if quiet {
        ProgressBar::hidden()
    } else {
        bar(
            total_bytes,
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            "uploading",
        )
    };
    let next = AtomicUsize::new(0);
    let (uploaded, skipped) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..UPLOADERS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(blob) = built.blobs.get(i) else {
                    return;
                };
                if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                    return;
                }
                let step = has(&agent, &base, &hex(&blob.hash)).and_then(|present| {
                    if present {
                        skipped.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    } else {
                        upload(&agent, &base, blob).map(|()| {
                            uploaded.fetch_add(1, Ordering::Relaxed);
                        })
                    }
                });
                sending.inc(blob.size);
                if let Err(e) = step {
                    if let Ok(mut f) = failure.lock() {
                        f.get_or_insert(e);
                    }
                    return;
                }
            });
        }
    });
    sending.finish_and_clear();
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e.context("the deploy stopped before it changed anything; run it again"));
    }
    // 3. The manifest: its hash is the version.
    let manifest = built.manifest.to_bytes();
    let id = hex(blake3::hash(&manifest).as_bytes());
    let manifest_blob = tessera_hosting::build::Blob {
        hash: *blake3::hash(&manifest).as_bytes(),
        size: manifest.len() as u64,
        source: tessera_hosting::build::Source::Bytes(manifest),
    };
    if !has(&agent, &base, &id)? {
        upload(&agent, &base, &manifest_blob)
            .context("the deploy stopped before it changed anything; run it again")?;
    }
    // 4. One change points the name at it.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let info = VersionInfo {
        id: id.clone(),
        deployed_at: now,
        files: built.manifest.files.len() as u64,
        bytes: built.manifest.bytes(),
    };
    let keep = args.keep.clamp(1, tessera_hosting::MAX_VERSIONS);
    let (old_spec, old) = match previous {
        Some((s, d)) => (Some(s), Some(d)),
        None => (None, None),
    };
    let mut versions = vec![info];
    if let Some(s) = &old_spec {
        versions.extend(s.versions.iter().filter(|v| v.id != id).cloned());
    }
    let pruned = versions.len().saturating_sub(keep);
    versions.truncate(keep);
    let spec = SiteSpec {
        live: id.clone(),
        hosts: if args.hosts.is_empty() {
            old_spec
                .as_ref()
                .map(|s| s.hosts.clone())
                .unwrap_or_default()
        } else {
            args.hosts.clone()
        },
        versions,
    };
    let replicas = args
        .replicas
        .or_else(|| {
            old.as_ref()
                .and_then(|d| d["replicas"].as_u64())
                .map(|r| r as u16)
        })
        .unwrap_or(1);
    let regions = if args.regions.is_empty() {
        old.as_ref()
            .and_then(|d| d["regions"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.as_str().map(str::to_string))
            .collect()
    } else {
        args.regions.clone()
    };
    send(
        &args.node,
        Tx::Deploy(DeploySpec {
            name: name.clone(),
            service: "site".into(),
            spec: spec.to_toml().into_bytes(),
            replicas,
            regions,
        }),
    )?;
    let status = wait_live(&base, &name, &id)?;
    let suffix = status["host_suffix"].as_str().unwrap_or("sites.localhost");
    let (up, skip) = (uploaded.into_inner(), skipped.into_inner());
    if quiet {
        println!(
            "{}",
            serde_json::json!({
                "name": name, "version": id, "files": built.manifest.files.len(),
                "blobs": built.blobs.len(), "uploaded": up, "skipped": skip, "pruned": pruned,
                "url": site_url(&base, &name, suffix),
            })
        );
    } else {
        println!(
            "deployed {name}: version {} ({} files; {up} blobs uploaded, {skip} already on the network{})",
            &id[..PREVIEW_PREFIX],
            built.manifest.files.len(),
            if pruned > 0 { format!("; {pruned} old version(s) pruned") } else { String::new() }
        );
        println!("  live:    {}", site_url(&base, &name, suffix));
        println!(
            "  preview: {}",
            site_url(&base, &format!("{}.{name}", &id[..PREVIEW_PREFIX]), suffix)
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct RollbackArgs {
    /// The site.
    pub name: String,
    /// The version to serve (its hash, or the start of it, as `tessera
    /// deployments` lists them); the one before the live one if not given.
    pub version: Option<String>,
    #[command(flatten)]
    pub node: NodeArg,
}

/// `tessera rollback`: the site pointed at a version it keeps (whole on its
/// nodes already, so the switch is at once).
pub fn rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let base = args.node.node.trim_end_matches('/').to_string();
    let Some((mut spec, d)) = current(&base, &args.name)? else {
        bail!("there is no site named {}", args.name);
    };
    let target = match &args.version {
        Some(prefix) => {
            let found: Vec<&VersionInfo> = spec
                .versions
                .iter()
                .filter(|v| v.id.starts_with(prefix.as_str()))
                .collect();
            match found.as_slice() {
                [one] => one.id.clone(),
                [] => bail!(
                    "{} keeps no version {prefix} (tessera deployments lists them)",
                    args.name
                ),
                _ => bail!("{prefix} names more than one version: give more of it"),
            }
        }
        None => {
            let at = spec
                .versions
                .iter()
                .position(|v| v.id == spec.live)
                .unwrap_or(0);
            match spec.versions.get(at + 1) {
                Some(v) => v.id.clone(),
                None => bail!("{} keeps no version older than the live one", args.name),
            }
        }
    };
    if target == spec.live {
        println!("{} already serves {}", args.name, &target[..PREVIEW_PREFIX]);
        return Ok(ExitCode::SUCCESS);
    }
    spec.live = target.clone();
    let regions = d["regions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    send(
        &args.node,
        Tx::Deploy(DeploySpec {
            name: args.name.clone(),
            service: "site".into(),
            spec: spec.to_toml().into_bytes(),
            replicas: d["replicas"].as_u64().unwrap_or(1) as u16,
            regions,
        }),
    )?;
    wait_live(&base, &args.name, &target)?;
    println!(
        "{} now serves version {}",
        args.name,
        &target[..PREVIEW_PREFIX]
    );
    Ok(ExitCode::SUCCESS)
}

/// The versions lines of `tessera deployments` for a site.
pub fn versions_lines(d: &serde_json::Value) -> Vec<String> {
    let Ok(spec) = SiteSpec::parse(d["spec"].as_str().unwrap_or("").as_bytes()) else {
        return Vec::new();
    };
    spec.versions
        .iter()
        .map(|v| {
            format!(
                "    {}  {}  {:>6} files  {:>12} bytes{}",
                &v.id[..PREVIEW_PREFIX],
                httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(v.deployed_at)),
                v.files,
                v.bytes,
                if v.id == spec.live { "  (live)" } else { "" }
            )
        })
        .collect()
}
