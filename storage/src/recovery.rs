//! Recovery, verification and repair of a store.
//!
//! [`recover`] is what a node runs before it serves: newest usable snapshot,
//! then the WAL after it through the pure reducer (`apply_record`), checking
//! every frame hash, every chain link and every recomputed post hash. A
//! damaged snapshot is reported and the one before it is used ("forced
//! snapshot rollback"); a damaged or missing record is an error naming its
//! index, and the node must refuse to serve until an operator acts.
//!
//! [`verify`] is the full check from genesis (optionally re-verifying every
//! signature), comparing every snapshot with the replayed state and the
//! derived indexes with the log. [`repair`] is the only thing that ever cuts
//! the log: called explicitly, it truncates to the last valid record and
//! first writes everything it cuts to a side file.

use crate::base::{wal_base, WalBase};
use crate::frame::{self, FrameKind};
use crate::index::{get_decision, IndexError};
use crate::snapshot::{decode_snapshot, SnapshotFault};
use crate::store::{index_key, key_index, Batch, LogStore, Space, StoreError, MALFORMED_KEYS_MAX};
use crate::wal::{
    check_meta, decode_frame, read_record, MetaError, ReadError, RecordFault, WalIter,
    IDEM_ENTRY_BYTES_MAX,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use swoosh_core::guards::Verify;
use swoosh_core::hlc::Hlc;
use swoosh_core::reducer::{apply_prepared_check, prepare_record, PreparedRecord, ReplayError};
use swoosh_core::state::{Genesis, GenesisError, IdemEntry, NodeState};
use swoosh_core::{Hash, SignerId};

/// Progress is reported at least every this many records.
pub const PROGRESS_EVERY_RECORDS: u64 = 1024;
/// Most derived-index problems listed in a [`VerifyReport`] (all are counted).
pub const INDEX_PROBLEMS_LISTED_MAX: usize = 100;
/// First bytes of a repair side file.
pub const CUT_FILE_MAGIC: &[u8] = b"SWOOSH-CUT-v1\n";

/// What long work is doing, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Checking snapshots, newest first (`done` of `total` snapshots).
    Snapshots,
    /// Replaying records through the reducer (`done` of `total` records).
    Replay,
    /// Scanning frames and chain links without the reducer (repair).
    Scan,
    /// Rebuilding derived indexes (`done` of `total` records).
    Reindex,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
}

/// The latest [`Progress`] of a recovery running on another thread, for a
/// process that answers `/health` while it recovers (a replay of millions of
/// records takes minutes, and a port that stays closed reads as "down").
/// Written by the recovering thread through [`ProgressCell::observe`], read
/// at any time; each field is atomic on its own, so a reader may see the
/// phase of one report beside the count of the next, which a health answer
/// tolerates.
#[derive(Debug)]
pub struct ProgressCell {
    made: Instant,
    /// When the cell was made, in ms since the Unix epoch.
    made_unix_ms: u64,
    /// When the current recovery began, in ms after `made`.
    began_ms: std::sync::atomic::AtomicU64,
    /// 0: nothing reported yet; else `Phase` as 1 + its position.
    phase: std::sync::atomic::AtomicU8,
    done: std::sync::atomic::AtomicU64,
    total: std::sync::atomic::AtomicU64,
}

impl Default for ProgressCell {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressCell {
    pub fn new() -> Self {
        ProgressCell {
            made: Instant::now(),
            made_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            began_ms: Default::default(),
            phase: Default::default(),
            done: Default::default(),
            total: Default::default(),
        }
    }

    /// A new recovery begins (an actor restart after the first start):
    /// nothing reported of it yet, its time counted from now.
    pub fn begin(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.phase.store(0, Relaxed);
        self.done.store(0, Relaxed);
        self.total.store(0, Relaxed);
        self.began_ms
            .store(self.made.elapsed().as_millis() as u64, Relaxed);
    }

    /// When the process began to start (the cell was made), in seconds
    /// since the Unix epoch: `swoosh_start_time_seconds`, whose changes
    /// count restarts, a crash loop included.
    pub fn started_unix_seconds(&self) -> u64 {
        self.made_unix_ms / 1000
    }

    /// Record `p` (the callback of [`recover_with`]).
    pub fn observe(&self, p: &Progress) {
        use std::sync::atomic::Ordering::Relaxed;
        let phase = match p.phase {
            Phase::Snapshots => 1,
            Phase::Replay => 2,
            Phase::Scan => 3,
            Phase::Reindex => 4,
        };
        self.done.store(p.done, Relaxed);
        self.total.store(p.total, Relaxed);
        self.phase.store(phase, Relaxed);
    }

    /// The last report, `None` before the first.
    pub fn get(&self) -> Option<Progress> {
        use std::sync::atomic::Ordering::Relaxed;
        let phase = match self.phase.load(Relaxed) {
            1 => Phase::Snapshots,
            2 => Phase::Replay,
            3 => Phase::Scan,
            4 => Phase::Reindex,
            _ => return None,
        };
        Some(Progress {
            phase,
            done: self.done.load(Relaxed),
            total: self.total.load(Relaxed),
        })
    }

    /// Time since the current recovery began.
    pub fn elapsed(&self) -> Duration {
        let began = Duration::from_millis(self.began_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.made.elapsed().saturating_sub(began)
    }
}

#[cfg(test)]
mod progress_cell_tests {
    use super::*;

    #[test]
    fn a_cell_reports_the_last_progress_and_begins_again() {
        let c = ProgressCell::new();
        assert_eq!(c.get(), None);
        let p = Progress {
            phase: Phase::Reindex,
            done: 3,
            total: 9,
        };
        c.observe(&p);
        assert_eq!(c.get(), Some(p));
        // Far more than a descheduled thread loses between `begin` and
        // `elapsed` below.
        std::thread::sleep(Duration::from_millis(300));
        let before = c.elapsed();
        c.begin();
        assert_eq!(c.get(), None, "a new recovery has reported nothing");
        assert!(c.elapsed() < before, "its time counts from the new begin");
        assert!(c.started_unix_seconds() > 1_700_000_000);
    }
}

impl Phase {
    /// The phase as `/health` and the metrics name it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Snapshots => "snapshots",
            Phase::Replay => "replay",
            Phase::Scan => "scan",
            Phase::Reindex => "reindex",
        }
    }
}

