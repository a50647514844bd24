//! The hash-chained WAL on top of a [`LogStore`]: framing and encoding of
//! records, the group-commit writer, and verified reads.
//!
//! Write side ([`WalWriter::append_batch`]): each record is encoded as
//! canonical CBOR, bounded by [`WAL_RECORD_BYTES_MAX`], hashed, checked
//! against the hash the reducer claimed and against the chain (`index` is
//! `last + 1`, `prev_hash` is the hash of the last record), framed, and the
//! whole batch (records, their idempotency entries and decision records) goes
//! to the store in ONE commit: one LMDB transaction, one durable sync. The call
//! returns only after that commit, so a 202 may be sent when it returns.
//!
//! Read side ([`read_record`], [`WalIter`], [`export`]): every frame's hash is
//! recomputed and compared before the payload is decoded with
//! `cbor::from_trusted`; iterators also check the index and the chain link to
//! the previous record. A bad record is reported with its index and reason,
//! never skipped and never a panic.

use crate::frame::{self, FrameError, FrameKind};
use crate::store::{Batch, CommitInfo, LogStore, Space, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use swoosh_core::record::{DecisionRecord, SignedDecision, WalRecord};
use swoosh_core::reducer::Accepted;
use swoosh_core::state::IdemEntry;
use swoosh_core::Hash;

/// Largest canonical encoding of one WAL record. A proposal's inputs are
/// capped at 64 KiB by core (`INPUTS_BYTES_MAX`); this leaves room for guard
/// reasons and evidence and still refuses anything absurd.
pub const WAL_RECORD_BYTES_MAX: usize = swoosh_core::reducer::RECORD_BYTES_MAX;
/// Largest canonical encoding of one stored decision record.
pub const DECISION_BYTES_MAX: usize = 1 << 20;
/// Largest canonical encoding of one idempotency entry.
pub const IDEM_ENTRY_BYTES_MAX: usize = 4 << 10;
/// Default most records in one group commit.
pub const WAL_BATCH_RECORDS_MAX_DEFAULT: usize = 1024;
/// Default most bytes (frames of records, idempotency entries and decisions)
/// in one group commit.
pub const WAL_BATCH_BYTES_MAX_DEFAULT: usize = 16 << 20;
/// Records fetched per store read when iterating the log.
pub const WAL_READ_CHUNK_RECORDS: usize = 1024;

/// Store format, kept under the `format` metadata key.
pub const STORE_FORMAT: &str = "swoosh-store-v1";
pub const META_FORMAT: &str = "format";
/// The genesis hash (its `blake3:` text form) the store was created for.
pub const META_GENESIS: &str = "genesis_hash";

/// A decision record as stored: signed by the leader, or unsigned (a
/// rebuild without the leader's key, or a writer that does not sign).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionDoc {
    Signed(SignedDecision),
    Unsigned(DecisionRecord),
}

impl DecisionDoc {
    pub fn record(&self) -> &DecisionRecord {
        match self {
            DecisionDoc::Signed(s) => &s.record,
            DecisionDoc::Unsigned(r) => r,
        }
    }
    /// The content address: the hash of the (unsigned) decision record.
    pub fn hash(&self) -> Hash {
        self.record().hash()
    }
}

/// One accepted transition to make durable.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub record: WalRecord,
    /// The hash the reducer computed (`Accepted::record_hash`); checked
    /// against the hash of the bytes actually written.
    pub record_hash: Option<Hash>,
    /// Stored in the decisions space under its hash, in the same commit.
    pub decision: Option<DecisionDoc>,
    /// The decision was signed by this process just now
    /// ([`Entry::from_accepted_signed`]): re-verifying that signature on the
    /// write path would only repeat an ed25519 verification per record.
    /// Readers still verify what they load. Any other signature in
    /// `decision` is verified as usual.
    signed_here: Option<SignedHere>,
}

/// A decision signature made by this process, with the canonical encoding
/// of the record it covers: hashed and stored as is, not encoded again.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SignedHere {
    signature: swoosh_core::Signature,
    leader: swoosh_core::SignerId,
    record_bytes: Vec<u8>,
}

impl Entry {
    pub fn record(record: WalRecord) -> Entry {
        Entry {
            record,
            record_hash: None,
            decision: None,
            signed_here: None,
        }
    }
    /// The reducer's output, with its decision record stored unsigned.
    pub fn from_accepted(acc: Accepted) -> Entry {
        Entry {
            record: acc.record,
            record_hash: Some(acc.record_hash),
            decision: Some(DecisionDoc::Unsigned(acc.decision)),
            signed_here: None,
        }
    }
    /// The reducer's output, with its decision record signed by the leader.
    pub fn from_accepted_signed(acc: Accepted, leader: &ed25519_dalek::SigningKey) -> Entry {
        let mut e = Entry::from_accepted(acc);
        e.sign_decision(leader);
        e
    }

    /// Sign an unsigned decision record with the leader's key, in place; a
    /// signed one or none is left as it is. The node signs in its WAL
    /// writer's commit thread, so the single-writer sequencer does not.
    pub fn sign_decision(&mut self, leader: &ed25519_dalek::SigningKey) {
        self.sign_decision_from(leader, None);
    }

