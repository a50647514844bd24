//! Issue 4, item 3 (graceful shutdown flushes the WAL): shut the node down
//! in the middle of a burst; every acknowledged proposal is in the log, the
//! reopened store recovers to the hash the node last reported, and a node
//! restarted on it carries on.

mod common;

use common::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swoosh_actors::SubmitResult;
use swoosh_core::apply_record;
use swoosh_core::guards::Verify;
use swoosh_core::scenario::{Driver, Next};
use swoosh_core::{Hash, NodeState};
use swoosh_storage::LmdbStore;

const CLIENTS: usize = 8;
const LOOPS: u64 = 3;
/// Proposals each client may start before the shutdown: far fewer than its
/// project needs to finish its loops, so no client can run out of work
/// before the shutdown however late the test's own task is scheduled.
const PERMITS_BEFORE_SHUTDOWN: usize = 10;
/// Acknowledgements before the shutdown (of the `CLIENTS` ×
/// `PERMITS_BEFORE_SHUTDOWN` permitted): the rest are still to come.
const ACCEPTED_BEFORE_SHUTDOWN: u64 = 60;

/// How many proposals one project's happy path takes to finish `LOOPS`.
fn proposals_to_finish(fx: &Fixture) -> usize {
    let mut node = NodeState::new(fx.genesis.clone()).unwrap();
    let mut n = 0;
    swoosh_core::scenario::run_happy_path(
        &mut node,
        &Driver::new(&fx.keys, LOOPS),
        &["one".to_string()],
        fx.now(),
        usize::MAX,
        |_| n += 1,
    );
    assert_eq!(node.project("one").execution.loops, LOOPS);
    n
}

