//! WAL gossip framing: the canonical CBOR of a `Gossip` message is
//! age-encrypted to every follower recipient of genesis (one age file, one
//! X25519 stanza per follower), and the ciphertext is cut into chunks that
//! each fit one gossipsub message.
//!
//! Chunk layout, format 2 (big-endian; docs/wire-format.md §11.2):
//! - the only chunk of a blob (`total = 1`):
//!   `"SWC2" || blob_id[32] || index u16 || total u16 || data`
//! - a chunk of a blob of two or more chunks:
//!   `"SWC2" || blob_id[32] || index u16 || total u16 || last_index u64 ||
//!   signature[64] || data`
//!
//! where `blob_id = BLAKE3(ciphertext)`, `0 <= index < total`,
//! `last_index` is the last WAL index the message carries, and
//! `signature = Ed25519(leader key, CHUNK_SIGNATURE_DOMAIN || genesis_hash
//! || blob_id || index || total || last_index || BLAKE3(data))`, verified
//! against `genesis.leader` (the key that signs the batch headers inside).
//! The receiver reassembles the chunks of one blob id in index order,
//! checks the BLAKE3 of the result, then decrypts. The leader's signatures
//! on what the blob carries live inside the plaintext (age ciphertext is
//! not deterministic and its meaning is never signed).
//!
//! Why chunks are signed (format 1, `"SWC1"`, had no signature): they are
//! anonymous gossipsub messages, so any peer of the mesh may send one, and
//! the chunks of a multi-chunk blob are held until the blob is whole. A
//! peer could race a bogus chunk ahead of the leader's for the same blob
//! id and index (the first was kept, so the blob failed its hash and was
//! dropped), or send [`PARTIAL_BLOBS_MAX`] partial blobs with made-up ids
//! to evict the leader's. Nothing was lost (the follower asks for the
//! records by range), but a hostile peer could keep every large batch from
//! arriving by gossip. Now a chunk is kept only once its signature by the
//! genesis leader verifies: a bogus chunk is refused before anything is
//! held, and a genuine one replayed is a duplicate. `last_index` stops the
//! replay of genuine chunks of old blobs: a receiver drops a chunk of a
//! blob whose records it already holds ([`Reassembler::held_through`]), so
//! a peer that recorded the leader's old large batches cannot use them to
//! evict a new one either.
//!
//! Why a blob of one chunk is not signed: it is never held (it is hashed
//! and handed on at once), so it can neither poison nor evict anything,
//! and what it carries is checked inside (age, then the leader's signature
//! on the batch or head). Nearly every gossip message is one chunk (a
//! batch holds at most `BATCH_BYTES_MAX` = 48 KiB of records, and its
//! ciphertext fits one chunk unless genesis lists more than about a dozen
//! followers, 98 bytes of age stanza each), and signing each would put back
//! the per-message ed25519 signature and verification that anonymous
//! gossipsub envelopes removed (docs/performance.md, session 6).
//!
//! Cost: per chunk of a multi-chunk blob, the leader hashes the data
//! (BLAKE3 of 56,000 bytes, ~12 µs) and signs 128 bytes; a receiver hashes
//! the data and verifies (`verify_strict`, ~55-65 µs, docs/performance.md)
//! before it keeps the chunk. Measured in a test build (crypto optimized,
//! this crate not) on a 2-core development machine: `chunk_signed` of a
//! 2 MiB ciphertext (38 chunks) takes ~3 ms, and pushing its 38 chunks
//! ~6 ms of the receiver's network task, both counting the copies and
//! hashes format 1 did too. Blobs that large are rare (a record near the
//! WAL's 1 MiB limit). A bogus chunk costs a receiver one verification
//! too, even a short one (a claimed last chunk may carry 1 data byte);
//! a chunk for a slot already filled, or of a blob whose records the
//! receiver holds, is dropped unverified.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use swoosh_core::hash::Hash;
use swoosh_core::sig::SignerId;

/// The age identity type followers hold.
pub type AgeIdentity = age::x25519::Identity;

