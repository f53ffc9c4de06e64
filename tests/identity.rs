//! Node identity: made on first start (mode 0600), the same id across restarts,
//! `tessera keys show`, and a clear stop (no restart loop) on a bad key file.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn keys_show(dir: &std::path::Path) -> serde_json::Value {
    let out = tessera(&[
        "keys",
        "show",
        "--json",
        "--data-dir",
        dir.to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn a_node_keeps_its_identity_across_restarts() {
    let mut node = Node::start(&[]);
    let key = node.data_dir.join("node.key");
    let mode = std::fs::metadata(&key)
        .expect("key made")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let first = keys_show(&node.data_dir);
    let id = first["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 64);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    node.restart();
    assert_eq!(keys_show(&node.data_dir)["id"].as_str(), Some(id.as_str()));
}

#[test]
fn keys_show_without_a_key_says_how_to_get_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = tessera(&[
        "keys",
        "show",
        "--data-dir",
        dir.path().to_str().expect("utf8"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("first start"), "{err}");
    assert!(
        !dir.path().join("node.key").exists(),
        "show never makes a key"
    );
}

/// Runs `tessera run` on `dir` and expects it to stop by itself with status
/// 78 (a node that kept running, or looped, would be killed after 20 s and
/// fail the test: that is a hang guard, not a speed check).
fn run_refuses(dir: &std::path::Path) -> String {
    let mut child = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tessera run kept running with a bad key instead of stopping");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert_eq!(status.code(), Some(78), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn a_bad_key_file_stops_the_node_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("node.key");
    std::fs::write(&key, "not a key\n").expect("write");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let err = run_refuses(dir.path());
    assert!(
        err.contains("not a tessera key") && err.contains("move it away"),
        "{err}"
    );
    // Never replaced: the operator's file is still there as it was.
    assert_eq!(std::fs::read_to_string(&key).expect("read"), "not a key\n");

    // A good key that others can read: refused with the chmod to run.
    let good = tempfile::tempdir().expect("tmp");
    let mut node = Node::start_in(good.path().to_path_buf(), None, &[]);
    node.kill9();
    let key = good.path().join("node.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = run_refuses(good.path());
    assert!(err.contains("chmod 600"), "{err}");
}
