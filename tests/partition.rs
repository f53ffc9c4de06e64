//! A real network partition between two groups of nodes: two network namespaces
//! joined by a veth pair, which the test takes down and brings back up. Needs
//! root and iproute2 (`ip netns`), as on the development and CI machines.
//!
//! Both sides keep serving what they hold while cut off, each sees the other
//! side go down, and membership converges again after the heal.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{random_bytes, within, BIN};

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces, `a` with 10.77.x.1-2 and `b` with 10.77.x.3-5, on one veth
/// link; removed (with every process in them) when dropped.
struct Net {
    a: String,
    b: String,
    subnet: String,
    nodes: Vec<(String, Child, tempfile::TempDir)>,
}

impl Net {
    fn new() -> Net {
        let tag = std::process::id() % 100_000;
        let (a, b) = (format!("tsa{tag}"), format!("tsb{tag}"));
        let subnet = format!("10.77.{}", tag % 250);
        let net = Net {
            a: a.clone(),
            b: b.clone(),
            subnet: subnet.clone(),
            nodes: Vec::new(),
        };
        ip(&["netns", "add", &a]);
        ip(&["netns", "add", &b]);
        let (va, vb) = (format!("va{tag}"), format!("vb{tag}"));
        ip(&[
            "link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b,
        ]);
        for host in 1..=2 {
            ip(&[
                "-n",
                &a,
                "addr",
                "add",
                &format!("{subnet}.{host}/24"),
                "dev",
                &va,
            ]);
        }
        for host in 3..=5 {
            ip(&[
                "-n",
                &b,
                "addr",
                "add",
                &format!("{subnet}.{host}/24"),
                "dev",
                &vb,
            ]);
        }
        for (ns, dev) in [(&a, &va), (&b, &vb)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        net
    }

    fn ns_of(&self, host: u8) -> &str {
        if host <= 2 {
            &self.a
        } else {
            &self.b
        }
    }

    fn addr(&self, host: u8) -> String {
        format!("{}.{host}:8080", self.subnet)
    }

    fn start(&mut self, host: u8) {
        let dir = tempfile::tempdir().expect("tmp");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            self.ns_of(host),
            BIN,
            "run",
            "--cores",
            "1",
        ])
        .args(["--listen", &self.addr(host)])
        .args(["--gossip-probe-ms", "300", "--gossip-down-after-ms", "1500"])
        .arg("--data-dir")
        .arg(dir.path());
        if host != 1 {
            cmd.args(["--join", &self.addr(1)]);
        }
        let child = cmd
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        self.nodes.push((self.addr(host), child, dir));
    }

    /// Runs the tessera CLI inside `host`'s namespace.
    fn cli(&self, host: u8, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", self.ns_of(host), BIN])
            .args(args)
            .env(
                "TESSERA_CLIENT_DIR",
                std::env::temp_dir().join(format!("tessera-test-client-{}", std::process::id())),
            )
            .output()
            .expect("tessera cli")
    }

    fn members(&self, host: u8) -> Vec<serde_json::Value> {
        let url = format!("http://{}", self.addr(host));
        let out = self.cli(host, &["cluster", "members", "--json", "--node", &url]);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    fn alive(&self, host: u8) -> usize {
        self.members(host)
            .iter()
            .filter(|m| m["state"] == "alive" && m["verified"] == true)
            .count()
    }

    fn put(&self, host: u8, file: &Path) -> String {
        let url = format!("http://{}", self.addr(host));
        let out = self.cli(host, &["put", "--node", &url, file.to_str().expect("utf8")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("hash")
            .to_string()
    }

    fn get(&self, host: u8, hash: &str, to: &Path) -> bool {
        let url = format!("http://{}", self.addr(host));
        self.cli(
            host,
            &[
                "get",
                "--node",
                &url,
                hash,
                "-o",
                to.to_str().expect("utf8"),
            ],
        )
        .status
        .success()
    }

    fn link(&self, up: bool) {
        let tag = self.a.trim_start_matches("tsa");
        ip(&[
            "-n",
            &self.a,
            "link",
            "set",
            &format!("va{tag}"),
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
    }
}

#[test]
fn both_sides_of_a_partition_keep_serving_and_membership_heals() {
    let mut net = Net::new();
    for host in 1..=5 {
        net.start(host);
    }
    within(Duration::from_secs(20), "five members everywhere", || {
        (1..=5).all(|h| net.alive(h) == 5)
    });
    let dir = tempfile::tempdir().expect("tmp");
    let file = |name: &str, seed: u64| -> (PathBuf, Vec<u8>) {
        let data = random_bytes(300_000, seed);
        let path = dir.path().join(name);
        std::fs::write(&path, &data).expect("write");
        (path, data)
    };
    // One blob stored on each side before the cut.
    let (fa, da) = file("a", 1);
    let (fb, db) = file("b", 2);
    let ha = net.put(1, &fa);
    let hb = net.put(4, &fb);

    net.link(false);
    // Each side sees the other go down (2 nodes on side a, 3 on side b).
    within(Duration::from_secs(15), "side a sees side b down", || {
        net.alive(1) == 2
    });
    within(Duration::from_secs(15), "side b sees side a down", || {
        net.alive(3) == 3
    });
    // And keeps serving what it holds.
    let out = dir.path().join("ga");
    assert!(net.get(1, &ha, &out), "side a cannot serve its blob");
    assert_eq!(std::fs::read(&out).expect("read"), da);
    let out = dir.path().join("gb");
    assert!(net.get(4, &hb, &out), "side b cannot serve its blob");
    assert_eq!(std::fs::read(&out).expect("read"), db);

    net.link(true);
    within(
        Duration::from_secs(30),
        "membership converged after the heal",
        || (1..=5).all(|h| net.alive(h) == 5),
    );
    // Across the healed link a node can fetch what only the other side held.
    let out = dir.path().join("gab");
    assert!(
        net.get(2, &hb, &out),
        "side a cannot fetch side b's blob after the heal"
    );
    assert_eq!(std::fs::read(&out).expect("read"), db);
}
