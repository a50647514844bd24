//! WAL gossip framing: the canonical CBOR of a `Gossip` message is
//! age-encrypted to every follower recipient of genesis (one age file, one
//! X25519 stanza per follower), and the ciphertext is cut into chunks that
//! each fit one gossipsub message.
//!
//! Chunk layout (big-endian):
//! `"SWC1" || blob_id[32] || index u16 || total u16 || data`
//! where `blob_id = BLAKE3(ciphertext)` and `0 <= index < total`. The
//! receiver reassembles the chunks of one blob id in index order, checks
//! the BLAKE3 of the result, then decrypts. Signatures live inside the
//! plaintext (age ciphertext is not deterministic and is never signed).

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use swoosh_core::hash::Hash;

/// The age identity type followers hold.
pub type AgeIdentity = age::x25519::Identity;

pub const CHUNK_MAGIC: &[u8; 4] = b"SWC1";
pub const CHUNK_HEADER_BYTES: usize = 4 + 32 + 2 + 2;
/// Data bytes per chunk: a 60,040-byte frame plus gossipsub's protobuf
/// framing of the message (its `data` and `topic` fields: messages are
/// anonymous since `/swoosh/id/2`, with no key, signature, sequence number
/// or source) stays well under the 65,536-byte limit.
pub const CHUNK_DATA_MAX: usize = 60_000;
/// Largest ciphertext one gossip blob may carry: a record at the WAL's
/// 1 MiB limit travels alone in its batch, and the signed header and one
/// age stanza per follower add a few KiB. Anything larger is no message a
/// leader sends ([`chunk`] refuses it), and a receiver refuses a blob whose
/// chunks would add up to more (its last chunk then is refused), so it
/// never holds more than this for one blob.
pub const BLOB_BYTES_MAX: usize = 2 << 20;
/// Most chunks one blob may have (35 at 60,000 data bytes each; the 35th
/// carries at most the 57,152 bytes left to [`BLOB_BYTES_MAX`]).
pub const CHUNKS_PER_BLOB_MAX: usize = BLOB_BYTES_MAX.div_ceil(CHUNK_DATA_MAX);
/// Blobs being reassembled at once; the oldest is dropped beyond this. With
/// [`BLOB_BYTES_MAX`] it bounds what partial blobs hold to 32 MiB, whatever
/// a peer sends (gossip reaches a follower before any signature is checked).
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
    #[error("cannot decrypt: {0}")]
    Decrypt(String),
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

/// Cut a ciphertext into gossip chunks.
pub fn chunk(ct: &[u8]) -> Result<Vec<Vec<u8>>, EnvelopeError> {
    let id = Hash::of_bytes(ct).0;
    let parts: Vec<&[u8]> = if ct.is_empty() {
        vec![&[][..]]
    } else {
        ct.chunks(CHUNK_DATA_MAX).collect()
    };
    if ct.len() > BLOB_BYTES_MAX {
        return Err(EnvelopeError::Chunk(format!(
            "a {}-byte message is larger than the {BLOB_BYTES_MAX} bytes one gossip blob may carry",
            ct.len()
        )));
    }
    let total = parts.len() as u16;
    Ok(parts
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut f = Vec::with_capacity(CHUNK_HEADER_BYTES + d.len());
            f.extend_from_slice(CHUNK_MAGIC);
            f.extend_from_slice(&id);
            f.extend_from_slice(&(i as u16).to_be_bytes());
            f.extend_from_slice(&total.to_be_bytes());
            f.extend_from_slice(d);
            f
        })
        .collect())
}

/// Encrypt to `recipients` and chunk.
pub fn seal(
    plain: &[u8],
    recipients: &[age::x25519::Recipient],
) -> Result<Vec<Vec<u8>>, EnvelopeError> {
    chunk(&encrypt(plain, recipients)?)
}

struct Partial {
    parts: Vec<Option<Vec<u8>>>,
    have: usize,
}

