//! The WAL base, on both backends: a follower that joins late installs the
//! leader's snapshot at B instead of records 1..=B, then appends B + 1…;
//! every reader and writer must start at the base, and the install is one
//! atomic commit.

#[macro_use]
mod common;

use common::Harness;
use swoosh_core::guards::Verify;
use swoosh_core::reducer::Accepted;
use swoosh_core::NodeState;
use swoosh_storage::store::index_key;
use swoosh_storage::testkit::Stream;
use swoosh_storage::*;

const LABEL: &str = "base-suite";

fn stream() -> Stream {
    Stream::new(LABEL, 2, Verify::Trusted)
}

/// The leader's stream advanced to `index`, and its node there (the
/// snapshot a late follower receives).
fn leader_at(index: u64) -> (Stream, NodeState) {
    let mut st = stream();
    st.advance_to(index);
    let node = st.node().clone();
    (st, node)
}

fn writer<S: LogStore>(s: S, st: &Stream) -> WalWriter<S> {
    WalWriter::open(s, st.node().genesis_hash, BatchLimits::default()).expect("open writer")
}

fn entries(accs: Vec<Accepted>) -> Vec<Entry> {
    accs.into_iter().map(Entry::from_accepted).collect()
}

fn fill<S: LogStore>(w: &mut WalWriter<S>, st: &mut Stream, n: usize) {
    for chunk in st.take(n).chunks(4) {
        w.append_batch(&entries(chunk.to_vec())).expect("append");
    }
}

fn assert_same_node(a: &NodeState, b: &NodeState, ctx: &str) {
    assert_eq!(a.index, b.index, "{ctx}: index");
    assert_eq!(a.head_record, b.head_record, "{ctx}: head record");
    assert_eq!(a.root_hash(), b.root_hash(), "{ctx}: root hash");
    assert!(a == b, "{ctx}: node states differ beyond the hashes");
}

fn flip<S: LogStore>(s: &mut S, space: Space, key: &[u8], at: usize) {
    let mut v = s.get(space, key).unwrap().expect("value to damage");
    let at = at.min(v.len() - 1);
    v[at] ^= 0x04;
    s.overwrite_raw(space, key, &v).unwrap();
}

