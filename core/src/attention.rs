//! The attention scorer (SPEC §7, from the brAInstem governance seed).
//!
//! It listens to the orchestrator's own operational stream — rejections by
//! guard and reason, stale-hash conflicts, duplicates, quarantines,
//! recoveries, license grace, tool-health flaps, follower lag and gaps,
//! restarts — and decides what deserves an operator's eyes:
//!
//! 1. every [`Event`] is **fingerprinted** ([`fingerprint`]): its kind, its
//!    reason (the guard or fault class) and a **template** of its detail
//!    ([`template`]): quoted strings (project names, idem keys, tool names),
//!    hashes, keys, hex runs and numbers are masked, so "stale hash: HEAD of
//!    project \"a\" is blake3:…" and the same text for project "b" are one
//!    pattern. Kinds whose detail is a proposer's free text (quorum-loss
//!    reasons, quarantine rationales) and recoveries are fingerprinted
//!    without it. The raw detail is kept only as the record's `example`;
//! 2. per fingerprint it keeps **count**, first/last seen, **recurrence**
//!    (separate episodes, split by a quiet gap), **bursts** (events in the
//!    current window against the fingerprint's own baseline, judged once the
//!    baseline has [`BASELINE_WINDOWS_MIN`] windows), **spread** (distinct
//!    projects, signers and peers) and **self-healing** (a failure followed
//!    by the recovery of the same subject: project, peer and tool);
//! 3. it assigns an explicit **band** ([`Band`]) from a base band per kind
//!    plus named, documented raises and lowers ([`assess`]). Recurrence,
//!    volume, spread and heals are counted over a sliding horizon
//!    ([`Tuning::horizon_ms`], [`RECURRENCE_HORIZON_MS`] on nodes), so a
//!    weak signal earns attention through recent recurrence, volume, bursts,
//!    spread and history, and loses it again when it stops: a steady trickle
//!    settles at a steady band instead of climbing with its lifetime totals;
//! 4. every surfaced item ([`Surfaced`]) says what is happening, why it
//!    matters, how often and where, whether it was seen before (in an earlier
//!    session, i.e. before a restart, and again in this one) and what to
//!    check next.
//!
//! Pure and integer-only: time arrives as an argument (`at_ms` on events,
//! `now_ms` on reads: the node passes wall-clock ms, the simulator its
//! virtual clock); no I/O, no clock, no randomness, no floats. A clock that
//! jumped forward does not pin later events: an event more than
//! [`CLOCK_BEHIND_TOLERANCE_MS`] behind the scorer's clock resets it. Memory
//! is bounded ([`FINGERPRINTS_MAX`], [`SUBJECTS_PER_FINGERPRINT_MAX`],
//! [`NEW_FINGERPRINTS_PER_SUBJECT_MAX`] new patterns per subject and window)
//! with deterministic eviction that sacrifices one-off newcomers before
//! recurring patterns, and it is serializable as canonical CBOR
//! ([`Scorer::to_bytes`] / [`Scorer::from_bytes`], range-checked on load) so
//! it survives restarts. The scorer never sees or changes replicated state:
//! it only consumes events.

use crate::cbor::{self, CanonicalError};
use crate::hash::Hash;
use crate::reducer::OpEvent;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

// ------------------------------------------------------------------ limits

/// Fingerprints remembered; a new one beyond it evicts the least important
/// ([`Scorer`]'s eviction: one-off newcomers and forgotten patterns first,
/// then the lowest band now, then least recently seen, then smallest
/// fingerprint).
pub const FINGERPRINTS_MAX: usize = 256;
/// Distinct projects, signers and peers remembered per fingerprint, each;
/// when full, one unseen for longer than the horizon makes room, otherwise
/// the new one is only counted as overflow. Also the bound on the open
/// failures (subject and tool) a fingerprint tracks.
pub const SUBJECTS_PER_FINGERPRINT_MAX: usize = 16;
/// New fingerprints one subject (the signer, else the project, else the
/// peer) may create per burst window. Beyond it, its events with an unseen
/// pattern are folded into one "varied detail" fingerprint per kind and
/// reason, so one client cannot fill the memory with one-offs.
pub const NEW_FINGERPRINTS_PER_SUBJECT_MAX: u64 = 8;
/// Subjects whose new-fingerprint budget is tracked per window; a further
/// subject in the same window has no budget (its novel patterns are folded).
pub const NOVELTY_SUBJECTS_MAX: usize = FINGERPRINTS_MAX;
/// Longest normalized reason kept (characters).
pub const REASON_CHARS_MAX: usize = 160;
/// Characters of a detail read to build its template (the template keeps
/// at most [`REASON_CHARS_MAX`]).
pub const TEMPLATE_INPUT_CHARS_MAX: usize = 1024;
/// Longest example detail kept (characters).
pub const EXAMPLE_CHARS_MAX: usize = 240;
/// Longest subject id kept (characters).
pub const SUBJECT_CHARS_MAX: usize = 96;
/// Largest persisted memory accepted by [`Scorer::from_bytes`], bytes.
pub const MEMORY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Empty windows replayed into a baseline at most (older history has decayed
/// to zero by then anyway).
const BASELINE_DECAY_WINDOWS_MAX: u64 = 64;
/// Buckets of the sliding horizon ([`Tuning::horizon_ms`] /
/// `RECENT_BUCKETS` each): recent counts cover the current bucket and the
/// `RECENT_BUCKETS - 1` before it.
pub const RECENT_BUCKETS: usize = 8;
/// The horizon on nodes: recurrence, volume, spread and heals count what
/// happened in the last day (21–24 h, by 3 h buckets); older occurrences
/// only stay in the lifetime totals.
pub const RECURRENCE_HORIZON_MS: u64 = 24 * 60 * 60_000;
/// An event this far behind the scorer's clock means the clock (this one or
/// the one that stamped the earlier events) jumped: the scorer follows the
/// event's time and pulls every remembered time back to it, instead of
/// pinning all later events to a time that may never come. Smaller steps back
/// are absorbed (the event counts at the scorer's clock).
pub const CLOCK_BEHIND_TOLERANCE_MS: u64 = 5 * 60_000;
/// Closed windows a fingerprint's baseline needs before a window can be
/// judged a burst: a new pattern has no usual rate yet, and a steady stream
/// must not read as a burst at its start.
pub const BASELINE_WINDOWS_MIN: u64 = 3;
/// The baseline is the plain mean of the first this-many closed windows,
/// then an exponential average giving each new window 1/this weight.
pub const BASELINE_MEAN_WINDOWS: u64 = 8;

// ------------------------------------------------------- band thresholds

/// Episodes (occurrences separated by more than `episode_gap_ms`) within the
/// horizon at which a pattern counts as recurring: +1 band.
pub const RECURRENCE_EPISODES_RAISE: u64 = 3;
/// Episodes within the horizon at which a pattern is chronic (about hourly
/// over a day on nodes): a further +1 band.
pub const RECURRENCE_EPISODES_CHRONIC: u64 = 24;
/// Occurrences within the horizon at which sheer volume earns +1 band.
pub const VOLUME_COUNT_RAISE: u64 = 100;
/// A window is a burst when its count is at least this many times the
/// fingerprint's baseline (its usual events per window) …
pub const BURST_FACTOR: u64 = 4;
/// … and at least this many events. A burst earns +1 band while it is recent
/// (within `burst_hold_ms`).
pub const BURST_EVENTS_MIN: u64 = 5;
/// Distinct projects, signers or peers (any one of them) seen within the
/// horizon at which a pattern is spreading: +1 band.
pub const SPREAD_SUBJECTS_RAISE: usize = 3;
/// Failures healed by their recovery this many times within the horizon:
/// recurring self-healing instability, +1 band. Fewer heals, with every
/// failure healed: -1 band.
pub const SELF_HEAL_RECURRING: u64 = 3;
/// Sessions (node lifetimes: memory loaded after a restart) a pattern has
/// occurred in, at which history earns +1 band.
pub const SESSIONS_RAISE: u64 = 2;
/// Episodes before the horizon (lifetime episodes less the recent ones) at
/// which a pattern seen again has precedent: +1 band, as recurrence would
/// give it. The horizon forgets a pattern that recurs once or twice a day,
/// every day (too few episodes in any one day to count as recurring);
/// this keeps its days of history counting (the governance text's
/// "patterns with historical precedent"). Recurrence, persistence and
/// precedent measure one thing, how chronic a pattern is, and only the
/// largest of them counts, so a pattern that already recurs daily does not
/// climb further for having done so for weeks.
pub const PRECEDENT_EPISODES_RAISE: u64 = 3;
/// An episode still going after this fraction of the horizon (3 h on nodes)
/// is persistent: +1 band, as recurrence would give it ...
pub const PERSISTENT_HORIZON_DIVISOR: u64 = 8;
/// ... and after this fraction (12 h) it is chronic: +2, as for
/// [`RECURRENCE_EPISODES_CHRONIC`] episodes. A stream with no 5-minute gap
/// is one episode that never ends, and counting only episode starts rated
/// it below a sparser one. Persistence and recurrence measure the same
/// thing; the larger of the two counts.
pub const CHRONIC_HORIZON_DIVISOR: u64 = 2;
/// Bands from which an item is surfaced to operators (in `GET /attention`
/// lists and chaos reports by default): watch and above.
pub const SURFACE_BAND_MIN: Band = Band::Watch;

/// Time constants: the node uses [`Tuning::OPERATIONS`] (wall-clock ms); the
/// simulator, whose runs last seconds of virtual time, uses
/// [`Tuning::SIMULATION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Width of the burst window (and of the new-fingerprint budget), ms.
    pub window_ms: u64,
    /// A gap longer than this starts a new episode, ms.
    pub episode_gap_ms: u64,
    /// A burst keeps its raise this long after the bursting window, ms.
    pub burst_hold_ms: u64,
    /// Unseen for longer than this: -1 band (quiet), ms.
    pub quiet_ms: u64,
    /// Recurrence, volume, spread and heals count within this sliding
    /// horizon, ms (in [`RECENT_BUCKETS`] buckets).
    pub horizon_ms: u64,
}

impl Tuning {
    pub const OPERATIONS: Tuning = Tuning {
        window_ms: 60_000,
        episode_gap_ms: 5 * 60_000,
        burst_hold_ms: 15 * 60_000,
        quiet_ms: 6 * 60 * 60_000,
        horizon_ms: RECURRENCE_HORIZON_MS,
    };
    pub const SIMULATION: Tuning = Tuning {
        window_ms: 500,
        episode_gap_ms: 1_000,
        burst_hold_ms: 5_000,
        quiet_ms: 60_000,
        horizon_ms: 60_000,
    };

    /// Width of one horizon bucket, ms (at least 1).
    fn bucket_ms(&self) -> u64 {
        (self.horizon_ms / RECENT_BUCKETS as u64).max(1)
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning::OPERATIONS
    }
}

/// `ms` in the largest whole unit: `24 h`, `15 min`, `30 s`, `250 ms`.
fn span(ms: u64) -> String {
    if ms >= 3_600_000 && ms.is_multiple_of(3_600_000) {
        format!("{} h", ms / 3_600_000)
    } else if ms >= 60_000 && ms.is_multiple_of(60_000) {
        format!("{} min", ms / 60_000)
    } else if ms >= 1_000 && ms.is_multiple_of(1_000) {
        format!("{} s", ms / 1_000)
    } else {
        format!("{ms} ms")
    }
}

/// `ms` rounded down to its largest unit: `3 d`, `5 h`, `12 min`, `40 s`,
/// `250 ms`.
fn span_approx(ms: u64) -> String {
    const DAY: u64 = 24 * 3_600_000;
    if ms >= DAY {
        format!("{} d", ms / DAY)
    } else if ms >= 3_600_000 {
        format!("{} h", ms / 3_600_000)
    } else if ms >= 60_000 {
        format!("{} min", ms / 60_000)
    } else if ms >= 1_000 {
        format!("{} s", ms / 1_000)
    } else {
        format!("{ms} ms")
    }
}

// ------------------------------------------------------------------ events

/// Attention bands of the brAInstem governance text (§10).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    /// 0: trivial noise; counters only, never surfaced.
    #[default]
    IgnoreFast,
    /// 1: probably not meaningful alone; kept cheaply, may earn more later.
    Background,
    /// 2: weak but plausibly meaningful; monitored and surfaced.
    Watch,
    /// 3: likely meaningful; someone should look now.
    Investigate,
    /// 4: important; digest- and review-worthy.
    Promote,
}

impl Band {
    pub const ALL: [Band; 5] = [
        Band::IgnoreFast,
        Band::Background,
        Band::Watch,
        Band::Investigate,
        Band::Promote,
    ];

    pub fn level(self) -> u8 {
        self as u8
    }

    pub fn from_level(level: i64) -> Band {
        match level {
            i64::MIN..=0 => Band::IgnoreFast,
            1 => Band::Background,
            2 => Band::Watch,
            3 => Band::Investigate,
            _ => Band::Promote,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Band::IgnoreFast => "ignore-fast",
            Band::Background => "background",
            Band::Watch => "watch",
            Band::Investigate => "investigate",
            Band::Promote => "promote",
        }
    }
}

