//! The IPFS service end to end: real `tessera` nodes, and clients no one
//! here wrote: `ipfs-car` (packs and unpacks CARs), `@helia/verified-fetch`
//! (fetches and verifies through the node as its only gateway and router),
//! `@ipfs-shipyard/pinning-service-compliance` (the Pinning Service API's
//! compliance suite), and curl. The trustless-gateway cases of the IPFS
//! gateway-conformance suite (which needs a newer Go than this machine's)
//! are ported here over fixtures made with `ipfs-car`.
//!
//! The npm clients come from `scripts/test` (`TESSERA_IPFS_CLIENTS`,
//! `TESSERA_PINNING_COMPLIANCE`).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use tessera_ipfs::{car::CarReader, Cid};

fn clients() -> PathBuf {
    PathBuf::from(std::env::var("TESSERA_IPFS_CLIENTS").expect(
        "TESSERA_IPFS_CLIENTS names the npm folder with ipfs-car, @helia/verified-fetch and node 22 \
         (scripts/test installs them)",
    ))
}

/// Node 22 (from npm): `@helia/verified-fetch` needs it.
fn node22() -> PathBuf {
    clients().join("node_modules/.bin/node")
}

fn ipfs_car(args: &[&str]) -> Output {
    Command::new(node22())
        .arg(clients().join("node_modules/ipfs-car/bin.js"))
        .args(args)
        .output()
        .expect("ipfs-car")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `tessera ipfs add PATH FLAGS` at `node`: the root CID it printed.
fn add(client: &Path, node: &Node, path: &Path, flags: &[&str]) -> String {
    let mut args = vec!["ipfs", "add", path.to_str().expect("utf-8")];
    args.extend(flags);
    ok(cli(client, node, &args), "tessera ipfs add")
}

/// A folder: a small file, a 3 MB file (three 1 MiB chunks), a file of
/// zeros (one chunk repeated), a page in a subfolder.
fn fixture(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    std::fs::create_dir_all(dir.join("docs")).expect("mkdir");
    std::fs::write(dir.join("hello.txt"), "hello, ipfs\n").expect("write");
    std::fs::write(dir.join("sub/big.bin"), random_bytes(3_000_000, 7)).expect("write");
    std::fs::write(dir.join("sub/zeros.bin"), vec![0u8; 3 << 20]).expect("write");
    std::fs::write(dir.join("docs/index.html"), "<h1>docs</h1>\n").expect("write");
}

/// `ipfs-car pack DIR --output CAR`; the root CID.
fn pack(dir: &Path, car: &Path) -> String {
    let out = ipfs_car(&[
        "pack",
        dir.to_str().expect("utf-8"),
        "--output",
        car.to_str().expect("utf-8"),
    ]);
    ok(out, "ipfs-car pack")
}

/// A node with the IPFS service's origins allowed on loopback (the tests'
/// origins are) and a quick watcher.
fn start(extra: &[&str]) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tessera.toml");
    std::fs::write(
        &path,
        "[services.ipfs]\nallow_private_origins = true\nwatch_ms = 200\nfetch_timeout_ms = 10000\n",
    )
    .expect("config");
    let mut args = vec!["--config", path.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    (Node::start(&args), dir)
}

/// The sections of a CAR: its roots and its blocks, each checked against
/// its CID.
fn read_car(bytes: &[u8]) -> (Vec<Cid>, Vec<(Cid, Vec<u8>)>) {
    let mut r = CarReader::new(bytes).expect("a CAR");
    let roots = r.roots().to_vec();
    let mut blocks = Vec::new();
    while let Some((cid, block)) = r.next_block().expect("a section") {
        tessera_ipfs::verify_block(&cid, &block).expect("the block hashes to its CID");
        blocks.push((cid, block));
    }
    (roots, blocks)
}

fn make_token(client: &Path, node: &Node) -> String {
    ok(cli(client, node, &["ipfs", "token"]), "tessera ipfs token")
}

fn import_car(node: &Node, token: &str, car: &Path) -> (u16, Vec<u8>) {
    let (status, _, body) = curl_get(
        &format!("{}/ipfs/_import", node.url()),
        &[
            "-X",
            "POST",
            // No `100 Continue` head before the answer's.
            "-H",
            "Expect:",
            "-H",
            &format!("authorization: Bearer {token}"),
            "--data-binary",
            &format!("@{}", car.display()),
        ],
    );
    (status, body)
}

#[test]
fn ipfs_car_and_the_node_agree_on_cids_and_cars() {
    let (node, _cfg) = start(&[]);
    let tmp = tempfile::tempdir().expect("tmp");
    let site = tmp.path().join("site");
    fixture(&site);
    let car = tmp.path().join("site.car");
    let root = pack(&site, &car);
    let client = tmp.path().join("client");
    make_token(&client, &node);

    // The node's importer gives ipfs-car's CID for the same folder, and a
    // single file too (wrapped, and not).
    let ours = add(&client, &node, &site, &["--no-pin"]);
    assert_eq!(ours, root);
    let file = site.join("sub/big.bin");
    let file_car = tmp.path().join("big.car");
    for wrap in [true, false] {
        let mut args = vec!["pack", file.to_str().expect("utf-8")];
        if !wrap {
            args.push("--no-wrap");
        }
        args.extend(["--output", file_car.to_str().expect("utf-8")]);
        let theirs = ok(ipfs_car(&args), "ipfs-car pack a file");
        let flags: &[&str] = if wrap {
            &["--no-pin"]
        } else {
            &["--no-pin", "--no-wrap"]
        };
        assert_eq!(add(&client, &node, &file, flags), theirs, "wrap {wrap}");
    }

    // ipfs-car's CAR imported into a second node; its CID resolves there.
    let (other, _cfg2) = start(&[]);
    let other_token = make_token(&tmp.path().join("client2"), &other);
    let (status, body) = import_car(&other, &other_token, &car);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, _, hello) = curl_get(&format!("{}/ipfs/{root}/hello.txt", other.url()), &[]);
    assert_eq!((status, &hello[..]), (200, &b"hello, ipfs\n"[..]));

    // The node's CAR answer unpacks with ipfs-car to identical bytes.
    let (status, head, answer) = curl_get(&format!("{}/ipfs/{root}?format=car", other.url()), &[]);
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "content-type"),
        Some("application/vnd.ipld.car; version=1; order=dfs; dups=n")
    );
    let answer_path = tmp.path().join("answer.car");
    std::fs::write(&answer_path, &answer).expect("write");
    let out_dir = tmp.path().join("unpacked");
    ok(
        ipfs_car(&[
            "unpack",
            answer_path.to_str().expect("utf-8"),
            "--output",
            out_dir.to_str().expect("utf-8"),
        ]),
        "ipfs-car unpack",
    );
    for f in [
        "hello.txt",
        "sub/big.bin",
        "sub/zeros.bin",
        "docs/index.html",
    ] {
        assert_eq!(
            std::fs::read(out_dir.join(f)).expect("unpacked"),
            std::fs::read(site.join(f)).expect("original"),
            "{f}"
        );
    }
    // `tessera ipfs get` verifies and writes the same folder.
    let got = tmp.path().join("got");
    ok(
        cli(
            &client,
            &other,
            &["ipfs", "get", &root, "-o", got.to_str().expect("utf-8")],
        ),
        "tessera ipfs get",
    );
    assert_eq!(
        std::fs::read(got.join("sub/big.bin")).expect("got"),
        std::fs::read(site.join("sub/big.bin")).expect("original")
    );

    // A CAR with one flipped byte is refused whole, with a reason; its last
    // block is never stored.
    let mut bad = std::fs::read(&car).expect("car");
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let bad_path = tmp.path().join("bad.car");
    std::fs::write(&bad_path, &bad).expect("write");
    let (_, blocks) = read_car(&std::fs::read(&car).expect("car"));
    let (last_cid, _) = blocks.last().expect("blocks").clone();
    let (fresh, _cfg3) = start(&[]);
    let fresh_token = make_token(&tmp.path().join("client3"), &fresh);
    let (status, body) = import_car(&fresh, &fresh_token, &bad_path);
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("does not hash"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, _) = curl_get(
        &format!("{}/ipfs/{last_cid}?format=raw", fresh.url()),
        &["-H", "cache-control: only-if-cached"],
    );
    assert_eq!(status, 412, "the refused block is not on the node");
    // No token, no import.
    let (status, _) = import_car(&fresh, "tsr1_AAAA", &car);
    assert_eq!(status, 401);
}

