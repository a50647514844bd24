//! The storage trait every backend implements, and the byte-level model it
//! stores.
//!
//! A store holds five key spaces ([`Space`]). The WAL space is keyed by the
//! record index as a big-endian `u64` (so byte order is numeric order) and is
//! only ever extended by [`Op::Append`] at `last + 1` or cut by
//! [`Op::TruncateWalAfter`]; the other spaces are plain ordered maps. A
//! [`Batch`] of operations is applied atomically by [`LogStore::commit`]: all
//! of it or none of it, and when it returns under [`Durability::Sync`] it is
//! on stable storage.
//!
//! The trait is deliberately small (openraft's storage `Suite`, redb's
//! in-memory backend): the same test suite (`tests/suite.rs`) runs against
//! every backend, including crash-and-reopen cases and a model check against
//! a `BTreeMap`. The WAL format, hashing and chain checks live above it, in
//! [`crate::wal`], and are backend independent.

use std::time::Duration;

/// Longest key any space accepts: LMDB's compiled-in maximum key size, applied
/// to every backend so they accept the same inputs.
pub const KEY_BYTES_MAX: usize = 511;
/// Largest value any space accepts (snapshots are the largest values).
pub const VALUE_BYTES_MAX: usize = 1 << 30;
/// Most entries one [`LogStore::scan`] returns; callers page with `from`.
pub const SCAN_ENTRIES_MAX: usize = 65_536;
/// A scan stops adding entries once it holds this many value bytes (it always
/// returns at least one entry if one is in range).
pub const SCAN_BYTES_MAX: usize = 64 << 20;

/// The key spaces of a store. Each is an ordered map from bytes to bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// WAL frames keyed by big-endian `u64` index; append-only at the tail.
    Wal,
    /// Snapshot frames keyed by big-endian `u64` index of the last applied record.
    Snapshots,
    /// Small metadata: UTF-8 keys (`format`, `genesis_hash`).
    Meta,
    /// Derived: `project 0x00 idem_key` → framed `IdemEntry`.
    Idem,
    /// Derived: 32-byte decision hash → framed decision record.
    Decisions,
}

impl Space {
    pub const ALL: [Space; 5] = [
        Space::Wal,
        Space::Snapshots,
        Space::Meta,
        Space::Idem,
        Space::Decisions,
    ];

    /// The LMDB database name and the name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Space::Wal => "wal",
            Space::Snapshots => "snapshots",
            Space::Meta => "meta",
            Space::Idem => "idem",
            Space::Decisions => "decisions",
        }
    }

    pub(crate) fn slot(self) -> usize {
        match self {
            Space::Wal => 0,
            Space::Snapshots => 1,
            Space::Meta => 2,
            Space::Idem => 3,
            Space::Decisions => 4,
        }
    }
}

impl std::fmt::Display for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// When a commit reaches stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every commit is on stable storage when `commit` returns (LMDB default
    /// flags: the data pages and then the meta page are fsynced, two
    /// `fdatasync`s per commit). The only mode for a node that replies 202.
    #[default]
    Sync,
    /// UNSAFE, for throwaway runs and benchmarks only: commits are written to
    /// the OS page cache and reach the disk whenever the OS flushes or
    /// [`LogStore::sync`] is called (LMDB `MDB_NOSYNC`). A process crash loses
    /// nothing; a machine crash or power loss loses recent commits, which a
    /// client may already have been told are durable, and may damage the
    /// database itself (LMDB reuses pages the durable meta page still
    /// points at), older records included: the frame hashes detect it.
    NoSync,
}

impl Durability {
    pub fn name(self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::NoSync => "nosync",
        }
    }
}

