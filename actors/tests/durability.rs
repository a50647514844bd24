//! Issue 4, items 2 and 8: an `Accepted` goes out only once its record is
//! durable; one idempotency key applies exactly once however often it is
//! submitted; a conflicting reuse of a key is refused.

mod common;

use common::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use swoosh_actors::{NodeHandle, SubmitResult};
use swoosh_core::reducer::{Ctx, RejectKind};
use swoosh_core::scenario::{Driver, Next};
use swoosh_core::{guards::Verify, NodeState, Proposal, ProposalBuilder};
use swoosh_storage::LogStore;

/// Advance `mirror` for `project` by `steps` happy-path proposals, each
/// submitted once and required to be accepted.
async fn advance<S: LogStore + Clone + Send + Sync + 'static>(
    fx: &Fixture,
    node: &NodeHandle<S>,
    mirror: &mut NodeState,
    project: &str,
    steps: usize,
) {
    let driver = Driver::new(&fx.keys, 1);
    for _ in 0..steps {
        let now = fx.now();
        let p = match driver.next(mirror, project, now) {
            Next::Propose(p) => *p,
            other => panic!("{project}: expected a proposal, got {other:?}"),
        };
        match node.submit(p.clone()).await {
            SubmitResult::Accepted(ok) => {
                check_durable_now(node, &p, ok.index, ok.state_post_hash);
                let ctx = Ctx {
                    now_ms: now,
                    verify: Verify::Full,
                    snapshot_every: 0,
                };
                swoosh_core::step(mirror, &p, &ctx);
                assert_eq!(mirror.project_hash(project), ok.state_post_hash);
            }
            other => panic!("{project}: {} not accepted: {other:?}", p.transition),
        }
    }
}

fn next_proposal(fx: &Fixture, mirror: &NodeState, project: &str) -> Proposal {
    match Driver::new(&fx.keys, 1).next(mirror, project, fx.now()) {
        Next::Propose(p) => *p,
        other => panic!("{project}: expected a proposal, got {other:?}"),
    }
}

