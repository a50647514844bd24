//! The pure reducer: (node state, proposal, leader-supplied time) → outcome
//! plus the effects the runtime must carry out. It performs no I/O, reads no
//! clock and draws no randomness; the leader, a follower, the replay tool and
//! the simulator all run this same function and get the same hashes.

// Rejections are the cold path and travel by value to HTTP replies; boxing
// them would only add an allocation to every refusal.
#![allow(clippy::result_large_err)]

use crate::facts::{Check, Finding, Pins, PolicyRule, Probe, Resources, RosterEntry, Vote};
use crate::guards::{self, GuardCtx, Verify};
use crate::hash::Hash;
use crate::hlc::{order_key_cmp_ids, Hlc};
use crate::proposal::Proposal;
use crate::record::{DecisionRecord, DecisionView, GuardOutcome, WalRecord, DECISION_KIND};
use crate::sig::SignerId;
use crate::state::{
    HashMemo, IdemEntry, LicenseStatus, NodeState, OrderKey, ProjectEntry, ProjectState,
};
use crate::statechart::{self, Region, Role, TransitionSpec, AUTOMATIC};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;

pub const LIST_ITEMS_MAX: usize = 256;
pub use crate::state::{IDEM_EVICT_BATCH, IDEM_KEYS_PER_PROJECT_MAX, IDEM_KEYS_TOTAL_MAX};
pub const TEXT_BYTES_MAX: usize = 1024;
pub const EXECUTION_EVIDENCE_MAX: usize = 256;
/// How far above the last indexed version `Ingestion_CorpusBuilt` may go
/// in one build (admission only). Versions only go up and nothing resets
/// them, so one unbounded jump (to `u64::MAX`) would refuse every later
/// build of the project for good. 2^32 leaves at least 2^32 further builds
/// before the version space could run out (over a century at one build a
/// second), and still admits the schemes index builders use for a first
/// version: counters, dates (`20260101`, `2026010112`) and Unix seconds.
pub const CORPUS_VERSION_STEP_MAX: u64 = 1 << 32;
/// Largest canonical encoding of a WAL record (the storage crate's
/// `WAL_RECORD_BYTES_MAX` is this constant).
pub const RECORD_BYTES_MAX: usize = 1 << 20;
/// Largest canonical encoding of a decision record admitted: the store
/// bounds the signed document around it at 1 MiB (`DECISION_BYTES_MAX`)
/// and the signature envelope takes the rest.
pub const DECISION_RECORD_BYTES_MAX: usize = (1 << 20) - 4096;

/// What the leader hands the reducer alongside a proposal.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    /// Leader wall time (ms since the epoch). Replay passes the record's.
    pub now_ms: u64,
    pub verify: Verify,
    /// Emit `ScheduleSnapshot` every this many records (0 = never by count).
    pub snapshot_every: u64,
}

/// Why a proposal was refused. `kind` decides the HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectKind {
    /// 400: a field is malformed (the `guard` names the field).
    Malformed,
    /// 400: no such transition.
    UnknownTransition,
    /// 400: a guard failed.
    Guard,
    /// 401: the signature does not verify.
    BadSignature,
    /// 401: the signer is not in the roster.
    UnknownSigner,
    /// 403: the signer lacks a role the transition needs.
    Forbidden,
    /// 409: `current_state_hash` is not HEAD.
    StaleHash,
    /// 409: same idempotency key, different content.
    IdemConflict,
    /// 409: the HLC is not after the last applied one.
    HlcOrder,
}

impl RejectKind {
    /// The name clients and metrics see: the `error` field of a refusal's
    /// HTTP body and the `kind` label of `swoosh_rejected_total`.
    pub fn name(self) -> &'static str {
        match self {
            RejectKind::Malformed => "malformed",
            RejectKind::UnknownTransition => "unknown_transition",
            RejectKind::Guard => "guard",
            RejectKind::BadSignature => "bad_signature",
            RejectKind::UnknownSigner => "unknown_signer",
            RejectKind::Forbidden => "forbidden",
            RejectKind::StaleHash => "stale_hash",
            RejectKind::IdemConflict => "idem_conflict",
            RejectKind::HlcOrder => "hlc_order",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            RejectKind::Malformed | RejectKind::UnknownTransition | RejectKind::Guard => 400,
            RejectKind::BadSignature | RejectKind::UnknownSigner => 401,
            RejectKind::Forbidden => 403,
            RejectKind::StaleHash | RejectKind::IdemConflict | RejectKind::HlcOrder => 409,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub kind: RejectKind,
    /// The failing check (a guard name, an always-guard, or `inputs.<field>`).
    pub guard: String,
    pub reasons: Vec<String>,
    pub head_hash: Option<Hash>,
    pub hlc_last: Option<Hlc>,
    pub retry_after_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    pub record: WalRecord,
    pub record_hash: Hash,
    /// The record's canonical encoding, the bytes `record_hash` hashes, when
    /// the reducer encoded the record itself (`step`); `None` when its
    /// caller supplied the hash (replay). The WAL writes these bytes instead
    /// of encoding the record a second time.
    pub record_bytes: Option<Vec<u8>>,
    /// The content hash of the proposal the record was accepted from.
    pub content_hash: Hash,
    pub decision: DecisionRecord,
    pub decision_hash: Hash,
    /// The decision record's canonical encoding, the bytes `decision_hash`
    /// hashes, when the record is kept (`step`); the leader signs and stores
    /// these bytes instead of encoding the record again.
    pub decision_bytes: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Accepted(Box<Accepted>),
    /// A repeat of an accepted proposal: the original outcome, nothing applied.
    Duplicate(IdemEntry),
    Rejected(Rejection),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotReason {
    Reverb,
    Interval,
}

/// An operational event for the attention scorer (never replicated state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpEvent {
    pub kind: String,
    pub project: String,
    pub transition: String,
    pub signer: String,
    pub guard: Option<String>,
    pub detail: String,
}

/// Work for the runtime, in the order it must be done.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Append to the WAL; the reply may only go out once this is durable.
    AppendWal {
        index: u64,
        record_hash: Hash,
    },
    StoreDecision {
        address: Hash,
    },
    /// Reply to the proposer (after durability for accepted proposals).
    Reply {
        status: u16,
    },
    ScheduleSnapshot {
        reason: SnapshotReason,
    },
    Emit(OpEvent),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub outcome: Outcome,
    pub effects: Vec<Effect>,
}

fn reject(kind: RejectKind, guard: &str, reasons: Vec<String>) -> Rejection {
    Rejection {
        kind,
        guard: guard.to_string(),
        reasons,
        head_hash: None,
        hlc_last: None,
        retry_after_ms: None,
    }
}

fn event(kind: &str, p: &Proposal, guard: Option<&str>, detail: String) -> OpEvent {
    OpEvent {
        kind: kind.to_string(),
        project: p.project.clone(),
        transition: p.transition.clone(),
        signer: p.signer.to_string(),
        guard: guard.map(str::to_string),
        detail,
    }
}

/// Apply one proposal to the node. On acceptance the node state advances
/// (index, chain head, project document, idempotency index); otherwise it is
/// left untouched.
pub fn step(node: &mut NodeState, p: &Proposal, ctx: &Ctx) -> Step {
    step_recalled(node, p, ctx, None)
}

/// [`step`], for a node that also keeps a durable index of every
/// idempotency key it ever accepted (the WAL's). `recalled` is that index's
/// entry for `(p.project, p.idem_key)`, looked up by the caller when the
/// key is not in the node state's bounded window: a repeat of a proposal
/// that aged out of the window then still gets its original outcome, and the
/// same key with other content still gets an idempotency conflict, in the
/// same order of checks as a key in the window.
///
/// Deterministic given the WAL: the durable index holds exactly the keys of
/// the records before this one. Replay never needs it: every record in a
/// log was new when it was accepted.
pub fn step_recalled(
    node: &mut NodeState,
    p: &Proposal,
    ctx: &Ctx,
    recalled: Option<&IdemEntry>,
) -> Step {
    match evaluate(node, p, ctx, None, recalled, Judged::Admission) {
        Err(r) => rejected(p, r),
        Ok(Eval::Duplicate(e)) => {
            let ev = event("duplicate", p, None, format!("repeat of index {}", e.index));
            Step {
                effects: vec![Effect::Reply { status: 202 }, Effect::Emit(ev)],
                outcome: Outcome::Duplicate(e),
            }
        }
        Ok(Eval::Apply(plan)) => commit(node, p, ctx, *plan),
    }
}

/// The step of a refused proposal: its reply and its operational event.
fn rejected(p: &Proposal, r: Rejection) -> Step {
    let kind = match r.kind {
        RejectKind::StaleHash => "stale_hash",
        RejectKind::IdemConflict => "idem_conflict",
        RejectKind::BadSignature | RejectKind::UnknownSigner => "auth_failure",
        _ => "rejected",
    };
    let ev = event(kind, p, Some(&r.guard), r.reasons.join("; "));
    Step {
        effects: vec![
            Effect::Reply {
                status: r.kind.http_status(),
            },
            Effect::Emit(ev),
        ],
        outcome: Outcome::Rejected(r),
    }
}

/// The hash of a project's post-state, reusing the section encodings memoized
/// for that project (a project seen for the first time gets a fresh memo,
/// handed to `install` through `fresh`).
fn post_hash(
    node: &mut NodeState,
    project: &str,
    post: &ProjectState,
    fresh: &mut HashMemo,
) -> Hash {
    match node.projects.get_mut(project) {
        Some(e) => post.hash_memo(&mut e.memo),
        None => post.hash_memo(fresh),
    }
}

enum Eval {
    Duplicate(IdemEntry),
    Apply(Box<Plan>),
}

struct Plan {
    spec: &'static TransitionSpec,
    /// The signer's role names and the from-region's state, read from the
    /// pre-state (which the plan does not keep: it stays in the node).
    roles: Vec<String>,
    from_state: String,
    pre_hash: Hash,
    post: ProjectState,
    outcomes: Vec<GuardOutcome>,
    content_hash: Hash,
    events: Vec<OpEvent>,
}

fn shape_rejection(e: crate::proposal::ProposalError) -> Rejection {
    let field = e
        .to_string()
        .split('`')
        .nth(1)
        .unwrap_or("proposal")
        .to_string();
    reject(RejectKind::Malformed, &field, vec![e.to_string()])
}

/// Whether `key` has the exact form of an idempotency key the leader
/// derives for its own proposals: `shhh-quarantine:<64 hex>` (a quarantine)
/// or `<project>:<digits>:Council_QuorumCert|Council_ReElect:council-epoch-<digits>`
/// (a council certificate). Only these: a client's own key (the CLI's
/// default starts with the project id, which may be `shhh-…`) is not one.
pub fn reserved_idem_key(key: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(h) = key.strip_prefix("shhh-quarantine:") {
        return h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    }
    let Some((head, epoch)) = key.rsplit_once(":council-epoch-") else {
        return false;
    };
    let mut parts = head.rsplitn(3, ':');
    let (transition, applied) = (parts.next(), parts.next());
    digits(epoch)
        && matches!(transition, Some("Council_QuorumCert" | "Council_ReElect"))
        && applied.is_some_and(digits)
        && parts.next().is_some()
}

fn content_rejection(e: crate::cbor::CanonicalError) -> Rejection {
    reject(RejectKind::Malformed, "inputs", vec![e.to_string()])
}

/// `known`: the proposal's content hash, when [`prepare_record`] already
/// checked its shape and computed it (those depend on the proposal alone).
/// Where a proposal is judged: admitted now, or replayed from a log.
///
/// Rules that only refuse (never change what an accepted proposal does)
/// and were added after logs could hold records they would refuse apply at
/// admission only: a refused proposal never reaches a log, so a replay
/// computes the same state without them, and a log written by an earlier
/// build (or by a leader not yet upgraded) still replays. They are: the
/// HLC's lag behind the leader's clock; `Council_ToolingLost` with
/// invalid probes beside a failing one; a BACKBEAT window that is not open,
/// or is another window, at the leader's clock (`guards::backbeat`); a
/// source without a valid RFC 3986 scheme, or whose scheme a `source:` rule
/// denies in another case (`guards::policy_sources`); a probe list naming a
/// tool twice, or a probe older than the one recorded for its tool
/// (`Council_McpGreen`, `Council_ToolingLost`); an index version more than
/// `CORPUS_VERSION_STEP_MAX` above the last (`Ingestion_CorpusBuilt`);
/// `Execution_Submit` while the council holds no quorum certificate or is
/// not READY (`guards::approvals`); a candidate list naming a signer twice
/// (`Council_ProfilesLoaded`); a policy rule beyond
/// `state::validate_policy_rule`'s bounds (`Policy_Update`); a findings
/// list holding one finding twice (`Ingestion_SchemaOk`,
/// `Ingestion_PolicyViolation`); breach reasons above
/// `guards::BREACH_REASONS_BYTES_MAX` (`guards::policy_breach`); a `null`
/// anywhere in `inputs` (an optional field's second spelling); a new
/// `idem_key` that is not printable ASCII (its `{:?}` in the accepted
/// outcome must not depend on the Rust release); a new `idem_key` of the
/// exact forms the leader's own proposals use (`reserved_idem_key`) from another signer; a list item's text over
/// `TEXT_BYTES_MAX` (finding codes and details, roles, tools, assets, check
/// names, probe tools and versions: `check_item_texts`); and a finding code
/// that differs from a deny code only in case, spaces or `-`
/// (`check_finding_codes`). A record
/// or decision record above `RECORD_BYTES_MAX` / `DECISION_RECORD_BYTES_MAX`
/// is refused by the live step only (`commit`; the store bounds what replay
/// reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Judged {
    Admission,
    Replay,
}

