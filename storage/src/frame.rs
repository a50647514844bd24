//! The frame around every stored structure: a fixed header carrying the
//! BLAKE3 hash of the payload, then the payload (canonical CBOR), stored as
//! is or as one LZ4 block.
//!
//! ```text
//! offset  size  field
//! 0       1     frame version: 1 payload stored as is, 2 payload LZ4-compressed
//! 1       1     kind: 1 WAL record, 2 snapshot, 3 idempotency entry, 4 decision
//! 2       4     payload length (uncompressed), u32 big-endian
//! 6       32    BLAKE3-256 of the (uncompressed) payload
//! 38      n     version 1: the payload (n = payload length);
//!               version 2: the payload as one LZ4 block (no LZ4 frame
//!               header; it decompresses to exactly the payload length)
//! ```
//!
//! The hash covers the payload only, so the hash in a WAL frame is the
//! record's own hash (`WalRecord::hash`), the value the next record's
//! `prev_hash` must equal, whichever version stores it. Writers compute it
//! from the bytes they encode; readers decompress, recompute it on every
//! read and decode nothing whose hash differs (STYLE 6). A damaged header is
//! caught by the version, kind and length checks; a damaged LZ4 block fails
//! to decompress to the declared length or fails the hash.
//!
//! Why compress: a record is ~2.2 KB of canonical CBOR, just above what an
//! LMDB leaf holds inline on 4 KiB pages (~2 KB), so each record and each
//! decision record took a 4 KiB overflow page of its own. Compressed (LZ4
//! keeps ~70 % of it) they fit in the leaves, which halves the bytes every
//! commit writes (docs/performance.md). LZ4 because it decompresses at
//! several GB/s: replay reads every record.

use std::borrow::Cow;
use swoosh_core::Hash;

/// Frame version 1: the payload follows the header as is.
pub const FRAME_VERSION: u8 = 1;
/// Frame version 2: the payload follows the header as one LZ4 block.
pub const FRAME_VERSION_LZ4: u8 = 2;
pub const FRAME_HEADER_BYTES: usize = 38;
/// Payloads shorter than this are stored as is (version 1): an idempotency
/// entry, for one, gains nothing worth a decompression on every read.
pub const COMPRESS_MIN_BYTES: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    WalRecord = 1,
    Snapshot = 2,
    IdemEntry = 3,
    Decision = 4,
}

impl FrameKind {
    /// Whether a writer compresses this kind (readers accept either
    /// version for every kind). WAL records go into the `wal` tree in key
    /// order, so compressed ones fill its leaves back to back; snapshots
    /// are megabytes of state. Decision records stay as they are: their
    /// tree is keyed by hash, so each insert lands on a random leaf, and a
    /// decision stored inline (compressed, ~1.7 KB, two per leaf) dirtied a
    /// whole 4 KiB leaf per insert, more than its own overflow page and a
    /// small leaf entry shared with its neighbours cost (measured:
    /// docs/performance.md). Idempotency entries are below the threshold.
    pub fn compressed(self) -> bool {
        matches!(self, FrameKind::WalRecord | FrameKind::Snapshot)
    }

    pub fn name(self) -> &'static str {
        match self {
            FrameKind::WalRecord => "WAL record",
            FrameKind::Snapshot => "snapshot",
            FrameKind::IdemEntry => "idempotency entry",
            FrameKind::Decision => "decision record",
        }
    }
}

/// Why stored bytes are not a valid frame. Each says how the bytes are wrong;
/// the caller adds where they are and what to do.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("torn: {len} bytes, shorter than the {FRAME_HEADER_BYTES}-byte frame header")]
    TooShort { len: usize },
    #[error("unknown frame version {got} (this build reads versions {FRAME_VERSION} and {FRAME_VERSION_LZ4})")]
    Version { got: u8 },
    #[error("frame kind {got} where a {} (kind {}) belongs", expected.name(), *expected as u8)]
    Kind { expected: FrameKind, got: u8 },
    #[error("torn: the header declares a {declared}-byte payload but {actual} bytes follow it")]
    Length { declared: usize, actual: usize },
    #[error("payload of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("torn or damaged: the {stored}-byte compressed payload does not decompress to the {declared} bytes its header declares ({detail})")]
    Decompress {
        declared: usize,
        stored: usize,
        detail: String,
    },
    #[error("hash mismatch: the frame says {stored}, the payload hashes to {computed}")]
    HashMismatch { stored: Hash, computed: Hash },
    #[error("payload matches its hash but does not decode: {0}")]
    Decode(String),
}