/// Install the leader's snapshot at 20 into an empty store, append 21..=35,
/// reopen: the writer, recovery, verify, export and reads all start at the base.
fn install_into_an_empty_store_then_append_the_tail(h: &mut impl Harness) {
    let (mut st, snap) = leader_at(20);
    let gh = snap.genesis_hash;
    let mut s = h.open();
    let r = install_snapshot(&mut s, &snap, gh).unwrap();
    assert_eq!(
        r.base,
        WalBase {
            index: 20,
            hash: snap.head_record
        }
    );
    assert_eq!((r.cut_records, r.removed_derived), (0, 0));
    assert_eq!(wal_base(&s).unwrap(), Some(r.base));
    assert_eq!(
        (
            s.last_index().unwrap(),
            log_end(&s).unwrap(),
            first_index(&s).unwrap()
        ),
        (0, 20, 21),
        "last record, log end, first index"
    );
    assert_eq!(s.list_snapshots().unwrap(), vec![20]);

    let mut w = writer(s, &st);
    assert_eq!((w.last_index(), w.head_hash()), (20, snap.head_record));
    fill(&mut w, &mut st, 15);
    let s = h.crash_and_reopen(w.into_store());
    let w = writer(s, &st);
    assert_eq!((w.last_index(), w.head_hash()), (35, st.node().head_record));
    let s = w.into_store();

    let rec = recover(&s, st.genesis()).unwrap();
    assert_same_node(&rec.node, st.node(), "recover from the base");
    assert_eq!((rec.snapshot, rec.replayed), (Some(20), 15));
    let rec = recover_with(
        &s,
        st.genesis(),
        &RecoverOptions {
            verify: Verify::Full,
            use_snapshots: false,
        },
        &mut |_| {},
    )
    .unwrap();
    assert_same_node(&rec.node, st.node(), "no snapshots: still from the base");

    let v = verify(&s, st.genesis(), &VerifyOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(v.records, 15);
    assert_eq!(v.root_hash, st.node().root_hash());
    assert_eq!(v.snapshots_ok, vec![20]);
    assert!(v.snapshot_problems.is_empty(), "{:?}", v.snapshot_problems);
    assert!(v.index_problems.is_empty(), "{:?}", v.index_problems);

    // Records at or below the base are held only in the snapshot.
    for i in [1, 20] {
        let e = read_record(&s, i).unwrap_err();
        assert!(
            matches!(e, ReadError::BelowBase { index, base: 20, .. } if index == i),
            "{e}"
        );
        assert!(e.to_string().contains("below the WAL base"), "{e}");
    }
    assert!(matches!(
        read_record(&s, 36),
        Err(ReadError::Missing { index: 36, .. })
    ));
    assert!(matches!(
        export(&s, gh, 1, None).err(),
        Some(ReadError::BelowBase { index: 1, .. })
    ));
    let got: Vec<u64> = export(&s, gh, 21, None)
        .unwrap()
        .map(|r| r.unwrap().index)
        .collect();
    assert_eq!(got, (21..=35).collect::<Vec<_>>());
    let got: Vec<u64> = export(&s, gh, 30, Some(32))
        .unwrap()
        .map(|r| r.unwrap().index)
        .collect();
    assert_eq!(got, vec![30, 31, 32]);

    // The snapshot's own idempotency entries answer lookups below the base.
    let (p, k) = snap
        .idem
        .iter()
        .flat_map(|(p, m)| m.keys().map(move |k| (p.clone(), k.clone())))
        .next()
        .expect("the snapshot has idempotency entries");
    let e = lookup_idem(&s, &p, &k)
        .unwrap()
        .expect("entry from the snapshot");
    assert!(e.index <= 20);

    // A reindex keeps them and verifies clean.
    let mut s = s;
    rebuild_indexes(&mut s, st.genesis(), None, &mut |_| {}).unwrap();
    assert!(lookup_idem(&s, &p, &k).unwrap().is_some());
    let v = verify(&s, st.genesis(), &VerifyOptions::default(), &mut |_| {}).unwrap();
    assert!(v.index_problems.is_empty(), "{:?}", v.index_problems);
}

/// A follower holding an older prefix (records 1..=10 and a snapshot at 5)
/// installs the leader's snapshot at 30: its WAL, its snapshot and its
/// derived entries are replaced in one commit.
fn install_over_an_older_prefix(h: &mut impl Harness) {
    let mut follower = stream();
    let mut w = writer(h.open(), &follower);
    fill(&mut w, &mut follower, 5);
    write_snapshot(w.store_mut(), follower.node(), SNAPSHOTS_KEEP_DEFAULT).unwrap();
    fill(&mut w, &mut follower, 5);
    let mut s = w.into_store();
    assert!(s.count(Space::Decisions).unwrap() > 0);

    let (mut st, snap) = leader_at(30);
    let r = install_snapshot(&mut s, &snap, snap.genesis_hash).unwrap();
    assert_eq!(r.cut_records, 10);
    assert_eq!(r.removed_snapshots, vec![5]);
    assert!(r.removed_derived >= 10, "{r:?}");
    assert_eq!(s.count(Space::Wal).unwrap(), 0);
    assert_eq!(s.count(Space::Decisions).unwrap(), 0);
    assert_eq!(s.list_snapshots().unwrap(), vec![30]);

    let mut w = writer(s, &st);
    assert_eq!(w.last_index(), 30);
    fill(&mut w, &mut st, 6);
    let s = h.crash_and_reopen(w.into_store());
    let rec = recover(&s, st.genesis()).unwrap();
    assert_same_node(&rec.node, st.node(), "after installing over a prefix");
}

/// Holding exactly the snapshot's record is fine (same hash); so is
/// installing the same snapshot twice; a newer one moves the base forward.
fn install_at_the_held_end_and_again(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 12);
    let mut s = w.into_store();
    let snap = st.node().clone();
    let r = install_snapshot(&mut s, &snap, snap.genesis_hash).unwrap();
    assert_eq!((r.base.index, r.cut_records), (12, 12));
    let r = install_snapshot(&mut s, &snap, snap.genesis_hash).unwrap();
    assert_eq!((r.base.index, r.cut_records), (12, 0), "idempotent");

    let mut w = writer(s, &st);
    fill(&mut w, &mut st, 4);
    let mut s = w.into_store();
    // A newer snapshot (one past our end) lifts the old base and its snapshot.
    let (mut leader, snap) = leader_at(17);
    let r = install_snapshot(&mut s, &snap, snap.genesis_hash).unwrap();
    assert_eq!((r.base.index, r.cut_records), (17, 4));
    assert_eq!(r.removed_snapshots, vec![12]);
    let mut w = writer(s, &leader);
    fill(&mut w, &mut leader, 3);
    let rec = recover(w.store(), leader.genesis()).unwrap();
    assert_same_node(&rec.node, leader.node(), "after moving the base");
}

