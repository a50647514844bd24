//! The LMDB backend (heed 0.23).
//!
//! One environment per directory, one named database per [`Space`]. A
//! [`Batch`] is one LMDB write transaction; LMDB's copy-on-write B-tree makes
//! the commit atomic (a crash leaves the previous or the new state, never a
//! mix). Under [`Durability::Sync`] the environment uses LMDB's default flags:
//! `mdb_txn_commit` fsyncs the data pages, writes the meta page and fsyncs
//! again before it returns. Under [`Durability::NoSync`] it is opened with
//! `MDB_NOSYNC` and nothing is fsynced until [`LogStore::sync`], except the
//! fold, at open, of what a crashed Sync process left in the journal.
//!
//! heed refuses to open one path twice in a process (`EnvAlreadyOpened`); an
//! [`LmdbStore`] is `Clone` (an `Arc` over the environment) so a reader (the
//! HTTP layer) and the writer share one. The environment closes when the last
//! clone is dropped.

use crate::journal::{self, Entry, Fold, Journal, JournalId, JOURNAL_FILE};
use crate::store::{
    validate, Batch, CommitInfo, Durability, KeyValue, LogStore, Op, ScanCollector, Space,
    StoreError, MALFORMED_KEYS_MAX,
};
use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, PutFlags, RoTxn, WithoutTls};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default LMDB map size: the most the environment can grow to. It is address
/// space, not disk: the file grows only as data is written.
pub const LMDB_MAP_BYTES_DEFAULT: usize = 64 << 30;
/// Named databases the environment may hold (six are used: one per
/// [`Space`] and the journal's bookkeeping).
pub const LMDB_DATABASES_MAX: u32 = 8;
/// Concurrent read transactions (LMDB's default).
pub const LMDB_READERS_MAX: u32 = 126;

type Db = Database<'static, Bytes, Bytes>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LmdbOptions {
    pub durability: Durability,
    /// Must be a multiple of the OS page size.
    pub map_bytes: usize,
}

impl Default for LmdbOptions {
    fn default() -> Self {
        LmdbOptions {
            durability: Durability::Sync,
            map_bytes: LMDB_MAP_BYTES_DEFAULT,
        }
    }
}

/// `create_dir_all`, and each directory it creates synced into its parent:
/// the files a synced commit makes durable inside a new directory are lost
/// with it if the directory's own entry is not (POSIX leaves that to
/// `fsync` of the parent; not every filesystem orders it for us).
pub fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durably(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        // Created meanwhile by another process: its creator syncs it.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()
}

/// A [`LogStore`] in an LMDB environment directory (`data.mdb`, `lock.mdb`).
#[derive(Clone)]
pub struct LmdbStore {
    env: Env<WithoutTls>,
    dbs: [Db; 5],
    /// The journal's bookkeeping (`id`, `folded`, `state`); not a [`Space`].
    jdb: Db,
    dir: PathBuf,
    /// As opened: `map_bytes` is the map in effect.
    opts: LmdbOptions,
    /// The map size asked for (smaller than `opts.map_bytes` when the store
    /// already held more).
    requested_map_bytes: usize,
    /// Under [`Durability::Sync`], in the process that holds the journal's
    /// lock: the commit journal ([`crate::journal`]).
    journal: Option<Arc<Journal>>,
    replayed: u64,
    /// The journal needed opening (a Sync store, or one not closed clean)
    /// but another process held its lock: this handle neither journals nor
    /// folded what the journal holds.
    journal_busy: bool,
}

const JOURNAL_DB: &str = "journal";
const J_ID: &[u8] = b"id";
const J_FOLDED: &[u8] = b"folded";
const J_STATE: &[u8] = b"state";
const J_OPEN: &[u8] = b"open";
const J_CLEAN: &[u8] = b"clean";

fn map_err(location: &str, map_bytes: usize, op: &'static str, e: heed::Error) -> StoreError {
    match e {
        heed::Error::Mdb(heed::MdbError::MapFull) => StoreError::MapFull {
            location: location.to_string(),
            map_bytes,
        },
        other => StoreError::Backend {
            location: location.to_string(),
            op,
            detail: other.to_string(),
        },
    }
}

fn encode_folded(seq: u64, next_offset: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8..].copy_from_slice(&next_offset.to_le_bytes());
    b
}

fn decode_folded(v: &[u8]) -> Option<(u64, u64)> {
    let b: [u8; 16] = v.try_into().ok()?;
    Some((
        u64::from_le_bytes(b[..8].try_into().ok()?),
        u64::from_le_bytes(b[8..].try_into().ok()?),
    ))
}

/// Apply journal operations in a write transaction (with `append`, WAL
/// appends use `MDB_APPEND`: the journal only holds appends that continue
/// the log, so they sort after every WAL key unless a malformed one does).
fn apply_jops(
    wtxn: &mut heed::RwTxn,
    dbs: &[Db; 5],
    entries: &[Arc<Entry>],
    append: bool,
) -> Result<(), (&'static str, heed::Error)> {
    for e in entries {
        for op in &e.ops {
            let db = dbs[op.space.slot()];
            if op.space == Space::Wal && append {
                db.put_with_flags(wtxn, PutFlags::APPEND, &op.key, &op.value)
                    .map_err(|e| ("folding the journal into the WAL", e))?;
            } else {
                db.put(wtxn, &op.key, &op.value)
                    .map_err(|e| ("folding the journal into an index", e))?;
            }
        }
    }
    Ok(())
}

