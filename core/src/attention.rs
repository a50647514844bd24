//! The attention scorer (SPEC §7, from the brAInstem governance seed).
//!
//! It listens to the orchestrator's own operational stream — rejections by
//! guard and reason, stale-hash conflicts, duplicates, quarantines,
//! recoveries, license grace, tool-health flaps, follower lag and gaps,
//! restarts — and decides what deserves an operator's eyes:
//!
//! 1. every [`Event`] is **fingerprinted** ([`fingerprint`]): its kind plus a
//!    normalized reason, with the volatile parts (indexes, hashes, keys,
//!    numbers) masked, so "stale hash at index 41" and "… index 97" are one
//!    pattern;
//! 2. per fingerprint it keeps **count**, first/last seen, **recurrence**
//!    (separate episodes, split by a quiet gap), **bursts** (events in the
//!    current window against the fingerprint's own baseline), **spread**
//!    (distinct projects, signers and peers) and **self-healing** (a failure
//!    followed by its recovery);
//! 3. it assigns an explicit **band** ([`Band`]) from a base band per kind
//!    plus named, documented raises and lowers ([`assess`]); a weak signal
//!    earns attention later through recurrence, volume, bursts, spread and
//!    history;
//! 4. every surfaced item ([`Surfaced`]) says what is happening, why it
//!    matters, how often and where, whether it was seen before (in an earlier
//!    session, i.e. before a restart) and what to check next.
//!
//! Pure: time arrives as an argument (`at_ms` on events, `now_ms` on reads:
//! the node passes wall-clock ms, the simulator its virtual clock); no I/O,
//! no clock, no randomness. Memory is bounded ([`FINGERPRINTS_MAX`],
//! [`SUBJECTS_PER_FINGERPRINT_MAX`]) with deterministic eviction, and it is
//! serializable as canonical CBOR ([`Scorer::to_bytes`] /
//! [`Scorer::from_bytes`]) so it survives restarts. The scorer never sees or
//! changes replicated state: it only consumes events.

use crate::cbor::{self, CanonicalError};
use crate::hash::Hash;
use crate::reducer::OpEvent;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

// ------------------------------------------------------------------ limits

/// Fingerprints remembered; a new one beyond it evicts the least important
/// (lowest band, then least recently seen, then smallest fingerprint).
pub const FINGERPRINTS_MAX: usize = 256;
/// Distinct projects, signers and peers remembered per fingerprint, each; the
/// first ones seen are kept, later ones are only counted as overflow.
pub const SUBJECTS_PER_FINGERPRINT_MAX: usize = 16;
/// Longest normalized reason kept (characters).
pub const REASON_CHARS_MAX: usize = 160;
/// Longest example detail kept (characters).
pub const EXAMPLE_CHARS_MAX: usize = 240;
/// Longest subject id kept (characters).
pub const SUBJECT_CHARS_MAX: usize = 96;
/// Largest persisted memory accepted by [`Scorer::from_bytes`], bytes.
pub const MEMORY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Empty windows replayed into a baseline at most (older history has decayed
/// to zero by then anyway).
const BASELINE_DECAY_WINDOWS_MAX: u64 = 64;

// ------------------------------------------------------- band thresholds

/// Episodes (occurrences separated by more than `episode_gap_ms`) at which a
/// pattern counts as recurring: +1 band.
pub const RECURRENCE_EPISODES_RAISE: u64 = 3;
/// Episodes at which a pattern is chronic: a further +1 band.
pub const RECURRENCE_EPISODES_CHRONIC: u64 = 10;
/// Total occurrences at which sheer volume earns +1 band.
pub const VOLUME_COUNT_RAISE: u64 = 100;
/// A window is a burst when its count is at least this many times the
/// fingerprint's baseline (an average of its earlier windows) …
pub const BURST_FACTOR: u64 = 4;
/// … and at least this many events. A burst earns +1 band while it is recent
/// (within `burst_hold_ms`).
pub const BURST_EVENTS_MIN: u64 = 5;
/// Distinct projects, signers or peers (any one of them) at which a pattern
/// is spreading: +1 band.
pub const SPREAD_SUBJECTS_RAISE: usize = 3;
/// Failures healed by their recovery this many times: recurring self-healing
/// instability, +1 band. Fewer heals, with the last failure healed: -1 band.
pub const SELF_HEAL_RECURRING: u64 = 3;
/// Sessions (node lifetimes: memory loaded after a restart) a pattern has
/// occurred in, at which history earns +1 band.
pub const SESSIONS_RAISE: u64 = 2;
/// Bands from which an item is surfaced to operators (in `GET /attention`
/// lists and chaos reports by default): watch and above.
pub const SURFACE_BAND_MIN: Band = Band::Watch;

/// Time constants: the node uses [`Tuning::OPERATIONS`] (wall-clock ms); the
/// simulator, whose runs last seconds of virtual time, uses
/// [`Tuning::SIMULATION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Width of the burst window, ms.
    pub window_ms: u64,
    /// A gap longer than this starts a new episode, ms.
    pub episode_gap_ms: u64,
    /// A burst keeps its raise this long after the bursting window, ms.
    pub burst_hold_ms: u64,
    /// Unseen for longer than this: -1 band (quiet), ms.
    pub quiet_ms: u64,
}

