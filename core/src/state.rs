//! The state document (per project), genesis, and the node's root hash.
//!
//! Every field is deterministic: ordered collections only, integers only.
//! A project's hash is BLAKE3 over the canonical CBOR of its document; the
//! node's root hash is a Merkle root whose first leaf is the genesis hash
//! and whose other leaves are (project id, project hash) in id order, so a
//! node with no projects has the genesis hash as its root.

use crate::backbeat::{Schedule, ScheduleError};
use crate::cbor::CanonicalError;
use crate::facts::{Check, Finding, Pins, PolicyRule, Resources, RosterEntry};
use crate::hash::{hash_of, Hash};
use crate::hlc::Hlc;
use crate::reducer::TEXT_BYTES_MAX;
use crate::sig::SignerId;
use crate::statechart::{schema_hash, Region, Role, MACHINE_VERSION};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const PROJECT_ID_BYTES_MAX: usize = 64;
pub const DEFAULT_PROJECT: &str = "default";
pub const ROSTER_ENTRIES_MAX: usize = 256;
pub const POLICY_RULES_MAX: usize = 256;
/// Most deny codes one policy rule may list. A rule names the finding codes
/// (and `source:<scheme>` codes) of one concern; 64 is far more than any
/// such list, and with `POLICY_RULES_MAX` rules of at most
/// `TEXT_BYTES_MAX`-byte codes keeps a rule set a bounded size. Checked
/// for new rules only (`Policy_Update` at admission, a new genesis).
pub const POLICY_DENY_CODES_MAX: usize = 64;
pub const FOLLOWERS_MAX: usize = 64;
/// Largest quorum threshold a new genesis may set. A certificate carries
/// the threshold's signed votes beside up to `ROSTER_ENTRIES_MAX` members
/// (78 bytes each) in one proposal's inputs (`INPUTS_BYTES_MAX`, 64 KiB).
/// A vote bound to its genesis, for a project id of `PROJECT_ID_BYTES_MAX`
/// bytes, is ~491 bytes, so above ~93 votes beside 251 members the
/// certificate cannot be proposed and the council could never be elected
/// (`net/tests/council_certificate.rs` builds that largest one). It was 100
/// before votes named their genesis; a genesis an earlier build accepted
/// with more still starts, and a certificate too large for it is refused
/// when built, naming `quorum_threshold`.
pub const QUORUM_THRESHOLD_MAX: u32 = 90;
/// Longest `probe_max_age_ms` a genesis may set: one day. A probe says
/// whether a tool answers now; one older than a day says nothing about
/// that, and a larger bound would let a long-stale probe keep a council
/// READY.
pub const PROBE_MAX_AGE_MS_MAX: u64 = 86_400_000;

/// A follower allowed to read the replicated WAL: its libp2p/HMMM identity
/// and the age X25519 recipient batches are encrypted to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowerEntry {
    pub name: String,
    pub key: SignerId,
    pub age_recipient: String,
}

/// The genesis document: fixes the cluster and the initial state of every
/// project. Its hash is the node's initial root hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    pub cluster_id: String,
    pub machine_version: String,
    pub leader: SignerId,
    pub roster: Vec<RosterEntry>,
    #[serde(default)]
    pub followers: Vec<FollowerEntry>,
    pub backbeat: Schedule,
    pub policy_rules: Vec<PolicyRule>,
    pub quorum_threshold: u32,
    pub hlc_max_offset_ms: u64,
    /// Probe facts older than this (relative to the proposal HLC) are stale.
    pub probe_max_age_ms: u64,
    /// Council votes and probe facts must name this genesis (their
    /// `genesis` field), so a vote or probe signed for another cluster with
    /// a shared key cannot be replayed here. Every new genesis sets it
    /// ([`Genesis::validate_new`]); a genesis written before it existed
    /// omits it (false) and keeps its hash, and its cluster accepts unbound
    /// facts as before (facts bound to another genesis are refused either way).
    #[serde(default, skip_serializing_if = "crate::state::is_false")]
    pub facts_bound_to_genesis: bool,
}

