//! The HTTP API's wire types, shared by the server and the Rust SDK.
//!
//! Every error body is `{"error", "message"}` plus, where they apply,
//! `guard`, `reasons`, `field`, `head_hash`, `hlc_last`, `retry_after_ms`
//! and `leader`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Largest accepted `POST /transition` body.
pub const BODY_BYTES_MAX: usize = 256 * 1024;
/// Most sections a `projection` may name.
pub const PROJECTION_SECTIONS_MAX: usize = 8;
/// How long the server waits for a request line and headers, and for the
/// next request on an idle kept-alive connection, before closing it
/// unanswered: an honest client sends its headers in one packet.
pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// How long `POST /transition` waits for its whole body before `408
/// timeout`: 256 KiB in 10 s is 25 KiB/s, far below any working link.
pub const BODY_READ_TIMEOUT_MS: u64 = 10_000;
/// How long a response write may make no progress (the client stopped
/// reading, or its receive window stays shut) before the connection is
/// dropped: without it such a client holds its connection, one of
/// [`CONNECTIONS_MAX`], for as long as TCP keeps it alive.
pub const WRITE_STALL_TIMEOUT_MS: u64 = 10_000;
/// Connections served at once; one more is answered `503 unavailable` and
/// closed. Above `swoosh bench --clients` (at most 1,024), below the
/// systemd units' `LimitNOFILE` (65,536).
pub const CONNECTIONS_MAX: usize = 2_048;
/// Connections over [`CONNECTIONS_MAX`] being answered `503` at once; past
/// it they are closed unanswered, so a flood cannot make the refusals
/// themselves unbounded work.
pub const REFUSALS_INFLIGHT_MAX: usize = 64;
/// Longest an over-cap connection is kept to be answered `503`.
pub const REFUSAL_MS_MAX: u64 = 1_000;
/// After SIGTERM: how long open requests may finish before their
/// connections are dropped and the WAL is flushed anyway. Far below the
/// systemd units' `TimeoutStopSec` (60 s), so SIGKILL never skips the flush.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;

/// `503` class of a node that gave up restarting its actors: it serves
/// nothing more until its process is started again.
pub const ERROR_GAVE_UP: &str = "gave_up";
/// `503` class of a node that is shutting down.
pub const ERROR_SHUTTING_DOWN: &str = "shutting_down";
/// `503` class of a process still recovering its state from the log after
/// a start: nothing was done with the request; retry after its hint
/// (`crate::recovering`).
pub const ERROR_RECOVERING: &str = "recovering";

/// Whether a `503` of class `error` lasts until the node's process is
/// started again. Such a `503` carries no `retry_after_ms` and no
/// `Retry-After`: backing off against it only delays the operator.
pub fn unavailable_for_good(error: &str) -> bool {
    error == ERROR_GAVE_UP || error == ERROR_SHUTTING_DOWN
}

/// `202` reply: the proposal is durable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AcceptedReply {
    pub index: u64,
    pub transition: String,
    /// `blake3:<hex>` of the project's state after the transition.
    pub state_post_hash: String,
    /// `bubble://dr/<hex>`: the decision record's address.
    pub decision: String,
    /// `blake3:<hex>` of the decision record.
    pub decision_hash: String,
    /// True when this repeats an accepted proposal (its original outcome).
    pub duplicate: bool,
}

/// Every non-2xx reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
pub struct ErrorBody {
    /// Machine-readable class: `malformed`, `unknown_transition`, `guard`,
    /// `bad_signature`, `unknown_signer`, `forbidden`, `stale_hash`,
    /// `idem_conflict`, `hlc_order`, `timeout`, `too_large`, `backpressure`,
    /// `unavailable` (503, passing: retry after `retry_after_ms`),
    /// `recovering` (503 while the process replays its log after a start;
    /// nothing was done with the request: retry after `retry_after_ms`),
    /// `gave_up` and `shutting_down` (503 until the node's process is
    /// started again: no `retry_after_ms`), `not_leader`, `not_found`,
    /// `method_not_allowed`, `storage`.
    pub error: String,
    /// A sentence saying what was wrong and what to do.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub guard: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub reasons: Vec<String>,
    /// The JSON field at fault, for malformed bodies.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub head_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hlc_last: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub retry_after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub leader: Option<String>,
}