/// The block CIDs a CAR answer carries, in order.
fn car_cids(node: &Node, path_and_query: &str) -> Vec<Cid> {
    let (status, head, body) = curl_get(&format!("{}{path_and_query}", node.url()), &[]);
    assert_eq!(status, 200, "{path_and_query}: {head}");
    read_car(&body).1.into_iter().map(|(c, _)| c).collect()
}

/// Ported from the gateway-conformance suite's trustless-gateway tests (raw
/// blocks, CARs, `dag-scope`, `entity-bytes`, the probe, caching headers),
/// over an `ipfs-car` fixture.
#[test]
fn trustless_gateway_cases_from_the_conformance_suite() {
    let (node, _cfg) = start(&[]);
    let tmp = tempfile::tempdir().expect("tmp");
    let site = tmp.path().join("site");
    fixture(&site);
    let car = tmp.path().join("site.car");
    let root = pack(&site, &car);
    let token = make_token(&tmp.path().join("client"), &node);
    assert_eq!(import_car(&node, &token, &car).0, 200);
    let (_, blocks) = read_car(&std::fs::read(&car).expect("car"));
    let block_of = |cid: &Cid| {
        blocks
            .iter()
            .find(|(c, _)| c == cid)
            .map(|(_, b)| b.clone())
    };
    let url = |p: &str| format!("{}{p}", node.url());

    // The probe: the empty identity CID.
    let (status, head, body) = curl_get(&url("/ipfs/bafkqaaa?format=raw"), &[]);
    assert_eq!((status, body.len()), (200, 0), "{head}");

    // Raw: by ?format=raw and by Accept; the block's exact bytes.
    let root_cid: Cid = root.parse().expect("cid");
    for extra in [
        &["-G", "-d", "format=raw"][..],
        &["-H", "Accept: application/vnd.ipld.raw"][..],
    ] {
        let (status, head, body) = curl_get(&url(&format!("/ipfs/{root}")), extra);
        assert_eq!(status, 200);
        assert_eq!(
            header(&head, "content-type"),
            Some("application/vnd.ipld.raw")
        );
        assert_eq!(Some(body), block_of(&root_cid));
        assert!(header(&head, "cache-control").is_some_and(|c| c.contains("immutable")));
        assert!(header(&head, "etag").is_some());
    }
    // Raw at a path: the block the path ends at.
    let (status, head, body) = curl_get(&url(&format!("/ipfs/{root}/hello.txt?format=raw")), &[]);
    assert_eq!((status, &body[..]), (200, &b"hello, ipfs\n"[..]), "{head}");
    let etag = header(&head, "etag").expect("etag").to_string();
    assert!(header(&head, "x-ipfs-roots").is_some_and(|r| r.starts_with(&root)));
    let (status, _, _) = curl_get(
        &url(&format!("/ipfs/{root}/hello.txt?format=raw")),
        &["-H", &format!("If-None-Match: {etag}")],
    );
    assert_eq!(status, 304);
    // HEAD: the headers, no body.
    let out = curl(&["-I", &url(&format!("/ipfs/{root}?format=car"))]);
    let head = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        header(&head, "content-type").is_some_and(|t| t.starts_with("application/vnd.ipld.car"))
    );

    // A missing root: 404; with only-if-cached: 412.
    let missing = tessera_ipfs::sha256_cid(tessera_ipfs::RAW, b"nowhere").to_string();
    assert_eq!(
        curl_get(&url(&format!("/ipfs/{missing}?format=raw")), &[]).0,
        404
    );
    assert_eq!(
        curl_get(
            &url(&format!("/ipfs/{missing}?format=raw")),
            &["-H", "Cache-Control: only-if-cached"]
        )
        .0,
        412
    );
    // A path that names nothing: 404. Malformed requests: 400 and 406.
    assert_eq!(
        curl_get(&url(&format!("/ipfs/{root}/nope.txt?format=raw")), &[]).0,
        404
    );
    assert_eq!(curl_get(&url("/ipfs/not-a-cid?format=raw"), &[]).0, 400);
    assert_eq!(
        curl_get(&url(&format!("/ipfs/{root}?format=tar")), &[]).0,
        406
    );
    assert_eq!(
        curl_get(
            &url(&format!("/ipfs/{root}?format=car&entity-bytes=0:10")),
            &[]
        )
        .0,
        400
    );
    assert_eq!(
        curl_get(
            &url(&format!("/ipfs/{root}?format=car&dag-scope=most")),
            &[]
        )
        .0,
        400
    );

    // CAR, dag-scope=all (the default): every block of the fixture, the
    // requested CID as the root, DFS order (a parent before its children).
    let (status, head, body) = curl_get(&url(&format!("/ipfs/{root}?format=car")), &[]);
    assert_eq!(status, 200);
    assert!(header(&head, "content-type")
        .is_some_and(|t| t.contains("order=dfs") && t.contains("dups=n")));
    let (roots, got) = read_car(&body);
    assert_eq!(roots, vec![root_cid]);
    let want: HashSet<Cid> = blocks.iter().map(|(c, _)| *c).collect();
    let have: HashSet<Cid> = got.iter().map(|(c, _)| *c).collect();
    assert_eq!(have, want);
    assert_eq!(got[0].0, root_cid);

    // The file nodes under sub/.
    let resolve = |p: &str| -> Vec<Cid> {
        car_cids(
            &node,
            &format!("/ipfs/{root}/{p}?format=car&dag-scope=block"),
        )
    };
    let path_blocks = resolve("sub/big.bin");
    assert_eq!(
        path_blocks.len(),
        3,
        "root, sub/, the file's root block: {path_blocks:?}"
    );
    let big = path_blocks[2];
    let big_node =
        tessera_ipfs::unixfs::decode_node(&block_of(&big).expect("big")).expect("file node");
    let leaves: Vec<Cid> = big_node.links.iter().map(|l| l.cid).collect();
    assert_eq!(leaves.len(), 3);

    // dag-scope=entity: the path, the file's root and all its leaves.
    let entity = car_cids(
        &node,
        &format!("/ipfs/{root}/sub/big.bin?format=car&dag-scope=entity"),
    );
    assert_eq!(entity[..3], path_blocks[..]);
    assert_eq!(entity[3..], leaves[..]);
    // entity-bytes: only the leaves that hold the range.
    let range = |r: &str| {
        car_cids(
            &node,
            &format!("/ipfs/{root}/sub/big.bin?format=car&dag-scope=entity&entity-bytes={r}"),
        )[3..]
            .to_vec()
    };
    assert_eq!(range("0:*"), leaves);
    assert_eq!(range("0:10"), leaves[..1]);
    assert_eq!(range("1048576:1048577"), leaves[1..2]);
    assert_eq!(range("1048575:1048576"), leaves[..2]);
    assert_eq!(range("-10:*"), leaves[2..]);
    assert_eq!(range("0:-2000000"), leaves[..1]);
    assert_eq!(
        range("5000000:*"),
        Vec::<Cid>::new(),
        "past the end: the file's root only"
    );
    // A directory's entity is its node alone.
    let dir = car_cids(
        &node,
        &format!("/ipfs/{root}/sub?format=car&dag-scope=entity"),
    );
    assert_eq!(dir.len(), 2);
    // Duplicates: the zeros file names one leaf three times.
    let zeros_n = car_cids(
        &node,
        &format!("/ipfs/{root}/sub/zeros.bin?format=car&dag-scope=entity"),
    );
    let zeros_y = car_cids(
        &node,
        &format!("/ipfs/{root}/sub/zeros.bin?format=car&dag-scope=entity&car-dups=y"),
    );
    assert_eq!(zeros_n.len() + 2, zeros_y.len(), "{zeros_n:?} {zeros_y:?}");
    let (_, head, _) = curl_get(
        &url(&format!("/ipfs/{root}/sub/zeros.bin")),
        &[
            "-H",
            "Accept: application/vnd.ipld.car; version=1; order=dfs; dups=y",
        ],
    );
    assert!(
        header(&head, "content-type").is_some_and(|t| t.contains("dups=y")),
        "{head}"
    );

    // Deserialized, for browsers: a file, a folder's index.html, a listing,
    // the redirect to a folder's slash.
    let (status, head, body) = curl_get(&url(&format!("/ipfs/{root}/sub/big.bin")), &[]);
    assert_eq!(status, 200);
    assert_eq!(
        body,
        std::fs::read(site.join("sub/big.bin")).expect("original")
    );
    assert_eq!(
        header(&head, "content-type"),
        Some("application/octet-stream")
    );
    let (status, _, body) = curl_get(&url(&format!("/ipfs/{root}/docs/")), &[]);
    assert_eq!((status, &body[..]), (200, &b"<h1>docs</h1>\n"[..]));
    let (status, head, _) = curl_get(&url(&format!("/ipfs/{root}/docs")), &[]);
    assert_eq!(status, 301);
    assert!(header(&head, "location").is_some_and(|l| l.ends_with("/docs/")));
    let (status, _, body) = curl_get(&url(&format!("/ipfs/{root}/sub/")), &[]);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("big.bin"));

    // HTTP/3 serves the same raw block.
    let h3 = aioquic_request(
        &url(&format!("/ipfs/{root}/hello.txt?format=raw")).replace("http://", "https://"),
        "GET",
        &[],
    );
    assert_eq!(h3.status, 200);
    assert_eq!(h3.body, b"hello, ipfs\n");
}

