use crate::bounded::{self, Bounded, Depth, SendError};
use crate::metrics::{ActorLabel, GuardLabel, KindLabel, Metrics, RegionLabel, TransitionLabel};
use ed25519_dalek::SigningKey;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use swoosh_core::guards::Verify;
use swoosh_core::reducer::{Ctx, Effect, OpEvent, Outcome, RejectKind, Rejection};
use swoosh_core::state::{Genesis, NodeState, ProjectState};
use swoosh_core::statechart::Region;
use swoosh_core::{Hash, Hlc, Proposal};
use swoosh_storage::index::{audit_indexes, rebuild_indexes};
use swoosh_storage::recovery::{recover_with, ProgressCell, RecoverOptions};
use swoosh_storage::store::LogStore;
use swoosh_storage::wal::{BatchLimits, LeaderEntry, WalWriter};

/// Proposals admitted but not yet answered; past it, `429`.
pub const INFLIGHT_PROPOSALS_MAX: usize = 4_096;
/// How often the attention actor refreshes its gauges and, when it learned
/// something, saves its memory, ms.
pub const ATTENTION_SAVE_EVERY_MS: u64 = 5_000;
/// Items `GET /attention` lists at most.
pub const ATTENTION_ITEMS_MAX: usize = 100;
/// How long a read waits for the region actors to agree on one version.
pub const STATE_READ_ATTEMPTS_MAX: usize = 20;
/// Attempts to restart the sequencer and WAL writer before giving up.
pub const RESTART_ATTEMPTS_MAX: u32 = 10;
/// Group commits that may fail in a row (each restarting the sequencer and
/// the WAL writer) before the node gives up: a store that recovers (reads
/// work) but refuses every write would otherwise restart the pair at every
/// batch, forever, and the process would never exit for its service
/// manager to start it again.
pub const COMMIT_FAILURES_MAX: u32 = 10;
/// How long a caller waits for its proposal to become durable.
pub const SUBMIT_TIMEOUT_MS: u64 = 30_000;

/// Wall time, handed to the reducer as the leader's clock.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;
impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock tests move by hand.
#[derive(Default)]
pub struct ManualClock(pub AtomicU64);
impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

pub struct NodeConfig {
    pub genesis: Genesis,
    /// The leader's key: signs decision records.
    pub leader_key: SigningKey,
    /// Snapshot every this many records (besides every REVERB); 0 = only REVERB.
    pub snapshot_every: u64,
    pub snapshot_keep: usize,
    pub wal_limits: BatchLimits,
    pub clock: Arc<dyn Clock>,
    /// Human-readable address of this node (for `503` replies on followers later).
    pub advertise: String,
    /// Where the attention scorer keeps its memory across restarts (e.g.
    /// `<data dir>/attention.cbor`); `None` keeps it in memory only.
    pub attention_file: Option<std::path::PathBuf>,
    /// Automatic compaction of the log while serving; `None`: the log grows
    /// until an operator runs `swoosh wal compact`.
    pub compaction: Option<CompactionPolicy>,
}

/// Most records one automatic compaction cuts (in one snapshotter turn, which
/// writes no snapshot meanwhile): the first compaction of a long log is
/// spread over several snapshots.
pub const COMPACT_ONLINE_RECORDS_MAX: u64 = 100_000;
/// Records per step while serving: each step's commit (the cut, a snapshot,
/// an fsync) holds the commit lock, so WAL group commits wait for it.
pub const COMPACT_ONLINE_STEP_RECORDS: u64 = 5_000;

/// Fewest records automatic compaction keeps: the leader's replication tail
/// and its state copy read records a little behind the log's end, and a
/// follower that lags less than this catches up record by record.
pub const COMPACT_KEEP_RECORDS_MIN: u64 = 10_000;

/// Automatic compaction (`swoosh serve --archive-dir D --compact-keep-records
/// N`): after the snapshot at S is written, when S − `keep_records` is at
/// least `min_records` past the WAL base, the snapshotter
/// archives them to a new file in `archive_dir` and cuts them
/// (`swoosh_storage::compact_with`, each step's commit under the node's
/// commit lock). It shares the snapshotter's turn, so it never runs beside a
/// snapshot write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Records kept before the newest snapshot (the records after it are
    /// kept too).
    pub keep_records: u64,
    /// Records that must have accumulated past `keep_records` before a
    /// compaction runs (so it runs in chunks, not after every snapshot).
    pub min_records: u64,
    /// Where archives go: `wal-<first>-<last>.cbor` (20-digit indexes, so
    /// names sort in log order).
    pub archive_dir: std::path::PathBuf,
    /// Delete the cut records' decision records too.
    pub drop_decisions: bool,
}

impl CompactionPolicy {
    /// The record to compact through after the snapshot at `snapshot` was
    /// written, if enough have accumulated since the base: `keep_records`
    /// before that snapshot stay (and every record after it), so the cut
    /// never reaches a snapshot a recovery may have started from (e.g. a
    /// region rebuilding its view) and depends on nothing but the snapshot's
    /// index; at most [`COMPACT_ONLINE_RECORDS_MAX`] at a time.
    pub fn through(&self, base: u64, snapshot: u64) -> Option<u64> {
        let through = snapshot
            .checked_sub(self.keep_records)?
            .min(base.saturating_add(COMPACT_ONLINE_RECORDS_MAX));
        // A threshold above the per-turn cap could never be reached.
        let min = self.min_records.clamp(1, COMPACT_ONLINE_RECORDS_MAX);
        (through >= base.saturating_add(min)).then_some(through)
    }

    /// A new archive file for records `first..=through` (a suffix when an
    /// earlier, interrupted run left one of that name: archives are never
    /// overwritten).
    pub fn archive_path(&self, first: u64, through: u64) -> std::path::PathBuf {
        let stem = format!("wal-{first:020}-{through:020}");
        let mut p = self.archive_dir.join(format!("{stem}.cbor"));
        let mut n = 1u32;
        while p.exists() {
            p = self.archive_dir.join(format!("{stem}-{n}.cbor"));
            n += 1;
        }
        p
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the store does not recover: {0}; run `swoosh wal verify --dir <dir>` to locate the damage"
    )]
    Recovery(String),
    #[error("the WAL writer cannot open the store: {0}")]
    Wal(String),
    #[error("an actor failed to start: {0}")]
    Spawn(String),
    #[error("the node's key is not the genesis leader {0}; start the node with the leader's key")]
    NotLeader(String),
}