/// Every refusal is typed and changes nothing.
fn install_refusals(h: &mut impl Harness) {
    let mut st = stream();
    let gh = st.node().genesis_hash;
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 12);
    let mut s = w.into_store();
    let before = recover(&s, st.genesis()).unwrap().node;

    // Newer accepted records are never thrown away.
    let (_, at10) = leader_at(10);
    let e = install_snapshot(&mut s, &at10, gh).unwrap_err();
    assert!(
        matches!(
            e,
            InstallError::HoldsNewer {
                index: 10,
                held: 12,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("catch up from index 13"), "{e}");

    // A held record at the snapshot's index with another hash: divergence.
    // (Three projects: same genesis, other records.)
    let mut other = Stream::new(LABEL, 3, Verify::Trusted);
    other.advance_to(12);
    let e = install_snapshot(&mut s, other.node(), gh).unwrap_err();
    assert!(
        matches!(&e, InstallError::Conflict { index: 12, held, snapshot, .. }
            if *held == before.head_record && *snapshot == other.node().head_record),
        "{e}"
    );

    // Another cluster's snapshot, or a genesis the store does not hold.
    let mut foreign = Stream::new("someone-else", 2, Verify::Trusted);
    foreign.advance_to(20);
    let e = install_snapshot(&mut s, foreign.node(), gh).unwrap_err();
    assert!(matches!(e, InstallError::WrongGenesis { .. }), "{e}");
    let e = install_snapshot(&mut s, foreign.node(), foreign.node().genesis_hash).unwrap_err();
    assert!(
        matches!(e, InstallError::Meta(MetaError::WrongGenesis { .. })),
        "{e}"
    );
    // The genesis state is not a snapshot to install.
    let e = install_snapshot(&mut s, &stream().node().clone(), gh).unwrap_err();
    assert!(matches!(e, InstallError::Empty), "{e}");

    assert_eq!(wal_base(&s).unwrap(), None);
    assert_eq!(s.last_index().unwrap(), 12);
    assert_same_node(
        &recover(&s, st.genesis()).unwrap().node,
        &before,
        "refusals change nothing",
    );

    // A base conflicts like a record: another snapshot at the base index.
    let (_, at20) = leader_at(20);
    let mut fresh = h.crash_and_reopen(s);
    fresh.truncate_after(0).unwrap();
    install_snapshot(&mut fresh, &at20, gh).unwrap();
    other.advance_to(20);
    let e = install_snapshot(&mut fresh, other.node(), gh).unwrap_err();
    assert!(matches!(e, InstallError::Conflict { index: 20, .. }), "{e}");
    let e = install_snapshot(&mut fresh, &at10, gh).unwrap_err();
    assert!(
        matches!(
            e,
            InstallError::HoldsNewer {
                index: 10,
                held: 20,
                ..
            }
        ),
        "{e}"
    );
}

/// The store itself enforces the base: appends continue at B + 1, no gap,
/// no truncation below it, no deleting its snapshot, no base over records.
fn the_store_enforces_the_base(h: &mut impl Harness) {
    let (st, snap) = leader_at(10);
    let mut s = h.open();
    install_snapshot(&mut s, &snap, snap.genesis_hash).unwrap();
    for got in [1, 10, 12] {
        let e = s.append(vec![(got, b"x".to_vec())]).unwrap_err();
        assert!(
            matches!(e, StoreError::NotContiguous { expected: 11, got: g, .. } if g == got),
            "{e}"
        );
    }
    let e = s.truncate_after(5).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::BelowWalBase {
                base: 10,
                index: 5,
                ..
            }
        ),
        "{e}"
    );
    s.truncate_after(10).unwrap();
    let e = s.delete_snapshot(10).unwrap_err();
    assert!(matches!(e, StoreError::WalBase { .. }), "{e}");
    assert_eq!(s.list_snapshots().unwrap(), vec![10]);

    // The writer refuses a record 11 that does not chain to the base hash.
    let mut other = Stream::new(LABEL, 3, Verify::Trusted);
    other.advance_to(10);
    let wrong = other.take(1);
    let mut w = writer(s, &st);
    let e = w.append_batch(&entries(wrong)).unwrap_err();
    assert!(
        matches!(e, AppendError::ChainBroken { index: 11, expected, .. } if expected == snap.head_record),
        "{e}"
    );
    let mut s = w.into_store();

    // Byte level: a base is set only on an empty WAL, and must parse.
    s.append(vec![(11, b"x".to_vec())]).unwrap();
    let mut b = Batch::new();
    b.put(
        Space::Meta,
        b"wal_base".to_vec(),
        format!("20 {}", snap.head_record).into_bytes(),
    );
    let e = s.commit(b).unwrap_err();
    assert!(matches!(e, StoreError::WalBase { .. }), "{e}");
    let mut b = Batch::new();
    b.put(Space::Meta, b"wal_base".to_vec(), b"twenty".to_vec());
    let e = s.commit(b).unwrap_err();
    assert!(matches!(e, StoreError::WalBase { .. }), "{e}");
    assert_eq!(wal_base(&s).unwrap().map(|b| b.index), Some(10));
}

