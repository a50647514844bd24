//! Leader side of replication: batch committed records, sign them, announce
//! the durable head, and answer catch-up requests from the log (records, or a
//! snapshot in resumable chunks when the range was truncated away).
//!
//! Durability rule: only records that are durable on the leader are handed to
//! [`ReplLeader::on_committed`]. A follower therefore never holds a record
//! the leader could lose in a crash, and a restarted leader resumes with
//! [`ReplLeader::new`] at its recovered log tail.

use super::follower::FollowerStatus;
use super::wire::*;
use ed25519_dalek::SigningKey;
use std::collections::BTreeMap;
use swoosh_core::cbor::{to_canonical, CanonicalError};
use swoosh_core::hash::Hash;
use swoosh_core::record::WalRecord;
use swoosh_core::sig::{self, SignerId};
use swoosh_core::state::{Genesis, FOLLOWERS_MAX};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderConfig {
    /// Close a batch at this many records.
    pub batch_records_max: usize,
    /// Close a batch before its records' canonical encodings exceed this.
    pub batch_bytes_max: usize,
    /// At most this many records per range response.
    pub range_records_max: u64,
    /// At most this many record bytes per range response (at least one batch).
    pub range_bytes_max: usize,
    pub snapshot_chunk_bytes_max: usize,
    /// Offer the newest snapshot instead of records when it lies at least
    /// this many records past the start of a requested range (a late joiner
    /// then fetches one snapshot and the tail instead of the whole log).
    /// 0: only when the range starts before the oldest record kept. The
    /// libp2p leader uses [`SNAPSHOT_CATCHUP_RECORDS`].
    pub snapshot_catchup_records: u64,
    /// Never offer a snapshot larger than this: a follower refuses it
    /// (`SNAPSHOT_BYTES_MAX`) and would ask the same range again, to be
    /// offered the same snapshot, for ever. Records are served instead when
    /// the log still holds them.
    pub snapshot_offer_bytes_max: u64,
}

/// How far behind the newest snapshot a follower must be for the libp2p
/// leader to offer it the snapshot rather than ranges.
pub const SNAPSHOT_CATCHUP_RECORDS: u64 = 8_192;

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            batch_records_max: BATCH_RECORDS_MAX,
            batch_bytes_max: BATCH_BYTES_MAX,
            range_records_max: RANGE_RECORDS_MAX,
            range_bytes_max: RANGE_BYTES_MAX,
            snapshot_chunk_bytes_max: SNAPSHOT_CHUNK_BYTES_MAX,
            snapshot_catchup_records: 0,
            snapshot_offer_bytes_max: SNAPSHOT_BYTES_MAX,
        }
    }
}

/// A snapshot as the leader's storage holds it.
pub struct SnapshotView<'a> {
    /// Index of the last record the snapshot includes.
    pub index: u64,
    pub head_record: Hash,
    pub root_hash: Hash,
    /// Canonical CBOR of the `NodeState`.
    pub bytes: &'a [u8],
}

/// Read access to the leader's durable log (the storage crate or a model).
pub trait LeaderLog {
    /// Oldest index still kept as a record (1 when nothing was truncated).
    fn first_index(&self) -> u64;
    /// Last durable index (0 for an empty log).
    fn last_index(&self) -> u64;
    /// Where the log ends, or None when it cannot be read now: judging a
    /// follower's position takes positive evidence, never a read error
    /// taken for an empty log.
    fn log_end(&self) -> Option<u64> {
        Some(self.last_index())
    }
    fn record(&self, index: u64) -> Option<WalRecord>;
    /// The newest snapshot, if any.
    fn snapshot(&self) -> Option<SnapshotView<'_>>;
    /// The snapshot at `index` if the leader still serves it: the newest, or
    /// an older one a transfer in progress pinned. Without the pin a
    /// transfer slower than the snapshot interval would start over at every
    /// new snapshot and never finish.
    fn snapshot_at(&self, index: u64) -> Option<SnapshotView<'_>> {
        self.snapshot().filter(|s| s.index == index)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum LeaderEffect {
    /// Publish on the WAL topic.
    Publish(Gossip),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaderError {
    #[error(
        "key {key} is not the genesis leader {leader}: only the genesis leader publishes the WAL"
    )]
    NotLeader { key: String, leader: String },
    #[error(
        "record {index} handed to replication after {last}: commit records in index order, once"
    )]
    OutOfOrder { index: u64, last: u64 },
    #[error("record {index} does not chain to the last committed record: the log is inconsistent")]
    Chain { index: u64 },
    #[error("record {index} does not encode canonically: {source}")]
    Encode {
        index: u64,
        #[source]
        source: CanonicalError,
    },
}