/// Serde's `skip_serializing_if` for flags added after launch: a document
/// that leaves them false encodes (and hashes) exactly as before them.
pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GenesisError {
    #[error("genesis machine_version is {got:?} but this build runs {MACHINE_VERSION:?}; use a genesis made for this version")]
    MachineVersion { got: String },
    #[error("genesis cluster_id must be 1..=64 characters of [a-z0-9-_.]")]
    ClusterId,
    #[error("genesis roster must name at least one admin")]
    NoAdmin,
    #[error("genesis roster lists {0} twice")]
    DuplicateSigner(String),
    #[error("genesis roster has {0} entries; at most {ROSTER_ENTRIES_MAX} are allowed")]
    RosterTooLarge(usize),
    #[error("genesis roster entry {0} has no roles")]
    NoRoles(String),
    #[error("genesis quorum_threshold {threshold} must be between 1 and the {council} council members of the roster")]
    Threshold { threshold: u32, council: usize },
    #[error("genesis leader {0} must be in the roster with the operator role (it proposes quorum certificates)")]
    Leader(String),
    #[error("genesis backbeat schedule: {0}")]
    Schedule(#[from] ScheduleError),
    #[error("genesis has {0} policy rules; at most {POLICY_RULES_MAX} are allowed")]
    TooManyRules(usize),
    #[error("genesis policy rule {index} ({id:?}): {why}")]
    PolicyRule {
        index: usize,
        /// The rule's id, cut to 80 bytes (it may be the field at fault).
        id: String,
        why: PolicyRuleError,
    },
    #[error("genesis policy rules {first} and {second} share the id {id:?}: a Policy_Update with two rules of one id is refused, and a breach reason names its rule by id; give each rule its own id")]
    DuplicatePolicyRuleId {
        first: usize,
        second: usize,
        /// Cut to 80 bytes, as in [`GenesisError::PolicyRule`].
        id: String,
    },
    #[error("genesis quorum_threshold {0} is above {QUORUM_THRESHOLD_MAX}: a certificate of that many signed votes does not fit in one proposal, so the council could never be elected; lower it")]
    QuorumThresholdTooLarge(u32),
    #[error("genesis has {0} followers; at most {FOLLOWERS_MAX} are allowed")]
    TooManyFollowers(usize),
    #[error("genesis hlc_max_offset_ms must be between 1 and 3600000")]
    Offset,
    #[error("genesis probe_max_age_ms is {0}; it must be between 1 and {PROBE_MAX_AGE_MS_MAX} (one day), e.g. 60000")]
    ProbeMaxAge(u64),
    #[error("genesis facts_bound_to_genesis is false: a new genesis must set it to true, so council votes and probe facts signed for another cluster are refused here (only a genesis written before the field existed may leave it out)")]
    FactsUnbound,
    #[error("genesis does not encode canonically: {0}")]
    Encode(#[from] CanonicalError),
}

impl Genesis {
    pub fn validate(&self) -> Result<(), GenesisError> {
        if self.machine_version != MACHINE_VERSION {
            return Err(GenesisError::MachineVersion {
                got: self.machine_version.clone(),
            });
        }
        if !valid_id(&self.cluster_id) {
            return Err(GenesisError::ClusterId);
        }
        validate_roster(&self.roster).map_err(|e| match e {
            RosterError::NoAdmin => GenesisError::NoAdmin,
            RosterError::Duplicate(s) => GenesisError::DuplicateSigner(s),
            RosterError::TooLarge(n) => GenesisError::RosterTooLarge(n),
            RosterError::NoRoles(s) => GenesisError::NoRoles(s),
        })?;
        let council = self
            .roster
            .iter()
            .filter(|r| r.roles.contains(&Role::Council))
            .count();
        if self.quorum_threshold == 0 || self.quorum_threshold as usize > council {
            return Err(GenesisError::Threshold {
                threshold: self.quorum_threshold,
                council,
            });
        }
        if !self
            .roster
            .iter()
            .any(|r| r.key == self.leader && r.roles.contains(&Role::Operator))
        {
            return Err(GenesisError::Leader(self.leader.to_string()));
        }
        self.backbeat.validate()?;
        if self.policy_rules.len() > POLICY_RULES_MAX {
            return Err(GenesisError::TooManyRules(self.policy_rules.len()));
        }
        if self.followers.len() > FOLLOWERS_MAX {
            return Err(GenesisError::TooManyFollowers(self.followers.len()));
        }
        if self.hlc_max_offset_ms == 0 || self.hlc_max_offset_ms > 3_600_000 {
            return Err(GenesisError::Offset);
        }
        Ok(())
    }

    /// [`Self::validate`] and the checks only a new genesis must pass (made
    /// by `swoosh init`, the demo, enroll, a bench): a probe age of 1 ms to
    /// a day, facts bound to the genesis, the schedule's [`Schedule::validate_new`], a quorum threshold
    /// of at most [`QUORUM_THRESHOLD_MAX`] and policy rules within
    /// [`validate_policy_rule`]'s bounds, each id once (as `Policy_Update`
    /// requires). Every recovery
    /// validates the stored genesis with `validate`, so a cluster whose
    /// genesis an earlier build accepted still starts.
    pub fn validate_new(&self) -> Result<(), GenesisError> {
        self.validate()?;
        if !self.facts_bound_to_genesis {
            return Err(GenesisError::FactsUnbound);
        }
        self.backbeat.validate_new()?;
        if self.probe_max_age_ms == 0 || self.probe_max_age_ms > PROBE_MAX_AGE_MS_MAX {
            return Err(GenesisError::ProbeMaxAge(self.probe_max_age_ms));
        }
        if self.quorum_threshold > QUORUM_THRESHOLD_MAX {
            return Err(GenesisError::QuorumThresholdTooLarge(self.quorum_threshold));
        }
        let mut first_of = std::collections::BTreeMap::new();
        for (index, r) in self.policy_rules.iter().enumerate() {
            validate_policy_rule(r).map_err(|why| GenesisError::PolicyRule {
                index,
                id: crate::hash::truncate(&r.id),
                why,
            })?;
            if let Some(&first) = first_of.get(r.id.as_str()) {
                return Err(GenesisError::DuplicatePolicyRuleId {
                    first,
                    second: index,
                    id: crate::hash::truncate(&r.id),
                });
            }
            first_of.insert(r.id.as_str(), index);
        }
        Ok(())
    }

    pub fn hash(&self) -> Result<Hash, CanonicalError> {
        hash_of(self)
    }
}

/// Why a new policy rule is refused (`Policy_Update` at admission, a new
/// genesis). The field is named as in the rule (`id`, `rationale`,
/// `deny_codes[i]`).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRuleError {
    #[error("its {field} is {len} bytes; at most {TEXT_BYTES_MAX} are allowed: shorten it")]
    TextTooLong { field: String, len: usize },
    #[error("it lists {0} deny codes; at most {POLICY_DENY_CODES_MAX} are allowed: split it into several rules")]
    TooManyDenyCodes(usize),
}

/// The bounds a new policy rule must keep: an id, a rationale and deny
/// codes of at most `TEXT_BYTES_MAX` bytes each, and at most
/// `POLICY_DENY_CODES_MAX` deny codes. The rationale is copied into every
/// breach reason the rule gives, so an unbounded one would make records of
/// unbounded size. Not checked in replay or on a stored genesis: rules an
/// earlier build accepted stay in force.
pub fn validate_policy_rule(r: &PolicyRule) -> Result<(), PolicyRuleError> {
    if r.deny_codes.len() > POLICY_DENY_CODES_MAX {
        return Err(PolicyRuleError::TooManyDenyCodes(r.deny_codes.len()));
    }
    let long = |field: String, s: &str| {
        if s.len() > TEXT_BYTES_MAX {
            Err(PolicyRuleError::TextTooLong {
                field,
                len: s.len(),
            })
        } else {
            Ok(())
        }
    };
    long("id".into(), &r.id)?;
    long("rationale".into(), &r.rationale)?;
    for (i, c) in r.deny_codes.iter().enumerate() {
        long(format!("deny_codes[{i}]"), c)?;
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    #[error("it names no admin; keep at least one signer with the admin role")]
    NoAdmin,
    #[error("it lists {0} twice; list each key once with all its roles")]
    Duplicate(String),
    #[error("it has {0} entries; at most {ROSTER_ENTRIES_MAX} are allowed")]
    TooLarge(usize),
    #[error("entry {0} has no roles; give it at least one or remove it")]
    NoRoles(String),
}

pub fn validate_roster(roster: &[RosterEntry]) -> Result<(), RosterError> {
    if roster.len() > ROSTER_ENTRIES_MAX {
        return Err(RosterError::TooLarge(roster.len()));
    }
    if !roster.iter().any(|r| r.roles.contains(&Role::Admin)) {
        return Err(RosterError::NoAdmin);
    }
    let mut seen = std::collections::BTreeSet::new();
    for r in roster {
        if !seen.insert(&r.key) {
            return Err(RosterError::Duplicate(r.key.to_string()));
        }
        if r.roles.is_empty() {
            return Err(RosterError::NoRoles(r.key.to_string()));
        }
    }
    Ok(())
}

/// Project and cluster ids: 1..=64 bytes of `[a-z0-9._-]`, starting alphanumeric.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= PROJECT_ID_BYTES_MAX
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub machine_version: String,
    pub schema_hash: Hash,
    pub genesis: Hash,
    pub cluster_id: String,
    pub project: String,
    /// Top-level Project region state: BOOT, PROJECT_LIFECYCLE, EXECUTION, TERMINATED.
    pub phase: String,
    pub hlc_max_offset_ms: u64,
    pub probe_max_age_ms: u64,
    pub terminated_rationale: Option<String>,
    /// The genesis's `facts_bound_to_genesis`: votes and probes without a
    /// `genesis` field are refused. Omitted when false, so the state of a
    /// cluster made before it hashes as it always did.
    #[serde(default, skip_serializing_if = "is_false")]
    pub facts_bound_to_genesis: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseStatus {
    pub token_hash: Hash,
    pub authority: SignerId,
    pub expires_at: Hlc,
    pub grace_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    pub phase: String,
    pub config_hash: Option<Hash>,
    pub license: Option<LicenseStatus>,
    /// The roster: authorized signers and their roles (sorted by key).
    pub identities: Vec<RosterEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ingestion {
    pub phase: String,
    pub sources: Vec<String>,
    pub content_hash: Option<Hash>,
    pub bytes: u64,
    pub schema_hash: Option<Hash>,
    pub findings: Vec<Finding>,
    pub index_hash: Option<Hash>,
    pub version: u64,
    pub rollbacks: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolStatus {
    pub reachable: bool,
    pub version: String,
    pub probed_at: Hlc,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Council {
    pub phase: String,
    pub roles: Vec<String>,
    pub candidates: Vec<SignerId>,
    /// Required MCP tools and their pinned versions.
    pub tools: BTreeMap<String, String>,
    pub elected: Vec<SignerId>,
    pub member_set_hash: Option<Hash>,
    /// Hash of the accepted vote set (the quorum certificate).
    pub quorum_cert: Option<Hash>,
    pub quorum_threshold: u32,
    pub tooling: BTreeMap<String, ToolStatus>,
    pub ejected: Vec<SignerId>,
    pub elections: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    pub phase: String,
    pub request: Option<Resources>,
    pub capacity: Option<Resources>,
    pub assets: Vec<String>,
    pub env_hash: Option<Hash>,
    pub health: Vec<Check>,
    pub deprovisions: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    pub phase: String,
    pub schedule: Schedule,
    pub pins: Option<Pins>,
    pub plan_hash: Option<Hash>,
    pub window_id: Option<String>,
    pub work_hash: Option<Hash>,
    pub review_hash: Option<Hash>,
    pub approvals: Vec<SignerId>,
    pub submission: Option<Hash>,
    /// Evidence pointers (UCXL/BUBBLE addresses) of the current window.
    pub evidence: Vec<String>,
    pub loops: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    pub phase: String,
    pub reason: Option<String>,
    pub degraded_by_license: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub phase: String,
    pub rules: Vec<PolicyRule>,
    pub rationale: Option<String>,
    /// The findings that caused the current quarantine, if any.
    pub findings: Vec<Finding>,
    pub quarantines: u64,
}

/// One epoch counter per region; each advances exactly once per region advance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Epochs {
    pub project: u64,
    pub boot: u64,
    pub ingestion: u64,
    pub council: u64,
    pub environment: u64,
    pub execution: u64,
    pub control: u64,
    pub policy: u64,
}

impl Epochs {
    pub fn get(&self, r: Region) -> u64 {
        match r {
            Region::Project => self.project,
            Region::Boot => self.boot,
            Region::Ingestion => self.ingestion,
            Region::Council => self.council,
            Region::Environment => self.environment,
            Region::Execution => self.execution,
            Region::Control => self.control,
            Region::Policy => self.policy,
        }
    }
    pub fn bump(&mut self, r: Region) {
        let e = match r {
            Region::Project => &mut self.project,
            Region::Boot => &mut self.boot,
            Region::Ingestion => &mut self.ingestion,
            Region::Council => &mut self.council,
            Region::Environment => &mut self.environment,
            Region::Execution => &mut self.execution,
            Region::Control => &mut self.control,
            Region::Policy => &mut self.policy,
        };
        *e += 1;
    }
}

/// A region section of a project document, shared between a state and the
/// state derived from it until one of them writes to it. Every transition
/// clones its project's document (pre → post): that now copies eight
/// pointers, and a write through `DerefMut` copies only the section written
/// (`Arc::make_mut`). It encodes, compares and prints exactly as the `T` it
/// holds, so no hash or output changes.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Section<T>(std::sync::Arc<T>);

impl<T> Section<T> {
    /// Both hold the very same section (no comparison of contents needed).
    pub fn same(a: &Section<T>, b: &Section<T>) -> bool {
        std::sync::Arc::ptr_eq(&a.0, &b.0)
    }
}

impl<T> From<T> for Section<T> {
    fn from(v: T) -> Section<T> {
        Section(std::sync::Arc::new(v))
    }
}

impl<T> std::ops::Deref for Section<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Clone> std::ops::DerefMut for Section<T> {
    fn deref_mut(&mut self) -> &mut T {
        std::sync::Arc::make_mut(&mut self.0)
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Section<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: Serialize> Serialize for Section<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Section<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Section::from)
    }
}

/// The (signer, idem_key) of the last applied proposal, for HLC tie-breaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderKey {
    pub signer: SignerId,
    pub idem_key: String,
}

/// The canonical, hashed state document of one project (brief §7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectState {
    pub meta: Section<Meta>,
    pub boot: Section<Boot>,
    pub ingestion: Section<Ingestion>,
    pub council: Section<Council>,
    pub environment: Section<Environment>,
    pub execution: Section<Execution>,
    pub control: Section<Control>,
    pub policy: Section<Policy>,
    pub epoch: Epochs,
    pub hlc_last: Option<Hlc>,
    pub order_last: Option<OrderKey>,
    pub applied: u64,
}

impl ProjectState {
    /// The state a project has before its first accepted transition.
    pub fn initial(genesis: &Genesis, genesis_hash: Hash, project: &str) -> ProjectState {
        let mut identities = genesis.roster.clone();
        identities.sort_by(|a, b| a.key.cmp(&b.key));
        ProjectState {
            meta: Meta {
                machine_version: MACHINE_VERSION.to_string(),
                schema_hash: schema_hash(),
                genesis: genesis_hash,
                cluster_id: genesis.cluster_id.clone(),
                project: project.to_string(),
                phase: Region::Project.initial().to_string(),
                hlc_max_offset_ms: genesis.hlc_max_offset_ms,
                probe_max_age_ms: genesis.probe_max_age_ms,
                terminated_rationale: None,
                facts_bound_to_genesis: genesis.facts_bound_to_genesis,
            }
            .into(),
            boot: Boot {
                phase: Region::Boot.initial().into(),
                config_hash: None,
                license: None,
                identities,
            }
            .into(),
            ingestion: Ingestion {
                phase: Region::Ingestion.initial().into(),
                sources: vec![],
                content_hash: None,
                bytes: 0,
                schema_hash: None,
                findings: vec![],
                index_hash: None,
                version: 0,
                rollbacks: 0,
            }
            .into(),
            council: Council {
                phase: Region::Council.initial().into(),
                roles: vec![],
                candidates: vec![],
                tools: BTreeMap::new(),
                elected: vec![],
                member_set_hash: None,
                quorum_cert: None,
                quorum_threshold: genesis.quorum_threshold,
                tooling: BTreeMap::new(),
                ejected: vec![],
                elections: 0,
            }
            .into(),
            environment: Environment {
                phase: Region::Environment.initial().into(),
                request: None,
                capacity: None,
                assets: vec![],
                env_hash: None,
                health: vec![],
                deprovisions: 0,
            }
            .into(),
            execution: Execution {
                phase: Region::Execution.initial().into(),
                schedule: genesis.backbeat.clone(),
                pins: None,
                plan_hash: None,
                window_id: None,
                work_hash: None,
                review_hash: None,
                approvals: vec![],
                submission: None,
                evidence: vec![],
                loops: 0,
            }
            .into(),
            control: Control {
                phase: Region::Control.initial().into(),
                reason: None,
                degraded_by_license: false,
            }
            .into(),
            policy: Policy {
                phase: Region::Policy.initial().into(),
                rules: genesis.policy_rules.clone(),
                rationale: None,
                findings: vec![],
                quarantines: 0,
            }
            .into(),
            epoch: Epochs::default(),
            hlc_last: None,
            order_last: None,
            applied: 0,
        }
    }

    pub fn hash(&self) -> Hash {
        hash_of(self).expect("state documents contain no floats and always encode")
    }

    /// [`ProjectState::hash`], reusing the canonical encodings of the eight
    /// region sections that `memo` already holds (most transitions change
    /// one or two of them) and re-encoding only the rest. Bit-identical to
    /// `hash()`: the document is still BLAKE3 over its whole canonical CBOR,
    /// assembled from per-field encodings in canonical key order (a CBOR
    /// item's canonical encoding does not depend on where it is nested).
    /// `memo` is keyed by value, so it can never serve bytes of a section
    /// that differs from the one being hashed.
    pub fn hash_memo(&self, memo: &mut HashMemo) -> Hash {
        // The document is assembled in one buffer and hashed in one call:
        // BLAKE3 hashes whole 1 KiB chunks of one input side by side (SIMD),
        // but fed in small pieces it compresses one 64-byte block at a time.
        // This hash (~5 KB, every transition, on every replica) was the
        // largest BLAKE3 input of the replication path (docs/performance.md).
        thread_local! {
            static DOC: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        DOC.with(|doc| {
            let mut doc = doc.borrow_mut();
            doc.clear();
            self.assemble_memo(memo, &mut doc);
            Hash::of_bytes(&doc)
        })
    }

    /// The canonical encoding of this document from `memo`'s section
    /// encodings and fresh encodings of the rest (see [`Self::hash_memo`]).
    fn assemble_memo(&self, memo: &mut HashMemo, out: &mut Vec<u8>) {
        fn enc<T: Serialize>(v: &T) -> Vec<u8> {
            crate::cbor::to_canonical(v)
                .expect("state documents contain no floats and always encode")
        }
        // A map of 12 entries (major type 5), then the entries in the
        // canonical order of their encoded keys: shorter keys first, then
        // bytewise (see `cbor_fast`).
        out.push(0xa0 | 12);
        let mut field = |key: &str, bytes: &[u8]| {
            out.push(0x60 | key.len() as u8);
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(bytes);
        };
        field("boot", HashMemo::bytes(&mut memo.boot, &self.boot));
        field("meta", HashMemo::bytes(&mut memo.meta, &self.meta));
        field("epoch", &enc(&self.epoch));
        field("policy", HashMemo::bytes(&mut memo.policy, &self.policy));
        field("applied", &enc(&self.applied));
        field("control", HashMemo::bytes(&mut memo.control, &self.control));
        field("council", HashMemo::bytes(&mut memo.council, &self.council));
        field("hlc_last", &enc(&self.hlc_last));
        field(
            "execution",
            HashMemo::bytes(&mut memo.execution, &self.execution),
        );
        field(
            "ingestion",
            HashMemo::bytes(&mut memo.ingestion, &self.ingestion),
        );
        field("order_last", &enc(&self.order_last));
        field(
            "environment",
            HashMemo::bytes(&mut memo.environment, &self.environment),
        );
    }

    /// The current state of a region.
    pub fn region_state(&self, r: Region) -> &str {
        match r {
            Region::Project => &self.meta.phase,
            Region::Boot => &self.boot.phase,
            Region::Ingestion => &self.ingestion.phase,
            Region::Council => &self.council.phase,
            Region::Environment => &self.environment.phase,
            Region::Execution => &self.execution.phase,
            Region::Control => &self.control.phase,
            Region::Policy => &self.policy.phase,
        }
    }

    pub fn set_region_state(&mut self, r: Region, s: &str) {
        let slot = match r {
            Region::Project => &mut self.meta.phase,
            Region::Boot => &mut self.boot.phase,
            Region::Ingestion => &mut self.ingestion.phase,
            Region::Council => &mut self.council.phase,
            Region::Environment => &mut self.environment.phase,
            Region::Execution => &mut self.execution.phase,
            Region::Control => &mut self.control.phase,
            Region::Policy => &mut self.policy.phase,
        };
        s.clone_into(slot);
    }

    pub fn roles_of(&self, signer: &SignerId) -> Option<&[Role]> {
        self.boot
            .identities
            .binary_search_by(|e| e.key.cmp(signer))
            .ok()
            .map(|i| self.boot.identities[i].roles.as_slice())
    }

    /// A JSON-able projection of named sections (`GET /state?projection=`).
    pub fn section_names() -> &'static [&'static str] {
        &[
            "meta",
            "boot",
            "ingestion",
            "council",
            "environment",
            "execution",
            "control",
            "policy",
            "epoch",
            "hlc_last",
        ]
    }
}

/// Outcome of an accepted proposal, kept per (project, idem_key) so a repeat
/// returns it instead of applying twice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdemEntry {
    /// Hash of the proposal's signing body: "same content".
    pub content_hash: Hash,
    pub transition: String,
    pub index: u64,
    pub state_post_hash: Hash,
    pub decision: Hash,
}

