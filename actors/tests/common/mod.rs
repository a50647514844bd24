//! Shared harness for the actor-tree integration tests: an LMDB-backed node
//! on a manual clock, clients that drive one project each along the happy
//! path with a local mirror of the pure reducer, and checks of the WAL
//! against what the clients were told.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swoosh_actors::{Clock, ManualClock, NodeConfig, NodeHandle, SubmitResult};
use swoosh_core::guards::Verify;
use swoosh_core::reducer::{Ctx, Outcome, RejectKind};
use swoosh_core::scenario::{self, Driver, Keys, Next};
use swoosh_core::{Genesis, Hash, NodeState, Proposal};
use swoosh_storage::{
    export, recover_with, verify, BatchLimits, LmdbOptions, LmdbStore, LogStore, RecoverOptions,
    VerifiedRecord, VerifyOptions,
};

/// Wall time of the BACKBEAT origin and the manual clock's start.
pub const ORIGIN_MS: u64 = 1_700_000_000_000;
pub const COUNCIL: usize = 3;

/// How long a test waits for something that must happen eventually (a
/// restart, a fold, a reopen, a read model catching up). CI runs the whole
/// workspace at once on two shared cores, where a restart that takes
/// milliseconds alone can take seconds; the bound only keeps a regression
/// from hanging the suite, so it is generous. Never the value a test asserts.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub type Node = NodeHandle<LmdbStore>;

/// Keys, genesis and clock of one test cluster.
pub struct Fixture {
    pub keys: Arc<Keys>,
    pub genesis: Genesis,
    pub clock: Arc<ManualClock>,
}

impl Fixture {
    pub fn new(label: &str) -> Fixture {
        let keys = Keys::from_labels(label, COUNCIL);
        let genesis = scenario::genesis(&keys, &format!("{label}-cluster"), ORIGIN_MS);
        let clock = Arc::new(ManualClock(AtomicU64::new(ORIGIN_MS)));
        Fixture {
            keys: Arc::new(keys),
            genesis,
            clock,
        }
    }

    pub fn config(&self, snapshot_every: u64) -> NodeConfig {
        NodeConfig {
            genesis: self.genesis.clone(),
            leader_key: self.keys.leader.clone(),
            snapshot_every,
            snapshot_keep: swoosh_storage::SNAPSHOTS_KEEP_DEFAULT,
            wal_limits: BatchLimits::default(),
            clock: self.clock.clone(),
            advertise: "127.0.0.1:0".into(),
            attention_file: None,
            compaction: None,
        }
    }

    pub fn now(&self) -> u64 {
        self.clock.now_ms()
    }
}

/// Log to stderr when `RUST_LOG` is set (e.g. `RUST_LOG=swoosh_actors=info`).
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

pub fn open_store(dir: &Path) -> LmdbStore {
    LmdbStore::open(dir, &LmdbOptions::default()).expect("open the LMDB store")
}

/// Reopen the environment once every handle of the stopped node is gone.
pub async fn reopen(dir: &std::path::Path) -> LmdbStore {
    let t0 = Instant::now();
    loop {
        match LmdbStore::open(dir, &swoosh_storage::LmdbOptions::default()) {
            Ok(s) => return s,
            Err(swoosh_storage::StoreError::AlreadyOpen { .. }) if t0.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("reopening the store after shutdown: {e}"),
        }
    }
}

pub async fn start(fx: &Fixture, store: LmdbStore, snapshot_every: u64) -> Node {
    NodeHandle::start(store, fx.config(snapshot_every))
        .await
        .expect("the node starts")
}

/// Pure replay of the whole WAL from genesis (no snapshots, signatures
/// re-verified).
pub fn replay_from_genesis(store: &LmdbStore, genesis: &Genesis) -> NodeState {
    let opts = RecoverOptions {
        verify: Verify::Full,
        use_snapshots: false,
    };
    let rec = recover_with(store, genesis, &opts, &mut |_| {}).expect("the WAL replays");
    assert_eq!(rec.snapshot, None, "replay must start from genesis");
    rec.node
}