/// Counters for metrics and the simulator's report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderStats {
    pub batches_published: u64,
    pub records_published: u64,
    pub ranges_served: u64,
    pub range_records_served: u64,
    pub snapshot_offers: u64,
    pub snapshot_chunks: u64,
    pub refused: u64,
}

pub struct ReplLeader {
    cfg: LeaderConfig,
    key: SigningKey,
    id: SignerId,
    cluster_id: String,
    genesis_hash: Hash,
    /// Last record handed to `on_committed` (or recovered at start).
    committed: (u64, Hash),
    /// Last record closed into a published batch.
    published: (u64, Hash),
    open: Vec<WalRecord>,
    open_hashes: Vec<Hash>,
    open_bytes: usize,
    manifest: Option<SignedManifest>,
    followers: BTreeMap<SignerId, FollowerStatus>,
    stats: LeaderStats,
}

fn encode_record(rec: &WalRecord) -> Result<(Hash, usize), LeaderError> {
    let bytes = to_canonical(rec).map_err(|source| LeaderError::Encode {
        index: rec.index,
        source,
    })?;
    Ok((Hash::of_bytes(&bytes), bytes.len()))
}

impl ReplLeader {
    /// Start (or restart) at the durable log tail `(last_index, last_hash)`
    /// (`(0, genesis hash)` for an empty log).
    pub fn new(
        cfg: LeaderConfig,
        key: SigningKey,
        genesis: &Genesis,
        last_index: u64,
        last_hash: Hash,
    ) -> Result<ReplLeader, LeaderError> {
        assert!(cfg.batch_records_max >= 1, "batch_records_max must be >= 1");
        assert!(
            cfg.batch_records_max <= BATCH_RECORDS_LIMIT,
            "batch_records_max above the receive limit"
        );
        assert!(cfg.range_records_max >= 1, "range_records_max must be >= 1");
        assert!(cfg.snapshot_chunk_bytes_max >= 1, "chunks must carry bytes");
        let id = SignerId::from_signing_key(&key);
        if id != genesis.leader {
            return Err(LeaderError::NotLeader {
                key: id.to_string(),
                leader: genesis.leader.to_string(),
            });
        }
        let genesis_hash = genesis.hash().expect("a validated genesis encodes");
        Ok(ReplLeader {
            cfg,
            key,
            id,
            cluster_id: genesis.cluster_id.clone(),
            genesis_hash,
            committed: (last_index, last_hash),
            published: (last_index, last_hash),
            open: vec![],
            open_hashes: vec![],
            open_bytes: 0,
            manifest: None,
            followers: BTreeMap::new(),
            stats: LeaderStats::default(),
        })
    }

    pub fn stats(&self) -> &LeaderStats {
        &self.stats
    }

    /// Index of the last record published in a batch.
    pub fn published_index(&self) -> u64 {
        self.published.0
    }

    /// A durable record, in index order. Returns the batches that closed.
    pub fn on_committed(&mut self, rec: &WalRecord) -> Result<Vec<LeaderEffect>, LeaderError> {
        let (hash, size) = encode_record(rec)?;
        self.on_committed_hashed(rec, hash, size)
    }