/// Folds journaled entries into the environment (the journal's thread).
struct LmdbFold {
    env: Env<WithoutTls>,
    dbs: [Db; 5],
    jdb: Db,
    location: String,
    map_bytes: usize,
}

impl Fold for LmdbFold {
    fn fold(&mut self, entries: &[Arc<Entry>], next_offset: u64) -> Result<(), StoreError> {
        let err = |(op, e)| map_err(&self.location, self.map_bytes, op, e);
        let mut wtxn = self
            .env
            .write_txn()
            .map_err(|e| err(("opening a write transaction", e)))?;
        // Commits are refused while a malformed key ends the WAL (`validate`
        // reads the tail strictly), so every journaled append sorts last.
        apply_jops(&mut wtxn, &self.dbs, entries, true).map_err(err)?;
        let last = entries.last().map_or(0, |e| e.seq);
        self.jdb
            .put(&mut wtxn, J_FOLDED, &encode_folded(last, next_offset))
            .map_err(|e| err(("recording the folded journal entries", e)))?;
        wtxn.commit()
            .map_err(|e| err(("committing folded journal entries (write + fsync)", e)))
    }

    fn close(&mut self) -> Result<(), StoreError> {
        let err = |(op, e)| map_err(&self.location, self.map_bytes, op, e);
        let mut wtxn = self
            .env
            .write_txn()
            .map_err(|e| err(("opening a write transaction", e)))?;
        self.jdb
            .put(&mut wtxn, J_STATE, J_CLEAN)
            .map_err(|e| err(("marking the journal closed", e)))?;
        wtxn.commit()
            .map_err(|e| err(("marking the journal closed", e)))
    }
}

impl std::fmt::Debug for LmdbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmdbStore")
            .field("dir", &self.dir)
            .field("opts", &self.opts)
            .finish()
    }
}

impl LmdbStore {
    /// When the store already held more than the map asked for: `(asked,
    /// in effect)`. LMDB then opens it at exactly the pages in use, so the
    /// first write that needs a page more fails with
    /// [`StoreError::MapFull`].
    pub fn map_below_data(&self) -> Option<(usize, usize)> {
        (self.opts.map_bytes > self.requested_map_bytes)
            .then_some((self.requested_map_bytes, self.opts.map_bytes))
    }

    /// Open (creating if needed) the environment in directory `dir`.
    pub fn open(dir: &Path, opts: &LmdbOptions) -> Result<LmdbStore, StoreError> {
        Self::open_with(dir, opts, opts.durability == Durability::Sync)
    }

    /// [`LmdbStore::open`] for a process that only reads (`wal verify`,
    /// `replay`, exports): it never journals, so it takes the journal's
    /// lock only to fold what a crash left there (then marks it clean and
    /// lets go), and a node starting meanwhile is kept waiting only for
    /// that fold, not for the whole read. A node holding the lock leaves it
    /// reading LMDB ([`LmdbStore::journal_busy`]). It must not write.
    pub fn open_reader(dir: &Path, opts: &LmdbOptions) -> Result<LmdbStore, StoreError> {
        Self::open_with(dir, opts, false)
    }