/// Everything a node derives from genesis + the WAL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub genesis: Genesis,
    pub genesis_hash: Hash,
    pub projects: BTreeMap<String, ProjectEntry>,
    /// Index of the last applied WAL record (0 = none).
    pub index: u64,
    /// Hash of the last applied WAL record (genesis hash when none).
    pub head_record: Hash,
    /// Highest HLC applied on this node, across projects.
    pub hlc: Option<Hlc>,
    /// Idempotency window: project → idem_key → original outcome, bounded
    /// per project and in all (see [`IdemIndex`]). Derived from the WAL; not
    /// part of any state hash.
    pub idem: IdemIndex,
}

/// Idempotency entries kept per project in the node state (and so in every
/// snapshot). Past it the oldest [`IDEM_EVICT_BATCH`] of the project (by WAL
/// index) go.
///
/// For the same signed proposal, exactly-once does not depend on the
/// window: an evicted proposal can never apply again, because it names a
/// state hash that is no longer HEAD (every accepted transition changes the
/// project hash: the document counts them) and an HLC at or below
/// `hlc_last`. What the window bounds is how long the pure reducer alone
/// answers a repeat with its *original outcome* (202) rather than a 409; a
/// node recalls older keys from its durable index
/// (`reducer::step_recalled`). A key signed again into a *new* proposal
/// (fresh HLC and HEAD) is kept from applying twice only by that lookup: by
/// the window, or by the durable index, which a leader's store holds for
/// every record it wrote (a store seeded from an installed snapshot holds
/// only the snapshot's window for the records at or below its base).
pub const IDEM_KEYS_PER_PROJECT_MAX: usize = 4_096;
/// Idempotency entries kept in all, across projects. Past it the oldest
/// [`IDEM_EVICT_BATCH`] of the node (by WAL index) go. Without it the window
/// grew with the number of projects (~300 bytes of memory and of every
/// snapshot per entry, so ~1.3 MB per busy project).
pub const IDEM_KEYS_TOTAL_MAX: usize = 65_536;
pub const IDEM_EVICT_BATCH: usize = 1_024;

