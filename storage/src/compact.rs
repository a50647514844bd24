//! Compaction: archive the start of the log to a file, then drop it from the
//! store, so a long-lived node's store stops growing without bound.
//!
//! [`compact`] moves the WAL base (`crate::base`) forward to a record
//! `through`. In order:
//! 1. the records after the current base through `through` are written to
//!    the archive file (a new file: the `swoosh wal export --format cbor`
//!    stream, each record checked as it is read), which is fsynced with its
//!    directory and read back ([`read_archive`]) before anything is removed;
//! 2. the same records are replayed from the current base's state through
//!    the reducer (frames, chain links and every recomputed post hash
//!    checked), in steps of at most [`COMPACT_STEP_RECORDS`]; each step ends
//!    with ONE commit that cuts the WAL through the step's last record `c`
//!    ([`crate::Op::CutWalThrough`]), stores the replayed state as the
//!    snapshot at `c`, makes `c` the base, and deletes the snapshots below
//!    it. A crash leaves the store at the last committed step: consistent,
//!    with everything after its base, and the archive already durable.
//!
//! Steps bound one LMDB transaction (every cut leaf page is dirtied in it) and
//! let an interrupted compaction keep what it finished. The idempotency
//! entries of the cut records are kept (each is self-contained, so repeats
//! of old proposals still get their original outcome); their decision
//! records are kept unless [`CompactOptions::drop_decisions`].
//!
//! Nothing else may cut or rebase the log meanwhile: the CLI holds the node
//! directory's lock; a serving node runs it in its snapshotter's turn, each
//! step's commit under its commit lock, while its WAL writer appends after
//! the records being cut ([`compact_with`]).

use crate::base::{
    base_derived, count_derived_through, wal_base, BaseDerived, WalBase, META_BASE_DERIVED,
};
use crate::index::{lookup_idem, IndexError};
use crate::recovery::{base_state, replay, Phase, Progress, RecoveryError};
use crate::snapshot::{encode_snapshot, SnapshotError};
use crate::store::{encode_wal_base, index_key, Batch, LogStore, Space, StoreError, META_WAL_BASE};
use crate::wal::{check_meta, export, MetaError, ReadError, WAL_RECORD_BYTES_MAX};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use swoosh_core::guards::Verify;
use swoosh_core::record::WalRecord;
use swoosh_core::state::{Genesis, NodeState};
use swoosh_core::Hash;

/// A key and its value, to put.
type KeyValue = (Vec<u8>, Vec<u8>);

/// Most records one compaction step cuts in one commit. With compressed
/// records stored inline (~3 per 4 KiB leaf), a step dirties ~7,000 leaf
/// pages: well inside LMDB's dirty list of 131,072 pages, past which a
/// transaction spills pages to disk before its commit.
pub const COMPACT_STEP_RECORDS: u64 = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactOptions {
    /// Also delete the stored decision records of the cut records (they stay
    /// readable in the archive only; `GET /decisions/{hash}` answers 404).
    pub drop_decisions: bool,
    /// Records per step (at most [`COMPACT_STEP_RECORDS`]; 0 means that).
    pub step_records: u64,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            drop_decisions: false,
            step_records: COMPACT_STEP_RECORDS,
        }
    }
}

/// What an archive file holds, as [`read_archive`] checked it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// Index of its first record.
    pub first: u64,
    /// The first record's `prev_hash`: the genesis hash when `first` is 1,
    /// else the last hash of the archive (or base) before it.
    pub prev_hash: Hash,
    /// Index and hash of its last record.
    pub last: u64,
    pub last_hash: Hash,
    pub records: u64,
    pub bytes: u64,
}

