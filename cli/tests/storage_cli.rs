//! End-to-end tests of `swoosh wal …`, `swoosh replay` and `swoosh snapshot …`
//! against a real log written by `swoosh demo --dir`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use swoosh_core::Hash;
use swoosh_storage::store::index_key;
use swoosh_storage::{read_cut_file, LmdbOptions, LmdbStore, LogStore, Space};

fn swoosh<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_swoosh"))
        .args(args)
        .output()
        .expect("the swoosh binary runs")
}

/// stdout and stderr together, for assertions on messages.
fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(args: &[&str]) -> Output {
    let o = swoosh(args);
    assert!(o.status.success(), "swoosh {args:?} failed:\n{}", text(&o));
    o
}

fn fails(args: &[&str]) -> Output {
    let o = swoosh(args);
    assert!(
        !o.status.success(),
        "swoosh {args:?} should have failed:\n{}",
        text(&o)
    );
    o
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e}):\n{}", text(o));
    })
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Run the demo into `<tmp>/T`; returns (leader dir, root hash, last index).
fn demo(tmp: &Path) -> (PathBuf, String, u64) {
    let t = tmp.join("T");
    let o = ok(&["demo", "--dir", s(&t), "--json", "--quiet"]);
    let report = json(&o);
    let hash = report["nodes"][0]["hash"]
        .as_str()
        .expect("nodes[0].hash")
        .to_string();
    let index = report["nodes"][0]["index"]
        .as_u64()
        .expect("nodes[0].index");
    assert!(index >= 50, "the demo wrote only {index} records");
    (t.join("leader"), hash, index)
}

fn snapshot_indexes(dir: &str) -> Vec<u64> {
    let list = json(&ok(&["snapshot", "list", "--dir", dir, "--json"]));
    list.as_array()
        .expect("snapshot list --json is an array")
        .iter()
        .map(|r| r["index"].as_u64().expect("index"))
        .collect()
}