/// The bounded idempotency window of a node: for each project, the idem keys
/// of its newest accepted records with their original outcomes.
///
/// Eviction depends only on the entries' WAL indexes, so every replica and
/// every replay holds the same window at the same index. Serialized (and
/// compared) as the plain `project → idem_key → entry` map; the age order is
/// derived and rebuilt after decoding.
#[derive(Clone, Default)]
pub struct IdemIndex {
    by_project: BTreeMap<String, BTreeMap<String, IdemEntry>>,
    /// Entries by age `(index, project, idem_key)`, oldest first. Items whose
    /// entry a project-level eviction or a newer use of the key already
    /// replaced are skipped (and compacted away) lazily.
    order: std::collections::VecDeque<(u64, Box<str>, Box<str>)>,
    /// Live entries (the sum of the projects' window sizes).
    total: usize,
}

impl IdemIndex {
    /// The window from its plain map (the age order is derived).
    pub fn from_map(by_project: BTreeMap<String, BTreeMap<String, IdemEntry>>) -> IdemIndex {
        let mut all: Vec<(u64, Box<str>, Box<str>)> = by_project
            .iter()
            .flat_map(|(p, keys)| {
                keys.iter()
                    .map(move |(k, e)| (e.index, p.as_str().into(), k.as_str().into()))
            })
            .collect();
        all.sort_unstable();
        let total = all.len();
        IdemIndex {
            by_project,
            order: all.into(),
            total,
        }
    }

