//! Compaction, on both backends: the start of the log is archived to a file
//! and cut from the store in steps, each one atomic commit that moves the
//! WAL base forward; the store then recovers, appends, verifies and serves
//! idempotency lookups exactly as before, and nothing is cut unless the whole
//! archive is durable and checked.

#[macro_use]
mod common;

use common::Harness;
use std::path::PathBuf;
use swoosh_core::guards::Verify;
use swoosh_core::reducer::Accepted;
use swoosh_core::NodeState;
use swoosh_storage::store::index_key;
use swoosh_storage::testkit::Stream;
use swoosh_storage::*;

const LABEL: &str = "compact-suite";

fn stream() -> Stream {
    Stream::new(LABEL, 2, Verify::Trusted)
}

fn writer<S: LogStore>(s: S, st: &Stream) -> WalWriter<S> {
    WalWriter::open(s, st.node().genesis_hash, BatchLimits::default()).expect("open writer")
}

fn entries(accs: Vec<Accepted>) -> Vec<Entry> {
    accs.into_iter().map(Entry::from_accepted).collect()
}

fn fill<S: LogStore>(w: &mut WalWriter<S>, st: &mut Stream, n: usize) -> Vec<Accepted> {
    let accs = st.take(n);
    for chunk in accs.chunks(4) {
        w.append_batch(&entries(chunk.to_vec())).expect("append");
    }
    accs
}

fn assert_same_node(a: &NodeState, b: &NodeState, ctx: &str) {
    assert_eq!(a.index, b.index, "{ctx}: index");
    assert_eq!(a.head_record, b.head_record, "{ctx}: head record");
    assert_eq!(a.root_hash(), b.root_hash(), "{ctx}: root hash");
    assert!(a == b, "{ctx}: node states differ beyond the hashes");
}

fn steps(n: u64) -> CompactOptions {
    CompactOptions {
        step_records: n,
        ..CompactOptions::default()
    }
}

/// A store with records 1..=50 and snapshots at 10 and 30.
fn fifty<H: Harness>(h: &mut H) -> (Stream, H::S, Vec<Accepted>) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    let mut accs = fill(&mut w, &mut st, 10);
    write_snapshot(w.store_mut(), st.node(), SNAPSHOTS_KEEP_DEFAULT).unwrap();
    accs.extend(fill(&mut w, &mut st, 20));
    write_snapshot(w.store_mut(), st.node(), SNAPSHOTS_KEEP_DEFAULT).unwrap();
    accs.extend(fill(&mut w, &mut st, 20));
    (st, w.into_store(), accs)
}

fn archive_path(h: &impl Harness, name: &str) -> PathBuf {
    h.scratch().join(name)
}

