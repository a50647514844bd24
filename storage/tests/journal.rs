//! The LMDB backend's commit journal seen from outside: what is journaled
//! and not yet folded into LMDB reads exactly like what is folded (records,
//! ranges across the fold boundary, counts, decision and idempotency
//! lookups); a commit that must go to LMDB directly waits for the fold; a
//! clean close leaves nothing to replay. Crashes with an unfolded journal are
//! in `crash.rs` (`commits_held_only_by_the_journal_survive_kill_9`).

use std::time::Duration;
use swoosh_core::guards::Verify;
use swoosh_storage::testkit::{stream_genesis, Stream};
use swoosh_storage::{
    get_decision, recover, verify, BatchLimits, Durability, Entry, LmdbOptions, LmdbStore,
    LogStore, Space, VerifyOptions, WalWriter,
};

const LABEL: &str = "journal";

fn batch(stream: &mut Stream, n: usize) -> Vec<Entry> {
    batch_with_decisions(stream, n).0
}

fn batch_with_decisions(stream: &mut Stream, n: usize) -> (Vec<Entry>, Vec<swoosh_core::Hash>) {
    let acc = stream.take(n);
    let hashes = acc.iter().map(|a| a.decision_hash).collect();
    (acc.into_iter().map(Entry::from_accepted).collect(), hashes)
}

/// A journaled store in `dir` (default options), a handle on it to read
/// through, and a writer continuing `stream`'s log.
fn open_journaled(dir: &std::path::Path, stream: &Stream) -> (LmdbStore, WalWriter<LmdbStore>) {
    let store = LmdbStore::open(dir, &LmdbOptions::default()).unwrap();
    assert!(store.journaled());
    let w = WalWriter::open(
        store.clone(),
        stream.node().genesis_hash,
        BatchLimits::default(),
    )
    .unwrap();
    (store, w)
}

/// How long the fold may take to catch up. The fold thread wakes within
/// milliseconds; the bound only turns a fold that never comes into a failure
/// instead of a hang, so it allows for a heavily loaded CI machine.
const FOLD_PATIENCE: Duration = Duration::from_secs(60);

