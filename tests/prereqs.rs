//! `scripts/prereqs` asks the package manager what is installed, not the file
//! system: run against fake dpkg databases (`dpkg-query --admindir`), it must ask
//! for exactly the packages those databases lack. The case that once slipped
//! through: `libclang-cpp14` (whose `libclang-cpp.so.14` looks like libclang to a
//! glob) installed and `libclang-dev` (the `libclang.so` bindgen loads) not.

use std::path::Path;
use std::process::Command;

/// A dpkg status file listing `installed` as installed, and `removed` as removed
/// with only its configuration files left (dpkg still knows of it).
fn database(dir: &Path, installed: &[&str], removed: &[&str]) {
    let mut status = String::new();
    for (pkg, state) in installed
        .iter()
        .map(|p| (p, "install ok installed"))
        .chain(removed.iter().map(|p| (p, "deinstall ok config-files")))
    {
        status.push_str(&format!(
            "Package: {pkg}\nStatus: {state}\nPriority: optional\nArchitecture: amd64\nVersion: 1.0-1\nDescription: test entry\n\n"
        ));
    }
    std::fs::write(dir.join("status"), status).expect("write status");
}

/// What the script would install, as it prints it in dry-run mode.
fn missing(dir: &Path, extras: &[&str]) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/prereqs");
    let out = Command::new("bash")
        .arg(&script)
        .args(extras)
        .env("TESSERA_PREREQS_ADMINDIR", dir)
        .env("TESSERA_PREREQS_DRY_RUN", "1")
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "prereqs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("missing:"))
        .unwrap_or_else(|| panic!("no 'missing:' line in {text:?}"));
    line.split_whitespace().map(String::from).collect()
}

#[test]
fn asks_for_libclang_dev_when_only_libclang_cpp_is_installed() {
    let dir = tempfile::tempdir().expect("tmp");
    database(
        dir.path(),
        &["cmake", "g++", "libclang-cpp14", "llvm-14"],
        &[],
    );
    assert_eq!(missing(dir.path(), &[]), ["libclang-dev"]);
}

#[test]
fn asks_for_nothing_when_everything_is_installed() {
    let dir = tempfile::tempdir().expect("tmp");
    let all = [
        "cmake",
        "g++",
        "libclang-cpp14",
        "libclang-dev",
        "curl",
        "systemd",
        "mount",
        "python3",
        "python3-pip",
        "iproute2",
        "bsdutils",
        "openssl",
        "nginx-light",
        "chromium",
        "nodejs",
        "npm",
    ];
    database(dir.path(), &all, &[]);
    assert!(missing(dir.path(), &[]).is_empty());
    let extras = [
        "curl", "systemd", "mount", "python3", "iproute2", "script", "openssl", "nginx",
        "chromium", "node",
    ];
    assert!(missing(dir.path(), &extras).is_empty());
}

#[test]
fn a_removed_package_and_the_test_extras_count_as_missing() {
    let dir = tempfile::tempdir().expect("tmp");
    // Removed with its config files left: dpkg knows it, but it is not installed.
    database(
        dir.path(),
        &["g++", "libclang-dev", "curl"],
        &["cmake", "iproute2"],
    );
    assert_eq!(
        missing(dir.path(), &["curl", "python3", "iproute2"]),
        ["cmake", "python3", "python3-pip", "iproute2"]
    );
    // An empty database: everything.
    let empty = tempfile::tempdir().expect("tmp");
    database(empty.path(), &[], &[]);
    assert_eq!(missing(empty.path(), &[]), ["cmake", "g++", "libclang-dev"]);
}

#[test]
fn an_unknown_extra_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    database(dir.path(), &[], &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/prereqs");
    let out = Command::new("bash")
        .arg(&script)
        .arg("nonsense")
        .env("TESSERA_PREREQS_ADMINDIR", dir.path())
        .env("TESSERA_PREREQS_DRY_RUN", "1")
        .output()
        .expect("bash");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown extra"));
}
