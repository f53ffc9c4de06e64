//! The systemd unit and the node's side of `Type=notify`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/tessera.service");
const EXAMPLE_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/tessera.toml");

#[test]
fn unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(UNIT).expect("unit file");
    for directive in [
        "Type=notify",
        "TimeoutStopSec=",
        "Restart=on-failure",
        "LimitNOFILE=",
        "LimitMEMLOCK=",
        "User=tessera",
        "StateDirectory=tessera",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "io_uring_setup io_uring_enter io_uring_register",
    ] {
        assert!(unit.contains(directive), "unit lacks {directive}");
    }
    // systemd-analyze checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("tessera.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/tessera", BIN)).expect("write");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let complaints = String::from_utf8_lossy(&out.stderr).to_string();
    // It exits 0 even for unknown keys and bad values; it only prints them.
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "systemd-analyze: {complaints}"
    );
}

#[test]
fn notify_ready_then_stopping_and_a_clean_exit() {
    // This test is the notify-aware supervisor: it owns NOTIFY_SOCKET, as systemd does.
    let dir = tempfile::tempdir().expect("tmp");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let addr = free_addr();
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--cores",
            "2",
            "--listen",
            &addr.to_string(),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("READY message");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    // READY means serving: no retries needed.
    assert_eq!(
        try_request(addr, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
            .expect("healthz")
            .0,
        200
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = socket.recv(&mut buf).expect("STOPPING message");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "node did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn example_config_runs() {
    let dir = tempfile::tempdir().expect("tmp");
    let addr = free_addr();
    // The file's listen address and data dir are overridden by environment variables,
    // the way an operator would test it before installing.
    let mut child = Command::new(BIN)
        .args(["run", "--config", EXAMPLE_CONFIG])
        .env("TESSERA_LISTEN", addr.to_string())
        .env("TESSERA_DATA_DIR", dir.path())
        .env("TESSERA_CORES", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ok = false;
    while Instant::now() < deadline && !ok {
        ok = matches!(
            try_request(addr, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"),
            Ok((200, _, _))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "node with the example config did not serve");
}