/// What happened. The reducer's [`OpEvent`] kinds map onto these
/// ([`Event::from_op`]); runtimes and the simulator add their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A proposal refused by a guard (reason: the guard).
    Rejected,
    /// A proposal named a state hash that is no longer HEAD.
    StaleHash,
    /// The same idempotency key with different content.
    IdemConflict,
    /// Bad signature or unknown signer.
    AuthFailure,
    /// An idempotent replay answered with the original outcome.
    Duplicate,
    /// A project moved to QUARANTINED.
    Quarantine,
    /// A quarantine released (heals `Quarantine`).
    QuarantineReleased,
    /// Council quorum lost (Control → RECOVERY).
    QuorumLost,
    /// Quorum restored (heals `QuorumLost`).
    Recovered,
    /// The license entered its grace period (Control → DEGRADED).
    LicenseGrace,
    /// License refreshed (heals `LicenseGrace`).
    LicenseRestored,
    /// License refresh denied or late.
    LicenseTrouble,
    /// A tool's health probe went red.
    ToolFlap,
    /// A tool's probe is green again (heals `ToolFlap`).
    ToolRecovered,
    /// A follower fell behind the leader.
    FollowerLag,
    /// A follower saw a gap in the records it received.
    FollowerGap,
    /// A follower caught up (heals `FollowerLag` and `FollowerGap`).
    FollowerCaughtUp,
    /// A peer was cut off from the cluster.
    Partition,
    /// A cut-off peer is reachable again (heals `Partition`).
    PartitionHealed,
    /// A node or actor restarted (crash, kill -9, supervisor restart).
    Restart,
    /// A torn WAL tail was cut during recovery.
    TornWrite,
    /// A damaged snapshot was skipped during recovery.
    SnapshotCorrupt,
    /// A node restarted from an older snapshot than its newest state.
    SnapshotRollback,
    /// A message with a bad signature or from a non-leader was refused.
    ForgedMessage,
    /// A council vote was refused (forged, outsider, stale epoch, signed for
    /// another cluster's genesis).
    VoteRejected,
    /// Anything else (the reason carries the original kind).
    Other,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Rejected => "rejected",
            EventKind::StaleHash => "stale_hash",
            EventKind::IdemConflict => "idem_conflict",
            EventKind::AuthFailure => "auth_failure",
            EventKind::Duplicate => "duplicate",
            EventKind::Quarantine => "quarantine",
            EventKind::QuarantineReleased => "quarantine_released",
            EventKind::QuorumLost => "quorum_lost",
            EventKind::Recovered => "recovered",
            EventKind::LicenseGrace => "license_grace",
            EventKind::LicenseRestored => "license_restored",
            EventKind::LicenseTrouble => "license_trouble",
            EventKind::ToolFlap => "tool_flap",
            EventKind::ToolRecovered => "tool_recovered",
            EventKind::FollowerLag => "follower_lag",
            EventKind::FollowerGap => "follower_gap",
            EventKind::FollowerCaughtUp => "follower_caught_up",
            EventKind::Partition => "partition",
            EventKind::PartitionHealed => "partition_healed",
            EventKind::Restart => "restart",
            EventKind::TornWrite => "torn_write",
            EventKind::SnapshotCorrupt => "snapshot_corrupt",
            EventKind::SnapshotRollback => "snapshot_rollback",
            EventKind::ForgedMessage => "forged_message",
            EventKind::VoteRejected => "vote_rejected",
            EventKind::Other => "other",
        }
    }

    /// The kind named by the reducer's `OpEvent::kind` string.
    pub fn from_name(name: &str) -> EventKind {
        match name {
            "rejected" => EventKind::Rejected,
            "stale_hash" => EventKind::StaleHash,
            "idem_conflict" => EventKind::IdemConflict,
            "auth_failure" => EventKind::AuthFailure,
            "duplicate" => EventKind::Duplicate,
            "quarantine" => EventKind::Quarantine,
            "quarantine_released" => EventKind::QuarantineReleased,
            "quorum_lost" => EventKind::QuorumLost,
            "recovered" => EventKind::Recovered,
            "license_grace" => EventKind::LicenseGrace,
            "license_restored" => EventKind::LicenseRestored,
            "license_trouble" => EventKind::LicenseTrouble,
            "tool_flap" => EventKind::ToolFlap,
            "tool_recovered" => EventKind::ToolRecovered,
            "follower_lag" => EventKind::FollowerLag,
            "follower_gap" => EventKind::FollowerGap,
            "follower_caught_up" => EventKind::FollowerCaughtUp,
            "partition" => EventKind::Partition,
            "partition_healed" => EventKind::PartitionHealed,
            "restart" => EventKind::Restart,
            "torn_write" => EventKind::TornWrite,
            "snapshot_corrupt" => EventKind::SnapshotCorrupt,
            "snapshot_rollback" => EventKind::SnapshotRollback,
            "forged_message" => EventKind::ForgedMessage,
            "vote_rejected" => EventKind::VoteRejected,
            _ => EventKind::Other,
        }
    }

    /// The band a single occurrence starts in, before any raise or lower.
    pub fn base_band(self) -> Band {
        use EventKind::*;
        match self {
            // Normal operation or the good half of a pair.
            Duplicate | QuarantineReleased | Recovered | LicenseRestored | ToolRecovered
            | FollowerCaughtUp | PartitionHealed | Other => Band::IgnoreFast,
            // Expected now and then; only a pattern of them matters.
            Rejected | StaleHash | IdemConflict | ToolFlap | FollowerLag | Partition | Restart
            | LicenseTrouble | VoteRejected => Band::Background,
            // Each one changes what the cluster does or risks data.
            AuthFailure | Quarantine | QuorumLost | LicenseGrace | FollowerGap | TornWrite
            | SnapshotCorrupt | SnapshotRollback => Band::Watch,
            // Someone may be attacking the cluster.
            ForgedMessage => Band::Investigate,
        }
    }

    /// The failure kinds an event of this kind heals.
    pub fn heals(self) -> &'static [EventKind] {
        use EventKind::*;
        match self {
            QuarantineReleased => &[Quarantine],
            Recovered => &[QuorumLost],
            LicenseRestored => &[LicenseGrace, LicenseTrouble],
            ToolRecovered => &[ToolFlap],
            FollowerCaughtUp => &[FollowerLag, FollowerGap],
            PartitionHealed => &[Partition],
            _ => &[],
        }
    }

    fn has_recovery(self) -> bool {
        use EventKind::*;
        matches!(
            self,
            Quarantine
                | QuorumLost
                | LicenseGrace
                | LicenseTrouble
                | ToolFlap
                | FollowerLag
                | FollowerGap
                | Partition
        )
    }

    /// What is happening, in a phrase (the reason follows it).
    fn what(self) -> &'static str {
        use EventKind::*;
        match self {
            Rejected => "proposals rejected",
            StaleHash => "proposals named a stale state hash (409)",
            IdemConflict => "idempotency keys reused with different content (409)",
            AuthFailure => "proposals with a bad signature or an unknown signer (401)",
            Duplicate => "idempotent replays answered with the original outcome",
            Quarantine => "projects quarantined",
            QuarantineReleased => "quarantines released",
            QuorumLost => "council quorum lost (Control → RECOVERY)",
            Recovered => "council quorum restored",
            LicenseGrace => "license in its grace period (Control → DEGRADED)",
            LicenseRestored => "license refreshed",
            LicenseTrouble => "license refresh late or denied",
            ToolFlap => "tool health probes went red",
            ToolRecovered => "tool health probes green again",
            FollowerLag => "a follower fell behind the leader",
            FollowerGap => "a follower saw a gap in the replicated log",
            FollowerCaughtUp => "a follower caught up",
            Partition => "a peer was cut off",
            PartitionHealed => "a cut-off peer is back",
            Restart => "a node or actor restarted",
            TornWrite => "a torn WAL tail was cut during recovery",
            SnapshotCorrupt => "a damaged snapshot was skipped during recovery",
            SnapshotRollback => "a node restarted from an older snapshot",
            ForgedMessage => "forged or foreign replication messages refused",
            VoteRejected => "council votes refused",
            Other => "operational event",
        }
    }

    /// Why it matters.
    fn why(self) -> &'static str {
        use EventKind::*;
        match self {
            Rejected => "work is not advancing for whoever sends these; a guard keeps saying no",
            StaleHash => "writers race on the same project or read stale state; throughput is lost to retries",
            IdemConflict => "a client reuses keys for different work; one of its requests is being dropped",
            AuthFailure => "an unauthorized or misconfigured client is trying to change state",
            Duplicate => "clients retry requests that already succeeded; harmless alone, a storm means timeouts",
            Quarantine => "a quarantined project is stopped until an admin releases it",
            QuarantineReleased | Recovered | LicenseRestored | ToolRecovered | FollowerCaughtUp
            | PartitionHealed => "the matching failure healed itself",
            QuorumLost => "no council decisions can be made until quorum returns",
            LicenseGrace => "the hard stop follows the grace period unless the license is refreshed",
            LicenseTrouble => "license refreshes failing now become a DEGRADED node later",
            ToolFlap => "agents lose tools mid-work; flapping tools make council work unreliable",
            FollowerLag => "a failover now would lose the records the follower has not applied",
            FollowerGap => "the follower is missing records and must catch up before it can serve",
            Partition => "a cut-off peer cannot vote or replicate",
            Restart => "restarts cost availability and can hide a crash loop",
            TornWrite => "the disk or the process died mid-write; acknowledged data must be checked",
            SnapshotCorrupt => "storage damaged a snapshot; recovery gets slower and may be at risk",
            SnapshotRollback => "a node came back older than it was; it must replay to catch up",
            ForgedMessage => "someone is injecting messages into the cluster's channel",
            VoteRejected => "a council agent is misconfigured, stale, not on the roster, or its key also votes in another cluster",
            Other => "an unclassified operational signal",
        }
    }

    /// What to check next (runbook hint).
    fn next(self) -> &'static str {
        use EventKind::*;
        match self {
            Rejected => "read the guard reasons in the rejection (`swoosh decisions`, logs); fix the proposer's inputs or the guard's facts",
            StaleHash => "make writers re-read HEAD (`swoosh state`) before proposing; look for two writers on one project",
            IdemConflict => "find the client that reuses idem_keys (signer in `where`); keys must be unique per operation",
            AuthFailure => "check the signer against the roster (`swoosh state --projection Boot`); rotate or enroll the key",
            Duplicate => "check client timeouts and retry policy if the rate is high",
            Quarantine => "read the policy rationale in the decision record; release with an admin-signed Policy_Release",
            QuarantineReleased | Recovered | LicenseRestored | ToolRecovered | FollowerCaughtUp
            | PartitionHealed => "nothing unless it keeps repeating",
            QuorumLost => "check council agents' connectivity (`swoosh health`); re-elect if members are gone",
            LicenseGrace => "refresh the license (KACHING) before the grace period ends",
            LicenseTrouble => "check the license server's reachability and answers",
            ToolFlap => "check the tool's MCP endpoint and probe history; pin a stable version",
            FollowerLag => "check the follower's disk and network (`swoosh health` walLag); see docs/runbooks replication triage",
            FollowerGap => "check gossip delivery to the follower; it should catch up by range request",
            Partition => "check the network path between the peers",
            Restart => "read the logs before the restart for the crash reason; look for a crash loop",
            TornWrite => "run `swoosh wal verify` on the node's directory; check the disk and power events",
            SnapshotCorrupt => "run `swoosh snapshot list` and `swoosh wal verify`; check the disk",
            SnapshotRollback => "check why the newest snapshot was unusable; see the snapshot restore runbook",
            ForgedMessage => "find the sending peer; check the genesis, roster and follower keys",
            VoteRejected => "check the agent's key, roster membership and epoch; for wrong_genesis, the agent's genesis.json (it signs for another cluster: give each cluster its own council keys)",
            Other => "look at the example detail",
        }
    }

    /// Whether the detail of this kind is the orchestrator's own text (a
    /// guard's reasons, a fault description: templated into the
    /// fingerprint) rather than a proposer's free text or a recovery's
    /// summary (left out: the kind and reason say what it is).
    fn detail_is_fingerprinted(self) -> bool {
        use EventKind::*;
        !matches!(
            self,
            QuorumLost
                | Quarantine
                | QuarantineReleased
                | Recovered
                | LicenseRestored
                | ToolRecovered
                | FollowerCaughtUp
                | PartitionHealed
        )
    }
}

/// Who an event is about. Any of them may be absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub project: Option<String>,
    pub signer: Option<String>,
    pub peer: Option<String>,
    /// What inside the project or peer it is about (the tools of a tool
    /// flap or recovery). A recovery naming items heals only the failures
    /// of those items (and failures that named none).
    #[serde(default)]
    pub items: Vec<String>,
}

/// One operational event, as the scorer sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub subject: Subject,
    /// The stable part of the cause (a guard, a fault class): fingerprinted.
    pub reason: String,
    /// Free text (names, indexes, hashes, times): templated before
    /// fingerprinting ([`template`]); kept raw as the example.
    pub detail: String,
    /// When, in the caller's time base (ms).
    pub at_ms: u64,
}

impl Event {
    pub fn new(kind: EventKind, reason: impl Into<String>, at_ms: u64) -> Event {
        Event {
            kind,
            subject: Subject::default(),
            reason: reason.into(),
            detail: String::new(),
            at_ms,
        }
    }

    pub fn project(mut self, p: impl Into<String>) -> Event {
        self.subject.project = Some(p.into());
        self
    }

    pub fn signer(mut self, s: impl Into<String>) -> Event {
        self.subject.signer = Some(s.into());
        self
    }

    pub fn peer(mut self, p: impl Into<String>) -> Event {
        self.subject.peer = Some(p.into());
        self
    }

    /// Add an item (a tool) the event is about.
    pub fn item(mut self, i: impl Into<String>) -> Event {
        self.subject.items.push(i.into());
        self
    }

    pub fn detail(mut self, d: impl Into<String>) -> Event {
        self.detail = d.into();
        self
    }

    /// The reducer's operational event, at `at_ms`. Tool flaps and tool
    /// recoveries name their tools (read from the reducer's text) as items.
    pub fn from_op(op: &OpEvent, at_ms: u64) -> Event {
        let kind = EventKind::from_name(&op.kind);
        let reason = match (&op.guard, kind) {
            (Some(g), _) => g.clone(),
            (None, EventKind::Other) => op.kind.clone(),
            (None, _) => String::new(),
        };
        let mut e = Event::new(kind, reason, at_ms).detail(op.detail.clone());
        if !op.project.is_empty() {
            e = e.project(op.project.clone());
        }
        if !op.signer.is_empty() {
            e = e.signer(op.signer.clone());
        }
        e.subject.items = tools_named(kind, &op.detail);
        e
    }
}

