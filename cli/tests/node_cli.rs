//! `swoosh init` + `swoosh serve` as an operator runs them: real processes,
//! real HTTP, keys from disk, license issued by the CLI, graceful SIGINT, and
//! the log verified afterwards.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn swoosh(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_swoosh"))
        .args(args)
        .output()
        .expect("run swoosh")
}

fn ok(args: &[&str]) -> String {
    let o = swoosh(args);
    assert!(
        o.status.success(),
        "swoosh {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn init_serve_propose_read_and_verify() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("c");
    let d = d.to_str().unwrap();
    ok(&["init", "--dir", d, "--agents", "3", "--followers", "1"]);
    for f in [
        "genesis.json",
        "admin.key",
        "leader/node.key",
        "leader/genesis.json",
        "agent-3/agent.key",
        "follower-1/genesis.json",
        "keys/license-authority.key",
    ] {
        assert!(
            std::path::Path::new(&format!("{d}/{f}")).exists(),
            "{f} missing"
        );
    }
    // A second init refuses to overwrite.
    assert!(!swoosh(&["init", "--dir", d]).status.success());

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let url = format!("http://{addr}");
    let mut server = Command::new(env!("CARGO_BIN_EXE_swoosh"))
        .args(["serve", "--dir", &format!("{d}/leader"), "--http", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while swoosh(&["health", "--to", &url]).status.code() != Some(0) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the node did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let zero = format!("{{\"config_hash\":\"blake3:{}\"}}", "0".repeat(64));
    let out = ok(&[
        "propose",
        "--to",
        &url,
        "--key",
        &format!("{d}/admin.key"),
        "--transition",
        "Boot_ConfigOk",
        "--inputs",
        &zero,
        "--json",
    ]);
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["index"], 1);
    let lic = ok(&[
        "license",
        "issue",
        "--key",
        &format!("{d}/keys/license-authority.key"),
        "--cluster-id",
        "local",
    ]);
    let lic_file = t.path().join("lic.json");
    std::fs::write(&lic_file, lic).unwrap();
    ok(&[
        "propose",
        "--to",
        &url,
        "--key",
        &format!("{d}/leader/node.key"),
        "--transition",
        "Boot_Licensed",
        "--inputs",
        &format!("@{}", lic_file.display()),
    ]);

    // Refusals exit non-zero and say why.
    let o = swoosh(&[
        "propose",
        "--to",
        &url,
        "--key",
        &format!("{d}/keys/worker.key"),
        "--transition",
        "Control_Pause",
        "--inputs",
        "{\"reason\":\"x\"}",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("403 forbidden"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let st: serde_json::Value = serde_json::from_str(&ok(&[
        "state",
        "--to",
        &url,
        "--projection",
        "Boot,Project",
        "--json",
    ]))
    .unwrap();
    assert_eq!(st["projection"]["boot"]["phase"], "LICENSED");
    assert_eq!(st["projection"]["meta"]["phase"], "PROJECT_LIFECYCLE");
    let h: serde_json::Value =
        serde_json::from_str(&ok(&["health", "--to", &url, "--json"])).unwrap();
    assert_eq!(h["index"], 2);
    let dr = ok(&[
        "decisions",
        "--to",
        &url,
        reply["decision"].as_str().unwrap(),
        "--json",
    ]);
    assert!(dr.contains("Boot_ConfigOk") && dr.contains("guard_outcomes"));

    // Graceful stop on SIGTERM, what systemd, Docker and Kubernetes send
    // (SIGINT too, as the chaos harness's followers and leader show):
    // flushes and exits 0, then the log verifies.
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    let status = server.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("SIGTERM: shutting down, flushing the WAL"),
        "{err}"
    );
    let v = ok(&["wal", "verify", "--dir", &format!("{d}/leader")]);
    assert!(v.contains("2 records"), "{v}");
    let r: serde_json::Value = serde_json::from_str(&ok(&[
        "replay",
        "--dir",
        &format!("{d}/leader"),
        "--from-genesis",
        "--json",
    ]))
    .unwrap();
    assert_eq!(r["hash"], h["root_hash"]);
}