impl Tuning {
    pub const OPERATIONS: Tuning = Tuning {
        window_ms: 60_000,
        episode_gap_ms: 5 * 60_000,
        burst_hold_ms: 15 * 60_000,
        quiet_ms: 6 * 60 * 60_000,
    };
    pub const SIMULATION: Tuning = Tuning {
        window_ms: 500,
        episode_gap_ms: 1_000,
        burst_hold_ms: 5_000,
        quiet_ms: 60_000,
    };
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning::OPERATIONS
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
    /// A council vote was refused (forged, outsider, stale epoch).
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
            VoteRejected => "a council agent is misconfigured, stale or not on the roster",
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
            VoteRejected => "check the agent's key, roster membership and epoch",
            Other => "look at the example detail",
        }
    }
}

/// Who an event is about. Any of the three may be absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub project: Option<String>,
    pub signer: Option<String>,
    pub peer: Option<String>,
}

/// One operational event, as the scorer sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub subject: Subject,
    /// The stable part of the cause (a guard, a fault class): fingerprinted.
    pub reason: String,
    /// Free text (indexes, hashes, times): normalized before fingerprinting.
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

    pub fn detail(mut self, d: impl Into<String>) -> Event {
        self.detail = d.into();
        self
    }

    /// The reducer's operational event, at `at_ms`.
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
        e
    }
}

// ----------------------------------------------------------- fingerprints

/// Mask the volatile parts of `text`: `blake3:` hashes, signer keys, long hex
/// runs and numbers, so equal causes get equal text. Lowercased, whitespace
/// collapsed, at most [`REASON_CHARS_MAX`] characters.
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

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// The signature text of an event: its reason and normalized detail.
pub fn signature(ev: &Event) -> String {
    let reason = normalize(&ev.reason);
    let detail = normalize(&ev.detail);
    let s = match (reason.is_empty(), detail.is_empty()) {
        (true, _) => detail,
        (false, true) => reason,
        (false, false) => format!("{reason}: {detail}"),
    };
    truncate(&s, REASON_CHARS_MAX)
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

/// A bounded set of subject ids: the first [`SUBJECTS_PER_FINGERPRINT_MAX`]
/// are kept; later new ones are only counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectSet {
    pub ids: BTreeSet<String>,
    /// Occurrences whose subject was not kept because the set was full.
    pub overflow: u64,
}

impl SubjectSet {
    fn add(&mut self, id: &Option<String>) {
        let Some(id) = id else { return };
        let id = truncate(id, SUBJECT_CHARS_MAX);
        if self.ids.contains(&id) {
            return;
        }
        if self.ids.len() < SUBJECTS_PER_FINGERPRINT_MAX {
            self.ids.insert(id);
        } else {
            self.overflow += 1;
        }
    }

    /// Distinct subjects known; `at_least` when some were not kept.
    pub fn distinct(&self) -> usize {
        self.ids.len()
    }
}

