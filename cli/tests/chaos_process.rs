//! `swoosh chaos --mode process` as CI runs it: real `swoosh` processes over
//! libp2p on loopback, kill -9 of the leader and of followers while SDK
//! clients drive four projects, every 202 checked on every replica's WAL.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The run takes ≈ 5–20 s; past this it is stuck (the runner bounds every
/// wait itself, so this is a last resort).
const RUN_SECS_MAX: u64 = 150;

fn swoosh(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_swoosh"))
        .args(args)
        .output()
        .expect("run swoosh")
}

#[test]
fn process_mode_survives_kill_9_of_the_leader_and_followers() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("run");
    let out = t.path().join("report.json");
    let err = t.path().join("stderr.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_swoosh"))
        .args([
            "chaos",
            "--mode",
            "process",
            "--seed",
            "7",
            "--transitions",
            "150",
            "--replicas",
            "3",
            "--json",
            "--dir",
            dir.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(RUN_SECS_MAX) {
            // Its nodes die with it (PR_SET_PDEATHSIG).
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the process-mode run did not end within {RUN_SECS_MAX} s; stderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&out).unwrap();
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert!(
        status.success(),
        "swoosh chaos --mode process failed ({status}):\n{stderr}\n{stdout}"
    );
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["mode"], "process");
    assert_eq!(r["seed"], 7);
    assert_eq!(r["transitions"], 150);
    assert_eq!(r["violations"], serde_json::json!([]), "{stdout}");
    // The leader's own attention scorer saw the forged and stale proposals:
    // its digest (band watch and above) is in the report.
    let attention = r["attention"].as_array().expect("attention is a list");
    assert!(
        attention.iter().all(|i| i["level"].as_u64().unwrap() >= 2
            && i["what"].as_str().is_some_and(|w| !w.is_empty())
            && i["next"].as_str().is_some_and(|n| !n.is_empty())),
        "{stdout}"
    );
    let forged = r["faults"]["forged_signature"].as_u64().unwrap_or(0)
        + r["faults"]["outsider"].as_u64().unwrap_or(0);
    if forged > 0 {
        assert!(
            attention.iter().any(|i| i["kind"] == "auth_failure"),
            "the forged signatures reach the attention digest: {stdout}"
        );
    }

    // One hash per replica, all equal, at one index.
    let hashes = r["final_hashes"].as_array().unwrap();
    assert_eq!(hashes.len(), 3, "{stdout}");
    assert!(hashes.iter().all(|h| h == &hashes[0]), "{stdout}");
    assert!(hashes[0].as_str().unwrap().starts_with("blake3:"));
    let nodes = r["process"]["nodes"].as_array().unwrap();
    for n in nodes {
        assert_eq!(n["wal_index"], r["final_index"], "{n}");
        assert_eq!(n["live_root_hash"], hashes[0], "{n}");
    }

    // The faults happened: the leader and a follower were killed and came
    // back; stale and replayed proposals were sent.
    assert!(r["faults"]["restart"].as_u64().unwrap() >= 2, "{stdout}");
    assert!(r["process"]["leader_restarts"].as_u64().unwrap() >= 1);
    assert!(r["process"]["follower_restarts"].as_u64().unwrap() >= 1);
    assert!(
        r["faults"]["stale_hash"].as_u64().unwrap() + r["faults"]["replay"].as_u64().unwrap() >= 1,
        "{stdout}"
    );

    // Every acknowledged transition was checked on every WAL; the clients
    // got most of their proposals through.
    let acked = r["acknowledged"].as_u64().unwrap();
    assert!(acked >= 75, "{stdout}");
    assert!(r["accepted"].as_u64().unwrap() >= acked);
    assert!(r["final_index"].as_u64().unwrap() >= acked);

    // The node logs are in the run directory and mark the kills.
    let leader_log = std::fs::read_to_string(dir.join("logs/leader.log")).unwrap();
    assert!(leader_log.contains("==== chaos: kill -9 of leader"));

    // No node outlives the run: every HTTP port is closed.
    for n in nodes {
        let addr = n["http"].as_str().unwrap();
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{} still answers on {addr} after the run",
            n["name"]
        );
    }
}

#[test]
fn process_mode_refuses_sim_only_options_and_too_few_replicas() {
    for (args, says) in [
        (vec!["--twice"], "--twice is for --mode sim"),
        (vec!["--council", "3"], "are for --mode sim"),
        (vec!["--replicas", "2"], "--replicas must be between 3"),
        (
            vec!["--transitions", "0"],
            "--transitions must be at least 1",
        ),
    ] {
        let mut all = vec!["chaos", "--mode", "process"];
        all.extend(args.iter());
        let o = swoosh(&all);
        assert!(!o.status.success(), "{all:?} was accepted");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(says), "{all:?}: {e}");
    }
    // --dir is for process mode only.
    let o = swoosh(&["chaos", "--dir", "/tmp/nowhere", "--transitions", "1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--dir is for --mode process"));
}

#[test]
fn sim_mode_without_a_temporary_directory_says_so() {
    // The simulation writes its leader's archives to a temporary directory:
    // without one it says so (not a panic reported as a cluster finding).
    let o = Command::new(env!("CARGO_BIN_EXE_swoosh"))
        .args(["chaos", "--seed", "1", "--transitions", "20"])
        .env("TMPDIR", "/nonexistent/swoosh-no-tmp")
        .output()
        .expect("run swoosh");
    assert!(!o.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(all.contains("set TMPDIR"), "{all}");
    assert!(!all.contains("panic"), "{all}");
}
