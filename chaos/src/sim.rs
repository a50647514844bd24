//! The simulation loop. One step: advance the virtual clock, deliver due
//! messages, maybe inject a node fault, tick every node, submit one proposal,
//! maybe group-commit. After `transitions` proposals: heal everything, let
//! the cluster catch up on a calm network, and compare every replica.

use crate::checks::{check_bad_vote, check_replay, forged_refused, ForgeryTally};
use crate::disk::Disk;
use crate::forge::{forge_batch, forge_head, Forgery};
use crate::net::{Addr, Envelope, LinkFaults, Msg, Net};
use crate::rng::Rng;
use crate::{
    AttentionItem, SimConfig, SimReport, ATTENTION_LISTED_MAX, COUNCIL_MAX, PROJECTS_MAX,
    REPLICAS_MAX, VIOLATIONS_LISTED_MAX,
};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use swoosh_core::attention::{Band, Event, EventKind, Scorer, Tuning, SURFACE_BAND_MIN};
use swoosh_core::cbor::to_canonical;
use swoosh_core::facts::{Vote, VoteBody};
use swoosh_core::hash::Hash;
use swoosh_core::invariants::{check_quorum_certificate, check_state, check_transition};
use swoosh_core::proposal::ProposalBuilder;
use swoosh_core::reducer::{
    step_recalled, Ctx, Effect, Outcome, IDEM_EVICT_BATCH, IDEM_KEYS_PER_PROJECT_MAX,
    IDEM_KEYS_TOTAL_MAX,
};
use swoosh_core::scenario::{genesis, one, Driver, Fault, Keys, Next};
use swoosh_core::sig::{self, SignerId};
use swoosh_core::state::{Genesis, NodeState};
use swoosh_core::{guards::Verify, Proposal};
use swoosh_net::p2p::follower::STATUS_EVERY_MS;
use swoosh_net::proto::follower::GAP_GRACE_MS;
use swoosh_net::proto::leader::SNAPSHOT_CATCHUP_RECORDS;
use swoosh_net::proto::{
    certificate_proposal, Certificate, CouncilAgent, CouncilCollector, CouncilMsg, FollowerConfig,
    FollowerEffect, Gossip, LeaderConfig, LeaderEffect, LeaderLog, ReplFollower, ReplLeader,
    Request, Response, SnapshotView, VoteOutcome, VotePolicy, VoteRejection,
};
use swoosh_storage::index::{audit_indexes, get_decision, lookup_idem, IndexError};
use swoosh_storage::recovery::{
    recover, repair, verify_expecting, ExpectDecisions, RecoveryError, VerifyOptions,
};
use swoosh_storage::wal::{read_record, BatchLimits, Entry, ReadError, WalWriter};
use swoosh_storage::{
    compact, for_each_archived, read_snapshot, rebuild_base_snapshot, wal_base, write_snapshot,
    CompactOptions, DecisionDoc, Durability, LogStore, MemStore, Space,
};

/// The simulation's clock starts here (2026-01-01T00:00:00Z).
pub const ORIGIN_MS: u64 = 1_767_225_600_000;
/// The leader publishes its signed head this often, ms.
pub const HEAD_INTERVAL_MS: u64 = 50;
/// An open election is announced again after this long without a certificate.
pub const REANNOUNCE_MS: u64 = 300;
/// The leader snapshots every this many records.
pub const LEADER_SNAPSHOT_EVERY: u64 = 128;
/// Records the leader keeps before its newest snapshot; older ones are only
/// served as that snapshot (models log truncation by snapshotting).
pub const LEADER_LOG_RETAIN: u64 = 64;
/// Snapshots the leader keeps.
pub const LEADER_SNAPSHOTS_KEEP: usize = 3;
/// The leader compacts its log once the modelled truncation
/// (`LEADER_LOG_RETAIN` behind its newest snapshot) is this many records
/// past its WAL base.
pub const LEADER_COMPACT_MIN: u64 = 32;
/// Records per compaction step (below the replay pipeline's threshold, so
/// compaction replays on the simulator's one thread).
pub const LEADER_COMPACT_STEP: u64 = 500;
/// A follower snapshots every this many applied records.
pub const FOLLOWER_SNAPSHOT_EVERY: u64 = 128;
/// Proposals accepted but not committed when the leader forces a group commit.
pub const GROUP_COMMIT_RECORDS_MAX: usize = 8;
/// Accepted proposals remembered per project (for replays and stale hashes).
pub const HISTORY_PER_PROJECT_MAX: usize = 64;
/// Downtime of a killed node, ms.
pub const DOWNTIME_MS: (u64, u64) = (20, 400);
/// Duration of a partition, ms.
pub const PARTITION_MS: (u64, u64) = (50, 1_500);
/// Steps without a single proposal before the run is declared stalled.
pub const STALL_STEPS_MAX: u64 = 50_000;
/// A follower counts as steady this long after its restart (for `max_lag_steady`).
pub const STEADY_AFTER_MS: u64 = 1_000;
/// Calm simulated time allowed for the final catch-up, ms.
pub const CATCH_UP_MS_MAX: u64 = 120_000;
/// A running follower this many records behind the leader's durable index
/// is reported to the attention scorer as lagging (once, until it catches up).
pub const FOLLOWER_LAG_EVENT_RECORDS: u64 = 32;

/// Of the `restart` faults that pick the leader, this share arms its store
/// (`MemStore::crash_after_commits`) instead of killing it at once: the
/// kill then lands at one of its next commits.
pub const STORE_ARMED_SHARE: f64 = 0.5;
/// Most commits an armed leader store makes before it dies.
pub const STORAGE_CRASH_COMMITS_MAX: u64 = 2;
/// A follower's clock is off true time by at most this much after a step
/// (back or forward), ms; only its protocol timers read it.
pub const FOLLOWER_CLOCK_OFFSET_MS_MAX: u64 = 1_000;
/// The leader's clock judges every proposal's HLC and BACKBEAT window
/// against the clients' clocks (true time here), so it is kept as close as
/// NTP would keep it: a BACKBEAT phase is 150 ms, and a leader further off
/// than that refuses time-gated steps for as long as it stays off.
pub const LEADER_CLOCK_OFFSET_MS_MAX: u64 = 10;
/// Clocks drift by at most this much (parts per million) between steps
/// (bounded in all to twice the offset bound).
pub const CLOCK_DRIFT_PPM_MAX: u64 = 200;

/// Fault counters every report lists (zero when the fault did not occur).
pub const FAULT_KEYS: [&str; 28] = [
    "drop",
    "duplicate",
    "reorder",
    "delay",
    "partition",
    "restart",
    "snapshot_rollback",
    "snapshot_corrupt",
    "torn_write",
    "clock_skew",
    "license_latency",
    "license_denial",
    "license_short",
    "mcp_flap",
    "env_churn",
    "stale_hash",
    "replay",
    "forged_signature",
    "forged_message",
    "forged_vote",
    "flipped_vote",
    "flipped_vote_cert",
    "stale_vote",
    "outsider_vote",
    "foreign_vote",
    "storage_crash",
    "crash_before_sync",
    "clock_step",
];

const COUNCIL_TRANSITIONS: [&str; 2] = ["Council_QuorumCert", "Council_ReElect"];

/// A node's clock: true (simulated) time, plus an offset, plus a drift
/// since it was last stepped; never more than twice `bound` off.
#[derive(Clone, Copy, Debug)]
struct Clock {
    offset_ms: i64,
    drift_ppm: i64,
    since: u64,
    bound: u64,
}

impl Clock {
    fn exact(bound: u64) -> Clock {
        Clock {
            offset_ms: 0,
            drift_ppm: 0,
            since: ORIGIN_MS,
            bound,
        }
    }

    fn read(&self, now: u64) -> u64 {
        let drift =
            (now.saturating_sub(self.since) as i128 * self.drift_ppm as i128 / 1_000_000) as i64;
        let max = 2 * self.bound as i64;
        now.saturating_add_signed((self.offset_ms + drift).clamp(-max, max))
    }
}

struct ProtoSnap {
    index: u64,
    head_record: Hash,
    root_hash: Hash,
    bytes: Vec<u8>,
}

struct Ack {
    project: String,
    idem_key: String,
    index: u64,
    post_hash: Hash,
}

struct Pending {
    entry: Entry,
    /// The 202 to send once durable (`None`: sent already — sabotage only).
    ack: Option<Ack>,
}

struct LeaderUp {
    node: NodeState,
    writer: WalWriter<MemStore>,
    repl: ReplLeader,
    collector: CouncilCollector,
    /// Accepted, not yet group-committed (lost on a crash; no 202 sent).
    buffer: Vec<Pending>,
    /// Repeats whose original is not durable yet.
    waiting_acks: Vec<Ack>,
    /// Last durable index.
    synced: u64,
    /// Index of the newest usable snapshot in the store.
    snap_index: Option<u64>,
    /// That snapshot as the protocol serves it (materialized on demand).
    snap: Option<ProtoSnap>,
    last_snapshot: u64,
    last_head_ms: u64,
    last_announce: BTreeMap<String, u64>,
    /// The store is armed to die at one of its next commits.
    armed: bool,
}

impl LeaderUp {
    /// Load the newest snapshot for serving, if it is not loaded yet
    /// (after a restart it is only read when a follower needs it).
    fn materialize_snapshot(&mut self) {
        let Some(idx) = self.snap_index else { return };
        if self.snap.as_ref().is_some_and(|s| s.index == idx) {
            return;
        }
        self.snap = read_snapshot(self.writer.store(), idx)
            .ok()
            .map(|(_, s)| ProtoSnap {
                index: s.index,
                head_record: s.head_record,
                root_hash: s.root_hash,
                bytes: to_canonical(&s.state).expect("node states encode"),
            });
    }
}

enum LeaderNode {
    Up(Box<LeaderUp>),
    Down { store: MemStore, until: u64 },
}

struct FollowerNode {
    id: SignerId,
    disk: Disk,
    repl: Option<ReplFollower>,
    down_until: u64,
    up_since: u64,
    last_snapshot: u64,
    /// When it next reports its position (`Request::Status`).
    next_status: u64,
    clock: Clock,
}

/// An accepted proposal, with what its acceptance answered (a replay of it
/// must get the same answer).
struct Answered {
    proposal: Proposal,
    index: u64,
    post_hash: Hash,
}

/// The leader's durable log as the replication protocol reads it.
struct LogView<'a> {
    store: &'a MemStore,
    synced: u64,
    snap_index: Option<u64>,
    snap: Option<&'a ProtoSnap>,
}

impl LeaderLog for LogView<'_> {
    fn first_index(&self) -> u64 {
        // The modelled truncation, or where compaction really cut the log
        // (further after a restart that recovered from an older snapshot).
        let modelled = self
            .snap_index
            .map_or(1, |i| i.saturating_sub(LEADER_LOG_RETAIN) + 1);
        modelled.max(swoosh_storage::first_index(self.store).unwrap_or(1))
    }
    fn last_index(&self) -> u64 {
        self.synced
    }
    fn record(&self, index: u64) -> Option<swoosh_core::record::WalRecord> {
        if index < self.first_index() || index > self.synced {
            return None;
        }
        read_record(self.store, index).ok().map(|v| v.record)
    }
    fn snapshot(&self) -> Option<SnapshotView<'_>> {
        self.snap
            .filter(|s| Some(s.index) == self.snap_index)
            .map(|s| SnapshotView {
                index: s.index,
                head_record: s.head_record,
                root_hash: s.root_hash,
                bytes: &s.bytes,
            })
    }
}

