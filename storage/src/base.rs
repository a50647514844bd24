//! The WAL base: a log that starts after record `B`, whose hash `H` is
//! vouched for by the snapshot at `B`.
//!
//! A replication follower that joins late receives the leader's snapshot at
//! `B` (a `NodeState` with `index = B` and `head_record = H`) instead of
//! records `1..=B`, then the records after `B`. [`install_snapshot`] stores
//! it in ONE commit: the whole WAL is cut, derived index entries of the cut
//! records are dropped (the snapshot's own idempotency index is written in
//! their place), every other snapshot is deleted, the snapshot is written at
//! `B`, and `meta` `wal_base` = `"B H"` is recorded.
//!
//! Rules (also in `docs/wal-format.md` §1 and §9):
//! - [`crate::LogStore::last_index`] is still the last *record* (0 for an
//!   empty WAL); the log's end is [`log_end`] = max(last record, B), and the
//!   first record a based log can hold is [`first_index`] = B + 1.
//! - The first append into an empty WAL with a base is at B + 1 and its
//!   `prev_hash` must be H (as record 1's must be the genesis hash). Any other
//!   gap is refused (`StoreError::NotContiguous`).
//! - Truncation below B is refused (`StoreError::BelowWalBase`); repair never
//!   cuts below B.
//! - Recovery, verify and index rebuilds start from the snapshot at B (or a
//!   newer usable one for recovery) and replay B + 1…; with no usable
//!   snapshot at or after B they fail with `RecoveryError::Unproven`.
//! - Records at or below B read as `ReadError::BelowBase`, not missing.
//! - The snapshot at B is pinned: keep-last-K pruning skips it (it does not
//!   count against K) and the store refuses to delete it while it is the
//!   base. The base moves by installing another snapshot, or forward by a
//!   compaction (`crate::compact`).
//! - `meta` `base_derived` = `"I D"` counts the idempotency entries (I) and
//!   decision records (D) the store holds for records at or below B (the
//!   snapshot's window after an install; every kept entry after a
//!   compaction), so the leader's start-up audit can still expect exact
//!   counts: I + records after B, D + records after B.

use crate::frame::{self, FrameKind};
use crate::snapshot::{encode_snapshot, SnapshotError};
use crate::store::{
    decode_wal_base, encode_wal_base, index_key, Batch, LogStore, Space, StoreError, META_WAL_BASE,
};
use crate::wal::{
    check_meta, idem_key, put_missing_meta, read_record, MetaError, ReadError, IDEM_ENTRY_BYTES_MAX,
};
use std::time::{Duration, Instant};
use swoosh_core::state::NodeState;
use swoosh_core::Hash;

/// Where a based log starts: record `index` is held only by the snapshot at
/// `index`, and hashes to `hash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalBase {
    pub index: u64,
    pub hash: Hash,
}

/// `meta` key of [`BaseDerived`].
pub const META_BASE_DERIVED: &str = "base_derived";

/// Derived entries held for records at or below the WAL base (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BaseDerived {
    pub idem: u64,
    pub decisions: u64,
}

impl BaseDerived {
    pub(crate) fn encode(&self) -> Vec<u8> {
        format!("{} {}", self.idem, self.decisions).into_bytes()
    }
    fn decode(v: &[u8]) -> Option<BaseDerived> {
        let s = std::str::from_utf8(v).ok()?;
        let (i, d) = s.split_once(' ')?;
        Some(BaseDerived {
            idem: i.parse().ok()?,
            decisions: d.parse().ok()?,
        })
    }
}

/// The stored [`BaseDerived`]; `None` when absent (a store based before it
/// was kept) or unreadable (the audit then falls back to bounds).
pub fn base_derived<S: LogStore + ?Sized>(store: &S) -> Result<Option<BaseDerived>, StoreError> {
    Ok(store
        .get_meta(META_BASE_DERIVED)?
        .and_then(|v| BaseDerived::decode(&v)))
}