    fn open_with(dir: &Path, opts: &LmdbOptions, journal: bool) -> Result<LmdbStore, StoreError> {
        let location = dir.display().to_string();
        let open_err = |detail: String| StoreError::Open {
            location: location.clone(),
            detail,
        };
        create_dir_durably(dir)
            .map_err(|e| open_err(format!("cannot create the directory: {e}")))?;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options
            .map_size(opts.map_bytes)
            .max_dbs(LMDB_DATABASES_MAX)
            .max_readers(LMDB_READERS_MAX);
        if opts.durability == Durability::NoSync {
            // SAFETY: NO_SYNC does not affect memory safety; on a machine
            // crash it loses the last commits and may damage the database
            // (see `Durability::NoSync`), which the frame hashes detect. The
            // caller chose that mode explicitly.
            unsafe {
                options.flags(EnvFlags::NO_SYNC);
            }
        }
        // SAFETY: heed's `open` is unsafe because the memory map must not be
        // modified by anything but LMDB. We open each directory once per
        // process (heed enforces it: `EnvAlreadyOpened`), never truncate or
        // write the data file ourselves, and use LMDB's lock file for other
        // processes (the CLI's `wal verify` reading a live node's directory).
        let env = unsafe { options.open(dir) }.map_err(|e| match e {
            heed::Error::EnvAlreadyOpened => StoreError::AlreadyOpen {
                location: location.clone(),
            },
            other => open_err(other.to_string()),
        })?;
        // A process killed with SIGKILL leaves its reader slots behind.
        env.clear_stale_readers()
            .map_err(|e| open_err(format!("clearing stale readers: {e}")))?;
        let wtxn = env.write_txn().map_err(|e| open_err(e.to_string()))?;
        let (dbs, jdb) = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
                let mut make =
                    |name: &str| opener.create_database::<Bytes, Bytes>(wtxn, Some(name));
                let dbs = [
                    make(Space::Wal.name())?,
                    make(Space::Snapshots.name())?,
                    make(Space::Meta.name())?,
                    make(Space::Idem.name())?,
                    make(Space::Decisions.name())?,
                ];
                let jdb = make(JOURNAL_DB)?;
                Ok(CommitOrAbort::<_, ()>::Commit((dbs, jdb)))
            })
            .map_err(|e| open_err(format!("creating the databases: {e}")))?
            .unwrap_commit();
        // LMDB raises a map smaller than the data already held to exactly
        // the pages in use: such a store opens, but full.
        let actual = env.info().map_size;
        let mut held = *opts;
        held.map_bytes = held.map_bytes.max(actual);
        let mut store = LmdbStore {
            env,
            dbs,
            jdb,
            dir: dir.to_path_buf(),
            opts: held,
            requested_map_bytes: opts.map_bytes,
            journal: None,
            replayed: 0,
            journal_busy: false,
        };
        // NoSync opens fold too: a Sync node that crashed may have left
        // acknowledged commits in the journal only, and a store that served
        // LMDB without them would take new records at their indexes.
        store.open_journal(journal)?;
        Ok(store)
    }

    /// Take the journal's lock, fold what it holds beyond LMDB, and (with
    /// `journal`) start journaling. Another process holding the lock (a node
    /// serving this directory) leaves this handle without a journal: it
    /// reads what LMDB holds, which is everything but that node's newest,
    /// not yet folded commits.
    ///
    /// Without `journal` (a NoSync store) the fold is synced, the journal
    /// marked clean and its lock released: the store then commits to LMDB
    /// directly, and a later Sync open has nothing to replay.
    fn open_journal(&mut self, journal: bool) -> Result<(), StoreError> {
        let location = self.location();
        let open_err = |detail: String| StoreError::Open {
            location: location.clone(),
            detail,
        };
        // Refusals that name their own remedy; the generic "check the
        // directory" hint of `Open` would mislead there.
        let damaged = |detail: String| StoreError::Damaged {
            location: location.clone(),
            detail,
        };
        if !journal {
            let rtxn = self.rtxn()?;
            let had_journal = self.journal_meta(&rtxn, J_ID)?.is_some();
            let clean = self.journal_meta(&rtxn, J_STATE)?.as_deref() == Some(J_CLEAN);
            if !had_journal || clean {
                // Never journaled, or closed with everything folded: LMDB
                // holds every commit, and no journal file is created.
                return Ok(());
            }
        }
        let path = self.dir.join(JOURNAL_FILE);
        let existed = path.exists();
        if !existed {
            // Checked before the file is created: an empty new file would
            // hide the loss from every later open.
            let rtxn = self.rtxn()?;
            let had_journal = self.journal_meta(&rtxn, J_ID)?.is_some();
            let clean = self.journal_meta(&rtxn, J_STATE)?.as_deref() == Some(J_CLEAN);
            if had_journal && !clean {
                let last = self.wal_last_at_open(&rtxn)?;
                return Err(damaged(format!(
                    "the journal {} is missing and the store was not closed cleanly: commits acknowledged after WAL record {last} may be in it. Restore the file from a backup; if it is lost for good, create an empty file at that path to go on with the {last} records the store holds",
                    path.display()
                )));
            }
        }
        let file = open_journal_file(&path).map_err(open_err)?;
        match flock_within(&file, Duration::from_millis(JOURNAL_LOCK_WAIT_MS)) {
            Ok(true) => {}
            Ok(false) => {
                self.journal_busy = true;
                return Ok(());
            }
            Err(e) => {
                return Err(open_err(format!(
                    "locking the journal {}: {e}",
                    path.display()
                )))
            }
        }
        if !existed {
            // The new file's name must survive a crash like its contents.
            std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| open_err(format!("syncing the directory: {e}")))?;
        }
        let rtxn = self.rtxn()?;
        let id = self.journal_meta(&rtxn, J_ID)?;
        let folded = self.journal_meta(&rtxn, J_FOLDED)?;
        let was_clean = self.journal_meta(&rtxn, J_STATE)?.as_deref() == Some(J_CLEAN);
        let last = self.wal_last_at_open(&rtxn)?;
        let tail_malformed = self
            .db(Space::Wal)
            .last(&rtxn)
            .map_err(|e| self.err("reading the WAL tail", e))?
            .is_some_and(|(k, _)| crate::store::key_index(k).is_none());
        let stored_base = self
            .db(Space::Meta)
            .get(&rtxn, crate::store::META_WAL_BASE.as_bytes())
            .map_err(|e| self.err("reading the WAL base", e))?
            .map(<[u8]>::to_vec);
        drop(rtxn);
        let (id, folded_seq, entries) = match id {
            None => {
                // A new store, or one written before the journal existed:
                // whatever the file holds belongs to no one.
                file.set_len(0)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| open_err(format!("emptying the journal: {e}")))?;
                (new_journal_id(&self.dir), 0, vec![])
            }
            Some(id) => {
                let id: JournalId = id.as_slice().try_into().map_err(|_| {
                    damaged(format!(
                        "the journal id is {} bytes, not 16; the store is damaged: restore it from a backup",
                        id.len()
                    ))
                })?;
                let (seq, offset) = folded.as_deref().and_then(decode_folded).ok_or_else(|| {
                    damaged("the journal's folded position is missing or malformed; the store is damaged: restore it from a backup".into())
                })?;
                // Closed clean, everything was folded: the ring holds only
                // folded entries, and reading it could only mistake damage
                // in one of them for lost commits.
                let entries = if was_clean {
                    vec![]
                } else {
                    journal::replay(&file, &id, seq, offset, &location)?
                };
                (id, seq, entries)
            }
        };
        if journal {
            journal::preallocate(&file)
                .map_err(|e| open_err(format!("preallocating the journal: {e}")))?;
        }
        let replay_ops: Vec<Op> = entries
            .iter()
            .flat_map(|e| journal::to_ops(&e.ops))
            .collect();
        let base = crate::store::base_index(&location, stored_base.as_deref())?;
        validate(&location, &replay_ops, last, base).map_err(|e| {
            damaged(format!(
                "the journal's {} unfolded entries do not continue the store ({e}); the journal belongs to another copy of this store: restore both files from one backup",
                entries.len()
            ))
        })?;
        let entries: Vec<Arc<Entry>> = entries.into_iter().map(Arc::new).collect();
        let last_seq = entries.last().map_or(folded_seq, |e| e.seq);
        // Fold the replayed entries, and restart the journal at offset 0.
        let err = |(op, e)| map_err(&location, self.opts.map_bytes, op, e);
        let mut wtxn = self
            .env
            .write_txn()
            .map_err(|e| err(("opening a write transaction", e)))?;
        // MDB_APPEND would refuse a record sorting before a malformed last key.
        apply_jops(&mut wtxn, &self.dbs, &entries, !tail_malformed).map_err(err)?;
        let bookkeeping = [
            (J_ID, &id[..]),
            (J_FOLDED, &encode_folded(last_seq, 0)[..]),
            (J_STATE, if journal { J_OPEN } else { J_CLEAN }),
        ];
        for (k, v) in bookkeeping {
            self.jdb
                .put(&mut wtxn, k, v)
                .map_err(|e| err(("writing the journal's bookkeeping", e)))?;
        }
        wtxn.commit()
            .map_err(|e| err(("folding the journal at open", e)))?;
        self.replayed = entries.len() as u64;
        if !journal {
            // Under MDB_NOSYNC the commit above is in the page cache only.
            // These entries were acknowledged as durable by a Sync node:
            // keep them so, whatever this NoSync run does next.
            self.env
                .force_sync()
                .map_err(|e| err(("syncing the folded journal", e)))?;
            return Ok(());
        }
        let folder = LmdbFold {
            env: self.env.clone(),
            dbs: self.dbs,
            jdb: self.jdb,
            location: location.clone(),
            map_bytes: self.opts.map_bytes,
        };
        self.journal = Some(Arc::new(Journal::start(
            location,
            file,
            id,
            last_seq + 1,
            Box::new(folder),
        )?));
        Ok(())
    }

    fn journal_meta(&self, txn: &RoTxn, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.jdb
            .get(txn, key)
            .map(|v| v.map(<[u8]>::to_vec))
            .map_err(|e| self.err("reading the journal's bookkeeping", e))
    }

    /// Journal entries folded into LMDB when this handle opened the store:
    /// commits a crash left in the journal only.
    pub fn journal_replayed(&self) -> u64 {
        self.replayed
    }

    /// True when commits go through the journal (see [`crate::journal`]).
    pub fn journaled(&self) -> bool {
        self.journal.is_some()
    }

    /// True when another process held the journal's lock at open: a node
    /// serving this directory, or a command reading it (which folds a
    /// crash's entries). This handle sees LMDB without that process's
    /// unfolded commits, so a writer must not start on it.
    pub fn journal_busy(&self) -> bool {
        self.journal_busy
    }

    /// Journal entries not yet folded into LMDB.
    pub fn journal_unfolded(&self) -> usize {
        self.journal.as_ref().map_or(0, |j| j.unfolded())
    }

    /// Stop (or restart) folding journal entries into LMDB. For crash tests:
    /// what is committed while paused lives only in the journal.
    #[doc(hidden)]
    pub fn pause_journal_fold(&self, paused: bool) {
        if let Some(j) = &self.journal {
            j.pause(paused);
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes the environment's data file occupies on disk.
    pub fn disk_bytes(&self) -> Result<u64, StoreError> {
        self.env
            .real_disk_size()
            .map_err(|e| self.err("measuring the data file", e))
    }

    fn db(&self, s: Space) -> Db {
        self.dbs[s.slot()]
    }

    fn err(&self, op: &'static str, e: heed::Error) -> StoreError {
        map_err(&self.location(), self.opts.map_bytes, op, e)
    }

    fn stored_base(&self, txn: &RoTxn) -> Result<u64, StoreError> {
        let stored_base = self
            .db(Space::Meta)
            .get(txn, crate::store::META_WAL_BASE.as_bytes())
            .map_err(|e| self.err("reading the WAL base", e))?;
        crate::store::base_index(&self.location(), stored_base)
    }

    /// Commit straight to LMDB (every batch without a journal; with one, the
    /// caller holds the journal's barrier).
    fn commit_direct(&self, batch: Batch, t0: Instant) -> Result<CommitInfo, StoreError> {
        let (len, bytes) = (batch.len(), batch.bytes());
        let mut wtxn = self
            .env
            .write_txn()
            .map_err(|e| self.err("opening a write transaction", e))?;
        // A batch that deletes malformed WAL keys (repair) continues the log
        // as it is without them; any other malformed key at the tail refuses
        // the batch.
        let deleted: Vec<&[u8]> = batch
            .ops()
            .iter()
            .filter_map(|op| match op {
                Op::Delete {
                    space: Space::Wal,
                    key,
                } => Some(key.as_slice()),
                _ => None,
            })
            .collect();
        let last = self.wal_last_skipping(&wtxn, &|k| deleted.contains(&k))?;
        // Validated before anything is written; a failure below drops the
        // transaction, which aborts it: nothing of the batch is applied.
        let base = self.stored_base(&wtxn)?;
        validate(&self.location(), batch.ops(), last, base)?;
        for op in batch.ops() {
            match op {
                Op::Append { index, value } => {
                    let k = crate::store::index_key(*index);
                    // `validate` proved every append follows the log's last
                    // index. MDB_APPEND then fills each leaf page and starts
                    // the next, where a plain put splits pages in half: with
                    // records stored inline (compressed frames, ~1.6 KB) a
                    // half-split leaves one record per 4 KiB page.
                    self.db(Space::Wal)
                        .put_with_flags(&mut wtxn, PutFlags::APPEND, &k, value)
                        .map_err(|e| self.err("appending to the WAL", e))?;
                }
                Op::Put { space, key, value } => {
                    self.db(*space)
                        .put(&mut wtxn, key, value)
                        .map_err(|e| self.err("writing", e))?;
                }
                Op::Delete { space, key } => {
                    self.db(*space)
                        .delete(&mut wtxn, key)
                        .map_err(|e| self.err("deleting", e))?;
                }
                Op::TruncateWalAfter { index } => {
                    if let Some(from) = index.checked_add(1) {
                        let k = crate::store::index_key(from);
                        let range: (Bound<&[u8]>, Bound<&[u8]>) =
                            (Bound::Included(&k[..]), Bound::Unbounded);
                        self.db(Space::Wal)
                            .delete_range(&mut wtxn, &range)
                            .map_err(|e| self.err("truncating the WAL", e))?;
                    }
                }
                Op::CutWalThrough { index } => {
                    let k = crate::store::index_key(*index);
                    let range: (Bound<&[u8]>, Bound<&[u8]>) =
                        (Bound::Unbounded, Bound::Included(&k[..]));
                    self.db(Space::Wal)
                        .delete_range(&mut wtxn, &range)
                        .map_err(|e| self.err("cutting the WAL's start", e))?;
                }
                Op::ClearSpace { space } => {
                    self.db(*space)
                        .clear(&mut wtxn)
                        .map_err(|e| self.err("clearing a derived space", e))?;
                }
            }
        }
        wtxn.commit()
            .map_err(|e| self.err("committing (write + fsync)", e))?;
        Ok(CommitInfo {
            ops: len,
            bytes,
            synced: self.opts.durability == Durability::Sync,
            elapsed: t0.elapsed(),
        })
    }

    fn rtxn(&self) -> Result<RoTxn<'_, WithoutTls>, StoreError> {
        self.env
            .read_txn()
            .map_err(|e| self.err("opening a read transaction", e))
    }

    fn wal_last_in(&self, txn: &RoTxn) -> Result<u64, StoreError> {
        self.wal_last_skipping(txn, &|_| false)
    }

    /// The WAL's last index at open, passing over malformed keys (not 8-byte
    /// indexes) at its tail: refusing to open would leave no way to run
    /// `swoosh wal repair`, which removes them. Every read that meets one
    /// names it, and commits are refused while one ends the WAL.
    fn wal_last_at_open(&self, txn: &RoTxn) -> Result<u64, StoreError> {
        self.wal_last_skipping(txn, &|_| true)
    }

    /// The index of the last WAL key that is an 8-byte index, passing over
    /// up to [`MALFORMED_KEYS_MAX`] malformed keys after it that `skip`
    /// accepts; any other is [`StoreError::BadIndexKey`].
    fn wal_last_skipping(
        &self,
        txn: &RoTxn,
        skip: &dyn Fn(&[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        let tail = |e| self.err("reading the WAL tail", e);
        for (skipped, item) in self.db(Space::Wal).rev_iter(txn).map_err(tail)?.enumerate() {
            let (k, _) = item.map_err(tail)?;
            if let Some(i) = crate::store::key_index(k) {
                return Ok(i);
            }
            if !skip(k) || skipped >= MALFORMED_KEYS_MAX {
                return self.decode_index_key(Space::Wal, k);
            }
        }
        Ok(0)
    }
}

impl LogStore for LmdbStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn usage(&self) -> Option<crate::store::StoreUsage> {
        let info = self.env.info();
        let page = u64::from(self.env.unnamed_database_stat().page_size);
        Some(crate::store::StoreUsage {
            used_bytes: (info.last_page_number as u64 + 1).saturating_mul(page),
            capacity_bytes: info.map_size as u64,
        })
    }

    fn durability(&self) -> Durability {
        self.opts.durability
    }

    /// Clones share the environment and the journal, whose commits are
    /// serialised (see `commit`).
    fn concurrent_handle(&self) -> Option<Self> {
        Some(self.clone())
    }

    fn commit(&mut self, batch: Batch) -> Result<CommitInfo, StoreError> {
        let t0 = Instant::now();
        let Some(j) = self.journal.clone() else {
            return self.commit_direct(batch, t0);
        };
        if !journal::journalable(batch.ops(), batch.bytes()) {
            let _held = j.barrier()?;
            return self.commit_direct(batch, t0);
        }
        let (len, bytes) = (batch.len(), batch.bytes());
        j.commit(batch.into_ops(), |overlay_last, ops| {
            let rtxn = self.rtxn()?;
            let last = self.wal_last_in(&rtxn)?.max(overlay_last.unwrap_or(0));
            let base = self.stored_base(&rtxn)?;
            validate(&self.location(), ops, last, base)
        })?;
        Ok(CommitInfo {
            ops: len,
            bytes,
            synced: true,
            elapsed: t0.elapsed(),
        })
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.journal.as_ref().and_then(|j| j.get(space, key)) {
            return Ok(Some(v.to_vec()));
        }
        let rtxn = self.rtxn()?;
        let v = self
            .db(space)
            .get(&rtxn, key)
            .map_err(|e| self.err("reading", e))?;
        Ok(v.map(<[u8]>::to_vec))
    }

    fn scan(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        if to.is_some_and(|t| t <= from) {
            return Ok(vec![]);
        }
        // The overlay before LMDB: an entry folded in between is then in
        // LMDB's (later) read transaction.
        let over = match &self.journal {
            Some(j) => j.range(space, from, to, limit.min(crate::store::SCAN_ENTRIES_MAX)),
            None => vec![],
        };
        let rtxn = self.rtxn()?;
        let upper = match to {
            Some(t) => Bound::Excluded(t),
            None => Bound::Unbounded,
        };
        // LMDB refuses an empty key even as a bound: "from nothing" is unbounded.
        let lower = if from.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Included(from)
        };
        let range: (Bound<&[u8]>, Bound<&[u8]>) = (lower, upper);
        let mut c = ScanCollector::new(limit);
        let mut over = over.into_iter().peekable();
        for item in self
            .db(space)
            .range(&rtxn, &range)
            .map_err(|e| self.err("scanning", e))?
        {
            let (k, v) = item.map_err(|e| self.err("scanning", e))?;
            while let Some((ok, ov)) = over.next_if(|(ok, _)| ok.as_slice() < k) {
                if c.full() {
                    break;
                }
                c.push(&ok, &ov);
            }
            if c.full() {
                break;
            }
            // The overlay holds the newer value of a key in both.
            match over.next_if(|(ok, _)| ok.as_slice() == k) {
                Some((ok, ov)) => c.push(&ok, &ov),
                None => c.push(k, v),
            }
        }
        for (ok, ov) in over {
            if c.full() {
                break;
            }
            c.push(&ok, &ov);
        }
        Ok(c.finish())
    }

    fn last(&self, space: Space) -> Result<Option<KeyValue>, StoreError> {
        let over = self.journal.as_ref().and_then(|j| j.last(space));
        let rtxn = self.rtxn()?;
        let v = self
            .db(space)
            .last(&rtxn)
            .map_err(|e| self.err("reading the last entry", e))?;
        Ok(match (v, over) {
            (Some((k, _)), Some((ok, ov))) if ok.as_slice() >= k => Some((ok, ov.to_vec())),
            (Some((k, v)), _) => Some((k.to_vec(), v.to_vec())),
            (None, Some((ok, ov))) => Some((ok, ov.to_vec())),
            (None, None) => None,
        })
    }

    fn count(&self, space: Space) -> Result<u64, StoreError> {
        let keys = self
            .journal
            .as_ref()
            .map(|j| j.keys(space))
            .unwrap_or_default();
        let rtxn = self.rtxn()?;
        let db = self.db(space);
        let mut n = db.len(&rtxn).map_err(|e| self.err("counting", e))?;
        for k in keys {
            if db
                .get(&rtxn, &k)
                .map_err(|e| self.err("counting", e))?
                .is_none()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.env.force_sync().map_err(|e| self.err("syncing", e))
    }

    fn overwrite_raw(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let j = self.journal.clone();
        let _held = match &j {
            Some(j) => Some(j.barrier()?),
            None => None,
        };
        let mut wtxn = self
            .env
            .write_txn()
            .map_err(|e| self.err("opening a write transaction", e))?;
        self.db(space)
            .put(&mut wtxn, key, value)
            .map_err(|e| self.err("overwriting", e))?;
        wtxn.commit().map_err(|e| self.err("committing", e))
    }
}

/// The LMDB data file in a store's directory.
pub const DATA_FILE: &str = "data.mdb";
/// Where [`shrink`] builds the compacted copy: inside the store's
/// directory, so the swap is one rename on one filesystem.
pub const SHRINK_DIR: &str = "shrink.partial";

/// What [`shrink`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShrinkReport {
    /// The data file's size before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Entries compared, key and value, between the store and its copy
    /// before the copy replaced it.
    pub entries_checked: u64,
    pub elapsed: Duration,
}