    /// [`ReplLeader::on_committed`] for a record whose hash the caller holds:
    /// the leader reads its own frames, whose stored hash is the record's
    /// hash, so it need not encode the record again. Contract: `hash` is
    /// BLAKE3 of the record's canonical encoding and `size` at least that
    /// encoding's length (it bounds the batch bytes).
    pub fn on_committed_hashed(
        &mut self,
        rec: &WalRecord,
        hash: Hash,
        size: usize,
    ) -> Result<Vec<LeaderEffect>, LeaderError> {
        if rec.index != self.committed.0 + 1 {
            return Err(LeaderError::OutOfOrder {
                index: rec.index,
                last: self.committed.0,
            });
        }
        if rec.prev_hash != self.committed.1 {
            return Err(LeaderError::Chain { index: rec.index });
        }
        let mut out = vec![];
        if !self.open.is_empty() && self.open_bytes + size > self.cfg.batch_bytes_max {
            out.extend(self.close());
        }
        self.open.push(rec.clone());
        self.open_hashes.push(hash);
        self.open_bytes += size;
        self.committed = (rec.index, hash);
        if self.open.len() >= self.cfg.batch_records_max
            || self.open_bytes >= self.cfg.batch_bytes_max
        {
            out.extend(self.close());
        }
        Ok(out)
    }

    /// Go on after record `index` (hash `hash`) without publishing the
    /// records up to it: a compaction cut them before they were published
    /// (a follower that needs them is offered the snapshot at the base).
    /// Only moves forward; drops nothing open (flush first).
    pub fn skip_to(&mut self, index: u64, hash: Hash) {
        if index <= self.committed.0 || !self.open.is_empty() {
            return;
        }
        self.committed = (index, hash);
        self.published = (index, hash);
    }

    /// Publish whatever is open (call at the end of each group commit).
    pub fn flush(&mut self) -> Vec<LeaderEffect> {
        self.close().into_iter().collect()
    }

    fn close(&mut self) -> Option<LeaderEffect> {
        if self.open.is_empty() {
            return None;
        }
        let records = std::mem::take(&mut self.open);
        let hashes = std::mem::take(&mut self.open_hashes);
        self.open_bytes = 0;
        let b = self.sign_batch(records, hashes);
        self.published = (
            b.header.last_index,
            *b.header.record_hashes.last().expect("non-empty"),
        );
        self.stats.batches_published += 1;
        self.stats.records_published += b.records.len() as u64;
        Some(LeaderEffect::Publish(Gossip::Batch(b)))
    }

    fn sign_batch(&self, records: Vec<WalRecord>, record_hashes: Vec<Hash>) -> WalBatch {
        assert!(!records.is_empty(), "a batch carries at least one record");
        assert_eq!(records.len(), record_hashes.len(), "one hash per record");
        let header = BatchHeader {
            cluster_id: self.cluster_id.clone(),
            genesis_hash: self.genesis_hash,
            leader: self.id.clone(),
            first_index: records[0].index,
            last_index: records[records.len() - 1].index,
            prev_hash: records[0].prev_hash,
            record_hashes,
        };
        let signature =
            sig::sign(WAL_BATCH_DOMAIN, &header, &self.key).expect("batch headers encode");
        WalBatch {
            header,
            signature,
            records,
        }
    }

    /// The signed durable head, published periodically so followers notice
    /// a missed tail without waiting for the next batch.
    pub fn head(&self, log_first_index: u64) -> Gossip {
        let body = HeadBody {
            cluster_id: self.cluster_id.clone(),
            genesis_hash: self.genesis_hash,
            leader: self.id.clone(),
            last_index: self.published.0,
            last_hash: self.published.1,
            log_first_index,
        };
        let signature = sig::sign(WAL_HEAD_DOMAIN, &body, &self.key).expect("heads encode");
        Gossip::Head(SignedHead { body, signature })
    }

    /// Record a follower's reported position (for lag metrics). At most
    /// `FOLLOWERS_MAX` followers are tracked; reports from more are ignored.
    pub fn on_status(&mut self, st: FollowerStatus) {
        if self.followers.len() >= FOLLOWERS_MAX && !self.followers.contains_key(&st.follower) {
            return;
        }
        self.followers.insert(st.follower.clone(), st);
    }