fn evaluate(
    node: &NodeState,
    p: &Proposal,
    ctx: &Ctx,
    known: Option<Hash>,
    recalled: Option<&IdemEntry>,
    judged: Judged,
) -> Result<Eval, Rejection> {
    // shape
    if known.is_none() {
        p.check_shape().map_err(shape_rejection)?;
    }
    let spec = statechart::lookup(&p.transition).ok_or_else(|| {
        reject(
            RejectKind::UnknownTransition,
            "transition",
            vec![format!(
                "unknown transition {:?}; `swoosh statechart` lists the {} transitions of machine {}",
                crate::hash::truncate(&p.transition),
                statechart::TRANSITIONS.len(),
                statechart::MACHINE_VERSION
            )],
        )
    })?;
    let pre = node.project(&p.project);
    let mut outcomes = Vec::with_capacity(8 + spec.guards.len());
    outcomes.push(guards::outcome(
        "shape",
        true,
        vec!["fields well-formed; inputs_hash matches the canonical inputs".into()],
    ));

    // signer and signature
    let roles = pre.roles_of(&p.signer).ok_or_else(|| {
        reject(
            RejectKind::UnknownSigner,
            "signature",
            vec![format!("signer {} is not in project {:?}'s roster; ask an admin to add it (Boot_SetRoster) or sign with a rostered key", p.signer, p.project)],
        )
    })?;
    if ctx.verify == Verify::Full {
        if let Err(e) = p.verify_signature() {
            return Err(reject(
                RejectKind::BadSignature,
                "signature",
                vec![format!("{e}; sign the canonical CBOR of the proposal without `signature`, prefixed by \"SWOOSH-PROPOSAL-v1\\0\"")],
            ));
        }
    }
    outcomes.push(guards::outcome(
        "signature",
        true,
        vec![format!(
            "ed25519 signature of {} over the canonical proposal body",
            p.signer
        )],
    ));
    if !spec.roles.iter().any(|r| roles.contains(r)) {
        let need: Vec<&str> = spec.roles.iter().map(|r| r.name()).collect();
        let have: Vec<&str> = roles.iter().map(|r| r.name()).collect();
        return Err(reject(
            RejectKind::Forbidden,
            "role",
            vec![format!(
                "{} needs one of the roles [{}]; signer {} has [{}]",
                spec.name,
                need.join(", "),
                p.signer,
                have.join(", ")
            )],
        ));
    }
    outcomes.push(guards::outcome(
        "role",
        true,
        vec![format!(
            "signer holds {}",
            roles
                .iter()
                .filter(|r| spec.roles.contains(r))
                .map(|r| r.name())
                .collect::<Vec<_>>()
                .join(", ")
        )],
    ));

    // idempotency (before the state-hash check: a repeat carries an old hash)
    let content_hash = match known {
        Some(h) => h,
        None => p.content_hash().map_err(content_rejection)?,
    };
    let windowed = node.idem.get(&p.project).and_then(|m| m.get(&p.idem_key));
    if let Some(prev) = windowed.or(recalled) {
        if prev.content_hash == content_hash {
            return Ok(Eval::Duplicate(prev.clone()));
        }
        return Err(reject(
            RejectKind::IdemConflict,
            "idempotency",
            vec![format!(
                "idem_key {:?} was already used at index {} for {} with different content; use a new idem_key for a new operation",
                p.idem_key, prev.index, prev.transition
            )],
        ));
    }
    // At admission only (see `Judged`): the accepted outcome below quotes
    // the key with `{:?}`, whose escaping of non-ASCII text follows the
    // standard library's Unicode tables, which change between Rust
    // releases; a key with a character one release escapes and another
    // prints would give a binary built with the other release a different
    // decision hash for the same record (a halted follower, a refused
    // recovery). The escaping of printable ASCII never changes. Logs an
    // earlier build wrote may hold other keys, and replay as they were.
    if judged == Judged::Admission {
        if let Some(c) = p.idem_key.chars().find(|c| !(' '..='~').contains(c)) {
            return Err(reject(
                RejectKind::Malformed,
                "idem_key",
                vec![format!(
                    "idem_key holds {c:?} (U+{:04X}); an idem_key is printable ASCII (space to '~'), e.g. goalId:beatIndex:opClass:uuid: spell other text in ASCII (percent-encode it, or use its hash)",
                    c as u32
                )],
            ));
        }
        // At admission only (see `Judged`): the leader's own proposals (a
        // quarantine, a council certificate) use keys derived from what
        // anyone can see; a signer who took such a key first would keep the
        // leader's proposal out (an idempotency conflict, dropped).
        if p.signer != node.genesis.leader && reserved_idem_key(&p.idem_key) {
            return Err(reject(
                RejectKind::Malformed,
                "idem_key",
                vec![format!(
                    "idem_key {:?} has the form of the leader's own proposals (`shhh-quarantine:<hash>` or `<project>:<n>:Council_QuorumCert|Council_ReElect:council-epoch-<n>`), which only the leader may use; choose another key",
                    crate::hash::truncate(&p.idem_key)
                )],
            ));
        }
        // At admission only (see `Judged`): an optional field has two
        // spellings to serde, absent and `null`, which decode to the same
        // fact but hash differently (inputs are hashed as sent). One
        // certificate could then be accepted under two inputs hashes, and a
        // client resending it in the other spelling would meet an
        // idempotency conflict. No input field takes `null` as a value, so
        // the canonical spelling is "absent".
        let mut path = String::from("inputs");
        if find_null(&p.inputs, &mut path) {
            // The guard is the fixed name `inputs` (the path, made of the
            // client's own keys, is in the reason): a guard name becomes a
            // metric label and an attention fingerprint, which must not
            // grow with what clients send.
            return Err(reject(
                RejectKind::Malformed,
                "inputs",
                vec![format!(
                    "{path} is null; omit an optional field instead of sending null (inputs are hashed as sent, and an absent field is the one spelling)"
                )],
            ));
        }
    }
    outcomes.push(guards::outcome(
        "idempotency",
        true,
        vec![format!(
            "idem_key {:?} is new for project {:?}",
            p.idem_key, p.project
        )],
    ));

    // optimistic concurrency
    let pre_hash = node.project_hash(&p.project);
    if p.current_state_hash != pre_hash {
        let mut r = reject(
            RejectKind::StaleHash,
            "state_hash",
            vec![format!(
                "stale state hash: HEAD of project {:?} is {pre_hash}, the proposal names {}; re-read with `swoosh state` and resubmit",
                p.project, p.current_state_hash
            )],
        );
        r.head_hash = Some(pre_hash);
        r.hlc_last = pre.hlc_last;
        return Err(r);
    }
    outcomes.push(guards::outcome(
        "state_hash",
        true,
        vec![format!("current_state_hash is HEAD {pre_hash}")],
    ));

    // HLC order and offset
    if let (Some(last), Some(ord)) = (pre.hlc_last, pre.order_last.as_ref()) {
        let c = order_key_cmp_ids(
            (&p.hlc, &p.signer, &p.idem_key),
            (&last, &ord.signer, &ord.idem_key),
        );
        if c != Ordering::Greater {
            let mut r = reject(
                RejectKind::HlcOrder,
                "hlc",
                vec![format!(
                    "hlc {} is not after the last applied {last} (ties break by signer, then idem_key); take a fresh HLC above it and resubmit",
                    p.hlc
                )],
            );
            r.head_hash = Some(pre_hash);
            r.hlc_last = Some(last);
            return Err(r);
        }
    }
    let ahead = p.hlc.ahead_of_ms(ctx.now_ms);
    if ahead > pre.meta.hlc_max_offset_ms {
        let offset = pre.meta.hlc_max_offset_ms;
        // When the project's last HLC is itself past the offset, no
        // proposal can both follow it and stay within the offset: the
        // leader's clock is behind its own log, and blaming the proposer's
        // clock sends the operator the wrong way.
        let why = match pre.hlc_last {
            Some(last) if last.ahead_of_ms(ctx.now_ms) > offset => format!(
                "the project's last applied HLC {last} is itself {} ms ahead of the leader's clock: the leader's clock is behind its own log (stepped back, or it ran ahead when those records were accepted). No proposal can follow {last} within the offset until the leader's clock reaches {}: correct the leader's clock if it is wrong, else wait",
                last.ahead_of_ms(ctx.now_ms),
                crate::hlc::format_wall_ms(last.wall_ms.saturating_sub(offset))
            ),
            _ => "check the proposer's clock".to_string(),
        };
        return Err(reject(
            RejectKind::Guard,
            "hlc",
            vec![format!(
                "hlc {} runs {ahead} ms ahead of the leader's clock ({}); the maximum offset is {offset} ms: {why}",
                p.hlc,
                crate::hlc::format_wall_ms(ctx.now_ms),
            )],
        ));
    }
    // Licenses, BACKBEAT windows and probe freshness are judged at the
    // proposal's HLC: one allowed to lag the leader's clock without bound
    // would let a proposer pick the instant it is judged at (a license long
    // expired, a REVERB window long closed). 409 hlc_order, like an HLC at
    // or before the last applied one: take a fresh HLC and resubmit.
    let behind = ctx.now_ms.saturating_sub(p.hlc.wall_ms);
    if judged == Judged::Admission && behind > pre.meta.hlc_max_offset_ms {
        let mut r = reject(
            RejectKind::HlcOrder,
            "hlc",
            vec![format!(
                "hlc {} runs {behind} ms behind the leader's clock ({}); the maximum offset is {} ms either way, as licenses and BACKBEAT windows are judged at the proposal's HLC: take a fresh HLC and resubmit",
                p.hlc,
                crate::hlc::format_wall_ms(ctx.now_ms),
                pre.meta.hlc_max_offset_ms
            )],
        );
        r.head_hash = Some(pre_hash);
        r.hlc_last = pre.hlc_last;
        return Err(r);
    }
    outcomes.push(guards::outcome(
        "hlc",
        true,
        vec![format!(
            "hlc {} follows {} and is within {} ms of the leader clock",
            p.hlc,
            pre.hlc_last.map_or("nothing".into(), |h| h.to_string()),
            pre.meta.hlc_max_offset_ms
        )],
    ));

    // project status
    let status_fail = |why: String| Err(reject(RejectKind::Guard, "project_status", vec![why]));
    if pre.meta.phase == "TERMINATED" {
        return status_fail(format!(
            "project {:?} is TERMINATED ({:?}); nothing leaves TERMINATED: start a new project id",
            p.project,
            pre.meta.terminated_rationale.clone().unwrap_or_default()
        ));
    }
    if pre.policy.phase == "QUARANTINED" && !statechart::allowed_in_quarantine(spec.name) {
        return status_fail(format!(
            "project {:?} is QUARANTINED ({:?}); only an admin-signed Policy_Release or a Policy_Update leaves it",
            p.project,
            pre.policy.rationale.clone().unwrap_or_default()
        ));
    }
    if pre.control.phase == "PAUSED" && !statechart::allowed_while_paused(spec.name) {
        return status_fail(format!(
            "project {:?} is PAUSED ({:?}); propose Control_Resume first",
            p.project,
            pre.control.reason.clone().unwrap_or_default()
        ));
    }
    if pre.control.phase == "RECOVERY" && !statechart::allowed_in_recovery(spec.name) {
        return status_fail(format!(
            "project {:?} is in RECOVERY ({:?}); restore the council quorum and propose Control_Recovered first",
            p.project,
            pre.control.reason.clone().unwrap_or_default()
        ));
    }
    let active_needed = match spec.to.region {
        Region::Ingestion | Region::Council | Region::Environment => {
            Some(&["PROJECT_LIFECYCLE", "EXECUTION"][..])
        }
        Region::Execution => Some(&["EXECUTION"][..]),
        Region::Project if spec.name == "Project_EnterExecution" => {
            Some(&["PROJECT_LIFECYCLE"][..])
        }
        Region::Boot if spec.name == "Boot_ConfigOk" || spec.name == "Boot_Licensed" => {
            Some(&["BOOT"][..])
        }
        _ => None,
    };
    if let Some(phases) = active_needed {
        if !phases.contains(&pre.meta.phase.as_str()) {
            return status_fail(format!(
                "{} needs the project in {}; project {:?} is in {}",
                spec.name,
                phases.join(" or "),
                p.project,
                pre.meta.phase
            ));
        }
    }
    outcomes.push(guards::outcome(
        "project_status",
        true,
        vec![format!(
            "project {} is {}, Control {}, Policy {}",
            p.project, pre.meta.phase, pre.control.phase, pre.policy.phase
        )],
    ));

    // from-state
    let from_region = spec.from[0].region;
    let current = pre.region_state(from_region);
    if !spec.from.iter().any(|s| s.state == current) {
        let want: Vec<String> = spec.from.iter().map(|s| s.state.to_string()).collect();
        return Err(reject(
            RejectKind::Guard,
            "from_state",
            vec![format!(
                "{} needs {} in {}; it is in {current}",
                spec.name,
                from_region.name(),
                want.join(" or ")
            )],
        ));
    }
    outcomes.push(guards::outcome(
        "from_state",
        true,
        vec![format!("{} is {current}", from_region.name())],
    ));

    // transition guards and the state change
    let g = GuardCtx {
        state: &pre,
        proposal: p,
        verify: ctx.verify,
        admission: judged == Judged::Admission,
        now_ms: ctx.now_ms,
    };
    let mut post = ProjectState::clone(&pre);
    let mut events = vec![];
    transition(spec, &g, &mut post, &mut outcomes, &mut events)?;

    // bookkeeping every accepted transition does
    post.set_region_state(spec.to.region, spec.to.state);
    post.epoch.bump(spec.to.region);
    for a in spec.also {
        post.set_region_state(a.region, a.state);
        post.epoch.bump(a.region);
    }
    let touches_control =
        spec.to.region == Region::Control || spec.also.iter().any(|a| a.region == Region::Control);
    if !touches_control {
        if spec.name == "Boot_LicenseRefresh"
            && post.control.phase == "DEGRADED"
            && post.control.degraded_by_license
        {
            let auto = &AUTOMATIC[1];
            post.set_region_state(auto.to.region, auto.to.state);
            post.control.degraded_by_license = false;
            post.control.reason = None;
            post.epoch.bump(Region::Control);
            events.push(event(
                "license_restored",
                p,
                None,
                "license refreshed; Control back to NORMAL".into(),
            ));
        } else if spec.name != "Boot_LicenseRefresh"
            && post.control.phase == "NORMAL"
            && post.meta.phase != "TERMINATED"
        {
            if let guards::LicenseAt::Grace { grace_until_ms, .. } =
                guards::license_at(&post, &p.hlc)
            {
                let auto = &AUTOMATIC[0];
                post.set_region_state(auto.to.region, auto.to.state);
                post.control.degraded_by_license = true;
                post.control.reason = Some(format!(
                    "license grace until {}",
                    crate::hlc::format_wall_ms(grace_until_ms)
                ));
                post.epoch.bump(Region::Control);
                events.push(event(
                    "license_grace",
                    p,
                    Some("license"),
                    format!(
                        "license in grace until {}",
                        crate::hlc::format_wall_ms(grace_until_ms)
                    ),
                ));
            }
        }
    }
    post.hlc_last = Some(p.hlc);
    post.order_last = Some(OrderKey {
        signer: p.signer.clone(),
        idem_key: p.idem_key.clone(),
    });
    post.applied += 1;
    let roles: Vec<String> = roles.iter().map(|r| r.name().to_string()).collect();
    Ok(Eval::Apply(Box::new(Plan {
        spec,
        roles,
        from_state: current.to_string(),
        pre_hash,
        post,
        outcomes,
        content_hash,
        events,
    })))
}

/// `true` when `v` holds a `null`, with `path` left naming the first one
/// (depth is bounded by the shape check, `cbor::CBOR_DEPTH_MAX`).
fn find_null(v: &ciborium::value::Value, path: &mut String) -> bool {
    use ciborium::value::Value;
    match v {
        Value::Null => true,
        Value::Array(a) => a.iter().enumerate().any(|(i, x)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = find_null(x, path);
            if !found {
                path.truncate(len);
            }
            found
        }),
        Value::Map(m) => m.iter().any(|(k, x)| {
            let len = path.len();
            path.push('.');
            path.push_str(k.as_text().unwrap_or("?"));
            let found = find_null(x, path);
            if !found {
                path.truncate(len);
            }
            found
        }),
        _ => false,
    }
}

fn inputs<T: DeserializeOwned>(p: &Proposal) -> Result<T, Rejection> {
    p.inputs.deserialized::<T>().map_err(|e| {
        let ciborium::value::Error::Custom(why) = e;
        reject(
            RejectKind::Malformed,
            "inputs",
            vec![format!("inputs of {} do not match its schema: {why}; `swoosh statechart` lists each transition's input fields", p.transition)],
        )
    })
}

fn field_err(field: &str, why: String) -> Rejection {
    reject(RejectKind::Malformed, &format!("inputs.{field}"), vec![why])
}

fn check_list<T>(field: &str, v: &[T]) -> Result<(), Rejection> {
    if v.len() > LIST_ITEMS_MAX {
        return Err(field_err(
            field,
            format!(
                "inputs.{field} has {} items; at most {LIST_ITEMS_MAX} are allowed",
                v.len()
            ),
        ));
    }
    Ok(())
}

fn check_text(field: &str, s: &str) -> Result<(), Rejection> {
    if s.is_empty() || s.len() > TEXT_BYTES_MAX {
        return Err(field_err(
            field,
            format!("inputs.{field} must be 1..={TEXT_BYTES_MAX} bytes of text"),
        ));
    }
    Ok(())
}