#[test]
fn storage_commands_on_a_demo_log() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (leader, demo_hash, last) = demo(tmp.path());
    let d = s(&leader);

    // A sound log verifies, fully and in JSON.
    let o = ok(&["wal", "verify", "--dir", d]);
    assert!(text(&o).contains("is sound"), "{}", text(&o));
    let v = json(&ok(&["wal", "verify", "--dir", d, "--json"]));
    assert_eq!(v["ok"], true);
    assert_eq!(v["records"], last);
    assert_eq!(v["root_hash"], demo_hash.as_str());
    assert_eq!(v["index_problems_total"], 0);

    // The cluster directory is not a node directory.
    let o = fails(&["wal", "verify", "--dir", s(&tmp.path().join("T"))]);
    assert!(text(&o).contains("did you mean --dir"), "{}", text(&o));
    assert!(text(&o).contains("leader"), "{}", text(&o));
    // With --json, the same failure is one JSON object on stdout.
    let o = fails(&["wal", "verify", "--dir", s(&tmp.path().join("T")), "--json"]);
    let v = json(&o);
    assert_eq!(
        (v["ok"].as_bool(), v["kind"].as_str()),
        (Some(false), Some("open")),
        "{v}"
    );
    assert!(
        v["reason"].as_str().unwrap().contains("did you mean --dir"),
        "{v}"
    );

    // Replay from genesis reproduces the demo's hash; --json has exactly the four keys.
    let r = json(&ok(&["replay", "--dir", d, "--from-genesis", "--json"]));
    let keys: Vec<&str> = r
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["hash", "records", "records_per_s", "seconds"]);
    assert_eq!(r["hash"], demo_hash.as_str());
    assert_eq!(r["records"], last);
    assert!(r["seconds"].as_f64().is_some() && r["records_per_s"].as_f64().is_some());
    // … and so does a replay from the newest snapshot.
    let r = json(&ok(&["replay", "--dir", d, "--json"]));
    assert_eq!(r["hash"], demo_hash.as_str());
    let o = ok(&["replay", "--dir", d]);
    assert!(text(&o).contains(&demo_hash), "{}", text(&o));

    // Export: one JSON record per line, in order.
    let o = ok(&["wal", "export", "--dir", d, "--format", "jsonl"]);
    let lines: Vec<serde_json::Value> = String::from_utf8(o.stdout.clone())
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len() as u64, last);
    for (i, rec) in lines.iter().enumerate() {
        assert_eq!(rec["index"], i as u64 + 1);
    }
    let o = ok(&[
        "wal", "export", "--dir", d, "--format", "jsonl", "--from", "3", "--to", "7",
    ]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 5);
    fails(&[
        "wal",
        "export",
        "--dir",
        d,
        "--format",
        "jsonl",
        "--to",
        &(last + 1).to_string(),
    ]);

    // Export CBOR: u32 BE length-prefixed canonical records whose hashes chain.
    let cbor_file = tmp.path().join("log.cbor");
    ok(&[
        "wal",
        "export",
        "--dir",
        d,
        "--format",
        "cbor",
        "--out",
        s(&cbor_file),
    ]);
    let bytes = std::fs::read(&cbor_file).expect("cbor export written");
    let mut rest = &bytes[..];
    let mut n = 0u64;
    while !rest.is_empty() {
        assert!(rest.len() >= 4, "torn length prefix");
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let payload = &rest[4..4 + len];
        rest = &rest[4 + len..];
        n += 1;
        if let Some(next) = lines.get(n as usize) {
            let prev: Hash = next["prev_hash"]
                .as_str()
                .expect("prev_hash")
                .parse()
                .expect("a hash");
            assert_eq!(Hash::of_bytes(payload), prev, "record {n} bytes");
        }
    }
    assert_eq!(n, last);

    // Inspect, readable and JSON.
    let o = ok(&["wal", "inspect", "--dir", d, "1"]);
    let t = text(&o);
    for want in [
        "WAL record 1",
        "project",
        "transition",
        "signer",
        "hlc",
        "pre hash",
        "post hash",
        "prev hash",
        "record hash",
        "guards",
        "bubble://dr/",
        "the genesis hash ✓",
        "stored ",
        "-byte record (",
    ] {
        assert!(t.contains(want), "inspect lacks {want:?}:\n{t}");
    }
    let j = json(&ok(&["wal", "inspect", "--dir", d, "2", "--json"]));
    assert_eq!(j["index"], 2);
    assert_eq!(j["record"]["index"], 2);
    assert_eq!(j["links_to_previous"], true);
    assert_eq!(j["record"], lines[1]);
    // A ~2 KB record is stored compressed, smaller than its encoding.
    let (stored, encoded) = (
        j["stored_bytes"].as_u64().unwrap(),
        j["encoded_bytes"].as_u64().unwrap(),
    );
    assert_eq!(j["compressed"], true, "{j}");
    assert!(encoded > 1_000 && stored < encoded, "{j}");
    fails(&["wal", "inspect", "--dir", d, &(last + 1).to_string()]);

    // Snapshots: create one at the head, list, restore an older one.
    ok(&["snapshot", "create", "--dir", d]);
    let snaps = snapshot_indexes(d);
    assert_eq!(snaps.last(), Some(&last), "snapshots {snaps:?}");
    let list = json(&ok(&["snapshot", "list", "--dir", d, "--json"]));
    for row in list.as_array().expect("array") {
        assert_eq!(row["valid"], true, "{row}");
        assert!(row["bytes"].as_u64().unwrap_or(0) > 0, "{row}");
        assert!(row["hash"]
            .as_str()
            .is_some_and(|h| h.starts_with("blake3:")));
    }
    let o = ok(&["snapshot", "list", "--dir", d]);
    assert!(text(&o).contains("recovery starts here"), "{}", text(&o));
    if snaps.len() >= 2 {
        let older = snaps[0].to_string();
        let o = fails(&["snapshot", "restore", "--dir", d, "--index", &older]);
        assert!(text(&o).contains("--yes"), "{}", text(&o));
        assert_eq!(snapshot_indexes(d), snaps, "a dry run changed nothing");
        ok(&[
            "snapshot", "restore", "--dir", d, "--index", &older, "--yes",
        ]);
        assert_eq!(snapshot_indexes(d), vec![snaps[0]]);
        let o = ok(&["replay", "--dir", d]);
        assert!(
            text(&o).contains(&format!("from snapshot {older}")),
            "{}",
            text(&o)
        );
        assert!(text(&o).contains(&demo_hash), "{}", text(&o));
    } else {
        ok(&[
            "snapshot",
            "restore",
            "--dir",
            d,
            "--index",
            &snaps[0].to_string(),
        ]);
    }
    fails(&[
        "snapshot", "restore", "--dir", d, "--index", "999999", "--yes",
    ]);

    // Flip one byte inside the payload of a record in the middle of the log.
    let k = last / 2;
    {
        let mut store =
            LmdbStore::open(&leader.join("data"), &LmdbOptions::default()).expect("open store");
        let mut frame = store.read_at(k).expect("read").expect("record k exists");
        let at = 38 + (frame.len() - 38) / 2;
        frame[at] ^= 0x01;
        store
            .overwrite_raw(Space::Wal, &index_key(k), &frame)
            .expect("overwrite");
    }
    let o = fails(&["wal", "verify", "--dir", d]);
    let t = text(&o);
    assert!(t.contains(&format!("WAL record {k}:")), "{t}");
    assert!(t.contains("hash mismatch"), "{t}");
    assert!(t.contains("swoosh wal repair --dir"), "{t}");
    let v = json(&fails(&["wal", "verify", "--dir", d, "--json"]));
    assert_eq!(v["ok"], false);
    assert_eq!(v["index"], k);
    assert_eq!(v["kind"], "corrupt");
    let o = fails(&["replay", "--dir", d, "--from-genesis", "--json"]);
    assert!(
        text(&o).contains(&format!("WAL record {k}:")),
        "{}",
        text(&o)
    );
    // Export stops at the damaged record, after writing the ones before it.
    let o = fails(&["wal", "export", "--dir", d, "--format", "jsonl"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count() as u64,
        k - 1
    );
    assert!(
        text(&o).contains(&format!("WAL record {k}:")),
        "{}",
        text(&o)
    );

    // Repair: a dry run without --yes changes nothing and fails.
    let cut = tmp.path().join("cut.bin");
    let o = fails(&["wal", "repair", "--dir", d, "--keep-copy", s(&cut)]);
    assert!(text(&o).contains("dry run"), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("first bad record is {k}")),
        "{}",
        text(&o)
    );
    assert!(!cut.exists());
    fails(&["wal", "verify", "--dir", d]);
    // With --yes it cuts records k.. into the side file.
    let o = ok(&["wal", "repair", "--dir", d, "--keep-copy", s(&cut), "--yes"]);
    assert!(
        text(&o).contains(&format!("now ends at record {}", k - 1)),
        "{}",
        text(&o)
    );
    let entries = read_cut_file(&cut).expect("side file readable");
    let wal_cut: Vec<u64> = entries
        .iter()
        .filter(|e| e.space == Space::Wal)
        .map(|e| e.index)
        .collect();
    assert_eq!(wal_cut, (k..=last).collect::<Vec<_>>());
    // The side file is never overwritten.
    fails(&["wal", "repair", "--dir", d, "--keep-copy", s(&cut), "--yes"]);

    let v = json(&ok(&["wal", "verify", "--dir", d, "--json"]));
    assert_eq!(v["records"], k - 1);
    let o = ok(&["wal", "export", "--dir", d, "--format", "jsonl"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count() as u64,
        k - 1
    );
    let g = json(&ok(&["replay", "--dir", d, "--from-genesis", "--json"]));
    let r = json(&ok(&["replay", "--dir", d, "--json"]));
    assert_eq!(g["hash"], r["hash"]);

    // A lost idempotency entry: the log is sound (exit 0, a warning), but
    // --strict exits 3 for a health check, in text and in JSON.
    {
        let mut store =
            LmdbStore::open(&leader.join("data"), &LmdbOptions::default()).expect("open store");
        let r = swoosh_storage::read_record(&store, 2)
            .expect("record 2")
            .record;
        let mut b = swoosh_storage::Batch::new();
        b.delete(
            Space::Idem,
            swoosh_storage::wal::idem_key(&r.project, &r.idem_key).expect("key"),
        );
        store.commit(b).expect("delete");
    }
    let o = ok(&["wal", "verify", "--dir", d]);
    assert!(
        text(&o).contains("warning: 1 derived-index problem"),
        "{}",
        text(&o)
    );
    let o = fails(&["wal", "verify", "--dir", d, "--strict"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("--strict: the log is sound but"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("swoosh wal reindex --dir"),
        "{}",
        text(&o)
    );
    let o = fails(&["wal", "verify", "--dir", d, "--strict", "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v = json(&o);
    assert_eq!(
        (v["ok"].clone(), v["index_problems_total"].clone()),
        (true.into(), 1.into())
    );

    // Reindex rebuilds the derived indexes; the log still verifies.
    let o = ok(&["wal", "reindex", "--dir", d]);
    assert!(
        text(&o).contains("rebuilt") && text(&o).contains("signed with the leader key in node.key"),
        "{}",
        text(&o)
    );
    let v = json(&ok(&["wal", "verify", "--dir", d, "--json", "--strict"]));
    assert_eq!(v["index_problems_total"], 0);
    assert!(v["halt"].is_null(), "{v}");
    // Without the leader's key at hand, the leader's signatures are kept:
    // a full verify still finds every decision signed by the genesis leader.
    let key = leader.join("node.key");
    let aside = leader.join("node.key.aside");
    std::fs::rename(&key, &aside).unwrap();
    let o = ok(&["wal", "reindex", "--dir", d]);
    assert!(
        text(&o).contains("each kept as stored, signed by the leader"),
        "{}",
        text(&o)
    );
    std::fs::rename(&aside, &key).unwrap();
    let v = json(&ok(&["wal", "verify", "--dir", d, "--json", "--strict"]));
    assert_eq!(v["index_problems_total"], 0, "{v}");

    // A recorded divergence halt (a follower's) is shown, not judged: the
    // log stays sound.
    {
        let mut store =
            LmdbStore::open(&leader.join("data"), &LmdbOptions::default()).expect("open store");
        swoosh_storage::record_halt(
            &mut store,
            &swoosh_storage::HaltMarker {
                index: 7,
                reason: "post-state hash differs".into(),
                at_ms: 1,
            },
        )
        .expect("record");
    }
    let o = ok(&["wal", "verify", "--dir", d]);
    assert!(
        text(&o).contains("halted at a divergence at index 7: post-state hash differs")
            && text(&o).contains("--clear-halt"),
        "{}",
        text(&o)
    );
    let v = json(&ok(&["wal", "verify", "--dir", d, "--json", "--strict"]));
    assert_eq!(v["halt"]["index"], 7, "{v}");
}

#[test]
fn bad_directories_are_explained() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let top = tmp.path().join("cluster");
    std::fs::create_dir_all(top.join("leader")).expect("mkdir");
    std::fs::write(top.join("leader").join("genesis.json"), "{}").expect("write");

    let o = fails(&["wal", "verify", "--dir", s(&top)]);
    let want = format!("did you mean --dir {}", top.join("leader").display());
    assert!(text(&o).contains(&want), "{}", text(&o));

    let o = fails(&["replay", "--dir", s(&tmp.path().join("nope"))]);
    assert!(text(&o).contains("is not a directory"), "{}", text(&o));

    let o = fails(&["snapshot", "list", "--dir", s(tmp.path())]);
    assert!(text(&o).contains("no genesis.json"), "{}", text(&o));
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
    // A node directory without a store names the command that writes its
    // log: `serve` for the leader, `follow` for a follower (a follower
    // started with `serve` as root left root-owned files it could not
    // open), none for an agent.
    let node = |name: &str, key: &str| {
        let d = top.join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("genesis.json"), "{}").expect("write");
        std::fs::write(d.join(key), "k").expect("write");
        d
    };
    let follower = node("follower-1", "age.key");
    let o = fails(&["wal", "verify", "--dir", s(&follower)]);
    assert!(text(&o).contains("swoosh follow --dir"), "{}", text(&o));
    assert!(!text(&o).contains("swoosh serve"), "{}", text(&o));
    let agent = node("agent-1", "agent.key");
    let o = fails(&["replay", "--dir", s(&agent)]);
    assert!(text(&o).contains("agents keep no log"), "{}", text(&o));
    let o = fails(&["wal", "verify", "--dir", s(&top.join("leader"))]);
    assert!(text(&o).contains("swoosh serve --dir"), "{}", text(&o));
    // Told by the key when the files alone do not say: `init` writes a
    // follower's directory with node.key and no age.key yet.
    let real = tmp.path().join("real");
    ok(&["init", "--dir", s(&real), "--followers", "1"]);
    let o = fails(&["wal", "verify", "--dir", s(&real.join("follower-1"))]);
    assert!(
        text(&o).contains("swoosh follow --dir") && text(&o).contains("p2p enroll"),
        "{}",
        text(&o)
    );
    let o = fails(&["wal", "verify", "--dir", s(&real.join("leader"))]);
    assert!(
        text(&o).contains("start it with `swoosh serve --dir"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("follow"), "{}", text(&o));
}

/// A node serving a directory holds its store's journal lock. Commands that
/// write refuse to run under it; commands that read run, with a warning that
/// the node's newest commits may not be visible yet.
#[test]
fn write_commands_refuse_a_live_nodes_directory() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (leader, _, _) = demo(tmp.path());
    let d = s(&leader);
    let snaps = snapshot_indexes(d);
    let oldest = snaps.first().expect("the demo takes snapshots").to_string();
    let cut = tmp.path().join("cut.cbor");
    let live = LmdbStore::open(&leader.join("data"), &LmdbOptions::default()).expect("open");
    assert!(
        live.journaled(),
        "this process holds the lock, as a node does"
    );
    let last = live.last_index().expect("last index");

    let writes: [&[&str]; 4] = [
        &["wal", "repair", "--dir", d, "--keep-copy", s(&cut), "--yes"],
        &["wal", "reindex", "--dir", d],
        &["snapshot", "create", "--dir", d],
        &[
            "snapshot", "restore", "--dir", d, "--index", &oldest, "--yes",
        ],
    ];
    for args in writes {
        let o = fails(args);
        assert!(
            text(&o).contains("another process holds the lock on"),
            "{args:?}: {}",
            text(&o)
        );
        assert!(
            text(&o).contains("wait for it to finish"),
            "{args:?}: {}",
            text(&o)
        );
    }
    assert!(!cut.exists(), "a refused repair writes no side file");
    assert_eq!(live.list_snapshots().expect("list"), snaps);
    assert_eq!(live.last_index().expect("last index"), last);

    let reads: [&[&str]; 5] = [
        &["wal", "verify", "--dir", d],
        &["wal", "export", "--dir", d, "--format", "jsonl"],
        &["wal", "inspect", "--dir", d, "1"],
        &["replay", "--dir", d],
        &["snapshot", "list", "--dir", d],
    ];
    for args in reads {
        let o = ok(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("another process holds the journal") && err.contains("may not be visible"),
            "{args:?}: {err}"
        );
    }

    // A node does not start on it either: it would serve the store without
    // what the journal's holder has not folded, and append at those indexes.
    let o = fails(&["serve", "--dir", d, "--http", "127.0.0.1:0"]);
    assert!(
        text(&o).contains("another process holds the commit journal"),
        "{}",
        text(&o)
    );
    assert_eq!(live.last_index().expect("last index"), last);

    // Once the node is gone, the same commands run, without the warning.
    drop(live);
    let o = ok(&["wal", "reindex", "--dir", d]);
    assert!(!text(&o).contains("another process holds"), "{}", text(&o));
}

/// A leader stores one decision per record. One that has lost them all is
/// not mistaken for a follower (which stores none): `wal verify` knows the
/// role from the node's key.
#[test]
fn verify_strict_fails_a_leader_that_lost_every_decision() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (leader, _, last) = demo(tmp.path());
    let d = s(&leader);
    {
        let mut store =
            LmdbStore::open(&leader.join("data"), &LmdbOptions::default()).expect("open store");
        let all = store
            .scan(Space::Decisions, &[], None, usize::MAX)
            .expect("scan decisions");
        assert!(!all.is_empty(), "the demo leader stores decisions");
        let mut b = swoosh_storage::Batch::new();
        for (k, _) in all {
            b.delete(Space::Decisions, k);
        }
        store.commit(b).expect("delete");
        assert_eq!(store.count(Space::Decisions).expect("count"), 0);
    }
    let o = fails(&["wal", "verify", "--dir", d, "--strict", "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let v = json(&o);
    assert_eq!(v["ok"], true, "the log itself is sound");
    assert_eq!(
        v["index_problems_total"], last,
        "one missing decision per record"
    );
    assert!(
        v["index_problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("is not stored")),
        "{v}"
    );
    // Reindex signs and stores them again.
    ok(&["wal", "reindex", "--dir", d]);
    let v = json(&ok(&["wal", "verify", "--dir", d, "--strict", "--json"]));
    assert_eq!(v["index_problems_total"], 0);
}

/// A follower stores no decisions: `wal reindex` on its directory rebuilds
/// its idempotency entries only (it used to add an unsigned decision per
/// record, growing its store toward full), and removes decisions above its
/// base that such a rebuild left.
#[test]
fn reindex_of_a_follower_stores_no_decisions() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (leader, _, _) = demo(tmp.path());
    let follower = leader.parent().unwrap().join("follower-1");
    let d = s(&follower);
    let count = |space: Space| {
        let store = LmdbStore::open(&follower.join("data"), &LmdbOptions::default()).expect("open");
        store.count(space).expect("count")
    };
    assert_eq!(count(Space::Decisions), 0, "a follower stores none");
    let idem = count(Space::Idem);
    assert!(idem > 0);
    {
        // What an earlier build's reindex left: a decision of the leader's.
        let leader_store =
            LmdbStore::open(&leader.join("data"), &LmdbOptions::default()).expect("open");
        let (k, v) = leader_store
            .scan(Space::Decisions, &[], None, 1)
            .expect("scan")
            .remove(0);
        drop(leader_store);
        overwrite(&follower, Space::Decisions, &k, &v);
    }
    let o = ok(&["wal", "reindex", "--dir", d]);
    assert!(text(&o).contains("a follower stores none"), "{}", text(&o));
    assert_eq!(count(Space::Decisions), 0);
    assert_eq!(count(Space::Idem), idem);
    let v = json(&ok(&["wal", "verify", "--dir", d, "--strict", "--json"]));
    assert_eq!(v["index_problems_total"], 0, "{v}");
}

/// `swoosh demo` is a cluster: a leader, two followers and three council
/// agents over libp2p; every replica ends on one hash, the agents' signed
/// votes elected the councils, and each follower's own WAL replays from
/// genesis to that hash.
#[test]
fn demo_runs_a_cluster_whose_replicas_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("C");
    let report = json(&ok(&["demo", "--dir", s(&t), "--json", "--quiet"]));
    let nodes = report["nodes"].as_array().expect("nodes");
    let by_role = |r: &str| {
        nodes
            .iter()
            .filter(|n| n["role"] == r)
            .cloned()
            .collect::<Vec<_>>()
    };
    let (leaders, followers, agents) = (by_role("leader"), by_role("follower"), by_role("agent"));
    assert_eq!(leaders.len(), 1);
    assert!(followers.len() >= 2, "{report}");
    assert!(agents.len() >= 3, "{report}");
    let hash = leaders[0]["hash"].as_str().unwrap().to_string();
    let index = leaders[0]["index"].as_u64().unwrap();
    for f in &followers {
        assert_eq!(f["hash"], hash.as_str(), "{f}");
        assert_eq!(f["index"], index, "{f}");
        assert_eq!(f["lag_records"], 0, "{f}");
    }
    for a in &agents {
        assert!(a["votes_sent"].as_u64().unwrap() > 0, "{a}");
    }
    let accepted = report["accepted"].as_u64().unwrap();
    assert!(accepted >= 20);
    assert_eq!(report["decision_records"], accepted);
    assert!(
        report["council_votes"].as_u64().unwrap() >= 3 * 2,
        "{report}"
    );
    // A follower's WAL is a log of its own: sound, and it replays to the
    // leader's hash.
    for f in &followers {
        let dir = f["dir"].as_str().unwrap();
        ok(&["wal", "verify", "--dir", dir]);
        let r = json(&ok(&["replay", "--dir", dir, "--from-genesis", "--json"]));
        assert_eq!(r["hash"], hash.as_str(), "{dir}");
        assert_eq!(r["records"], index, "{dir}");
    }
}

/// A node directory `<tmp>/<name>` whose log holds `after` records after
/// the state at `base`: with `base` > 0 a follower that joined late, its
/// log based on the leader's snapshot at `base` (installed as the node
/// installs it); with 0, a log from genesis.
fn node_dir(tmp: &Path, name: &str, base: usize, after: usize) -> PathBuf {
    use swoosh_core::guards::Verify;
    use swoosh_storage::testkit::Stream;
    use swoosh_storage::{BatchLimits, Entry, WalWriter};
    let dir = tmp.join(name);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let mut st = Stream::new(name, 2, Verify::Full);
    let g = st.node().genesis.clone();
    std::fs::write(
        dir.join("genesis.json"),
        serde_json::to_string_pretty(&g).unwrap(),
    )
    .unwrap();
    let store = LmdbStore::open(&dir.join("data"), &LmdbOptions::default()).unwrap();
    let mut w = WalWriter::open(store, g.hash().unwrap(), BatchLimits::default()).unwrap();
    if base > 0 {
        let _ = st.take(base);
        w.install_snapshot(st.node()).unwrap();
    }
    let tail: Vec<Entry> = st
        .take(after)
        .into_iter()
        .map(Entry::from_accepted)
        .collect();
    w.append_batch(&tail).unwrap();
    dir
}

/// Replace the stored value of `key` in `space` of `dir`'s store, unchecked.
fn overwrite(dir: &Path, space: Space, key: &[u8], value: &[u8]) {
    let mut store = LmdbStore::open(&dir.join("data"), &LmdbOptions::default()).expect("open");
    store.overwrite_raw(space, key, value).expect("overwrite");
}

/// Flip one payload byte of WAL record `k` in `dir`'s store.
fn damage_record(dir: &Path, k: u64) {
    let store = LmdbStore::open(&dir.join("data"), &LmdbOptions::default()).expect("open");
    let mut frame = store.read_at(k).expect("read").expect("record k exists");
    drop(store);
    let at = 38 + (frame.len() - 38) / 2;
    frame[at] ^= 0x01;
    overwrite(dir, Space::Wal, &index_key(k), &frame);
}

/// A follower that joined from a snapshot keeps a log based on it: `wal
/// export` starts after the base by default, and an explicit `--from` below
/// it is refused with the reason.
#[test]
fn wal_export_of_a_log_based_on_a_snapshot_starts_after_the_base() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = node_dir(tmp.path(), "follower-1", 30, 10);
    let d = dir.to_str().unwrap();
    let o = ok(&["wal", "export", "--dir", d, "--format", "jsonl"]);
    let idx: Vec<u64> = String::from_utf8(o.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["index"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(idx, (31..=40).collect::<Vec<_>>());
    let o = fails(&[
        "wal", "export", "--dir", d, "--format", "jsonl", "--from", "5",
    ]);
    assert!(text(&o).contains("30"), "names the base: {}", text(&o));
}

/// `wal export --out` replaces the file only with a whole export: one that
/// stops at a damaged record leaves the previous export as it was, and the
/// records before the damage in `<file>.partial-<pid>`.
#[test]
fn a_failed_export_keeps_the_previous_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = node_dir(tmp.path(), "follower-1", 30, 10);
    let d = s(&dir);
    let out = tmp.path().join("nightly.jsonl");
    let partials = || {
        std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("nightly.jsonl.partial-"))
            .collect::<Vec<_>>()
    };
    ok(&[
        "wal",
        "export",
        "--dir",
        d,
        "--format",
        "jsonl",
        "--out",
        s(&out),
    ]);
    let whole = std::fs::read(&out).unwrap();
    assert_eq!(whole.iter().filter(|b| **b == b'\n').count(), 10);
    assert!(partials().is_empty(), "renamed once whole");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "plain records, owner-only: {mode:o}");
    }
    // An export refused before its first record leaves no partial file.
    let o = fails(&[
        "wal",
        "export",
        "--dir",
        d,
        "--format",
        "jsonl",
        "--from",
        "1",
        "--to",
        "5",
        "--out",
        s(&out),
    ]);
    assert!(text(&o).contains("cannot start the export"), "{}", text(&o));
    assert!(partials().is_empty(), "{:?}", partials());
    assert_eq!(std::fs::read(&out).unwrap(), whole);

    damage_record(&dir, 35);
    let o = fails(&[
        "wal",
        "export",
        "--dir",
        d,
        "--format",
        "jsonl",
        "--out",
        s(&out),
    ]);
    assert!(text(&o).contains("export stopped"), "{}", text(&o));
    assert!(text(&o).contains("was left as it was"), "{}", text(&o));
    assert!(text(&o).contains("nightly.jsonl.partial"), "{}", text(&o));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        whole,
        "the previous export is kept"
    );
    let kept = partials();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        text(&o).contains(&kept[0].display().to_string()),
        "{}",
        text(&o)
    );
    let part = std::fs::read_to_string(&kept[0]).unwrap();
    assert_eq!(part.lines().count(), 4, "records 31..=34: {part}");
}