    /// [`Entry::sign_decision`] for a caller that holds the unsigned decision
    /// record's canonical encoding already (`Accepted::decision_bytes`).
    /// Contract: `bytes` is `to_canonical` of that record; see
    /// [`SignedDecision::sign_encoded`].
    pub fn sign_decision_encoded(&mut self, leader: &ed25519_dalek::SigningKey, bytes: Vec<u8>) {
        self.sign_decision_from(leader, Some(bytes));
    }

    fn sign_decision_from(&mut self, leader: &ed25519_dalek::SigningKey, bytes: Option<Vec<u8>>) {
        self.decision = match self.decision.take() {
            Some(DecisionDoc::Unsigned(record)) => {
                let (signed, bytes) = match bytes {
                    Some(b) => SignedDecision::sign_encoded(record, b, leader),
                    None => SignedDecision::sign_canonical(record, leader),
                };
                self.signed_here = Some(SignedHere {
                    signature: signed.signature,
                    leader: signed.leader.clone(),
                    record_bytes: bytes,
                });
                Some(DecisionDoc::Signed(signed))
            }
            other => other,
        };
    }

    /// Encode, hash and frame this entry (no chain check yet: that needs the
    /// writer's tail). Callers may encode off the writer's thread and pass
    /// the result to [`WalWriter::append_encoded`].
    pub fn encode(&self) -> Result<EncodedEntry, AppendError> {
        let rec = &self.record;
        let index = rec.index;
        let payload = swoosh_core::cbor::to_canonical(rec).map_err(|e| AppendError::Encode {
            index,
            detail: e.to_string(),
        })?;
        let content_hash = rec
            .proposal()
            .content_hash()
            .map_err(|e| AppendError::Encode {
                index,
                detail: e.to_string(),
            })?;
        self.encode_with(payload, content_hash)
    }

    /// [`Entry::encode`] for a caller that already encoded the record and
    /// hashed its proposal (a follower did both to check what the leader
    /// signed). Contract: `payload` is `to_canonical(&self.record)` and
    /// `content_hash` its proposal's content hash. The frame hash is still
    /// computed over `payload` and checked against `record_hash` when given.
    pub fn encode_with(
        &self,
        payload: Vec<u8>,
        content_hash: Hash,
    ) -> Result<EncodedEntry, AppendError> {
        self.encode_framed(payload, None, content_hash)
    }

    /// [`Entry::encode_with`] for a caller that also hashed `payload`: a
    /// follower hashed each record's exact bytes to check them against the
    /// leader's signed list, and hashing them again for the frame was one
    /// more BLAKE3 pass per record on its worker. Contract: `payload_hash`
    /// is `BLAKE3(payload)` of these very bytes. A broken contract cannot
    /// pass quietly: every read of the frame re-hashes the payload and names
    /// the record as corrupt.
    pub fn encode_with_hash(
        &self,
        payload: Vec<u8>,
        payload_hash: Hash,
        content_hash: Hash,
    ) -> Result<EncodedEntry, AppendError> {
        self.encode_framed(payload, Some(payload_hash), content_hash)
    }

    fn encode_framed(
        &self,
        payload: Vec<u8>,
        payload_hash: Option<Hash>,
        content_hash: Hash,
    ) -> Result<EncodedEntry, AppendError> {
        let rec = &self.record;
        let index = rec.index;
        if payload.len() > WAL_RECORD_BYTES_MAX {
            return Err(AppendError::RecordTooLarge {
                index,
                bytes: payload.len(),
            });
        }
        let (frame, hash) = match payload_hash {
            Some(h) => (frame::seal_with_hash(FrameKind::WalRecord, &payload, &h), h),
            None => frame::seal(FrameKind::WalRecord, &payload),
        };
        if let Some(claimed) = self.record_hash {
            if claimed != hash {
                return Err(AppendError::HashMismatch {
                    index,
                    claimed,
                    computed: hash,
                });
            }
        }
        let idem = IdemEntry {
            content_hash,
            transition: rec.transition.clone(),
            index,
            state_post_hash: rec.state_post_hash,
            decision: rec.decision,
        };
        let idem_key = idem_key(&rec.project, &rec.idem_key)
            .map_err(|e| AppendError::Encode { index, detail: e })?;
        let idem_payload =
            swoosh_core::cbor::to_canonical(&idem).map_err(|e| AppendError::Encode {
                index,
                detail: e.to_string(),
            })?;
        if idem_payload.len() > IDEM_ENTRY_BYTES_MAX {
            return Err(AppendError::Encode {
                index,
                detail: format!(
                    "idempotency entry of {} bytes exceeds {IDEM_ENTRY_BYTES_MAX}",
                    idem_payload.len()
                ),
            });
        }
        let (idem_frame, _) = frame::seal(FrameKind::IdemEntry, &idem_payload);
        let decision = match &self.decision {
            None => None,
            Some(doc) => {
                // The content was checked against the record just above; a
                // signature made here over it needs no second verification.
                let ours = match (doc, &self.signed_here) {
                    (DecisionDoc::Signed(s), Some(h))
                        if s.signature == h.signature && s.leader == h.leader =>
                    {
                        Some(h)
                    }
                    _ => None,
                };
                let encoded;
                let record_bytes: &[u8] = match ours {
                    Some(h) => &h.record_bytes,
                    None => {
                        encoded = swoosh_core::cbor::to_canonical(doc.record()).map_err(|e| {
                            AppendError::Encode {
                                index,
                                detail: e.to_string(),
                            }
                        })?;
                        &encoded
                    }
                };
                let dh = Hash::of_bytes(record_bytes);
                if dh != rec.decision {
                    return Err(AppendError::DecisionMismatch {
                        index,
                        record_says: rec.decision,
                        given: dh,
                    });
                }
                if let (DecisionDoc::Signed(s), None) = (doc, ours) {
                    s.verify().map_err(|e| AppendError::DecisionSignature {
                        index,
                        detail: e.to_string(),
                    })?;
                }
                let p = encode_doc_around(doc, record_bytes).map_err(|e| AppendError::Encode {
                    index,
                    detail: e.to_string(),
                })?;
                if p.len() > DECISION_BYTES_MAX {
                    return Err(AppendError::Encode {
                        index,
                        detail: format!(
                            "decision record of {} bytes exceeds {DECISION_BYTES_MAX}",
                            p.len()
                        ),
                    });
                }
                Some((dh, frame::seal(FrameKind::Decision, &p).0))
            }
        };
        Ok(EncodedEntry {
            index,
            prev_hash: rec.prev_hash,
            hash,
            frame,
            idem_key,
            idem_frame,
            decision,
        })
    }
}