/// Recovery as a restarting node does it (newest usable snapshot + tail).
pub fn recover_default(store: &LmdbStore, genesis: &Genesis) -> NodeState {
    recover_with(store, genesis, &RecoverOptions::default(), &mut |_| {})
        .expect("the store recovers")
        .node
}

/// Every record of the WAL, frames and chain verified.
pub fn wal_records(store: &LmdbStore, genesis_hash: Hash) -> Vec<VerifiedRecord> {
    export(store, genesis_hash, 1, None)
        .expect("export the WAL")
        .map(|r| r.expect("a verified record"))
        .collect()
}

/// Full `verify`: frames, chain, reducer, snapshots and derived indexes.
pub fn verify_store(store: &LmdbStore, genesis: &Genesis) -> swoosh_storage::VerifyReport {
    let report =
        verify(store, genesis, &VerifyOptions::default(), &mut |_| {}).expect("the store verifies");
    assert!(
        report.snapshot_problems.is_empty(),
        "snapshot problems: {:?}",
        report.snapshot_problems
    );
    assert_eq!(
        report.index_problems_total, 0,
        "derived index problems: {:?}",
        report.index_problems
    );
    report
}

/// What a client was told: an acknowledged (durable) proposal.
#[derive(Clone, Debug)]
pub struct Ack {
    pub project: String,
    pub idem_key: String,
    pub transition: String,
    pub index: u64,
    pub post_hash: Hash,
    /// The decision record's hash (it names the global index, so only the
    /// node's own log can confirm it).
    pub decision: Hash,
    pub duplicate: bool,
}

/// Counters shared by the clients of one test.
#[derive(Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub unavailable: AtomicU64,
    pub busy: AtomicU64,
    pub resyncs: AtomicU64,
    pub duplicates: AtomicU64,
    pub retried_rejections: AtomicU64,
}

impl Stats {
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Acquire)
    }
}

/// Moves the manual clock only when every active client waits for a
/// BACKBEAT window, and then exactly to the earliest window any of them
/// waits for (like `scenario::run_happy_path`, but with concurrent clients).
pub struct Pacer {
    clock: Arc<ManualClock>,
    inner: Mutex<PacerState>,
    notify: tokio::sync::Notify,
}

struct PacerState {
    active: usize,
    waiting: BTreeMap<usize, u64>,
}

impl Pacer {
    pub fn new(clock: Arc<ManualClock>, clients: usize) -> Arc<Pacer> {
        Arc::new(Pacer {
            clock,
            inner: Mutex::new(PacerState {
                active: clients,
                waiting: BTreeMap::new(),
            }),
            notify: tokio::sync::Notify::new(),
        })
    }

    fn maybe_advance(&self, st: &PacerState) {
        if st.active > 0 && st.waiting.len() == st.active {
            let target = *st.waiting.values().min().expect("someone waits");
            self.clock.0.fetch_max(target, Ordering::AcqRel);
            self.notify.notify_waiters();
        }
    }

    /// Block client `id` until the clock reads at least `target`.
    pub async fn wait_until(&self, id: usize, target: u64) {
        {
            let mut st = self.inner.lock().unwrap();
            st.waiting.insert(id, target);
            self.maybe_advance(&st);
        }
        loop {
            let n = self.notify.notified();
            if self.clock.now_ms() >= target {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), n).await;
        }
        self.inner.lock().unwrap().waiting.remove(&id);
    }

    pub fn done(&self, _id: usize) {
        let mut st = self.inner.lock().unwrap();
        st.active -= 1;
        self.maybe_advance(&st);
    }

    /// Client `id` stops taking part in the clock until [`Pacer::unpark`]
    /// (it waits for something else, e.g. a [`Gate`] permit, and must not
    /// hold the others' time back meanwhile).
    pub fn park(&self, id: usize) {
        self.done(id);
    }

    pub fn unpark(&self, _id: usize) {
        self.inner.lock().unwrap().active += 1;
    }
}

