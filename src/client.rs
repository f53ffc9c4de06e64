//! `tessera put` and `tessera get`: HTTP/1.1 clients that stream, and verify.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use dataplane::verified::{self, Item, VerifyError};
use dataplane::BlobHash;
use indicatif::{ProgressBar, ProgressStyle};

/// Files at least this large get a progress bar (on a terminal).
const PROGRESS_MIN_BYTES: u64 = 8 << 20;

#[derive(Args, Debug)]
pub struct PutArgs {
    /// Files to upload.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The node to talk to.
    #[arg(long, env = "TESSERA_NODE", default_value = "http://127.0.0.1:8080")]
    node: String,
    /// Use HTTP/3 (QUIC, same port) instead of HTTP/1.1.
    #[arg(long)]
    h3: bool,
    /// With --h3: verify the node's certificate against this CA file (nodes make
    /// self-signed certificates, so by default it is not verified).
    #[arg(long)]
    ca: Option<String>,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// The blob's hash (64 lowercase hex characters).
    hash: String,
    /// Where to write the blob; nothing is written unless every chunk group verifies.
    #[arg(short, long)]
    output: PathBuf,
    /// The node to talk to.
    #[arg(long, env = "TESSERA_NODE", default_value = "http://127.0.0.1:8080")]
    node: String,
    /// Use HTTP/3 (QUIC, same port) instead of HTTP/1.1; verified the same way.
    #[arg(long)]
    h3: bool,
    /// With --h3: verify the node's certificate against this CA file.
    #[arg(long)]
    ca: Option<String>,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn progress(len: u64, what: &str) -> ProgressBar {
    if len < PROGRESS_MIN_BYTES {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

fn error_body(resp: &mut ureq::http::Response<ureq::Body>) -> String {
    let mut text = String::new();
    let _ = resp
        .body_mut()
        .as_reader()
        .take(4096)
        .read_to_string(&mut text);
    text.trim().to_string()
}

pub fn put(args: PutArgs) -> anyhow::Result<ExitCode> {
    if args.h3 {
        return put_h3(&args);
    }
    let agent = agent();
    let url = format!("{}/blobs", args.node.trim_end_matches('/'));
    for path in &args.files {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata()?.len();
        let bar = progress(len, &path.display().to_string());
        let mut reader = bar.wrap_read(file);
        let mut resp = agent
            .post(&url)
            .header("Content-Length", len.to_string())
            .header("Content-Type", "application/octet-stream")
            .send(ureq::SendBody::from_reader(&mut reader))
            .with_context(|| format!("uploading {} to {url}", path.display()))?;
        bar.finish_and_clear();
        if resp.status() != 201 {
            bail!(
                "node refused {}: {} {}",
                path.display(),
                resp.status(),
                error_body(&mut resp)
            );
        }
        let body: serde_json::Value = serde_json::from_reader(resp.body_mut().as_reader())
            .context("node answered with invalid JSON")?;
        let hash = body["hash"].as_str().context("node's answer has no hash")?;
        println!("{hash}  {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn put_h3(args: &PutArgs) -> anyhow::Result<ExitCode> {
    let mut client = crate::h3client::H3Client::connect(&args.node, args.ca.as_deref())?;
    for path in &args.files {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata()?.len();
        let bar = progress(len, &path.display().to_string());
        let mut reader = bar.wrap_read(file);
        let mut answer = Vec::new();
        let resp = client.request("POST", "/blobs", &[], Some((&mut reader, len)), |_, d| {
            answer.extend_from_slice(d);
            Ok(())
        })?;
        bar.finish_and_clear();
        if resp.status != 201 {
            bail!(
                "node refused {}: {} {}",
                path.display(),
                resp.status,
                String::from_utf8_lossy(&answer).trim()
            );
        }
        let body: serde_json::Value =
            serde_json::from_slice(&answer).context("node answered with invalid JSON")?;
        let hash = body["hash"].as_str().context("node's answer has no hash")?;
        println!("{hash}  {}", path.display());
    }
    client.close();
    Ok(ExitCode::SUCCESS)
}

/// Reads what the HTTP/3 thread receives.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(c) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn get_h3(args: &GetArgs, hash: BlobHash) -> anyhow::Result<ExitCode> {
    // The QUIC connection runs on its own thread and hands the body over.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(256);
    let (status_tx, status_rx) = std::sync::mpsc::sync_channel::<u16>(1);
    // The verified size, once the body checked out (None: it did not).
    let (verified_tx, verified_rx) = std::sync::mpsc::sync_channel::<Option<u64>>(1);
    let node = args.node.clone();
    let ca = args.ca.clone();
    let path = format!("/blobs/{hash}?format=bao");
    let worker = std::thread::spawn(move || -> anyhow::Result<()> {
        let mut client = crate::h3client::H3Client::connect(&node, ca.as_deref())?;
        let mut told = false;
        let accept = [("accept", dataplane::http::BAO_MEDIA_TYPE)];
        let resp = client.request("GET", &path, &accept, None, |status, d| {
            if !told {
                let _ = status_tx.send(status);
                told = true;
            }
            tx.send(d.to_vec())
                .map_err(|_| std::io::Error::other("reader gone"))
        })?;
        if !told {
            let _ = status_tx.send(resp.status);
        }
        drop(tx);
        // Verified and written: the receipt goes back on this connection.
        if let Ok(Some(size)) = verified_rx.recv() {
            if let Err(e) = send_receipt(&mut client, &hash, size) {
                eprintln!("warning: no delivery receipt sent: {e:#}");
            }
        }
        client.close();
        Ok(())
    });
    let status = status_rx.recv().unwrap_or(0);
    let mut reader = ChannelReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
    };
    if status != 200 {
        let mut text = String::new();
        let _ = reader.by_ref().take(4096).read_to_string(&mut text);
        let _ = verified_tx.send(None);
        drop(reader);
        let failed = worker
            .join()
            .map_err(|_| anyhow::anyhow!("HTTP/3 thread panicked"))?;
        if let Err(e) = failed {
            bail!("{e:#}");
        }
        bail!("node answered {status}: {}", text.trim());
    }
    let result = decode_into(&hash, &args.output, &mut reader);
    drop(reader);
    let _ = verified_tx.send(result.as_ref().ok().map(|(_, size)| *size));
    let transfer = worker
        .join()
        .map_err(|_| anyhow::anyhow!("HTTP/3 thread panicked"))?;
    match (result, transfer) {
        (Ok((code, _)), _) => Ok(code),
        (Err(e), Err(t)) => Err(e.context(format!("{t:#}"))),
        (Err(e), Ok(())) => Err(e),
    }
}

pub fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let hash = BlobHash::parse(args.hash.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.h3 {
        return get_h3(&args, hash);
    }
    let url = format!(
        "{}/blobs/{hash}?format=bao",
        args.node.trim_end_matches('/')
    );
    let agent = agent();
    let mut resp = agent
        .get(&url)
        .header("Accept", dataplane::http::BAO_MEDIA_TYPE)
        .call()
        .with_context(|| format!("requesting {url}"))?;
    if resp.status() != 200 {
        bail!("node answered {}: {}", resp.status(), error_body(&mut resp));
    }
    let reader = resp.body_mut().as_reader();
    let (code, size) = decode_into(&hash, &args.output, reader)?;
    // Verified and written: sign a delivery receipt and hand it to the node
    // (on the agent's kept-alive connection). A failure here does not undo the
    // download; it is reported.
    let mut http1 = Http1 {
        agent: &agent,
        base: args.node.trim_end_matches('/').to_string(),
    };
    if let Err(e) = send_receipt(&mut http1, &hash, size) {
        eprintln!("warning: no delivery receipt sent: {e:#}");
    }
    Ok(code)
}

/// The client's own key and receipt counter, in `$TESSERA_CLIENT_DIR` or
/// `~/.config/tessera/client/` (made on first use, key file mode 0600).
pub fn client_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TESSERA_CLIENT_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("tessera").join("client")
}

/// One request and its whole answer, over whichever connection the download
/// used (so the receipt goes back on the same one).
pub trait Exchange {
    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<(u16, Vec<u8>)>;
}

/// HTTP/1.1: the agent's kept-alive connection to `base`.
struct Http1<'a> {
    agent: &'a ureq::Agent,
    base: String,
}

impl Exchange for Http1<'_> {
    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let url = format!("{}{path}", self.base);
        let mut resp = match (method, body) {
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/octet-stream")
                .send(b)?,
            _ => self.agent.get(&url).call()?,
        };
        let status = resp.status().as_u16();
        let bytes = resp.body_mut().with_config().limit(1 << 20).read_to_vec()?;
        Ok((status, bytes))
    }
}