/// `wal repair` on a log based on a snapshot walks from the record after
/// the base, anchored at the base hash, as `repair --yes` does: a sound
/// based log has nothing to cut (the dry run used to call record 1 bad), and
/// a damaged record is cut back to the record before it, never touching the
/// base's snapshot.
#[test]
fn wal_repair_of_a_based_log_walks_from_the_base() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = node_dir(tmp.path(), "follower-1", 30, 10);
    let d = s(&dir);
    ok(&["snapshot", "create", "--dir", d]);
    assert_eq!(snapshot_indexes(d), vec![30, 40]);
    let cut = tmp.path().join("cut.bin");

    let o = ok(&["wal", "repair", "--dir", d, "--keep-copy", s(&cut)]);
    assert!(
        text(&o).contains("no damaged record (records 31..=40"),
        "{}",
        text(&o)
    );
    assert!(!cut.exists());

    damage_record(&dir, 35);
    let o = fails(&["wal", "repair", "--dir", d, "--keep-copy", s(&cut)]);
    let t = text(&o);
    assert!(t.contains("the first bad record is 35"), "{t}");
    assert!(
        t.contains(
            "cut records 35..=40 (6 record(s)) and snapshot(s) 40, keep the log up to record 34"
        ),
        "{t}"
    );
    assert!(!cut.exists(), "a dry run writes nothing");
    let o = ok(&["wal", "repair", "--dir", d, "--keep-copy", s(&cut), "--yes"]);
    assert!(text(&o).contains("now ends at record 34"), "{}", text(&o));
    let entries = read_cut_file(&cut).expect("side file readable");
    let of = |space| -> Vec<u64> {
        entries
            .iter()
            .filter(|e| e.space == space)
            .map(|e| e.index)
            .collect()
    };
    assert_eq!(of(Space::Wal), (35..=40).collect::<Vec<_>>());
    assert_eq!(of(Space::Snapshots), vec![40]);
    assert_eq!(snapshot_indexes(d), vec![30]);
    let v = json(&ok(&["wal", "verify", "--dir", d, "--json"]));
    assert_eq!(v["ok"], true, "{v}");
}