/// Repair walks from the base and never cuts below it.
fn repair_and_recover_a_based_log(h: &mut impl Harness) {
    let (mut st, snap) = leader_at(10);
    let gh = snap.genesis_hash;
    let mut s = h.open();
    install_snapshot(&mut s, &snap, gh).unwrap();
    let mut w = writer(s, &st);
    fill(&mut w, &mut st, 8);
    let mut s = w.into_store();
    let sound = repair(&mut s, gh, &h.scratch().join("none.bin"), &mut |_| {}).unwrap();
    assert_eq!((sound.last_good, sound.cut_records), (18, 0));

    flip(&mut s, Space::Wal, &index_key(15), 60);
    let e = recover(&s, st.genesis()).unwrap_err();
    assert_eq!(e.index(), Some(15), "{e}");
    let r = repair(&mut s, gh, &h.scratch().join("cut1.bin"), &mut |_| {}).unwrap();
    assert_eq!((r.last_good, r.cut_records), (14, 4));
    assert_eq!(recover(&s, st.genesis()).unwrap().node.index, 14);

    // Damage the first record after the base: the log shrinks to the base.
    flip(&mut s, Space::Wal, &index_key(11), 60);
    let r = repair(&mut s, gh, &h.scratch().join("cut2.bin"), &mut |_| {}).unwrap();
    assert_eq!((r.last_good, r.cut_records), (10, 4));
    assert_eq!(wal_base(&s).unwrap().map(|b| b.index), Some(10));
    assert_eq!(s.list_snapshots().unwrap(), vec![10]);
    let rec = recover(&s, st.genesis()).unwrap();
    assert_same_node(&rec.node, &snap, "repaired back to the base");
    // And the writer continues from the base again.
    let (mut again, _) = leader_at(10);
    let mut w = writer(s, &again);
    assert_eq!((w.last_index(), w.head_hash()), (10, snap.head_record));
    fill(&mut w, &mut again, 3);
    let rec = recover(w.store(), again.genesis()).unwrap();
    assert_same_node(&rec.node, again.node(), "refilled after the base");
}