/// The same proposal with one more evidence link: same idem key, different
/// content, still correctly signed by the same key.
fn conflicting_copy(fx: &Fixture, p: &Proposal) -> Proposal {
    let key = [
        &fx.keys.admin,
        &fx.keys.leader,
        &fx.keys.worker,
        &fx.keys.prober,
        &fx.keys.license_authority,
    ]
    .into_iter()
    .chain(fx.keys.council.iter())
    .find(|k| swoosh_core::SignerId::from_signing_key(k) == p.signer)
    .expect("the signer is one of the fixture's keys");
    let mut b = ProposalBuilder::new(
        &p.project,
        &p.transition,
        p.current_state_hash,
        p.hlc,
        &p.idem_key,
    )
    .window(p.window_id.clone())
    .evidence({
        let mut e = p.evidence.clone();
        e.push(format!("ucxl://chorus:spec@{}/conflict", p.project));
        e
    });
    b.inputs = p.inputs.clone();
    let q = b.sign(key).expect("sign");
    assert_eq!(q.idem_key, p.idem_key);
    assert_ne!(q.content_hash().unwrap(), p.content_hash().unwrap());
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_record_is_readable_from_the_store_when_acknowledged() {
    init_tracing();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = Fixture::new("durability");
    let node = start(&fx, open_store(dir.path()), 16).await;
    const CLIENTS: usize = 6;
    let stats = Arc::new(Stats::default());
    let pacer = Pacer::new(fx.clock.clone(), CLIENTS);
    let gate = Gate::new();
    let mut tasks = vec![];
    for id in 0..CLIENTS {
        let cfg = ClientCfg {
            id,
            project: format!("dur-{id}"),
            loops: 2,
            // The check under test: read the record back on every ack.
            check_durable: true,
            stop_on_shutdown: false,
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
    let mut acks = vec![];
    for t in tasks {
        acks.extend(t.await.expect("client").acks);
    }
    assert_eq!(stats.unavailable.load(Ordering::Acquire), 0);
    assert!(acks.iter().all(|a| !a.duplicate));

    let store = node.store().clone();
    let g = fx.genesis.clone();
    let records = wal_records(&store, g.hash().unwrap());
    check_acks_in_wal(&acks, &records);
    assert_eq!(
        records.len(),
        acks.len(),
        "nothing unacknowledged in the log"
    );
    let replayed = replay_from_genesis(&store, &g);
    let h = node.health();
    assert_eq!(h.index, records.len() as u64);
    assert_eq!(h.wal_lag, 0);
    assert_eq!(h.root_hash, Some(replayed.root_hash()));
    // Every acknowledged decision record is stored.
    for a in &acks {
        let d = node
            .decision(&a.decision)
            .expect("decision read")
            .unwrap_or_else(|| panic!("decision of {a:?} is not stored"));
        assert_eq!(d.hash(), a.decision);
        assert_eq!(d.record().index, a.index);
    }
    verify_store(&store, &g);
    node.shutdown().await;
    eprintln!(
        "durability: {} acks read back at acknowledgement, {:?}",
        acks.len(),
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_copies_of_one_proposal_apply_exactly_once() {
    init_tracing();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = Arc::new(Fixture::new("exactly-once"));
    let node = start(&fx, open_store(dir.path()), 0).await;
    let mut mirror = NodeState::new(fx.genesis.clone()).unwrap();
    // Background traffic on another project so copies share group commits
    // with unrelated records.
    let mut bg_mirror = NodeState::new(fx.genesis.clone()).unwrap();
    advance(&fx, &node, &mut mirror, "once", 1).await;

    for round in 0..4 {
        let p = next_proposal(&fx, &mirror, "once");
        let before = node.store().last_index().unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(50));
        let mut tasks = vec![];
        for _ in 0..50 {
            let (node, p, barrier) = (node.clone(), p.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                node.submit(p).await
            }));
        }
        // One unrelated proposal racing with the copies.
        advance(&fx, &node, &mut bg_mirror, "other", 1).await;
        let mut oks = vec![];
        for t in tasks {
            match t.await.expect("submit task") {
                SubmitResult::Accepted(ok) => oks.push(ok),
                other => panic!("round {round}: a copy was not accepted: {other:?}"),
            }
        }
        let first = oks[0].clone();
        for ok in &oks {
            assert_eq!(
                ok.index, first.index,
                "round {round}: one index for all copies"
            );
            assert_eq!(ok.state_post_hash, first.state_post_hash);
            assert_eq!(ok.decision, first.decision);
            assert_eq!(ok.transition, p.transition);
        }
        let fresh = oks.iter().filter(|ok| !ok.duplicate).count();
        assert_eq!(
            fresh, 1,
            "round {round}: exactly one copy applied, 49 duplicates"
        );
        // In the log once, at that index, and nothing else of this project.
        let after = node.store().last_index().unwrap();
        assert_eq!(
            after,
            before + 2,
            "round {round}: the copy plus the unrelated record"
        );
        let v = swoosh_storage::read_record(node.store(), first.index).unwrap();
        assert_eq!(v.record.idem_key, p.idem_key);
        assert_eq!(v.record.state_post_hash, first.state_post_hash);
        let idem = swoosh_storage::lookup_idem(node.store(), &p.project, &p.idem_key)
            .unwrap()
            .expect("idem index entry");
        assert_eq!(idem.index, first.index);
        // A late 51st copy is a duplicate too.
        match node.submit(p.clone()).await {
            SubmitResult::Accepted(ok) => {
                assert!(ok.duplicate);
                assert_eq!(ok.index, first.index);
            }
            other => panic!("late copy: {other:?}"),
        }
        let ctx = Ctx {
            now_ms: fx.now(),
            verify: Verify::Full,
            snapshot_every: 0,
        };
        swoosh_core::step(&mut mirror, &p, &ctx);
        assert_eq!(mirror.project_hash("once"), first.state_post_hash);
    }

    let store = node.store().clone();
    let records = wal_records(&store, fx.genesis.hash().unwrap());
    let mut keys: Vec<(&str, &str)> = records
        .iter()
        .map(|v| (v.record.project.as_str(), v.record.idem_key.as_str()))
        .collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "no idem key twice in the WAL");
    let replayed = replay_from_genesis(&store, &fx.genesis);
    assert_eq!(node.health().root_hash, Some(replayed.root_hash()));
    verify_store(&store, &fx.genesis);
    node.shutdown().await;
    eprintln!("exactly-once: 4 rounds of 50 copies, {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_an_idem_key_for_different_content_is_an_idem_conflict() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = Fixture::new("idem-conflict");
    let node = start(&fx, open_store(dir.path()), 0).await;
    let mut mirror = NodeState::new(fx.genesis.clone()).unwrap();
    advance(&fx, &node, &mut mirror, "conf", 3).await;

    // Sequential: accepted first, then the conflicting copy.
    let p = next_proposal(&fx, &mirror, "conf");
    let ok = match node.submit(p.clone()).await {
        SubmitResult::Accepted(ok) => ok,
        other => panic!("{other:?}"),
    };
    let q = conflicting_copy(&fx, &p);
    let last = node.store().last_index().unwrap();
    match node.submit(q.clone()).await {
        SubmitResult::Rejected(r) => {
            assert_eq!(r.kind, RejectKind::IdemConflict, "{r:?}");
            assert_eq!(r.kind.http_status(), 409);
            assert_eq!(r.guard, "idempotency");
            assert!(
                r.reasons.iter().any(|s| s.contains(&ok.index.to_string())),
                "the reason names the original index: {:?}",
                r.reasons
            );
        }
        other => panic!("conflicting reuse: {other:?}"),
    }
    assert_eq!(node.store().last_index().unwrap(), last, "nothing written");
    // The original is still a harmless repeat.
    match node.submit(p.clone()).await {
        SubmitResult::Accepted(again) => {
            assert!(again.duplicate);
            assert_eq!(again.index, ok.index);
        }
        other => panic!("repeat: {other:?}"),
    }
    let ctx = Ctx {
        now_ms: fx.now(),
        verify: Verify::Full,
        snapshot_every: 0,
    };
    swoosh_core::step(&mut mirror, &p, &ctx);

    // Concurrent: the two contents race; exactly one wins, the other is an
    // idempotency conflict, whichever order the sequencer saw them in.
    for round in 0..5 {
        let p = next_proposal(&fx, &mirror, "conf");
        let q = conflicting_copy(&fx, &p);
        let (a, b) = tokio::join!(node.submit(p.clone()), node.submit(q.clone()));
        let (winner, loser) = match (&a, &b) {
            (SubmitResult::Accepted(ok), SubmitResult::Rejected(r)) => ((&p, ok), r),
            (SubmitResult::Rejected(r), SubmitResult::Accepted(ok)) => ((&q, ok), r),
            other => panic!("round {round}: want one accepted and one rejected, got {other:?}"),
        };
        assert_eq!(
            loser.kind,
            RejectKind::IdemConflict,
            "round {round}: {loser:?}"
        );
        let v = swoosh_storage::read_record(node.store(), winner.1.index).unwrap();
        assert_eq!(
            v.record.proposal(),
            *winner.0,
            "the winner is what the log holds"
        );
        swoosh_core::step(&mut mirror, winner.0, &ctx);
        assert_eq!(mirror.project_hash("conf"), winner.1.state_post_hash);
    }
    let replayed = replay_from_genesis(node.store(), &fx.genesis);
    assert_eq!(node.health().root_hash, Some(replayed.root_hash()));
    assert_eq!(replayed.project_hash("conf"), mirror.project_hash("conf"));
    node.shutdown().await;
}

/// A repeat of a proposal whose key aged out of the state's bounded
/// idempotency window still gets its original outcome (recalled from the
/// durable index), before and after a restart, and other content under that
/// key is still a conflict. Before the recall it was a `409` stale hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_older_than_the_idempotency_window_gets_its_original_outcome() {
    use swoosh_core::reducer::IDEM_KEYS_PER_PROJECT_MAX;
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = Fixture::new("idem-aged");
    let project = "aged";
    let node = start(&fx, open_store(dir.path()), 1_000).await;
    let mut mirror = NodeState::new(fx.genesis.clone()).unwrap();
    advance(&fx, &node, &mut mirror, project, 4).await;
    let first = next_proposal(&fx, &mirror, project);
    let ok = match node.submit(first.clone()).await {
        SubmitResult::Accepted(ok) => ok,
        other => panic!("{other:?}"),
    };
    let ctx = Ctx {
        now_ms: fx.now(),
        verify: Verify::Trusted,
        snapshot_every: 0,
    };
    swoosh_core::step(&mut mirror, &first, &ctx);

    // Pause and resume until the first key is out of the window.
    for i in 0..(IDEM_KEYS_PER_PROJECT_MAX + 10) {
        let p = pause_or_resume(&fx, &mirror, project, i);
        match node.submit(p.clone()).await {
            SubmitResult::Accepted(a) if !a.duplicate => {
                swoosh_core::step(&mut mirror, &p, &ctx);
                assert_eq!(mirror.project_hash(project), a.state_post_hash);
            }
            other => panic!("{} {i}: {other:?}", p.transition),
        }
    }
    assert!(
        !mirror.idem[project].contains_key(&first.idem_key),
        "the first key aged out of the window"
    );

    let window = mirror.idem.total();
    assert!(window <= IDEM_KEYS_PER_PROJECT_MAX);
    let check = |node: Node, when: &'static str| {
        let (first, ok, q) = (first.clone(), ok.clone(), conflicting_copy(&fx, &first));
        async move {
            let last = node.store().last_index().unwrap();
            match node.submit(first).await {
                SubmitResult::Accepted(again) => {
                    assert!(again.duplicate, "{when}");
                    assert_eq!(
                        (again.index, again.state_post_hash, again.decision),
                        (ok.index, ok.state_post_hash, ok.decision),
                        "{when}: the original outcome"
                    );
                }
                other => panic!("{when}: an aged-out repeat: {other:?}"),
            }
            match node.submit(q).await {
                SubmitResult::Rejected(r) => {
                    assert_eq!(r.kind, RejectKind::IdemConflict, "{when}: {r:?}");
                    assert!(r.reasons[0].contains(&format!("at index {}", ok.index)));
                }
                other => panic!("{when}: other content under an aged-out key: {other:?}"),
            }
            assert_eq!(
                node.store().last_index().unwrap(),
                last,
                "{when}: nothing written"
            );
            // Both answers came from the durable index, and the window
            // gauge shows the state's bounded window.
            let m = node.metrics();
            assert_eq!(m.idempotency_recalled_total.get(), 2, "{when}");
            assert_eq!(m.idempotency_window_keys.get() as usize, window, "{when}");
            let text = m.encode();
            assert!(
                text.contains("swoosh_idempotency_recalled_total 2"),
                "{when}: {text}"
            );
            node
        }
    };
    let node = check(node, "live").await;
    node.shutdown().await;
    drop(node);
    let node = start(&fx, reopen(dir.path()).await, 1_000).await;
    let node = check(node, "after a restart from a snapshot").await;
    let replayed = replay_from_genesis(node.store(), &fx.genesis);
    assert_eq!(replayed.root_hash(), mirror.root_hash());
    verify_store(node.store(), &fx.genesis);
    node.shutdown().await;
}