/// `snapshot list` and `snapshot restore` judge a based log's snapshots the
/// way recovery does: the snapshot at the base joins the log at the base
/// hash (it is where recovery starts), and without a valid one the log
/// cannot be recovered at all, let alone replayed from genesis.
#[test]
fn snapshot_list_and_restore_judge_a_based_logs_snapshots_by_its_base() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = node_dir(tmp.path(), "follower-1", 30, 10);
    let d = s(&dir);
    let hash = json(&ok(&["replay", "--dir", d, "--json"]))["hash"].clone();
    ok(&["snapshot", "create", "--dir", d]);

    let list = json(&ok(&["snapshot", "list", "--dir", d, "--json"]));
    let rows: Vec<(u64, bool, bool)> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["valid"] == true,
                r["recovery_starts_here"] == true,
            )
        })
        .collect();
    assert_eq!(rows, [(30, true, false), (40, true, true)], "{list}");

    // Recovery can be made to start from the base snapshot again.
    let o = fails(&["snapshot", "restore", "--dir", d, "--index", "30"]);
    assert!(
        text(&o).contains("restore would delete the newer snapshot(s) 40"),
        "{}",
        text(&o)
    );
    ok(&["snapshot", "restore", "--dir", d, "--index", "30", "--yes"]);
    assert_eq!(snapshot_indexes(d), vec![30]);
    let o = ok(&["snapshot", "list", "--dir", d]);
    assert!(text(&o).contains("recovery starts here"), "{}", text(&o));
    assert!(!text(&o).contains("NO:"), "{}", text(&o));
    let o = ok(&["replay", "--dir", d]);
    assert!(text(&o).contains("from snapshot 30"), "{}", text(&o));
    assert_eq!(json(&ok(&["replay", "--dir", d, "--json"]))["hash"], hash);

    // The base snapshot damaged: the list says recovery cannot start, not
    // that it replays from genesis.
    overwrite(&dir, Space::Snapshots, &index_key(30), b"not a snapshot");
    let o = ok(&["snapshot", "list", "--dir", d]);
    let t = text(&o);
    assert!(t.contains("no valid snapshot"), "{t}");
    assert!(t.contains("starts after record 30"), "{t}");
    assert!(!t.contains("from genesis"), "{t}");
    let o = fails(&["replay", "--dir", d]);
    assert!(text(&o).contains("starts after record 30"), "{}", text(&o));
}

