//! `swoosh wal verify|export|inspect|repair|reindex|compact|check-archive`, `swoosh replay` and
//! `swoosh snapshot create|list|restore`: operator tools over a node's store.
//!
//! Every command takes a node directory `D` (as made by `swoosh init` or
//! `swoosh demo --dir`: `D/genesis.json`, the store in `D/data`). The work is
//! done by `swoosh-storage` (verified reads, recovery, repair, reindex); this
//! module only resolves the directory, draws progress and explains failures
//! in terms of what to run next.

use crate::node::{open_store, read_genesis, read_key, GENESIS_FILE};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use swoosh_core::guards::Verify;
use swoosh_core::record::{decision_address, WalRecord};
use swoosh_core::state::Genesis;
use swoosh_core::{Hash, SignerId};
use swoosh_storage::journal::JOURNAL_FILE;
use swoosh_storage::recovery::{plan_repair, snapshot_joins_log, MalformedKey};
use swoosh_storage::snapshot::decode_snapshot;
use swoosh_storage::store::{hex, index_key};
use swoosh_storage::{
    export, get_decision, read_record, rebuild_indexes, recover_with, repair, verify_expecting,
    Batch, DecisionDoc, Durability, ExpectDecisions, LmdbStore, LogStore, Phase, Progress,
    ReadError, RecoverOptions, RecoveryError, Space, StoreError, VerifyOptions,
    SNAPSHOTS_KEEP_DEFAULT,
};

/// `wal verify --strict`'s exit code for a sound log with snapshot or index
/// problems (1 stays "the log is not sound"; 2 is clap's usage error).
pub const STRICT_EXIT_CODE: i32 = 3;
/// Characters of a record's inputs shown by `wal inspect` (all with --json).
const INSPECT_INPUTS_CHARS_MAX: usize = 400;
/// Most snapshots `snapshot create --keep` may ask to keep.
const SNAPSHOTS_KEEP_MAX: usize = 64;
/// Records `wal compact` leaves in the store by default: recent history
/// stays inspectable, and a follower that fell this far behind still
/// catches up record by record.
pub const COMPACT_KEEP_RECORDS_DEFAULT: u64 = 100_000;

/// Print a line on stdout; a closed pipe (`| head`) is not an error.
macro_rules! say {
    ($($t:tt)*) => {
        emit(format_args!($($t)*))?
    };
}

fn emit(args: std::fmt::Arguments) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow!("cannot write to stdout: {e}")),
    }
}

// ---------------------------------------------------------------------------
// Command-line types
// ---------------------------------------------------------------------------

