//! Automatic compaction while the node serves (`NodeConfig::compaction`):
//! after a snapshot the snapshotter archives the start of the log and cuts
//! it; the node keeps serving, its archives chain from genesis to the
//! store's base, and a restarted node recovers from the base with its
//! indexes (old decisions, old idempotency keys) intact.

mod common;

use common::*;
use std::time::{Duration, Instant};
use swoosh_actors::{CompactionPolicy, SubmitResult};
use swoosh_core::NodeState;
use swoosh_storage::{get_decision, lookup_idem, read_archive, wal_base, LogStore};

fn metric(node: &Node, prefix: &str) -> Option<String> {
    node.metrics_text()
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_node_compacts_into_archives_and_restarts_from_its_base() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let archives = tempfile::tempdir().expect("tempdir");
    let fx = Fixture::new("auto-compact");
    let policy = CompactionPolicy {
        keep_records: 15,
        min_records: 10,
        archive_dir: archives.path().to_path_buf(),
        drop_decisions: false,
    };
    let config = || {
        let mut cfg = fx.config(10);
        cfg.compaction = Some(policy.clone());
        cfg
    };
    let node = swoosh_actors::NodeHandle::start(open_store(dir.path()), config())
        .await
        .expect("the node starts");
    let mut mirror = NodeState::new(fx.genesis.clone()).unwrap();
    let props = submit_fresh_projects(&fx, &node, &mut mirror, 60).await;

    // Snapshots at 10, 20, …: compaction follows once 15 + 10 records lie
    // after the base, keeping the newest 15; the one after snapshot 60 cuts
    // through 45 (waited for whole: its archive is linked before it cuts).
    let t0 = Instant::now();
    loop {
        let base = wal_base(node.store()).unwrap().map_or(0, |b| b.index);
        if base == 45 {
            break;
        }
        assert!(t0.elapsed() < PATIENCE, "no compaction; base {base}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let base = wal_base(node.store()).unwrap().expect("a base");
    assert!(
        base.index <= 60 - 15,
        "keeps the newest 15: base {}",
        base.index
    );
    assert_ne!(
        metric(&node, "swoosh_compactions_total{kind=\"ok\"}").unwrap(),
        "swoosh_compactions_total{kind=\"ok\"} 0"
    );
    assert_eq!(
        metric(&node, "swoosh_wal_base_index ").unwrap(),
        format!("swoosh_wal_base_index {}", base.index)
    );
    // Snapshots at 10, …, 60 at least (a REVERB may add one).
    let ok = metric(&node, "swoosh_snapshots_total{kind=\"ok\"}").unwrap();
    let n: u64 = ok.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 6, "{ok}");
    assert_eq!(
        metric(&node, "swoosh_snapshots_total{kind=\"failed\"}").unwrap(),
        "swoosh_snapshots_total{kind=\"failed\"} 0"
    );

    // The archives chain from genesis to the base, in name order.
    let mut files: Vec<_> = std::fs::read_dir(archives.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let mut next = (1u64, fx.genesis.hash().unwrap());
    for f in &files {
        let a = read_archive(f).unwrap();
        assert_eq!((a.first, a.prev_hash), next, "{}", f.display());
        next = (a.last + 1, a.last_hash);
    }
    assert_eq!(
        next,
        (base.index + 1, base.hash),
        "the last archive ends at the base"
    );

    // Still serving; an old record's decision and idempotency entry remain.
    let more = submit_fresh_projects(&fx, &node, &mut mirror, 3).await;
    assert_eq!(more.len(), 3);
    let first = &props[0];
    let e = lookup_idem(node.store(), &first.project, &first.idem_key)
        .unwrap()
        .expect("record 1's idempotency entry survives compaction");
    assert_eq!(e.index, 1);
    assert!(get_decision(node.store(), &e.decision).unwrap().is_some());
    // A repeat of record 1's proposal gets its original outcome.
    match node.submit(first.clone()).await {
        SubmitResult::Accepted(ok) => {
            assert!(ok.duplicate);
            assert_eq!(ok.index, 1);
        }
        other => panic!("a repeat of record 1: {other:?}"),
    }

    // A restart recovers from the base; the start-up audit finds the kept
    // indexes sound (it would rebuild them, dropping what was kept, if not).
    node.shutdown().await;
    drop(node);
    let store = reopen(dir.path()).await;
    let node = swoosh_actors::NodeHandle::start(store, config())
        .await
        .expect("the node restarts on a compacted store");
    assert_eq!(node.health().index, 63);
    assert_eq!(
        node.health().root_hash,
        Some(mirror.root_hash()),
        "same state after the restart"
    );
    assert!(
        get_decision(node.store(), &e.decision).unwrap().is_some(),
        "the restart kept the decisions of archived records"
    );
    assert!(metric(&node, "swoosh_index_rebuilds_total").is_none_or(|l| l.ends_with(" 0")));
    submit_fresh_projects(&fx, &node, &mut mirror, 2).await;
    assert_eq!(node.store().last_index().unwrap(), 65);
    node.shutdown().await;
}

#[test]
fn the_policy_cuts_behind_the_snapshot_in_bounded_chunks() {
    let p = CompactionPolicy {
        keep_records: 15,
        min_records: 10,
        archive_dir: std::path::PathBuf::from("unused"),
        drop_decisions: false,
    };
    assert_eq!(p.through(0, 30), Some(15));
    assert_eq!(p.through(10, 30), None, "only 5 past the base");
    assert_eq!(p.through(0, 10), None, "nothing before the kept records");
    let big = CompactionPolicy {
        keep_records: 10_000,
        min_records: 20_000,
        ..p
    };
    assert_eq!(
        big.through(0, 5_000_000),
        Some(swoosh_actors::COMPACT_ONLINE_RECORDS_MAX),
        "a long log is compacted over several snapshots"
    );
    assert_eq!(big.through(0, 29_999), None);
    assert_eq!(big.through(0, 30_000), Some(20_000));
}

/// The snapshot at the WAL base is the only proof of the archived records;
/// nothing reads it until a recovery needs it. The node checks it after
/// every snapshot and reports damage (`swoosh_base_snapshot_damaged`)
/// while the archives to rebuild it are at hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_base_snapshot_is_reported_after_the_next_snapshot() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let archives = tempfile::tempdir().expect("tempdir");
    let fx = Fixture::new("base-check");
    let mut cfg = fx.config(10);
    cfg.compaction = Some(CompactionPolicy {
        keep_records: 15,
        min_records: 10,
        archive_dir: archives.path().to_path_buf(),
        drop_decisions: false,
    });
    let node = swoosh_actors::NodeHandle::start(open_store(dir.path()), cfg)
        .await
        .expect("the node starts");
    let mut mirror = NodeState::new(fx.genesis.clone()).unwrap();
    submit_fresh_projects(&fx, &node, &mut mirror, 30).await;
    let t0 = Instant::now();
    let base = loop {
        if let Some(b) = wal_base(node.store()).unwrap() {
            break b;
        }
        assert!(t0.elapsed() < PATIENCE, "no compaction");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        metric(&node, "swoosh_base_snapshot_damaged ").unwrap(),
        "swoosh_base_snapshot_damaged 0"
    );

    let mut store = node.store().clone();
    let key = swoosh_storage::store::index_key(base.index);
    let mut v = store
        .get(swoosh_storage::Space::Snapshots, &key)
        .unwrap()
        .expect("the base snapshot");
    let at = v.len() / 2;
    v[at] ^= 0x08;
    store
        .overwrite_raw(swoosh_storage::Space::Snapshots, &key, &v)
        .unwrap();
    drop(store);
    submit_fresh_projects(&fx, &node, &mut mirror, 10).await;
    let t0 = Instant::now();
    while metric(&node, "swoosh_base_snapshot_damaged ").as_deref()
        != Some("swoosh_base_snapshot_damaged 1")
    {
        assert!(
            t0.elapsed() < PATIENCE,
            "the damage was not reported: {:?}",
            metric(&node, "swoosh_base_snapshot_damaged ")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A restart recovers from the newer snapshot; the damage is reported
    // again at once, not an interval later.
    node.shutdown().await;
    drop(node);
    let mut cfg = fx.config(10);
    cfg.compaction = None;
    let node = swoosh_actors::NodeHandle::start(reopen(dir.path()).await, cfg)
        .await
        .expect("the node restarts from its newer snapshot");
    let t0 = Instant::now();
    while metric(&node, "swoosh_base_snapshot_damaged ").as_deref()
        != Some("swoosh_base_snapshot_damaged 1")
    {
        assert!(
            t0.elapsed() < PATIENCE,
            "the damage was not reported after the restart"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.shutdown().await;
}