/// Count the derived entries naming a record at or below `base` (one scan
/// of both spaces; entries that do not decode are not counted).
pub(crate) fn count_derived_through<S: LogStore + ?Sized>(
    store: &S,
    base: u64,
) -> Result<BaseDerived, StoreError> {
    let mut d = BaseDerived::default();
    crate::recovery::for_each_entry(store, Space::Idem, &mut |_, v| {
        if crate::recovery::decode_idem(v).is_some_and(|e| e.index <= base) {
            d.idem += 1;
        }
    })?;
    crate::recovery::for_each_entry(store, Space::Decisions, &mut |k, v| {
        if crate::recovery::decode_decision(v)
            .is_some_and(|x| x.record().index <= base && x.hash().0[..] == k[..])
        {
            d.decisions += 1;
        }
    })?;
    Ok(d)
}

/// The store's WAL base (`None`: the log starts at record 1).
pub fn wal_base<S: LogStore + ?Sized>(store: &S) -> Result<Option<WalBase>, StoreError> {
    match store.get_meta(META_WAL_BASE)? {
        None => Ok(None),
        Some(v) => match decode_wal_base(&v) {
            Some((index, hash)) => Ok(Some(WalBase { index, hash })),
            None => Err(StoreError::WalBase {
                location: store.location(),
                detail: format!(
                    "the stored value {:?} is not \"<index> <hash>\"; the store is damaged: install a snapshot again or restore it from a backup",
                    String::from_utf8_lossy(&v)
                ),
            }),
        },
    }
}

/// What is wrong with the snapshot at the WAL base, if anything (`None`:
/// sound, or the log has no base). After a compaction it is the only proof
/// of the archived records: recovery starts from it whenever no newer
/// snapshot is usable, and a damaged one is written again from the
/// archives (`rebuild_base_snapshot`). Checks its frame (a hash over the
/// whole stored state), format and index, and that it ends at the base
/// record, without decoding the state: cheap enough to run after every
/// snapshot, so damage is found while the archives are at hand, not at the
/// restart that needs it.
pub fn base_snapshot_fault<S: LogStore + ?Sized>(store: &S) -> Result<Option<String>, StoreError> {
    let Some(base) = wal_base(store)? else {
        return Ok(None);
    };
    match crate::snapshot::read_snapshot_head(store, base.index) {
        Ok(head) if head.head_record == base.hash => Ok(None),
        Ok(head) => Ok(Some(format!(
            "the snapshot at the WAL base {} ends at record hash {}, not the base's {}",
            base.index, head.head_record, base.hash
        ))),
        Err(SnapshotError::Store(e)) => Err(e),
        Err(SnapshotError::Corrupt { reason, .. }) => Ok(Some(format!(
            "the snapshot at the WAL base {} is damaged: {reason}",
            base.index
        ))),
        Err(SnapshotError::Missing { .. }) => Ok(Some(format!(
            "the snapshot at the WAL base {} is missing",
            base.index
        ))),
        Err(e) => Ok(Some(format!(
            "the snapshot at the WAL base {}: {e}",
            base.index
        ))),
    }
}

/// The index of the first record the log can hold: base + 1, or 1.
pub fn first_index<S: LogStore + ?Sized>(store: &S) -> Result<u64, StoreError> {
    Ok(wal_base(store)?.map_or(1, |b| b.index + 1))
}

/// The index of the last entry of the log: max(last WAL record, base).
pub fn log_end<S: LogStore + ?Sized>(store: &S) -> Result<u64, StoreError> {
    let last = store.last_index()?;
    Ok(wal_base(store)?.map_or(last, |b| b.index.max(last)))
}