#[derive(Subcommand)]
pub enum WalCmd {
    /// Check the whole log from genesis: every frame hash, index, chain link
    /// and reducer step (signatures re-verified), every snapshot against the
    /// replayed state, and the derived indexes (every record's decision is
    /// required when <DIR>/node.key is the genesis leader's key).
    ///
    /// Exits 0 when the log is sound (snapshot and index problems are
    /// reported but do not fail it: snapshots and indexes are caches of the
    /// log; with --strict they exit 3). Otherwise exits 1 naming the index
    /// and reason of the first bad record and what to run next.
    Verify {
        /// Node directory (holds genesis.json; the store is in <DIR>/data).
        #[arg(long)]
        dir: PathBuf,
        /// Print one JSON object (no progress bar).
        #[arg(long)]
        json: bool,
        /// Do not re-verify proposal signatures (faster; frames, chain links
        /// and recomputed hashes are still checked).
        #[arg(long)]
        trusted: bool,
        /// Exit 3 when the log is sound but a snapshot or a derived index
        /// disagrees with it (for health checks: the node answers repeats
        /// and `GET /decisions` from those indexes).
        #[arg(long)]
        strict: bool,
    },
    /// Write the records of the log, each checked (frame hash, index, chain
    /// link) before it is written.
    ///
    /// Formats:
    ///
    /// - jsonl: one JSON object per line, the WAL record (docs/wal-format.md §3).
    ///
    /// - cbor: a stream of frames, one per record, with nothing before,
    ///   between or after them. Each frame is a 4-byte length n (unsigned,
    ///   u32 big-endian) followed by n bytes: the record's canonical CBOR
    ///   (RFC 8949 §4.2.1), whose BLAKE3 is the record's hash (the next
    ///   record's prev_hash).
    ///
    /// A damaged record stops the export with its index (the records before
    /// it have been written) and a non-zero exit.
    Export {
        /// Node directory (holds genesis.json; the store is in <DIR>/data).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// First index to export [default: the log's first record: 1, or
        /// the record after the snapshot a follower's log is based on]
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        from: Option<u64>,
        /// Last record to export (default: the last record of the log).
        #[arg(long)]
        to: Option<u64>,
        /// Write to this file instead of stdout: written as
        /// `<FILE>.partial-<pid>` and renamed over FILE only when the whole
        /// range was exported (a failed export leaves an existing FILE as
        /// it was, and the records it got in the partial file). A device or
        /// a pipe (`/dev/stdout`) is written directly.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show one record: index, project, transition, signer, HLC, hashes,
    /// chain link, guard outcomes and decision address.
    Inspect {
        /// Node directory (holds genesis.json; the store is in <DIR>/data).
        #[arg(long)]
        dir: PathBuf,
        /// Record index (from 1).
        index: u64,
        /// Print JSON: {index, hash, links_to_previous, decision_address, record}.
        #[arg(long)]
        json: bool,
    },
    /// Cut the log back to its last valid record, keeping a copy of the cut.
    ///
    /// Walks the log checking frames, indexes and chain links, finds the first
    /// bad record k, writes records k.. and the snapshots above k-1 to
    /// --keep-copy (a new file, fsynced first; format in docs/wal-format.md
    /// §7), then removes them and their derived index entries in one commit.
    /// A record that is intact but that this build's reducer does not
    /// reproduce is never cut. Without --yes nothing is changed: it prints
    /// what would be cut and exits non-zero. Stop the node first.
    Repair {
        /// Node directory (holds genesis.json; the store is in <DIR>/data).
        #[arg(long)]
        dir: PathBuf,
        /// Where to write what is cut (must not exist).
        #[arg(long)]
        keep_copy: PathBuf,
        /// Really cut (the default is a dry run).
        #[arg(long)]
        yes: bool,
    },
    /// Rebuild the derived indexes (idempotency keys, decision records) from the log.
    ///
    /// Replays the log from genesis. Decisions are signed with
    /// <DIR>/node.key when it is the genesis leader's key; without it, the
    /// decisions the leader already signed are kept and only those rebuilt
    /// are stored unsigned. Stop the node first; if interrupted, run it again.
    Reindex {
        /// Node directory (holds genesis.json; the store is in <DIR>/data).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Archive the start of the log to a file and remove it from the store
    /// (the log otherwise grows for ever).
    ///
    /// Writes the records from the log's first one through the chosen
    /// record to --archive (a new file, in the `wal export --format cbor`
    /// stream), fsyncs it and reads it back. Only then replays them (every
    /// post hash recomputed) and cuts them in steps of up to 20,000 records,
    /// each one commit that stores the replayed state as the snapshot the
    /// log now starts after. Idempotency entries of the cut records are
    /// kept (repeats still get their original outcome); so are their
    /// decision records unless --drop-decisions. A follower further behind
    /// than the new start catches up from the leader's snapshot. LMDB reuses
    /// the freed pages: the store stops growing, its file does not shrink
    /// (`swoosh wal shrink` rewrites it without them).
    /// Without --yes nothing is changed: it prints what it would cut. Stop
    /// the node first; if interrupted, run it again with a new --archive.
    Compact {
        /// Node directory (holds genesis.json; the store is in <DIR>/data).
        #[arg(long)]
        dir: PathBuf,
        /// Where to write the cut records (must not exist). Keep it: it is
        /// the only copy of those records (`swoosh wal check-archive`).
        #[arg(long)]
        archive: PathBuf,
        /// Cut through this record (default: keep the newest --keep-records).
        #[arg(long, conflicts_with = "keep_records")]
        through: Option<u64>,
        /// Records to keep in the store after the cut.
        #[arg(long, default_value_t = COMPACT_KEEP_RECORDS_DEFAULT)]
        keep_records: u64,
        /// Also delete the cut records' decision records (then only in the
        /// archive; `GET /decisions/{hash}` answers 404 for them).
        #[arg(long)]
        drop_decisions: bool,
        /// Really cut (the default is a dry run).
        #[arg(long)]
        yes: bool,
        /// Print one JSON object (no progress bar).
        #[arg(long)]
        json: bool,
    },
    /// Give the disk back the space a compaction freed: rewrite the store's
    /// data file without its free pages.
    ///
    /// LMDB reuses the pages `wal compact` frees, so the store stops
    /// growing, but its file never gets smaller. This copies the live pages
    /// to a new file in <DIR>/data (it needs free disk space for the store's
    /// live size), fsyncs it, compares every entry with the store, and only
    /// then renames it over the data file. Stop the node first: it is
    /// refused while any process has the store open (a node, or a
    /// read-only command such as `wal verify`). If interrupted, the store
    /// is intact: run it again.
    Shrink {
        /// Node directory (holds genesis.json; the store is in <DIR>/data).
        #[arg(long)]
        dir: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Check archive files (`wal compact --archive`, `wal export --format
    /// cbor`): every frame a canonical WAL record, indexes consecutive, the
    /// hash chain unbroken, within each file and from one file to the next
    /// (give them in log order). With --dir, also that the first starts at
    /// genesis (when it holds record 1) and the last joins the store's log.
    /// Exits 0 when sound, 1 naming the first problem otherwise.
    CheckArchive {
        /// Archive files, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Node directory to join the archives to (genesis and WAL base).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Copy, Clone, ValueEnum)]
pub enum ExportFormat {
    /// One JSON WAL record per line.
    Jsonl,
    /// Canonical CBOR of each record, each preceded by its length (u32 big-endian).
    Cbor,
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Recover the node (newest valid snapshot, then the log after it) and
    /// write a snapshot of the recovered state at its index. Older snapshots
    /// beyond --keep are deleted in the same commit.
    Create {
        /// Node directory (holds genesis.json; the store is in <DIR>/data).
        #[arg(long)]
        dir: PathBuf,
        /// Snapshots to keep (the newest ones).
        #[arg(long, default_value_t = SNAPSHOTS_KEEP_DEFAULT)]
        keep: usize,
    },
    /// List stored snapshots: index, hash, size, and whether recovery could
    /// start from it (intact, this genesis, and joined to the log).
    List {
        /// Node directory (holds genesis.json; the store is in <DIR>/data).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Make recovery start from snapshot --index.
    ///
    /// Recovery starts from the newest valid snapshot. This checks that
    /// snapshot N is valid (intact, this genesis, and record N of the log
    /// hashes to the snapshot's head record), then deletes every snapshot
    /// newer than N so that N is the newest. No WAL record is touched: on
    /// the next start the node replays the log after N, so the state it
    /// reaches is the same; snapshots are caches of the log and
    /// `swoosh snapshot create` makes new ones. Use it to stop trusting newer
    /// snapshots. Without --yes it only prints what it would delete (and
    /// exits non-zero). Stop the node first.
    Restore {
        /// Node directory (holds genesis.json; the store is in <DIR>/data).
        #[arg(long)]
        dir: PathBuf,
        /// The snapshot to start recovery from (see `swoosh snapshot list`).
        #[arg(long)]
        index: u64,
        /// Really delete the newer snapshots.
        #[arg(long)]
        yes: bool,
    },
    /// Write the snapshot at a compacted log's start again, from its
    /// archives (`swoosh wal compact`).
    ///
    /// After a compaction the snapshot at the log's start (its WAL base) is
    /// the only proof of the archived records: if it is damaged, recovery
    /// refuses ("cannot be proven"). This replays the archives from genesis
    /// (every chain link and recomputed post hash checked) up to the base,
    /// checks the record there is the base's, and writes the replayed state
    /// as the snapshot there. Nothing else changes. Stop the node first.
    RebuildBase {
        /// Node directory (holds genesis.json; the store is in <DIR>/data).
        #[arg(long)]
        dir: PathBuf,
        /// Every archive of the log, oldest first (from record 1).
        #[arg(required = true)]
        archives: Vec<PathBuf>,
    },
}

/// Replay a node's log through the reducer.
#[derive(Args)]
pub struct ReplayArgs {
    /// Node directory (holds genesis.json; the store is in <DIR>/data).
    #[arg(long)]
    pub dir: PathBuf,
    /// Ignore snapshots and replay every record from genesis.
    #[arg(long)]
    pub from_genesis: bool,
    /// Print exactly {"records","hash","seconds","records_per_s"} (no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Re-verify every proposal signature (slower; default: trusted, as a
    /// node's recovery does: the hash chain protects the signed records).
    #[arg(long)]
    pub verify_signatures: bool,
}

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

/// A node directory with its genesis and its opened store.
struct Node {
    dir: PathBuf,
    genesis: Genesis,
    genesis_hash: Hash,
    store: LmdbStore,
}

/// What a command does to the store it opens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Reads only: works on a live node's directory, maybe a little behind.
    Read,
    /// Writes: refused while a node holds the store.
    Write,
}

/// Resolve and open node directory `dir`, explaining what is wrong with it.
fn open_node(dir: &Path, access: Access) -> Result<Node> {
    let shown = dir.display();
    if !dir.is_dir() {
        bail!(
            "{shown} is not a directory: give a node directory made by `swoosh init` or `swoosh demo --dir` (e.g. <cluster>/leader)"
        );
    }
    let leader = dir.join("leader");
    let did_you_mean = leader.join(GENESIS_FILE).is_file();
    let genesis_path = dir.join(GENESIS_FILE);
    if !genesis_path.is_file() {
        if did_you_mean {
            bail!(
                "{shown} is a cluster directory, not a node directory (no {GENESIS_FILE} in it): did you mean --dir {}?",
                leader.display()
            );
        }
        if dir.file_name().is_some_and(|n| n == "data") {
            if let Some(parent) = dir.parent().filter(|p| p.join(GENESIS_FILE).is_file()) {
                bail!(
                    "{shown} is the store itself; give the node directory that holds it: did you mean --dir {}?",
                    parent.display()
                );
            }
        }
        bail!(
            "no {GENESIS_FILE} in {shown}: give a node directory made by `swoosh init` or `swoosh demo --dir` (it holds {GENESIS_FILE}, the log in data/)"
        );
    }
    let data = dir.join("data");
    if !data.join("data.mdb").is_file() {
        if did_you_mean {
            bail!(
                "{shown} holds no store (no {}), but it looks like a cluster directory: did you mean --dir {}?",
                data.join("data.mdb").display(),
                leader.display()
            );
        }
        // Which command writes this directory's log, told by its key: the
        // genesis leader's is the leader's, any other node key a
        // follower's; an agent's directory holds agent.key (agents keep no
        // log). The wrong command run as root would leave root-owned files.
        let node_key = crate::node::read_key(&dir.join("node.key")).ok();
        let leader = read_genesis(&genesis_path).ok().map(|g| g.leader);
        let follow = format!(
            "it is a follower's directory: start it with `swoosh follow --dir {shown} --leader <the leader's p2p address>`{}",
            if dir.join("age.key").is_file() {
                ""
            } else {
                " once `swoosh p2p enroll` gave it an age.key"
            }
        );
        let start = if dir.join("agent.key").is_file() {
            "it is a council agent's directory (it holds agent.key): agents keep no log to verify or replay".to_string()
        } else if dir.join("age.key").is_file() {
            follow
        } else {
            match (node_key, leader) {
                (Some(k), Some(l)) if SignerId::from_signing_key(&k) == l => {
                    format!("start it with `swoosh serve --dir {shown}`")
                }
                (Some(_), Some(_)) => follow,
                _ => format!(
                    "start it with `swoosh serve --dir {shown}` if it is the leader's, `swoosh follow --dir {shown} --leader …` if a follower's"
                ),
            }
        };
        bail!(
            "{shown} holds no store (no {}): this node has not written a log yet; {start}",
            data.join("data.mdb").display()
        );
    }
    let genesis = read_genesis(&genesis_path)?;
    let genesis_hash = genesis.hash().with_context(|| {
        format!(
            "{} cannot be hashed: it is not a usable genesis",
            genesis_path.display()
        )
    })?;
    if access == Access::Write {
        // Also a node run with --nosync, which holds no journal lock.
        crate::dirlock::lock_node_dir(dir)?;
    }
    let store = match access {
        Access::Write => open_store(dir, false)?,
        Access::Read => crate::node::open_reader_store(dir)?,
    };
    // Another process holds the journal's lock. A node serving this
    // directory also holds the directory lock, so a write command that got
    // that lock is facing a read-only command's fold instead. Either one's
    // newest commits or fold are in its memory only, and a write here would
    // go under it.
    if store.journal_busy() {
        match access {
            Access::Write => bail!(
                "another process holds the lock on {} (a swoosh command reading {shown}, or a program embedding its store; a node serving it would hold the directory lock too, and that one is free): wait for it to finish or stop it, then rerun this command",
                data.join(JOURNAL_FILE).display()
            ),
            Access::Read => eprintln!(
                "swoosh: warning: another process holds the journal of {shown} (a node serving it, or another command reading it): commits not yet folded into the store may not be visible here"
            ),
        }
    }
    Ok(Node {
        dir: dir.to_path_buf(),
        genesis,
        genesis_hash,
        store,
    })
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Snapshots => "checking snapshots",
        Phase::Replay => "replaying records",
        Phase::Scan => "scanning frames",
        Phase::Reindex => "rebuilding indexes",
    }
}

/// A progress bar on stderr (hidden when `hidden`, and by indicatif when
/// stderr is not a terminal).
fn progress_bar(hidden: bool) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:<19} {bar:40.cyan/blue} {pos}/{len} ({per_sec}, {elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// A storage progress callback driving `bar`; a new phase restarts it.
fn on_progress(bar: &ProgressBar) -> impl FnMut(&Progress) + '_ {
    let mut phase = None;
    move |p: &Progress| {
        if phase != Some(p.phase) {
            phase = Some(p.phase);
            bar.reset();
            bar.set_message(phase_name(p.phase));
        }
        bar.set_length(p.total);
        bar.set_position(p.done);
    }
}

/// Why a log cannot be trusted, in terms an operator can act on.
#[derive(Serialize)]
struct Failure {
    /// The first bad record, when the failure is about one.
    index: Option<u64>,
    /// `corrupt`, `missing`, `below-base`, `divergence`, `store`,
    /// `malformed-key`, `genesis`, `meta`, `unproven`, or `open` (the
    /// directory, its genesis or its store could not be opened).
    kind: &'static str,
    reason: String,
    next: String,
}

impl Failure {
    fn message(&self) -> String {
        match self.index {
            Some(i) => format!("WAL record {i}: {}. Next: {}", self.reason, self.next),
            None => format!("{}. Next: {}", self.reason, self.next),
        }
    }
}

fn repair_hint(dir: &Path, index: u64) -> String {
    format!(
        "cut the log back to record {} with `swoosh wal repair --dir {} --keep-copy {} --yes` (it first writes the records it cuts to that file; run it without --yes to see what would be cut), or restore {} from a backup",
        index.saturating_sub(1),
        dir.display(),
        dir.join(format!("wal-cut-{index}.bin")).display(),
        dir.join("data").display()
    )
}

fn read_failure(e: &ReadError, dir: &Path) -> Failure {
    match e {
        ReadError::Corrupt { index, reason, .. } => Failure {
            index: Some(*index),
            kind: "corrupt",
            reason: format!("corrupt: {reason}"),
            next: repair_hint(dir, *index),
        },
        ReadError::Missing { index, last, .. } => Failure {
            index: Some(*index),
            kind: "missing",
            reason: format!(
                "missing (the log ends at or skips past it; its last index is {last})"
            ),
            next: repair_hint(dir, *index),
        },
        ReadError::BelowBase { index, base, .. } => Failure {
            index: Some(*index),
            kind: "below-base",
            reason: format!("below the WAL base: the log starts after record {base}, held only in the snapshot at {base}"),
            next: format!("read records from {} on, or the snapshot at {base}", base + 1),
        },
        ReadError::Store(s @ StoreError::BadIndexKey { .. }) => Failure {
            index: None,
            kind: "malformed-key",
            reason: format!("the store cannot be read: {s}"),
            next: format!(
                "remove the key with `swoosh wal repair --dir {} --keep-copy {} --yes` (it copies it to that file first; run it without --yes to see what it would do), or restore {} from a backup",
                dir.display(),
                dir.join("malformed-keys.bin").display(),
                dir.join("data").display()
            ),
        },
        ReadError::Store(s) => Failure {
            index: None,
            kind: "store",
            reason: format!("the store cannot be read: {s}"),
            next: format!(
                "check that {} is readable and not damaged, then run `swoosh wal verify --dir {}` again",
                dir.join("data").display(),
                dir.display()
            ),
        },
    }
}

fn explain(e: &RecoveryError, dir: &Path) -> Failure {
    match e {
        RecoveryError::Read(r) => read_failure(r, dir),
        RecoveryError::Divergence { index, source, .. } => Failure {
            index: Some(*index),
            kind: "divergence",
            reason: format!(
                "the record is intact (its frame hash and chain link check) but replaying it with this build fails: {source}"
            ),
            next: "do NOT repair (the record is valid and repair would not cut it); run the swoosh version that wrote this log, or report the divergence".into(),
        },
        RecoveryError::Genesis(g) => Failure {
            index: None,
            kind: "genesis",
            reason: format!("the genesis document is invalid: {g}"),
            next: format!(
                "fix {} (it must be the genesis the cluster was created with)",
                dir.join(GENESIS_FILE).display()
            ),
        },
        RecoveryError::Meta(m) => Failure {
            index: None,
            kind: "meta",
            reason: m.to_string(),
            next: format!(
                "check that --dir {} is the node whose log this is",
                dir.display()
            ),
        },
        RecoveryError::Store(s) => read_failure(&ReadError::Store(s.clone()), dir),
        RecoveryError::Unproven { base, .. } => Failure {
            index: Some(*base),
            kind: "unproven",
            reason: e.to_string(),
            next: format!(
                "if this log was compacted (its archives exist), rebuild the snapshot at {base}: `swoosh snapshot rebuild-base --dir {} <archives, oldest first>`; on a follower, install a verified snapshot from the leader again, or resync it from scratch",
                dir.display()
            ),
        },
    }
}

fn secs(d: std::time::Duration) -> f64 {
    d.as_secs_f64()
}

fn per_second(n: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

/// `Ok(())` for a write to a closed pipe (`swoosh wal export | head`).
fn quiet_pipe(r: std::io::Result<()>, what: &str) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(anyhow!("cannot write {what}: {e}")),
    }
}

// ---------------------------------------------------------------------------
// wal
// ---------------------------------------------------------------------------

pub fn wal(cmd: WalCmd) -> Result<()> {
    match cmd {
        WalCmd::Verify {
            dir,
            json,
            trusted,
            strict,
        } => wal_verify(&dir, json, trusted, strict),
        WalCmd::Export {
            dir,
            format,
            from,
            to,
            out,
        } => wal_export(&dir, format, from, to, out.as_deref()),
        WalCmd::Inspect { dir, index, json } => wal_inspect(&dir, index, json),
        WalCmd::Repair {
            dir,
            keep_copy,
            yes,
        } => wal_repair(&dir, &keep_copy, yes),
        WalCmd::Reindex { dir } => wal_reindex(&dir),
        WalCmd::Compact {
            dir,
            archive,
            through,
            keep_records,
            drop_decisions,
            yes,
            json,
        } => wal_compact(
            &dir,
            &archive,
            through,
            keep_records,
            drop_decisions,
            yes,
            json,
        ),
        WalCmd::Shrink { dir, json } => wal_shrink(&dir, json),
        WalCmd::CheckArchive { files, dir, json } => {
            wal_check_archive(&files, dir.as_deref(), json)
        }
    }
}

#[derive(Serialize)]
struct SnapshotProblemJson {
    index: u64,
    reason: String,
}

#[derive(Serialize)]
struct VerifyJson {
    ok: bool,
    records: u64,
    /// The log's WAL base: records up to it were compacted away (`records`
    /// counts those after it), and replay began at its snapshot; `null`
    /// for a log that starts at record 1.
    wal_base: Option<u64>,
    head_hash: String,
    root_hash: String,
    hlc: Option<String>,
    signatures: &'static str,
    snapshots_ok: Vec<u64>,
    snapshot_problems: Vec<SnapshotProblemJson>,
    index_problems: Vec<String>,
    index_problems_total: u64,
    /// A follower's recorded divergence halt (`swoosh follow --clear-halt`).
    halt: Option<swoosh_storage::HaltMarker>,
    seconds: f64,
}

#[derive(Serialize)]
struct VerifyFailJson<'a> {
    ok: bool,
    #[serde(flatten)]
    failure: &'a Failure,
}

/// `wal verify --json`'s one object for a failure.
fn print_verify_failure(f: &Failure) -> Result<()> {
    say!(
        "{}",
        serde_json::to_string_pretty(&VerifyFailJson {
            ok: false,
            failure: f
        })?
    );
    Ok(())
}

fn wal_verify(dir: &Path, json: bool, trusted: bool, strict: bool) -> Result<()> {
    let node = match open_node(dir, Access::Read) {
        Ok(n) => n,
        Err(e) if json => {
            // `--json` promises one object, a failure to open included.
            let f = Failure {
                index: None,
                kind: "open",
                reason: format!("{e:#}"),
                next: "give the node's own directory (it holds genesis.json, node.key and data/), readable by this user".into(),
            };
            print_verify_failure(&f)?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let opts = VerifyOptions {
        verify: if trusted {
            Verify::Trusted
        } else {
            Verify::Full
        },
        ..Default::default()
    };
    let decisions = expect_decisions(&node);
    let bar = progress_bar(json);
    let res = verify_expecting(
        &node.store,
        &node.genesis,
        &opts,
        decisions,
        &mut on_progress(&bar),
    );
    bar.finish_and_clear();
    let r = match res {
        Ok(r) => r,
        Err(e) => {
            let f = explain(&e, &node.dir);
            if json {
                print_verify_failure(&f)?;
            }
            bail!(
                "the log in {} is NOT sound: {}",
                node.dir.join("data").display(),
                f.message()
            );
        }
    };
    let halt = swoosh_storage::recorded_halt(&node.store)?;
    let base = swoosh_storage::base::wal_base(&node.store)?.map(|b| b.index);
    let signatures = if trusted {
        "trusted (not re-verified)"
    } else {
        "re-verified"
    };
    if json {
        let out = VerifyJson {
            ok: true,
            records: r.records,
            wal_base: base,
            head_hash: r.head_hash.to_string(),
            root_hash: r.root_hash.to_string(),
            hlc: r.hlc.map(|h| h.to_string()),
            signatures,
            snapshots_ok: r.snapshots_ok.clone(),
            snapshot_problems: r
                .snapshot_problems
                .iter()
                .map(|p| SnapshotProblemJson {
                    index: p.index,
                    reason: p.reason.to_string(),
                })
                .collect(),
            index_problems: r.index_problems.clone(),
            index_problems_total: r.index_problems_total,
            halt,
            seconds: secs(r.elapsed),
        };
        say!("{}", serde_json::to_string_pretty(&out)?);
        return strict_verdict(strict, &r, &node.dir);
    }
    say!(
        "the log in {} is sound: {} records, every frame, chain link and reducer step checked, signatures {signatures}",
        node.dir.join("data").display(),
        r.records
    );
    if let Some(b) = base {
        say!(
            "  wal base     {b}: records 1..={b} are not in this store (compacted away, archived if the node kept archives; or, on a follower, before the leader's snapshot it installed); the {} records are {}..={}, replayed from the snapshot at {b}",
            r.records,
            b + 1,
            b + r.records
        );
    }
    say!("  head record  {}", r.head_hash);
    say!("  root hash    {}", r.root_hash);
    say!(
        "  hlc          {}",
        r.hlc.map_or("none".to_string(), |h| h.to_string())
    );
    if r.snapshots_ok.is_empty() && r.snapshot_problems.is_empty() {
        say!("  snapshots    none stored");
    } else if !r.snapshots_ok.is_empty() {
        say!(
            "  snapshots    {} match the replayed state (at {})",
            r.snapshots_ok.len(),
            join_u64(&r.snapshots_ok)
        );
    }
    for p in &r.snapshot_problems {
        say!(
            "  warning: snapshot {} is unusable ({}); recovery skips it. `swoosh snapshot create --dir {}` writes a fresh one",
            p.index,
            p.reason,
            node.dir.display()
        );
    }
    if r.index_problems_total > 0 {
        say!(
            "  warning: {} derived-index problem(s); rebuild them with `swoosh wal reindex --dir {}`:",
            r.index_problems_total,
            node.dir.display()
        );
        for p in &r.index_problems {
            say!("    {p}");
        }
    } else {
        say!("  indexes      idempotency entries and decision records agree with the log");
    }
    if let Some(h) = &halt {
        say!(
            "  halt         this follower halted at a divergence at index {}: {}; it stays halted until `swoosh follow --clear-halt` (see docs/runbooks/replication-triage.md)",
            h.index,
            h.reason
        );
    }
    say!(
        "  took {:.3} s ({:.0} records/s)",
        secs(r.elapsed),
        per_second(r.records, secs(r.elapsed))
    );
    strict_verdict(strict, &r, &node.dir)
}

/// Whether `node` must hold every record's decision: a leader's store does,
/// a follower's does not. The role is the node's key's: counting what the
/// store holds would pass a leader that lost every decision.
fn expect_decisions(node: &Node) -> ExpectDecisions {
    let key_path = node.dir.join("node.key");
    if !key_path.is_file() {
        return ExpectDecisions::Infer;
    }
    match read_key(&key_path) {
        Ok(k) if SignerId::from_signing_key(&k) == node.genesis.leader => ExpectDecisions::Leader,
        Ok(_) => ExpectDecisions::Follower,
        Err(e) => {
            eprintln!("swoosh: warning: {e:#}; decisions are checked only if the store holds some");
            ExpectDecisions::Infer
        }
    }
}

/// `wal verify --strict`: a sound log whose snapshots or derived indexes
/// disagree with it fails with exit code [`STRICT_EXIT_CODE`].
fn strict_verdict(strict: bool, r: &swoosh_storage::VerifyReport, dir: &Path) -> Result<()> {
    let snaps = r.snapshot_problems.len();
    if !strict || (snaps == 0 && r.index_problems_total == 0) {
        return Ok(());
    }
    Err(crate::Exit {
        code: STRICT_EXIT_CODE,
        message: format!(
            "--strict: the log is sound but {snaps} snapshot(s) and {} derived-index entry(ies) disagree with it; `swoosh wal reindex --dir {d}` rebuilds the indexes (a starting node also does), `swoosh snapshot create --dir {d}` writes a fresh snapshot",
            r.index_problems_total,
            d = dir.display()
        ),
    }
    .into())
}

fn join_u64(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

fn wal_export(
    dir: &Path,
    format: ExportFormat,
    from: Option<u64>,
    to: Option<u64>,
    out: Option<&Path>,
) -> Result<()> {
    let node = open_node(dir, Access::Read)?;
    let last = node.store.last_index()?;
    // A log based on an installed snapshot holds no record at or below it.
    let from = match from {
        Some(f) => f,
        None => swoosh_storage::first_index(&node.store)?,
    };
    let to = match to {
        Some(t) if t > last => bail!(
            "--to {t} is beyond the end of the log (its last record is {last}); omit --to to export up to the end"
        ),
        Some(t) if t < from => bail!("--from {from} is after --to {t}: give --from <= --to"),
        Some(t) => t,
        None => last,
    };
    if from > to && last > 0 {
        bail!("--from {from} is beyond the end of the log (its last record is {last})");
    }
    // An export replaces FILE only once it is whole: a nightly export that
    // stops at a damaged record must not have destroyed the previous one.
    // Not for a device or a pipe (`--out /dev/stdout`): written directly.
    // The pid keeps two exports to the same file apart.
    let partial = out
        .filter(|p| std::fs::metadata(p).map_or(true, |m| m.is_file()))
        .map(|p| {
            let mut name = p.as_os_str().to_os_string();
            name.push(format!(".partial-{}", std::process::id()));
            PathBuf::from(name)
        });
    let write_to: Option<&Path> = partial.as_deref().or(out);
    // Whatever stops the export before its rename (a refusal to start, a
    // damaged record, a record that does not re-encode) removes the partial
    // file: it was left behind, empty or half-written.
    let mut leftover = RemoveOnDrop(partial.clone());
    let mut sink: Box<dyn Write> = match write_to {
        Some(p) => Box::new(std::io::BufWriter::new({
            use std::os::unix::fs::OpenOptionsExt;
            // Owner-only, as `data.mdb` and compaction's archives: an
            // export holds the records in plain text (chmod it to share).
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(p)
                .with_context(|| {
                    format!(
                        "cannot create {}: check the directory exists and is writable",
                        p.display()
                    )
                })?
        })),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let target = write_to.map_or("stdout".to_string(), |p| p.display().to_string());
    let mut written = 0u64;
    let mut failure = None;
    if from <= to {
        let iter = export(&node.store, node.genesis_hash, from, Some(to)).map_err(|e| {
            anyhow!(
                "cannot start the export: {}",
                read_failure(&e, dir).message()
            )
        })?;
        for item in iter {
            let v = match item {
                Ok(v) => v,
                Err(e) => {
                    failure = Some(read_failure(&e, dir));
                    break;
                }
            };
            let bytes = match format {
                ExportFormat::Jsonl => {
                    let mut line = serde_json::to_vec(&v.record).with_context(|| {
                        format!("WAL record {} cannot be written as JSON", v.index)
                    })?;
                    line.push(b'\n');
                    line
                }
                ExportFormat::Cbor => {
                    let enc = swoosh_core::cbor::to_canonical(&v.record)
                        .map_err(|e| anyhow!("WAL record {} cannot be re-encoded: {e}", v.index))?;
                    if Hash::of_bytes(&enc) != v.hash {
                        bail!(
                            "WAL record {} re-encodes to bytes other than the stored ones (this build's encoder and the log's writer disagree): export it with the swoosh version that wrote the log",
                            v.index
                        );
                    }
                    let len = u32::try_from(enc.len())
                        .map_err(|_| anyhow!("WAL record {} is larger than 4 GiB", v.index))?;
                    let mut framed = Vec::with_capacity(4 + enc.len());
                    framed.extend_from_slice(&len.to_be_bytes());
                    framed.extend_from_slice(&enc);
                    framed
                }
            };
            if !quiet_pipe(sink.write_all(&bytes), &target)? {
                return Ok(());
            }
            written += 1;
        }
    }
    if !quiet_pipe(sink.flush(), &target)? {
        return Ok(());
    }
    drop(sink);
    if let Some(f) = failure {
        // The records before the damage stay in the partial file, which the
        // message names: they may be all that can be read.
        leftover.0 = None;
        let kept = out
            .filter(|_| partial.is_some())
            .map_or(String::new(), |p| {
                format!("; {} was left as it was", p.display())
            });
        bail!(
            "export stopped: {} ({written} records before it were written to {target}{kept})",
            f.message()
        );
    }
    if let (Some(p), Some(part)) = (out, &partial) {
        std::fs::File::open(part)
            .and_then(|f| f.sync_all())
            .and_then(|()| std::fs::rename(part, p))
            .with_context(|| {
                format!(
                    "cannot move the finished export {} to {}",
                    part.display(),
                    p.display()
                )
            })?;
        leftover.0 = None;
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync the directory {}", parent.display()))?;
    }
    let target = out.map_or(target, |p| p.display().to_string());
    if out.is_some() {
        eprintln!(
            "exported {written} records ({}) to {target}",
            if written == 0 {
                "the log is empty".to_string()
            } else {
                format!("{from}..={to}")
            }
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct InspectJson<'a> {
    index: u64,
    hash: String,
    /// Whether `prev_hash` is the hash of the previous record (or genesis);
    /// `null` when the previous record cannot be read.
    links_to_previous: Option<bool>,
    decision_address: String,
    /// Bytes the frame takes in the store (header included), the record's
    /// canonical encoding, and whether the frame stores it LZ4-compressed.
    stored_bytes: usize,
    encoded_bytes: usize,
    compressed: bool,
    record: &'a WalRecord,
}

fn wal_inspect(dir: &Path, index: u64, json: bool) -> Result<()> {
    let node = open_node(dir, Access::Read)?;
    let last = node.store.last_index()?;
    // A log based on a snapshot at B holds records B+1.. only, and record
    // B+1 links to the base hash the way record 1 links to genesis.
    let (base, anchor) = swoosh_storage::base::anchor(&node.store, node.genesis_hash)?;
    if index == 0 || index > last {
        bail!(
            "there is no record {index}: the log holds {}",
            record_range(base + 1, last)
        );
    }
    let v = read_record(&node.store, index).map_err(|e| {
        let f = read_failure(&e, dir);
        anyhow!("{}", f.message())
    })?;
    let rec = &v.record;
    // How the verified frame is stored (read_record checked it).
    let frame = node.store.read_at(index)?.unwrap_or_default();
    let stored_bytes = frame.len();
    let encoded_bytes = swoosh_storage::frame::declared_len(&frame).unwrap_or(0);
    let compressed = frame.first() == Some(&swoosh_storage::frame::FRAME_VERSION_LZ4);
    // The chain link to the previous record.
    let (link, link_note) = if index == base + 1 {
        let ok = rec.prev_hash == anchor;
        let what = if base == 0 {
            "the genesis hash".to_string()
        } else {
            format!("the WAL base hash (record {base}, held in the snapshot at {base})")
        };
        (
            Some(ok),
            if ok {
                format!("= {what} ✓")
            } else {
                format!(
                    "≠ {what} {anchor}: chain broken, run `swoosh wal verify --dir {}`",
                    dir.display()
                )
            },
        )
    } else {
        match read_record(&node.store, index - 1) {
            Ok(p) if p.hash == rec.prev_hash => {
                (Some(true), format!("= hash of record {} ✓", index - 1))
            }
            Ok(p) => (
                Some(false),
                format!(
                    "≠ hash of record {} ({}): chain broken, run `swoosh wal verify --dir {}`",
                    index - 1,
                    p.hash,
                    dir.display()
                ),
            ),
            Err(ReadError::Store(e)) => return Err(e.into()),
            Err(e) => (
                None,
                format!(
                    "record {} is unreadable ({}), link not checked",
                    index - 1,
                    read_failure(&e, dir).reason
                ),
            ),
        }
    };
    let address = decision_address(&rec.decision);
    if json {
        let out = InspectJson {
            index,
            hash: v.hash.to_string(),
            links_to_previous: link,
            decision_address: address,
            stored_bytes,
            encoded_bytes,
            compressed,
            record: rec,
        };
        say!(
            "{}",
            serde_json::to_string_pretty(&out)
                .with_context(|| format!("WAL record {index} cannot be written as JSON"))?
        );
        return Ok(());
    }
    let decision_note = match get_decision(&node.store, &rec.decision) {
        Ok(Some(d)) => {
            let r = d.record();
            format!(
                "stored, {}: {} {} → {}",
                match d {
                    DecisionDoc::Signed(_) => "signed by the leader",
                    DecisionDoc::Unsigned(_) => "unsigned",
                },
                r.region,
                r.from,
                r.to
            )
        }
        Ok(None) => format!(
            "not in the decision index: `swoosh wal reindex --dir {}` rebuilds it",
            dir.display()
        ),
        Err(e) => format!("unreadable: {e}"),
    };
    let inputs = serde_json::to_string(&rec.inputs).unwrap_or_else(|e| format!("<{e}>"));
    let inputs = if inputs.chars().count() > INSPECT_INPUTS_CHARS_MAX {
        let cut: String = inputs.chars().take(INSPECT_INPUTS_CHARS_MAX).collect();
        format!("{cut}… (--json shows all)")
    } else {
        inputs
    };
    say!("WAL record {index} of {last} ({})", dir.display());
    say!("  project      {}", rec.project);
    say!("  transition   {}", rec.transition);
    say!("  signer       {}", rec.signer);
    say!("  hlc          {}", rec.hlc);
    say!("  accepted at  {} ms (leader wall time)", rec.timestamp_ms);
    say!("  window       {}", rec.window_id);
    say!("  idem key     {}", rec.idem_key);
    say!("  pre hash     {}", rec.state_pre_hash);
    say!("  post hash    {}", rec.state_post_hash);
    say!("  prev hash    {}  ({link_note})", rec.prev_hash);
    say!("  record hash  {}", v.hash);
    say!(
        "  stored       {stored_bytes} bytes for a {encoded_bytes}-byte record ({})",
        if compressed {
            "LZ4, frame version 2"
        } else {
            "as is, frame version 1"
        }
    );
    say!("  inputs hash  {}", rec.inputs_hash);
    say!("  inputs       {inputs}");
    if !rec.evidence.is_empty() {
        say!("  evidence     {}", rec.evidence.join(", "));
    }
    say!("  guards");
    for g in &rec.guard_outcomes {
        say!(
            "    {} {:<16} {}",
            if g.ok { "✓" } else { "✗" },
            g.guard,
            g.reasons.join("; ")
        );
    }
    say!("  decision     {}", rec.decision);
    say!("               {address}  ({decision_note})");
    say!("  signature    {}", rec.signature);
    Ok(())
}

fn wal_repair(dir: &Path, keep_copy: &Path, yes: bool) -> Result<()> {
    let mut node = open_node(dir, if yes { Access::Write } else { Access::Read })?;
    if keep_copy.exists() {
        bail!(
            "{} already exists; give a new --keep-copy path so an earlier cut is never overwritten (nothing was cut)",
            keep_copy.display()
        );
    }
    if !yes {
        return repair_dry_run(&node, keep_copy);
    }
    let bar = progress_bar(false);
    let res = repair(
        &mut node.store,
        node.genesis_hash,
        keep_copy,
        &mut on_progress(&bar),
    );
    bar.finish_and_clear();
    let r = res.with_context(|| format!("repairing the log in {} failed", dir.display()))?;
    let first = swoosh_storage::first_index(&node.store)?;
    if !r.removed_malformed.is_empty() {
        say!(
            "removed {} key(s) of {} that were not 8-byte indexes (a stray write, no record): {}; they are in {} (format: docs/wal-format.md §7)",
            r.removed_malformed.len(),
            dir.display(),
            malformed_list(&r.removed_malformed),
            keep_copy.display()
        );
    }
    let Some(fault) = &r.fault else {
        say!(
            "the log in {} has no damaged record ({}, frames and chain links checked): no record was cut{}",
            dir.display(),
            record_range(first, r.last_good),
            if r.side_file.is_none() {
                format!(" and {} was not written", keep_copy.display())
            } else {
                String::new()
            }
        );
        say!(
            "  if `swoosh wal verify --dir {}` still fails, the records are intact but this build's reducer disagrees with them: do not repair, run the swoosh version that wrote the log",
            dir.display()
        );
        return Ok(());
    };
    let f = read_failure(fault, dir);
    say!(
        "repaired {}: the first bad record was {} ({})",
        dir.display(),
        f.index.map_or("?".to_string(), |i| i.to_string()),
        f.reason
    );
    say!("  the log now ends at record {}", r.last_good);
    say!(
        "  cut {} record(s){}, and removed {} derived index entr{}",
        r.cut_records,
        if r.cut_snapshots.is_empty() {
            String::new()
        } else {
            format!(" and snapshot(s) {}", join_u64(&r.cut_snapshots))
        },
        r.removed_derived,
        if r.removed_derived == 1 { "y" } else { "ies" }
    );
    say!(
        "  what was cut is in {} (format: docs/wal-format.md §7)",
        keep_copy.display()
    );
    say!(
        "next: `swoosh wal verify --dir {}`; resubmit the cut proposals if they are still wanted (their idempotency keys were freed)",
        dir.display()
    );
    Ok(())
}

/// Find what `repair` would do, without changing anything, and exit non-zero
/// when it would change something. The plan is the one `repair` carries
/// out: the same walk (from the WAL base on a based log) and the same cut.
fn repair_dry_run(node: &Node, keep_copy: &Path) -> Result<()> {
    let dir = &node.dir;
    let bar = progress_bar(false);
    let res = plan_repair(&node.store, node.genesis_hash, &mut on_progress(&bar));
    bar.finish_and_clear();
    let plan = res.with_context(|| format!("checking the log in {} failed", dir.display()))?;
    if plan.changes_nothing() {
        say!(
            "the log in {} has no damaged record ({}, frames and chain links checked): repair would cut nothing",
            dir.display(),
            record_range(plan.first, plan.last)
        );
        return Ok(());
    }
    say!("dry run, nothing changed:");
    if !plan.malformed.is_empty() {
        say!(
            "  the store holds {} key(s) that are not 8-byte indexes (a stray write, no record): {}; repair would remove them",
            plan.malformed.len(),
            malformed_list(&plan.malformed)
        );
    }
    if let Some(fault) = &plan.fault {
        let f = read_failure(fault, dir);
        let first = f.index.unwrap_or(plan.first);
        say!("  the first bad record is {first} ({})", f.reason);
        say!(
            "  repair would cut records {first}..={} ({} record(s)){}, keep the log up to record {},",
            plan.last,
            plan.last.saturating_sub(plan.last_good),
            if plan.cut_snapshots.is_empty() {
                String::new()
            } else {
                format!(" and snapshot(s) {}", join_u64(&plan.cut_snapshots))
            },
            plan.last_good
        );
        say!(
            "  write them to {} first, and remove the idempotency entries and decisions of the cut records",
            keep_copy.display()
        );
    } else {
        say!(
            "  every record checks out ({}): no record would be cut; the keys would be written to {} first",
            record_range(plan.first, plan.last),
            keep_copy.display()
        );
    }
    bail!(
        "not repaired (dry run): rerun with --yes to repair, i.e. `swoosh wal repair --dir {} --keep-copy {} --yes`",
        dir.display(),
        keep_copy.display()
    )
}

/// "records a..=b", or "no records" for an empty range (a log based on a
/// snapshot may hold none after it).
fn record_range(first: u64, last: u64) -> String {
    if last < first {
        "no records".to_string()
    } else {
        format!("records {first}..={last}")
    }
}

/// Malformed keys as `space key-hex` (at most a few; the side file has all).
fn malformed_list(keys: &[MalformedKey]) -> String {
    const SHOWN_MAX: usize = 8;
    let mut shown: Vec<String> = keys
        .iter()
        .take(SHOWN_MAX)
        .map(|m| format!("{} key {}", m.space, hex(&m.key)))
        .collect();
    if keys.len() > SHOWN_MAX {
        shown.push(format!("and {} more", keys.len() - SHOWN_MAX));
    }
    shown.join(", ")
}

fn wal_reindex(dir: &Path) -> Result<()> {
    let mut node = open_node(dir, Access::Write)?;
    let key_path = dir.join("node.key");
    let leader = if key_path.is_file() {
        let k = read_key(&key_path)?;
        (SignerId::from_signing_key(&k) == node.genesis.leader).then_some(k)
    } else {
        None
    };
    // A follower's store holds no decisions: rebuilding one for each of
    // its records would only fill its disk. Without node.key, a store that
    // holds none is taken for a follower's (a leader that lost them all
    // rebuilds them, signed, when it starts).
    let follower = match expect_decisions(&node) {
        ExpectDecisions::Follower => true,
        ExpectDecisions::Leader => false,
        ExpectDecisions::Infer => node.store.count(swoosh_storage::Space::Decisions)? == 0,
    };
    let bar = progress_bar(false);
    let res = if follower {
        swoosh_storage::rebuild_follower_indexes(
            &mut node.store,
            &node.genesis,
            &mut on_progress(&bar),
        )
    } else {
        rebuild_indexes(
            &mut node.store,
            &node.genesis,
            leader.as_ref(),
            &mut on_progress(&bar),
        )
    };
    bar.finish_and_clear();
    let r = match res {
        Ok(r) => r,
        // A based log whose base snapshot is unusable is refused before
        // anything is cleared; the indexes are as they were.
        Err(swoosh_storage::RebuildError::Replay(e @ RecoveryError::Unproven { .. })) => {
            bail!(
                "the indexes of {} were not rebuilt (nothing was changed): {}",
                dir.display(),
                explain(&e, dir).message()
            )
        }
        Err(swoosh_storage::RebuildError::Replay(e)) => {
            bail!(
                "rebuilding the indexes of {} stopped (what was rebuilt so far is kept; run it again after fixing the log): {}",
                dir.display(),
                explain(&e, dir).message()
            )
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "rebuilding the indexes of {} failed; run it again",
                    dir.display()
                )
            })
        }
    };
    let unsigned = r.decisions - r.decisions_kept_signed;
    let how = if follower {
        "a follower stores none".to_string()
    } else if leader.is_some() {
        "signed with the leader key in node.key".to_string()
    } else if r.decisions == 0 {
        "none to keep or sign".to_string()
    } else if unsigned == 0 {
        "each kept as stored, signed by the leader".to_string()
    } else {
        format!(
            "{} kept as stored, signed by the leader; {unsigned} stored unsigned: no leader key in node.key",
            r.decisions_kept_signed
        )
    };
    say!(
        "rebuilt the derived indexes of {} from {} records: {} idempotency entries, {} decision records ({how}) in {:.3} s",
        dir.display(),
        r.records,
        r.idem_entries,
        r.decisions,
        secs(r.elapsed)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// replay
// ---------------------------------------------------------------------------

/// `swoosh replay --json`: exactly these four keys, in this order.
#[derive(Serialize)]
struct ReplayJson {
    records: u64,
    hash: String,
    seconds: f64,
    records_per_s: f64,
}

pub fn replay(a: ReplayArgs) -> Result<()> {
    let node = open_node(&a.dir, Access::Read)?;
    let opts = RecoverOptions {
        verify: if a.verify_signatures {
            Verify::Full
        } else {
            Verify::Trusted
        },
        use_snapshots: !a.from_genesis,
    };
    let bar = progress_bar(a.json);
    let res = recover_with(&node.store, &node.genesis, &opts, &mut on_progress(&bar));
    bar.finish_and_clear();
    let rec = res.map_err(|e| {
        anyhow!(
            "replaying the log in {} failed: {}",
            node.dir.join("data").display(),
            explain(&e, &node.dir).message()
        )
    })?;
    let seconds = secs(rec.elapsed);
    let rate = per_second(rec.replayed, seconds);
    let hash = rec.node.root_hash().to_string();
    if a.json {
        let out = ReplayJson {
            records: rec.replayed,
            hash,
            seconds,
            records_per_s: rate,
        };
        say!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    // A based log starts from the snapshot at its base even with
    // --from-genesis: it holds no record at or below it.
    let base = swoosh_storage::wal_base(&node.store)?.map_or(0, |b| b.index);
    let start = match rec.snapshot {
        Some(s) if a.from_genesis && s == base => format!(
            "from snapshot {s}, the WAL base (--from-genesis: the log starts after it; newer snapshots ignored)"
        ),
        _ if a.from_genesis => "from genesis (--from-genesis: snapshots ignored)".to_string(),
        Some(s) => format!("from snapshot {s} (the newest valid one)"),
        None => "from genesis (no usable snapshot)".to_string(),
    };
    for p in &rec.skipped_snapshots {
        say!(
            "warning: snapshot {} skipped: {}; `swoosh snapshot list --dir {}` shows all",
            p.index,
            p.reason,
            node.dir.display()
        );
    }
    say!("replayed {} records {start}", rec.replayed);
    if let Some(snap) = rec.snapshot.filter(|s| !a.from_genesis && *s > base) {
        say!(
            "  records 1..={snap} are in the snapshot and were not re-read: `swoosh wal verify --dir {}` checks the whole log",
            node.dir.display()
        );
    }
    if base > 0 {
        say!("  records 1..={base} are held only in the snapshot at {base}: this log starts after it (its WAL base)");
    }
    say!("  index        {}", rec.node.index);
    say!("  root hash    {hash}");
    say!("  head record  {}", rec.node.head_record);
    say!("  took {seconds:.3} s, {rate:.0} records/s");
    Ok(())
}

// ---------------------------------------------------------------------------
// snapshot
// ---------------------------------------------------------------------------

pub fn snapshot(cmd: SnapshotCmd) -> Result<()> {
    match cmd {
        SnapshotCmd::Create { dir, keep } => snapshot_create(&dir, keep),
        SnapshotCmd::List { dir, json } => snapshot_list(&dir, json),
        SnapshotCmd::Restore { dir, index, yes } => snapshot_restore(&dir, index, yes),
        SnapshotCmd::RebuildBase { dir, archives } => snapshot_rebuild_base(&dir, &archives),
    }
}

fn snapshot_rebuild_base(dir: &Path, archives: &[PathBuf]) -> Result<()> {
    let mut node = open_node(dir, Access::Write)?;
    let bar = progress_bar(false);
    let res = swoosh_storage::rebuild_base_snapshot(
        &mut node.store,
        &node.genesis,
        archives,
        &mut on_progress(&bar),
    );
    bar.finish_and_clear();
    let r = res.with_context(|| {
        format!(
            "cannot rebuild the base snapshot of {} from the archives",
            dir.display()
        )
    })?;
    say!(
        "replayed {} archived record(s) from genesis to the log's start (record {}, {}) in {:.1} s and wrote the snapshot there ({})",
        r.replayed,
        r.base.index,
        r.base.hash,
        r.elapsed.as_secs_f64(),
        r.snapshot_hash
    );
    say!(
        "  `swoosh wal verify --dir {}` checks the whole store again",
        dir.display()
    );
    Ok(())
}

fn snapshot_create(dir: &Path, keep: usize) -> Result<()> {
    if !(1..=SNAPSHOTS_KEEP_MAX).contains(&keep) {
        bail!("--keep must be between 1 and {SNAPSHOTS_KEEP_MAX}");
    }
    let mut node = open_node(dir, Access::Write)?;
    let bar = progress_bar(false);
    let res = recover_with(
        &node.store,
        &node.genesis,
        &RecoverOptions::default(),
        &mut on_progress(&bar),
    );
    bar.finish_and_clear();
    let rec = res.map_err(|e| {
        anyhow!(
            "cannot snapshot {}: recovery failed: {}",
            dir.display(),
            explain(&e, dir).message()
        )
    })?;
    for p in &rec.skipped_snapshots {
        say!(
            "warning: snapshot {} is unusable and was skipped: {}",
            p.index,
            p.reason
        );
    }
    let existed = node.store.get_snapshot(rec.node.index)?.is_some();
    let info = swoosh_storage::write_snapshot(&mut node.store, &rec.node, keep)
        .with_context(|| format!("writing the snapshot of {} failed", dir.display()))?;
    say!(
        "snapshot at index {} written{} ({} bytes, {:.3} s)",
        info.index,
        if existed {
            " (replacing the one stored there)"
        } else {
            ""
        },
        info.bytes,
        secs(info.elapsed)
    );
    say!("  snapshot hash {}", info.hash);
    say!("  root hash     {}", rec.node.root_hash());
    say!(
        "  recovered {} from {} + {} records",
        dir.display(),
        rec.snapshot
            .map_or("genesis".to_string(), |s| format!("snapshot {s}")),
        rec.replayed
    );
    if !info.deleted.is_empty() {
        say!(
            "  deleted older snapshot(s) {} (keeping the newest {keep})",
            join_u64(&info.deleted)
        );
    }
    Ok(())
}

/// What `snapshot list` knows about one stored snapshot.
#[derive(Serialize)]
struct SnapRow {
    index: u64,
    /// The snapshot's hash (BLAKE3 of its payload); `null` if it is unreadable.
    hash: Option<String>,
    bytes: u64,
    /// Could recovery start from it (intact, this genesis, joined to the log)?
    valid: bool,
    /// Why not, when it is not valid.
    problem: Option<String>,
    root_hash: Option<String>,
    hlc: Option<String>,
    /// The snapshot recovery would start from (the newest valid one).
    recovery_starts_here: bool,
}

/// Check snapshot `idx` as recovery does (joined to the log the way
/// `recover_with` joins it: at the WAL base, to the base hash).
fn examine_snapshot(node: &Node, idx: u64) -> Result<SnapRow> {
    let mut row = SnapRow {
        index: idx,
        hash: None,
        bytes: 0,
        valid: false,
        problem: None,
        root_hash: None,
        hlc: None,
        recovery_starts_here: false,
    };
    let Some(bytes) = node.store.get_snapshot(idx)? else {
        row.problem = Some("vanished while listing".into());
        return Ok(row);
    };
    row.bytes = bytes.len() as u64;
    let snap = match decode_snapshot(idx, &bytes) {
        Ok((h, s)) => {
            row.hash = Some(h.to_string());
            row.root_hash = Some(s.root_hash.to_string());
            row.hlc = s.hlc.map(|h| h.to_string());
            s
        }
        Err(f) => {
            row.problem = Some(f.to_string());
            return Ok(row);
        }
    };
    if snap.state.genesis_hash != node.genesis_hash {
        row.problem = Some(format!(
            "belongs to genesis {}, this node runs genesis {}",
            snap.state.genesis_hash, node.genesis_hash
        ));
        return Ok(row);
    }
    let joins = snapshot_joins_log(&node.store, idx, snap.head_record, node.genesis_hash)
        .map_err(|e| anyhow!("{}", explain(&e, &node.dir).message()))?;
    match joins {
        Ok(()) => row.valid = true,
        Err(fault) => row.problem = Some(fault.to_string()),
    }
    Ok(row)
}

fn snapshot_rows(node: &Node) -> Result<Vec<SnapRow>> {
    let mut rows = node
        .store
        .list_snapshots()?
        .into_iter()
        .map(|i| examine_snapshot(node, i))
        .collect::<Result<Vec<_>>>()?;
    if let Some(r) = rows.iter_mut().rev().find(|r| r.valid) {
        r.recovery_starts_here = true;
    }
    Ok(rows)
}

fn snapshot_list(dir: &Path, json: bool) -> Result<()> {
    let node = open_node(dir, Access::Read)?;
    let rows = snapshot_rows(&node)?;
    if json {
        say!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    // A log based on a snapshot cannot be replayed from genesis: it holds
    // no record at or below its base.
    let base = swoosh_storage::wal_base(&node.store)?;
    let unproven = |b: u64| {
        format!(
            "this log starts after record {b} (its WAL base), so recovery needs a valid snapshot at or after {b} and cannot start without one: if it was compacted, rebuild the snapshot at {b} from the archives (`swoosh snapshot rebuild-base`); on a follower, install a verified snapshot from the leader again, or resync it from scratch"
        )
    };
    if rows.is_empty() {
        match base {
            Some(b) => say!("no snapshots in {}: {}", dir.display(), unproven(b.index)),
            None => say!(
                "no snapshots in {}: recovery replays the log from genesis; `swoosh snapshot create --dir {}` writes one",
                dir.display(),
                dir.display()
            ),
        }
        return Ok(());
    }
    say!("{:>10}  {:<71}  {:>10}  valid", "index", "hash", "bytes");
    for r in &rows {
        say!(
            "{:>10}  {:<71}  {:>10}  {}{}",
            r.index,
            r.hash.as_deref().unwrap_or("-"),
            r.bytes,
            if r.valid {
                "yes".to_string()
            } else {
                format!("NO: {}", r.problem.as_deref().unwrap_or("unknown"))
            },
            if r.recovery_starts_here {
                "  ← recovery starts here"
            } else {
                ""
            }
        );
    }
    if !rows.iter().any(|r| r.valid) {
        match base {
            Some(b) => say!("no valid snapshot: {}", unproven(b.index)),
            None => say!("no valid snapshot: recovery replays the log from genesis"),
        }
    }
    Ok(())
}

fn snapshot_restore(dir: &Path, index: u64, yes: bool) -> Result<()> {
    let mut node = open_node(dir, if yes { Access::Write } else { Access::Read })?;
    let list = node.store.list_snapshots()?;
    if !list.contains(&index) {
        bail!(
            "there is no snapshot {index} in {} (stored: {}); `swoosh snapshot list --dir {}` shows them",
            dir.display(),
            if list.is_empty() {
                "none".to_string()
            } else {
                join_u64(&list)
            },
            dir.display()
        );
    }
    // The log's end: its last record, or the base when none follows it.
    let last = swoosh_storage::log_end(&node.store)?;
    let row = examine_snapshot(&node, index)?;
    if !row.valid {
        bail!(
            "snapshot {index} cannot start a recovery: it {}; choose another (`swoosh snapshot list --dir {}`) or replay from genesis",
            row.problem.as_deref().unwrap_or("is unusable"),
            dir.display()
        );
    }
    let newer: Vec<u64> = list.into_iter().filter(|i| *i > index).collect();
    if newer.is_empty() {
        say!(
            "snapshot {index} is valid and already the newest: recovery starts from it; nothing to do"
        );
        return Ok(());
    }
    if !yes {
        say!(
            "dry run, nothing changed: snapshot {index} is valid and joins the log (record {index}); to make recovery start from it, restore would delete the newer snapshot(s) {}",
            join_u64(&newer)
        );
        say!("  no WAL record is touched: recovery then replays records {}..={last} after snapshot {index}", index + 1);
        bail!(
            "not restored (dry run): rerun with --yes, i.e. `swoosh snapshot restore --dir {} --index {index} --yes`",
            dir.display()
        );
    }
    let mut b = Batch::new();
    for i in &newer {
        b.delete(Space::Snapshots, index_key(*i).to_vec());
    }
    node.store
        .commit(b)
        .with_context(|| format!("deleting snapshots in {} failed", dir.display()))?;
    say!(
        "recovery of {} now starts from snapshot {index}: deleted the newer snapshot(s) {}",
        dir.display(),
        join_u64(&newer)
    );
    say!(
        "  next start replays records {}..={last} after it; check with `swoosh replay --dir {}`",
        index + 1,
        dir.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// wal compact / check-archive
// ---------------------------------------------------------------------------

#[derive(Serialize)]
struct ShrinkJson {
    bytes_before: u64,
    bytes_after: u64,
    entries_checked: u64,
    seconds: f64,
}

fn wal_shrink(dir: &Path, json: bool) -> Result<()> {
    // A node directory with a store, locked against a node starting on it
    // (one run with --nosync too, which holds no journal lock).
    drop(open_node(dir, Access::Write)?);
    let data = dir.join("data");
    let r = swoosh_storage::shrink(
        &data,
        &swoosh_storage::LmdbOptions {
            durability: Durability::Sync,
            map_bytes: crate::node::lmdb_map_bytes(),
        },
    )
    .with_context(|| format!("shrinking the store in {} failed", data.display()))?;
    if json {
        return print_json(&ShrinkJson {
            bytes_before: r.bytes_before,
            bytes_after: r.bytes_after,
            entries_checked: r.entries_checked,
            seconds: r.elapsed.as_secs_f64(),
        });
    }
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    say!(
        "rewrote {} without its free pages: {:.1} MiB → {:.1} MiB ({:.0} % of before); {} entries compared with the store before the swap, {:.1} s",
        data.join(swoosh_storage::lmdb::DATA_FILE).display(),
        mib(r.bytes_before),
        mib(r.bytes_after),
        100.0 * r.bytes_after as f64 / r.bytes_before.max(1) as f64,
        r.entries_checked,
        r.elapsed.as_secs_f64()
    );
    Ok(())
}

#[derive(Serialize)]
struct CompactJson {
    applied: bool,
    archive: String,
    first: u64,
    through: u64,
    records: u64,
    archive_bytes: Option<u64>,
    base_hash: Option<String>,
    steps: Option<u64>,
    removed_snapshots: Vec<u64>,
    removed_decisions: u64,
    seconds: Option<f64>,
}

fn wal_compact(
    dir: &Path,
    archive: &Path,
    through: Option<u64>,
    keep_records: u64,
    drop_decisions: bool,
    yes: bool,
    json: bool,
) -> Result<()> {
    let mut node = open_node(dir, if yes { Access::Write } else { Access::Read })?;
    let last = node.store.last_index()?;
    let first = swoosh_storage::first_index(&node.store)?;
    let through = match through {
        Some(t) => t,
        None => {
            let t = last.saturating_sub(keep_records);
            if t < first {
                let held = (last + 1).saturating_sub(first);
                bail!(
                    "the log in {} holds {held} record(s) after its start ({}), not more than --keep-records {keep_records}: nothing to compact (give a smaller --keep-records or --through)",
                    dir.display(),
                    record_range(first, last)
                );
            }
            t
        }
    };
    let (first, through) = swoosh_storage::compact_range(&node.store, through)
        .with_context(|| format!("cannot compact the log in {}", dir.display()))?;
    if archive.exists() {
        bail!(
            "{} already exists; give a new --archive path (an archive is never overwritten; nothing was cut)",
            archive.display()
        );
    }
    let records = through - first + 1;
    if !yes {
        if json {
            print_json(&CompactJson {
                applied: false,
                archive: archive.display().to_string(),
                first,
                through,
                records,
                archive_bytes: None,
                base_hash: None,
                steps: None,
                removed_snapshots: vec![],
                removed_decisions: 0,
                seconds: None,
            })?;
        } else {
            say!(
                "would archive records {first}..={through} ({records}) of {} to {}, then cut them: the log would start at record {}{}",
                dir.display(),
                archive.display(),
                through + 1,
                if drop_decisions {
                    ", and their decision records would be deleted"
                } else {
                    ""
                }
            );
        }
        bail!(
            "not compacted (dry run): stop the node, then rerun with --yes, i.e. `swoosh wal compact --dir {} --archive {} --through {through} --yes`",
            dir.display(),
            archive.display()
        );
    }
    let bar = progress_bar(json);
    let res = swoosh_storage::compact(
        &mut node.store,
        &node.genesis,
        through,
        archive,
        &swoosh_storage::CompactOptions {
            drop_decisions,
            ..Default::default()
        },
        &mut on_progress(&bar),
    );
    bar.finish_and_clear();
    let r = res.with_context(|| format!("compacting the log in {} failed", dir.display()))?;
    if json {
        return print_json(&CompactJson {
            applied: true,
            archive: archive.display().to_string(),
            first: r.archive.first,
            through: r.base.index,
            records: r.archive.records,
            archive_bytes: Some(r.archive.bytes),
            base_hash: Some(r.base.hash.to_string()),
            steps: Some(r.steps),
            removed_snapshots: r.removed_snapshots.clone(),
            removed_decisions: r.removed_decisions,
            seconds: Some(r.elapsed.as_secs_f64()),
        });
    }
    say!(
        "archived records {}..={} ({}, {} bytes) to {} and cut them from {} in {} step(s), {:.1} s",
        r.archive.first,
        r.archive.last,
        r.archive.records,
        r.archive.bytes,
        archive.display(),
        dir.display(),
        r.steps,
        r.elapsed.as_secs_f64()
    );
    say!(
        "  the log now starts after record {} ({}), proven by the snapshot there; {} older snapshot(s) removed{}",
        r.base.index,
        r.base.hash,
        r.removed_snapshots.len(),
        if drop_decisions {
            format!(", {} decision record(s) removed", r.removed_decisions)
        } else {
            String::new()
        }
    );
    say!(
        "  keep {} with the earlier archives: it is the only copy of those records; `swoosh wal check-archive` checks them",
        archive.display()
    );
    Ok(())
}

#[derive(Serialize)]
struct ArchiveJson {
    file: String,
    first: u64,
    last: u64,
    records: u64,
    bytes: u64,
    prev_hash: String,
    last_hash: String,
}

#[derive(Serialize)]
struct CheckArchiveJson {
    ok: bool,
    archives: Vec<ArchiveJson>,
    /// With --dir: "genesis" when the first archive starts at record 1 and
    /// joins the genesis hash.
    starts_at_genesis: Option<bool>,
    /// With --dir: whether the last archive joins the store's log.
    joins_store: Option<bool>,
    /// Things that are not problems but an auditor should know.
    notes: Vec<String>,
    problem: Option<String>,
}

/// Whether archive `a` (file `f`) continues `p` (file `pf`): it starts right
/// after it, linked to its last hash, or it overlaps it (a compaction run
/// again) with the same record where they meet.
fn joins(
    pf: &Path,
    p: &swoosh_storage::ArchiveSummary,
    f: &Path,
    a: &swoosh_storage::ArchiveSummary,
) -> std::result::Result<(), String> {
    let gap = || {
        format!(
            "{} does not continue the archive before it: it starts at record {} after {}, {} holds records {}..={} ending with {}; give the archives in log order, none missing",
            f.display(),
            a.first,
            a.prev_hash,
            pf.display(),
            p.first,
            p.last,
            p.last_hash
        )
    };
    if a.first == p.last.saturating_add(1) {
        return if a.prev_hash == p.last_hash {
            Ok(())
        } else {
            Err(gap())
        };
    }
    // Overlaps start inside the one before, or with it (a compaction that
    // linked its archive and cut nothing leaves one the next run repeats).
    if a.first < p.first || a.first > p.last {
        return Err(gap());
    }
    // Overlap: both must hold the same record where `a` starts, and the same
    // record where the shorter one ends (a chain is fixed by its ends).
    let read = |path: &Path, index: u64| {
        swoosh_storage::archive_hash_at(path, index)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{} holds no record {index}", path.display()))
    };
    if read(pf, a.first.saturating_sub(1))? != a.prev_hash {
        return Err(gap());
    }
    let end = p.last.min(a.last);
    if read(pf, end)? != read(f, end)? {
        return Err(format!(
            "{} and {} both hold record {end} but with different contents: they are not the same log",
            pf.display(),
            f.display()
        ));
    }
    Ok(())
}

/// The records a node's own archive name promises (`wal-<first>-<last>.cbor`,
/// or `-<n>.cbor` after an interrupted run, as `CompactionPolicy::
/// archive_path` names them), or `None` for another name. The format has
/// no trailer, so an archive cut short at a record boundary (a copy that
/// stopped) reads as a complete shorter one: its name is what tells.
fn named_range(path: &Path) -> Option<(u64, u64)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_prefix("wal-")?.strip_suffix(".cbor")?;
    let mut parts = stem.split('-');
    let (first, last) = (parts.next()?, parts.next()?);
    let suffix_ok = match parts.next() {
        None => true,
        Some(n) => !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && parts.next().is_none(),
    };
    let digits = |x: &str| x.len() == 20 && x.bytes().all(|b| b.is_ascii_digit());
    if !(suffix_ok && digits(first) && digits(last)) {
        return None;
    }
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// A file removed when this is dropped, unless its path was taken back.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn wal_check_archive(files: &[PathBuf], dir: Option<&Path>, json: bool) -> Result<()> {
    let mut out = CheckArchiveJson {
        ok: true,
        archives: vec![],
        starts_at_genesis: None,
        joins_store: None,
        notes: vec![],
        problem: None,
    };
    let mut prev: Option<swoosh_storage::ArchiveSummary> = None;
    let mut oldest: Option<swoosh_storage::ArchiveSummary> = None;
    let mut prev_file: Option<PathBuf> = None;
    for f in files {
        let a = match swoosh_storage::read_archive(f) {
            Ok(a) => a,
            Err(e) => {
                out.problem = Some(e.to_string());
                break;
            }
        };
        if let Some((first, last)) = named_range(f).filter(|r| *r != (a.first, a.last)) {
            out.problem = Some(format!(
                "{} is named for records {first}..={last} but holds records {}..={}: it was cut short (a copy that stopped?) or renamed; check it against the node's original archive",
                f.display(),
                a.first,
                a.last
            ));
            break;
        }
        if let (Some(p), Some(pf)) = (prev, prev_file.as_ref()) {
            if let Err(problem) = joins(pf, &p, f, &a) {
                out.problem = Some(problem);
                break;
            }
            if a.first <= p.last {
                out.notes.push(format!(
                    "{} repeats records {}..={} of {} (a compaction run again after an interruption): they are the same records",
                    f.display(),
                    a.first,
                    p.last.min(a.last),
                    pf.display()
                ));
            }
        }
        out.archives.push(ArchiveJson {
            file: f.display().to_string(),
            first: a.first,
            last: a.last,
            records: a.records,
            bytes: a.bytes,
            prev_hash: a.prev_hash.to_string(),
            last_hash: a.last_hash.to_string(),
        });
        oldest.get_or_insert(a);
        // An archive wholly inside the one before adds nothing to join to.
        if prev.is_none_or(|p| a.last > p.last) {
            prev = Some(a);
            prev_file = Some(f.clone());
        }
    }
    if let (None, Some(dir), Some(last), Some(first)) = (&out.problem, dir, prev, oldest) {
        let node = open_node(dir, Access::Read)?;
        out.starts_at_genesis = Some(first.first == 1 && first.prev_hash == node.genesis_hash);
        if first.first > 1 {
            out.notes.push(format!(
                "the first archive starts at record {}: the archive(s) of records 1..={} were not given, so the chain is checked from there only",
                first.first,
                first.first - 1
            ));
        }
        if first.first == 1 && first.prev_hash != node.genesis_hash {
            out.problem = Some(format!(
                "{} starts at record 1 but links to {}, not to this cluster's genesis {}: it is another cluster's log",
                files[0].display(),
                first.prev_hash,
                node.genesis_hash
            ));
        } else {
            let base = swoosh_storage::wal_base(&node.store)?;
            let store_hash = match base {
                Some(b) if b.index == last.last => Some(b.hash),
                Some(b) if b.index > last.last => None,
                _ => read_record(&node.store, last.last).ok().map(|v| v.hash),
            };
            let joins = store_hash == Some(last.last_hash);
            out.joins_store = Some(joins);
            if !joins {
                out.problem = Some(match (base, store_hash) {
                    (Some(b), None) if b.index > last.last => format!(
                        "the archives end at record {} but the log in {} starts after record {}: an archive of records {}..={} is missing",
                        last.last,
                        dir.display(),
                        b.index,
                        last.last + 1,
                        b.index
                    ),
                    (_, None) => format!(
                        "the log in {} holds no record {} to join the archives to",
                        dir.display(),
                        last.last
                    ),
                    (_, Some(h)) => format!(
                        "the archives end at record {} hashing to {}, but record {} of the log in {} hashes to {h}: they are not this log's records",
                        last.last,
                        last.last_hash,
                        last.last,
                        dir.display()
                    ),
                });
            }
        }
    }
    out.ok = out.problem.is_none();
    if json {
        print_json(&out)?;
    } else {
        for a in &out.archives {
            say!(
                "{}: records {}..={} ({}, {} bytes), chain sound; starts after {}, ends at {}",
                a.file,
                a.first,
                a.last,
                a.records,
                a.bytes,
                a.prev_hash,
                a.last_hash
            );
        }
        if out.starts_at_genesis == Some(true) {
            say!("the first archive starts at genesis");
        }
        if out.joins_store == Some(true) {
            say!("the last archive joins the log in its node directory");
        }
        for n in &out.notes {
            say!("note: {n}");
        }
    }
    match out.problem {
        None => Ok(()),
        Some(p) => bail!("{p}"),
    }
}

fn print_json<T: Serialize>(v: &T) -> Result<()> {
    say!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