struct Sim<'k> {
    cfg: SimConfig,
    rng: Rng,
    /// True time; each node reads its own `Clock` of it.
    now: u64,
    leader_clock: Clock,
    keys: &'k Keys,
    driver: Driver<'k>,
    genesis: Genesis,
    genesis_hash: Hash,
    leader: Option<LeaderNode>,
    followers: Vec<FollowerNode>,
    agents: Vec<CouncilAgent>,
    net: Net,
    calm: bool,
    projects: Vec<String>,
    projects_made: usize,
    history: BTreeMap<String, VecDeque<Answered>>,
    license_blocked_until: BTreeMap<String, u64>,
    /// index → (record hash, post hash) of every durable leader record.
    durable: BTreeMap<u64, (Hash, Hash)>,
    acked: Vec<Ack>,
    report: SimReport,
    fatal: bool,
    /// The attention scorer fed with the cluster's operational events
    /// (time: virtual ms since `ORIGIN_MS`). It is the leader's: its memory
    /// goes through `to_bytes`/`from_bytes` across every leader restart.
    attn: Scorer,
    /// The scorer's persisted memory while the leader is down.
    attn_saved: Option<Vec<u8>>,
    /// Followers currently reported as lagging.
    lagging: Vec<bool>,
    /// Forged messages delivered to each running follower, and refused.
    forgeries: ForgeryTally,
    /// Where the leader's compactions write their archives, and the
    /// archives written, in order.
    archive_dir: tempfile::TempDir,
    archives: Vec<std::path::PathBuf>,
}

/// The libp2p leader's replication settings (`p2p::leader::spawn_leader_with`):
/// a follower that far behind the newest snapshot is offered it instead of
/// ranges. Lagging simulated followers are still offered snapshots far more
/// often through the modelled log truncation (`LEADER_LOG_RETAIN`).
fn leader_cfg() -> LeaderConfig {
    LeaderConfig {
        snapshot_catchup_records: SNAPSHOT_CATCHUP_RECORDS,
        ..LeaderConfig::default()
    }
}

/// The libp2p follower's replication settings (`p2p::follower`): gossip
/// gets `GAP_GRACE_MS` to fill a gap before a range is asked for.
fn follower_cfg() -> FollowerConfig {
    FollowerConfig {
        gap_grace_ms: GAP_GRACE_MS,
        ..FollowerConfig::default()
    }
}

impl SimConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.replicas == 0 || self.replicas > REPLICAS_MAX {
            return Err(format!(
                "--replicas must be 1..={REPLICAS_MAX} (leader plus followers), got {}",
                self.replicas
            ));
        }
        if self.projects == 0 || self.projects > PROJECTS_MAX {
            return Err(format!(
                "--projects must be 1..={PROJECTS_MAX}, got {}",
                self.projects
            ));
        }
        if self.council == 0 || self.council > COUNCIL_MAX {
            return Err(format!(
                "--council must be 1..={COUNCIL_MAX}, got {}",
                self.council
            ));
        }
        if self.no_voters > self.council {
            return Err(format!(
                "--no-voters {} exceeds the {} council agents",
                self.no_voters, self.council
            ));
        }
        for (name, p) in self.rates.named() {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("fault rate {name} must be within 0..=1, got {p}"));
            }
        }
        Ok(())
    }
}

pub fn run(cfg: SimConfig, progress: &mut dyn FnMut(u64, u64)) -> SimReport {
    let mut report = SimReport {
        seed: cfg.seed,
        mode: "sim".into(),
        replicas: cfg.replicas,
        reproduce: cfg.reproduce(),
        ..SimReport::default()
    };
    if let Err(e) = cfg.validate() {
        report
            .violations
            .push(format!("invalid configuration: {e}"));
        return report;
    }
    for k in FAULT_KEYS {
        report.faults.insert(k.to_string(), 0);
    }
    // The simulated leader's compaction writes real archive files.
    let archive_dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            report.violations.push(format!(
                "cannot run: no temporary directory for the simulated leader's archives ({e}); set TMPDIR to a writable directory"
            ));
            return report;
        }
    };
    let keys = Keys::from_labels("chaos", cfg.council);
    let fallback = report.clone();
    // A panic anywhere in the cluster (core, storage, protocol, simulator) is
    // a finding like any violation: report it with the reproduce command.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut sim = Sim::new(cfg, &keys, report, archive_dir);
        sim.run(progress);
        sim.finish()
    }));
    outcome.unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into());
        let mut r = fallback;
        r.violations.push(format!("panic: {why}"));
        r
    })
}

fn fault_name(f: Fault) -> &'static str {
    match f {
        Fault::StaleHash => "stale_hash",
        Fault::Replay => "replay",
        Fault::IdemConflict => "idem_conflict",
        Fault::ForgedSignature => "forged_signature",
        Fault::UnknownTransition => "unknown_transition",
        Fault::WrongRole => "wrong_role",
        Fault::Outsider => "outsider",
        Fault::ClockAhead => "clock_skew",
        Fault::WrongWindow => "wrong_window",
        Fault::ForgedVote => "forged_vote_cert",
        Fault::Pause => "pause",
        Fault::QuorumLost => "quorum_lost",
        Fault::Eject => "eject",
        Fault::Deprovision => "env_churn",
        Fault::RollbackIndex => "rollback_index",
        Fault::ToolingLost => "mcp_flap",
        Fault::PolicyViolation => "policy_violation",
        Fault::Release => "release",
        Fault::ShortLicense => "license_short",
        Fault::CapacityChurn => "env_churn",
        Fault::Terminate => "terminate",
    }
}

/// What kind of proposal the workload submitted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The driver's valid next step.
    Valid,
    /// A council certificate assembled from agents' votes.
    Certificate,
    /// A ready certificate with a "no" voter's vote flipped to approve
    /// added: the quorum guard must refuse it (the flipped vote's
    /// signature does not verify).
    ForgedCertificate,
    Fault(Fault),
    LicenseDenied,
}