/// What the scorer remembers about one fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub kind: EventKind,
    /// The normalized signature text.
    pub signature: String,
    /// The latest raw detail (truncated), for humans.
    pub example: String,
    pub count: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Occurrence runs separated by more than `episode_gap_ms`.
    pub episodes: u64,
    /// Start of the current burst window, ms.
    pub window_start_ms: u64,
    /// Events in the current window.
    pub window_count: u64,
    /// Average events per window before the current one, in thousandths
    /// (an exponential average, 1/8 weight per window; integers only, as
    /// canonical CBOR has no floats).
    pub baseline_milli: u64,
    /// Windows that were bursts.
    pub bursts: u64,
    pub last_burst_ms: Option<u64>,
    pub projects: SubjectSet,
    pub signers: SubjectSet,
    pub peers: SubjectSet,
    /// A failure of a kind with a recovery is open until the recovery comes.
    pub open: bool,
    /// Times a failure of this fingerprint was followed by its recovery.
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

/// The persisted memory: every tracked fingerprint and the session counter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// Format version of this structure.
    pub version: u64,
    /// Incremented every time the memory is loaded by a new node lifetime.
    pub session: u64,
    /// Events observed, all time.
    pub observed: u64,
    /// Fingerprints evicted to stay within [`FINGERPRINTS_MAX`].
    pub evicted: u64,
    /// Latest time seen, ms.
    pub clock_ms: u64,
    pub records: BTreeMap<String, Record>,
}