/// Compact through 35 in steps of 10, then append, crash, recover, verify,
/// and compact again through 45: the second archive joins the first.
fn compact_then_append_recover_and_compact_again(h: &mut impl Harness) {
    let (mut st, mut s, accs) = fifty(h);
    let genesis = st.genesis().clone();
    let gh = st.node().genesis_hash;
    let h35 = read_record(&s, 35).unwrap().hash;
    let a1 = archive_path(h, "a1.cbor");
    let mut phases = vec![];
    let r = compact(&mut s, &genesis, 35, &a1, &steps(10), &mut |p| {
        phases.push(*p)
    })
    .unwrap();
    assert_eq!(r.old_base, None);
    assert_eq!(
        r.base,
        WalBase {
            index: 35,
            hash: h35
        }
    );
    assert_eq!(r.steps, 4, "1..=10, 11..=20, 21..=30, 31..=35");
    assert!(r.removed_snapshots.contains(&10) && r.removed_snapshots.contains(&30));
    assert_eq!(r.removed_decisions, 0);
    assert_eq!(
        (r.archive.first, r.archive.last, r.archive.records),
        (1, 35, 35)
    );
    assert_eq!((r.archive.prev_hash, r.archive.last_hash), (gh, h35));
    assert_eq!(read_archive(&a1).unwrap(), r.archive);
    {
        // Plain records, readable by the owner only (like `data.mdb`).
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&a1).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "archive mode {mode:o}");
    }
    let last_replay = phases
        .iter()
        .rfind(|p| p.phase == Phase::Replay)
        .expect("replay progress");
    assert_eq!((last_replay.done, last_replay.total), (35, 35));
    assert!(phases.iter().any(|p| p.phase == Phase::Scan));

    assert_eq!(wal_base(&s).unwrap(), Some(r.base));
    assert_eq!(s.list_snapshots().unwrap(), vec![35]);
    assert_eq!(s.count(Space::Wal).unwrap(), 15);
    assert_eq!((first_index(&s).unwrap(), log_end(&s).unwrap()), (36, 50));
    assert!(matches!(
        read_record(&s, 20),
        Err(ReadError::BelowBase {
            index: 20,
            base: 35,
            ..
        })
    ));
    // Idempotency entries and decisions of the cut records are kept.
    let old = &accs[2].record;
    let e = lookup_idem(&s, &old.project, &old.idem_key)
        .unwrap()
        .expect("a cut record's idempotency entry survives");
    assert_eq!(e.index, 3);
    assert!(get_decision(&s, &old.decision).unwrap().is_some());
    // The leader's start-up audit expects exactly what is kept, and a
    // rebuild of the indexes keeps it (its records are gone from the store).
    let a = audit_indexes(&s, 50).unwrap();
    assert!(a.is_sound(), "{:?}", a.findings);
    let mut s = s;
    rebuild_indexes(&mut s, &genesis, None, &mut |_| {}).unwrap();
    assert!(get_decision(&s, &old.decision).unwrap().is_some());
    assert_eq!(
        lookup_idem(&s, &old.project, &old.idem_key)
            .unwrap()
            .map(|e| e.index),
        Some(3)
    );
    let a = audit_indexes(&s, 50).unwrap();
    assert!(a.is_sound(), "after a rebuild: {:?}", a.findings);

    let rec = recover(&s, &genesis).unwrap();
    assert_same_node(&rec.node, st.node(), "recovered after compaction");
    let mut w = writer(h.crash_and_reopen(s), &st);
    assert_eq!((w.last_index(), w.head_hash()), (50, st.node().head_record));
    fill(&mut w, &mut st, 5);
    let s = h.crash_and_reopen(w.into_store());
    let rec = recover(&s, &genesis).unwrap();
    assert_same_node(&rec.node, st.node(), "appended after compaction");
    let v = verify(&s, &genesis, &VerifyOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(v.records, 20);
    assert!(v.snapshot_problems.is_empty(), "{:?}", v.snapshot_problems);
    assert!(v.index_problems.is_empty(), "{:?}", v.index_problems);

    let mut s = s;
    let a2 = archive_path(h, "a2.cbor");
    let r2 = compact(&mut s, &genesis, 45, &a2, &steps(0), &mut |_| {}).unwrap();
    assert_eq!(r2.old_base, Some(r.base));
    assert_eq!(r2.steps, 1);
    assert_eq!(r2.removed_snapshots, vec![35]);
    assert_eq!((r2.archive.first, r2.archive.last), (36, 45));
    assert_eq!(r2.archive.prev_hash, r.archive.last_hash, "archives chain");
    assert_eq!(s.list_snapshots().unwrap(), vec![45]);
    let rec = recover(&s, &genesis).unwrap();
    assert_same_node(&rec.node, st.node(), "after a second compaction");
    let a = audit_indexes(&s, 55).unwrap();
    assert!(a.is_sound(), "after a second compaction: {:?}", a.findings);
    // Compacting through the very last record leaves an empty WAL on a base.
    let a3 = archive_path(h, "a3.cbor");
    let r3 = compact(&mut s, &genesis, 55, &a3, &steps(0), &mut |_| {}).unwrap();
    assert_eq!(r3.base.index, 55);
    assert_eq!(s.count(Space::Wal).unwrap(), 0);
    let mut w = writer(s, &st);
    assert_eq!(w.last_index(), 55);
    fill(&mut w, &mut st, 2);
    let rec = recover(w.store(), &genesis).unwrap();
    assert_same_node(&rec.node, st.node(), "appended onto an empty based WAL");
}