/// `to_canonical(doc)`, assembled around `record`, which must be
/// `to_canonical(doc.record())`: the record is most of the document, and
/// the writer already holds its encoding (it hashed it). A test checks the
/// result against the canonical encoder for both variants.
fn encode_doc_around(
    doc: &DecisionDoc,
    record: &[u8],
) -> Result<Vec<u8>, swoosh_core::cbor::CanonicalError> {
    use swoosh_core::cbor::{head, to_canonical};
    fn text(out: &mut Vec<u8>, t: &str) {
        head(out, 3, t.len() as u64);
        out.extend_from_slice(t.as_bytes());
    }
    let mut out = Vec::with_capacity(record.len() + 256);
    // One-entry map: the variant name, then its content (serde's external
    // tagging, names in snake_case).
    head(&mut out, 5, 1);
    match doc {
        DecisionDoc::Unsigned(_) => {
            text(&mut out, "unsigned");
            out.extend_from_slice(record);
        }
        DecisionDoc::Signed(s) => {
            text(&mut out, "signed");
            let leader = to_canonical(&s.leader)?;
            let signature = to_canonical(&s.signature)?;
            // Keys in bytewise order of their encodings (RFC 8949 §4.2.1):
            // 0x66 "leader" < 0x66 "record" < 0x69 "signature".
            head(&mut out, 5, 3);
            text(&mut out, "leader");
            out.extend_from_slice(&leader);
            text(&mut out, "record");
            out.extend_from_slice(record);
            text(&mut out, "signature");
            out.extend_from_slice(&signature);
        }
    }
    Ok(out)
}

/// The reducer's output on its way to the leader's WAL, with what the
/// reducer already encoded: the record's canonical bytes and its proposal's
/// content hash, and the decision record's canonical bytes. The leader signs
/// the decision and frames the record from those bytes instead of encoding
/// both again; the frame hash is still computed over the bytes and checked
/// against the reducer's record hash. The node's WAL writer and `swoosh
/// bench replication`'s leader both commit through it, so the benchmark's
/// leader does the node's work per record.
///
/// Contract: built only by [`LeaderEntry::from_accepted`] from an
/// [`Accepted`] the reducer produced, so the bytes are the encodings of
/// exactly the records they travel with (the fields are private for that).
#[derive(Clone, Debug, PartialEq)]
pub struct LeaderEntry {
    entry: Entry,
    record_bytes: Option<(Vec<u8>, Hash)>,
    decision_bytes: Option<Vec<u8>>,
}

impl LeaderEntry {
    pub fn from_accepted(mut acc: Accepted) -> LeaderEntry {
        let record_bytes = acc.record_bytes.take().map(|b| (b, acc.content_hash));
        let decision_bytes = acc.decision_bytes.take();
        LeaderEntry {
            entry: Entry::from_accepted(acc),
            record_bytes,
            decision_bytes,
        }
    }

    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Sign the decision record with the leader's key ([`Entry::sign_decision`]),
    /// from the reducer's encoding of it when the reducer kept one.
    pub fn sign_decision(&mut self, leader: &ed25519_dalek::SigningKey) {
        match self.decision_bytes.take() {
            Some(b) => self.entry.sign_decision_encoded(leader, b),
            None => self.entry.sign_decision(leader),
        }
    }

    /// [`Entry::encode`], from the reducer's bytes when it kept them.
    pub fn encode(self) -> Result<EncodedEntry, AppendError> {
        match self.record_bytes {
            Some((bytes, content_hash)) => self.entry.encode_with(bytes, content_hash),
            None => self.entry.encode(),
        }
    }
}

/// An entry encoded and framed, ready for [`WalWriter::append_encoded`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedEntry {
    pub(crate) index: u64,
    pub(crate) prev_hash: Hash,
    pub(crate) hash: Hash,
    pub(crate) frame: Vec<u8>,
    pub(crate) idem_key: Vec<u8>,
    pub(crate) idem_frame: Vec<u8>,
    pub(crate) decision: Option<(Hash, Vec<u8>)>,
}

impl EncodedEntry {
    pub fn index(&self) -> u64 {
        self.index
    }
    /// The record's hash (BLAKE3 of its canonical CBOR).
    pub fn hash(&self) -> Hash {
        self.hash
    }
    /// Bytes this entry adds to a batch (counted against `wal_batch_bytes_max`).
    pub fn bytes(&self) -> usize {
        self.frame.len()
            + self.idem_key.len()
            + self.idem_frame.len()
            + self.decision.as_ref().map_or(0, |(_, f)| 32 + f.len())
    }
}