/// A node whose derived indexes lost entries (or gained one no record
/// accounts for) while it was down rebuilds them from its log before it
/// serves (issue 3: "rebuilt from the WAL if missing"), says so in a metric,
/// and a clean start does not rebuild. Without it the lost decision stayed
/// `404`, and once its key left the window a repeat was refused as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_index_entries_are_rebuilt_from_the_log_at_start() {
    use swoosh_storage::{lookup_idem, read_record, Batch, Space};
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = Fixture::new("idem-lost");
    let node = start(&fx, open_store(dir.path()), 1_000).await;
    let mut mirror = NodeState::new(fx.genesis.clone()).unwrap();
    advance(&fx, &node, &mut mirror, "lost", 6).await;
    assert_eq!(node.metrics().index_rebuilds_total.get(), 0);
    node.shutdown().await;
    drop(node);

    let mut store = reopen(dir.path()).await;
    let r1 = read_record(&store, 1).unwrap().record;
    let k1 = swoosh_storage::wal::idem_key(&r1.project, &r1.idem_key).unwrap();
    let kept = store.get(Space::Idem, &k1).unwrap().expect("stored");
    let mut b = Batch::new();
    b.delete(Space::Idem, k1.clone())
        .delete(Space::Decisions, r1.decision.0.to_vec())
        .put(Space::Idem, b"stray".to_vec(), kept.clone());
    store.commit(b).unwrap();
    store.sync().unwrap();

    let node = start(&fx, store, 1_000).await;
    assert_eq!(node.metrics().index_rebuilds_total.get(), 1);
    assert!(node
        .metrics()
        .encode()
        .contains("swoosh_index_rebuilds_total 1"));
    let e = lookup_idem(node.store(), "lost", &r1.idem_key)
        .unwrap()
        .expect("the lost key is back");
    assert_eq!((e.index, e.decision), (1, r1.decision));
    match node.decision(&r1.decision).unwrap() {
        Some(swoosh_storage::DecisionDoc::Signed(d)) => d.verify().unwrap(),
        other => panic!("the lost decision, signed by the leader: {other:?}"),
    }
    assert_eq!(node.store().get(Space::Idem, b"stray").unwrap(), None);
    verify_store(node.store(), &fx.genesis);
    // It serves on from the log as before.
    advance(&fx, &node, &mut mirror, "lost", 2).await;
    node.shutdown().await;
    drop(node);

    let node = start(&fx, reopen(dir.path()).await, 1_000).await;
    assert_eq!(
        node.metrics().index_rebuilds_total.get(),
        0,
        "sound indexes are not rebuilt"
    );
    assert_eq!(node.health().root_hash, Some(mirror.root_hash()));
    node.shutdown().await;
}

