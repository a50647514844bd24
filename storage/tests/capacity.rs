//! A store that reaches its capacity (the LMDB map) refuses further writes
//! with an error that says what to do, loses nothing it acknowledged, and
//! takes up again, whole, once it is opened with a larger map. Its usage is
//! what the metrics export to warn before that happens.

use swoosh_core::guards::Verify;
use swoosh_storage::testkit::Stream;
use swoosh_storage::{
    recover, AppendError, BatchLimits, Durability, Entry, LmdbOptions, LmdbStore, LogStore,
    StoreError, WalWriter,
};

const SMALL_MAP: usize = 1 << 20;
const LARGE_MAP: usize = 64 << 20;

fn opts(durability: Durability, map_bytes: usize) -> LmdbOptions {
    LmdbOptions {
        durability,
        map_bytes,
    }
}

/// The next `n` records of `stream`, as WAL entries.
fn take(stream: &mut Stream, n: usize) -> Vec<Entry> {
    stream
        .take(n)
        .into_iter()
        .map(Entry::from_accepted)
        .collect()
}

fn says_what_to_do(e: &dyn std::fmt::Display) {
    let text = e.to_string();
    assert!(text.contains("is full"), "{text}");
    assert!(text.contains("--lmdb-map-gib"), "{text}");
}

/// Append batches of `n` records until the store refuses one; return the
/// last acknowledged index and the refusal.
fn fill(w: &mut WalWriter<LmdbStore>, stream: &mut Stream, n: usize) -> (u64, AppendError) {
    for _ in 0..10_000 {
        let entries = take(stream, n);
        if let Err(e) = w.append_batch(&entries) {
            return (w.last_index(), e);
        }
    }
    panic!("a {SMALL_MAP}-byte map never filled");
}

fn full(e: &AppendError) -> bool {
    matches!(e, AppendError::Store(StoreError::MapFull { .. }))
}

#[test]
fn usage_reports_the_map_and_grows_with_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = LmdbStore::open(dir.path(), &opts(Durability::NoSync, LARGE_MAP)).unwrap();
    let before = store.usage().expect("an LMDB store has a capacity");
    assert_eq!(before.capacity_bytes, LARGE_MAP as u64);
    let mut stream = Stream::new("capacity-usage", 2, Verify::Trusted);
    let mut w = WalWriter::open(
        store.clone(),
        stream.node().genesis_hash,
        BatchLimits::default(),
    )
    .unwrap();
    let entries = take(&mut stream, 50);
    w.append_batch(&entries).unwrap();
    let after = store.usage().unwrap();
    assert!(
        after.used_bytes >= before.used_bytes + 50 * 1_000,
        "{before:?} → {after:?}"
    );
}

/// Direct commits (no journal): the commit that does not fit is refused
/// whole, naming the flag; a larger map takes the log up where it stopped.
#[test]
fn a_full_store_refuses_the_commit_and_continues_with_a_larger_map() {
    let dir = tempfile::tempdir().unwrap();
    let mut stream = Stream::new("capacity-direct", 2, Verify::Trusted);
    let gh = stream.node().genesis_hash;
    let store = LmdbStore::open(dir.path(), &opts(Durability::NoSync, SMALL_MAP)).unwrap();
    let mut w = WalWriter::open(store, gh, BatchLimits::default()).unwrap();
    let (acked, e) = fill(&mut w, &mut stream, 8);
    assert!(full(&e), "{e:?}");
    says_what_to_do(&e);
    assert!(acked > 0);
    drop(w);

    let store = LmdbStore::open(dir.path(), &opts(Durability::NoSync, LARGE_MAP)).unwrap();
    let rec = recover(&store, stream.genesis()).unwrap();
    assert_eq!(rec.node.index, acked, "exactly what was acknowledged");
    let mut w = WalWriter::open(store, gh, BatchLimits::default()).unwrap();
    assert_eq!(w.last_index(), acked);
    // The refused batch was never acknowledged: the same deterministic
    // stream, from the acknowledged tail, writes it again and goes on.
    let mut again = Stream::new("capacity-direct", 2, Verify::Trusted);
    again.advance_to(acked);
    let entries = take(&mut again, 20);
    w.append_batch(&entries).unwrap();
    assert_eq!(w.last_index(), acked + 20);
}

/// Journaled commits (Sync): commits are acknowledged from the journal and
/// folded into LMDB behind; the fold that does not fit fails, later commits
/// are refused with the same error, and an open with the same map refuses
/// to start, saying why. With a larger map the open folds what the journal
/// held: every acknowledged record is there.
#[test]
fn a_full_store_behind_the_journal_keeps_every_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut stream = Stream::new("capacity-journal", 2, Verify::Trusted);
    let gh = stream.node().genesis_hash;
    let store = LmdbStore::open(dir.path(), &opts(Durability::Sync, SMALL_MAP)).unwrap();
    assert!(store.journaled());
    let mut w = WalWriter::open(store, gh, BatchLimits::default()).unwrap();
    let (acked, e) = fill(&mut w, &mut stream, 8);
    assert!(full(&e), "{e:?}");
    says_what_to_do(&e);
    drop(w);

    match LmdbStore::open(dir.path(), &opts(Durability::Sync, SMALL_MAP)) {
        Err(e) => says_what_to_do(&e),
        Ok(s) => {
            // The fold at open may fit what the crash-free close left;
            // then the store must still hold every acknowledged record.
            let rec = recover(&s, stream.genesis()).unwrap();
            assert_eq!(rec.node.index, acked);
        }
    }

    let store = LmdbStore::open(dir.path(), &opts(Durability::Sync, LARGE_MAP)).unwrap();
    let rec = recover(&store, stream.genesis()).unwrap();
    assert_eq!(rec.node.index, acked, "every acknowledged record survived");
}

/// A store that already holds more than the map asked for opens at exactly
/// its own size (LMDB's rule) and says so, so the caller can warn that it
/// has no room to grow; its usage reports the map in effect.
#[test]
fn a_store_larger_than_the_map_asked_for_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut stream = Stream::new("capacity-below", 2, Verify::Trusted);
    let store = LmdbStore::open(dir.path(), &opts(Durability::NoSync, LARGE_MAP)).unwrap();
    assert_eq!(store.map_below_data(), None);
    let mut w = WalWriter::open(
        store.clone(),
        stream.node().genesis_hash,
        BatchLimits::default(),
    )
    .unwrap();
    while store.usage().unwrap().used_bytes < 2 * SMALL_MAP as u64 {
        let entries = take(&mut stream, 50);
        w.append_batch(&entries).unwrap();
    }
    drop((w, store));
    let store = LmdbStore::open(dir.path(), &opts(Durability::NoSync, SMALL_MAP)).unwrap();
    let (asked, held) = store.map_below_data().expect("below the data");
    assert_eq!(asked, SMALL_MAP);
    assert!(held >= 2 * SMALL_MAP, "{held}");
    assert_eq!(store.usage().unwrap().capacity_bytes, held as u64);
    let rec = recover(&store, stream.genesis()).unwrap();
    assert_eq!(rec.node.index, stream.node().index, "it still reads");
}