/// The magic of chunk format 2 (the chunks of a multi-chunk blob signed by
/// the leader).
pub const CHUNK_MAGIC: &[u8; 4] = b"SWC2";
/// The magic of chunk format 1 (unsigned chunks): refused, with a message
/// that says the leader and this node run different releases.
pub const CHUNK_MAGIC_V1: &[u8; 4] = b"SWC1";
/// Magic, blob id, index and total: the header of every chunk.
pub const CHUNK_HEADER_BYTES: usize = 4 + 32 + 2 + 2;
/// What a chunk of a blob of two or more chunks carries after the header:
/// `last_index` (u64) and the leader's ed25519 signature.
pub const CHUNK_AUTH_BYTES: usize = 8 + 64;
/// The domain of a chunk's signature (wire-format §2): `v2` is the chunk
/// format it belongs to. It ends in NUL, as every SWOOSH domain does, so
/// no domain is a prefix of another.
pub const CHUNK_SIGNATURE_DOMAIN: &[u8] = b"SWOOSH-WAL-CHUNK-v2\0";
/// Bytes a chunk's signature covers: the domain, the genesis hash, blob id,
/// index, total, last index and the BLAKE3 of the chunk's data.
pub const CHUNK_SIGNED_BYTES: usize = CHUNK_SIGNATURE_DOMAIN.len() + 32 + 32 + 2 + 2 + 8 + 32;
/// Data bytes per chunk. The limit that binds is not gossipsub's
/// 65,536-byte `max_transmit_size` on one message alone: libp2p-gossipsub
/// 0.50.1 compares that limit with everything buffered on an inbound
/// stream when it decodes a frame (`validate_rpc_limits` on the read
/// buffer), which is the frame plus up to 8,191 bytes of the next one
/// (asynchronous-codec reads 8 KiB at a time). Over it, the stream is
/// dropped with what was queued on it. So a frame of at most
/// [`CHUNK_FRAME_BYTES_MAX`] (56,112) bytes, plus gossipsub's framing of
/// one published message (length prefix, publish entry, `data` and `topic`
/// fields: at most 91 bytes with the longest topic; messages are
/// anonymous since `/swoosh/id/2`, with no key, signature, sequence number
/// or source), plus 8,191 bytes is 64,394 bytes, under 65,536. Format 1
/// carried 60,000 data bytes: a full chunk with the start of the next
/// behind it exceeded that check, the receiver dropped the stream and the
/// chunks on it, and the follower fetched the records by range instead
/// (net/tests/gossip_chunks.rs showed it).
pub const CHUNK_DATA_MAX: usize = 56_000;
/// The largest chunk frame: a full chunk of a multi-chunk blob.
pub const CHUNK_FRAME_BYTES_MAX: usize = CHUNK_HEADER_BYTES + CHUNK_AUTH_BYTES + CHUNK_DATA_MAX;
/// Largest ciphertext one gossip blob may carry: a record at the WAL's
/// 1 MiB limit travels alone in its batch, and the signed header and one
/// age stanza per follower add a few KiB. Anything larger is no message a
/// leader sends ([`chunk_signed`] refuses it), and a receiver refuses a
/// blob whose chunks would add up to more (its last chunk then is refused),
/// so it never holds more than this for one blob.
pub const BLOB_BYTES_MAX: usize = 2 << 20;
/// Most chunks one blob may have (38 at 56,000 data bytes each; the 38th
/// carries at most the 25,152 bytes left to [`BLOB_BYTES_MAX`]).
pub const CHUNKS_PER_BLOB_MAX: usize = BLOB_BYTES_MAX.div_ceil(CHUNK_DATA_MAX);
/// Blobs being reassembled at once; the oldest is dropped beyond this. With
/// [`BLOB_BYTES_MAX`] it bounds what partial blobs hold to 32 MiB. Only
/// chunks the genesis leader signed are held, for blobs the receiver does
/// not hold the records of yet, so a peer of the mesh can neither fill
/// these slots nor evict the leader's blobs from them.
pub const PARTIAL_BLOBS_MAX: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("no follower recipients in genesis: run `swoosh p2p enroll` to list followers")]
    NoRecipients,
    #[error("age recipient {0:?} does not parse")]
    BadRecipient(String),
    #[error("age encryption failed: {0}")]
    Encrypt(String),
    #[error("chunk: {0}")]
    Chunk(String),
    /// A chunk of another chunk format (another SWOOSH release).
    #[error("chunk: {0}")]
    ChunkVersion(String),
    /// A chunk whose signature is not the genesis leader's over its header
    /// and data (a bogus or tampered chunk), or that nothing can check.
    #[error("chunk: {0}")]
    ChunkSignature(String),
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
}

impl EnvelopeError {
    /// What kind of refusal this is, for rate-limited warnings (one line
    /// per kind per second, [`super::bounds::WarnLimiter`]).
    pub fn kind(&self) -> &'static str {
        match self {
            EnvelopeError::NoRecipients | EnvelopeError::BadRecipient(_) => "recipients",
            EnvelopeError::Encrypt(_) => "encrypt",
            EnvelopeError::Chunk(_) => "chunk_malformed",
            EnvelopeError::ChunkVersion(_) => "chunk_version",
            EnvelopeError::ChunkSignature(_) => "chunk_signature",
            EnvelopeError::Decrypt(_) => "decrypt",
        }
    }
}

pub fn parse_recipients(list: &[String]) -> Result<Vec<age::x25519::Recipient>, EnvelopeError> {
    list.iter()
        .map(|s| {
            s.parse::<age::x25519::Recipient>()
                .map_err(|_| EnvelopeError::BadRecipient(s.clone()))
        })
        .collect()
}

pub fn encrypt(
    plain: &[u8],
    recipients: &[age::x25519::Recipient],
) -> Result<Vec<u8>, EnvelopeError> {
    if recipients.is_empty() {
        return Err(EnvelopeError::NoRecipients);
    }
    let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| EnvelopeError::Encrypt(e.to_string()))?;
    let mut out = Vec::with_capacity(plain.len() + 256 + 128 * recipients.len());
    let mut w = enc
        .wrap_output(&mut out)
        .map_err(|e| EnvelopeError::Encrypt(e.to_string()))?;
    w.write_all(plain)
        .map_err(|e| EnvelopeError::Encrypt(e.to_string()))?;
    w.finish()
        .map_err(|e| EnvelopeError::Encrypt(e.to_string()))?;
    Ok(out)
}

pub fn decrypt(ct: &[u8], identity: &age::x25519::Identity) -> Result<Vec<u8>, EnvelopeError> {
    use std::io::Read;
    let fail = |e: &dyn std::fmt::Display| EnvelopeError::Decrypt(e.to_string());
    let d = age::Decryptor::new_buffered(ct).map_err(|e| fail(&e))?;
    let mut reader = d
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .map_err(|e| fail(&e))?;
    // The plaintext is shorter than the ciphertext, so one allocation holds
    // it (`age::decrypt` grew its buffer by doubling: a copy per doubling of
    // every batch on the follower's worker).
    let mut plain = Vec::with_capacity(ct.len());
    reader.read_to_end(&mut plain).map_err(|e| fail(&e))?;
    Ok(plain)
}

/// A new age X25519 identity: (secret key text, recipient text).
pub fn generate_identity() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    (
        id.to_string().expose_secret().to_string(),
        id.to_public().to_string(),
    )
}