/// The idempotency-index key: `project`, a 0x00 byte, `idem_key` (project ids
/// never contain 0x00, so the split is unambiguous).
pub fn idem_key(project: &str, idem_key: &str) -> Result<Vec<u8>, String> {
    let mut k = Vec::with_capacity(project.len() + 1 + idem_key.len());
    k.extend_from_slice(project.as_bytes());
    k.push(0);
    k.extend_from_slice(idem_key.as_bytes());
    if project.as_bytes().contains(&0) || k.len() > crate::store::KEY_BYTES_MAX {
        return Err(format!("idempotency key of project {project:?} cannot be indexed (NUL in project id or longer than {} bytes)", crate::store::KEY_BYTES_MAX));
    }
    Ok(k)
}

/// Bounds on one group commit (`wal_batch_records_max`, `wal_batch_bytes_max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    pub wal_batch_records_max: usize,
    pub wal_batch_bytes_max: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            wal_batch_records_max: WAL_BATCH_RECORDS_MAX_DEFAULT,
            wal_batch_bytes_max: WAL_BATCH_BYTES_MAX_DEFAULT,
        }
    }
}

impl BatchLimits {
    /// Would a batch of `records` entries and `bytes` bytes fit?
    pub fn fits(&self, records: usize, bytes: usize) -> bool {
        records <= self.wal_batch_records_max && bytes <= self.wal_batch_bytes_max
    }
}

/// What one group commit did, for the runtime's metrics
/// (`swoosh_commit_batch_records`, `swoosh_fsync_latency_seconds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchReport {
    pub first_index: u64,
    pub last_index: u64,
    pub records: usize,
    pub bytes: usize,
    /// Time spent encoding and hashing (zero for pre-encoded entries).
    pub encode: Duration,
    /// Time of the store transaction including its fsyncs: what a client
    /// waits for durability.
    pub commit: Duration,
    /// True when the batch was on stable storage when the call returned.
    pub synced: bool,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AppendError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The durable tail, re-read after a failed commit, is damaged.
    #[error(transparent)]
    Tail(ReadError),
    #[error("WAL record {index} encodes to {bytes} bytes; at most {WAL_RECORD_BYTES_MAX} are allowed: shrink the proposal's inputs, evidence or guard reasons")]
    RecordTooLarge { index: u64, bytes: usize },
    #[error("a batch of {records} records / {bytes} bytes exceeds the group-commit limits ({records_max} records, {bytes_max} bytes): split it (see `BatchLimits::fits`)")]
    BatchTooLarge {
        records: usize,
        bytes: usize,
        records_max: usize,
        bytes_max: usize,
    },
    #[error("WAL record {index} could not be encoded: {detail}")]
    Encode { index: u64, detail: String },
    #[error("WAL record {index}: the reducer claimed hash {claimed} but the written bytes hash to {computed}; this is a bug in the encoder or the reducer, report it")]
    HashMismatch {
        index: u64,
        claimed: Hash,
        computed: Hash,
    },
    #[error("WAL record {got} does not follow the log's last record {last}; append records in order, starting at {}", last + 1)]
    OutOfOrder { got: u64, last: u64 },
    #[error("WAL record {index} has prev_hash {got} but the last record's hash is {expected}: the state the reducer ran on is not the log's; recover the node and resubmit")]
    ChainBroken {
        index: u64,
        expected: Hash,
        got: Hash,
    },
    #[error("WAL record {index} names decision {record_says} but the decision given hashes to {given}; store the decision the reducer produced for this record")]
    DecisionMismatch {
        index: u64,
        record_says: Hash,
        given: Hash,
    },
    #[error("the signed decision of WAL record {index} does not verify: {detail}; sign it with the leader key")]
    DecisionSignature { index: u64, detail: String },
}

/// Why one stored WAL record is not valid.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RecordFault {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("the frame stored under index {key} holds record {stored}")]
    IndexMismatch { key: u64, stored: u64 },
    #[error("chain broken: prev_hash is {got} but the previous record hashes to {expected}")]
    Chain { expected: Hash, got: Hash },
}

impl RecordFault {
    pub fn label(&self) -> &'static str {
        match self {
            RecordFault::Frame(f) => f.label(),
            RecordFault::IndexMismatch { .. } => "index mismatch",
            RecordFault::Chain { .. } => "chain broken",
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("WAL record {index} at {location} is corrupt ({reason}): run `swoosh wal verify --dir <node dir, which holds {location}>` and, to cut the log back to record {prev}, `swoosh wal repair --dir <node dir, which holds {location}>`", prev = index.saturating_sub(1))]
    Corrupt {
        location: String,
        index: u64,
        reason: RecordFault,
    },
    #[error("WAL record {index} is missing at {location} (the log ends at or skips past it, last index {last}): run `swoosh wal verify --dir <node dir, which holds {location}>`; `swoosh wal repair --dir <node dir, which holds {location}>` cuts the log back to record {prev}", prev = index.saturating_sub(1))]
    Missing {
        location: String,
        index: u64,
        last: u64,
    },
    #[error("WAL record {index} is below the WAL base of {location}: the log starts after record {base}, which (like every record before it) is held only in the snapshot at {base}; read records from {} on, or the snapshot (`swoosh snapshot list --dir <node dir>`)", base + 1)]
    BelowBase {
        location: String,
        index: u64,
        base: u64,
    },
}