/// Reassembles chunks into ciphertexts (bounded).
#[derive(Default)]
pub struct Reassembler {
    partial: HashMap<[u8; 32], Partial>,
    order: VecDeque<[u8; 32]>,
}

impl Reassembler {
    /// Feed one chunk; returns the whole ciphertext when its last chunk arrives.
    pub fn push(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, EnvelopeError> {
        if frame.len() < CHUNK_HEADER_BYTES || &frame[..4] != CHUNK_MAGIC {
            return Err(EnvelopeError::Chunk("not a SWC1 chunk".into()));
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&frame[4..36]);
        let index = u16::from_be_bytes([frame[36], frame[37]]) as usize;
        let total = u16::from_be_bytes([frame[38], frame[39]]) as usize;
        let data = &frame[CHUNK_HEADER_BYTES..];
        if total == 0 || total > CHUNKS_PER_BLOB_MAX || index >= total {
            return Err(EnvelopeError::Chunk(format!(
                "chunk {index} of {total} is out of range (a blob has at most {CHUNKS_PER_BLOB_MAX} chunks)"
            )));
        }
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
        if total == 1 {
            return self.finish(id, vec![data.to_vec()]).map(Some);
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
                },
            );
        }
        let p = self.partial.get_mut(&id).expect("inserted above");
        if p.parts.len() != total {
            return Err(EnvelopeError::Chunk("chunk totals disagree".into()));
        }
        if p.parts[index].is_none() {
            p.parts[index] = Some(data.to_vec());
            p.have += 1;
        }
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

    #[test]
    fn seal_reassemble_decrypt() {
        let a = age::x25519::Identity::generate();
        let b = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let plain: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let chunks = seal(&plain, &[a.to_public(), b.to_public()]).unwrap();
        assert!(chunks.len() >= 3);
        assert!(chunks
            .iter()
            .all(|c| c.len() <= CHUNK_DATA_MAX + CHUNK_HEADER_BYTES));
        let mut r = Reassembler::default();
        let mut out = None;
        for c in chunks.iter().rev() {
            out = r.push(c).unwrap();
        }
        let ct = out.unwrap();
        assert_eq!(decrypt(&ct, &a).unwrap(), plain);
        assert_eq!(decrypt(&ct, &b).unwrap(), plain);
        assert!(decrypt(&ct, &other).is_err());
    }

    /// What a peer can make a receiver hold is bounded: oversized or short
    /// chunks and blobs beyond the size limit are refused before anything
    /// is kept, and at most [`PARTIAL_BLOBS_MAX`] partial blobs are kept.
    #[test]
    fn partial_blobs_are_bounded_whatever_a_peer_sends() {
        let frame = |id: u8, index: u16, total: u16, len: usize| {
            let mut f = CHUNK_MAGIC.to_vec();
            f.extend_from_slice(&[id; 32]);
            f.extend_from_slice(&index.to_be_bytes());
            f.extend_from_slice(&total.to_be_bytes());
            f.extend(std::iter::repeat_n(0u8, len));
            f
        };
        let mut r = Reassembler::default();
        let too_many = (CHUNKS_PER_BLOB_MAX + 1) as u16;
        let err = r.push(&frame(1, 0, too_many, CHUNK_DATA_MAX)).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        let err = r.push(&frame(1, 0, 3, CHUNK_DATA_MAX + 5_000)).unwrap_err();
        assert!(err.to_string().contains("exactly 60000"), "{err}");
        let err = r.push(&frame(1, 0, 3, 10)).unwrap_err();
        assert!(err.to_string().contains("carries 10 data bytes"), "{err}");
        let err = r.push(&frame(1, 2, 3, CHUNK_DATA_MAX + 1)).unwrap_err();
        assert!(err.to_string().contains("the last at most"), "{err}");
        assert!(r.partial.is_empty(), "nothing refused is kept");
        // A short last chunk is a valid one.
        assert_eq!(r.push(&frame(1, 2, 3, 10)).unwrap(), None);
        for id in 2..(PARTIAL_BLOBS_MAX as u8 + 10) {
            let total = CHUNKS_PER_BLOB_MAX as u16;
            for i in 0..total - 1 {
                assert_eq!(r.push(&frame(id, i, total, CHUNK_DATA_MAX)).unwrap(), None);
            }
        }
        assert_eq!(r.partial.len(), PARTIAL_BLOBS_MAX);
        let held: usize = r
            .partial
            .values()
            .flat_map(|p| p.parts.iter().flatten())
            .map(Vec::len)
            .sum();
        assert!(
            held <= PARTIAL_BLOBS_MAX * BLOB_BYTES_MAX,
            "{held} bytes held"
        );
        assert!(chunk(&vec![0u8; BLOB_BYTES_MAX + 1]).is_err());
        assert_eq!(
            chunk(&vec![0u8; BLOB_BYTES_MAX]).unwrap().len(),
            CHUNKS_PER_BLOB_MAX
        );
    }

