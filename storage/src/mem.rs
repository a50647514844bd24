//! The in-memory backend, for tests and the deterministic simulator.
//!
//! It models a disk with two parts: the durable part ([`MemDisk`], shared and
//! surviving a simulated crash) and what was committed but not yet synced
//! (only under [`Durability::NoSync`]). [`MemStore::crash`] throws away
//! everything not synced and reopens from the durable part, exactly what a
//! power loss does to an LMDB environment opened with `MDB_NOSYNC`. Under
//! [`Durability::Sync`] every commit is durable when it returns, so a crash
//! loses nothing that was acknowledged.
//!
//! Fault injection for the simulator: [`MemStore::crash_after_commits`]
//! (the store dies before writing the N+1-th commit), [`MemStore::tear_next_commit`]
//! (the next commit reaches the disk with its last WAL frame cut short, then
//! the store dies: a torn write), and [`LogStore::overwrite_raw`] (flip bytes
//! of any stored value).

use crate::store::{
    base_index, validate, Batch, CommitInfo, Durability, KeyValue, LogStore, Op, ScanCollector,
    Space, StoreError, META_WAL_BASE,
};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Tables([BTreeMap<Vec<u8>, Vec<u8>>; 5]);

impl Tables {
    fn space(&self, s: Space) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.0[s.slot()]
    }
    fn space_mut(&mut self, s: Space) -> &mut BTreeMap<Vec<u8>, Vec<u8>> {
        &mut self.0[s.slot()]
    }
    fn wal_last(&self) -> u64 {
        self.space(Space::Wal)
            .keys()
            .next_back()
            .and_then(|k| crate::store::key_index(k))
            .unwrap_or(0)
    }
    /// Apply validated operations.
    fn apply(&mut self, ops: &[Op]) {
        for op in ops {
            match op {
                Op::Append { index, value } => {
                    self.space_mut(Space::Wal)
                        .insert(crate::store::index_key(*index).to_vec(), value.clone());
                }
                Op::Put { space, key, value } => {
                    self.space_mut(*space).insert(key.clone(), value.clone());
                }
                Op::Delete { space, key } => {
                    self.space_mut(*space).remove(key);
                }
                Op::TruncateWalAfter { index } => {
                    if let Some(from) = index.checked_add(1) {
                        let _cut = self
                            .space_mut(Space::Wal)
                            .split_off(&crate::store::index_key(from).to_vec());
                    }
                }
                Op::CutWalThrough { index } => {
                    let wal = self.space_mut(Space::Wal);
                    // `validate` proved `index` is a record, so `index + 1`
                    // does not overflow.
                    let kept = wal.split_off(&crate::store::index_key(index + 1).to_vec());
                    *wal = kept;
                }
                Op::ClearSpace { space } => self.space_mut(*space).clear(),
            }
        }
    }
}

/// The durable part of a simulated disk. Cloning shares it; it outlives
/// every [`MemStore`] opened on it.
#[derive(Clone, Debug, Default)]
pub struct MemDisk(Arc<Mutex<Tables>>);

impl MemDisk {
    pub fn new() -> MemDisk {
        MemDisk::default()
    }
    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding this lock can only come from a bug in this
        // module; the tables themselves are never left half-updated.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An in-memory [`LogStore`] over a [`MemDisk`].
#[derive(Debug)]
pub struct MemStore {
    name: String,
    disk: MemDisk,
    /// Everything committed (durable or not): what reads see.
    live: Tables,
    /// Committed under `NoSync` but not yet on the durable part.
    pending: Vec<Vec<Op>>,
    durability: Durability,
    crash_after: Option<u64>,
    tear_next: bool,
    crashed: bool,
}

impl MemStore {
    /// A store on a fresh, empty disk.
    pub fn new(name: &str, durability: Durability) -> MemStore {
        MemStore::open(name, &MemDisk::new(), durability)
    }

    /// Open a store on `disk`, seeing exactly its durable contents.
    pub fn open(name: &str, disk: &MemDisk, durability: Durability) -> MemStore {
        let live = disk.lock().clone();
        MemStore {
            name: name.to_string(),
            disk: disk.clone(),
            live,
            pending: vec![],
            durability,
            crash_after: None,
            tear_next: false,
            crashed: false,
        }
    }

    /// The durable part of this store's disk.
    pub fn disk(&self) -> MemDisk {
        self.disk.clone()
    }