/// One operation of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Add a WAL entry; `index` must be exactly one past the current last.
    Append { index: u64, value: Vec<u8> },
    /// Insert or replace a value in any space but [`Space::Wal`].
    Put {
        space: Space,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Remove a key (absent keys are fine) from any space but [`Space::Wal`],
    /// where only a malformed key (not an 8-byte index: damage, never a
    /// record) may be removed, which repair does.
    Delete { space: Space, key: Vec<u8> },
    /// Remove every WAL entry with an index above `index`.
    TruncateWalAfter { index: u64 },
    /// Remove every WAL entry with an index at or below `index` (compaction,
    /// [`crate::compact`]). The same batch must make `index` the WAL base,
    /// after this op, so the cut records stay vouched for by the snapshot
    /// there; `index` must be above the current base and at most the last
    /// record.
    CutWalThrough { index: u64 },
    /// Remove every entry of a derived space ([`Space::Idem`] or
    /// [`Space::Decisions`], which the WAL can rebuild). A snapshot install
    /// uses it to drop a whole log's derived entries in one commit without
    /// listing their keys in memory.
    ClearSpace { space: Space },
}

/// Operations applied atomically, in order, by [`LogStore::commit`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
    bytes: usize,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }
    pub fn append(&mut self, index: u64, value: Vec<u8>) -> &mut Self {
        self.bytes += 8 + value.len();
        self.ops.push(Op::Append { index, value });
        self
    }
    pub fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) -> &mut Self {
        self.bytes += key.len() + value.len();
        self.ops.push(Op::Put { space, key, value });
        self
    }
    pub fn delete(&mut self, space: Space, key: Vec<u8>) -> &mut Self {
        self.bytes += key.len();
        self.ops.push(Op::Delete { space, key });
        self
    }
    pub fn truncate_wal_after(&mut self, index: u64) -> &mut Self {
        self.ops.push(Op::TruncateWalAfter { index });
        self
    }
    pub fn cut_wal_through(&mut self, index: u64) -> &mut Self {
        self.ops.push(Op::CutWalThrough { index });
        self
    }
    pub fn clear_space(&mut self, space: Space) -> &mut Self {
        self.ops.push(Op::ClearSpace { space });
        self
    }
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Key and value bytes carried by the batch.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// What one commit did, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    pub ops: usize,
    pub bytes: usize,
    /// True when the commit was on stable storage before `commit` returned.
    pub synced: bool,
    /// Wall time of the transaction including its fsyncs.
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    #[error("cannot open the store at {location}: {detail}; check that the directory exists, is writable, has free space and is on a local filesystem")]
    Open { location: String, detail: String },
    /// The store opened but refuses to serve what it holds (a damaged or
    /// missing journal, damaged bookkeeping); `detail` says what to do.
    #[error("the store at {location} refuses to open: {detail}")]
    Damaged { location: String, detail: String },
    #[error("the store at {location} is in use by another process (a node serving it, or a command reading it such as `swoosh wal verify`): stop it, then run this again")]
    InUse { location: String },
    #[error("the store at {location} is already open in this process; share the open handle (`LmdbStore` is `Clone`) instead of opening the directory twice")]
    AlreadyOpen { location: String },
    #[error("the store at {location} is full (LMDB map size {map_bytes} bytes): nothing more can be written; stop the process and start it again with a larger map (`swoosh --lmdb-map-gib N …` or SWOOSH_LMDB_MAP_GIB=N; `LmdbOptions::map_bytes` when embedding), with the disk space it needs")]
    MapFull { location: String, map_bytes: usize },
    #[error("{op} on the store at {location} failed: {detail}")]
    Backend {
        location: String,
        op: &'static str,
        detail: String,
    },
    #[error("WAL append on {location} must continue at index {expected}, got {got}; the writer's view of the log is stale: reopen the WAL writer (it reads the tail again)")]
    NotContiguous {
        location: String,
        expected: u64,
        got: u64,
    },
    #[error("WAL entries are written only by appends (got a put of a WAL key, or a delete of a WAL record's key, on {location}); use `Batch::append` or `Batch::truncate_wal_after`")]
    WalWrite { location: String },
    #[error(
        "a {space} key of {len} bytes is longer than the {KEY_BYTES_MAX} bytes a key may have"
    )]
    KeyTooLarge { space: Space, len: usize },
    #[error("a {space} value of {len} bytes is larger than the {VALUE_BYTES_MAX} bytes a value may have")]
    ValueTooLarge { space: Space, len: usize },
    #[error("the {space} space of {location} holds the key {key} ({len} bytes, hex) where an 8-byte big-endian index below 2^64-1 belongs: the store is damaged (a stray write). `swoosh wal repair --dir <node dir, which holds {location}> --keep-copy <new file> --yes` removes it after copying it to that file (without --yes it shows what it would do); with more than {MALFORMED_KEYS_MAX} such keys, restore the store from a backup")]
    BadIndexKey {
        location: String,
        space: Space,
        /// The key, in hex.
        key: String,
        len: usize,
    },
    #[error("the in-memory store {location} has crashed (fault injection); reopen it with `MemStore::crash`")]
    Crashed { location: String },
    #[error("the WAL of {location} starts after its base, record {base} (held only in the snapshot at {base}); cutting it back to record {index} would cut below the base: records at or below the base can only be replaced by installing a snapshot (`install_snapshot`)")]
    BelowWalBase {
        location: String,
        base: u64,
        index: u64,
    },
    #[error("WAL base of {location}: {detail}")]
    WalBase { location: String, detail: String },
    #[error("refusing to clear the {space} space of {location}: only the derived spaces (idem, decisions), which the WAL rebuilds, may be cleared whole")]
    NotDerived { location: String, space: Space },
}