    /// A blob is at most [`BLOB_BYTES_MAX`] bytes on the receiving side too:
    /// a full last chunk of a 35-chunk blob (2,100,000 bytes) is refused,
    /// counted like any other refused chunk, while the largest blob a
    /// leader sends reassembles.
    #[test]
    fn a_blob_over_the_byte_limit_is_refused_whatever_its_chunk_count() {
        let total = CHUNKS_PER_BLOB_MAX as u16;
        let room = BLOB_BYTES_MAX - (CHUNKS_PER_BLOB_MAX - 1) * CHUNK_DATA_MAX;
        assert_eq!(room, 57_152);
        let frame = |id: [u8; 32], index: u16, len: usize| {
            let mut f = CHUNK_MAGIC.to_vec();
            f.extend_from_slice(&id);
            f.extend_from_slice(&index.to_be_bytes());
            f.extend_from_slice(&total.to_be_bytes());
            f.extend(std::iter::repeat_n(7u8, len));
            f
        };
        let mut r = Reassembler::default();
        // The oversized last chunk alone, before any other: refused, and
        // nothing is kept for it.
        let err = r.push(&frame([1; 32], total - 1, room + 1)).unwrap_err();
        assert!(err.to_string().contains("at most 2097152 bytes"), "{err}");
        let err = r
            .push(&frame([1; 32], total - 1, CHUNK_DATA_MAX))
            .unwrap_err();
        assert!(err.to_string().contains("2100000-byte blob"), "{err}");
        assert!(r.partial.is_empty(), "nothing refused is kept");
        // After every other chunk: still refused, the blob never completes.
        for i in 0..total - 1 {
            assert_eq!(r.push(&frame([1; 32], i, CHUNK_DATA_MAX)).unwrap(), None);
        }
        assert!(r.push(&frame([1; 32], total - 1, room + 1)).is_err());
        let held: usize = r
            .partial
            .values()
            .flat_map(|p| p.parts.iter().flatten())
            .map(Vec::len)
            .sum();
        assert!(held < BLOB_BYTES_MAX, "{held} bytes held");

        // Exactly BLOB_BYTES_MAX bytes: what `chunk` makes of the largest
        // ciphertext it takes, reassembled whole.
        let ct: Vec<u8> = (0..BLOB_BYTES_MAX).map(|i| (i % 253) as u8).collect();
        let frames = chunk(&ct).unwrap();
        assert_eq!(frames.len(), CHUNKS_PER_BLOB_MAX);
        assert_eq!(frames.last().unwrap().len(), CHUNK_HEADER_BYTES + room);
        let mut r = Reassembler::default();
        let mut out = None;
        for f in &frames {
            out = r.push(f).unwrap();
        }
        assert_eq!(out.as_deref(), Some(&ct[..]));
    }
}
