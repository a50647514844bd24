//! Messages of the replication protocol, their signature domains and limits.
//!
//! Two channels carry them (the transport decides how; these types do not
//! care):
//! - **gossip** (`swoosh/<cluster>/wal/v1`), leader → every follower:
//!   [`Gossip::Batch`] (a signed run of committed WAL records) and
//!   [`Gossip::Head`] (a signed "my durable log ends at index N with hash H",
//!   so a follower that missed the last batch still notices the gap);
//! - **request-response**, follower → leader: [`Request`] / [`Response`]
//!   for catch-up ranges and snapshot chunks.
//!
//! Every signed structure is signed as `DOMAIN || canonical_cbor(body)` with
//! `swoosh_core::sig::sign` under one of the domains below, and carries the
//! cluster id and genesis hash so it cannot be replayed into another cluster.
//! Signatures cover plaintext: age ciphertext is not deterministic and is
//! never hashed or signed (the transport encrypts after signing).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use swoosh_core::cbor::{from_canonical, to_canonical, CanonicalError};
use swoosh_core::hash::Hash;
use swoosh_core::record::WalRecord;
use swoosh_core::sig::{self, SigError, Signature, SignerId};

/// Signature domain of a WAL batch header.
pub const WAL_BATCH_DOMAIN: &[u8] = b"SWOOSH-WAL-BATCH-v1\0";
/// Signature domain of the leader's log head announcement.
pub const WAL_HEAD_DOMAIN: &[u8] = b"SWOOSH-WAL-HEAD-v1\0";
/// Signature domain of a snapshot manifest.
pub const SNAPSHOT_MANIFEST_DOMAIN: &[u8] = b"SWOOSH-SNAPSHOT-v1\0";

/// gossipsub's default `max_transmit_size`: one published message, after
/// encryption and chunk framing, must fit in this many bytes.
pub const GOSSIP_PAYLOAD_BYTES_MAX: usize = 65_536;
/// Default cap on records per batch.
pub const BATCH_RECORDS_MAX: usize = 64;
/// Default cap on the summed canonical encodings of a batch's records. It
/// leaves 16 KiB of the gossip payload for the signed header (≈ 75 bytes per
/// record hash), the signature, CBOR framing and the age envelope. A single
/// record larger than this travels alone and the transport chunks it.
pub const BATCH_BYTES_MAX: usize = 48 * 1024;
/// Hard receive-side cap on records in one batch: a batch claiming more is
/// refused before any hashing (a configured leader never sends one).
pub const BATCH_RECORDS_LIMIT: usize = 1024;
/// Default cap on records one range request may ask for and one range
/// response may carry.
pub const RANGE_RECORDS_MAX: u64 = 512;
/// Default cap on the summed record bytes of one range response.
pub const RANGE_BYTES_MAX: usize = 1 << 20;
/// Default snapshot chunk size (under the gossip payload limit, although
/// chunks travel over request-response).
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 32 * 1024;
/// Largest snapshot a follower accepts to receive.
pub const SNAPSHOT_BYTES_MAX: u64 = 256 << 20;

/// Bytes that encode as a CBOR byte string (not an array of integers).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// The signed part of a batch: it commits to the records through their
/// hashes, so the signature is checked before any record is decoded further.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchHeader {
    pub cluster_id: String,
    pub genesis_hash: Hash,
    pub leader: SignerId,
    pub first_index: u64,
    pub last_index: u64,
    /// Hash of record `first_index - 1` (the genesis hash for index 1).
    pub prev_hash: Hash,
    /// `WalRecord::hash()` of each record, in index order.
    pub record_hashes: Vec<Hash>,
}

/// A run of consecutive committed records, signed by the leader.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalBatch {
    pub header: BatchHeader,
    pub signature: Signature,
    pub records: Vec<WalRecord>,
}

/// The leader's durable log position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadBody {
    pub cluster_id: String,
    pub genesis_hash: Hash,
    pub leader: SignerId,
    pub last_index: u64,
    /// Hash of record `last_index` (the genesis hash when the log is empty).
    pub last_hash: Hash,
    /// Oldest index the leader can still serve as records; older ones only
    /// arrive through a snapshot.
    pub log_first_index: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    pub body: HeadBody,
    pub signature: Signature,
}

/// What a snapshot is: the canonical CBOR of a `NodeState` after `index`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotManifest {
    pub cluster_id: String,
    pub genesis_hash: Hash,
    pub leader: SignerId,
    /// Index of the last record the snapshot includes.
    pub index: u64,
    /// Hash of record `index`.
    pub head_record: Hash,
    /// The node's root hash at `index`.
    pub root_hash: Hash,
    /// BLAKE3 of the snapshot bytes (the canonical `NodeState` encoding).
    pub content_hash: Hash,
    pub total_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    pub body: SnapshotManifest,
    pub signature: Signature,
}

