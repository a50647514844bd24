//! Follower side of replication: verify the leader's signature, detect gaps,
//! buffer out-of-order batches (bounded), drop duplicates, apply records in
//! order through the core, and catch up by range or snapshot.
//!
//! Every record goes through `swoosh_core::reducer::apply_record`, which
//! checks the chain link and recomputes the record exactly. A record the
//! leader signed that this follower computes differently is a divergence:
//! the follower halts and raises [`FollowerEffect::Halted`]; it never applies
//! anything after it (no silent fork).

use super::wire::*;
use serde::Serialize;
use std::collections::BTreeMap;
use swoosh_core::cbor::from_canonical;
use swoosh_core::guards::Verify;
use swoosh_core::hash::Hash;
use swoosh_core::record::WalRecord;
use swoosh_core::reducer::{apply_prepared_check, prepare_record_hashed};
use swoosh_core::sig::SignerId;
use swoosh_core::state::NodeState;

/// Out-of-order batches kept while a gap is being fetched.
pub const PENDING_BATCHES_MAX: usize = 64;
/// A request without an answer after this long is sent again.
pub const REQUEST_TIMEOUT_MS: u64 = 400;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerConfig {
    pub pending_batches_max: usize,
    pub request_timeout_ms: u64,
    /// At most this many records asked for per range request.
    pub range_records_max: u64,
    /// Snapshot offers larger than this are refused.
    pub snapshot_bytes_max: u64,
    /// Ask for a range only after the announced index has been ahead for
    /// this long (records still in flight on gossip fill most such gaps), or
    /// at once while a catch-up keeps returning full ranges. 0: at once.
    pub gap_grace_ms: u64,
}

/// The grace the libp2p follower gives gossip before asking for a range:
/// a few gossip heartbeats.
pub const GAP_GRACE_MS: u64 = 150;

impl Default for FollowerConfig {
    fn default() -> Self {
        FollowerConfig {
            pending_batches_max: PENDING_BATCHES_MAX,
            request_timeout_ms: REQUEST_TIMEOUT_MS,
            range_records_max: RANGE_RECORDS_MAX,
            snapshot_bytes_max: SNAPSHOT_BYTES_MAX,
            gap_grace_ms: 0,
        }
    }
}

/// What a follower reports (health endpoint, metrics, the leader's lag view).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FollowerStatus {
    pub follower: SignerId,
    pub applied_index: u64,
    pub applied_hash: Hash,
    pub root_hash: Hash,
    /// Highest index the leader announced (by batch or head).
    pub leader_index: u64,
    /// `leader_index - applied_index`, in records.
    pub lag_records: u64,
    pub halted: bool,
}

/// Why a follower stopped: the leader signed a record this follower computes
/// differently (or whose chain does not link).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Divergence {
    pub index: u64,
    pub reason: String,
    /// The record this follower computed differently, when the divergence
    /// is one record's (what replication triage compares with the leader's
    /// log line for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<DivergedRecord>,
}

/// The fields of a diverging record a log line carries (as the leader's
/// accepted line does for the same record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DivergedRecord {
    pub project: String,
    pub transition: String,
    pub hlc: swoosh_core::Hlc,
    pub window_id: String,
    pub state_pre_hash: swoosh_core::Hash,
    /// The post hash the leader recorded.
    pub state_post_hash: swoosh_core::Hash,
}

impl DivergedRecord {
    fn of(r: &swoosh_core::record::WalRecord) -> DivergedRecord {
        DivergedRecord {
            project: r.project.clone(),
            transition: r.transition.clone(),
            hlc: r.hlc,
            window_id: r.window_id.clone(),
            state_pre_hash: r.state_pre_hash,
            state_post_hash: r.state_post_hash,
        }
    }
}

/// Why a fully received snapshot is not installed.
enum SnapshotFault {
    /// Not the bytes the manifest names, or no longer useful: refused.
    Refuse(String),
    /// The signed bytes themselves disagree with what this follower
    /// computes from them: a divergence.
    Diverge(String),
}