/// What `swoosh wal repair` prints without --yes (`plan_repair`) is what
/// `repair` does on a based log: the walk starts after the base, anchored
/// at its hash, and the snapshot at the base joins the log there.
fn repair_plan_of_a_based_log_starts_after_the_base(h: &mut impl Harness) {
    let (mut st, snap) = leader_at(10);
    let gh = snap.genesis_hash;
    let mut s = h.open();
    install_snapshot(&mut s, &snap, gh).unwrap();
    let mut w = writer(s, &st);
    fill(&mut w, &mut st, 4);
    write_snapshot(w.store_mut(), st.node(), 3).unwrap();
    fill(&mut w, &mut st, 4);
    let mut s = w.into_store();

    let plan = recovery::plan_repair(&s, gh, &mut |_| {}).unwrap();
    assert!(plan.changes_nothing(), "{plan:?}");
    assert_eq!((plan.first, plan.last, plan.last_good), (11, 18, 18));
    for (idx, joins) in [(10, true), (14, true)] {
        let head = snapshot::decode_snapshot(idx, &s.get_snapshot(idx).unwrap().unwrap())
            .unwrap()
            .1
            .head_record;
        let verdict = recovery::snapshot_joins_log(&s, idx, head, gh).unwrap();
        assert_eq!(verdict.is_ok(), joins, "snapshot {idx}: {verdict:?}");
    }
    let below = recovery::snapshot_joins_log(&s, 9, snap.head_record, gh).unwrap();
    assert!(below.is_err(), "below the base: {below:?}");

    flip(&mut s, Space::Wal, &index_key(13), 60);
    let plan = recovery::plan_repair(&s, gh, &mut |_| {}).unwrap();
    assert_eq!(plan.fault.as_ref().and_then(ReadError::index), Some(13));
    assert_eq!((plan.last_good, plan.cut_snapshots.clone()), (12, vec![14]));
    let r = repair(&mut s, gh, &h.scratch().join("cut.bin"), &mut |_| {}).unwrap();
    assert_eq!(
        (r.last_good, r.cut_records, r.cut_snapshots),
        (plan.last_good, 6, plan.cut_snapshots)
    );
    assert_eq!(s.list_snapshots().unwrap(), vec![10]);
}

/// A damaged snapshot at the base is never silently accepted: recovery fails
/// with `Unproven` unless a newer usable snapshot exists; verify (which
/// starts at the base) always fails.
fn corrupt_base_snapshot_is_a_clear_error(h: &mut impl Harness) {
    let (mut st, snap) = leader_at(10);
    let mut s = h.open();
    install_snapshot(&mut s, &snap, snap.genesis_hash).unwrap();
    let mut w = writer(s, &st);
    fill(&mut w, &mut st, 5);
    let mut s = w.into_store();
    flip(&mut s, Space::Snapshots, &index_key(10), 100);
    let e = recover(&s, st.genesis()).unwrap_err();
    assert!(
        matches!(&e, RecoveryError::Unproven { base: 10, skipped, .. }
            if skipped.len() == 1 && skipped[0].index == 10),
        "{e}"
    );
    assert!(
        e.to_string().contains("cannot be proven from genesis"),
        "{e}"
    );
    let e = verify(&s, st.genesis(), &VerifyOptions::default(), &mut |_| {}).unwrap_err();
    assert!(matches!(e, RecoveryError::Unproven { base: 10, .. }), "{e}");
    let e = rebuild_indexes(&mut s, st.genesis(), None, &mut |_| {}).unwrap_err();
    assert!(
        matches!(e, RebuildError::Replay(RecoveryError::Unproven { .. })),
        "{e}"
    );

    // A newer snapshot whose record is in the WAL is a valid start.
    let mut h2 = stream();
    h2.advance_to(13);
    write_snapshot(&mut s, h2.node(), SNAPSHOTS_KEEP_DEFAULT).unwrap();
    let rec = recover(&s, st.genesis()).unwrap();
    assert_eq!((rec.snapshot, rec.replayed), (Some(13), 2));
    assert_same_node(&rec.node, st.node(), "from the newer snapshot");

    // A snapshot whose record hash differs from the base is refused too.
    let mut other = Stream::new(LABEL, 3, Verify::Trusted);
    other.advance_to(10);
    let (bytes, _) = swoosh_storage::snapshot::encode_snapshot(other.node()).unwrap();
    s.overwrite_raw(Space::Snapshots, &index_key(10), &bytes)
        .unwrap();
    s.overwrite_raw(Space::Snapshots, &index_key(13), b"gone")
        .unwrap();
    let e = recover(&s, st.genesis()).unwrap_err();
    assert!(
        matches!(&e, RecoveryError::Unproven { skipped, .. } if skipped.len() == 2),
        "{e}"
    );
    assert!(e.to_string().contains("the snapshot expects"), "{e}");
}