/// Why an archive file is not a sound run of records.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ArchiveError {
    #[error("cannot read the archive {path}: {detail}")]
    Io { path: PathBuf, detail: String },
    #[error("the archive {path} holds no record")]
    Empty { path: PathBuf },
    #[error("the archive {path} ends inside the frame at byte {offset} (after record {after}): the file is truncated; use the copy it was made from")]
    Truncated {
        path: PathBuf,
        offset: u64,
        after: u64,
    },
    #[error("the archive {path} has a frame of {len} bytes at byte {offset}, over the {max}-byte record limit: the file is damaged or not an archive")]
    TooLarge {
        path: PathBuf,
        offset: u64,
        len: u64,
        max: usize,
    },
    #[error("the archive {path} has a frame at byte {offset} that is not a canonical WAL record ({detail}): the file is damaged or not an archive")]
    Record {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    #[error("the archive {path} has record {got} where record {expected} belongs: records are missing or out of order")]
    Index {
        path: PathBuf,
        expected: u64,
        got: u64,
    },
    #[error("the archive {path} breaks its hash chain at record {index}: its prev_hash is {got}, record {} hashes to {expected}", index - 1)]
    Chain {
        path: PathBuf,
        index: u64,
        expected: Hash,
        got: Hash,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot read the records to archive: {0}")]
    Read(#[from] ReadError),
    #[error("{}", if *base == 0 { format!("{location}: there is no record {through} to compact through; pick a record from 1 on") } else { format!("{location} starts after record {base} already (its WAL base): nothing at or below {through} is left to compact; pick a record after {base}") })]
    NothingToCut {
        location: String,
        base: u64,
        through: u64,
    },
    #[error("{location} ends at record {last}: cannot compact through {through}; pick a record at or below {last} (and after the log's start)")]
    Beyond {
        location: String,
        through: u64,
        last: u64,
    },
    #[error("the archive {0} already exists: give a new file (an archive is never overwritten)")]
    ArchiveExists(PathBuf),
    #[error("cannot write the archive {path}: {detail}; nothing was removed from the store")]
    ArchiveWrite { path: PathBuf, detail: String },
    #[error("record {index} re-encodes to bytes other than the stored ones (this build's encoder and the log's writer disagree): compact with the swoosh version that wrote the log; nothing was removed")]
    Reencode { index: u64 },
    #[error("the archive read back does not hold what was written ({0}); nothing was removed from the store: check the disk")]
    ArchiveReadBack(String),
    #[error(
        "the idempotency entry of record {index} cannot be written again before the cut: {detail}"
    )]
    IdemEntry { index: u64, detail: String },
    #[error("{source}; records {first}..={cut_through} were already cut from the store and are kept only in {}: keep that file, and run the compaction again (with a new archive file) to finish", archive.display())]
    Interrupted {
        first: u64,
        cut_through: u64,
        archive: PathBuf,
        source: Box<CompactError>,
    },
    /// Asked to stop ([`compact_cancellable`]) before it finished; wrapped
    /// in [`CompactError::Interrupted`] when some steps were already cut.
    #[error("the compaction was asked to stop before it finished (its process is stopping, or its store is about to change); it runs again later")]
    Cancelled,
    #[error("after compacting through {expected_index}, {location} reads back {got:?} as its WAL base: the store is returning wrong data; check the disk")]
    ReadBack {
        location: String,
        expected_index: u64,
        got: Option<WalBase>,
    },
}

/// What [`compact`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactReport {
    /// The base before (`None`: the log started at record 1).
    pub old_base: Option<WalBase>,
    /// The base now: the last archived record.
    pub base: WalBase,
    pub archive: ArchiveSummary,
    /// Commits made (each cut up to [`CompactOptions::step_records`] records).
    pub steps: u64,
    /// Snapshots deleted because they were below the new base.
    pub removed_snapshots: Vec<u64>,
    /// Decision records deleted (with [`CompactOptions::drop_decisions`]).
    pub removed_decisions: u64,
    pub elapsed: Duration,
}

/// The first and last record [`compact`] would archive, or why it refuses
/// (checked before any file is created).
pub fn compact_range<S: LogStore + ?Sized>(
    store: &S,
    through: u64,
) -> Result<(u64, u64), CompactError> {
    let base = wal_base(store)?.map_or(0, |b| b.index);
    let end = store.last_index()?.max(base);
    if through > end {
        return Err(CompactError::Beyond {
            location: store.location(),
            through,
            last: end,
        });
    }
    if through <= base {
        return Err(CompactError::NothingToCut {
            location: store.location(),
            base,
            through,
        });
    }
    Ok((base + 1, through))
}