fn wait_folded(store: &LmdbStore) {
    let t0 = std::time::Instant::now();
    while store.journal_unfolded() != 0 {
        assert!(
            t0.elapsed() < FOLD_PATIENCE,
            "the journal did not fold within {FOLD_PATIENCE:?} ({} commits unfolded)",
            store.journal_unfolded()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn unfolded_commits_read_like_folded_ones() {
    let dir = tempfile::tempdir().unwrap();
    let genesis = stream_genesis(LABEL);
    let mut stream = Stream::new(LABEL, 2, Verify::Trusted);
    let (reader, mut w) = open_journaled(dir.path(), &stream);

    // 30 records folded into LMDB, then 25 held in the journal only.
    for _ in 0..3 {
        w.append_batch(&batch(&mut stream, 10)).unwrap();
    }
    wait_folded(&reader);
    reader.pause_journal_fold(true);
    let mut held_decisions = vec![];
    for n in [1, 4, 20] {
        let (b, hashes) = batch_with_decisions(&mut stream, n);
        held_decisions.extend(hashes);
        let r = w.append_batch(&b).unwrap();
        assert!(r.synced);
    }
    assert_eq!(reader.journal_unfolded(), 3);
    assert_eq!(reader.last_index().unwrap(), 55);
    assert_eq!(reader.count(Space::Wal).unwrap(), 55);
    let all = reader.read_range(1, 100, 1000).unwrap();
    assert_eq!(
        all.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (1..=55).collect::<Vec<_>>()
    );
    // A range that starts and ends on either side of the fold boundary,
    // and a limit that stops inside the overlay.
    let mid = reader.read_range(28, 40, 5).unwrap();
    assert_eq!(
        mid.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![28, 29, 30, 31, 32]
    );
    for h in &held_decisions {
        assert!(
            get_decision(&reader, h).unwrap().is_some(),
            "decision {h} is readable before its fold"
        );
    }
    // Recovery and a full verification read through the overlay as well.
    let rec = recover(&reader, &genesis).unwrap();
    assert_eq!(rec.node.root_hash(), stream.node().root_hash());
    let rep = verify(&reader, &genesis, &VerifyOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(rep.records, 55);
    assert_eq!(rep.index_problems_total, 0, "{:?}", rep.index_problems);

    // A commit LMDB must take directly (metadata) waits for the fold.
    let unpause = {
        let r = reader.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            r.pause_journal_fold(false);
        })
    };
    let mut direct = reader.clone();
    direct.put_meta("note", b"after the fold").unwrap();
    assert_eq!(direct.journal_unfolded(), 0);
    unpause.join().unwrap();

    // Close cleanly: everything is folded, nothing is left to replay.
    drop((w, reader, direct));
    let store = LmdbStore::open(dir.path(), &LmdbOptions::default()).unwrap();
    assert_eq!(store.journal_replayed(), 0);
    assert_eq!(store.last_index().unwrap(), 55);
    assert_eq!(
        store.get_meta("note").unwrap().as_deref(),
        Some(&b"after the fold"[..])
    );
    let rec = recover(&store, &genesis).unwrap();
    assert_eq!(rec.node.root_hash(), stream.node().root_hash());
}

#[test]
fn the_fold_catches_up_however_commits_fall_around_it() {
    // A commit wakes the fold only when it finds nothing pending (the fold
    // then sleeps without a deadline); otherwise the fold wakes by itself at
    // its delay. Commits that land before, during and after folds, with
    // pauses shorter and longer than the delay, must all end up in LMDB
    // with no further commit to nudge the fold.
    let dir = tempfile::tempdir().unwrap();
    let mut stream = Stream::new(LABEL, 2, Verify::Trusted);
    let (reader, mut w) = open_journaled(dir.path(), &stream);
    let pauses_ms = [0u64, 1, 0, 0, 25, 3, 0, 19, 21, 0, 0, 40, 2];
    let mut appended = 0u64;
    for round in 0..4 {
        for (i, ms) in pauses_ms.iter().enumerate() {
            w.append_batch(&batch(&mut stream, 1 + (i + round) % 3))
                .unwrap();
            appended += 1 + ((i + round) % 3) as u64;
            std::thread::sleep(Duration::from_millis(*ms));
        }
        wait_folded(&reader);
        assert_eq!(reader.last_index().unwrap(), appended);
    }
}

#[test]
fn a_second_handle_from_another_process_reads_lmdb_without_the_journal() {
    // In one process heed refuses a second environment; the journal's lock
    // is what keeps a second process (a CLI on a live node's directory) from
    // folding the journal under the node. Emulate that process's view: a
    // lock held on the journal file leaves the opener without a journal.
    let dir = tempfile::tempdir().unwrap();
    {
        let s = LmdbStore::open(dir.path(), &LmdbOptions::default()).unwrap();
        assert!(s.journaled());
    }
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.path().join("journal"))
        .unwrap();
    // SAFETY: flock on a descriptor `held` keeps open.
    let r = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&held),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(r, 0, "lock the journal");
    let s = LmdbStore::open(dir.path(), &LmdbOptions::default()).unwrap();
    assert!(!s.journaled());
    drop(s);
    drop(held);
    let s = LmdbStore::open(dir.path(), &LmdbOptions::default()).unwrap();
    assert!(s.journaled());
}

/// Whether another descriptor holds the journal's lock (what a node
/// starting beside this handle would find).
fn journal_locked(dir: &std::path::Path) -> bool {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("journal"))
        .unwrap();
    // SAFETY: flock on a descriptor `f` keeps open; released when it closes.
    let r = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    r != 0
}