/// `wal inspect` of the first record of a based log checks its link to the
/// base hash (as record 1's is checked against genesis), not to a record
/// the log does not hold.
#[test]
fn wal_inspect_links_the_first_record_after_the_base_to_the_base_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = node_dir(tmp.path(), "follower-1", 30, 10);
    let d = s(&dir);
    let j = json(&ok(&["wal", "inspect", "--dir", d, "31", "--json"]));
    assert_eq!(j["links_to_previous"], true, "{j}");
    let o = ok(&["wal", "inspect", "--dir", d, "31"]);
    assert!(
        text(&o).contains("= the WAL base hash (record 30, held in the snapshot at 30) ✓"),
        "{}",
        text(&o)
    );
    let j = json(&ok(&["wal", "inspect", "--dir", d, "32", "--json"]));
    assert_eq!(j["links_to_previous"], true, "{j}");
    let o = fails(&["wal", "inspect", "--dir", d, "30"]);
    assert!(text(&o).contains("below the WAL base"), "{}", text(&o));
    let o = fails(&["wal", "inspect", "--dir", d, "41"]);
    assert!(text(&o).contains("records 31..=40"), "{}", text(&o));
}

/// A stray write under a WAL key that is not an 8-byte index left the store
/// unopenable, and every command pointed at `wal verify`, which failed too.
/// Now every read names the key and the remedy, and `wal repair --yes`
/// removes such keys after copying them to its side file; no record is cut.
#[test]
fn wal_repair_removes_malformed_wal_keys_and_keeps_a_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = node_dir(tmp.path(), "leader", 0, 20);
    let d = s(&dir);
    // One sorts after the last record (the store's tail), one amid them.
    let tail_key = [&index_key(20)[..], &[0x00]].concat();
    let mid_key = [&index_key(5)[..], &[0xaa]].concat();
    overwrite(&dir, Space::Wal, &tail_key, b"stray");
    overwrite(&dir, Space::Wal, &mid_key, b"stray too");

    let o = fails(&["wal", "verify", "--dir", d]);
    let t = text(&o);
    assert!(t.contains("holds the key 000000000000001400"), "{t}");
    assert!(
        t.contains(&format!("swoosh wal repair --dir {d} --keep-copy")) && t.contains("--yes"),
        "{t}"
    );

    let cut = tmp.path().join("keys.bin");
    let o = fails(&["wal", "repair", "--dir", d, "--keep-copy", s(&cut)]);
    let t = text(&o);
    assert!(
        t.contains("2 key(s) that are not 8-byte indexes")
            && t.contains("wal key 0000000000000005aa")
            && t.contains("wal key 000000000000001400"),
        "{t}"
    );
    assert!(t.contains("no record would be cut"), "{t}");
    assert!(!cut.exists(), "a dry run writes nothing");

    let o = ok(&["wal", "repair", "--dir", d, "--keep-copy", s(&cut), "--yes"]);
    assert!(text(&o).contains("removed 2 key(s)"), "{}", text(&o));
    let mut kept: Vec<(Vec<u8>, Vec<u8>)> = read_cut_file(&cut)
        .expect("side file readable")
        .into_iter()
        .map(|e| {
            assert_eq!(e.space, Space::Wal);
            (e.malformed_key.expect("only malformed keys"), e.bytes)
        })
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [
            (mid_key, b"stray too".to_vec()),
            (tail_key, b"stray".to_vec())
        ]
    );
    let v = json(&ok(&["wal", "verify", "--dir", d, "--json", "--strict"]));
    assert_eq!(v["records"], 20, "{v}");
}