/// Parse an age identity file (comment lines start with `#`).
pub fn parse_identity(text: &str) -> Result<age::x25519::Identity, EnvelopeError> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| EnvelopeError::Decrypt("the age identity file holds no key".into()))?;
    line.parse::<age::x25519::Identity>()
        .map_err(|e| EnvelopeError::Decrypt(format!("not an age X25519 identity: {e}")))
}

/// What signs the chunks of the leader's multi-chunk blobs: its node key
/// (`genesis.leader`) and the genesis hash the signatures are bound to.
pub struct ChunkSigner {
    key: ed25519_dalek::SigningKey,
    genesis_hash: Hash,
}

impl ChunkSigner {
    pub fn new(key: &ed25519_dalek::SigningKey, genesis_hash: Hash) -> ChunkSigner {
        ChunkSigner {
            key: key.clone(),
            genesis_hash,
        }
    }
}

/// What a receiver checks the chunks of a multi-chunk blob against: the
/// genesis leader's key and the genesis hash.
struct ChunkVerifier {
    key: ed25519_dalek::VerifyingKey,
    genesis_hash: Hash,
}

/// The bytes a chunk's signature covers (wire-format §11.2), fixed-size:
/// `CHUNK_SIGNATURE_DOMAIN || genesis_hash || blob_id || index u16 ||
/// total u16 || last_index u64 || BLAKE3(data)`. The data enters through
/// its BLAKE3, so ed25519's SHA-512 passes run over 128 bytes, not 60,000.
fn signed_bytes(
    genesis_hash: &Hash,
    id: &[u8; 32],
    index: u16,
    total: u16,
    last_index: u64,
    data: &[u8],
) -> [u8; CHUNK_SIGNED_BYTES] {
    let mut m = [0u8; CHUNK_SIGNED_BYTES];
    let parts: [&[u8]; 7] = [
        CHUNK_SIGNATURE_DOMAIN,
        &genesis_hash.0,
        id,
        &index.to_be_bytes(),
        &total.to_be_bytes(),
        &last_index.to_be_bytes(),
        &Hash::of_bytes(data).0,
    ];
    let mut at = 0;
    for p in parts {
        m[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    assert_eq!(at, CHUNK_SIGNED_BYTES, "the signed bytes are filled");
    m
}

/// One chunk frame; `auth` (signer and last index) is given exactly when
/// `total > 1`.
fn frame(
    id: &[u8; 32],
    index: u16,
    total: u16,
    auth: Option<(&ChunkSigner, u64)>,
    data: &[u8],
) -> Vec<u8> {
    assert_eq!(
        auth.is_some(),
        total > 1,
        "only multi-chunk blobs are signed"
    );
    let mut f = Vec::with_capacity(CHUNK_HEADER_BYTES + CHUNK_AUTH_BYTES + data.len());
    f.extend_from_slice(CHUNK_MAGIC);
    f.extend_from_slice(id);
    f.extend_from_slice(&index.to_be_bytes());
    f.extend_from_slice(&total.to_be_bytes());
    if let Some((signer, last_index)) = auth {
        let m = signed_bytes(&signer.genesis_hash, id, index, total, last_index, data);
        let sig = swoosh_core::sig::sign_bytes(&m, &signer.key);
        f.extend_from_slice(&last_index.to_be_bytes());
        f.extend_from_slice(&sig.0);
    }
    f.extend_from_slice(data);
    f
}

fn cut(ct: &[u8], auth: Option<(&ChunkSigner, u64)>) -> Result<Vec<Vec<u8>>, EnvelopeError> {
    if ct.len() > BLOB_BYTES_MAX {
        return Err(EnvelopeError::Chunk(format!(
            "a {}-byte message is larger than the {BLOB_BYTES_MAX} bytes one gossip blob may carry",
            ct.len()
        )));
    }
    let id = Hash::of_bytes(ct).0;
    let parts: Vec<&[u8]> = if ct.is_empty() {
        vec![&[][..]]
    } else {
        ct.chunks(CHUNK_DATA_MAX).collect()
    };
    let total = parts.len() as u16;
    if total == 1 {
        return Ok(vec![frame(&id, 0, 1, None, parts[0])]);
    }
    let Some(auth) = auth else {
        return Err(EnvelopeError::Chunk(format!(
            "a {}-byte message takes {total} chunks, and the chunks of a multi-chunk blob must be signed by the leader (`chunk_signed`)",
            ct.len()
        )));
    };
    Ok(parts
        .iter()
        .enumerate()
        .map(|(i, d)| frame(&id, i as u16, total, Some(auth), d))
        .collect())
}

/// Cut a ciphertext that fits one chunk (refuses a larger one: the chunks
/// of a multi-chunk blob are signed, [`chunk_signed`]).
pub fn chunk(ct: &[u8]) -> Result<Vec<Vec<u8>>, EnvelopeError> {
    cut(ct, None)
}

/// Cut a ciphertext into gossip chunks, signing each with `signer` when
/// there are two or more. `last_index` is the last WAL index the message
/// carries (a receiver that holds it drops the chunks as stale).
pub fn chunk_signed(
    ct: &[u8],
    signer: &ChunkSigner,
    last_index: u64,
) -> Result<Vec<Vec<u8>>, EnvelopeError> {
    cut(ct, Some((signer, last_index)))
}

/// Encrypt to `recipients` and chunk, unsigned: only for a message whose
/// ciphertext fits one chunk (a test's or a forger's; the leader uses
/// [`seal_signed`]).
pub fn seal(
    plain: &[u8],
    recipients: &[age::x25519::Recipient],
) -> Result<Vec<Vec<u8>>, EnvelopeError> {
    chunk(&encrypt(plain, recipients)?)
}

/// Encrypt to `recipients` and chunk, signing the chunks of a multi-chunk
/// blob with `signer` ([`chunk_signed`]).
pub fn seal_signed(
    plain: &[u8],
    recipients: &[age::x25519::Recipient],
    signer: &ChunkSigner,
    last_index: u64,
) -> Result<Vec<Vec<u8>>, EnvelopeError> {
    chunk_signed(&encrypt(plain, recipients)?, signer, last_index)
}

struct Partial {
    parts: Vec<Option<Vec<u8>>>,
    have: usize,
    /// The signed last index of the blob's message.
    last_index: u64,
}

/// A chunk frame, parsed.
struct Chunk<'a> {
    id: [u8; 32],
    index: u16,
    total: u16,
    /// `(last_index, signature)`, exactly when `total > 1`.
    auth: Option<(u64, [u8; 64])>,
    data: &'a [u8],
}

fn parse(frame: &[u8]) -> Result<Chunk<'_>, EnvelopeError> {
    let magic = frame.get(..4).unwrap_or(frame);
    if magic != CHUNK_MAGIC {
        return Err(if magic == CHUNK_MAGIC_V1 {
            EnvelopeError::ChunkVersion(
                "an SWC1 chunk (gossip chunk format 1, unsigned), but this node takes SWC2 chunks only: the leader runs an older SWOOSH release than this follower. Run the same release on the leader and its followers; until then this follower catches up by range requests".into(),
            )
        } else if magic.len() == 4 && magic.starts_with(b"SWC") {
            EnvelopeError::ChunkVersion(format!(
                "a chunk of format \"{}\", but this node takes SWC2 chunks only: the leader and this follower run different SWOOSH releases. Run the same release on both; until then this follower catches up by range requests",
                magic.escape_ascii()
            ))
        } else {
            EnvelopeError::Chunk("not a SWOOSH gossip chunk (no SWC2 magic)".into())
        });
    }
    if frame.len() < CHUNK_HEADER_BYTES {
        return Err(EnvelopeError::Chunk(format!(
            "a {}-byte chunk is shorter than its {CHUNK_HEADER_BYTES}-byte header",
            frame.len()
        )));
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&frame[4..36]);
    let index = u16::from_be_bytes([frame[36], frame[37]]);
    let total = u16::from_be_bytes([frame[38], frame[39]]);
    if total == 0 || total as usize > CHUNKS_PER_BLOB_MAX || index >= total {
        return Err(EnvelopeError::Chunk(format!(
            "chunk {index} of {total} is out of range (a blob has at most {CHUNKS_PER_BLOB_MAX} chunks)"
        )));
    }
    if total == 1 {
        return Ok(Chunk {
            id,
            index,
            total,
            auth: None,
            data: &frame[CHUNK_HEADER_BYTES..],
        });
    }
    let data_at = CHUNK_HEADER_BYTES + CHUNK_AUTH_BYTES;
    if frame.len() < data_at {
        return Err(EnvelopeError::Chunk(format!(
            "chunk {index} of {total} has {} bytes, fewer than the {data_at} of the header, last index and signature of a chunk of a multi-chunk blob",
            frame.len()
        )));
    }
    let mut last = [0u8; 8];
    last.copy_from_slice(&frame[40..48]);
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&frame[48..112]);
    Ok(Chunk {
        id,
        index,
        total,
        auth: Some((u64::from_be_bytes(last), sig)),
        data: &frame[data_at..],
    })
}