impl Exchange for crate::h3client::H3Client {
    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut reader = body.map(|b| (std::io::Cursor::new(b), b.len() as u64));
        let upload = reader.as_mut().map(|(r, len)| (r as &mut dyn Read, *len));
        let extra = [("content-type", "application/octet-stream")];
        let resp = self.request(method, path, &extra, upload, |_, d| {
            if out.len() < 1 << 20 {
                out.extend_from_slice(d);
            }
            Ok(())
        })?;
        Ok((resp.status, out))
    }
}

/// Signs a receipt for `bytes` of `hash` delivered by the node, and sends it.
fn send_receipt(ex: &mut dyn Exchange, hash: &BlobHash, bytes: u64) -> anyhow::Result<()> {
    let dir = client_dir();
    let (key, _) = controlplane::NodeKey::load_or_create(&dir)?;
    // Which node served us: its own entry in its member list.
    let (status, body) = ex.exchange("GET", "/cluster/members", None)?;
    if status != 200 {
        bail!("the node has no control plane ({status})");
    }
    let members: Vec<controlplane::cluster::MemberInfo> = serde_json::from_slice(&body)?;
    let me = members
        .iter()
        .find(|m| m.is_self)
        .context("the node did not name itself")?;
    let node_id: controlplane::NodeId =
        me.id.parse().map_err(|e| anyhow::anyhow!("node id: {e}"))?;
    // The ledger's open epoch (0 where the node runs no ledger).
    let epoch = match ex.exchange("GET", "/ledger/status", None)? {
        (200, body) => {
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            v["epoch"].as_u64().unwrap_or(0)
        }
        _ => 0,
    };
    // The next sequence number: a counter beside the key, replaced atomically.
    let seq_path = dir.join("receipt.seq");
    let seq = std::fs::read_to_string(&seq_path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let tmp = dir.join("receipt.seq.tmp");
    std::fs::write(&tmp, (seq + 1).to_string())?;
    std::fs::rename(&tmp, &seq_path)?;
    let receipt = controlplane::ledger::Receipt {
        client: key.id().0,
        node: node_id.0,
        service: controlplane::ledger::BLOB_SERVICE,
        content: hash.0,
        bytes,
        epoch,
        seq,
    }
    .sign_with(&key);
    let body = postcard::to_stdvec(&vec![receipt])?;
    let (status, answer) = ex.exchange("POST", "/receipts", Some(&body))?;
    if status != 202 {
        bail!(
            "node answered {status}: {}",
            String::from_utf8_lossy(&answer).trim()
        );
    }
    Ok(())
}

/// Verifies a verified stream group by group into a file beside `output`, renamed
/// into place only when whole; nothing is left behind on any error.
fn decode_into(
    hash: &BlobHash,
    output: &std::path::Path,
    reader: impl Read,
) -> anyhow::Result<(ExitCode, u64)> {
    let hash = *hash;
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Written beside the target and renamed only when whole and verified; dropped
    // (and so deleted) on any error.
    let partial = tempfile::Builder::new()
        .prefix(".tessera-get-")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let bar = progress(0, &hash.to_string()[..12]);
    let reader = bar.wrap_read(reader);
    let out = partial.as_file();
    let result =
        verified::decode_stream(hash.as_blake3(), reader, &verified::all_ranges(), |item| {
            match item {
                Item::Size(size) => {
                    if size >= PROGRESS_MIN_BYTES {
                        bar.set_length(size);
                    }
                }
                Item::Group { offset, data } => out.write_all_at(data, offset)?,
                Item::Parent { .. } => {}
            }
            Ok(())
        });
    bar.finish_and_clear();
    let size = match result {
        Ok(size) => size,
        Err(e @ (VerifyError::BadGroup { .. } | VerifyError::BadParent { .. })) => bail!(
            "verification failed: {e}: the node sent data that is not blob {hash}; nothing was written to {}",
            output.display()
        ),
        Err(e) => bail!(
            "download of {hash} failed: {e}; nothing was written to {}",
            output.display()
        ),
    };
    let mut file = partial.as_file();
    file.flush()?;
    file.sync_all()?;
    partial
        .persist(output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    eprintln!(
        "{hash}: {size} bytes verified, written to {}",
        output.display()
    );
    Ok((ExitCode::SUCCESS, size))
}

#[derive(clap::Args)]
pub struct MembersArgs {
    /// The node to ask.
    #[arg(long, env = "TESSERA_NODE", default_value = "http://127.0.0.1:8080")]
    node: String,
    /// Print the JSON array (id, addr, region, state, rtt_ms, verified, self).
    #[arg(long)]
    json: bool,
}

/// `tessera cluster members`: the node's view of the cluster.
pub fn members(args: MembersArgs) -> anyhow::Result<ExitCode> {
    let url = format!("{}/cluster/members", args.node.trim_end_matches('/'));
    let mut resp = agent()
        .get(&url)
        .call()
        .with_context(|| format!("cannot reach {url}"))?;
    if resp.status() != 200 {
        anyhow::bail!("{url}: {} {}", resp.status(), error_body(&mut resp));
    }
    let text = resp.body_mut().read_to_string()?;
    let members: Vec<controlplane::cluster::MemberInfo> =
        serde_json::from_str(&text).with_context(|| format!("{url}: not a member list"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&members)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<18} {:<22} {:<12} {:<8} {:>8}  verified",
        "id", "addr", "region", "state", "rtt_ms"
    );
    for m in &members {
        println!(
            "{:<18} {:<22} {:<12} {:<8} {:>8}  {}{}",
            format!("{}…", &m.id[..16.min(m.id.len())]),
            m.addr,
            if m.region.is_empty() { "-" } else { &m.region },
            m.state,
            m.rtt_ms
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "-".into()),
            if m.verified { "yes" } else { "no" },
            if m.is_self { "  (this node)" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}