/// A folder of more than 1,000 entries is a HAMT-sharded directory
/// (`ipfs-car` shards past 1,000); names resolve through the shards, and a
/// CAR for a path carries the shards on the way.
#[test]
fn paths_resolve_through_hamt_sharded_directories() {
    let (node, _cfg) = start(&[]);
    let tmp = tempfile::tempdir().expect("tmp");
    let many = tmp.path().join("many");
    std::fs::create_dir_all(&many).expect("mkdir");
    for i in 0..1500 {
        std::fs::write(many.join(format!("f{i:04}.txt")), format!("file {i}\n")).expect("write");
    }
    let car = tmp.path().join("many.car");
    let root = pack(&many, &car);
    let client = tmp.path().join("client");
    let token = make_token(&client, &node);
    // The node's importer shards the folder as ipfs-car does: the same CID.
    let ours = add(&client, &node, &many, &["--no-pin"]);
    assert_eq!(ours, root);
    assert_eq!(import_car(&node, &token, &car).0, 200);
    let (_, blocks) = read_car(&std::fs::read(&car).expect("car"));
    let root_cid: Cid = root.parse().expect("cid");
    let root_block = &blocks.iter().find(|(c, _)| *c == root_cid).expect("root").1;
    let root_node = tessera_ipfs::unixfs::decode_node(root_block).expect("node");
    assert_eq!(root_node.data.kind, tessera_ipfs::unixfs::Kind::HamtShard);
    for i in [0, 1, 777, 1499] {
        let (status, _, body) = curl_get(&format!("{}/ipfs/{root}/f{i:04}.txt", node.url()), &[]);
        assert_eq!(status, 200);
        assert_eq!(body, format!("file {i}\n").into_bytes());
    }
    let (status, _, _) = curl_get(&format!("{}/ipfs/{root}/f9999.txt", node.url()), &[]);
    assert_eq!(status, 404);
    // dag-scope=block at a path: the shards on the way, then the file.
    let path = car_cids(
        &node,
        &format!("/ipfs/{root}/f0777.txt?format=car&dag-scope=block"),
    );
    assert!(path.len() >= 2 && path.len() < 6, "{path:?}");
    assert_eq!(path[0], root_cid);
    // dag-scope=entity of the folder: every shard, no file.
    let entity = car_cids(&node, &format!("/ipfs/{root}?format=car&dag-scope=entity"));
    assert!(entity.iter().all(|c| c.codec() == tessera_ipfs::DAG_PB));
    // The listing names every file.
    let (status, _, body) = curl_get(&format!("{}/ipfs/{root}/", node.url()), &[]);
    assert_eq!(status, 200);
    let listing = String::from_utf8_lossy(&body);
    assert!((0..1500).all(|i| listing.contains(&format!("f{i:04}.txt"))));
}