/// `GET /state` reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StateReply {
    pub project: String,
    /// WAL index of the durable version read.
    pub index: u64,
    /// `blake3:<hex>`: the project's HEAD, to put in `current_state_hash`.
    pub hash: String,
    /// The requested sections of the state document.
    #[schema(value_type = Object)]
    pub projection: BTreeMap<String, serde_json::Value>,
}

/// `GET /health` reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HealthReply {
    /// `ok`; `recovering` (503: the process is replaying its log after a
    /// start, see `recovery`, or the leader is restarting its actors);
    /// `stopping`, `failed` (503: it gave up restarting its actors); a
    /// follower's `disconnected` (200) and `halted` (503).
    pub status: String,
    pub role: String,
    pub consensus: String,
    pub index: u64,
    pub root_hash: Option<String>,
    #[serde(rename = "lastSnapshotHLC")]
    pub last_snapshot_hlc: Option<String>,
    pub last_snapshot_index: Option<u64>,
    #[serde(rename = "walLag")]
    pub wal_lag: u64,
    pub inflight: usize,
    pub restarts: u64,
    pub genesis_hash: String,
    pub cluster_id: String,
    /// The leader's view of each follower in genesis (empty on a node that
    /// does not replicate).
    #[serde(default)]
    pub followers: Vec<FollowerReply>,
    /// Only while the process recovers its state after a start (`status`
    /// `recovering`, nothing else served yet; `index` is 0 until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryReply>,
}

impl From<swoosh_actors::RecoveryView> for RecoveryReply {
    fn from(r: swoosh_actors::RecoveryView) -> Self {
        RecoveryReply {
            phase: r.phase.into(),
            done: r.done,
            total: r.total,
            seconds: r.seconds,
        }
    }
}

/// The progress of a start-up recovery, in `GET /health`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecoveryReply {
    /// `starting`, `snapshots` (checking them, newest first), `replay`
    /// (the WAL after the snapshot, through the reducer) or `reindex`
    /// (rebuilding the derived indexes from the log).
    pub phase: String,
    /// Snapshots checked, or records replayed.
    pub done: u64,
    /// Of how many.
    pub total: u64,
    /// Since the recovery began.
    pub seconds: f64,
}

/// One follower in the leader's `GET /health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FollowerReply {
    pub name: String,
    pub key: String,
    pub connected: bool,
    /// From the follower's last status report.
    pub applied_index: Option<u64>,
    /// Leader's published index minus `applied_index`.
    pub lag_records: Option<u64>,
    pub last_report_ms_ago: Option<u64>,
    /// The follower stopped applying (divergence or a failed write): an alarm.
    pub halted: bool,
}

/// One attention item: a fingerprinted pattern of operational events and
/// why it deserves (or no longer deserves) an operator's eyes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttentionItem {
    /// `fp:<16 hex>`: kind plus normalized reason (volatile fields masked).
    pub fingerprint: String,
    /// Event kind, e.g. `stale_hash`, `rejected`, `quorum_lost`.
    pub kind: String,
    /// `ignore-fast`, `background`, `watch`, `investigate` or `promote`.
    pub band: String,
    /// 0..=4 (the band as a number).
    pub level: u8,
    /// The highest band this pattern ever reached.
    pub peak_band: String,
    /// What is happening.
    pub what: String,
    /// Why it matters, with the factors that raised or lowered it.
    pub why: String,
    /// How often and where, in one line.
    pub how_often: String,
    pub count: u64,
    /// Runs of occurrences separated by a quiet gap.
    pub episodes: u64,
    /// Windows in which it ran at several times its usual rate.
    pub bursts: u64,
    /// Wall time of the first and the last occurrence, ms.
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Distinct projects, signers and peers it was seen for (bounded).
    pub projects: Vec<String>,
    pub signers: Vec<String>,
    pub peers: Vec<String>,
    /// Seen in an earlier node lifetime (before a restart).
    pub seen_before: bool,
    /// Node lifetimes it occurred in.
    pub sessions: u64,
    /// Times it was followed by its recovery.
    pub heals: u64,
    /// A failure still waiting for its recovery.
    pub open: bool,
    /// What to check next.
    pub next: String,
    /// `+1 recurrence: …`, `-1 self_heal: …`: how the band was reached.
    pub factors: Vec<String>,
    /// The latest raw detail.
    pub example: String,
}

