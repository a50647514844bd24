//! Snapshots: the full node state at a WAL index, so recovery replays only
//! the records after it.
//!
//! A snapshot is the canonical CBOR of [`Snapshot`] (format tag, index of the
//! last applied record, node HLC, hash of that record, root hash, and the
//! whole `NodeState`), in a frame whose hash is the snapshot's own hash. It
//! is checked before it is written (the node's project hashes and root hash
//! are recomputed), read back and re-hashed after the commit, and on every
//! read its frame hash and internal consistency are checked again; recovery
//! also checks that it joins the WAL (the record at its index hashes to its
//! `head_record`). The last [`SnapshotPolicy::keep`] snapshots are kept so a
//! damaged one can be skipped for the one before it.

use crate::frame::{self, FrameError, FrameKind};
use crate::store::{index_key, Batch, LogStore, Space, StoreError};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use swoosh_core::hlc::Hlc;
use swoosh_core::state::NodeState;
use swoosh_core::Hash;

/// Largest canonical encoding of one snapshot.
pub const SNAPSHOT_BYTES_MAX: usize = 1 << 30;
/// Snapshots kept by default (the newest ones).
pub const SNAPSHOTS_KEEP_DEFAULT: usize = 3;
/// Most snapshots a policy may keep.
pub const SNAPSHOTS_KEEP_MAX: usize = 64;
/// Default interval between snapshots, in WAL records.
pub const SNAPSHOT_EVERY_RECORDS_DEFAULT: u64 = 10_000;
/// The `format` field of every snapshot this build writes.
pub const SNAPSHOT_FORMAT: &str = "swoosh.snapshot.v1";

/// A snapshot as decoded. Field order and names are the encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub format: String,
    /// Index of the last record applied to `state` (0: genesis state).
    pub index: u64,
    pub hlc: Option<Hlc>,
    /// Hash of record `index` (the genesis hash when `index` is 0).
    pub head_record: Hash,
    pub root_hash: Hash,
    pub state: NodeState,
}

/// The same encoding as [`Snapshot`], borrowing the state (no clone).
#[derive(Serialize)]
struct SnapshotRef<'a> {
    format: &'a str,
    index: u64,
    hlc: Option<Hlc>,
    head_record: Hash,
    root_hash: Hash,
    state: &'a NodeState,
}

/// When to snapshot and how many to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Snapshot after this many records since the last one (0: only on demand,
    /// e.g. the reducer's `ScheduleSnapshot` at REVERB).
    pub every_records: u64,
    pub keep: usize,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            every_records: SNAPSHOT_EVERY_RECORDS_DEFAULT,
            keep: SNAPSHOTS_KEEP_DEFAULT,
        }
    }
}

impl SnapshotPolicy {
    /// Is a snapshot due at `index`, the last one having been taken at `last_snapshot`?
    pub fn due(&self, last_snapshot: u64, index: u64) -> bool {
        self.every_records > 0 && index >= last_snapshot.saturating_add(self.every_records)
    }
}

/// Why a stored snapshot cannot be used.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SnapshotFault {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("unknown snapshot format {0:?} (this build reads {SNAPSHOT_FORMAT:?})")]
    Format(String),
    #[error("stored under index {key} but says index {index}")]
    Key { key: u64, index: u64 },
    #[error("its header and its state disagree on {0}")]
    Header(&'static str),
    #[error("project {project:?}: the stored project hash differs from the hash of its document")]
    ProjectHash { project: String },
    #[error("belongs to genesis {got}, this node runs genesis {expected}")]
    Genesis { expected: Hash, got: Hash },
    #[error("does not join the WAL: record {index} {detail}")]
    Wal { index: u64, detail: String },
}