/// Reassembles chunks into ciphertexts (bounded). Keeps a chunk of a
/// multi-chunk blob only once its signature by the genesis leader verifies.
pub struct Reassembler {
    /// `None`: no chunk of a multi-chunk blob can be checked, so none is
    /// taken ([`Reassembler::default`]).
    leader: Option<ChunkVerifier>,
    /// The receiver holds every record up to this index: chunks of blobs
    /// that end at or before it are stale.
    held_through: u64,
    partial: HashMap<[u8; 32], Partial>,
    order: VecDeque<[u8; 32]>,
}

/// A reassembler that knows no leader: it takes blobs of one chunk (which
/// carry no signature, are never held, and are checked inside) and refuses
/// every chunk of a larger one, which it cannot check. An observer's; a
/// follower uses [`Reassembler::new`].
impl Default for Reassembler {
    fn default() -> Reassembler {
        Reassembler {
            leader: None,
            held_through: 0,
            partial: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl Reassembler {
    /// A reassembler that takes the multi-chunk blobs `leader` (the genesis
    /// leader) signed for the genesis of `genesis_hash`.
    pub fn new(leader: &SignerId, genesis_hash: Hash) -> Result<Reassembler, EnvelopeError> {
        let key = leader.verifying_key().map_err(|e| {
            EnvelopeError::ChunkSignature(format!("the leader's key cannot check chunks: {e}"))
        })?;
        Ok(Reassembler {
            leader: Some(ChunkVerifier { key, genesis_hash }),
            ..Reassembler::default()
        })
    }

    /// The receiver holds every record up to `index` (its WAL is durable
    /// through it): from now on a chunk of a blob whose message ends at or
    /// before it is dropped unverified, and the partial blobs that do are
    /// dropped now. Never moves back.
    pub fn held_through(&mut self, index: u64) {
        if index <= self.held_through {
            return;
        }
        self.held_through = index;
        let partial = &mut self.partial;
        self.order.retain(|id| {
            let stale = partial.get(id).is_some_and(|p| p.last_index <= index);
            if stale {
                partial.remove(id);
            }
            !stale
        });
    }

    /// Feed one chunk; returns the whole ciphertext when its last chunk
    /// arrives. A stale chunk, or one for a slot already filled, is
    /// dropped (`Ok(None)`). Checks run cheapest first, and nothing is
    /// kept (or evicted) before the signature verifies.
    pub fn push(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, EnvelopeError> {
        let Chunk {
            id,
            index,
            total,
            auth,
            data,
        } = parse(frame)?;
        let (index, total) = (index as usize, total as usize);
        // `chunk` fills every chunk but the last; holding a peer to that
        // bounds a partial blob's bytes by its chunk count.
        let last = index + 1 == total;
        if data.len() > CHUNK_DATA_MAX || (!last && data.len() != CHUNK_DATA_MAX) {
            return Err(EnvelopeError::Chunk(format!(
                "chunk {index} of {total} carries {} data bytes; every chunk but the last carries exactly {CHUNK_DATA_MAX}, the last at most that",
                data.len()
            )));
        }
        // Every other chunk is full, so the last one fixes the blob's size.
        // A blob larger than `chunk` ever makes (it refuses a ciphertext
        // over the limit) is refused here, before anything is kept.
        let blob_bytes = (total - 1) * CHUNK_DATA_MAX + data.len();
        if last && blob_bytes > BLOB_BYTES_MAX {
            return Err(EnvelopeError::Chunk(format!(
                "chunk {index} of {total} makes a {blob_bytes}-byte blob; a blob carries at most {BLOB_BYTES_MAX} bytes"
            )));
        }
        let Some((last_index, sig)) = auth else {
            // One chunk: never held; its hash checks it against the blob
            // id, and the leader's signature inside checks what it says.
            return self.finish(id, vec![data.to_vec()]).map(Some);
        };
        let Some(leader) = &self.leader else {
            return Err(EnvelopeError::ChunkSignature(format!(
                "chunk {index} of {total}: a chunk of a multi-chunk blob is taken only with the genesis leader's key to check its signature, and this receiver has none"
            )));
        };
        if last_index <= self.held_through {
            // Its records are held already (a late copy, or a peer
            // replaying an old blob): nothing to check or keep.
            return Ok(None);
        }
        if let Some(p) = self.partial.get(&id) {
            if p.parts.len() != total || p.last_index != last_index {
                return Err(EnvelopeError::Chunk(format!(
                    "chunk {index} of {total} (last index {last_index}) disagrees with the chunks of its blob held already ({} chunks, last index {})",
                    p.parts.len(),
                    p.last_index
                )));
            }
            if p.parts[index].is_some() {
                // A repeat: whether genuine or not, nothing it carries is
                // kept, so it costs no verification.
                return Ok(None);
            }
        }
        let m = signed_bytes(
            &leader.genesis_hash,
            &id,
            index as u16,
            total as u16,
            last_index,
            data,
        );
        let sig = ed25519_dalek::Signature::from_bytes(&sig);
        if leader.key.verify_strict(&m, &sig).is_err() {
            return Err(EnvelopeError::ChunkSignature(format!(
                "chunk {index} of {total} of blob {}: its signature is not the genesis leader's over this genesis, its header and its data (a bogus or altered chunk from a peer of the mesh); dropped, nothing of it kept",
                Hash(id)
            )));
        }
        if !self.partial.contains_key(&id) {
            if self.order.len() >= PARTIAL_BLOBS_MAX {
                if let Some(old) = self.order.pop_front() {
                    self.partial.remove(&old);
                }
            }
            self.order.push_back(id);
            self.partial.insert(
                id,
                Partial {
                    parts: vec![None; total],
                    have: 0,
                    last_index,
                },
            );
        }
        let p = self.partial.get_mut(&id).expect("inserted above");
        p.parts[index] = Some(data.to_vec());
        p.have += 1;
        if p.have < total {
            return Ok(None);
        }
        let p = self.partial.remove(&id).expect("present");
        self.order.retain(|x| *x != id);
        let parts = p.parts.into_iter().map(|x| x.expect("complete")).collect();
        self.finish(id, parts).map(Some)
    }

    fn finish(&self, id: [u8; 32], parts: Vec<Vec<u8>>) -> Result<Vec<u8>, EnvelopeError> {
        let ct = parts.concat();
        if Hash::of_bytes(&ct).0 != id {
            return Err(EnvelopeError::Chunk(
                "reassembled bytes do not hash to the blob id".into(),
            ));
        }
        Ok(ct)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use swoosh_core::sig::key_from_label;

    /// The genesis hash every test blob is bound to.
    const GENESIS: Hash = Hash([9; 32]);

    fn leader_key() -> SigningKey {
        key_from_label("envelope/leader")
    }

    fn signer() -> ChunkSigner {
        ChunkSigner::new(&leader_key(), GENESIS)
    }

    /// A follower's reassembler: it takes what the leader signed.
    fn follower() -> Reassembler {
        Reassembler::new(&SignerId::from_signing_key(&leader_key()), GENESIS).unwrap()
    }

    /// `len` bytes standing for a ciphertext, different for each `seed`.
    fn ct(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(31))
            .collect()
    }

    /// A frame as a hostile peer makes it: any header and data, signed
    /// with its own key (what it may claim is everything but the leader's
    /// signature).
    fn forged(id: [u8; 32], index: u16, total: u16, last_index: u64, data: &[u8]) -> Vec<u8> {
        let hostile = ChunkSigner::new(&key_from_label("envelope/hostile"), GENESIS);
        frame(&id, index, total, Some((&hostile, last_index)), data)
    }

    /// A frame of the genesis leader's, of `len` bytes of data.
    fn genuine(id: [u8; 32], index: u16, total: u16, last_index: u64, len: usize) -> Vec<u8> {
        frame(
            &id,
            index,
            total,
            Some((&signer(), last_index)),
            &vec![0u8; len],
        )
    }

    fn held(r: &Reassembler) -> usize {
        r.partial
            .values()
            .flat_map(|p| p.parts.iter().flatten())
            .map(Vec::len)
            .sum()
    }

    #[test]
    fn seal_reassemble_decrypt() {
        let a = age::x25519::Identity::generate();
        let b = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let plain: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let chunks = seal_signed(&plain, &[a.to_public(), b.to_public()], &signer(), 7).unwrap();
        assert!(chunks.len() >= 3);
        assert!(chunks.iter().all(|c| c.len() <= CHUNK_FRAME_BYTES_MAX));
        let mut r = follower();
        let mut out = None;
        for c in chunks.iter().rev() {
            out = r.push(c).unwrap();
        }
        let ct = out.unwrap();
        assert_eq!(decrypt(&ct, &a).unwrap(), plain);
        assert_eq!(decrypt(&ct, &b).unwrap(), plain);
        assert!(decrypt(&ct, &other).is_err());
        // Unsigned, a message of several chunks is not sent at all.
        let err = seal(&plain, &[a.to_public()]).unwrap_err();
        assert!(err.to_string().contains("must be signed"), "{err}");
    }

    /// A blob of one chunk carries no signature (it is never held): any
    /// receiver takes it, even one that knows no leader, and its hash is
    /// what checks it.
    #[test]
    fn a_one_chunk_blob_is_unsigned_and_checked_by_its_hash() {
        let small = ct(CHUNK_DATA_MAX, 1);
        let frames = chunk(&small).unwrap();
        assert_eq!(frames, chunk_signed(&small, &signer(), 3).unwrap());
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].len(), CHUNK_HEADER_BYTES + CHUNK_DATA_MAX);
        assert_eq!(&frames[0][..4], b"SWC2");
        for mut r in [follower(), Reassembler::default()] {
            assert_eq!(r.push(&frames[0]).unwrap().as_deref(), Some(&small[..]));
            let mut bad = frames[0].clone();
            bad[CHUNK_HEADER_BYTES] ^= 1;
            let err = r.push(&bad).unwrap_err();
            assert!(err.to_string().contains("do not hash"), "{err}");
            assert!(r.partial.is_empty());
        }
        // Without the leader's key, no chunk of a larger blob is taken.
        let frames = chunk_signed(&ct(CHUNK_DATA_MAX + 1, 1), &signer(), 3).unwrap();
        let err = Reassembler::default().push(&frames[0]).unwrap_err();
        assert_eq!(err.kind(), "chunk_signature", "{err}");
    }

    /// A peer's bogus chunk for the index of a genuine blob, arriving
    /// first, is refused before anything is kept, so the leader's own
    /// chunk still fills the slot. (Format 1 kept the first chunk of each
    /// index, and the blob then failed its hash and was dropped.)
    #[test]
    fn a_bogus_chunk_racing_ahead_of_the_genuine_one_does_not_stop_the_blob() {
        let blob = ct(2 * CHUNK_DATA_MAX + 500, 2);
        let frames = chunk_signed(&blob, &signer(), 40).unwrap();
        assert_eq!(frames.len(), 3);
        let id = Hash::of_bytes(&blob).0;
        let mut r = follower();
        for index in 0..3u16 {
            let len = if index == 2 { 500 } else { CHUNK_DATA_MAX };
            let bogus = forged(id, index, 3, 40, &vec![0xee; len]);
            let err = r.push(&bogus).unwrap_err();
            assert_eq!(err.kind(), "chunk_signature", "{err}");
            // The same with no real signature at all.
            let mut unsigned = bogus.clone();
            unsigned[48..112].fill(0);
            assert_eq!(r.push(&unsigned).unwrap_err().kind(), "chunk_signature");
        }
        assert!(r.partial.is_empty(), "nothing bogus is kept");
        assert_eq!(r.push(&frames[0]).unwrap(), None);
        // Once the slot is filled, a bogus copy is a repeat: dropped unread.
        assert_eq!(
            r.push(&forged(id, 0, 3, 40, &[0xee; CHUNK_DATA_MAX]))
                .unwrap(),
            None
        );
        assert_eq!(r.push(&frames[0]).unwrap(), None, "a replay is a repeat");
        assert_eq!(r.push(&frames[1]).unwrap(), None);
        assert_eq!(r.push(&frames[2]).unwrap().as_deref(), Some(&blob[..]));
    }

    /// More than PARTIAL_BLOBS_MAX bogus partial blobs cannot evict the
    /// leader's partial blob: none of them is kept. Nor can the leader's
    /// own old blobs, replayed by a peer that recorded them: their records
    /// are held already, so they are dropped unverified. What can still
    /// take the slots is PARTIAL_BLOBS_MAX genuine blobs the receiver does
    /// not hold yet, which only the leader makes.
    #[test]
    fn bogus_or_replayed_partial_blobs_cannot_evict_a_genuine_one() {
        let blob = ct(2 * CHUNK_DATA_MAX + 500, 3);
        let frames = chunk_signed(&blob, &signer(), 100).unwrap();
        let mut r = follower();
        r.held_through(90);
        assert_eq!(r.push(&frames[0]).unwrap(), None);
        assert_eq!(r.push(&frames[1]).unwrap(), None);
        for n in 0..(PARTIAL_BLOBS_MAX as u8 + 24) {
            let err = r
                .push(&forged([n; 32], 0, 3, 200, &[1; CHUNK_DATA_MAX]))
                .unwrap_err();
            assert_eq!(err.kind(), "chunk_signature", "{err}");
        }
        assert_eq!(r.partial.len(), 1, "only the genuine blob is held");
        // The leader's old blobs, all at or below what is held.
        for n in 0..(PARTIAL_BLOBS_MAX as u8 + 4) {
            let old = genuine([n; 32], 0, 3, 1 + n as u64 % 90, CHUNK_DATA_MAX);
            assert_eq!(r.push(&old).unwrap(), None);
        }
        assert_eq!(r.partial.len(), 1, "stale blobs are not held");
        assert_eq!(r.push(&frames[2]).unwrap().as_deref(), Some(&blob[..]));

        // The bound that remains: the leader's own new blobs, oldest first.
        let mut r = follower();
        assert_eq!(r.push(&frames[0]).unwrap(), None);
        for n in 0..PARTIAL_BLOBS_MAX as u8 {
            let newer = genuine([n; 32], 0, 3, 101 + n as u64, CHUNK_DATA_MAX);
            assert_eq!(r.push(&newer).unwrap(), None);
        }
        assert_eq!(r.partial.len(), PARTIAL_BLOBS_MAX);
        assert!(!r.partial.contains_key(&Hash::of_bytes(&blob).0));
        // Once the receiver holds their records, they go.
        r.held_through(110);
        assert_eq!(r.partial.len(), 6);
        assert_eq!(r.order.len(), 6);
    }

    /// Every field a chunk's signature covers is bound: a chunk signed by
    /// another key, for another genesis, or altered in its blob id, index,
    /// total, last index, data or signature is refused, and nothing of it
    /// is kept.
    #[test]
    fn a_chunk_signed_by_another_key_or_altered_is_refused() {
        let blob = ct(2 * CHUNK_DATA_MAX + 500, 4);
        let frames = chunk_signed(&blob, &signer(), 50).unwrap();
        let f = &frames[0];
        let alter = |at: usize, byte: u8| {
            let mut g = f.clone();
            g[at] ^= byte;
            g
        };
        let other_genesis = ChunkSigner::new(&leader_key(), Hash([8; 32]));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "another key",
                forged(Hash::of_bytes(&blob).0, 0, 3, 50, &blob[..CHUNK_DATA_MAX]),
            ),
            (
                "another genesis",
                chunk_signed(&blob, &other_genesis, 50).unwrap()[0].clone(),
            ),
            ("blob id", alter(4, 1)),
            ("index 0 -> 1", alter(37, 1)),
            ("total 3 -> 2", alter(39, 1)),
            ("total 3 -> 7", alter(39, 4)),
            ("last index", alter(47, 1)),
            ("signature", alter(48, 1)),
            ("data", alter(CHUNK_HEADER_BYTES + CHUNK_AUTH_BYTES + 17, 1)),
        ];
        let mut r = follower();
        for (what, g) in &cases {
            assert_eq!(g.len(), f.len(), "{what}");
            let err = r.push(g).unwrap_err();
            assert_eq!(err.kind(), "chunk_signature", "{what}: {err}");
            assert!(
                err.to_string().contains("not the genesis leader's"),
                "{err}"
            );
        }
        assert!(r.partial.is_empty(), "nothing refused is kept");
        // A receiver of another genesis refuses the leader's own chunks.
        let mut elsewhere =
            Reassembler::new(&SignerId::from_signing_key(&leader_key()), Hash([8; 32])).unwrap();
        assert_eq!(elsewhere.push(f).unwrap_err().kind(), "chunk_signature");
        for g in &frames {
            r.push(g).unwrap();
        }
        assert!(r.partial.is_empty(), "the genuine blob completed");
    }

