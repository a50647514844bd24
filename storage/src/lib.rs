//! SWOOSH storage: the hash-chained WAL, snapshots, derived indexes and
//! recovery, over LMDB (heed) or an in-memory simulated disk.
//!
//! Layers, bottom up:
//! - [`store`]: the small [`LogStore`] trait (atomic batches over five key
//!   spaces) with two backends, [`LmdbStore`] and [`MemStore`]. One test
//!   suite (`tests/suite.rs`) runs against both.
//! - [`journal`]: the LMDB backend's commit journal (one `fdatasync` per
//!   durable commit; LMDB written behind it).
//! - [`frame`]: the header + BLAKE3 hash around every stored structure.
//! - [`wal`]: record encoding, the group-commit [`WalWriter`], verified reads.
//! - [`halt`]: the follower's divergence halt, kept across restarts.
//! - [`index`]: idempotency and decision-record indexes, rebuildable from the WAL.
//! - [`snapshot`]: checked snapshots of the whole `NodeState`, the newest K kept.
//! - [`recovery`]: [`recover`], [`verify`], [`repair`].
//! - [`base`]: the WAL base, a log that starts after a snapshot's index
//!   ([`install_snapshot`], for followers that join late).
//! - [`mod@compact`]: archive the start of the log to a file and move the base
//!   past it (`swoosh wal compact`).
//! - [`mod@bench`]: throughput and latency measurements for `swoosh bench storage`.
//! - [`testkit`]: deterministic streams of valid records for tests and benches.
//!
//! Formats and durability rules are specified in `docs/wal-format.md`.
//!
//! Architecture invariant: storage never decides anything about state. It
//! stores what the reducer produced and, on the way back, feeds records to
//! the reducer (`apply_record`) and checks what it recomputes.

pub mod base;
pub mod bench;
pub mod compact;
pub mod frame;
pub mod halt;
pub mod index;
pub mod journal;
pub mod lmdb;
pub mod mem;
pub mod recovery;
pub mod snapshot;
pub mod store;
pub mod testkit;
pub mod wal;

pub use base::{
    base_snapshot_fault, first_index, install_snapshot, log_end, wal_base, InstallError,
    InstallReport, WalBase,
};
pub use compact::{
    archive_hash_at, compact, compact_cancellable, compact_range, compact_with, for_each_archived,
    read_archive, rebuild_base_snapshot, ArchiveError, ArchiveSummary, CompactError,
    CompactOptions, CompactReport, RebuildBaseError, RebuiltBase, COMPACT_STEP_RECORDS,
};
pub use halt::{clear_halt, record_halt, recorded_halt, HaltMarker, META_HALT};
pub use index::{
    audit_indexes, get_decision, lookup_idem, rebuild_follower_indexes, rebuild_indexes,
    IndexAudit, IndexError, RebuildError, RebuildReport, AUDIT_TAIL_RECORDS,
};
pub use lmdb::{
    create_dir_durably, shrink, LmdbOptions, LmdbStore, ShrinkReport, LMDB_MAP_BYTES_DEFAULT,
};
pub use mem::{MemDisk, MemStore};
pub use recovery::{
    cut_after, read_cut_file, recover, recover_with, repair, verify, verify_expecting, Cut,
    ExpectDecisions, Phase, Progress, ProgressCell, RecoverOptions, Recovered, RecoveryError,
    RepairError, RepairReport, SnapshotProblem, VerifyError, VerifyOptions, VerifyReport,
};
pub use snapshot::{
    read_snapshot, write_snapshot, Snapshot, SnapshotError, SnapshotFault, SnapshotInfo,
    SnapshotPolicy, SNAPSHOTS_KEEP_DEFAULT, SNAPSHOT_BYTES_MAX, SNAPSHOT_EVERY_RECORDS_DEFAULT,
};
pub use store::{Batch, CommitInfo, Durability, LogStore, Op, Space, StoreError, StoreUsage};
pub use wal::{
    export, read_record, AppendError, BatchLimits, BatchReport, DecisionDoc, EncodedEntry, Entry,
    GroupCommitter, LeaderEntry, MetaError, OpenError, ReadError, RecordFault, VerifiedRecord,
    WalIter, WalWriter, WAL_BATCH_BYTES_MAX_DEFAULT, WAL_BATCH_RECORDS_MAX_DEFAULT,
    WAL_RECORD_BYTES_MAX,
};

/// Every storage error, for callers that handle them alike (the CLI).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error(transparent)]
    Repair(#[from] RepairError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Rebuild(#[from] RebuildError),
    #[error(transparent)]
    Bench(#[from] bench::BenchError),
    #[error(transparent)]
    Install(#[from] InstallError),
}