/// `swoosh bench http --json`: every figure is a field, and the ratios use
/// the raw disk measured both before and after the run (their mean).
#[test]
fn bench_http_json_reports_its_baseline_before_and_after_the_run() {
    let o = ok(&[
        "bench",
        "http",
        "--clients",
        "1",
        "--seconds",
        "1",
        "--json",
    ]);
    let v = json(&o);
    let f = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{k} is a number: {v}"))
    };
    assert!(v["accepted"].as_u64().unwrap() > 0, "{v}");
    let (before, after, mean) = (
        f("fdatasync_before_ms"),
        f("fdatasync_after_ms"),
        f("fdatasync_ms"),
    );
    assert!(before > 0.0 && after > 0.0, "{v}");
    // Each side's per-sync time is rounded to whole nanoseconds.
    assert!((mean - (before + after) / 2.0).abs() < 1e-5, "{v}");
    let ratio = f("single_client_p50_over_fdatasync");
    assert!((ratio - f("p50_ms") / mean).abs() < 1e-9, "{v}");
    assert!((f("fdatasyncs_per_s") - 1000.0 / mean).abs() < 1e-6 * f("fdatasyncs_per_s"));
}

/// `swoosh bench replication --json`: the leader commits through the node's
/// path (signed decisions, the reducer's bytes), every follower ends on the
/// leader's root hash, and the verdict counts only at a sustained rate.
#[test]
fn bench_replication_json_reports_its_verdict_with_the_rate_it_sustained() {
    let o = ok(&[
        "bench",
        "replication",
        "--rate",
        "200",
        "--seconds",
        "1",
        "--followers",
        "1",
        "--projects",
        "2",
        "--json",
    ]);
    let v = json(&o);
    let f = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{k} is a number: {v}"))
    };
    assert_eq!(v["records"].as_u64(), Some(200), "{v}");
    assert_eq!(v["converged"].as_bool(), Some(true), "{v}");
    let sustained = v["leader_rate_sustained"].as_bool().expect("a bool");
    assert_eq!(sustained, f("leader_records_per_s") >= 0.95 * 200.0, "{v}");
    assert_eq!(
        v["target_met"].as_bool(),
        Some(sustained && f("lag_p99_ms") <= f("lag_target_p99_ms")),
        "{v}"
    );
    assert!(f("lag_p50_ms") <= f("lag_p99_ms") && f("lag_p99_ms") <= f("lag_max_ms"));
}