/// At admission only (see `Judged`): each text item of a list input
/// (finding codes and details, council roles and tool names and versions,
/// environment assets, check names, probe tools and versions) is at most
/// [`TEXT_BYTES_MAX`] bytes, as every single text input already is. Only
/// the 64 KiB inputs bound them otherwise, and the state keeps them and
/// breach reasons and guard reasons quote them. Logs an earlier build
/// wrote may hold longer ones, and replay as they were accepted.
fn check_item_texts<'a>(
    g: &GuardCtx,
    field: &str,
    items: impl IntoIterator<Item = (String, &'a str)>,
) -> Result<(), Rejection> {
    if !g.admission {
        return Ok(());
    }
    for (path, text) in items {
        if text.len() > TEXT_BYTES_MAX {
            return Err(field_err(
                field,
                format!(
                    "inputs.{path} is {} bytes; each item's text is at most {TEXT_BYTES_MAX} bytes: shorten it",
                    text.len()
                ),
            ));
        }
    }
    Ok(())
}

/// A finding code as a reader would take it: trimmed, ASCII letters in
/// lower case, `-` and spaces as `_`.
fn code_key(code: &str) -> String {
    code.trim()
        .chars()
        .map(|c| match c {
            '-' | ' ' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// At admission only (see `Judged`): policy rules match finding codes
/// exactly, so `Secret-Leak` passes a rule that denies `secret_leak`; a
/// finding whose code differs from a deny code of the project's rules only
/// in case, spaces or `-` for `_` is refused, naming the code the rules
/// use, rather than let a breach through unnoticed. Exact matching is
/// unchanged (replay and every accepted record keep it).
fn check_finding_codes(g: &GuardCtx, findings: &[Finding]) -> Result<(), Rejection> {
    if !g.admission || findings.is_empty() {
        return Ok(());
    }
    // Built once per proposal: the rules may hold 256 × 64 deny codes.
    let mut exact = std::collections::BTreeSet::new();
    let mut near = BTreeMap::new();
    for r in &g.state.policy.rules {
        for d in &r.deny_codes {
            exact.insert(d.as_str());
            near.entry(code_key(d)).or_insert((r, d));
        }
    }
    for (i, f) in findings.iter().enumerate() {
        // A code some rule denies exactly is judged by that rule (and by
        // every rule spelling it so), whatever other rules spell.
        if exact.contains(f.code.as_str()) {
            continue;
        }
        if let Some((rule, denied)) = near.get(&code_key(&f.code)) {
            return Err(field_err(
                "findings",
                format!(
                    "inputs.findings[{i}].code {:?} differs from {:?}, which policy rule {:?} denies, only in case, spaces or '-': codes are matched exactly, so this finding would not be judged against the rule; send the code as the rules spell it",
                    crate::hash::truncate(&f.code),
                    crate::hash::truncate(denied),
                    crate::hash::truncate(&rule.id)
                ),
            ));
        }
    }
    Ok(())
}

fn finding_texts(findings: &[Finding]) -> impl Iterator<Item = (String, &str)> {
    findings.iter().enumerate().flat_map(|(i, f)| {
        [
            (format!("findings[{i}].code"), f.code.as_str()),
            (format!("findings[{i}].detail"), f.detail.as_str()),
        ]
    })
}

/// At admission only (see `Judged`): a findings list names each finding
/// (code and detail) once. A repeat adds nothing a worker could mean, and
/// each copy would repeat every breach reason it gives.
fn check_findings_once(g: &GuardCtx, findings: &[Finding]) -> Result<(), Rejection> {
    if !g.admission {
        return Ok(());
    }
    let mut seen = std::collections::BTreeSet::new();
    for f in findings {
        if !seen.insert(f) {
            return Err(field_err(
                "findings",
                format!(
                    "inputs.findings holds the finding {{code: {:?}, detail: {:?}}} twice: send each finding once",
                    crate::hash::truncate(&f.code),
                    crate::hash::truncate(&f.detail)
                ),
            ));
        }
    }
    Ok(())
}

fn guard_check(outcomes: &mut Vec<GuardOutcome>, o: GuardOutcome) -> Result<(), Rejection> {
    guard_check_retry(outcomes, o, None)
}

fn guard_check_retry(
    outcomes: &mut Vec<GuardOutcome>,
    o: GuardOutcome,
    retry: Option<u64>,
) -> Result<(), Rejection> {
    if o.ok {
        outcomes.push(o);
        Ok(())
    } else {
        let mut r = reject(RejectKind::Guard, &o.guard, o.reasons);
        r.retry_after_ms = retry;
        Err(r)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct In0 {}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InConfig {
    config_hash: Hash,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InLicense {
    license: crate::facts::LicenseToken,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InRoster {
    roster: Vec<RosterEntry>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InSources {
    sources: Vec<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InBytes {
    content_hash: Hash,
    bytes: u64,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InSchema {
    schema_hash: Hash,
    findings: Vec<Finding>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InFindings {
    findings: Vec<Finding>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InCorpus {
    index_hash: Hash,
    version: u64,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InReason {
    reason: String,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InRationale {
    rationale: String,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InProfiles {
    roles: Vec<String>,
    candidates: Vec<SignerId>,
    tools: BTreeMap<String, String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InElect {
    members: Vec<SignerId>,
    votes: Vec<Vote>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InProbes {
    probes: Vec<Probe>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InEject {
    member: SignerId,
    reason: String,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InCapacity {
    request: Resources,
    capacity: Resources,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InInstalled {
    assets: Vec<String>,
    env_hash: Hash,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InChecks {
    checks: Vec<Check>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InPins {
    pins: Pins,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InPlan {
    plan_hash: Hash,
    pins: Pins,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InWork {
    work_hash: Hash,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InReview {
    review_hash: Hash,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InSubmit {
    submission_hash: Hash,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InLost {
    reason: String,
    lost: Vec<SignerId>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InRules {
    rules: Vec<PolicyRule>,
}

fn license_status(t: &crate::facts::LicenseToken) -> LicenseStatus {
    LicenseStatus {
        token_hash: crate::hash::hash_of(t).expect("license tokens encode"),
        authority: t.body.authority.clone(),
        expires_at: t.body.expires_at,
        grace_ms: t.body.grace_ms,
    }
}

fn push_evidence(post: &mut ProjectState, p: &Proposal) {
    for e in &p.evidence {
        if post.execution.evidence.len() >= EXECUTION_EVIDENCE_MAX {
            post.execution.evidence.remove(0);
        }
        post.execution.evidence.push(e.clone());
    }
}

/// Run the transition's own guards and apply its data changes to `post`
/// (region state and epochs are set by the caller).
fn transition(
    spec: &'static TransitionSpec,
    g: &GuardCtx,
    post: &mut ProjectState,
    out: &mut Vec<GuardOutcome>,
    events: &mut Vec<OpEvent>,
) -> Result<(), Rejection> {
    let p = g.proposal;
    let lic = |out: &mut Vec<GuardOutcome>| guard_check(out, guards::license(g));
    match spec.name {
        "Boot_ConfigOk" => {
            let i: InConfig = inputs(p)?;
            post.boot.config_hash = Some(i.config_hash);
        }
        "Boot_Licensed" | "Boot_LicenseRefresh" => {
            let i: InLicense = inputs(p)?;
            guard_check(out, guards::license_token(g, &i.license))?;
            post.boot.license = Some(license_status(&i.license));
        }
        "Boot_SetRoster" => {
            let i: InRoster = inputs(p)?;
            check_list("roster", &i.roster)?;
            guard_check(out, guards::roster(g, &i.roster))?;
            let mut r = i.roster;
            r.sort_by(|a, b| a.key.cmp(&b.key));
            post.boot.identities = r;
        }
        "Ingestion_SourcesResolved" => {
            let i: InSources = inputs(p)?;
            check_list("sources", &i.sources)?;
            if i.sources.is_empty() {
                return Err(field_err(
                    "sources",
                    "inputs.sources must name at least one source".into(),
                ));
            }
            for s in &i.sources {
                check_text("sources", s)?;
            }
            lic(out)?;
            guard_check(out, guards::policy_sources(g, &i.sources))?;
            let mut s = i.sources;
            s.sort();
            s.dedup();
            post.ingestion.sources = s;
        }
        "Ingestion_BytesOk" => {
            let i: InBytes = inputs(p)?;
            lic(out)?;
            post.ingestion.content_hash = Some(i.content_hash);
            post.ingestion.bytes = i.bytes;
        }
        "Ingestion_SchemaOk" => {
            let i: InSchema = inputs(p)?;
            check_list("findings", &i.findings)?;
            lic(out)?;
            // A breach is refused as `policy` whatever else is wrong with the
            // list: that refusal is what makes the leader quarantine (with
            // `guards::quarantine_findings`, which keeps within the bounds
            // checked below).
            guard_check(out, guards::policy_findings(g, &i.findings))?;
            check_item_texts(g, "findings", finding_texts(&i.findings))?;
            check_finding_codes(g, &i.findings)?;
            check_findings_once(g, &i.findings)?;
            post.ingestion.schema_hash = Some(i.schema_hash);
            post.ingestion.findings = i.findings;
        }
        "Ingestion_PolicyViolation" => {
            let i: InFindings = inputs(p)?;
            check_list("findings", &i.findings)?;
            check_item_texts(g, "findings", finding_texts(&i.findings))?;
            check_finding_codes(g, &i.findings)?;
            check_findings_once(g, &i.findings)?;
            let o = guards::policy_breach(g, &i.findings);
            let rationale = o.reasons.join("; ");
            guard_check(out, o)?;
            post.policy.rationale = Some(rationale.clone());
            post.policy.findings = i.findings.clone();
            post.policy.quarantines += 1;
            post.ingestion.findings = i.findings;
            events.push(event("quarantine", p, Some("policy_breach"), rationale));
        }
        "Ingestion_CorpusBuilt" => {
            let i: InCorpus = inputs(p)?;
            let last = g.state.ingestion.version;
            if i.version <= last {
                return Err(field_err(
                    "version",
                    format!("a new index must carry a new version: {} is not above the last indexed version {last}", i.version),
                ));
            }
            // At admission only (see `Judged`).
            if g.admission && i.version > last.saturating_add(CORPUS_VERSION_STEP_MAX) {
                return Err(field_err(
                    "version",
                    format!(
                        "version {} jumps more than {CORPUS_VERSION_STEP_MAX} above the last indexed version {last}: versions only go up and are never reset, so such a jump could exhaust them; use a version from {} to {}",
                        i.version,
                        last + 1,
                        last.saturating_add(CORPUS_VERSION_STEP_MAX)
                    ),
                ));
            }
            lic(out)?;
            post.ingestion.index_hash = Some(i.index_hash);
            post.ingestion.version = i.version;
        }
        "Ingestion_RollbackIndex" => {
            let i: InReason = inputs(p)?;
            check_text("reason", &i.reason)?;
            lic(out)?;
            let ing = &mut post.ingestion;
            ing.content_hash = None;
            ing.index_hash = None;
            ing.schema_hash = None;
            ing.findings.clear();
            ing.sources.clear();
            ing.bytes = 0;
            ing.rollbacks += 1;
        }
        "Council_ProfilesLoaded" => {
            let i: InProfiles = inputs(p)?;
            check_list("roles", &i.roles)?;
            check_list("candidates", &i.candidates)?;
            check_list("tools", &i.tools.iter().collect::<Vec<_>>())?;
            check_item_texts(
                g,
                "roles",
                i.roles
                    .iter()
                    .enumerate()
                    .map(|(n, r)| (format!("roles[{n}]"), r.as_str())),
            )?;
            check_item_texts(
                g,
                "tools",
                i.tools.iter().flat_map(|(name, version)| {
                    let at = crate::hash::truncate(name);
                    [
                        (format!("tools (the name {at:?})"), name.as_str()),
                        (format!("tools[{at:?}] (its version)"), version.as_str()),
                    ]
                }),
            )?;
            for c in &i.candidates {
                if !g
                    .state
                    .roles_of(c)
                    .is_some_and(|r| r.contains(&Role::Council))
                {
                    return Err(field_err(
                        "candidates",
                        format!("candidate {c} is not a council member of the roster"),
                    ));
                }
            }
            // At admission only (see `Judged`): the threshold below counts
            // entries, and the state keeps the distinct ones, so a repeat
            // would pass it with too few candidates for any election.
            if g.admission {
                let mut seen = std::collections::BTreeSet::new();
                if let Some(c) = i.candidates.iter().find(|c| !seen.insert(*c)) {
                    let n = i.candidates.iter().filter(|x| *x == c).count();
                    return Err(field_err(
                        "candidates",
                        format!(
                            "inputs.candidates names {c} {n} times: list each council member once"
                        ),
                    ));
                }
            }
            if i.candidates.len() < g.state.council.quorum_threshold as usize {
                return Err(field_err(
                    "candidates",
                    format!(
                        "{} candidates cannot reach the quorum threshold {}",
                        i.candidates.len(),
                        g.state.council.quorum_threshold
                    ),
                ));
            }
            lic(out)?;
            let mut c = i.candidates;
            c.sort();
            c.dedup();
            post.council.roles = i.roles;
            post.council.candidates = c;
            post.council.tools = i.tools;
        }
        "Council_QuorumCert" | "Council_ReElect" => {
            let i: InElect = inputs(p)?;
            check_list("members", &i.members)?;
            check_list("votes", &i.votes)?;
            lic(out)?;
            guard_check(
                out,
                guards::quorum(g, &i.members, &i.votes, spec.name == "Council_ReElect"),
            )?;
            let mut m = i.members;
            m.sort();
            post.council.member_set_hash = Some(crate::facts::member_set_hash(&m));
            post.council.elected = m;
            post.council.quorum_cert = Some(guards::quorum_cert_hash(&i.votes));
            post.council.elections += 1;
        }
        "Council_McpGreen" | "Council_ToolingLost" => {
            let i: InProbes = inputs(p)?;
            check_list("probes", &i.probes)?;
            check_item_texts(
                g,
                "probes",
                i.probes.iter().enumerate().flat_map(|(n, pr)| {
                    [
                        (format!("probes[{n}].body.tool"), pr.body.tool.as_str()),
                        (
                            format!("probes[{n}].body.version"),
                            pr.body.version.as_str(),
                        ),
                    ]
                }),
            )?;
            if spec.name == "Council_McpGreen" {
                lic(out)?;
                guard_check(out, guards::mcp_green(g, &i.probes))?;
                // Green after a recorded failure (the council came back to
                // TOOLING_SYNC through Council_ToolingLost): the flap healed.
                let failed: Vec<&String> = g
                    .state
                    .council
                    .tooling
                    .iter()
                    .filter(|(tool, t)| {
                        !t.reachable || g.state.council.tools.get(*tool) != Some(&t.version)
                    })
                    .map(|(tool, _)| tool)
                    .collect();
                if !failed.is_empty() {
                    let tools: Vec<&str> = failed.iter().map(|t| t.as_str()).collect();
                    events.push(event(
                        "tool_recovered",
                        p,
                        Some("mcp_health"),
                        format!(
                            "reachable at their pinned versions again: {}",
                            tools.join(", ")
                        ),
                    ));
                }
            } else {
                let o = guards::mcp_lost(g, &i.probes);
                let why = o.reasons.join("; ");
                guard_check(out, o)?;
                events.push(event("tool_flap", p, Some("mcp_health"), why));
            }
            for pr in &i.probes {
                if post.council.tools.contains_key(&pr.body.tool) {
                    post.council.tooling.insert(
                        pr.body.tool.clone(),
                        crate::state::ToolStatus {
                            reachable: pr.body.reachable,
                            version: pr.body.version.clone(),
                            probed_at: pr.body.probed_at,
                        },
                    );
                }
            }
        }
        "Council_Eject" => {
            let i: InEject = inputs(p)?;
            check_text("reason", &i.reason)?;
            if !g.state.council.elected.contains(&i.member) {
                return Err(field_err(
                    "member",
                    format!("{} is not in the elected council", i.member),
                ));
            }
            lic(out)?;
            post.council.elected.retain(|m| m != &i.member);
            post.execution.approvals.retain(|m| m != &i.member);
            post.council.ejected.push(i.member);
            post.council.ejected.sort();
            post.council.member_set_hash = None;
            post.council.quorum_cert = None;
        }
        "Environment_CapacityOk" => {
            let i: InCapacity = inputs(p)?;
            lic(out)?;
            guard_check(out, guards::capacity(&i.request, &i.capacity))?;
            post.environment.request = Some(i.request);
            post.environment.capacity = Some(i.capacity);
        }
        "Environment_Installed" => {
            let i: InInstalled = inputs(p)?;
            check_list("assets", &i.assets)?;
            check_item_texts(
                g,
                "assets",
                i.assets
                    .iter()
                    .enumerate()
                    .map(|(n, a)| (format!("assets[{n}]"), a.as_str())),
            )?;
            lic(out)?;
            post.environment.assets = i.assets;
            post.environment.env_hash = Some(i.env_hash);
        }
        "Environment_Green" | "Environment_Amber" => {
            let i: InChecks = inputs(p)?;
            check_list("checks", &i.checks)?;
            check_item_texts(
                g,
                "checks",
                i.checks
                    .iter()
                    .enumerate()
                    .map(|(n, c)| (format!("checks[{n}].name"), c.name.as_str())),
            )?;
            lic(out)?;
            guard_check(
                out,
                guards::env_health(&i.checks, spec.name == "Environment_Green"),
            )?;
            post.environment.health = i.checks;
        }
        "Environment_Recheck" => {
            let _: In0 = inputs(p)?;
            lic(out)?;
        }
        "Environment_Deprovision" => {
            let i: InReason = inputs(p)?;
            check_text("reason", &i.reason)?;
            let env = &mut post.environment;
            env.assets.clear();
            env.env_hash = None;
            env.health.clear();
            env.request = None;
            env.capacity = None;
            env.deprovisions += 1;
        }
        "Project_EnterExecution" => {
            let i: InPins = inputs(p)?;
            lic(out)?;
            guard_check(out, guards::all_ready(g, &i.pins))?;
            post.execution.pins = Some(i.pins);
        }
        "Project_Terminate" => {
            let i: InRationale = inputs(p)?;
            check_text("rationale", &i.rationale)?;
            post.meta.terminated_rationale = Some(i.rationale);
        }
        "Execution_PlanLocked" => {
            let i: InPlan = inputs(p)?;
            lic(out)?;
            guard_check(out, guards::all_ready(g, &i.pins))?;
            post.execution.plan_hash = Some(i.plan_hash);
            post.execution.pins = Some(i.pins);
            push_evidence(post, p);
        }
        "Execution_BeatReviewGate"
        | "Execution_ReverbOpen"
        | "Execution_Approve"
        | "Execution_Submit" => {
            lic(out)?;
            let class = spec.time_gated.expect("execution windows are time-gated");
            let parsed: Result<(), Rejection> = match spec.name {
                "Execution_BeatReviewGate" => {
                    inputs::<InWork>(p).map(|i| post.execution.work_hash = Some(i.work_hash))
                }
                "Execution_ReverbOpen" => {
                    inputs::<InReview>(p).map(|i| post.execution.review_hash = Some(i.review_hash))
                }
                "Execution_Approve" => inputs::<InWork>(p).and_then(|i| {
                    let (o, retry) = guards::backbeat(g, class);
                    guard_check_retry(out, o, retry)?;
                    guard_check(out, guards::council_member(g, &i.work_hash))?;
                    post.execution.approvals.push(p.signer.clone());
                    post.execution.approvals.sort();
                    Ok(())
                }),
                _ => inputs::<InSubmit>(p).and_then(|i| {
                    let (o, retry) = guards::backbeat(g, class);
                    guard_check_retry(out, o, retry)?;
                    guard_check(out, guards::approvals(g))?;
                    post.execution.submission = Some(i.submission_hash);
                    Ok(())
                }),
            };
            parsed?;
            if matches!(
                spec.name,
                "Execution_BeatReviewGate" | "Execution_ReverbOpen"
            ) {
                let (o, retry) = guards::backbeat(g, class);
                guard_check_retry(out, o, retry)?;
            }
            post.execution.window_id = Some(p.window_id.clone());
            push_evidence(post, p);
        }
        "Execution_NextWindow" => {
            let _: In0 = inputs(p)?;
            lic(out)?;
            guard_check(out, guards::submission(g))?;
            let ex = &mut post.execution;
            ex.loops += 1;
            ex.plan_hash = None;
            ex.work_hash = None;
            ex.review_hash = None;
            ex.approvals.clear();
            ex.submission = None;
            ex.window_id = None;
            ex.evidence.clear();
        }
        "Control_Pause" => {
            let i: InReason = inputs(p)?;
            check_text("reason", &i.reason)?;
            post.control.reason = Some(i.reason);
            post.control.degraded_by_license = false;
        }
        "Control_Resume" => {
            let _: In0 = inputs(p)?;
            // A project paused before it was ever licensed resumes into its
            // boot: refused, it would be wedged for good (`Boot_ConfigOk`
            // and `Boot_Licensed` are refused while it is PAUSED, and the
            // license they install is what this guard asks for). Every
            // lifecycle transition still checks the license itself.
            if g.state.boot.license.is_none() {
                out.push(guards::outcome(
                    "license",
                    true,
                    vec!["the project holds no license yet: it resumes into its boot, where Boot_ConfigOk and Boot_Licensed license it".into()],
                ));
            } else {
                lic(out)?;
            }
            post.control.reason = None;
        }
        "Control_QuorumLost" => {
            let i: InLost = inputs(p)?;
            check_text("reason", &i.reason)?;
            check_list("lost", &i.lost)?;
            if let Some(x) = i.lost.iter().find(|m| !g.state.council.elected.contains(m)) {
                return Err(field_err("lost", format!("{x} is not an elected council member, so it cannot be lost; list only members of the elected council")));
            }
            post.control.reason = Some(i.reason.clone());
            post.control.degraded_by_license = false;
            events.push(event("quorum_lost", p, None, i.reason));
        }
        "Control_Recovered" => {
            let _: In0 = inputs(p)?;
            lic(out)?;
            guard_check(out, guards::recovery(g))?;
            post.control.reason = None;
            events.push(event("recovered", p, None, "quorum restored".into()));
        }
        "Policy_Quarantine" => {
            let i: InRationale = inputs(p)?;
            check_text("rationale", &i.rationale)?;
            post.policy.rationale = Some(i.rationale.clone());
            post.policy.findings.clear();
            post.policy.quarantines += 1;
            events.push(event("quarantine", p, None, i.rationale));
        }
        "Policy_Release" => {
            let i: InRationale = inputs(p)?;
            check_text("rationale", &i.rationale)?;
            post.policy.rationale = None;
            post.policy.findings.clear();
            events.push(event("quarantine_released", p, None, i.rationale));
        }
        "Policy_Update" => {
            let i: InRules = inputs(p)?;
            // At admission only (see `Judged`): rules installed by earlier
            // builds stay in force and replay as they were accepted.
            if g.admission {
                for (n, r) in i.rules.iter().enumerate() {
                    crate::state::validate_policy_rule(r).map_err(|why| {
                        field_err(
                            "rules",
                            format!(
                                "inputs.rules[{n}] (rule {:?}): {why}",
                                crate::hash::truncate(&r.id)
                            ),
                        )
                    })?;
                }
            }
            guard_check(out, guards::policy_update(g, &i.rules))?;
            if g.state.policy.phase == "QUARANTINED" {
                // The new rules lift the quarantine (to CLEAR) as a release
                // does; the scorer counts it as healed.
                events.push(event(
                    "quarantine_released",
                    p,
                    None,
                    format!("lifted by a policy update to {} rules", i.rules.len()),
                ));
            }
            post.policy.rules = i.rules;
            post.policy.rationale = None;
            post.policy.findings.clear();
        }
        other => unreachable!("transition {other} is in the registry but has no reducer arm"),
    }
    Ok(())
}

struct Built {
    acc: Accepted,
    post: ProjectState,
    idem: IdemEntry,
    effects: Vec<Effect>,
}

fn commit(node: &mut NodeState, p: &Proposal, ctx: &Ctx, plan: Plan) -> Step {
    commit_within(
        node,
        p,
        ctx,
        plan,
        (RECORD_BYTES_MAX, DECISION_RECORD_BYTES_MAX),
    )
}

/// [`commit`] with the record and decision record size limits given.
fn commit_within(
    node: &mut NodeState,
    p: &Proposal,
    ctx: &Ctx,
    plan: Plan,
    (record_max, decision_max): (usize, usize),
) -> Step {
    let mut fresh = HashMemo::default();
    let hash = post_hash(node, &p.project, &plan.post, &mut fresh);
    let b = build(node, p, ctx, plan, hash, None);
    let Built {
        acc,
        post,
        idem,
        effects,
    } = b;
    // Checked here, at admission, before anything is installed: the WAL
    // writer refuses an oversized record, and then the whole group commit
    // around it failed (every proposal in it answered 503, the sequencer
    // and the WAL writer restarted) for a proposal that was never admissible.
    if let Some(r) = oversized_at(&acc, record_max, decision_max) {
        return rejected(p, r);
    }
    let at = (
        acc.record.index,
        acc.record_hash,
        acc.record.state_post_hash,
    );
    install(node, p, at, post, idem, fresh);
    Step {
        outcome: Outcome::Accepted(Box::new(acc)),
        effects,
    }
}

/// Why an accepted record cannot be stored: its record or decision record
/// encodes past the limits. Admission only (replay reads records the store
/// already bounded).
fn oversized_at(acc: &Accepted, record_max: usize, decision_max: usize) -> Option<Rejection> {
    let record = acc.record_bytes.as_ref().map_or(0, Vec::len);
    let decision = acc.decision_bytes.as_ref().map_or(0, Vec::len);
    let what = if record > record_max {
        format!("its WAL record would be {record} bytes; at most {record_max} are allowed")
    } else if decision > decision_max {
        format!("its decision record would be {decision} bytes; at most {decision_max} are allowed")
    } else {
        return None;
    };
    Some(reject(
        RejectKind::Guard,
        "record_size",
        vec![format!(
            "{what}: shrink the proposal's inputs or evidence (guard reasons repeat policy text: fewer findings, or shorter rule rationales)"
        )],
    ))
}

/// Advance the node past an accepted record. `fresh` is the memo of a
/// project seen for the first time (an existing project keeps its own).
fn install(
    node: &mut NodeState,
    p: &Proposal,
    (index, record_hash, hash): (u64, Hash, Hash),
    post: ProjectState,
    idem: IdemEntry,
    fresh: HashMemo,
) {
    node.index = index;
    node.head_record = record_hash;
    node.hlc = Some(node.hlc.map_or(p.hlc, |h| h.max(p.hlc)));
    node.idem.insert(&p.project, &p.idem_key, idem);
    match node.projects.get_mut(&p.project) {
        Some(e) => {
            e.state = post;
            e.hash = hash;
        }
        None => {
            node.projects.insert(
                p.project.clone(),
                ProjectEntry {
                    state: post,
                    hash,
                    memo: fresh,
                },
            );
        }
    }
}

/// What an accepted plan decides, before its WAL record is assembled: the
/// decision record's hash (and the record itself when the caller keeps it),
/// the idempotency entry, the effects and the post state.
struct Decided {
    index: u64,
    pre_hash: Hash,
    post_hash: Hash,
    outcomes: Vec<GuardOutcome>,
    /// `None` when the caller only checks the hash (replay).
    decision: Option<DecisionRecord>,
    decision_hash: Hash,
    /// The canonical encoding `decision_hash` hashes, with `decision`.
    decision_bytes: Option<Vec<u8>>,
    post: ProjectState,
    idem: IdemEntry,
    /// Empty when the decision is not kept: replay performs no effects.
    effects: Vec<Effect>,
}

/// Decide an accepted plan whose post-state hashes to `post_hash`. The
/// effects are complete except for the record hash of `AppendWal`, which
/// [`build`] fills in. `keep`: assemble the decision record and the effects
/// (a live step); otherwise only hash the decision (replay's check).
fn decide(
    node: &NodeState,
    p: &Proposal,
    ctx: &Ctx,
    plan: Plan,
    post_hash: Hash,
    keep: bool,
) -> Decided {
    let Plan {
        spec,
        roles,
        from_state,
        pre_hash,
        post,
        outcomes,
        content_hash,
        mut events,
    } = plan;
    let index = node.index + 1;
    let from_region = spec.from[0].region;
    let cluster = &node.genesis.cluster_id;
    let mut links = vec![
        format!("ucxl://swoosh:{cluster}@{}/wal/{index}", p.project),
        format!(
            "ucxl://swoosh:{cluster}@{}/state/{}",
            p.project,
            post_hash.to_hex()
        ),
    ];
    links.extend(
        p.evidence
            .iter()
            .filter(|e| e.starts_with("ucxl://"))
            .cloned(),
    );
    let justification = format!(
        "{} accepted for project {}: {}.{} → {}, signed by {} ({}); {} checks passed",
        spec.name,
        p.project,
        from_region.name(),
        from_state,
        spec.to,
        p.signer,
        roles.join(", "),
        outcomes.len()
    );
    let from = format!("{}.{}", from_region.name(), from_state);
    let to = spec.to.to_string();
    let view = DecisionView {
        kind: DECISION_KIND,
        cluster_id: cluster,
        project: &p.project,
        index,
        transition: spec.name,
        region: spec.to.region.name(),
        from: &from,
        to: &to,
        signer: &p.signer,
        signer_roles: &roles,
        idem_key: &p.idem_key,
        hlc: p.hlc,
        window_id: &p.window_id,
        state_pre_hash: pre_hash,
        state_post_hash: post_hash,
        inputs_hash: p.inputs_hash,
        guard_outcomes: &outcomes,
        evidence: &p.evidence,
        links: &links,
        justification: &justification,
    };
    let (decision_hash, decision_bytes) = if keep {
        let bytes = crate::cbor::to_canonical(&view).expect("decision records encode");
        (Hash::of_bytes(&bytes), Some(bytes))
    } else {
        (view.hash(), None)
    };
    let decision = keep.then(|| DecisionRecord {
        kind: DECISION_KIND.to_string(),
        cluster_id: cluster.clone(),
        project: p.project.clone(),
        index,
        transition: spec.name.to_string(),
        region: spec.to.region.name().to_string(),
        from,
        to,
        signer: p.signer.clone(),
        signer_roles: roles,
        idem_key: p.idem_key.clone(),
        hlc: p.hlc,
        window_id: p.window_id.clone(),
        state_pre_hash: pre_hash,
        state_post_hash: post_hash,
        inputs_hash: p.inputs_hash,
        guard_outcomes: outcomes.clone(),
        evidence: p.evidence.clone(),
        links,
        justification,
    });
    let idem = IdemEntry {
        content_hash,
        transition: spec.name.to_string(),
        index,
        state_post_hash: post_hash,
        decision: decision_hash,
    };

    let mut effects = vec![];
    if keep {
        effects.extend([
            Effect::AppendWal {
                index,
                record_hash: Hash::default(),
            },
            Effect::StoreDecision {
                address: decision_hash,
            },
            Effect::Reply { status: 202 },
        ]);
        if spec.name == "Execution_ReverbOpen" {
            effects.push(Effect::ScheduleSnapshot {
                reason: SnapshotReason::Reverb,
            });
        } else if ctx.snapshot_every > 0 && index.is_multiple_of(ctx.snapshot_every) {
            effects.push(Effect::ScheduleSnapshot {
                reason: SnapshotReason::Interval,
            });
        }
        for e in events.drain(..) {
            effects.push(Effect::Emit(e));
        }
    }
    Decided {
        index,
        pre_hash,
        post_hash,
        outcomes,
        decision,
        decision_hash,
        decision_bytes,
        post,
        idem,
        effects,
    }
}

/// Build the decision record, the WAL record and the effects of an accepted
/// plan whose post-state hashes to `post_hash`. `record_hash`: the record's
/// hash when the caller already knows it; `None` computes it.
fn build(
    node: &NodeState,
    p: &Proposal,
    ctx: &Ctx,
    plan: Plan,
    post_hash: Hash,
    record_hash: Option<Hash>,
) -> Built {
    let transition = plan.spec.name;
    let Decided {
        index,
        pre_hash,
        post_hash,
        outcomes,
        decision,
        decision_hash,
        decision_bytes,
        post,
        idem,
        mut effects,
    } = decide(node, p, ctx, plan, post_hash, true);
    let decision = decision.expect("kept");
    let record = WalRecord {
        index,
        prev_hash: node.head_record,
        project: p.project.clone(),
        transition: transition.to_string(),
        state_pre_hash: pre_hash,
        state_post_hash: post_hash,
        inputs: p.inputs.clone(),
        inputs_hash: p.inputs_hash,
        signer: p.signer.clone(),
        idem_key: p.idem_key.clone(),
        hlc: p.hlc,
        window_id: p.window_id.clone(),
        guard_outcomes: outcomes,
        evidence: p.evidence.clone(),
        timestamp_ms: ctx.now_ms,
        signature: p.signature,
        decision: decision_hash,
    };
    let (record_hash, record_bytes) = match record_hash {
        Some(h) => (h, None),
        None => {
            let bytes = crate::cbor::to_canonical(&record)
                .expect("WAL records were built from canonical inputs and encode");
            (Hash::of_bytes(&bytes), Some(bytes))
        }
    };
    if let Some(Effect::AppendWal { record_hash: h, .. }) = effects.first_mut() {
        *h = record_hash;
    }
    Built {
        acc: Accepted {
            record,
            record_hash,
            record_bytes,
            content_hash: idem.content_hash,
            decision,
            decision_hash,
            decision_bytes,
        },
        post,
        idem,
        effects,
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReplayError {
    #[error("record {index}: expected index {expected}; the log has a gap or a repeat")]
    Index { index: u64, expected: u64 },
    #[error("record {index}: prev_hash {got} does not chain to the previous record {expected}")]
    Chain {
        index: u64,
        got: Hash,
        expected: Hash,
    },
    #[error("record {index}: the reducer rejects it ({guard}: {reasons}); the log and this build disagree")]
    Rejected {
        index: u64,
        guard: String,
        reasons: String,
    },
    #[error(
        "record {index}: it repeats an accepted idempotency key; a log never holds duplicates"
    )]
    Duplicate { index: u64 },
    #[error("record {index}: recomputed state_post_hash {computed} differs from the recorded {recorded}: divergence")]
    PostHash {
        index: u64,
        computed: Hash,
        recorded: Hash,
    },
    #[error(
        "record {index}: recomputed record differs from the stored one in {field}: divergence"
    )]
    Mismatch { index: u64, field: &'static str },
}

/// A WAL record with the work that depends on it alone already done, so it
/// can be done ahead of (and in parallel with) the stateful part of replay:
/// the proposal's shape check (including the re-hash of its inputs), its
/// content hash, and the record's own hash over its canonical re-encoding.
#[derive(Clone, Debug, PartialEq)]
pub struct PreparedRecord {
    pub record: WalRecord,
    /// BLAKE3 of the record's canonical encoding, recomputed here.
    pub hash: Hash,
    proposal: Proposal,
    content_hash: Hash,
}

impl PreparedRecord {
    /// The record and the proposal copy made from it, so a caller can keep
    /// the one and hand the other to whichever thread should free it.
    pub fn into_parts(self) -> (WalRecord, Proposal) {
        (self.record, self.proposal)
    }

    /// The proposal's content hash (what the idempotency index stores).
    pub fn content_hash(&self) -> Hash {
        self.content_hash
    }
}

/// The stateless half of [`apply_record`]: pure, and independent of every
/// other record, so a caller may run it on another thread.
pub fn prepare_record(record: WalRecord) -> Result<PreparedRecord, ReplayError> {
    let hash = record.hash();
    prepare_record_hashed(record, hash)
}

/// [`prepare_record`] for a caller that already holds the record's hash.
///
/// Contract: `hash` is BLAKE3 of `to_canonical(&record)`, computed by the
/// caller from that very encoding (a follower hashes the encoding it checks
/// against the leader's signed header, and stores the same bytes). A wrong
/// hash is not caught here: it would surface as a chain break at the next
/// record and as a refused frame on recovery.
pub fn prepare_record_hashed(record: WalRecord, hash: Hash) -> Result<PreparedRecord, ReplayError> {
    let rejected = |r: Rejection| ReplayError::Rejected {
        index: record.index,
        guard: r.guard,
        reasons: r.reasons.join("; "),
    };
    let proposal = record.proposal();
    proposal
        .check_shape()
        .map_err(|e| rejected(shape_rejection(e)))?;
    let content_hash = proposal
        .content_hash()
        .map_err(|e| rejected(content_rejection(e)))?;
    Ok(PreparedRecord {
        record,
        hash,
        proposal,
        content_hash,
    })
}

/// Apply a record from a WAL (replay, recovery, follower). Checks the chain
/// link and that re-running the reducer reproduces the record exactly.
pub fn apply_record(
    node: &mut NodeState,
    rec: &WalRecord,
    verify: Verify,
) -> Result<Accepted, ReplayError> {
    check_link(node, rec)?;
    apply_prepared(node, &prepare_record(rec.clone())?, verify)
}

fn check_link(node: &NodeState, rec: &WalRecord) -> Result<(), ReplayError> {
    let expected = node.index + 1;
    if rec.index != expected {
        return Err(ReplayError::Index {
            index: rec.index,
            expected,
        });
    }
    if rec.prev_hash != node.head_record {
        return Err(ReplayError::Chain {
            index: rec.index,
            got: rec.prev_hash,
            expected: node.head_record,
        });
    }
    Ok(())
}

/// A stored record re-run on the side: the plan, its post hash (already
/// checked against the record's) and the memo of a new project.
struct Replayed {
    ctx: Ctx,
    plan: Box<Plan>,
    computed: Hash,
    fresh: HashMemo,
}

/// The checks both replay paths start with: the chain link, the reducer
/// re-run (evaluated on the side, so a divergent record leaves the node
/// untouched) and the recomputed post hash.
fn replay_plan(
    node: &mut NodeState,
    prepared: &PreparedRecord,
    verify: Verify,
) -> Result<Replayed, ReplayError> {
    let rec = &prepared.record;
    check_link(node, rec)?;
    let p = &prepared.proposal;
    let ctx = Ctx {
        now_ms: rec.timestamp_ms,
        verify,
        snapshot_every: 0,
    };
    let plan = match evaluate(
        node,
        p,
        &ctx,
        Some(prepared.content_hash),
        None,
        Judged::Replay,
    ) {
        Err(r) => {
            return Err(ReplayError::Rejected {
                index: rec.index,
                guard: r.guard,
                reasons: r.reasons.join("; "),
            })
        }
        Ok(Eval::Duplicate(_)) => return Err(ReplayError::Duplicate { index: rec.index }),
        Ok(Eval::Apply(plan)) => plan,
    };
    let mut fresh = HashMemo::default();
    let computed = post_hash(node, &p.project, &plan.post, &mut fresh);
    if computed != rec.state_post_hash {
        return Err(ReplayError::PostHash {
            index: rec.index,
            computed,
            recorded: rec.state_post_hash,
        });
    }
    Ok(Replayed {
        ctx,
        plan,
        computed,
        fresh,
    })
}

/// The stateful half of [`apply_record`]: the chain link, the reducer re-run
/// and the recomputed post hash, decision and record, all checked against
/// the stored record. A divergent record leaves the node's state untouched.
pub fn apply_prepared(
    node: &mut NodeState,
    prepared: &PreparedRecord,
    verify: Verify,
) -> Result<Accepted, ReplayError> {
    let rec = &prepared.record;
    let p = &prepared.proposal;
    let Replayed {
        ctx,
        plan,
        computed,
        fresh,
    } = replay_plan(node, prepared, verify)?;
    let built = build(node, p, &ctx, *plan, computed, Some(prepared.hash));
    if built.acc.record.guard_outcomes != rec.guard_outcomes {
        return Err(ReplayError::Mismatch {
            index: rec.index,
            field: "guard_outcomes",
        });
    }
    if built.acc.record.decision != rec.decision {
        return Err(ReplayError::Mismatch {
            index: rec.index,
            field: "decision",
        });
    }
    // Field equality implies equal canonical bytes, so the built record's
    // hash is `prepared.hash` (the stored record's re-encoding) without
    // encoding it a second time.
    if built.acc.record != *rec {
        return Err(ReplayError::Mismatch {
            index: rec.index,
            field: "record hash",
        });
    }
    let Built {
        acc, post, idem, ..
    } = built;
    let at = (
        acc.record.index,
        acc.record_hash,
        acc.record.state_post_hash,
    );
    install(node, p, at, post, idem, fresh);
    Ok(acc)
}

/// [`apply_prepared`] for a caller that needs only the checks and the new
/// state (recovery, followers): the same checks without assembling the
/// accepted record and its decision for the caller.
///
/// The rebuilt record is not assembled either: every field of it but four
/// is copied from the stored record itself (the proposal is
/// `record.proposal()`, the clock is the record's `timestamp_ms`, the chain
/// fields were checked by [`check_link`]), so the full comparison of
/// [`apply_prepared`] reduces to the transition name, `state_pre_hash`,
/// `state_post_hash`, `guard_outcomes` and the decision hash, compared here.
pub fn apply_prepared_check(
    node: &mut NodeState,
    prepared: &PreparedRecord,
    verify: Verify,
) -> Result<(), ReplayError> {
    let rec = &prepared.record;
    let p = &prepared.proposal;
    let Replayed {
        ctx,
        plan,
        computed,
        fresh,
    } = replay_plan(node, prepared, verify)?;
    let transition = plan.spec.name;
    let d = decide(node, p, &ctx, *plan, computed, false);
    if d.outcomes != rec.guard_outcomes {
        return Err(ReplayError::Mismatch {
            index: rec.index,
            field: "guard_outcomes",
        });
    }
    if d.decision_hash != rec.decision {
        return Err(ReplayError::Mismatch {
            index: rec.index,
            field: "decision",
        });
    }
    if transition != rec.transition || d.pre_hash != rec.state_pre_hash || d.index != rec.index {
        return Err(ReplayError::Mismatch {
            index: rec.index,
            field: "record hash",
        });
    }
    let at = (d.index, prepared.hash, d.post_hash);
    install(node, p, at, d.post, d.idem, fresh);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{genesis, Driver, Keys, Next};

    /// The HLC lag bound refuses at admission and never in replay: a log
    /// an earlier build (or a leader not yet upgraded) wrote with a lagging
    /// HLC still replays to the state it had.
    #[test]
    fn the_hlc_lag_bound_applies_at_admission_only() {
        let keys = Keys::from_labels("judged", 3);
        let origin = 1_767_225_600_000;
        let node = NodeState::new(genesis(&keys, "judged", origin)).unwrap();
        let Next::Propose(p) = Driver::new(&keys, 1).next(&node, "default", origin) else {
            panic!("the driver has a first step")
        };
        let ctx = Ctx {
            now_ms: p.hlc.wall_ms + 60_000,
            verify: Verify::Full,
            snapshot_every: 0,
        };
        let r = evaluate(&node, &p, &ctx, None, None, Judged::Admission).err();
        assert_eq!(
            r.map(|r| (r.kind, r.guard)),
            Some((RejectKind::HlcOrder, "hlc".into()))
        );
        assert!(evaluate(&node, &p, &ctx, None, None, Judged::Replay).is_ok());
    }

    use crate::facts::{LicenseBody, LicenseToken, ProbeBody, VoteBody};
    use crate::proposal::ProposalBuilder;
    use crate::state::{Genesis, POLICY_DENY_CODES_MAX};
    use ed25519_dalek::SigningKey;
    use serde_json::{json, Value as Json};
    use std::cell::Cell;

    const P: &str = "default";
    const ORIGIN: u64 = 1_767_225_600_000;

    /// One node and project on a virtual leader clock, driven along the
    /// happy path to the state a test needs.
    struct Fx {
        keys: Keys,
        node: NodeState,
        now: u64,
        seq: Cell<u64>,
    }

    impl Fx {
        fn new(label: &str) -> Fx {
            Fx::with_genesis(label, |_| {})
        }

        fn with_genesis(label: &str, edit: impl FnOnce(&mut Genesis)) -> Fx {
            let keys = Keys::from_labels(label, 3);
            let mut g = genesis(&keys, label, ORIGIN);
            edit(&mut g);
            let node = NodeState::new(g).unwrap();
            Fx {
                keys,
                node,
                now: ORIGIN + 10,
                seq: Cell::new(0),
            }
        }

        fn ctx(&self) -> Ctx {
            Ctx {
                now_ms: self.now,
                verify: Verify::Full,
                snapshot_every: 0,
            }
        }

        fn st(&self) -> ProjectState {
            self.node.project(P).into_owned()
        }

        fn hlc(&self) -> Hlc {
            Driver::hlc_for(&self.st(), self.now)
        }

        fn drive(&mut self, done: impl Fn(&ProjectState) -> bool) {
            let d = Driver::new(&self.keys, u64::MAX);
            for _ in 0..300 {
                if done(&self.st()) {
                    return;
                }
                match d.next(&self.node, P, self.now) {
                    Next::Propose(p) => {
                        let ctx = self.ctx();
                        let s = step(&mut self.node, &p, &ctx);
                        assert!(matches!(s.outcome, Outcome::Accepted(_)), "{s:#?}");
                        self.now += 1;
                    }
                    Next::WaitMs(ms) => self.now += ms,
                    Next::Done => panic!("the driver stopped"),
                }
            }
            panic!("state not reached in 300 steps");
        }

        /// A proposal for HEAD at `hlc`, naming the window of `hlc`.
        fn at(&self, t: &str, inputs: Json, key: &SigningKey, hlc: Hlc) -> Proposal {
            let n = self.seq.get();
            self.seq.set(n + 1);
            let window = self.st().execution.schedule.window_id(&hlc);
            ProposalBuilder::new(P, t, self.node.project_hash(P), hlc, &format!("x-{n}"))
                .inputs(&inputs)
                .unwrap()
                .window(window)
                .sign(key)
                .unwrap()
        }

        fn p(&self, t: &str, inputs: Json, key: &SigningKey) -> Proposal {
            self.at(t, inputs, key, self.hlc())
        }

        fn accept(&mut self, p: &Proposal) {
            let ctx = self.ctx();
            let s = step(&mut self.node, p, &ctx);
            assert!(
                matches!(s.outcome, Outcome::Accepted(_)),
                "{} refused: {:#?}",
                p.transition,
                s.outcome
            );
            self.now += 1;
        }

        fn judge(&self, p: &Proposal, judged: Judged) -> Result<(), Rejection> {
            evaluate(&self.node, p, &self.ctx(), None, None, judged).map(|e| match e {
                Eval::Apply(_) => (),
                Eval::Duplicate(_) => panic!("{} is a duplicate", p.transition),
            })
        }

        /// `p` is refused at admission with `guard`, and accepted in replay
        /// (as the rule before this one accepted it, so logs an earlier
        /// build wrote still replay).
        fn admitted_only(&self, p: &Proposal, guard: &str) -> Rejection {
            let r = self
                .judge(p, Judged::Admission)
                .expect_err("refused at admission");
            assert_eq!(r.guard, guard, "{r:#?}");
            if let Err(e) = self.judge(p, Judged::Replay) {
                panic!("{} refused in replay: {e:#?}", p.transition);
            }
            r
        }

        fn probe(&self, tool: &str, version: &str, ok: bool, at: Hlc, key: &SigningKey) -> Probe {
            Probe::sign(
                ProbeBody {
                    project: P.into(),
                    tool: tool.into(),
                    reachable: ok,
                    version: version.into(),
                    probed_at: at,
                    prober: SignerId::from_signing_key(key),
                    genesis: Some(self.node.project(P).meta.genesis),
                },
                key,
            )
        }
    }

    fn says(r: &Rejection, what: &str) -> bool {
        r.reasons.iter().any(|x| x.contains(what))
    }

    /// The leader's clock at `offset_ms` into the beat after the current one.
    fn next_beat_at(fx: &Fx, offset_ms: u64) -> u64 {
        let s = &fx.st().execution.schedule;
        let beat = (fx.now - s.origin_ms) / s.period_ms;
        s.origin_ms + (beat + 1) * s.period_ms + offset_ms
    }

    #[test]
    fn a_post_dated_hlc_does_not_open_a_backbeat_window_at_admission() {
        let mut fx = Fx::new("bb");
        fx.drive(|s| s.execution.phase == "WORK");
        // The leader is in the work phase; the proposer dates its proposal
        // into the review phase, within the HLC offset.
        fx.now = next_beat_at(&fx, 10);
        let sched = fx.st().execution.schedule.clone();
        let leader = Hlc::new(fx.now, 0);
        assert!(!sched.is_open("review", &leader));
        let wait = sched.ms_until_open("review", &leader).unwrap();
        let at = Hlc::new(fx.now + wait, 0);
        assert!(wait <= fx.st().meta.hlc_max_offset_ms);
        let work = crate::scenario::work_hash(P, 0);
        let p = fx.at(
            "Execution_BeatReviewGate",
            json!({ "work_hash": work }),
            &fx.keys.worker,
            at,
        );
        let r = fx.admitted_only(&p, "backbeat");
        assert!(
            says(&r, "which the leader's clock") && says(&r, "resubmit this same proposal"),
            "{r:#?}"
        );
        assert_eq!(
            r.retry_after_ms,
            Some(wait),
            "the hint is when the leader's clock reaches the proposal's window"
        );

        // The leader in the review phase; the proposer names the review
        // window of the next beat: open, but another window.
        fx.now += wait + 10;
        let at = Hlc::new(fx.now + sched.period_ms, 0);
        let p = fx.at(
            "Execution_BeatReviewGate",
            json!({ "work_hash": work }),
            &fx.keys.worker,
            at,
        );
        let r = fx.admitted_only(&p, "backbeat");
        // A proposer whose HLC must follow a project HLC that far ahead can
        // only wait for the leader to reach that window.
        assert!(says(&r, "resubmit this same proposal"), "{r:#?}");
        let ms = r.retry_after_ms.expect("a wait");
        assert!(ms > 0 && ms <= sched.period_ms, "{ms}");

        // At the leader's clock in the window it names: admitted.
        let p = fx.p(
            "Execution_BeatReviewGate",
            json!({ "work_hash": work }),
            &fx.keys.worker,
        );
        fx.accept(&p);
    }

    #[test]
    fn sources_are_judged_by_their_rfc_3986_scheme_at_admission() {
        let mut fx = Fx::new("src");
        fx.drive(|s| s.meta.phase == "PROJECT_LIFECYCLE");
        let sources = |s: &str| json!({ "sources": ["git://repos/ok.git", s] });
        for (s, why) in [
            (
                "FILE:///etc/passwd",
                "is denied by policy rule 'no-secrets'",
            ),
            (
                "File:///etc/passwd",
                "is denied by policy rule 'no-secrets'",
            ),
            ("/home/op/.ssh/id", "names no URI scheme"),
            (" file:///etc/passwd", "whitespace or a control character"),
            ("git://repos/ok.git\t", "whitespace or a control character"),
            ("git://a b", "whitespace or a control character"),
            ("git://repo\u{7}", "whitespace or a control character"),
            ("1git://x", "does not start with a valid URI scheme"),
            (
                "fi_le:///etc/passwd",
                "does not start with a valid URI scheme",
            ),
            (":x", "does not start with a valid URI scheme"),
        ] {
            let p = fx.p("Ingestion_SourcesResolved", sources(s), &fx.keys.worker);
            let r = fx.admitted_only(&p, "policy");
            assert!(says(&r, why), "{s:?}: {r:#?}");
            assert!(
                says(&r, "remove it from the source set") || says(&r, "absolute URI"),
                "{s:?}: {r:#?}"
            );
        }
        // The old rule's refusal stands, and is said once.
        let p = fx.p(
            "Ingestion_SourcesResolved",
            sources("file:///etc/passwd"),
            &fx.keys.worker,
        );
        let r = fx.judge(&p, Judged::Admission).unwrap_err();
        assert_eq!(r.reasons.len(), 1, "{r:#?}");
        assert!(fx.judge(&p, Judged::Replay).is_err());
        for s in [
            "HTTPS://example.com/a",
            "git+ssh://host/r.git",
            "s3://bucket/key",
            "urn:isbn:0451450523",
        ] {
            let p = fx.p("Ingestion_SourcesResolved", sources(s), &fx.keys.worker);
            assert_eq!(fx.judge(&p, Judged::Admission), Ok(()), "{s}");
        }
    }

    #[test]
    fn a_probe_may_not_roll_a_tool_back_at_admission() {
        let mut fx = Fx::new("rollback");
        fx.drive(|s| s.council.phase == "READY");
        let green = fx.st().council.tooling["mcp-git"].probed_at;
        fx.now += 10;
        // Both tools probed just before the recorded probes, mcp-git
        // unreachable: the old rule recorded the older probes.
        let older = Hlc::new(green.wall_ms - 1, 0);
        let probes = Driver::new(&fx.keys, 1).probes(&fx.st(), older, false);
        let p = fx.p(
            "Council_ToolingLost",
            json!({ "probes": probes }),
            &fx.keys.prober,
        );
        let r = fx.admitted_only(&p, "mcp_health");
        assert!(
            says(
                &r,
                &format!("before the probe from {green} the state already records")
            ) && says(&r, &format!("dated at or after {green}")),
            "{r:#?}"
        );
        // Dated at the recorded probe: admitted.
        let probes = Driver::new(&fx.keys, 1).probes(&fx.st(), green, false);
        let p = fx.p(
            "Council_ToolingLost",
            json!({ "probes": probes }),
            &fx.keys.prober,
        );
        assert_eq!(fx.judge(&p, Judged::Admission), Ok(()));
    }

    /// A log written before admission refused every invalid probe may
    /// hold a `Council_ToolingLost` with a forged probe beside a failing
    /// one. The leader set the forged one aside; replay must derive the
    /// same accepted reasons whatever its `Verify` mode (recovery and
    /// followers replay `Trusted`), or the record would not replay.
    #[test]
    fn replay_sets_forged_probes_aside_whatever_its_verify_mode() {
        let mut fx = Fx::new("forged-probe");
        fx.drive(|s| s.council.phase == "READY");
        fx.now += 10;
        let at = fx.hlc();
        let lost = fx.probe("mcp-git", "1.4.2", false, at, &fx.keys.prober);
        let mut forged = fx.probe("mcp-search", "6.6.6-FORGED", true, at, &fx.keys.prober);
        forged.signature = Probe::sign(forged.body.clone(), &fx.keys.worker).signature;
        let p = fx.p(
            "Council_ToolingLost",
            json!({ "probes": [lost, forged] }),
            &fx.keys.prober,
        );
        fx.admitted_only(&p, "mcp_health");
        let reasons = |verify: Verify| {
            let ctx = Ctx { verify, ..fx.ctx() };
            match evaluate(&fx.node, &p, &ctx, None, None, Judged::Replay) {
                Ok(Eval::Apply(plan)) => plan
                    .outcomes
                    .iter()
                    .find(|o| o.guard == "mcp_health")
                    .expect("an mcp_health outcome")
                    .reasons
                    .clone(),
                Ok(Eval::Duplicate(_)) => panic!("a duplicate"),
                Err(r) => panic!("refused in replay: {r:#?}"),
            }
        };
        let full = reasons(Verify::Full);
        assert_eq!(full.len(), 1, "the forged probe is set aside: {full:?}");
        assert!(
            full[0].starts_with("tool 'mcp-git' unreachable"),
            "{full:?}"
        );
        assert_eq!(reasons(Verify::Trusted), full);
    }

    #[test]
    fn a_probe_list_names_each_tool_once_at_admission() {
        let mut fx = Fx::new("dup");
        fx.drive(|s| s.council.phase == "TOOLING_SYNC");
        fx.now += 10;
        let now = fx.hlc();
        let older = Hlc::new(now.wall_ms - 5, 0);
        let k = &fx.keys.prober;
        // The newest probe of mcp-git says unreachable; the old rule let
        // the last one listed (older, healthy) decide.
        let probes = vec![
            fx.probe("mcp-git", "1.4.2", false, now, k),
            fx.probe("mcp-git", "1.4.2", true, older, k),
            fx.probe("mcp-search", "0.9.0", true, older, k),
        ];
        let p = fx.p("Council_McpGreen", json!({ "probes": probes }), k);
        let r = fx.admitted_only(&p, "mcp_health");
        assert_eq!(
            r.reasons,
            ["inputs.probes holds 2 probes of tool 'mcp-git': send exactly one probe per tool, the newest"]
        );
    }

    #[test]
    fn an_index_version_may_not_jump_past_the_step_bound_at_admission() {
        let mut fx = Fx::new("corpus");
        fx.drive(|s| s.ingestion.phase == "INDEX");
        let last = fx.st().ingestion.version;
        let built = |fx: &Fx, v: u64| {
            fx.p(
                "Ingestion_CorpusBuilt",
                json!({ "index_hash": crate::hash::Hash::of_bytes(b"i"), "version": v }),
                &fx.keys.worker,
            )
        };
        for v in [u64::MAX, last + CORPUS_VERSION_STEP_MAX + 1] {
            let r = fx.admitted_only(&built(&fx, v), "inputs.version");
            assert!(
                says(&r, "jumps more than") && says(&r, "use a version from 1 to 4294967296"),
                "{r:#?}"
            );
        }
        let p = built(&fx, last + CORPUS_VERSION_STEP_MAX);
        assert_eq!(fx.judge(&p, Judged::Admission), Ok(()));
    }

    /// A new idem_key is printable ASCII at admission (its `{:?}` in the
    /// accepted outcome must not depend on the Rust release's Unicode
    /// tables); replay takes what an earlier build accepted.
    #[test]
    fn a_new_idem_key_is_printable_ascii_at_admission() {
        let fx = Fx::new("idem-ascii");
        let with_key = |key: &str| {
            ProposalBuilder::new(P, "Control_Pause", fx.node.project_hash(P), fx.hlc(), key)
                .inputs(&json!({ "reason": "maintenance" }))
                .unwrap()
                .sign(&fx.keys.leader)
                .unwrap()
        };
        for (key, shown) in [
            ("goal-\u{e9}:1", "'\u{e9}' (U+00E9)"),
            ("a\u{1F600}", "(U+1F600)"),
            ("tab\there", "'\\t' (U+0009)"),
            ("del\u{7f}", "(U+007F)"),
        ] {
            let r = fx.admitted_only(&with_key(key), "idem_key");
            assert_eq!(r.kind, RejectKind::Malformed, "{r:#?}");
            assert!(r.reasons[0].starts_with("idem_key holds "), "{r:#?}");
            assert!(says(&r, shown), "{key:?}: {r:#?}");
            assert!(says(&r, "printable ASCII"), "{r:#?}");
        }
        assert_eq!(
            fx.judge(&with_key(" goal:1:pause:~{}\"'\\"), Judged::Admission),
            Ok(())
        );
    }

    /// A finding code that differs from a deny code only in spelling
    /// (case, spaces, `-`) is refused at admission: matched exactly, it
    /// would let a breach through. Replay keeps exact matching.
    #[test]
    fn a_finding_code_spelled_unlike_the_rules_is_refused_at_admission() {
        let mut fx = Fx::new("codes");
        fx.drive(|s| s.ingestion.phase == "VALIDATE");
        let denied = fx.st().policy.rules[0].deny_codes[0].clone();
        let rule = fx.st().policy.rules[0].id.clone();
        let schema = |fx: &Fx, code: &str| {
            fx.p(
                "Ingestion_SchemaOk",
                json!({ "schema_hash": Hash::of_bytes(b"s"), "findings": [{ "code": "style", "detail": "tabs" }, { "code": code, "detail": "" }] }),
                &fx.keys.worker,
            )
        };
        let variants = [
            denied.to_ascii_uppercase(),
            denied.replace('_', "-"),
            format!(" {denied}"),
            denied.replace('_', " "),
        ];
        for code in &variants {
            assert_ne!(code, &denied);
            let r = fx.admitted_only(&schema(&fx, code), "inputs.findings");
            assert!(
                says(&r, &format!("inputs.findings[1].code {code:?} differs from {denied:?}, which policy rule {rule:?} denies")),
                "{r:#?}"
            );
            let p = fx.p(
                "Ingestion_PolicyViolation",
                json!({ "findings": [{ "code": code, "detail": "" }] }),
                &fx.keys.worker,
            );
            // Refused in replay too (no exact breach); at admission the
            // reason names the spelling.
            let r = fx.judge(&p, Judged::Admission).unwrap_err();
            assert_eq!(r.guard, "inputs.findings", "{r:#?}");
        }
        // Spelled as the rules spell it: a breach, refused as `policy`.
        let r = fx
            .judge(&schema(&fx, &denied), Judged::Admission)
            .unwrap_err();
        assert_eq!(r.guard, "policy", "{r:#?}");
        // Unrelated codes pass.
        assert_eq!(fx.judge(&schema(&fx, "lint"), Judged::Admission), Ok(()));
    }

    /// Each text item of a list input is bounded at admission like every
    /// single text input, and replay accepts what an earlier build did.
    #[test]
    fn list_items_text_is_bounded_at_admission() {
        let long = "x".repeat(TEXT_BYTES_MAX + 1);
        let most = "x".repeat(TEXT_BYTES_MAX);

        let mut fx = Fx::new("items-findings");
        fx.drive(|s| s.ingestion.phase == "VALIDATE");
        let schema = |fx: &Fx, code: &str, detail: &str| {
            fx.p(
                "Ingestion_SchemaOk",
                json!({ "schema_hash": Hash::of_bytes(b"s"), "findings": [{ "code": "style", "detail": "tabs" }, { "code": code, "detail": detail }] }),
                &fx.keys.worker,
            )
        };
        let r = fx.admitted_only(&schema(&fx, "style", &long), "inputs.findings");
        assert_eq!(
            r.reasons,
            ["inputs.findings[1].detail is 1025 bytes; each item's text is at most 1024 bytes: shorten it"]
        );
        let r = fx.admitted_only(&schema(&fx, &long, ""), "inputs.findings");
        assert!(says(&r, "inputs.findings[1].code is 1025 bytes"), "{r:#?}");
        assert_eq!(
            fx.judge(&schema(&fx, &most, &most), Judged::Admission),
            Ok(())
        );
        let p = fx.p(
            "Ingestion_PolicyViolation",
            json!({ "findings": [{ "code": "secret_leak", "detail": long }] }),
            &fx.keys.worker,
        );
        let r = fx.admitted_only(&p, "inputs.findings");
        assert!(
            says(&r, "inputs.findings[0].detail is 1025 bytes"),
            "{r:#?}"
        );

        let mut fx = Fx::new("items-council");
        fx.drive(|s| s.meta.phase == "PROJECT_LIFECYCLE");
        let c0 = SignerId::from_signing_key(&fx.keys.council[0]);
        let c1 = SignerId::from_signing_key(&fx.keys.council[1]);
        let loaded = |fx: &Fx, roles: Json, tools: Json| {
            fx.p(
                "Council_ProfilesLoaded",
                json!({ "roles": roles, "candidates": [&c0, &c1], "tools": tools }),
                &fx.keys.leader,
            )
        };
        let p = loaded(&fx, json!(["planner", long]), json!({}));
        let r = fx.admitted_only(&p, "inputs.roles");
        assert!(says(&r, "inputs.roles[1] is 1025 bytes"), "{r:#?}");
        let p = loaded(&fx, json!([]), json!({ "mcp": long }));
        let r = fx.admitted_only(&p, "inputs.tools");
        assert!(
            says(&r, "inputs.tools[\"mcp\"] (its version) is 1025 bytes"),
            "{r:#?}"
        );
        let p = loaded(&fx, json!([]), json!({ long.clone(): "1.0" }));
        let r = fx.admitted_only(&p, "inputs.tools");
        assert!(says(&r, "(the name \"xxxx"), "{r:#?}");
        assert!(r.reasons[0].len() < 300, "the name is cut: {r:#?}");
        let p = loaded(&fx, json!([most]), json!({ "mcp": most }));
        assert_eq!(fx.judge(&p, Judged::Admission), Ok(()));

        let mut fx = Fx::new("items-env");
        fx.drive(|s| s.environment.phase == "PROVISION");
        let p = fx.p(
            "Environment_Installed",
            json!({ "assets": ["a", long], "env_hash": Hash::of_bytes(b"e") }),
            &fx.keys.worker,
        );
        let r = fx.admitted_only(&p, "inputs.assets");
        assert!(says(&r, "inputs.assets[1] is 1025 bytes"), "{r:#?}");
        let p = fx.p(
            "Environment_Installed",
            json!({ "assets": ["a", most], "env_hash": Hash::of_bytes(b"e") }),
            &fx.keys.worker,
        );
        assert_eq!(fx.judge(&p, Judged::Admission), Ok(()));
    }

    #[test]
    fn a_candidate_list_names_each_signer_once_at_admission() {
        let mut fx = Fx::new("cands");
        fx.drive(|s| s.meta.phase == "PROJECT_LIFECYCLE");
        assert_eq!(fx.st().council.phase, "PLAN_ROLES");
        assert_eq!(fx.st().council.quorum_threshold, 2);
        let c0 = SignerId::from_signing_key(&fx.keys.council[0]);
        let c1 = SignerId::from_signing_key(&fx.keys.council[1]);
        let loaded = |fx: &Fx, c: Vec<&SignerId>| {
            fx.p(
                "Council_ProfilesLoaded",
                json!({ "roles": [], "candidates": c, "tools": {} }),
                &fx.keys.leader,
            )
        };
        // Three entries pass the threshold of 2, but name one candidate:
        // no council could ever be elected from it.
        let p = loaded(&fx, vec![&c0, &c0, &c0]);
        let r = fx.admitted_only(&p, "inputs.candidates");
        assert_eq!(
            r.reasons,
            [format!(
                "inputs.candidates names {c0} 3 times: list each council member once"
            )]
        );
        let p = loaded(&fx, vec![&c1, &c0, &c1]);
        let r = fx.admitted_only(&p, "inputs.candidates");
        assert!(says(&r, &format!("names {c1} 2 times")), "{r:#?}");
        let p = loaded(&fx, vec![&c1, &c0]);
        assert_eq!(fx.judge(&p, Judged::Admission), Ok(()));
    }

    #[test]
    fn policy_rule_text_is_bounded_at_admission() {
        let mut fx = Fx::new("rules");
        fx.drive(|s| s.meta.phase == "PROJECT_LIFECYCLE");
        let long = "x".repeat(TEXT_BYTES_MAX + 1);
        let most = "x".repeat(TEXT_BYTES_MAX);
        let update = |fx: &Fx, rule: Json| {
            let ok = json!({ "id": "ok", "deny_codes": ["secret_leak"], "rationale": "fine" });
            fx.p(
                "Policy_Update",
                json!({ "rules": [ok, rule] }),
                &fx.keys.admin,
            )
        };
        let codes = |n: usize| (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>();
        let cut = crate::hash::truncate(&long);
        for (rule, why) in [
            (
                json!({ "id": long, "deny_codes": [], "rationale": "r" }),
                format!("inputs.rules[1] (rule {cut:?}): its id is 1025 bytes; at most 1024 are allowed: shorten it"),
            ),
            (
                json!({ "id": "r", "deny_codes": [], "rationale": long }),
                "inputs.rules[1] (rule \"r\"): its rationale is 1025 bytes; at most 1024 are allowed: shorten it".into(),
            ),
            (
                json!({ "id": "r", "deny_codes": ["a", long], "rationale": "r" }),
                "inputs.rules[1] (rule \"r\"): its deny_codes[1] is 1025 bytes; at most 1024 are allowed: shorten it".into(),
            ),
            (
                json!({ "id": "r", "deny_codes": codes(POLICY_DENY_CODES_MAX + 1), "rationale": "r" }),
                "inputs.rules[1] (rule \"r\"): it lists 65 deny codes; at most 64 are allowed: split it into several rules".into(),
            ),
        ] {
            let p = update(&fx, rule);
            let r = fx.admitted_only(&p, "inputs.rules");
            assert_eq!(r.reasons, [why]);
        }
        let rule = json!({ "id": most, "deny_codes": [most], "rationale": most });
        assert_eq!(fx.judge(&update(&fx, rule), Judged::Admission), Ok(()));
        let rule =
            json!({ "id": "r", "deny_codes": codes(POLICY_DENY_CODES_MAX), "rationale": "r" });
        assert_eq!(fx.judge(&update(&fx, rule), Judged::Admission), Ok(()));
    }

    #[test]
    fn a_findings_list_names_each_finding_once_at_admission() {
        let mut fx = Fx::new("findings");
        fx.drive(|s| s.ingestion.phase == "VALIDATE");
        let leak = json!({ "code": "secret_leak", "detail": "" });
        // The audit's record: one finding 256 times, one reason each.
        let p = fx.p(
            "Ingestion_PolicyViolation",
            json!({ "findings": vec![leak.clone(); LIST_ITEMS_MAX] }),
            &fx.keys.worker,
        );
        let r = fx.admitted_only(&p, "inputs.findings");
        assert_eq!(
            r.reasons,
            ["inputs.findings holds the finding {code: \"secret_leak\", detail: \"\"} twice: send each finding once"]
        );
        let style = json!({ "code": "style", "detail": "tabs" });
        let p = fx.p(
            "Ingestion_SchemaOk",
            json!({ "schema_hash": Hash::of_bytes(b"s"), "findings": [style, { "code": "style", "detail": "long lines" }, style] }),
            &fx.keys.worker,
        );
        let r = fx.admitted_only(&p, "inputs.findings");
        assert!(
            says(&r, "{code: \"style\", detail: \"tabs\"} twice"),
            "{r:#?}"
        );
        // One code with other details: distinct findings.
        let p = fx.p(
            "Ingestion_PolicyViolation",
            json!({ "findings": [leak, { "code": "secret_leak", "detail": "b" }] }),
            &fx.keys.worker,
        );
        assert_eq!(fx.judge(&p, Judged::Admission), Ok(()));
    }

    #[test]
    fn breach_reasons_are_bounded_at_admission() {
        let mut fx = Fx::new("breach");
        fx.drive(|s| s.ingestion.phase == "VALIDATE");
        // Four rules deny secret_leak, each with a long rationale: a
        // finding gives four reasons of about 1 KiB.
        let rules: Vec<Json> = (0..4)
            .map(|i| json!({ "id": format!("r{i}"), "deny_codes": ["secret_leak"], "rationale": "w".repeat(1000) }))
            .collect();
        let p = fx.p("Policy_Update", json!({ "rules": rules }), &fx.keys.admin);
        fx.accept(&p);
        let leaks = |n: usize| {
            (0..n)
                .map(|i| json!({ "code": "secret_leak", "detail": format!("key {i}") }))
                .collect::<Vec<_>>()
        };
        let violation = |fx: &Fx, n: usize| {
            fx.p(
                "Ingestion_PolicyViolation",
                json!({ "findings": leaks(n) }),
                &fx.keys.worker,
            )
        };
        let r = fx.admitted_only(&violation(&fx, 4), "policy_breach");
        assert_eq!(r.reasons.len(), 1, "{r:#?}");
        assert!(
            says(
                &r,
                "4 findings against 4 policy rules give 16 (finding, rule) matches"
            ) && says(
                &r,
                &format!("at most {} are allowed", guards::BREACH_REASONS_BYTES_MAX)
            ) && says(&r, "send fewer findings, each once")
                && says(&r, "shorten the matching rules' rationale (Policy_Update)"),
            "{r:#?}"
        );
        // Three findings fit: admitted, and the record holds every reason.
        let p = violation(&fx, 3);
        assert_eq!(fx.judge(&p, Judged::Admission), Ok(()));
        // The genesis rule: 256 distinct findings are over the budget too.
        let mut fx = Fx::new("breach-genesis");
        fx.drive(|s| s.ingestion.phase == "VALIDATE");
        let r = fx.admitted_only(&violation(&fx, LIST_ITEMS_MAX), "policy_breach");
        assert!(
            says(
                &r,
                "256 findings against 1 policy rules give 256 (finding, rule) matches"
            ),
            "{r:#?}"
        );
        // A breaching Ingestion_SchemaOk is refused either way; at admission
        // its reasons stay within the budget and say what was left out.
        let p = fx.p(
            "Ingestion_SchemaOk",
            json!({ "schema_hash": Hash::of_bytes(b"s"), "findings": leaks(LIST_ITEMS_MAX) }),
            &fx.keys.worker,
        );
        let r = fx.judge(&p, Judged::Admission).unwrap_err();
        assert_eq!(r.guard, "policy");
        assert!(
            r.reasons.join("; ").len() <= guards::BREACH_REASONS_BYTES_MAX,
            "{r:#?}"
        );
        let last = r.reasons.last().unwrap();
        assert!(
            last.contains("more breaches left out") && last.contains("send fewer findings"),
            "{last}"
        );
        assert!(says(
            &r,
            "finding 'secret_leak' (key 0) breaches policy rule 'no-secrets'"
        ));
        let replayed = fx.judge(&p, Judged::Replay).unwrap_err();
        assert_eq!(replayed.reasons.len(), LIST_ITEMS_MAX);
    }

    /// A breaching `Ingestion_SchemaOk` is refused as `policy` even when
    /// the list also breaks an admission bound (a detail over
    /// TEXT_BYTES_MAX, a near-miss code, a repeat): that refusal is what
    /// makes the leader quarantine, and the quarantine it builds
    /// (`quarantine_findings`) passes `Ingestion_PolicyViolation`'s
    /// admission and quarantines the project.
    #[test]
    fn a_breach_among_oversized_or_misspelled_findings_is_still_quarantined() {
        let mut fx = Fx::new("breach-bounds");
        fx.drive(|s| s.ingestion.phase == "VALIDATE");
        let trace = "é".repeat(TEXT_BYTES_MAX); // 2 KiB, two bytes a char
        let findings = json!([
            { "code": "Secret-Leak", "detail": "near miss" },
            { "code": "secret_leak", "detail": trace },
            { "code": "secret_leak", "detail": format!("{trace}!") },
            { "code": "style", "detail": "tabs" },
        ]);
        let p = fx.p(
            "Ingestion_SchemaOk",
            json!({ "schema_hash": Hash::of_bytes(b"s"), "findings": findings }),
            &fx.keys.worker,
        );
        let r = fx.judge(&p, Judged::Admission).unwrap_err();
        assert_eq!(r.guard, "policy", "{r:#?}");
        let findings: Vec<Finding> = serde_json::from_value(findings).unwrap();
        let q = guards::quarantine_findings(&fx.st().policy.rules, &findings);
        // Both details cut to the same text: one finding.
        assert_eq!(q.len(), 1, "{q:?}");
        assert_eq!(q[0].code, "secret_leak");
        assert!(q[0].detail.len() <= TEXT_BYTES_MAX && q[0].detail.ends_with('…'));
        let p = fx.p(
            "Ingestion_PolicyViolation",
            json!({ "findings": q }),
            &fx.keys.leader,
        );
        fx.accept(&p);
        assert_eq!(fx.st().policy.phase, "QUARANTINED");
    }

    /// A code some rule denies exactly is not refused as a near miss of
    /// another rule's spelling.
    #[test]
    fn an_exact_deny_code_is_never_a_near_miss() {
        let mut fx = Fx::new("codes-exact");
        fx.drive(|s| s.ingestion.phase == "VALIDATE");
        let rules = json!([
            { "id": "lower", "deny_codes": ["secret_leak"], "rationale": "a" },
            { "id": "upper", "deny_codes": ["SECRET_LEAK"], "rationale": "b" },
        ]);
        let p = fx.p("Policy_Update", json!({ "rules": rules }), &fx.keys.admin);
        fx.accept(&p);
        let p = fx.p(
            "Ingestion_PolicyViolation",
            json!({ "findings": [{ "code": "secret_leak", "detail": "" }] }),
            &fx.keys.worker,
        );
        assert_eq!(fx.judge(&p, Judged::Admission), Ok(()));
        let p = fx.p(
            "Ingestion_PolicyViolation",
            json!({ "findings": [{ "code": "Secret_Leak", "detail": "" }] }),
            &fx.keys.worker,
        );
        let r = fx.judge(&p, Judged::Admission).unwrap_err();
        assert!(says(&r, "which policy rule \"lower\" denies"), "{r:#?}");
    }

    fn approved(label: &str) -> Fx {
        let mut fx = Fx::new(label);
        fx.drive(|s| s.execution.approvals.len() >= 2);
        fx
    }

    fn submit(fx: &Fx) -> Proposal {
        fx.p(
            "Execution_Submit",
            json!({ "submission_hash": crate::hash::Hash::of_bytes(b"s") }),
            &fx.keys.leader,
        )
    }

    #[test]
    fn a_submission_needs_a_certified_ready_council_at_admission() {
        // An ejection clears the certificate: the approvals of the members
        // left no longer carry a submission.
        let mut fx = approved("submit");
        let st = fx.st();
        let idle = st
            .council
            .elected
            .iter()
            .find(|m| !st.execution.approvals.contains(m))
            .unwrap()
            .clone();
        let eject = fx.p(
            "Council_Eject",
            json!({ "member": idle, "reason": "stopped answering" }),
            &fx.keys.leader,
        );
        fx.accept(&eject);
        assert_eq!(fx.st().council.quorum_cert, None);
        let r = fx.admitted_only(&submit(&fx), "approvals");
        assert!(
            says(&r, "holds no quorum certificate") && says(&r, "re-elect the council"),
            "{r:#?}"
        );

        // Tooling lost: certified, but not READY.
        let mut fx = approved("submit-tooling");
        let probes = Driver::new(&fx.keys, 1).probes(&fx.st(), fx.hlc(), false);
        let lost = fx.p(
            "Council_ToolingLost",
            json!({ "probes": probes }),
            &fx.keys.prober,
        );
        fx.accept(&lost);
        let r = fx.admitted_only(&submit(&fx), "approvals");
        assert!(
            says(&r, "the council is TOOLING_SYNC, not READY") && says(&r, "Council_McpGreen"),
            "{r:#?}"
        );
        // Back to READY: admitted.
        let probes = Driver::new(&fx.keys, 1).probes(&fx.st(), fx.hlc(), true);
        let green = fx.p(
            "Council_McpGreen",
            json!({ "probes": probes }),
            &fx.keys.prober,
        );
        fx.accept(&green);
        assert_eq!(fx.judge(&submit(&fx), Judged::Admission), Ok(()));
    }

    /// An optional field sent as `null` decodes like an absent one but
    /// hashes differently, so a new proposal must leave it out; replay
    /// takes what an earlier build accepted. A legacy genesis accepts
    /// unbound votes, whose `genesis` is the optional field.
    #[test]
    fn the_leaders_key_forms_are_refused_from_other_signers_at_admission() {
        let quarantine = format!("shhh-quarantine:{}", "ab".repeat(32));
        for key in [
            quarantine.as_str(),
            "default:7:Council_QuorumCert:council-epoch-3",
            "p:0:Council_ReElect:council-epoch-12",
        ] {
            assert!(reserved_idem_key(key), "{key}");
        }
        // A client's own keys, the CLI's default for a project `shhh-prod`
        // included, are not the leader's forms.
        for key in [
            "shhh-prod:Boot_ConfigOk:f76c",
            "shhh-quarantine:ab12",
            "a:council-epoch-3",
            "p:7:Council_QuorumCert:council-epoch-",
            "p:x:Council_QuorumCert:council-epoch-3",
            "p:7:Other:council-epoch-3",
            "goal:1:op:uuid",
        ] {
            assert!(!reserved_idem_key(key), "{key}");
        }
        let fx = Fx::new("reserved-keys");
        let inputs = json!({ "config_hash": Hash::of_bytes(b"config") });
        let with_key = |key: &str, signer: &SigningKey| {
            ProposalBuilder::new(P, "Boot_ConfigOk", fx.node.project_hash(P), fx.hlc(), key)
                .inputs(&inputs)
                .unwrap()
                .sign(signer)
                .unwrap()
        };
        let r = fx.admitted_only(&with_key(&quarantine, &fx.keys.admin), "idem_key");
        assert!(says(&r, "only the leader may use"), "{r:#?}");
        // The leader itself may (its quarantines and certificates do).
        assert_eq!(
            fx.judge(&with_key(&quarantine, &fx.keys.leader), Judged::Admission),
            Ok(())
        );
        assert_eq!(
            fx.judge(
                &with_key("shhh-prod:x:1", &fx.keys.admin),
                Judged::Admission
            ),
            Ok(())
        );
    }

    #[test]
    fn a_null_in_inputs_is_refused_at_admission() {
        let mut fx = Fx::with_genesis("nulls", |g| g.facts_bound_to_genesis = false);
        fx.drive(|s| s.council.phase == "ELECT");
        let st = fx.st();
        let members = Driver::new(&fx.keys, 1).members();
        let votes: Vec<Vote> = Driver::new(&fx.keys, 1)
            .votes(&st, &members, true)
            .into_iter()
            .zip(&fx.keys.council)
            .map(|(v, k)| {
                let mut body = v.body;
                body.genesis = None;
                Vote::cast(body, k)
            })
            .collect();
        let absent = json!({ "members": members, "votes": votes });
        assert!(!absent.to_string().contains("null"), "{absent}");
        let mut spelled_null = absent.clone();
        spelled_null["votes"][1]["body"]["genesis"] = Json::Null;
        let cert = |inputs: &Json| fx.p("Council_QuorumCert", inputs.clone(), &fx.keys.leader);
        assert_ne!(
            cert(&absent).inputs_hash,
            cert(&spelled_null).inputs_hash,
            "the two spellings hash differently"
        );
        assert_eq!(fx.judge(&cert(&absent), Judged::Admission), Ok(()));
        let r = fx.admitted_only(&cert(&spelled_null), "inputs");
        assert_eq!(r.kind, RejectKind::Malformed, "{r:#?}");
        assert!(
            says(&r, "inputs.votes[1].body.genesis is null") && says(&r, "omit"),
            "{r:#?}"
        );
    }

    /// Votes and probes carry the genesis they were signed for. One bound
    /// to another genesis is refused in every cluster (a council or prober
    /// key shared by two clusters must not carry a vote from one into the
    /// other); an unbound one only where the genesis requires binding, so
    /// the facts of logs written before binding existed replay as they did.
    #[test]
    fn votes_and_probes_must_be_bound_to_this_clusters_genesis() {
        let other = Hash::of_bytes(b"the genesis of another cluster");
        let rebind = |votes: &mut Vec<Vote>, keys: &Keys, to: Option<Hash>| {
            for (v, k) in votes.iter_mut().zip(&keys.council) {
                let mut body = v.body.clone();
                body.genesis = to;
                *v = Vote::cast(body, k);
            }
        };
        let rebind_probes = |probes: &mut [Probe], keys: &Keys, to: Option<Hash>| {
            for p in probes.iter_mut() {
                let mut body = p.body.clone();
                body.genesis = to;
                *p = Probe::sign(body, &keys.prober);
            }
        };
        for bound_genesis in [true, false] {
            let label = if bound_genesis { "bound" } else { "legacy" };
            let mut fx = Fx::with_genesis(label, |g| g.facts_bound_to_genesis = bound_genesis);
            assert_eq!(fx.st().meta.facts_bound_to_genesis, bound_genesis);
            fx.drive(|s| s.council.phase == "ELECT");
            let st = fx.st();
            let members = Driver::new(&fx.keys, 1).members();
            let cert = |votes: &[Vote]| {
                fx.p(
                    "Council_QuorumCert",
                    json!({ "members": members, "votes": votes }),
                    &fx.keys.leader,
                )
            };
            let mut votes = Driver::new(&fx.keys, 1).votes(&st, &members, true);
            assert!(votes
                .iter()
                .all(|v| v.body.genesis == Some(st.meta.genesis)));
            assert_eq!(
                fx.judge(&cert(&votes), Judged::Admission),
                Ok(()),
                "{label}"
            );

            rebind(&mut votes, &fx.keys, Some(other));
            for judged in [Judged::Admission, Judged::Replay] {
                let r = fx.judge(&cert(&votes), judged).unwrap_err();
                assert_eq!(r.guard, "quorum", "{r:#?}");
                assert!(
                    says(
                        &r,
                        &format!("was signed for the cluster of genesis {other}")
                    ) && says(&r, "collect a vote the member cast for this cluster"),
                    "{label}: {r:#?}"
                );
            }

            rebind(&mut votes, &fx.keys, None);
            let unbound = fx.judge(&cert(&votes), Judged::Replay);
            if bound_genesis {
                let r = unbound.unwrap_err();
                assert!(
                    says(
                        &r,
                        "names no genesis, and this cluster requires facts bound to its genesis"
                    ),
                    "{r:#?}"
                );
            } else {
                assert_eq!(unbound, Ok(()), "a legacy cluster accepts unbound votes");
            }

            // Probes: a tooling loss shown by a valid probe is refused at
            // admission beside a probe signed for another cluster (the
            // reducer records every probe of the list).
            fx.drive(|s| s.council.phase == "READY");
            let mut probes = Driver::new(&fx.keys, 1).probes(&fx.st(), fx.hlc(), false);
            assert!(probes.len() > 1 && !probes[0].body.reachable);
            let mut mixed = probes.clone();
            rebind_probes(&mut mixed[1..], &fx.keys, Some(other));
            let lost = |probes: &[Probe]| {
                fx.p(
                    "Council_ToolingLost",
                    json!({ "probes": probes }),
                    &fx.keys.prober,
                )
            };
            let r = fx.admitted_only(&lost(&mixed), "mcp_health");
            assert!(
                says(
                    &r,
                    &format!("was signed for the cluster of genesis {other}")
                ),
                "{label}: {r:#?}"
            );
            if bound_genesis {
                rebind_probes(&mut mixed[1..], &fx.keys, None);
                let r = fx.judge(&lost(&mixed), Judged::Admission).unwrap_err();
                assert!(says(&r, "names no genesis"), "{r:#?}");
            } else {
                rebind_probes(&mut probes[1..], &fx.keys, None);
            }
            fx.accept(&fx.p(
                "Council_ToolingLost",
                json!({ "probes": probes }),
                &fx.keys.prober,
            ));
            assert_eq!(fx.st().council.phase, "TOOLING_SYNC");
            let green = |probes: &[Probe]| {
                fx.p(
                    "Council_McpGreen",
                    json!({ "probes": probes }),
                    &fx.keys.prober,
                )
            };
            let mut probes = Driver::new(&fx.keys, 1).probes(&fx.st(), fx.hlc(), true);
            assert_eq!(
                fx.judge(&green(&probes), Judged::Admission),
                Ok(()),
                "{label}"
            );
            rebind_probes(&mut probes, &fx.keys, Some(other));
            let r = fx.judge(&green(&probes), Judged::Replay).unwrap_err();
            assert!(
                says(
                    &r,
                    &format!("was signed for the cluster of genesis {other}")
                ) && says(&r, "swoosh probe sign --genesis"),
                "{label}: {r:#?}"
            );
            rebind_probes(&mut probes, &fx.keys, None);
            let unbound = fx.judge(&green(&probes), Judged::Replay);
            if bound_genesis {
                assert!(says(&unbound.unwrap_err(), "names no genesis"));
            } else {
                assert_eq!(unbound, Ok(()), "a legacy cluster accepts unbound probes");
            }
        }
    }

    #[test]
    fn refusals_say_what_to_do() {
        // License tokens.
        let mut fx = Fx::new("say");
        fx.drive(|s| s.boot.phase == "LICENSE_CHECK");
        let hlc = fx.hlc();
        let token = |key: &SigningKey, edit: &dyn Fn(&mut LicenseBody)| {
            let mut b = LicenseBody {
                cluster_id: "say".into(),
                project: "*".into(),
                issued_at: hlc,
                expires_at: Hlc::new(hlc.wall_ms + 86_400_000, 0),
                grace_ms: 0,
                authority: SignerId::from_signing_key(key),
            };
            edit(&mut b);
            LicenseToken::issue(b, key)
        };
        let refused = |fx: &Fx, t: LicenseToken| {
            let p = fx.p("Boot_Licensed", json!({ "license": t }), &fx.keys.leader);
            fx.judge(&p, Judged::Admission).unwrap_err()
        };
        let later = Hlc::new(hlc.wall_ms + 1_000, 0);
        let r = refused(&fx, token(&fx.keys.admin, &|_| {}));
        assert!(
            says(&r, "request the token from a rostered license authority"),
            "{r:#?}"
        );
        let r = refused(
            &fx,
            token(&fx.keys.license_authority, &|b| {
                b.cluster_id = "other".into()
            }),
        );
        assert!(
            says(&r, "request a token issued for cluster \"say\""),
            "{r:#?}"
        );
        let r = refused(
            &fx,
            token(&fx.keys.license_authority, &|b| b.project = "other".into()),
        );
        assert!(
            says(&r, "request a token for project \"default\""),
            "{r:#?}"
        );
        let r = refused(
            &fx,
            token(&fx.keys.license_authority, &|b| b.issued_at = later),
        );
        assert!(
            says(&r, &format!("take an HLC at or after {later}")),
            "{r:#?}"
        );

        // Probes.
        fx.drive(|s| s.council.phase == "TOOLING_SYNC");
        let now = fx.hlc();
        let ahead = Hlc::new(now.wall_ms + 1, 0);
        let search = fx.probe("mcp-search", "0.9.0", true, now, &fx.keys.prober);
        let green = |fx: &Fx, git: Probe| {
            let p = fx.p(
                "Council_McpGreen",
                json!({ "probes": [git, search.clone()] }),
                &fx.keys.prober,
            );
            fx.judge(&p, Judged::Admission).unwrap_err()
        };
        let r = green(&fx, fx.probe("mcp-git", "1.4.2", true, now, &fx.keys.admin));
        assert!(says(&r, "have a rostered tool prober sign it"), "{r:#?}");
        let mut other = fx
            .probe("mcp-git", "1.4.2", true, now, &fx.keys.prober)
            .body;
        other.project = "other".into();
        let r = green(&fx, Probe::sign(other, &fx.keys.prober));
        assert!(says(&r, "probe the tool for project \"default\""), "{r:#?}");
        let r = green(
            &fx,
            fx.probe("mcp-git", "1.4.2", true, ahead, &fx.keys.prober),
        );
        assert!(
            says(&r, &format!("take an HLC at or after {ahead}"))
                && says(&r, &format!("or re-sign the probe at or before {now}")),
            "{r:#?}"
        );

        // Votes.
        let mut fx = Fx::new("say-votes");
        fx.drive(|s| s.council.phase == "ELECT");
        let st = fx.st();
        let d = Driver::new(&fx.keys, 1);
        let members = d.members();
        let set = crate::facts::member_set_hash(&members);
        let vote = |key: &SigningKey, project: &str| {
            Vote::cast(
                VoteBody {
                    project: project.into(),
                    epoch: st.epoch.council,
                    member_set_hash: set,
                    approve: true,
                    voter: SignerId::from_signing_key(key),
                    genesis: Some(st.meta.genesis),
                },
                key,
            )
        };
        let mut forged = vote(&fx.keys.council[0], P);
        forged.signature.0[5] ^= 1;
        let votes = vec![
            forged,
            vote(&fx.keys.admin, P),
            vote(&fx.keys.council[1], "other"),
            vote(&fx.keys.council[2], P),
        ];
        let p = fx.p(
            "Council_QuorumCert",
            json!({ "members": members, "votes": votes }),
            &fx.keys.leader,
        );
        let r = fx.judge(&p, Judged::Admission).unwrap_err();
        for s in [
            "collect a vote freshly signed by that member's own key",
            "leave its vote out, or ask an admin to give it the council role",
            "collect a vote for project \"default\"",
        ] {
            assert!(says(&r, s), "{s}: {r:#?}");
        }

        // Capacity.
        let mut fx = Fx::new("say-capacity");
        fx.drive(|s| s.meta.phase == "PROJECT_LIFECYCLE");
        assert_eq!(fx.st().environment.phase, "ALLOCATE");
        let p = fx.p(
            "Environment_CapacityOk",
            json!({ "request": { "cpu_milli": 1, "mem_mb": 65_536 }, "capacity": { "cpu_milli": 8, "mem_mb": 1_024 } }),
            &fx.keys.worker,
        );
        let r = fx.judge(&p, Judged::Admission).unwrap_err();
        assert_eq!(
            r.reasons,
            ["requested 65536 MB memory exceeds the 1024 MB available; wait for capacity or shrink the request"]
        );
    }

    /// A record or decision record over the store's limits is refused at
    /// admission, naming its size, instead of failing the WAL writer's group
    /// commit around it; a step within the limits is unaffected.
    #[test]
    fn an_oversized_record_is_refused_at_admission_not_by_the_wal() {
        let mut fx = Fx::new("oversized");
        let d = Driver::new(&fx.keys, u64::MAX);
        let Next::Propose(p) = d.next(&fx.node, P, fx.now) else {
            panic!("the driver has a first step");
        };
        let mut trial = fx.node.clone();
        let s = step(&mut trial, &p, &fx.ctx());
        let Outcome::Accepted(acc) = s.outcome else {
            panic!("{:?}", s.outcome)
        };
        let record = acc.record_bytes.as_ref().unwrap().len();
        let decision = acc.decision_bytes.as_ref().unwrap().len();
        assert!(record < RECORD_BYTES_MAX && decision < DECISION_RECORD_BYTES_MAX);
        // Through the live step's commit, with limits just below this
        // record's sizes: refused, and nothing of it installed.
        for (limits, what) in [
            (
                (record - 1, usize::MAX),
                format!("WAL record would be {record} bytes"),
            ),
            (
                (usize::MAX, decision - 1),
                format!("decision record would be {decision} bytes"),
            ),
        ] {
            let mut node = fx.node.clone();
            let before = (node.index, node.head_record, node.root_hash());
            let Ok(Eval::Apply(plan)) =
                evaluate(&node, &p, &fx.ctx(), None, None, Judged::Admission)
            else {
                panic!("the first step is admissible");
            };
            let s = commit_within(&mut node, &p, &fx.ctx(), *plan, limits);
            let Outcome::Rejected(r) = s.outcome else {
                panic!("{:?}", s.outcome)
            };
            assert_eq!(
                (r.kind, r.guard.as_str()),
                (RejectKind::Guard, "record_size")
            );
            assert!(r.reasons[0].contains(&what), "{r:?}");
            assert_eq!((node.index, node.head_record, node.root_hash()), before);
            assert!(node
                .idem
                .get(P)
                .is_none_or(|m| m.get(&p.idem_key).is_none()));
        }
        // Within the real limits the live step accepts it.
        fx.accept(&p);
    }
}