/// Archive records `base + 1..=through` to `archive` (a new file), then cut
/// them from `store`. See the module docs.
pub fn compact<S: LogStore + ?Sized>(
    store: &mut S,
    genesis: &Genesis,
    through: u64,
    archive: &Path,
    opts: &CompactOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<CompactReport, CompactError> {
    compact_with(
        store,
        genesis,
        through,
        archive,
        opts,
        progress,
        &mut |s, b| s.commit(b),
    )
}

/// [`compact`] with each step's commit made by `commit` (a running node
/// makes it under the lock its WAL commits and recoveries hold, so a step
/// never cuts records under a recovery that is replaying them).
pub fn compact_with<S: LogStore + ?Sized>(
    store: &mut S,
    genesis: &Genesis,
    through: u64,
    archive: &Path,
    opts: &CompactOptions,
    progress: &mut dyn FnMut(&Progress),
    commit: &mut dyn FnMut(&mut S, Batch) -> Result<crate::CommitInfo, StoreError>,
) -> Result<CompactReport, CompactError> {
    compact_inner(
        store, genesis, through, archive, opts, None, progress, commit,
    )
}

/// [`compact`] that ends with [`CompactError::Cancelled`] (or
/// `Interrupted` around it, once steps were cut) soon after `cancel` is
/// set: between archived records, and before each step's replay and commit
/// (so within about one step's replay). What it cut stays cut, in a sound
/// store; with nothing cut, the archive is removed.
pub fn compact_cancellable<S: LogStore + ?Sized>(
    store: &mut S,
    genesis: &Genesis,
    through: u64,
    archive: &Path,
    opts: &CompactOptions,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<CompactReport, CompactError> {
    compact_inner(
        store,
        genesis,
        through,
        archive,
        opts,
        Some(cancel),
        progress,
        &mut |s, b| s.commit(b),
    )
}

fn cancelled(cancel: Option<&AtomicBool>) -> Result<(), CompactError> {
    match cancel {
        Some(c) if c.load(Ordering::SeqCst) => Err(CompactError::Cancelled),
        _ => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn compact_inner<S: LogStore + ?Sized>(
    store: &mut S,
    genesis: &Genesis,
    through: u64,
    archive: &Path,
    opts: &CompactOptions,
    cancel: Option<&AtomicBool>,
    progress: &mut dyn FnMut(&Progress),
    commit: &mut dyn FnMut(&mut S, Batch) -> Result<crate::CommitInfo, StoreError>,
) -> Result<CompactReport, CompactError> {
    let t0 = Instant::now();
    let fresh = NodeState::new(genesis.clone()).map_err(RecoveryError::from)?;
    let genesis_hash = fresh.genesis_hash;
    check_meta(&*store, genesis_hash)?;
    let (first, _) = compact_range(&*store, through)?;
    let old_base = wal_base(&*store)?;
    // The state the cut starts from: checked before the archive is written,
    // so a store that cannot prove its base creates no file.
    let mut node = match old_base {
        Some(b) => base_state(&*store, genesis_hash, b)?,
        None => fresh,
    };
    let summary = write_archive(
        &*store,
        genesis_hash,
        first,
        through,
        archive,
        cancel,
        progress,
    )?;
    if summary.first != first || summary.last != through || summary.prev_hash != node.head_record {
        // Nothing is cut from a wrong archive, and it is not kept.
        let _ = std::fs::remove_file(archive);
        let _ = sync_dir(archive);
        return Err(CompactError::ArchiveReadBack(format!(
            "it holds records {}..={} after {}, expected {first}..={through} after {}",
            summary.first, summary.last, summary.prev_hash, node.head_record
        )));
    }

    let step = match opts.step_records {
        0 => COMPACT_STEP_RECORDS,
        n => n.min(COMPACT_STEP_RECORDS),
    };
    match cut_steps(
        store, &mut node, through, step, first, opts, cancel, progress, commit,
    ) {
        Ok((steps, removed_snapshots, removed_decisions)) => Ok(CompactReport {
            old_base,
            base: WalBase {
                index: through,
                hash: node.head_record,
            },
            archive: summary,
            steps,
            removed_snapshots,
            removed_decisions,
            elapsed: t0.elapsed(),
        }),
        Err((_, e)) => {
            // Judged by the store, not by the steps counted: a commit that
            // reported an error may still have applied.
            match wal_base(&*store) {
                Ok(now) if now == old_base => {
                    // Nothing was cut: the store holds every record, so the
                    // archive is a spare copy, removed so a retry can use
                    // its name.
                    let _ = std::fs::remove_file(archive);
                    let _ = sync_dir(archive);
                    Err(e)
                }
                Ok(Some(now)) => Err(CompactError::Interrupted {
                    first,
                    cut_through: now.index,
                    archive: archive.to_path_buf(),
                    source: Box::new(e),
                }),
                // Unknown: the archive stays.
                _ => Err(e),
            }
        }
    }
}

/// The replay-and-cut steps of [`compact_with`], from `node` (the state at
/// the current base) through `through`. On failure, the steps committed.
#[allow(clippy::too_many_arguments)]
fn cut_steps<S: LogStore + ?Sized>(
    store: &mut S,
    node: &mut NodeState,
    through: u64,
    step: u64,
    first: u64,
    opts: &CompactOptions,
    cancel: Option<&AtomicBool>,
    progress: &mut dyn FnMut(&Progress),
    commit: &mut dyn FnMut(&mut S, Batch) -> Result<crate::CommitInfo, StoreError>,
) -> Result<(u64, Vec<u64>, u64), (u64, CompactError)> {
    let mut steps = 0u64;
    let r = cut_steps_inner(
        store, node, through, step, first, opts, cancel, progress, commit, &mut steps,
    );
    r.map_err(|e| (steps, e))
}

#[allow(clippy::too_many_arguments)]
fn cut_steps_inner<S: LogStore + ?Sized>(
    store: &mut S,
    node: &mut NodeState,
    through: u64,
    step: u64,
    first: u64,
    opts: &CompactOptions,
    cancel: Option<&AtomicBool>,
    progress: &mut dyn FnMut(&Progress),
    commit: &mut dyn FnMut(&mut S, Batch) -> Result<crate::CommitInfo, StoreError>,
    steps: &mut u64,
) -> Result<(u64, Vec<u64>, u64), CompactError> {
    let total = through - node.index;
    let mut removed_snapshots = vec![];
    let mut removed_decisions = 0u64;
    while node.index < through {
        cancelled(cancel)?;
        let from = node.index + 1;
        let to = node.index.saturating_add(step).min(through);
        let offset = from - first;
        // Each cut record's idempotency entry and decision: an entry that is
        // missing or wrong is written again from the record (it is what
        // keeps a late repeat of the proposal from running twice, and after
        // the cut no reindex can derive it); a decision is kept if stored.
        let mut idem_ok = 0u64;
        let mut idem_fixes: Vec<KeyValue> = vec![];
        let mut decisions: Vec<Hash> = vec![];
        let mut failed: Option<CompactError> = None;
        replay(
            &*store,
            node,
            from,
            to,
            Verify::Trusted,
            &mut |p| {
                progress(&Progress {
                    phase: Phase::Replay,
                    done: offset + p.done,
                    total,
                })
            },
            &mut |_, v| {
                if failed.is_some() {
                    return;
                }
                match idem_for(&*store, v) {
                    Ok(IdemCheck::Sound) => idem_ok += 1,
                    Ok(IdemCheck::Rewrite(fix)) => idem_fixes.push(fix),
                    Ok(IdemCheck::Newer) => {}
                    Err(e) => failed = Some(e),
                }
                decisions.push(v.record.decision);
            },
        )?;
        if let Some(e) = failed {
            return Err(e);
        }
        // What the store holds for the records at or below the base (meta
        // `base_derived`, which the leader's start-up audit reads), read
        // again each step: a node may rebuild its indexes (and recount)
        // between two steps.
        let mut kept = match wal_base(&*store)? {
            None => BaseDerived::default(),
            Some(b) => match base_derived(&*store)? {
                Some(d) => d,
                None => count_derived_through(&*store, b.index)?,
            },
        };
        kept.idem += idem_ok + idem_fixes.len() as u64;
        // A replay that applied fewer records stops with an error naming the
        // record; reaching here means the state is the one after `to`.
        let (frame_bytes, snapshot_hash) = encode_snapshot(node)?;
        let mut b = Batch::new();
        b.cut_wal_through(to);
        b.put(Space::Snapshots, index_key(to).to_vec(), frame_bytes);
        b.put(
            Space::Meta,
            META_WAL_BASE.as_bytes().to_vec(),
            encode_wal_base(to, &node.head_record),
        );
        let below: Vec<u64> = store
            .list_snapshots()?
            .into_iter()
            .filter(|i| *i < to)
            .collect();
        for s in &below {
            b.delete(Space::Snapshots, index_key(*s).to_vec());
        }
        for (k, v) in idem_fixes {
            b.put(Space::Idem, k, v);
        }
        for decision in &decisions {
            if store.get(Space::Decisions, &decision.0)?.is_some() {
                if opts.drop_decisions {
                    b.delete(Space::Decisions, decision.0.to_vec());
                    removed_decisions += 1;
                } else {
                    kept.decisions += 1;
                }
            }
        }
        b.put(
            Space::Meta,
            META_BASE_DERIVED.as_bytes().to_vec(),
            kept.encode(),
        );
        cancelled(cancel)?;
        commit(store, b)?;
        *steps += 1;
        store.sync()?;
        removed_snapshots.extend(below);
        let expected = WalBase {
            index: to,
            hash: node.head_record,
        };
        let got = wal_base(&*store)?;
        if got != Some(expected) {
            return Err(CompactError::ReadBack {
                location: store.location(),
                expected_index: to,
                got,
            });
        }
        crate::snapshot::check_read_back(&*store, to, snapshot_hash)?;
    }
    Ok((*steps, removed_snapshots, removed_decisions))
}

/// What a cut record's idempotency entry needs before the cut.
enum IdemCheck {
    /// The store holds exactly the entry the record derives.
    Sound,
    /// Missing, damaged or wrong: write this key and frame.
    Rewrite(KeyValue),
    /// The key answers for a later record (it was used again after this
    /// one's entry was lost): that answer stays, this record has none.
    Newer,
}

fn idem_for<S: LogStore + ?Sized>(
    store: &S,
    v: &crate::wal::VerifiedRecord,
) -> Result<IdemCheck, CompactError> {
    let r = &v.record;
    let bad = |detail: String| CompactError::IdemEntry {
        index: v.index,
        detail,
    };
    let entry = swoosh_core::state::IdemEntry {
        content_hash: r
            .proposal()
            .content_hash()
            .map_err(|e| bad(format!("its proposal does not encode: {e}")))?,
        transition: r.transition.clone(),
        index: v.index,
        state_post_hash: r.state_post_hash,
        decision: r.decision,
    };
    match lookup_idem(store, &r.project, &r.idem_key) {
        Ok(Some(e)) if e == entry => return Ok(IdemCheck::Sound),
        Ok(Some(e)) if e.index > v.index => return Ok(IdemCheck::Newer),
        Err(IndexError::Store(e)) => return Err(e.into()),
        _ => {}
    }
    crate::base::idem_entry_kv(&r.project, &r.idem_key, &entry)
        .map(IdemCheck::Rewrite)
        .map_err(bad)
}

/// Write records `from..=to` (each checked as [`export`] checks it) to a new
/// file at `path` in the archive format, fsync it and its directory, and
/// read it back.
fn write_archive<S: LogStore + ?Sized>(
    store: &S,
    genesis_hash: Hash,
    from: u64,
    to: u64,
    path: &Path,
    cancel: Option<&AtomicBool>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<ArchiveSummary, CompactError> {
    let werr = |e: std::io::Error| CompactError::ArchiveWrite {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    if path.exists() {
        return Err(CompactError::ArchiveExists(path.to_path_buf()));
    }
    // Written beside its final name and linked there only once complete and
    // synced, so a crash never leaves a partial file under the archive's
    // name (a leftover `.partial` is never the only copy of anything: the
    // cut starts after the link).
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    // Readable by the owner only: an archive holds the records in plain
    // text, as `data.mdb` (0600) does. A `.partial` an interrupted run left
    // is removed first so the new file gets this mode rather than keeping
    // the old one's.
    match std::fs::remove_file(&partial) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(werr(e)),
    }
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .map_err(werr)?
    };
    let total = to - from + 1;
    let mut linked = false;
    let written = (|| -> Result<(), CompactError> {
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        for (n, item) in export(store, genesis_hash, from, Some(to))?.enumerate() {
            let v = item?;
            cancelled(cancel)?;
            let enc = swoosh_core::cbor::to_canonical(&v.record)
                .map_err(|_| CompactError::Reencode { index: v.index })?;
            if Hash::of_bytes(&enc) != v.hash {
                return Err(CompactError::Reencode { index: v.index });
            }
            out.write_all(&(enc.len() as u32).to_be_bytes())
                .map_err(werr)?;
            out.write_all(&enc).map_err(werr)?;
            let done = n as u64 + 1;
            if done.is_multiple_of(crate::recovery::PROGRESS_EVERY_RECORDS) || done == total {
                progress(&Progress {
                    phase: Phase::Scan,
                    done,
                    total,
                });
            }
        }
        out.flush().map_err(werr)?;
        drop(out);
        file.sync_all().map_err(werr)?;
        // A link fails if the name was taken meanwhile: never overwritten.
        std::fs::hard_link(&partial, path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CompactError::ArchiveExists(path.to_path_buf())
            } else {
                werr(e)
            }
        })?;
        linked = true;
        std::fs::remove_file(&partial).map_err(werr)?;
        sync_dir(path).map_err(werr)
    })();
    drop(file);
    // Nothing was cut when this fails: no partial archive is left behind,
    // nor one under its final name (a node retrying wrote another full
    // copy under a suffixed name each time, and a sorted list of the
    // directory handed `snapshot rebuild-base` the bad one).
    let remove_all = || {
        let _ = std::fs::remove_file(&partial);
        if linked {
            let _ = std::fs::remove_file(path);
            let _ = sync_dir(path);
        }
    };
    if let Err(e) = written {
        remove_all();
        return Err(e);
    }
    read_archive(path).map_err(|e| {
        remove_all();
        CompactError::ArchiveReadBack(e.to_string())
    })
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Read an archive file (`swoosh wal compact`'s output, the same stream as
/// `swoosh wal export --format cbor`): every frame a canonical WAL record,
/// indexes consecutive, every `prev_hash` the hash of the record before.
/// Says where it starts and ends so archives can be joined to each other
/// and to a store's base.
pub fn read_archive(path: &Path) -> Result<ArchiveSummary, ArchiveError> {
    scan_archive(path, &mut |_, _| {})
}

/// [`read_archive`], handing each record and its hash to `each` in order
/// (records before a fault are handed over before the error).
pub fn for_each_archived(
    path: &Path,
    each: &mut dyn FnMut(&WalRecord, Hash),
) -> Result<ArchiveSummary, ArchiveError> {
    scan_archive(path, each)
}

/// The hash of record `index` in the archive at `path` (checked as
/// [`read_archive`] checks the whole file), `None` when it does not hold it:
/// how overlapping archives (a compaction run again after an interruption)
/// are joined.
pub fn archive_hash_at(path: &Path, index: u64) -> Result<Option<Hash>, ArchiveError> {
    let mut found = None;
    let s = scan_archive(path, &mut |r, h| {
        if r.index == index {
            found = Some(h)
        }
    })?;
    if index.checked_add(1) == Some(s.first) {
        return Ok(Some(s.prev_hash));
    }
    Ok(found)
}

fn scan_archive(
    path: &Path,
    each: &mut dyn FnMut(&WalRecord, Hash),
) -> Result<ArchiveSummary, ArchiveError> {
    let io = |e: std::io::Error| ArchiveError::Io {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path).map_err(io)?);
    let mut offset = 0u64;
    let mut summary: Option<ArchiveSummary> = None;
    let mut buf = Vec::new();
    loop {
        let mut len_bytes = [0u8; 4];
        let got = read_full(&mut r, &mut len_bytes).map_err(io)?;
        let after = summary.map_or(0, |s| s.last);
        if got == 0 {
            break;
        }
        if got < 4 {
            return Err(ArchiveError::Truncated {
                path: path.to_path_buf(),
                offset,
                after,
            });
        }
        let len = u32::from_be_bytes(len_bytes) as u64;
        if len as usize > WAL_RECORD_BYTES_MAX {
            return Err(ArchiveError::TooLarge {
                path: path.to_path_buf(),
                offset,
                len,
                max: WAL_RECORD_BYTES_MAX,
            });
        }
        buf.resize(len as usize, 0);
        if read_full(&mut r, &mut buf).map_err(io)? < buf.len() {
            return Err(ArchiveError::Truncated {
                path: path.to_path_buf(),
                offset,
                after,
            });
        }
        let record: WalRecord =
            swoosh_core::cbor::from_canonical(&buf).map_err(|e| ArchiveError::Record {
                path: path.to_path_buf(),
                offset,
                detail: e.to_string(),
            })?;
        let hash = Hash::of_bytes(&buf);
        each(&record, hash);
        summary = Some(match summary {
            None => ArchiveSummary {
                first: record.index,
                prev_hash: record.prev_hash,
                last: record.index,
                last_hash: hash,
                records: 1,
                bytes: 4 + len,
            },
            Some(s) => {
                if s.last.checked_add(1) != Some(record.index) {
                    return Err(ArchiveError::Index {
                        path: path.to_path_buf(),
                        expected: s.last.saturating_add(1),
                        got: record.index,
                    });
                }
                if record.prev_hash != s.last_hash {
                    return Err(ArchiveError::Chain {
                        path: path.to_path_buf(),
                        index: record.index,
                        expected: s.last_hash,
                        got: record.prev_hash,
                    });
                }
                ArchiveSummary {
                    last: record.index,
                    last_hash: hash,
                    records: s.records + 1,
                    bytes: s.bytes + 4 + len,
                    ..s
                }
            }
        });
        offset += 4 + len;
    }
    summary.ok_or_else(|| ArchiveError::Empty {
        path: path.to_path_buf(),
    })
}

/// Read until `buf` is full or the end of the input; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What [`rebuild_base_snapshot`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebuiltBase {
    pub base: WalBase,
    /// Archived records replayed (from genesis to the base).
    pub replayed: u64,
    /// Hash of the snapshot frame written at the base.
    pub snapshot_hash: Hash,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildBaseError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("{0}: its genesis is not usable")]
    Genesis(String),
    #[error(
        "{location} starts at genesis (it has no WAL base): there is no base snapshot to rebuild"
    )]
    NotBased { location: String },
    #[error("{path} starts at record {first}, but the archives must start at record 1: give every archive, oldest first")]
    NotFromGenesis { path: PathBuf, first: u64 },
    #[error("{path} starts at record {first}, but the archives before it end at record {}: an archive of records {next}..={} is missing, or the archives are not in log order (give them oldest first)", next - 1, first - 1)]
    Gap {
        path: PathBuf,
        first: u64,
        next: u64,
    },
    #[error("archived record {index} (in {path}) does not replay: {detail}; the archive is not this cluster's log, or this build and the log disagree")]
    Replay {
        path: PathBuf,
        index: u64,
        detail: String,
    },
    #[error("the archives end at record {reached}, before the store's base {base}: give the archives up to record {base}")]
    Short { reached: u64, base: u64 },
    #[error("the archives' record {base} hashes to {got}, but the store's base is {expected}: they are not this store's records")]
    NotThisLog {
        base: u64,
        expected: Hash,
        got: Hash,
    },
}