#[test]
fn verified_fetch_reads_files_and_directories_through_the_node() {
    let (node, _cfg) = start(&[]);
    let tmp = tempfile::tempdir().expect("tmp");
    let site = tmp.path().join("site");
    fixture(&site);
    let client = tmp.path().join("client");
    make_token(&client, &node);
    let root = add(&client, &node, &site, &[]);
    // Delegated routing names this node as the provider.
    let (status, _, body) = curl_get(&format!("{}/routing/v1/providers/{root}", node.url()), &[]);
    assert_eq!(status, 200);
    let providers: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        providers["Providers"][0]["Addrs"][0],
        format!("/ip4/127.0.0.1/tcp/{}/http", node.addr.port())
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ipfs/verified-fetch.mjs");
    let run_dir = clients();
    let local = run_dir.join("verified-fetch.mjs");
    std::fs::copy(&script, &local).expect("copy the script beside its modules");
    let urls: Vec<String> = ["hello.txt", "sub/big.bin", "sub", ""]
        .iter()
        .map(|p| format!("ipfs://{root}/{p}"))
        .collect();
    let out = Command::new(node22())
        .arg(&local)
        .arg(node.url())
        .args(&urls)
        .current_dir(&run_dir)
        .output()
        .expect("node");
    let text = ok(out, "@helia/verified-fetch");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    let sha = |p: &str| {
        use sha2::Digest;
        format!(
            "{:x}",
            sha2::Sha256::digest(std::fs::read(site.join(p)).expect("read"))
        )
    };
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["sha256"], sha("hello.txt"));
    assert_eq!(lines[1]["status"], 200);
    assert_eq!(lines[1]["len"], 3_000_000);
    assert_eq!(lines[1]["sha256"], sha("sub/big.bin"));
    // Folders come back as their verified dag-pb node.
    for l in &lines[2..] {
        assert_eq!(l["status"], 200, "{l}");
        assert_eq!(l["type"], "application/vnd.ipld.dag-pb", "{l}");
    }
}