/// `swoosh bench storage --json` reports numbers, not debug text: the figures
/// the docs quote (and a script compares) are fields of their own.
#[test]
fn bench_storage_json_reports_every_run_as_fields() {
    let o = ok(&[
        "bench",
        "storage",
        "--recovery-records",
        "300",
        "--append-records",
        "200",
        "--json",
    ]);
    let v = json(&o);
    assert!(v["fdatasync_ms"].as_f64().unwrap() > 0.0, "{v}");
    let appends = v["appends"].as_array().expect("appends is an array");
    let batches: Vec<u64> = appends
        .iter()
        .map(|a| a["batch_records"].as_u64().unwrap())
        .collect();
    assert_eq!(batches, vec![1, 64, 1024]);
    for a in appends {
        assert_eq!(a["records"].as_u64(), Some(200), "{a}");
        assert!(a["records_per_s"].as_f64().unwrap() > 0.0, "{a}");
        assert!(
            a["commit_p50_over_fdatasync"].as_f64().unwrap() > 0.0,
            "{a}"
        );
        assert!(a["commit_p50_ms"].as_f64().unwrap() <= a["commit_max_ms"].as_f64().unwrap());
    }
    assert_eq!(v["recovery"]["records"].as_u64(), Some(300), "{v}");
    assert!(v["recovery"]["replay_records_per_s"].as_f64().unwrap() > 0.0);
    // Records are stored compressed (frame version 2): the stored frame,
    // header included, is smaller than the record's canonical encoding.
    let payload = v["record_payload_bytes_mean"].as_f64().unwrap();
    let stored = v["record_bytes_mean"].as_f64().unwrap();
    assert!(payload > 1_000.0 && stored < payload, "{v}");
}