pub const MEMORY_VERSION: u64 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemoryError {
    #[error("attention memory is {0} bytes, above the {MEMORY_BYTES_MAX}-byte limit; set the file aside and start fresh")]
    TooLarge(usize),
    #[error("attention memory is not canonical CBOR of the expected shape: {0}; set the file aside and start fresh")]
    Decode(#[from] CanonicalError),
    #[error("attention memory has format version {found}, this build reads {MEMORY_VERSION}")]
    Version { found: u64 },
    #[error("attention memory breaks a limit: {0}")]
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
/// self-healing raises and lowers, clamped to 0..=4.
pub fn assess(r: &Record, now_ms: u64, t: &Tuning) -> (Band, Vec<Factor>) {
    let mut f = vec![];
    let mut push = |name: &str, delta: i64, why: String| {
        f.push(Factor {
            name: name.into(),
            delta,
            why,
        })
    };
    let base = r.kind.base_band();
    push(
        "base",
        base.level() as i64,
        format!("{} starts at {}", r.kind.name(), base.name()),
    );
    if r.episodes >= RECURRENCE_EPISODES_CHRONIC {
        push(
            "recurrence",
            2,
            format!("chronic: {} separate episodes", r.episodes),
        );
    } else if r.episodes >= RECURRENCE_EPISODES_RAISE {
        push(
            "recurrence",
            1,
            format!("recurring: {} separate episodes", r.episodes),
        );
    }
    if r.count >= VOLUME_COUNT_RAISE {
        push("volume", 1, format!("{} occurrences", r.count));
    }
    if let Some(b) = r.last_burst_ms {
        if now_ms.saturating_sub(b) <= t.burst_hold_ms {
            push(
                "burst",
                1,
                format!(
                    "bursting: {} window(s) at {BURST_FACTOR}x or more its usual rate (usual: {}.{:03} per window)",
                    r.bursts,
                    r.baseline_milli / 1000,
                    r.baseline_milli % 1000
                ),
            );
        }
    }
    let spread = [
        ("projects", &r.projects),
        ("signers", &r.signers),
        ("peers", &r.peers),
    ]
    .into_iter()
    .filter(|(_, s)| s.distinct() >= SPREAD_SUBJECTS_RAISE)
    .map(|(n, s)| format!("{} {n}", s.distinct()))
    .collect::<Vec<_>>();
    if !spread.is_empty() {
        push(
            "spread",
            1,
            format!("spreading across {}", spread.join(", ")),
        );
    }
    if r.sessions >= SESSIONS_RAISE {
        push(
            "history",
            1,
            format!("seen in {} node lifetimes (before restarts)", r.sessions),
        );
    }
    if r.heals >= SELF_HEAL_RECURRING {
        push(
            "self_heal",
            1,
            format!(
                "recurring self-healing instability: healed {} times",
                r.heals
            ),
        );
    } else if r.heals > 0 && !r.open {
        push(
            "self_heal",
            -1,
            format!(
                "healed itself ({} time(s)); last failure recovered",
                r.heals
            ),
        );
    }
    if now_ms.saturating_sub(r.last_seen_ms) > t.quiet_ms {
        push(
            "quiet",
            -1,
            format!(
                "quiet for {} s",
                now_ms.saturating_sub(r.last_seen_ms) / 1000
            ),
        );
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
    /// How often and where, in one line.
    pub how_often: String,
    pub count: u64,
    pub episodes: u64,
    pub bursts: u64,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub projects: Vec<String>,
    pub signers: Vec<String>,
    pub peers: Vec<String>,
    /// Whether it was seen in an earlier session (before a restart).
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

    /// Start a new session (a node lifetime): call once after loading memory
    /// at start. Patterns seen again afterwards count as "seen before".
    pub fn begin_session(&mut self) {
        self.mem.session += 1;
    }

    /// Feed one event.
    pub fn observe(&mut self, ev: &Event) {
        let t = self.tuning;
        let at = ev.at_ms.max(self.mem.clock_ms);
        self.mem.clock_ms = at;
        self.mem.observed += 1;
        // A recovery closes the open failures it heals for the same subject.
        let heals = ev.kind.heals();
        if !heals.is_empty() {
            for r in self.mem.records.values_mut() {
                if r.open && heals.contains(&r.kind) && same_subject(r, &ev.subject) {
                    r.open = false;
                    r.heals += 1;
                    r.last_healed_ms = Some(at);
                    let (b, _) = assess(r, at, &t);
                    r.band = b;
                    r.peak_band = r.peak_band.max(b);
                }
            }
        }
        let sig = signature(ev);
        let fp = fingerprint_of(ev.kind, &sig);
        if !self.mem.records.contains_key(&fp) && self.mem.records.len() >= FINGERPRINTS_MAX {
            self.evict_one();
        }
        let session = self.mem.session;
        let r = self.mem.records.entry(fp).or_insert_with(|| Record {
            kind: ev.kind,
            signature: sig,
            example: String::new(),
            count: 0,
            first_seen_ms: at,
            last_seen_ms: at,
            episodes: 0,
            window_start_ms: at - at % t.window_ms.max(1),
            window_count: 0,
            baseline_milli: 0,
            bursts: 0,
            last_burst_ms: None,
            projects: SubjectSet::default(),
            signers: SubjectSet::default(),
            peers: SubjectSet::default(),
            open: false,
            heals: 0,
            last_healed_ms: None,
            first_session: session,
            last_session: session,
            sessions: 1,
            band: Band::IgnoreFast,
            peak_band: Band::IgnoreFast,
        });
        let at = at.max(r.last_seen_ms);
        if r.count == 0 || at - r.last_seen_ms > t.episode_gap_ms {
            r.episodes += 1;
        }
        if r.last_session != session {
            r.last_session = session;
            r.sessions += 1;
        }
        // Burst window: close the windows that ended, folding them (and the
        // empty ones after them) into the baseline.
        let w = t.window_ms.max(1);
        let start = at - at % w;
        if start > r.window_start_ms {
            let passed = (start - r.window_start_ms) / w;
            r.baseline_milli = (r.baseline_milli * 7 + r.window_count * 1000) / 8;
            for _ in 1..passed.min(BASELINE_DECAY_WINDOWS_MAX) {
                r.baseline_milli = r.baseline_milli * 7 / 8;
            }
            r.window_start_ms = start;
            r.window_count = 0;
        }
        r.window_count += 1;
        let threshold = (BURST_FACTOR * r.baseline_milli.max(1000)).div_ceil(1000);
        if r.window_count >= BURST_EVENTS_MIN.max(threshold)
            && r.last_burst_ms.is_none_or(|b| b < r.window_start_ms)
        {
            r.bursts += 1;
            r.last_burst_ms = Some(at);
        } else if r.last_burst_ms.is_some_and(|b| b >= r.window_start_ms) {
            r.last_burst_ms = Some(at);
        }
        r.count += 1;
        r.last_seen_ms = at;
        r.example = truncate(&ev.detail, EXAMPLE_CHARS_MAX);
        r.projects.add(&ev.subject.project);
        r.signers.add(&ev.subject.signer);
        r.peers.add(&ev.subject.peer);
        if r.kind.has_recovery() {
            r.open = true;
        }
        let (b, _) = assess(r, at, &t);
        r.band = b;
        r.peak_band = r.peak_band.max(b);
    }

    pub fn observe_all<'a>(&mut self, evs: impl IntoIterator<Item = &'a Event>) {
        for e in evs {
            self.observe(e);
        }
    }

    /// Evict the least important fingerprint: lowest band, then least
    /// recently seen, then smallest fingerprint (deterministic).
    fn evict_one(&mut self) {
        let victim = self
            .mem
            .records
            .iter()
            .min_by(|a, b| {
                (a.1.band, a.1.last_seen_ms, a.0).cmp(&(b.1.band, b.1.last_seen_ms, b.0))
            })
            .map(|(k, _)| k.clone());
        if let Some(k) = victim {
            self.mem.records.remove(&k);
            self.mem.evicted += 1;
        }
    }

    /// Items at or above `band_min` at `now_ms`, most important first (band,
    /// then count, then most recent, then fingerprint), at most `max`; plus
    /// counts of every tracked fingerprint per band.
    pub fn digest(&self, now_ms: u64, band_min: Band, max: usize) -> Digest {
        let now = now_ms.max(self.mem.clock_ms);
        let mut by_band = [0u64; 5];
        let mut items = vec![];
        for (fp, r) in &self.mem.records {
            let (band, factors) = assess(r, now, &self.tuning);
            by_band[band.level() as usize] += 1;
            if band >= band_min {
                items.push(self.surface(fp, r, band, factors));
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

    fn surface(&self, fp: &str, r: &Record, band: Band, factors: Vec<Factor>) -> Surfaced {
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
        let how_often = format!(
            "{} time(s) in {} episode(s), {} burst(s){}{}",
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
            }
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
            projects: r.projects.ids.iter().cloned().collect(),
            signers: r.signers.ids.iter().cloned().collect(),
            peers: r.peers.ids.iter().cloned().collect(),
            seen_before: r.first_session < self.mem.session,
            sessions: r.sessions,
            heals: r.heals,
            open: r.open,
            next: r.kind.next().to_string(),
            factors,
            example: r.example.clone(),
        }
    }

    /// Tracked fingerprints per band at `now_ms` (index = level 0..=4).
    pub fn counts_by_band(&self, now_ms: u64) -> [u64; 5] {
        let now = now_ms.max(self.mem.clock_ms);
        let mut by_band = [0u64; 5];
        for r in self.mem.records.values() {
            by_band[assess(r, now, &self.tuning).0.level() as usize] += 1;
        }
        by_band
    }

    /// Canonical CBOR of the memory (what is persisted).
    pub fn to_bytes(&self) -> Vec<u8> {
        cbor::to_canonical(&self.mem).expect("attention memory has no floats or tags")
    }

    /// Memory read back from [`Scorer::to_bytes`]; any other input is a
    /// typed error, never a panic.
    pub fn from_bytes(bytes: &[u8], tuning: Tuning) -> Result<Scorer, MemoryError> {
        if bytes.len() > MEMORY_BYTES_MAX {
            return Err(MemoryError::TooLarge(bytes.len()));
        }
        let mem: Memory = cbor::from_canonical(bytes)?;
        if mem.version != MEMORY_VERSION {
            return Err(MemoryError::Version { found: mem.version });
        }
        if mem.records.len() > FINGERPRINTS_MAX {
            return Err(MemoryError::Bounds(format!(
                "{} fingerprints, at most {FINGERPRINTS_MAX}",
                mem.records.len()
            )));
        }
        for (fp, r) in &mem.records {
            for (n, s) in [
                ("projects", &r.projects),
                ("signers", &r.signers),
                ("peers", &r.peers),
            ] {
                if s.ids.len() > SUBJECTS_PER_FINGERPRINT_MAX {
                    return Err(MemoryError::Bounds(format!(
                        "{fp} tracks {} {n}, at most {SUBJECTS_PER_FINGERPRINT_MAX}",
                        s.ids.len()
                    )));
                }
            }
            if r.signature.chars().count() > REASON_CHARS_MAX
                || r.example.chars().count() > EXAMPLE_CHARS_MAX
            {
                return Err(MemoryError::Bounds(format!("{fp} has an over-long text")));
            }
            if r.last_seen_ms < r.first_seen_ms || r.count == 0 {
                return Err(MemoryError::Bounds(format!(
                    "{fp} has inconsistent counters"
                )));
            }
        }
        Ok(Scorer { mem, tuning })
    }

    /// BLAKE3 of [`Scorer::to_bytes`]: equal memories, equal digests.
    pub fn memory_hash(&self) -> Hash {
        Hash::of_bytes(&self.to_bytes())
    }
}

fn same_subject(r: &Record, s: &Subject) -> bool {
    // A recovery names the project or peer it is about; it heals a failure
    // seen for that project or peer. A recovery without a subject heals all.
    let matches = |set: &SubjectSet, id: &Option<String>| match id {
        None => true,
        Some(id) => set.ids.is_empty() || set.ids.contains(&truncate(id, SUBJECT_CHARS_MAX)),
    };
    matches(&r.projects, &s.project) && matches(&r.peers, &s.peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Tuning = Tuning::OPERATIONS;
    const MIN: u64 = 60_000;

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
        let d = s.digest(MIN, Band::IgnoreFast, 10);
        let it = d
            .items
            .iter()
            .find(|i| i.kind == EventKind::QuorumLost)
            .unwrap();
        assert_eq!(it.band, Band::Background, "healed once: lowered");
        assert_eq!(it.heals, 1);
        // A recovery of another project heals nothing here.
        s.observe(&lost(10 * MIN));
        s.observe(&Event::new(EventKind::Recovered, "", 11 * MIN).project("other"));
        let d = s.digest(11 * MIN, Band::IgnoreFast, 10);
        let it = d
            .items
            .iter()
            .find(|i| i.kind == EventKind::QuorumLost)
            .unwrap();
        assert!(it.open);
        // Keep flapping: the self-healing instability is what matters.
        for k in 0..3 {
            s.observe(&back((20 + 20 * k) * MIN));
            s.observe(&lost((30 + 20 * k) * MIN));
            s.observe(&back((31 + 20 * k) * MIN));
        }
        let d = s.digest(80 * MIN, Band::IgnoreFast, 10);
        let it = d
            .items
            .iter()
            .find(|i| i.kind == EventKind::QuorumLost)
            .unwrap();
        assert!(it.heals >= SELF_HEAL_RECURRING);
        assert!(it.band >= Band::Promote, "{:#?}", it.factors);
        assert!(it.why.contains("self-healing"));
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
        assert!(!only(&s, 0).seen_before);
        let bytes = s.to_bytes();
        let mut s2 = Scorer::from_bytes(&bytes, T).unwrap();
        assert_eq!(s2, s);
        s2.begin_session();
        s2.observe(&Event::new(EventKind::TornWrite, "wal", 10 * MIN).peer("node-1"));
        let it = only(&s2, 10 * MIN);
        assert!(it.seen_before);
        assert_eq!(it.sessions, 2);
        assert!(it.band >= Band::Investigate, "{:#?}", it.factors);
    }

    #[test]
    fn bad_memory_is_a_typed_error() {
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
        let mut s = Scorer::new(T);
        s.observe(&stale("p", 1, 0));
        let mut bytes = s.to_bytes();
        let n = bytes.len();
        bytes.truncate(n - 3);
        assert!(Scorer::from_bytes(&bytes, T).is_err());
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
                "[a-z0-9 ]{0,20}",
                proptest::option::of("[p-s][0-9]?"),
                proptest::option::of("[k-m]"),
                proptest::option::of("[x-z]"),
                0u64..10_000_000,
            )
                .prop_map(|(k, reason, detail, project, signer, peer, at)| {
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
                        // b goes through a save/load; nothing changes but
                        // the session.
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
                    prop_assert!(r.signature.chars().count() <= REASON_CHARS_MAX);
                    prop_assert!(r.count >= r.episodes);
                    prop_assert!(r.peak_band >= r.band);
                }
                let d = a.digest(5_000_000, Band::IgnoreFast, 1000);
                prop_assert_eq!(d.by_band.iter().sum::<u64>(), a.len() as u64);
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = Scorer::from_bytes(&bytes, Tuning::OPERATIONS);
            }
        }
    }
}