/// `bytes` are snapshot bytes `[offset, offset + bytes.len())`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotChunk {
    pub index: u64,
    pub offset: u64,
    pub total_bytes: u64,
    pub bytes: Bytes,
}

/// Leader → followers, published on the WAL topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gossip {
    Batch(WalBatch),
    Head(SignedHead),
}

/// Follower → leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Records `from..=to` (the leader may answer with fewer).
    Range { from: u64, to: u64 },
    /// Snapshot `index` bytes from `offset` (resumable: a lost chunk is asked
    /// for again by offset).
    Snapshot { index: u64, offset: u64 },
    /// The follower's position, sent every few hundred ms so the leader can
    /// show lag per follower. The sender is the authenticated peer (noise),
    /// whose key must be a follower in genesis; the body carries no signature.
    Status(StatusReport),
}

/// A follower's replication position, as it reports it to the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    pub applied_index: u64,
    /// Hash of record `applied_index`.
    pub applied_hash: Hash,
    /// The follower's root hash at `applied_index`.
    pub root_hash: Hash,
    /// Highest index the follower has heard the leader announce.
    pub leader_index: u64,
    /// The follower stopped applying (divergence or a failed write).
    pub halted: bool,
}

/// Leader → follower, one per request.
// Responses are built once and encoded straight to the wire; boxing the
// snapshot offer would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Consecutive batches starting at the requested `from` (empty when the
    /// leader has nothing past `from - 1` yet).
    Range {
        batches: Vec<WalBatch>,
    },
    /// The range starts before the oldest record the leader keeps: fetch
    /// this snapshot, then the tail after `manifest.body.index`.
    SnapshotOffer(SignedManifest),
    SnapshotChunk(SnapshotChunk),
    /// Answer to [`Request::Status`]: the leader's published index.
    StatusAck {
        published_index: u64,
    },
    /// Answer to [`Request::Status`] when the reported position is not on
    /// the leader's log: the follower applied past the leader's durable
    /// tail, or a record hash other than the leader's at that index. The
    /// follower halts on it.
    Diverged {
        index: u64,
        reason: String,
    },
    /// The request cannot be served (the reason says why).
    Refused {
        reason: String,
    },
}

impl BatchHeader {
    pub fn verify(&self, sig: &Signature) -> Result<(), SigError> {
        sig::verify(WAL_BATCH_DOMAIN, self, &self.leader, sig)
    }
}

impl SignedHead {
    pub fn verify(&self) -> Result<(), SigError> {
        sig::verify(
            WAL_HEAD_DOMAIN,
            &self.body,
            &self.body.leader,
            &self.signature,
        )
    }
}

impl SignedManifest {
    pub fn verify(&self) -> Result<(), SigError> {
        sig::verify(
            SNAPSHOT_MANIFEST_DOMAIN,
            &self.body,
            &self.body.leader,
            &self.signature,
        )
    }
}

/// Canonical CBOR of a gossip message (what the transport encrypts).
pub fn encode_gossip(m: &Gossip) -> Result<Vec<u8>, CanonicalError> {
    to_canonical(m)
}

/// Decode a gossip message strictly (non-canonical bytes are refused).
pub fn decode_gossip(bytes: &[u8]) -> Result<Gossip, CanonicalError> {
    from_canonical(bytes)
}

/// The canonical encodings of a batch's records, as [`decode_gossip_records`]
/// proved them: `encodings[i]` is exactly `to_canonical(&records[i])`.
pub type RecordEncodings = Vec<Vec<u8>>;

/// [`decode_gossip`], accepting and refusing exactly the same bytes, that
/// also returns each batch record's canonical encoding. A follower needs
/// both: the whole message proven canonical and every record's encoding (to
/// hash it against the signed header and to store it). `decode_gossip`
/// re-encodes the whole message to compare it with the input, and the
/// follower then encoded every record a second time; here the records are
/// encoded once and the message is checked piece by piece against them
/// (see `batch_by_parts`). Anything else, including every refusal, takes
/// the `decode_gossip` path, so errors read the same.
pub fn decode_gossip_records(
    bytes: &[u8],
) -> Result<(Gossip, Option<RecordEncodings>), CanonicalError> {
    if let Some((g, encodings)) = batch_by_parts(bytes) {
        return Ok((g, Some(encodings)));
    }
    decode_gossip(bytes).map(|g| (g, None))
}