/// Rewrite a store's data file without its free pages. LMDB reuses the
/// pages a compaction (or any delete) frees but never returns them to the
/// filesystem; this copies the live pages, in order, to a new file
/// (`mdb_env_copy2` with compaction) beside the old one, fsyncs it,
/// compares every entry of every space (and the journal's bookkeeping) with
/// the store, and only then renames it over the data file.
///
/// The store must not be in use: a node serving it under `Sync` holds its
/// journal's lock, which this holds throughout, and is refused at once; any
/// other process with the store open (a reader, a node run with `NoSync`)
/// is refused before the swap, by LMDB's own exclusive lock (after the
/// copy was made, and removed). What
/// a crashed node left in the journal is folded first. Interrupted, the old
/// file is intact (or already replaced by a complete, synced copy), and a
/// leftover `SHRINK_DIR` is removed by the next run.
pub fn shrink(dir: &Path, opts: &LmdbOptions) -> Result<ShrinkReport, StoreError> {
    let t0 = Instant::now();
    let location = dir.display().to_string();
    let open_err = |detail: String| StoreError::Open {
        location: location.clone(),
        detail,
    };
    let data = dir.join(DATA_FILE);
    let bytes_before = std::fs::metadata(&data)
        .map_err(|e| {
            open_err(format!(
                "there is no store here ({}: {e}); give the store's directory",
                data.display()
            ))
        })?
        .len();
    let nosync = LmdbOptions {
        durability: Durability::NoSync,
        ..*opts
    };
    // Folds what a crashed node left in the journal, and marks it clean.
    drop(LmdbStore::open(dir, &nosync)?);
    let jpath = dir.join(JOURNAL_FILE);
    let lock = open_journal_file(&jpath).map_err(open_err)?;
    if !try_flock(&lock)
        .map_err(|e| open_err(format!("locking the journal {}: {e}", jpath.display())))?
    {
        return Err(StoreError::InUse {
            location: location.clone(),
        });
    }
    let src = LmdbStore::open(dir, &nosync)?;
    {
        let rtxn = src.rtxn()?;
        let had = src.journal_meta(&rtxn, J_ID)?.is_some();
        if had && src.journal_meta(&rtxn, J_STATE)?.as_deref() != Some(J_CLEAN) {
            return Err(StoreError::Damaged {
                location: location.clone(),
                detail: "its journal holds commits not folded into LMDB (a node ran on it between the fold and the lock?); stop every process using it and run the shrink again".into(),
            });
        }
    }
    let tmp = dir.join(SHRINK_DIR);
    let io = |what: &str, e: std::io::Error| open_err(format!("{what}: {e}"));
    if tmp.exists() {
        // An interrupted shrink's copy: never the only copy of anything.
        std::fs::remove_dir_all(&tmp).map_err(|e| io("removing an earlier shrink's copy", e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| io("creating the copy's directory", e))?;
    let copy = tmp.join(DATA_FILE);
    let copied = (|| -> Result<u64, StoreError> {
        let file = src
            .env
            .copy_to_path(&copy, heed::CompactionOption::Enabled)
            .map_err(|e| {
                src.err(
                    "copying the store without its free pages (it needs free disk space for the store's live size)",
                    e,
                )
            })?;
        // The node's user reads it as before (LMDB creates it 0600; a copy
        // made by root would otherwise lock the node out).
        let meta = std::fs::metadata(&data).map_err(|e| io("reading the data file's owner", e))?;
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))
                .map_err(|e| io("giving the copy the data file's owner", e))?;
            file.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(|e| io("giving the copy the data file's mode", e))?;
        }
        file.sync_all().map_err(|e| io("syncing the copy", e))?;
        drop(file);
        let n = {
            let dst = LmdbStore::open(&tmp, &nosync)?;
            same_contents(&src, &dst)?
        };
        // Opening the copy to compare it may have written to it (LMDB's
        // own bookkeeping): synced again before it takes the file's name.
        std::fs::File::open(&copy)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("syncing the copy", e))?;
        Ok(n)
    })();
    // Every handle of this process on the store is closed from here.
    drop(src);
    let swapped = copied.and_then(|n| {
        // LMDB's lock file must not outlive its data file in another
        // process's hands: one still open (a reader) keeps the old file's
        // transaction ids in it, and an opener after the swap would trust
        // them. Its exclusive lock is free only when no process has the
        // store open; held from here, a new opener waits for it.
        let excl = exclusive_lmdb_lock(dir)
            .map_err(|e| io("locking LMDB's lock file", e))?
            .ok_or_else(|| StoreError::InUse {
                location: location.clone(),
            })?;
        std::fs::rename(&copy, &data).map_err(|e| io("moving the copy over the data file", e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the directory", e))?;
        // Opened here first, while this process holds that lock, LMDB
        // opens exclusively (record locks never conflict within a
        // process) and resets the lock file from the new file. Closing it
        // releases every lock this process holds on the file (POSIX), so
        // waiting openers find the lock file reset.
        drop(LmdbStore::open(dir, &nosync)?);
        drop(excl);
        Ok(n)
    });
    let entries_checked = match swapped {
        Ok(n) => n,
        Err(e) => {
            // Before the rename the store is as it was, after it the
            // checked copy; a full-size copy left behind would only take
            // the disk space an operator shrinks to get back.
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    // The swap is done: a leftover directory is removed by the next run.
    let _ = std::fs::remove_dir_all(&tmp);
    let bytes_after = std::fs::metadata(&data)
        .map_err(|e| io("reading the new data file's size", e))?
        .len();
    drop(lock);
    Ok(ShrinkReport {
        bytes_before,
        bytes_after,
        entries_checked,
        elapsed: t0.elapsed(),
    })
}

/// Open (or create) the commit journal, readable by its owner only: it holds
/// recent records in plain text, as `data.mdb` does (which LMDB creates
/// 0600). A journal an earlier build created with the umask's mode (often
/// 0644) is narrowed to 0600 too, best effort: a file this process may not
/// chmod keeps its mode.
fn open_journal_file(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("opening the journal {}: {e}", path.display()))?;
    if let Ok(meta) = file.metadata() {
        if meta.permissions().mode() & 0o077 != 0 {
            let _ = file.set_permissions(std::fs::Permissions::from_mode(
                meta.permissions().mode() & 0o7700,
            ));
        }
    }
    Ok(file)
}

/// LMDB's own exclusive lock on a store directory (an `F_WRLCK` record lock
/// on byte 0 of `lock.mdb`, what `mdb_env_open` takes to know it is the
/// only opener): `None` while any process has the store open.
fn exclusive_lmdb_lock(dir: &Path) -> std::io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("lock.mdb"))?;
    // SAFETY: `flock` is a plain C struct; all-zero is a valid value.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = libc::F_WRLCK as libc::c_short;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l.l_start = 0;
    l.l_len = 1;
    loop {
        // SAFETY: fcntl reads `l` and the descriptor `f` keeps open.
        let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &l) };
        if r == 0 {
            return Ok(Some(f));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EACCES) | Some(libc::EAGAIN) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Every entry of every space, and the journal's bookkeeping, equal in `a`