impl ReadError {
    /// The index of the damaged or missing record, if the error names one.
    pub fn index(&self) -> Option<u64> {
        match self {
            ReadError::Store(_) => None,
            ReadError::Corrupt { index, .. }
            | ReadError::Missing { index, .. }
            | ReadError::BelowBase { index, .. } => Some(*index),
        }
    }
}

/// A record whose frame hash and index were checked.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedRecord {
    pub index: u64,
    pub hash: Hash,
    pub record: WalRecord,
}

/// Check and decode the frame stored under WAL key `index`.
pub fn decode_frame(index: u64, bytes: &[u8]) -> Result<VerifiedRecord, RecordFault> {
    let (hash, record): (Hash, WalRecord) =
        frame::open_decode(FrameKind::WalRecord, bytes, WAL_RECORD_BYTES_MAX)?;
    verified(index, hash, record)
}

/// [`decode_frame`] that also returns the frame's verified payload: the
/// record's canonical encoding, which the leader publishes as it is.
pub fn decode_frame_payload(
    index: u64,
    bytes: &[u8],
) -> Result<(VerifiedRecord, Vec<u8>), RecordFault> {
    let (hash, payload) = frame::open(FrameKind::WalRecord, bytes, WAL_RECORD_BYTES_MAX)?;
    let record: WalRecord = frame::decode(&payload)?;
    Ok((verified(index, hash, record)?, payload.into_owned()))
}

fn verified(index: u64, hash: Hash, record: WalRecord) -> Result<VerifiedRecord, RecordFault> {
    if record.index != index {
        return Err(RecordFault::IndexMismatch {
            key: index,
            stored: record.index,
        });
    }
    Ok(VerifiedRecord {
        index,
        hash,
        record,
    })
}

/// The error for an absent record `index`: below the WAL base, or missing.
fn absent<S: LogStore + ?Sized>(store: &S, index: u64) -> Result<ReadError, ReadError> {
    if let Some(b) = crate::base::wal_base(store)? {
        if index <= b.index {
            return Ok(ReadError::BelowBase {
                location: store.location(),
                index,
                base: b.index,
            });
        }
    }
    Ok(ReadError::Missing {
        location: store.location(),
        index,
        last: store.last_index()?,
    })
}

/// Read and verify (frame hash, index) one record. The chain link is checked
/// by the iterators, which know the previous record. A record at or below
/// the WAL base is [`ReadError::BelowBase`].
pub fn read_record<S: LogStore + ?Sized>(
    store: &S,
    index: u64,
) -> Result<VerifiedRecord, ReadError> {
    match store.read_at(index)? {
        None => Err(absent(store, index)?),
        Some(bytes) => decode_frame(index, &bytes).map_err(|reason| ReadError::Corrupt {
            location: store.location(),
            index,
            reason,
        }),
    }
}

/// Iterates records `from..=to`, checking every frame hash, every index and
/// every chain link (starting from `anchor`, the hash of record `from - 1`
/// or the genesis hash). Stops after the first error.
pub struct WalIter<'s, S: LogStore + ?Sized> {
    store: &'s S,
    next: u64,
    to: u64,
    prev_hash: Hash,
    buf: VecDeque<(u64, Vec<u8>)>,
    failed: bool,
}

impl<'s, S: LogStore + ?Sized> WalIter<'s, S> {
    pub fn new(store: &'s S, from: u64, to: u64, anchor: Hash) -> WalIter<'s, S> {
        WalIter {
            store,
            next: from.max(1),
            to,
            prev_hash: anchor,
            buf: VecDeque::new(),
            failed: false,
        }
    }

    /// The index the next item will have.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    fn fill(&mut self) -> Result<(), ReadError> {
        let rows = self
            .store
            .read_range(self.next, self.to, WAL_READ_CHUNK_RECORDS)?;
        self.buf.extend(rows);
        Ok(())
    }

    fn step(&mut self) -> Result<VerifiedRecord, ReadError> {
        if self.buf.is_empty() {
            self.fill()?;
        }
        let index = self.next;
        let missing = |s: &Self| absent(s.store, index);
        let Some((key, bytes)) = self.buf.pop_front() else {
            return Err(missing(self)?);
        };
        if key != index {
            return Err(missing(self)?);
        }
        let corrupt = |reason| ReadError::Corrupt {
            location: self.store.location(),
            index,
            reason,
        };
        let v = decode_frame(index, &bytes).map_err(corrupt)?;
        if v.record.prev_hash != self.prev_hash {
            return Err(corrupt(RecordFault::Chain {
                expected: self.prev_hash,
                got: v.record.prev_hash,
            }));
        }
        self.prev_hash = v.hash;
        self.next += 1;
        Ok(v)
    }
}

impl<S: LogStore + ?Sized> Iterator for WalIter<'_, S> {
    type Item = Result<VerifiedRecord, ReadError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next > self.to {
            return None;
        }
        let r = self.step();
        self.failed = r.is_err();
        Some(r)
    }
}