/// A batch's canonical encoding is `P ‖ "records" ‖ array head(n) ‖
/// enc(record 1) … enc(record n) ‖ S`, where `P ‖ "records" ‖ [] ‖ S` is
/// the canonical encoding of the same message with no records: map keys sort
/// the same whatever the values (`header` < `records` < `signature`) and a
/// canonical encoding does not depend on where an item is nested. The shape
/// is checked on the encoder's own output, not assumed; if it ever differs,
/// `None` sends the caller down the whole-message path.
fn batch_by_parts(bytes: &[u8]) -> Option<(Gossip, RecordEncodings)> {
    let (g, used) = swoosh_core::cbor_de::decode::<Gossip>(bytes).ok()?;
    let Gossip::Batch(b) = &g else { return None };
    if used != bytes.len() {
        return None;
    }
    let (prefix, suffix) = batch_parts(&b.header, &b.signature)?;
    let mut at = 0usize;
    let mut take = |want: &[u8]| -> bool {
        let ok = bytes.get(at..at + want.len()) == Some(want);
        at += want.len();
        ok
    };
    if !(take(&prefix) && take(&records_head(b.records.len()))) {
        return None;
    }
    let mut encodings = Vec::with_capacity(b.records.len());
    for r in &b.records {
        let e = to_canonical(r).ok()?;
        if !take(&e) {
            return None;
        }
        encodings.push(e);
    }
    (take(&suffix) && at == bytes.len()).then_some((g, encodings))
}

/// `(P ‖ "records", S)` of a batch with this header and signature (see
/// [`batch_by_parts`]), split out of the encoder's own encoding of the
/// message with no records; `None` if that encoding is not of that shape.
fn batch_parts(header: &BatchHeader, signature: &Signature) -> Option<(Vec<u8>, Vec<u8>)> {
    const RECORDS_KEY: &[u8] = b"\x67records";
    const EMPTY_ARRAY: u8 = 0x80;
    let shadow = to_canonical(&Gossip::Batch(WalBatch {
        header: header.clone(),
        signature: *signature,
        records: vec![],
    }))
    .ok()?;
    let mut suffix = b"\x69signature".to_vec();
    suffix.extend(to_canonical(signature).ok()?);
    let cut = shadow
        .len()
        .checked_sub(suffix.len() + RECORDS_KEY.len() + 1)?;
    let (prefix, rest) = shadow.split_at(cut);
    if rest[..RECORDS_KEY.len()] != *RECORDS_KEY
        || rest[RECORDS_KEY.len()] != EMPTY_ARRAY
        || rest[RECORDS_KEY.len() + 1..] != suffix[..]
    {
        return None;
    }
    let mut prefix = prefix.to_vec();
    prefix.extend_from_slice(RECORDS_KEY);
    Some((prefix, suffix))
}

/// The CBOR head of an array of `n` items.
fn records_head(n: usize) -> Vec<u8> {
    const ARRAY: u8 = 4;
    let mut head = Vec::with_capacity(9);
    swoosh_core::cbor::head(&mut head, ARRAY, n as u64);
    head
}

/// [`encode_gossip`] of `Gossip::Batch(b)` for a leader that holds its
/// records' canonical encodings already (the payloads of its own WAL
/// frames): they are spliced in between the batch's prefix and suffix (see
/// [`batch_by_parts`]) instead of encoded again. Contract: `encodings[i]`
/// is `to_canonical(&b.records[i])`; a test checks the result against
/// `encode_gossip` byte for byte. With a different number of encodings, or
/// an encoder output of another shape, it encodes the whole message.
pub fn encode_batch_with(b: &WalBatch, encodings: &[&[u8]]) -> Result<Vec<u8>, CanonicalError> {
    if encodings.len() == b.records.len() {
        if let Some((prefix, suffix)) = batch_parts(&b.header, &b.signature) {
            let head = records_head(encodings.len());
            let len = prefix.len()
                + head.len()
                + encodings.iter().map(|e| e.len()).sum::<usize>()
                + suffix.len();
            let mut out = Vec::with_capacity(len);
            out.extend_from_slice(&prefix);
            out.extend_from_slice(&head);
            for e in encodings {
                out.extend_from_slice(e);
            }
            out.extend_from_slice(&suffix);
            return Ok(out);
        }
    }
    encode_gossip(&Gossip::Batch(b.clone()))
}

pub fn encode_request(m: &Request) -> Result<Vec<u8>, CanonicalError> {
    to_canonical(m)
}

pub fn decode_request(bytes: &[u8]) -> Result<Request, CanonicalError> {
    from_canonical(bytes)
}

pub fn encode_response(m: &Response) -> Result<Vec<u8>, CanonicalError> {
    to_canonical(m)
}

pub fn decode_response(bytes: &[u8]) -> Result<Response, CanonicalError> {
    from_canonical(bytes)
}
