//! The frame around every stored structure: a fixed header carrying the
//! BLAKE3 hash of the payload, then the payload (canonical CBOR).
//!
//! ```text
//! offset  size  field
//! 0       1     frame version (1)
//! 1       1     kind: 1 WAL record, 2 snapshot, 3 idempotency entry, 4 decision
//! 2       4     payload length, u32 big-endian
//! 6       32    BLAKE3-256 of the payload
//! 38      n     payload: canonical CBOR (RFC 8949 §4.2.1)
//! ```
//!
//! The hash covers the payload only, so the hash in a WAL frame is the
//! record's own hash (`WalRecord::hash`), the value the next record's
//! `prev_hash` must equal. Writers compute it from the bytes they store;
//! readers recompute it on every read and decode nothing whose hash differs
//! (STYLE 6). A damaged header is caught by the version, kind and length
//! checks.

use swoosh_core::Hash;

pub const FRAME_VERSION: u8 = 1;
pub const FRAME_HEADER_BYTES: usize = 38;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    WalRecord = 1,
    Snapshot = 2,
    IdemEntry = 3,
    Decision = 4,
}

impl FrameKind {
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
    #[error("unknown frame version {got} (this build reads version {FRAME_VERSION})")]
    Version { got: u8 },
    #[error("frame kind {got} where a {} (kind {}) belongs", expected.name(), *expected as u8)]
    Kind { expected: FrameKind, got: u8 },
    #[error("torn: the header declares a {declared}-byte payload but {actual} bytes follow it")]
    Length { declared: usize, actual: usize },
    #[error("payload of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
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
            FrameError::HashMismatch { .. } => "hash mismatch",
            FrameError::Decode(_) => "undecodable",
        }
    }
}

/// Frame `payload` with the hash the caller already computed over it.
pub fn seal_with_hash(kind: FrameKind, payload: &[u8], hash: &Hash) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("payloads are bounded far below 4 GiB by their kind's limit");
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    out.push(FRAME_VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&hash.0);
    out.extend_from_slice(payload);
    out
}

/// Frame `payload`, hashing it. Returns the frame and the payload hash.
pub fn seal(kind: FrameKind, payload: &[u8]) -> (Vec<u8>, Hash) {
    let hash = Hash::of_bytes(payload);
    (seal_with_hash(kind, payload, &hash), hash)
}

/// Check a frame's header and hash; returns the verified hash and payload.
pub fn open(
    kind: FrameKind,
    bytes: &[u8],
    payload_max: usize,
) -> Result<(Hash, &[u8]), FrameError> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(FrameError::TooShort { len: bytes.len() });
    }
    if bytes[0] != FRAME_VERSION {
        return Err(FrameError::Version { got: bytes[0] });
    }
    if bytes[1] != kind as u8 {
        return Err(FrameError::Kind {
            expected: kind,
            got: bytes[1],
        });
    }
    let declared = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as usize;
    let payload = &bytes[FRAME_HEADER_BYTES..];
    if declared != payload.len() {
        return Err(FrameError::Length {
            declared,
            actual: payload.len(),
        });
    }
    if payload.len() > payload_max {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max: payload_max,
        });
    }
    let mut stored = [0u8; 32];
    stored.copy_from_slice(&bytes[6..FRAME_HEADER_BYTES]);
    let stored = Hash(stored);
    let computed = Hash::of_bytes(payload);
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
    let value =
        swoosh_core::cbor::from_trusted(payload).map_err(|e| FrameError::Decode(e.to_string()))?;
    Ok((hash, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips() {
        let (f, h) = seal(FrameKind::WalRecord, b"\xa1\x61a\x01");
        assert_eq!(f.len(), FRAME_HEADER_BYTES + 4);
        assert_eq!(
            open(FrameKind::WalRecord, &f, 1024),
            Ok((h, &b"\xa1\x61a\x01"[..]))
        );
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
}