/// Write the snapshot at a compacted store's WAL base again, from its
/// archives: the snapshot there is the only proof of the cut records, and
/// a damaged one leaves recovery `Unproven`. Replays `archives` (every one,
/// oldest first, from record 1; overlaps are fine) through the reducer from
/// genesis, checking every chain link and recomputed post hash, up to the
/// base; refuses unless the record there hashes to the base hash; then puts
/// the replayed state as the snapshot at the base (replacing a damaged one)
/// and reads it back. Nothing else in the store changes.
pub fn rebuild_base_snapshot<S: LogStore + ?Sized>(
    store: &mut S,
    genesis: &Genesis,
    archives: &[PathBuf],
    progress: &mut dyn FnMut(&Progress),
) -> Result<RebuiltBase, RebuildBaseError> {
    let t0 = Instant::now();
    let mut node =
        NodeState::new(genesis.clone()).map_err(|e| RebuildBaseError::Genesis(e.to_string()))?;
    check_meta(&*store, node.genesis_hash)?;
    let Some(base) = wal_base(&*store)? else {
        return Err(RebuildBaseError::NotBased {
            location: store.location(),
        });
    };
    let mut replayed = 0u64;
    let mut failed: Option<RebuildBaseError> = None;
    for path in archives {
        if node.index >= base.index {
            break;
        }
        // One pass: damage past what is needed (records after the base in
        // an interrupted run's archive, or ones an earlier archive already
        // gave) does not stop the rebuild.
        let mut first: Option<u64> = None;
        let scanned = for_each_archived(path, &mut |rec, hash| {
            if failed.is_some() || node.index >= base.index {
                return;
            }
            if first.is_none() {
                first = Some(rec.index);
                if node.index == 0 && rec.index != 1 {
                    failed = Some(RebuildBaseError::NotFromGenesis {
                        path: path.clone(),
                        first: rec.index,
                    });
                    return;
                }
                if rec.index > node.index + 1 {
                    failed = Some(RebuildBaseError::Gap {
                        path: path.clone(),
                        first: rec.index,
                        next: node.index + 1,
                    });
                    return;
                }
            }
            if rec.index <= node.index {
                return;
            }
            let r = swoosh_core::reducer::apply_record(&mut node, rec, Verify::Trusted)
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    if node.head_record == hash {
                        Ok(())
                    } else {
                        Err("its canonical re-encoding differs from the archived bytes".into())
                    }
                });
            match r {
                Ok(()) => {
                    replayed += 1;
                    if replayed.is_multiple_of(crate::recovery::PROGRESS_EVERY_RECORDS) {
                        progress(&Progress {
                            phase: Phase::Replay,
                            done: replayed,
                            total: base.index,
                        });
                    }
                }
                Err(detail) => {
                    failed = Some(RebuildBaseError::Replay {
                        path: path.clone(),
                        index: rec.index,
                        detail,
                    })
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        if let Err(e) = scanned {
            if node.index < base.index {
                return Err(e.into());
            }
        }
    }
    if node.index < base.index {
        return Err(RebuildBaseError::Short {
            reached: node.index,
            base: base.index,
        });
    }
    if node.head_record != base.hash {
        return Err(RebuildBaseError::NotThisLog {
            base: base.index,
            expected: base.hash,
            got: node.head_record,
        });
    }
    let (frame_bytes, snapshot_hash) = encode_snapshot(&node)?;
    let mut b = Batch::new();
    b.put(
        Space::Snapshots,
        index_key(base.index).to_vec(),
        frame_bytes,
    );
    store.commit(b)?;
    store.sync()?;
    crate::snapshot::check_read_back(&*store, base.index, snapshot_hash)?;
    progress(&Progress {
        phase: Phase::Replay,
        done: replayed,
        total: base.index,
    });
    Ok(RebuiltBase {
        base,
        replayed,
        snapshot_hash,
        elapsed: t0.elapsed(),
    })
}