    /// A format-1 chunk (another release) is refused with a message that
    /// says so, as is any other chunk format; other bytes are no chunk.
    #[test]
    fn an_swc1_chunk_is_refused_as_a_version_mismatch() {
        let mut v1 = b"SWC1".to_vec();
        v1.extend_from_slice(&[5; 32]);
        v1.extend_from_slice(&[0, 0, 0, 1]);
        v1.extend_from_slice(b"data");
        let mut r = follower();
        let err = r.push(&v1).unwrap_err();
        assert_eq!(err.kind(), "chunk_version");
        let text = err.to_string();
        assert!(
            text.contains("SWC1") && text.contains("older SWOOSH release"),
            "{text}"
        );
        v1[3] = b'\n';
        let text = r.push(&v1).unwrap_err().to_string();
        assert!(
            text.contains("\"SWC\\n\"") && text.contains("different SWOOSH releases"),
            "{text}"
        );
        for junk in [&b"SW"[..], b"", b"JUNK and more"] {
            assert_eq!(r.push(junk).unwrap_err().kind(), "chunk_malformed");
        }
        let short = genuine([1; 32], 0, 2, 5, CHUNK_DATA_MAX);
        let err = r.push(&short[..100]).unwrap_err();
        assert!(err.to_string().contains("fewer than the 112"), "{err}");
    }