/// Verified export of records `from..=to` (`to = None`: up to the current
/// last record). Anchors the chain at the genesis hash for `from = 1`, at
/// the base hash for `from` = base + 1, else at the (verified) record
/// `from - 1`. On a based log, `from` at or below the base is
/// [`ReadError::BelowBase`]: those records are held only in the snapshot.
pub fn export<S: LogStore + ?Sized>(
    store: &S,
    genesis_hash: Hash,
    from: u64,
    to: Option<u64>,
) -> Result<WalIter<'_, S>, ReadError> {
    let from = from.max(1);
    let (base, base_hash) = crate::base::anchor(store, genesis_hash)?;
    if from <= base {
        return Err(ReadError::BelowBase {
            location: store.location(),
            index: from,
            base,
        });
    }
    let to = match to {
        Some(t) => t,
        None => store.last_index()?,
    };
    let anchor = if from == base + 1 {
        base_hash
    } else {
        read_record(store, from - 1)?.hash
    };
    Ok(WalIter::new(store, from, to, anchor))
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MetaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the store at {location} has format {got:?}; this build reads {STORE_FORMAT:?}: use the matching swoosh version or export and re-import the log")]
    Format { location: String, got: String },
    #[error("the store at {location} belongs to genesis {stored}, but this node runs genesis {given}: point --dir at this cluster's data directory or start with the matching genesis")]
    WrongGenesis {
        location: String,
        stored: String,
        given: Hash,
    },
}

/// Check the store's format and genesis metadata (absent metadata is fine:
/// an empty store, or one written before the keys existed).
pub fn check_meta<S: LogStore + ?Sized>(store: &S, genesis_hash: Hash) -> Result<(), MetaError> {
    if let Some(f) = store.get_meta(META_FORMAT)? {
        if f != STORE_FORMAT.as_bytes() {
            return Err(MetaError::Format {
                location: store.location(),
                got: String::from_utf8_lossy(&f).into_owned(),
            });
        }
    }
    if let Some(g) = store.get_meta(META_GENESIS)? {
        if g != genesis_hash.to_string().as_bytes() {
            return Err(MetaError::WrongGenesis {
                location: store.location(),
                stored: String::from_utf8_lossy(&g).into_owned(),
                given: genesis_hash,
            });
        }
    }
    Ok(())
}