impl<'k> Sim<'k> {
    fn new(
        cfg: SimConfig,
        keys: &'k Keys,
        report: SimReport,
        archive_dir: tempfile::TempDir,
    ) -> Sim<'k> {
        let genesis = genesis(keys, "chaos", ORIGIN_MS);
        let genesis_hash = genesis.hash().expect("the scenario genesis encodes");
        let rng = Rng::new(cfg.seed);
        let store = MemStore::new("leader", Durability::NoSync);
        let followers = (1..cfg.replicas)
            .map(|i| FollowerNode {
                id: SignerId::from_signing_key(&sig::key_from_label(&format!(
                    "chaos/follower-{i}"
                ))),
                disk: Disk::default(),
                repl: None,
                down_until: 0,
                up_since: 0,
                last_snapshot: 0,
                next_status: 0,
                clock: Clock::exact(FOLLOWER_CLOCK_OFFSET_MS_MAX),
            })
            .collect();
        let agents = keys
            .council
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let policy = if i < cfg.no_voters {
                    VotePolicy::VoteNo
                } else {
                    VotePolicy::ApproveAll
                };
                CouncilAgent::new(k.clone(), &genesis, policy)
            })
            .collect();
        let projects = (0..cfg.projects)
            .map(|i| {
                if i == 0 {
                    "default".to_string()
                } else {
                    format!("proj-{}", i + 1)
                }
            })
            .collect();
        let cfg_followers = cfg.replicas.saturating_sub(1);
        let mut sim = Sim {
            projects_made: cfg.projects,
            cfg,
            rng,
            now: ORIGIN_MS + 1,
            leader_clock: Clock::exact(LEADER_CLOCK_OFFSET_MS_MAX),
            keys,
            driver: Driver::new(keys, u64::MAX),
            genesis,
            genesis_hash,
            leader: None,
            followers,
            agents,
            net: Net::default(),
            calm: false,
            projects,
            history: BTreeMap::new(),
            license_blocked_until: BTreeMap::new(),
            durable: BTreeMap::new(),
            acked: vec![],
            report,
            fatal: false,
            attn: Scorer::new(Tuning::SIMULATION),
            attn_saved: None,
            lagging: vec![false; cfg_followers],
            forgeries: ForgeryTally::new(cfg_followers),
            archive_dir,
            archives: vec![],
        };
        sim.restart_leader(store);
        for i in 0..sim.followers.len() {
            sim.restart_follower(i);
        }
        sim
    }

    /// Feed one operational event to the attention scorer, stamped now.
    fn attend(&mut self, kind: EventKind, reason: &str, peer: Option<String>) {
        let mut e = Event::new(kind, reason, self.now - ORIGIN_MS);
        if let Some(p) = peer {
            e = e.peer(p);
        }
        self.attn.observe(&e);
    }

    fn count(&mut self, k: &str) {
        *self.report.faults.entry(k.to_string()).or_default() += 1;
    }

    fn violation(&mut self, v: String) {
        if self.report.violations.len() < VIOLATIONS_LISTED_MAX {
            self.report
                .violations
                .push(format!("t+{}ms: {v}", self.now - ORIGIN_MS));
        } else {
            self.report.violations_unlisted += 1;
        }
    }

    fn link_faults(&self) -> Option<LinkFaults> {
        (!self.calm).then_some(LinkFaults {
            drop: self.cfg.rates.drop,
            duplicate: self.cfg.rates.duplicate,
            reorder: self.cfg.rates.reorder,
            delay: self.cfg.rates.delay,
        })
    }

    fn send(&mut self, from: Addr, to: Addr, msg: Msg) {
        let f = self.link_faults();
        self.net.send(&mut self.rng, self.now, from, to, msg, f);
    }

    fn up(&mut self) -> Option<&mut LeaderUp> {
        match self.leader.as_mut() {
            Some(LeaderNode::Up(l)) => Some(l),
            _ => None,
        }
    }

    fn node(&self) -> Option<&NodeState> {
        match self.leader.as_ref() {
            Some(LeaderNode::Up(l)) => Some(&l.node),
            _ => None,
        }
    }

    fn synced_max(&self) -> u64 {
        self.durable.last_key_value().map_or(0, |(k, _)| *k)
    }

    // ---- the main loop ---------------------------------------------------

    fn run(&mut self, progress: &mut dyn FnMut(u64, u64)) {
        let total = self.cfg.transitions;
        let mut idle = 0u64;
        while self.report.transitions < total && !self.fatal {
            self.now += match self.rng.below(100) {
                0..=69 => self.rng.range(1, 5),
                70..=94 => self.rng.range(6, 40),
                _ => self.rng.range(41, 400),
            };
            self.wake_nodes();
            self.deliver();
            for a in self.net.heal_ended(self.now) {
                self.attend(EventKind::PartitionHealed, "", Some(addr_name(a)));
            }
            self.inject_node_fault();
            self.tick_nodes();
            let before = self.report.transitions;
            self.propose();
            if self.rng.chance(0.5)
                || self
                    .up()
                    .is_some_and(|l| l.buffer.len() >= GROUP_COMMIT_RECORDS_MAX)
            {
                self.leader_commit();
            }
            self.sync_followers();
            self.sample_lag();
            if self.report.transitions > before {
                idle = 0;
                if self.report.transitions.is_multiple_of(100) || self.report.transitions == total {
                    progress(self.report.transitions, total);
                }
            } else {
                idle += 1;
                if idle > STALL_STEPS_MAX {
                    self.violation(format!(
                        "the workload stalled: no proposal in {STALL_STEPS_MAX} steps ({} of {total} submitted)",
                        self.report.transitions
                    ));
                    break;
                }
            }
        }
        if !self.fatal {
            self.catch_up();
        }
    }

    fn wake_nodes(&mut self) {
        if let Some(LeaderNode::Down { until, .. }) = &self.leader {
            if *until <= self.now {
                let Some(LeaderNode::Down { store, .. }) = self.leader.take() else {
                    unreachable!()
                };
                self.restart_leader(store);
            }
        }
        for i in 0..self.followers.len() {
            if self.followers[i].repl.is_none() && self.followers[i].down_until <= self.now {
                self.restart_follower(i);
            }
        }
    }

    fn deliver(&mut self) {
        while let Some(e) = self.net.pop_due(self.now) {
            if self.fatal {
                return;
            }
            self.on_message(e);
        }
    }

    fn on_message(&mut self, e: Envelope) {
        let now = self.now;
        match (e.to, e.msg) {
            (Addr::Follower(i), Msg::Gossip(g)) => {
                let now = self.followers[i].clock.read(now);
                if let Some(r) = self.followers[i].repl.as_mut() {
                    let eff = r.on_gossip(&g, now);
                    self.follower_effects(i, eff);
                }
            }
            (Addr::Follower(i), Msg::Forged(g, how)) => {
                // Delivered to a running follower (a halted one is a
                // violation already): it must refuse it, and nothing else.
                let now = self.followers[i].clock.read(now);
                let Some(r) = self.followers[i].repl.as_mut() else {
                    return;
                };
                if r.halted().is_some() {
                    return;
                }
                let eff = r.on_gossip(&g, now);
                let verdict = forged_refused(&eff, how.expected_refusal());
                self.forgeries.record(i, verdict.is_ok());
                if let Err(what) = verdict {
                    let kind = match &*g {
                        Gossip::Batch(_) => "batch",
                        Gossip::Head(_) => "head",
                    };
                    self.violation(format!(
                        "follower {} was delivered a forged {kind} ({how:?}): {what}",
                        i + 1
                    ));
                }
                self.follower_effects(i, eff);
            }
            (Addr::Follower(i), Msg::Response(resp)) => {
                let now = self.followers[i].clock.read(now);
                if let Some(r) = self.followers[i].repl.as_mut() {
                    let eff = r.on_response(&resp, now);
                    self.follower_effects(i, eff);
                }
            }
            (Addr::Leader, Msg::Request(req)) => {
                let from = e.from;
                // Borrow the leader alone: the followers and the report stay usable.
                let Some(LeaderNode::Up(l)) = self.leader.as_mut() else {
                    return;
                };
                let first = l
                    .snap_index
                    .map_or(1, |i| i.saturating_sub(LEADER_LOG_RETAIN) + 1)
                    .max(swoosh_storage::first_index(l.writer.store()).unwrap_or(1));
                if matches!(req, Request::Snapshot { .. })
                    || matches!(req, Request::Range { from, .. } if from < first)
                {
                    l.materialize_snapshot();
                }
                let view = LogView {
                    store: l.writer.store(),
                    synced: l.synced,
                    snap_index: l.snap_index,
                    snap: l.snap.as_ref(),
                };
                let resp = match (&req, from) {
                    // The sender is the authenticated peer, as over noise.
                    (Request::Status(r), Addr::Follower(i)) => {
                        let id = self.followers[i].id.clone();
                        self.report.replication.status_reports += 1;
                        l.repl.on_status_report(id, r, &view)
                    }
                    _ => l.repl.on_request(&req, &view),
                };
                if let (Response::Diverged { index, reason }, Addr::Follower(i)) = (&resp, from) {
                    // The follower halts on it (a violation there); say why here.
                    let v = format!(
                        "the leader finds follower {} off its log at index {index}: {reason}",
                        i + 1
                    );
                    self.violation(v);
                }
                self.send(Addr::Leader, from, Msg::Response(Rc::new(resp)));
            }
            (Addr::Leader, Msg::BadVote(v, expected)) => {
                let Some(l) = self.up() else { return };
                let outcome = l.collector.on_vote(&v);
                self.report.council.bad_votes_delivered += 1;
                match check_bad_vote(expected, &outcome) {
                    None => self.report.council.bad_votes_refused += 1,
                    Some(what) => self.violation(format!(
                        "a bad vote ({}, by {}) was {what} by the collector",
                        expected.name(),
                        v.body.voter
                    )),
                }
                if let VoteOutcome::Rejected(r) = outcome {
                    let e = Event::new(EventKind::VoteRejected, r.name(), now - ORIGIN_MS)
                        .signer(v.body.voter.to_string())
                        .project(v.body.project.clone());
                    self.attn.observe(&e);
                }
            }
            (Addr::Leader, Msg::Council(m)) => {
                let CouncilMsg::Vote(v) = &*m else { return };
                let Some(l) = self.up() else { return };
                let outcome = l.collector.on_vote(v);
                match outcome {
                    VoteOutcome::Certificate(_) => self.report.council.certificates += 1,
                    VoteOutcome::Rejected(r) => {
                        let e = Event::new(EventKind::VoteRejected, r.name(), now - ORIGIN_MS)
                            .signer(v.body.voter.to_string())
                            .project(v.body.project.clone());
                        self.attn.observe(&e);
                    }
                    _ => {}
                }
            }
            (Addr::Agent(j), Msg::Council(m)) => {
                let CouncilMsg::Announce(a) = &*m else { return };
                let Ok(vote) = self.agents[j].on_announce(a) else {
                    return;
                };
                self.send(
                    Addr::Agent(j),
                    Addr::Leader,
                    Msg::Council(Rc::new(CouncilMsg::Vote(vote.clone()))),
                );
                if !self.calm && self.rng.chance(self.cfg.rates.vote_fault) {
                    let (bad, expected) = self.bad_vote(j, &vote);
                    self.send(
                        Addr::Agent(j),
                        Addr::Leader,
                        Msg::BadVote(Rc::new(bad), expected),
                    );
                }
            }
            _ => {}
        }
    }

    /// A vote the collector must refuse, with the reason it must give:
    /// forged, from an outsider, for a stale epoch, signed by the agent's
    /// own key for another cluster's genesis (a key shared by two
    /// clusters), or a "no" voter's vote with its choice flipped to approve
    /// (its signature kept).
    fn bad_vote(&mut self, agent: usize, good: &Vote) -> (Vote, VoteRejection) {
        match self.rng.below(5) {
            0 => {
                self.count("forged_vote");
                let mut v = good.clone();
                v.signature.0[self.rng.below(64) as usize] ^= 0x10;
                (v, VoteRejection::BadSignature)
            }
            1 => {
                self.count("outsider_vote");
                let v = Vote::cast(
                    VoteBody {
                        voter: SignerId::from_signing_key(&self.keys.outsider),
                        ..good.body.clone()
                    },
                    &self.keys.outsider,
                );
                (v, VoteRejection::Outsider)
            }
            2 => {
                self.count("stale_vote");
                let v = Vote::cast(
                    VoteBody {
                        epoch: good.body.epoch.saturating_sub(1 + self.rng.below(3)),
                        ..good.body.clone()
                    },
                    &self.keys.council[agent],
                );
                (v, VoteRejection::StaleEpoch)
            }
            3 => {
                self.count("foreign_vote");
                let v = Vote::cast(
                    VoteBody {
                        genesis: Some(swoosh_core::Hash::of_bytes(b"another cluster's genesis")),
                        ..good.body.clone()
                    },
                    &self.keys.council[agent],
                );
                (v, VoteRejection::WrongGenesis)
            }
            _ => {
                self.count("flipped_vote");
                let no_voter = self.rng.below(self.cfg.no_voters.max(1) as u64) as usize;
                (
                    self.flipped_no_vote(no_voter, &good.body),
                    VoteRejection::BadSignature,
                )
            }
        }
    }

    /// Agent `k`'s "no" on `body`'s election, its choice flipped to approve
    /// after signing (`k` is a no-voter when there are any).
    fn flipped_no_vote(&self, k: usize, body: &VoteBody) -> Vote {
        let key = &self.keys.council[k % self.keys.council.len()];
        let mut v = Vote::cast(
            VoteBody {
                voter: SignerId::from_signing_key(key),
                approve: false,
                ..body.clone()
            },
            key,
        );
        v.body.approve = true;
        v
    }

    fn follower_effects(&mut self, i: usize, effects: Vec<FollowerEffect>) {
        for e in effects {
            match e {
                FollowerEffect::Applied(recs) => {
                    self.report.replication.records_applied += recs.len() as u64;
                    for a in &recs {
                        let r = &a.record;
                        match self.durable.get(&r.index) {
                            Some((h, _)) if *h != a.hash => self.violation(format!(
                                "follower {} and the leader disagree on record {}",
                                i + 1,
                                r.index
                            )),
                            None => self.violation(format!(
                                "follower {} applied record {} that is not durable on the leader",
                                i + 1,
                                r.index
                            )),
                            Some((_, post)) if *post != r.state_post_hash => {
                                self.violation(format!(
                                "follower {} and the leader disagree on the post hash at index {}",
                                i + 1,
                                r.index
                            ))
                            }
                            _ => {}
                        }
                    }
                    self.followers[i].disk.append(&recs);
                }
                FollowerEffect::InstallSnapshot { index, bytes } => {
                    self.report.replication.snapshots_installed += 1;
                    let f = &mut self.followers[i];
                    f.disk.put_snapshot(index, bytes);
                    f.last_snapshot = index;
                }
                FollowerEffect::Send(req) => {
                    self.send(Addr::Follower(i), Addr::Leader, Msg::Request(req));
                }
                FollowerEffect::Refused(r) => {
                    *self
                        .report
                        .replication
                        .refused
                        .entry(r.kind().to_string())
                        .or_default() += 1;
                    self.attend(EventKind::ForgedMessage, r.kind(), Some(peer_name(i + 1)));
                }
                FollowerEffect::Halted(d) => self.violation(format!(
                    "follower {} halted on a divergence at index {}: {}",
                    i + 1,
                    d.index,
                    d.reason
                )),
            }
        }
        let Some(r) = self.followers[i].repl.as_ref() else {
            return;
        };
        let (index, head) = (r.applied_index(), r.node().head_record);
        let snapshot_due = index >= self.followers[i].last_snapshot + FOLLOWER_SNAPSHOT_EVERY;
        let bytes = snapshot_due.then(|| to_canonical(r.node()).expect("node states encode"));
        if index > 0 && self.durable.get(&index).map(|d| d.0) != Some(head) {
            self.violation(format!(
                "follower {} stands on record hash {head} at index {index}, the leader's durable record differs",
                i + 1
            ));
        }
        // A follower's own snapshot, now and then.
        if let Some(bytes) = bytes {
            let f = &mut self.followers[i];
            f.disk.sync();
            f.disk.put_snapshot(index, bytes);
            f.last_snapshot = index;
        }
    }

    fn tick_nodes(&mut self) {
        let now = self.now;
        // Leader: signed head, election re-announcements.
        let mut heads = None;
        if let Some(l) = self.up() {
            if now >= l.last_head_ms + HEAD_INTERVAL_MS {
                l.last_head_ms = now;
                let first = LogView {
                    store: l.writer.store(),
                    synced: l.synced,
                    snap_index: l.snap_index,
                    snap: None,
                }
                .first_index();
                heads = Some(l.repl.head(first));
            }
        }
        if let Some(h) = heads {
            self.broadcast(h);
        }
        for i in 0..self.followers.len() {
            let local = self.followers[i].clock.read(now);
            if let Some(r) = self.followers[i].repl.as_mut() {
                let eff = r.tick(local);
                if !eff.is_empty() {
                    self.follower_effects(i, eff);
                }
            }
            // Its position, every STATUS_EVERY_MS as the libp2p follower
            // reports it (halted or not): the leader checks it is on its log.
            let f = &mut self.followers[i];
            if let Some(r) = f.repl.as_ref() {
                if now >= f.next_status {
                    f.next_status = now + STATUS_EVERY_MS;
                    let req = Request::Status(r.status_report());
                    self.send(Addr::Follower(i), Addr::Leader, Msg::Request(req));
                }
            }
        }
    }

    fn broadcast(&mut self, g: Gossip) {
        let forge = !self.calm && self.rng.chance(self.cfg.rates.forged_message);
        let g = Rc::new(g);
        for i in 0..self.followers.len() {
            self.send(Addr::Leader, Addr::Follower(i), Msg::Gossip(g.clone()));
        }
        if forge && !self.followers.is_empty() {
            let (forged, how) = self.forge(&g);
            let to = self.rng.below(self.followers.len() as u64) as usize;
            let m = Msg::Forged(Rc::new(forged), how);
            self.send(Addr::Leader, Addr::Follower(to), m);
        }
    }

    /// A forged copy of a leader message (see `forge`): a batch whose last
    /// record is altered, or a head naming another record hash (at the
    /// follower's likely index, or ahead of it), with the leader's signature
    /// kept or signed by another rostered key.
    fn forge(&mut self, g: &Gossip) -> (Gossip, Forgery) {
        let how = Forgery::ALL[self.rng.below(Forgery::ALL.len() as u64) as usize];
        self.count("forged_message");
        let forged = match g {
            Gossip::Batch(b) => {
                let shift = self.rng.below(1_000);
                Gossip::Batch(forge_batch(b, how, self.keys, shift))
            }
            Gossip::Head(h) => {
                let salt = self.rng.next_u64();
                let ahead = if self.rng.chance(0.5) {
                    0
                } else {
                    1 + self.rng.below(50)
                };
                Gossip::Head(forge_head(h, how, self.keys, salt, ahead))
            }
        };
        (forged, how)
    }

    fn sync_followers(&mut self) {
        for i in 0..self.followers.len() {
            if self.followers[i].repl.is_some()
                && self.followers[i].disk.unsynced() > 0
                && (self.calm || self.rng.chance(0.5))
            {
                self.followers[i].disk.sync();
            }
        }
    }

    fn sample_lag(&mut self) {
        let top = self.synced_max();
        let mut lag_events = vec![];
        for (i, f) in self.followers.iter().enumerate() {
            if let Some(r) = &f.repl {
                let lag = top.saturating_sub(r.applied_index());
                if lag >= FOLLOWER_LAG_EVENT_RECORDS && !self.lagging[i] {
                    lag_events.push((i, true));
                } else if lag == 0 && self.lagging[i] {
                    lag_events.push((i, false));
                }
                self.report.max_lag = self.report.max_lag.max(lag);
                if self.now >= f.up_since + STEADY_AFTER_MS
                    && !self.net.is_cut(Addr::Follower(i), self.now)
                {
                    self.report.max_lag_steady = self.report.max_lag_steady.max(lag);
                }
            }
        }
        for (i, behind) in lag_events {
            self.lagging[i] = behind;
            let (kind, why) = if behind {
                (EventKind::FollowerLag, "records behind the leader")
            } else {
                (EventKind::FollowerCaughtUp, "caught up with the leader")
            };
            self.attend(kind, why, Some(peer_name(i + 1)));
        }
    }

    // ---- node faults -----------------------------------------------------

    fn inject_node_fault(&mut self) {
        if self.calm {
            return;
        }
        let r = self.cfg.rates;
        let nodes = self.followers.len() as u64 + 1;
        if self.rng.chance(r.partition) && !self.followers.is_empty() {
            let n = self.followers.len() + self.agents.len();
            let k = self.rng.below(n as u64) as usize;
            let a = if k < self.followers.len() {
                Addr::Follower(k)
            } else {
                Addr::Agent(k - self.followers.len())
            };
            let until = self.now + self.rng.range(PARTITION_MS.0, PARTITION_MS.1);
            self.net.partition(a, until);
            self.count("partition");
            self.attend(EventKind::Partition, "network cut", Some(addr_name(a)));
        }
        if self.rng.chance(r.restart) {
            let k = self.rng.below(nodes) as usize;
            if k == 0 && self.rng.chance(STORE_ARMED_SHARE) {
                // The leader dies at one of its next commits instead (a
                // group commit or a snapshot write), wherever the run then
                // is: counted as `storage_crash` when it does.
                let n = self.rng.below(STORAGE_CRASH_COMMITS_MAX + 1);
                if let Some(l) = self.up() {
                    if !l.armed {
                        l.armed = true;
                        l.writer.store_mut().crash_after_commits(n);
                    }
                }
            } else if self.crash(k, false) {
                self.count("restart");
            }
        }
        if self.rng.chance(r.torn_write) {
            let k = self.rng.below(nodes) as usize;
            self.crash(k, true);
        }
        if self.rng.chance(r.snapshot_rollback) && !self.followers.is_empty() {
            let i = self.rng.below(self.followers.len() as u64) as usize;
            if self.followers[i].repl.is_some() {
                self.count("snapshot_rollback");
                self.attend(
                    EventKind::SnapshotRollback,
                    "restarted from its oldest snapshot",
                    Some(peer_name(i + 1)),
                );
                self.followers[i].repl = None;
                let to = self.followers[i].disk.rollback();
                self.followers[i].last_snapshot = to;
                self.followers[i].down_until = self.now + 1;
            }
        }
        if self.rng.chance(r.snapshot_corrupt) {
            let k = self.rng.below(nodes) as usize;
            let pick = self.rng.next_u64();
            if self.corrupt_snapshot(k, pick) && self.crash(k, false) {
                self.count("snapshot_corrupt");
            }
        }
        if self.rng.chance(r.clock_step) {
            let k = self.rng.below(nodes) as usize;
            self.count("clock_step");
            self.step_clock(k);
        }
    }

    /// Step node `k`'s clock to a new offset within its bound of true time
    /// (back or forward), with a new drift.
    fn step_clock(&mut self, k: usize) {
        let bound = if k == 0 {
            self.leader_clock.bound
        } else {
            self.followers[k - 1].clock.bound
        };
        let offset = self.rng.range(0, 2 * bound) as i64 - bound as i64;
        let drift = self.rng.range(0, 2 * CLOCK_DRIFT_PPM_MAX) as i64 - CLOCK_DRIFT_PPM_MAX as i64;
        let c = Clock {
            offset_ms: offset,
            drift_ppm: drift,
            since: self.now,
            bound,
        };
        if k == 0 {
            self.leader_clock = c;
        } else {
            self.followers[k - 1].clock = c;
        }
    }

    /// Flip a byte of node `k`'s newest snapshot (bit rot). Returns whether
    /// a snapshot was damaged.
    fn corrupt_snapshot(&mut self, k: usize, pick: u64) -> bool {
        if k > 0 {
            let f = &mut self.followers[k - 1];
            return f.repl.is_some() && f.disk.corrupt_newest_snapshot(pick).is_some();
        }
        let Some(l) = self.up() else { return false };
        let store = l.writer.store_mut();
        let Some(idx) = store.list_snapshots().ok().and_then(|v| v.last().copied()) else {
            return false;
        };
        let Ok(Some(mut bytes)) = store.get_snapshot(idx) else {
            return false;
        };
        let at = (pick % bytes.len() as u64) as usize;
        bytes[at] ^= 0x5a;
        let key = swoosh_storage::store::index_key(idx);
        store.overwrite_raw(Space::Snapshots, &key, &bytes).is_ok()
    }

    /// kill -9 node `k` (0 = leader, i + 1 = follower i). Returns whether
    /// a running node was killed.
    fn crash(&mut self, k: usize, torn: bool) -> bool {
        let down = self.now + self.rng.range(DOWNTIME_MS.0, DOWNTIME_MS.1);
        let up = if k == 0 {
            matches!(self.leader, Some(LeaderNode::Up(_)))
        } else {
            self.followers[k - 1].repl.is_some()
        };
        if up {
            self.attend(EventKind::Restart, "kill -9", Some(peer_name(k)));
        }
        if k == 0 {
            if !matches!(self.leader, Some(LeaderNode::Up(_))) {
                return false;
            }
            // The leader's attention memory is persisted as it goes down.
            self.attn_saved = Some(self.attn.to_bytes());
            let Some(LeaderNode::Up(mut l)) = self.leader.take() else {
                unreachable!("checked above")
            };
            if torn {
                if l.buffer.is_empty() {
                    // Nothing in flight to tear: a plain crash.
                    self.count("restart");
                } else {
                    // The group commit in flight reaches the disk torn.
                    self.count("torn_write");
                    l.writer.store_mut().tear_next_commit();
                    let entries: Vec<Entry> = l.buffer.iter().map(|p| p.entry.clone()).collect();
                    let _ = l.writer.append_batch(&entries);
                }
            } else if !l.buffer.is_empty()
                && !l.writer.store().has_crashed()
                && self.rng.chance(0.5)
            {
                // Killed between the group commit's append and its sync:
                // the appended records are not durable and no 202 was sent.
                self.count("crash_before_sync");
                let entries: Vec<Entry> = l.buffer.iter().map(|p| p.entry.clone()).collect();
                if l.writer.append_batch(&entries).is_err() && !l.writer.store().has_crashed() {
                    self.violation("the leader's append failed without an injected fault".into());
                }
            }
            self.add_leader_stats(&l);
            let store = l.writer.into_store().crash();
            self.leader = Some(LeaderNode::Down { store, until: down });
            self.report.replication.leader_restarts += 1;
        } else {
            let f = &mut self.followers[k - 1];
            if f.repl.is_none() {
                return false;
            }
            if let Some(r) = f.repl.take() {
                let s = r.stats();
                self.report.replication.duplicates_dropped += s.duplicates;
                self.report.replication.request_timeouts += s.request_timeouts;
            }
            let f = &mut self.followers[k - 1];
            let tore = f.disk.crash(torn);
            f.down_until = down;
            self.report.replication.follower_restarts += 1;
            if torn {
                self.count(if tore { "torn_write" } else { "restart" });
            }
        }
        true
    }

    fn add_leader_stats(&mut self, l: &LeaderUp) {
        let s = l.repl.stats();
        let r = &mut self.report.replication;
        r.batches_published += s.batches_published;
        r.records_published += s.records_published;
        r.ranges_served += s.ranges_served;
        r.snapshot_offers += s.snapshot_offers;
        r.snapshot_chunks += s.snapshot_chunks;
        let c = &mut self.report.council;
        c.votes_counted += l.collector.counted();
        c.votes_duplicate += l.collector.duplicates();
        for (k, v) in l.collector.rejected() {
            *c.votes_rejected.entry(k.name().to_string()).or_default() += v;
        }
    }

    /// Whether the store dies in the rare write it is about to make (a
    /// snapshot, a recovery's cut or clean-up): `storage_crash`.
    fn rare_write_crash(&mut self) -> bool {
        !self.calm && self.rng.chance(self.cfg.rates.storage_crash)
    }

    /// The leader's store died in the middle of its recovery: down again.
    fn leader_dies_in_recovery(&mut self, store: MemStore, during: &str) {
        self.count("storage_crash");
        self.count(during);
        self.attend(EventKind::Restart, "kill -9", Some(peer_name(0)));
        self.attn_saved = Some(self.attn.to_bytes());
        let until = self.now + self.rng.range(DOWNTIME_MS.0, DOWNTIME_MS.1);
        self.leader = Some(LeaderNode::Down {
            store: store.crash(),
            until,
        });
        self.report.replication.leader_restarts += 1;
    }

    fn restart_leader(&mut self, mut store: MemStore) {
        // The leader's attention memory is loaded back (a corrupt one would
        // be set aside and started afresh) and a new session begins.
        if let Some(bytes) = self.attn_saved.take() {
            self.attn = Scorer::from_bytes(&bytes, Tuning::SIMULATION)
                .unwrap_or_else(|_| Scorer::new(Tuning::SIMULATION));
        }
        self.attn.begin_session();
        // A restarted machine's clock may come back anywhere near true time.
        if !self.calm && self.cfg.rates.clock_step > 0.0 {
            self.step_clock(0);
        }
        let mut cut = false;
        let mut rebuilt = false;
        let rec = loop {
            match recover(&store, &self.genesis) {
                Ok(r) => break r,
                Err(RecoveryError::Unproven { .. }) if !rebuilt => {
                    // The snapshot at a compacted log's base rotted and no
                    // newer one is usable: the operator rebuilds it from the
                    // archives (`swoosh snapshot rebuild-base`).
                    rebuilt = true;
                    if !self.rebuild_base(&mut store) {
                        if store.has_crashed() {
                            return self.leader_dies_in_recovery(store, "storage_crash_rebuild");
                        }
                        self.fatal = true;
                        return;
                    }
                }
                Err(RecoveryError::Read(ReadError::Corrupt { index, .. }))
                    if !cut && store.last_index().ok() == Some(index) =>
                {
                    // A torn tail: cut it with its derived entries (what
                    // `swoosh wal repair --yes` does, side file included)
                    // and recover again. The store may die in that very
                    // write.
                    cut = true;
                    if self.rare_write_crash() {
                        store.crash_after_commits(0);
                    }
                    let cut_ok = if self.cfg.sabotage == crate::Sabotage::CutKeepsDerived {
                        store.truncate_after(index - 1).is_ok() && store.sync().is_ok()
                    } else {
                        // What the operator runs (`swoosh wal repair --yes`):
                        // it finds the cut itself, keeps what it cuts in a
                        // side file, and must cut exactly the torn record.
                        let side = self.archive_dir.path().join(format!(
                            "repair-{}-{}.cbor",
                            self.now, self.report.replication.torn_tails_cut
                        ));
                        match repair(&mut store, self.genesis_hash, &side, &mut |_| {}) {
                            Ok(r) if r.last_good + 1 == index => true,
                            Ok(r) => {
                                self.violation(format!(
                                    "wal repair cut the log after record {} where recovery found record {index} torn",
                                    r.last_good
                                ));
                                true
                            }
                            Err(_) => false,
                        }
                    };
                    if !cut_ok && store.has_crashed() {
                        return self.leader_dies_in_recovery(store, "storage_crash_cut");
                    }
                    if !cut_ok {
                        self.violation("the leader store refuses to cut its torn tail".into());
                        self.fatal = true;
                        return;
                    }
                    self.report.replication.torn_tails_cut += 1;
                    self.attend(
                        EventKind::TornWrite,
                        "torn WAL tail cut at recovery",
                        Some(peer_name(0)),
                    );
                }
                Err(e) => {
                    self.violation(format!("the leader does not recover: {e}"));
                    self.fatal = true;
                    return;
                }
            }
        };
        // Damaged snapshots are deleted once recovery has skipped them (a
        // fresh one is taken at the next group commit), so they never
        // accumulate in the kept set. The store may die in that write too.
        if !rec.skipped_snapshots.is_empty() && self.rare_write_crash() {
            store.crash_after_commits(0);
        }
        for p in &rec.skipped_snapshots {
            if store.delete_snapshot(p.index).is_err() || store.sync().is_err() {
                if store.has_crashed() {
                    return self.leader_dies_in_recovery(store, "storage_crash_recovery");
                }
                self.violation(format!(
                    "the leader cannot delete damaged snapshot {}",
                    p.index
                ));
            }
        }
        self.report.replication.corrupt_snapshots_skipped += rec.skipped_snapshots.len() as u64;
        for _ in &rec.skipped_snapshots {
            self.attend(
                EventKind::SnapshotCorrupt,
                "damaged snapshot skipped at recovery",
                Some(peer_name(0)),
            );
        }
        let node = rec.node;
        let synced = self.synced_max();
        if node.index < synced {
            self.violation(format!(
                "the leader recovered to index {} but records up to {synced} were durable (acknowledged 202s lost)",
                node.index
            ));
        } else if synced > 0 {
            match read_record(&store, synced) {
                Ok(v) if Some(v.hash) == self.durable.get(&synced).map(|d| d.0) => {}
                _ => self.violation(format!(
                    "the leader's recovered record {synced} differs from the one it made durable"
                )),
            }
        }
        // The intact prefix of a torn group commit is durable now.
        for i in synced + 1..=node.index {
            match read_record(&store, i) {
                Ok(v) => {
                    self.durable.insert(i, (v.hash, v.record.state_post_hash));
                }
                Err(e) => self.violation(format!("recovered record {i} is unreadable: {e}")),
            }
        }
        // What the node checks before it serves: the derived indexes agree
        // with the recovered log (a cut that kept the cut records' entries
        // fails here, at the restart that made it).
        match audit_indexes(&store, node.index) {
            Ok(a) if a.is_sound() => {}
            Ok(a) => self.violation(format!(
                "at restart the leader's start-up audit finds its derived indexes disagreeing with its log: {}",
                a.findings.join("; ")
            )),
            Err(e) => self.violation(format!("the leader's start-up audit cannot run: {e}")),
        }
        let writer = match WalWriter::open(store, self.genesis_hash, BatchLimits::default()) {
            Ok(w) => w,
            Err(e) => {
                self.violation(format!(
                    "the leader's WAL does not open after recovery: {e}"
                ));
                self.fatal = true;
                return;
            }
        };
        let repl = ReplLeader::new(
            leader_cfg(),
            self.keys.leader.clone(),
            &self.genesis,
            node.index,
            node.head_record,
        )
        .expect("the scenario leader key is the genesis leader");
        // Proposals lost with the unsynced tail are no longer history.
        for (project, h) in self.history.iter_mut() {
            let idem = node.idem.get(project);
            h.retain(|a| idem.is_some_and(|m| m.contains_key(&a.proposal.idem_key)));
        }
        // A long replay (or a skipped snapshot) is followed by a fresh
        // snapshot at the next group commit.
        let last_snapshot = if rec.replayed > LEADER_SNAPSHOT_EVERY / 2 {
            0
        } else {
            rec.snapshot.unwrap_or(0)
        };
        self.leader = Some(LeaderNode::Up(Box::new(LeaderUp {
            collector: CouncilCollector::new(self.keys.leader.clone(), &self.genesis),
            synced: node.index,
            last_snapshot,
            node,
            writer,
            repl,
            buffer: vec![],
            waiting_acks: vec![],
            snap_index: rec.snapshot,
            snap: None,
            last_head_ms: 0,
            last_announce: BTreeMap::new(),
            armed: false,
        })));
    }

    fn restart_follower(&mut self, i: usize) {
        if !self.calm && self.cfg.rates.clock_step > 0.0 {
            self.step_clock(i + 1);
        }
        let f = &mut self.followers[i];
        let (node, notes) = match f.disk.recover(&self.genesis) {
            Ok(x) => x,
            Err(e) => {
                self.violation(format!("follower {} does not recover: {e}", i + 1));
                self.fatal = true;
                return;
            }
        };
        self.report.replication.corrupt_snapshots_skipped += notes.corrupt_snapshots;
        self.report.replication.torn_tails_cut += notes.torn_frames;
        let who = Some(peer_name(i + 1));
        for _ in 0..notes.corrupt_snapshots {
            self.attend(
                EventKind::SnapshotCorrupt,
                "damaged snapshot skipped at recovery",
                who.clone(),
            );
        }
        if notes.torn_frames > 0 {
            self.attend(
                EventKind::TornWrite,
                "torn WAL tail cut at recovery",
                who.clone(),
            );
        }
        if notes.wal_gap {
            self.attend(
                EventKind::FollowerGap,
                "WAL does not continue the snapshot; dropped",
                who,
            );
        }
        let f = &mut self.followers[i];
        f.last_snapshot = notes.snapshot.unwrap_or(0);
        let (index, head) = (node.index, node.head_record);
        f.repl = Some(ReplFollower::new(follower_cfg(), f.id.clone(), node));
        f.up_since = self.now;
        f.next_status = self.now;
        if index > 0 && self.durable.get(&index).map(|d| d.0) != Some(head) {
            self.violation(format!(
                "follower {} recovered to index {index} with a record the leader never made durable",
                i + 1
            ));
        }
    }

    // ---- the leader's group commit ---------------------------------------

    fn leader_commit(&mut self) {
        let Some(l) = self.up() else { return };
        if l.buffer.is_empty() {
            return;
        }
        let entries: Vec<Entry> = l.buffer.iter().map(|p| p.entry.clone()).collect();
        let ok = l.writer.append_batch(&entries).is_ok() && l.writer.sync().is_ok();
        if !ok {
            if l.writer.store().has_crashed() {
                // The armed store died at this commit: nothing of the group
                // reached the disk and no 202 was sent for it.
                self.count("storage_crash");
            } else {
                self.violation("the leader's group commit failed without an injected fault".into());
            }
            self.crash(0, false);
            return;
        }
        let l = self.up().expect("up");
        let pending = std::mem::take(&mut l.buffer);
        let mut publish = vec![];
        let mut durable = vec![];
        for p in &pending {
            let rec = &p.entry.record;
            let hash = p
                .entry
                .record_hash
                .expect("entries carry the reducer's hash");
            durable.push((rec.index, hash, rec.state_post_hash));
            match l.repl.on_committed(rec) {
                Ok(eff) => publish.extend(eff),
                Err(e) => {
                    let msg = format!("replication refuses a committed record: {e}");
                    self.violation(msg);
                    self.fatal = true;
                    return;
                }
            }
        }
        publish.extend(l.repl.flush());
        l.synced = pending.last().map_or(l.synced, |p| p.entry.record.index);
        let synced = l.synced;
        let waiting = std::mem::take(&mut l.waiting_acks);
        let (ready, still): (Vec<Ack>, Vec<Ack>) =
            waiting.into_iter().partition(|a| a.index <= synced);
        l.waiting_acks = still;
        for (index, hash, post) in durable {
            if let Some(old) = self.durable.insert(index, (hash, post)) {
                if old.0 != hash {
                    self.violation(format!(
                        "durable record {index} was replaced by another one"
                    ));
                }
            }
        }
        self.acked.extend(pending.into_iter().filter_map(|p| p.ack));
        self.acked.extend(ready);
        for LeaderEffect::Publish(g) in publish {
            self.broadcast(g);
        }
        self.leader_snapshot();
    }

    /// Snapshot (and model truncation) every LEADER_SNAPSHOT_EVERY durable
    /// records, after the group commit (as the node's snapshotter does). An
    /// armed store may die in the middle: the leader goes down with it.
    fn leader_snapshot(&mut self) {
        let Some(l) = self.up() else { return };
        if l.synced < l.last_snapshot + LEADER_SNAPSHOT_EVERY {
            return;
        }
        let synced = l.synced;
        if !l.armed && self.rare_write_crash() {
            let l = self.up().expect("up");
            l.armed = true;
            l.writer.store_mut().crash_after_commits(0);
        }
        let l = self.up().expect("up");
        match write_snapshot(l.writer.store_mut(), &l.node, LEADER_SNAPSHOTS_KEEP)
            .map_err(|e| e.to_string())
            .and_then(|_| l.writer.sync().map_err(|e| e.to_string()))
        {
            Ok(()) => {
                l.last_snapshot = synced;
                l.snap_index = Some(l.node.index);
                l.snap = Some(ProtoSnap {
                    index: l.node.index,
                    head_record: l.node.head_record,
                    root_hash: l.node.root_hash(),
                    bytes: to_canonical(&l.node).expect("node states encode"),
                });
            }
            Err(_) if l.writer.store().has_crashed() => {
                self.count("storage_crash");
                self.count("storage_crash_snapshot");
                self.crash(0, false);
                return;
            }
            Err(e) => {
                self.violation(format!("the leader's snapshot failed: {e}"));
                return;
            }
        }
        self.leader_compact();
    }

    /// Compact the leader's log where the modelled truncation has reached
    /// (what `swoosh serve --archive-dir` does after a snapshot). An armed
    /// store may die in one of its steps: the leader goes down with it and
    /// recovers from whatever step committed last.
    fn leader_compact(&mut self) {
        let genesis = self.genesis.clone();
        let dir = self.archive_dir.path().to_path_buf();
        let Some(l) = self.up() else { return };
        let Some(snap) = l.snap_index else { return };
        let base = match wal_base(l.writer.store()) {
            Ok(b) => b.map_or(0, |b| b.index),
            Err(e) => {
                let e = format!("the leader's WAL base does not read: {e}");
                self.violation(e);
                return;
            }
        };
        let through = snap.saturating_sub(LEADER_LOG_RETAIN);
        if through < base + LEADER_COMPACT_MIN {
            return;
        }
        let stem = format!("wal-{:020}-{through:020}", base + 1);
        let mut path = dir.join(format!("{stem}.cbor"));
        let mut n = 1;
        while path.exists() {
            path = dir.join(format!("{stem}-{n}.cbor"));
            n += 1;
        }
        let opts = CompactOptions {
            drop_decisions: false,
            step_records: LEADER_COMPACT_STEP,
        };
        let r = compact(
            l.writer.store_mut(),
            &genesis,
            through,
            &path,
            &opts,
            &mut |_| {},
        );
        let crashed = l.writer.store().has_crashed();
        if path.exists() {
            // Kept even when it failed: steps may have cut records.
            self.archives.push(path);
        }
        match r {
            Ok(rep) => {
                self.report.replication.compactions += 1;
                self.report.replication.records_compacted += rep.archive.records;
            }
            Err(_) if crashed => {
                self.count("storage_crash");
                self.count("storage_crash_compaction");
                self.crash(0, false);
            }
            // The snapshot at the base rotted while a newer one kept the
            // node recovering: compaction cannot prove its start
            // (`SwooshCompactionFailing`); the operator rebuilds it from the
            // archives and compaction resumes at the next snapshot.
            Err(swoosh_storage::CompactError::Recovery(RecoveryError::Unproven { .. })) => {
                let Some(l) = self.up() else { return };
                let mut store = std::mem::replace(
                    l.writer.store_mut(),
                    MemStore::new("placeholder", Durability::NoSync),
                );
                let ok = self.rebuild_base(&mut store);
                let crashed = store.has_crashed();
                if let Some(l) = self.up() {
                    *l.writer.store_mut() = store;
                }
                if !ok && crashed {
                    self.count("storage_crash");
                    self.crash(0, false);
                }
            }
            Err(e) => {
                let e = e
                    .to_string()
                    .replace(&dir.display().to_string(), "<archives>");
                self.violation(format!("the leader's compaction failed: {e}"))
            }
        }
    }

    /// `swoosh snapshot rebuild-base` with every archive written so far;
    /// false (after a violation, unless the store died) when it fails.
    fn rebuild_base(&mut self, store: &mut MemStore) -> bool {
        if self.rare_write_crash() {
            store.crash_after_commits(0);
        }
        match rebuild_base_snapshot(store, &self.genesis, &self.archives, &mut |_| {}) {
            Ok(_) => {
                self.count("base_rebuilt");
                self.attend(
                    EventKind::SnapshotCorrupt,
                    "base snapshot rebuilt from the archives",
                    Some(peer_name(0)),
                );
                true
            }
            Err(_) if store.has_crashed() => false,
            Err(e) => {
                let dir = self.archive_dir.path().display().to_string();
                let e = e.to_string().replace(&dir, "<archives>");
                self.violation(format!(
                    "the leader's base snapshot cannot be rebuilt from its archives: {e}"
                ));
                false
            }
        }
    }

    // ---- the workload ----------------------------------------------------

    fn propose(&mut self) {
        if self.up().is_none() {
            return;
        }
        let k = self.rng.below(self.projects.len() as u64) as usize;
        let project = self.projects[k].clone();
        if self
            .license_blocked_until
            .get(&project)
            .is_some_and(|u| *u > self.now)
        {
            return;
        }
        let l = self.up().expect("checked");
        let st = l.node.project(&project).into_owned();
        if st.meta.phase == "TERMINATED" {
            self.projects_made += 1;
            self.projects[k] = format!("proj-{}", self.projects_made);
            return;
        }
        let fault = if st.policy.phase == "QUARANTINED" && self.rng.chance(0.25) {
            Some(Fault::Release)
        } else if self.rng.chance(self.cfg.rates.workload_fault) {
            if self.rng.chance(0.01) {
                Some(Fault::Terminate)
            } else {
                let pool: Vec<Fault> = Fault::ALL
                    .into_iter()
                    .filter(|f| *f != Fault::Terminate)
                    .collect();
                Some(pool[self.rng.below(pool.len() as u64) as usize])
            }
        } else {
            None
        };
        let now = self.now;
        let (proposal, kind) = match fault {
            Some(f) => {
                let pick = self.rng.next_u64();
                let hist: Vec<Proposal> = self
                    .history
                    .get(&project)
                    .map(|h| h.iter().map(|a| a.proposal.clone()).collect())
                    .unwrap_or_default();
                // A fault is built against the leader's clock (ClockAhead
                // means ahead of the clock that judges it).
                let leader_now = self.leader_clock.read(now);
                let node = self.node().expect("checked");
                match self
                    .driver
                    .fault(node, &project, leader_now, f, &hist, pick)
                {
                    Some(p) => (p, Kind::Fault(f)),
                    None => return,
                }
            }
            None => {
                let node = self.node().expect("checked");
                match self.driver.next(node, &project, now) {
                    Next::Propose(p) => {
                        if COUNCIL_TRANSITIONS.contains(&p.transition.as_str()) {
                            match self.council(&project, &p) {
                                Some(c) => c,
                                None => return,
                            }
                        } else if p.transition == "Boot_LicenseRefresh" {
                            match self.license_refresh(&project, *p) {
                                Some(x) => x,
                                None => return,
                            }
                        } else {
                            (*p, Kind::Valid)
                        }
                    }
                    Next::WaitMs(ms) => {
                        if self.rng.chance(0.5) {
                            self.now += ms;
                        }
                        return;
                    }
                    Next::Done => {
                        if st.policy.phase != "QUARANTINED" {
                            self.projects_made += 1;
                            self.projects[k] = format!("proj-{}", self.projects_made);
                        }
                        return;
                    }
                }
            }
        };
        if let Kind::Fault(f) = kind {
            self.count(fault_name(f));
        }
        self.submit(&project, proposal, kind);
    }

    /// The council path: open the election (announce to the agents), wait
    /// for their votes, and propose the certificate once it is assembled.
    fn council(&mut self, project: &str, driver_p: &Proposal) -> Option<(Proposal, Kind)> {
        let now = self.now;
        let key = self.keys.leader.clone();
        let l = self.up()?;
        let st = l.node.project(project).into_owned();
        let epoch = st.epoch.council;
        if let Some(cert) = l
            .collector
            .certificate(project)
            .filter(|c| c.epoch == epoch)
        {
            let (cert, kind) = if !self.calm
                && self.cfg.no_voters > 0
                && self.rng.chance(self.cfg.rates.vote_fault)
            {
                self.count("flipped_vote_cert");
                (self.with_flipped_no_vote(cert), Kind::ForgedCertificate)
            } else {
                (cert, Kind::Certificate)
            };
            // The leader dates its own proposal by its own clock.
            let leader_now = self.leader_clock.read(now);
            let node = self.node()?;
            return certificate_proposal(&cert, node, &key, leader_now)
                .ok()
                .map(|p| (p, kind));
        }
        let l = self.up()?;
        let announce = match l.collector.open_for(project) {
            Some((e, _)) if e == epoch => {
                let last = l.last_announce.get(project).copied().unwrap_or(0);
                if now < last + REANNOUNCE_MS {
                    return None;
                }
                l.collector.announcement(project).cloned()?
            }
            _ => {
                #[derive(serde::Deserialize)]
                struct Members {
                    members: Vec<SignerId>,
                }
                let m: Members = driver_p.inputs.deserialized().ok()?;
                let a = l.collector.open(&st, &m.members).ok()?;
                self.report.council.elections_opened += 1;
                a
            }
        };
        let l = self.up()?;
        l.last_announce.insert(project.to_string(), now);
        self.report.council.announcements += 1;
        let m = Rc::new(CouncilMsg::Announce(announce));
        for j in 0..self.agents.len() {
            self.send(Addr::Leader, Addr::Agent(j), Msg::Council(m.clone()));
        }
        None
    }

    /// `cert` with a "no" voter's vote, its choice flipped to approve after
    /// signing, added among the approvals.
    fn with_flipped_no_vote(&mut self, mut cert: Certificate) -> Certificate {
        let k = self.rng.below(self.cfg.no_voters as u64) as usize;
        let Some(body) = cert.votes.first().map(|v| v.body.clone()) else {
            return cert;
        };
        cert.votes.push(self.flipped_no_vote(k, &body));
        cert.votes.sort_by(|a, b| a.body.voter.cmp(&b.body.voter));
        cert
    }

    /// A due license refresh, answered late or denied by the license server.
    fn license_refresh(&mut self, project: &str, p: Proposal) -> Option<(Proposal, Kind)> {
        if self.rng.chance(self.cfg.rates.license_latency) {
            self.count("license_latency");
            let e = Event::new(
                EventKind::LicenseTrouble,
                "refresh answered late",
                self.now - ORIGIN_MS,
            )
            .project(project);
            self.attn.observe(&e);
            let until = self.now + self.rng.range(200, 3_000);
            self.license_blocked_until
                .insert(project.to_string(), until);
            return None;
        }
        if !self.rng.chance(self.cfg.rates.license_denial) {
            return Some((p, Kind::Valid));
        }
        // The server answers with a token that is already expired.
        self.count("license_denial");
        let e = Event::new(
            EventKind::LicenseTrouble,
            "refresh denied",
            self.now - ORIGIN_MS,
        )
        .project(project);
        self.attn.observe(&e);
        let l = self.up()?;
        let st = l.node.project(project).into_owned();
        let tok = self
            .driver
            .license(&st.meta.cluster_id, p.hlc, p.hlc.wall_ms, 1_000);
        let denied = ProposalBuilder {
            project: p.project.clone(),
            transition: p.transition.clone(),
            current_state_hash: p.current_state_hash,
            inputs: ciborium::Value::Null,
            idem_key: format!("{}:denied", p.idem_key),
            hlc: p.hlc,
            window_id: p.window_id.clone(),
            evidence: p.evidence.clone(),
        }
        .inputs(&one("license", tok))
        .ok()?
        .sign(&self.keys.leader)
        .ok()?;
        Some((denied, Kind::LicenseDenied))
    }

    fn submit(&mut self, project: &str, p: Proposal, kind: Kind) {
        let now = self.now;
        self.report.transitions += 1;
        let leader_now = self.leader_clock.read(now);
        let l = self.up().expect("the leader is up");
        let pre = l.node.project(project).into_owned();
        let ctx = Ctx {
            now_ms: leader_now,
            verify: Verify::Full,
            snapshot_every: 0,
        };
        // As the node's sequencer: a key that left the bounded window is
        // recalled from the durable idempotency index.
        let recalled = if l.node.idem.contains(&p.project, &p.idem_key) {
            Ok(None)
        } else {
            match lookup_idem(l.writer.store(), &p.project, &p.idem_key) {
                Err(IndexError::BadKey(_)) => Ok(None),
                r => r,
            }
        };
        let recalled = match recalled {
            Ok(r) => r,
            Err(e) => {
                self.violation(format!(
                    "the leader's idempotency index cannot be read: {e}"
                ));
                None
            }
        };
        // A replay must get the original's answer: what its acceptance said.
        let original = (kind == Kind::Fault(Fault::Replay)).then(|| {
            self.history
                .get(project)
                .and_then(|h| h.iter().find(|a| a.proposal.idem_key == p.idem_key))
                .map(|a| (a.index, a.post_hash))
        });
        let l = self.up().expect("the leader is up");
        let s = step_recalled(&mut l.node, &p, &ctx, recalled.as_ref());
        if let Some(original) = original {
            if let Some(v) = check_replay(original, &s.outcome) {
                self.violation(format!("{project}/{}: {v}", p.idem_key));
            }
        }
        let events: Vec<Event> = s
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::Emit(op) => Some(Event::from_op(op, now - ORIGIN_MS)),
                _ => None,
            })
            .collect();
        self.attn.observe_all(&events);
        let l = self.up().expect("the leader is up");
        match s.outcome {
            Outcome::Accepted(mut acc) => {
                let post = l.node.project(project).into_owned();
                let index = acc.record.index;
                let ack = Ack {
                    project: project.to_string(),
                    idem_key: p.idem_key.clone(),
                    index,
                    post_hash: acc.record.state_post_hash,
                };
                let mut vs: Vec<String> = check_transition(&pre, &post, &acc.record)
                    .into_iter()
                    .chain(check_state(&post))
                    .chain(check_quorum_certificate(
                        &self.genesis,
                        &pre,
                        &post,
                        &acc.record,
                    ))
                    .map(|v| {
                        format!(
                            "record {index} ({}): {}: {}",
                            acc.record.transition, v.invariant, v.detail
                        )
                    })
                    .collect();
                let ack = if self.cfg.sabotage == crate::Sabotage::AckBeforeDurable {
                    self.acked.push(ack);
                    None
                } else {
                    Some(ack)
                };
                let answered = Answered {
                    proposal: p.clone(),
                    index,
                    post_hash: acc.record.state_post_hash,
                };
                // The leader signs each decision record, as the node does.
                let decision_bytes = acc.decision_bytes.take();
                let mut entry = Entry::from_accepted(*acc);
                match decision_bytes {
                    Some(b) => entry.sign_decision_encoded(&self.keys.leader, b),
                    None => entry.sign_decision(&self.keys.leader),
                }
                let l = self.up().expect("the leader is up");
                l.buffer.push(Pending { entry, ack });
                self.report.accepted += 1;
                if let Kind::Fault(f) = kind {
                    if f.must_fail() {
                        vs.push(format!("fault {f:?} was accepted as {}", p.transition));
                    }
                }
                if kind == Kind::LicenseDenied {
                    vs.push("a refresh with an expired license token was accepted".into());
                }
                if kind == Kind::ForgedCertificate {
                    vs.push(format!(
                        "{} with a \"no\" vote flipped to approve was accepted",
                        p.transition
                    ));
                }
                if kind == Kind::Certificate {
                    self.report.council.certificates_accepted += 1;
                    // The election is decided: keep the collector bounded.
                    if let Some(l) = self.up() {
                        l.collector.close(project);
                        l.last_announce.remove(project);
                    }
                } else if COUNCIL_TRANSITIONS.contains(&p.transition.as_str())
                    && kind != Kind::ForgedCertificate
                {
                    vs.push(format!(
                        "{} was accepted without a certificate from the council protocol",
                        p.transition
                    ));
                }
                for v in vs {
                    self.violation(v);
                }
                let h = self.history.entry(project.to_string()).or_default();
                if h.len() >= HISTORY_PER_PROJECT_MAX {
                    h.pop_front();
                }
                h.push_back(answered);
            }
            Outcome::Duplicate(e) => {
                let ack = Ack {
                    project: project.to_string(),
                    idem_key: p.idem_key.clone(),
                    index: e.index,
                    post_hash: e.state_post_hash,
                };
                if e.index <= l.synced {
                    self.acked.push(ack);
                } else {
                    l.waiting_acks.push(ack);
                }
                self.report.duplicates += 1;
            }
            Outcome::Rejected(r) => {
                self.report.rejected += 1;
                // Only the quorum guard's refusal shows that the flipped
                // vote was caught (a refusal by `backbeat` or `license`
                // says nothing about the votes).
                if kind == Kind::ForgedCertificate && r.guard == "quorum" {
                    self.report.council.forged_certificates_refused += 1;
                }
                *self
                    .report
                    .rejections_by_guard
                    .entry(r.guard.clone())
                    .or_default() += 1;
                if matches!(kind, Kind::Valid | Kind::Certificate)
                    && !matches!(r.guard.as_str(), "backbeat" | "license")
                {
                    self.violation(format!(
                        "a valid {} for {project} was refused by {}: {}",
                        p.transition,
                        r.guard,
                        r.reasons.join("; ")
                    ));
                }
            }
        }
    }

    // ---- the end ----------------------------------------------------------

    /// Heal every partition, restart every node, stop all faults, and let
    /// the followers catch up on a calm network.
    fn catch_up(&mut self) {
        self.calm = true;
        for a in self.net.heal_all() {
            self.attend(EventKind::PartitionHealed, "", Some(addr_name(a)));
        }
        self.now += 1;
        if let Some(LeaderNode::Down { .. }) = &self.leader {
            let Some(LeaderNode::Down { store, .. }) = self.leader.take() else {
                unreachable!()
            };
            self.restart_leader(store);
        }
        for i in 0..self.followers.len() {
            if self.followers[i].repl.is_none() {
                self.restart_follower(i);
            }
        }
        if self.fatal {
            return;
        }
        // A store armed during the run must not die in the calm phase.
        if let Some(l) = self.up() {
            if l.armed {
                l.writer.store_mut().crash_after_commits(u64::MAX);
                l.armed = false;
            }
        }
        self.leader_commit();
        let end = self.now + CATCH_UP_MS_MAX;
        while self.now < end && !self.fatal {
            self.now += 5;
            self.deliver();
            self.tick_nodes();
            self.sync_followers();
            let top = self.up().map_or(0, |l| l.synced);
            if self.net.in_flight() == 0
                && self
                    .followers
                    .iter()
                    .all(|f| f.repl.as_ref().is_some_and(|r| r.applied_index() == top))
            {
                break;
            }
        }
    }

    fn finish(mut self) -> SimReport {
        self.report.virtual_ms = self.now - ORIGIN_MS;
        let d = self
            .attn
            .digest(self.now - ORIGIN_MS, SURFACE_BAND_MIN, ATTENTION_LISTED_MAX);
        self.report.attention_by_band = d.by_band;
        self.report.attention = d
            .items
            .into_iter()
            .map(|i| AttentionItem {
                fingerprint: i.fingerprint,
                kind: i.kind.name().to_string(),
                band: i.band.name().to_string(),
                level: i.band.level(),
                count: i.count,
                what: i.what,
                how_often: i.how_often,
                next: i.next,
            })
            .collect();
        debug_assert!(self
            .report
            .attention
            .iter()
            .all(|i| i.level >= Band::Watch.level()));
        let mut c = std::mem::take(&mut self.net.counts);
        for (k, v) in std::mem::take(&mut c) {
            if k != "overflow" && k != "partition_drop" {
                *self.report.faults.entry(k.to_string()).or_default() += v;
            }
        }
        self.report.replication.messages_sent = self.net.sent;
        self.report.replication.messages_delivered = self.net.delivered;
        if self.fatal {
            return self.report;
        }
        let Some(LeaderNode::Up(leader)) = self.leader.take() else {
            self.violation("the leader is not up at the end".into());
            return self.report;
        };
        self.add_leader_stats(&leader);
        let root = leader.node.root_hash();
        self.report.final_index = leader.node.index;
        self.report.final_hashes.push(root.to_string());
        let mut replicas: Vec<(String, NodeState)> = vec![];
        for (i, f) in self.followers.iter_mut().enumerate() {
            let name = format!("follower {}", i + 1);
            let Some(r) = f.repl.take() else {
                self.report
                    .violations
                    .push(format!("{name} is not up at the end"));
                continue;
            };
            let s = r.stats();
            self.report.replication.duplicates_dropped += s.duplicates;
            self.report.replication.request_timeouts += s.request_timeouts;
            if let Some(d) = r.halted() {
                self.report
                    .violations
                    .push(format!("{name} is halted (divergence at {})", d.index));
            }
            let node = r.node().clone();
            self.report.final_hashes.push(node.root_hash().to_string());
            if node.index != leader.node.index {
                self.report.violations.push(format!(
                    "{name} did not catch up: applied {} of the leader's {} (lag {})",
                    node.index,
                    leader.node.index,
                    leader.node.index.saturating_sub(node.index)
                ));
            } else if node.root_hash() != root || node.head_record != leader.node.head_record {
                self.report.violations.push(format!(
                    "{name} ends on root {} at index {}, the leader on {root}",
                    node.root_hash(),
                    node.index
                ));
            }
            // Its disk holds what it applied: a restart now loses nothing.
            f.disk.sync();
            match f.disk.recover(&self.genesis) {
                Ok((n, _)) if n.root_hash() == node.root_hash() => {}
                Ok((n, _)) => self.report.violations.push(format!(
                    "{name} restarted from its disk lands on index {} / {}, not {} / {}",
                    n.index,
                    n.root_hash(),
                    node.index,
                    node.root_hash()
                )),
                Err(e) => self
                    .report
                    .violations
                    .push(format!("{name} does not recover from its disk: {e}")),
            }
            replicas.push((name, node));
        }
        // The leader's durable store alone must give the same state.
        let store = leader.writer.into_store().crash();
        match recover(&store, &self.genesis) {
            Ok(r) if r.node.root_hash() == root => {}
            Ok(r) => self.report.violations.push(format!(
                "the leader restarted from its store lands on {} at index {}, not {root}",
                r.node.root_hash(),
                r.node.index
            )),
            Err(e) => self.report.violations.push(format!(
                "the leader's store does not recover at the end: {e}"
            )),
        }
        // Its derived indexes agree with its log both ways: every record's
        // entries are there, and no entry answers for a record the log does
        // not hold (the leader recalls aged-out keys from them). Full mode:
        // every proposal signature and every embedded one (votes, license
        // tokens, probes) is verified again on the replay.
        let opts = VerifyOptions {
            verify: Verify::Full,
            check_indexes: true,
        };
        // As the leader it must hold every record's decision.
        match verify_expecting(
            &store,
            &self.genesis,
            &opts,
            ExpectDecisions::Leader,
            &mut |_| {},
        ) {
            Ok(v) if v.index_problems_total == 0 => {}
            Ok(v) => self.report.violations.push(format!(
                "the leader's derived indexes disagree with its log ({} problem(s)): {}",
                v.index_problems_total,
                v.index_problems.join("; ")
            )),
            Err(e) => self.report.violations.push(format!(
                "the leader's store does not verify at the end: {e}"
            )),
        }
        // `verify` finds each record's decision but does not check its
        // signature: every stored decision is signed by the genesis leader.
        let archived = self.check_archives(&store, &leader.node);
        let (checked, bad) =
            check_decisions(&store, &self.genesis.leader, leader.node.index, &archived);
        self.report.replication.decisions_verified = checked;
        self.report.violations.extend(bad);
        // Every forged message a running follower was handed, it refused.
        self.report.replication.forged_delivered = self.forgeries.delivered.clone();
        self.report.replication.forged_refused = self.forgeries.refused.clone();
        self.report.violations.extend(self.forgeries.mismatches());
        replicas.insert(0, ("leader".into(), leader.node));
        // Every 202 a client saw is on every replica: the acknowledged record
        // is the durable one at its index, every replica holds that index
        // (their chains were checked against the durable records), and its
        // idempotency index still answers with the original outcome unless
        // the key aged out of the bounded window. The leader's durable
        // idempotency index (what it recalls aged-out keys from) holds every
        // acknowledged key, whatever the window kept.
        self.report.acknowledged = self.acked.len() as u64;
        let mut missing = 0u64;
        for a in &self.acked {
            let mut bad = vec![];
            if self.durable.get(&a.index).map(|d| d.1) != Some(a.post_hash) {
                bad.push("the leader's durable log".to_string());
            }
            match lookup_idem(&store, &a.project, &a.idem_key) {
                Ok(Some(e)) if e.index == a.index && e.state_post_hash == a.post_hash => {}
                _ => bad.push("the leader's durable idempotency index".to_string()),
            }
            for (name, n) in &replicas {
                let keys = n.idem.get(&a.project);
                let ok = n.index >= a.index
                    && match keys.and_then(|m| m.get(&a.idem_key)) {
                        Some(e) => e.index == a.index && e.state_post_hash == a.post_hash,
                        // Aged out of the project's window, or of the node's.
                        None => {
                            keys.is_some_and(|m| {
                                m.len() >= IDEM_KEYS_PER_PROJECT_MAX - IDEM_EVICT_BATCH
                            }) || n.idem.total() >= IDEM_KEYS_TOTAL_MAX - IDEM_EVICT_BATCH
                        }
                    };
                if !ok {
                    bad.push(name.clone());
                }
            }
            for name in bad {
                missing += 1;
                if missing <= 10 {
                    self.report.violations.push(format!(
                        "the 202 for {}/{} (index {}) is not on the {name}",
                        a.project, a.idem_key, a.index
                    ));
                }
            }
        }
        if missing > 10 {
            self.report.violations.push(format!(
                "{} more acknowledged transitions missing",
                missing - 10
            ));
        }
        self.report
    }
}