/// The tools a reducer tool event names: `tool '<name>' …` reasons of a
/// flap, the `…again: a, b` list of a recovery. Sorted, distinct, bounded.
fn tools_named(kind: EventKind, detail: &str) -> Vec<String> {
    let mut v: Vec<String> = match kind {
        EventKind::ToolFlap => detail
            .match_indices("tool '")
            .filter_map(|(i, m)| {
                let rest = &detail[i + m.len()..];
                rest.find('\'').map(|end| rest[..end].to_string())
            })
            .collect(),
        EventKind::ToolRecovered => detail
            .rsplit_once(": ")
            .map(|(_, list)| {
                list.split(',')
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        _ => vec![],
    };
    v.retain(|t| !t.is_empty());
    for t in &mut v {
        *t = truncate(t, SUBJECT_CHARS_MAX);
    }
    v.sort();
    v.dedup();
    v.truncate(SUBJECTS_PER_FINGERPRINT_MAX);
    v
}

// ----------------------------------------------------------- fingerprints

/// Mask the volatile parts of `text`: `blake3:` hashes, signer keys, long hex
/// runs and numbers, so equal causes get equal text. Lowercased, whitespace
/// collapsed, at most [`REASON_CHARS_MAX`] characters. (Quoted strings are
/// masked by [`template`], which calls this.)
pub fn normalize(text: &str) -> String {
    fn is_word(c: char) -> bool {
        c.is_alphanumeric() || matches!(c, '_' | ':' | '.' | '-' | '/' | '+')
    }
    fn mask(word: &str, out: &mut String) {
        let lower = word.to_lowercase();
        if lower.starts_with("blake3:") || lower.starts_with("bubble://") {
            out.push_str("<hash>");
            return;
        }
        if lower.starts_with("hmmm:pubkey:") {
            out.push_str("<key>");
            return;
        }
        let hexish = lower.chars().filter(|c| c.is_ascii_hexdigit()).count();
        if hexish >= 16 && lower.chars().all(|c| c.is_ascii_hexdigit()) {
            out.push_str("<hex>");
            return;
        }
        let mut in_digits = false;
        for c in lower.chars() {
            if c.is_ascii_digit() {
                if !in_digits {
                    out.push('#');
                }
                in_digits = true;
            } else {
                in_digits = false;
                out.push(c);
            }
        }
    }
    let mut out = String::new();
    let mut word = String::new();
    let mut space = false;
    for c in text.chars() {
        if is_word(c) {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            mask(&word, &mut out);
            word.clear();
        }
        if c.is_whitespace() {
            space = true;
        } else {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.push(c);
        }
    }
    if !word.is_empty() {
        mask(&word, &mut out);
    }
    truncate(&out, REASON_CHARS_MAX)
}

/// Replace quoted strings with `<str>`: `"…"` (Rust `{:?}` quoting, with
/// backslash escapes; an unterminated one runs to the end) and `'…'` when the
/// opening quote starts a word and a closing quote ends one (so apostrophes
/// as in `leader's` stay text).
fn mask_quoted(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                if chars[j] == '\\' {
                    j += 1;
                }
                j += 1;
            }
            out.push_str("<str>");
            i = j + 1;
            continue;
        }
        if c == '\'' {
            let opens = i == 0
                || chars[i - 1].is_whitespace()
                || matches!(chars[i - 1], '(' | '[' | '{' | ',' | ':' | ';' | '=');
            let close = (i + 1..chars.len()).find(|&j| {
                chars[j] == '\'' && chars.get(j + 1).is_none_or(|n| !n.is_alphanumeric())
            });
            if let (true, Some(j)) = (opens, close) {
                out.push_str("<str>");
                i = j + 1;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// The template of a detail text: quoted strings masked ([`mask_quoted`]),
/// then every `; `-separated clause normalized ([`normalize`]: hashes, keys,
/// hex, numbers) and repeated clauses dropped, so a guard's text with one
/// or three failing items of the same form gives one template. At most
/// [`REASON_CHARS_MAX`] characters.
pub fn template(detail: &str) -> String {
    // Only the start can reach the bounded template; bounding the input
    // keeps the masking cheap on any text.
    let masked = mask_quoted(&truncate(detail, TEMPLATE_INPUT_CHARS_MAX));
    let mut clauses: Vec<String> = vec![];
    for c in masked.split("; ") {
        let n = normalize(c);
        if !n.is_empty() && !clauses.contains(&n) {
            clauses.push(n);
        }
    }
    truncate(&clauses.join("; "), REASON_CHARS_MAX)
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// The signature text of an event: its normalized reason and, for kinds
/// whose detail is the orchestrator's own text, the detail's [`template`].
pub fn signature(ev: &Event) -> String {
    let reason = normalize(&ev.reason);
    let detail = if ev.kind.detail_is_fingerprinted() {
        template(&ev.detail)
    } else {
        String::new()
    };
    join_signature(reason, detail)
}

fn join_signature(reason: String, detail: String) -> String {
    let s = match (reason.is_empty(), detail.is_empty()) {
        (true, _) => detail,
        (false, true) => reason,
        (false, false) => format!("{reason}: {detail}"),
    };
    truncate(&s, REASON_CHARS_MAX)
}

/// The detail that stands for every pattern a subject created beyond its
/// [`NEW_FINGERPRINTS_PER_SUBJECT_MAX`] budget.
pub const VARIED_DETAIL: &str = "<varied detail>";

/// The signature of an event folded by the new-fingerprint budget.
fn varied_signature(ev: &Event) -> String {
    join_signature(normalize(&ev.reason), VARIED_DETAIL.to_string())
}

/// The fingerprint of an event: `fp:` + 16 hex digits of BLAKE3 over the
/// canonical CBOR of `[kind, signature]`. Stable across runs, nodes and
/// versions of the volatile fields.
pub fn fingerprint(ev: &Event) -> String {
    fingerprint_of(ev.kind, &signature(ev))
}

fn fingerprint_of(kind: EventKind, signature: &str) -> String {
    let h = crate::hash::hash_of(&(kind.name(), signature)).expect("strings encode");
    format!("fp:{}", &h.to_hex()[..16])
}

// ------------------------------------------------------------------ memory

/// A bounded set of subject ids, each with when it was last seen: at most
/// [`SUBJECTS_PER_FINGERPRINT_MAX`]; when full, the longest-unseen one makes
/// room if it was unseen for longer than the horizon, otherwise the new one
/// is only counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectSet {
    /// Subject id → last seen, ms.
    pub ids: BTreeMap<String, u64>,
    /// Occurrences whose subject was not kept because the set was full.
    pub overflow: u64,
}

impl SubjectSet {
    fn add(&mut self, id: &Option<String>, at: u64, horizon_ms: u64) {
        let Some(id) = id else { return };
        let id = truncate(id, SUBJECT_CHARS_MAX);
        if let Some(seen) = self.ids.get_mut(&id) {
            *seen = (*seen).max(at);
            return;
        }
        if self.ids.len() < SUBJECTS_PER_FINGERPRINT_MAX {
            self.ids.insert(id, at);
            return;
        }
        // The first of the longest-unseen (ids iterate in order: stable).
        let oldest = self
            .ids
            .iter()
            .min_by_key(|(_, &seen)| seen)
            .map(|(k, &seen)| (k.clone(), seen));
        match oldest {
            Some((k, seen)) if at.saturating_sub(seen) > horizon_ms => {
                self.ids.remove(&k);
                self.ids.insert(id, at);
            }
            _ => self.overflow = self.overflow.saturating_add(1),
        }
    }

    /// Distinct subjects kept.
    pub fn distinct(&self) -> usize {
        self.ids.len()
    }

    /// Distinct subjects seen within `horizon_ms` before `now_ms`.
    pub fn recent(&self, now_ms: u64, horizon_ms: u64) -> usize {
        self.ids
            .values()
            .filter(|&&seen| now_ms.saturating_sub(seen) <= horizon_ms)
            .count()
    }

    fn clamp(&mut self, at: u64) {
        for seen in self.ids.values_mut() {
            *seen = (*seen).min(at);
        }
    }
}

/// Counts over the sliding horizon: [`RECENT_BUCKETS`] buckets of
/// `horizon_ms / RECENT_BUCKETS`, newest first. Integers only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recent {
    /// Start of the newest bucket, ms (a multiple of the bucket width).
    pub start_ms: u64,
    /// Occurrences per bucket.
    pub events: [u64; RECENT_BUCKETS],
    /// Episodes begun per bucket.
    pub episodes: [u64; RECENT_BUCKETS],
    /// Heals per bucket.
    pub heals: [u64; RECENT_BUCKETS],
}

/// Recent (within the horizon) occurrences, episodes and heals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentCounts {
    pub events: u64,
    pub episodes: u64,
    pub heals: u64,
}

impl Recent {
    /// Make the newest bucket the one holding `at` (older ones shift out).
    fn advance(&mut self, at: u64, t: &Tuning) {
        let w = t.bucket_ms();
        let start = at - at % w;
        if start <= self.start_ms {
            return;
        }
        let k = ((start - self.start_ms) / w).min(RECENT_BUCKETS as u64) as usize;
        for a in [&mut self.events, &mut self.episodes, &mut self.heals] {
            a.rotate_right(k);
            a[..k].fill(0);
        }
        self.start_ms = start;
    }

    /// The counts of the buckets still inside the horizon at `now_ms`.
    pub fn counts(&self, now_ms: u64, t: &Tuning) -> RecentCounts {
        let w = t.bucket_ms();
        let now_start = now_ms - now_ms % w;
        let aged = (now_start.saturating_sub(self.start_ms) / w).min(RECENT_BUCKETS as u64);
        let live = RECENT_BUCKETS - aged as usize;
        let sum = |a: &[u64; RECENT_BUCKETS]| {
            a[..live].iter().fold(0u64, |acc, &x| acc.saturating_add(x))
        };
        RecentCounts {
            events: sum(&self.events),
            episodes: sum(&self.episodes),
            heals: sum(&self.heals),
        }
    }
}

fn bump(x: &mut u64) {
    *x = x.saturating_add(1);
}

/// An open failure: the project and peer it was seen for, and the item
/// (tool) it named ("" for none).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpenKey {
    pub project: String,
    pub peer: String,
    pub item: String,
}

impl OpenKey {
    /// Whether a recovery about `s` heals this failure: same project and
    /// peer where the recovery names them, and one of its items when both
    /// name items. A recovery naming nothing heals every open failure.
    fn healed_by(&self, s: &Subject) -> bool {
        let same = |want: &Option<String>, have: &str| {
            want.as_ref()
                .is_none_or(|w| truncate(w, SUBJECT_CHARS_MAX) == have)
        };
        same(&s.project, &self.project)
            && same(&s.peer, &self.peer)
            && (s.items.is_empty()
                || self.item.is_empty()
                || s.items
                    .iter()
                    .any(|i| truncate(i, SUBJECT_CHARS_MAX) == self.item))
    }
}

/// What the scorer remembers about one fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub kind: EventKind,
    /// The signature text (reason and detail template).
    pub signature: String,
    /// The latest raw detail (truncated), for humans.
    pub example: String,
    /// Occurrences, all time.
    pub count: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Occurrence runs separated by more than `episode_gap_ms`, all time.
    pub episodes: u64,
    /// When the current episode began, ms. `None` in a memory written before
    /// it was kept (then read as the last occurrence: persistence counts
    /// from the upgrade), and left out of the encoding when `None` so such a
    /// memory still reads back byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode_start_ms: Option<u64>,
    /// Occurrences, episodes and heals within the horizon.
    pub recent: Recent,
    /// Start of the current burst window, ms.
    pub window_start_ms: u64,
    /// Events in the current window.
    pub window_count: u64,
    /// Usual events per window before the current one, in thousandths: the
    /// mean of the first [`BASELINE_MEAN_WINDOWS`] closed windows, then an
    /// exponential average (integers only, as canonical CBOR has no floats).
    pub baseline_milli: u64,
    /// Closed windows folded into the baseline (saturates at 2^32).
    pub baseline_windows: u64,
    /// Windows that were bursts, all time.
    pub bursts: u64,
    pub last_burst_ms: Option<u64>,
    pub projects: SubjectSet,
    pub signers: SubjectSet,
    pub peers: SubjectSet,
    /// Failures (of a kind with a recovery) still waiting for theirs, by
    /// subject; at most [`SUBJECTS_PER_FINGERPRINT_MAX`] …
    pub open_for: BTreeSet<OpenKey>,
    /// … and how many more are open beyond that bound.
    pub open_untracked: u64,
    /// Recoveries that healed failures of this fingerprint, all time.
    pub heals: u64,
    pub last_healed_ms: Option<u64>,
    /// Session (node lifetime) in which it was first and last seen.
    pub first_session: u64,
    pub last_session: u64,
    /// Distinct sessions it occurred in.
    pub sessions: u64,
    /// Band after the latest update, and the highest band it ever reached.
    pub band: Band,
    pub peak_band: Band,
}

/// Cap of [`Record::baseline_windows`].
const BASELINE_WINDOWS_CAP: u64 = 1 << 32;

impl Record {
    fn new(kind: EventKind, signature: String, at: u64, session: u64, t: &Tuning) -> Record {
        let w = t.window_ms.max(1);
        let b = t.bucket_ms();
        Record {
            kind,
            signature,
            example: String::new(),
            count: 0,
            first_seen_ms: at,
            last_seen_ms: at,
            episodes: 0,
            episode_start_ms: Some(at),
            recent: Recent {
                start_ms: at - at % b,
                ..Recent::default()
            },
            window_start_ms: at - at % w,
            window_count: 0,
            baseline_milli: 0,
            baseline_windows: 0,
            bursts: 0,
            last_burst_ms: None,
            projects: SubjectSet::default(),
            signers: SubjectSet::default(),
            peers: SubjectSet::default(),
            open_for: BTreeSet::new(),
            open_untracked: 0,
            heals: 0,
            last_healed_ms: None,
            first_session: session,
            last_session: session,
            sessions: 1,
            band: Band::IgnoreFast,
            peak_band: Band::IgnoreFast,
        }
    }

    /// A failure still waiting for its recovery.
    pub fn is_open(&self) -> bool {
        !self.open_for.is_empty() || self.open_untracked > 0
    }

    /// Close the open failures a recovery about `s` heals; whether any was.
    /// A recovery that matches no tracked failure heals one of the untracked
    /// ones (their subjects were not kept); one naming nothing heals all.
    fn close_for(&mut self, s: &Subject) -> bool {
        if !self.is_open() {
            return false;
        }
        let before = self.open_for.len();
        self.open_for.retain(|k| !k.healed_by(s));
        let mut closed = self.open_for.len() < before;
        let anonymous = s.project.is_none() && s.peer.is_none() && s.items.is_empty();
        if anonymous && self.open_untracked > 0 {
            self.open_untracked = 0;
            closed = true;
        } else if !closed && self.open_untracked > 0 {
            self.open_untracked -= 1;
            closed = true;
        }
        closed
    }

    fn open(&mut self, s: &Subject) {
        let part = |x: &Option<String>| {
            x.as_deref()
                .map(|v| truncate(v, SUBJECT_CHARS_MAX))
                .unwrap_or_default()
        };
        let items: Vec<String> = if s.items.is_empty() {
            vec![String::new()]
        } else {
            s.items
                .iter()
                .take(SUBJECTS_PER_FINGERPRINT_MAX)
                .map(|i| truncate(i, SUBJECT_CHARS_MAX))
                .collect()
        };
        for item in items {
            let k = OpenKey {
                project: part(&s.project),
                peer: part(&s.peer),
                item,
            };
            if self.open_for.contains(&k) {
                continue;
            }
            if self.open_for.len() < SUBJECTS_PER_FINGERPRINT_MAX {
                self.open_for.insert(k);
            } else {
                bump(&mut self.open_untracked);
            }
        }
    }

    /// Fold one closed window of `n` events into the baseline.
    fn fold_window(&mut self, n: u64) {
        let k = self
            .baseline_windows
            .saturating_add(1)
            .min(BASELINE_MEAN_WINDOWS);
        self.baseline_milli = self
            .baseline_milli
            .saturating_mul(k - 1)
            .saturating_add(n.saturating_mul(1000))
            / k;
        self.baseline_windows = self
            .baseline_windows
            .saturating_add(1)
            .min(BASELINE_WINDOWS_CAP);
    }

    /// Events in one window that make it a burst, once the baseline has
    /// [`BASELINE_WINDOWS_MIN`] windows (`None` before).
    pub fn burst_threshold(&self) -> Option<u64> {
        (self.baseline_windows >= BASELINE_WINDOWS_MIN).then(|| {
            BURST_EVENTS_MIN.max(
                BURST_FACTOR
                    .saturating_mul(self.baseline_milli.max(1000))
                    .div_ceil(1000),
            )
        })
    }

    /// When the current episode began (see [`Record::episode_start_ms`]).
    pub fn episode_began_ms(&self) -> u64 {
        self.episode_start_ms
            .map_or(self.last_seen_ms, |b| b.min(self.last_seen_ms))
    }

    /// Pull every remembered time back to at most `at` (a clock reset).
    fn clamp_times(&mut self, at: u64, t: &Tuning) {
        let w = t.window_ms.max(1);
        let b = t.bucket_ms();
        self.first_seen_ms = self.first_seen_ms.min(at);
        self.last_seen_ms = self.last_seen_ms.min(at);
        self.episode_start_ms = self.episode_start_ms.map(|x| x.min(at));
        self.window_start_ms = self.window_start_ms.min(at - at % w);
        self.recent.start_ms = self.recent.start_ms.min(at - at % b);
        self.last_burst_ms = self.last_burst_ms.map(|x| x.min(at));
        self.last_healed_ms = self.last_healed_ms.map(|x| x.min(at));
        self.projects.clamp(at);
        self.signers.clamp(at);
        self.peers.clamp(at);
    }
}

/// The persisted memory: every tracked fingerprint and the session counter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// Format version of this structure ([`MEMORY_VERSION`]).
    pub version: u64,
    /// Incremented every time the memory is loaded by a new node lifetime.
    pub session: u64,
    /// Events observed, all time.
    pub observed: u64,
    /// Fingerprints evicted to stay within [`FINGERPRINTS_MAX`].
    pub evicted: u64,
    /// Events folded into a "varied detail" fingerprint because their subject
    /// had used its [`NEW_FINGERPRINTS_PER_SUBJECT_MAX`] budget.
    pub folded: u64,
    /// Latest time seen, ms.
    pub clock_ms: u64,
    /// Times the clock was reset back ([`CLOCK_BEHIND_TOLERANCE_MS`]).
    pub clock_resets: u64,
    /// Start of the window of the new-fingerprint budget, ms …
    pub novelty_window_ms: u64,
    /// … and the new fingerprints each subject created in it.
    pub novelty: BTreeMap<String, u64>,
    pub records: BTreeMap<String, Record>,
}