    /// Whether `(project, key)` is in the window.
    pub fn contains(&self, project: &str, key: &str) -> bool {
        self.by_project
            .get(project)
            .is_some_and(|m| m.contains_key(key))
    }

    /// Entries kept, across projects.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Record `entry` for `(project, key)`, then evict past the bounds.
    pub fn insert(&mut self, project: &str, key: &str, entry: IdemEntry) {
        let index = entry.index;
        let keys = match self.by_project.get_mut(project) {
            Some(k) => k,
            None => self.by_project.entry(project.to_string()).or_default(),
        };
        if keys.insert(key.to_string(), entry).is_none() {
            self.total += 1;
        }
        self.order.push_back((index, project.into(), key.into()));
        if keys.len() > IDEM_KEYS_PER_PROJECT_MAX {
            let mut by_index: Vec<(u64, String)> =
                keys.iter().map(|(k, e)| (e.index, k.clone())).collect();
            by_index.sort_unstable();
            for (_, k) in by_index.into_iter().take(IDEM_EVICT_BATCH) {
                keys.remove(&k);
                self.total -= 1;
            }
        }
        if self.total > IDEM_KEYS_TOTAL_MAX {
            let mut evicted = 0;
            while evicted < IDEM_EVICT_BATCH {
                let Some((index, project, key)) = self.order.pop_front() else {
                    break;
                };
                if self.remove_if_current(&project, &key, index) {
                    evicted += 1;
                }
            }
        }
        // Stale items never outnumber live ones by much.
        if self.order.len() > 2 * self.total + IDEM_EVICT_BATCH {
            let by_project = &self.by_project;
            self.order.retain(|(index, project, key)| {
                by_project
                    .get(&**project)
                    .and_then(|m| m.get(&**key))
                    .is_some_and(|e| e.index == *index)
            });
        }
    }

    /// Remove `(project, key)` if its entry is still the one from `index`.
    fn remove_if_current(&mut self, project: &str, key: &str, index: u64) -> bool {
        let Some(keys) = self.by_project.get_mut(project) else {
            return false;
        };
        if keys.get(key).is_none_or(|e| e.index != index) {
            return false;
        }
        keys.remove(key);
        if keys.is_empty() {
            self.by_project.remove(project);
        }
        self.total -= 1;
        true
    }
}