/// Problems listed per kind before they are only counted.
const DECISION_PROBLEMS_LISTED_MAX: usize = 5;

/// Every record's decision in `store` (records `1..=last`) is stored, signed
/// by `leader`, and its signature verifies. Returns the decisions checked
/// and the problems found.
/// Records at or below a compacted store's base are looked up in
/// `archived` (index → decision hash, from the archives).
fn check_decisions(
    store: &MemStore,
    leader: &SignerId,
    last: u64,
    archived: &BTreeMap<u64, Hash>,
) -> (u64, Vec<String>) {
    let mut problems = vec![];
    let mut total = 0u64;
    let mut checked = 0u64;
    for i in 1..=last {
        let decision = match read_record(store, i) {
            Ok(v) => Ok(v.record.decision),
            Err(ReadError::BelowBase { .. }) => archived
                .get(&i)
                .copied()
                .ok_or_else(|| format!("record {i} was compacted but is in no archive")),
            Err(e) => Err(format!("record {i} is unreadable: {e}")),
        };
        let problem = match decision {
            Err(e) => Some(e),
            Ok(decision) => match get_decision(store, &decision) {
                Ok(Some(DecisionDoc::Signed(d))) if d.leader != *leader => Some(format!(
                    "the decision of record {i} is signed by {}, not the leader",
                    d.leader
                )),
                Ok(Some(DecisionDoc::Signed(d))) => d
                    .verify()
                    .err()
                    .map(|e| format!("the decision of record {i} has a bad signature: {e}")),
                Ok(Some(DecisionDoc::Unsigned(_))) => {
                    Some(format!("the decision of record {i} is stored unsigned"))
                }
                Ok(None) => Some(format!("the decision of record {i} is not stored")),
                Err(e) => Some(format!("the decision of record {i} does not read: {e}")),
            },
        };
        match problem {
            None => checked += 1,
            Some(p) => {
                total += 1;
                if problems.len() < DECISION_PROBLEMS_LISTED_MAX {
                    problems.push(format!("the leader's store: {p}"));
                }
            }
        }
    }
    if total > DECISION_PROBLEMS_LISTED_MAX as u64 {
        problems.push(format!(
            "{} more decision problems in the leader's store",
            total - DECISION_PROBLEMS_LISTED_MAX as u64
        ));
    }
    (checked, problems)
}