impl SnapshotFault {
    /// Whether the snapshot's own bytes are damaged (a bad frame, a header
    /// or project hash that disagrees with its state, a wrong key): nothing
    /// can use it, and it only crowds the store. The other faults leave a
    /// sound snapshot that this node cannot use: a newer build's format
    /// (kept for a binary rolled forward again), another genesis's, one
    /// beyond the end of the log or off its chain (evidence of what
    /// happened, for an operator to look at).
    pub fn is_damage(&self) -> bool {
        match self {
            // A frame version above the ones this build reads, or a payload
            // that matches its hash but does not decode: a newer build's
            // snapshot (after a binary rolled back), sound bytes this one
            // cannot use. A version byte at or below ours that this build
            // refuses (0, say) is a damaged header: the hash does not cover it.
            SnapshotFault::Frame(FrameError::Version { got }) => {
                *got <= crate::frame::FRAME_VERSION_LZ4
            }
            SnapshotFault::Frame(FrameError::Decode(_)) => false,
            SnapshotFault::Frame(_)
            | SnapshotFault::Key { .. }
            | SnapshotFault::Header(_)
            | SnapshotFault::ProjectHash { .. } => true,
            SnapshotFault::Format(_)
            | SnapshotFault::Genesis { .. }
            | SnapshotFault::Wal { .. } => false,
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("snapshot {index} at {location} is unusable ({reason}); recovery skips it for an older usable snapshot (or, on a log that starts at record 1, a replay from genesis): take a new snapshot with `swoosh snapshot create --dir <node dir>` once the node is recovered. On a compacted log the snapshot at its WAL base is the only proof of the archived records: if that one is damaged, rebuild it from the archives with `swoosh snapshot rebuild-base`")]
    Corrupt {
        location: String,
        index: u64,
        reason: SnapshotFault,
    },
    #[error("no snapshot {index} at {location}; `swoosh snapshot list --dir <node dir>` shows the stored ones")]
    Missing { location: String, index: u64 },
    #[error("the node state at index {index} could not be encoded: {detail}")]
    Encode { index: u64, detail: String },
    #[error("the snapshot at index {index} encodes to {bytes} bytes; at most {SNAPSHOT_BYTES_MAX} are allowed: prune the idempotency index or raise the limit deliberately")]
    TooLarge { index: u64, bytes: usize },
    #[error("the node state at index {index} is inconsistent ({reason}); refusing to snapshot it: this is a bug, restart the node from its WAL")]
    Inconsistent { index: u64, reason: SnapshotFault },
    #[error("snapshot {index} read back from {location} hashes to {got}, not the {written} just written: the store is returning wrong data; check the disk")]
    ReadBack {
        location: String,
        index: u64,
        written: Hash,
        got: Hash,
    },
}

/// What a snapshot write did, for metrics and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub index: u64,
    pub hash: Hash,
    pub bytes: usize,
    /// Older snapshots deleted to keep `keep`.
    pub deleted: Vec<u64>,
    pub elapsed: Duration,
}

/// Check a state's internal consistency: every project's stored hash is the
/// hash of its document, and the header fields match the state.
pub fn check_state(
    snap_index: u64,
    hlc: Option<Hlc>,
    head: Hash,
    root: Hash,
    state: &NodeState,
) -> Result<(), SnapshotFault> {
    if state.index != snap_index {
        return Err(SnapshotFault::Header("index"));
    }
    if state.hlc != hlc {
        return Err(SnapshotFault::Header("hlc"));
    }
    if state.head_record != head {
        return Err(SnapshotFault::Header("head_record"));
    }
    for (id, e) in &state.projects {
        if e.state.hash() != e.hash {
            return Err(SnapshotFault::ProjectHash {
                project: id.clone(),
            });
        }
    }
    if state.root_hash() != root {
        return Err(SnapshotFault::Header("root_hash"));
    }
    Ok(())
}

