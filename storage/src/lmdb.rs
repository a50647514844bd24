//! The LMDB backend (heed 0.23).
//!
//! One environment per directory, one named database per [`Space`]. A
//! [`Batch`] is one LMDB write transaction; LMDB's copy-on-write B-tree makes
//! the commit atomic (a crash leaves the previous or the new state, never a
//! mix). Under [`Durability::Sync`] the environment uses LMDB's default flags:
//! `mdb_txn_commit` fsyncs the data pages, writes the meta page and fsyncs
//! again before it returns. Under [`Durability::NoSync`] it is opened with
//! `MDB_NOSYNC` and nothing is fsynced until [`LogStore::sync`].
//!
//! heed refuses to open one path twice in a process (`EnvAlreadyOpened`); an
//! [`LmdbStore`] is `Clone` (an `Arc` over the environment) so a reader (the
//! HTTP layer) and the writer share one. The environment closes when the last
//! clone is dropped.

use crate::store::{
    validate, Batch, CommitInfo, Durability, KeyValue, LogStore, Op, ScanCollector, Space,
    StoreError,
};
use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, PutFlags, RoTxn, WithoutTls};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Default LMDB map size: the most the environment can grow to. It is address
/// space, not disk: the file grows only as data is written.
pub const LMDB_MAP_BYTES_DEFAULT: usize = 64 << 30;
/// Named databases the environment may hold (five are used).
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

/// A [`LogStore`] in an LMDB environment directory (`data.mdb`, `lock.mdb`).
#[derive(Clone)]
pub struct LmdbStore {
    env: Env<WithoutTls>,
    dbs: [Db; 5],
    dir: PathBuf,
    opts: LmdbOptions,
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
    /// Open (creating if needed) the environment in directory `dir`.
    pub fn open(dir: &Path, opts: &LmdbOptions) -> Result<LmdbStore, StoreError> {
        let location = dir.display().to_string();
        let open_err = |detail: String| StoreError::Open {
            location: location.clone(),
            detail,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| open_err(format!("cannot create the directory: {e}")))?;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options
            .map_size(opts.map_bytes)
            .max_dbs(LMDB_DATABASES_MAX)
            .max_readers(LMDB_READERS_MAX);
        if opts.durability == Durability::NoSync {
            // SAFETY: NO_SYNC only weakens durability (see `Durability::NoSync`);
            // LMDB keeps the database consistent, it may lose the last commits
            // on a machine crash. The caller chose that mode explicitly.
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
        let dbs = env
            .create_databases_and_commit(wtxn, |opener, wtxn| -> Result<_, heed::Error> {
                let mut make =
                    |s: Space| opener.create_database::<Bytes, Bytes>(wtxn, Some(s.name()));
                let dbs = [
                    make(Space::Wal)?,
                    make(Space::Snapshots)?,
                    make(Space::Meta)?,
                    make(Space::Idem)?,
                    make(Space::Decisions)?,
                ];
                Ok(CommitOrAbort::<_, ()>::Commit(dbs))
            })
            .map_err(|e| open_err(format!("creating the databases: {e}")))?
            .unwrap_commit();
        Ok(LmdbStore {
            env,
            dbs,
            dir: dir.to_path_buf(),
            opts: *opts,
        })
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
        match e {
            heed::Error::Mdb(heed::MdbError::MapFull) => StoreError::MapFull {
                location: self.location(),
                map_bytes: self.opts.map_bytes,
            },
            other => StoreError::Backend {
                location: self.location(),
                op,
                detail: other.to_string(),
            },
        }
    }

    fn rtxn(&self) -> Result<RoTxn<'_, WithoutTls>, StoreError> {
        self.env
            .read_txn()
            .map_err(|e| self.err("opening a read transaction", e))
    }

    fn wal_last_in(&self, txn: &RoTxn) -> Result<u64, StoreError> {
        match self
            .db(Space::Wal)
            .last(txn)
            .map_err(|e| self.err("reading the WAL tail", e))?
        {
            None => Ok(0),
            Some((k, _)) => self.decode_index_key(Space::Wal, k),
        }
    }
}

impl LogStore for LmdbStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn durability(&self) -> Durability {
        self.opts.durability
    }

    fn commit(&mut self, batch: Batch) -> Result<CommitInfo, StoreError> {
        let t0 = Instant::now();
        let (len, bytes) = (batch.len(), batch.bytes());
        let mut wtxn = self
            .env
            .write_txn()
            .map_err(|e| self.err("opening a write transaction", e))?;
        let last = self.wal_last_in(&wtxn)?;
        // Validated before anything is written; a failure below drops the
        // transaction, which aborts it: nothing of the batch is applied.
        let stored_base = self
            .db(Space::Meta)
            .get(&wtxn, crate::store::META_WAL_BASE.as_bytes())
            .map_err(|e| self.err("reading the WAL base", e))?;
        let base = crate::store::base_index(&self.location(), stored_base)?;
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

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
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
        for item in self
            .db(space)
            .range(&rtxn, &range)
            .map_err(|e| self.err("scanning", e))?
        {
            if c.full() {
                break;
            }
            let (k, v) = item.map_err(|e| self.err("scanning", e))?;
            c.push(k, v);
        }
        Ok(c.finish())
    }

    fn last(&self, space: Space) -> Result<Option<KeyValue>, StoreError> {
        let rtxn = self.rtxn()?;
        let v = self
            .db(space)
            .last(&rtxn)
            .map_err(|e| self.err("reading the last entry", e))?;
        Ok(v.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn count(&self, space: Space) -> Result<u64, StoreError> {
        let rtxn = self.rtxn()?;
        self.db(space)
            .len(&rtxn)
            .map_err(|e| self.err("counting", e))
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.env.force_sync().map_err(|e| self.err("syncing", e))
    }

    fn overwrite_raw(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
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