/// Version 2: detail templates in fingerprints, horizon counts, subjects
/// with last-seen times, open failures by subject, the new-fingerprint
/// budget. A version-1 file is refused with [`MemoryError::Version`] (its
/// fingerprints are not comparable); the node sets it aside and starts fresh.
pub const MEMORY_VERSION: u64 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryError {
    #[error("attention memory is {0} bytes, above the {MEMORY_BYTES_MAX}-byte limit; delete (or set aside) the memory file to start fresh")]
    TooLarge(usize),
    #[error("attention memory is not canonical CBOR of the expected shape: {0}; delete (or set aside) the memory file to start fresh")]
    Decode(#[from] CanonicalError),
    #[error("attention memory has format version {found}, this build reads {MEMORY_VERSION}; delete (or set aside) the memory file to start fresh")]
    Version { found: u64 },
    #[error("attention memory field {0}; delete (or set aside) the memory file to start fresh")]
    Bounds(String),
}

// ------------------------------------------------------------- assessment

/// One named reason for a band: a signed change and its explanation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Factor {
    pub name: String,
    pub delta: i64,
    pub why: String,
}

/// The band of `r` at `now_ms`, with the factors that produced it: the
/// kind's base band, then recurrence, volume, burst, spread, history and
/// self-healing raises and lowers, clamped to 0..=4. Recurrence, volume,
/// spread and heals count within the horizon ([`Tuning::horizon_ms`]).
pub fn assess(r: &Record, now_ms: u64, t: &Tuning) -> (Band, Vec<Factor>) {
    assess_with(r, now_ms, t, true)
}

/// The band alone (no explanations built).
fn band_at(r: &Record, now_ms: u64, t: &Tuning) -> Band {
    assess_with(r, now_ms, t, false).0
}

fn assess_with(r: &Record, now_ms: u64, t: &Tuning, explain: bool) -> (Band, Vec<Factor>) {
    let mut f = vec![];
    let mut push = |name: &str, delta: i64, why: &dyn Fn() -> String| {
        f.push(Factor {
            name: name.into(),
            delta,
            why: if explain { why() } else { String::new() },
        })
    };
    let base = r.kind.base_band();
    push("base", base.level() as i64, &|| {
        format!("{} starts at {}", r.kind.name(), base.name())
    });
    let recent = r.recent.counts(now_ms, t);
    let horizon = || span(t.horizon_ms);
    let recurrence = if recent.episodes >= RECURRENCE_EPISODES_CHRONIC {
        2
    } else if recent.episodes >= RECURRENCE_EPISODES_RAISE {
        1
    } else {
        0
    };
    // The current episode, while it lasts (no gap since its last
    // occurrence longer than an episode gap).
    let lasted = match now_ms.saturating_sub(r.last_seen_ms) <= t.episode_gap_ms {
        true => r.last_seen_ms.saturating_sub(r.episode_began_ms()),
        false => 0,
    };
    let persistence = if lasted >= t.horizon_ms / CHRONIC_HORIZON_DIVISOR {
        2
    } else if lasted >= t.horizon_ms / PERSISTENT_HORIZON_DIVISOR {
        1
    } else {
        0
    };
    let before = r.episodes.saturating_sub(recent.episodes);
    let precedent = i64::from(
        before >= PRECEDENT_EPISODES_RAISE
            && recent.events > 0
            && now_ms.saturating_sub(r.first_seen_ms) > t.horizon_ms,
    );
    if recurrence >= persistence.max(precedent) && recurrence > 0 {
        push("recurrence", recurrence, &|| {
            format!(
                "{}: {} separate episodes in the last {}",
                if recurrence == 2 {
                    "chronic"
                } else {
                    "recurring"
                },
                recent.episodes,
                horizon()
            )
        });
    } else if persistence >= precedent && persistence > 0 {
        push("persistence", persistence, &|| {
            format!(
                "{}: one episode with no {} gap, going on for {}",
                if persistence == 2 {
                    "chronic"
                } else {
                    "persistent"
                },
                span(t.episode_gap_ms),
                span_approx(lasted)
            )
        });
    } else if precedent > 0 {
        push("precedent", precedent, &|| {
            format!(
                "recurring over days: {before} episodes before the last {}, first seen {} ago",
                horizon(),
                span_approx(now_ms.saturating_sub(r.first_seen_ms))
            )
        });
    }
    if recent.events >= VOLUME_COUNT_RAISE {
        push("volume", 1, &|| {
            format!("{} occurrences in the last {}", recent.events, horizon())
        });
    }
    if let Some(b) = r.last_burst_ms {
        if now_ms.saturating_sub(b) <= t.burst_hold_ms {
            push("burst", 1, &|| {
                format!(
                    "bursting: {} window(s) at {BURST_FACTOR}x or more its usual rate (usual: {}.{:03} per {} window)",
                    r.bursts,
                    r.baseline_milli / 1000,
                    r.baseline_milli % 1000,
                    span(t.window_ms)
                )
            });
        }
    }
    let spread: Vec<(&str, usize)> = [
        ("projects", &r.projects),
        ("signers", &r.signers),
        ("peers", &r.peers),
    ]
    .into_iter()
    .map(|(n, s)| (n, s.recent(now_ms, t.horizon_ms)))
    .filter(|(_, k)| *k >= SPREAD_SUBJECTS_RAISE)
    .collect();
    if !spread.is_empty() {
        push("spread", 1, &|| {
            let parts: Vec<String> = spread.iter().map(|(n, k)| format!("{k} {n}")).collect();
            format!(
                "spreading across {} in the last {}",
                parts.join(", "),
                horizon()
            )
        });
    }
    if r.sessions >= SESSIONS_RAISE {
        push("history", 1, &|| {
            format!("seen in {} node lifetimes (before restarts)", r.sessions)
        });
    }
    if recent.heals >= SELF_HEAL_RECURRING {
        push("self_heal", 1, &|| {
            format!(
                "recurring self-healing instability: healed {} times in the last {}",
                recent.heals,
                horizon()
            )
        });
    } else if recent.heals > 0 && !r.is_open() {
        push("self_heal", -1, &|| {
            format!(
                "healed itself ({} time(s) in the last {}); every failure recovered",
                recent.heals,
                horizon()
            )
        });
    }
    let unseen = now_ms.saturating_sub(r.last_seen_ms);
    if unseen > t.quiet_ms {
        push("quiet", -1, &|| format!("quiet for {} s", unseen / 1000));
    }
    let level: i64 = f.iter().map(|x| x.delta).sum();
    (Band::from_level(level), f)
}

// ----------------------------------------------------------------- output

/// One item for operators.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Surfaced {
    pub fingerprint: String,
    pub kind: EventKind,
    pub band: Band,
    /// 0..=4.
    pub level: u8,
    pub peak_band: Band,
    /// What is happening.
    pub what: String,
    /// Why it matters, with the factors behind the band.
    pub why: String,
    /// How often and where, in one line (all time, then within the horizon).
    pub how_often: String,
    /// Occurrences, episodes and bursts, all time.
    pub count: u64,
    pub episodes: u64,
    pub bursts: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub projects: Vec<String>,
    pub signers: Vec<String>,
    pub peers: Vec<String>,
    /// Whether it was seen in an earlier session (before a restart) and
    /// again in this one.
    pub seen_before: bool,
    pub sessions: u64,
    pub heals: u64,
    /// A failure still waiting for its recovery.
    pub open: bool,
    /// What to check next.
    pub next: String,
    pub factors: Vec<Factor>,
    pub example: String,
}

/// Items and counts at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub now_ms: u64,
    pub session: u64,
    pub observed: u64,
    pub tracked: u64,
    pub evicted: u64,
    /// Fingerprints per band (index = level 0..=4).
    pub by_band: [u64; 5],
    /// Items at or above the requested band, most important first.
    pub items: Vec<Surfaced>,
}

// ------------------------------------------------------------------ scorer

/// The attention scorer: bounded, deterministic memory plus its tuning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scorer {
    mem: Memory,
    tuning: Tuning,
}

impl Scorer {
    pub fn new(tuning: Tuning) -> Scorer {
        Scorer {
            mem: Memory {
                version: MEMORY_VERSION,
                ..Memory::default()
            },
            tuning,
        }
    }

    pub fn memory(&self) -> &Memory {
        &self.mem
    }

    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    pub fn len(&self) -> usize {
        self.mem.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mem.records.is_empty()
    }

    /// Start a new session (a node lifetime): call once per node start,
    /// after loading the memory (not when only the actor restarts). Patterns
    /// seen in an earlier session and again afterwards are "seen before".
    pub fn begin_session(&mut self) {
        self.mem.session = self.mem.session.saturating_add(1);
    }

    /// The time an event at `at_ms` counts at: the scorer's clock when the
    /// event is slightly behind it; the event's own time (after pulling
    /// every remembered time back to it) when it is more than
    /// [`CLOCK_BEHIND_TOLERANCE_MS`] behind.
    fn advance_clock(&mut self, at_ms: u64) -> u64 {
        if at_ms.saturating_add(CLOCK_BEHIND_TOLERANCE_MS) < self.mem.clock_ms {
            let t = self.tuning;
            let w = t.window_ms.max(1);
            for r in self.mem.records.values_mut() {
                r.clamp_times(at_ms, &t);
            }
            self.mem.novelty_window_ms = self.mem.novelty_window_ms.min(at_ms - at_ms % w);
            bump(&mut self.mem.clock_resets);
            self.mem.clock_ms = at_ms;
            return at_ms;
        }
        self.mem.clock_ms = self.mem.clock_ms.max(at_ms);
        self.mem.clock_ms
    }

    /// The time a read at `now_ms` is judged at (see [`Self::advance_clock`];
    /// reads do not change the memory).
    fn read_time(&self, now_ms: u64) -> u64 {
        if now_ms.saturating_add(CLOCK_BEHIND_TOLERANCE_MS) < self.mem.clock_ms {
            now_ms
        } else {
            now_ms.max(self.mem.clock_ms)
        }
    }

    /// Charge the subject of `ev` one new fingerprint; false when its budget
    /// for this window is used up (or no budget can be tracked for it).
    fn charge_novelty(&mut self, s: &Subject, at: u64) -> bool {
        let w = self.tuning.window_ms.max(1);
        let window = at - at % w;
        if window > self.mem.novelty_window_ms || self.mem.novelty.is_empty() {
            self.mem.novelty.clear();
            self.mem.novelty_window_ms = window;
        }
        let who = s
            .signer
            .as_ref()
            .or(s.project.as_ref())
            .or(s.peer.as_ref())
            .map(|x| truncate(x, SUBJECT_CHARS_MAX))
            .unwrap_or_default();
        let tracked = self.mem.novelty.len();
        match self.mem.novelty.get_mut(&who) {
            Some(n) if *n >= NEW_FINGERPRINTS_PER_SUBJECT_MAX => false,
            Some(n) => {
                *n += 1;
                true
            }
            None if tracked >= NOVELTY_SUBJECTS_MAX => false,
            None => {
                self.mem.novelty.insert(who, 1);
                true
            }
        }
    }

    /// Feed one event.
    pub fn observe(&mut self, ev: &Event) {
        let t = self.tuning;
        let at = self.advance_clock(ev.at_ms);
        bump(&mut self.mem.observed);
        // A recovery closes the open failures it heals for the same subject.
        let heals = ev.kind.heals();
        if !heals.is_empty() {
            for r in self.mem.records.values_mut() {
                if heals.contains(&r.kind) && r.close_for(&ev.subject) {
                    bump(&mut r.heals);
                    r.recent.advance(at, &t);
                    bump(&mut r.recent.heals[0]);
                    r.last_healed_ms = Some(at);
                    let b = band_at(r, at, &t);
                    r.band = b;
                    r.peak_band = r.peak_band.max(b);
                }
            }
        }
        let mut sig = signature(ev);
        let mut fp = fingerprint_of(ev.kind, &sig);
        if !self.mem.records.contains_key(&fp) && !self.charge_novelty(&ev.subject, at) {
            sig = varied_signature(ev);
            fp = fingerprint_of(ev.kind, &sig);
            bump(&mut self.mem.folded);
        }
        if !self.mem.records.contains_key(&fp) && self.mem.records.len() >= FINGERPRINTS_MAX {
            self.evict_one(at);
        }
        let session = self.mem.session;
        let r = self
            .mem
            .records
            .entry(fp)
            .or_insert_with(|| Record::new(ev.kind, sig, at, session, &t));
        let new_episode = r.count == 0 || at.saturating_sub(r.last_seen_ms) > t.episode_gap_ms;
        r.recent.advance(at, &t);
        bump(&mut r.recent.events[0]);
        if new_episode {
            bump(&mut r.episodes);
            bump(&mut r.recent.episodes[0]);
            r.episode_start_ms = Some(at);
        }
        if r.last_session != session {
            r.last_session = session;
            bump(&mut r.sessions);
        }
        // Burst window: close the windows that ended, folding them (and the
        // empty ones after them) into the baseline.
        let w = t.window_ms.max(1);
        let start = at - at % w;
        if start > r.window_start_ms {
            let passed = (start - r.window_start_ms) / w;
            let n = r.window_count;
            r.fold_window(n);
            for _ in 1..passed.min(BASELINE_DECAY_WINDOWS_MAX) {
                r.fold_window(0);
            }
            r.window_start_ms = start;
            r.window_count = 0;
        }
        bump(&mut r.window_count);
        let in_burst = r.last_burst_ms.is_some_and(|b| b >= r.window_start_ms);
        if in_burst {
            r.last_burst_ms = Some(at);
        } else if r.burst_threshold().is_some_and(|th| r.window_count >= th) {
            bump(&mut r.bursts);
            r.last_burst_ms = Some(at);
        }
        bump(&mut r.count);
        // A memory saved before episode starts were kept: the episode
        // running now is dated from its last occurrence before the upgrade.
        if r.episode_start_ms.is_none() {
            r.episode_start_ms = Some(r.last_seen_ms);
        }
        r.last_seen_ms = at;
        r.example = truncate(&ev.detail, EXAMPLE_CHARS_MAX);
        r.projects.add(&ev.subject.project, at, t.horizon_ms);
        r.signers.add(&ev.subject.signer, at, t.horizon_ms);
        r.peers.add(&ev.subject.peer, at, t.horizon_ms);
        if r.kind.has_recovery() {
            r.open(&ev.subject);
        }
        let b = band_at(r, at, &t);
        r.band = b;
        r.peak_band = r.peak_band.max(b);
    }

