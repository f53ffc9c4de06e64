//! The operator's host check reads a live node and changes nothing by default.

mod common;

use std::process::Command;

use common::*;

#[test]
fn check_host_reports_on_a_running_node_without_changing_anything() {
    let node = Node::start(&[]);
    let conf = std::path::Path::new("/etc/sysctl.d/90-tessera.conf");
    let existed = conf.exists();
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/perf/check-host.sh"))
        .args(["--pid", &node.pid().to_string(), "--data-dir"])
        .arg(&node.data_dir)
        .output()
        .expect("bash");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // 0: nothing to change, 1: changes listed; anything else is the script failing.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for section in ["sysctls", "limits", "CPUs", "network", "memory and disk"] {
        assert!(
            text.lines().any(|l| l == section),
            "missing section {section}: {text}"
        );
    }
    // It found the node's two pinned event loops and read the node's own limits.
    assert_eq!(text.matches("tessera-core-").count(), 2, "{text}");
    assert!(
        text.contains(&format!("running node (pid {})", node.pid())),
        "{text}"
    );
    if out.status.code() == Some(1) {
        assert!(text.contains("CHANGE"), "{text}");
    }
    assert_eq!(conf.exists(), existed, "read-only by default");
}
