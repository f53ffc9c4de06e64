//! The replicated ledger with a real 4-member committee on loopback (127.0.0.1–4):
//! real `tessera get` downloads leave receipts, the nodes submit them, AlephBFT
//! orders them, the epoch closes and pays rewards that match what this test
//! computes from its own downloads; a member killed with SIGKILL does not stop
//! the ledger, and once restarted it catches up to the same state. Junk sent
//! to the ledger routes is refused and harms nothing.
//!
//! AlephBFT has no leader: every member proposes in every round, so killing
//! any one member is the same test as killing "the leader" of a leader-based
//! engine.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::*;

const EPOCH_MS: u64 = 10_000;
const PRICE: u64 = 3;

fn status(node: &Node) -> serde_json::Value {
    let (code, _, body) = node.get("/ledger/status");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).expect("json")
}

fn try_json(node: &Node, path: &str) -> Option<serde_json::Value> {
    match try_request(
        node.addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    ) {
        Ok((200, _, body)) => serde_json::from_slice(&body).ok(),
        _ => None,
    }
}

fn epoch(node: &Node) -> u64 {
    status(node)["epoch"].as_u64().expect("epoch")
}

/// `tessera account --deposit` as the client in `client_dir`; its JSON answer
/// once the deposit committed.
fn deposit(node: &Node, client_dir: &std::path::Path, amount: u64) -> serde_json::Value {
    let out = Command::new(BIN)
        .args([
            "account",
            "--json",
            "--deposit",
            &amount.to_string(),
            "--node",
        ])
        .arg(node.url())
        .env("TESSERA_CLIENT_DIR", client_dir)
        .output()
        .expect("account");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

type Figures = BTreeMap<String, u64>;

/// A closed epoch as `node` sees it: pool, rewards and the reputation each
/// share was weighted by (id -> value).
fn rewards(node: &Node, epoch: u64) -> Option<(u64, Figures, Figures)> {
    let v = try_json(node, &format!("/ledger/rewards/{epoch}"))?;
    let map = |field: &str| -> Option<Figures> {
        Some(
            v[field]
                .as_object()?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect(),
        )
    };
    Some((v["pool"].as_u64()?, map("rewards")?, map("reputation")?))
}

/// Nodes on 127.0.0.1…n, each staking `stakes[i]`; the first `genesis` of
/// them form the genesis committee. Started, not yet registered.
fn committee(stakes: &[u64], genesis: usize, epoch_ms: u64) -> Vec<Node> {
    committee_with_env(stakes, genesis, epoch_ms, &[])
}

/// [`committee`], with extra environment for node `i` where `env` names it.
fn committee_with_env(
    stakes: &[u64],
    genesis: usize,
    epoch_ms: u64,
    env: &[(usize, &str, &str)],
) -> Vec<Node> {
    ledger_committee(
        stakes,
        genesis,
        epoch_ms,
        &format!("price_per_byte = {PRICE}\n"),
        "",
        env,
    )
}

fn staked(node: &Node) -> Option<usize> {
    try_json(node, "/ledger/reputation").and_then(|v| v["nodes"].as_array().map(|a| a.len()))
}

fn committee_of(node: &Node) -> Vec<String> {
    status(node)["committee"]
        .as_array()
        .expect("committee")
        .iter()
        .map(|v| v.as_str().expect("id").to_string())
        .collect()
}

#[test]
fn the_committee_changes_at_an_epoch_end_and_the_ledger_goes_on() {
    // Five nodes, four in the genesis committee; the fifth stakes the most, so
    // the first epoch end after it registered seats it and drops one of the
    // four (equal weights: the larger id goes).
    let nodes = committee(&[100, 100, 100, 100, 1000], 4, 6_000);
    let ids = node_ids(&nodes);
    within(Duration::from_secs(90), "5 staked nodes", || {
        staked(&nodes[0]) == Some(5)
    });
    within(Duration::from_secs(30), "the fifth node seated", || {
        committee_of(&nodes[0]).contains(&ids[4])
    });
    let seated = committee_of(&nodes[0]);
    assert_eq!(seated.len(), 4);
    let mut old = ids[..4].to_vec();
    old.sort();
    let dropped = old.last().expect("dropped").clone();
    assert!(!seated.contains(&dropped), "{dropped} should have left");
    // The new committee orders transactions: a deposit sent to the newcomer
    // commits, and every node, the one that left included, follows.
    let tmp = tempfile::tempdir().expect("tmp");
    let client_dir = tmp.path().join("client");
    let client = deposit(&nodes[4], &client_dir, 77)["id"]
        .as_str()
        .expect("id")
        .to_string();
    let at = epoch(&nodes[0]);
    within(
        Duration::from_secs(40),
        "every node holds the deposit",
        || {
            nodes.iter().all(|n| {
                try_json(n, &format!("/ledger/account/{client}"))
                    .is_some_and(|v| v["balance"] == 77 && v["epoch"].as_u64() >= Some(at))
            })
        },
    );
}

#[test]
fn a_member_killed_and_restarted_within_an_epoch_replays_its_session() {
    // Long epochs: the member comes back in the same AlephBFT session, from
    // its own unit backup, not from a snapshot.
    let mut nodes = committee(&[100; 4], 4, 60_000);
    within(Duration::from_secs(60), "4 staked nodes", || {
        nodes.iter().all(|n| staked(n) == Some(4))
    });
    let e = epoch(&nodes[1]);
    let before = status(&nodes[1])["height"].as_u64().expect("height");
    nodes[1].kill9();
    nodes[1].restart();
    let tmp = tempfile::tempdir().expect("tmp");
    let client = deposit(&nodes[0], &tmp.path().join("client"), 42)["id"]
        .as_str()
        .expect("id")
        .to_string();
    within(
        Duration::from_secs(30),
        "the restarted member applies again",
        || {
            let s = status(&nodes[1]);
            s["height"].as_u64() > Some(before + 20)
                && try_json(&nodes[1], &format!("/ledger/account/{client}"))
                    .is_some_and(|a| a["balance"] == 42)
        },
    );
    let s = status(&nodes[1]);
    assert_eq!(
        s["epoch"].as_u64(),
        Some(e),
        "the epoch should still be open"
    );
    assert_eq!(s["catchups"], 0, "it took a snapshot instead of replaying");

    // The service registry through the CLI: a staked node registers one, every
    // replica lists it; `tessera account --id` shows a node's stake.
    let dir = nodes[0].data_dir.display().to_string();
    let out = tessera(&[
        "ledger",
        "service",
        "--data-dir",
        &dir,
        "--id",
        "7",
        "--name",
        "edge-functions",
        "--price-per-byte",
        "5",
        "--node",
        &nodes[0].url(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    within(Duration::from_secs(20), "the service everywhere", || {
        nodes.iter().all(|n| {
            status(n)["services"]
                .as_array()
                .is_some_and(|v| v.iter().any(|s| s["id"] == 7 && s["price_per_byte"] == 5))
        })
    });
    let id0 = node_ids(&nodes)[0].clone();
    let out = tessera(&["account", "--json", "--id", &id0, "--node", &nodes[2].url()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["stake"], 100);
    // Another node cannot take the id.
    let dir1 = nodes[1].data_dir.display().to_string();
    let out = tessera(&[
        "ledger",
        "service",
        "--data-dir",
        &dir1,
        "--id",
        "7",
        "--name",
        "mine",
        "--price-per-byte",
        "1",
        "--node",
        &nodes[1].url(),
    ]);
    assert!(!out.status.success(), "a second owner took service 7");
}

#[test]
fn lying_members_move_neither_the_clock_nor_the_state() {
    // Built with the test-only `fault-injection` feature: member 4 stamps its
    // batches an hour ahead. The ledger clock is the members' median, so it
    // keeps to real time and epochs keep their length. (With three of the
    // four lying, this test fails: checked by hand.)
    // Member 3 also stuffs its units with junk and a forged deposit: every
    // replica skips them alike (checked below: the same state everywhere).
    let nodes = committee_with_env(
        &[100; 4],
        4,
        4_000,
        &[
            (3, "TESSERA_FAULT_LEDGER_CLOCK_AHEAD_MS", "3600000"),
            (2, "TESSERA_FAULT_LEDGER_JUNK_TXS", "1"),
        ],
    );
    within(Duration::from_secs(60), "the ledger running", || {
        status(&nodes[0])["height"].as_u64() > Some(20)
    });
    let wall = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64
    };
    let e0 = epoch(&nodes[0]);
    std::thread::sleep(Duration::from_secs(6));
    let s = status(&nodes[0]);
    let ledger_time = s["time_ms"].as_u64().expect("time");
    assert!(
        ledger_time <= wall() + 2_000,
        "ledger time {ledger_time} ran ahead of the wall clock {}",
        wall()
    );
    // 6 s of 4 s epochs: one or two closes, not hundreds.
    let e1 = s["epoch"].as_u64().expect("epoch");
    assert!(e1 - e0 <= 3, "epochs went from {e0} to {e1} in 6 s");
    // The junk was ordered and refused by every replica; the forged deposit
    // credited no one; all hold the same epoch start.
    assert!(s["txs_refused"].as_u64() > Some(0), "{s}");
    let forged = "07".repeat(32);
    for n in &nodes {
        let a = try_json(n, &format!("/ledger/account/{forged}")).expect("account");
        assert_eq!(a["balance"], 0, "a forged deposit was credited");
    }
    let e = epoch(&nodes[0]);
    within(
        Duration::from_secs(20),
        "the same epoch start everywhere",
        || {
            let starts: Vec<_> = nodes
                .iter()
                .map(|n| {
                    let s = status(n);
                    (s["epoch"].as_u64(), s["epoch_start_ms"].as_u64())
                })
                .collect();
            starts.iter().all(|x| *x == starts[0] && x.0 > Some(e))
        },
    );
}

#[test]
fn a_committee_of_four_turns_downloads_into_rewards_and_survives_a_crash() {
    let mut nodes = committee(&[100; 4], 4, EPOCH_MS);
    let ids = node_ids(&nodes);
    // Every node registers its stake (a deposit, then the registration).
    within(Duration::from_secs(90), "4 staked nodes", || {
        nodes.iter().all(|n| staked(n) == Some(4))
    });
    let tmp = tempfile::tempdir().expect("tmp");
    let client_dir = tmp.path().join("client");
    let account = deposit(&nodes[1], &client_dir, 10_000_000);
    assert_eq!(account["balance"], 10_000_000);
    let client_id = account["id"].as_str().expect("id").to_string();

    let small = random_bytes(100_000, 1);
    let large = random_bytes(250_000, 2);
    let h_small = nodes[0].put_bytes(&small);
    let h_large = nodes[0].put_bytes(&large);
    // Download at the start of a fresh epoch, so every receipt names it.
    let first = epoch(&nodes[0]);
    within(Duration::from_secs(30), "the next epoch", || {
        epoch(&nodes[0]) > first
    });
    let e = epoch(&nodes[0]);
    // (node index, blob, bytes) — served by three different nodes.
    let plan = [
        (0usize, &h_small, small.len() as u64),
        (0, &h_small, small.len() as u64),
        (1, &h_large, large.len() as u64),
        (2, &h_small, small.len() as u64),
    ];
    for (k, (node, hash, _)) in plan.iter().enumerate() {
        let file = tmp.path().join(format!("out{k}"));
        get_as(&nodes[*node], &client_dir, hash, &file);
    }
    assert_eq!(epoch(&nodes[0]), e, "downloads took longer than an epoch");
    // The nodes submit their receipts; the ledger accepts all four.
    within(Duration::from_secs(20), "receipts committed", || {
        status(&nodes[3])["receipts_accepted"].as_u64() >= Some(4)
    });

    // A member dies; the other three keep the ledger going.
    nodes[3].kill9();
    let (pool, paid, reputation) = {
        let mut got = None;
        within(
            Duration::from_secs(40),
            "epoch e closed without node 4",
            || {
                got = rewards(&nodes[0], e);
                got.is_some()
            },
        );
        got.expect("rewards")
    };
    // Independent computation from this test's own downloads: the pool is
    // what the client was charged; shares by charged bytes × reputation.
    let mut charged: BTreeMap<String, u64> = BTreeMap::new();
    for (node, _, bytes) in plan {
        *charged.entry(ids[node].clone()).or_default() += bytes * PRICE;
    }
    let want_pool: u64 = charged.values().sum();
    assert_eq!(pool, want_pool);
    // Every server was up all epoch: its peers' median score is full, or
    // within a probe or two of it on a loaded machine (a late heartbeat
    // costs a few thousandths; a node that was down scores far lower).
    for id in charged.keys() {
        let score = reputation.get(id).copied();
        assert!(
            score.is_some_and(|s| (950..=1000).contains(&s)),
            "reputation of {id}: {score:?}"
        );
    }
    let rep_of = |id: &str| -> u128 { reputation[id] as u128 };
    let total: u128 = charged.iter().map(|(id, c)| *c as u128 * rep_of(id)).sum();
    for (id, c) in &charged {
        let want = (want_pool as u128 * *c as u128 * rep_of(id) / total) as u64;
        assert_eq!(paid.get(id), Some(&want), "reward of {id}");
    }
    // The client paid exactly the pool.
    let acct = try_json(&nodes[2], &format!("/ledger/account/{client_id}")).expect("account");
    assert_eq!(acct["balance"].as_u64(), Some(10_000_000 - want_pool));
    // And a transaction sent while the member is down still commits.
    assert_eq!(
        deposit(&nodes[2], &client_dir, 5)["balance"].as_u64(),
        Some(10_000_000 + 5 - want_pool)
    );

    // Junk harms nothing: a malformed transaction, an unsigned consensus
    // message, a forged-looking one.
    let junk = b"POST /ledger/tx HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(nodes[0].request(junk).0, 400);
    // The same route over HTTP/3 (aioquic): junk refused as over HTTP/1.1, a
    // signed deposit from a fresh client accepted and committed.
    let h3_tx = format!("https://{}/ledger/tx", nodes[0].addr);
    let r = aioquic_send(&h3_tx, "POST", &[], Some(b"hello"));
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let h3_client_dir = tempfile::tempdir().expect("tmp");
    let (h3_key, _) = controlplane::NodeKey::load_or_create(h3_client_dir.path()).expect("key");
    let wire = controlplane::ledger::SignedTx::new_with(
        controlplane::ledger::Tx::Deposit { amount: 42 },
        0,
        &h3_key,
    )
    .encode();
    let r = aioquic_send(&h3_tx, "POST", &[], Some(&wire));
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let h3_account = format!("/ledger/account/{}", h3_key.id());
    within(
        Duration::from_secs(60),
        "the deposit sent over HTTP/3 committed",
        || try_json(&nodes[1], &h3_account).and_then(|a| a["balance"].as_u64()) == Some(42),
    );
    let r = aioquic_request(
        &format!("https://{}{h3_account}", nodes[0].addr),
        "GET",
        &[],
    );
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v["balance"].as_u64(), Some(42));
    let unsigned =
        b"POST /ledger/msg HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\n\0\0\0\0\0\0\0\0x";
    assert_eq!(nodes[0].request(unsigned).0, 401);
    // Whole-state snapshots go to other nodes only.
    assert_eq!(nodes[0].get(&format!("/ledger/boundary/{e}")).0, 401);
    let before = status(&nodes[0])["height"].as_u64();
    within(Duration::from_secs(30), "the ledger still moves", || {
        status(&nodes[0])["height"].as_u64() > before
    });

    // Refused with a reason, end to end: a client that cannot pay, a receipt
    // handed in twice, one for an epoch that has closed (all early in a fresh
    // epoch, so that none of them turns stale on the way).
    let before = epoch(&nodes[0]);
    within(Duration::from_secs(30), "a fresh epoch", || {
        epoch(&nodes[0]) > before
    });
    let poor = tmp.path().join("poor");
    get_as(&nodes[0], &poor, &h_small, &tmp.path().join("poor-out"));
    let client = controlplane::NodeKey::load(&client_dir).expect("client key");
    let node0 = controlplane::NodeKey::load(&nodes[0].data_dir)
        .expect("node key")
        .id();
    let now = epoch(&nodes[0]);
    let receipt = |epoch: u64, seq: u64| {
        controlplane::ledger::Receipt {
            client: client.id().0,
            node: node0.0,
            service: 1,
            content: [1; 32],
            bytes: 10,
            epoch,
            seq,
        }
        .sign_with(&client)
    };
    let fresh = receipt(now, 1 << 40);
    for batch in [
        vec![fresh.clone()],
        vec![fresh],
        vec![receipt(e, (1 << 40) + 1)],
    ] {
        let body = postcard::to_stdvec(&batch).expect("encode");
        let mut raw = format!(
            "POST /receipts HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(&body);
        assert_eq!(nodes[0].request(&raw).0, 202);
    }
    within(Duration::from_secs(30), "refusals with reasons", || {
        let Some(v) = try_json(&nodes[1], &format!("/ledger/account/{node0}")) else {
            return false;
        };
        let r = &v["receipts_refused"];
        r["over-budget"] == 1 && r["replayed"] == 1 && r["stale"] == 1
    });

    // The member comes back and catches up: same rewards, same balances.
    nodes[3].restart();
    within(Duration::from_secs(60), "node 4 caught up", || {
        let now = epoch(&nodes[0]);
        epoch(&nodes[3]) >= now && rewards(&nodes[3], e).is_some()
    });
    assert_eq!(rewards(&nodes[3], e), Some((pool, paid, reputation)));
    // Deposits 10 000 000 and 5, the downloads' pool, the one good 10-byte
    // receipt handed in by hand: node 4 reaches the same balance as the others.
    let want = Some(10_000_000 + 5 - want_pool - 10 * PRICE);
    let balance = |n: &Node| {
        try_json(n, &format!("/ledger/account/{client_id}")).and_then(|v| v["balance"].as_u64())
    };
    assert_eq!(balance(&nodes[0]), want);
    within(
        Duration::from_secs(30),
        "node 4 holds the same balance",
        || balance(&nodes[3]) == want,
    );
    // The CLI reads the same figures.
    let out = tessera(&[
        "rewards",
        "--epoch",
        &e.to_string(),
        "--json",
        "--node",
        &nodes[3].url(),
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["pool"].as_u64(), Some(want_pool));
}

#[test]
fn deployments_are_ordered_by_the_ledger_and_the_same_on_every_node() {
    let nodes = committee(&[100, 100, 100, 100], 4, 60_000);
    let tmp = tempfile::tempdir().expect("tmp");
    let deploy = |client: &str, node: &Node, origin: &str| {
        Command::new(BIN)
            .args(["deploy", "cdn", "--name", "shop", "--replicas", "2"])
            .args(["--origin", origin, "--node", &node.url()])
            .env("TESSERA_CLIENT_DIR", tmp.path().join(client))
            .output()
            .expect("deploy")
    };
    // Sent to one node: ordered by the committee, then on every node.
    let out = deploy("owner", &nodes[0], "http://origin.example");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = |n: &Node| try_json(n, "/deployments/shop");
    within(
        Duration::from_secs(40),
        "the deployment on every node",
        || {
            nodes
                .iter()
                .all(|n| listed(n).is_some_and(|v| v["version"] == 1))
        },
    );
    // Every node places it the same.
    let placements: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| listed(n).expect("listed")["placement"].clone())
        .collect();
    assert!(
        placements.iter().all(|p| *p == placements[0]),
        "{placements:?}"
    );
    assert_eq!(placements[0].as_array().map(Vec::len), Some(2));
    // Another key: refused against the committed state, nothing changes.
    let out = deploy("stranger", &nodes[1], "http://evil.example");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("belongs to another owner"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The owner changes it through another node: version 2 everywhere.
    let out = deploy("owner", &nodes[2], "http://new-origin.example");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    within(Duration::from_secs(40), "version 2 on every node", || {
        nodes.iter().all(|n| {
            listed(n).is_some_and(|v| {
                v["version"] == 2 && v["spec"] == "origin = \"http://new-origin.example\"\n"
            })
        })
    });
}

/// The two nodes a deployment with two replicas is placed on, once it is.
fn placed_on_two<'a>(nodes: &'a [Node], name: &str) -> Vec<&'a Node> {
    let path = format!("/deployments/{name}");
    within(Duration::from_secs(30), "placed on two nodes", || {
        try_json(&nodes[0], &path)
            .is_some_and(|v| v["placement"].as_array().map(Vec::len) == Some(2))
    });
    let placed: Vec<String> = try_json(&nodes[0], &path).expect("placed")["placement"]
        .as_array()
        .expect("placement")
        .iter()
        .map(|n| n["addr"].as_str().expect("addr").to_string())
        .collect();
    let runners: Vec<&Node> = nodes
        .iter()
        .filter(|n| placed.contains(&n.addr.to_string()))
        .collect();
    assert_eq!(runners.len(), 2);
    runners
}

#[test]
fn a_zones_owner_pays_for_the_bytes_its_nodes_served() {
    let origin = Origin::start();
    let nodes = committee(&[100, 100, 100, 100], 4, 6_000);
    within(Duration::from_secs(90), "4 staked nodes", || {
        staked(&nodes[0]) == Some(4)
    });
    let tmp = tempfile::tempdir().expect("tmp");
    let owner_dir = tmp.path().join("owner");
    let owner = deposit(&nodes[0], &owner_dir, 10_000_000)["id"]
        .as_str()
        .expect("id")
        .to_string();
    let origin_url = origin.url();
    deploy_cdn(
        &nodes[1],
        &owner_dir,
        "shop",
        &["--replicas", "2", "--origin", &origin_url],
    );
    // The same traffic at each of the two nodes that run it (so neither
    // report is capped against the other's).
    let runners = placed_on_two(&nodes, "shop");
    for node in runners {
        within(Duration::from_secs(30), "the zone served", || {
            curl_get(&format!("{}/cdn/shop/static/a?size=5000", node.url()), &[]).0 == 200
        });
        for _ in 0..3 {
            assert_eq!(
                curl_get(&format!("{}/cdn/shop/static/a?size=5000", node.url()), &[]).0,
                200
            );
        }
    }
    let metered =
        |n: &Node| n.metric("tessera_cdn_zone_bytes_total{service=\"cdn\",zone=\"shop\"}");
    let served: u64 = nodes.iter().map(metered).sum();
    assert_eq!(served, 5000 * 8, "bytes metered");
    // Reported, then charged as epochs close: the owner pays exactly the
    // bytes served at the price, and the nodes that served earn it.
    let charged = || -> u64 {
        (0..epoch(&nodes[0]))
            .filter_map(|e| try_json(&nodes[0], &format!("/ledger/rewards/{e}")))
            .map(|v| v["deployments_charged"]["shop"].as_u64().unwrap_or(0))
            .sum()
    };
    within(Duration::from_secs(60), "every served byte charged", || {
        let c = charged();
        assert!(c <= served * PRICE, "charged {c} for {served} bytes");
        c == served * PRICE
    });
    let balance = try_json(&nodes[0], &format!("/ledger/account/{owner}")).expect("account")
        ["balance"]
        .as_u64()
        .expect("balance");
    assert_eq!(balance, 10_000_000 - served * PRICE);
}

#[test]
fn a_functions_owner_pays_for_its_requests_cpu_and_bytes() {
    let nodes = committee(&[100, 100, 100, 100], 4, 6_000);
    within(Duration::from_secs(90), "4 staked nodes", || {
        staked(&nodes[0]) == Some(4)
    });
    let tmp = tempfile::tempdir().expect("tmp");
    let owner_dir = tmp.path().join("owner");
    let owner = deposit(&nodes[0], &owner_dir, 100_000_000)["id"]
        .as_str()
        .expect("id")
        .to_string();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions/json.js");
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["deploy", "function", "--name", "api", "--replicas", "2"])
        .arg(&script)
        .args(["--node", &nodes[1].url()])
        .env("TESSERA_CLIENT_DIR", &owner_dir)
        .output()
        .expect("tessera deploy function");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runners = placed_on_two(&nodes, "api");
    // The same requests at each node that runs it.
    for node in &runners {
        within(Duration::from_secs(30), "the function served", || {
            curl_get(&format!("{}/fn/api/api", node.url()), &[]).0 == 200
        });
        for _ in 0..4 {
            assert_eq!(
                curl_get(&format!("{}/fn/api/render", node.url()), &[]).0,
                200
            );
        }
    }
    // What each node metered, in the ledger's units: body bytes, CPU time
    // and requests at the functions' rates.
    let units = |n: &Node| {
        let m = |what: &str| {
            n.metric(&format!(
                "tessera_function_{what}_total{{service=\"function\",function=\"api\"}}"
            ))
        };
        m("bytes") + m("cpu_microseconds") * (16 << 10) / 1000 + m("requests") * (1 << 10)
    };
    let used: u64 = runners.iter().map(|n| units(n)).sum();
    assert!(used > 0);
    let charged = || -> u64 {
        (0..epoch(&nodes[0]))
            .filter_map(|e| try_json(&nodes[0], &format!("/ledger/rewards/{e}")))
            .map(|v| v["deployments_charged"]["api"].as_u64().unwrap_or(0))
            .sum()
    };
    within(
        Duration::from_secs(90),
        "the function's use charged",
        || {
            let c = charged();
            assert!(c <= used * PRICE, "charged {c} for {used} units");
            c == used * PRICE
        },
    );
    let balance = try_json(&nodes[0], &format!("/ledger/account/{owner}")).expect("account")
        ["balance"]
        .as_u64()
        .expect("balance");
    assert_eq!(balance, 100_000_000 - used * PRICE);
}