/// A reader (`wal verify`, `replay`) folds what a crash left, then lets the
/// journal go, so a node can start beside it; on a clean store it never
/// takes the lock; a writer's handle keeps it.
#[test]
fn a_reader_folds_a_crashs_entries_and_leaves_the_journal_to_a_node() {
    let genesis = stream_genesis(LABEL);
    let (dir, stream) = crashed_with_unfolded_entries();
    let r = LmdbStore::open_reader(dir.path(), &LmdbOptions::default()).unwrap();
    assert!(!r.journaled() && !r.journal_busy());
    assert_eq!(r.journal_replayed(), 3);
    assert_eq!(
        r.last_index().unwrap(),
        25,
        "the journal's records are read"
    );
    assert!(
        !journal_locked(dir.path()),
        "the lock was let go after the fold"
    );
    let rec = recover(&r, &genesis).unwrap();
    assert_eq!(rec.node.root_hash(), stream.node().root_hash());
    drop(r);
    let r = LmdbStore::open_reader(dir.path(), &LmdbOptions::default()).unwrap();
    assert_eq!(r.journal_replayed(), 0, "left clean");
    assert!(!journal_locked(dir.path()));
    drop(r);
    let w = LmdbStore::open(dir.path(), &LmdbOptions::default()).unwrap();
    assert!(w.journaled());
    assert!(journal_locked(dir.path()), "a writer keeps the lock");
}

#[test]
fn a_journal_lost_after_a_clean_close_is_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let genesis = stream_genesis(LABEL);
    let mut stream = Stream::new(LABEL, 1, Verify::Trusted);
    {
        let (_, mut w) = open_journaled(dir.path(), &stream);
        w.append_batch(&batch(&mut stream, 5)).unwrap();
    }
    std::fs::remove_file(dir.path().join("journal")).unwrap();
    let s = LmdbStore::open(dir.path(), &LmdbOptions::default()).unwrap();
    assert_eq!(s.last_index().unwrap(), 5);
    let mut w = WalWriter::open(s, stream.node().genesis_hash, BatchLimits::default()).unwrap();
    w.append_batch(&batch(&mut stream, 5)).unwrap();
    drop(w);
    let s = LmdbStore::open(dir.path(), &LmdbOptions::default()).unwrap();
    let rec = recover(&s, &genesis).unwrap();
    assert_eq!(rec.node.index, 10);
    assert_eq!(rec.node.root_hash(), stream.node().root_hash());
}

#[test]
fn a_full_map_stops_new_commits_but_loses_none_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let genesis = stream_genesis(LABEL);
    let mut stream = Stream::new(LABEL, 2, Verify::Trusted);
    let small = LmdbOptions {
        map_bytes: 1 << 20,
        ..LmdbOptions::default()
    };
    let store = LmdbStore::open(dir.path(), &small).unwrap();
    let mut w = WalWriter::open(store, stream.node().genesis_hash, BatchLimits::default()).unwrap();
    // Commits return once journaled; the fold into the 1 MiB map fails
    // behind them, and from then on commits are refused with the reason.
    let mut acked = 0;
    let err = loop {
        match w.append_batch(&batch(&mut stream, 10)) {
            Ok(r) => acked = r.last_index,
            Err(e) => break e.to_string(),
        }
        assert!(acked < 10_000, "a 1 MiB map never filled");
    };
    assert!(err.contains("--lmdb-map-gib"), "{err}");
    assert!(acked > 0);
    // Everything acknowledged still reads (from the journal's overlay).
    assert_eq!(w.store().last_index().unwrap(), acked);
    drop(w);
    // The same map cannot take the journal: the open says what to do.
    let again = LmdbStore::open(dir.path(), &small).unwrap_err().to_string();
    assert!(again.contains("--lmdb-map-gib"), "{again}");
    // A larger map folds every acknowledged record, in order.
    let s = LmdbStore::open(dir.path(), &LmdbOptions::default()).unwrap();
    assert!(s.journal_replayed() > 0);
    let rec = recover(&s, &genesis).unwrap();
    assert_eq!(rec.node.index, acked);
    let mut pure = Stream::new(LABEL, 2, Verify::Trusted);
    pure.advance_to(acked);
    assert_eq!(rec.node.root_hash(), pure.node().root_hash());
}

/// What a crash of the process holding `src` would leave on disk: LMDB's
/// data file and the journal as they are now. The caller keeps the fold
/// paused and no commit in flight, so both are at rest.
fn crash_copy(src: &std::path::Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().unwrap();
    for f in ["data.mdb", "journal"] {
        std::fs::copy(src.join(f), dst.path().join(f)).unwrap();
    }
    dst
}