/// and `b`; the number of entries compared.
fn same_contents(a: &LmdbStore, b: &LmdbStore) -> Result<u64, StoreError> {
    let differ = |what: String| {
        StoreError::Damaged {
        location: b.location(),
        detail: format!(
            "the compacted copy differs from {} ({what}); the store was not changed: check the disk",
            a.location()
        ),
    }
    };
    let mut n = 0u64;
    for space in Space::ALL {
        let mut from: Vec<u8> = vec![];
        loop {
            let ra = a.scan(space, &from, None, crate::store::SCAN_ENTRIES_MAX)?;
            let rb = b.scan(space, &from, None, crate::store::SCAN_ENTRIES_MAX)?;
            if ra != rb {
                let key: String = from.iter().map(|b| format!("{b:02x}")).collect();
                return Err(differ(format!("in {space}, from key {key}")));
            }
            let Some((last, _)) = ra.last() else { break };
            n += ra.len() as u64;
            // The next key after `last` in byte order is `last ++ [0]`.
            from = last.clone();
            from.push(0);
        }
        if a.count(space)? != b.count(space)? {
            return Err(differ(format!("{space} entry counts")));
        }
    }
    let (ta, tb) = (a.rtxn()?, b.rtxn()?);
    for key in [J_ID, J_FOLDED, J_STATE] {
        if a.journal_meta(&ta, key)? != b.journal_meta(&tb, key)? {
            return Err(differ("the journal's bookkeeping".into()));
        }
    }
    Ok(n)
}

