//! Test helper for the SIGKILL crash test (`tests/crash.rs`): recovers the
//! store in DIR, then appends group commits of the deterministic test stream
//! forever, printing `ack <last index>` to stdout after each commit returns
//! (so every printed index is durable), and snapshots every
//! `--snapshot-every` records. With `--hold-fold` the store's journal is
//! never folded into LMDB while it runs, so every commit is held by the
//! journal alone when the kill lands. It is killed from outside; it never
//! exits on its own unless an error occurs (exit 2, message on stderr).

use std::io::Write;
use std::path::PathBuf;
use swoosh_core::guards::Verify;
use swoosh_storage::testkit::{stream_genesis, Stream};
use swoosh_storage::{
    recover, write_snapshot, BatchLimits, Entry, LmdbOptions, LmdbStore, SnapshotPolicy, WalWriter,
};

/// The crash test's stream label and project count (the test uses the same).
const LABEL: &str = "crash";
const PROJECTS: usize = 3;
/// Group commits hold 1..=BATCH_RECORDS_MAX records (varied deterministically).
const BATCH_RECORDS_MAX: u64 = 9;

fn main() {
    if let Err(e) = run() {
        eprintln!("wal-crash-writer: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: wal-crash-writer DIR [--snapshot-every N]")?,
    );
    let mut every = 200u64;
    let mut hold_fold = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--snapshot-every" => {
                every = args
                    .next()
                    .ok_or("--snapshot-every needs a number")?
                    .parse()?
            }
            "--hold-fold" => hold_fold = true,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let genesis = stream_genesis(LABEL);
    let mut store = LmdbStore::open(&dir, &LmdbOptions::default())?;
    // A sibling test's child, spawned while the parent had this store open,
    // holds an inherited copy of the journal's descriptor (and so its lock)
    // until it execs: the store then opens without its journal. With
    // --hold-fold the test counts on the journal; wait for the lock.
    let mut tries = 0;
    while hold_fold && !store.journaled() {
        tries += 1;
        if tries > 200 {
            return Err("the store's journal lock stays held by another process".into());
        }
        drop(store);
        std::thread::sleep(std::time::Duration::from_millis(10));
        store = LmdbStore::open(&dir, &LmdbOptions::default())?;
    }
    let rec = recover(&store, &genesis)?;
    if hold_fold {
        // Snapshots commit to LMDB directly, which waits for the fold.
        every = u64::MAX;
        store.pause_journal_fold(true);
    }
    let mut last_snapshot = rec.snapshot.unwrap_or(0);
    let mut stream = Stream::resume(LABEL, PROJECTS, rec.node, Verify::Trusted);
    let mut snap_store = store.clone();
    let mut w = WalWriter::open(store, stream.node().genesis_hash, BatchLimits::default())?;
    let policy = SnapshotPolicy {
        every_records: every,
        keep: 3,
    };
    let stdout = std::io::stdout();
    loop {
        let n = 1 + (w.last_index() % BATCH_RECORDS_MAX);
        let entries: Vec<Entry> = (0..n)
            .map(|_| Entry::from_accepted(stream.next_accepted()))
            .collect();
        let r = w.append_batch(&entries)?;
        {
            let mut out = stdout.lock();
            writeln!(out, "ack {}", r.last_index)?;
            out.flush()?;
        }
        if policy.due(last_snapshot, r.last_index) {
            write_snapshot(&mut snap_store, stream.node(), policy.keep)?;
            last_snapshot = r.last_index;
        }
    }
}