    /// The largest frame, in gossipsub's protobuf framing with the longest
    /// topic a cluster can have, plus what a receiver may have buffered of
    /// the next frame when it checks the limit ([`CHUNK_DATA_MAX`]), stays
    /// under the 65,536-byte limit.
    #[test]
    fn the_largest_frame_fits_one_gossipsub_read() {
        let frames = chunk_signed(&ct(BLOB_BYTES_MAX, 5), &signer(), 1).unwrap();
        let largest = frames.iter().map(Vec::len).max().unwrap();
        assert_eq!(largest, CHUNK_FRAME_BYTES_MAX);
        assert_eq!(largest, 56_112);
        let topic = crate::p2p::wal_topic(&"c".repeat(swoosh_core::state::PROJECT_ID_BYTES_MAX));
        let topic_len = topic.hash().as_str().len();
        assert_eq!(topic_len, 78);
        // Message { data = 2, topic = 4 }: a tag byte and a varint length
        // each (3 bytes up to 2^21, 1 under 128); the publish entry of the
        // RPC wraps it in one more tag and length, and the frame is
        // prefixed with its varint length.
        let message = 1 + 3 + largest + 1 + 1 + topic_len;
        let frame = 3 + 1 + 3 + message;
        // asynchronous-codec 0.7 reads at most 8 KiB at a time.
        let read_ahead = 8 * 1024 - 1;
        assert_eq!(frame + read_ahead, 64_394);
        assert!(frame + read_ahead <= crate::proto::wire::GOSSIP_PAYLOAD_BYTES_MAX);
    }