/// `GET /attention` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AttentionReply {
    /// The node's wall time of this digest, ms.
    pub now_ms: u64,
    /// Node lifetimes the scorer's memory has lived through.
    pub session: u64,
    /// Events observed, all time (survives restarts).
    pub observed: u64,
    /// Fingerprints tracked now (bounded).
    pub tracked: u64,
    /// Fingerprints evicted to stay within the bound.
    pub evicted: u64,
    /// Tracked fingerprints per band name.
    pub by_band: BTreeMap<String, u64>,
    /// The lowest band listed in `items`.
    pub min_band: String,
    /// Items at or above `min_band`, most important first.
    pub items: Vec<AttentionItem>,
    /// Operational events received since this node started, by kind.
    pub counts: BTreeMap<String, u64>,
    /// Where the memory is persisted, if it is.
    pub memory_file: Option<String>,
    pub saved_at_ms: Option<u64>,
    /// What happened to the memory file at start.
    pub memory_note: String,
}

/// The body of `POST /transition` (documentation schema; the server parses
/// it into `swoosh_core::Proposal`). See docs/api.md and docs/wire-format.md.
///
/// Optional fields may be omitted but are never `null`: the server fills
/// an omitted one with its default and refuses a `null`, so none of them
/// is an `Option` here (an `Option` would document them as nullable).
#[allow(dead_code)]
#[derive(ToSchema)]
// The server refuses unknown fields (`400 malformed`): documented as
// `additionalProperties: false` (utoipa reads this serde attribute).
#[serde(deny_unknown_fields)]
pub struct ProposalSchema {
    /// Project instance, `[a-z0-9._-]{1,64}`; default `default`.
    #[schema(required = false, default = "default")]
    pub project: String,
    /// Transition name from `swoosh statechart`, e.g. `Council_QuorumCert`.
    pub transition: String,
    /// The project's HEAD, `blake3:<hex>` (from `GET /state`).
    pub current_state_hash: String,
    /// The transition's inputs (JSON object; integers only, no floats);
    /// default `{}`.
    #[schema(value_type = Object, required = false, default = json!({}))]
    pub inputs: serde_json::Value,
    /// `blake3:<hex>` of the canonical CBOR encoding of `inputs`.
    pub inputs_hash: String,
    /// `hmmm:pubkey:<64 hex>`.
    pub signer: String,
    /// Exactly-once key, e.g. `goalId:beatIndex:opClass:uuid`.
    pub idem_key: String,
    /// `YYYY-MM-DDTHH:MM:SS.mmm+00:00#counter`.
    pub hlc: String,
    /// `backbeat:W-<beat>-<phase>` for time-gated transitions; default `""`.
    #[schema(required = false, default = "")]
    pub window_id: String,
    /// `ucxl://…` or `bubble://…` addresses; default `[]`.
    #[schema(required = false, default = json!([]))]
    pub evidence: Vec<String>,
    /// ed25519 signature (128 hex) over "SWOOSH-PROPOSAL-v1\0" || canonical CBOR of the proposal without `signature`.
    pub signature: String,
}