impl FrameError {
    /// A short label for the reason, for metrics and one-line reports.
    pub fn label(&self) -> &'static str {
        match self {
            FrameError::TooShort { .. } | FrameError::Length { .. } => "torn",
            FrameError::Version { .. } | FrameError::Kind { .. } => "bad header",
            FrameError::TooLarge { .. } => "too large",
            FrameError::Decompress { .. } => "damaged compression",
            FrameError::HashMismatch { .. } => "hash mismatch",
            FrameError::Decode(_) => "undecodable",
        }
    }
}

fn header(out: &mut Vec<u8>, version: u8, kind: FrameKind, len: u32, hash: &Hash) {
    out.push(version);
    out.push(kind as u8);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&hash.0);
}

/// Frame `payload` with the hash the caller already computed over it.
/// Compressed (version 2) for a kind that is ([`FrameKind::compressed`])
/// where that saves at least an eighth of the payload, stored as is
/// (version 1) otherwise.
pub fn seal_with_hash(kind: FrameKind, payload: &[u8], hash: &Hash) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("payloads are bounded far below 4 GiB by their kind's limit");
    if payload.len() >= COMPRESS_MIN_BYTES && kind.compressed() {
        let max = lz4_flex::block::get_maximum_output_size(payload.len());
        let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + max);
        header(&mut out, FRAME_VERSION_LZ4, kind, len, hash);
        out.resize(FRAME_HEADER_BYTES + max, 0);
        if let Ok(n) = lz4_flex::block::compress_into(payload, &mut out[FRAME_HEADER_BYTES..]) {
            out.truncate(FRAME_HEADER_BYTES + n);
            // Checked on write as well as on read (STYLE 6): a block that
            // did not decompress to the payload would be committed data no
            // reader could recover, so it is never stored; the payload is
            // stored as is instead.
            if n <= payload.len() - payload.len() / 8
                && decompresses_to(&out[FRAME_HEADER_BYTES..], payload)
            {
                return out;
            }
        }
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    header(&mut out, FRAME_VERSION, kind, len, hash);
    out.extend_from_slice(payload);
    out
}

fn decompresses_to(block: &[u8], payload: &[u8]) -> bool {
    lz4_decompress(block, payload.len()).is_ok_and(|back| back == payload)
}

/// The `len` bytes `block` decompresses to, every byte of the block read.
/// One byte of room past `len`: the decoder stops reading once its output
/// is full, so without room bytes after that point (a damaged tail of the
/// block) would go unread, unnoticed.
fn lz4_decompress(block: &[u8], len: usize) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; len + 1];
    match lz4_flex::block::decompress_into(block, &mut out) {
        Ok(n) if n == len => {
            out.truncate(len);
            Ok(out)
        }
        Ok(n) => Err(format!("it decompresses to {n} bytes")),
        Err(e) => Err(e.to_string()),
    }
}

/// Frame `payload`, hashing it. Returns the frame and the payload hash.
pub fn seal(kind: FrameKind, payload: &[u8]) -> (Vec<u8>, Hash) {
    let hash = Hash::of_bytes(payload);
    (seal_with_hash(kind, payload, &hash), hash)
}

/// The payload length a frame's header declares (the uncompressed length),
/// without checking the frame: a size hint for a caller that opens it anyway.
pub fn declared_len(bytes: &[u8]) -> Option<usize> {
    let b = bytes.get(2..6)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Check a frame's header, decompress it if it is compressed, and check the
/// payload's hash; returns the verified hash and payload (borrowed from
/// `bytes` when stored as is).
pub fn open(
    kind: FrameKind,
    bytes: &[u8],
    payload_max: usize,
) -> Result<(Hash, Cow<'_, [u8]>), FrameError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::TooShort { len: bytes.len() });
    }
    let version = bytes[0];
    if version != FRAME_VERSION && version != FRAME_VERSION_LZ4 {
        return Err(FrameError::Version { got: version });
    }
    if bytes[1] != kind as u8 {
        return Err(FrameError::Kind {
            expected: kind,
            got: bytes[1],
        });
    }
    let declared = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize;
    let body = &bytes[FRAME_HEADER_BYTES..];
    let payload: Cow<'_, [u8]> = if version == FRAME_VERSION {
        if declared != body.len() {
            return Err(FrameError::Length {
                declared,
                actual: body.len(),
            });
        }
        if body.len() > payload_max {
            return Err(FrameError::TooLarge {
                len: body.len(),
                max: payload_max,
            });
        }
        Cow::Borrowed(body)
    } else {
        // The limit is checked before anything is allocated: a damaged
        // length cannot make a reader allocate more than its kind allows.
        if declared > payload_max {
            return Err(FrameError::TooLarge {
                len: declared,
                max: payload_max,
            });
        }
        match lz4_decompress(body, declared) {
            Ok(out) => Cow::Owned(out),
            Err(detail) => {
                return Err(FrameError::Decompress {
                    declared,
                    stored: body.len(),
                    detail,
                })
            }
        }
    };
    let mut stored = [0u8; 32];
    stored.copy_from_slice(&bytes[6..FRAME_HEADER_BYTES]);
    let stored = Hash(stored);
    let computed = Hash::of_bytes(&payload);
    if computed != stored {
        return Err(FrameError::HashMismatch { stored, computed });
    }
    Ok((stored, payload))
}