#[test]
fn the_pinning_service_compliance_suite_passes() {
    let (node, _cfg) = start(&[]);
    let tmp = tempfile::tempdir().expect("tmp");
    let token = make_token(&tmp.path().join("client"), &node);
    let suite = PathBuf::from(std::env::var("TESSERA_PINNING_COMPLIANCE").expect(
        "TESSERA_PINNING_COMPLIANCE names the npm folder of @ipfs-shipyard/pinning-service-compliance \
         (scripts/test installs it)",
    ));
    let out = Command::new(node22())
        .arg(suite.join("node_modules/.bin/pinning-service-compliance"))
        .args(["-s", &node.url(), &token])
        .current_dir(tmp.path())
        .output()
        .expect("pinning-service-compliance");
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("{report}");
    let summary = report
        .lines()
        .find(|l| l.starts_with("Summary ("))
        .unwrap_or_else(|| panic!("no summary in the report:\n{report}"));
    // Every check the suite can run here passes; the ones that validate
    // answers against the spec's schema download it from GitHub, which this
    // machine cannot reach: they are logged as errors, not counted.
    let (passed, total) = summary
        .trim_start_matches("Summary (")
        .split_once(' ')
        .and_then(|(f, _)| f.split_once('/'))
        .map(|(a, b)| (a.parse::<u32>().expect("n"), b.parse::<u32>().expect("n")))
        .expect("n/m");
    assert!(total >= 5, "{summary}");
    assert_eq!(passed, total, "{report}");
    assert!(!report.contains('❌'), "{report}");
    // The spec's error shape, on a bad token.
    let (status, _, body) = curl_get(
        &format!("{}/pins", node.url()),
        &["-H", "Authorization: Bearer tsr1_bm90LWEta2V5"],
    );
    assert_eq!(status, 401);
    let err: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(err["error"]["reason"], "UNAUTHORIZED");
}

