//! What the storage test files share: one harness per backend, so every
//! case runs against LMDB and the in-memory store alike.

#![allow(dead_code)]

use swoosh_storage::{Durability, LmdbOptions, LmdbStore, LogStore, MemDisk, MemStore};

/// A backend under test: how to open it and how to crash and reopen it.
pub trait Harness {
    type S: LogStore;
    fn name(&self) -> &'static str;
    fn durability(&self) -> Durability;
    fn open(&mut self) -> Self::S;
    /// Simulate a crash and a restart: LMDB drops the environment (a process
    /// kill, or a power loss after a synced commit) and reopens the same
    /// directory; memory throws away everything not synced.
    fn crash_and_reopen(&mut self, s: Self::S) -> Self::S;
    /// A directory for side files.
    fn scratch(&self) -> std::path::PathBuf;
}

pub struct Lmdb {
    pub dir: tempfile::TempDir,
    pub durability: Durability,
}

pub fn lmdb() -> Lmdb {
    Lmdb {
        dir: tempfile::tempdir().expect("temp dir"),
        durability: Durability::Sync,
    }
}

/// LMDB opened with `MDB_NOSYNC`: in-process "crashes" (drop and reopen, like
/// a kill -9) lose nothing, since the OS page cache survives them.
pub fn lmdb_nosync() -> Lmdb {
    Lmdb {
        dir: tempfile::tempdir().expect("temp dir"),
        durability: Durability::NoSync,
    }
}

impl Harness for Lmdb {
    type S = LmdbStore;
    fn name(&self) -> &'static str {
        "lmdb"
    }
    fn durability(&self) -> Durability {
        self.durability
    }
    fn open(&mut self) -> LmdbStore {
        LmdbStore::open(
            &self.dir.path().join("db"),
            &LmdbOptions {
                durability: self.durability,
                ..LmdbOptions::default()
            },
        )
        .expect("open lmdb")
    }
    fn crash_and_reopen(&mut self, s: LmdbStore) -> LmdbStore {
        drop(s);
        self.open()
    }
    fn scratch(&self) -> std::path::PathBuf {
        self.dir.path().to_path_buf()
    }
}

pub struct Mem {
    pub disk: MemDisk,
    pub durability: Durability,
    pub scratch: tempfile::TempDir,
}

pub fn mem() -> Mem {
    Mem {
        disk: MemDisk::new(),
        durability: Durability::Sync,
        scratch: tempfile::tempdir().expect("temp dir"),
    }
}

impl Harness for Mem {
    type S = MemStore;
    fn name(&self) -> &'static str {
        "memory"
    }
    fn durability(&self) -> Durability {
        self.durability
    }
    fn open(&mut self) -> MemStore {
        MemStore::open("suite", &self.disk, self.durability)
    }
    fn crash_and_reopen(&mut self, s: MemStore) -> MemStore {
        s.crash()
    }
    fn scratch(&self) -> std::path::PathBuf {
        self.scratch.path().to_path_buf()
    }
}

/// Run each listed case (a `fn(&mut impl Harness)`) against both backends.
#[macro_export]
macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {
        mod lmdb_backend {
            $(#[test] fn $case() { super::$case(&mut $crate::common::lmdb()); })*
        }
        mod lmdb_nosync_backend {
            $(#[test] fn $case() { super::$case(&mut $crate::common::lmdb_nosync()); })*
        }
        mod memory_backend {
            $(#[test] fn $case() { super::$case(&mut $crate::common::mem()); })*
        }
    };
}
