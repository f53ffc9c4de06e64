//! `tessera run` configuration: defaults < TOML file < TESSERA_* environment < flags.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn healthy(addr: std::net::SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if matches!(
            try_request(addr, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"),
            Ok((200, _, _))
        ) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn file_then_env_then_flags() {
    let dir = tempfile::tempdir().expect("tmp");
    let (from_file, from_env, from_flag) = (free_addr(), free_addr(), free_addr());
    let cfg = dir.path().join("tessera.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{from_file}\"\ncores = 1\ndata_dir = \"{}\"\n",
            dir.path().join("d").display()
        ),
    )
    .expect("write config");
    let start = |env: Option<&str>, flag: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config", cfg.to_str().expect("utf8")])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(e) = env {
            cmd.env("TESSERA_LISTEN", e);
        }
        if let Some(f) = flag {
            cmd.args(["--listen", f]);
        }
        cmd.spawn().expect("spawn")
    };
    for (env, flag, expect) in [
        (None, None, from_file),
        (Some(from_env.to_string()), None, from_env),
        (
            Some(from_env.to_string()),
            Some(from_flag.to_string()),
            from_flag,
        ),
    ] {
        let mut child = start(env.as_deref(), flag.as_deref());
        let ok = healthy(expect);
        let _ = child.kill();
        let _ = child.wait();
        assert!(ok, "expected the node on {expect}");
    }
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "listen = \"not an address\"\n").expect("write");
    let out = tessera(&["run", "--config", cfg.to_str().expect("utf8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("invalid config file"), "{err}");
    std::fs::write(&cfg, "no_such_key = 1\n").expect("write");
    let out = tessera(&["run", "--config", cfg.to_str().expect("utf8")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));
    // A port that is taken is a clear error, not a panic.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = tessera(&[
        "run",
        "--data-dir",
        dir.path().join("d").to_str().expect("utf8"),
        "--listen",
        &addr,
        "--cores",
        "1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("cannot listen"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn help_everywhere() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["put", "--help"],
        &["get", "--help"],
        &["store", "verify", "--help"],
    ] {
        let out = tessera(args);
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }
}