/// Pins on a ledger cluster of four: placed on two nodes, fetched from the
/// origin, moved when a node dies (fetched from the surviving node: the
/// origin is gone by then), served by every node from whoever holds it; an
/// origin that flips a byte gets its block refused and the pin fails.
#[test]
fn pins_are_placed_moved_and_served_by_every_node() {
    let nodes = ledger_committee(
        &[100, 100, 100, 100],
        4,
        60_000,
        "",
        "[services.ipfs]\nallow_private_origins = true\nwatch_ms = 200\nfetch_timeout_ms = 10000\n",
        &[],
    );
    let mut nodes = nodes;
    within(Duration::from_secs(60), "every member alive", || {
        nodes.iter().all(|n| alive_verified(n) == 4)
    });
    let tmp = tempfile::tempdir().expect("tmp");
    let site = tmp.path().join("site");
    fixture(&site);
    let cars = tmp.path().join("cars");
    std::fs::create_dir_all(&cars).expect("mkdir");
    let root = pack(&site, &tmp.path().join("site.car"));
    std::fs::rename(
        tmp.path().join("site.car"),
        cars.join(format!("{root}.car")),
    )
    .expect("mv");
    let port = free_addr().port();
    let mut origin = start_origin(port, &cars, false);
    let client = tmp.path().join("client");
    make_token(&client, &nodes[0]);

    let out = cli(
        &client,
        &nodes[1],
        &[
            "ipfs",
            "pin",
            &root,
            "--name",
            "site",
            "--replicas",
            "2",
            "--wait",
            "--origin",
            &format!("/ip4/127.0.0.1/tcp/{port}/http"),
        ],
    );
    let line = ok(out, "tessera ipfs pin --wait");
    assert!(line.ends_with(" pinned"), "{line}");
    let id = line
        .split_whitespace()
        .next()
        .expect("request id")
        .to_string();
    let placed = placed_on(&nodes, &id);
    assert_eq!(placed.len(), 2, "{placed:?}");
    for &i in &placed {
        assert_eq!(
            nodes[i].metric("tessera_ipfs_pins_pinned{service=\"ipfs\"}"),
            1,
            "node {i}"
        );
    }
    // The origin goes away; every node still serves the content, from the
    // nodes that pinned it.
    origin.kill();
    for n in &nodes {
        let (status, _, body) = curl_get(&format!("{}/ipfs/{root}/hello.txt", n.url()), &[]);
        assert_eq!(
            (status, &body[..]),
            (200, &b"hello, ipfs\n"[..]),
            "{}",
            n.url()
        );
    }
    // A placed node dies (not the first, whose ledger view the test reads):
    // the pin moves to a live node, which fetches it from the other holder.
    let victim = *placed
        .iter()
        .find(|&&i| i != 0)
        .expect("a placed node other than 0");
    nodes[victim].kill9();
    let observer = if victim == 0 { 1 } else { 0 };
    within(
        Duration::from_secs(90),
        "re-placed and pinned on a live node",
        || {
            let now = placed_on(&nodes, &id);
            now.len() == 2
                && !now.contains(&victim)
                && now
                    .iter()
                    .all(|&i| nodes[i].metric("tessera_ipfs_pins_pinned{service=\"ipfs\"}") == 1)
        },
    );
    let (status, _, body) = curl_get(
        &format!("{}/pins/{id}", nodes[observer].url()),
        &[
            "-H",
            &format!("authorization: Bearer {}", saved_token(&client)),
        ],
    );
    assert_eq!(status, 200);
    let st: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(st["status"], "pinned", "{st}");
    assert_eq!(
        st["pin"]["origins"][0],
        format!("/ip4/127.0.0.1/tcp/{port}/http"),
        "origins kept"
    );

    // An origin that flips a byte: the block is refused, the pin fails.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).expect("mkdir");
    std::fs::write(other.join("data.bin"), random_bytes(2_500_000, 99)).expect("write");
    let bad_cars = tmp.path().join("bad");
    std::fs::create_dir_all(&bad_cars).expect("mkdir");
    let bad_root = pack(&other, &tmp.path().join("o.car"));
    std::fs::rename(
        tmp.path().join("o.car"),
        bad_cars.join(format!("{bad_root}.car")),
    )
    .expect("mv");
    let bad_port = free_addr().port();
    let _liar = start_origin(bad_port, &bad_cars, true);
    let out = cli(
        &client,
        &nodes[observer],
        &[
            "ipfs",
            "pin",
            &bad_root,
            "--replicas",
            "1",
            "--wait",
            "--origin",
            &format!("http://127.0.0.1:{bad_port}"),
        ],
    );
    assert!(!out.status.success(), "the pin fails");
    assert!(String::from_utf8_lossy(&out.stdout).contains("failed"));
    let refused: u64 = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, n)| n.metric("tessera_ipfs_blocks_refused_total{service=\"ipfs\"}"))
        .sum();
    assert!(refused >= 1);
    // The bad block is on no node.
    let (_, blocks) =
        read_car(&std::fs::read(bad_cars.join(format!("{bad_root}.car"))).expect("car"));
    let last = blocks.last().expect("blocks").0;
    for (i, n) in nodes.iter().enumerate() {
        if i == victim {
            continue;
        }
        let (status, _, _) = curl_get(
            &format!("{}/ipfs/{last}?format=raw", n.url()),
            &["-H", "cache-control: only-if-cached"],
        );
        assert_eq!(status, 412, "node {i}");
    }
}