/// `drop_decisions` removes the cut records' decisions only.
fn drop_decisions_removes_only_the_cut_ones(h: &mut impl Harness) {
    let (st, mut s, accs) = fifty(h);
    let genesis = st.genesis().clone();
    let opts = CompactOptions {
        drop_decisions: true,
        step_records: 7,
    };
    let r = compact(
        &mut s,
        &genesis,
        20,
        &archive_path(h, "d.cbor"),
        &opts,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(r.removed_decisions, 20);
    assert_eq!(r.steps, 3);
    assert!(get_decision(&s, &accs[19].record.decision)
        .unwrap()
        .is_none());
    assert!(get_decision(&s, &accs[20].record.decision)
        .unwrap()
        .is_some());
    let v = verify(&s, &genesis, &VerifyOptions::default(), &mut |_| {}).unwrap();
    assert!(v.index_problems.is_empty(), "{:?}", v.index_problems);
    assert_same_node(&recover(&s, &genesis).unwrap().node, st.node(), "recovered");
    let a = audit_indexes(&s, 50).unwrap();
    assert!(a.is_sound(), "{:?}", a.findings);
    // A decision missing beyond what was dropped is still noticed.
    let mut b = Batch::new();
    b.delete(Space::Decisions, accs[30].record.decision.0.to_vec());
    s.commit(b).unwrap();
    assert!(!audit_indexes(&s, 50).unwrap().is_sound());
}

/// A cut record whose idempotency entry is missing gets it back before the
/// cut: after it, no reindex could derive it, and a late repeat of the
/// proposal would run twice.
fn a_missing_idempotency_entry_is_written_again(h: &mut impl Harness) {
    let (st, mut s, accs) = fifty(h);
    let genesis = st.genesis().clone();
    let r = &accs[6].record;
    let key = swoosh_storage::wal::idem_key(&r.project, &r.idem_key).unwrap();
    let mut b = Batch::new();
    b.delete(Space::Idem, key);
    s.commit(b).unwrap();
    assert!(lookup_idem(&s, &r.project, &r.idem_key).unwrap().is_none());
    compact(
        &mut s,
        &genesis,
        20,
        &archive_path(h, "m.cbor"),
        &steps(0),
        &mut |_| {},
    )
    .unwrap();
    let e = lookup_idem(&s, &r.project, &r.idem_key)
        .unwrap()
        .expect("written again from the record");
    assert_eq!((e.index, e.decision), (7, r.decision));
    let a = audit_indexes(&s, 50).unwrap();
    assert!(a.is_sound(), "{:?}", a.findings);
}

/// A damaged snapshot at the base leaves the compacted store unprovable;
/// its archives rebuild it.
fn a_damaged_base_snapshot_is_rebuilt_from_the_archives(h: &mut impl Harness) {
    let (st, mut s, _) = fifty(h);
    let genesis = st.genesis().clone();
    let (a0, a1, a2) = (
        archive_path(h, "b0.cbor"),
        archive_path(h, "b1.cbor"),
        archive_path(h, "b2.cbor"),
    );
    compact(&mut s, &genesis, 20, &a0, &steps(10), &mut |_| {}).unwrap();
    compact(&mut s, &genesis, 35, &a1, &steps(10), &mut |_| {}).unwrap();
    compact(&mut s, &genesis, 45, &a2, &steps(0), &mut |_| {}).unwrap();
    assert_eq!(base_snapshot_fault(&s).unwrap(), None);
    let key = index_key(45);
    let mut v = s.get(Space::Snapshots, &key).unwrap().unwrap();
    let at = v.len() / 2;
    v[at] ^= 0x20;
    s.overwrite_raw(Space::Snapshots, &key, &v).unwrap();
    // Found by the cheap check a node runs after each snapshot.
    let fault = base_snapshot_fault(&s)
        .unwrap()
        .expect("a damaged base snapshot");
    assert!(fault.contains("WAL base 45 is damaged"), "{fault}");
    let e = recover(&s, &genesis).unwrap_err();
    assert!(matches!(e, RecoveryError::Unproven { base: 45, .. }), "{e}");
    assert!(e.to_string().contains("snapshot rebuild-base"), "{e}");
    // An index rebuild is refused for the same reason and changes nothing:
    // it emptied the indexes first, so the start-up audit then failed on
    // every record after the base and the node could not start again.
    let idem_before = s.count(Space::Idem).unwrap();
    let decisions_before = s.count(Space::Decisions).unwrap();
    assert!(idem_before > 0 && decisions_before > 0);
    let e = rebuild_indexes(&mut s, &genesis, None, &mut |_| {}).unwrap_err();
    // It looked at the base snapshot only, and says so (it said "none is
    // usable", wrong when a newer one is).
    assert!(
        e.to_string().contains("the snapshot at 45 is unusable")
            && e.to_string().contains("this check starts from it"),
        "{e}"
    );
    assert!(
        recover(&s, &genesis)
            .unwrap_err()
            .to_string()
            .contains("none is usable"),
        "recovery looked at every snapshot"
    );
    assert_eq!(
        (
            s.count(Space::Idem).unwrap(),
            s.count(Space::Decisions).unwrap()
        ),
        (idem_before, decisions_before),
        "a refused rebuild keeps every entry"
    );

    let mut refused = |archives: &[&std::path::PathBuf]| {
        let list: Vec<_> = archives.iter().map(|p| (*p).clone()).collect();
        rebuild_base_snapshot(&mut s, &genesis, &list, &mut |_| {}).unwrap_err()
    };
    let e = refused(&[&a2]);
    assert!(
        matches!(e, RebuildBaseError::NotFromGenesis { first: 36, .. }),
        "{e}"
    );
    let e = refused(&[&a0, &a1]);
    assert!(
        matches!(
            e,
            RebuildBaseError::Short {
                reached: 35,
                base: 45
            }
        ),
        "{e}"
    );
    let e = refused(&[&a0, &a2]);
    assert!(
        matches!(
            e,
            RebuildBaseError::Gap {
                first: 36,
                next: 21,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("21..=35 is missing"), "{e}");
    assert!(
        recover(&s, &genesis).is_err(),
        "the refusals changed nothing"
    );

    // Overlaps (an archive given twice) are fine.
    let all = [a0.clone(), a0, a1, a2];
    let r = rebuild_base_snapshot(&mut s, &genesis, &all, &mut |_| {}).unwrap();
    assert_eq!((r.base.index, r.replayed), (45, 45));
    assert_eq!(base_snapshot_fault(&s).unwrap(), None);
    assert_same_node(&recover(&s, &genesis).unwrap().node, st.node(), "rebuilt");
    let v = verify(&s, &genesis, &VerifyOptions::default(), &mut |_| {}).unwrap();
    assert!(v.snapshot_problems.is_empty(), "{:?}", v.snapshot_problems);
}

/// Refusals change nothing and create no archive.
fn refusals_change_nothing(h: &mut impl Harness) {
    let (st, mut s, _) = fifty(h);
    let genesis = st.genesis().clone();
    let a = archive_path(h, "r.cbor");
    let e = compact(&mut s, &genesis, 51, &a, &steps(0), &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            e,
            CompactError::Beyond {
                through: 51,
                last: 50,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("at or below 50"), "{e}");
    let e = compact(&mut s, &genesis, 0, &a, &steps(0), &mut |_| {}).unwrap_err();
    assert!(matches!(e, CompactError::NothingToCut { .. }), "{e}");
    assert!(!a.exists());

    std::fs::write(&a, b"precious").unwrap();
    let e = compact(&mut s, &genesis, 20, &a, &steps(0), &mut |_| {}).unwrap_err();
    assert!(matches!(e, CompactError::ArchiveExists(_)), "{e}");
    assert_eq!(std::fs::read(&a).unwrap(), b"precious", "never overwritten");
    assert_eq!(wal_base(&s).unwrap(), None);
    assert_eq!(s.count(Space::Wal).unwrap(), 50);

    compact(
        &mut s,
        &genesis,
        20,
        &archive_path(h, "ok.cbor"),
        &steps(0),
        &mut |_| {},
    )
    .unwrap();
    let e = compact(
        &mut s,
        &genesis,
        20,
        &archive_path(h, "again.cbor"),
        &steps(0),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(e, CompactError::NothingToCut { base: 20, .. }),
        "{e}"
    );
    assert!(!archive_path(h, "again.cbor").exists());
}

/// A damaged record inside the range stops the compaction before anything
/// is cut; the partial archive is removed and the error names the record.
fn a_damaged_record_stops_it_before_any_cut(h: &mut impl Harness) {
    let (st, mut s, _) = fifty(h);
    let genesis = st.genesis().clone();
    let mut v = s.get(Space::Wal, &index_key(7)).unwrap().unwrap();
    let at = v.len() / 2;
    v[at] ^= 0x10;
    s.overwrite_raw(Space::Wal, &index_key(7), &v).unwrap();
    let a = archive_path(h, "bad.cbor");
    let e = compact(&mut s, &genesis, 20, &a, &steps(0), &mut |_| {}).unwrap_err();
    assert!(
        matches!(e, CompactError::Read(ReadError::Corrupt { index: 7, .. })),
        "{e}"
    );
    assert!(!a.exists(), "a partial archive is removed");
    assert_eq!(wal_base(&s).unwrap(), None);
    assert_eq!(s.count(Space::Wal).unwrap(), 50);
}

fn refused<S: LogStore>(s: &mut S, b: Batch, what: &str) {
    let e = s.commit(b).expect_err(what);
    assert!(matches!(e, StoreError::WalBase { .. }), "{what}: {e}");
}

/// The store's own batch rules for a cut of the WAL's start.
fn cut_rules(h: &mut impl Harness) {
    let (st, mut s, _) = fifty(h);
    let h10 = read_record(&s, 10).unwrap().hash;
    let base = |i: u64, hash| swoosh_storage::store::encode_wal_base(i, &hash);
    // A cut without moving the base there.
    let mut b = Batch::new();
    b.cut_wal_through(10);
    refused(&mut s, b, "cut alone");
    let mut b = Batch::new();
    b.cut_wal_through(10)
        .put(Space::Meta, b"wal_base".to_vec(), base(9, h10));
    refused(&mut s, b, "base elsewhere");
    // Beyond the last record, or twice.
    let mut b = Batch::new();
    b.cut_wal_through(51)
        .put(Space::Meta, b"wal_base".to_vec(), base(51, h10));
    refused(&mut s, b, "beyond the end");
    let mut b = Batch::new();
    b.cut_wal_through(5).cut_wal_through(10);
    refused(&mut s, b, "twice");
    // A base put while records remain, with no cut.
    let mut b = Batch::new();
    b.put(Space::Meta, b"wal_base".to_vec(), base(10, h10));
    refused(&mut s, b, "base without a cut");
    assert_eq!(s.count(Space::Wal).unwrap(), 50, "nothing applied");

    // The accepted form, then a cut at or below the new base is refused.
    let mut b = Batch::new();
    b.cut_wal_through(10)
        .put(Space::Meta, b"wal_base".to_vec(), base(10, h10));
    LogStore::commit(&mut s, b).unwrap();
    assert_eq!(s.count(Space::Wal).unwrap(), 40);
    assert_eq!(first_index(&s).unwrap(), 11);
    let mut b = Batch::new();
    b.cut_wal_through(10)
        .put(Space::Meta, b"wal_base".to_vec(), base(10, h10));
    refused(&mut s, b, "at the base");
    // Lifting the base first does not let a cut move it backwards.
    let h5 = read_record(&s, 11).unwrap().record.prev_hash;
    let mut b = Batch::new();
    b.delete(Space::Meta, b"wal_base".to_vec())
        .cut_wal_through(5)
        .put(Space::Meta, b"wal_base".to_vec(), base(5, h5));
    refused(&mut s, b, "backwards");
    assert_eq!(wal_base(&s).unwrap().map(|b| b.index), Some(10));
    let _ = st;
}

both_backends!(
    compact_then_append_recover_and_compact_again,
    drop_decisions_removes_only_the_cut_ones,
    refusals_change_nothing,
    a_missing_idempotency_entry_is_written_again,
    a_damaged_base_snapshot_is_rebuilt_from_the_archives,
    a_damaged_record_stops_it_before_any_cut,
    cut_rules,
);

/// A crash between steps leaves the store at the last committed step; a
/// second run (with a new archive) finishes from there.
#[test]
fn memory_crash_between_steps_keeps_a_consistent_store() {
    let mut h = common::mem();
    let (st, mut s, _) = fifty(&mut h);
    let genesis = st.genesis().clone();
    // Two steps commit, the third fails as a crash would.
    s.crash_after_commits(2);
    let a1 = h.scratch.path().join("c1.cbor");
    let e = compact(&mut s, &genesis, 40, &a1, &steps(10), &mut |_| {}).unwrap_err();
    assert!(
        matches!(e, CompactError::Store(StoreError::Crashed { .. })),
        "{e}"
    );
    let mut s = s.crash();
    assert_eq!(wal_base(&s).unwrap().map(|b| b.index), Some(20));
    assert_eq!(read_archive(&a1).unwrap().last, 40, "the archive was whole");
    assert_same_node(
        &recover(&s, &genesis).unwrap().node,
        st.node(),
        "consistent after the crash",
    );
    let a2 = h.scratch.path().join("c2.cbor");
    let r = compact(&mut s, &genesis, 40, &a2, &steps(10), &mut |_| {}).unwrap();
    assert_eq!((r.archive.first, r.archive.last, r.steps), (21, 40, 2));
    // The second archive repeats records 21..=40 of the first, identically.
    assert_eq!(archive_hash_at(&a1, 20).unwrap(), Some(r.archive.prev_hash));
    assert_eq!(archive_hash_at(&a1, 40).unwrap(), Some(r.archive.last_hash));
    assert_eq!(archive_hash_at(&a2, 20).unwrap(), Some(r.archive.prev_hash));
    assert_eq!(archive_hash_at(&a2, 41).unwrap(), None);
    let a = audit_indexes(&s, 50).unwrap();
    assert!(a.is_sound(), "{:?}", a.findings);
}

/// A step that fails after others committed says what was cut and that the
/// archive is its only copy; one that fails before any cut removes the
/// archive (the store still holds everything).
#[test]
fn a_failed_step_says_what_was_cut_or_removes_the_archive() {
    let mut h = common::mem();
    let (st, mut s, _) = fifty(&mut h);
    let genesis = st.genesis().clone();
    let fail_at = |n: u32| {
        let mut calls = 0u32;
        move |s: &mut MemStore, b: Batch| {
            calls += 1;
            if calls == n {
                Err(StoreError::Crashed {
                    location: "refused by the test".into(),
                })
            } else {
                s.commit(b)
            }
        }
    };
    let a0 = h.scratch.path().join("f0.cbor");
    let e = compact_with(
        &mut s,
        &genesis,
        30,
        &a0,
        &steps(10),
        &mut |_| {},
        &mut fail_at(1),
    )
    .unwrap_err();
    assert!(matches!(e, CompactError::Store(_)), "{e}");
    assert!(
        !a0.exists(),
        "nothing was cut: the spare archive is removed"
    );
    assert_eq!(wal_base(&s).unwrap(), None);

    let a1 = h.scratch.path().join("f1.cbor");
    let e = compact_with(
        &mut s,
        &genesis,
        30,
        &a1,
        &steps(10),
        &mut |_| {},
        &mut fail_at(2),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            CompactError::Interrupted {
                first: 1,
                cut_through: 10,
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("records 1..=10 were already cut"), "{msg}");
    assert!(msg.contains("keep that file"), "{msg}");
    assert_eq!(read_archive(&a1).unwrap().last, 30);
    assert_same_node(&recover(&s, &genesis).unwrap().node, st.node(), "sound");
    assert_same_node(&recover(&s, &genesis).unwrap().node, st.node(), "finished");
}

/// Asked to stop, a compaction ends before its next step: before any cut
/// it leaves every record and no archive; after some, a sound store that
/// names what was cut, and a later run finishes.
#[test]
fn a_cancelled_compaction_stops_between_steps() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut h = common::mem();
    let (st, mut s, _) = fifty(&mut h);
    let genesis = st.genesis().clone();
    fn cancel_at(c: &AtomicBool, replayed: u64) -> impl FnMut(&Progress) + '_ {
        move |p: &Progress| {
            if p.phase == Phase::Replay && p.done >= replayed {
                c.store(true, Ordering::SeqCst);
            }
        }
    }

    // Set while the first step replays: nothing is cut.
    let cancel = AtomicBool::new(false);
    let a0 = h.scratch.path().join("c0.cbor");
    let e = compact_cancellable(
        &mut s,
        &genesis,
        30,
        &a0,
        &steps(10),
        &cancel,
        &mut cancel_at(&cancel, 10),
    )
    .unwrap_err();
    assert!(matches!(e, CompactError::Cancelled), "{e}");
    assert!(!a0.exists(), "nothing was cut: no archive is left");
    assert_eq!(wal_base(&s).unwrap(), None);

    // Set while the second step replays: the first step's cut stays.
    let cancel = AtomicBool::new(false);
    let a1 = h.scratch.path().join("c1.cbor");
    let e = compact_cancellable(
        &mut s,
        &genesis,
        30,
        &a1,
        &steps(10),
        &cancel,
        &mut cancel_at(&cancel, 20),
    )
    .unwrap_err();
    match &e {
        CompactError::Interrupted {
            first: 1,
            cut_through: 10,
            source,
            ..
        } => assert!(matches!(**source, CompactError::Cancelled), "{e}"),
        other => panic!("expected an interrupted compaction, got {other}"),
    }
    assert_eq!(wal_base(&s).unwrap().map(|b| b.index), Some(10));
    assert_same_node(&recover(&s, &genesis).unwrap().node, st.node(), "sound");
    let last = s.last_index().unwrap();
    assert!(audit_indexes(&s, last).unwrap().is_sound());

    // Not set: it runs to the end.
    let cancel = AtomicBool::new(false);
    let a2 = h.scratch.path().join("c2.cbor");
    let r =
        compact_cancellable(&mut s, &genesis, 30, &a2, &steps(10), &cancel, &mut |_| {}).unwrap();
    assert_eq!((r.archive.first, r.base.index), (11, 30));
    assert_same_node(&recover(&s, &genesis).unwrap().node, st.node(), "finished");
}

/// `read_archive` names what is wrong with a damaged archive.
#[test]
fn read_archive_detects_truncation_gaps_and_garbage() {
    let mut h = common::mem();
    let (st, mut s, _) = fifty(&mut h);
    let a = h.scratch.path().join("a.cbor");
    compact(&mut s, st.genesis(), 5, &a, &steps(0), &mut |_| {}).unwrap();
    let bytes = std::fs::read(&a).unwrap();
    let frames: Vec<(usize, usize)> = {
        let mut out = vec![];
        let mut at = 0;
        while at < bytes.len() {
            let n = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            out.push((at, at + 4 + n));
            at += 4 + n;
        }
        out
    };
    assert_eq!(frames.len(), 5);
    let write = |name: &str, b: &[u8]| {
        let p = h.scratch.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };

    let p = write("trunc", &bytes[..bytes.len() - 3]);
    let e = read_archive(&p).unwrap_err();
    assert!(matches!(e, ArchiveError::Truncated { after: 4, .. }), "{e}");

    let mut gap = bytes[..frames[1].0].to_vec();
    gap.extend_from_slice(&bytes[frames[2].0..]);
    let e = read_archive(&write("gap", &gap)).unwrap_err();
    assert!(
        matches!(
            e,
            ArchiveError::Index {
                expected: 2,
                got: 3,
                ..
            }
        ),
        "{e}"
    );

    let mut swapped = bytes[..frames[1].0].to_vec();
    // Record 2 of another log (a fresh stream of another label) in place.
    let mut other = Stream::new("another-log", 2, Verify::Trusted);
    let rec2 = other.take(2).pop().unwrap().record;
    let enc = swoosh_core::cbor::to_canonical(&rec2).unwrap();
    swapped.extend_from_slice(&(enc.len() as u32).to_be_bytes());
    swapped.extend_from_slice(&enc);
    let e = read_archive(&write("swapped", &swapped)).unwrap_err();
    assert!(matches!(e, ArchiveError::Chain { index: 2, .. }), "{e}");

    let mut big = bytes.clone();
    big[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
    let e = read_archive(&write("big", &big)).unwrap_err();
    assert!(matches!(e, ArchiveError::TooLarge { offset: 0, .. }), "{e}");

    let mut garbage = bytes.clone();
    garbage[frames[0].0 + 4] = 0xff;
    let e = read_archive(&write("garbage", &garbage)).unwrap_err();
    assert!(matches!(e, ArchiveError::Record { offset: 0, .. }), "{e}");

    let e = read_archive(&write("empty", b"")).unwrap_err();
    assert!(matches!(e, ArchiveError::Empty { .. }), "{e}");
}