/// Lets a test hold every client before its next submit (to quiesce the
/// node) and release them again; with a budget, also meter how many new
/// proposals the clients may start.
#[derive(Default)]
pub struct Gate {
    closed: std::sync::atomic::AtomicBool,
    /// Clients currently between "passed the gate" and "got an answer".
    passing: AtomicUsize,
    /// One permit per new proposal (resubmissions of it are free).
    budget: Option<tokio::sync::Semaphore>,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    /// A gate whose clients start at most `permits` proposals until
    /// [`Gate::grant`] gives them more. A test that must act while clients
    /// still have work (kill actors "under load") meters them, so on a slow,
    /// shared machine they cannot run out of work before the test is done.
    pub fn with_budget(permits: usize) -> Arc<Gate> {
        Arc::new(Gate {
            budget: Some(tokio::sync::Semaphore::new(permits)),
            ..Gate::default()
        })
    }

    pub fn metered(&self) -> bool {
        self.budget.is_some()
    }

    pub fn grant(&self, permits: usize) {
        if let Some(b) = &self.budget {
            b.add_permits(permits);
        }
    }

    async fn permit(&self) {
        if let Some(b) = &self.budget {
            b.acquire()
                .await
                .expect("the budget is never closed")
                .forget();
        }
    }

    /// Close the gate and wait until no client is inside a submit.
    pub async fn close_and_drain(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        while self.passing.load(Ordering::SeqCst) > 0 {
            assert!(t0.elapsed() < PATIENCE, "clients did not drain");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
    }

    async fn enter(&self) {
        loop {
            self.passing.fetch_add(1, Ordering::SeqCst);
            if !self.closed.load(Ordering::SeqCst) {
                return;
            }
            self.passing.fetch_sub(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn leave(&self) {
        self.passing.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wait until the node takes proposals again.
pub async fn wait_ready(node: &Node, within: Duration) {
    let t0 = Instant::now();
    while !node.is_ready() {
        assert!(
            t0.elapsed() < within,
            "the node did not become ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Rebuild a client's mirror from the node's committed state.
pub async fn resync(node: &Node, genesis: &Genesis) -> NodeState {
    let store = node.store().clone();
    let genesis = genesis.clone();
    tokio::task::spawn_blocking(move || recover_default(&store, &genesis))
        .await
        .expect("resync task")
}

/// How long a client keeps resubmitting one unacknowledged proposal before
/// it fails the test: a liveness bound (the node answers every proposal
/// definitely once it is back), not a latency any test asserts. One submit
/// may itself wait up to `SUBMIT_TIMEOUT_MS` (30 s) before it is answered
/// `Unavailable`, and a restart on a loaded machine can take seconds.
pub const RESUBMIT_WINDOW: Duration = PATIENCE;

pub struct ClientCfg {
    pub id: usize,
    pub project: String,
    pub loops: u64,
    /// Read the record back from the store after every acknowledgement.
    pub check_durable: bool,
    /// Stop (instead of retrying) when the node says it is unavailable
    /// because it is shutting down.
    pub stop_on_shutdown: bool,
    /// Start from the node's committed state (a client reconnecting to a
    /// restarted node) instead of genesis.
    pub resume: bool,
}

pub struct ClientReport {
    pub project: String,
    pub acks: Vec<Ack>,
    /// The client stopped because the node shut down.
    pub stopped_by_shutdown: bool,
    pub mirror_hash: Hash,
}

/// Drive `cfg.project` along the happy path through `node`, keeping a local
/// mirror of the project's state with the pure reducer. Every `Accepted`
/// must match what the pure reducer computes for the same proposal. An
/// `Unavailable` is not an acknowledgement: the client resubmits the same
/// (idempotent) proposal until it gets a definite answer.
// A test driver's knobs, each used by some test; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub async fn drive_project(
    node: Node,
    fx_keys: Arc<Keys>,
    genesis: Genesis,
    clock: Arc<ManualClock>,
    pacer: Arc<Pacer>,
    stats: Arc<Stats>,
    gate: Arc<Gate>,
    cfg: ClientCfg,
) -> ClientReport {
    let driver = Driver::new(&fx_keys, cfg.loops);
    let mut mirror = if cfg.resume {
        resync(&node, &genesis).await
    } else {
        NodeState::new(genesis.clone()).expect("genesis is valid")
    };
    let mut acks = vec![];
    let mut stopped_by_shutdown = false;
    let project = cfg.project.clone();
    // One gate permit per proposal, spent when it is acknowledged. While a
    // client waits for one it is parked: the others' clock moves on, and the
    // proposal is built again afterwards (with the clock as it is then).
    let mut permit = false;
    'outer: loop {
        let now = clock.now_ms();
        let p: Proposal = match driver.next(&mirror, &project, now) {
            Next::Done => break,
            Next::WaitMs(ms) => {
                pacer.wait_until(cfg.id, now + ms).await;
                continue;
            }
            Next::Propose(_) if !permit && gate.metered() => {
                pacer.park(cfg.id);
                gate.permit().await;
                pacer.unpark(cfg.id);
                permit = true;
                continue;
            }
            Next::Propose(p) => *p,
        };
        let t0 = Instant::now();
        loop {
            gate.enter().await;
            let outcome = node.submit(p.clone()).await;
            gate.leave();
            match outcome {
                SubmitResult::Accepted(ok) => {
                    stats.accepted.fetch_add(1, Ordering::AcqRel);
                    if ok.duplicate {
                        stats.duplicates.fetch_add(1, Ordering::AcqRel);
                    }
                    if cfg.check_durable {
                        check_durable_now(&node, &p, ok.index, ok.state_post_hash);
                    }
                    // The pure reducer on the client's mirror must agree.
                    let ctx = Ctx {
                        now_ms: clock.now_ms().max(p.hlc.wall_ms),
                        verify: Verify::Full,
                        snapshot_every: 0,
                    };
                    let step = swoosh_core::step(&mut mirror, &p, &ctx);
                    match step.outcome {
                        Outcome::Accepted(acc) => {
                            assert_eq!(
                                acc.record.state_post_hash, ok.state_post_hash,
                                "{project}: node and pure reducer disagree on {}",
                                p.transition
                            );
                        }
                        other => panic!(
                            "{project}: the node accepted {} but the mirror says {other:?}",
                            p.transition
                        ),
                    }
                    assert_eq!(ok.transition, p.transition);
                    acks.push(Ack {
                        project: project.clone(),
                        idem_key: p.idem_key.clone(),
                        transition: p.transition.clone(),
                        index: ok.index,
                        post_hash: ok.state_post_hash,
                        decision: ok.decision,
                        duplicate: ok.duplicate,
                    });
                    permit = false;
                    break;
                }
                SubmitResult::Unavailable { reason } => {
                    stats.unavailable.fetch_add(1, Ordering::AcqRel);
                    if cfg.stop_on_shutdown && node.health().status == "stopping" {
                        stopped_by_shutdown = true;
                        break 'outer;
                    }
                    assert!(
                        t0.elapsed() < RESUBMIT_WINDOW,
                        "{project}: {} still unavailable after {:?}: {reason}",
                        p.transition,
                        RESUBMIT_WINDOW
                    );
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                SubmitResult::Busy { retry_after_ms, .. } => {
                    stats.busy.fetch_add(1, Ordering::AcqRel);
                    tokio::time::sleep(Duration::from_millis(retry_after_ms.max(1))).await;
                }
                SubmitResult::Rejected(r) => match r.kind {
                    // The mirror is behind the node: re-read committed state.
                    RejectKind::StaleHash | RejectKind::HlcOrder | RejectKind::IdemConflict => {
                        stats.retried_rejections.fetch_add(1, Ordering::AcqRel);
                        stats.resyncs.fetch_add(1, Ordering::AcqRel);
                        wait_ready(&node, PATIENCE).await;
                        mirror = resync(&node, &genesis).await;
                        continue 'outer;
                    }
                    _ => panic!("{project}: happy-path {} rejected: {r:?}", p.transition),
                },
            }
        }
    }
    pacer.done(cfg.id);
    ClientReport {
        mirror_hash: mirror.project_hash(&project),
        project,
        acks,
        stopped_by_shutdown,
    }
}

/// The record an acknowledgement names must already be in the store.
pub fn check_durable_now<S: LogStore + Clone + Send + Sync + 'static>(
    node: &NodeHandle<S>,
    p: &Proposal,
    index: u64,
    post: Hash,
) {
    let store = node.store();
    let v = swoosh_storage::read_record(store, index).unwrap_or_else(|e| {
        panic!(
            "acknowledged index {index} ({}) is not readable from the store: {e}",
            p.transition
        )
    });
    assert_eq!(v.record.state_post_hash, post, "record {index}: post hash");
    assert_eq!(v.record.project, p.project, "record {index}: project");
    assert_eq!(v.record.idem_key, p.idem_key, "record {index}: idem key");
    assert!(
        store.last_index().expect("last index") >= index,
        "the WAL ends before an acknowledged index"
    );
}

/// Every acknowledgement is in the WAL at its index with its post hash, and
/// every acknowledged idempotency key occurs exactly once in the WAL.
pub fn check_acks_in_wal(acks: &[Ack], records: &[VerifiedRecord]) {
    let mut by_key: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for (i, v) in records.iter().enumerate() {
        assert_eq!(v.index, i as u64 + 1, "WAL indexes are dense");
        by_key
            .entry((v.record.project.clone(), v.record.idem_key.clone()))
            .or_default()
            .push(v.index);
    }
    for a in acks {
        let v = records
            .get((a.index as usize).wrapping_sub(1))
            .unwrap_or_else(|| panic!("acknowledged index {} is missing from the WAL", a.index));
        assert_eq!(
            v.record.state_post_hash, a.post_hash,
            "ack {a:?}: post hash"
        );
        assert_eq!(v.record.project, a.project, "ack {a:?}: project");
        assert_eq!(v.record.idem_key, a.idem_key, "ack {a:?}: idem key");
        assert_eq!(v.record.transition, a.transition, "ack {a:?}: transition");
        assert_eq!(v.record.decision, a.decision, "ack {a:?}: decision hash");
        let at = &by_key[&(a.project.clone(), a.idem_key.clone())];
        assert_eq!(at, &vec![a.index], "ack {a:?}: the WAL holds it at {at:?}");
    }
    for ((p, k), at) in &by_key {
        assert_eq!(
            at.len(),
            1,
            "idem key {p}/{k} is in the WAL {} times",
            at.len()
        );
    }
}

/// Waits until every region actor serves one consistent version of
/// `project` (at most [`PATIENCE`]), and returns it.
pub async fn state_eventually(node: &Node, project: &str) -> swoosh_actors::StateView {
    let t0 = Instant::now();
    loop {
        match node.state(project, &[]).await {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    t0.elapsed() < PATIENCE,
                    "state({project}) keeps failing: {e}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A store whose commits a test can hold, as a stalled disk would.
#[derive(Clone)]
pub struct Stalling {
    pub inner: LmdbStore,
    held: Arc<(Mutex<bool>, std::sync::Condvar)>,
    /// Commits waiting for [`Stalling::hold`]`(false)` now.
    parked: Arc<AtomicUsize>,
}

impl Stalling {
    pub fn new(inner: LmdbStore) -> Stalling {
        Stalling {
            inner,
            held: Default::default(),
            parked: Default::default(),
        }
    }

    /// Hold every commit from now on (`true`) or let them all go (`false`).
    pub fn hold(&self, held: bool) {
        let (m, c) = &*self.held;
        *m.lock().unwrap() = held;
        c.notify_all();
    }

    /// Hold every commit until the returned guard is dropped, also when the
    /// test panics: a commit parked for good would keep the runtime's
    /// blocking pool, and so the failing test, from ever finishing.
    pub fn hold_until_dropped(&self) -> Held {
        self.hold(true);
        Held(self.clone())
    }

    /// How many commits wait inside the store for the hold to end. The WAL
    /// writer takes the node's commit lock before it commits, so one parked
    /// commit means the writer is inside the disk with that lock held.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Acquire)
    }

    /// Wait until at least `n` commits are parked.
    pub async fn wait_parked(&self, n: usize) {
        let t0 = Instant::now();
        while self.parked() < n {
            assert!(
                t0.elapsed() < PATIENCE,
                "{} of {n} commits reached the stalled disk within {PATIENCE:?}",
                self.parked()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Commits of a [`Stalling`] store wait while this lives.
#[must_use = "the hold ends when the guard is dropped"]
pub struct Held(Stalling);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.hold(false);
    }
}

impl LogStore for Stalling {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn durability(&self) -> swoosh_storage::Durability {
        self.inner.durability()
    }
    fn commit(
        &mut self,
        batch: swoosh_storage::Batch,
    ) -> Result<swoosh_storage::CommitInfo, swoosh_storage::StoreError> {
        let (m, c) = &*self.held;
        self.parked.fetch_add(1, Ordering::AcqRel);
        let _g = c.wait_while(m.lock().unwrap(), |held| *held).unwrap();
        self.parked.fetch_sub(1, Ordering::AcqRel);
        self.inner.commit(batch)
    }
    fn get(
        &self,
        space: swoosh_storage::Space,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, swoosh_storage::StoreError> {
        self.inner.get(space, key)
    }
    fn scan(
        &self,
        space: swoosh_storage::Space,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, swoosh_storage::StoreError> {
        self.inner.scan(space, from, to, limit)
    }
    fn last(
        &self,
        space: swoosh_storage::Space,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>, swoosh_storage::StoreError> {
        self.inner.last(space)
    }
    fn count(&self, space: swoosh_storage::Space) -> Result<u64, swoosh_storage::StoreError> {
        self.inner.count(space)
    }
    fn sync(&mut self) -> Result<(), swoosh_storage::StoreError> {
        self.inner.sync()
    }
    fn overwrite_raw(
        &mut self,
        space: swoosh_storage::Space,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), swoosh_storage::StoreError> {
        self.inner.overwrite_raw(space, key, value)
    }
}

/// Submit the first step of `n` fresh projects (`p-<index>`), each at a
/// later HLC (so a snapshot's HLC names its record), checking each lands at
/// the next index and stepping `mirror` along; the proposals, in order.
pub async fn submit_fresh_projects(
    fx: &Fixture,
    node: &Node,
    mirror: &mut NodeState,
    n: usize,
) -> Vec<Proposal> {
    let driver = Driver::new(&fx.keys, 1);
    let mut out = vec![];
    for _ in 0..n {
        let project = format!("p-{}", mirror.index + 1);
        let now = fx.clock.0.fetch_add(1, Ordering::AcqRel) + 1;
        let Next::Propose(p) = driver.next(mirror, &project, now) else {
            panic!("{project}: the driver has a first step");
        };
        match node.submit((*p).clone()).await {
            SubmitResult::Accepted(ok) => assert_eq!(ok.index, mirror.index + 1),
            other => panic!("{project}: not accepted: {other:?}"),
        }
        let ctx = Ctx {
            now_ms: now,
            verify: Verify::Trusted,
            snapshot_every: 0,
        };
        swoosh_core::step(mirror, &p, &ctx);
        out.push(*p);
    }
    out
}