    /// What a peer can make a receiver hold is bounded: oversized or short
    /// chunks and blobs beyond the size limit are refused before anything
    /// is kept (signed or not), and at most [`PARTIAL_BLOBS_MAX`] partial
    /// blobs are kept.
    #[test]
    fn partial_blobs_are_bounded_whatever_a_peer_sends() {
        let mut r = follower();
        let too_many = (CHUNKS_PER_BLOB_MAX + 1) as u16;
        let err = r
            .push(&genuine([1; 32], 0, too_many, 9, CHUNK_DATA_MAX))
            .unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = r
            .push(&genuine([1; 32], 0, 3, 9, CHUNK_DATA_MAX + 5_000))
            .unwrap_err();
        assert!(err.to_string().contains("exactly 56000"), "{err}");
        let err = r.push(&genuine([1; 32], 0, 3, 9, 10)).unwrap_err();
        assert!(err.to_string().contains("carries 10 data bytes"), "{err}");
        let err = r
            .push(&genuine([1; 32], 2, 3, 9, CHUNK_DATA_MAX + 1))
            .unwrap_err();
        assert!(err.to_string().contains("the last at most"), "{err}");
        assert!(r.partial.is_empty(), "nothing refused is kept");
        // A short last chunk is a valid one.
        assert_eq!(r.push(&genuine([1; 32], 2, 3, 9, 10)).unwrap(), None);
        // A chunk that disagrees with its blob's others is refused.
        let err = r
            .push(&genuine([1; 32], 0, 4, 9, CHUNK_DATA_MAX))
            .unwrap_err();
        assert!(err.to_string().contains("disagrees"), "{err}");
        let total = CHUNKS_PER_BLOB_MAX as u16;
        for id in 2..(PARTIAL_BLOBS_MAX as u8 + 10) {
            for i in 0..total - 1 {
                let f = genuine([id; 32], i, total, 9, CHUNK_DATA_MAX);
                assert_eq!(r.push(&f).unwrap(), None);
            }
        }
        assert_eq!(r.partial.len(), PARTIAL_BLOBS_MAX);
        assert!(
            held(&r) <= PARTIAL_BLOBS_MAX * BLOB_BYTES_MAX,
            "{} bytes held",
            held(&r)
        );
        assert!(chunk_signed(&vec![0u8; BLOB_BYTES_MAX + 1], &signer(), 1).is_err());
        assert_eq!(
            chunk_signed(&vec![0u8; BLOB_BYTES_MAX], &signer(), 1)
                .unwrap()
                .len(),
            CHUNKS_PER_BLOB_MAX
        );
    }