    pub fn observe_all<'a>(&mut self, evs: impl IntoIterator<Item = &'a Event>) {
        for e in evs {
            self.observe(e);
        }
    }

    /// Evict one fingerprint to make room at `now`. The victim is the least
    /// of (tier, band now, last seen, fingerprint), where tier 0 holds
    /// one-off newcomers (one occurrence) and forgotten patterns (quiet and
    /// at ignore-fast now), tier 1 patterns seen more than once in a single
    /// episode, tier 2 recurring ones: a flood of novel one-offs only ever
    /// replaces other one-offs while recurring patterns are remembered.
    fn evict_one(&mut self, now: u64) {
        let t = self.tuning;
        let victim = self
            .mem
            .records
            .iter()
            .map(|(k, r)| {
                let band = band_at(r, now, &t);
                let forgotten =
                    band == Band::IgnoreFast && now.saturating_sub(r.last_seen_ms) > t.quiet_ms;
                let tier = if r.count <= 1 || forgotten {
                    0
                } else if r.episodes < 2 {
                    1
                } else {
                    2
                };
                ((tier, band, r.last_seen_ms), k)
            })
            .min()
            .map(|(_, k)| k.clone());
        if let Some(k) = victim {
            self.mem.records.remove(&k);
            bump(&mut self.mem.evicted);
        }
    }

    /// Items at or above `band_min` at `now_ms`, most important first (band,
    /// then count, then most recent, then fingerprint), at most `max`; plus
    /// counts of every tracked fingerprint per band.
    pub fn digest(&self, now_ms: u64, band_min: Band, max: usize) -> Digest {
        let now = self.read_time(now_ms);
        let mut by_band = [0u64; 5];
        let mut items = vec![];
        for (fp, r) in &self.mem.records {
            let band = band_at(r, now, &self.tuning);
            by_band[band.level() as usize] += 1;
            if band >= band_min {
                let (band, factors) = assess(r, now, &self.tuning);
                items.push(self.surface(fp, r, now, band, factors));
            }
        }
        items.sort_by(|a, b| {
            b.band
                .cmp(&a.band)
                .then(b.count.cmp(&a.count))
                .then(b.last_seen_ms.cmp(&a.last_seen_ms))
                .then(a.fingerprint.cmp(&b.fingerprint))
        });
        items.truncate(max);
        Digest {
            now_ms: now,
            session: self.mem.session,
            observed: self.mem.observed,
            tracked: self.mem.records.len() as u64,
            evicted: self.mem.evicted,
            by_band,
            items,
        }
    }

    fn surface(
        &self,
        fp: &str,
        r: &Record,
        now: u64,
        band: Band,
        factors: Vec<Factor>,
    ) -> Surfaced {
        let t = &self.tuning;
        let what = if r.signature.is_empty() {
            r.kind.what().to_string()
        } else {
            format!("{}: {}", r.kind.what(), r.signature)
        };
        let raised: Vec<&str> = factors
            .iter()
            .filter(|f| f.name != "base" && f.delta != 0)
            .map(|f| f.why.as_str())
            .collect();
        let why = if raised.is_empty() {
            r.kind.why().to_string()
        } else {
            format!("{} ({})", r.kind.why(), raised.join("; "))
        };
        let mut wherein = vec![];
        for (n, s) in [
            ("project", &r.projects),
            ("signer", &r.signers),
            ("peer", &r.peers),
        ] {
            if s.distinct() > 0 {
                let more = if s.overflow > 0 { "+" } else { "" };
                wherein.push(format!("{}{more} {n}(s)", s.distinct()));
            }
        }
        let recent = r.recent.counts(now, t);
        let how_often = format!(
            "{} time(s) in {} episode(s), {} burst(s){}{}; last {}: {} time(s) in {} episode(s)",
            r.count,
            r.episodes,
            r.bursts,
            if wherein.is_empty() {
                String::new()
            } else {
                format!(", across {}", wherein.join(", "))
            },
            if r.heals > 0 {
                format!(", healed {} time(s)", r.heals)
            } else {
                String::new()
            },
            span(t.horizon_ms),
            recent.events,
            recent.episodes,
        );
        Surfaced {
            fingerprint: fp.to_string(),
            kind: r.kind,
            band,
            level: band.level(),
            peak_band: r.peak_band.max(band),
            what,
            why,
            how_often,
            count: r.count,
            episodes: r.episodes,
            bursts: r.bursts,
            first_seen_ms: r.first_seen_ms,
            last_seen_ms: r.last_seen_ms,
            projects: r.projects.ids.keys().cloned().collect(),
            signers: r.signers.ids.keys().cloned().collect(),
            peers: r.peers.ids.keys().cloned().collect(),
            seen_before: r.first_session < r.last_session && r.last_session == self.mem.session,
            sessions: r.sessions,
            heals: r.heals,
            open: r.is_open(),
            next: r.kind.next().to_string(),
            factors,
            example: r.example.clone(),
        }
    }

    /// Tracked fingerprints per band at `now_ms` (index = level 0..=4).
    pub fn counts_by_band(&self, now_ms: u64) -> [u64; 5] {
        let now = self.read_time(now_ms);
        let mut by_band = [0u64; 5];
        for r in self.mem.records.values() {
            by_band[band_at(r, now, &self.tuning).level() as usize] += 1;
        }
        by_band
    }

    /// Canonical CBOR of the memory (what is persisted).
    pub fn to_bytes(&self) -> Vec<u8> {
        cbor::to_canonical(&self.mem).expect("attention memory has no floats or tags")
    }

    /// Memory read back from [`Scorer::to_bytes`]; any other input is a
    /// typed error, never a panic: a file of another format version is
    /// [`MemoryError::Version`], and every counter, time and text is
    /// range-checked ([`MemoryError::Bounds`] names the field).
    pub fn from_bytes(bytes: &[u8], tuning: Tuning) -> Result<Scorer, MemoryError> {
        if bytes.len() > MEMORY_BYTES_MAX {
            return Err(MemoryError::TooLarge(bytes.len()));
        }
        let mem: Memory = match cbor::from_canonical(bytes) {
            Ok(m) => m,
            Err(e) => {
                // Another format version decodes as a different shape: say so.
                #[derive(Deserialize)]
                struct Versioned {
                    version: u64,
                }
                let v = ciborium::de::from_reader_with_recursion_limit::<Versioned, _>(
                    bytes,
                    cbor::CBOR_DEPTH_MAX,
                );
                return Err(match v {
                    Ok(v) if v.version != MEMORY_VERSION => {
                        MemoryError::Version { found: v.version }
                    }
                    _ => MemoryError::Decode(e),
                });
            }
        };
        if mem.version != MEMORY_VERSION {
            return Err(MemoryError::Version { found: mem.version });
        }
        validate(&mem)?;
        Ok(Scorer { mem, tuning })
    }

    /// BLAKE3 of [`Scorer::to_bytes`]: equal memories, equal digests.
    pub fn memory_hash(&self) -> Hash {
        Hash::of_bytes(&self.to_bytes())
    }
}