    pub fn followers(&self) -> &BTreeMap<SignerId, FollowerStatus> {
        &self.followers
    }

    /// Answer one follower request from the durable log.
    pub fn on_request(&mut self, req: &Request, log: &dyn LeaderLog) -> Response {
        match *req {
            Request::Range { from, to } => self.range(from, to, log),
            Request::Snapshot { index, offset } => self.chunk(index, offset, log),
            Request::Status(_) => self.refuse(
                "a status report needs the sender's authenticated identity (on_status_report)"
                    .into(),
            ),
        }
    }

    /// Record the position `follower` (the authenticated sender) reports and
    /// answer with the leader's published index. Lag is measured against
    /// what the leader published, not what the follower heard.
    ///
    /// The position is checked against `log`: a follower can only have
    /// applied what this log held, so one past its durable tail, or on
    /// another record hash, holds a history the leader does not (the
    /// leader's log was cut by a repair, or restored from an older copy).
    /// Nothing else would notice until the leader's new records reached the
    /// follower's index again; meanwhile it would serve that history as
    /// healthy. The answer is then [`Response::Diverged`], and the follower
    /// halts.
    pub fn on_status_report(
        &mut self,
        follower: SignerId,
        r: &StatusReport,
        log: &dyn LeaderLog,
    ) -> Response {
        let published = self.published.0;
        let off_log = Self::off_log(r, log);
        self.on_status(FollowerStatus {
            follower,
            applied_index: r.applied_index,
            applied_hash: r.applied_hash,
            root_hash: r.root_hash,
            leader_index: published.max(r.leader_index),
            lag_records: published.saturating_sub(r.applied_index),
            halted: r.halted || off_log.is_some(),
        });
        match off_log {
            Some((index, reason)) => Response::Diverged { index, reason },
            None => Response::StatusAck {
                published_index: published,
            },
        }
    }

    /// Where and why a reported position is not on `log` (None when it is,
    /// or when the log no longer holds the record to compare).
    fn off_log(r: &StatusReport, log: &dyn LeaderLog) -> Option<(u64, String)> {
        let last = log.log_end()?;
        if r.applied_index > last {
            return Some((
                r.applied_index,
                format!(
                    "this follower applied up to record {}, but the leader's log ends at {last}: it holds records the leader does not (was the leader's log cut by a repair or restored from an older copy?)",
                    r.applied_index
                ),
            ));
        }
        if r.applied_index == 0 {
            return None;
        }
        let (h, _) = encode_record(&log.record(r.applied_index)?).ok()?;
        (h != r.applied_hash).then(|| {
            (
                r.applied_index,
                format!(
                    "this follower applied record hash {} at {}, the leader's log holds {h} there",
                    r.applied_hash, r.applied_index
                ),
            )
        })
    }

    fn refuse(&mut self, reason: String) -> Response {
        self.stats.refused += 1;
        Response::Refused { reason }
    }