    /// A blob is at most [`BLOB_BYTES_MAX`] bytes on the receiving side too:
    /// a full last chunk of a 38-chunk blob (2,128,000 bytes) is refused,
    /// counted like any other refused chunk, while the largest blob a
    /// leader sends reassembles.
    #[test]
    fn a_blob_over_the_byte_limit_is_refused_whatever_its_chunk_count() {
        let total = CHUNKS_PER_BLOB_MAX as u16;
        let room = BLOB_BYTES_MAX - (CHUNKS_PER_BLOB_MAX - 1) * CHUNK_DATA_MAX;
        assert_eq!(room, 25_152);
        let f = |index: u16, len: usize| genuine([1; 32], index, total, 9, len);
        let mut r = follower();
        // The oversized last chunk alone, before any other: refused, and
        // nothing is kept for it.
        let err = r.push(&f(total - 1, room + 1)).unwrap_err();
        assert!(err.to_string().contains("at most 2097152 bytes"), "{err}");
        let err = r.push(&f(total - 1, CHUNK_DATA_MAX)).unwrap_err();
        assert!(err.to_string().contains("2128000-byte blob"), "{err}");
        assert!(r.partial.is_empty(), "nothing refused is kept");
        // After every other chunk: still refused, the blob never completes.
        for i in 0..total - 1 {
            assert_eq!(r.push(&f(i, CHUNK_DATA_MAX)).unwrap(), None);
        }
        assert!(r.push(&f(total - 1, room + 1)).is_err());
        assert!(held(&r) < BLOB_BYTES_MAX, "{} bytes held", held(&r));

        // Exactly BLOB_BYTES_MAX bytes: what `chunk_signed` makes of the
        // largest ciphertext it takes, reassembled whole.
        let ct = ct(BLOB_BYTES_MAX, 6);
        let frames = chunk_signed(&ct, &signer(), 9).unwrap();
        assert_eq!(frames.len(), CHUNKS_PER_BLOB_MAX);
        assert_eq!(
            frames.last().unwrap().len(),
            CHUNK_HEADER_BYTES + CHUNK_AUTH_BYTES + room
        );
        let mut r = follower();
        let mut out = None;
        for f in &frames {
            out = r.push(f).unwrap();
        }
        assert_eq!(out.as_deref(), Some(&ct[..]));
    }
}