/// Why one message was refused. Nothing changes state; the refusal is counted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefusedMessage {
    #[error("message is for cluster {cluster_id:?} with genesis {genesis_hash}; this follower runs another cluster")]
    WrongCluster {
        cluster_id: String,
        genesis_hash: Hash,
    },
    #[error("message is signed by {signer}, not by the genesis leader {leader}")]
    NotLeader { signer: String, leader: String },
    #[error("the leader's signature does not verify: the message was forged or altered")]
    BadSignature,
    #[error("batch shape: {0}")]
    Shape(String),
    #[error("record {index}: its hash is not the one the signed header lists")]
    RecordHash { index: u64 },
    #[error("record {index}: prev_hash does not link to the record before it in the batch")]
    Link { index: u64 },
    #[error("snapshot: {0}")]
    Snapshot(String),
}

impl RefusedMessage {
    /// A short stable name, for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            RefusedMessage::WrongCluster { .. } => "wrong_cluster",
            RefusedMessage::NotLeader { .. } => "not_leader",
            RefusedMessage::BadSignature => "bad_signature",
            RefusedMessage::Shape(_) => "shape",
            RefusedMessage::RecordHash { .. } => "record_hash",
            RefusedMessage::Link { .. } => "link",
            RefusedMessage::Snapshot(_) => "snapshot",
        }
    }
}