/// One stored entry: key and value bytes.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Most malformed keys (WAL or snapshot keys that are not 8-byte indexes)
/// the store passes over at the WAL's tail when it opens, and that
/// `crate::recovery::repair` removes: a few are a stray write, more is a
/// store to restore from a backup.
pub const MALFORMED_KEYS_MAX: usize = 1024;

/// Lowercase hex of `bytes`, to name a key in a message.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The big-endian key of WAL or snapshot index `i`.
pub fn index_key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

/// The index of a big-endian `u64` key, `None` unless exactly 8 bytes and
/// below [`INDEX_MAX`] + 1. A key of `u64::MAX` is damage like a key of the
/// wrong length (no log reaches it): taken as an index, every "next index"
/// after it would overflow, and `wal repair` would loop over the log.
pub fn key_index(k: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(k)
        .ok()
        .map(u64::from_be_bytes)
        .filter(|i| *i <= INDEX_MAX)
}

/// The largest WAL or snapshot index a store holds: one below `u64::MAX`, so
/// that `index + 1` always exists.
pub const INDEX_MAX: u64 = u64::MAX - 1;

/// The `meta` key of the WAL base: `"<index> <hash>"` (decimal index, one
/// space, the hash's `blake3:<64 hex>` text), e.g. `"1200 blake3:ab…"`.
/// Present only on a log that starts after record 1 (see `crate::base`).
pub const META_WAL_BASE: &str = "wal_base";

/// Encode a WAL base as its `meta` value.
pub fn encode_wal_base(index: u64, hash: &swoosh_core::Hash) -> Vec<u8> {
    format!("{index} {hash}").into_bytes()
}

/// Decode a `meta` `wal_base` value; `None` if it is not `"<index ≥ 1> <hash>"`.
pub fn decode_wal_base(v: &[u8]) -> Option<(u64, swoosh_core::Hash)> {
    let s = std::str::from_utf8(v).ok()?;
    let (i, h) = s.split_once(' ')?;
    if i.is_empty() || !i.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index: u64 = i.parse().ok()?;
    let hash = h.parse().ok()?;
    (1..=INDEX_MAX).contains(&index).then_some((index, hash))
}

/// The base index a stored `wal_base` value names (0 when absent), as the
/// backends need it to validate a batch.
pub(crate) fn base_index(location: &str, stored: Option<&[u8]>) -> Result<u64, StoreError> {
    match stored {
        None => Ok(0),
        Some(v) => decode_wal_base(v)
            .map(|(i, _)| i)
            .ok_or_else(|| StoreError::WalBase {
                location: location.to_string(),
                detail: format!(
                    "the stored value {:?} is not \"<index> <hash>\"; the store is damaged: install a snapshot again or restore it from a backup",
                    String::from_utf8_lossy(v)
                ),
            }),
    }
}