/// Open a frame and decode its payload with `from_trusted` (only after the
/// hash matched).
pub fn open_decode<T: serde::de::DeserializeOwned>(
    kind: FrameKind,
    bytes: &[u8],
    payload_max: usize,
) -> Result<(Hash, T), FrameError> {
    let (hash, payload) = open(kind, bytes, payload_max)?;
    Ok((hash, decode(&payload)?))
}

/// Decode an opened frame's payload with `from_trusted`.
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    swoosh_core::cbor::from_trusted(payload).map_err(|e| FrameError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` bytes made of `piece(0)`, `piece(1)`, …
    fn filled(n: usize, piece: impl Fn(u64) -> Vec<u8>) -> Vec<u8> {
        let mut v = vec![];
        for i in 0.. {
            if v.len() >= n {
                break;
            }
            v.extend(piece(i));
        }
        v.truncate(n);
        v
    }

    /// A payload like a WAL record's: repeated keys and sentences, hex text.
    fn compressible(n: usize) -> Vec<u8> {
        filled(n, |i| {
            let mut p = b"guard_outcomes: the signer is in the roster; ".to_vec();
            p.extend(Hash::of_bytes(&i.to_be_bytes()).to_string().as_bytes());
            p
        })
    }

    /// Bytes no compressor shrinks.
    fn incompressible(n: usize) -> Vec<u8> {
        filled(n, |i| Hash::of_bytes(&i.to_be_bytes()).0.to_vec())
    }

    #[test]
    fn seal_then_open_round_trips() {
        let (f, h) = seal(FrameKind::WalRecord, b"\xa1\x61a\x01");
        assert_eq!(f.len(), FRAME_HEADER_BYTES + 4);
        assert_eq!(f[0], FRAME_VERSION, "short payloads are stored as is");
        let (got_h, got) = open(FrameKind::WalRecord, &f, 1024).unwrap();
        assert_eq!((got_h, &*got), (h, &b"\xa1\x61a\x01"[..]));
        assert!(matches!(got, Cow::Borrowed(_)));
    }

    #[test]
    fn compressible_payloads_are_stored_compressed_and_read_back_exactly() {
        for n in [COMPRESS_MIN_BYTES, 2_300, 70_000] {
            let p = compressible(n);
            for kind in [FrameKind::WalRecord, FrameKind::Snapshot] {
                let (f, h) = seal(kind, &p);
                assert_eq!(f[0], FRAME_VERSION_LZ4, "{n} bytes");
                assert!(f.len() < FRAME_HEADER_BYTES + n * 7 / 8, "{n} bytes");
                assert_eq!(declared_len(&f), Some(n));
                assert_eq!(h, Hash::of_bytes(&p), "the hash is the payload's");
                let (got_h, got) = open(kind, &f, n).unwrap();
                assert_eq!((got_h, &*got), (h, &p[..]));
            }
        }
    }

    #[test]
    fn decision_records_are_stored_as_is_but_read_either_way() {
        let p = compressible(2_300);
        let (f, h) = seal(FrameKind::Decision, &p);
        assert_eq!(f[0], FRAME_VERSION);
        assert_eq!(f.len(), FRAME_HEADER_BYTES + p.len());
        // A compressed decision frame (another writer's choice) reads too.
        let mut g = seal(FrameKind::WalRecord, &p).0;
        g[1] = FrameKind::Decision as u8;
        assert_eq!(g[0], FRAME_VERSION_LZ4);
        let (got_h, got) = open(FrameKind::Decision, &g, 4_096).unwrap();
        assert_eq!((got_h, &*got), (h, &p[..]));
    }

    #[test]
    fn incompressible_payloads_stay_plain() {
        let p = incompressible(4_000);
        let (f, h) = seal(FrameKind::Snapshot, &p);
        assert_eq!(f[0], FRAME_VERSION);
        assert_eq!(f.len(), FRAME_HEADER_BYTES + p.len());
        assert_eq!(open(FrameKind::Snapshot, &f, 4_000).unwrap().0, h);
    }

    #[test]
    fn every_kind_of_damage_is_named() {
        let (f, _) = seal(FrameKind::WalRecord, b"payload-bytes");
        assert!(matches!(
            open(FrameKind::WalRecord, &f[..10], 1024),
            Err(FrameError::TooShort { len: 10 })
        ));
        assert!(matches!(
            open(FrameKind::WalRecord, &f[..f.len() - 1], 1024),
            Err(FrameError::Length { .. })
        ));
        assert!(matches!(
            open(FrameKind::Snapshot, &f, 1024),
            Err(FrameError::Kind { .. })
        ));
        assert!(matches!(
            open(FrameKind::WalRecord, &f, 4),
            Err(FrameError::TooLarge { .. })
        ));
        let mut g = f.clone();
        g[0] = 9;
        assert!(matches!(
            open(FrameKind::WalRecord, &g, 1024),
            Err(FrameError::Version { got: 9 })
        ));
        for i in 6..f.len() {
            let mut g = f.clone();
            g[i] ^= 0x01;
            assert!(
                matches!(
                    open(FrameKind::WalRecord, &g, 1024),
                    Err(FrameError::HashMismatch { .. })
                ),
                "flip at {i} went unnoticed"
            );
        }
    }

    /// Every single-bit flip and every cut of a compressed frame is refused
    /// and named, or reads back as exactly the payload that was sealed: LZ4
    /// can encode one output in several ways (a match offset into repeated
    /// text), so a flip may leave the output, and its hash, unchanged. No
    /// damage reads back as some other payload.
    #[test]
    fn damage_to_a_compressed_frame_is_never_accepted() {
        let p = compressible(1_500);
        let (f, _) = seal(FrameKind::WalRecord, &p);
        assert_eq!(f[0], FRAME_VERSION_LZ4);
        for i in 0..f.len() {
            for bit in [0x01u8, 0x80] {
                let mut g = f.clone();
                g[i] ^= bit;
                match open(FrameKind::WalRecord, &g, 1 << 20) {
                    Err(
                        FrameError::Version { .. }
                        | FrameError::Kind { .. }
                        | FrameError::TooLarge { .. }
                        | FrameError::Decompress { .. }
                        | FrameError::HashMismatch { .. },
                    ) => {}
                    Ok((_, got)) if *got == p[..] => {}
                    other => panic!("flip {bit:#x} at {i}: {other:?}"),
                }
            }
        }
        for cut in FRAME_HEADER_BYTES..f.len() {
            match open(FrameKind::WalRecord, &f[..cut], 1 << 20) {
                Err(FrameError::Decompress { .. } | FrameError::HashMismatch { .. }) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        // Extra bytes after the block are not silently ignored either.
        let mut g = f.clone();
        g.extend_from_slice(b"tail");
        assert!(open(FrameKind::WalRecord, &g, 1 << 20).is_err());
    }

    /// A damaged length cannot make a reader allocate past its kind's limit.
    #[test]
    fn a_compressed_frame_declaring_more_than_the_limit_is_refused_before_decompressing() {
        let p = compressible(2_000);
        let (mut f, _) = seal(FrameKind::WalRecord, &p);
        f[2..6].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            open(FrameKind::WalRecord, &f, 1 << 20),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 1 << 20
            })
        );
        let (f, _) = seal(FrameKind::WalRecord, &p);
        assert!(matches!(
            open(FrameKind::WalRecord, &f, 1_999),
            Err(FrameError::TooLarge { len: 2_000, .. })
        ));
    }

    /// The write-side check: a block is kept only if it gives back exactly
    /// the payload.
    #[test]
    fn the_write_side_check_accepts_only_a_block_that_gives_back_the_payload() {
        let p = compressible(2_000);
        let block = lz4_flex::block::compress(&p);
        assert!(decompresses_to(&block, &p));
        let mut other = p.clone();
        other[1_000] ^= 1;
        assert!(!decompresses_to(&block, &other));
        assert!(!decompresses_to(&block, &p[..1_999]));
        assert!(!decompresses_to(&block[..block.len() - 3], &p));
    }

    /// Frames written before compression (version 1) still read.
    #[test]
    fn version_one_frames_of_any_size_still_read() {
        let p = compressible(3_000);
        let h = Hash::of_bytes(&p);
        let mut f = vec![FRAME_VERSION, FrameKind::WalRecord as u8];
        f.extend_from_slice(&3_000u32.to_be_bytes());
        f.extend_from_slice(&h.0);
        f.extend_from_slice(&p);
        let (got_h, got) = open(FrameKind::WalRecord, &f, 3_000).unwrap();
        assert_eq!((got_h, &*got), (h, &p[..]));
    }
}