/// Encode and frame a snapshot of `node` (checked first). Returns the frame
/// and the snapshot's hash. May run on any thread; [`put_snapshot`] stores it.
pub fn encode_snapshot(node: &NodeState) -> Result<(Vec<u8>, Hash), SnapshotError> {
    let index = node.index;
    let root = node.root_hash();
    check_state(index, node.hlc, node.head_record, root, node)
        .map_err(|reason| SnapshotError::Inconsistent { index, reason })?;
    let r = SnapshotRef {
        format: SNAPSHOT_FORMAT,
        index,
        hlc: node.hlc,
        head_record: node.head_record,
        root_hash: root,
        state: node,
    };
    let payload = swoosh_core::cbor::to_canonical(&r).map_err(|e| SnapshotError::Encode {
        index,
        detail: e.to_string(),
    })?;
    if payload.len() > SNAPSHOT_BYTES_MAX {
        return Err(SnapshotError::TooLarge {
            index,
            bytes: payload.len(),
        });
    }
    Ok(frame::seal(FrameKind::Snapshot, &payload))
}

/// Verify on write (STYLE 6): the snapshot stored at `index` reads back
/// intact and hashes to `written`.
pub(crate) fn check_read_back<S: LogStore + ?Sized>(
    store: &S,
    index: u64,
    written: Hash,
) -> Result<(), SnapshotError> {
    let back = stored_snapshot(store, index)?;
    let got = match frame::open(FrameKind::Snapshot, &back, SNAPSHOT_BYTES_MAX) {
        Ok((h, _)) => h,
        // Bytes that came back other than written: a read-back mismatch.
        Err(FrameError::HashMismatch { computed, .. }) => computed,
        Err(reason) => {
            return Err(SnapshotError::Corrupt {
                location: store.location(),
                index,
                reason: reason.into(),
            })
        }
    };
    if got != written {
        return Err(SnapshotError::ReadBack {
            location: store.location(),
            index,
            written,
            got,
        });
    }
    Ok(())
}

/// Store an encoded snapshot at `index`, prune older ones in the same commit
/// (see [`to_prune`]), then read it back and check its hash.
pub fn put_snapshot<S: LogStore + ?Sized>(
    store: &mut S,
    index: u64,
    frame_bytes: Vec<u8>,
    hash: Hash,
    keep: usize,
) -> Result<SnapshotInfo, SnapshotError> {
    let t0 = Instant::now();
    let keep = keep.clamp(1, SNAPSHOTS_KEEP_MAX);
    let bytes = frame_bytes.len();
    let deleted = to_prune(&*store, index, keep)?;
    debug_assert!(
        !deleted.contains(&index),
        "pruning never deletes the snapshot written"
    );
    let mut b = Batch::new();
    b.put(Space::Snapshots, index_key(index).to_vec(), frame_bytes);
    for d in &deleted {
        b.delete(Space::Snapshots, index_key(*d).to_vec());
    }
    store.commit(b)?;
    // Verify on write: what the store returns must hash to what we wrote.
    check_read_back(&*store, index, hash)?;
    Ok(SnapshotInfo {
        index,
        hash,
        bytes,
        deleted,
        elapsed: t0.elapsed(),
    })
}