/// The `i`-th of a run of pauses and resumes of `project` from `mirror`.
fn pause_or_resume(fx: &Fixture, mirror: &NodeState, project: &str, i: usize) -> Proposal {
    let st = mirror.project(project).into_owned();
    let (t, inputs) = if st.control.phase == "NORMAL" {
        (
            "Control_Pause",
            serde_json::json!({"reason": "maintenance"}),
        )
    } else {
        ("Control_Resume", serde_json::json!({}))
    };
    ProposalBuilder::new(
        project,
        t,
        mirror.project_hash(project),
        Driver::hlc_for(&st, fx.now()),
        &format!("pr-{i}"),
    )
    .inputs(&inputs)
    .unwrap()
    .sign(&fx.keys.leader)
    .unwrap()
}

/// A key the state's window evicts while its record is still on the way to
/// a stalled disk is neither in the window nor in the durable index; a
/// repeat of it still gets its original outcome once the record is durable.
/// Before, it was evaluated as new and refused as a stale hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_evicted_before_its_record_is_durable_gets_its_original_outcome() {
    use swoosh_core::state::{IDEM_EVICT_BATCH, IDEM_KEYS_PER_PROJECT_MAX};
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = Fixture::new("idem-undurable");
    let project = "stall";
    let store = Stalling::new(open_store(dir.path()));
    let node = NodeHandle::start(store.clone(), fx.config(0))
        .await
        .expect("the node starts");
    let mut mirror = NodeState::new(fx.genesis.clone()).unwrap();
    let ctx = Ctx {
        now_ms: fx.now(),
        verify: Verify::Trusted,
        snapshot_every: 0,
    };
    // Licensed, durable keys, then enough held back by the disk that the
    // project's first eviction takes some of each.
    advance(&fx, &node, &mut mirror, project, 4).await;
    let durable = IDEM_EVICT_BATCH - 24;
    let mut all = vec![];
    for i in 0..durable {
        let p = pause_or_resume(&fx, &mirror, project, i);
        match node.submit(p.clone()).await {
            SubmitResult::Accepted(a) if !a.duplicate => {
                swoosh_core::step(&mut mirror, &p, &ctx);
            }
            other => panic!("{i}: {other:?}"),
        }
        all.push(p);
    }
    let held = store.hold_until_dropped();
    let mut pending = vec![];
    for i in durable..=IDEM_KEYS_PER_PROJECT_MAX {
        let p = pause_or_resume(&fx, &mirror, project, i);
        swoosh_core::step(&mut mirror, &p, &ctx);
        let (n, q) = (node.clone(), p.clone());
        pending.push(tokio::spawn(async move { n.submit(q).await }));
        all.push(p);
        // One at a time into the sequencer, in order.
        let lag = (i + 1 - durable) as i64;
        while node.metrics().wal_lag_records.get() < lag {
            tokio::task::yield_now().await;
        }
    }
    let late = IDEM_EVICT_BATCH - 10;
    assert!(late >= durable);
    assert!(
        !mirror.idem[project].contains_key(&all[late].idem_key),
        "the key was evicted from the window"
    );
    assert_eq!(node.store().last_index().unwrap(), 4 + durable as u64);

    let repeat = {
        let (n, q) = (node.clone(), all[late].clone());
        tokio::spawn(async move { n.submit(q).await })
    };
    drop(held);
    match repeat.await.unwrap() {
        SubmitResult::Accepted(a) => {
            assert!(a.duplicate);
            assert_eq!(a.index, 4 + late as u64 + 1, "the original record");
        }
        other => panic!("a repeat of a key evicted before it was durable: {other:?}"),
    }
    for (i, t) in pending.into_iter().enumerate() {
        match t.await.unwrap() {
            SubmitResult::Accepted(a) if !a.duplicate => {}
            other => panic!("{}: {other:?}", durable + i),
        }
    }
    assert_eq!(node.health().root_hash, Some(mirror.root_hash()));
    node.shutdown().await;
}

