//! Storage measurements for `swoosh bench storage`: group-commit append
//! throughput at several batch sizes beside the raw `fdatasync` rate of the
//! same disk, replay throughput, and recovery time of a large log.
//!
//! Everything runs in subdirectories of a directory the caller gives (put it
//! on the disk you want to measure). Numbers are returned, never asserted.

use crate::lmdb::{LmdbOptions, LmdbStore};
use crate::recovery::{recover_with, RecoverOptions, RecoveryError};
use crate::snapshot::{write_snapshot, SnapshotError};
use crate::store::{Durability, StoreError};
use crate::testkit::Stream;
use crate::wal::{AppendError, BatchLimits, EncodedEntry, Entry, OpenError, WalWriter};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use swoosh_core::guards::Verify;

/// Bytes appended before each `fdatasync` in the raw disk probe (a small
/// append, like one commit's meta page).
pub const FDATASYNC_PROBE_BYTES: usize = 256;
/// Batch sizes the append benchmark measures by default.
pub const BENCH_BATCH_SIZES: [usize; 3] = [1, 64, 1024];
/// Records the batch-size-1 run is capped at (each costs two fsyncs).
pub const BENCH_SINGLE_RECORDS_MAX: usize = 2_000;
/// Records generated and appended per step while building a recovery log.
pub const BENCH_BUILD_BATCH_RECORDS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("benchmark I/O in {path}: {source}; check the directory exists and is writable")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("{0} did not reproduce the generated log's head hash: a storage or reducer bug; run `swoosh wal verify` on the benchmark directory and report it")]
    Mismatch(&'static str),
    #[error("the benchmark directory {0} already holds a previous run; pass an empty directory")]
    NotEmpty(PathBuf),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BenchError + '_ {
    move |source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The raw durable-append rate of a disk.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SyncRate {
    pub syncs: u64,
    pub elapsed: Duration,
    pub per_sync: Duration,
    pub per_second: f64,
}

/// Append [`FDATASYNC_PROBE_BYTES`] to a file in `dir` and `fdatasync` it,
/// `syncs` times.
pub fn fdatasync_rate(dir: &Path, syncs: u64) -> Result<SyncRate, BenchError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join("fdatasync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    let buf = [0x5au8; FDATASYNC_PROBE_BYTES];
    let syncs = syncs.max(1);
    let t0 = Instant::now();
    for _ in 0..syncs {
        f.write_all(&buf).map_err(io(&path))?;
        f.sync_data().map_err(io(&path))?;
    }
    let elapsed = t0.elapsed();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(SyncRate {
        syncs,
        elapsed,
        per_sync: elapsed / syncs as u32,
        per_second: syncs as f64 / elapsed.as_secs_f64(),
    })
}

/// Group-commit throughput at one batch size.
#[derive(Clone, Debug, PartialEq)]
pub struct AppendRun {
    pub batch_records: usize,
    pub records: u64,
    pub commits: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub records_per_second: f64,
    pub commits_per_second: f64,
    pub commit_p50: Duration,
    pub commit_p99: Duration,
    pub commit_max: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Append pre-encoded `entries` to a fresh LMDB store in `dir`, `batch`
/// records per group commit.
pub fn append_run(
    dir: &Path,
    genesis_hash: swoosh_core::Hash,
    entries: &[EncodedEntry],
    batch: usize,
    durability: Durability,
) -> Result<AppendRun, BenchError> {
    let batch = batch.max(1);
    if dir.exists() && std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
        return Err(BenchError::NotEmpty(dir.to_path_buf()));
    }
    let store = LmdbStore::open(
        dir,
        &LmdbOptions {
            durability,
            ..LmdbOptions::default()
        },
    )?;
    let limits = BatchLimits {
        wal_batch_records_max: batch,
        wal_batch_bytes_max: usize::MAX,
    };
    let mut w = WalWriter::open(store, genesis_hash, limits)?;
    let chunks: Vec<Vec<EncodedEntry>> = entries
        .chunks(batch)
        .map(<[EncodedEntry]>::to_vec)
        .collect();
    let mut lat = Vec::with_capacity(chunks.len());
    let mut bytes = 0u64;
    let t0 = Instant::now();
    for c in chunks {
        let r = w.append_encoded(c)?;
        lat.push(r.commit);
        bytes += r.bytes as u64;
    }
    w.sync()?;
    let elapsed = t0.elapsed();
    lat.sort_unstable();
    let records = entries.len() as u64;
    let commits = lat.len() as u64;
    let secs = elapsed.as_secs_f64().max(1e-9);
    Ok(AppendRun {
        batch_records: batch,
        records,
        commits,
        bytes,
        elapsed,
        records_per_second: records as f64 / secs,
        commits_per_second: commits as f64 / secs,
        commit_p50: percentile(&lat, 0.5),
        commit_p99: percentile(&lat, 0.99),
        commit_max: lat.last().copied().unwrap_or_default(),
    })
}

/// Replay or recovery time of a log.
#[derive(Clone, Debug, PartialEq)]
pub struct RecoveryRun {
    pub records: u64,
    /// Time to generate and append the log (not part of the measurement).
    pub build: Duration,
    /// Recovery from genesis: every record through the reducer.
    pub full_replay: Duration,
    pub replay_records_per_second: f64,
    /// CPU (user + system, all threads) the full replay used, per record:
    /// it varies much less than wall time on a shared machine. None where
    /// `getrusage` is not available.
    pub full_replay_cpu_us_per_record: Option<f64>,
    /// Recovery from the newest snapshot (taken `records - tail` records in).
    pub from_snapshot: Option<Duration>,
    pub snapshot_bytes: Option<usize>,
    pub tail_records: u64,
}

/// User + system CPU time of the whole process so far.
#[cfg(unix)]
fn process_cpu() -> Option<Duration> {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    Some(tv(u.ru_utime) + tv(u.ru_stime))
}

#[cfg(not(unix))]
fn process_cpu() -> Option<Duration> {
    None
}

/// Build a log of `records` records in a fresh LMDB store in `dir` (one
/// snapshot `tail` records before the end, unless `tail` is 0), then time a
/// recovery from genesis and one from the snapshot. `progress` gets
/// `(phase, done, total)`.
pub fn recovery_run(
    dir: &Path,
    records: u64,
    tail: u64,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<RecoveryRun, BenchError> {
    if dir.exists() && std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
        return Err(BenchError::NotEmpty(dir.to_path_buf()));
    }
    let t0 = Instant::now();
    let mut stream = Stream::new("bench", 4, Verify::Trusted);
    let genesis = stream.genesis().clone();
    let gh = stream.node().genesis_hash;
    let snap_at = if tail > 0 && tail < records {
        Some(records - tail)
    } else {
        None
    };
    let mut snapshot_bytes = None;
    {
        let opts = LmdbOptions {
            durability: Durability::NoSync,
            ..LmdbOptions::default()
        };
        let store = LmdbStore::open(dir, &opts)?;
        let mut w = WalWriter::open(
            store,
            gh,
            BatchLimits {
                wal_batch_records_max: BENCH_BUILD_BATCH_RECORDS,
                wal_batch_bytes_max: usize::MAX,
            },
        )?;
        let mut done = 0u64;
        while done < records {
            let mut n = (records - done).min(BENCH_BUILD_BATCH_RECORDS as u64);
            if let Some(s) = snap_at {
                if done < s {
                    n = n.min(s - done);
                }
            }
            let entries: Vec<Entry> = (0..n)
                .map(|_| Entry::from_accepted(stream.next_accepted()))
                .collect();
            w.append_batch(&entries)?;
            done += n;
            if Some(done) == snap_at {
                let info = write_snapshot(w.store_mut(), stream.node(), 1)?;
                snapshot_bytes = Some(info.bytes);
            }
            progress("build", done, records);
        }
        w.sync()?;
    }
    let build = t0.elapsed();
    let store = LmdbStore::open(dir, &LmdbOptions::default())?;
    let t1 = Instant::now();
    let cpu0 = process_cpu();
    let full = recover_with(
        &store,
        &genesis,
        &RecoverOptions {
            use_snapshots: false,
            ..RecoverOptions::default()
        },
        &mut |p| progress("replay", p.done, p.total),
    )?;
    let full_replay = t1.elapsed();
    let full_replay_cpu_us_per_record = process_cpu()
        .zip(cpu0)
        .map(|(b, a)| (b - a).as_secs_f64() * 1e6 / records.max(1) as f64);
    if full.node.head_record != stream.node().head_record {
        return Err(BenchError::Mismatch("a full replay"));
    }
    let from_snapshot = if snap_at.is_some() {
        let t2 = Instant::now();
        let r = recover_with(&store, &genesis, &RecoverOptions::default(), &mut |p| {
            progress("recover", p.done, p.total)
        })?;
        if r.node.head_record != stream.node().head_record {
            return Err(BenchError::Mismatch("recovery from the snapshot"));
        }
        Some(t2.elapsed())
    } else {
        None
    };
    Ok(RecoveryRun {
        records,
        build,
        full_replay,
        replay_records_per_second: records as f64 / full_replay.as_secs_f64().max(1e-9),
        full_replay_cpu_us_per_record,
        from_snapshot,
        snapshot_bytes,
        tail_records: snap_at.map_or(0, |s| records - s),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchOptions {
    /// Records appended per batch-size run (the size-1 run is capped at
    /// [`BENCH_SINGLE_RECORDS_MAX`]).
    pub append_records: usize,
    pub fdatasyncs: u64,
    /// Size of the recovery log (0: skip the recovery run; the CLI uses 1,000,000).
    pub recovery_records: u64,
    /// Records after the recovery run's snapshot.
    pub recovery_tail: u64,
    pub durability: Durability,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            append_records: 20_000,
            fdatasyncs: 1_000,
            recovery_records: 0,
            recovery_tail: 10_000,
            durability: Durability::Sync,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    pub disk: SyncRate,
    /// Mean stored frame (header + payload, compressed where it pays).
    pub record_bytes_mean: f64,
    /// Mean canonical encoding of a record (the frame's payload).
    pub record_payload_bytes_mean: f64,
    pub encode_per_record: Duration,
    pub appends: Vec<AppendRun>,
    pub recovery: Option<RecoveryRun>,
    pub durability: Durability,
}

/// The whole storage benchmark in subdirectories of `dir` (which must be
/// empty or absent). `progress` gets `(phase, done, total)`.
pub fn run(
    dir: &Path,
    opts: &BenchOptions,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<BenchReport, BenchError> {
    if dir.exists() && std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
        return Err(BenchError::NotEmpty(dir.to_path_buf()));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let disk = fdatasync_rate(dir, opts.fdatasyncs)?;
    progress("fdatasync", opts.fdatasyncs, opts.fdatasyncs);

    let n = opts.append_records.max(1);
    let mut stream = Stream::new("bench", 4, Verify::Trusted);
    let gh = stream.node().genesis_hash;
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        entries.push(Entry::from_accepted(stream.next_accepted()));
        if (i + 1) % 1024 == 0 {
            progress("generate", (i + 1) as u64, n as u64);
        }
    }
    let t0 = Instant::now();
    let encoded = entries
        .iter()
        .map(Entry::encode)
        .collect::<Result<Vec<_>, _>>()?;
    let encode_per_record = t0.elapsed() / n as u32;
    let record_bytes_mean = encoded.iter().map(|e| e.frame.len() as f64).sum::<f64>() / n as f64;
    let record_payload_bytes_mean = encoded
        .iter()
        .map(|e| crate::frame::declared_len(&e.frame).unwrap_or(0) as f64)
        .sum::<f64>()
        / n as f64;

    let mut appends = vec![];
    for b in BENCH_BATCH_SIZES {
        let take = if b == 1 {
            n.min(BENCH_SINGLE_RECORDS_MAX)
        } else {
            n
        };
        let run = append_run(
            &dir.join(format!("append-{b}")),
            gh,
            &encoded[..take],
            b,
            opts.durability,
        )?;
        progress(
            "append",
            b as u64,
            *BENCH_BATCH_SIZES.last().expect("non-empty") as u64,
        );
        appends.push(run);
    }
    let recovery = if opts.recovery_records > 0 {
        Some(recovery_run(
            &dir.join("recovery"),
            opts.recovery_records,
            opts.recovery_tail,
            progress,
        )?)
    } else {
        None
    };
    Ok(BenchReport {
        disk,
        record_bytes_mean,
        record_payload_bytes_mean,
        encode_per_record,
        appends,
        recovery,
        durability: opts.durability,
    })
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "disk: fdatasync of a {FDATASYNC_PROBE_BYTES} B append: {} each, {:.0}/s ({} syncs)",
            us(self.disk.per_sync),
            self.disk.per_second,
            self.disk.syncs
        )?;
        writeln!(
            f,
            "records: {:.0} B mean payload, {:.0} B mean stored frame, encode+hash {} per record",
            self.record_payload_bytes_mean,
            self.record_bytes_mean,
            us(self.encode_per_record)
        )?;
        writeln!(f, "group commit ({}):", self.durability.name())?;
        writeln!(
            f,
            "  {:>6} {:>9} {:>12} {:>10} {:>10} {:>10} {:>10}",
            "batch", "records", "records/s", "commits/s", "p50", "p99", "max"
        )?;
        for a in &self.appends {
            writeln!(
                f,
                "  {:>6} {:>9} {:>12.0} {:>10.0} {:>10} {:>10} {:>10}",
                a.batch_records,
                a.records,
                a.records_per_second,
                a.commits_per_second,
                us(a.commit_p50),
                us(a.commit_p99),
                us(a.commit_max)
            )?;
        }
        if let Some(r) = &self.recovery {
            writeln!(
                f,
                "recovery of {} records: full replay {:.2} s ({:.0} records/s)",
                r.records,
                r.full_replay.as_secs_f64(),
                r.replay_records_per_second
            )?;
            if let Some(s) = r.from_snapshot {
                writeln!(
                    f,
                    "  from a snapshot {} records before the end ({} bytes): {:.3} s",
                    r.tail_records,
                    r.snapshot_bytes.unwrap_or(0),
                    s.as_secs_f64()
                )?;
            }
        }
        Ok(())
    }
}