/// Check a batch before any of it is applied, so a refused batch changes
/// nothing. `wal_last` is the last WAL index before the batch (0 = empty),
/// `base` the WAL base before it (0 = none: the log starts at record 1).
///
/// Base rules (in batch order): an append continues at `max(last, base) + 1`;
/// a truncation below the base is refused; a put of `meta` `wal_base` must
/// hold a valid base and is refused unless the WAL is empty at that point of
/// the batch; the snapshot at the base cannot be deleted while it is the base
/// (delete `wal_base` first, in the same batch, to move it). A cut of the
/// WAL's start ([`Op::CutWalThrough`] `c`) needs `base < c <= last`, allows
/// the base to be set to exactly `c` while records remain after it, and the
/// batch must end with the base at `c`.
pub(crate) fn validate(
    location: &str,
    ops: &[Op],
    mut wal_last: u64,
    mut base: u64,
) -> Result<(), StoreError> {
    let base_err = |detail: String| StoreError::WalBase {
        location: location.to_string(),
        detail,
    };
    let mut cut_through: Option<u64> = None;
    let start_base = base;
    for op in ops {
        match op {
            Op::Append { index, value } => {
                let expected = wal_last.max(base) + 1;
                if *index != expected {
                    return Err(StoreError::NotContiguous {
                        location: location.to_string(),
                        expected,
                        got: *index,
                    });
                }
                if value.len() > VALUE_BYTES_MAX {
                    return Err(StoreError::ValueTooLarge {
                        space: Space::Wal,
                        len: value.len(),
                    });
                }
                wal_last = *index;
            }
            Op::Put { space, key, value } => {
                if *space == Space::Wal {
                    return Err(StoreError::WalWrite {
                        location: location.to_string(),
                    });
                }
                check_key(*space, key)?;
                if value.len() > VALUE_BYTES_MAX {
                    return Err(StoreError::ValueTooLarge {
                        space: *space,
                        len: value.len(),
                    });
                }
                if *space == Space::Meta && key == META_WAL_BASE.as_bytes() {
                    let Some((i, _)) = decode_wal_base(value) else {
                        return Err(base_err(format!(
                            "refusing to store {:?}: a base is \"<index ≥ 1> <blake3 hash>\"",
                            String::from_utf8_lossy(value)
                        )));
                    };
                    if wal_last != 0 && cut_through != Some(i) {
                        return Err(base_err(format!(
                            "refusing to set the base to {i} while the WAL holds records (last {wal_last}): truncate the whole WAL in the same batch first"
                        )));
                    }
                    base = i;
                }
            }
            Op::Delete { space, key } => {
                // A WAL key that is not an 8-byte index holds no record (no
                // append can write one): deleting it, as repair does, never
                // removes a record, so only those deletes are allowed.
                if *space == Space::Wal && key_index(key).is_some() {
                    return Err(StoreError::WalWrite {
                        location: location.to_string(),
                    });
                }
                check_key(*space, key)?;
                if *space == Space::Meta && key == META_WAL_BASE.as_bytes() {
                    base = 0;
                }
                if *space == Space::Snapshots && base > 0 && key_index(key) == Some(base) {
                    return Err(base_err(format!(
                        "refusing to delete the snapshot at the base {base}: it is the only proof of records 1..={base}"
                    )));
                }
            }
            Op::TruncateWalAfter { index } => {
                if *index < base {
                    return Err(StoreError::BelowWalBase {
                        location: location.to_string(),
                        base,
                        index: *index,
                    });
                }
                wal_last = wal_last.min(*index)
            }
            Op::CutWalThrough { index } => {
                // Against the base the batch started with too: deleting the
                // base first must not let a cut move it backwards.
                if *index <= base.max(start_base) || *index > wal_last {
                    return Err(base_err(format!(
                        "refusing to cut the WAL through {index}: a cut must end above the base ({}) and at or below the last record ({wal_last})",
                        base.max(start_base)
                    )));
                }
                if cut_through.is_some() {
                    return Err(base_err(
                        "refusing a batch that cuts the WAL's start twice".into(),
                    ));
                }
                cut_through = Some(*index);
            }
            Op::ClearSpace { space } => {
                if !matches!(space, Space::Idem | Space::Decisions) {
                    return Err(StoreError::NotDerived {
                        location: location.to_string(),
                        space: *space,
                    });
                }
            }
        }
    }
    if let Some(c) = cut_through {
        if base != c {
            return Err(base_err(format!(
                "refusing to cut the WAL through {c} without making {c} the base in the same batch (the base would be {base}): the cut records would be vouched for by nothing"
            )));
        }
    }
    Ok(())
}