/// The chain anchor of the log: `(base index, base hash)`, or `(0, genesis)`.
pub fn anchor<S: LogStore + ?Sized>(
    store: &S,
    genesis_hash: Hash,
) -> Result<(u64, Hash), StoreError> {
    Ok(wal_base(store)?.map_or((0, genesis_hash), |b| (b.index, b.hash)))
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum InstallError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("the snapshot to install belongs to genesis {got}, this node runs genesis {expected}: fetch the snapshot from this cluster's leader")]
    WrongGenesis { expected: Hash, got: Hash },
    #[error("the snapshot to install names genesis hash {claimed} but its genesis document hashes to {computed}: the snapshot is damaged, fetch it again")]
    GenesisHash { claimed: Hash, computed: Hash },
    #[error("a snapshot at index 0 is the genesis state: there is nothing to install")]
    Empty,
    #[error("{location} already holds the log up to index {held}, beyond the snapshot's {index}: installing it would throw away newer accepted records; catch up from index {} instead", held + 1)]
    HoldsNewer {
        location: String,
        index: u64,
        held: u64,
    },
    #[error("{location} holds a record {index} hashing to {held}, but the snapshot says record {index} is {snapshot}: this node's log diverges from the leader's; do not install over it, investigate (`swoosh wal verify`) and resync the node from scratch")]
    Conflict {
        location: String,
        index: u64,
        held: Hash,
        snapshot: Hash,
    },
    #[error("cannot compare the snapshot with the held record {index}: {source}; repair the log (`swoosh wal repair`) and install again")]
    Held { index: u64, source: ReadError },
    #[error("cannot encode the idempotency entry {project:?}/{key:?} of the snapshot: {detail}")]
    Encode {
        project: String,
        key: String,
        detail: String,
    },
    #[error("the snapshot is installed but the WAL tail cannot be read back: {0}; reopen the WAL writer")]
    Tail(ReadError),
    #[error("after installing, {location} reads back {got:?} as its WAL base instead of {expected:?}: the store is returning wrong data; check the disk")]
    ReadBack {
        location: String,
        expected: WalBase,
        got: Option<WalBase>,
    },
}

/// Add a put of every idempotency entry of `node`'s state to `b` (what the
/// idempotency space holds for the records at or below a WAL base).
pub(crate) fn put_snapshot_idem(node: &NodeState, b: &mut Batch) -> Result<u64, InstallError> {
    let mut n = 0u64;
    for (project, keys) in node.idem.iter() {
        for (key, entry) in keys {
            let (k, v) =
                idem_entry_kv(project, key, entry).map_err(|detail| InstallError::Encode {
                    project: project.clone(),
                    key: key.clone(),
                    detail,
                })?;
            b.put(Space::Idem, k, v);
            n += 1;
        }
    }
    Ok(n)
}

/// The `idem` space's key and stored frame of `entry` for `(project, key)`
/// (the entry's canonical encoding, at most `IDEM_ENTRY_BYTES_MAX`).
pub(crate) fn idem_entry_kv(
    project: &str,
    key: &str,
    entry: &swoosh_core::state::IdemEntry,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let k = idem_key(project, key)?;
    let payload = swoosh_core::cbor::to_canonical(entry).map_err(|e| e.to_string())?;
    if payload.len() > IDEM_ENTRY_BYTES_MAX {
        return Err(format!(
            "{} bytes exceeds {IDEM_ENTRY_BYTES_MAX}",
            payload.len()
        ));
    }
    Ok((k, frame::seal(FrameKind::IdemEntry, &payload).0))
}

/// What [`install_snapshot`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallReport {
    pub base: WalBase,
    /// Hash of the stored snapshot frame.
    pub snapshot_hash: Hash,
    pub snapshot_bytes: usize,
    /// WAL records removed (all of them).
    pub cut_records: u64,
    /// Other snapshots removed.
    pub removed_snapshots: Vec<u64>,
    /// Idempotency entries and decisions of the cut records removed.
    pub removed_derived: u64,
    /// Idempotency entries written from the snapshot's state.
    pub idem_entries: u64,
    pub elapsed: Duration,
}