/// The snapshots to delete when the one at `index` is written, keeping
/// `keep` usable ones (`docs/wal-format.md` §5):
/// - the snapshot written is kept and counts toward `keep`;
/// - so do the `keep - 1` newest other *usable* snapshots: intact and
///   joined to the record at their index, as recovery requires. An unusable
///   snapshot does not count, so a damaged one never pushes out a good one;
/// - every snapshot older than the oldest of those is deleted (recovery
///   would never reach it: a newer usable one exists). Unusable snapshots
///   newer than that stay: they cost nothing recovery needs, and may be a
///   newer build's format or evidence of a fault;
/// - with fewer than `keep - 1` other usable snapshots nothing is deleted;
/// - a snapshot newer than the one written is never deleted by it;
/// - the snapshot at the WAL base is the only proof of the records before
///   it: pinned, never deleted, not counted.
fn to_prune<S: LogStore + ?Sized>(
    store: &S,
    index: u64,
    keep: usize,
) -> Result<Vec<u64>, SnapshotError> {
    let base = crate::base::wal_base(store)?;
    let pinned = base.map(|b| b.index);
    let written_counts = Some(index) != pinned;
    let want = keep.saturating_sub(usize::from(written_counts));
    let mut others = store.list_snapshots()?;
    others.retain(|i| *i != index && Some(*i) != pinned);
    others.sort_unstable_by(|a, b| b.cmp(a));
    let last = crate::base::log_end(store)?;
    let mut oldest_kept = written_counts.then_some(index);
    let mut found = 0;
    for &i in &others {
        if found == want {
            break;
        }
        if usable(store, i, last, base)? {
            found += 1;
            oldest_kept = Some(oldest_kept.map_or(i, |o| o.min(i)));
        }
    }
    if found < want {
        return Ok(vec![]);
    }
    let Some(floor) = oldest_kept else {
        return Ok(vec![]);
    };
    // Newer than the floor are only the usable snapshots kept above, the
    // unusable ones passed on the way, and (with `keep` 1) snapshots newer
    // than the one written: none of them is deleted.
    let mut deleted: Vec<u64> = others.into_iter().filter(|i| *i < floor).collect();
    deleted.sort_unstable();
    Ok(deleted)
}

/// Could recovery start from the stored snapshot `idx`? Intact, within the
/// log, and joined to it: the record at `idx` (the base's hash at the WAL
/// base, the genesis at 0) hashes to the snapshot's `head_record`.
fn usable<S: LogStore + ?Sized>(
    store: &S,
    idx: u64,
    last: u64,
    base: Option<crate::base::WalBase>,
) -> Result<bool, SnapshotError> {
    // The frame hash proves the bytes are the ones written, and the state in
    // them was checked in full when it was written (and is again by
    // recovery); decoding only the head keeps pruning from re-hashing every
    // project of K-1 snapshots at each write.
    let head = match read_snapshot_head(store, idx) {
        Ok(h) => h,
        Err(SnapshotError::Store(e)) => return Err(e.into()),
        Err(_) => return Ok(false),
    };
    if idx > last || base.is_some_and(|b| idx < b.index) {
        return Ok(false);
    }
    let joined_to = if idx == 0 {
        head.state_genesis.genesis_hash
    } else if let Some(b) = base.filter(|b| b.index == idx) {
        b.hash
    } else {
        match crate::wal::read_record(store, idx) {
            Ok(v) => v.hash,
            Err(crate::wal::ReadError::Store(e)) => return Err(e.into()),
            Err(_) => return Ok(false),
        }
    };
    Ok(joined_to == head.head_record)
}

/// The header fields of a stored [`Snapshot`], read without building its
/// state (serde skips the rest): for pruning and for `/health`, which must
/// not pay a whole decode. Only the frame hash vouches for them; the state
/// itself is checked by [`decode_snapshot`].
#[derive(Clone, Debug, Deserialize)]
pub struct SnapshotHead {
    pub format: String,
    pub index: u64,
    pub hlc: Option<Hlc>,
    pub head_record: Hash,
    #[serde(rename = "state")]
    state_genesis: GenesisHashOnly,
}

/// The stored frame of snapshot `index`, or [`SnapshotError::Missing`].
fn stored_snapshot<S: LogStore + ?Sized>(store: &S, index: u64) -> Result<Vec<u8>, SnapshotError> {
    store
        .get_snapshot(index)?
        .ok_or_else(|| SnapshotError::Missing {
            location: store.location(),
            index,
        })
}