impl Sim<'_> {
    /// The leader's archives, in the order written, hold every record from
    /// genesis to its store's WAL base: each is sound, each starts at or
    /// before the record after the one before (a compaction run again after
    /// a crash repeats records) with the same record there, and the records
    /// are the durable ones the simulator saw. Returns each archived
    /// record's decision hash.
    ///
    /// Then the whole log, archives and store, is replayed from genesis with
    /// every signature verified again (`Verify::Full`) and must reach the
    /// leader's final state: the end-of-run `verify` starts from the base
    /// snapshot, so the compacted records are re-checked here.
    fn check_archives(&mut self, store: &MemStore, leader: &NodeState) -> BTreeMap<u64, Hash> {
        let mut decisions = BTreeMap::new();
        let mut hashes: BTreeMap<u64, Hash> = BTreeMap::new();
        let mut records: BTreeMap<u64, swoosh_core::record::WalRecord> = BTreeMap::new();
        let mut problems = vec![];
        for path in &self.archives {
            let r = for_each_archived(path, &mut |rec, h| {
                if let Some(prev) = rec.index.checked_sub(1) {
                    let want = if prev == 0 {
                        Some(self.genesis_hash)
                    } else {
                        hashes.get(&prev).copied()
                    };
                    if want != Some(rec.prev_hash) {
                        problems.push(format!(
                            "archived record {} does not follow the archived or durable record before it",
                            rec.index
                        ));
                    }
                }
                if let Some(old) = hashes.insert(rec.index, h) {
                    if old != h {
                        problems.push(format!("two archives hold different records {}", rec.index));
                    }
                }
                if self.durable.get(&rec.index).map(|d| d.0) != Some(h) {
                    problems.push(format!(
                        "archived record {} is not the durable record at its index",
                        rec.index
                    ));
                }
                decisions.insert(rec.index, rec.decision);
                records.entry(rec.index).or_insert_with(|| rec.clone());
            });
            if let Err(e) = r {
                let dir = self.archive_dir.path().display().to_string();
                problems.push(e.to_string().replace(&dir, "<archives>"));
            }
        }
        match wal_base(store) {
            Ok(Some(b)) => {
                // An interrupted compaction's archive may also hold records
                // after the base (still in the store too).
                if let Some(gap) = (1..=b.index).find(|i| !hashes.contains_key(i)) {
                    problems.push(format!(
                        "record {gap} is below the store's base {} but in no archive",
                        b.index
                    ));
                } else if hashes.get(&b.index) != Some(&b.hash) {
                    problems.push(format!(
                        "the archived record {} is not the store's base",
                        b.index
                    ));
                }
            }
            Ok(None) => {}
            Err(e) => problems.push(format!("the leader's WAL base does not read: {e}")),
        }
        if problems.is_empty() && !records.is_empty() {
            let base = wal_base(store).ok().flatten().map_or(0, |b| b.index);
            let mut node = NodeState::new(self.genesis.clone()).expect("the genesis is valid");
            let stored = (base + 1..=leader.index).map(|i| read_record(store, i).map(|v| v.record));
            let archived = records
                .into_values()
                .take_while(|r| r.index <= base)
                .map(Ok);
            for rec in archived.chain(stored) {
                let r = rec.map_err(|e| e.to_string()).and_then(|rec| {
                    swoosh_core::reducer::apply_record(&mut node, &rec, Verify::Full)
                        .map(|_| ())
                        .map_err(|e| format!("record {}: {e}", rec.index))
                });
                if let Err(e) = r {
                    problems.push(format!(
                        "the log replayed from genesis through the archives with every signature verified fails: {e}"
                    ));
                    break;
                }
            }
            if problems.is_empty() && node.root_hash() != leader.root_hash() {
                problems.push(format!(
                    "the log replayed from genesis through the archives reaches {} at {}, not the leader's {} at {}",
                    node.root_hash(),
                    node.index,
                    leader.root_hash(),
                    leader.index
                ));
            }
        }
        for p in problems {
            self.violation(format!("the leader's archives: {p}"));
        }
        decisions
    }
}