/// A store whose LMDB holds records 1..=10 and whose journal alone holds
/// 11..=25 (three entries, the first at offset 0), as a Sync node killed
/// with its fold behind leaves it; and the stream at record 25.
fn crashed_with_unfolded_entries() -> (tempfile::TempDir, Stream) {
    let dir = tempfile::tempdir().unwrap();
    let mut stream = Stream::new(LABEL, 2, Verify::Trusted);
    {
        let (_, mut w) = open_journaled(dir.path(), &stream);
        w.append_batch(&batch(&mut stream, 10)).unwrap();
    }
    // Reopened, the journal starts again at offset 0.
    let (reader, mut w) = open_journaled(dir.path(), &stream);
    reader.pause_journal_fold(true);
    for n in [5, 5, 5] {
        w.append_batch(&batch(&mut stream, n)).unwrap();
    }
    assert_eq!(reader.journal_unfolded(), 3);
    let crashed = crash_copy(dir.path());
    (crashed, stream)
}

#[test]
fn a_nosync_open_folds_what_a_crashed_sync_node_left_in_the_journal() {
    let genesis = stream_genesis(LABEL);
    let (dir, mut stream) = crashed_with_unfolded_entries();
    let nosync = LmdbOptions {
        durability: Durability::NoSync,
        ..LmdbOptions::default()
    };
    let s = LmdbStore::open(dir.path(), &nosync).unwrap();
    assert!(!s.journaled());
    assert_eq!(s.journal_replayed(), 3);
    assert_eq!(
        s.last_index().unwrap(),
        25,
        "the journal's records are read"
    );
    let rec = recover(&s, &genesis).unwrap();
    assert_eq!(rec.node.root_hash(), stream.node().root_hash());
    // The NoSync run continues the log after them, not over them.
    let mut w = WalWriter::open(s, stream.node().genesis_hash, BatchLimits::default()).unwrap();
    w.append_batch(&batch(&mut stream, 5)).unwrap();
    drop(w);
    // A Sync open after it has nothing left to replay.
    let s = LmdbStore::open(dir.path(), &LmdbOptions::default()).unwrap();
    assert_eq!(s.journal_replayed(), 0);
    let rec = recover(&s, &genesis).unwrap();
    assert_eq!(rec.node.index, 30);
    assert_eq!(rec.node.root_hash(), stream.node().root_hash());
}

#[test]
fn a_store_whose_first_unfolded_entry_header_is_damaged_refuses_to_open() {
    let (dir, _) = crashed_with_unfolded_entries();
    let path = dir.path().join("journal");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0x01; // the magic of the entry at offset 0
    std::fs::write(&path, &bytes).unwrap();
    for durability in [Durability::Sync, Durability::NoSync] {
        let opts = LmdbOptions {
            durability,
            ..LmdbOptions::default()
        };
        let err = LmdbStore::open(dir.path(), &opts).unwrap_err();
        // A refusal with its own remedy, not an I/O failure to open.
        assert!(
            matches!(err, swoosh_storage::StoreError::Damaged { .. }),
            "{err}"
        );
        let err = err.to_string();
        assert!(err.contains("is not at offset 0 where it belongs"), "{err}");
        assert!(err.contains("written after it"), "{err}");
        assert!(!err.contains("check that the directory exists"), "{err}");
    }
}

/// The journal holds recent records in plain text, as `data.mdb` does: it
/// is created readable by its owner only, and one an earlier build left
/// with the umask's mode is narrowed when the store opens.
#[test]
fn the_journal_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let journal = t.path().join(swoosh_storage::journal::JOURNAL_FILE);
    let store = LmdbStore::open(t.path(), &LmdbOptions::default()).unwrap();
    assert!(store.journaled());
    assert_eq!(mode(&journal), 0o600);
    drop(store);
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = LmdbStore::open(t.path(), &LmdbOptions::default()).unwrap();
    assert!(store.journaled());
    assert_eq!(mode(&journal), 0o600);
}