/// Add to `b` the store format and genesis records a store gets on first
/// use (nothing when they are already there).
pub(crate) fn put_missing_meta<S: LogStore + ?Sized>(
    store: &S,
    genesis_hash: Hash,
    b: &mut Batch,
) -> Result<(), StoreError> {
    if store.get_meta(META_FORMAT)?.is_none() {
        b.put(
            Space::Meta,
            META_FORMAT.as_bytes().to_vec(),
            STORE_FORMAT.as_bytes().to_vec(),
        );
    }
    if store.get_meta(META_GENESIS)?.is_none() {
        b.put(
            Space::Meta,
            META_GENESIS.as_bytes().to_vec(),
            genesis_hash.to_string().into_bytes(),
        );
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum OpenError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// The single writer of a WAL: group commit with chain checks.
///
/// Owned by one actor. Reads can go to clones of the store (LMDB) meanwhile.
pub struct WalWriter<S: LogStore> {
    store: S,
    genesis_hash: Hash,
    last_index: u64,
    head: Hash,
    limits: BatchLimits,
    /// Set after a failed commit: the tail is re-read before the next append.
    stale: bool,
}

impl<S: LogStore> WalWriter<S> {
    /// Open the writer on `store`: check (and on first use record) the store
    /// format and genesis, then read and verify the last record to learn the
    /// chain head. It does not verify the whole log: run [`crate::recover`]
    /// first, as a node does before it serves.
    pub fn open(
        mut store: S,
        genesis_hash: Hash,
        limits: BatchLimits,
    ) -> Result<WalWriter<S>, OpenError> {
        check_meta(&store, genesis_hash)?;
        let mut b = Batch::new();
        put_missing_meta(&store, genesis_hash, &mut b)?;
        if !b.is_empty() {
            store.commit(b)?;
        }
        let mut w = WalWriter {
            store,
            genesis_hash,
            last_index: 0,
            head: genesis_hash,
            limits,
            stale: true,
        };
        w.reload_tail()?;
        Ok(w)
    }

    /// Re-read the last record (frame checked) and, for the first record of
    /// the log, its link to the anchor: the genesis hash for record 1, the
    /// base hash for record base + 1. An empty WAL starts at the anchor
    /// (index 0 and the genesis hash, or the WAL base).
    fn reload_tail(&mut self) -> Result<(), ReadError> {
        let (base, base_hash) = crate::base::anchor(&self.store, self.genesis_hash)?;
        match self.store.read_last()? {
            None => {
                self.last_index = base;
                self.head = base_hash;
            }
            Some((index, bytes)) => {
                let corrupt = |reason| ReadError::Corrupt {
                    location: self.store.location(),
                    index,
                    reason,
                };
                let v = decode_frame(index, &bytes).map_err(corrupt)?;
                if index == base + 1 && v.record.prev_hash != base_hash {
                    return Err(corrupt(RecordFault::Chain {
                        expected: base_hash,
                        got: v.record.prev_hash,
                    }));
                }
                self.last_index = index;
                self.head = v.hash;
            }
        }
        self.stale = false;
        Ok(())
    }

    /// The log's end: the last durable record, or the WAL base (0 without
    /// one) when the WAL holds no record.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }
    /// Hash of the last durable record (for an empty WAL: the base hash, or
    /// the genesis hash).
    pub fn head_hash(&self) -> Hash {
        self.head
    }
    pub fn genesis_hash(&self) -> Hash {
        self.genesis_hash
    }
    pub fn limits(&self) -> BatchLimits {
        self.limits
    }
    pub fn store(&self) -> &S {
        &self.store
    }
    /// For snapshots and index maintenance between batches.
    pub fn store_mut(&mut self) -> &mut S {
        self.stale = true;
        &mut self.store
    }
    pub fn into_store(self) -> S {
        self.store
    }

    /// Encode and durably append `entries` as one group commit (one store
    /// transaction, one sync). Returns after the batch is durable (under
    /// `Durability::Sync`). On error nothing of the batch is in the log.
    pub fn append_batch(&mut self, entries: &[Entry]) -> Result<BatchReport, AppendError> {
        let t0 = Instant::now();
        let encoded = entries
            .iter()
            .map(Entry::encode)
            .collect::<Result<Vec<_>, _>>()?;
        let encode = t0.elapsed();
        let mut r = self.append_encoded(encoded)?;
        r.encode = encode;
        Ok(r)
    }

    /// Durably append pre-encoded entries in as few group commits as the
    /// batch limits allow, in order, and report them as one: a batch
    /// gathered by record count alone (a leader's queue of large proposals)
    /// may exceed the byte limit, which [`Self::append_encoded`] refuses
    /// whole. If a later commit fails, the earlier ones are durable.
    pub fn append_encoded_split(
        &mut self,
        entries: Vec<EncodedEntry>,
    ) -> Result<BatchReport, AppendError> {
        self.append_encoded_split_each(entries, &mut |_| {})
    }

    /// [`Self::append_encoded_split`], telling `each` what every commit it
    /// made did (a metric of one group commit must see each of them, not
    /// their sum).
    pub fn append_encoded_split_each(
        &mut self,
        entries: Vec<EncodedEntry>,
        each: &mut dyn FnMut(&BatchReport),
    ) -> Result<BatchReport, AppendError> {
        let limits = self.limits;
        let mut parts: Vec<Vec<EncodedEntry>> = vec![];
        let (mut n, mut bytes) = (0usize, 0usize);
        for e in entries {
            if parts.is_empty() || !limits.fits(n + 1, bytes + e.bytes()) {
                parts.push(vec![]);
                (n, bytes) = (0, 0);
            }
            n += 1;
            bytes += e.bytes();
            if let Some(last) = parts.last_mut() {
                last.push(e);
            }
        }
        let mut total: Option<BatchReport> = None;
        for part in parts {
            let r = self.append_encoded(part)?;
            each(&r);
            total = Some(match total {
                None => r,
                Some(t) => BatchReport {
                    first_index: t.first_index,
                    last_index: r.last_index,
                    records: t.records + r.records,
                    bytes: t.bytes + r.bytes,
                    encode: t.encode + r.encode,
                    commit: t.commit + r.commit,
                    synced: t.synced && r.synced,
                },
            });
        }
        match total {
            Some(t) => Ok(t),
            None => {
                let r = self.append_encoded(vec![])?;
                each(&r);
                Ok(r)
            }
        }
    }

    /// Durably append pre-encoded entries as one group commit.
    pub fn append_encoded(
        &mut self,
        entries: Vec<EncodedEntry>,
    ) -> Result<BatchReport, AppendError> {
        if self.stale {
            self.reload_tail().map_err(|e| match e {
                ReadError::Store(s) => AppendError::Store(s),
                other => AppendError::Tail(other),
            })?;
        }
        let records = entries.len();
        let bytes: usize = entries.iter().map(EncodedEntry::bytes).sum();
        if !self.limits.fits(records, bytes) {
            return Err(AppendError::BatchTooLarge {
                records,
                bytes,
                records_max: self.limits.wal_batch_records_max,
                bytes_max: self.limits.wal_batch_bytes_max,
            });
        }
        let first_index = self.last_index + 1;
        if records == 0 {
            return Ok(BatchReport {
                first_index,
                last_index: self.last_index,
                records: 0,
                bytes: 0,
                encode: Duration::ZERO,
                commit: Duration::ZERO,
                synced: true,
            });
        }
        // Write-side chain check: the batch must continue the durable tail.
        let mut last = self.last_index;
        let mut head = self.head;
        for e in &entries {
            if e.index != last + 1 {
                return Err(AppendError::OutOfOrder { got: e.index, last });
            }
            if e.prev_hash != head {
                return Err(AppendError::ChainBroken {
                    index: e.index,
                    expected: head,
                    got: e.prev_hash,
                });
            }
            last = e.index;
            head = e.hash;
        }
        let mut b = Batch::new();
        for e in entries {
            b.append(e.index, e.frame);
            b.put(Space::Idem, e.idem_key, e.idem_frame);
            if let Some((h, f)) = e.decision {
                b.put(Space::Decisions, h.0.to_vec(), f);
            }
        }
        let info: CommitInfo = match self.store.commit(b) {
            Ok(i) => i,
            Err(e) => {
                self.stale = true;
                return Err(e.into());
            }
        };
        self.last_index = last;
        self.head = head;
        Ok(BatchReport {
            first_index,
            last_index: last,
            records,
            bytes,
            encode: Duration::ZERO,
            commit: info.elapsed,
            synced: info.synced,
        })
    }

    /// Force everything committed onto stable storage (for `NoSync` stores).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.store.sync()
    }

    /// [`crate::install_snapshot`] through the single writer, then re-read
    /// the tail: on success the writer stands at `(node.index,
    /// node.head_record)`, ready for record `node.index + 1`. Prefer this to
    /// installing on a clone of the store: the checks and the commit are not
    /// one read-write transaction, so nothing else may append meanwhile.
    pub fn install_snapshot(
        &mut self,
        node: &swoosh_core::state::NodeState,
    ) -> Result<crate::base::InstallReport, crate::base::InstallError> {
        self.stale = true;
        let report = crate::base::install_snapshot(&mut self.store, node, self.genesis_hash)?;
        self.reload_tail().map_err(|e| match e {
            ReadError::Store(s) => crate::base::InstallError::Store(s),
            other => crate::base::InstallError::Tail(other),
        })?;
        Ok(report)
    }
}

/// Accumulates encoded entries for one group commit within [`BatchLimits`],
/// each with a caller's token `T` (e.g. the reply handle of the request that
/// produced it). The actor decides *when* to commit (a time window, or
/// [`GroupCommitter::is_full`]); [`GroupCommitter::commit`] writes everything
/// queued in one transaction and hands back the tokens to answer.
pub struct GroupCommitter<T> {
    limits: BatchLimits,
    pending: Vec<(EncodedEntry, T)>,
    bytes: usize,
}

impl<T> GroupCommitter<T> {
    pub fn new(limits: BatchLimits) -> GroupCommitter<T> {
        GroupCommitter {
            limits,
            pending: Vec::new(),
            bytes: 0,
        }
    }

    /// Queue an entry. If it would push a non-empty batch over a limit it is
    /// handed back: commit first, then push it again. (An empty batch takes
    /// any entry; one larger than the byte limit on its own is refused by
    /// the commit with [`AppendError::BatchTooLarge`].)
    // The "error" is the caller's own entry handed back by move (no copy of
    // its frames), so its size is not a cost worth a Box.
    #[allow(clippy::result_large_err)]
    pub fn push(&mut self, entry: EncodedEntry, token: T) -> Result<(), (EncodedEntry, T)> {
        let bytes = entry.bytes();
        if !self.pending.is_empty() && !self.limits.fits(self.pending.len() + 1, self.bytes + bytes)
        {
            return Err((entry, token));
        }
        self.bytes += bytes;
        self.pending.push((entry, token));
        Ok(())
    }

    /// True when no further entry fits by count (bytes are checked by `push`).
    pub fn is_full(&self) -> bool {
        self.pending.len() >= self.limits.wal_batch_records_max
    }
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
    pub fn len(&self) -> usize {
        self.pending.len()
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Write everything queued as one group commit. Returns the outcome and
    /// the tokens of every entry that was in the batch, in order: reply 202
    /// to them on `Ok` (the batch is durable), an error on `Err` (none of it
    /// is in the log).
    pub fn commit<S: LogStore>(
        &mut self,
        writer: &mut WalWriter<S>,
    ) -> (Result<BatchReport, AppendError>, Vec<T>) {
        self.bytes = 0;
        let (entries, tokens): (Vec<EncodedEntry>, Vec<T>) =
            std::mem::take(&mut self.pending).into_iter().unzip();
        (writer.append_encoded(entries), tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Stream;
    use swoosh_core::guards::Verify;

    #[test]
    fn the_decision_document_assembled_around_its_record_is_the_canonical_encoding() {
        let leader = swoosh_core::sig::key_from_label("wal-doc-test/leader");
        let mut s = Stream::new("wal-doc-test", 3, Verify::Trusted);
        for acc in s.take(12) {
            let unsigned = DecisionDoc::Unsigned(acc.decision.clone());
            let signed = DecisionDoc::Signed(SignedDecision::sign(acc.decision.clone(), &leader));
            for doc in [unsigned, signed] {
                let record = swoosh_core::cbor::to_canonical(doc.record()).unwrap();
                assert_eq!(
                    encode_doc_around(&doc, &record).unwrap(),
                    swoosh_core::cbor::to_canonical(&doc).unwrap()
                );
            }
        }
    }

    #[test]
    fn a_decision_signed_here_is_stored_as_one_signed_elsewhere() {
        let leader = swoosh_core::sig::key_from_label("wal-doc-test/leader");
        let mut s = Stream::new("wal-doc-test-2", 2, Verify::Trusted);
        for acc in s.take(8) {
            let here = Entry::from_accepted_signed(acc.clone(), &leader);
            match &here.decision {
                Some(DecisionDoc::Signed(d)) => {
                    d.verify().expect("signed over the canonical bytes")
                }
                other => panic!("expected a signed decision, got {other:?}"),
            }
            // The same document arriving already signed takes the path that
            // verifies the signature and encodes the record itself.
            let mut elsewhere = Entry::from_accepted(acc.clone());
            elsewhere.decision = here.decision.clone();
            assert_eq!(here.encode().unwrap(), elsewhere.encode().unwrap());
            // A signature over other content is still refused on that path.
            let mut forged = Entry::from_accepted(acc);
            if let Some(DecisionDoc::Signed(mut d)) = here.decision.clone() {
                d.signature = SignedDecision::sign(
                    DecisionRecord {
                        justification: "other".into(),
                        ..d.record.clone()
                    },
                    &leader,
                )
                .signature;
                forged.decision = Some(DecisionDoc::Signed(d));
            }
            assert!(matches!(
                forged.encode(),
                Err(AppendError::DecisionSignature { .. })
            ));
        }
    }
}