/// How long opening a store waits for its journal's lock before opening
/// without the journal (another process holds the store). A process that
/// forks while it has the store open lends its child the lock until the
/// child execs: a moment, which a lone try could still land in.
pub const JOURNAL_LOCK_WAIT_MS: u64 = 250;

/// [`try_flock`], retried for up to `wait`.
fn flock_within(file: &std::fs::File, wait: Duration) -> std::io::Result<bool> {
    let t0 = Instant::now();
    loop {
        if try_flock(file)? {
            return Ok(true);
        }
        if t0.elapsed() >= wait {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Take an exclusive `flock` on `file` without waiting: `Ok(false)` when
/// another open file description holds it. (`File::try_lock` needs Rust
/// 1.89; the workspace supports 1.85.)
fn try_flock(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only reads the descriptor, which `file` keeps open for
    // the duration of the call.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// A journal id no other journal has: the directory, the time and the
/// process, hashed.
fn new_journal_id(dir: &Path) -> JournalId {
    let mut h = blake3::Hasher::new_derive_key("swoosh journal id v1");
    h.update(dir.as_os_str().as_encoded_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    id
}

#[cfg(test)]
mod tests {
    /// Every missing level is created (and synced into its parent); an
    /// existing directory is left as it is; a file in the way is an error.
    #[test]
    fn a_store_directory_is_created_level_by_level() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/data");
        super::create_dir_durably(&deep).unwrap();
        assert!(deep.is_dir());
        super::create_dir_durably(&deep).unwrap();
        std::fs::write(t.path().join("file"), b"x").unwrap();
        assert!(super::create_dir_durably(&t.path().join("file/data")).is_err());
    }
}
