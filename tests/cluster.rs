//! Gossip membership between real nodes on 127.0.0.x: join through one node's
//! client-facing address, signed records, failure detection, leave on SIGTERM,
//! rejoin after a restart, and bad gossip dropped without harm.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;

/// The cluster tests run one at a time: each starts several nodes, and failure
/// detection is timing-sensitive on a small machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The entry for the member at `addr` in a member list.
fn entry(view: &[serde_json::Value], addr: SocketAddr) -> Option<&serde_json::Value> {
    view.iter()
        .find(|m| m["addr"].as_str() == Some(addr.to_string().as_str()))
}

fn state_of(node: &Node, addr: SocketAddr) -> Option<String> {
    entry(&members(node), addr).and_then(|m| m["state"].as_str().map(String::from))
}

fn start_cluster(n: usize) -> Vec<Node> {
    start_cluster_with(n, &[])
}

/// `n` nodes on 127.0.0.1…n, each with `extra` flags too.
fn start_cluster_with(n: usize, extra: &[&str]) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let addr = free_addr_on(&format!("127.0.0.{}", i + 1));
        let region = format!("region-{}", i % 2);
        let mut args: Vec<String> = FAST_GOSSIP.iter().map(|s| s.to_string()).collect();
        args.extend(["--region".into(), region]);
        args.extend(extra.iter().map(|s| s.to_string()));
        if let Some(first) = nodes.first() {
            args.extend(["--join".into(), first.addr.to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes.push(Node::start_at(addr, &refs));
    }
    nodes
}

fn all_alive_and_verified(nodes: &[Node], observer: &Node) -> bool {
    let m = members(observer);
    m.len() == nodes.len()
        && m.iter().all(|m| {
            m["state"] == "alive"
                && m["verified"] == true
                && m["region"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("region-"))
        })
}

#[test]
fn five_nodes_find_each_other_detect_failures_and_rejoin() {
    let _serial = serial();
    let mut nodes = start_cluster(5);
    // Everyone sees all five, alive, with a record each signed.
    for i in 0..nodes.len() {
        within(Duration::from_secs(15), "full membership", || {
            all_alive_and_verified(&nodes, &nodes[i])
        });
    }
    let m = members(&nodes[1]);
    for entry in &m {
        for key in ["id", "addr", "region", "state", "rtt_ms"] {
            assert!(entry.get(key).is_some(), "{key} missing: {entry}");
        }
        assert_eq!(entry["id"].as_str().map(str::len), Some(64));
        // Records carry each node's load (store fullness, thousandths).
        assert!(
            entry["load_permille"].as_u64().is_some_and(|l| l <= 1000),
            "{entry}"
        );
    }
    // RTT to peers is measured (loopback: well under 100 ms).
    within(Duration::from_secs(30), "rtt measured", || {
        members(&nodes[1])
            .iter()
            .filter(|m| m["self"] != true)
            .all(|m| m["rtt_ms"].as_f64().is_some_and(|r| r < 100.0))
    });
    // And every member has a Vivaldi coordinate that predicts a loopback RTT.
    within(Duration::from_secs(30), "coordinates estimate rtt", || {
        members(&nodes[2])
            .iter()
            .filter(|m| m["self"] != true)
            .all(|m| {
                m["est_rtt_ms"]
                    .as_f64()
                    .is_some_and(|r| r > 0.0 && r < 100.0)
            })
    });

    // Every node computes the same home nodes for a blob (rendezvous hashing);
    // the one that holds it says so.
    let data = random_bytes(10_000, 3);
    let hash = nodes[0].put_bytes(&data);
    let route = |n: &Node| -> serde_json::Value {
        let (status, _, body) = n.get(&format!("/route/{hash}"));
        assert_eq!(status, 200);
        serde_json::from_slice(&body).expect("json")
    };
    let homes = |v: &serde_json::Value| -> Vec<(u64, String)> {
        let mut h: Vec<(u64, String)> = v["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter(|n| n["home_rank"].as_u64().is_some_and(|r| r < 100))
            .map(|n| {
                (
                    n["home_rank"].as_u64().unwrap_or(0),
                    n["id"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        h.sort();
        h
    };
    let from0 = route(&nodes[0]);
    assert_eq!(homes(&from0).len(), 3, "{from0}");
    for n in &nodes[1..] {
        assert_eq!(homes(&route(n)), homes(&from0));
    }
    let me0 = from0["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["addr"].as_str() == Some(nodes[0].addr.to_string().as_str()));
    if let Some(me0) = me0 {
        assert_eq!(me0["holds"], true, "{from0}");
    }
    assert_eq!(nodes[1].get("/route/nothex").0, 400);

    // A killed node is declared down within the bound (probe 300 ms + 1.5 s).
    let victim = nodes[3].addr;
    nodes[3].kill9();
    let took = within(Duration::from_secs(30), "killed node marked down", || {
        state_of(&nodes[0], victim).as_deref() == Some("down")
    });
    eprintln!("failure detected in {took:?}");
    // It comes back after a restart (a newer identity than the one held down).
    nodes[3].restart();
    within(
        Duration::from_secs(30),
        "restarted node alive again",
        || state_of(&nodes[0], victim).as_deref() == Some("alive"),
    );

    // SIGTERM: the node says it leaves; the others know at once.
    let leaver = nodes[4].addr;
    // SAFETY: signalling a child process we started.
    unsafe { libc::kill(nodes[4].pid(), libc::SIGTERM) };
    let took = within(Duration::from_secs(15), "leaving node marked down", || {
        state_of(&nodes[0], leaver).as_deref() == Some("down")
    });
    eprintln!("leave seen in {took:?}");
}

#[test]
fn bad_gossip_is_dropped_and_changes_nothing() {
    let _serial = serial();
    let nodes = start_cluster(2);
    within(Duration::from_secs(30), "membership", || {
        all_alive_and_verified(&nodes, &nodes[0])
    });
    let before = members(&nodes[0]);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let target = nodes[0].addr;
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut junk = |len: usize| {
        (0..len)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect::<Vec<u8>>()
    };
    // Not QUIC and not a valid envelope: random bodies with each gossip kind,
    // a truncated one, an oversized one, and an envelope whose signature does
    // not match the node id it names (a forged member announcement).
    for kind in [0x00u8, 0x01, 0x02, 0x03, 0x3f] {
        for len in [0usize, 10, 96, 97, 400, 1400] {
            let mut d = junk(len);
            if let Some(b) = d.first_mut() {
                *b = kind;
            }
            let _ = sock.send_to(&d, target);
        }
    }
    let _ = sock.send_to(&vec![0x01; 9000], target);
    let forger = controlplane::NodeKey::ephemeral();
    let victim: controlplane::NodeId = before[1]["id"].as_str().expect("id").parse().expect("id");
    let mut forged = controlplane::cluster::seal_for_test(&forger, 0x01, b"\x00\x01announce");
    forged[1..33].copy_from_slice(&victim.0);
    let _ = sock.send_to(&forged, target);
    // A correctly signed envelope whose body is not gossip.
    let _ = sock.send_to(
        &controlplane::cluster::seal_for_test(&forger, 0x01, &junk(200)),
        target,
    );
    // Node-to-node HTTP requests must be signed by a live member: a stranger's
    // valid signature, a member's id with a wrong signature, and a stale time
    // are all refused with 401; the same request without the header is a
    // client's and is answered.
    let path = "/healthz";
    let signed = |key: &controlplane::NodeKey, id: &str, time: &str| {
        let msg = dataplane::http::peer_message(b"GET", path.as_bytes(), time.as_bytes());
        let sig: String = key.sign(&msg).iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "GET {path} HTTP/1.1\r\nX-Tessera-Peer: {id}\r\nX-Tessera-Peer-Time: {time}\r\nX-Tessera-Peer-Sig: {sig}\r\nConnection: close\r\n\r\n"
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        .to_string();
    let stranger = forger.id().to_string();
    let member = before[1]["id"].as_str().expect("id").to_string();
    assert_eq!(
        nodes[0]
            .request(signed(&forger, &stranger, &now).as_bytes())
            .0,
        401
    );
    assert_eq!(
        nodes[0]
            .request(signed(&forger, &member, &now).as_bytes())
            .0,
        401
    );
    assert_eq!(
        nodes[0]
            .request(signed(&forger, &stranger, "1000").as_bytes())
            .0,
        401
    );
    assert_eq!(nodes[0].get(path).0, 200);

    std::thread::sleep(Duration::from_millis(800));
    // The node still serves, and its view has no phantom or changed member.
    assert_eq!(nodes[0].get("/healthz").0, 200);
    let after = members(&nodes[0]);
    assert_eq!(after.len(), before.len());
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(
            (&a["id"], &a["addr"], &a["state"]),
            (&b["id"], &b["addr"], &b["state"])
        );
    }
}

#[test]
fn a_blob_put_on_one_node_is_replicated_and_served_by_every_other() {
    let _serial = serial();
    let mut nodes = start_cluster(5);
    for i in 0..nodes.len() {
        within(Duration::from_secs(15), "full membership", || {
            all_alive_and_verified(&nodes, &nodes[i])
        });
    }
    // 6 MiB: large enough to be fetched in parts from several holders at once.
    let data = random_bytes(6 << 20, 77);
    let hash = nodes[2].put_bytes(&data);
    // Its home nodes (rendezvous, replication 3) receive a copy.
    let (_, _, body) = nodes[2].get(&format!("/route/{hash}"));
    let route: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let homes: Vec<String> = route["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["home_rank"].as_u64().is_some_and(|r| r < 100))
        .map(|n| n["addr"].as_str().expect("addr").to_string())
        .collect();
    assert_eq!(homes.len(), 3, "{route}");
    for n in nodes.iter().filter(|n| homes.contains(&n.addr.to_string())) {
        let path = n.data_dir.join("blobs").join(&hash);
        within(Duration::from_secs(30), "replica on a home node", || {
            path.exists()
        });
    }
    // Every node serves it byte for byte: holders from disk, the others fetch
    // the verified stream from a peer first.
    for n in &nodes {
        let (status, _, body) = n.get(&format!("/blobs/{hash}"));
        assert_eq!(status, 200, "{}", n.addr);
        assert!(body == data, "bytes differ from {}", n.addr);
    }
    // Kill one home: the blob is still served, by a node that must fetch it.
    let dead = nodes
        .iter()
        .position(|n| homes.contains(&n.addr.to_string()) && n.addr != nodes[2].addr)
        .expect("a home other than the uploader");
    nodes[dead].kill9();
    let late = Node::start_at(
        free_addr_on("127.0.0.9"),
        &[
            "--gossip-probe-ms",
            "300",
            "--gossip-down-after-ms",
            "1500",
            "--join",
            &nodes[2].addr.to_string(),
        ],
    );
    let mut last = Vec::new();
    let seen = (0..150).any(|_| {
        last = members(&late);
        let ok = last
            .iter()
            .filter(|m| m["state"] == "alive" && m["verified"] == true)
            .count()
            >= 4;
        if !ok {
            std::thread::sleep(Duration::from_millis(100));
        }
        ok
    });
    assert!(seen, "late joiner's view: {last:#?}");
    let (status, _, body) = late.get(&format!("/blobs/{hash}"));
    assert_eq!(status, 200);
    assert!(body == data, "late joiner served different bytes");

    // A holder whose copy rotted cuts its own stream when it notices (whether
    // the asker ever asks it depends on the ranking): whatever happens, nothing
    // bad is stored or served. Marking a lying peer is asserted in
    // `a_peer_that_sends_corrupt_chunks_is_caught_and_marked`.
    let rotten = nodes
        .iter()
        .position(|n| n.child.is_some() && n.data_dir.join("blobs").join(&hash).exists())
        .expect("a live holder");
    let path = nodes[rotten].data_dir.join("blobs").join(&hash);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[100_000] ^= 0x40;
    std::fs::write(&path, bytes).expect("write");
    let asker = Node::start_at(
        free_addr_on("127.0.0.10"),
        &[
            "--gossip-probe-ms",
            "300",
            "--gossip-down-after-ms",
            "1500",
            "--join",
            &nodes[rotten].addr.to_string(),
        ],
    );
    within(Duration::from_secs(15), "asker sees the cluster", || {
        alive_verified(&asker) >= 5
    });
    let (status, _, body) = asker.get(&format!("/blobs/{hash}"));
    assert_eq!(status, 200);
    assert!(body == data, "asker served different bytes");
    let stored = std::fs::read(asker.data_dir.join("blobs").join(&hash)).expect("stored");
    assert!(stored == data, "asker stored bad bytes");
}

#[test]
fn a_node_in_redirect_mode_sends_clients_to_a_home_node() {
    let _serial = serial();
    // Every node with the same replication, so that the homes the uploads are
    // copied to are the homes the redirector computes.
    let mut nodes = start_cluster_with(2, &["--replication", "2"]);
    let addr = free_addr_on("127.0.0.3");
    let mut args: Vec<String> = FAST_GOSSIP.iter().map(|s| s.to_string()).collect();
    args.extend(
        [
            "--region",
            "region-0",
            "--on-miss",
            "redirect",
            "--replication",
            "2",
            "--join",
        ]
        .map(String::from),
    );
    args.push(nodes[0].addr.to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    nodes.push(Node::start_at(addr, &refs));
    for i in 0..nodes.len() {
        within(Duration::from_secs(15), "full membership", || {
            all_alive_and_verified(&nodes, &nodes[i])
        });
    }
    // A blob whose two homes (of three nodes) leave the redirecting node out.
    let redirector = nodes[2].addr.to_string();
    let (hash, homes) = (0..64)
        .find_map(|seed| {
            let data = random_bytes(5_000, 900 + seed);
            let hash = blake3::hash(&data).to_hex().to_string();
            let (_, _, body) = nodes[2].get(&format!("/route/{hash}"));
            let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
            let homes: Vec<String> = v["nodes"]
                .as_array()?
                .iter()
                .filter(|n| n["home_rank"].as_u64().is_some_and(|r| r < 2))
                .map(|n| n["addr"].as_str().unwrap_or("").to_string())
                .collect();
            (!homes.contains(&redirector)).then(|| {
                nodes[0].put_bytes(&data);
                nodes[1].put_bytes(&data);
                (hash, homes)
            })
        })
        .expect("some blob has its homes elsewhere");
    let (status, head, _) = nodes[2].get(&format!("/blobs/{hash}"));
    assert_eq!(status, 307, "{head}");
    let location = header(&head, "location").expect("Location").to_string();
    assert!(
        homes
            .iter()
            .any(|h| location == format!("http://{h}/blobs/{hash}")),
        "{location} not one of {homes:?}"
    );
    // The same over HTTP/3 (aioquic's client), to the home's HTTP/3 side.
    let head = aioquic_with_head(&format!("https://{}/blobs/{hash}", nodes[2].addr));
    assert!(head.contains(":status: 307"), "{head}");
    assert!(
        homes
            .iter()
            .any(|h| head.contains(&format!("location: https://{h}/blobs/{hash}"))),
        "{head} does not name one of {homes:?}"
    );
    assert!(!nodes[2].data_dir.join("blobs").join(&hash).exists());
}

/// A peer that lies: built with the test-only `fault-injection` feature, a node
/// started with `TESSERA_FAULT_CORRUPT_PEER_STREAMS` flips a byte in what it
/// sends to other nodes. Its part of a multi-peer fetch fails verification, is
/// never stored or served, is fetched again from the honest holder, and the
/// liar is marked.
#[cfg(feature = "fault-injection")]
#[test]
fn a_peer_that_sends_corrupt_chunks_is_caught_and_marked() {
    let _serial = serial();
    // No rebalancing: the fresh node must fetch, not be handed the blob.
    let args = |join: Option<SocketAddr>| -> Vec<String> {
        let mut a: Vec<String> = FAST_GOSSIP.iter().map(|s| s.to_string()).collect();
        a.extend(["--region", "region-0", "--rebalance", "false"].map(String::from));
        if let Some(j) = join {
            a.extend(["--join".into(), j.to_string()]);
        }
        a
    };
    let honest_args = args(None);
    let honest = Node::start_at(
        free_addr_on("127.0.0.1"),
        &honest_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let liar_args = args(Some(honest.addr));
    let liar = Node::start_at_with_env(
        free_addr_on("127.0.0.2"),
        &liar_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("TESSERA_FAULT_CORRUPT_PEER_STREAMS", "1")],
    );
    within(Duration::from_secs(15), "two members", || {
        alive_verified(&honest) == 2
    });
    // Both hold the blob (the liar's own copy is sound; it lies when sending).
    let data = random_bytes(6 << 20, 99);
    let hash = honest.put_bytes(&data);
    assert_eq!(liar.put_bytes(&data), hash);
    // A fresh node fetches it in two parts, one from each holder.
    let asker_args = args(Some(honest.addr));
    let asker = Node::start_at(
        free_addr_on("127.0.0.3"),
        &asker_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // Everyone knows everyone (a node answers only members' signed requests).
    within(Duration::from_secs(15), "three members everywhere", || {
        [&asker, &honest, &liar]
            .iter()
            .all(|n| alive_verified(n) == 3)
    });
    let (status, _, body) = asker.get(&format!("/blobs/{hash}"));
    assert_eq!(status, 200);
    assert!(body == data, "the asker served bytes that are not the blob");
    let stored = std::fs::read(asker.data_dir.join("blobs").join(&hash)).expect("stored");
    assert!(
        stored == data,
        "the asker stored bytes that are not the blob"
    );
    let view = members(&asker);
    let count = |addr: SocketAddr, field: &str| {
        entry(&view, addr)
            .and_then(|m| m[field].as_u64())
            .unwrap_or(0)
    };
    let bad = |addr: SocketAddr| count(addr, "bad_transfers");
    assert!(bad(liar.addr) >= 1, "the liar was not marked: {view:?}");
    assert_eq!(bad(honest.addr), 0, "the honest node was marked: {view:?}");
    // Verified bytes are counted for the one that delivered them (its part and
    // the liar's, asked of it again), none for the liar.
    let served = |addr: SocketAddr| count(addr, "served_bytes");
    assert_eq!(served(honest.addr), data.len() as u64, "{view:?}");
    assert_eq!(served(liar.addr), 0, "{view:?}");
    // The mark is in /metrics too, by peer id.
    let liar_id = entry(&view, liar.addr)
        .and_then(|m| m["id"].as_str())
        .expect("liar id")
        .to_string();
    let (_, _, metrics) = asker.get("/metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(&format!(
            "tessera_peer_bad_transfers_total{{peer=\"{liar_id}\"}}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("tessera_cluster_members{state=\"alive\"} 3"),
        "{metrics}"
    );
}

#[test]
fn a_joining_node_receives_its_share_of_blobs() {
    let _serial = serial();
    let mut nodes = start_cluster(3);
    for i in 0..nodes.len() {
        within(Duration::from_secs(15), "full membership", || {
            all_alive_and_verified(&nodes, &nodes[i])
        });
    }
    let hashes: Vec<String> = (0..24)
        .map(|i| nodes[i % 3].put_bytes(&random_bytes(20_000 + i, 500 + i as u64)))
        .collect();
    let mut args: Vec<String> = FAST_GOSSIP.iter().map(|s| s.to_string()).collect();
    args.extend(["--region", "region-1", "--join"].map(String::from));
    args.push(nodes[1].addr.to_string());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    nodes.push(Node::start_at(free_addr_on("127.0.0.4"), &refs));
    within(Duration::from_secs(15), "four members", || {
        all_alive_and_verified(&nodes, &nodes[3])
    });
    // The blobs whose homes now include the newcomer.
    let newcomer = nodes[3].addr.to_string();
    let mine: Vec<&String> = hashes
        .iter()
        .filter(|h| {
            let (_, _, body) = nodes[3].get(&format!("/route/{h}"));
            let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
            v["nodes"].as_array().expect("nodes").iter().any(|n| {
                n["addr"].as_str() == Some(newcomer.as_str())
                    && n["home_rank"].as_u64().is_some_and(|r| r < 3)
            })
        })
        .collect();
    // With 4 nodes and 3 homes each, about three quarters of the blobs.
    assert!(
        mine.len() >= 8,
        "only {} of 24 blobs are the newcomer's",
        mine.len()
    );
    let took = within(Duration::from_secs(20), "newcomer holds its share", || {
        mine.iter()
            .all(|h| nodes[3].data_dir.join("blobs").join(h).exists())
    });
    eprintln!("newcomer received {} blobs in {took:?}", mine.len());
}

#[test]
fn a_peer_that_dies_mid_transfer_costs_only_a_retry() {
    let _serial = serial();
    let args = |join: Option<SocketAddr>, cap: &str| -> Vec<String> {
        let mut a: Vec<String> = FAST_GOSSIP.iter().map(|s| s.to_string()).collect();
        a.extend(["--region", "region-0", "--rebalance", "false"].map(String::from));
        a.extend(["--peer-transfer-bytes-per-sec".into(), cap.into()]);
        if let Some(j) = join {
            a.extend(["--join".into(), j.to_string()]);
        }
        a
    };
    let fast_args = args(None, "0");
    let fast = Node::start_at(
        free_addr_on("127.0.0.1"),
        &fast_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // The doomed holder sends to peers at 1 MB/s: its part is still in flight
    // when it is killed.
    let slow_args = args(Some(fast.addr), "1000000");
    let mut slow = Node::start_at(
        free_addr_on("127.0.0.2"),
        &slow_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let data = random_bytes(8 << 20, 123);
    let hash = fast.put_bytes(&data);
    assert_eq!(slow.put_bytes(&data), hash);
    let asker_args = args(Some(fast.addr), "0");
    let asker = Node::start_at(
        free_addr_on("127.0.0.3"),
        &asker_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    within(Duration::from_secs(15), "three members everywhere", || {
        [&asker, &fast, &slow]
            .iter()
            .all(|n| alive_verified(n) == 3)
    });
    let asker_addr = asker.addr;
    let path = format!("/blobs/{hash}");
    let fetch = std::thread::spawn(move || {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        try_request(asker_addr, raw.as_bytes())
    });
    std::thread::sleep(Duration::from_millis(700));
    slow.kill9();
    let (status, _, body) = fetch.join().expect("thread").expect("request");
    assert_eq!(status, 200);
    assert!(
        body == data,
        "bytes differ after a holder died mid-transfer"
    );
}