/// A node's name in attention events: `leader`, `follower-N`.
fn peer_name(k: usize) -> String {
    if k == 0 {
        "leader".into()
    } else {
        format!("follower-{k}")
    }
}

fn addr_name(a: Addr) -> String {
    match a {
        Addr::Leader => peer_name(0),
        Addr::Follower(i) => peer_name(i + 1),
        Addr::Agent(j) => format!("agent-{}", j + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swoosh_core::reducer::step;

    /// The end-of-run decision check names a decision stored unsigned and
    /// one signed by another key than the leader's (a signature that does
    /// not verify the WAL writer itself refuses to store); leader-signed
    /// decisions pass.
    #[test]
    fn the_decision_check_wants_every_decision_signed_by_the_leader() {
        let keys = Keys::from_labels("chaos", 3);
        let g = genesis(&keys, "chaos", ORIGIN_MS);
        let mut node = NodeState::new(g.clone()).unwrap();
        let driver = Driver::new(&keys, u64::MAX);
        let mut w = WalWriter::open(
            MemStore::new("t", Durability::NoSync),
            g.hash().unwrap(),
            BatchLimits::default(),
        )
        .unwrap();
        for i in 0..4u64 {
            let now = ORIGIN_MS + 1 + 10 * i;
            let Next::Propose(p) = driver.next(&node, "default", now) else {
                panic!("the driver has a next step")
            };
            let ctx = Ctx {
                now_ms: now,
                verify: Verify::Full,
                snapshot_every: 0,
            };
            let Outcome::Accepted(acc) = step(&mut node, &p, &ctx).outcome else {
                panic!("the driver's step is accepted")
            };
            let mut e = Entry::from_accepted(*acc);
            match i {
                0 => e.sign_decision(&keys.leader),
                1 => {} // unsigned
                2 => e.sign_decision(&keys.admin),
                _ => e.sign_decision(&keys.leader),
            }
            w.append_batch(&[e]).unwrap();
        }
        let store = w.into_store();
        let leader = SignerId::from_signing_key(&keys.leader);
        let none = BTreeMap::new();
        let (ok, bad) = check_decisions(&store, &leader, 4, &none);
        assert_eq!(ok, 2, "{bad:#?}");
        assert_eq!(bad.len(), 2, "{bad:#?}");
        assert!(bad[0].contains("record 2 is stored unsigned"), "{bad:#?}");
        assert!(bad[1].contains("record 3 is signed by"), "{bad:#?}");
        assert_eq!(check_decisions(&store, &leader, 1, &none), (1, vec![]));
    }
}