/// A record this follower applied, with its hash: the one the leader's
/// signed header lists, computed over `bytes`, the record's canonical
/// encoding (so the WAL stores it without encoding it again).
#[derive(Clone, Debug, PartialEq)]
pub struct AppliedRecord {
    pub record: WalRecord,
    pub hash: Hash,
    pub bytes: Vec<u8>,
    /// The proposal's content hash, computed while applying.
    pub content_hash: Hash,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FollowerEffect {
    /// These records were applied, in order: append them to this follower's WAL.
    Applied(Vec<AppliedRecord>),
    /// A verified snapshot was installed: store it; the WAL continues after `index`.
    InstallSnapshot { index: u64, bytes: Vec<u8> },
    /// Send to the leader (request-response).
    Send(Request),
    /// A message was refused (counted; no state change).
    Refused(RefusedMessage),
    /// Divergence alarm: this follower applies nothing more.
    Halted(Divergence),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FollowerStats {
    pub batches_applied: u64,
    pub records_applied: u64,
    pub duplicates: u64,
    pub buffered: u64,
    pub buffer_full_drops: u64,
    pub refused: u64,
    pub requests_sent: u64,
    pub request_timeouts: u64,
    pub snapshot_offers: u64,
    pub snapshot_chunks: u64,
    pub snapshots_installed: u64,
    pub leader_behind: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Inflight {
    Range {
        from: u64,
        to: u64,
        sent_ms: u64,
    },
    Snapshot {
        index: u64,
        offset: u64,
        sent_ms: u64,
    },
}

struct SnapshotRecv {
    manifest: SnapshotManifest,
    buf: Vec<u8>,
}

pub struct ReplFollower {
    cfg: FollowerConfig,
    id: SignerId,
    leader: SignerId,
    cluster_id: String,
    genesis_hash: Hash,
    node: NodeState,
    leader_index: u64,
    /// Verified batches ahead of the applied index, with their records'
    /// canonical encodings (computed by the verification).
    pending: BTreeMap<u64, (WalBatch, Vec<Vec<u8>>)>,
    inflight: Option<Inflight>,
    snap: Option<SnapshotRecv>,
    halted: Option<Divergence>,
    stats: FollowerStats,
    /// Since when the announced index has been ahead with nothing asked.
    behind_since: Option<u64>,
    /// The last range answer was full: keep catching up without a grace.
    catching_up: bool,
}

impl ReplFollower {
    /// Start from a recovered node state (genesis, a snapshot plus the
    /// follower's own WAL). The leader is the genesis leader.
    pub fn new(cfg: FollowerConfig, id: SignerId, node: NodeState) -> ReplFollower {
        assert!(cfg.range_records_max >= 1, "range_records_max must be >= 1");
        ReplFollower {
            cfg,
            id,
            leader: node.genesis.leader.clone(),
            cluster_id: node.genesis.cluster_id.clone(),
            genesis_hash: node.genesis_hash,
            leader_index: node.index,
            node,
            pending: BTreeMap::new(),
            inflight: None,
            snap: None,
            halted: None,
            stats: FollowerStats::default(),
            behind_since: None,
            catching_up: false,
        }
    }

    pub fn node(&self) -> &NodeState {
        &self.node
    }

    pub fn applied_index(&self) -> u64 {
        self.node.index
    }

    pub fn lag(&self) -> u64 {
        self.leader_index.saturating_sub(self.node.index)
    }

    pub fn halted(&self) -> Option<&Divergence> {
        self.halted.as_ref()
    }

    /// Start halted on a divergence recorded before a restart: nothing is
    /// applied or requested until the operator clears it. Raises no effect;
    /// the caller already knows.
    pub fn resume_halted(&mut self, d: Divergence) {
        self.halted = Some(d);
        self.pending.clear();
        self.inflight = None;
        self.snap = None;
    }

    pub fn stats(&self) -> &FollowerStats {
        &self.stats
    }

    pub fn pending_batches(&self) -> usize {
        self.pending.len()
    }

    /// What this follower reports to the leader ([`Request::Status`]).
    pub fn status_report(&self) -> StatusReport {
        StatusReport {
            applied_index: self.node.index,
            applied_hash: self.node.head_record,
            root_hash: self.node.root_hash(),
            leader_index: self.leader_index,
            halted: self.halted.is_some(),
        }
    }

    pub fn status(&self) -> FollowerStatus {
        FollowerStatus {
            follower: self.id.clone(),
            applied_index: self.node.index,
            applied_hash: self.node.head_record,
            root_hash: self.node.root_hash(),
            leader_index: self.leader_index,
            lag_records: self.lag(),
            halted: self.halted.is_some(),
        }
    }

    pub fn on_gossip(&mut self, msg: &Gossip, now_ms: u64) -> Vec<FollowerEffect> {
        self.on_gossip_records(msg.clone(), None, now_ms)
    }

    /// [`Self::on_gossip`] for a caller that decoded the message with
    /// [`crate::proto::wire::decode_gossip_records`]: a batch's records are
    /// then not encoded again. Contract: `encodings[i]` is exactly
    /// `to_canonical(&records[i])`; they are still hashed against the
    /// signed header, so other bytes are refused, never applied. Takes the
    /// message by value: its records move into the applied effects instead
    /// of being copied.
    pub fn on_gossip_records(
        &mut self,
        msg: Gossip,
        encodings: Option<RecordEncodings>,
        now_ms: u64,
    ) -> Vec<FollowerEffect> {
        let mut out = vec![];
        if self.halted.is_none() {
            match msg {
                Gossip::Batch(b) => self.on_batch(b, encodings, &mut out),
                Gossip::Head(h) => self.on_head(&h, &mut out),
            }
            self.maybe_request(now_ms, &mut out);
        }
        out
    }

    pub fn on_response(&mut self, resp: &Response, now_ms: u64) -> Vec<FollowerEffect> {
        let mut out = vec![];
        if self.halted.is_some() {
            return out;
        }
        match resp {
            Response::Range { batches } => {
                if matches!(self.inflight, Some(Inflight::Range { .. })) {
                    self.inflight = None;
                }
                let n: u64 = batches.iter().map(|b| b.records.len() as u64).sum();
                self.catching_up = n >= self.cfg.range_records_max;
                if batches.is_empty() {
                    // The leader has nothing past what we hold: stop asking
                    // until a head or batch says otherwise.
                    self.leader_index = self.leader_index.min(self.node.index);
                }
                for b in batches {
                    self.on_batch(b.clone(), None, &mut out);
                    if self.halted.is_some() {
                        return out;
                    }
                }
            }
            Response::SnapshotOffer(m) => self.on_offer(m, now_ms, &mut out),
            Response::SnapshotChunk(c) => self.on_chunk(c, now_ms, &mut out),
            Response::Refused { .. } => {
                // Keep the request in flight: the timeout asks again.
                self.stats.refused += 1;
            }
            Response::StatusAck { published_index } => {
                // The leader's own word on its tail: a gap shows up here even
                // when every head gossip was lost.
                self.leader_index = self.leader_index.max(*published_index);
            }
            Response::Diverged { index, reason } => {
                let d = Divergence {
                    index: *index,
                    reason: format!("the leader reports: {reason}"),
                    record: None,
                };
                self.halt(d, &mut out);
                return out;
            }
        }
        self.maybe_request(now_ms, &mut out);
        out
    }

    /// Resend requests that timed out; ask for a known gap.
    pub fn tick(&mut self, now_ms: u64) -> Vec<FollowerEffect> {
        let mut out = vec![];
        if self.halted.is_some() {
            return out;
        }
        match self.inflight.clone() {
            Some(Inflight::Range { sent_ms, .. })
                if now_ms.saturating_sub(sent_ms) >= self.cfg.request_timeout_ms =>
            {
                self.stats.request_timeouts += 1;
                self.inflight = None;
            }
            Some(Inflight::Snapshot {
                index,
                offset,
                sent_ms,
            }) if now_ms.saturating_sub(sent_ms) >= self.cfg.request_timeout_ms => {
                self.stats.request_timeouts += 1;
                self.send(
                    Inflight::Snapshot {
                        index,
                        offset,
                        sent_ms: now_ms,
                    },
                    &mut out,
                );
            }
            _ => {}
        }
        self.maybe_request(now_ms, &mut out);
        out
    }

    fn refuse(&mut self, r: RefusedMessage, out: &mut Vec<FollowerEffect>) {
        self.stats.refused += 1;
        out.push(FollowerEffect::Refused(r));
    }

    fn halt(&mut self, d: Divergence, out: &mut Vec<FollowerEffect>) {
        self.halted = Some(d.clone());
        self.pending.clear();
        self.inflight = None;
        self.snap = None;
        out.push(FollowerEffect::Halted(d));
    }

    fn check_origin(
        &self,
        cluster_id: &str,
        genesis_hash: &Hash,
        signer: &SignerId,
    ) -> Result<(), RefusedMessage> {
        if cluster_id != self.cluster_id || *genesis_hash != self.genesis_hash {
            return Err(RefusedMessage::WrongCluster {
                cluster_id: cluster_id.to_string(),
                genesis_hash: *genesis_hash,
            });
        }
        if *signer != self.leader {
            return Err(RefusedMessage::NotLeader {
                signer: signer.to_string(),
                leader: self.leader.to_string(),
            });
        }
        Ok(())
    }

    /// Origin, shape and signature: cheap checks before any record is hashed.
    fn verify_header(&self, b: &WalBatch) -> Result<(), RefusedMessage> {
        let h = &b.header;
        self.check_origin(&h.cluster_id, &h.genesis_hash, &h.leader)?;
        let n = b.records.len();
        if n == 0 || n > BATCH_RECORDS_LIMIT {
            return Err(RefusedMessage::Shape(format!(
                "{n} records; a batch carries 1..={BATCH_RECORDS_LIMIT}"
            )));
        }
        if h.first_index == 0
            || h.last_index < h.first_index
            || h.last_index - h.first_index + 1 != n as u64
            || h.record_hashes.len() != n
        {
            return Err(RefusedMessage::Shape(format!(
                "indices {}..={} with {n} records and {} hashes do not agree",
                h.first_index,
                h.last_index,
                h.record_hashes.len()
            )));
        }
        h.verify(&b.signature)
            .map_err(|_| RefusedMessage::BadSignature)
    }

    /// Each record is the one the signed header names, and they chain.
    /// Returns the records' canonical encodings, so applying and persisting
    /// them never encodes them again.
    fn verify_records(
        b: &WalBatch,
        known: Option<RecordEncodings>,
    ) -> Result<Vec<Vec<u8>>, RefusedMessage> {
        let h = &b.header;
        let mut known = known
            .filter(|k| k.len() == b.records.len())
            .map(Vec::into_iter);
        let mut encodings = Vec::with_capacity(b.records.len());
        for (i, rec) in b.records.iter().enumerate() {
            let index = h.first_index + i as u64;
            if rec.index != index {
                return Err(RefusedMessage::Shape(format!(
                    "record at position {i} has index {}, expected {index}",
                    rec.index
                )));
            }
            // A record that cannot encode cannot match any signed hash.
            let bytes = match known.as_mut().and_then(Iterator::next) {
                Some(bytes) => bytes,
                None => swoosh_core::cbor::to_canonical(rec)
                    .map_err(|_| RefusedMessage::RecordHash { index })?,
            };
            if Hash::of_bytes(&bytes) != h.record_hashes[i] {
                return Err(RefusedMessage::RecordHash { index });
            }
            encodings.push(bytes);
            let prev = if i == 0 {
                h.prev_hash
            } else {
                h.record_hashes[i - 1]
            };
            if rec.prev_hash != prev {
                return Err(RefusedMessage::Link { index });
            }
        }
        Ok(encodings)
    }

    fn on_batch(
        &mut self,
        b: WalBatch,
        known: Option<RecordEncodings>,
        out: &mut Vec<FollowerEffect>,
    ) {
        if let Err(e) = self.verify_header(&b) {
            return self.refuse(e, out);
        }
        let (first, last) = (b.header.first_index, b.header.last_index);
        self.leader_index = self.leader_index.max(last);
        let next = self.node.index + 1;
        if last < next {
            self.stats.duplicates += 1;
            // A signed hash for the index we stand on must be ours.
            if last == self.node.index {
                let h = b.header.record_hashes[(self.node.index - first) as usize];
                if h != self.node.head_record {
                    let d = Divergence {
                        index: self.node.index,
                        reason: format!(
                            "the leader signed record hash {h} for index {}, this follower applied {}",
                            self.node.index, self.node.head_record
                        ),
                        record: None,
                    };
                    self.halt(d, out);
                }
            }
            return;
        }
        if first > next {
            // Counted before any hashing: a full buffer drops the batch anyway.
            if self.pending.contains_key(&first) {
                self.stats.duplicates += 1;
                return;
            } else if self.pending.len() >= self.cfg.pending_batches_max {
                self.stats.buffer_full_drops += 1;
                return;
            }
        }
        let encodings = match Self::verify_records(&b, known) {
            Ok(e) => e,
            Err(e) => return self.refuse(e, out),
        };
        if first > next {
            self.stats.buffered += 1;
            self.pending.insert(first, (b, encodings));
            return;
        }
        self.apply(b, encodings, out);
        self.drain(out);
    }

    fn drain(&mut self, out: &mut Vec<FollowerEffect>) {
        while self.halted.is_none() {
            let Some((&first, _)) = self.pending.first_key_value() else {
                break;
            };
            if first > self.node.index + 1 {
                break;
            }
            let (_, (b, encodings)) = self.pending.pop_first().expect("non-empty");
            if b.header.last_index <= self.node.index {
                self.stats.duplicates += 1;
                continue;
            }
            self.apply(b, encodings, out);
        }
    }

    /// Apply a verified batch with `first_index <= next <= last_index`.
    fn apply(&mut self, b: WalBatch, encodings: Vec<Vec<u8>>, out: &mut Vec<FollowerEffect>) {
        let first = b.header.first_index;
        let skip = (self.node.index + 1 - first) as usize;
        if skip > 0 && b.header.record_hashes[skip - 1] != self.node.head_record {
            let d = Divergence {
                index: self.node.index,
                reason: format!(
                    "the leader signed record hash {} for index {}, this follower applied {}",
                    b.header.record_hashes[skip - 1],
                    self.node.index,
                    self.node.head_record
                ),
                record: None,
            };
            return self.halt(d, out);
        }
        let mut applied = Vec::with_capacity(b.records.len() - skip);
        for ((rec, hash), bytes) in b
            .records
            .into_iter()
            .skip(skip)
            .zip(&b.header.record_hashes[skip..])
            .zip(encodings.into_iter().skip(skip))
        {
            let index = rec.index;
            // verify_records hashed exactly this encoding against the signed
            // header, so the record's hash is known without encoding it again.
            // The diverging record's fields are copied only when it fails
            // (a record-local fault before the reducer names none).
            let applied_one = match prepare_record_hashed(rec, *hash) {
                Err(e) => Err((e, None)),
                Ok(p) => {
                    let content_hash = p.content_hash();
                    match apply_prepared_check(&mut self.node, &p, Verify::Trusted) {
                        Ok(_) => Ok((content_hash, p.record)),
                        Err(e) => Err((e, Some(DivergedRecord::of(&p.record)))),
                    }
                }
            };
            match applied_one {
                Ok((content_hash, record)) => applied.push(AppliedRecord {
                    record,
                    hash: *hash,
                    bytes,
                    content_hash,
                }),
                Err((e, fields)) => {
                    self.stats.records_applied += applied.len() as u64;
                    if !applied.is_empty() {
                        out.push(FollowerEffect::Applied(applied));
                    }
                    let d = Divergence {
                        index,
                        reason: e.to_string(),
                        record: fields,
                    };
                    return self.halt(d, out);
                }
            }
        }
        self.stats.batches_applied += 1;
        self.stats.records_applied += applied.len() as u64;
        out.push(FollowerEffect::Applied(applied));
        if matches!(self.inflight, Some(Inflight::Range { to, .. }) if to <= self.node.index) {
            self.inflight = None;
        }
    }

    fn on_head(&mut self, h: &SignedHead, out: &mut Vec<FollowerEffect>) {
        let b = &h.body;
        if let Err(e) = self.check_origin(&b.cluster_id, &b.genesis_hash, &b.leader) {
            return self.refuse(e, out);
        }
        if h.verify().is_err() {
            return self.refuse(RefusedMessage::BadSignature, out);
        }
        self.leader_index = self.leader_index.max(b.last_index);
        if b.last_index < self.node.index {
            // An old head delivered late, or a leader that restarted behind
            // us: counted, not acted on.
            self.stats.leader_behind += 1;
        } else if b.last_index == self.node.index && b.last_hash != self.node.head_record {
            let d = Divergence {
                index: b.last_index,
                reason: format!(
                    "the leader's head names record hash {} at index {}, this follower applied {}",
                    b.last_hash, b.last_index, self.node.head_record
                ),
                record: None,
            };
            self.halt(d, out);
        }
    }

    fn send(&mut self, f: Inflight, out: &mut Vec<FollowerEffect>) {
        let req = match f {
            Inflight::Range { from, to, .. } => Request::Range { from, to },
            Inflight::Snapshot { index, offset, .. } => Request::Snapshot { index, offset },
        };
        self.stats.requests_sent += 1;
        self.inflight = Some(f);
        out.push(FollowerEffect::Send(req));
    }

    fn maybe_request(&mut self, now_ms: u64, out: &mut Vec<FollowerEffect>) {
        if self.halted.is_some() || self.inflight.is_some() {
            return;
        }
        if let Some(s) = &self.snap {
            let f = Inflight::Snapshot {
                index: s.manifest.index,
                offset: s.buf.len() as u64,
                sent_ms: now_ms,
            };
            return self.send(f, out);
        }
        if self.leader_index <= self.node.index {
            self.behind_since = None;
            return;
        }
        if self.cfg.gap_grace_ms > 0 && !self.catching_up {
            let since = *self.behind_since.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) < self.cfg.gap_grace_ms {
                return;
            }
        }
        self.behind_since = None;
        self.catching_up = false;
        let from = self.node.index + 1;
        let mut to = self
            .leader_index
            .min(from.saturating_add(self.cfg.range_records_max - 1));
        if let Some((&first, _)) = self.pending.first_key_value() {
            if first > from {
                to = to.min(first - 1);
            }
        }
        self.send(
            Inflight::Range {
                from,
                to,
                sent_ms: now_ms,
            },
            out,
        );
    }

    fn on_offer(&mut self, m: &SignedManifest, now_ms: u64, out: &mut Vec<FollowerEffect>) {
        let b = &m.body;
        if let Err(e) = self.check_origin(&b.cluster_id, &b.genesis_hash, &b.leader) {
            return self.refuse(e, out);
        }
        if m.verify().is_err() {
            return self.refuse(RefusedMessage::BadSignature, out);
        }
        if matches!(self.inflight, Some(Inflight::Range { .. })) {
            self.inflight = None;
        }
        if b.index <= self.node.index {
            return; // stale: we are past it already
        }
        if self.snap.as_ref().is_some_and(|s| s.manifest == *b) {
            return; // the transfer in progress
        }
        if b.total_bytes > self.cfg.snapshot_bytes_max {
            return self.refuse(
                RefusedMessage::Snapshot(format!(
                    "offer of {} bytes exceeds the {} byte limit",
                    b.total_bytes, self.cfg.snapshot_bytes_max
                )),
                out,
            );
        }
        self.stats.snapshot_offers += 1;
        self.leader_index = self.leader_index.max(b.index);
        self.snap = Some(SnapshotRecv {
            manifest: b.clone(),
            buf: Vec::new(),
        });
        self.inflight = None;
        self.maybe_request(now_ms, out);
    }

    fn on_chunk(&mut self, c: &SnapshotChunk, now_ms: u64, out: &mut Vec<FollowerEffect>) {
        let Some(s) = &mut self.snap else {
            return;
        };
        if c.index != s.manifest.index || c.offset != s.buf.len() as u64 {
            return; // stale, duplicated or reordered: the offset request repeats
        }
        if c.total_bytes != s.manifest.total_bytes
            || c.bytes.0.is_empty()
            || s.buf.len() as u64 + c.bytes.0.len() as u64 > s.manifest.total_bytes
        {
            self.snap = None;
            self.inflight = None;
            return self.refuse(
                RefusedMessage::Snapshot(format!(
                    "chunk at offset {} does not fit the manifest's {} bytes",
                    c.offset, c.total_bytes
                )),
                out,
            );
        }
        s.buf.extend_from_slice(&c.bytes.0);
        self.stats.snapshot_chunks += 1;
        self.inflight = None;
        if (s.buf.len() as u64) < s.manifest.total_bytes {
            return self.maybe_request(now_ms, out);
        }
        let s = self.snap.take().expect("checked above");
        match self.verify_snapshot(&s) {
            Err(SnapshotFault::Refuse(why)) => self.refuse(RefusedMessage::Snapshot(why), out),
            Err(SnapshotFault::Diverge(why)) => {
                let d = Divergence {
                    index: s.manifest.index,
                    reason: format!(
                        "the leader's signed snapshot at {} (its bytes match the manifest): {why}",
                        s.manifest.index
                    ),
                    record: None,
                };
                self.halt(d, out);
            }
            Ok(node) => {
                let index = node.index;
                self.node = node;
                self.pending.retain(|_, (b, _)| b.header.last_index > index);
                self.stats.snapshots_installed += 1;
                out.push(FollowerEffect::InstallSnapshot {
                    index,
                    bytes: s.buf,
                });
                self.drain(out);
            }
        }
    }

    fn verify_snapshot(&self, s: &SnapshotRecv) -> Result<NodeState, SnapshotFault> {
        let m = &s.manifest;
        let got = Hash::of_bytes(&s.buf);
        if got != m.content_hash {
            // Not the bytes the leader signed (damaged in transit or at
            // rest): refused, and fetched again.
            return Err(SnapshotFault::Refuse(format!(
                "content hash {got} is not the manifest's {}",
                m.content_hash
            )));
        }
        // From here on the bytes are exactly what the leader signed, so a
        // disagreement is the leader's state against this follower's code:
        // a divergence. Refusing would fetch the same bytes for ever.
        let diverge = SnapshotFault::Diverge;
        let node: NodeState =
            from_canonical(&s.buf).map_err(|e| diverge(format!("does not decode: {e}")))?;
        if node.genesis_hash != self.genesis_hash {
            return Err(diverge("the snapshot is of another genesis".into()));
        }
        // The genesis document inside must be the one its hash names (the
        // store refuses to install it otherwise, after it was applied in
        // memory: the follower halted then without a stored halt marker).
        match node.genesis.hash() {
            Ok(h) if h == node.genesis_hash => {}
            Ok(h) => {
                return Err(diverge(format!(
                    "its genesis document hashes to {h}, not to its genesis_hash {}",
                    node.genesis_hash
                )))
            }
            Err(e) => {
                return Err(diverge(format!(
                    "its genesis document cannot be hashed: {e}"
                )))
            }
        }
        if node.index != m.index || node.head_record != m.head_record {
            return Err(diverge(format!(
                "the state is at index {} / {}, the manifest says {} / {}",
                node.index, node.head_record, m.index, m.head_record
            )));
        }
        for (id, e) in &node.projects {
            if e.state.hash() != e.hash {
                return Err(diverge(format!(
                    "project {id:?}: its document does not hash to {}",
                    e.hash
                )));
            }
        }
        if node.root_hash() != m.root_hash {
            return Err(diverge(format!(
                "root hash is not the manifest's {}",
                m.root_hash
            )));
        }
        if node.index <= self.node.index {
            return Err(SnapshotFault::Refuse(format!(
                "snapshot at {} is not ahead of the applied index {}",
                node.index, self.node.index
            )));
        }
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swoosh_core::guards::Verify;
    use swoosh_core::reducer::{apply_record, Outcome};
    use swoosh_core::scenario::{genesis, run_happy_path, Driver, Keys};
    use swoosh_core::sig;

    const ORIGIN_MS: u64 = 1_767_225_600_000;

    /// A follower at genesis, the leader's key, and the leader's state after
    /// a few records.
    fn setup() -> (ReplFollower, ed25519_dalek::SigningKey, NodeState) {
        let keys = Keys::from_labels("follower-snapshot", 3);
        let g = genesis(&keys, "follower-snapshot", ORIGIN_MS);
        let mut leader = NodeState::new(g.clone()).unwrap();
        let mut records = vec![];
        let driver = Driver::new(&keys, 10);
        run_happy_path(
            &mut leader,
            &driver,
            &["default".to_string()],
            ORIGIN_MS + 1,
            6,
            |s| {
                if let Outcome::Accepted(a) = &s.step.outcome {
                    records.push(a.record.clone());
                }
            },
        );
        assert!(!records.is_empty(), "the driver produced records");
        let mut node = NodeState::new(g.clone()).unwrap();
        for r in &records {
            apply_record(&mut node, r, Verify::Trusted).unwrap();
        }
        let id = SignerId::from_signing_key(&sig::key_from_label("follower-snapshot/follower-1"));
        let f = ReplFollower::new(FollowerConfig::default(), id, NodeState::new(g).unwrap());
        (f, keys.leader, node)
    }

    /// Offer `node` as the leader would (a manifest over exactly its bytes,
    /// signed) and deliver it in one chunk.
    fn transfer(
        f: &mut ReplFollower,
        leader: &ed25519_dalek::SigningKey,
        node: &NodeState,
    ) -> Vec<FollowerEffect> {
        let bytes = swoosh_core::cbor::to_canonical(node).unwrap();
        let body = SnapshotManifest {
            cluster_id: node.genesis.cluster_id.clone(),
            genesis_hash: node.genesis_hash,
            leader: SignerId::from_signing_key(leader),
            index: node.index,
            head_record: node.head_record,
            root_hash: node.root_hash(),
            content_hash: Hash::of_bytes(&bytes),
            total_bytes: bytes.len() as u64,
        };
        let signature = sig::sign(SNAPSHOT_MANIFEST_DOMAIN, &body, leader).unwrap();
        let offer = f.on_response(
            &Response::SnapshotOffer(SignedManifest { body, signature }),
            0,
        );
        assert!(offer
            .iter()
            .any(|e| matches!(e, FollowerEffect::Send(Request::Snapshot { offset: 0, .. }))));
        f.on_response(
            &Response::SnapshotChunk(SnapshotChunk {
                index: node.index,
                offset: 0,
                total_bytes: bytes.len() as u64,
                bytes: Bytes(bytes),
            }),
            1,
        )
    }

    #[test]
    fn a_signed_snapshot_installs() {
        let (mut f, leader, node) = setup();
        let eff = transfer(&mut f, &leader, &node);
        assert!(eff.iter().any(
            |e| matches!(e, FollowerEffect::InstallSnapshot { index, .. } if *index == node.index)
        ));
        assert_eq!(f.node(), &node);
        assert!(f.halted().is_none());
    }

    /// A signed snapshot whose genesis document does not hash to the
    /// `genesis_hash` it carries passes every other check (the root hash
    /// covers the genesis hash, not the document). The store would refuse
    /// to install it, after the follower had taken it in memory; it is a
    /// divergence here, before anything is installed, so the follower halts
    /// the way that is recorded and survives a restart.
    #[test]
    fn a_snapshot_whose_genesis_document_is_not_its_genesis_hash_halts() {
        let (mut f, leader, mut node) = setup();
        node.genesis.hlc_max_offset_ms += 1;
        assert_ne!(node.genesis.hash().unwrap(), node.genesis_hash);
        let eff = transfer(&mut f, &leader, &node);
        assert!(
            !eff.iter()
                .any(|e| matches!(e, FollowerEffect::InstallSnapshot { .. })),
            "{eff:?}"
        );
        let d = f.halted().expect("halted");
        assert_eq!(d.index, node.index);
        assert!(
            d.reason.contains("genesis document hashes to"),
            "{}",
            d.reason
        );
        assert!(matches!(eff.last(), Some(FollowerEffect::Halted(_))));
        assert_eq!(f.applied_index(), 0);
    }
}