    fn range(&mut self, from: u64, to: u64, log: &dyn LeaderLog) -> Response {
        if from == 0 || to < from {
            return self.refuse(format!(
                "range {from}..={to} is empty or starts at 0; ask for from >= 1 and to >= from"
            ));
        }
        // Before the end-of-log check: a compacted leader whose WAL is empty
        // after its base (last record 0) still offers its snapshot.
        if from < log.first_index() {
            return match log.snapshot() {
                Some(s) if s.bytes.len() as u64 > self.cfg.snapshot_offer_bytes_max => {
                    self.refuse(format!(
                        "records before {} were truncated and the snapshot at {} is {} bytes, over the {} a follower takes: this follower cannot catch up from this leader",
                        log.first_index(),
                        s.index,
                        s.bytes.len(),
                        self.cfg.snapshot_offer_bytes_max
                    ))
                }
                Some(s) => {
                    self.stats.snapshot_offers += 1;
                    Response::SnapshotOffer(self.manifest_for(&s))
                }
                None => self.refuse(format!(
                    "records before {} were truncated and no snapshot is kept: the leader's storage is inconsistent",
                    log.first_index()
                )),
            };
        }
        let last = log.last_index();
        if from > last {
            self.stats.ranges_served += 1;
            return Response::Range { batches: vec![] };
        }
        if self.cfg.snapshot_catchup_records > 0 {
            if let Some(s) = log.snapshot() {
                if s.index >= from.saturating_add(self.cfg.snapshot_catchup_records)
                    && s.bytes.len() as u64 <= self.cfg.snapshot_offer_bytes_max
                {
                    self.stats.snapshot_offers += 1;
                    return Response::SnapshotOffer(self.manifest_for(&s));
                }
            }
        }
        let to = to
            .min(last)
            .min(from.saturating_add(self.cfg.range_records_max - 1));
        let mut batches = vec![];
        let (mut recs, mut hashes, mut bytes, mut total) = (vec![], vec![], 0usize, 0usize);
        for i in from..=to {
            let Some(rec) = log.record(i) else {
                break;
            };
            let Ok((h, size)) = encode_record(&rec) else {
                break;
            };
            if !recs.is_empty()
                && (recs.len() >= self.cfg.batch_records_max
                    || bytes + size > self.cfg.batch_bytes_max)
            {
                batches
                    .push(self.sign_batch(std::mem::take(&mut recs), std::mem::take(&mut hashes)));
                bytes = 0;
                if total >= self.cfg.range_bytes_max {
                    break;
                }
            }
            recs.push(rec);
            hashes.push(h);
            bytes += size;
            total += size;
        }
        if !recs.is_empty() {
            batches.push(self.sign_batch(recs, hashes));
        }
        if batches.is_empty() {
            return self.refuse(format!(
                "record {from} is not readable from the leader's log"
            ));
        }
        self.stats.ranges_served += 1;
        self.stats.range_records_served +=
            batches.iter().map(|b| b.records.len() as u64).sum::<u64>();
        Response::Range { batches }
    }

    fn manifest_for(&mut self, s: &SnapshotView<'_>) -> SignedManifest {
        if let Some(m) = &self.manifest {
            if m.body.index == s.index && m.body.total_bytes == s.bytes.len() as u64 {
                return m.clone();
            }
        }
        let body = SnapshotManifest {
            cluster_id: self.cluster_id.clone(),
            genesis_hash: self.genesis_hash,
            leader: self.id.clone(),
            index: s.index,
            head_record: s.head_record,
            root_hash: s.root_hash,
            content_hash: Hash::of_bytes(s.bytes),
            total_bytes: s.bytes.len() as u64,
        };
        let signature =
            sig::sign(SNAPSHOT_MANIFEST_DOMAIN, &body, &self.key).expect("manifests encode");
        let m = SignedManifest { body, signature };
        self.manifest = Some(m.clone());
        m
    }

    fn chunk(&mut self, index: u64, offset: u64, log: &dyn LeaderLog) -> Response {
        let Some(s) = log.snapshot_at(index) else {
            return match log.snapshot() {
                // The snapshot being fetched is no longer served: start over
                // with the newest.
                Some(newest) => {
                    self.stats.snapshot_offers += 1;
                    Response::SnapshotOffer(self.manifest_for(&newest))
                }
                None => self.refuse("the leader keeps no snapshot; ask for a record range".into()),
            };
        };
        let total = s.bytes.len() as u64;
        if offset >= total {
            return self.refuse(format!(
                "offset {offset} is past the end of snapshot {index} ({total} bytes)"
            ));
        }
        let end = (offset + self.cfg.snapshot_chunk_bytes_max as u64).min(total);
        self.stats.snapshot_chunks += 1;
        Response::SnapshotChunk(SnapshotChunk {
            index,
            offset,
            total_bytes: total,
            bytes: Bytes(s.bytes[offset as usize..end as usize].to_vec()),
        })
    }
}