impl std::ops::Deref for IdemIndex {
    type Target = BTreeMap<String, BTreeMap<String, IdemEntry>>;
    fn deref(&self) -> &Self::Target {
        &self.by_project
    }
}

impl PartialEq for IdemIndex {
    fn eq(&self, other: &IdemIndex) -> bool {
        self.by_project == other.by_project
    }
}
impl Eq for IdemIndex {}

impl std::fmt::Debug for IdemIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.by_project.fmt(f)
    }
}

impl Serialize for IdemIndex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.by_project.serialize(s)
    }
}

impl<'de> Deserialize<'de> for IdemIndex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(d).map(IdemIndex::from_map)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectEntry {
    pub state: ProjectState,
    pub hash: Hash,
    /// Canonical encodings of recently hashed sections of this project (see
    /// [`ProjectState::hash_memo`]). Not state: never serialized, ignored by
    /// equality, empty after a snapshot is loaded.
    #[serde(skip)]
    pub memo: HashMemo,
}

/// One memo slot: a section value and its canonical encoding.
type Slot<T> = Option<Box<(Section<T>, Vec<u8>)>>;

/// The canonical encodings of a project's eight region sections, each kept
/// with the value it encodes. A lookup compares values (cheap, no
/// allocation) and re-encodes only on a difference, so the memo is correct
/// whatever mutated the state in between.
#[derive(Clone, Default)]
pub struct HashMemo {
    meta: Slot<Meta>,
    boot: Slot<Boot>,
    ingestion: Slot<Ingestion>,
    council: Slot<Council>,
    environment: Slot<Environment>,
    execution: Slot<Execution>,
    control: Slot<Control>,
    policy: Slot<Policy>,
}

impl HashMemo {
    fn bytes<'a, T: Clone + PartialEq + Serialize>(
        slot: &'a mut Slot<T>,
        v: &Section<T>,
    ) -> &'a [u8] {
        // A section no transition wrote to is the very one cached.
        let hit =
            matches!(slot.as_deref(), Some((cached, _)) if Section::same(cached, v) || cached == v);
        if !hit {
            let bytes = crate::cbor::to_canonical(v)
                .expect("state documents contain no floats and always encode");
            *slot = Some(Box::new((v.clone(), bytes)));
        }
        &slot.as_deref().expect("filled above").1
    }
}

impl PartialEq for HashMemo {
    /// A memo is a cache, not state: any two are equal.
    fn eq(&self, _: &HashMemo) -> bool {
        true
    }
}
impl Eq for HashMemo {}

impl std::fmt::Debug for HashMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashMemo")
    }
}

impl NodeState {
    pub fn new(genesis: Genesis) -> Result<NodeState, GenesisError> {
        genesis.validate()?;
        let genesis_hash = genesis.hash()?;
        Ok(NodeState {
            genesis,
            genesis_hash,
            projects: BTreeMap::new(),
            index: 0,
            head_record: genesis_hash,
            hlc: None,
            idem: IdemIndex::default(),
        })
    }

    /// The project's document, or its initial document if never touched.
    pub fn project(&self, id: &str) -> std::borrow::Cow<'_, ProjectState> {
        match self.projects.get(id) {
            Some(e) => std::borrow::Cow::Borrowed(&e.state),
            None => {
                std::borrow::Cow::Owned(ProjectState::initial(&self.genesis, self.genesis_hash, id))
            }
        }
    }

    /// The project's HEAD hash (its initial hash if never touched).
    pub fn project_hash(&self, id: &str) -> Hash {
        match self.projects.get(id) {
            Some(e) => e.hash,
            None => ProjectState::initial(&self.genesis, self.genesis_hash, id).hash(),
        }
    }

    pub fn root_hash(&self) -> Hash {
        root_hash(
            self.genesis_hash,
            self.projects.iter().map(|(k, e)| (k.as_str(), e.hash)),
        )
    }
}

const LEAF_DOMAIN: &[u8] = b"SWOOSH-ROOT-LEAF-v1\0";
const NODE_DOMAIN: &[u8] = b"SWOOSH-ROOT-NODE-v1\0";

