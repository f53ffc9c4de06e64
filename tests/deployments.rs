//! Deployments end to end: `tessera deploy`, `tessera deployments` and
//! `tessera undeploy` against real nodes; the owner's key required to change or
//! remove one; malformed specs, forged signatures and replays refused with what
//! is wrong and nothing changed; the record kept across a restart; and a
//! placement over the asked regions of a five-node cluster that moves when a
//! placed node dies.

mod common;

use std::process::Output;
use std::time::Duration;

use common::*;
use controlplane::ledger::{DeploySpec, SignedTx, Tx};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn listed(node: &Node) -> Vec<serde_json::Value> {
    let (status, _, body) = node.get("/deployments");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    v["deployments"].as_array().expect("a list").clone()
}

fn post(node: &Node, wire: &[u8]) -> (u16, String) {
    let mut raw = format!(
        "POST /deployments HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        wire.len()
    )
    .into_bytes();
    raw.extend_from_slice(wire);
    let (status, _, body) = node.request(&raw);
    (status, String::from_utf8_lossy(&body).to_string())
}

#[test]
fn deploy_update_list_and_undeploy_with_the_owners_key_only() {
    let mut node = Node::start(&[]);
    let owner = tempfile::tempdir().expect("tmp");
    let other = tempfile::tempdir().expect("tmp");
    let out = cli(
        owner.path(),
        &node,
        &[
            "deploy",
            "cdn",
            "--name",
            "shop",
            "--origin",
            "https://origin.example",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("deployed shop (version 1, 1 of 1 replicas placed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let list = listed(&node);
    assert_eq!(list.len(), 1);
    let d = &list[0];
    assert_eq!(d["name"], "shop");
    assert_eq!(d["service"], "cdn");
    assert_eq!(d["version"], 1);
    assert_eq!(d["health"], "placed");
    assert_eq!(d["placement"][0]["addr"], node.addr.to_string());
    // The spec is content-addressed, and stored like any blob.
    let spec = d["spec"].as_str().expect("spec").to_string();
    assert_eq!(spec, "origin = \"https://origin.example\"\n");
    let hash = d["spec_hash"].as_str().expect("hash");
    assert_eq!(hash, blake3::hash(spec.as_bytes()).to_hex().as_str());
    assert_eq!(node.get(&format!("/blobs/{hash}")).2, spec.as_bytes());

    // The same again: nothing changes. A changed spec: version 2.
    let same = cli(
        owner.path(),
        &node,
        &[
            "deploy",
            "cdn",
            "--name",
            "shop",
            "--origin",
            "https://origin.example",
        ],
    );
    assert!(same.status.success(), "{}", stderr(&same));
    assert_eq!(listed(&node)[0]["version"], 1);
    let changed = cli(
        owner.path(),
        &node,
        &[
            "deploy",
            "cdn",
            "--name",
            "shop",
            "--origin",
            "https://new-origin.example",
            "--replicas",
            "2",
        ],
    );
    assert!(changed.status.success(), "{}", stderr(&changed));
    let d = &listed(&node)[0];
    assert_eq!(
        (d["version"].as_u64(), d["replicas"].as_u64()),
        (Some(2), Some(2))
    );
    // Two replicas asked, one node: degraded, and it says how many are missing.
    assert_eq!(
        (d["health"].as_str(), d["missing"].as_u64()),
        (Some("degraded"), Some(1))
    );

    // Somebody else's key: refused, and nothing changes.
    let theirs = cli(
        other.path(),
        &node,
        &[
            "deploy",
            "cdn",
            "--name",
            "shop",
            "--origin",
            "https://evil.example",
        ],
    );
    assert!(!theirs.status.success());
    assert!(
        stderr(&theirs).contains("deployment shop belongs to another owner"),
        "{}",
        stderr(&theirs)
    );
    let gone = cli(other.path(), &node, &["undeploy", "shop"]);
    assert!(!gone.status.success());
    assert!(
        stderr(&gone).contains("belongs to another owner"),
        "{}",
        stderr(&gone)
    );
    assert_eq!(listed(&node)[0]["version"], 2);

    // Kept across a restart.
    node.restart();
    assert_eq!(listed(&node)[0]["version"], 2);
    let out = cli(owner.path(), &node, &["deployments"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("shop") && table.contains("degraded"),
        "{table}"
    );

    // The owner removes it.
    let out = cli(owner.path(), &node, &["undeploy", "shop"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(listed(&node).is_empty());
    assert_eq!(node.get("/deployments/shop").0, 404);
}

#[test]
fn malformed_forged_and_replayed_deployments_are_refused() {
    let node = Node::start(&[]);
    let client = tempfile::tempdir().expect("tmp");
    for (args, expect) in [
        (
            vec![
                "deploy",
                "cdn",
                "--name",
                "shop",
                "--origin",
                "ftp://origin.example",
            ],
            "the scheme must be http or https",
        ),
        (
            vec![
                "deploy",
                "cdn",
                "--name",
                "Shop",
                "--origin",
                "https://o.example",
            ],
            "a deployment name is 1 to 63 of a-z",
        ),
        (
            vec![
                "deploy",
                "video",
                "--name",
                "shop",
                "--origin",
                "https://o.example",
            ],
            "there is no service named \"video\"",
        ),
        (
            vec![
                "deploy",
                "cdn",
                "--name",
                "shop",
                "--origin",
                "https://o.example",
                "--replicas",
                "0",
            ],
            "replicas are 1 to 64",
        ),
    ] {
        let out = cli(client.path(), &node, &args);
        assert!(!out.status.success(), "{args:?} was taken");
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
    }
    let spec_file = client.path().join("spec.toml");
    std::fs::write(
        &spec_file,
        "origin = \"https://o.example\"\ncolour = \"blue\"\n",
    )
    .expect("spec");
    let out = cli(
        client.path(),
        &node,
        &[
            "deploy",
            "cdn",
            "--name",
            "shop",
            "--spec",
            spec_file.to_str().expect("utf-8"),
        ],
    );
    assert!(
        stderr(&out).contains("unknown field `colour`"),
        "{}",
        stderr(&out)
    );
    assert!(listed(&node).is_empty());

    // Raw requests: garbage, a forged signature, a replayed nonce.
    let (status, body) = post(&node, b"not a transaction");
    assert_eq!(status, 400, "{body}");
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let tx = |origin: &str| {
        Tx::Deploy(DeploySpec {
            name: "raw".into(),
            service: "cdn".into(),
            spec: format!("origin = \"{origin}\"").into_bytes(),
            replicas: 1,
            regions: vec![],
        })
    };
    let mut forged = SignedTx::new(tx("https://a.example"), 0, &key);
    forged.sig[5] ^= 0x40;
    let (status, body) = post(&node, &forged.encode());
    assert_eq!(status, 400);
    assert!(body.contains("signature does not verify"), "{body}");
    let first = SignedTx::new(tx("https://a.example"), 0, &key).encode();
    assert_eq!(post(&node, &first).0, 200);
    let (status, body) = post(
        &node,
        &SignedTx::new(tx("https://b.example"), 0, &key).encode(),
    );
    assert_eq!(status, 400);
    assert!(body.contains("nonce 0 is not the next one (1)"), "{body}");
    let list = listed(&node);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["spec"], "origin = \"https://a.example\"");
    // Not a deployment transaction.
    let (status, body) = post(
        &node,
        &SignedTx::new(Tx::Deposit { amount: 5 }, 1, &key).encode(),
    );
    assert_eq!(status, 400);
    assert!(
        body.contains("Deploy, Undeploy, Grant and Revoke only"),
        "{body}"
    );
}

#[test]
fn a_deployment_is_placed_in_the_regions_asked_and_moves_when_a_node_dies() {
    // Five nodes: two in eu-west, two in us-east, one in ap-south.
    let regions = ["eu-west", "eu-west", "us-east", "us-east", "ap-south"];
    let mut nodes = start_in_regions(&regions, |_| Vec::new());
    let observer = &nodes[4];
    let client = tempfile::tempdir().expect("tmp");
    let out = cli(
        client.path(),
        observer,
        &[
            "deploy",
            "cdn",
            "--name",
            "shop",
            "--origin",
            "https://o.example",
            "--replicas",
            "2",
            "--region",
            "eu-west",
            "--region",
            "us-east",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let placed = |node: &Node| -> Vec<(String, String)> {
        let (_, _, body) = node.get("/deployments/shop");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        v["placement"]
            .as_array()
            .expect("placement")
            .iter()
            .map(|n| {
                (
                    n["addr"].as_str().expect("addr").to_string(),
                    n["region"].as_str().expect("region").to_string(),
                )
            })
            .collect()
    };
    let before = placed(observer);
    let rs: Vec<&str> = before.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(rs, ["eu-west", "us-east"], "{before:?}");
    // Kill the placed eu-west node: once it is seen down, the replica runs on
    // the other eu-west node, and the us-east one stays where it was.
    let victim = nodes
        .iter()
        .position(|n| n.addr.to_string() == before[0].0)
        .expect("the placed node");
    nodes[victim].kill9();
    let other_eu = nodes
        .iter()
        .enumerate()
        .find(|(i, _)| regions[*i] == "eu-west" && *i != victim)
        .map(|(_, n)| n.addr.to_string())
        .expect("the other eu-west node");
    let observer = &nodes[4];
    let took = within(
        Duration::from_secs(30),
        "the replica placed elsewhere",
        || {
            let now = placed(observer);
            now.len() == 2 && now[0].0 == other_eu && now[1] == before[1]
        },
    );
    eprintln!("placement moved {took:?} after the kill (failure detection included)");
}
