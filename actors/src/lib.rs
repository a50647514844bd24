//! SWOOSH runtime: a supervised `ractor` actor tree around the pure core.
//!
//! - **sequencer**: the single writer. Runs `swoosh_core::step` on each
//!   proposal, hands accepted records to the WAL writer and keeps ordering
//!   while they flush (pipelining); replies `Accepted` only once durable.
//! - **wal writer**: group commit. Appends queue in its mailbox while a commit
//!   (one LMDB transaction, one fsync) is in flight; the next commit takes
//!   them all.
//! - **region actors** (one per statechart region): the durable read model of
//!   their region for every project, served to `GET /state`.
//! - **snapshotter**: writes snapshots at REVERB and every N records.
//! - **attention**: feeds every operational event to the pure attention
//!   scorer (`swoosh_core::attention`), serves its digest, exports items per
//!   band and keeps the scorer's memory on disk across restarts.
//!
//! Architecture invariant: a crashed actor restarts from committed state
//! (storage recovery), never from partial state; a crash of the sequencer or
//! the WAL writer restarts both, because the sequencer runs ahead of the log.
//! Every mailbox is bounded (see [`bounded`]).

pub mod bounded;
pub mod metrics;
mod node;
mod undurable;

pub use node::{
    ActorKind, AttentionView, Clock, CompactionPolicy, FollowerHealth, GaveUp, HealthView,
    ManualClock, NodeConfig, NodeHandle, RecoveryView, ReplicationCountersSource,
    ReplicationSource, StartError, StateView, SubmitOk, SubmitResult, SystemClock,
    COMPACT_KEEP_RECORDS_MIN, COMPACT_ONLINE_RECORDS_MAX, COMPACT_ONLINE_STEP_RECORDS,
    FOLLOWER_REPORT_STALE_MS, RESTART_ATTEMPTS_MAX,
};
