//! What a restart leaves behind: a node that cannot recover says so (and
//! lets its process exit), and one that did recover reports fresh health
//! and keeps its snapshot cadence.

mod common;

use common::*;
use std::time::{Duration, Instant};
use swoosh_actors::{ActorKind, NodeHandle, SubmitResult, RESTART_ATTEMPTS_MAX};
use swoosh_core::scenario::{Driver, Next};
use swoosh_core::NodeState;
use swoosh_storage::{LogStore, Space};

/// The first transition of a fresh project each: never a REVERB, so the
/// only snapshots are the periodic ones.
fn metric_line(node: &Node, prefix: &str) -> String {
    let text = node.metrics_text();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
        .to_string()
}

async fn wait_snapshot_at(node: &Node, index: u64) {
    let t0 = Instant::now();
    while node.health().last_snapshot_index != Some(index) {
        assert!(
            t0.elapsed() < PATIENCE,
            "no snapshot at {index}; /health says {:?}",
            node.health().last_snapshot_index
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn kill_and_wait_restart(node: &Node, kind: ActorKind) {
    let before = node.restarts();
    node.kill(kind);
    let t0 = Instant::now();
    while node.restarts() <= before || !node.is_ready() {
        assert!(t0.elapsed() < PATIENCE, "{kind:?} was not restarted");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A leader whose log cannot be recovered used to stay up "recovering"
/// forever, counted once: the service manager never restarted it and no
/// alert fired. It now counts every attempt, reports not ready, and tells
/// its process it gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_recover_gives_up_and_says_so() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = Fixture::new("give-up");
    let node = start(&fx, open_store(dir.path()), 0).await;
    let mut mirror = NodeState::new(fx.genesis.clone()).unwrap();
    submit_fresh_projects(&fx, &node, &mut mirror, 2).await;
    assert_eq!(metric_line(&node, "swoosh_ready "), "swoosh_ready 1");
    assert_eq!(node.gave_up(), None);

    // A store format recovery refuses: every restart attempt fails.
    node.store()
        .clone()
        .overwrite_raw(Space::Meta, b"format", b"not-a-swoosh-store")
        .expect("damage the store's metadata");
    node.kill(ActorKind::Sequencer);
    // Ten attempts with capped backoff take about seven seconds; the bound
    // only keeps a regression from hanging the suite.
    let g = tokio::time::timeout(Duration::from_secs(60), node.given_up())
        .await
        .expect("the node gives up");
    assert_eq!(g.actor, "sequencer");
    assert_eq!(g.attempts, RESTART_ATTEMPTS_MAX);
    assert!(g.error.contains("not-a-swoosh-store"), "{g}");
    assert_eq!(node.gave_up(), Some(g.clone()));

    assert_eq!(metric_line(&node, "swoosh_ready "), "swoosh_ready 0");
    assert_eq!(
        metric_line(&node, "swoosh_actor_restarts_total{actor=\"sequencer\"}"),
        format!("swoosh_actor_restarts_total{{actor=\"sequencer\"}} {RESTART_ATTEMPTS_MAX}"),
        "every attempt is counted"
    );
    assert_eq!(node.restarts(), u64::from(RESTART_ATTEMPTS_MAX));
    let h = node.health();
    assert_eq!(h.status, "failed");
    assert!(!node.is_ready());
    let driver = Driver::new(&fx.keys, 1);
    let Next::Propose(p) = driver.next(&mirror, "late", fx.now()) else {
        panic!("the driver has a first step");
    };
    match node.submit(*p).await {
        SubmitResult::Unavailable { reason } => {
            assert!(reason.contains("gave up"), "{reason}")
        }
        other => panic!("a node that gave up takes nothing: {other:?}"),
    }
    node.shutdown().await;
    assert_eq!(node.health().status, "failed");
}

/// After a restart `/health` used to show the writer's old lag and "last
/// snapshot never" though recovery started from one, and the snapshot
/// cadence restarted at the recovered index (a node restarting more often
/// than every `snapshot_every` records never snapshotted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_snapshot_cadence_survive_restarts() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = Fixture::new("fresh-health");
    let every = 5;
    let node = start(&fx, open_store(dir.path()), every).await;
    assert_eq!(metric_line(&node, "swoosh_ready "), "swoosh_ready 1");
    let mut mirror = NodeState::new(fx.genesis.clone()).unwrap();
    submit_fresh_projects(&fx, &node, &mut mirror, 7).await;
    wait_snapshot_at(&node, 5).await;
    let (_, snap) = swoosh_storage::read_snapshot(node.store(), 5).expect("snapshot 5");
    assert_ne!(
        snap.hlc, mirror.hlc,
        "records after the snapshot moved the HLC on"
    );

    // A process restart: recovery starts from snapshot 5 and replays 6 and 7.
    node.shutdown().await;
    drop(node);
    let node = start(&fx, reopen(dir.path()).await, every).await;
    let h = node.health();
    assert_eq!(h.index, 7);
    assert_eq!(h.last_snapshot_index, Some(5), "recovery started from it");
    assert_eq!(h.last_snapshot_hlc, snap.hlc);
    assert_eq!(metric_line(&node, "swoosh_ready "), "swoosh_ready 1");

    // The dead writer's lag must not outlive it.
    node.metrics().wal_lag_records.set(40);
    kill_and_wait_restart(&node, ActorKind::Wal).await;
    let h = node.health();
    assert_eq!(h.wal_lag, 0);
    assert_eq!(
        metric_line(&node, "swoosh_wal_lag_records "),
        "swoosh_wal_lag_records 0"
    );
    assert_eq!(h.last_snapshot_index, Some(5));
    assert_eq!(metric_line(&node, "swoosh_ready "), "swoosh_ready 1");

    // Restarts every three records: the cadence counts from snapshot 5,
    // not from each restart, so record 10 is still snapshotted.
    submit_fresh_projects(&fx, &node, &mut mirror, 1).await;
    kill_and_wait_restart(&node, ActorKind::Sequencer).await;
    submit_fresh_projects(&fx, &node, &mut mirror, 2).await;
    assert_eq!(mirror.index, 10);
    wait_snapshot_at(&node, 10).await;
    node.shutdown().await;
}

/// A process waits on `given_up` inside spawned tasks and `select!`s.
#[allow(dead_code)]
fn given_up_is_send<S: LogStore + Clone + Send + Sync + 'static>(n: NodeHandle<S>) {
    fn is_send<T: Send>(_: T) {}
    is_send(async move { n.given_up().await });
}

/// A starting node deleted every snapshot its recovery skipped: a sound one
/// it merely could not use (here: beyond the end of its log, as a newer
/// build's or a copied store's would be) went with the damaged ones, and a
/// delete that failed failed the start. Now only damage is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_deletes_damaged_snapshots_and_keeps_unusable_sound_ones() {
    init_tracing();
    let fx = Fixture::new("skipped-snapshots");
    // A sound snapshot at 7 from one store…
    let ahead = tempfile::tempdir().expect("tempdir");
    let node = start(&fx, open_store(ahead.path()), 7).await;
    let mut mirror = NodeState::new(fx.genesis.clone()).unwrap();
    submit_fresh_projects(&fx, &node, &mut mirror, 7).await;
    wait_snapshot_at(&node, 7).await;
    let at7 = node.store().get_snapshot(7).unwrap().expect("snapshot 7");
    node.shutdown().await;
    drop(node);

    // …planted in another whose log ends at 5, beside a damaged one at 4
    // (the bytes of 7 under key 4: its frame says another index).
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(&fx, open_store(dir.path()), 0).await;
    let mut mirror = NodeState::new(fx.genesis.clone()).unwrap();
    submit_fresh_projects(&fx, &node, &mut mirror, 5).await;
    node.shutdown().await;
    drop(node);
    let mut store = reopen(dir.path()).await;
    store
        .overwrite_raw(Space::Snapshots, &swoosh_storage::store::index_key(7), &at7)
        .unwrap();
    store
        .overwrite_raw(Space::Snapshots, &swoosh_storage::store::index_key(4), &at7)
        .unwrap();
    assert_eq!(store.list_snapshots().unwrap(), vec![4, 7]);
    drop(store);

    let node = start(&fx, reopen(dir.path()).await, 0).await;
    assert_eq!(node.health().index, 5);
    assert_eq!(
        node.store().list_snapshots().unwrap(),
        vec![7],
        "the damaged one is gone, the sound one beyond the log is kept"
    );
    node.shutdown().await;
}