/// Why the node stopped restarting an actor and serves no more proposals.
/// Staying up "recovering" would hide the failure from the service manager,
/// so the process is expected to exit non-zero (see
/// [`NodeHandle::given_up`]) and be started again, which recovers from
/// storage from scratch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the node gave up restarting its {actor} after {attempts} attempts: {error}; it serves no more proposals: fix what that error names (`swoosh wal verify --dir <dir>` checks the log) and start it again")]
pub struct GaveUp {
    /// The actor label (`sequencer`, `wal_writer`, `region_boot`, …).
    pub actor: String,
    pub attempts: u32,
    /// The last attempt's error.
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubmitOk {
    pub index: u64,
    pub transition: String,
    pub state_post_hash: Hash,
    pub decision: Hash,
    /// True when this was a repeat of an already accepted proposal.
    pub duplicate: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SubmitResult {
    Accepted(SubmitOk),
    Rejected(Rejection),
    /// Backpressure: a queue is full.
    Busy {
        retry_after_ms: u64,
        reason: String,
    },
    /// The node cannot take proposals now (restarting, shutting down, WAL failure).
    Unavailable {
        reason: String,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct StateView {
    pub project: String,
    pub index: u64,
    pub hash: Hash,
    pub projection: BTreeMap<String, Value>,
}

/// A follower as the leader's replication transport sees it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FollowerHealth {
    pub name: String,
    pub key: String,
    pub connected: bool,
    /// From the follower's last status report (None before the first one).
    pub applied_index: Option<u64>,
    pub lag_records: Option<u64>,
    pub last_report_ms_ago: Option<u64>,
    pub halted: bool,
}

/// Where the health view reads the followers from: set by whoever runs the
/// replication transport next to this node (the node itself knows no peers).
pub type ReplicationSource = Arc<dyn Fn() -> Vec<FollowerHealth> + Send + Sync>;

/// The replication transport's own counters, each `(event, total since the
/// transport started)`; exported as `swoosh_leader_replication_events_total`.
pub type ReplicationCountersSource = Arc<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

/// Raise each exported counter to the transport's total. A total below the
/// exported value (a transport restarted inside this process) leaves it: a
/// counter never goes down.
fn export_replication_counters(m: &Metrics, totals: &[(&'static str, u64)]) {
    for (event, total) in totals {
        let c = m
            .replication_events_total
            .get_or_create(&crate::metrics::ReplicationEventLabel {
                event: (*event).to_string(),
            });
        let now = c.get();
        if *total > now {
            c.inc_by(total - now);
        }
    }
}

/// The source the transport installed, if any (cloned out of its lock).
fn installed<T: Clone>(r: &RwLock<Option<T>>) -> Option<T> {
    r.read().expect("replication lock").clone()
}

fn source_is_set(r: &RwLock<Option<ReplicationSource>>) -> bool {
    r.read().expect("replication lock").is_some()
}

/// One line an operator reads first: who replicates and how far behind.
fn consensus_line(
    genesis: &swoosh_core::state::Genesis,
    replicating: bool,
    followers: &[FollowerHealth],
) -> String {
    if !replicating {
        return if genesis.followers.is_empty() {
            "single-writer leader; no followers in genesis (single-node cluster)".into()
        } else {
            format!(
                "single-writer leader; replication is OFF: genesis lists {} followers but this node runs without its p2p swarm (start it with `swoosh serve --p2p ADDR` or `swoosh p2p leader`)",
                genesis.followers.len()
            )
        };
    }
    let live: Vec<&FollowerHealth> = followers
        .iter()
        .filter(|f| {
            f.connected
                && !f.halted
                && f.last_report_ms_ago
                    .is_some_and(|ms| ms <= FOLLOWER_REPORT_STALE_MS)
        })
        .collect();
    let halted = followers.iter().filter(|f| f.halted).count();
    let max_lag = live.iter().filter_map(|f| f.lag_records).max().unwrap_or(0);
    let mut line = format!(
        "single-writer leader; {}/{} followers following, max lag {max_lag} records",
        live.len(),
        followers.len()
    );
    if halted > 0 {
        line.push_str(&format!(
            "; ALARM: {halted} halted (divergence or write failure)"
        ));
    }
    line
}

/// Set the `swoosh_replica_*` gauges from the transport's view of the
/// followers. Lag and report age are removed, not zeroed, while unknown: a
/// zero would read as "caught up".
fn export_replicas(m: &Metrics, followers: &[FollowerHealth]) {
    for f in followers {
        let l = crate::metrics::FollowerLabel {
            follower: f.name.clone(),
        };
        m.replica_connected
            .get_or_create(&l)
            .set(i64::from(f.connected));
        m.replica_halted.get_or_create(&l).set(i64::from(f.halted));
        match f.lag_records {
            Some(n) => {
                m.replica_lag_records
                    .get_or_create(&l)
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            None => {
                m.replica_lag_records.remove(&l);
            }
        }
        match f.last_report_ms_ago {
            Some(ms) => {
                m.replica_report_age_seconds
                    .get_or_create(&l)
                    .set(ms as f64 / 1000.0);
            }
            None => {
                m.replica_report_age_seconds.remove(&l);
            }
        }
    }
}

/// A follower that has not reported for this long counts as not following.
pub const FOLLOWER_REPORT_STALE_MS: u64 = 5_000;

#[derive(Clone, Debug, Serialize)]
pub struct HealthView {
    pub status: String,
    pub role: String,
    pub consensus: String,
    pub index: u64,
    pub root_hash: Option<Hash>,
    #[serde(rename = "lastSnapshotHLC")]
    pub last_snapshot_hlc: Option<Hlc>,
    pub last_snapshot_index: Option<u64>,
    #[serde(rename = "walLag")]
    pub wal_lag: u64,
    pub inflight: usize,
    pub restarts: u64,
    pub genesis_hash: Hash,
    pub cluster_id: String,
    /// The followers in genesis with their reported position (empty when
    /// replication is not running).
    pub followers: Vec<FollowerHealth>,
    /// While `status` is `recovering`: how far the recovery is.
    pub recovery: Option<RecoveryView>,
}

/// The progress of a recovery in [`HealthView`].
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RecoveryView {
    /// `starting` (nothing reported yet), `snapshots`, `replay` or `reindex`.
    pub phase: &'static str,
    pub done: u64,
    pub total: u64,
    /// Since this recovery began.
    pub seconds: f64,
}

impl RecoveryView {
    pub fn of(cell: &ProgressCell) -> RecoveryView {
        let p = cell.get();
        RecoveryView {
            phase: p.map_or("starting", |p| p.phase.name()),
            done: p.map_or(0, |p| p.done),
            total: p.map_or(0, |p| p.total),
            seconds: cell.elapsed().as_secs_f64(),
        }
    }
}

/// What `GET /attention` shows: the scorer's digest at the time of asking.
#[derive(Clone, Debug, Serialize)]
pub struct AttentionView {
    /// Operational events received since this node started, by kind.
    pub counts: BTreeMap<String, u64>,
    /// Surfaced items (band >= the requested one) and fingerprints per band.
    pub digest: swoosh_core::attention::Digest,
    /// The memory file, if the memory is persisted.
    pub memory_file: Option<String>,
    /// Wall time of the last successful save of the memory, ms.
    pub saved_at_ms: Option<u64>,
    /// What happened to the memory file at start (loaded, fresh, set aside).
    pub memory_note: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActorKind {
    Sequencer,
    Wal,
    Region(Region),
    Snapshotter,
    Attention,
}

impl ActorKind {
    fn label(self) -> String {
        match self {
            ActorKind::Sequencer => "sequencer".into(),
            ActorKind::Wal => "wal_writer".into(),
            ActorKind::Region(r) => format!("region_{}", r.name().to_lowercase()),
            ActorKind::Snapshotter => "snapshotter".into(),
            ActorKind::Attention => "attention".into(),
        }
    }
}

struct Refs {
    seq: Option<Bounded<SeqMsg>>,
    wal: Option<Bounded<WalMsg>>,
    regions: BTreeMap<Region, Bounded<RegionMsg>>,
    snap: Option<Bounded<SnapMsg>>,
    attention: Option<Bounded<AttnMsg>>,
}

struct Shared<S> {
    cfg: NodeConfig,
    genesis_hash: Hash,
    store: S,
    metrics: Metrics,
    refs: RwLock<Refs>,
    ready: AtomicBool,
    stopping: AtomicBool,
    /// Client proposals admitted and not yet answered: each holds an
    /// [`InflightPermit`], which travels with it to the sequencer and its
    /// waiter, so a caller that goes away (a dropped connection, its own
    /// timeout) does not free its slot while the node still works on it.
    inflight: Arc<AtomicUsize>,
    inflight_max: AtomicUsize,
    /// Each licensed, not terminated project's license, kept by the
    /// sequencer; `/metrics` exports the earliest expiry still in force.
    licenses: Mutex<Licenses>,
    durable_index: AtomicU64,
    /// The durable state's project hashes; its root is computed when read.
    durable_root: Mutex<DurableRoot>,
    last_snapshot: Mutex<Option<(u64, Option<Hlc>)>>,
    /// Restart attempts of any actor (a retried pair restart counts each).
    restarts: AtomicU64,
    /// Set once when a restart is abandoned; never cleared.
    gave_up: tokio::sync::watch::Sender<Option<GaveUp>>,
    /// A region whose update was dropped on a full mailbox: its view is
    /// rebuilt from storage before it handles its next message.
    regions_behind: BTreeMap<Region, AtomicBool>,
    /// A snapshot request was dropped on the snapshotter's full mailbox:
    /// the sequencer asks again at the next record the mailbox has room
    /// for, instead of a whole interval later.
    snapshot_owed: AtomicBool,
    depths: Depths,
    /// Held for the whole of every WAL commit and of every recovery; holds
    /// the current writer generation. A commit task of a killed writer keeps
    /// running on its blocking thread, so it checks its generation under
    /// this lock and does nothing once a restart has begun.
    commit_lock: Arc<Mutex<u64>>,
    replication: RwLock<Option<ReplicationSource>>,
    replication_counters: RwLock<Option<ReplicationCountersSource>>,
    /// Where recovery reports its progress (every pair start, not only the
    /// first; read while the process answers `/health` before it serves).
    progress: Arc<ProgressCell>,
    /// Group commits failed in a row (0 after any success).
    commit_failures: std::sync::atomic::AtomicU32,
    /// Why the store refuses writes for good (full, or `COMMIT_FAILURES_MAX`
    /// failures in a row): the supervisor gives up instead of restarting.
    store_fatal: Mutex<Option<String>>,
}

impl<S> Shared<S> {
    /// The one place readiness changes, so `swoosh_ready` always says what
    /// `submit` does. A node that gave up never becomes ready again.
    fn set_ready(&self, ready: bool) {
        let ready = ready && self.gave_up.borrow().is_none();
        self.ready.store(ready, Ordering::Release);
        let serving = ready && !self.stopping.load(Ordering::Acquire);
        self.metrics.ready.set(i64::from(serving));
    }

    fn count_restart(&self, kind: ActorKind) {
        self.restarts.fetch_add(1, Ordering::AcqRel);
        self.metrics
            .actor_restarts_total
            .get_or_create(&ActorLabel {
                actor: kind.label(),
            })
            .inc();
    }

    fn give_up(&self, g: GaveUp) {
        tracing::error!(actor = %g.actor, attempts = g.attempts, error = %g.error, "the node gives up restarting and serves no more proposals; the process should exit so its service manager starts it again: run `swoosh wal verify` on its directory if that fails too");
        self.gave_up.send_replace(Some(g));
        self.set_ready(false);
        // Failed, not recovering: no recovery runs any more.
        self.metrics.recovery_in_progress.set(0);
    }
}

struct Depths {
    seq: Depth,
    wal: Depth,
    regions: BTreeMap<Region, Depth>,
    snap: Depth,
    attention: Depth,
}

/// The handle every API surface uses. Cheap to clone.
pub struct NodeHandle<S: LogStore + Clone + Send + Sync + 'static> {
    shared: Arc<Shared<S>>,
    supervisor: ActorRef<SupMsg>,
}

impl<S: LogStore + Clone + Send + Sync + 'static> Clone for NodeHandle<S> {
    fn clone(&self) -> Self {
        NodeHandle {
            shared: self.shared.clone(),
            supervisor: self.supervisor.clone(),
        }
    }
}

impl<S: LogStore + Clone + Send + Sync + 'static> NodeHandle<S> {
    /// Recover from `store` and start the actor tree.
    pub async fn start(store: S, cfg: NodeConfig) -> Result<NodeHandle<S>, StartError> {
        Self::start_observed(store, cfg, Arc::new(ProgressCell::new())).await
    }

    /// [`Self::start`], reporting the recovery's progress into `progress`
    /// (read by whatever answers `/health` while the node recovers).
    pub async fn start_observed(
        store: S,
        cfg: NodeConfig,
        progress: Arc<ProgressCell>,
    ) -> Result<NodeHandle<S>, StartError> {
        let leader = swoosh_core::SignerId::from_signing_key(&cfg.leader_key);
        if leader != cfg.genesis.leader {
            return Err(StartError::NotLeader(cfg.genesis.leader.to_string()));
        }
        let genesis_hash = cfg
            .genesis
            .hash()
            .map_err(|e| StartError::Recovery(e.to_string()))?;
        let depths = Depths {
            seq: Depth::new("sequencer", bounded::SEQUENCER_MAILBOX_MAX),
            wal: Depth::new("wal writer", bounded::WAL_MAILBOX_MAX),
            regions: Region::ALL
                .iter()
                .map(|r| (*r, Depth::new("region", bounded::REGION_MAILBOX_MAX)))
                .collect(),
            snap: Depth::new("snapshotter", bounded::SNAPSHOT_MAILBOX_MAX),
            attention: Depth::new("attention", bounded::ATTENTION_MAILBOX_MAX),
        };
        let shared = Arc::new(Shared {
            cfg,
            genesis_hash,
            store,
            metrics: Metrics::new(),
            refs: RwLock::new(Refs {
                seq: None,
                wal: None,
                regions: BTreeMap::new(),
                snap: None,
                attention: None,
            }),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            inflight: Arc::new(AtomicUsize::new(0)),
            inflight_max: AtomicUsize::new(INFLIGHT_PROPOSALS_MAX),
            licenses: Mutex::new(Licenses::default()),
            durable_index: AtomicU64::new(0),
            durable_root: Mutex::new(DurableRoot::default()),
            last_snapshot: Mutex::new(None),
            restarts: AtomicU64::new(0),
            gave_up: tokio::sync::watch::Sender::new(None),
            regions_behind: Region::ALL
                .iter()
                .map(|r| (*r, AtomicBool::new(false)))
                .collect(),
            snapshot_owed: AtomicBool::new(false),
            depths,
            commit_lock: Arc::new(Mutex::new(0)),
            replication: RwLock::new(None),
            replication_counters: RwLock::new(None),
            progress,
            commit_failures: Default::default(),
            store_fatal: Mutex::new(None),
        });
        shared
            .metrics
            .start_time_seconds
            .set(i64::try_from(shared.progress.started_unix_seconds()).unwrap_or(i64::MAX));
        let (supervisor, _) = Actor::spawn(
            None,
            Supervisor {
                shared: shared.clone(),
            },
            (),
        )
        .await
        .map_err(|e| match e {
            // ractor words every startup error as "Actor panicked during
            // startup"; most are errors the actor returned (a damaged store),
            // not panics, and the inner error says which.
            ractor::SpawnErr::StartupFailed(inner) => StartError::Spawn(inner.to_string()),
            other => StartError::Spawn(other.to_string()),
        })?;
        // The supervisor's pre_start recovered and spawned everything.
        if !shared.ready.load(Ordering::Acquire) {
            return Err(StartError::Spawn("the actor tree did not come up".into()));
        }
        Ok(NodeHandle { shared, supervisor })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn genesis(&self) -> &Genesis {
        &self.shared.cfg.genesis
    }

    /// Submit a proposal; resolves once it is durable (or refused).
    pub async fn submit(&self, p: Proposal) -> SubmitResult {
        let sh = &self.shared;
        if let Some(g) = sh.gave_up.borrow().clone() {
            return SubmitResult::Unavailable {
                reason: g.to_string(),
            };
        }
        if sh.stopping.load(Ordering::Acquire) {
            return SubmitResult::Unavailable {
                reason: "the node is shutting down".into(),
            };
        }
        if !sh.ready.load(Ordering::Acquire) {
            return SubmitResult::Unavailable {
                reason: "the node is recovering from an actor restart; retry shortly".into(),
            };
        }
        let prev = sh.inflight.fetch_add(1, Ordering::AcqRel);
        let permit = InflightPermit(sh.inflight.clone());
        let max = sh.inflight_max.load(Ordering::Acquire);
        if prev >= max {
            sh.metrics.backpressure_total.inc();
            sh.metrics
                .retry_count
                .get_or_create(&TransitionLabel::checked(&p.transition))
                .inc();
            return SubmitResult::Busy {
                retry_after_ms: 50,
                reason: if max == 0 {
                    "admission is paused by the operator (limit 0); retry later".into()
                } else {
                    format!("{max} proposals are in flight")
                },
            };
        }
        let Some(seq) = sh.refs.read().expect("refs lock").seq.clone() else {
            return SubmitResult::Unavailable {
                reason: "the sequencer is restarting; retry shortly".into(),
            };
        };
        // The proposal's own signature depends on nothing but the proposal,
        // so it is checked here, on the thread that received it, in parallel
        // with every other submitter; the single-writer sequencer then skips
        // it (it was ~17 % of the node's CPU, all of it on the sequencer). A
        // proposal that fails goes to the sequencer unverified, which checks
        // it in its usual order, so its refusal is exactly what it was.
        let signature_checked = p.verify_signature().is_ok();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Before any check of the proposal: only a known name may be a label.
        let label = TransitionLabel::checked(&p.transition);
        match seq.try_send(SeqMsg::Submit {
            proposal: Box::new(p),
            signature_checked,
            received: Instant::now(),
            reply: tx,
            quarantine_attempt: 0,
            permit: Some(permit),
        }) {
            Ok(()) => {}
            Err(SendError::Full { .. }) => {
                sh.metrics.backpressure_total.inc();
                sh.metrics.retry_count.get_or_create(&label).inc();
                return SubmitResult::Busy {
                    retry_after_ms: 20,
                    reason: "the sequencer queue is full".into(),
                };
            }
            Err(e) => {
                return SubmitResult::Unavailable {
                    reason: e.to_string(),
                }
            }
        }
        match tokio::time::timeout(Duration::from_millis(SUBMIT_TIMEOUT_MS), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => SubmitResult::Unavailable {
                reason: "the sequencer or WAL writer restarted before this proposal was acknowledged: it may or may not be durable; resubmit the same proposal (it is idempotent)".into(),
            },
            Err(_) => SubmitResult::Unavailable { reason: format!("no durable outcome within {SUBMIT_TIMEOUT_MS} ms; resubmit the same proposal (it is idempotent)") },
        }
    }

    /// Read a project's state: its HEAD hash and the requested sections,
    /// all from one durable version.
    pub async fn state(&self, project: &str, projection: &[Region]) -> Result<StateView, String> {
        let regions: Vec<Region> = if projection.is_empty() {
            Region::ALL.to_vec()
        } else {
            projection.to_vec()
        };
        for _ in 0..STATE_READ_ATTEMPTS_MAX {
            let mut got: Vec<(Region, RegionAnswer)> = vec![];
            for r in &regions {
                let Some(actor) = self
                    .shared
                    .refs
                    .read()
                    .expect("refs lock")
                    .regions
                    .get(r)
                    .cloned()
                else {
                    return Err(format!(
                        "the {} region actor is restarting; retry",
                        r.name()
                    ));
                };
                let (tx, rx) = tokio::sync::oneshot::channel();
                actor
                    .try_send(RegionMsg::Get {
                        project: project.to_string(),
                        reply: tx,
                    })
                    .map_err(|e| e.to_string())?;
                let a = tokio::time::timeout(Duration::from_secs(5), rx)
                    .await
                    .map_err(|_| format!("the {} region actor did not answer", r.name()))?
                    .map_err(|_| format!("the {} region actor restarted; retry", r.name()))?;
                got.push((*r, a));
            }
            // A project's hash names one version (the document carries its
            // `applied` count); region views may date the same version by
            // different indexes (a rehydrated view dates it by the index it
            // loaded at), so agreement is on the hash, and the newest date wins.
            let first = got.first().map(|(_, a)| a.hash);
            if got.iter().all(|(_, a)| Some(a.hash) == first) {
                let index = got.iter().map(|(_, a)| a.index).max().unwrap_or(0);
                let hash = first.unwrap_or(Hash::ZERO);
                let (index, hash) = if index == 0 && hash == Hash::ZERO {
                    let initial = ProjectState::initial(
                        &self.shared.cfg.genesis,
                        self.shared.genesis_hash,
                        project,
                    );
                    (0, initial.hash())
                } else {
                    (index, hash)
                };
                let mut projection = BTreeMap::new();
                for (r, a) in got {
                    for (k, v) in a.sections {
                        projection.insert(k, v);
                    }
                    let _ = r;
                }
                return Ok(StateView {
                    project: project.to_string(),
                    index,
                    hash,
                    projection,
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Err("the state changed too fast to read one consistent version; retry".into())
    }

    /// The metrics in OpenMetrics text, with the leader's view of its
    /// followers refreshed from the replication transport first.
    pub fn metrics_text(&self) -> String {
        let now = self.shared.cfg.clock.now_ms();
        let earliest = self
            .shared
            .licenses
            .lock()
            .expect("licenses lock")
            .earliest_in_force(now);
        self.shared.metrics.license_expiry_seconds.set(earliest);
        if let Some(u) = self.shared.store.usage() {
            let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            let m = &self.shared.metrics;
            m.store_used_bytes.set(gauge(u.used_bytes));
            m.store_capacity_bytes.set(gauge(u.capacity_bytes));
        }
        if let Ok(b) = swoosh_storage::wal_base(&self.shared.store) {
            let base = b.map_or(0, |b| b.index);
            self.shared
                .metrics
                .wal_base_index
                .set(i64::try_from(base).unwrap_or(i64::MAX));
        }
        if let Some(f) = installed(&self.shared.replication) {
            export_replicas(&self.shared.metrics, &f());
        }
        if let Some(f) = installed(&self.shared.replication_counters) {
            export_replication_counters(&self.shared.metrics, &f());
        }
        self.shared.metrics.encode()
    }

    /// Let the health view report followers from the replication transport.
    pub fn set_replication(&self, source: ReplicationSource) {
        *self.shared.replication.write().expect("replication lock") = Some(source);
    }

    /// Let `/metrics` export the replication transport's counters.
    pub fn set_replication_counters(&self, source: ReplicationCountersSource) {
        *self
            .shared
            .replication_counters
            .write()
            .expect("replication lock") = Some(source);
    }

    pub fn health(&self) -> HealthView {
        let sh = &self.shared;
        let source = installed(&sh.replication);
        let followers = source.map(|f| f()).unwrap_or_default();
        let consensus = consensus_line(&sh.cfg.genesis, source_is_set(&sh.replication), &followers);
        let durable = sh.durable_index.load(Ordering::Acquire);
        let snap = *sh.last_snapshot.lock().expect("snapshot lock");
        let ready = sh.ready.load(Ordering::Acquire);
        let gave_up = sh.gave_up.borrow().is_some();
        let status = if gave_up {
            "failed"
        } else if sh.stopping.load(Ordering::Acquire) {
            "stopping"
        } else if ready {
            "ok"
        } else {
            "recovering"
        };
        HealthView {
            status: status.into(),
            recovery: (status == "recovering").then(|| RecoveryView::of(&sh.progress)),
            role: "leader".into(),
            consensus,
            index: durable,
            root_hash: sh
                .durable_root
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .root(),
            last_snapshot_hlc: snap.and_then(|s| s.1),
            last_snapshot_index: snap.map(|s| s.0),
            wal_lag: sh.metrics.wal_lag_records.get().max(0) as u64,
            inflight: sh.inflight.load(Ordering::Acquire),
            restarts: sh.restarts.load(Ordering::Acquire),
            genesis_hash: sh.genesis_hash,
            cluster_id: sh.cfg.genesis.cluster_id.clone(),
            followers,
        }
    }

    /// A decision record by its content hash, from the store.
    pub fn decision(
        &self,
        hash: &Hash,
    ) -> Result<Option<swoosh_storage::wal::DecisionDoc>, String> {
        swoosh_storage::get_decision(&self.shared.store, hash).map_err(|e| e.to_string())
    }

    /// The attention digest: items of `band_min` and above, most important first.
    pub async fn attention(
        &self,
        band_min: swoosh_core::attention::Band,
    ) -> Result<AttentionView, String> {
        let Some(a) = self
            .shared
            .refs
            .read()
            .expect("refs lock")
            .attention
            .clone()
        else {
            return Err("the attention actor is restarting; retry".into());
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        a.try_send(AttnMsg::Get(band_min, tx))
            .map_err(|e| e.to_string())?;
        rx.await
            .map_err(|_| "the attention actor restarted; retry".to_string())
    }

    /// Feed events observed outside the reducer (the replication leader's
    /// view of its followers: lag, gaps, partitions, forged messages) to the
    /// attention scorer. Observability only: a full mailbox or a restarting
    /// actor drops them (counted as `dropped`) rather than wait; `false` then.
    pub fn observe(&self, events: Vec<swoosh_core::attention::Event>) -> bool {
        if events.is_empty() {
            return true;
        }
        let sh = &self.shared;
        for e in &events {
            sh.metrics
                .attention_events_total
                .get_or_create(&KindLabel {
                    kind: e.kind.name().to_string(),
                })
                .inc();
        }
        let sent = sh
            .refs
            .read()
            .expect("refs lock")
            .attention
            .clone()
            .is_some_and(|a| a.try_send(AttnMsg::Observe(events)).is_ok());
        if !sent {
            sh.metrics
                .attention_events_total
                .get_or_create(&KindLabel {
                    kind: "dropped".into(),
                })
                .inc();
        }
        sent
    }

    /// Kill one actor (fault injection for tests and chaos): the supervisor
    /// restarts it from committed state.
    pub fn kill(&self, kind: ActorKind) {
        let refs = self.shared.refs.read().expect("refs lock");
        let cell = match kind {
            ActorKind::Sequencer => refs.seq.as_ref().map(|b| b.actor.get_cell()),
            ActorKind::Wal => refs.wal.as_ref().map(|b| b.actor.get_cell()),
            ActorKind::Region(r) => refs.regions.get(&r).map(|b| b.actor.get_cell()),
            ActorKind::Snapshotter => refs.snap.as_ref().map(|b| b.actor.get_cell()),
            ActorKind::Attention => refs.attention.as_ref().map(|b| b.actor.get_cell()),
        };
        if let Some(c) = cell {
            c.kill();
        }
    }

    /// Lower (or restore) the admission limit, e.g. to shed load; at most
    /// [`INFLIGHT_PROPOSALS_MAX`]. `0` pauses admission: every submission is
    /// answered `Busy` (HTTP 429 with `Retry-After`) until the limit is raised.
    pub fn set_inflight_max(&self, max: usize) {
        self.shared
            .inflight_max
            .store(max.min(INFLIGHT_PROPOSALS_MAX), Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Acquire)
    }

    /// Why the node gave up restarting, if it did.
    pub fn gave_up(&self) -> Option<GaveUp> {
        self.shared.gave_up.borrow().clone()
    }

    /// Whether [`NodeHandle::shutdown`] has begun (what `health()` reports
    /// as `stopping`, without assembling the rest of the health view).
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Acquire)
    }

    /// Resolves once the node gives up restarting an actor (never, while it
    /// recovers). The process running it should then exit non-zero: the
    /// node serves nothing more, and only a fresh start recovers it.
    pub async fn given_up(&self) -> GaveUp {
        let mut rx = self.shared.gave_up.subscribe();
        loop {
            if let Some(g) = rx.borrow_and_update().clone() {
                return g;
            }
            if rx.changed().await.is_err() {
                // Unreachable while `self` holds the sender; never resolve.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Stop taking proposals, let every admitted one become durable, then
    /// stop the actor tree.
    pub async fn shutdown(&self) {
        let sh = &self.shared;
        sh.stopping.store(true, Ordering::Release);
        sh.metrics.ready.set(0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while sh.inflight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Stop every child and wait for it, so that when this returns no
        // actor holds the store any more (the directory can be reopened).
        let cells: Vec<ractor::ActorCell> = {
            let refs = sh.refs.read().expect("refs lock");
            let mut v: Vec<ractor::ActorCell> = vec![];
            v.extend(refs.seq.as_ref().map(|b| b.actor.get_cell()));
            v.extend(refs.wal.as_ref().map(|b| b.actor.get_cell()));
            v.extend(refs.regions.values().map(|b| b.actor.get_cell()));
            v.extend(refs.snap.as_ref().map(|b| b.actor.get_cell()));
            v.extend(refs.attention.as_ref().map(|b| b.actor.get_cell()));
            v
        };
        for c in cells {
            let _ = c
                .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
                .await;
        }
        {
            let mut refs = sh.refs.write().expect("refs lock");
            refs.seq = None;
            refs.wal = None;
            refs.regions.clear();
            refs.snap = None;
            refs.attention = None;
        }
        let _ = self
            .supervisor
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
            .await;
    }

    pub fn store(&self) -> &S {
        &self.shared.store
    }
}

/// One admitted client proposal's slot in [`Shared::inflight`], freed when
/// dropped: with the proposal's message if it never reaches the sequencer,
/// else once the sequencer has answered it (a refusal at once; an accepted
/// or duplicate one when durable, with its waiter).
struct InflightPermit(Arc<AtomicUsize>);
impl Drop for InflightPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

// ---------------------------------------------------------------- sequencer

enum SeqMsg {
    Submit {
        proposal: Box<Proposal>,
        /// Set only by `NodeHandle::submit`, after `verify_signature` of
        /// exactly this proposal succeeded.
        signature_checked: bool,
        received: Instant,
        reply: tokio::sync::oneshot::Sender<SubmitResult>,
        /// 0 for a client's proposal; n for the leader's own n-th attempt to
        /// quarantine a project whose findings breached policy.
        quarantine_attempt: u8,
        /// A client proposal's admission slot (none for the leader's own).
        permit: Option<InflightPermit>,
    },
    Durable {
        up_to: u64,
    },
}

struct Waiter {
    index: u64,
    reply: Option<tokio::sync::oneshot::Sender<SubmitResult>>,
    ok: SubmitOk,
    received: Instant,
    /// For accepted records: what the read model and observers need.
    applied: Option<Box<Applied>>,
    /// Held until the caller is answered.
    _permit: Option<InflightPermit>,
}

struct Applied {
    project: String,
    pre_hash: Hash,
    hlc: Hlc,
    window_id: String,
    state: Arc<ProjectState>,
    advanced: Vec<Region>,
    events: Vec<OpEvent>,
    snapshot: Option<Box<NodeState>>,
}

/// The root hash of the durable state, kept as its project hashes. The root
/// is a Merkle tree over every project, so computing it for each transition
/// cost the single-writer sequencer O(projects) hashes per transition; this
/// keeps one map update per transition and computes the root when `/health`
/// asks (once per change).
#[derive(Default)]
struct DurableRoot {
    genesis_hash: Option<Hash>,
    projects: BTreeMap<String, Hash>,
    root: Option<Hash>,
}

impl DurableRoot {
    fn reset(&mut self, node: &NodeState) {
        self.genesis_hash = Some(node.genesis_hash);
        self.projects = node
            .projects
            .iter()
            .map(|(k, e)| (k.clone(), e.hash))
            .collect();
        self.root = None;
    }
    fn set(&mut self, project: &str, hash: Hash) {
        match self.projects.get_mut(project) {
            Some(h) => *h = hash,
            None => {
                self.projects.insert(project.to_string(), hash);
            }
        }
        self.root = None;
    }
    fn root(&mut self) -> Option<Hash> {
        let g = self.genesis_hash?;
        Some(*self.root.get_or_insert_with(|| {
            swoosh_core::state::root_hash(g, self.projects.iter().map(|(k, h)| (k.as_str(), *h)))
        }))
    }
}

struct Sequencer<S> {
    shared: Arc<Shared<S>>,
}

struct SeqState {
    node: NodeState,
    waiters: VecDeque<Waiter>,
    durable: u64,
    /// Idempotency entries of accepted records not yet durable: the window
    /// may evict them before the store holds them.
    undurable: crate::undurable::Undurable,
    last_snapshot_index: u64,
    /// Projects with a quarantine of a policy breach the leader proposed and
    /// that has not landed or given up yet: more breaching proposals queued
    /// behind the first do not each sign another one. At most
    /// [`QUARANTINES_PENDING_MAX`].
    quarantines_pending: std::collections::BTreeSet<String>,
}

/// Licenses by project: `(expires_at wall ms, grace ms)`.
#[derive(Default)]
struct Licenses(std::collections::BTreeMap<String, (u64, u64)>);

impl Licenses {
    fn of(st: &ProjectState) -> Option<(u64, u64)> {
        if st.meta.phase == "TERMINATED" {
            return None;
        }
        st.boot
            .license
            .as_ref()
            .map(|l| (l.expires_at.wall_ms, l.grace_ms))
    }

    fn from_node(node: &NodeState) -> Licenses {
        Licenses(
            node.projects
                .iter()
                .filter_map(|(id, e)| Some((id.clone(), Self::of(&e.state)?)))
                .collect(),
        )
    }

    /// Track `project` after a transition.
    fn update(&mut self, project: &str, st: &ProjectState) {
        let now = Self::of(st);
        if self.0.get(project).copied() == now {
            return;
        }
        match now {
            Some(l) => self.0.insert(project.to_string(), l),
            None => self.0.remove(project),
        };
    }

    /// The earliest expiry (Unix seconds) among licenses whose grace has not
    /// ended at `now_ms`; 0 when there is none. A project past its grace
    /// takes only Boot_LicenseRefresh (its refusals say so): left in, one
    /// abandoned project would pin the gauge, and the alert on it, for good.
    fn earliest_in_force(&self, now_ms: u64) -> i64 {
        let ms = self
            .0
            .values()
            .filter(|(exp, grace)| exp.saturating_add(*grace) > now_ms)
            .map(|(exp, _)| *exp)
            .min()
            .map_or(0, |ms| ms / 1000);
        i64::try_from(ms).unwrap_or(i64::MAX)
    }
}

fn section_values(st: &ProjectState, r: Region) -> Vec<(String, Value)> {
    let v = |x: &dyn erased_json::J| x.json();
    match r {
        Region::Project => vec![
            ("meta".into(), v(&st.meta)),
            ("epoch".into(), v(&st.epoch)),
            ("hlc_last".into(), v(&st.hlc_last)),
            ("applied".into(), v(&st.applied)),
        ],
        Region::Boot => vec![("boot".into(), v(&st.boot))],
        Region::Ingestion => vec![("ingestion".into(), v(&st.ingestion))],
        Region::Council => vec![("council".into(), v(&st.council))],
        Region::Environment => vec![("environment".into(), v(&st.environment))],
        Region::Execution => vec![("execution".into(), v(&st.execution))],
        Region::Control => vec![("control".into(), v(&st.control))],
        Region::Policy => vec![("policy".into(), v(&st.policy))],
    }
}

mod erased_json {
    pub trait J {
        fn json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> J for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
        }
    }
}

fn retriable(r: &Rejection) -> bool {
    matches!(r.kind, RejectKind::StaleHash | RejectKind::HlcOrder) || r.guard == "backbeat"
}

/// What the sequencer starts from: the recovered state, and the index of
/// the newest stored snapshot, from which the snapshot cadence counts (from
/// the recovered index instead, a node restarting more often than every
/// `snapshot_every` records would never write a periodic snapshot).
struct SeqStart {
    node: NodeState,
    last_snapshot_index: u64,
}

/// The leader's attempts at quarantining a project whose findings breached
/// policy; each one refused for a stale HEAD (a proposal for the project
/// came first) is rebuilt on the new HEAD.
const QUARANTINE_ATTEMPTS_MAX: u8 = 8;
/// Projects whose quarantine the leader may have pending at once.
const QUARANTINES_PENDING_MAX: usize = 1_024;

#[derive(Serialize)]
struct QuarantineInputs {
    findings: Vec<swoosh_core::facts::Finding>,
}

impl<S: LogStore + Clone + Send + Sync + 'static> Sequencer<S> {
    /// SPEC §5: a policy breach moves the project to QUARANTINED with the
    /// rationale. `Ingestion_SchemaOk` refuses findings that breach a rule;
    /// the leader then proposes `Ingestion_PolicyViolation` with those
    /// findings itself (signed with its key, as it proposes certificates),
    /// so a breach is quarantined even if the worker gives up. It goes
    /// through the sequencer like any proposal, so it is judged, logged and
    /// replicated as one. Best effort: a stop of the sequencer drops it, and
    /// the refusal tells the worker it may propose the violation itself.
    fn quarantine_on_breach(
        &self,
        st: &mut SeqState,
        refused: &Proposal,
        r: &mut Rejection,
        attempt: u8,
    ) {
        let first = attempt == 0
            && refused.transition == "Ingestion_SchemaOk"
            && r.kind == RejectKind::Guard
            && r.guard == "policy";
        // A newer HEAD or a later HLC than the one it was built on: rebuilt.
        let again = attempt > 0 && matches!(r.kind, RejectKind::StaleHash | RejectKind::HlcOrder);
        if !first && !again {
            if attempt > 0 {
                st.quarantines_pending.remove(&refused.project);
                tracing::warn!(project = %refused.project, guard = %r.guard, reasons = %r.reasons.join("; "), "the leader's quarantine of a policy breach was refused");
            }
            return;
        }
        if attempt >= QUARANTINE_ATTEMPTS_MAX {
            st.quarantines_pending.remove(&refused.project);
            tracing::warn!(project = %refused.project, attempts = attempt, "the leader's quarantine of a policy breach kept meeting a newer HEAD; propose Ingestion_PolicyViolation with the findings");
            return;
        }
        if first {
            if st.quarantines_pending.contains(&refused.project) {
                return;
            }
            if st.quarantines_pending.len() >= QUARANTINES_PENDING_MAX {
                tracing::warn!(project = %refused.project, "too many quarantines pending; propose Ingestion_PolicyViolation with the findings");
                return;
            }
        }
        let sh = &self.shared;
        let leader = swoosh_core::SignerId::from_signing_key(&sh.cfg.leader_key);
        let spec = swoosh_core::statechart::lookup("Ingestion_PolicyViolation");
        let ps = st.node.project(&refused.project);
        let may = match (ps.roles_of(&leader), spec) {
            (Some(roles), Some(spec)) => roles.iter().any(|r| spec.roles.contains(r)),
            _ => false,
        };
        if !may {
            // The project's roster no longer lets the leader propose it.
            if first {
                r.reasons.push(format!(
                    "the leader may not propose Ingestion_PolicyViolation in this project ({leader} lacks a role for it): propose it with the findings to quarantine the project"
                ));
            }
            return;
        }
        let built = (|| -> Result<Proposal, String> {
            let findings = match &refused.inputs {
                ciborium::Value::Map(m) => m
                    .iter()
                    .find(|(k, _)| k.as_text() == Some("findings"))
                    .map(|(_, v)| v),
                _ => None,
            }
            .ok_or("the refused proposal carries no findings")?;
            let findings: Vec<swoosh_core::facts::Finding> = findings
                .deserialized()
                .map_err(|e| format!("the refused proposal's findings do not decode: {e}"))?;
            // Each breaching finding once, within the breach budget: the
            // quarantine must pass admission where the breach did not.
            let findings = swoosh_core::guards::quarantine_findings(&ps.policy.rules, &findings);
            if findings.is_empty() {
                return Err("none of the findings breaches a policy rule".into());
            }
            let hlc = Hlc::send(ps.hlc_last.unwrap_or_default(), sh.cfg.clock.now_ms())
                .map_err(|e| e.to_string())?;
            // Named after the breaching proposal (a rebuild keeps its key):
            // no other proposal can take the key ahead of it.
            let idem = if first {
                let h = refused.content_hash().map_err(|e| e.to_string())?;
                format!("shhh-quarantine:{}", h.to_hex())
            } else {
                refused.idem_key.clone()
            };
            swoosh_core::ProposalBuilder::new(
                &refused.project,
                "Ingestion_PolicyViolation",
                st.node.project_hash(&refused.project),
                hlc,
                &idem,
            )
            .inputs(&QuarantineInputs { findings })
            .map_err(|e| e.to_string())?
            .sign(&sh.cfg.leader_key)
            .map_err(|e| e.to_string())
        })();
        let sent = built.and_then(|q| {
            let seq = sh
                .refs
                .read()
                .expect("refs lock")
                .seq
                .clone()
                .ok_or("the sequencer is restarting")?;
            // Nobody waits for the reply: the outcome is in the log (and
            // the attention stream) like any other.
            let (tx, _rx) = tokio::sync::oneshot::channel();
            seq.try_send(SeqMsg::Submit {
                proposal: Box::new(q),
                signature_checked: true,
                received: Instant::now(),
                reply: tx,
                quarantine_attempt: attempt + 1,
                permit: None,
            })
            .map_err(|e| e.to_string())
        });
        match sent {
            Ok(()) => {
                st.quarantines_pending.insert(refused.project.clone());
                if first {
                    r.reasons.push(
                        "the leader will propose Ingestion_PolicyViolation with these findings to quarantine the project (SHHH); an admin's Policy_Release lifts it".into(),
                    );
                }
            }
            Err(e) => {
                st.quarantines_pending.remove(&refused.project);
                tracing::warn!(project = %refused.project, error = %e, "the leader could not propose the quarantine of a policy breach; propose Ingestion_PolicyViolation with the findings")
            }
        }
    }
}

impl<S: LogStore + Clone + Send + Sync + 'static> Actor for Sequencer<S> {
    type Msg = SeqMsg;
    type State = SeqState;
    type Arguments = SeqStart;

    async fn pre_start(
        &self,
        _me: ActorRef<SeqMsg>,
        start: SeqStart,
    ) -> Result<SeqState, ActorProcessingErr> {
        let idx = start.node.index;
        *self.shared.licenses.lock().expect("licenses lock") = Licenses::from_node(&start.node);
        Ok(SeqState {
            node: start.node,
            waiters: VecDeque::new(),
            durable: idx,
            undurable: Default::default(),
            last_snapshot_index: start.last_snapshot_index.min(idx),
            quarantines_pending: Default::default(),
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<SeqMsg>,
        msg: SeqMsg,
        st: &mut SeqState,
    ) -> Result<(), ActorProcessingErr> {
        let sh = &self.shared;
        match msg {
            SeqMsg::Submit {
                proposal,
                signature_checked,
                received,
                reply,
                quarantine_attempt,
                permit,
            } => {
                // Only submissions count against the depth limit (durability
                // notices bypass it), so only they are taken off the count.
                sh.depths.seq.took();
                // An accepted proposal must reach the WAL writer once the
                // reducer has applied it: with its mailbox full, refuse now,
                // before the state changes, rather than fail after and
                // restart the pair. Only this actor sends appends, so room
                // seen here is still there at the send below.
                let wal_full = sh
                    .refs
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .wal
                    .as_ref()
                    .is_some_and(|w| w.depth.get() >= w.depth.max());
                if wal_full {
                    sh.metrics.backpressure_total.inc();
                    if quarantine_attempt > 0 {
                        // Nobody reads this reply: forget the attempt, so
                        // the project's next breach proposes it again.
                        st.quarantines_pending.remove(&proposal.project);
                        tracing::warn!(project = %proposal.project, "the leader's quarantine proposal was refused: the WAL writer's queue is full; the next breach proposes it again");
                    }
                    let _ = reply.send(SubmitResult::Busy {
                        retry_after_ms: 20,
                        reason: "the WAL writer's queue is full".into(),
                    });
                    return Ok(());
                }
                let now = sh.cfg.clock.now_ms();
                let pre = st.node.project(&proposal.project).into_owned();
                let pre_hash = st.node.project_hash(&proposal.project);
                let ctx = Ctx {
                    now_ms: now,
                    verify: if signature_checked {
                        Verify::ProposalChecked
                    } else {
                        Verify::Full
                    },
                    snapshot_every: 0,
                };
                // A key that aged out of the state's bounded window is recalled
                // from the durable index (or, its record still on the way to
                // the disk, from `undurable`), so a late repeat still gets its
                // original outcome (and other content still a conflict).
                let recalled = if st.node.idem.contains(&proposal.project, &proposal.idem_key) {
                    None
                } else if let Some(e) = st.undurable.get(&proposal.project, &proposal.idem_key) {
                    Some(e.clone())
                } else {
                    match swoosh_storage::lookup_idem(
                        &sh.store,
                        &proposal.project,
                        &proposal.idem_key,
                    ) {
                        Ok(e) => e,
                        // Not a storable key: the reducer refuses its shape.
                        Err(swoosh_storage::IndexError::BadKey(_)) => None,
                        Err(e) => {
                            tracing::error!(error = %e, "idempotency index unreadable");
                            let _ = reply.send(SubmitResult::Unavailable {
                                reason: format!(
                                    "the idempotency index cannot be read: {e}; run `swoosh wal verify --dir <dir>`"
                                ),
                            });
                            return Ok(());
                        }
                    }
                };
                if recalled.is_some() {
                    sh.metrics.idempotency_recalled_total.inc();
                }
                let step =
                    swoosh_core::step_recalled(&mut st.node, &proposal, &ctx, recalled.as_ref());
                sh.metrics
                    .idempotency_window_keys
                    .set(st.node.idem.total() as i64);
                let events: Vec<OpEvent> = step
                    .effects
                    .iter()
                    .filter_map(|e| {
                        if let Effect::Emit(ev) = e {
                            Some(ev.clone())
                        } else {
                            None
                        }
                    })
                    .collect();
                if quarantine_attempt > 0 && !matches!(step.outcome, Outcome::Rejected(_)) {
                    // The leader's quarantine landed (or already had).
                    st.quarantines_pending.remove(&proposal.project);
                }
                match step.outcome {
                    Outcome::Rejected(mut r) => {
                        sh.metrics
                            .guard_fail_total
                            .get_or_create(&GuardLabel::checked(&r.guard))
                            .inc();
                        sh.metrics
                            .rejected_total
                            .get_or_create(&KindLabel {
                                kind: r.kind.name().to_string(),
                            })
                            .inc();
                        if retriable(&r) {
                            sh.metrics
                                .retry_count
                                .get_or_create(&TransitionLabel::checked(&proposal.transition))
                                .inc();
                        }
                        self.emit(events);
                        self.quarantine_on_breach(st, &proposal, &mut r, quarantine_attempt);
                        let _ = reply.send(SubmitResult::Rejected(r));
                    }
                    Outcome::Duplicate(e) => {
                        let ok = SubmitOk {
                            index: e.index,
                            transition: e.transition,
                            state_post_hash: e.state_post_hash,
                            decision: e.decision,
                            duplicate: true,
                        };
                        self.emit(events);
                        if e.index <= st.durable {
                            let _ = reply.send(SubmitResult::Accepted(ok));
                        } else {
                            st.waiters.push_back(Waiter {
                                index: e.index,
                                reply: Some(reply),
                                ok,
                                received,
                                applied: None,
                                _permit: permit,
                            });
                        }
                    }
                    Outcome::Accepted(acc) => {
                        let index = acc.record.index;
                        let entry = st
                            .node
                            .idem
                            .get(&proposal.project)
                            .and_then(|m| m.get(&proposal.idem_key));
                        if let Some(e) = entry {
                            st.undurable
                                .accepted(&proposal.project, &proposal.idem_key, e.clone());
                        }
                        // One copy of the post state, shared by every region's
                        // read model; JSON is rendered only when read.
                        let post = Arc::new(st.node.project(&proposal.project).into_owned());
                        sh.licenses
                            .lock()
                            .expect("licenses lock")
                            .update(&proposal.project, &post);
                        let advanced = Region::ALL
                            .iter()
                            .copied()
                            .filter(|r| post.epoch.get(*r) != pre.epoch.get(*r))
                            .collect();
                        // An owed snapshot waits for room in the
                        // snapshotter's mailbox: each request clones the
                        // state, which a stuck snapshotter would otherwise
                        // cost every record.
                        let owed = sh.depths.snap.get() < bounded::SNAPSHOT_MAILBOX_MAX
                            && sh.snapshot_owed.swap(false, Ordering::AcqRel);
                        let snapshot_due = owed
                            || step
                                .effects
                                .iter()
                                .any(|e| matches!(e, Effect::ScheduleSnapshot { .. }))
                            || (sh.cfg.snapshot_every > 0
                                && index >= st.last_snapshot_index + sh.cfg.snapshot_every);
                        let snapshot = if snapshot_due {
                            st.last_snapshot_index = index;
                            Some(Box::new(st.node.clone()))
                        } else {
                            None
                        };
                        let ok = SubmitOk {
                            index,
                            transition: acc.record.transition.clone(),
                            state_post_hash: acc.record.state_post_hash,
                            decision: acc.decision_hash,
                            duplicate: false,
                        };
                        let applied = Applied {
                            project: proposal.project.clone(),
                            pre_hash,
                            hlc: proposal.hlc,
                            window_id: proposal.window_id.clone(),
                            state: post.clone(),
                            advanced,
                            events,
                            snapshot,
                        };
                        // Signed by the WAL writer's commit thread (see `flush`).
                        let entry = LeaderEntry::from_accepted(*acc);
                        let wal = sh.refs.read().expect("refs lock").wal.clone();
                        let sent = wal.map(|w| w.try_send(WalMsg::Append(Box::new(entry))));
                        if !matches!(sent, Some(Ok(()))) {
                            // The state ran ahead of a log that will not get this
                            // record: crash so the supervisor rebuilds both from disk.
                            let _ = reply.send(SubmitResult::Unavailable {
                                reason: "the WAL writer is unavailable; the node is restarting"
                                    .into(),
                            });
                            return Err(
                                "WAL writer unavailable while the sequencer is ahead of the log"
                                    .into(),
                            );
                        }
                        st.waiters.push_back(Waiter {
                            index,
                            reply: Some(reply),
                            ok,
                            received,
                            applied: Some(Box::new(applied)),
                            _permit: permit,
                        });
                        sh.metrics.wal_lag_records.set((index - st.durable) as i64);
                    }
                }
            }
            SeqMsg::Durable { up_to } => {
                st.durable = st.durable.max(up_to);
                st.undurable.durable(st.durable);
                sh.durable_index.store(st.durable, Ordering::Release);
                sh.metrics.wal_index.set(st.durable as i64);
                sh.metrics
                    .wal_lag_records
                    .set((st.node.index.saturating_sub(st.durable)) as i64);
                // Waiters are in index order, except duplicates of older
                // records; release every one that is now durable.
                let mut keep = VecDeque::with_capacity(st.waiters.len());
                while let Some(w) = st.waiters.pop_front() {
                    if w.index <= st.durable {
                        self.release(w);
                    } else {
                        keep.push_back(w);
                    }
                }
                st.waiters = keep;
            }
        }
        Ok(())
    }
}

impl<S: LogStore + Clone + Send + Sync + 'static> Sequencer<S> {
    fn emit(&self, events: Vec<OpEvent>) {
        if events.is_empty() {
            return;
        }
        let sh = &self.shared;
        for e in &events {
            sh.metrics
                .attention_events_total
                .get_or_create(&KindLabel {
                    kind: e.kind.clone(),
                })
                .inc();
            if e.kind == "quarantine" {
                sh.metrics.quarantine_total.inc();
            }
        }
        if let Some(a) = sh.refs.read().expect("refs lock").attention.clone() {
            // Attention is observability: a full mailbox drops the events
            // (counted) rather than slowing the write path.
            if a.try_send(AttnMsg::Events(events)).is_err() {
                sh.metrics
                    .attention_events_total
                    .get_or_create(&KindLabel {
                        kind: "dropped".into(),
                    })
                    .inc();
            }
        }
    }

    fn release(&self, w: Waiter) {
        let sh = &self.shared;
        if let Some(a) = w.applied {
            let a = *a;
            let span = tracing::info_span!(
                "transition",
                transition = %w.ok.transition,
                index = w.ok.index,
                project = %a.project,
                state_pre_hash = %a.pre_hash,
                state_post_hash = %w.ok.state_post_hash,
                hlc = %a.hlc,
                window_id = %a.window_id,
                decision = %w.ok.decision,
            );
            let _enter = span.enter();
            // The span is entered only once the record is durable, so its
            // own duration says nothing: the event carries the time from
            // admission (`elapsed_ms`), and every field a filter on the
            // event's top level needs (not only inside `span`).
            let latency = w.received.elapsed().as_secs_f64();
            tracing::info!(
                state_pre_hash = %a.pre_hash,
                state_post_hash = %w.ok.state_post_hash,
                transition = %w.ok.transition,
                hlc = %a.hlc,
                window_id = %a.window_id,
                index = w.ok.index,
                project = %a.project,
                decision = %w.ok.decision,
                elapsed_ms = latency * 1000.0,
                "transition accepted and durable"
            );
            sh.metrics
                .transition_total
                .get_or_create(&TransitionLabel {
                    transition: w.ok.transition.clone(),
                })
                .inc();
            for r in &a.advanced {
                sh.metrics
                    .state_advance_latency_seconds
                    .get_or_create(&RegionLabel {
                        region: r.name().to_lowercase(),
                    })
                    .observe(latency);
            }
            sh.durable_root
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .set(&a.project, w.ok.state_post_hash);
            let refs = sh.refs.read().expect("refs lock");
            for (r, actor) in &refs.regions {
                let sent = actor.try_send(RegionMsg::Apply {
                    project: a.project.clone(),
                    index: w.index,
                    hash: w.ok.state_post_hash,
                    state: a.state.clone(),
                });
                // The record is durable (this runs after its commit), so a
                // view rebuilt from storage includes the dropped update: the
                // region actor rebuilds before it handles its next message,
                // reads included. A region that is down (`Down`) rebuilds
                // from storage when the supervisor restarts it.
                if let Err(e @ SendError::Full { .. }) = sent {
                    sh.metrics.region_updates_dropped_total.inc();
                    // Logged once per episode: until the rebuild, every
                    // further drop for this region is the same story.
                    if !sh.regions_behind[r].swap(true, Ordering::AcqRel) {
                        tracing::warn!(region = r.name(), index = w.index, error = %e, "a region update was dropped; the region view is rebuilt from storage before it answers again (swoosh_region_updates_dropped_total)");
                    }
                }
            }
            if let Some(snap) = a.snapshot {
                if let Some(s) = refs.snap.clone() {
                    if let Err(e) = s.try_send(SnapMsg::Write(snap)) {
                        sh.snapshot_owed.store(true, Ordering::Release);
                        sh.metrics.snapshot_requests_dropped_total.inc();
                        let n = sh.metrics.snapshot_requests_dropped_total.get();
                        // 1st, 2nd, 4th, …: a snapshotter stuck on a slow disk
                        // would otherwise log at every snapshot interval.
                        if n.is_power_of_two() {
                            tracing::warn!(index = w.index, dropped_total = n, error = %e, "a snapshot request was dropped; the snapshotter is behind (slow disk?); it is asked again once it has room, and the WAL holds everything");
                        }
                    }
                }
            }
            drop(refs);
            self.emit(a.events);
        }
        if let Some(reply) = w.reply {
            let _ = reply.send(SubmitResult::Accepted(w.ok));
        }
    }
}

// ---------------------------------------------------------------- WAL writer

enum WalMsg {
    Append(Box<LeaderEntry>),
    Flush,
}

struct WalActor<S> {
    shared: Arc<Shared<S>>,
    generation: u64,
}

struct WalState<S: LogStore> {
    writer: Option<WalWriter<S>>,
    pending: Vec<LeaderEntry>,
    flush_queued: bool,
}

impl<S: LogStore + Clone + Send + Sync + 'static> Actor for WalActor<S> {
    type Msg = WalMsg;
    type State = WalState<S>;
    type Arguments = WalWriter<S>;

    async fn pre_start(
        &self,
        _me: ActorRef<WalMsg>,
        writer: WalWriter<S>,
    ) -> Result<WalState<S>, ActorProcessingErr> {
        Ok(WalState {
            writer: Some(writer),
            pending: vec![],
            flush_queued: false,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<WalMsg>,
        msg: WalMsg,
        st: &mut WalState<S>,
    ) -> Result<(), ActorProcessingErr> {
        let sh = &self.shared;
        match msg {
            WalMsg::Append(e) => {
                // Appends alone are counted (flushes are sent to itself).
                sh.depths.wal.took();
                st.pending.push(*e);
                let limits = st.writer.as_ref().map(|w| w.limits()).unwrap_or_default();
                if st.pending.len() >= limits.wal_batch_records_max {
                    self.flush(st).await?;
                } else if !st.flush_queued {
                    // Everything already queued behind us joins this batch.
                    st.flush_queued = true;
                    me.send_message(WalMsg::Flush)
                        .map_err(|_| "cannot queue a flush to myself")?;
                }
            }
            WalMsg::Flush => {
                st.flush_queued = false;
                self.flush(st).await?;
            }
        }
        Ok(())
    }
}

/// Why a group commit failed, for whether restarting the pair can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CommitFailure {
    /// A newer writer took over: nothing is wrong with the store.
    Superseded,
    /// The store is full: nothing more fits until it gets a larger map.
    Full,
    /// Any other store or encoding error: a restart may help, until
    /// `COMMIT_FAILURES_MAX` of them in a row.
    Store,
}

impl<S: LogStore + Clone + Send + Sync + 'static> WalActor<S> {
    async fn flush(&self, st: &mut WalState<S>) -> Result<(), ActorProcessingErr> {
        if st.pending.is_empty() {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut st.pending);
        let mut writer = st
            .writer
            .take()
            .ok_or("WAL writer lost after a failed commit")?;
        let (lock, generation) = (self.shared.commit_lock.clone(), self.generation);
        let leader_key = self.shared.cfg.leader_key.clone();
        let (writer, result) = tokio::task::spawn_blocking(move || {
            // The leader signs each decision record here, beside the encode,
            // while the sequencer goes on ordering the next proposals.
            for e in &mut batch {
                e.sign_decision(&leader_key);
            }
            let current = lock.lock().unwrap_or_else(|p| p.into_inner());
            if *current != generation {
                return (
                    writer,
                    Err((
                        CommitFailure::Superseded,
                        "a newer WAL writer took over; this batch was never acknowledged"
                            .to_string(),
                    )),
                );
            }
            let t0 = Instant::now();
            let r = batch
                .into_iter()
                .map(LeaderEntry::encode)
                .collect::<Result<Vec<_>, _>>()
                .and_then(|encoded| {
                    let encode = t0.elapsed();
                    // Split by the byte limit too: the batch was gathered by
                    // record count, and large proposals can exceed it.
                    let mut commits: Vec<(usize, Duration)> = vec![];
                    let mut r = writer.append_encoded_split_each(encoded, &mut |c| {
                        commits.push((c.records, c.commit))
                    })?;
                    r.encode = encode;
                    Ok((r, commits))
                })
                .map_err(|e| {
                    let kind = match e {
                        swoosh_storage::AppendError::Store(
                            swoosh_storage::StoreError::MapFull { .. },
                        ) => CommitFailure::Full,
                        _ => CommitFailure::Store,
                    };
                    (kind, e.to_string())
                });
            drop(current);
            (writer, r)
        })
        .await
        .map_err(|e| format!("WAL commit task failed: {e}"))?;
        let sh = &self.shared;
        let report = match result {
            Ok(r) => {
                sh.commit_failures.store(0, Ordering::Release);
                // A writer that outlived its pair's restart may have failed
                // after this one took over; the store takes writes now.
                *sh.store_fatal.lock().unwrap_or_else(|p| p.into_inner()) = None;
                r
            }
            Err((CommitFailure::Superseded, e)) => {
                // Not the store's doing: this writer was replaced (its pair
                // was restarted) while the batch waited for the lock.
                return Err(format!("WAL group commit failed: {e}").into());
            }
            Err((kind, e)) => {
                let full = kind == CommitFailure::Full;
                let failures = sh.commit_failures.fetch_add(1, Ordering::AcqRel) + 1;
                if full || failures >= COMMIT_FAILURES_MAX {
                    let why = if full {
                        e.clone()
                    } else {
                        format!("{failures} group commits failed in a row, the last with: {e}")
                    };
                    tracing::error!(error = %why, "the store refuses writes; the node gives up instead of restarting its writer at every batch");
                    *sh.store_fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                } else {
                    tracing::error!(error = %e, failures, "WAL group commit failed; restarting sequencer and writer from disk");
                }
                return Err(format!("WAL group commit failed: {e}").into());
            }
        };
        let up_to = writer.last_index();
        st.writer = Some(writer);
        // One observation per group commit: a batch split by the byte
        // limit made several, each with its own fsync.
        for (records, commit) in &report.1 {
            sh.metrics.commit_batch_records.observe(*records as f64);
            sh.metrics
                .fsync_latency_seconds
                .observe(commit.as_secs_f64());
        }
        if let Some(seq) = sh.refs.read().expect("refs lock").seq.clone() {
            // Durability notices must never be dropped: bypass the depth limit.
            seq.depth_bypass_send(SeqMsg::Durable { up_to });
        }
        Ok(())
    }
}

impl Bounded<SeqMsg> {
    /// Control messages (durability notices) are not subject to admission
    /// limits: dropping one would strand acknowledged callers.
    fn depth_bypass_send(&self, msg: SeqMsg) {
        let _ = self.actor.send_message(msg);
    }
}

// ---------------------------------------------------------------- regions

enum RegionMsg {
    Apply {
        project: String,
        index: u64,
        hash: Hash,
        state: Arc<ProjectState>,
    },
    Get {
        project: String,
        reply: tokio::sync::oneshot::Sender<RegionAnswer>,
    },
    Rehydrate,
}

#[derive(Debug)]
struct RegionAnswer {
    index: u64,
    hash: Hash,
    sections: Vec<(String, Value)>,
}

struct RegionActor<S> {
    shared: Arc<Shared<S>>,
    region: Region,
}

struct RegionView {
    /// Index below which updates are already reflected (from a rehydrate).
    floor: u64,
    projects: BTreeMap<String, (u64, Hash, Arc<ProjectState>)>,
}

impl<S: LogStore + Clone + Send + Sync + 'static> Actor for RegionActor<S> {
    type Msg = RegionMsg;
    type State = RegionView;
    type Arguments = Option<NodeState>;

    async fn pre_start(
        &self,
        _me: ActorRef<RegionMsg>,
        from: Option<NodeState>,
    ) -> Result<RegionView, ActorProcessingErr> {
        let mut v = RegionView {
            floor: 0,
            projects: BTreeMap::new(),
        };
        if let Some(node) = from {
            self.load(&mut v, &node);
        }
        Ok(v)
    }

    async fn handle(
        &self,
        _me: ActorRef<RegionMsg>,
        msg: RegionMsg,
        v: &mut RegionView,
    ) -> Result<(), ActorProcessingErr> {
        self.shared.depths.regions[&self.region].took();
        if self.shared.regions_behind[&self.region].swap(false, Ordering::AcqRel) {
            // An update was dropped on our full mailbox; it is durable, so
            // storage has it. Before anything else, reads included.
            self.rehydrate(v).await?;
        }
        match msg {
            RegionMsg::Apply {
                project,
                index,
                hash,
                state,
            } => {
                if index <= v.floor {
                    return Ok(());
                }
                match v.projects.get_mut(&project) {
                    Some(entry) if index <= entry.0 => {}
                    Some(entry) => *entry = (index, hash, state),
                    None => {
                        v.projects.insert(project, (index, hash, state));
                    }
                }
            }
            RegionMsg::Get { project, reply } => {
                let a = match v.projects.get(&project) {
                    Some((index, hash, state)) => RegionAnswer {
                        index: *index,
                        hash: *hash,
                        sections: section_values(state, self.region),
                    },
                    None => {
                        let initial = ProjectState::initial(
                            &self.shared.cfg.genesis,
                            self.shared.genesis_hash,
                            &project,
                        );
                        RegionAnswer {
                            index: 0,
                            hash: Hash::ZERO,
                            sections: section_values(&initial, self.region),
                        }
                    }
                };
                let _ = reply.send(a);
            }
            // Rebuild from committed state: what is on disk now covers every
            // update sent before this actor's reference was published.
            RegionMsg::Rehydrate => self.rehydrate(v).await?,
        }
        Ok(())
    }
}

impl<S: LogStore + Clone + Send + Sync + 'static> RegionActor<S> {
    async fn rehydrate(&self, v: &mut RegionView) -> Result<(), ActorProcessingErr> {
        let store = self.shared.store.clone();
        let genesis = self.shared.cfg.genesis.clone();
        let rec = tokio::task::spawn_blocking(move || {
            recover_with(&store, &genesis, &RecoverOptions::default(), &mut |_| {})
        })
        .await
        .map_err(|e| format!("region rehydrate task failed: {e}"))?
        .map_err(|e| format!("region rehydrate failed: {e}"))?;
        self.load(v, &rec.node);
        Ok(())
    }

    fn load(&self, v: &mut RegionView, node: &NodeState) {
        v.floor = v.floor.max(node.index);
        for (p, e) in &node.projects {
            let keep_newer = v.projects.get(p).is_some_and(|(i, _, _)| *i > node.index);
            if !keep_newer {
                v.projects
                    .insert(p.clone(), (node.index, e.hash, Arc::new(e.state.clone())));
            }
        }
    }
}

// The index a region view reports for a project is the node index of its
// last load or update; every region of one project is loaded together, so
// views agree on (index, hash) for a given durable version. Projects loaded
// at `node.index` but touched earlier still report `node.index`, which is
// consistent across regions because all of them load the same node.

// ---------------------------------------------------------------- snapshotter

enum SnapMsg {
    Write(Box<NodeState>),
    /// Check the snapshot at the WAL base (sent to itself at start, so it
    /// runs in turn with the snapshots and compactions that move the base).
    CheckBase,
}

struct Snapshotter<S> {
    shared: Arc<Shared<S>>,
}

impl<S: LogStore + Clone + Send + Sync + 'static> Actor for Snapshotter<S> {
    type Msg = SnapMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, me: ActorRef<SnapMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        // At every start too: a restart recovers from a newer snapshot
        // whatever the base's holds, and the gauge starts at 0. Through the
        // mailbox, not here: reading a large snapshot must not delay the
        // node's start or an actor restart, and a check beside a
        // compaction step could find the old base's snapshot just deleted.
        // (A stopped actor drops it, so nothing outlives a shutdown.)
        let _ = me.send_message(SnapMsg::CheckBase);
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<SnapMsg>,
        msg: SnapMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let sh = self.shared.clone();
        let node = match msg {
            SnapMsg::CheckBase => {
                check_base_snapshot(&sh).await;
                return Ok(());
            }
            // Only snapshot requests count against the mailbox's bound.
            SnapMsg::Write(node) => {
                sh.depths.snap.took();
                node
            }
        };
        let mut store = sh.store.clone();
        let keep = sh.cfg.snapshot_keep;
        let (index, hlc) = (node.index, node.hlc);
        let r = match tokio::task::spawn_blocking(move || {
            swoosh_storage::snapshot::write_snapshot(&mut store, &node, keep)
        })
        .await
        {
            Ok(r) => r,
            // A panicked write is a failed snapshot, not a failed actor: the
            // log holds everything, and the next request tries again.
            Err(e) => {
                count_snapshot(&sh.metrics, "failed");
                tracing::error!(index, error = %e, "the snapshot task failed; the log still holds everything");
                return Ok(());
            }
        };
        match r {
            Ok(_) => {
                count_snapshot(&sh.metrics, "ok");
                *sh.last_snapshot.lock().expect("snapshot lock") = Some((index, hlc));
                tracing::info!(index, "snapshot written");
            }
            // A failed snapshot is an operating error, not a reason to stop
            // the node: the WAL is the source of truth.
            Err(e) => {
                count_snapshot(&sh.metrics, "failed");
                tracing::warn!(index, error = %e, "snapshot failed; the log still holds everything");
                return Ok(());
            }
        }
        if let Some(policy) = sh.cfg.compaction.clone() {
            let (sh2, policy2) = (sh.clone(), policy.clone());
            let r = tokio::task::spawn_blocking(move || compact_now(&sh2, &policy2, index))
                .await
                .unwrap_or_else(|e| Err(format!("the compaction task failed: {e}")));
            let m = &sh.metrics;
            match r {
                Ok(None) => {}
                Ok(Some(rep)) => {
                    m.compactions_total
                        .get_or_create(&KindLabel { kind: "ok".into() })
                        .inc();
                    m.compacted_records_total.inc_by(rep.archive.records);
                    m.wal_base_index
                        .set(i64::try_from(rep.base.index).unwrap_or(i64::MAX));
                    tracing::info!(
                        first = rep.archive.first,
                        through = rep.base.index,
                        records = rep.archive.records,
                        steps = rep.steps,
                        seconds = rep.elapsed.as_secs_f64(),
                        archive = %rep.archive_path.display(),
                        "compacted the log: the records are in the archive, the log starts after the last one"
                    );
                }
                // Nothing acknowledged is lost: what was not cut is in the
                // store, what was is in the archive the error names. An
                // operator acts on the alert (the archive directory full or
                // unwritable, or a damaged record the error names).
                Err(e) => {
                    m.compactions_total
                        .get_or_create(&KindLabel {
                            kind: "failed".into(),
                        })
                        .inc();
                    tracing::error!(error = %e, archive_dir = %policy.archive_dir.display(), "automatic compaction failed; it is tried again after the next snapshot, and the log grows until it succeeds");
                }
            }
        }
        check_base_snapshot(&sh).await;
        Ok(())
    }
}

/// After each snapshot: the snapshot at the WAL base is the only proof of
/// the records compaction archived, and nothing else reads it until a
/// recovery needs it. Damage is reported (`swoosh_base_snapshot_damaged`,
/// logged once per episode) while the archives to rebuild it are at hand.
async fn check_base_snapshot<S: LogStore + Clone + Send + Sync + 'static>(sh: &Arc<Shared<S>>) {
    let sh2 = sh.clone();
    let fault =
        tokio::task::spawn_blocking(move || swoosh_storage::base_snapshot_fault(&sh2.store))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
    let gauge = &sh.metrics.base_snapshot_damaged;
    match fault {
        Ok(None) => {
            if gauge.get() != 0 {
                tracing::info!("the snapshot at the WAL base checks sound again");
            }
            gauge.set(0);
        }
        Ok(Some(why)) => {
            if gauge.get() == 0 {
                tracing::error!(fault = %why, "ALARM: the snapshot at the WAL base is damaged; it is the only proof of the archived records, and a recovery with no newer usable snapshot will refuse to start: stop the node and run `swoosh snapshot rebuild-base --dir <node dir> <archives…>` (docs/runbooks/snapshot-restore.md)");
            }
            gauge.set(1);
        }
        Err(e) => tracing::warn!(error = %e, "cannot check the snapshot at the WAL base"),
    }
}

fn count_snapshot(m: &Metrics, kind: &str) {
    m.snapshots_total
        .get_or_create(&KindLabel { kind: kind.into() })
        .inc();
}

/// What one automatic compaction did.
struct Compacted {
    archive_path: std::path::PathBuf,
    base: swoosh_storage::WalBase,
    archive: swoosh_storage::ArchiveSummary,
    steps: u64,
    elapsed: Duration,
}

/// Compact the store as `policy` says, if enough records have accumulated.
/// Runs on a blocking thread; each step's commit holds the commit lock.
fn compact_now<S: LogStore + Clone>(
    sh: &Shared<S>,
    policy: &CompactionPolicy,
    snapshot: u64,
) -> Result<Option<Compacted>, String> {
    let mut store = sh.store.clone();
    let base = swoosh_storage::wal_base(&store)
        .map_err(|e| e.to_string())?
        .map_or(0, |b| b.index);
    let Some(through) = policy.through(base, snapshot) else {
        return Ok(None);
    };
    let path = policy.archive_path(base + 1, through);
    let lock = sh.commit_lock.clone();
    let r = swoosh_storage::compact_with(
        &mut store,
        &sh.cfg.genesis,
        through,
        &path,
        &swoosh_storage::CompactOptions {
            drop_decisions: policy.drop_decisions,
            step_records: COMPACT_ONLINE_STEP_RECORDS,
        },
        &mut |_| {},
        &mut |s, b| {
            // As the WAL path does: a poisoned lock still guards the store.
            let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
            s.commit(b)
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(Some(Compacted {
        archive_path: path,
        base: r.base,
        archive: r.archive,
        steps: r.steps,
        elapsed: r.elapsed,
    }))
}

// ---------------------------------------------------------------- attention

enum AttnMsg {
    Events(Vec<OpEvent>),
    /// Events observed outside the reducer (replication health).
    Observe(Vec<swoosh_core::attention::Event>),
    Get(
        swoosh_core::attention::Band,
        tokio::sync::oneshot::Sender<AttentionView>,
    ),
    /// Refresh gauges, notice actor restarts, save the memory if it changed.
    Tick,
}

/// The attention actor: feeds the operational stream to the pure scorer
/// (`swoosh_core::attention`), serves its digest, exports items per band and
/// keeps its memory in `NodeConfig::attention_file` (saved atomically every
/// [`ATTENTION_SAVE_EVERY_MS`] when it changed, and on shutdown; loaded at
/// start; a damaged file or one of another format version is set aside,
/// never fatal). File I/O runs on tokio's blocking pool, one save of a file
/// at a time, so a slow disk never holds a runtime worker the sequencer or
/// HTTP need. It never touches replicated state.
struct AttentionActor<S> {
    shared: Arc<Shared<S>>,
}

struct AttnState {
    scorer: swoosh_core::attention::Scorer,
    counts: BTreeMap<String, u64>,
    dirty: bool,
    saved_at_ms: Option<u64>,
    memory_note: String,
    /// Supervisor restarts seen so far, per actor label.
    restarts_seen: BTreeMap<String, u64>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    /// The save in flight on the blocking pool, if any (at most one).
    saving: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// This node as an attention subject: its advertised address, or `node`.
fn node_name(advertise: &str) -> String {
    if advertise.is_empty() {
        "node".into()
    } else {
        advertise.to_string()
    }
}

fn actor_labels() -> Vec<String> {
    let mut v = vec![ActorKind::Sequencer, ActorKind::Wal];
    v.extend(Region::ALL.iter().map(|r| ActorKind::Region(*r)));
    v.extend([ActorKind::Snapshotter, ActorKind::Attention]);
    v.into_iter().map(|k| k.label()).collect()
}

/// Write `bytes` to `path` atomically: a temporary file beside it, fsynced,
/// renamed over it, then the directory fsynced.
fn save_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The lock that keeps saves of one memory file from overlapping, even
/// across restarts of the actor (a save left running by a stopped instance
/// and the first save of the next one write the same temporary file).
fn save_lock(path: &std::path::Path) -> Arc<Mutex<()>> {
    static LOCKS: std::sync::OnceLock<Mutex<BTreeMap<std::path::PathBuf, Arc<Mutex<()>>>>> =
        std::sync::OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    // Forget the locks nobody holds (nodes that are gone).
    locks.retain(|p, l| p == path || Arc::strong_count(l) > 1);
    locks.entry(path.to_path_buf()).or_default().clone()
}

/// Load the scorer's memory; a missing file starts fresh; a damaged one is
/// renamed to `<file>.corrupt-<ms>`, one of another format version to
/// `<file>.v<version>-<ms>`, and the scorer starts fresh (logged).
/// The attention memory file's bytes, at most one byte over
/// [`swoosh_core::attention::MEMORY_BYTES_MAX`] (enough for the loader to
/// refuse it as too large) and only from a regular file: a damaged or
/// multi-gigabyte file must not exhaust memory at start, nor a FIFO hang it.
fn read_memory_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    // Checked before opening: opening a FIFO for reading blocks.
    if !std::fs::metadata(path)?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file: point the attention memory at a file path",
        ));
    }
    let f = std::fs::File::open(path)?;
    let cap = swoosh_core::attention::MEMORY_BYTES_MAX as u64 + 1;
    let mut bytes = Vec::new();
    f.take(cap).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn load_memory(
    path: Option<&std::path::Path>,
    now_ms: u64,
) -> (swoosh_core::attention::Scorer, String, bool) {
    use swoosh_core::attention::{Scorer, Tuning};
    let Some(path) = path else {
        return (
            Scorer::new(Tuning::OPERATIONS),
            "memory is not persisted (no attention file configured)".into(),
            false,
        );
    };
    match read_memory_file(path) {
        Ok(bytes) => match Scorer::from_bytes(&bytes, Tuning::OPERATIONS) {
            Ok(s) => {
                let note = format!("loaded {} fingerprints from {}", s.len(), path.display());
                (s, note, true)
            }
            Err(e) => {
                let (suffix, what) = match &e {
                    swoosh_core::attention::MemoryError::Version { found } => {
                        (format!(".v{found}-{now_ms}"), "of another format version")
                    }
                    _ => (format!(".corrupt-{now_ms}"), "damaged"),
                };
                let mut aside = path.as_os_str().to_owned();
                aside.push(suffix);
                let aside = std::path::PathBuf::from(aside);
                let moved = std::fs::rename(path, &aside);
                tracing::warn!(file = %path.display(), error = %e, set_aside = %aside.display(), moved = moved.is_ok(), "the attention memory is {what}; it was set aside and the scorer starts fresh");
                (
                    Scorer::new(Tuning::OPERATIONS),
                    format!(
                        "{} was {what} ({e}); set aside as {}, started fresh",
                        path.display(),
                        aside.display()
                    ),
                    false,
                )
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
            Scorer::new(Tuning::OPERATIONS),
            format!("no memory yet at {}; started fresh", path.display()),
            false,
        ),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the attention memory cannot be read; the scorer starts fresh");
            (
                Scorer::new(Tuning::OPERATIONS),
                format!("{} cannot be read ({e}); started fresh", path.display()),
                false,
            )
        }
    }
}

impl<S: LogStore + Clone + Send + Sync + 'static> AttentionActor<S> {
    fn restarts_of(&self, label: &str) -> u64 {
        self.shared
            .metrics
            .actor_restarts_total
            .get_or_create(&ActorLabel {
                actor: label.to_string(),
            })
            .get()
    }

    /// Start saving the memory on the blocking pool unless a save is still
    /// in flight (then it stays dirty for the next tick).
    fn start_save(&self, st: &mut AttnState) {
        let Some(path) = self.shared.cfg.attention_file.clone() else {
            st.dirty = false;
            return;
        };
        if st.saving.is_some() {
            return;
        }
        // Encoding is CPU work on the memory (bounded); the write and fsyncs
        // go to the blocking pool.
        let bytes = st.scorer.to_bytes();
        st.dirty = false;
        st.saving = Some(tokio::task::spawn_blocking(move || {
            let lock = save_lock(&path);
            let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
            save_atomically(&path, &bytes)
        }));
    }

    /// Save on this thread: only at shutdown, when the blocking pool is gone.
    fn save_inline(&self, st: &mut AttnState) {
        let Some(path) = self.shared.cfg.attention_file.as_deref() else {
            return;
        };
        let lock = save_lock(path);
        let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
        match save_atomically(path, &st.scorer.to_bytes()) {
            Ok(()) => st.dirty = false,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot save the attention memory at shutdown; this lifetime's last events are lost")
            }
        }
    }

    /// Collect the save in flight if it finished (or, with `wait`, once it
    /// does): note when it succeeded, mark the memory dirty again if not.
    /// `Some(false)` when the blocking pool did not run it.
    async fn reap_save(&self, st: &mut AttnState, wait: bool) -> Option<bool> {
        if !wait && st.saving.as_ref().is_some_and(|h| !h.is_finished()) {
            return None;
        }
        let h = st.saving.take()?;
        let file = self
            .shared
            .cfg
            .attention_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        match h.await {
            Ok(Ok(())) => st.saved_at_ms = Some(self.shared.cfg.clock.now_ms()),
            Ok(Err(e)) => {
                st.dirty = true;
                tracing::warn!(file = %file, error = %e, "cannot save the attention memory; will retry")
            }
            Err(e) => {
                st.dirty = true;
                tracing::warn!(file = %file, error = %e, "the attention memory save did not run; will retry");
                return Some(false);
            }
        }
        Some(true)
    }

    fn update_gauges(&self, st: &AttnState) {
        let now = self.shared.cfg.clock.now_ms();
        let by_band = st.scorer.counts_by_band(now);
        for b in swoosh_core::attention::Band::ALL {
            self.shared
                .metrics
                .attention_items
                .get_or_create(&crate::metrics::BandLabel {
                    band: b.name().to_string(),
                })
                .set(by_band[b.level() as usize] as i64);
        }
    }
}

impl<S: LogStore + Clone + Send + Sync + 'static> Actor for AttentionActor<S> {
    type Msg = AttnMsg;
    type State = AttnState;
    type Arguments = ();

    async fn pre_start(
        &self,
        me: ActorRef<AttnMsg>,
        _: (),
    ) -> Result<AttnState, ActorProcessingErr> {
        use swoosh_core::attention::{Event, EventKind};
        let sh = &self.shared;
        let now = sh.cfg.clock.now_ms();
        let file = sh.cfg.attention_file.clone();
        let loading = tokio::task::spawn_blocking(move || {
            // Not while a save left by a stopped instance is writing it.
            let lock = file.as_deref().map(save_lock);
            let _held = lock
                .as_ref()
                .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()));
            load_memory(file.as_deref(), now)
        });
        let (mut scorer, memory_note, loaded) = match loading.await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "loading the attention memory did not run; the scorer starts fresh");
                (
                    swoosh_core::attention::Scorer::new(swoosh_core::attention::Tuning::OPERATIONS),
                    format!("loading did not run ({e}); started fresh"),
                    false,
                )
            }
        };
        let restarts_seen: BTreeMap<String, u64> = actor_labels()
            .into_iter()
            .map(|l| {
                let n = self.restarts_of(&l);
                (l, n)
            })
            .collect();
        let own = restarts_seen
            .get(&ActorKind::Attention.label())
            .copied()
            .unwrap_or(0);
        // A new session per node lifetime, not per restart of this actor
        // (which reloads what this lifetime saved). A memory that never saw
        // a session (fresh, or not persisted) starts one either way.
        let node_start = own == 0 || scorer.memory().session == 0;
        if node_start {
            scorer.begin_session();
        }
        if own > 0 {
            scorer.observe(
                &Event::new(EventKind::Restart, "actor attention restarted", now)
                    .peer(node_name(&sh.cfg.advertise)),
            );
        } else if loaded {
            // Memory from an earlier lifetime: this node was restarted.
            scorer.observe(
                &Event::new(EventKind::Restart, "node restarted", now)
                    .peer(node_name(&sh.cfg.advertise)),
            );
        }
        let period = Duration::from_millis(ATTENTION_SAVE_EVERY_MS);
        let tick_to = me.clone();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(period);
            every.tick().await;
            loop {
                every.tick().await;
                if tick_to.send_message(AttnMsg::Tick).is_err() {
                    break;
                }
            }
        });
        let mut st = AttnState {
            scorer,
            counts: BTreeMap::new(),
            dirty: true,
            saved_at_ms: None,
            memory_note,
            restarts_seen,
            ticker: Some(ticker),
            saving: None,
        };
        if node_start {
            // Record the new session before serving, so an actor restart
            // reloads it instead of the previous lifetime's (awaited on the
            // blocking pool: a restart's load could otherwise take the file
            // lock first).
            self.start_save(&mut st);
            self.reap_save(&mut st, true).await;
        }
        self.update_gauges(&st);
        Ok(st)
    }

    async fn post_stop(
        &self,
        _me: ActorRef<AttnMsg>,
        st: &mut AttnState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.ticker.take() {
            t.abort();
        }
        // Shutdown waits for the save in flight and then for the last one.
        self.reap_save(st, true).await;
        if st.dirty {
            self.start_save(st);
            if self.reap_save(st, true).await == Some(false) {
                // The blocking pool refused (the runtime is going down): one
                // last attempt here, as nothing runs after it.
                self.save_inline(st);
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<AttnMsg>,
        msg: AttnMsg,
        st: &mut AttnState,
    ) -> Result<(), ActorProcessingErr> {
        use swoosh_core::attention::{Event, EventKind};
        let now = self.shared.cfg.clock.now_ms();
        match msg {
            AttnMsg::Events(evs) => {
                self.shared.depths.attention.took();
                for e in &evs {
                    *st.counts.entry(e.kind.clone()).or_default() += 1;
                    st.scorer.observe(&Event::from_op(e, now));
                }
                st.dirty = true;
            }
            AttnMsg::Observe(evs) => {
                self.shared.depths.attention.took();
                for e in &evs {
                    *st.counts.entry(e.kind.name().to_string()).or_default() += 1;
                    st.scorer.observe(e);
                }
                st.dirty = true;
            }
            AttnMsg::Get(band_min, reply) => {
                self.shared.depths.attention.took();
                self.update_gauges(st);
                let _ = reply.send(AttentionView {
                    counts: st.counts.clone(),
                    digest: st.scorer.digest(now, band_min, ATTENTION_ITEMS_MAX),
                    memory_file: self
                        .shared
                        .cfg
                        .attention_file
                        .as_ref()
                        .map(|p| p.display().to_string()),
                    saved_at_ms: st.saved_at_ms,
                    memory_note: st.memory_note.clone(),
                });
            }
            AttnMsg::Tick => {
                for label in actor_labels() {
                    let n = self.restarts_of(&label);
                    let seen = st.restarts_seen.entry(label.clone()).or_default();
                    for _ in *seen..n {
                        st.scorer.observe(
                            &Event::new(
                                EventKind::Restart,
                                format!("actor {label} restarted"),
                                now,
                            )
                            .peer(node_name(&self.shared.cfg.advertise)),
                        );
                        st.dirty = true;
                    }
                    *seen = n.max(*seen);
                }
                self.update_gauges(st);
                self.reap_save(st, false).await;
                if st.dirty {
                    self.start_save(st);
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- supervisor

enum SupMsg {}

struct Supervisor<S> {
    shared: Arc<Shared<S>>,
}

/// Audit the derived indexes against the recovered log and, if they
/// disagree, rebuild both from it (issue 3: "rebuilt from the WAL if
/// missing"). Without it a lost or orphan entry would change answers
/// quietly: a late repeat refused as stale, a new proposal refused as a
/// conflict, a decision not found. True when it rebuilt.
fn ensure_indexes<S: LogStore>(
    store: &mut S,
    genesis: &Genesis,
    leader_key: &SigningKey,
    last: u64,
    progress: &ProgressCell,
) -> Result<bool, String> {
    let audit = audit_indexes(&*store, last).map_err(|e| format!("auditing the indexes: {e}"))?;
    if audit.is_sound() {
        return Ok(false);
    }
    tracing::warn!(
        location = %store.location(),
        records = audit.records,
        idem_entries = audit.idem_entries,
        decisions = audit.decisions,
        findings = %audit.findings.join("; "),
        "the derived indexes disagree with the log; rebuilding them from it before serving"
    );
    let r = rebuild_indexes(store, genesis, Some(leader_key), &mut |p| {
        progress.observe(p)
    })
        .map_err(|e| match e {
            // The base snapshot is the only way in; verify and reindex start
            // from it too, so naming them would send the operator in a loop.
            swoosh_storage::RebuildError::Replay(
                swoosh_storage::RecoveryError::Unproven { .. },
            ) => format!("rebuilding the derived indexes failed: {e}"),
            e => format!("rebuilding the derived indexes failed: {e}; run `swoosh wal verify --dir <dir>`, then `swoosh wal reindex --dir <dir>`"),
        })?;
    tracing::warn!(
        records = r.records,
        idem_entries = r.idem_entries,
        decisions = r.decisions,
        seconds = r.elapsed.as_secs_f64(),
        "rebuilt the derived indexes from the log"
    );
    Ok(true)
}

/// The HLC snapshot `index` was taken at, from its header alone: decoding
/// the whole state again would double the cost of a recovery that did not
/// end on the snapshot. Only for `/health`, so a failure is logged, not fatal.
fn snapshot_hlc<S: LogStore>(store: &S, index: u64) -> Option<Hlc> {
    match swoosh_storage::snapshot::read_snapshot_head(store, index) {
        Ok(h) => h.hlc,
        Err(e) => {
            tracing::warn!(index, error = %e, "cannot read the HLC of the snapshot recovery started from; /health shows none");
            None
        }
    }
}

impl<S: LogStore + Clone + Send + Sync + 'static> Supervisor<S> {
    /// Recover from storage, open a WAL writer and spawn writer + sequencer.
    async fn start_pair(&self, sup: &ActorRef<SupMsg>) -> Result<NodeState, ActorProcessingErr> {
        let sh = &self.shared;
        let (store, genesis, lock) = (
            sh.store.clone(),
            sh.cfg.genesis.clone(),
            sh.commit_lock.clone(),
        );
        let (gh, limits) = (sh.genesis_hash, sh.cfg.wal_limits);
        let leader_key = sh.cfg.leader_key.clone();
        let progress = sh.progress.clone();
        progress.begin();
        sh.metrics.recovery_in_progress.set(1);
        // The whole start, not just the replay: an index audit and rebuild
        // over the log can take longer than the replay itself.
        let started = Instant::now();
        // Under the commit lock: no old writer's commit can land between
        // recovery and the new writer reading the tail.
        let (rec, writer, generation, rebuilt, snapshot) = tokio::task::spawn_blocking(move || {
            let mut current = lock.lock().unwrap_or_else(|p| p.into_inner());
            *current += 1;
            let rec = recover_with(&store, &genesis, &RecoverOptions::default(), &mut |p| {
                progress.observe(p)
            })
            .map_err(|e| format!("recovery failed: {e}"))?;
            // Damaged snapshots recovery skipped only take room. A sound one
            // it could not use (a newer build's format, beyond the end of the
            // log, another history's) is kept as evidence: wal-format.md §5.
            // A failed delete is not worth failing a recovery that worked.
            let mut store = store;
            for p in &rec.skipped_snapshots {
                if !p.reason.is_damage() {
                    tracing::warn!(index = p.index, reason = %p.reason, "recovery skipped a snapshot it cannot use; kept for inspection (`swoosh snapshot list`)");
                    continue;
                }
                tracing::warn!(index = p.index, reason = %p.reason, "deleting a damaged snapshot that recovery skipped");
                if let Err(e) = store.delete_snapshot(p.index) {
                    tracing::warn!(index = p.index, error = %e, "cannot delete the damaged snapshot; it stays, and the next recovery skips it again");
                }
            }
            let rebuilt =
                ensure_indexes(&mut store, &genesis, &leader_key, rec.node.index, &progress)?;
            // Recovery started from the newest usable snapshot (the damaged
            // newer ones were just deleted): that is the newest in the store.
            let snapshot = rec.snapshot.map(|i| {
                let hlc = if i == rec.node.index {
                    rec.node.hlc
                } else {
                    snapshot_hlc(&store, i)
                };
                (i, hlc)
            });
            let writer =
                WalWriter::open(store, gh, limits).map_err(|e| format!("WAL open failed: {e}"))?;
            Ok::<_, String>((rec, writer, *current, rebuilt, snapshot))
        })
        .await
        .map_err(|e| format!("recovery task failed: {e}"))??;
        sh.metrics
            .recovery_time_seconds
            .set(started.elapsed().as_secs_f64());
        sh.metrics.recovery_in_progress.set(0);
        // A log whose HLC is ahead of this clock by more than the offset
        // refuses every proposal for the projects concerned until the clock
        // catches up (nothing can follow their last HLC within the offset):
        // say so at start, not only in each refusal.
        let now = sh.cfg.clock.now_ms();
        if let Some(h) = rec
            .node
            .hlc
            .filter(|h| h.ahead_of_ms(now) > rec.node.genesis.hlc_max_offset_ms)
        {
            tracing::error!(
                hlc = %h,
                ahead_ms = h.ahead_of_ms(now),
                clock = %swoosh_core::hlc::format_wall_ms(now),
                "ALARM: the log's last HLC is ahead of this node's clock by more than hlc_max_offset_ms: the clock is behind its own log (stepped back, or it ran ahead when those records were accepted); the projects whose last HLC is that far ahead refuse every proposal until the clock catches up. Correct the clock if it is wrong"
            );
        }
        tracing::info!(
            index = rec.node.index,
            snapshot = ?snapshot.map(|(i, _)| i),
            replayed = rec.replayed,
            seconds = rec.elapsed.as_secs_f64(),
            "recovered the state from the log"
        );
        if rebuilt {
            sh.metrics.index_rebuilds_total.inc();
        }
        let node = rec.node;
        if writer.last_index() != node.index {
            return Err(format!(
                "recovered index {} but the WAL ends at {}",
                node.index,
                writer.last_index()
            )
            .into());
        }
        // Health read before a restart must not outlive it: everything the
        // old sequencer had accepted is either durable (recovered) or lost,
        // so nothing is in flight to the log; and the snapshot recovery
        // started from is the newest one, unless the snapshotter (which
        // outlives a pair restart) has written a newer one meanwhile.
        sh.metrics.wal_lag_records.set(0);
        let last_snapshot = {
            let mut last = sh.last_snapshot.lock().expect("snapshot lock");
            if snapshot.is_some_and(|(i, _)| last.is_none_or(|(l, _)| l < i)) {
                *last = snapshot;
            }
            *last
        };
        sh.depths.wal.reset();
        sh.depths.seq.reset();
        let (wal, _) = Actor::spawn_linked(
            None,
            WalActor {
                shared: sh.clone(),
                generation,
            },
            writer,
            sup.get_cell(),
        )
        .await?;
        let (seq, _) = Actor::spawn_linked(
            None,
            Sequencer { shared: sh.clone() },
            SeqStart {
                node: node.clone(),
                last_snapshot_index: last_snapshot.map_or(0, |(i, _)| i),
            },
            sup.get_cell(),
        )
        .await?;
        {
            let mut refs = sh.refs.write().expect("refs lock");
            refs.wal = Some(Bounded {
                actor: wal,
                depth: sh.depths.wal.clone(),
            });
            refs.seq = Some(Bounded {
                actor: seq,
                depth: sh.depths.seq.clone(),
            });
        }
        sh.durable_index.store(node.index, Ordering::Release);
        sh.metrics.wal_index.set(node.index as i64);
        sh.metrics
            .idempotency_window_keys
            .set(node.idem.total() as i64);
        sh.durable_root
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .reset(&node);
        Ok(node)
    }

    async fn start_region(
        &self,
        sup: &ActorRef<SupMsg>,
        r: Region,
        from: Option<NodeState>,
    ) -> Result<(), ActorProcessingErr> {
        let sh = &self.shared;
        let depth = sh.depths.regions[&r].clone();
        depth.reset();
        // A new actor loads from committed state anyway.
        sh.regions_behind[&r].store(false, Ordering::Release);
        let rehydrate = from.is_none();
        let (a, _) = Actor::spawn_linked(
            None,
            RegionActor {
                shared: sh.clone(),
                region: r,
            },
            from,
            sup.get_cell(),
        )
        .await?;
        let b = Bounded { actor: a, depth };
        sh.refs
            .write()
            .expect("refs lock")
            .regions
            .insert(r, b.clone());
        if rehydrate {
            b.try_send(RegionMsg::Rehydrate)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn start_snap(&self, sup: &ActorRef<SupMsg>) -> Result<(), ActorProcessingErr> {
        let sh = &self.shared;
        sh.depths.snap.reset();
        let (a, _) =
            Actor::spawn_linked(None, Snapshotter { shared: sh.clone() }, (), sup.get_cell())
                .await?;
        sh.refs.write().expect("refs lock").snap = Some(Bounded {
            actor: a,
            depth: sh.depths.snap.clone(),
        });
        Ok(())
    }

    async fn start_attention(&self, sup: &ActorRef<SupMsg>) -> Result<(), ActorProcessingErr> {
        let sh = &self.shared;
        sh.depths.attention.reset();
        let (a, _) = Actor::spawn_linked(
            None,
            AttentionActor { shared: sh.clone() },
            (),
            sup.get_cell(),
        )
        .await?;
        sh.refs.write().expect("refs lock").attention = Some(Bounded {
            actor: a,
            depth: sh.depths.attention.clone(),
        });
        Ok(())
    }

    fn which(&self, id: ractor::ActorId) -> Option<ActorKind> {
        let refs = self.shared.refs.read().expect("refs lock");
        if refs.seq.as_ref().is_some_and(|b| b.actor.get_id() == id) {
            return Some(ActorKind::Sequencer);
        }
        if refs.wal.as_ref().is_some_and(|b| b.actor.get_id() == id) {
            return Some(ActorKind::Wal);
        }
        if let Some((r, _)) = refs.regions.iter().find(|(_, b)| b.actor.get_id() == id) {
            return Some(ActorKind::Region(*r));
        }
        if refs.snap.as_ref().is_some_and(|b| b.actor.get_id() == id) {
            return Some(ActorKind::Snapshotter);
        }
        if refs
            .attention
            .as_ref()
            .is_some_and(|b| b.actor.get_id() == id)
        {
            return Some(ActorKind::Attention);
        }
        None
    }
}

impl<S: LogStore + Clone + Send + Sync + 'static> Actor for Supervisor<S> {
    type Msg = SupMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, me: ActorRef<SupMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        let node = self.start_pair(&me).await?;
        for r in Region::ALL {
            self.start_region(&me, r, Some(node.clone())).await?;
        }
        self.start_snap(&me).await?;
        self.start_attention(&me).await?;
        self.shared.set_ready(true);
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<SupMsg>,
        msg: SupMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {}
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<SupMsg>,
        ev: SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let (id, why) = match ev {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell.get_id(), reason.unwrap_or_else(|| "terminated".into()))
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell.get_id(), err.to_string()),
            _ => return Ok(()),
        };
        let sh = self.shared.clone();
        if sh.stopping.load(Ordering::Acquire) {
            return Ok(());
        }
        let Some(kind) = self.which(id) else {
            return Ok(());
        };
        tracing::warn!(actor = %kind.label(), reason = %why, "actor stopped; restarting it from committed state");
        match kind {
            ActorKind::Sequencer | ActorKind::Wal => {
                // Not ready before the restart is counted, so "restarted and
                // ready" can never be observed before the restart ran.
                sh.set_ready(false);
                // `/health` shows this recovery from here, not the last one.
                sh.progress.begin();
                // Stop the survivor of the pair first: the writer finishes the
                // commit in progress, so recovery sees every durable record.
                let (seq, wal) = {
                    let mut refs = sh.refs.write().expect("refs lock");
                    (refs.seq.take(), refs.wal.take())
                };
                for survivor in [
                    seq.map(|b| b.actor.get_cell()),
                    wal.map(|b| b.actor.get_cell()),
                ]
                .into_iter()
                .flatten()
                {
                    if survivor.get_id() != id {
                        survivor.unlink(me.get_cell());
                        let _ = survivor
                            .stop_and_wait(
                                Some("pair restart".into()),
                                Some(Duration::from_secs(10)),
                            )
                            .await;
                    }
                }
                // A store that refuses every write recovers fine (reads
                // work), so restarting would only fail at the next batch.
                let fatal = sh
                    .store_fatal
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if let Some(error) = fatal {
                    sh.give_up(GaveUp {
                        actor: kind.label(),
                        // The failed commits, each of which restarted it.
                        attempts: sh.commit_failures.load(Ordering::Acquire),
                        error,
                    });
                    return Ok(());
                }
                // A failed restart is retried with backoff rather than taking
                // the supervisor (and every read path) down with it. Every
                // attempt is counted, so a node that keeps failing to
                // recover trips `SwooshActorRestarts` well before it gives up.
                let mut delay = Duration::from_millis(20);
                for attempt in 1..=RESTART_ATTEMPTS_MAX {
                    sh.count_restart(kind);
                    match self.start_pair(&me).await {
                        Ok(_) => {
                            sh.set_ready(true);
                            break;
                        }
                        Err(e) if attempt < RESTART_ATTEMPTS_MAX => {
                            tracing::warn!(attempt, error = %e, "restart of sequencer and WAL writer failed; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(2));
                        }
                        Err(e) => sh.give_up(GaveUp {
                            actor: kind.label(),
                            attempts: attempt,
                            error: e.to_string(),
                        }),
                    }
                }
            }
            ActorKind::Region(_) | ActorKind::Snapshotter | ActorKind::Attention => {
                sh.count_restart(kind);
                let restarted = match kind {
                    ActorKind::Region(r) => self.start_region(&me, r, None).await,
                    ActorKind::Snapshotter => self.start_snap(&me).await,
                    _ => self.start_attention(&me).await,
                };
                // Failing here used to stop the supervisor, so nothing was
                // restarted again and nobody was told; the process must exit.
                if let Err(e) = restarted {
                    sh.give_up(GaveUp {
                        actor: kind.label(),
                        attempts: 1,
                        error: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An oversized memory file is read only up to the limit, refused as too
    /// large and set aside; a FIFO at the path is refused without opening it
    /// (opening it for reading would block the node's start).
    #[test]
    fn an_oversized_or_special_memory_file_starts_fresh_without_reading_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("attention.cbor");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(64 * 1024 * 1024).unwrap(); // sparse: no disk used
        drop(f);
        assert_eq!(
            read_memory_file(&big).unwrap().len(),
            swoosh_core::attention::MEMORY_BYTES_MAX + 1
        );
        let (scorer, note, loaded) = load_memory(Some(&big), 7);
        assert!(!loaded && scorer.is_empty(), "{note}");
        assert!(note.contains("set aside"), "{note}");
        assert!(!big.exists(), "the oversized file is set aside");

        let fifo = dir.path().join("fifo.cbor");
        match std::process::Command::new("mkfifo").arg(&fifo).status() {
            Ok(st) if st.success() => {
                let (_, note, loaded) = load_memory(Some(&fifo), 8);
                assert!(!loaded && note.contains("not a regular file"), "{note}");
            }
            other => eprintln!("NOTE: no FIFO for this check (mkfifo: {other:?})"),
        }
    }

    fn follower(name: &str, lag: Option<u64>, ago: Option<u64>) -> FollowerHealth {
        FollowerHealth {
            name: name.into(),
            key: format!("hmmm:pubkey:{name}"),
            connected: lag.is_some(),
            applied_index: lag.map(|l| 100 - l),
            lag_records: lag,
            last_report_ms_ago: ago,
            halted: false,
        }
    }

    /// A node on a fresh LMDB store with a manual clock at `origin_ms`.
    struct TestNode {
        _dir: tempfile::TempDir,
        node: NodeHandle<swoosh_storage::LmdbStore>,
        keys: swoosh_core::scenario::Keys,
        genesis: swoosh_core::state::Genesis,
        origin_ms: u64,
    }

    /// The driver's first proposal for the project `default` of `t`.
    fn first_proposal(t: &TestNode) -> Box<swoosh_core::Proposal> {
        use swoosh_core::scenario::{Driver, Next};
        let state = NodeState::new(t.genesis.clone()).unwrap();
        let Next::Propose(p) = Driver::new(&t.keys, 3).next(&state, "default", t.origin_ms) else {
            panic!("the driver has a first step");
        };
        p
    }

    async fn test_node(label: &str, snapshot_every: u64) -> TestNode {
        use swoosh_core::scenario::{genesis, Keys};
        let dir = tempfile::tempdir().expect("temp dir");
        let store = swoosh_storage::LmdbStore::open(dir.path(), &Default::default())
            .expect("open the LMDB store");
        let keys = Keys::from_labels(label, 3);
        let origin_ms = 1_700_000_000_000;
        let g = genesis(&keys, label, origin_ms);
        let cfg = NodeConfig {
            genesis: g.clone(),
            leader_key: keys.leader.clone(),
            snapshot_every,
            snapshot_keep: 3,
            wal_limits: BatchLimits::default(),
            clock: Arc::new(crate::ManualClock(AtomicU64::new(origin_ms))),
            advertise: String::new(),
            attention_file: None,
            compaction: None,
        };
        let node = NodeHandle::start(store, cfg).await.expect("node starts");
        TestNode {
            _dir: dir,
            node,
            keys,
            genesis: g,
            origin_ms,
        }
    }

    /// A caller that goes away (its connection dropped, its own timeout)
    /// does not free its admission slot while the node still works on its
    /// proposal: the slot travels with it and is freed once it is answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_proposal_keeps_its_admission_slot_until_answered() {
        let t = test_node("abandoned", 0).await;
        let (node, p) = (&t.node, first_proposal(&t));
        // Commits wait for this lock (held by a thread of its own, not
        // across this test's awaits): the proposal stays undurable.
        let held = node.shared.commit_lock.clone();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let _guard = held.lock().unwrap();
            locked_tx.send(()).unwrap();
            let _ = release_rx.recv();
        });
        locked_rx.recv().unwrap();
        let abandoned = tokio::time::timeout(Duration::from_millis(200), node.submit((*p).clone()));
        assert!(abandoned.await.is_err(), "no answer while commits wait");
        assert_eq!(
            node.shared.inflight.load(Ordering::Acquire),
            1,
            "the slot stays taken while the sequencer holds the proposal"
        );
        node.set_inflight_max(1);
        let mut other = (*p).clone();
        other.idem_key = "default:other".into();
        assert!(
            matches!(node.submit(other).await, SubmitResult::Busy { .. }),
            "the limit counts the abandoned proposal"
        );
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.shared.inflight.load(Ordering::Acquire) > 0 {
            assert!(Instant::now() < deadline, "the slot is freed once durable");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match node.submit((*p).clone()).await {
            SubmitResult::Accepted(ok) => assert!(ok.duplicate && ok.index == 1, "{ok:?}"),
            other => panic!("expected the original outcome, got {other:?}"),
        }
    }

    /// A full WAL mailbox refuses a proposal before the reducer applies it
    /// (`429`-style Busy), instead of failing after and restarting the
    /// sequencer and the writer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_wal_mailbox_is_backpressure_not_a_restart() {
        let t = test_node("walfull", 0).await;
        let (node, p) = (&t.node, first_proposal(&t));
        let wal = node.shared.refs.read().unwrap().wal.clone().unwrap();
        wal.depth.fill();
        match node.submit((*p).clone()).await {
            SubmitResult::Busy { reason, .. } => assert!(reason.contains("WAL"), "{reason}"),
            other => panic!("expected Busy, got {other:?}"),
        }
        assert_eq!(node.shared.restarts.load(Ordering::Acquire), 0);
        wal.depth.reset();
        match node.submit((*p).clone()).await {
            SubmitResult::Accepted(ok) => {
                assert!(
                    !ok.duplicate && ok.index == 1,
                    "the refused one left no trace: {ok:?}"
                )
            }
            other => panic!("expected Accepted, got {other:?}"),
        }
        assert_eq!(node.shared.restarts.load(Ordering::Acquire), 0);
    }

    /// A busy node counts each refused proposal under its transition's
    /// name only when the statechart knows the name: anything else a client
    /// sends lands in one `unknown` series instead of a new series each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn busy_retry_labels_only_known_transitions() {
        let t = test_node("labels", 0).await;
        let (node, p) = (&t.node, first_proposal(&t));
        let known = p.transition.clone();
        // Hold the only admission slot, as a proposal in flight would.
        node.set_inflight_max(1);
        node.shared.inflight.fetch_add(1, Ordering::AcqRel);
        for name in ["Evil_0", "Evil_1", "x\"} 1\nfake_metric 9", known.as_str()] {
            let mut q = (*p).clone();
            q.transition = name.to_string();
            assert!(
                matches!(node.submit(q).await, SubmitResult::Busy { .. }),
                "{name}: expected Busy"
            );
        }
        node.shared.inflight.fetch_sub(1, Ordering::AcqRel);
        let text = node.metrics_text();
        for line in [
            "swoosh_retry_count{transition=\"unknown\"} 3".to_string(),
            format!("swoosh_retry_count{{transition=\"{known}\"}} 1"),
        ] {
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        // SPEC §8's exact series name, not a counter's `_total` sample.
        assert!(text.contains("# TYPE swoosh_retry_count unknown"), "{text}");
        assert!(!text.contains("swoosh_retry_count_total"), "{text}");
        assert!(!text.contains("Evil"), "{text}");
        assert!(!text.contains("fake_metric"), "{text}");
        node.shutdown().await;
    }

    /// A license past its grace leaves the gauge (an abandoned project
    /// would pin it, and its alert, for good); one in its grace stays.
    #[test]
    fn the_license_gauge_skips_licenses_past_their_grace() {
        let mut l = Licenses::default();
        assert_eq!(l.earliest_in_force(0), 0);
        l.0.insert("old".into(), (10_000, 5_000));
        l.0.insert("new".into(), (60_000, 5_000));
        assert_eq!(l.earliest_in_force(9_000), 10);
        assert_eq!(l.earliest_in_force(14_999), 10, "in its grace");
        assert_eq!(l.earliest_in_force(15_000), 60, "past its grace");
        assert_eq!(l.earliest_in_force(65_000), 0);
    }

    /// The earliest license expiry among live projects is exported, so an
    /// operator can alert before a license enters its grace.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_earliest_license_expiry_is_exported() {
        use swoosh_core::scenario::{Driver, Next};
        let TestNode {
            _dir,
            node,
            keys,
            genesis: g,
            origin_ms,
        } = test_node("license-gauge", 0).await;
        let line = |text: &str| {
            text.lines()
                .find(|l| l.starts_with("swoosh_license_expiry_seconds "))
                .map(str::to_string)
        };
        assert_eq!(
            line(&node.metrics_text()).as_deref(),
            Some("swoosh_license_expiry_seconds 0"),
            "no project holds a license yet"
        );
        let mut mirror = NodeState::new(g).unwrap();
        let driver = Driver::new(&keys, 3);
        for _ in 0..10 {
            if mirror.project("default").boot.license.is_some() {
                break;
            }
            let Next::Propose(p) = driver.next(&mirror, "default", origin_ms) else {
                panic!("the driver has a next step");
            };
            assert!(
                matches!(node.submit((*p).clone()).await, SubmitResult::Accepted(_)),
                "{} accepted",
                p.transition
            );
            let ctx = Ctx {
                now_ms: origin_ms,
                verify: Verify::Trusted,
                snapshot_every: 0,
            };
            swoosh_core::step(&mut mirror, &p, &ctx);
        }
        let expires = mirror
            .project("default")
            .boot
            .license
            .as_ref()
            .expect("the driver licenses the project")
            .expires_at
            .wall_ms;
        assert_eq!(
            line(&node.metrics_text()),
            Some(format!("swoosh_license_expiry_seconds {}", expires / 1000))
        );
        node.shutdown().await;
    }

    /// Submit the driver's next proposal for `default`, which must be
    /// accepted, and step `mirror` with it.
    async fn submit_next(
        node: &NodeHandle<swoosh_storage::LmdbStore>,
        driver: &swoosh_core::scenario::Driver<'_>,
        mirror: &mut NodeState,
        origin_ms: u64,
    ) -> SubmitOk {
        let swoosh_core::scenario::Next::Propose(p) = driver.next(mirror, "default", origin_ms)
        else {
            panic!("the driver has a next step");
        };
        let ok = match node.submit((*p).clone()).await {
            SubmitResult::Accepted(ok) => ok,
            other => panic!("not accepted: {other:?}"),
        };
        let ctx = Ctx {
            now_ms: origin_ms,
            verify: Verify::Trusted,
            snapshot_every: 0,
        };
        swoosh_core::step(mirror, &p, &ctx);
        ok
    }

    /// A region update or a snapshot request dropped on a full mailbox used
    /// to vanish without a trace (`let _ = try_send(..)`), and the region
    /// served the version before it until the project changed again. Both
    /// are now counted, and the region view is rebuilt from storage before
    /// it answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_region_updates_and_snapshot_requests_are_counted_and_repaired() {
        use swoosh_core::scenario::Driver;
        let TestNode {
            _dir,
            node,
            keys,
            genesis: g,
            origin_ms,
        } = test_node("drops", 1).await;
        let mut mirror = NodeState::new(g).unwrap();
        let driver = Driver::new(&keys, 3);
        let submit =
            async |mirror: &mut NodeState| submit_next(&node, &driver, mirror, origin_ms).await;
        submit(&mut mirror).await;
        let m = node.metrics();
        assert_eq!(m.region_updates_dropped_total.get(), 0);
        assert_eq!(m.snapshot_requests_dropped_total.get(), 0);

        // Every region and the snapshotter stalled with full mailboxes, once
        // they took the first record's messages (a later take would free a
        // slot).
        let depths = &node.shared.depths;
        let t0 = Instant::now();
        while node.health().last_snapshot_index != Some(1)
            || depths.regions.values().any(|d| d.get() > 0)
        {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "first record not taken"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        depths.regions.values().for_each(Depth::fill);
        depths.snap.fill();
        let second = submit(&mut mirror).await;
        assert_eq!(
            m.region_updates_dropped_total.get(),
            Region::ALL.len() as u64,
            "one dropped update per region"
        );
        assert_eq!(m.snapshot_requests_dropped_total.get(), 1);
        let text = node.metrics_text();
        for line in [
            format!("swoosh_region_updates_dropped_total {}", Region::ALL.len()),
            "swoosh_snapshot_requests_dropped_total 1".to_string(),
        ] {
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }

        // The stall clears: the next read sees the dropped version, not the
        // one before it, although no region ever received it.
        depths.regions.values().for_each(Depth::reset);
        depths.snap.reset();
        let v = node.state("default", &[]).await.expect("state");
        assert_eq!(v.hash, second.state_post_hash);
        assert_eq!(v.hash, mirror.project_hash("default"));
        node.shutdown().await;
    }

    /// A snapshot request dropped on the snapshotter's full mailbox is asked
    /// again at the first record after the mailbox has room, not a whole
    /// interval later (nor at every record while it stays full).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_snapshot_request_is_asked_again_once_there_is_room() {
        use swoosh_core::scenario::Driver;
        let TestNode {
            _dir,
            node,
            keys,
            genesis: g,
            origin_ms,
        } = test_node("owed", 3).await;
        let mut mirror = NodeState::new(g).unwrap();
        let driver = Driver::new(&keys, 3);
        let submit =
            async |mirror: &mut NodeState| submit_next(&node, &driver, mirror, origin_ms).await;
        let m = node.metrics();
        let depths = &node.shared.depths;
        submit(&mut mirror).await;
        submit(&mut mirror).await;
        depths.snap.fill();
        // Record 3 is due (every 3); its request is dropped.
        assert_eq!(submit(&mut mirror).await.index, 3);
        assert_eq!(m.snapshot_requests_dropped_total.get(), 1);
        // Still full: record 4 asks for nothing.
        assert_eq!(submit(&mut mirror).await.index, 4);
        assert_eq!(m.snapshot_requests_dropped_total.get(), 1);
        depths.snap.reset();
        assert_eq!(submit(&mut mirror).await.index, 5);
        let t0 = Instant::now();
        while node.health().last_snapshot_index != Some(5) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no snapshot at 5 (the owed one): {:?}",
                node.health().last_snapshot_index
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(m.snapshot_requests_dropped_total.get(), 1);
        node.shutdown().await;
    }

    #[test]
    fn replicas_are_exported_and_unknowns_stay_absent() {
        let m = Metrics::new();
        export_replicas(
            &m,
            &[
                follower("follower-1", Some(12), Some(250)),
                follower("follower-2", None, None),
            ],
        );
        let t = m.encode();
        for line in [
            "swoosh_replica_connected{follower=\"follower-1\"} 1",
            "swoosh_replica_connected{follower=\"follower-2\"} 0",
            "swoosh_replica_halted{follower=\"follower-1\"} 0",
            "swoosh_replica_lag_records{follower=\"follower-1\"} 12",
            "swoosh_replica_report_age_seconds{follower=\"follower-1\"} 0.25",
        ] {
            assert!(t.contains(line), "{line} missing from:\n{t}");
        }
        assert!(!t.contains("swoosh_replica_lag_records{follower=\"follower-2\"}"));
        assert!(!t.contains("swoosh_replica_report_age_seconds{follower=\"follower-2\"}"));

        // The second follower reports and halts; the first loses its link.
        let mut f2 = follower("follower-2", Some(0), Some(10));
        f2.halted = true;
        let mut f1 = follower("follower-1", Some(40), Some(6_000));
        f1.connected = false;
        export_replicas(&m, &[f1, f2]);
        let t = m.encode();
        for line in [
            "swoosh_replica_connected{follower=\"follower-1\"} 0",
            "swoosh_replica_lag_records{follower=\"follower-1\"} 40",
            "swoosh_replica_report_age_seconds{follower=\"follower-1\"} 6.0",
            "swoosh_replica_halted{follower=\"follower-2\"} 1",
            "swoosh_replica_lag_records{follower=\"follower-2\"} 0",
        ] {
            assert!(t.contains(line), "{line} missing from:\n{t}");
        }
    }
}