fn saved_token(client: &Path) -> String {
    std::fs::read_to_string(client.join("ipfs-token"))
        .expect("token")
        .trim()
        .to_string()
}

/// A trustless-gateway origin (`tests/ipfs/origin.py`), killed when dropped,
/// even when the test panics.
struct Origin(std::process::Child);

impl Origin {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_origin(port: u16, dir: &Path, flip: bool) -> Origin {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ipfs/origin.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(port.to_string()).arg(dir);
    if flip {
        cmd.arg("flip");
    }
    let child = spawn_ready(&mut cmd, "python3 origin");
    Origin(child)
}

/// A pin's owner pays, through the ledger, for the bytes its pin holds over
/// time and for the bytes served from it, raw blocks answered on the core
/// included; nobody else pays for it.
#[test]
fn a_pins_owner_pays_for_what_it_holds_and_serves() {
    const PRICE: u64 = 3;
    let nodes = ledger_committee(
        &[100, 100, 100, 100],
        4,
        6_000,
        &format!("price_per_byte = {PRICE}\n"),
        "[services.ipfs]\nwatch_ms = 200\n",
        &[],
    );
    let json = |n: &Node, path: &str| -> Option<serde_json::Value> {
        let (status, _, body) = n.get(path);
        (status == 200).then(|| serde_json::from_slice(&body).ok())?
    };
    within(Duration::from_secs(90), "4 staked nodes", || {
        json(&nodes[0], "/ledger/reputation").and_then(|v| v["nodes"].as_array().map(|a| a.len()))
            == Some(4)
    });
    let tmp = tempfile::tempdir().expect("tmp");
    let client = tmp.path().join("owner");
    let out = Command::new(BIN)
        .args(["account", "--json", "--deposit", "100000000", "--node"])
        .arg(nodes[0].url())
        .env("TESSERA_CLIENT_DIR", &client)
        .output()
        .expect("account");
    let owner: serde_json::Value = serde_json::from_str(&ok(out, "deposit")).expect("json");
    let owner = owner["id"].as_str().expect("id").to_string();
    make_token(&client, &nodes[1]);
    // One raw block of 300 kB, imported at node 1; placed on two nodes,
    // which fetch it from node 1.
    let data = random_bytes(300_000, 5);
    std::fs::write(tmp.path().join("data.bin"), &data).expect("write");
    let path = tmp.path().join("data.bin");
    let cid = add(&client, &nodes[1], &path, &["--no-wrap"]);
    assert!(cid.starts_with("bafkrei"), "{cid}");
    let listed = ok(cli(&client, &nodes[1], &["ipfs", "ls"]), "tessera ipfs ls");
    let id = listed
        .lines()
        .find(|l| l.contains(&cid))
        .and_then(|l| l.split_whitespace().next())
        .expect("the pin listed")
        .to_string();
    let mut runners = Vec::new();
    within(Duration::from_secs(60), "pinned on two nodes", || {
        runners = placed_on(&nodes, &id);
        runners.len() == 2
            && runners
                .iter()
                .all(|&i| nodes[i].metric("tessera_ipfs_pins_pinned{service=\"ipfs\"}") == 1)
    });
    // The same traffic at each: raw blocks (on the core) and CARs.
    let car_len = curl_get(
        &format!("{}/ipfs/{cid}?format=car", nodes[runners[0]].url()),
        &[],
    )
    .2
    .len() as u64;
    let mut served = car_len;
    for &i in &runners {
        for _ in 0..3 {
            let (status, _, body) =
                curl_get(&format!("{}/ipfs/{cid}?format=raw", nodes[i].url()), &[]);
            assert_eq!((status, body.len()), (200, data.len()));
            served += data.len() as u64;
        }
        if i != runners[0] {
            let (status, _, body) =
                curl_get(&format!("{}/ipfs/{cid}?format=car", nodes[i].url()), &[]);
            assert_eq!(status, 200);
            served += body.len() as u64;
        }
    }
    let charged = || -> u64 {
        let epoch = json(&nodes[0], "/ledger/status").expect("status")["epoch"]
            .as_u64()
            .expect("epoch");
        (0..epoch)
            .filter_map(|e| json(&nodes[0], &format!("/ledger/rewards/{e}")))
            .map(|v| v["deployments_charged"][id.as_str()].as_u64().unwrap_or(0))
            .sum()
    };
    // Serving alone is `served` units; holding adds a little every epoch.
    within(
        Duration::from_secs(120),
        "the bytes served charged to the owner",
        || charged() >= served * PRICE,
    );
    within(
        Duration::from_secs(60),
        "the owner's balance is what it paid",
        || {
            let before = charged();
            let balance = json(&nodes[0], &format!("/ledger/account/{owner}"))
                .and_then(|v| v["balance"].as_u64());
            before == charged() && balance == Some(100_000_000 - before)
        },
    );
}
