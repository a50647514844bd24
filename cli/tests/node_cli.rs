//! `swoosh init` + `swoosh serve` as an operator runs them: real processes,
//! real HTTP, keys from disk, license issued by the CLI, graceful SIGINT, and
//! the log verified afterwards.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for a process to come up, catch up or exit. CI runs
/// the whole workspace at once on two shared cores; the bound only turns a
/// hang into a failure, so it is generous.
const PATIENCE: Duration = Duration::from_secs(60);

/// A spawned `swoosh` that is killed (and reaped) when the test is done with
/// it, also when an assertion fails first: a leaked server would keep its
/// port, its directory lock and a core of the CI machine.
struct KillOnDrop(Child);

impl KillOnDrop {
    fn spawn(cmd: &mut Command) -> KillOnDrop {
        KillOnDrop(cmd.spawn().expect("spawn swoosh"))
    }

    /// Wait (at most [`PATIENCE`]) for the process to exit by itself.
    fn wait_exit(&mut self, what: &str) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                t0.elapsed() < PATIENCE,
                "{what} did not exit within {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Already exited (and reaped by `wait_exit`) is fine: both fail
        // harmlessly then.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    let mut server = KillOnDrop::spawn(
        Command::new(env!("CARGO_BIN_EXE_swoosh"))
            .args(["serve", "--dir", &format!("{d}/leader"), "--http", &addr])
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    // Drained as it is written, so a chatty log can never fill the pipe and
    // stall the server; read once the server has exited.
    let server_stderr = {
        let mut pipe = server.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut pipe, &mut err);
            err
        })
    };
    let t0 = Instant::now();
    while swoosh(&["health", "--to", &url]).status.code() != Some(0) {
        assert!(t0.elapsed() < PATIENCE, "the node did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A log format that does not exist is a usage error naming the choices
    // (it used to fall back to text without a word).
    let o = swoosh(&["serve", "--dir", &format!("{d}/leader"), "--log", "bogus"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("possible values: json, text"), "{err}");

    // A second node on the same directory is refused, naming the first;
    // it would accept records at the indexes the first one acknowledges.
    let port2 = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = swoosh(&[
        "serve",
        "--dir",
        &format!("{d}/leader"),
        "--http",
        &format!("127.0.0.1:{port2}"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!("another swoosh process (pid {})", server.id()))
            && err.contains("stop it first"),
        "{err}"
    );

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
        "--idem-key",
        "cfg-1",
        "--json",
    ]);
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["index"], 1);
    assert_eq!(reply["duplicate"], false);
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
    // The same operation run again under its key (what the CLI tells an
    // operator to do after an interrupted run) is signed at a fresh HLC and
    // HEAD: other content under a used key is a conflict (SPEC §4), and the
    // CLI says the operation may already be done and where to look.
    let o = swoosh(&[
        "propose",
        "--to",
        &url,
        "--key",
        &format!("{d}/admin.key"),
        "--transition",
        "Boot_ConfigOk",
        "--inputs",
        &zero,
        "--idem-key",
        "cfg-1",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("already used at index 1 for Boot_ConfigOk")
            && err.contains("may already be done"),
        "{err}"
    );

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
    let status = server.wait_exit("serve after SIGTERM");
    assert!(status.success(), "serve exited with {status}");
    let err = server_stderr.join().expect("stderr reader");
    assert!(
        err.contains("SIGTERM: shutting down, flushing the WAL"),
        "{err}"
    );
    // With JSON logs (serve's default) every stderr line is JSON: the
    // command's own `swoosh: …` lines too, which a log pipeline met as
    // plain text among the JSON.
    for line in err.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON line: {line}"
        );
    }
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

    // Neither init --force nor the demo replaces the genesis and keys of a
    // cluster whose leader holds records.
    let key_before = std::fs::read(format!("{d}/leader/node.key")).unwrap();
    for args in [
        vec!["init", "--dir", d, "--force"],
        vec!["demo", "--dir", d, "--single-node", "--quiet"],
    ] {
        let o = swoosh(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("leader/data") || err.contains("already holds a cluster"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        std::fs::read(format!("{d}/leader/node.key")).unwrap(),
        key_before
    );

    // init --force over an enrolled cluster of no records: the followers'
    // age identities are replaced with their keys (enroll reused them, so
    // an old copy read the new cluster's gossip), and node directories
    // beyond the new counts are refused, not left holding old keys.
    let c2 = t.path().join("c2");
    let c2 = c2.to_str().unwrap();
    ok(&["init", "--dir", c2, "--followers", "2", "--agents", "3"]);
    ok(&["p2p", "enroll", "--dir", c2]);
    let age_before = std::fs::read(format!("{c2}/follower-1/age.key")).unwrap();
    let o = swoosh(&[
        "init",
        "--dir",
        c2,
        "--force",
        "--followers",
        "1",
        "--agents",
        "3",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("follower-2") && err.contains("Remove them"),
        "{err}"
    );
    ok(&[
        "init",
        "--dir",
        c2,
        "--force",
        "--followers",
        "2",
        "--agents",
        "3",
    ]);
    assert!(!std::path::Path::new(&format!("{c2}/follower-1/age.key")).exists());
    ok(&["p2p", "enroll", "--dir", c2]);
    assert_ne!(
        std::fs::read(format!("{c2}/follower-1/age.key")).unwrap(),
        age_before
    );
    // An agent started with a rostered key of another role (the admin's
    // copied onto its host) is refused by name, before it joins the mesh.
    std::fs::copy(format!("{c2}/admin.key"), format!("{c2}/agent-1/agent.key")).unwrap();
    let o = swoosh(&[
        "agent",
        "--dir",
        &format!("{c2}/agent-1"),
        "--peer",
        "/ip4/127.0.0.1/tcp/1",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("\"admin\" (admin)") && err.contains("not a council member's"),
        "{err}"
    );

    // Nor does init --force given a node's own directory (the only copy of
    // its genesis on a deployed machine).
    let leader = format!("{d}/leader");
    let genesis_before = std::fs::read(format!("{leader}/genesis.json")).unwrap();
    let o = swoosh(&["init", "--dir", &leader, "--force"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("it is a node's directory"), "{err}");
    assert_eq!(
        std::fs::read(format!("{leader}/genesis.json")).unwrap(),
        genesis_before
    );
    assert!(!std::path::Path::new(&format!("{leader}/keys")).exists());

    // The cluster directory given for the leader's is named as such, before
    // anything is created in it.
    let o = swoosh(&["serve", "--dir", d, "--http", "127.0.0.1:0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!("did you mean --dir {leader}")),
        "{err}"
    );
    assert!(!std::path::Path::new(&format!("{d}/data")).exists());
    // A bad --cluster-id is named, not reported as a bug.
    let fresh = format!("{d}-fresh");
    let o = swoosh(&["init", "--dir", &fresh, "--cluster-id", "Not Valid"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("--cluster-id"), "{err}");
    assert!(!err.contains("a bug"), "{err}");
}

/// `swoosh p2p enroll` rewrites genesis, so it checks every node directory
/// of the cluster: a store that a node only opened (stamped with the old
/// genesis, no record) is stamped with the new one, or the node would
/// refuse to start on it; a store holding records refuses the enrollment.
#[test]
fn enroll_restamps_an_opened_empty_store_and_refuses_one_with_records() {
    use swoosh_storage::{LmdbOptions, LmdbStore, LogStore, WalWriter};
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("c");
    let d = d.to_str().unwrap();
    ok(&["init", "--dir", d, "--agents", "3", "--followers", "1"]);
    let genesis = |dir: &str| -> swoosh_core::state::Genesis {
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/genesis.json")).unwrap())
            .unwrap()
    };
    let mkdir = |p: String| {
        std::fs::create_dir_all(&p).unwrap();
        std::path::PathBuf::from(p)
    };
    let leader = format!("{d}/leader");
    // As an earlier build's `init` wrote it: without facts_bound_to_genesis.
    // The new genesis enroll writes binds facts, as every new one does.
    for dir in [d.to_string(), leader.clone()] {
        let mut g = genesis(&dir);
        g.facts_bound_to_genesis = false;
        std::fs::write(
            format!("{dir}/genesis.json"),
            serde_json::to_string_pretty(&g).unwrap(),
        )
        .unwrap();
    }
    let old = genesis(&leader).hash().unwrap();
    // What a first `swoosh serve` leaves when stopped before any proposal.
    drop(
        WalWriter::open(
            LmdbStore::open(&mkdir(format!("{leader}/data")), &LmdbOptions::default()).unwrap(),
            old,
            swoosh_storage::BatchLimits::default(),
        )
        .unwrap(),
    );
    ok(&["p2p", "enroll", "--dir", d]);
    let new = genesis(&leader).hash().unwrap();
    assert_ne!(new, old);
    assert!(genesis(&leader).facts_bound_to_genesis);
    // The leader's store now belongs to the new genesis.
    let v = ok(&["wal", "verify", "--dir", &leader]);
    assert!(v.contains("0 records"), "{v}");

    // A follower's store that holds a record: genesis cannot change.
    {
        let mut s = LmdbStore::open(
            &mkdir(format!("{d}/follower-1/data")),
            &LmdbOptions::default(),
        )
        .unwrap();
        s.append(vec![(1, b"a record".to_vec())]).unwrap();
    }
    let o = swoosh(&["p2p", "enroll", "--dir", d]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("follower-1 already holds 1 records") && err.contains("genesis cannot change"),
        "{err}"
    );
    assert_eq!(genesis(&leader).hash().unwrap(), new, "nothing rewritten");
}

/// Three distinct ports free on loopback now (other processes bind them
/// next). The listeners are held until all three are chosen: a port is
/// handed back by the kernel once its listener is dropped.
fn free_ports() -> (u16, u16, u16) {
    let held: Vec<_> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let port = |i: usize| held[i].local_addr().unwrap().port();
    (port(0), port(1), port(2))
}

/// `swoosh follow --http --leader-http` as an operator runs it: `swoosh
/// state` and `swoosh health` read the follower as they read the leader,
/// and a proposal sent to the follower is told the leader's HTTP URL.
#[test]
fn a_follower_process_answers_state_and_health_and_names_the_leaders_url() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("c");
    let d = d.to_str().unwrap();
    ok(&["init", "--dir", d, "--agents", "3", "--followers", "1"]);
    ok(&["p2p", "enroll", "--dir", d]);
    let (lhttp, lp2p, fhttp) = free_ports();
    let leader_url = format!("http://127.0.0.1:{lhttp}");
    let follower_url = format!("http://127.0.0.1:{fhttp}");
    let p2p = format!("/ip4/127.0.0.1/tcp/{lp2p}");
    let follower_dir = format!("{d}/follower-1");

    // --leader-http must be an HTTP URL: refused at start, saying why.
    for bad in [p2p.as_str(), "ftp://127.0.0.1:7700", "127.0.0.1:7700"] {
        let o = swoosh(&[
            "follow",
            "--dir",
            &follower_dir,
            "--leader",
            &p2p,
            "--leader-http",
            bad,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{bad}: {err}");
        assert!(
            err.contains("--leader-http") && err.contains("http://"),
            "{bad}: {err}"
        );
    }

    let spawn = |args: &[&str]| {
        KillOnDrop::spawn(
            Command::new(env!("CARGO_BIN_EXE_swoosh"))
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };
    let leader = spawn(&[
        "serve",
        "--dir",
        &format!("{d}/leader"),
        "--http",
        &format!("127.0.0.1:{lhttp}"),
        "--p2p",
        &p2p,
    ]);
    let follower = spawn(&[
        "follow",
        "--dir",
        &follower_dir,
        "--leader",
        &p2p,
        "--http",
        &format!("127.0.0.1:{fhttp}"),
        "--leader-http",
        &format!("{leader_url}/"),
    ]);
    let run = || -> Result<(), String> {
        let until = |what: &str, f: &dyn Fn() -> bool| -> Result<(), String> {
            let t0 = Instant::now();
            while !f() {
                if t0.elapsed() > PATIENCE {
                    return Err(format!("timed out waiting {PATIENCE:?} for {what}"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        };
        until("the leader", &|| {
            swoosh(&["health", "--to", &leader_url]).status.success()
        })?;
        let zero = format!("{{\"config_hash\":\"blake3:{}\"}}", "0".repeat(64));
        ok(&[
            "propose",
            "--to",
            &leader_url,
            "--key",
            &format!("{d}/admin.key"),
            "--transition",
            "Boot_ConfigOk",
            "--inputs",
            &zero,
        ]);
        until("the follower at index 1", &|| {
            let o = swoosh(&["health", "--to", &follower_url, "--json"]);
            o.status.success()
                && serde_json::from_slice::<serde_json::Value>(&o.stdout).is_ok_and(|h| {
                    h["applied_index"] == 1 && h["status"] == "ok" && h["walLag"] == 0
                })
        })?;
        // The reviewer's `swoosh state --to FOLLOWER --projection Council`.
        for projection in ["Council", "Boot,Project"] {
            let read =
                |url: &str| ok(&["state", "--to", url, "--projection", projection, "--json"]);
            let (l, f) = (read(&leader_url), read(&follower_url));
            if l != f {
                return Err(format!("{projection}: leader {l} follower {f}"));
            }
        }
        let h = ok(&["health", "--to", &follower_url]);
        if !h.contains("(follower), applied index 1")
            || !h.contains(&format!(
                "follower of the single-writer leader at {leader_url}"
            ))
            || !h.contains("wal lag 0 records")
        {
            return Err(format!("swoosh health on the follower: {h}"));
        }
        // A proposal sent to the follower names the leader's URL.
        let o = swoosh(&[
            "propose",
            "--to",
            &follower_url,
            "--key",
            &format!("{d}/admin.key"),
            "--transition",
            "Boot_ConfigOk",
            "--inputs",
            &zero,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        if o.status.success()
            || !err.contains(&format!("send proposals to the leader at {leader_url}"))
        {
            return Err(format!("propose to the follower: {err}"));
        }
        Ok(())
    };
    // A panic inside `run` (an `ok` that fails) kills both through their
    // guards as well.
    let result = run();
    drop((follower, leader));
    result.unwrap();
}

/// Files the CLI reads are refused, saying why, when they exceed their
/// limit: `/dev/zero` or a huge file given by mistake used to be read to the
/// end (never, or out of memory).
#[test]
fn endless_and_oversized_input_files_are_refused_at_their_limit() {
    let t = tempfile::tempdir().unwrap();
    let big = t.path().join("big");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(512 * 1024 * 1024) // sparse: no disk used
        .unwrap();
    let big = big.to_str().unwrap();
    let key = t.path().join("k");
    ok(&["keygen", "--out", key.to_str().unwrap()]);
    // A dangling symlink is an existing path: keygen refuses it without
    // --force (it replaced the link, following nothing but still without
    // being asked).
    let link = t.path().join("dangling.key");
    std::os::unix::fs::symlink(t.path().join("missing/x.key"), &link).unwrap();
    let o = swoosh(&["keygen", "--out", link.to_str().unwrap()]);
    assert!(!o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already exists"),
        "{o:?}"
    );
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    let key = key.to_str().unwrap();
    let inputs_zero = "@/dev/zero".to_string();
    let inputs_big = format!("@{big}");
    for (args, says) in [
        (vec!["propose", "--file", "/dev/zero"], "limit"),
        (vec!["propose", "--file", big], "limit"),
        (
            vec!["propose", "--transition", "Boot_ConfigOk", "--key", big],
            "limit",
        ),
        (
            vec![
                "propose",
                "--transition",
                "Boot_ConfigOk",
                "--key",
                key,
                "--inputs",
                &inputs_zero,
            ],
            "limit",
        ),
        (
            vec![
                "propose",
                "--transition",
                "Boot_ConfigOk",
                "--key",
                key,
                "--inputs",
                &inputs_big,
            ],
            "limit",
        ),
    ] {
        let mut a = args.clone();
        a.extend(["--to", "http://127.0.0.1:9"]);
        let o = swoosh(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// The HTTP port is bound before recovery: a port in use fails the start at
/// once, naming the cause, and not after a replay that may take minutes.
#[test]
fn a_port_in_use_fails_the_start_before_recovery() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("c");
    let d = d.to_str().unwrap();
    ok(&["init", "--dir", d]);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let o = swoosh(&[
        "serve",
        "--dir",
        &format!("{d}/leader"),
        "--http",
        &addr,
        "--log",
        "text",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.contains("another process is using it"), "{err}");
    assert!(
        !err.contains("recovering the state"),
        "bound after recovery: {err}"
    );
}

/// `swoosh probe sign` binds the probe to the cluster named by `--genesis`
/// (a cluster made by `init` refuses unbound probes), and says what is
/// wrong when that file is not a genesis.
#[test]
fn probe_sign_binds_the_fact_to_the_clusters_genesis() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("c");
    let d = d.to_str().unwrap();
    ok(&["init", "--dir", d, "--agents", "3"]);
    let genesis_file = format!("{d}/genesis.json");
    let genesis: swoosh_core::state::Genesis =
        serde_json::from_str(&std::fs::read_to_string(&genesis_file).unwrap()).unwrap();
    assert!(genesis.facts_bound_to_genesis, "a new genesis binds facts");
    let key = format!("{d}/keys/tool-prober.key");
    let out = ok(&[
        "probe",
        "sign",
        "--key",
        &key,
        "--genesis",
        &genesis_file,
        "--tool",
        "mcp-git",
        "--version",
        "1.4.2",
    ]);
    let probe: swoosh_core::facts::Probe = serde_json::from_str(&out).unwrap();
    probe.verify().unwrap();
    assert_eq!(probe.body.genesis, Some(genesis.hash().unwrap()));
    assert_eq!(probe.body.tool, "mcp-git");

    // Signed with a key the roster gives another role: still a fact on
    // stdout (a project's roster may grant the role), with a warning that
    // names the role it has and the key to use.
    let o = swoosh(&[
        "probe",
        "sign",
        "--key",
        &format!("{d}/keys/worker.key"),
        "--genesis",
        &genesis_file,
        "--tool",
        "mcp-git",
        "--version",
        "1.4.2",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning:")
            && err.contains("(worker)")
            && err.contains("keys/tool-prober.key"),
        "{err}"
    );
    let _: swoosh_core::facts::Probe = serde_json::from_slice(&o.stdout).unwrap();
    let quiet = swoosh(&[
        "probe",
        "sign",
        "--key",
        &key,
        "--genesis",
        &genesis_file,
        "--tool",
        "t",
        "--version",
        "1",
    ]);
    assert!(
        !String::from_utf8_lossy(&quiet.stderr).contains("warning"),
        "the tool prober's own key: no warning"
    );

    let bogus = t.path().join("not-genesis.json");
    std::fs::write(&bogus, "{\"cluster_id\": 3}").unwrap();
    for (file, says) in [
        (bogus.to_str().unwrap(), "is not a valid genesis document"),
        (
            "/nonexistent/genesis.json",
            "cannot read /nonexistent/genesis.json",
        ),
    ] {
        let o = swoosh(&[
            "probe",
            "sign",
            "--key",
            &key,
            "--genesis",
            file,
            "--tool",
            "t",
            "--version",
            "1",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{err}");
    }
}

/// A libp2p port in use fails a node before its recovery (the replay may
/// take minutes), not after it, naming the port: `serve --p2p`, `p2p
/// leader --listen` and `follow --listen` alike.
#[test]
fn a_p2p_port_in_use_fails_a_node_before_recovery() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("c");
    let d = d.to_str().unwrap();
    ok(&["init", "--dir", d, "--agents", "3"]);
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let p2p = format!("/ip4/127.0.0.1/tcp/{port}");
    let leader = format!("{d}/leader");
    for args in [
        vec![
            "serve",
            "--dir",
            &leader,
            "--http",
            "127.0.0.1:0",
            "--p2p",
            &p2p,
        ],
        vec![
            "p2p",
            "leader",
            "--dir",
            &leader,
            "--http",
            "127.0.0.1:0",
            "--listen",
            &p2p,
        ],
    ] {
        let o = swoosh(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}: {err}");
        assert!(
            err.contains(&format!("cannot listen on {p2p}"))
                && err.contains(&format!("using port {port}")),
            "{args:?}: {err}"
        );
        // The node's start-up log says when recovery begins; a port in use
        // is found before it.
        assert!(!err.contains("recovering the state"), "{args:?}: {err}");
    }

    // A follower too: its store belongs to another genesis, which its
    // recovery would refuse; the port in use is named first.
    ok(&["init", "--dir", &format!("{d}-f"), "--followers", "1"]);
    ok(&["p2p", "enroll", "--dir", &format!("{d}-f")]);
    let follower = format!("{d}-f/follower-1");
    {
        use swoosh_storage::{LmdbOptions, LmdbStore, WalWriter};
        std::fs::create_dir_all(format!("{follower}/data")).unwrap();
        drop(
            WalWriter::open(
                LmdbStore::open(
                    std::path::Path::new(&format!("{follower}/data")),
                    &LmdbOptions::default(),
                )
                .unwrap(),
                swoosh_core::Hash::of_bytes(b"another genesis"),
                swoosh_storage::BatchLimits::default(),
            )
            .unwrap(),
        );
    }
    let args = [
        "follow",
        "--dir",
        &follower,
        "--leader",
        "/ip4/127.0.0.1/tcp/9",
        "--listen",
        &p2p,
    ];
    let o = swoosh(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {p2p}"))
            && err.contains(&format!("using port {port}")),
        "{err}"
    );
    drop(held);
    // With the port free, the start goes on to the recovery, which refuses
    // the store.
    let o = swoosh(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        !err.contains("cannot listen on") && err.contains("belongs to genesis"),
        "{err}"
    );
}

/// A command that keeps SIGPIPE ignored (it has sockets: the demo's nodes)
/// ends quietly, as SIGPIPE would have ended it (status 141), when the
/// reader of its output goes away, instead of panicking on EPIPE.
#[test]
fn a_closed_stdout_ends_a_network_command_quietly() {
    let t = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_swoosh"))
        .args(["demo", "--single-node", "--dir"])
        .arg(t.path().join("d"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run swoosh");
    drop(child.stdout.take());
    let o = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.code(), Some(141), "{err}");
}

/// One agent per key: a second `swoosh agent` on a directory an agent runs
/// from is refused, naming the first (two copies signed conflicting votes in
/// one election, each remembering only its own).
#[test]
fn a_second_agent_on_one_directory_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("c");
    let d = d.to_str().unwrap();
    ok(&["init", "--dir", d, "--agents", "3"]);
    let dir = format!("{d}/agent-1");
    let agent = |stderr: Stdio| {
        KillOnDrop::spawn(
            Command::new(env!("CARGO_BIN_EXE_swoosh"))
                .args(["agent", "--dir", &dir, "--peer", "/ip4/127.0.0.1/tcp/1"])
                .args(["--log", "json"])
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .stderr(stderr),
        )
    };
    // An agent writes nothing (its unit runs it on a read-only file
    // system): the lock is on its key file, which it only reads.
    let _first = agent(Stdio::null());
    let key = std::fs::File::open(format!("{dir}/agent.key")).unwrap();
    let t0 = Instant::now();
    while key.try_lock().is_ok() {
        key.unlock().unwrap();
        assert!(
            t0.elapsed() < PATIENCE,
            "the first agent never took its lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut second = agent(Stdio::piped());
    let status = second.wait_exit("the second agent");
    let mut err = String::new();
    std::io::Read::read_to_string(second.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    // Under --log json the error that ends it is a JSON line too, whatever
    // RUST_LOG filters.
    let last: serde_json::Value =
        serde_json::from_str(err.lines().last().unwrap_or_default()).expect("a JSON line");
    assert_eq!(last["level"], "ERROR", "{err}");
    let msg = last["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("another swoosh agent runs with") && msg.contains("conflicting votes"),
        "{err}"
    );
    let entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        entries
            .iter()
            .all(|n| n == "agent.key" || n == "genesis.json"),
        "the agent wrote nothing: {entries:?}"
    );
}