/// Read snapshot `index`'s header (frame checked, state not decoded).
pub fn read_snapshot_head<S: LogStore + ?Sized>(
    store: &S,
    index: u64,
) -> Result<SnapshotHead, SnapshotError> {
    let bytes = stored_snapshot(store, index)?;
    let corrupt = |reason: SnapshotFault| SnapshotError::Corrupt {
        location: store.location(),
        index,
        reason,
    };
    let (_, head) =
        frame::open_decode::<SnapshotHead>(FrameKind::Snapshot, &bytes, SNAPSHOT_BYTES_MAX)
            .map_err(|e| corrupt(e.into()))?;
    if head.format != SNAPSHOT_FORMAT {
        return Err(corrupt(SnapshotFault::Format(head.format)));
    }
    if head.index != index {
        return Err(corrupt(SnapshotFault::Key {
            key: index,
            index: head.index,
        }));
    }
    Ok(head)
}

/// Of the state, only its genesis hash (the join of a snapshot at index 0).
#[derive(Clone, Debug, Deserialize)]
struct GenesisHashOnly {
    genesis_hash: Hash,
}

/// Snapshot `node` now, keeping `keep` usable snapshots (see [`to_prune`]).
pub fn write_snapshot<S: LogStore + ?Sized>(
    store: &mut S,
    node: &NodeState,
    keep: usize,
) -> Result<SnapshotInfo, SnapshotError> {
    let t0 = Instant::now();
    let (frame_bytes, hash) = encode_snapshot(node)?;
    let mut info = put_snapshot(store, node.index, frame_bytes, hash, keep)?;
    info.elapsed = t0.elapsed();
    Ok(info)
}

/// Decode and check stored snapshot bytes (frame hash, format, key, header
/// against state, project hashes, root hash).
pub fn decode_snapshot(key: u64, bytes: &[u8]) -> Result<(Hash, Snapshot), SnapshotFault> {
    let (hash, snap): (Hash, Snapshot) =
        frame::open_decode(FrameKind::Snapshot, bytes, SNAPSHOT_BYTES_MAX)?;
    if snap.format != SNAPSHOT_FORMAT {
        return Err(SnapshotFault::Format(snap.format));
    }
    if snap.index != key {
        return Err(SnapshotFault::Key {
            key,
            index: snap.index,
        });
    }
    check_state(
        snap.index,
        snap.hlc,
        snap.head_record,
        snap.root_hash,
        &snap.state,
    )?;
    Ok((hash, snap))
}

/// Read and check snapshot `index`.
pub fn read_snapshot<S: LogStore + ?Sized>(
    store: &S,
    index: u64,
) -> Result<(Hash, Snapshot), SnapshotError> {
    let bytes = stored_snapshot(store, index)?;
    decode_snapshot(index, &bytes).map_err(|reason| SnapshotError::Corrupt {
        location: store.location(),
        index,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A starting node deletes the snapshots `is_damage` names. A newer
    /// build's snapshot (a frame version or a payload this build cannot
    /// decode, though it matches its hash) is kept for the binary that
    /// wrote it: a rollback must not destroy it.
    #[test]
    fn only_damaged_bytes_count_as_damage() {
        let h = Hash::of_bytes(b"x");
        for sound in [
            SnapshotFault::Frame(FrameError::Version {
                got: crate::frame::FRAME_VERSION_LZ4 + 1,
            }),
            SnapshotFault::Frame(FrameError::Decode("unknown variant".into())),
            SnapshotFault::Format("swoosh-snapshot/v9".into()),
            SnapshotFault::Genesis {
                expected: h,
                got: h,
            },
            SnapshotFault::Wal {
                index: 9,
                detail: "is beyond the end of the log".into(),
            },
        ] {
            assert!(!sound.is_damage(), "{sound}");
        }
        for damaged in [
            SnapshotFault::Frame(FrameError::HashMismatch {
                stored: h,
                computed: h,
            }),
            SnapshotFault::Frame(FrameError::TooShort { len: 3 }),
            SnapshotFault::Frame(FrameError::Version { got: 0 }),
            SnapshotFault::Key { key: 4, index: 7 },
            SnapshotFault::Header("index"),
            SnapshotFault::ProjectHash {
                project: "p".into(),
            },
        ] {
            assert!(damaged.is_damage(), "{damaged}");
        }
    }
}