/// The range checks of a loaded memory: every bound the scorer keeps, and
/// the relations between counters that `observe` maintains (so no later
/// arithmetic starts from an impossible value).
fn validate(mem: &Memory) -> Result<(), MemoryError> {
    fn fail(field: String, why: String) -> Result<(), MemoryError> {
        Err(MemoryError::Bounds(format!("{field} {why}")))
    }
    if mem.records.len() > FINGERPRINTS_MAX {
        return fail(
            "records".into(),
            format!(
                "holds {} fingerprints, at most {FINGERPRINTS_MAX}",
                mem.records.len()
            ),
        );
    }
    if mem.novelty.len() > NOVELTY_SUBJECTS_MAX {
        return fail(
            "novelty".into(),
            format!(
                "tracks {} subjects, at most {NOVELTY_SUBJECTS_MAX}",
                mem.novelty.len()
            ),
        );
    }
    if let Some((who, n)) = mem.novelty.iter().find(|(w, &n)| {
        n > NEW_FINGERPRINTS_PER_SUBJECT_MAX || w.chars().count() > SUBJECT_CHARS_MAX
    }) {
        return fail(
            format!("novelty[{who:?}]"),
            format!(
                "is {n} (at most {NEW_FINGERPRINTS_PER_SUBJECT_MAX}) or names an over-long subject"
            ),
        );
    }
    // A novelty window past the clock would never reset the budget.
    if mem.novelty_window_ms > mem.clock_ms && !mem.novelty.is_empty() {
        return fail(
            "novelty_window_ms".into(),
            format!(
                "is {}, after the clock {}",
                mem.novelty_window_ms, mem.clock_ms
            ),
        );
    }
    let sum = |a: &[u64; RECENT_BUCKETS]| a.iter().map(|&x| x as u128).sum::<u128>();
    for (fp, r) in &mem.records {
        let at = |field: &str| format!("records[{fp:?}].{field}");
        if fp.len() != 3 + 16 || !fp.starts_with("fp:") {
            return fail(
                format!("records[{fp:?}]"),
                "is not a fingerprint (fp:<16 hex>)".into(),
            );
        }
        for (n, s) in [
            ("projects", &r.projects),
            ("signers", &r.signers),
            ("peers", &r.peers),
        ] {
            if s.ids.len() > SUBJECTS_PER_FINGERPRINT_MAX {
                return fail(
                    at(n),
                    format!(
                        "tracks {} ids, at most {SUBJECTS_PER_FINGERPRINT_MAX}",
                        s.ids.len()
                    ),
                );
            }
            if s.ids.keys().any(|k| k.chars().count() > SUBJECT_CHARS_MAX) {
                return fail(
                    at(n),
                    format!("has an id over {SUBJECT_CHARS_MAX} characters"),
                );
            }
            if s.ids.values().any(|&seen| seen > mem.clock_ms) {
                return fail(
                    at(n),
                    "has a subject seen after the memory's clock_ms".into(),
                );
            }
            if s.overflow > r.count {
                return fail(
                    at(n),
                    format!("overflow {} exceeds count {}", s.overflow, r.count),
                );
            }
        }
        if r.signature.chars().count() > REASON_CHARS_MAX {
            return fail(
                at("signature"),
                format!("is over {REASON_CHARS_MAX} characters"),
            );
        }
        if r.example.chars().count() > EXAMPLE_CHARS_MAX {
            return fail(
                at("example"),
                format!("is over {EXAMPLE_CHARS_MAX} characters"),
            );
        }
        if r.count == 0 {
            return fail(
                at("count"),
                "is 0 (a record exists because it occurred)".into(),
            );
        }
        if r.episodes == 0 || r.episodes > r.count {
            return fail(
                at("episodes"),
                format!("is {}, must be 1..=count ({})", r.episodes, r.count),
            );
        }
        for (n, v) in [("window_count", r.window_count), ("bursts", r.bursts)] {
            if v > r.count {
                return fail(at(n), format!("is {v}, above count ({})", r.count));
            }
        }
        // One failure opens at most that many items, each healed once.
        let opened_max = r.count.saturating_mul(SUBJECTS_PER_FINGERPRINT_MAX as u64);
        for (n, v) in [("heals", r.heals), ("open_untracked", r.open_untracked)] {
            if v > opened_max {
                return fail(
                    at(n),
                    format!("is {v}, above count × {SUBJECTS_PER_FINGERPRINT_MAX} ({opened_max})"),
                );
            }
        }
        let baseline_max = r.count.saturating_mul(1000);
        if r.baseline_milli > baseline_max {
            return fail(
                at("baseline_milli"),
                format!(
                    "is {}, above count × 1000 ({baseline_max})",
                    r.baseline_milli
                ),
            );
        }
        if r.baseline_windows > BASELINE_WINDOWS_CAP {
            return fail(
                at("baseline_windows"),
                format!("is above {BASELINE_WINDOWS_CAP}"),
            );
        }
        if sum(&r.recent.events) > r.count as u128
            || sum(&r.recent.episodes) > r.episodes as u128
            || sum(&r.recent.heals) > r.heals as u128
        {
            return fail(at("recent"), "counts more than the lifetime totals".into());
        }
        if let Some(b) = r
            .episode_start_ms
            .filter(|&b| b > r.last_seen_ms || b < r.first_seen_ms)
        {
            return fail(
                at("episode_start_ms"),
                format!(
                    "is {b}, outside first_seen_ms ({}) ..= last_seen_ms ({})",
                    r.first_seen_ms, r.last_seen_ms
                ),
            );
        }
        if r.first_seen_ms > r.last_seen_ms || r.last_seen_ms > mem.clock_ms {
            return fail(
                at("last_seen_ms"),
                format!(
                    "is {}, must be between first_seen_ms ({}) and the memory's clock_ms ({})",
                    r.last_seen_ms, r.first_seen_ms, mem.clock_ms
                ),
            );
        }
        for (n, v) in [
            ("window_start_ms", Some(r.window_start_ms)),
            ("recent.start_ms", Some(r.recent.start_ms)),
            ("last_burst_ms", r.last_burst_ms),
            ("last_healed_ms", r.last_healed_ms),
        ] {
            if v.is_some_and(|v| v > mem.clock_ms) {
                return fail(
                    at(n),
                    format!("is after the memory's clock_ms ({})", mem.clock_ms),
                );
            }
        }
        if r.open_for.len() > SUBJECTS_PER_FINGERPRINT_MAX
            || r.open_for.iter().any(|k| {
                k.project.chars().count() > SUBJECT_CHARS_MAX
                    || k.peer.chars().count() > SUBJECT_CHARS_MAX
                    || k.item.chars().count() > SUBJECT_CHARS_MAX
            })
        {
            return fail(
                at("open_for"),
                format!("breaks the {SUBJECTS_PER_FINGERPRINT_MAX}-entry or text bound"),
            );
        }
        if r.first_session > r.last_session
            || r.last_session > mem.session
            || r.sessions == 0
            || r.sessions > (r.last_session - r.first_session).saturating_add(1)
        {
            return fail(
                at("sessions"),
                format!(
                    "is {} for sessions {}..={} (memory session {})",
                    r.sessions, r.first_session, r.last_session, mem.session
                ),
            );
        }
        if r.band > r.peak_band {
            return fail(at("band"), "is above peak_band".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Tuning = Tuning::OPERATIONS;
    const MIN: u64 = 60_000;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;

    fn stale(project: &str, index: u64, at: u64) -> Event {
        Event::new(EventKind::StaleHash, "current_state_hash", at)
            .project(project)
            .signer("hmmm:pubkey:abc")
            .detail(format!(
                "HEAD is blake3:{} at index {index}",
                "ab".repeat(32)
            ))
    }

    fn only(s: &Scorer, now: u64) -> Surfaced {
        let d = s.digest(now, Band::IgnoreFast, 10);
        assert_eq!(d.items.len(), 1, "{:#?}", d.items);
        d.items[0].clone()
    }

    fn item_of(s: &Scorer, now: u64, kind: EventKind) -> Surfaced {
        s.digest(now, Band::IgnoreFast, 1000)
            .items
            .into_iter()
            .find(|i| i.kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} item"))
    }

    fn factor(it: &Surfaced, name: &str) -> i64 {
        it.factors
            .iter()
            .filter(|f| f.name == name)
            .map(|f| f.delta)
            .sum()
    }

    /// The pure reducer, driven with the scenario's keys, so the tests see
    /// the exact texts a node feeds the scorer.
    mod real {
        use crate::guards::Verify;
        use crate::proposal::Proposal;
        use crate::reducer::{self, Ctx, Effect, OpEvent};
        use crate::scenario::{genesis, Driver, Fault, Keys, Next};
        use crate::state::NodeState;

        pub const ORIGIN: u64 = 1_767_225_600_000;

        pub struct World {
            pub keys: Keys,
            pub node: NodeState,
        }

        impl World {
            pub fn new() -> World {
                let keys = Keys::from_labels("attention", 3);
                let node = NodeState::new(genesis(&keys, "attention", ORIGIN)).unwrap();
                World { keys, node }
            }

            /// Run `p` through the reducer; its operational events.
            pub fn step(&mut self, p: &Proposal, now: u64) -> Vec<OpEvent> {
                let ctx = Ctx {
                    now_ms: now,
                    verify: Verify::Full,
                    snapshot_every: 0,
                };
                reducer::step(&mut self.node, p, &ctx)
                    .effects
                    .into_iter()
                    .filter_map(|e| match e {
                        Effect::Emit(o) => Some(o),
                        _ => None,
                    })
                    .collect()
            }

            pub fn next(&self, project: &str, now: u64) -> Proposal {
                match Driver::new(&self.keys, 1).next(&self.node, project, now) {
                    Next::Propose(p) => *p,
                    other => panic!("no next step for {project}: {other:?}"),
                }
            }

            pub fn fault(
                &self,
                project: &str,
                f: Fault,
                accepted: &[Proposal],
                now: u64,
            ) -> Proposal {
                Driver::new(&self.keys, 1)
                    .fault(&self.node, project, now, f, accepted, 0)
                    .unwrap_or_else(|| panic!("{f:?} applies to {project}"))
            }

            /// The one event of a refused fault proposal.
            pub fn refused(
                &mut self,
                project: &str,
                f: Fault,
                accepted: &[Proposal],
                now: u64,
            ) -> OpEvent {
                let p = self.fault(project, f, accepted, now);
                let mut evs = self.step(&p, now);
                assert_eq!(evs.len(), 1, "{evs:?}");
                evs.remove(0)
            }
        }
    }

    use crate::scenario::Fault;
    use real::{World, ORIGIN};

    #[test]
    fn fingerprints_ignore_volatile_fields() {
        let a = stale("p", 41, 0);
        let b = stale("p", 97, 5);
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_eq!(
            signature(&a),
            "current_state_hash: head is <hash> at index #"
        );
        let c = Event::new(EventKind::Rejected, "current_state_hash", 0);
        assert_ne!(fingerprint(&a), fingerprint(&c), "kind is part of it");
        assert!(fingerprint(&a).starts_with("fp:"));
        assert_eq!(fingerprint(&a).len(), 3 + 16);
        assert_eq!(
            normalize("key hmmm:pubkey:Zx9 at 12:30"),
            "key <key> at #:#"
        );
        assert_eq!(normalize(&"ab".repeat(10)), "<hex>");
    }

    #[test]
    fn templates_mask_quoted_names_and_repeated_clauses() {
        // The reducer's own formats (reducer.rs, guards.rs).
        assert_eq!(
            template("signer hmmm:pubkey:AbC is not in project \"acme-7\"'s roster; ask an admin to add it (Boot_SetRoster) or sign with a rostered key"),
            "signer <key> is not in project <str>'s roster; ask an admin to add it (boot_setroster) or sign with a rostered key"
        );
        assert_eq!(
            template("idem_key \"g1:4:plan:\\\"x\\\"\" was already used at index 12 for Project_Plan with different content"),
            "idem_key <str> was already used at index # for project_plan with different content"
        );
        // One failing tool or two of the same form: one template.
        let one = template("tool 'mcp-git' unreachable at 2026-01-01T00:00:01.000+00:00#0");
        let two = template("tool 'mcp-git' unreachable at 2026-01-01T00:00:01.000+00:00#0; tool 'mcp-search' unreachable at 2026-01-01T00:00:02.000+00:00#1");
        assert_eq!(one, two);
        assert_eq!(one, "tool <str> unreachable at #-#-#t#:#:#.#+#:###");
        // Apostrophes stay text; an unterminated quote runs to the end.
        assert_eq!(
            template("the leader's clock (x) and the proposal's HLC"),
            "the leader's clock (x) and the proposal's hlc"
        );
        assert_eq!(template("name \"unterminated"), "name <str>");
        // Free-text kinds are fingerprinted without their detail.
        let q = |why: &str| Event::new(EventKind::QuorumLost, "", 0).detail(why);
        assert_eq!(
            fingerprint(&q("agent 3 unreachable")),
            fingerprint(&q("rack down"))
        );
    }

    /// SPEC §7 spread: one client probing many projects off-roster is one
    /// pattern spreading across projects, from the reducer's real texts; the
    /// 300 requests leave established patterns in memory.
    #[test]
    fn real_off_roster_probes_across_projects_are_one_spreading_pattern() {
        let mut w = World::new();
        let mut s = Scorer::new(T);
        // Established patterns first: 200 recurring ones, each seen in two
        // episodes.
        for round in 0..2 {
            for i in 0..200u64 {
                s.observe(
                    &Event::new(
                        EventKind::Restart,
                        format!("actor r{}", alpha(i)),
                        round * 10 * MIN + i,
                    )
                    .peer(format!("n{}", alpha(i))),
                );
            }
        }
        let established: BTreeSet<String> = s.memory().records.keys().cloned().collect();
        assert_eq!(established.len(), 200);
        let mut fps = BTreeSet::new();
        for i in 0..300u64 {
            let now = ORIGIN + 10_000 + i;
            let op = w.refused(&format!("proj-{i}"), Fault::Outsider, &[], now);
            assert_eq!(op.kind, "auth_failure");
            assert!(
                op.detail.contains(&format!("\"proj-{i}\"")),
                "{}",
                op.detail
            );
            let e = Event::from_op(&op, 20 * MIN + i);
            fps.insert(fingerprint(&e));
            s.observe(&e);
        }
        assert_eq!(fps.len(), 1, "the project name is not part of the pattern");
        let it = item_of(&s, 20 * MIN + 300, EventKind::AuthFailure);
        assert_eq!(it.count, 300);
        assert_eq!(factor(&it, "spread"), 1, "{:#?}", it.factors);
        assert!(
            it.why.contains("spreading across 16 projects"),
            "{}",
            it.why
        );
        assert!(it.how_often.contains("16+ project(s)"), "{}", it.how_often);
        assert!(
            it.example.contains("proj-299"),
            "the raw text is the example"
        );
        assert_eq!(s.memory().evicted, 0);
        assert!(established
            .iter()
            .all(|fp| s.memory().records.contains_key(fp)));
    }

    #[test]
    fn real_stale_hashes_and_idem_conflicts_fingerprint_per_cause_not_per_project() {
        let mut w = World::new();
        let mut s = Scorer::new(T);
        let mut at = 0;
        for project in ["a", "b", "c"] {
            // One accepted step, then a conflicting key and a stale hash.
            let now = ORIGIN + at;
            let p = w.next(project, now);
            w.step(&p, now);
            let conflict = w.refused(
                project,
                Fault::IdemConflict,
                std::slice::from_ref(&p),
                now + 1,
            );
            assert_eq!(conflict.kind, "idem_conflict");
            let stale = w.refused(project, Fault::StaleHash, &[], now + 2);
            assert_eq!(stale.kind, "stale_hash");
            assert!(stale
                .detail
                .contains(&format!("HEAD of project \"{project}\"")));
            s.observe(&Event::from_op(&conflict, at));
            s.observe(&Event::from_op(&stale, at + 1));
            at += 10 * MIN;
        }
        assert_eq!(s.len(), 2, "{:#?}", s.memory().records);
        let it = item_of(&s, at, EventKind::StaleHash);
        assert_eq!(it.projects, vec!["a", "b", "c"]);
        assert_eq!(it.episodes, 3);
        // background + recurring + spreading
        assert_eq!(it.band, Band::Investigate, "{:#?}", it.factors);
        assert!(
            it.what
                .contains("head of project <str> is <hash>, the proposal names <hash>"),
            "{}",
            it.what
        );
        assert!(it.why.contains("spreading across 3 projects"), "{}", it.why);
        assert!(item_of(&s, at, EventKind::IdemConflict)
            .what
            .contains("idem_key <str>"));
    }

    #[test]
    fn one_stale_hash_is_background_and_earns_watch_by_recurrence() {
        let mut s = Scorer::new(T);
        s.observe(&stale("p", 1, 0));
        assert_eq!(only(&s, 0).band, Band::Background);
        // Two more episodes, separated by quiet gaps: recurring.
        s.observe(&stale("p", 2, 10 * MIN));
        s.observe(&stale("p", 3, 20 * MIN));
        let it = only(&s, 20 * MIN);
        assert_eq!(it.episodes, 3);
        assert_eq!(it.band, Band::Watch);
        assert!(it.why.contains("recurring"), "{}", it.why);
        // Spreading across projects raises it again.
        s.observe(&stale("q", 4, 21 * MIN));
        s.observe(&stale("r", 5, 21 * MIN));
        let it = only(&s, 21 * MIN);
        assert_eq!(it.band, Band::Investigate);
        assert_eq!(it.projects, vec!["p", "q", "r"]);
        assert!(it.how_often.contains("3 project(s)"), "{}", it.how_often);
    }

    /// Exact thresholds: the episode gap, the recurrence and volume counts
    /// and the quiet time, each one below and at its boundary.
    #[test]
    fn thresholds_hold_exactly_at_their_boundaries() {
        // Episode gap: exactly episode_gap_ms is the same episode, one more
        // ms starts a new one.
        let mut s = Scorer::new(T);
        s.observe(&stale("p", 0, 0));
        s.observe(&stale("p", 0, T.episode_gap_ms));
        assert_eq!(only(&s, T.episode_gap_ms).episodes, 1);
        s.observe(&stale("p", 0, 2 * T.episode_gap_ms + 1));
        assert_eq!(only(&s, 2 * T.episode_gap_ms + 1).episodes, 2);

        // Recurrence: RAISE-1 episodes none, RAISE +1, CHRONIC-1 still +1,
        // CHRONIC +2.
        let gap = T.episode_gap_ms + 1;
        let mut s = Scorer::new(T);
        let mut at = 0;
        for n in 1..=RECURRENCE_EPISODES_CHRONIC {
            s.observe(&stale("p", n, at));
            let it = only(&s, at);
            assert_eq!(it.episodes, n);
            let want = if n >= RECURRENCE_EPISODES_CHRONIC {
                2
            } else if n >= RECURRENCE_EPISODES_RAISE {
                1
            } else {
                0
            };
            assert_eq!(factor(&it, "recurrence"), want, "at {n} episodes");
            at += gap;
        }
        assert!(RECURRENCE_EPISODES_CHRONIC * gap < T.horizon_ms - T.bucket_ms());

        // Volume: VOLUME_COUNT_RAISE-1 occurrences none, the next one +1 (in
        // one minute-spaced run: one episode, no burst judged yet).
        let mut s = Scorer::new(T);
        for i in 0..VOLUME_COUNT_RAISE {
            s.observe(&Event::new(EventKind::Duplicate, "", i * MIN));
            let it = only(&s, i * MIN);
            let want = i64::from(i + 1 >= VOLUME_COUNT_RAISE);
            assert_eq!(factor(&it, "volume"), want, "at {} occurrences", i + 1);
        }

        // Quiet: unseen for exactly quiet_ms keeps the band, one ms more
        // lowers it.
        let mut s = Scorer::new(T);
        s.observe(&Event::new(EventKind::AuthFailure, "signature", 0));
        assert_eq!(only(&s, T.quiet_ms).band, Band::Watch);
        assert_eq!(only(&s, T.quiet_ms + 1).band, Band::Background);
        assert_eq!(factor(&only(&s, T.quiet_ms + 1), "quiet"), -1);
    }

    /// Recurrence and volume decay: ordinary 409s at ten a day stay at
    /// watch however long they go on (lifetime totals keep growing), and sink
    /// back once they stop.
    #[test]
    fn recurrence_and_volume_count_within_the_horizon() {
        let mut s = Scorer::new(T);
        let every = DAY / 10;
        let mut at = 0;
        for day in 0..30 {
            for k in 0..10 {
                at = day * DAY + k * every;
                s.observe(&stale("p", k, at));
            }
            let it = only(&s, at);
            if day >= 1 {
                assert_eq!(it.band, Band::Watch, "day {day}: {:#?}", it.factors);
                assert_eq!(factor(&it, "recurrence"), 1);
                assert_eq!(factor(&it, "volume"), 0);
            }
        }
        let it = only(&s, at);
        assert_eq!(it.count, 300);
        assert_eq!(it.episodes, 300);
        assert!(
            it.how_often.starts_with("300 time(s) in 300 episode(s)"),
            "{}",
            it.how_often
        );
        assert!(it.how_often.contains("last 24 h:"), "{}", it.how_often);
        assert!(it.peak_band <= Band::Watch);
        // Stopped: after the horizon nothing recent is left, and it is quiet.
        let later = only(&s, at + T.horizon_ms + T.bucket_ms());
        assert_eq!(factor(&later, "recurrence"), 0);
        assert_eq!(later.band, Band::IgnoreFast, "{:#?}", later.factors);

        // Sheer volume decays too: 150 events in a day, then none.
        let mut s = Scorer::new(T);
        for i in 0..150 {
            s.observe(&Event::new(EventKind::Duplicate, "", i * 5 * MIN));
        }
        let end = 149 * 5 * MIN;
        assert_eq!(factor(&only(&s, end), "volume"), 1);
        assert_eq!(factor(&only(&s, end + T.horizon_ms), "volume"), 0);
    }

    #[test]
    fn a_burst_against_the_baseline_raises_and_then_fades() {
        let mut s = Scorer::new(T);
        // A steady trickle: one per window for an hour.
        for i in 0..60 {
            s.observe(&Event::new(EventKind::Rejected, "backbeat", i * MIN));
        }
        let before = only(&s, 60 * MIN);
        assert_eq!(before.bursts, 0);
        // Then twenty in one window.
        for i in 0..20 {
            s.observe(&Event::new(EventKind::Rejected, "backbeat", 61 * MIN + i));
        }
        let during = only(&s, 61 * MIN + 20);
        assert_eq!(during.bursts, 1);
        assert!(during.band > before.band);
        let later = only(&s, 61 * MIN + T.burst_hold_ms + MIN);
        assert_eq!(later.band, before.band);
    }

    /// The baseline matters: a steady stream at any rate (starting mid
    /// window, or at 5 per window exactly) is never a burst; four times its
    /// own rate is, and the threshold is the baseline's, not a constant.
    #[test]
    fn a_steady_stream_is_never_a_burst_but_four_times_its_rate_is() {
        for (per_window, first) in [
            (BURST_EVENTS_MIN, 0),
            (BURST_EVENTS_MIN, 50_000),
            (12, 50_000),
            (60, 0),
            (60, 50_000),
        ] {
            let mut s = Scorer::new(T);
            let step = MIN / per_window;
            // Starts at `first` into its first window (50 s: a partial first
            // window), then exactly `per_window` in each of 120 windows.
            let mut at = first;
            while at < 121 * MIN {
                s.observe(&Event::new(EventKind::Rejected, "backbeat", at));
                at += step;
            }
            let it = only(&s, at);
            assert_eq!(it.bursts, 0, "{per_window}/window: {:#?}", it.factors);
            // Just below four times the rate in the next window: no burst;
            // at it: one.
            let w = 121 * MIN;
            for i in 0..BURST_FACTOR * per_window - 1 {
                s.observe(&Event::new(EventKind::Rejected, "backbeat", w + i));
            }
            let r = s.memory().records.values().next().unwrap();
            let usual = per_window * 1000;
            assert!(
                (usual - 10..=usual).contains(&r.baseline_milli),
                "the usual rate is learned: {} for {per_window}",
                r.baseline_milli
            );
            assert_eq!(r.burst_threshold(), Some(BURST_FACTOR * per_window));
            assert_eq!(only(&s, w + MIN - 1).bursts, 0, "{per_window}/window");
            s.observe(&Event::new(EventKind::Rejected, "backbeat", w + MIN - 1));
            assert_eq!(only(&s, w + MIN - 1).bursts, 1, "{per_window}/window");
        }
        // A new pattern has no usual rate yet: its first windows are not
        // judged, however busy.
        let mut s = Scorer::new(T);
        for i in 0..3 * 50 {
            s.observe(&Event::new(
                EventKind::Rejected,
                "x",
                (i / 50) * MIN + i % 50,
            ));
        }
        assert_eq!(only(&s, 3 * MIN).bursts, 0);
    }

    #[test]
    fn self_healing_lowers_a_single_failure_but_recurring_heals_promote() {
        let mut s = Scorer::new(T);
        let lost = |at| {
            Event::new(EventKind::QuorumLost, "", at)
                .project("p")
                .detail("agent 3 unreachable")
        };
        let back = |at| {
            Event::new(EventKind::Recovered, "", at)
                .project("p")
                .detail("quorum restored")
        };
        s.observe(&lost(0));
        let d = s.digest(0, Band::Watch, 10);
        assert_eq!(d.items[0].band, Band::Watch);
        assert!(d.items[0].open);
        s.observe(&back(MIN));
        let it = item_of(&s, MIN, EventKind::QuorumLost);
        assert_eq!(it.band, Band::Background, "healed once: lowered");
        assert_eq!(it.heals, 1);
        // A recovery of another project heals nothing here.
        s.observe(&lost(10 * MIN));
        s.observe(&Event::new(EventKind::Recovered, "", 11 * MIN).project("other"));
        assert!(item_of(&s, 11 * MIN, EventKind::QuorumLost).open);
        // Keep flapping: the self-healing instability is what matters.
        for k in 0..3 {
            s.observe(&back((20 + 20 * k) * MIN));
            s.observe(&lost((30 + 20 * k) * MIN));
            s.observe(&back((31 + 20 * k) * MIN));
        }
        let it = item_of(&s, 80 * MIN, EventKind::QuorumLost);
        assert!(it.heals >= SELF_HEAL_RECURRING);
        assert!(it.band >= Band::Promote, "{:#?}", it.factors);
        assert!(it.why.contains("self-healing"));
    }

    /// A failure that flaps twice a day and heals each time never recurs
    /// enough in any one day to count, but after a few days it has
    /// precedent: it is surfaced (watch) while open, and lowered again once
    /// healed. Before, the horizon forgot it and it stayed background for
    /// good (the governance text's "10+ times over several days").
    #[test]
    fn a_pattern_recurring_over_days_has_precedent() {
        let mut s = Scorer::new(T);
        let cut = |at| {
            Event::new(EventKind::Partition, "unreachable", at)
                .peer("follower-1")
                .detail("no heartbeat")
        };
        let healed = |at| {
            Event::new(EventKind::PartitionHealed, "", at)
                .peer("follower-1")
                .detail("reachable")
        };
        for day in 0..7 {
            for half in [0, 12 * HOUR] {
                let at = day * DAY + half;
                s.observe(&cut(at));
                let open = item_of(&s, at, EventKind::Partition);
                assert_eq!(factor(&open, "recurrence"), 0, "{:#?}", open.factors);
                if day == 0 {
                    assert_eq!(open.band, Band::Background, "{:#?}", open.factors);
                }
                if day >= 3 {
                    assert_eq!(open.band, Band::Watch, "day {day}: {:#?}", open.factors);
                    assert_eq!(factor(&open, "precedent"), 1);
                    assert!(open.why.contains("recurring over days"), "{}", open.why);
                }
                s.observe(&healed(at + 10 * MIN));
                let shut = item_of(&s, at + 10 * MIN, EventKind::Partition);
                assert!(shut.band <= Band::Background, "{:#?}", shut.factors);
            }
        }
        let last = item_of(&s, 6 * DAY + 13 * HOUR, EventKind::Partition);
        assert_eq!(last.peak_band, Band::Watch);
        // A pattern that already recurs within the day gets no more for
        // having done so for days: one chronic dimension counts.
        let mut s = Scorer::new(T);
        for day in 0..5 {
            for k in 0..4 {
                s.observe(&stale("p", k, day * DAY + k * 3 * HOUR));
            }
        }
        let it = only(&s, 4 * DAY + 9 * HOUR);
        assert_eq!(factor(&it, "recurrence"), 1, "{:#?}", it.factors);
        assert_eq!(factor(&it, "precedent"), 0, "{:#?}", it.factors);
    }

    /// A stream with no gap of an episode's length is one episode that never
    /// ends: it is persistent after an eighth of the horizon and chronic
    /// after half, so it bands like a sparser stream of separate episodes
    /// (it used to fall to "0 episodes" after a day, two bands below).
    #[test]
    fn a_continuous_stream_bands_like_a_recurring_one() {
        let run = |every: u64| {
            let mut s = Scorer::new(T);
            let mut at = 0;
            let mut seen = vec![];
            while at <= 2 * DAY {
                s.observe(&stale("p", at / every, at));
                if at % HOUR < every {
                    seen.push((at, only(&s, at)));
                }
                at += every;
            }
            (s, at - every, seen)
        };
        let (cont, end, seen) = run(4 * MIN);
        for (at, it) in &seen {
            let want = match *at {
                a if a >= 12 * HOUR => 2,
                a if a >= 3 * HOUR => 1,
                _ => 0,
            };
            assert_eq!(
                factor(it, "persistence"),
                want,
                "at {} min: {:#?}",
                at / MIN,
                it.factors
            );
        }
        let (sparse, end2, _) = run(6 * MIN);
        let (a, b) = (only(&cont, end), only(&sparse, end2));
        assert_eq!(factor(&b, "recurrence"), 2, "{:#?}", b.factors);
        assert_eq!(a.band, b.band, "{:#?} / {:#?}", a.factors, b.factors);
        assert!(a.why.contains("chronic: one episode"), "{}", a.why);
        // Stopped: once a gap ends the episode, nothing persists.
        let later = only(&cont, end + T.episode_gap_ms + 1);
        assert_eq!(factor(&later, "persistence"), 0);
    }

    /// A memory written before `episode_start_ms` was kept reads back byte
    /// for byte (the field is left out when `None`), and persistence then
    /// counts from the last occurrence before the upgrade, also while the
    /// episode that was running goes on; a start outside the first and last
    /// occurrences is refused on load.
    #[test]
    fn a_memory_without_episode_starts_reads_back() {
        let mut s = Scorer::new(T);
        for i in 0..10 {
            s.observe(&stale("p", i, i * MIN));
        }
        let mut old = s.clone();
        for r in old.mem.records.values_mut() {
            r.episode_start_ms = None;
        }
        let bytes = old.to_bytes();
        let back = Scorer::from_bytes(&bytes, T).unwrap();
        assert_eq!(back.to_bytes(), bytes);
        let r = back.mem.records.values().next().unwrap();
        assert_eq!(r.episode_began_ms(), r.last_seen_ms);
        let upgraded_at = r.last_seen_ms;
        let mut go_on = back.clone();
        let mut at = upgraded_at;
        while at < upgraded_at + 4 * HOUR {
            at += MIN;
            go_on.observe(&stale("p", at / MIN, at));
        }
        let it = only(&go_on, at);
        assert_eq!(factor(&it, "persistence"), 1, "{:#?}", it.factors);
        assert_eq!(
            go_on.mem.records.values().next().unwrap().episode_start_ms,
            Some(upgraded_at)
        );
        let mut later = s.clone();
        for i in 10..100 {
            later.observe(&stale("p", i, i * MIN));
        }
        let r = later.mem.records.values_mut().next().unwrap();
        assert_eq!(r.episode_start_ms, Some(0), "one episode since 0");
        r.episode_start_ms = Some(r.last_seen_ms + 1);
        let e = Scorer::from_bytes(&later.to_bytes(), T).err().unwrap();
        assert!(e.to_string().contains("episode_start_ms"), "{e}");
        let r = later.mem.records.values_mut().next().unwrap();
        r.first_seen_ms = 5;
        r.episode_start_ms = Some(4);
        let e = Scorer::from_bytes(&later.to_bytes(), T).err().unwrap();
        assert!(e.to_string().contains("episode_start_ms"), "{e}");
    }

    /// A tool's recovery heals that tool's flap in that project only (the
    /// reducer's exact texts: guards.rs `mcp_lost`, reducer.rs
    /// `Council_McpGreen`).
    #[test]
    fn a_recovery_heals_only_its_own_subject_and_tool() {
        let op = |kind: &str, project: &str, detail: &str| OpEvent {
            kind: kind.into(),
            project: project.into(),
            transition: "Council_ToolingLost".into(),
            signer: "hmmm:pubkey:leader".into(),
            guard: Some("mcp_health".into()),
            detail: detail.into(),
        };
        let flap = |project: &str, tool: &str| {
            op(
                "tool_flap",
                project,
                &format!("tool '{tool}' unreachable at 2026-01-01T00:00:01.000+00:00#0"),
            )
        };
        let back = |project: &str, tools: &str| {
            op(
                "tool_recovered",
                project,
                &format!("reachable at their pinned versions again: {tools}"),
            )
        };
        let e = Event::from_op(&flap("p", "mcp-git"), 0);
        assert_eq!(e.subject.items, vec!["mcp-git"]);
        assert_eq!(
            Event::from_op(&back("p", "mcp-git, mcp-search"), 0)
                .subject
                .items,
            vec!["mcp-git", "mcp-search"]
        );
        let mut s = Scorer::new(T);
        s.observe(&Event::from_op(&flap("p", "mcp-git"), 0));
        s.observe(&Event::from_op(&flap("p", "mcp-search"), 1));
        s.observe(&Event::from_op(&flap("q", "mcp-git"), 2));
        assert_eq!(s.len(), 1, "one pattern: tool names are masked");
        // Tool A's recovery in p: B in p and A in q stay open.
        s.observe(&Event::from_op(&back("p", "mcp-git"), MIN));
        let r = s
            .memory()
            .records
            .values()
            .find(|r| r.kind == EventKind::ToolFlap)
            .unwrap();
        assert_eq!(r.heals, 1);
        let open: Vec<(&str, &str)> = r
            .open_for
            .iter()
            .map(|k| (k.project.as_str(), k.item.as_str()))
            .collect();
        assert_eq!(open, vec![("p", "mcp-search"), ("q", "mcp-git")]);
        // Another project's recovery of B: nothing of p's.
        s.observe(&Event::from_op(&back("r", "mcp-search"), 2 * MIN));
        assert_eq!(item_of(&s, 2 * MIN, EventKind::ToolFlap).heals, 1);
        s.observe(&Event::from_op(&back("p", "mcp-search"), 3 * MIN));
        s.observe(&Event::from_op(&back("q", "mcp-git"), 4 * MIN));
        let it = item_of(&s, 4 * MIN, EventKind::ToolFlap);
        assert!(!it.open);
        assert_eq!(it.heals, 3);
    }

    #[test]
    fn duplicates_are_ignored_fast_until_their_volume_says_otherwise() {
        let mut s = Scorer::new(T);
        s.observe(&Event::new(EventKind::Duplicate, "", 0).detail("repeat of index 4"));
        assert_eq!(only(&s, 0).band, Band::IgnoreFast);
        assert!(s.digest(0, SURFACE_BAND_MIN, 10).items.is_empty());
        for i in 0..200 {
            s.observe(
                &Event::new(EventKind::Duplicate, "", i * 7 * MIN)
                    .detail(format!("repeat of index {i}")),
            );
        }
        assert!(only(&s, 200 * 7 * MIN).band >= Band::Watch);
    }

    #[test]
    fn memory_survives_a_restart_and_knows_what_it_saw_before() {
        let mut s = Scorer::new(T);
        s.begin_session();
        s.observe(&Event::new(EventKind::TornWrite, "wal", 0).peer("node-1"));
        s.observe(&Event::new(EventKind::SnapshotCorrupt, "snap", 0).peer("node-1"));
        assert!(!item_of(&s, 0, EventKind::TornWrite).seen_before);
        let bytes = s.to_bytes();
        let mut s2 = Scorer::from_bytes(&bytes, T).unwrap();
        assert_eq!(s2, s);
        s2.begin_session();
        // Not seen again yet: remembered, but not "seen before and again now".
        let it = item_of(&s2, MIN, EventKind::TornWrite);
        assert!(!it.seen_before);
        assert_eq!(it.sessions, 1);
        s2.observe(&Event::new(EventKind::TornWrite, "wal", 10 * MIN).peer("node-1"));
        let it = item_of(&s2, 10 * MIN, EventKind::TornWrite);
        assert!(it.seen_before);
        assert_eq!(it.sessions, 2);
        assert!(it.band >= Band::Investigate, "{:#?}", it.factors);
        let other = item_of(&s2, 10 * MIN, EventKind::SnapshotCorrupt);
        assert!(!other.seen_before, "a pattern that never recurred");
        assert_eq!(other.sessions, 1);
    }

    /// A forward clock jump does not pin later events: once the clock is
    /// back, episodes split and bursts end as usual; the same holds for a
    /// memory saved with a clock far in the future.
    #[test]
    fn a_forward_clock_jump_does_not_stick() {
        let year = 365 * DAY;
        let mut s = Scorer::new(T);
        s.observe(&stale("p", 0, 0));
        s.observe(&stale("p", 1, year)); // the clock jumped a year ahead
                                         // Back to normal: a small step back is absorbed …
        s.observe(&stale("p", 2, year - CLOCK_BEHIND_TOLERANCE_MS));
        assert_eq!(s.memory().clock_ms, year);
        assert_eq!(s.memory().clock_resets, 0);
        // … a large one resets the clock and the remembered times.
        s.observe(&stale("p", 3, 10 * MIN));
        assert_eq!(s.memory().clock_ms, 10 * MIN);
        assert_eq!(s.memory().clock_resets, 1);
        let r = s.memory().records.values().next().unwrap().clone();
        assert_eq!(r.last_seen_ms, 10 * MIN);
        // Later events split into episodes normally, not one endless one.
        s.observe(&stale("p", 4, 30 * MIN));
        s.observe(&stale("p", 5, 50 * MIN));
        let it = only(&s, 50 * MIN);
        assert_eq!(it.last_seen_ms, 50 * MIN);
        assert_eq!(it.episodes, r.episodes + 2);
        // Reads at a time far behind the clock are judged at that time.
        let mut ahead = Scorer::new(T);
        ahead.observe(&stale("p", 0, year));
        let bytes = ahead.to_bytes();
        let mut back = Scorer::from_bytes(&bytes, T).unwrap();
        assert_eq!(back.digest(HOUR, Band::IgnoreFast, 1).now_ms, HOUR);
        back.observe(&stale("p", 1, HOUR));
        assert_eq!(back.memory().clock_ms, HOUR);
        back.observe(&stale("p", 2, HOUR + 10 * MIN));
        assert_eq!(back.memory().clock_ms, HOUR + 10 * MIN);
        // The pulled-back occurrence and this one: two episodes.
        assert_eq!(only(&back, HOUR + 10 * MIN).episodes, 2);
    }

    #[test]
    fn bad_memory_is_a_typed_error_naming_the_field() {
        assert!(matches!(
            Scorer::from_bytes(&[], T),
            Err(MemoryError::Decode(_))
        ));
        assert!(matches!(
            Scorer::from_bytes(&[0xa1, 0x61], T),
            Err(MemoryError::Decode(_))
        ));
        let mut s = Scorer::new(T);
        s.mem.version = 99;
        assert_eq!(
            Scorer::from_bytes(&s.to_bytes(), T),
            Err(MemoryError::Version { found: 99 })
        );
        // A version-1 file (another shape) is a version error, not damage.
        #[derive(Serialize)]
        struct V1 {
            version: u64,
            session: u64,
            observed: u64,
            evicted: u64,
            clock_ms: u64,
            records: BTreeMap<String, u64>,
        }
        let v1 = cbor::to_canonical(&V1 {
            version: 1,
            session: 3,
            observed: 9,
            evicted: 0,
            clock_ms: 5,
            records: BTreeMap::from([("fp:0123456789abcdef".to_string(), 1)]),
        })
        .unwrap();
        let e = Scorer::from_bytes(&v1, T).unwrap_err();
        assert_eq!(e, MemoryError::Version { found: 1 });
        assert!(e
            .to_string()
            .contains("delete (or set aside) the memory file"));
        let mut s = Scorer::new(T);
        s.observe(&stale("p", 1, 0));
        let mut bytes = s.to_bytes();
        let n = bytes.len();
        bytes.truncate(n - 3);
        assert!(Scorer::from_bytes(&bytes, T).is_err());
        // Crafted counters: out of range is refused, naming the field.
        let crafted = |f: &dyn Fn(&mut Record)| {
            let mut c = s.clone();
            f(c.mem.records.values_mut().next().unwrap());
            Scorer::from_bytes(&c.to_bytes(), T)
                .unwrap_err()
                .to_string()
        };
        let e = crafted(&|r| r.baseline_milli = u64::MAX);
        assert!(
            e.contains("].baseline_milli is 18446744073709551615"),
            "{e}"
        );
        assert!(
            e.contains("delete (or set aside) the memory file to start fresh"),
            "{e}"
        );
        assert!(crafted(&|r| r.episodes = 0).contains(".episodes"));
        assert!(crafted(&|r| r.window_count = 2).contains(".window_count"));
        assert!(crafted(&|r| r.last_seen_ms = 1 << 60).contains(".last_seen_ms"));
        assert!(crafted(&|r| r.sessions = 7).contains(".sessions"));
        assert!(crafted(&|r| r.recent.events[3] = 5).contains(".recent"));
    }

    /// Extreme but consistent counters load, and the arithmetic on them
    /// saturates instead of overflowing.
    #[test]
    fn extreme_counters_saturate() {
        let mut s = Scorer::new(T);
        s.observe(&stale("p", 1, 0));
        for r in s.mem.records.values_mut() {
            r.count = u64::MAX;
            r.episodes = u64::MAX;
            r.window_count = u64::MAX;
            r.baseline_milli = u64::MAX;
            r.baseline_windows = BASELINE_WINDOWS_CAP;
            r.recent.events = [u64::MAX; RECENT_BUCKETS];
        }
        s.mem.observed = u64::MAX;
        let r = s.memory().records.values().next().unwrap().clone();
        // The recent sums exceed the (saturated) totals: refused …
        assert!(Scorer::from_bytes(&s.to_bytes(), T).is_err());
        // … within them: loaded, and observing saturates.
        for r in s.mem.records.values_mut() {
            r.recent.events = [0; RECENT_BUCKETS];
            r.recent.events[0] = u64::MAX;
        }
        let mut s = Scorer::from_bytes(&s.to_bytes(), T).unwrap();
        s.observe(&stale("p", 2, 1));
        s.observe(&stale("p", 3, 2 * MIN));
        let after = s.memory().records.values().next().unwrap();
        assert_eq!(after.count, u64::MAX);
        assert_eq!(s.memory().observed, u64::MAX);
        assert!(after.baseline_milli <= r.baseline_milli);
        let _ = s.digest(3 * MIN, Band::IgnoreFast, 10);
    }

    #[test]
    fn bounds_hold_and_eviction_is_deterministic() {
        let mut s = Scorer::new(T);
        for i in 0..(FINGERPRINTS_MAX as u64 + 50) {
            s.observe(
                &Event::new(EventKind::Rejected, format!("guard_{}", alpha(i)), i)
                    .project(format!("p{i}")),
            );
        }
        assert_eq!(s.len(), FINGERPRINTS_MAX);
        assert_eq!(s.memory().evicted, 50);
        // Which ones: all one-offs of one band, so the 50 least recently
        // seen, the first 50; and the same choice on every run.
        let kept: Vec<u64> = {
            let mut v: Vec<u64> = s
                .memory()
                .records
                .values()
                .map(|r| r.first_seen_ms)
                .collect();
            v.sort();
            v
        };
        assert_eq!(kept, (50..FINGERPRINTS_MAX as u64 + 50).collect::<Vec<_>>());
        let mut again = Scorer::new(T);
        for i in 0..(FINGERPRINTS_MAX as u64 + 50) {
            again.observe(
                &Event::new(EventKind::Rejected, format!("guard_{}", alpha(i)), i)
                    .project(format!("p{i}")),
            );
        }
        assert_eq!(again.memory_hash(), s.memory_hash());
        for i in 0..40 {
            s.observe(&Event::new(EventKind::Rejected, "x", 1_000 + i).project(format!("p{i}")));
        }
        let r = s
            .memory()
            .records
            .values()
            .find(|r| r.signature == "x")
            .unwrap();
        assert_eq!(r.projects.ids.len(), SUBJECTS_PER_FINGERPRINT_MAX);
        assert_eq!(
            r.projects.overflow,
            40 - SUBJECTS_PER_FINGERPRINT_MAX as u64
        );
    }

    /// Which record goes: a one-off newcomer before anything seen twice,
    /// then within a tier the lowest band now, then the least recently seen.
    #[test]
    fn eviction_takes_a_one_off_before_a_recurring_pattern() {
        let mut s = Scorer::new(T);
        // FINGERPRINTS_MAX - 2 recurring patterns (two episodes each) …
        for round in 0..2 {
            for i in 0..(FINGERPRINTS_MAX as u64 - 2) {
                s.observe(
                    &Event::new(
                        EventKind::Rejected,
                        format!("g{}", alpha(i)),
                        round * 10 * MIN + i,
                    )
                    .peer(format!("n{}", alpha(i))),
                );
            }
        }
        // … a watch-band one-off (older) and a background one-off (newer).
        let auth = Event::new(EventKind::AuthFailure, "signature", 11 * MIN).peer("x");
        let flap = Event::new(EventKind::ToolFlap, "mcp_health", 12 * MIN).peer("y");
        s.observe(&auth);
        s.observe(&flap);
        assert_eq!(s.len(), FINGERPRINTS_MAX);
        // A new one-off evicts the lowest-band one-off, though it is newer.
        s.observe(&Event::new(EventKind::Partition, "cut", 13 * MIN).peer("z"));
        assert!(!s.memory().records.contains_key(&fingerprint(&flap)));
        assert!(s.memory().records.contains_key(&fingerprint(&auth)));
        // Then the remaining one-offs, lowest band first: the partition
        // (background), then the auth failure (watch).
        s.observe(&Event::new(EventKind::Partition, "cut2", 14 * MIN).peer("w"));
        assert!(s.memory().records.contains_key(&fingerprint(&auth)));
        s.observe(&Event::new(EventKind::ForgedMessage, "x", 15 * MIN).peer("v"));
        s.observe(&Event::new(EventKind::ForgedMessage, "y", 16 * MIN).peer("u"));
        assert!(!s.memory().records.contains_key(&fingerprint(&auth)));
        assert_eq!(s.memory().evicted, 4);
        let recurring = s
            .memory()
            .records
            .values()
            .filter(|r| r.episodes >= 2)
            .count();
        assert_eq!(recurring, FINGERPRINTS_MAX - 2);
        // Once only recurring patterns are left, the lowest band and then
        // the least recently seen goes: here the oldest background one.
        let mut full = Scorer::new(T);
        for round in 0..2 {
            for i in 0..FINGERPRINTS_MAX as u64 {
                full.observe(
                    &Event::new(
                        EventKind::Rejected,
                        format!("g{}", alpha(i)),
                        round * 10 * MIN + i,
                    )
                    .peer(format!("n{}", alpha(i))),
                );
            }
        }
        let oldest = fingerprint(&Event::new(EventKind::Rejected, "ga", 0));
        full.observe(&Event::new(EventKind::Rejected, "new", 20 * MIN).peer("n"));
        assert!(!full.memory().records.contains_key(&oldest));
    }

    /// The reviewer's flood: hundreds of novel one-offs (different patterns
    /// from different clients) never wipe established patterns, and one
    /// client's unseen patterns beyond its budget fold into one record.
    #[test]
    fn a_flood_of_one_offs_keeps_established_patterns() {
        let mut s = Scorer::new(T);
        for round in 0..2 {
            for i in 0..100u64 {
                s.observe(
                    &stale(&format!("p{i}"), i, round * 10 * MIN + i)
                        .signer(format!("hmmm:pubkey:{}", alpha(i)))
                        .detail(format!("head of {}", alpha(i))),
                );
            }
        }
        let established: BTreeSet<String> = s.memory().records.keys().cloned().collect();
        assert_eq!(established.len(), 100);
        for i in 0..300u64 {
            s.observe(
                &Event::new(
                    EventKind::Rejected,
                    format!("guard {}", alpha(i)),
                    20 * MIN + i * 1000,
                )
                .signer(format!("flood-{i}")),
            );
        }
        assert_eq!(s.len(), FINGERPRINTS_MAX);
        assert!(established
            .iter()
            .all(|fp| s.memory().records.contains_key(fp)));
        assert_eq!(s.memory().evicted, 100 + 300 - FINGERPRINTS_MAX as u64);

        // One client with endless distinct texts: its budget, then one
        // "varied detail" record.
        let mut s = Scorer::new(T);
        for i in 0..50u64 {
            s.observe(
                &Event::new(EventKind::Rejected, "inputs", i)
                    .signer("hmmm:pubkey:one")
                    .detail(format!("field {} is wrong", alpha(i))),
            );
        }
        assert_eq!(s.len() as u64, NEW_FINGERPRINTS_PER_SUBJECT_MAX + 1);
        assert_eq!(s.memory().folded, 50 - NEW_FINGERPRINTS_PER_SUBJECT_MAX);
        let varied = s
            .memory()
            .records
            .values()
            .find(|r| r.signature == format!("inputs: {VARIED_DETAIL}"))
            .unwrap();
        assert_eq!(varied.count, 50 - NEW_FINGERPRINTS_PER_SUBJECT_MAX);
        // A new window, a new budget; known patterns never count against it.
        s.observe(
            &Event::new(EventKind::Rejected, "inputs", MIN)
                .signer("hmmm:pubkey:one")
                .detail("something else"),
        );
        assert_eq!(s.len() as u64, NEW_FINGERPRINTS_PER_SUBJECT_MAX + 2);
    }

    fn alpha(mut i: u64) -> String {
        // Letters only, so normalization keeps the reasons distinct.
        let mut s = String::new();
        loop {
            s.push((b'a' + (i % 26) as u8) as char);
            i /= 26;
            if i == 0 {
                return s;
            }
        }
    }

    #[test]
    fn from_op_maps_the_reducer_events() {
        let op = OpEvent {
            kind: "rejected".into(),
            project: "p".into(),
            transition: "Execution_Review".into(),
            signer: "hmmm:pubkey:k".into(),
            guard: Some("backbeat".into()),
            detail: "window closed until 2026-01-01T00:05:00Z".into(),
        };
        let e = Event::from_op(&op, 7);
        assert_eq!(e.kind, EventKind::Rejected);
        assert_eq!(e.reason, "backbeat");
        assert_eq!(e.subject.project.as_deref(), Some("p"));
        assert!(e.subject.items.is_empty());
        let unknown = OpEvent {
            kind: "weird".into(),
            guard: None,
            ..op
        };
        assert_eq!(Event::from_op(&unknown, 7).kind, EventKind::Other);
        assert_eq!(Event::from_op(&unknown, 7).reason, "weird");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn arb_event() -> impl Strategy<Value = Event> {
            (
                0usize..26,
                "[a-c]{0,3}",
                "[a-z0-9 '\"]{0,20}",
                proptest::option::of("[p-s][0-9]?"),
                proptest::option::of("[k-m]"),
                proptest::option::of("[x-z]"),
                proptest::collection::vec("[a-c]", 0..3),
                0u64..10_000_000,
            )
                .prop_map(|(k, reason, detail, project, signer, peer, items, at)| {
                    let kind = [
                        "rejected",
                        "stale_hash",
                        "idem_conflict",
                        "auth_failure",
                        "duplicate",
                        "quarantine",
                        "quarantine_released",
                        "quorum_lost",
                        "recovered",
                        "license_grace",
                        "license_restored",
                        "license_trouble",
                        "tool_flap",
                        "tool_recovered",
                        "follower_lag",
                        "follower_gap",
                        "follower_caught_up",
                        "partition",
                        "partition_healed",
                        "restart",
                        "torn_write",
                        "snapshot_corrupt",
                        "snapshot_rollback",
                        "forged_message",
                        "vote_rejected",
                        "other",
                    ][k];
                    Event {
                        kind: EventKind::from_name(kind),
                        subject: Subject {
                            project,
                            signer,
                            peer,
                            items,
                        },
                        reason,
                        detail,
                        at_ms: at,
                    }
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn same_events_same_digest_roundtrip_and_bounds(
                evs in proptest::collection::vec(arb_event(), 0..300),
                restart_at in 0usize..300,
            ) {
                let mut a = Scorer::new(Tuning::SIMULATION);
                let mut b = Scorer::new(Tuning::SIMULATION);
                for (i, e) in evs.iter().enumerate() {
                    a.observe(e);
                    b.observe(e);
                    if i == restart_at {
                        // b goes through a save/load; nothing changes.
                        b = Scorer::from_bytes(&b.to_bytes(), Tuning::SIMULATION).unwrap();
                    }
                }
                prop_assert_eq!(a.memory_hash(), b.memory_hash());
                prop_assert_eq!(a.digest(5_000_000, Band::IgnoreFast, 1000), b.digest(5_000_000, Band::IgnoreFast, 1000));
                let back = Scorer::from_bytes(&a.to_bytes(), Tuning::SIMULATION).unwrap();
                prop_assert_eq!(&back, &a);
                prop_assert!(a.len() <= FINGERPRINTS_MAX);
                for r in a.memory().records.values() {
                    prop_assert!(r.projects.ids.len() <= SUBJECTS_PER_FINGERPRINT_MAX);
                    prop_assert!(r.open_for.len() <= SUBJECTS_PER_FINGERPRINT_MAX);
                    prop_assert!(r.signature.chars().count() <= REASON_CHARS_MAX);
                    prop_assert!(r.count >= r.episodes);
                    prop_assert!(r.peak_band >= r.band);
                    prop_assert!(r.last_seen_ms <= a.memory().clock_ms);
                }
                let d = a.digest(5_000_000, Band::IgnoreFast, 1000);
                prop_assert_eq!(d.by_band.iter().sum::<u64>(), a.len() as u64);
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = Scorer::from_bytes(&bytes, Tuning::OPERATIONS);
            }

            /// Random bytes seldom decode as a memory at all, so a valid
            /// memory is damaged instead (a byte changed, a cut): whatever
            /// still decodes reaches the range checks, and what loads can
            /// be observed into and digested without a panic.
            #[test]
            fn a_damaged_memory_never_panics(
                evs in proptest::collection::vec(arb_event(), 1..60),
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
                cut in any::<bool>(),
            ) {
                let mut a = Scorer::new(Tuning::SIMULATION);
                for e in &evs {
                    a.observe(e);
                }
                let mut bytes = a.to_bytes();
                let i = at.index(bytes.len());
                if cut {
                    bytes.truncate(i);
                } else {
                    bytes[i] = byte;
                }
                if let Ok(mut s) = Scorer::from_bytes(&bytes, Tuning::SIMULATION) {
                    for e in &evs {
                        s.observe(e);
                    }
                    let _ = s.digest(u64::MAX / 2, Band::IgnoreFast, 1000);
                    let _ = s.to_bytes();
                }
            }
        }
    }
}