/// A start reports its recovery's progress into the cell it is given (what
/// `/health` shows while the process recovers), and the node's metrics say
/// the recovery is over once it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_reports_its_replay_into_the_progress_cell() {
    use swoosh_storage::{Phase, Progress, ProgressCell};
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = Fixture::new("progress");
    let store = open_store(dir.path());
    let node = NodeHandle::start(store.clone(), fx.config(0))
        .await
        .expect("the node starts");
    let mut mirror = NodeState::new(fx.genesis.clone()).unwrap();
    advance(&fx, &node, &mut mirror, "p", 12).await;
    node.shutdown().await;
    drop(node);

    let cell = Arc::new(ProgressCell::new());
    assert_eq!(cell.get(), None, "nothing reported before the start");
    let node = NodeHandle::start_observed(store, fx.config(0), cell.clone())
        .await
        .expect("the node starts again");
    assert_eq!(
        cell.get(),
        Some(Progress {
            phase: Phase::Replay,
            done: 12,
            total: 12
        }),
        "no snapshot (snapshot_every 0): the whole log was replayed"
    );
    let h = node.health();
    assert_eq!((h.index, h.status.as_str()), (12, "ok"));
    assert_eq!(h.recovery, None, "only while recovering");
    let text = node.metrics_text();
    assert!(text.contains("swoosh_recovery_in_progress 0"), "{text}");
    assert!(
        text.contains(&format!(
            "swoosh_start_time_seconds {}",
            cell.started_unix_seconds()
        )),
        "{text}"
    );
    node.shutdown().await;
}

