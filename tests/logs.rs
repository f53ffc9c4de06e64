//! Log lines carry ANSI colours only when stderr is a terminal and `NO_COLOR` is
//! unset: a node's log written to a file, a pipe or the journal is plain text.
//! The terminal is a real pseudo-terminal, made by util-linux's `script`.

mod common;

use std::net::TcpListener;
use std::process::Command;

use common::*;

/// What `tessera run` writes before it fails to bind a port that is taken: the
/// info lines about its identity, then the error.
fn run_on_taken_port(via_terminal: bool, no_color: Option<&str>) -> String {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tmp");
    let args = format!(
        "{BIN} run --data-dir {} --listen {addr} --cores 1",
        dir.path().join("data").display()
    );
    let mut cmd = if via_terminal {
        let mut c = Command::new("script");
        c.args(["-qec", &args, "/dev/null"]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &args]);
        c
    };
    cmd.env("RUST_LOG", "info").env_remove("NO_COLOR");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().expect("run");
    assert!(!out.status.success(), "binding a taken port should fail");
    drop(taken);
    // Through the terminal, stdout and stderr are one stream.
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("node identity"), "no log line in {text:?}");
    text
}

#[test]
fn colours_only_on_a_terminal_and_never_with_no_color() {
    let piped = run_on_taken_port(false, None);
    assert!(!piped.contains('\x1b'), "escapes in piped log: {piped:?}");
    let terminal = run_on_taken_port(true, None);
    assert!(
        terminal.contains("\x1b["),
        "no colour on a terminal: {terminal:?}"
    );
    let no_color = run_on_taken_port(true, Some("1"));
    assert!(!no_color.contains('\x1b'), "NO_COLOR ignored: {no_color:?}");
    // An empty NO_COLOR does not count (no-color.org).
    let empty = run_on_taken_port(true, Some(""));
    assert!(empty.contains("\x1b["), "{empty:?}");
}