#[test]
fn compact_archives_the_start_of_a_demo_log() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (leader, demo_hash, last) = demo(tmp.path());
    let d = s(&leader);
    let export = tmp.path().join("export.cbor");
    ok(&[
        "wal",
        "export",
        "--dir",
        d,
        "--format",
        "cbor",
        "--to",
        "40",
        "--out",
        s(&export),
    ]);
    let a1 = tmp.path().join("a1.cbor");
    // An export of records 30..=45: an archive that overlaps a1 (1..=40).
    let overlap = tmp.path().join("overlap.cbor");
    ok(&[
        "wal",
        "export",
        "--dir",
        d,
        "--format",
        "cbor",
        "--from",
        "30",
        "--to",
        "45",
        "--out",
        s(&overlap),
    ]);

    // The default keeps 100,000 records: nothing to do on a demo log.
    let o = fails(&["wal", "compact", "--dir", d, "--archive", s(&a1)]);
    assert!(text(&o).contains("nothing to compact"), "{}", text(&o));
    // A dry run says what it would do and changes nothing.
    let o = fails(&[
        "wal",
        "compact",
        "--dir",
        d,
        "--archive",
        s(&a1),
        "--through",
        "40",
    ]);
    assert!(
        text(&o).contains("would archive records 1..=40"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("dry run"), "{}", text(&o));
    assert!(!a1.exists());
    let o = fails(&[
        "wal",
        "compact",
        "--dir",
        d,
        "--archive",
        s(&a1),
        "--through",
        &(last + 1).to_string(),
        "--yes",
    ]);
    assert!(
        text(&o).contains("beyond") || text(&o).contains("ends at record"),
        "{}",
        text(&o)
    );

    let r = json(&ok(&[
        "wal",
        "compact",
        "--dir",
        d,
        "--archive",
        s(&a1),
        "--through",
        "40",
        "--yes",
        "--json",
    ]));
    assert_eq!(r["applied"], true);
    assert_eq!(
        (r["first"].as_u64(), r["through"].as_u64()),
        (Some(1), Some(40))
    );
    assert_eq!(r["records"], 40);
    // The archive is the `wal export --format cbor` stream of those records.
    assert_eq!(std::fs::read(&a1).unwrap(), std::fs::read(&export).unwrap());
    let c = json(&ok(&["wal", "check-archive", s(&a1), "--dir", d, "--json"]));
    assert_eq!(c["ok"], true, "{c}");
    assert_eq!(c["starts_at_genesis"], true);
    assert_eq!(c["joins_store"], true);
    // An overlapping archive (what a compaction run again after an
    // interruption writes) joins when it repeats the same records.
    let o = ok(&["wal", "check-archive", s(&a1), s(&overlap), "--dir", d]);
    assert!(text(&o).contains("repeats records 30..=40"), "{}", text(&o));
    let mut tampered = std::fs::read(&overlap).unwrap();
    let n = tampered.len();
    tampered.truncate(n - 1);
    let t = tmp.path().join("tampered.cbor");
    std::fs::write(&t, &tampered).unwrap();
    fails(&["wal", "check-archive", s(&a1), s(&t)]);
    // An archive that a node named for records 1..=40 but that holds only
    // 1..=30 (a copy that stopped at a record boundary) reads as complete:
    // its name tells. Named otherwise, it is taken as what it holds.
    let short = tmp.path().join(format!("wal-{:020}-{:020}.cbor", 1, 40));
    {
        // The archive format: each record as a 4-byte big-endian length
        // and its bytes.
        let all = std::fs::read(&a1).unwrap();
        let mut at = 0usize;
        for _ in 0..30 {
            let len = u32::from_be_bytes(all[at..at + 4].try_into().unwrap()) as usize;
            at += 4 + len;
        }
        std::fs::write(&short, &all[..at]).unwrap();
    }
    let o = fails(&["wal", "check-archive", s(&short)]);
    assert!(
        text(&o).contains("is named for records 1..=40 but holds records 1..=30"),
        "{}",
        text(&o)
    );
    let renamed = tmp.path().join(format!("wal-{:020}-{:020}-2.cbor", 1, 30));
    std::fs::rename(&short, &renamed).unwrap();
    ok(&["wal", "check-archive", s(&renamed)]);
    // Without the first archive the chain is checked from where it starts.
    let o = ok(&["wal", "check-archive", s(&overlap), "--dir", d]);
    assert!(text(&o).contains("starts at record 30"), "{}", text(&o));

    // The compacted log verifies and replays to the demo's hash.
    let v = json(&ok(&["wal", "verify", "--dir", d, "--json"]));
    assert_eq!(v["ok"], true);
    assert_eq!(v["root_hash"], demo_hash.as_str());
    // It says where the log starts: `records` counts those after the base.
    assert_eq!(v["wal_base"], 40, "{v}");
    let o = ok(&["wal", "verify", "--dir", d]);
    assert!(
        text(&o).contains("wal base     40: records 1..=40 are not in this store"),
        "{}",
        text(&o)
    );
    let rp = json(&ok(&["replay", "--dir", d, "--from-genesis", "--json"]));
    assert_eq!(rp["hash"], demo_hash.as_str());
    let o = fails(&["wal", "inspect", "--dir", d, "7"]);
    assert!(text(&o).contains("below the WAL base"), "{}", text(&o));

    // A second archive continues the first; out of order, they do not.
    let a2 = tmp.path().join("a2.cbor");
    ok(&[
        "wal",
        "compact",
        "--dir",
        d,
        "--archive",
        s(&a2),
        "--through",
        "60",
        "--yes",
    ]);
    let o = ok(&["wal", "check-archive", s(&a1), s(&a2), "--dir", d]);
    assert!(text(&o).contains("joins the log"), "{}", text(&o));
    let o = fails(&["wal", "check-archive", s(&a2), s(&a1)]);
    assert!(text(&o).contains("does not continue"), "{}", text(&o));
    // The first archive alone no longer joins the store (41..=60 missing).
    let o = fails(&["wal", "check-archive", s(&a1), "--dir", d]);
    assert!(text(&o).contains("41..=60 is missing"), "{}", text(&o));
    // A truncated archive is named.
    let bytes = std::fs::read(&a2).unwrap();
    let t = tmp.path().join("trunc.cbor");
    std::fs::write(&t, &bytes[..bytes.len() - 10]).unwrap();
    let o = fails(&["wal", "check-archive", s(&t)]);
    assert!(text(&o).contains("truncated"), "{}", text(&o));
    let rp = json(&ok(&["replay", "--dir", d, "--json"]));
    assert_eq!(rp["hash"], demo_hash.as_str());

    // The snapshot at the base is the only proof of the archived records:
    // damaged, the log cannot be proven; the archives rebuild it.
    let key = index_key(60);
    let mut snap = {
        let store = LmdbStore::open(&leader.join("data"), &LmdbOptions::default()).expect("open");
        store
            .get(Space::Snapshots, &key)
            .expect("read")
            .expect("the base snapshot")
    };
    let at = snap.len() / 2;
    snap[at] ^= 0x10;
    overwrite(&leader, Space::Snapshots, &key, &snap);
    let o = fails(&["wal", "verify", "--dir", d]);
    assert!(text(&o).contains("cannot be proven"), "{}", text(&o));
    let o = fails(&["snapshot", "rebuild-base", "--dir", d, s(&a2)]);
    assert!(text(&o).contains("must start at record 1"), "{}", text(&o));
    let o = ok(&["snapshot", "rebuild-base", "--dir", d, s(&a1), s(&a2)]);
    assert!(
        text(&o).contains("replayed 60 archived record(s)"),
        "{}",
        text(&o)
    );
    let v = json(&ok(&["wal", "verify", "--dir", d, "--json"]));
    assert_eq!(v["root_hash"], demo_hash.as_str());

    // The file gives back what the cut freed, and the log is the same.
    let r = json(&ok(&["wal", "shrink", "--dir", d, "--json"]));
    let (before, after) = (
        r["bytes_before"].as_u64().unwrap(),
        r["bytes_after"].as_u64().unwrap(),
    );
    assert!(after < before, "the cut records' pages are given back: {r}");
    assert!(r["entries_checked"].as_u64().unwrap() > 0, "{r}");
    let v = json(&ok(&["wal", "verify", "--dir", d, "--json"]));
    assert_eq!(v["root_hash"], demo_hash.as_str());
    // Given the store itself instead of the node directory: says which.
    let data = leader.join("data");
    let o = fails(&["wal", "shrink", "--dir", s(&data)]);
    assert!(text(&o).contains("did you mean --dir"), "{}", text(&o));
}

#[test]
fn serve_checks_its_compaction_flags_before_starting() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let d = tmp.path().join("nothing-here");
    let o = fails(&["serve", "--dir", s(&d), "--compact-keep-records", "20000"]);
    assert!(text(&o).contains("--archive-dir"), "{}", text(&o));
    let arch = tmp.path().join("archives");
    let o = fails(&[
        "serve",
        "--dir",
        s(&d),
        "--archive-dir",
        s(&arch),
        "--compact-keep-records",
        "50",
    ]);
    assert!(text(&o).contains("keep at least 10000"), "{}", text(&o));
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let o = fails(&["p2p", "leader", "--dir", s(&d), "--archive-dir", s(&file)]);
    assert!(text(&o).contains("--archive-dir"), "{}", text(&o));
}

/// `--version` names the commit and its date (cli/build.rs), so operators
/// comparing hosts can tell two builds of one package version apart.
#[test]
fn the_version_names_the_build() {
    let o = swoosh(&["--version"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let inner = out
        .strip_prefix(&format!("swoosh {} (", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{out}"));
    if inner != "not built from a git checkout" {
        let (commit, date) = inner.split_once(' ').unwrap_or_else(|| panic!("{out}"));
        assert!(
            commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
            "{out}"
        );
        assert!(date.len() == 10 && date.as_bytes()[4] == b'-', "{out}");
    }
}