/// A snapshot that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("snapshot {index} skipped: {reason}")]
pub struct SnapshotProblem {
    pub index: u64,
    pub reason: SnapshotFault,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecoveryError {
    #[error("the genesis document is invalid: {0}; fix the genesis file (see `swoosh init`)")]
    Genesis(#[from] GenesisError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("the log at {location} starts after record {base} (its WAL base), which only a snapshot at or after {base} can vouch for, and {}: the log cannot be proven from genesis; on a follower, install a verified snapshot from the leader again (`install_snapshot`) or resync it from scratch; on a node whose log was compacted, rebuild the snapshot at {base} from its archives (`swoosh snapshot rebuild-base --dir <dir> <archives, oldest first>`)", unusable(*base, *base_only, skipped))]
    Unproven {
        location: String,
        base: u64,
        skipped: Vec<SnapshotProblem>,
        /// Only the snapshot at the base was looked at (a check that must
        /// start there: `wal verify`, an index rebuild, a compaction), not
        /// whether a newer one could start a recovery.
        base_only: bool,
    },
    #[error("WAL record {index} at {location} is intact but replaying it fails ({source}): this build and the log disagree; do NOT repair (the record is valid), run the swoosh version that wrote the log, and `swoosh replay --dir <node dir, which holds {location}>` to see where they part")]
    Divergence {
        location: String,
        index: u64,
        source: ReplayError,
    },
}

/// What [`RecoveryError::Unproven`] says of the snapshots it looked at.
fn unusable(base: u64, base_only: bool, skipped: &[SnapshotProblem]) -> String {
    if base_only {
        format!(
            "the snapshot at {base} is unusable{}; this check starts from it, so it cannot go on (a recovery alone may start from a newer usable snapshot, `swoosh snapshot list` shows which, but verifying the log, rebuilding its indexes and compacting it need this one)",
            fmt_problems(skipped)
        )
    } else {
        format!("none is usable{}", fmt_problems(skipped))
    }
}

fn fmt_problems(p: &[SnapshotProblem]) -> String {
    if p.is_empty() {
        return String::new();
    }
    let list: Vec<String> = p.iter().map(ToString::to_string).collect();
    format!(" ({})", list.join("; "))
}

impl RecoveryError {
    /// The WAL index the error is about, if any.
    pub fn index(&self) -> Option<u64> {
        match self {
            RecoveryError::Read(r) => r.index(),
            RecoveryError::Divergence { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// `verify` fails with the same errors as recovery.
pub type VerifyError = RecoveryError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoverOptions {
    /// `Trusted` (default): frames, chain and post hashes are checked, proposal
    /// signatures are not re-verified (they were when the leader accepted
    /// them, and the hash chain protects them since). `Full` re-verifies them.
    pub verify: Verify,
    /// Start from the newest usable snapshot (default) or replay from genesis.
    /// On a log with a WAL base, `false` starts from the snapshot at the base
    /// (the log's start, not a cache) and replays everything after it.
    pub use_snapshots: bool,
}

impl Default for RecoverOptions {
    fn default() -> Self {
        RecoverOptions {
            verify: Verify::Trusted,
            use_snapshots: true,
        }
    }
}

/// The recovered node and how it was reached.
#[derive(Clone, Debug)]
pub struct Recovered {
    pub node: NodeState,
    /// The snapshot recovery started from (`None`: genesis).
    pub snapshot: Option<u64>,
    /// Newer snapshots that were damaged or did not join the log.
    pub skipped_snapshots: Vec<SnapshotProblem>,
    /// Records replayed after the snapshot.
    pub replayed: u64,
    /// Wall time of the whole recovery (`swoosh_recovery_time_seconds`).
    pub elapsed: Duration,
}

/// Recover with default options and no progress reporting.
pub fn recover<S: LogStore + ?Sized>(
    store: &S,
    genesis: &Genesis,
) -> Result<Recovered, RecoveryError> {
    recover_with(store, genesis, &RecoverOptions::default(), &mut |_| {})
}

/// Recover the node state from `store`: newest usable snapshot, then replay.
/// On a log with a WAL base B the start must be a usable snapshot at or after
/// B (else [`RecoveryError::Unproven`]); the snapshot at B joins the base hash
/// instead of a record.
pub fn recover_with<S: LogStore + ?Sized>(
    store: &S,
    genesis: &Genesis,
    opts: &RecoverOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Recovered, RecoveryError> {
    let t0 = Instant::now();
    let fresh = NodeState::new(genesis.clone())?;
    let genesis_hash = fresh.genesis_hash;
    check_meta(store, genesis_hash)?;
    let wal_base = wal_base(store)?;
    let last = log_end_with(store, wal_base)?;
    let mut skipped = vec![];
    let mut base = None;
    if opts.use_snapshots || wal_base.is_some() {
        let mut list = store.list_snapshots()?;
        if !opts.use_snapshots {
            list.retain(|i| Some(*i) == wal_base.map(|b| b.index));
        }
        let total = list.len() as u64;
        for (n, idx) in list.into_iter().rev().enumerate() {
            progress(&Progress {
                phase: Phase::Snapshots,
                done: n as u64,
                total,
            });
            match usable_snapshot(store, idx, genesis_hash, last, wal_base)? {
                Ok(state) => {
                    base = Some((idx, state));
                    break;
                }
                Err(reason) => skipped.push(SnapshotProblem { index: idx, reason }),
            }
        }
    }
    let (snapshot, mut node) = match (base, wal_base) {
        (Some((idx, state)), _) => (Some(idx), state),
        (None, None) => (None, fresh),
        (None, Some(b)) => {
            return Err(RecoveryError::Unproven {
                location: store.location(),
                base: b.index,
                skipped,
                base_only: false,
            })
        }
    };
    let from = node.index + 1;
    let replayed = replay(
        store,
        &mut node,
        from,
        last,
        opts.verify,
        progress,
        &mut |_, _| {},
    )?;
    Ok(Recovered {
        node,
        snapshot,
        skipped_snapshots: skipped,
        replayed,
        elapsed: t0.elapsed(),
    })
}

/// max(last WAL record, base).
fn log_end_with<S: LogStore + ?Sized>(store: &S, base: Option<WalBase>) -> Result<u64, StoreError> {
    let last = store.last_index()?;
    Ok(base.map_or(last, |b| b.index.max(last)))
}

/// The state at the WAL base: the snapshot at `base`, checked as recovery
/// checks it, or [`RecoveryError::Unproven`].
pub(crate) fn base_state<S: LogStore + ?Sized>(
    store: &S,
    genesis_hash: Hash,
    base: WalBase,
) -> Result<NodeState, RecoveryError> {
    let last = log_end_with(store, Some(base))?;
    match usable_snapshot(store, base.index, genesis_hash, last, Some(base))? {
        Ok(state) => Ok(state),
        Err(reason) => Err(RecoveryError::Unproven {
            location: store.location(),
            base: base.index,
            skipped: vec![SnapshotProblem {
                index: base.index,
                reason,
            }],
            base_only: true,
        }),
    }
}

/// Load snapshot `idx` and check it can start a recovery: intact, same
/// genesis, within the log, and joined to the record at its index (or to
/// the WAL base hash, at the base). The outer `Result` is a store failure;
/// the inner one is a verdict on the snapshot.
fn usable_snapshot<S: LogStore + ?Sized>(
    store: &S,
    idx: u64,
    genesis_hash: Hash,
    last: u64,
    base: Option<WalBase>,
) -> Result<Result<NodeState, SnapshotFault>, RecoveryError> {
    let Some(bytes) = store.get_snapshot(idx)? else {
        return Ok(Err(SnapshotFault::Wal {
            index: idx,
            detail: "vanished while recovering".into(),
        }));
    };
    let snap = match decode_snapshot(idx, &bytes) {
        Ok((_, s)) => s,
        Err(f) => return Ok(Err(f)),
    };
    if snap.state.genesis_hash != genesis_hash {
        return Ok(Err(SnapshotFault::Genesis {
            expected: genesis_hash,
            got: snap.state.genesis_hash,
        }));
    }
    if let Err(f) = joins_log(store, idx, snap.head_record, genesis_hash, last, base)? {
        return Ok(Err(f));
    }
    Ok(Ok(snap.state))
}

/// Whether a snapshot at `idx` whose head record is `head` joins this
/// store's log as recovery requires: within the log, not below the WAL base,
/// and `head` the hash of record `idx` (of the base at the base, of genesis
/// at 0). The outer `Result` is a store failure; the inner one the verdict.
/// (`swoosh snapshot list` and `restore` judge snapshots with it.)
pub fn snapshot_joins_log<S: LogStore + ?Sized>(
    store: &S,
    idx: u64,
    head: Hash,
    genesis_hash: Hash,
) -> Result<Result<(), SnapshotFault>, RecoveryError> {
    let base = wal_base(store)?;
    let last = log_end_with(store, base)?;
    joins_log(store, idx, head, genesis_hash, last, base)
}

fn joins_log<S: LogStore + ?Sized>(
    store: &S,
    idx: u64,
    head: Hash,
    genesis_hash: Hash,
    last: u64,
    base: Option<WalBase>,
) -> Result<Result<(), SnapshotFault>, RecoveryError> {
    if idx > last {
        return Ok(Err(SnapshotFault::Wal {
            index: idx,
            detail: format!("is beyond the end of the log (last index {last})"),
        }));
    }
    let base_index = base.map_or(0, |b| b.index);
    if idx < base_index {
        return Ok(Err(SnapshotFault::Wal {
            index: idx,
            detail: format!("is below the WAL base {base_index}: the records after it are gone"),
        }));
    }
    let actual = if idx == 0 {
        genesis_hash
    } else if let Some(b) = base.filter(|b| b.index == idx) {
        b.hash
    } else {
        match read_record(store, idx) {
            Ok(v) => v.hash,
            Err(ReadError::Store(e)) => return Err(e.into()),
            Err(e) => {
                return Ok(Err(SnapshotFault::Wal {
                    index: idx,
                    detail: format!("is unreadable ({})", short(&e)),
                }))
            }
        }
    };
    if actual != head {
        return Ok(Err(SnapshotFault::Wal {
            index: idx,
            detail: format!("hashes to {actual}, the snapshot expects {head}"),
        }));
    }
    Ok(Ok(()))
}

fn short(e: &ReadError) -> String {
    match e {
        ReadError::Corrupt { reason, .. } => reason.to_string(),
        ReadError::Missing { .. } => "missing".into(),
        ReadError::BelowBase { .. } => "below the WAL base".into(),
        ReadError::Store(s) => s.to_string(),
    }
}

/// Records read per chunk while replaying.
pub const REPLAY_CHUNK_RECORDS: usize = crate::wal::WAL_READ_CHUNK_RECORDS;
/// Chunks read ahead of the reducer while replaying (each holds up to
/// [`REPLAY_CHUNK_RECORDS`] records), bounding the pipeline's memory.
pub const REPLAY_CHUNKS_IN_FLIGHT_MAX: usize = 4;
/// Replays of fewer records than this run on the calling thread alone.
pub const REPLAY_PIPELINE_RECORDS_MIN: u64 = 2 * REPLAY_CHUNK_RECORDS as u64;

/// Why the record-local stage stopped at a record.
enum Stop {
    Missing(u64),
    Corrupt(u64, RecordFault),
    Rejected(u64, ReplayError),
}

/// A record whose frame, index and chain link were checked and whose
/// record-local work ([`prepare_record`]) is done; `frame_hash` is the hash
/// stored in (and checked against) its frame.
/// Records the reducer has applied, on their way back to the helper
/// thread that allocated them.
type Trash = Vec<(crate::wal::VerifiedRecord, swoosh_core::Proposal)>;

struct Ready {
    frame_hash: Hash,
    prepared: PreparedRecord,
}

/// The record-local stage of replay: frame hash, decode, index and chain
/// link (the checks [`WalIter`] makes), then [`prepare_record`]. It needs
/// nothing but the records, so it runs ahead of the reducer on another
/// thread. Stops for good at the first fault.
struct Prepare {
    next: u64,
    prev_hash: Hash,
    stopped: bool,
}

impl Prepare {
    fn chunk(&mut self, rows: Vec<(u64, Vec<u8>)>) -> Vec<Result<Ready, Stop>> {
        let mut out = Vec::with_capacity(rows.len().max(1));
        if self.stopped {
            return out;
        }
        if rows.is_empty() {
            // The store has nothing where the next record belongs.
            self.stopped = true;
            out.push(Err(Stop::Missing(self.next)));
            return out;
        }
        for (key, bytes) in rows {
            let r = self.one(key, &bytes);
            let failed = r.is_err();
            out.push(r);
            if failed {
                self.stopped = true;
                break;
            }
        }
        out
    }

    fn one(&mut self, key: u64, bytes: &[u8]) -> Result<Ready, Stop> {
        let index = self.next;
        if key != index {
            return Err(Stop::Missing(index));
        }
        let v = decode_frame(index, bytes).map_err(|f| Stop::Corrupt(index, f))?;
        if v.record.prev_hash != self.prev_hash {
            return Err(Stop::Corrupt(
                index,
                RecordFault::Chain {
                    expected: self.prev_hash,
                    got: v.record.prev_hash,
                },
            ));
        }
        let prepared = prepare_record(v.record).map_err(|e| Stop::Rejected(index, e))?;
        self.prev_hash = v.hash;
        self.next += 1;
        Ok(Ready {
            frame_hash: v.hash,
            prepared,
        })
    }
}

/// Replay records `from..=to` into `node`, checking frames, chain and the
/// reducer's recomputation; `each` sees every applied record. Returns the
/// number of records applied.
///
/// Two stages: the record-local checks and work ([`Prepare`]: frame hash,
/// decode, chain link, proposal shape and inputs hash, content hash, the
/// record's canonical re-encoding) and the reducer ([`apply_prepared_check`]:
/// re-run, post hash, decision, record equality). For long replays the
/// first runs on a helper thread, up to [`REPLAY_CHUNKS_IN_FLIGHT_MAX`]
/// chunks ahead; results are consumed strictly in log order, so what is
/// checked, and the first error reported, are the same either way.
pub(crate) fn replay<S: LogStore + ?Sized>(
    store: &S,
    node: &mut NodeState,
    from: u64,
    to: u64,
    verify: Verify,
    progress: &mut dyn FnMut(&Progress),
    each: &mut dyn FnMut(&NodeState, &crate::wal::VerifiedRecord),
) -> Result<u64, RecoveryError> {
    let total = to.saturating_sub(from.saturating_sub(1));
    let mut done = 0u64;
    progress(&Progress {
        phase: Phase::Replay,
        done,
        total,
    });
    let from = from.max(1);
    let mut prep = Prepare {
        next: from,
        prev_hash: node.head_record,
        stopped: false,
    };
    let mut apply_chunk = |node: &mut NodeState,
                           chunk: Vec<Result<Ready, Stop>>,
                           done: &mut u64,
                           trash: &mut Trash|
     -> Result<(), RecoveryError> {
        for item in chunk {
            let ready = item.map_err(|stop| stop_error(store, stop))?;
            let index = ready.prepared.record.index;
            let divergence = |source| RecoveryError::Divergence {
                location: store.location(),
                index,
                source,
            };
            apply_prepared_check(node, &ready.prepared, verify).map_err(|source| match source {
                ReplayError::Chain { expected, got, .. } => {
                    RecoveryError::Read(ReadError::Corrupt {
                        location: store.location(),
                        index,
                        reason: RecordFault::Chain { expected, got },
                    })
                }
                source => divergence(source),
            })?;
            // The record re-encoded canonically must hash to the stored frame.
            if node.head_record != ready.frame_hash {
                return Err(divergence(ReplayError::Mismatch {
                    index,
                    field: "canonical re-encoding",
                }));
            }
            let (record, proposal) = ready.prepared.into_parts();
            let v = crate::wal::VerifiedRecord {
                index,
                hash: ready.frame_hash,
                record,
            };
            each(node, &v);
            trash.push((v, proposal));
            *done += 1;
            if done.is_multiple_of(PROGRESS_EVERY_RECORDS) || *done == total {
                progress(&Progress {
                    phase: Phase::Replay,
                    done: *done,
                    total,
                });
            }
        }
        Ok(())
    };
    let mut next_read = from;
    let read = |next_read: &mut u64| -> Result<Vec<(u64, Vec<u8>)>, RecoveryError> {
        let rows = store.read_range(*next_read, to, REPLAY_CHUNK_RECORDS)?;
        if let Some((last, _)) = rows.last() {
            *next_read = last + 1;
        }
        Ok(rows)
    };
    if total < REPLAY_PIPELINE_RECORDS_MIN {
        while next_read <= to && !prep.stopped {
            let chunk = prep.chunk(read(&mut next_read)?);
            apply_chunk(node, chunk, &mut done, &mut Vec::new())?;
        }
        return Ok(done);
    }
    std::thread::scope(|scope| {
        let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<(Vec<(u64, Vec<u8>)>, Trash)>(
            REPLAY_CHUNKS_IN_FLIGHT_MAX,
        );
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(REPLAY_CHUNKS_IN_FLIGHT_MAX);
        scope.spawn(move || {
            for (rows, trash) in raw_rx {
                // The helper allocated what the reducer is done with: freeing
                // it here keeps cross-thread frees (~8 % of the reducer
                // thread) off the critical path.
                drop(trash);
                // One result per chunk received, and at most
                // REPLAY_CHUNKS_IN_FLIGHT_MAX chunks unanswered: never blocks.
                if ready_tx.send(prep.chunk(rows)).is_err() {
                    break;
                }
            }
        });
        // Both channels end when this closure returns (on success or at the
        // first error), which stops the helper before the scope joins it.
        let mut in_flight = 0usize;
        let mut exhausted = false;
        let mut trash: Trash = Vec::new();
        loop {
            while !exhausted && in_flight < REPLAY_CHUNKS_IN_FLIGHT_MAX {
                let rows = read(&mut next_read)?;
                // An empty read before `to` is a missing record: the helper
                // reports it in order.
                exhausted = rows.is_empty() || next_read > to;
                raw_tx
                    .send((rows, std::mem::take(&mut trash)))
                    .expect("the replay helper runs until the channel closes");
                in_flight += 1;
            }
            if in_flight == 0 {
                break;
            }
            let chunk = ready_rx
                .recv()
                .expect("the replay helper answers every chunk");
            in_flight -= 1;
            let stopped = chunk.last().is_none_or(|r| r.is_err());
            apply_chunk(node, chunk, &mut done, &mut trash)?;
            if stopped {
                break;
            }
        }
        Ok(done)
    })
}

fn stop_error<S: LogStore + ?Sized>(store: &S, stop: Stop) -> RecoveryError {
    match stop {
        Stop::Missing(index) => match store.last_index() {
            Ok(last) => RecoveryError::Read(ReadError::Missing {
                location: store.location(),
                index,
                last,
            }),
            Err(e) => e.into(),
        },
        Stop::Corrupt(index, reason) => RecoveryError::Read(ReadError::Corrupt {
            location: store.location(),
            index,
            reason,
        }),
        Stop::Rejected(index, source) => RecoveryError::Divergence {
            location: store.location(),
            index,
            source,
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyOptions {
    /// `Full` (default) re-verifies every proposal signature.
    pub verify: Verify,
    /// Compare the idempotency index and stored decisions with the log.
    pub check_indexes: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            verify: Verify::Full,
            check_indexes: true,
        }
    }
}

/// Whether every record's decision must be stored: a leader stores one per
/// record, a follower none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExpectDecisions {
    /// Required if the store holds any. A leader that has lost every
    /// decision then passes: use [`ExpectDecisions::Leader`] where the
    /// caller knows the role.
    #[default]
    Infer,
    /// A leader's store: a missing decision is a problem.
    Leader,
    /// A follower's store: decisions are not required.
    Follower,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VerifyReport {
    pub records: u64,
    pub head_hash: Hash,
    pub root_hash: Hash,
    pub hlc: Option<Hlc>,
    /// Snapshots whose state equals the replayed state at their index.
    pub snapshots_ok: Vec<u64>,
    pub snapshot_problems: Vec<SnapshotProblem>,
    /// Derived-index disagreements (first [`INDEX_PROBLEMS_LISTED_MAX`]); fix
    /// with `swoosh wal reindex`.
    pub index_problems: Vec<String>,
    pub index_problems_total: u64,
    pub elapsed: Duration,
}

/// Full check from genesis (on a based log: from the snapshot at the WAL
/// base, which must be usable, else [`RecoveryError::Unproven`]): every
/// frame, chain link and reducer step, every snapshot against the replayed
/// state, and (optionally) the derived indexes. Fails on the first bad
/// record; snapshot and index problems are reported. Decisions are
/// required if any is stored ([`ExpectDecisions::Infer`]).
pub fn verify<S: LogStore + ?Sized>(
    store: &S,
    genesis: &Genesis,
    opts: &VerifyOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<VerifyReport, VerifyError> {
    verify_expecting(store, genesis, opts, ExpectDecisions::Infer, progress)
}

/// [`verify`] of a store whose role the caller knows: a leader's store must
/// hold every record's decision, even when it holds none at all.
// A separate entry point, not a `VerifyOptions` field, while callers outside
// this crate build `VerifyOptions` without `..Default::default()`.
pub fn verify_expecting<S: LogStore + ?Sized>(
    store: &S,
    genesis: &Genesis,
    opts: &VerifyOptions,
    decisions: ExpectDecisions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<VerifyReport, VerifyError> {
    let t0 = Instant::now();
    let mut node = NodeState::new(genesis.clone())?;
    let genesis_hash = node.genesis_hash;
    check_meta(store, genesis_hash)?;
    let base = wal_base(store)?;
    let last = log_end_with(store, base)?;
    let base_index = base.map_or(0, |b| b.index);
    if let Some(b) = base {
        node = base_state(store, genesis_hash, b)?;
    }

    // Decode every snapshot up front, keeping only what the comparison needs.
    let mut problems = vec![];
    let mut pending: BTreeMap<u64, (Hash, Hash)> = BTreeMap::new();
    let list = store.list_snapshots()?;
    let total = list.len() as u64;
    for (n, idx) in list.into_iter().enumerate() {
        progress(&Progress {
            phase: Phase::Snapshots,
            done: n as u64,
            total,
        });
        let Some(bytes) = store.get_snapshot(idx)? else {
            continue;
        };
        match decode_snapshot(idx, &bytes) {
            Err(reason) => problems.push(SnapshotProblem { index: idx, reason }),
            Ok((_, s)) if s.state.genesis_hash != genesis_hash => problems.push(SnapshotProblem {
                index: idx,
                reason: SnapshotFault::Genesis {
                    expected: genesis_hash,
                    got: s.state.genesis_hash,
                },
            }),
            Ok(_) if idx < base_index => problems.push(SnapshotProblem {
                index: idx,
                reason: SnapshotFault::Wal {
                    index: idx,
                    detail: format!(
                        "is below the WAL base {base_index}: the records after it are gone"
                    ),
                },
            }),
            Ok(_) if idx > last => problems.push(SnapshotProblem {
                index: idx,
                reason: SnapshotFault::Wal {
                    index: idx,
                    detail: format!("is beyond the end of the log (last index {last})"),
                },
            }),
            Ok((_, s)) => {
                pending.insert(idx, (s.head_record, s.root_hash));
            }
        }
    }
    let mut ok = vec![];
    let mut check_snap =
        |node: &NodeState, ok: &mut Vec<u64>, problems: &mut Vec<SnapshotProblem>| {
            if let Some((head, root)) = pending.remove(&node.index) {
                if head == node.head_record && root == node.root_hash() {
                    ok.push(node.index);
                } else {
                    let detail = format!(
                        "differs from the replayed state (replay: head {}, root {})",
                        node.head_record,
                        node.root_hash()
                    );
                    problems.push(SnapshotProblem {
                        index: node.index,
                        reason: SnapshotFault::Wal {
                            index: node.index,
                            detail,
                        },
                    });
                }
            }
        };
    check_snap(&node, &mut ok, &mut problems);

    let mut index_problems = vec![];
    let mut index_problems_total = 0u64;
    let mut note = |msg: String| {
        index_problems_total += 1;
        if index_problems.len() < INDEX_PROBLEMS_LISTED_MAX {
            index_problems.push(msg);
        }
    };
    // A leader stores one decision per record, a follower none. Without the
    // role, a missing one is a problem only where decisions are stored at
    // all (which passes a leader that lost them all).
    let decisions_stored = opts.check_indexes
        && match decisions {
            ExpectDecisions::Leader => true,
            ExpectDecisions::Follower => false,
            ExpectDecisions::Infer => store.count(Space::Decisions)? > 0,
        };
    // A stored decision must be the genesis leader's, signed over its
    // record: the hash check alone holds for a decision re-signed by any
    // key. Checked when signatures are (`Verify::Full`).
    let decision_signer = (opts.verify == Verify::Full).then(|| node.genesis.leader.clone());
    let mut store_err: Option<StoreError> = None;
    let records = replay(
        store,
        &mut node,
        base_index + 1,
        last,
        opts.verify,
        progress,
        &mut |node, v| {
            check_snap(node, &mut ok, &mut problems);
            if opts.check_indexes && store_err.is_none() {
                if let Err(e) = check_indexes(
                    store,
                    v,
                    decisions_stored,
                    decision_signer.as_ref(),
                    &mut note,
                ) {
                    store_err = Some(e);
                }
            }
        },
    )?;
    if let Some(e) = store_err {
        return Err(e.into());
    }
    if opts.check_indexes {
        check_orphans(store, last, base.is_some(), records, &mut note)?;
    }
    Ok(VerifyReport {
        records,
        head_hash: node.head_record,
        root_hash: node.root_hash(),
        hlc: node.hlc,
        snapshots_ok: ok,
        snapshot_problems: problems,
        index_problems,
        index_problems_total,
        elapsed: t0.elapsed(),
    })
}

/// `decision_signer`: when given, a stored signed decision must carry this
/// leader and a valid signature.
pub(crate) fn check_indexes<S: LogStore + ?Sized>(
    store: &S,
    v: &crate::wal::VerifiedRecord,
    decisions_stored: bool,
    decision_signer: Option<&SignerId>,
    note: &mut dyn FnMut(String),
) -> Result<(), StoreError> {
    let r = &v.record;
    match crate::index::lookup_idem(store, &r.project, &r.idem_key) {
        Err(IndexError::Store(e)) => return Err(e),
        Err(e) => note(format!("record {}: {e}", v.index)),
        Ok(None) => note(format!(
            "record {}: no idempotency entry for project {:?} key {:?}",
            v.index, r.project, r.idem_key
        )),
        Ok(Some(e)) => {
            let want_content = r.proposal().content_hash().ok();
            if e.index != v.index
                || e.decision != r.decision
                || e.state_post_hash != r.state_post_hash
                || Some(e.content_hash) != want_content
            {
                note(format!(
                    "record {}: idempotency entry for {:?} points at index {} / other content",
                    v.index, r.idem_key, e.index
                ));
            }
        }
    }
    match get_decision(store, &r.decision) {
        Err(IndexError::Store(e)) => return Err(e),
        Err(e) => note(format!("record {}: {e}", v.index)),
        Ok(Some(d)) if d.record().index != v.index => note(format!(
            "record {}: decision {} names index {}",
            v.index,
            r.decision,
            d.record().index
        )),
        Ok(None) if decisions_stored => note(format!(
            "record {}: its decision {} is not stored",
            v.index, r.decision
        )),
        Ok(Some(crate::wal::DecisionDoc::Signed(s))) => {
            if let Some(leader) = decision_signer {
                if s.leader != *leader {
                    note(format!(
                        "record {}: its decision {} is signed by {}, not by the genesis leader {leader}",
                        v.index, r.decision, s.leader
                    ));
                } else if let Err(e) = s.verify() {
                    note(format!(
                        "record {}: its decision {} has a bad signature: {e}",
                        v.index, r.decision
                    ));
                }
            }
        }
        Ok(_) => {}
    }
    Ok(())
}

/// Derived entries no record of the log accounts for (the per-record check
/// sees only the entries records point at): an idempotency key or decision
/// of a record beyond the log's end, which a cut that kept them leaves, and,
/// on a log from genesis, more idempotency keys (or decisions) than records. A node recalls
/// aged-out keys from this index, so such a key would refuse a new proposal
/// as a conflict with a record that does not exist. Entries that do not
/// decode are left to the per-record check, which names them.
fn check_orphans<S: LogStore + ?Sized>(
    store: &S,
    last: u64,
    based: bool,
    records: u64,
    note: &mut dyn FnMut(String),
) -> Result<(), StoreError> {
    // Entries held for records at or below a base (none on a log from
    // genesis; unknown on a store based before `base_derived` was kept).
    let kept = if based {
        crate::base::base_derived(store)?
    } else {
        Some(crate::base::BaseDerived::default())
    };
    let mut keys = 0u64;
    for_each_entry(store, Space::Idem, &mut |_, v| {
        keys += 1;
        if let Some(e) = decode_idem(v) {
            if e.index > last {
                note(format!(
                    "an idempotency entry ({} at index {}) is for a record beyond the log's end ({last})",
                    e.transition, e.index
                ));
            }
        }
    })?;
    // Fewer keys than records: the per-record check names each missing one.
    if let Some(k) = kept.filter(|k| keys > k.idem.saturating_add(records)) {
        note(format!(
            "{keys} idempotency entries for {records} records{}: some answer for no record of the log",
            if based { format!(" and {} kept at or below the WAL base", k.idem) } else { String::new() }
        ));
    }
    let mut decisions = 0u64;
    for_each_entry(store, Space::Decisions, &mut |_, v| {
        decisions += 1;
        if let Some(d) = decode_decision(v) {
            if d.record().index > last {
                note(format!(
                    "decision {} is for record {}, beyond the log's end ({last})",
                    d.hash(),
                    d.record().index
                ));
            }
        }
    })?;
    // One decision per record at most (a follower stores none).
    if let Some(k) = kept.filter(|k| decisions > k.decisions.saturating_add(records)) {
        note(format!(
            "{decisions} decisions for {records} records{}: some are for no record of the log",
            if based {
                format!(" and {} kept at or below the WAL base", k.decisions)
            } else {
                String::new()
            }
        ));
    }
    Ok(())
}

/// A stored idempotency entry, `None` when it does not decode.
pub(crate) fn decode_idem(v: &[u8]) -> Option<IdemEntry> {
    frame::open_decode::<IdemEntry>(FrameKind::IdemEntry, v, IDEM_ENTRY_BYTES_MAX)
        .ok()
        .map(|(_, e)| e)
}

/// A stored decision record, `None` when it does not decode.
pub(crate) fn decode_decision(v: &[u8]) -> Option<crate::wal::DecisionDoc> {
    frame::open_decode::<crate::wal::DecisionDoc>(
        FrameKind::Decision,
        v,
        crate::wal::DECISION_BYTES_MAX,
    )
    .ok()
    .map(|(_, d)| d)
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the side file {path} already exists; pass a new --keep-copy path so an earlier cut is never overwritten (nothing was cut)")]
    SideFileExists { path: PathBuf },
    #[error("cannot write the side file {path}: {detail}; nothing was cut: free space or choose another --keep-copy path")]
    SideFile { path: PathBuf, detail: String },
    #[error("the {space} space of {location} holds more than {MALFORMED_KEYS_MAX} keys that are not 8-byte indexes: that is not a stray write repair can remove; nothing was changed: restore the store from a backup")]
    TooManyMalformed { location: String, space: Space },
}

/// A key of the WAL or snapshot space that is not an 8-byte big-endian
/// index: no record or snapshot is ever stored under one, so it is damage
/// (a stray write), and every read that meets it fails
/// ([`StoreError::BadIndexKey`]). Repair removes it, after copying it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MalformedKey {
    pub space: Space,
    pub key: Vec<u8>,
}

/// What [`repair`] would do, found without changing anything
/// ([`plan_repair`]; `swoosh wal repair` without --yes prints it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairPlan {
    /// The first record the log can hold: the WAL base + 1, or 1.
    pub first: u64,
    /// The log's end: its last record, or the WAL base.
    pub last: u64,
    /// The log would end here (`last` when no record is bad; never below
    /// the WAL base).
    pub last_good: u64,
    /// The first bad record (`None`: frames, indexes and links all check).
    pub fault: Option<ReadError>,
    /// Snapshots beyond `last_good`, which would be cut with the records.
    pub cut_snapshots: Vec<u64>,
    /// Malformed WAL and snapshot keys, which would be removed.
    pub malformed: Vec<MalformedKey>,
}

impl RepairPlan {
    /// True when repair would leave the store as it is.
    pub fn changes_nothing(&self) -> bool {
        self.fault.is_none() && self.malformed.is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairReport {
    /// The log now ends here.
    pub last_good: u64,
    /// The first bad record found (`None`: no record was bad, none cut).
    pub fault: Option<ReadError>,
    pub cut_records: u64,
    /// Snapshots beyond `last_good`, removed (they are in the side file).
    pub cut_snapshots: Vec<u64>,
    /// Idempotency entries and decisions of cut records (or damaged) removed.
    pub removed_derived: u64,
    /// Malformed WAL and snapshot keys removed (they are in the side file).
    pub removed_malformed: Vec<MalformedKey>,
    pub side_file: Option<PathBuf>,
}

/// Find what [`repair`] would do without changing anything: the malformed
/// WAL and snapshot keys, and the first record whose frame, index or chain
/// link is bad (walking from the WAL base + 1, anchored at the base hash, on
/// a based log).
pub fn plan_repair<S: LogStore + ?Sized>(
    store: &S,
    genesis_hash: Hash,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RepairPlan, RepairError> {
    check_meta(store, genesis_hash)?;
    let sweep = sweep_malformed(store)?;
    let view = WellFormed {
        store,
        sweep: &sweep,
    };
    walk_for_repair(&view, genesis_hash, progress)
}

/// Find the first record whose frame, index or chain link is bad, write every
/// record and snapshot after the last good one to `keep_copy` (which must not
/// exist), then cut them and their derived entries in one commit. Does not run
/// the reducer: a divergence is not damage and is never cut. On a based log
/// the walk starts at base + 1, anchored at the base hash, and never cuts
/// below the base. Malformed WAL and snapshot keys ([`MalformedKey`]) are
/// copied to the side file too and removed in the same commit; the walk sees
/// the log as it is without them.
pub fn repair<S: LogStore + ?Sized>(
    store: &mut S,
    genesis_hash: Hash,
    keep_copy: &Path,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RepairReport, RepairError> {
    check_meta(&*store, genesis_hash)?;
    let sweep = sweep_malformed(&*store)?;
    let (plan, batch, cut, cut_records) = {
        let view = WellFormed {
            store: &*store,
            sweep: &sweep,
        };
        let plan = walk_for_repair(&view, genesis_hash, progress)?;
        if plan.changes_nothing() {
            return Ok(RepairReport {
                last_good: plan.last,
                fault: None,
                cut_records: 0,
                cut_snapshots: vec![],
                removed_derived: 0,
                removed_malformed: vec![],
                side_file: None,
            });
        }
        let cut_records = write_side_file(&view, keep_copy, &plan)?;
        // Only a bad record cuts; malformed keys alone leave every record,
        // snapshot and derived entry as it is.
        let (mut b, cut) = if plan.fault.is_some() {
            cut_batch(&view, plan.last_good)?
        } else {
            (
                Batch::new(),
                Cut {
                    snapshots: vec![],
                    removed_derived: 0,
                },
            )
        };
        for m in &plan.malformed {
            b.delete(m.space, m.key.clone());
        }
        (plan, b, cut, cut_records)
    };
    store.commit(batch)?;
    store.sync()?;
    Ok(RepairReport {
        last_good: plan.last_good,
        fault: plan.fault,
        cut_records,
        cut_snapshots: cut.snapshots,
        removed_derived: cut.removed_derived,
        removed_malformed: plan.malformed,
        side_file: Some(keep_copy.to_path_buf()),
    })
}

/// The walk of [`plan_repair`], on the store as it is without its
/// malformed keys.
fn walk_for_repair<S: LogStore + ?Sized>(
    store: &WellFormed<'_, S>,
    genesis_hash: Hash,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RepairPlan, RepairError> {
    let base = wal_base(store)?;
    let last = log_end_with(store, base)?;
    let (base_index, anchor) = base.map_or((0, genesis_hash), |b| (b.index, b.hash));
    let total = last - base_index;
    let mut fault = None;
    let mut done = 0u64;
    for item in WalIter::new(store, base_index + 1, last, anchor) {
        match item {
            Ok(_) => {
                done += 1;
                if done.is_multiple_of(PROGRESS_EVERY_RECORDS) {
                    progress(&Progress {
                        phase: Phase::Scan,
                        done,
                        total,
                    });
                }
            }
            Err(ReadError::Store(e)) => return Err(e.into()),
            Err(e) => {
                fault = Some(e);
                break;
            }
        }
    }
    progress(&Progress {
        phase: Phase::Scan,
        done,
        total,
    });
    let last_good = match &fault {
        None => last,
        Some(f) => f
            .index()
            .unwrap_or(base_index + 1)
            .saturating_sub(1)
            .max(base_index),
    };
    let cut_snapshots: Vec<u64> = match fault {
        None => vec![],
        Some(_) => store
            .list_snapshots()?
            .into_iter()
            .filter(|i| *i > last_good)
            .collect(),
    };
    Ok(RepairPlan {
        first: base_index + 1,
        last,
        last_good,
        fault,
        cut_snapshots,
        malformed: store.sweep.malformed.clone(),
    })
}

/// The malformed keys of the WAL and snapshot spaces, and the last
/// well-formed key of each (which [`LogStore::last`] cannot find past a
/// malformed one).
struct Sweep {
    malformed: Vec<MalformedKey>,
    last_ok: [Option<Vec<u8>>; 2],
}

/// Find every malformed WAL and snapshot key. A malformed key can sort
/// anywhere and the store has no key-only scan, so this reads both spaces
/// whole: repair is run rarely, offline, and its walk reads every record
/// again anyway.
fn sweep_malformed<S: LogStore + ?Sized>(store: &S) -> Result<Sweep, RepairError> {
    let mut sweep = Sweep {
        malformed: vec![],
        last_ok: [None, None],
    };
    for (slot, space) in [Space::Wal, Space::Snapshots].into_iter().enumerate() {
        let mut found = 0usize;
        let mut last_ok = None;
        for_each_entry(store, space, &mut |k, _| {
            if key_index(k).is_some() {
                last_ok = Some(k.to_vec());
            } else {
                found += 1;
                if found <= MALFORMED_KEYS_MAX {
                    sweep.malformed.push(MalformedKey {
                        space,
                        key: k.to_vec(),
                    });
                }
            }
        })?;
        if found > MALFORMED_KEYS_MAX {
            return Err(RepairError::TooManyMalformed {
                location: store.location(),
                space,
            });
        }
        sweep.last_ok[slot] = last_ok;
    }
    Ok(sweep)
}

/// A read-only view of a store without its malformed WAL and snapshot keys:
/// how repair plans, and copies what it cuts, as if they were already
/// removed (it removes them in the same commit as the cut).
struct WellFormed<'s, S: ?Sized> {
    store: &'s S,
    sweep: &'s Sweep,
}

impl<S: LogStore + ?Sized> WellFormed<'_, S> {
    fn slot(space: Space) -> Option<usize> {
        match space {
            Space::Wal => Some(0),
            Space::Snapshots => Some(1),
            _ => None,
        }
    }

    fn read_only(&self) -> StoreError {
        StoreError::Backend {
            location: self.store.location(),
            op: "writing",
            detail: "repair's view of the store is read-only (a bug: report it)".into(),
        }
    }
}

impl<S: LogStore + ?Sized> LogStore for WellFormed<'_, S> {
    fn location(&self) -> String {
        self.store.location()
    }
    fn durability(&self) -> crate::store::Durability {
        self.store.durability()
    }
    fn commit(&mut self, _: Batch) -> Result<crate::store::CommitInfo, StoreError> {
        Err(self.read_only())
    }
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.get(space, key)
    }
    fn scan(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<crate::store::KeyValue>, StoreError> {
        if Self::slot(space).is_none() {
            return self.store.scan(space, from, to, limit);
        }
        let mut from = from.to_vec();
        loop {
            let rows = self.store.scan(space, &from, to, limit)?;
            let Some((last, _)) = rows.last() else {
                return Ok(rows);
            };
            // The next key after `last` in byte order is `last ++ [0]`.
            let mut next = last.clone();
            next.push(0);
            let kept: Vec<_> = rows
                .into_iter()
                .filter(|(k, _)| key_index(k).is_some())
                .collect();
            // A page of malformed keys only is not the end of the range.
            if !kept.is_empty() {
                return Ok(kept);
            }
            from = next;
        }
    }
    fn last(&self, space: Space) -> Result<Option<crate::store::KeyValue>, StoreError> {
        let Some(slot) = Self::slot(space) else {
            return self.store.last(space);
        };
        match &self.sweep.last_ok[slot] {
            None => Ok(None),
            Some(k) => Ok(self.store.get(space, k)?.map(|v| (k.clone(), v))),
        }
    }
    fn count(&self, space: Space) -> Result<u64, StoreError> {
        let hidden = self
            .sweep
            .malformed
            .iter()
            .filter(|m| m.space == space)
            .count() as u64;
        Ok(self.store.count(space)?.saturating_sub(hidden))
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        Err(self.read_only())
    }
    fn overwrite_raw(&mut self, _: Space, _: &[u8], _: &[u8]) -> Result<(), StoreError> {
        Err(self.read_only())
    }
}

/// What [`cut_after`] removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Snapshots beyond the new end of the log.
    pub snapshots: Vec<u64>,
    /// Idempotency entries and decision records of cut records (or damaged).
    pub removed_derived: u64,
}

/// Cut the log after `last_good` in one commit, then sync: the WAL records,
/// the snapshots beyond it, and the derived entries (idempotency keys,
/// decision records) of the cut records or damaged ones, so no index answers
/// for a record the log no longer holds (a node recalls aged-out idempotency
/// keys from that index). [`repair`] makes the same cut once its side file
/// is written.
/// Refused with [`StoreError::BelowWalBase`] below the WAL base.
pub fn cut_after<S: LogStore + ?Sized>(store: &mut S, last_good: u64) -> Result<Cut, StoreError> {
    let (b, cut) = cut_batch(&*store, last_good)?;
    store.commit(b)?;
    store.sync()?;
    Ok(cut)
}

/// The batch of [`cut_after`], and what it removes.
fn cut_batch<S: LogStore + ?Sized>(store: &S, last_good: u64) -> Result<(Batch, Cut), StoreError> {
    let snapshots: Vec<u64> = store
        .list_snapshots()?
        .into_iter()
        .filter(|i| *i > last_good)
        .collect();
    let mut b = Batch::new();
    b.truncate_wal_after(last_good);
    for s in &snapshots {
        b.delete(Space::Snapshots, index_key(*s).to_vec());
    }
    let mut removed = 0u64;
    for_each_entry(store, Space::Idem, &mut |k, v| {
        let keep = decode_idem(v).is_some_and(|e| e.index <= last_good);
        if !keep {
            b.delete(Space::Idem, k.to_vec());
            removed += 1;
        }
    })?;
    for_each_entry(store, Space::Decisions, &mut |k, v| {
        let keep = decode_decision(v)
            .is_some_and(|d| d.record().index <= last_good && d.hash().0[..] == k[..]);
        if !keep {
            b.delete(Space::Decisions, k.to_vec());
            removed += 1;
        }
    })?;
    Ok((
        b,
        Cut {
            snapshots,
            removed_derived: removed,
        },
    ))
}

/// Visit every entry of a space in key order, paging through [`LogStore::scan`].
pub(crate) fn for_each_entry<S: LogStore + ?Sized>(
    store: &S,
    space: Space,
    f: &mut dyn FnMut(&[u8], &[u8]),
) -> Result<(), StoreError> {
    let mut from: Vec<u8> = vec![];
    loop {
        let rows = store.scan(space, &from, None, crate::store::SCAN_ENTRIES_MAX)?;
        let Some((last, _)) = rows.last() else { break };
        // The next key after `last` in byte order is `last ++ [0]`.
        from = last.clone();
        from.push(0);
        for (k, v) in &rows {
            f(k, v);
        }
    }
    Ok(())
}

/// Side file: [`CUT_FILE_MAGIC`], then entries `space u8 (0 WAL, 1 snapshot)
/// | index u64 BE | length u32 BE | stored bytes`, fsynced with its directory.
/// A malformed key's entry has space 2 (WAL) or 3 (snapshots), the key's
/// length in place of the index, and the key followed by the value as its
/// bytes.
fn write_side_file<S: LogStore + ?Sized>(
    store: &S,
    path: &Path,
    plan: &RepairPlan,
) -> Result<u64, RepairError> {
    let (last_good, last, snaps) = (plan.last_good, plan.last, &plan.cut_snapshots);
    let side = |e: std::io::Error| RepairError::SideFile {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    // Owner-only, like `data.mdb`: the side file holds the cut records in
    // plain text.
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                RepairError::SideFileExists {
                    path: path.to_path_buf(),
                }
            } else {
                side(e)
            }
        })?;
    let mut w = std::io::BufWriter::new(file);
    w.write_all(CUT_FILE_MAGIC).map_err(side)?;
    let entry = |w: &mut std::io::BufWriter<std::fs::File>,
                 space: u8,
                 index: u64,
                 bytes: &[u8]|
     -> Result<(), RepairError> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| side(std::io::Error::other("entry larger than 4 GiB")))?;
        w.write_all(&[space]).map_err(side)?;
        w.write_all(&index.to_be_bytes()).map_err(side)?;
        w.write_all(&len.to_be_bytes()).map_err(side)?;
        w.write_all(bytes).map_err(side)
    };
    let mut cut = 0u64;
    let mut next = last_good + 1;
    while next <= last {
        let rows = store.read_range(next, last, crate::wal::WAL_READ_CHUNK_RECORDS)?;
        let Some((tail, _)) = rows.last() else { break };
        next = tail + 1;
        for (i, v) in &rows {
            entry(&mut w, 0, *i, v)?;
            cut += 1;
        }
    }
    for s in snaps {
        if let Some(v) = store.get_snapshot(*s)? {
            entry(&mut w, 1, *s, &v)?;
        }
    }
    for m in &plan.malformed {
        // The key names no index: the header carries its length, and the
        // bytes are the key followed by the value.
        let mut bytes = m.key.clone();
        bytes.extend(store.get(m.space, &m.key)?.unwrap_or_default());
        let kind = match m.space {
            Space::Wal => CUT_MALFORMED_WAL_KEY,
            _ => CUT_MALFORMED_SNAPSHOT_KEY,
        };
        entry(&mut w, kind, m.key.len() as u64, &bytes)?;
    }
    let file = w.into_inner().map_err(|e| side(e.into_error()))?;
    file.sync_all().map_err(side)?;
    // A bare file name's directory is the current one.
    let parent = path.parent().map(|d| {
        if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        }
    });
    if let Some(dir) = parent {
        // The new file's directory entry must be durable before anything is
        // cut, or a crash could keep the cut and lose the copy. Only a
        // filesystem that cannot sync directories at all (EINVAL) is let go.
        let synced = std::fs::File::open(dir).and_then(|d| d.sync_all());
        if let Err(e) = synced {
            if e.kind() != std::io::ErrorKind::InvalidInput {
                return Err(side(std::io::Error::new(
                    e.kind(),
                    format!("syncing its directory {}: {e}", dir.display()),
                )));
            }
        }
    }
    Ok(cut)
}

/// Side-file entry kind of a malformed WAL key (see [`MalformedKey`]).
const CUT_MALFORMED_WAL_KEY: u8 = 2;
/// Side-file entry kind of a malformed snapshot key.
const CUT_MALFORMED_SNAPSHOT_KEY: u8 = 3;

/// One entry of a repair side file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutEntry {
    pub space: Space,
    /// The index the entry was stored under (0 for a malformed key).
    pub index: u64,
    /// `Some(key)` for a malformed key ([`MalformedKey`]), which names no index.
    pub malformed_key: Option<Vec<u8>>,
    /// The stored value exactly as it was.
    pub bytes: Vec<u8>,
}

/// Read a repair side file back (for inspection and tests).
pub fn read_cut_file(path: &Path) -> std::io::Result<Vec<CutEntry>> {
    let data = std::fs::read(path)?;
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    let mut rest = data
        .strip_prefix(CUT_FILE_MAGIC)
        .ok_or_else(|| bad("not a swoosh repair side file (bad magic)"))?;
    let mut out = vec![];
    while !rest.is_empty() {
        if rest.len() < 13 {
            return Err(bad("truncated entry header"));
        }
        let (space, malformed) = match rest[0] {
            0 => (Space::Wal, false),
            1 => (Space::Snapshots, false),
            CUT_MALFORMED_WAL_KEY => (Space::Wal, true),
            CUT_MALFORMED_SNAPSHOT_KEY => (Space::Snapshots, true),
            _ => return Err(bad("unknown space byte")),
        };
        let index = key_index(&rest[1..9]).ok_or_else(|| bad("bad index"))?;
        let len = u32::from_be_bytes([rest[9], rest[10], rest[11], rest[12]]) as usize;
        rest = &rest[13..];
        if rest.len() < len {
            return Err(bad("truncated entry"));
        }
        let body = &rest[..len];
        out.push(if malformed {
            // `index` holds the key's length; the key precedes the value.
            let key_len = usize::try_from(index)
                .ok()
                .filter(|n| *n <= len)
                .ok_or_else(|| bad("malformed-key entry shorter than its key"))?;
            CutEntry {
                space,
                index: 0,
                malformed_key: Some(body[..key_len].to_vec()),
                bytes: body[key_len..].to_vec(),
            }
        } else {
            CutEntry {
                space,
                index,
                malformed_key: None,
                bytes: body.to_vec(),
            }
        });
        rest = &rest[len..];
    }
    Ok(out)
}