/// Merkle root over `[genesis_hash] ++ [leaf(id, hash) for projects in id order]`.
/// Leaf = BLAKE3(LEAF_DOMAIN || cbor([id, hash])); inner node =
/// BLAKE3(NODE_DOMAIN || left || right); an odd node is carried up unchanged.
/// The genesis hash is used as its leaf as-is, so an empty node's root is
/// exactly the genesis hash.
pub fn root_hash<'a>(genesis_hash: Hash, projects: impl Iterator<Item = (&'a str, Hash)>) -> Hash {
    let mut level: Vec<Hash> = vec![genesis_hash];
    for (id, h) in projects {
        let enc = crate::cbor::to_canonical(&(id, h)).expect("(text, hash) encodes");
        let mut hasher = blake3::Hasher::new();
        hasher.update(LEAF_DOMAIN);
        hasher.update(&enc);
        level.push(Hash(*hasher.finalize().as_bytes()));
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => {
                    let mut hasher = blake3::Hasher::new();
                    hasher.update(NODE_DOMAIN);
                    hasher.update(&l.0);
                    hasher.update(&r.0);
                    Hash(*hasher.finalize().as_bytes())
                }
                [one] => *one,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
    }
    level[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{genesis, Keys};

    #[test]
    fn a_cloned_document_shares_its_sections_until_one_is_written() {
        let keys = Keys::from_labels("section", 3);
        let g = genesis(&keys, "section", 1_767_225_600_000);
        let pre = ProjectState::initial(&g, g.hash().unwrap(), "p");
        let mut post = pre.clone();
        assert!(Section::same(&pre.control, &post.control));
        post.control.reason = Some("written".into());
        // Only the written section was copied; the original is untouched.
        assert!(!Section::same(&pre.control, &post.control));
        assert_eq!(pre.control.reason, None);
        assert!(Section::same(&pre.execution, &post.execution));
        assert!(Section::same(&pre.council, &post.council));
        // A section encodes exactly as the value it holds.
        assert_eq!(
            crate::cbor::to_canonical(&post.control).unwrap(),
            crate::cbor::to_canonical(&*post.control).unwrap()
        );
        let back: ProjectState =
            crate::cbor::from_canonical(&crate::cbor::to_canonical(&post).unwrap()).unwrap();
        assert_eq!(back, post);
        assert_eq!(back.hash(), post.hash());
    }

    #[test]
    fn memoized_hash_equals_the_hash_from_scratch_after_any_section_changes() {
        let keys = Keys::from_labels("memo", 3);
        let g = genesis(&keys, "memo", 1_767_225_600_000);
        let gh = g.hash().unwrap();
        let mut st = ProjectState::initial(&g, gh, "p");
        let mut memo = HashMemo::default();
        assert_eq!(st.hash_memo(&mut memo), st.hash(), "empty memo");
        assert_eq!(st.hash_memo(&mut memo), st.hash(), "full memo");
        let edits: Vec<fn(&mut ProjectState)> = vec![
            |s| s.meta.phase = "EXECUTION".into(),
            |s| s.boot.config_hash = Some(Hash::of_bytes(b"c")),
            |s| s.ingestion.sources.push("s3://x".into()),
            |s| s.council.elections += 1,
            |s| s.environment.assets.push("gpu".into()),
            |s| s.execution.evidence.push("ucxl://e".into()),
            |s| s.control.reason = Some("r".into()),
            |s| s.policy.quarantines += 1,
            |s| s.epoch.bump(Region::Council),
            |s| s.applied += 1,
            |s| s.hlc_last = Some(Hlc::new(1_767_225_600_001, 0)),
            |s| {
                s.order_last = Some(OrderKey {
                    signer: s.boot.identities[0].key.clone(),
                    idem_key: "k".into(),
                })
            },
        ];
        for (i, edit) in edits.iter().enumerate() {
            let before = st.hash();
            edit(&mut st);
            let after = st.hash();
            assert_ne!(before, after, "edit {i} changes the document");
            assert_eq!(st.hash_memo(&mut memo), after, "edit {i}");
            // A memo last used for another project serves this one correctly.
            let other = ProjectState::initial(&g, gh, "q");
            let mut shared = HashMemo::default();
            other.hash_memo(&mut shared);
            assert_eq!(st.hash_memo(&mut shared), after, "edit {i}, shared memo");
        }
    }

    /// A threshold whose certificate cannot fit in one proposal is refused
    /// for a new genesis (the council could never be elected), and still
    /// accepted on a stored one.
    #[test]
    fn a_new_genesis_refuses_a_quorum_threshold_no_certificate_can_carry() {
        let keys = Keys::from_labels("big-threshold", 101);
        let mut g = genesis(&keys, "big-threshold", 1_767_225_600_000);
        g.quorum_threshold = QUORUM_THRESHOLD_MAX;
        g.validate_new().unwrap();
        g.quorum_threshold = QUORUM_THRESHOLD_MAX + 1;
        let e = g.validate_new().unwrap_err();
        assert_eq!(
            e,
            GenesisError::QuorumThresholdTooLarge(QUORUM_THRESHOLD_MAX + 1)
        );
        assert!(e.to_string().contains("lower it"), "{e}");
        g.validate().unwrap();
    }

    #[test]
    fn genesis_refuses_a_bad_probe_age_and_bad_phase_names() {
        let keys = Keys::from_labels("genesis", 3);
        let ok = genesis(&keys, "genesis", 1_767_225_600_000);
        ok.validate_new().unwrap();
        // `swoosh init` builds its genesis with these values.
        assert_eq!(ok.probe_max_age_ms, 60_000);
        for bad in [0, PROBE_MAX_AGE_MS_MAX + 1, u64::MAX] {
            let mut g = ok.clone();
            g.probe_max_age_ms = bad;
            assert_eq!(g.validate_new(), Err(GenesisError::ProbeMaxAge(bad)));
            // A stored genesis an earlier build accepted still loads.
            g.validate().unwrap();
        }
        let mut g = ok.clone();
        g.probe_max_age_ms = PROBE_MAX_AGE_MS_MAX;
        g.validate_new().unwrap();
        let mut g = ok.clone();
        g.backbeat.phases[1].name = g.backbeat.phases[0].name.clone();
        assert!(matches!(
            g.validate_new(),
            Err(GenesisError::Schedule(ScheduleError::DuplicatePhase(_)))
        ));
        let mut g = ok.clone();
        g.backbeat.phases[1].name = "r".repeat(200);
        assert!(matches!(
            g.validate_new(),
            Err(GenesisError::Schedule(ScheduleError::PhaseName(_)))
        ));
        let mut g = ok;
        g.backbeat.origin_ms = u64::MAX;
        assert!(matches!(
            g.validate_new(),
            Err(GenesisError::Schedule(ScheduleError::Origin(_)))
        ));
    }

    #[test]
    fn a_new_genesis_binds_facts_and_an_older_one_keeps_its_bytes() {
        let keys = Keys::from_labels("genesis-bound", 3);
        let new = genesis(&keys, "genesis-bound", 1_767_225_600_000);
        assert!(new.facts_bound_to_genesis);
        new.validate_new().unwrap();
        let old = Genesis {
            facts_bound_to_genesis: false,
            ..new.clone()
        };
        // Recovery validates a stored genesis with `validate`: a cluster
        // made before binding existed still starts, and only a new one
        // must bind.
        old.validate().unwrap();
        assert_eq!(old.validate_new(), Err(GenesisError::FactsUnbound));
        // Its JSON and its canonical bytes have no trace of the flag, so
        // its hash (the cluster's identity) is the one it always had, and
        // its projects' state documents too.
        let json = serde_json::to_value(&old).unwrap();
        assert!(json.get("facts_bound_to_genesis").is_none(), "{json}");
        let back: Genesis = serde_json::from_value(json).unwrap();
        assert_eq!(back, old);
        let bytes = crate::cbor::to_canonical(&old).unwrap();
        assert!(!bytes.windows(6).any(|w| w == b"facts_"));
        assert_ne!(old.hash().unwrap(), new.hash().unwrap());
        let st = ProjectState::initial(&old, old.hash().unwrap(), "p");
        assert!(!crate::cbor::to_canonical(&st.meta)
            .unwrap()
            .windows(6)
            .any(|w| w == b"facts_"));
        let st = ProjectState::initial(&new, new.hash().unwrap(), "p");
        assert!(st.meta.facts_bound_to_genesis);
    }

    #[test]
    fn a_new_genesis_refuses_policy_rules_beyond_their_bounds() {
        let keys = Keys::from_labels("genesis-rules", 3);
        let ok = genesis(&keys, "genesis-rules", 1_767_225_600_000);
        let long = "x".repeat(TEXT_BYTES_MAX + 1);
        type Edit = fn(&mut PolicyRule);
        let edits: Vec<(Edit, &str)> = vec![
            (
                |r| r.id = "x".repeat(TEXT_BYTES_MAX + 1),
                "its id is 1025 bytes; at most 1024 are allowed: shorten it",
            ),
            (
                |r| r.rationale = "x".repeat(TEXT_BYTES_MAX + 1),
                "its rationale is 1025 bytes",
            ),
            (
                |r| r.deny_codes.push("x".repeat(TEXT_BYTES_MAX + 1)),
                "its deny_codes[2] is 1025 bytes",
            ),
            (
                |r| {
                    r.deny_codes = (0..=POLICY_DENY_CODES_MAX)
                        .map(|i| format!("c{i}"))
                        .collect()
                },
                "it lists 65 deny codes; at most 64 are allowed: split it into several rules",
            ),
        ];
        for (edit, why) in edits {
            let mut g = ok.clone();
            edit(&mut g.policy_rules[0]);
            let e = g.validate_new().unwrap_err();
            assert!(
                matches!(e, GenesisError::PolicyRule { index: 0, .. }),
                "{e:?}"
            );
            let text = e.to_string();
            assert!(text.starts_with("genesis policy rule 0 ("), "{text}");
            assert!(text.contains(why), "{text}");
            // A stored genesis an earlier build accepted still loads.
            g.validate().unwrap();
            NodeState::new(g).unwrap();
        }
        // Two rules of one id: refused naming both (a stored genesis an
        // earlier build accepted still loads).
        let mut g = ok.clone();
        let mut twin = g.policy_rules[0].clone();
        twin.rationale = "another rationale".into();
        g.policy_rules.push(twin);
        let last = g.policy_rules.len() - 1;
        let e = g.validate_new().unwrap_err();
        assert_eq!(
            e,
            GenesisError::DuplicatePolicyRuleId {
                first: 0,
                second: last,
                id: g.policy_rules[0].id.clone()
            }
        );
        assert!(e.to_string().contains("give each rule its own id"), "{e}");
        g.validate().unwrap();
        NodeState::new(g).unwrap();
        // The id in the message is cut, so a huge id does not fill it.
        let mut g = ok.clone();
        g.policy_rules[0].id = long;
        assert!(g.validate_new().unwrap_err().to_string().len() < 300);
        let mut g = ok;
        let r = &mut g.policy_rules[0];
        r.id = "x".repeat(TEXT_BYTES_MAX);
        r.rationale = "x".repeat(TEXT_BYTES_MAX);
        r.deny_codes = (0..POLICY_DENY_CODES_MAX)
            .map(|i| format!("c{i}"))
            .collect();
        g.validate_new().unwrap();
    }

    fn idem_entry(index: u64) -> IdemEntry {
        IdemEntry {
            content_hash: Hash::of_bytes(&index.to_be_bytes()),
            transition: "Control_Pause".into(),
            index,
            state_post_hash: Hash::of_bytes(b"post"),
            decision: Hash::of_bytes(b"dr"),
        }
    }

    /// Feed `w` records `from..to`: a project per record picked by a small
    /// deterministic generator, a few of them very busy (so both bounds
    /// act), and some keys reused (a newer record replaces the older one).
    fn feed(w: &mut IdemIndex, from: u64, to: u64) {
        for i in from..to {
            let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            let project = if x % 4 == 0 {
                format!("busy-{}", x % 3)
            } else {
                format!("p{}", x % 500)
            };
            let key = if i % 97 == 0 {
                format!("reused-{}", x % 5)
            } else {
                format!("k{i}")
            };
            w.insert(&project, &key, idem_entry(i));
        }
    }

    #[test]
    fn the_idempotency_window_is_bounded_per_project_and_in_all() {
        let mut w = IdemIndex::default();
        let n = 3 * IDEM_KEYS_TOTAL_MAX as u64;
        feed(&mut w, 1, n + 1);
        let live: usize = w.values().map(BTreeMap::len).sum();
        assert_eq!(w.total(), live);
        assert!(live <= IDEM_KEYS_TOTAL_MAX, "{live} entries kept");
        assert!(live > IDEM_KEYS_TOTAL_MAX - IDEM_EVICT_BATCH - 1, "{live}");
        assert!(w.values().all(|m| m.len() <= IDEM_KEYS_PER_PROJECT_MAX));
        assert!(w.values().all(|m| !m.is_empty()));
        // The oldest went first: every kept entry is newer than every
        // entry that went, so the newest records are all still there.
        let oldest_kept = w.values().flat_map(|m| m.values()).map(|e| e.index).min();
        let newest: Vec<u64> = (n - 1_000..=n).collect();
        let kept: std::collections::BTreeSet<u64> = w
            .values()
            .flat_map(|m| m.values())
            .map(|e| e.index)
            .collect();
        assert!(
            newest.iter().all(|i| kept.contains(i) || i % 97 == 0),
            "a recent record was evicted (oldest kept {oldest_kept:?})"
        );
        // The age order never holds many more items than there are entries.
        assert!(w.order.len() <= 2 * w.total + IDEM_EVICT_BATCH);
        w.insert("px", "kx", idem_entry(n + 1));
        assert!(w.contains("px", "kx"));
        assert!(!w.contains("px", "ky") && !w.contains("py", "kx"));
    }

    #[test]
    fn a_decoded_idempotency_window_evicts_exactly_like_the_live_one() {
        // A snapshot taken at any point and decoded holds the same window,
        // and keeps holding the same one as records go on (so a node
        // recovered from a snapshot answers repeats like one that never
        // stopped).
        let mut live = IdemIndex::default();
        feed(&mut live, 1, 80_001);
        let bytes = crate::cbor::to_canonical(&live).unwrap();
        let mut decoded: IdemIndex = crate::cbor::from_canonical(&bytes).unwrap();
        assert_eq!(decoded, live);
        assert!(decoded.order.len() <= live.order.len());
        assert_eq!(decoded.total(), live.total());
        feed(&mut live, 80_001, 160_001);
        feed(&mut decoded, 80_001, 160_001);
        assert_eq!(decoded, live);
        assert_eq!(decoded.total(), live.total());
        // Serialized exactly as the plain map it derefs to.
        assert_eq!(
            crate::cbor::to_canonical(&live).unwrap(),
            crate::cbor::to_canonical(&*live).unwrap()
        );
    }
}