    /// Simulate a crash (power loss) and a restart: everything not synced is
    /// lost, and the returned store sees only the durable part.
    pub fn crash(self) -> MemStore {
        MemStore::open(&self.name, &self.disk, self.durability)
    }

    /// Commits made under `NoSync` and not yet synced.
    pub fn pending_commits(&self) -> usize {
        self.pending.len()
    }

    /// After `n` more successful commits, the next commit crashes the store
    /// before writing anything; every later call fails with
    /// [`StoreError::Crashed`] until [`MemStore::crash`] reopens it.
    pub fn crash_after_commits(&mut self, n: u64) {
        self.crash_after = Some(n);
    }

    /// The next commit reaches the durable part with its last WAL append cut
    /// to half its length (a torn write), and the store then crashes.
    pub fn tear_next_commit(&mut self) {
        self.tear_next = true;
    }

    pub fn has_crashed(&self) -> bool {
        self.crashed
    }

    fn alive(&self) -> Result<(), StoreError> {
        if self.crashed {
            return Err(StoreError::Crashed {
                location: self.location(),
            });
        }
        Ok(())
    }

    fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut disk = self.disk.lock();
        for ops in self.pending.drain(..) {
            disk.apply(&ops);
        }
    }
}

impl LogStore for MemStore {
    fn location(&self) -> String {
        format!("memory:{}", self.name)
    }

    fn durability(&self) -> Durability {
        self.durability
    }

    fn commit(&mut self, batch: Batch) -> Result<CommitInfo, StoreError> {
        self.alive()?;
        let t0 = Instant::now();
        let location = self.location();
        let base = base_index(
            &location,
            self.live
                .space(Space::Meta)
                .get(META_WAL_BASE.as_bytes())
                .map(Vec::as_slice),
        )?;
        validate(&location, batch.ops(), self.live.wal_last(), base)?;
        if let Some(n) = self.crash_after {
            if n == 0 {
                self.crashed = true;
                return Err(StoreError::Crashed {
                    location: self.location(),
                });
            }
            self.crash_after = Some(n - 1);
        }
        let (len, bytes) = (batch.len(), batch.bytes());
        let mut ops = batch.into_ops();
        if self.tear_next {
            self.tear_next = false;
            self.flush_pending();
            if let Some(Op::Append { value, .. }) = ops
                .iter_mut()
                .rev()
                .find(|o| matches!(o, Op::Append { .. }))
            {
                value.truncate(value.len() / 2);
            }
            self.disk.lock().apply(&ops);
            self.crashed = true;
            return Err(StoreError::Crashed {
                location: self.location(),
            });
        }
        self.live.apply(&ops);
        let synced = match self.durability {
            Durability::Sync => {
                self.flush_pending();
                self.disk.lock().apply(&ops);
                true
            }
            Durability::NoSync => {
                self.pending.push(ops);
                false
            }
        };
        Ok(CommitInfo {
            ops: len,
            bytes,
            synced,
            elapsed: t0.elapsed(),
        })
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.alive()?;
        Ok(self.live.space(space).get(key).cloned())
    }

    fn scan(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.alive()?;
        let mut c = ScanCollector::new(limit);
        let upper = match to {
            Some(t) => Bound::Excluded(t),
            None => Bound::Unbounded,
        };
        if to.is_some_and(|t| t <= from) {
            return Ok(vec![]);
        }
        for (k, v) in self
            .live
            .space(space)
            .range::<[u8], _>((Bound::Included(from), upper))
        {
            if c.full() {
                break;
            }
            c.push(k, v);
        }
        Ok(c.finish())
    }

    fn last(&self, space: Space) -> Result<Option<KeyValue>, StoreError> {
        self.alive()?;
        Ok(self
            .live
            .space(space)
            .iter()
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn count(&self, space: Space) -> Result<u64, StoreError> {
        self.alive()?;
        Ok(self.live.space(space).len() as u64)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.alive()?;
        self.flush_pending();
        Ok(())
    }

    fn overwrite_raw(&mut self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.alive()?;
        // Damage reaches the disk directly, as a bad sector or a stray write would.
        self.flush_pending();
        self.live
            .space_mut(space)
            .insert(key.to_vec(), value.to_vec());
        self.disk
            .lock()
            .space_mut(space)
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }
}