pub(crate) fn check_key(space: Space, key: &[u8]) -> Result<(), StoreError> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(StoreError::KeyTooLarge {
            space,
            len: key.len(),
        });
    }
    Ok(())
}

/// How much of a store's capacity is in use: what the metrics watch so an
/// operator raises the capacity (`swoosh … --lmdb-map-gib`) before commits
/// start failing with [`StoreError::MapFull`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreUsage {
    /// Bytes of the store's pages in use (free pages inside included).
    pub used_bytes: u64,
    /// Bytes it may grow to.
    pub capacity_bytes: u64,
}

/// A durable, ordered, atomic key-value store with an append-only WAL space.
///
/// Reads take `&self`, writes `&mut self`. Every method reports operating
/// errors as [`StoreError`] and never panics on stored bytes.
pub trait LogStore {
    /// Where the store lives, for messages (a directory, or `memory:<name>`).
    fn location(&self) -> String;
    fn durability(&self) -> Durability;

    /// Apply `batch` atomically. Under [`Durability::Sync`] the batch is on
    /// stable storage when this returns `Ok`. A refused batch changes nothing.
    fn commit(&mut self, batch: Batch) -> Result<CommitInfo, StoreError>;

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Entries with `from <= key < to` (`to = None`: no upper bound), in key
    /// order, at most `limit` (capped at [`SCAN_ENTRIES_MAX`]) and stopping
    /// early past [`SCAN_BYTES_MAX`] value bytes. Page on with the last key.
    fn scan(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError>;

    /// The entry with the greatest key.
    fn last(&self, space: Space) -> Result<Option<KeyValue>, StoreError>;

    fn count(&self, space: Space) -> Result<u64, StoreError>;

    /// How full the store is, for a backend with a capacity (`None`: no
    /// such limit, as in memory).
    fn usage(&self) -> Option<StoreUsage> {
        None
    }

    /// Another handle on the same store, for a second thread that commits
    /// beside this handle's owner (a follower's snapshots and compaction run
    /// beside its WAL writer), or `None` for a backend without such handles:
    /// the caller then does that work on its own thread.
    fn concurrent_handle(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }

    /// Force everything committed so far onto stable storage (a no-op under
    /// [`Durability::Sync`], where it is already there).
    fn sync(&mut self) -> Result<(), StoreError>;

    /// Replace a stored value with no check at all, in any space, WAL
    /// included. For fault-injection tests and the simulator only: it is how
    /// they corrupt a record or a snapshot on purpose.
    fn overwrite_raw(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StoreError>;

    // ---- WAL helpers ------------------------------------------------------

    /// Append `(index, frame)` entries in one atomic commit.
    fn append(&mut self, entries: Vec<(u64, Vec<u8>)>) -> Result<CommitInfo, StoreError> {
        let mut b = Batch::new();
        for (i, v) in entries {
            b.append(i, v);
        }
        self.commit(b)
    }

    /// WAL entries `from..=to`, at most `limit` of them (see [`LogStore::scan`]).
    fn read_range(
        &self,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        if from > to {
            return Ok(vec![]);
        }
        let end = to.checked_add(1).map(index_key);
        let rows = self.scan(
            Space::Wal,
            &index_key(from),
            end.as_ref().map(|k| &k[..]),
            limit,
        )?;
        rows.into_iter()
            .map(|(k, v)| Ok((self.decode_index_key(Space::Wal, &k)?, v)))
            .collect()
    }

    fn read_last(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        match self.last(Space::Wal)? {
            None => Ok(None),
            Some((k, v)) => Ok(Some((self.decode_index_key(Space::Wal, &k)?, v))),
        }
    }

    /// The last WAL record's index, 0 when the WAL holds no record. On a log
    /// with a base (`crate::base`) an empty WAL still says 0: the log's end
    /// is `crate::base::log_end` = max(last record, base).
    fn last_index(&self) -> Result<u64, StoreError> {
        match self.last(Space::Wal)? {
            None => Ok(0),
            Some((k, _)) => self.decode_index_key(Space::Wal, &k),
        }
    }

    fn read_at(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(Space::Wal, &index_key(index))
    }

    /// Remove every WAL entry above `index` (repair only). Refused with
    /// [`StoreError::BelowWalBase`] when `index` is below the WAL base.
    fn truncate_after(&mut self, index: u64) -> Result<CommitInfo, StoreError> {
        let mut b = Batch::new();
        b.truncate_wal_after(index);
        self.commit(b)
    }

    // ---- snapshots and metadata -------------------------------------------

    fn put_snapshot(&mut self, index: u64, bytes: Vec<u8>) -> Result<CommitInfo, StoreError> {
        let mut b = Batch::new();
        b.put(Space::Snapshots, index_key(index).to_vec(), bytes);
        self.commit(b)
    }

    fn get_snapshot(&self, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(Space::Snapshots, &index_key(index))
    }

    /// Indexes of the stored snapshots, ascending.
    fn list_snapshots(&self) -> Result<Vec<u64>, StoreError> {
        let mut out = vec![];
        let mut from = index_key(0).to_vec();
        loop {
            let rows = self.scan(Space::Snapshots, &from, None, SCAN_ENTRIES_MAX)?;
            let Some((last, _)) = rows.last() else { break };
            let next = self.decode_index_key(Space::Snapshots, last)?;
            for (k, _) in &rows {
                out.push(self.decode_index_key(Space::Snapshots, k)?);
            }
            match next.checked_add(1) {
                Some(n) => from = index_key(n).to_vec(),
                None => break,
            }
        }
        Ok(out)
    }

    fn delete_snapshot(&mut self, index: u64) -> Result<CommitInfo, StoreError> {
        let mut b = Batch::new();
        b.delete(Space::Snapshots, index_key(index).to_vec());
        self.commit(b)
    }

    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<CommitInfo, StoreError> {
        let mut b = Batch::new();
        b.put(Space::Meta, key.as_bytes().to_vec(), value.to_vec());
        self.commit(b)
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(Space::Meta, key.as_bytes())
    }

    #[doc(hidden)]
    fn decode_index_key(&self, space: Space, k: &[u8]) -> Result<u64, StoreError> {
        key_index(k).ok_or_else(|| StoreError::BadIndexKey {
            location: self.location(),
            space,
            key: hex(k),
            len: k.len(),
        })
    }
}

/// A boxed store is a store, so a backend can be chosen at run time
/// (`WalWriter<Box<dyn LogStore + Send>>`).
impl<T: LogStore + ?Sized> LogStore for Box<T> {
    fn location(&self) -> String {
        (**self).location()
    }
    fn durability(&self) -> Durability {
        (**self).durability()
    }
    fn commit(&mut self, batch: Batch) -> Result<CommitInfo, StoreError> {
        (**self).commit(batch)
    }
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(space, key)
    }
    fn scan(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        (**self).scan(space, from, to, limit)
    }
    fn last(&self, space: Space) -> Result<Option<KeyValue>, StoreError> {
        (**self).last(space)
    }
    fn count(&self, space: Space) -> Result<u64, StoreError> {
        (**self).count(space)
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        (**self).sync()
    }
    fn overwrite_raw(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        (**self).overwrite_raw(space, key, value)
    }
}

/// Collects scan results within [`SCAN_ENTRIES_MAX`] / [`SCAN_BYTES_MAX`].
pub(crate) struct ScanCollector {
    limit: usize,
    bytes: usize,
    out: Vec<(Vec<u8>, Vec<u8>)>,
}

impl ScanCollector {
    pub(crate) fn new(limit: usize) -> ScanCollector {
        ScanCollector {
            limit: limit.min(SCAN_ENTRIES_MAX),
            bytes: 0,
            out: Vec::new(),
        }
    }
    /// True when no further entry may be added.
    pub(crate) fn full(&self) -> bool {
        self.out.len() >= self.limit || (self.bytes >= SCAN_BYTES_MAX && !self.out.is_empty())
    }
    pub(crate) fn push(&mut self, k: &[u8], v: &[u8]) {
        self.bytes += v.len();
        self.out.push((k.to_vec(), v.to_vec()));
    }
    pub(crate) fn finish(self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.out
    }
}