/// Root hash after every record, by replaying the WAL with the pure reducer.
fn roots_by_index(store: &LmdbStore, fx: &Fixture) -> Vec<Hash> {
    let mut node = NodeState::new(fx.genesis.clone()).unwrap();
    let mut roots = vec![node.root_hash()];
    for v in wal_records(store, node.genesis_hash) {
        apply_record(&mut node, &v.record, Verify::Full).expect("record replays");
        roots.push(node.root_hash());
    }
    roots
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_burst_loses_nothing_acknowledged() {
    init_tracing();
    let t_start = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = Fixture::new("shutdown");
    let node = start(&fx, open_store(dir.path()), 10).await;

    let stats = Arc::new(Stats::default());
    let pacer = Pacer::new(fx.clock.clone(), CLIENTS);
    // One metered gate per client: none can finish before the shutdown.
    let to_finish = proposals_to_finish(&fx);
    assert!(
        PERMITS_BEFORE_SHUTDOWN < to_finish,
        "{PERMITS_BEFORE_SHUTDOWN} permits would let a client finish its {to_finish} proposals"
    );
    assert!(ACCEPTED_BEFORE_SHUTDOWN < (CLIENTS * PERMITS_BEFORE_SHUTDOWN) as u64);
    let gates: Vec<_> = (0..CLIENTS)
        .map(|_| Gate::with_budget(PERMITS_BEFORE_SHUTDOWN))
        .collect();
    let mut tasks = vec![];
    for (id, gate) in gates.iter().enumerate() {
        let cfg = ClientCfg {
            id,
            project: format!("sd-{id}"),
            loops: LOOPS,
            check_durable: false,
            stop_on_shutdown: true,
            resume: false,
        };
        tasks.push(tokio::spawn(drive_project(
            node.clone(),
            fx.keys.clone(),
            fx.genesis.clone(),
            fx.clock.clone(),
            pacer.clone(),
            stats.clone(),
            gate.clone(),
            cfg,
        )));
    }
    // Shut down while the clients are mid-burst: some proposals may be in
    // flight, and every client has more to send.
    let t0 = Instant::now();
    while stats.accepted() < ACCEPTED_BEFORE_SHUTDOWN {
        assert!(
            t0.elapsed() < PATIENCE,
            "only {} of {ACCEPTED_BEFORE_SHUTDOWN} accepted before the shutdown",
            stats.accepted()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        tasks.iter().all(|t| !t.is_finished()),
        "the burst is still running"
    );
    let inflight_at_shutdown = node.health().inflight;
    node.shutdown().await;
    // Clients that used up their permits submit again now and are told the
    // node is stopping.
    for g in &gates {
        g.grant(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }
    let h = node.health();
    assert_eq!(h.status, "stopping");
    assert_eq!(h.inflight, 0, "shutdown answered every admitted proposal");
    let driver = Driver::new(&fx.keys, 1);
    let late = match driver.next(
        &NodeState::new(fx.genesis.clone()).unwrap(),
        "late",
        fx.now(),
    ) {
        Next::Propose(p) => *p,
        other => panic!("{other:?}"),
    };
    assert!(
        matches!(node.submit(late).await, SubmitResult::Unavailable { .. }),
        "a stopped node takes nothing"
    );

    let mut acks = vec![];
    for t in tasks {
        let r = t.await.expect("client");
        assert!(r.stopped_by_shutdown, "{} ran to the end", r.project);
        acks.extend(r.acks);
    }
    let acked_max = acks.iter().map(|a| a.index).max().unwrap_or(0);

    // Verify through the node's own store handle first.
    {
        let store = node.store().clone();
        let records = wal_records(&store, fx.genesis.hash().unwrap());
        check_acks_in_wal(&acks, &records);
        assert!(records.len() as u64 >= acked_max);
        assert!(records.len() as u64 >= h.index);
        let roots = roots_by_index(&store, &fx);
        assert_eq!(
            h.root_hash,
            Some(roots[h.index as usize]),
            "the node's last root is the replay's root at its index"
        );
    }

    // Drop the node and reopen the directory as a fresh environment.
    drop(node);
    let t_reopen = Instant::now();
    let store = reopen(dir.path()).await;
    let reopen_took = t_reopen.elapsed();
    let records = wal_records(&store, fx.genesis.hash().unwrap());
    check_acks_in_wal(&acks, &records);
    let replayed = replay_from_genesis(&store, &fx.genesis);
    let recovered = recover_default(&store, &fx.genesis);
    assert_eq!(recovered.root_hash(), replayed.root_hash());
    assert_eq!(recovered.index, records.len() as u64);
    let report = verify_store(&store, &fx.genesis);
    assert_eq!(report.root_hash, replayed.root_hash());

    // A node restarted on the same directory starts at that hash and serves:
    // the clients finish their projects from the recovered state.
    let node = start(&fx, store, 10).await;
    let h2 = node.health();
    assert_eq!(h2.index, records.len() as u64);
    assert_eq!(h2.root_hash, Some(replayed.root_hash()));
    let stats2 = Arc::new(Stats::default());
    let pacer = Pacer::new(fx.clock.clone(), CLIENTS);
    let gate = Gate::new();
    let mut tasks = vec![];
    for id in 0..CLIENTS {
        let cfg = ClientCfg {
            id,
            project: format!("sd-{id}"),
            loops: LOOPS,
            check_durable: false,
            stop_on_shutdown: false,
            resume: true,
        };
        let (node, keys, genesis, clock, pacer, stats, gate) = (
            node.clone(),
            fx.keys.clone(),
            fx.genesis.clone(),
            fx.clock.clone(),
            pacer.clone(),
            stats2.clone(),
            gate.clone(),
        );
        tasks.push(tokio::spawn(async move {
            drive_project(node, keys, genesis, clock, pacer, stats, gate, cfg).await
        }));
    }
    let mut acks2 = vec![];
    for t in tasks {
        acks2.extend(t.await.expect("client").acks);
    }
    let store = node.store().clone();
    let records = wal_records(&store, fx.genesis.hash().unwrap());
    check_acks_in_wal(&acks, &records);
    check_acks_in_wal(&acks2, &records);
    let replayed = replay_from_genesis(&store, &fx.genesis);
    assert_eq!(node.health().root_hash, Some(replayed.root_hash()));
    for id in 0..CLIENTS {
        let st = replayed.project(&format!("sd-{id}"));
        assert_eq!(
            st.execution.loops, LOOPS,
            "sd-{id} finished after the restart"
        );
    }
    assert_eq!(stats2.unavailable.load(Ordering::Acquire), 0);
    node.shutdown().await;
    eprintln!(
        "shutdown: {inflight_at_shutdown} in flight at shutdown, {} acks before it (max index {acked_max}), reopen after {reopen_took:?}, {} acks after restart, WAL {} records, {:?}",
        acks.len(),
        acks2.len(),
        records.len(),
        t_start.elapsed()
    );
}