/// Make `node` (a verified snapshot of the leader at `node.index`) the start
/// of this store's log, in one commit: either the old store or the new one
/// survives a crash. See the module docs for the rules; refuses (changing
/// nothing) when the store holds the log beyond `node.index`, when it holds
/// record `node.index` (or a base there) with another hash, or when the
/// genesis differs from `genesis_hash` (the node's, or the store's).
///
/// The checks read the store before the commit, so nothing else may append
/// meanwhile: run it through the single writer
/// ([`crate::WalWriter::install_snapshot`]) or with the writer closed.
pub fn install_snapshot<S: LogStore + ?Sized>(
    store: &mut S,
    node: &NodeState,
    genesis_hash: Hash,
) -> Result<InstallReport, InstallError> {
    let t0 = Instant::now();
    if node.genesis_hash != genesis_hash {
        return Err(InstallError::WrongGenesis {
            expected: genesis_hash,
            got: node.genesis_hash,
        });
    }
    let computed = node.genesis.hash().map_err(|e| {
        InstallError::Snapshot(SnapshotError::Encode {
            index: node.index,
            detail: format!("its genesis cannot be hashed: {e}"),
        })
    })?;
    if computed != node.genesis_hash {
        return Err(InstallError::GenesisHash {
            claimed: node.genesis_hash,
            computed,
        });
    }
    check_meta(&*store, genesis_hash)?;
    let index = node.index;
    if index == 0 {
        return Err(InstallError::Empty);
    }
    let old_base = wal_base(&*store)?;
    let last = store.last_index()?;
    let held = old_base.map_or(last, |b| b.index.max(last));
    if held > index {
        return Err(InstallError::HoldsNewer {
            location: store.location(),
            index,
            held,
        });
    }
    if held == index {
        let held_hash = if last == index {
            read_record(&*store, index)
                .map_err(|source| InstallError::Held { index, source })?
                .hash
        } else {
            // `held == index > last`: the base itself is at `index`.
            old_base.map_or(genesis_hash, |b| b.hash)
        };
        if held_hash != node.head_record {
            return Err(InstallError::Conflict {
                location: store.location(),
                index,
                held: held_hash,
                snapshot: node.head_record,
            });
        }
    }
    // Encoded and checked exactly as `write_snapshot` does.
    let (frame_bytes, snapshot_hash) = encode_snapshot(node)?;
    let snapshot_bytes = frame_bytes.len();

    let mut b = Batch::new();
    if old_base.is_some() {
        // Lift the old base first so the truncation below it is allowed.
        b.delete(Space::Meta, META_WAL_BASE.as_bytes().to_vec());
    }
    let cut_records = store.count(Space::Wal)?;
    if cut_records > 0 {
        b.truncate_wal_after(0);
    }
    let removed_snapshots: Vec<u64> = store
        .list_snapshots()?
        .into_iter()
        .filter(|i| *i != index)
        .collect();
    for s in &removed_snapshots {
        b.delete(Space::Snapshots, index_key(*s).to_vec());
    }
    b.put(Space::Snapshots, index_key(index).to_vec(), frame_bytes);
    // Every derived entry was derived from the WAL, which is cut whole.
    // Cleared whole, not key by key: a long log's derived keys would all be
    // held in memory in the batch otherwise.
    let mut removed_derived = 0u64;
    for space in [Space::Idem, Space::Decisions] {
        removed_derived += store.count(space)?;
        b.clear_space(space);
    }
    // The snapshot's own idempotency index answers lookups of records <= B.
    let idem_entries = put_snapshot_idem(node, &mut b)?;
    put_missing_meta(&*store, genesis_hash, &mut b)?;
    let base = WalBase {
        index,
        hash: node.head_record,
    };
    b.put(
        Space::Meta,
        META_WAL_BASE.as_bytes().to_vec(),
        encode_wal_base(base.index, &base.hash),
    );
    b.put(
        Space::Meta,
        META_BASE_DERIVED.as_bytes().to_vec(),
        BaseDerived {
            idem: idem_entries,
            decisions: 0,
        }
        .encode(),
    );
    store.commit(b)?;

    // Verify on write (STYLE 6): the snapshot and the base read back.
    crate::snapshot::check_read_back(&*store, index, snapshot_hash)?;
    let stored = wal_base(&*store)?;
    if stored != Some(base) {
        return Err(InstallError::ReadBack {
            location: store.location(),
            expected: base,
            got: stored,
        });
    }
    Ok(InstallReport {
        base,
        snapshot_hash,
        snapshot_bytes,
        cut_records,
        removed_snapshots,
        removed_derived,
        idem_entries,
        elapsed: t0.elapsed(),
    })
}