/// A store that fills up refuses every write but still recovers (reads
/// work), so restarting the writer could only fail again at the next batch,
/// forever, and the process would never exit for its service manager. The
/// node gives up at the first full commit, naming the flag that helps, and
/// every proposal it acknowledged is in the store once it is opened with a
/// larger map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_makes_the_node_give_up_and_keeps_what_it_acknowledged() {
    use swoosh_storage::{Durability, LmdbOptions, LmdbStore};
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = Fixture::new("store-full");
    let small = LmdbOptions {
        durability: Durability::Sync,
        map_bytes: 1 << 20,
    };
    let store = LmdbStore::open(dir.path(), &small).expect("open a small store");
    let node = NodeHandle::start(store, fx.config(0))
        .await
        .expect("the node starts");
    let mut mirror = NodeState::new(fx.genesis.clone()).unwrap();
    let project = "full";
    advance(&fx, &node, &mut mirror, project, 4).await;
    let ctx = Ctx {
        now_ms: fx.now(),
        verify: Verify::Trusted,
        snapshot_every: 0,
    };
    let mut acknowledged = mirror.index;
    let mut refused = None;
    for i in 0..20_000 {
        let p = pause_or_resume(&fx, &mirror, project, i);
        match node.submit(p.clone()).await {
            SubmitResult::Accepted(a) => {
                swoosh_core::step(&mut mirror, &p, &ctx);
                acknowledged = a.index;
            }
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    let refused = refused.expect("a 1 MiB map filled");
    assert!(
        matches!(refused, SubmitResult::Unavailable { .. }),
        "{refused:?}"
    );
    let g = tokio::time::timeout(PATIENCE, node.given_up())
        .await
        .expect("the node gives up instead of restarting its writer forever");
    assert!(g.error.contains("is full"), "{g}");
    assert!(g.error.contains("--lmdb-map-gib"), "{g}");
    assert_eq!(node.health().status, "failed");
    node.shutdown().await;
    drop(node);

    let t0 = Instant::now();
    let store = loop {
        let large = LmdbOptions {
            durability: Durability::Sync,
            map_bytes: 256 << 20,
        };
        match LmdbStore::open(dir.path(), &large) {
            Ok(s) => break s,
            Err(swoosh_storage::StoreError::AlreadyOpen { .. }) if t0.elapsed() < PATIENCE => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(e) => panic!("reopening with a larger map: {e}"),
        }
    };
    let recovered = recover_default(&store, &fx.genesis);
    assert!(
        recovered.index >= acknowledged,
        "acknowledged up to {acknowledged}, recovered {}",
        recovered.index
    );
    assert_eq!(
        recovered.project_hash(project),
        mirror.project_hash(project),
        "the recovered project is the acknowledged one"
    );
}

/// The WAL writer gathers a batch by record count; one whose bytes exceed
/// the group-commit limit is committed in parts, not refused whole (which
/// restarted the writer, and, `COMMIT_FAILURES_MAX` times in a row, made
/// the node give up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_the_byte_limit_is_committed_in_parts() {
    init_tracing();
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = Fixture::new("batch-bytes");
    let mut cfg = fx.config(0);
    // Under two records' worth: every batch of two or more is over it.
    cfg.wal_limits = swoosh_storage::BatchLimits {
        wal_batch_records_max: 1_024,
        wal_batch_bytes_max: 6_000,
    };
    let node = NodeHandle::start(open_store(dir.path()), cfg)
        .await
        .expect("the node starts");
    let mirror = NodeState::new(fx.genesis.clone()).unwrap();
    let driver = Driver::new(&fx.keys, 1);
    let mut submitted = vec![];
    for i in 0..24 {
        let project = format!("p{i}");
        let p = match driver.next(&mirror, &project, fx.now()) {
            Next::Propose(p) => *p,
            other => panic!("{project}: {other:?}"),
        };
        let n = node.clone();
        submitted.push(tokio::spawn(async move { n.submit(p).await }));
    }
    for s in submitted {
        match s.await.unwrap() {
            SubmitResult::Accepted(_) => {}
            other => panic!("refused: {other:?}"),
        }
    }
    assert_eq!(node.health().restarts, 0, "no commit failed");
    assert_eq!(node.health().index, 24);
    node.shutdown().await;
}