/// Keep-last-K pruning never removes the snapshot at the base.
fn base_snapshot_is_pinned_against_pruning(h: &mut impl Harness) {
    let (mut st, snap) = leader_at(10);
    let mut s = h.open();
    install_snapshot(&mut s, &snap, snap.genesis_hash).unwrap();
    let mut w = writer(s, &st);
    for _ in 0..4 {
        fill(&mut w, &mut st, 2);
        let node = st.node().clone();
        write_snapshot(w.store_mut(), &node, 2).unwrap();
    }
    assert_eq!(w.store().list_snapshots().unwrap(), vec![10, 16, 18]);
    let rec = recover(w.store(), st.genesis()).unwrap();
    assert_eq!(rec.snapshot, Some(18));
}

/// Through the writer: it stands at the base right after the install.
fn writer_installs_and_continues(h: &mut impl Harness) {
    let mut follower = stream();
    let mut w = writer(h.open(), &follower);
    fill(&mut w, &mut follower, 3);
    let (mut st, snap) = leader_at(9);
    let r = w.install_snapshot(&snap).unwrap();
    assert_eq!((r.base.index, r.cut_records), (9, 3));
    assert_eq!((w.last_index(), w.head_hash()), (9, snap.head_record));
    fill(&mut w, &mut st, 2);
    let rec = recover(w.store(), st.genesis()).unwrap();
    assert_same_node(&rec.node, st.node(), "writer install");
}

both_backends!(
    writer_installs_and_continues,
    install_into_an_empty_store_then_append_the_tail,
    install_over_an_older_prefix,
    install_at_the_held_end_and_again,
    install_refusals,
    the_store_enforces_the_base,
    repair_and_recover_a_based_log,
    repair_plan_of_a_based_log_starts_after_the_base,
    corrupt_base_snapshot_is_a_clear_error,
    base_snapshot_is_pinned_against_pruning,
);

// ---- memory only: a crash around the install ------------------------------

fn follower_with_prefix(disk: &MemDisk, durability: Durability) -> (MemStore, NodeState) {
    let mut st = stream();
    let mut w = writer(MemStore::open("crash", disk, durability), &st);
    fill(&mut w, &mut st, 10);
    let mut s = w.into_store();
    s.sync().unwrap();
    (s, st.node().clone())
}

#[test]
fn memory_crash_before_the_install_commit_keeps_the_old_log() {
    let disk = MemDisk::new();
    let (mut s, before) = follower_with_prefix(&disk, Durability::Sync);
    let (_, snap) = leader_at(25);
    s.crash_after_commits(0);
    let e = install_snapshot(&mut s, &snap, snap.genesis_hash).unwrap_err();
    assert!(
        matches!(e, InstallError::Store(StoreError::Crashed { .. })),
        "{e}"
    );
    let s = s.crash();
    assert_eq!(wal_base(&s).unwrap(), None);
    assert_eq!(s.last_index().unwrap(), 10);
    let rec = recover(&s, stream().genesis()).unwrap();
    assert_same_node(&rec.node, &before, "old state survives");
}

#[test]
fn memory_crash_after_the_install_commit_keeps_the_new_log() {
    let disk = MemDisk::new();
    let (mut s, _) = follower_with_prefix(&disk, Durability::Sync);
    let (st, snap) = leader_at(25);
    install_snapshot(&mut s, &snap, snap.genesis_hash).unwrap();
    let s = s.crash();
    assert_eq!(wal_base(&s).unwrap().map(|b| b.index), Some(25));
    assert_eq!(s.count(Space::Wal).unwrap(), 0);
    let rec = recover(&s, st.genesis()).unwrap();
    assert_same_node(&rec.node, &snap, "new state survives");
}

#[test]
fn memory_nosync_install_is_lost_whole_or_kept_whole() {
    let disk = MemDisk::new();
    let (mut s, before) = follower_with_prefix(&disk, Durability::NoSync);
    let (_, snap) = leader_at(25);
    install_snapshot(&mut s, &snap, snap.genesis_hash).unwrap();
    // Power loss before the sync: none of the install, all of the old log.
    let mut s = s.crash();
    assert_eq!(wal_base(&s).unwrap(), None);
    assert_same_node(
        &recover(&s, stream().genesis()).unwrap().node,
        &before,
        "unsynced install lost whole",
    );
    install_snapshot(&mut s, &snap, snap.genesis_hash).unwrap();
    s.sync().unwrap();
    let s = s.crash();
    assert_same_node(
        &recover(&s, stream().genesis()).unwrap().node,
        &snap,
        "synced install kept whole",
    );
}
