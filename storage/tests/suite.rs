//! The storage suite: every `LogStore` backend must pass it (STYLE 4).
//! Byte-level behaviour only; the WAL format is tested in `wal.rs`.

#[macro_use]
mod common;

use common::Harness;
use proptest::prelude::*;
use std::collections::BTreeMap;
use swoosh_storage::store::{index_key, KEY_BYTES_MAX};
use swoosh_storage::{Batch, Durability, LogStore, Space, StoreError};

fn entries(from: u64, to: u64) -> Vec<(u64, Vec<u8>)> {
    (from..=to)
        .map(|i| (i, format!("record-{i}").into_bytes()))
        .collect()
}

fn append_and_read_range(h: &mut impl Harness) {
    let mut s = h.open();
    assert_eq!(s.last_index().unwrap(), 0);
    assert_eq!(s.read_last().unwrap(), None);
    let info = s.append(entries(1, 3)).unwrap();
    assert_eq!(info.ops, 3);
    assert_eq!(
        info.synced,
        h.durability() == Durability::Sync,
        "{}: synced flag",
        h.name()
    );
    s.append(entries(4, 10)).unwrap();
    assert_eq!(s.last_index().unwrap(), 10);
    assert_eq!(s.read_last().unwrap(), Some((10, b"record-10".to_vec())));
    assert_eq!(s.read_range(3, 5, 100).unwrap(), entries(3, 5));
    assert_eq!(s.read_range(8, 1000, 100).unwrap(), entries(8, 10));
    assert_eq!(
        s.read_range(1, 10, 4).unwrap(),
        entries(1, 4),
        "limit caps the page"
    );
    assert_eq!(s.read_range(6, 5, 100).unwrap(), vec![], "empty range");
    assert_eq!(s.read_range(11, u64::MAX, 100).unwrap(), vec![]);
    assert_eq!(s.read_at(7).unwrap(), Some(b"record-7".to_vec()));
    assert_eq!(s.read_at(11).unwrap(), None);
    assert_eq!(s.count(Space::Wal).unwrap(), 10);
}

fn appends_must_be_contiguous_and_atomic(h: &mut impl Harness) {
    let mut s = h.open();
    let e = s.append(vec![(2, b"x".to_vec())]).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::NotContiguous {
                expected: 1,
                got: 2,
                ..
            }
        ),
        "{e}"
    );
    s.append(entries(1, 2)).unwrap();
    // A batch whose second half has a gap is refused whole.
    let e = s
        .append(vec![(3, b"a".to_vec()), (5, b"b".to_vec())])
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::NotContiguous {
                expected: 4,
                got: 5,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(s.last_index().unwrap(), 2);
    // Mixed batch: a refused append takes the puts with it.
    let mut b = Batch::new();
    b.put(Space::Meta, b"k".to_vec(), b"v".to_vec());
    b.append(9, b"late".to_vec());
    assert!(s.commit(b).is_err());
    assert_eq!(s.get_meta("k").unwrap(), None);
    // Index 0 never exists.
    assert!(matches!(
        s.append(vec![(0, vec![])]),
        Err(StoreError::NotContiguous { .. })
    ));
}

fn wal_space_is_written_only_by_appends(h: &mut impl Harness) {
    let mut s = h.open();
    s.append(entries(1, 1)).unwrap();
    let mut b = Batch::new();
    b.put(Space::Wal, index_key(2).to_vec(), b"sneaky".to_vec());
    assert!(matches!(s.commit(b), Err(StoreError::WalWrite { .. })));
    let mut b = Batch::new();
    b.delete(Space::Wal, index_key(1).to_vec());
    assert!(matches!(s.commit(b), Err(StoreError::WalWrite { .. })));
    assert_eq!(s.last_index().unwrap(), 1);
}

fn keys_are_bounded(h: &mut impl Harness) {
    let mut s = h.open();
    let mut b = Batch::new();
    b.put(Space::Meta, vec![b'k'; KEY_BYTES_MAX + 1], b"v".to_vec());
    assert!(matches!(s.commit(b), Err(StoreError::KeyTooLarge { .. })));
    let mut b = Batch::new();
    b.put(Space::Meta, vec![], b"v".to_vec());
    assert!(matches!(
        s.commit(b),
        Err(StoreError::KeyTooLarge { len: 0, .. })
    ));
    let mut b = Batch::new();
    b.put(Space::Meta, vec![b'k'; KEY_BYTES_MAX], b"v".to_vec());
    s.commit(b).unwrap();
}

fn truncate_after_cuts_the_tail(h: &mut impl Harness) {
    let mut s = h.open();
    s.append(entries(1, 10)).unwrap();
    s.truncate_after(100).unwrap();
    assert_eq!(
        s.last_index().unwrap(),
        10,
        "truncating past the end is a no-op"
    );
    s.truncate_after(6).unwrap();
    assert_eq!(s.last_index().unwrap(), 6);
    assert_eq!(s.read_range(1, 100, 100).unwrap(), entries(1, 6));
    // The log continues at 7 after a cut.
    s.append(vec![(7, b"new-7".to_vec())]).unwrap();
    assert_eq!(s.read_last().unwrap(), Some((7, b"new-7".to_vec())));
    s.truncate_after(0).unwrap();
    assert_eq!(s.last_index().unwrap(), 0);
    s.append(entries(1, 1)).unwrap();
    // Truncate and append in one batch (what repair-and-continue does).
    let mut b = Batch::new();
    b.truncate_wal_after(0);
    b.append(1, b"again".to_vec());
    s.commit(b).unwrap();
    assert_eq!(
        s.read_range(1, 5, 10).unwrap(),
        vec![(1, b"again".to_vec())]
    );
}

fn snapshots_put_get_list_delete(h: &mut impl Harness) {
    let mut s = h.open();
    assert_eq!(s.list_snapshots().unwrap(), Vec::<u64>::new());
    for i in [300u64, 10, 2_000_000, 256] {
        s.put_snapshot(i, format!("snap-{i}").into_bytes()).unwrap();
    }
    assert_eq!(
        s.list_snapshots().unwrap(),
        vec![10, 256, 300, 2_000_000],
        "numeric order, not string order"
    );
    assert_eq!(s.get_snapshot(256).unwrap(), Some(b"snap-256".to_vec()));
    assert_eq!(s.get_snapshot(11).unwrap(), None);
    s.put_snapshot(256, b"replaced".to_vec()).unwrap();
    assert_eq!(s.get_snapshot(256).unwrap(), Some(b"replaced".to_vec()));
    s.delete_snapshot(300).unwrap();
    s.delete_snapshot(301).unwrap();
    assert_eq!(s.list_snapshots().unwrap(), vec![10, 256, 2_000_000]);
}

fn metadata_area(h: &mut impl Harness) {
    let mut s = h.open();
    assert_eq!(s.get_meta("format").unwrap(), None);
    s.put_meta("format", b"v1").unwrap();
    s.put_meta("genesis_hash", b"blake3:00").unwrap();
    assert_eq!(s.get_meta("format").unwrap(), Some(b"v1".to_vec()));
    s.put_meta("format", b"v2").unwrap();
    assert_eq!(s.get_meta("format").unwrap(), Some(b"v2".to_vec()));
    assert_eq!(s.count(Space::Meta).unwrap(), 2);
}

fn scan_pages_in_key_order(h: &mut impl Harness) {
    let mut s = h.open();
    let mut b = Batch::new();
    for k in ["b", "a", "ab", "c", "aa"] {
        b.put(
            Space::Idem,
            k.as_bytes().to_vec(),
            k.to_uppercase().into_bytes(),
        );
    }
    s.commit(b).unwrap();
    let keys = |rows: Vec<(Vec<u8>, Vec<u8>)>| {
        rows.into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(s.scan(Space::Idem, b"", None, 100).unwrap()),
        ["a", "aa", "ab", "b", "c"]
    );
    assert_eq!(
        keys(s.scan(Space::Idem, b"aa", Some(b"b"), 100).unwrap()),
        ["aa", "ab"]
    );
    assert_eq!(
        keys(s.scan(Space::Idem, b"a", None, 2).unwrap()),
        ["a", "aa"]
    );
    assert_eq!(
        keys(s.scan(Space::Idem, b"b", Some(b"a"), 100).unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        s.last(Space::Idem).unwrap(),
        Some((b"c".to_vec(), b"C".to_vec()))
    );
    assert_eq!(s.last(Space::Decisions).unwrap(), None);
}

fn crash_and_reopen_keeps_every_commit(h: &mut impl Harness) {
    let mut s = h.open();
    s.append(entries(1, 5)).unwrap();
    s.put_snapshot(5, b"snap".to_vec()).unwrap();
    s.put_meta("genesis_hash", b"g").unwrap();
    s.append(entries(6, 8)).unwrap();
    s.truncate_after(7).unwrap();
    let s = h.crash_and_reopen(s);
    assert_eq!(s.read_range(1, 100, 100).unwrap(), entries(1, 7));
    assert_eq!(s.list_snapshots().unwrap(), vec![5]);
    assert_eq!(s.get_meta("genesis_hash").unwrap(), Some(b"g".to_vec()));
    // And it keeps working after the restart.
    let mut s = s;
    s.append(entries(8, 9)).unwrap();
    let s = h.crash_and_reopen(s);
    assert_eq!(s.last_index().unwrap(), 9);
}

fn overwrite_raw_reaches_the_disk(h: &mut impl Harness) {
    let mut s = h.open();
    s.append(entries(1, 3)).unwrap();
    s.overwrite_raw(Space::Wal, &index_key(2), b"damaged")
        .unwrap();
    let s = h.crash_and_reopen(s);
    assert_eq!(s.read_at(2).unwrap(), Some(b"damaged".to_vec()));
    assert_eq!(s.last_index().unwrap(), 3);
}

/// A derived space is cleared whole, what the journal still holds included;
/// the spaces the WAL cannot rebuild refuse it and keep their entries.
fn clear_space_empties_only_derived_spaces(h: &mut impl Harness) {
    let mut s = h.open();
    let mut b = Batch::new();
    b.append(1, b"record-1".to_vec());
    for i in 0..3u8 {
        b.put(Space::Idem, vec![b'i', i], b"entry".to_vec());
        b.put(Space::Decisions, vec![b'd', i], b"decision".to_vec());
    }
    s.commit(b).unwrap();
    s.put_snapshot(1, b"snap".to_vec()).unwrap();
    s.put_meta("genesis_hash", b"g").unwrap();
    assert_eq!(s.count(Space::Idem).unwrap(), 3);

    let mut b = Batch::new();
    b.clear_space(Space::Idem)
        .clear_space(Space::Decisions)
        .put(Space::Idem, b"kept".to_vec(), b"after the clear".to_vec());
    s.commit(b).unwrap();
    let s = h.crash_and_reopen(s);
    assert_eq!(s.count(Space::Decisions).unwrap(), 0);
    assert_eq!(
        s.count(Space::Idem).unwrap(),
        1,
        "a put after the clear stays"
    );
    assert_eq!(s.get(Space::Idem, &[b'i', 0]).unwrap(), None);

    let mut s = s;
    for space in [Space::Wal, Space::Meta, Space::Snapshots] {
        let mut b = Batch::new();
        b.put(Space::Idem, b"refused".to_vec(), b"v".to_vec())
            .clear_space(space);
        let e = s.commit(b).unwrap_err();
        assert!(
            matches!(e, StoreError::NotDerived { space: got, .. } if got == space),
            "{space}: {e}"
        );
        assert!(e.to_string().contains("only the derived spaces"), "{e}");
    }
    assert_eq!(
        s.get(Space::Idem, b"refused").unwrap(),
        None,
        "nothing applied"
    );
    assert_eq!(s.last_index().unwrap(), 1);
    assert_eq!(s.list_snapshots().unwrap(), vec![1]);
    assert_eq!(s.get_meta("genesis_hash").unwrap(), Some(b"g".to_vec()));
}

both_backends!(
    clear_space_empties_only_derived_spaces,
    append_and_read_range,
    appends_must_be_contiguous_and_atomic,
    wal_space_is_written_only_by_appends,
    keys_are_bounded,
    truncate_after_cuts_the_tail,
    snapshots_put_get_list_delete,
    metadata_area,
    scan_pages_in_key_order,
    crash_and_reopen_keeps_every_commit,
    overwrite_raw_reaches_the_disk,
);

// ---- memory-only: what NoSync loses in a crash ---------------------------

#[test]
fn memory_nosync_crash_loses_exactly_the_unsynced_commits() {
    let mut s = swoosh_storage::MemStore::new("nosync", swoosh_storage::Durability::NoSync);
    s.append(entries(1, 3)).unwrap();
    s.sync().unwrap();
    let info = s.append(entries(4, 6)).unwrap();
    assert!(!info.synced);
    assert_eq!(s.pending_commits(), 1);
    assert_eq!(s.last_index().unwrap(), 6, "reads see unsynced commits");
    let s = s.crash();
    assert_eq!(
        s.last_index().unwrap(),
        3,
        "the unsynced batch is gone, the synced one stays"
    );
}

#[test]
fn memory_crash_after_n_commits_refuses_everything_until_reopened() {
    let mut s = swoosh_storage::MemStore::new("crashy", swoosh_storage::Durability::Sync);
    s.crash_after_commits(2);
    s.append(entries(1, 1)).unwrap();
    s.append(entries(2, 2)).unwrap();
    assert!(matches!(
        s.append(entries(3, 3)),
        Err(StoreError::Crashed { .. })
    ));
    assert!(s.has_crashed());
    assert!(matches!(s.last_index(), Err(StoreError::Crashed { .. })));
    let s = s.crash();
    assert_eq!(s.last_index().unwrap(), 2);
}

#[test]
fn lmdb_store_refuses_a_second_open_of_the_same_directory() {
    let mut h = common::lmdb();
    let s = h.open();
    let e =
        swoosh_storage::LmdbStore::open(&h.dir.path().join("db"), &Default::default()).unwrap_err();
    assert!(matches!(e, StoreError::AlreadyOpen { .. }), "{e}");
    assert!(e.to_string().contains("share the open handle"));
    // A clone shares the environment and sees the same data.
    let mut w = s.clone();
    w.append(entries(1, 1)).unwrap();
    assert_eq!(s.last_index().unwrap(), 1);
}

// ---- model check against a BTreeMap --------------------------------------

#[derive(Clone, Debug)]
enum ModelOp {
    Append(Vec<Vec<u8>>),
    Truncate(u64),
    PutSnapshot(u64, Vec<u8>),
    DeleteSnapshot(u64),
    PutMeta(u8, Vec<u8>),
    CrashAndReopen,
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        4 => proptest::collection::vec(bytes(), 1..6).prop_map(ModelOp::Append),
        1 => (0u64..30).prop_map(ModelOp::Truncate),
        2 => (0u64..8, bytes()).prop_map(|(i, b)| ModelOp::PutSnapshot(i, b)),
        1 => (0u64..8).prop_map(ModelOp::DeleteSnapshot),
        1 => (0u8..4, bytes()).prop_map(|(k, b)| ModelOp::PutMeta(k, b)),
        1 => Just(ModelOp::CrashAndReopen),
    ]
}

#[derive(Default)]
struct Model {
    wal: BTreeMap<u64, Vec<u8>>,
    snaps: BTreeMap<u64, Vec<u8>>,
    meta: BTreeMap<String, Vec<u8>>,
}

fn run_model(h: &mut impl Harness, ops: Vec<ModelOp>) {
    let mut s = h.open();
    let mut m = Model::default();
    for op in ops {
        match op {
            ModelOp::Append(values) => {
                let first = m.wal.keys().next_back().copied().unwrap_or(0) + 1;
                let es: Vec<(u64, Vec<u8>)> = values
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (first + i as u64, v))
                    .collect();
                m.wal.extend(es.iter().cloned());
                s.append(es).unwrap();
            }
            ModelOp::Truncate(n) => {
                m.wal.retain(|k, _| *k <= n);
                s.truncate_after(n).unwrap();
            }
            ModelOp::PutSnapshot(i, b) => {
                m.snaps.insert(i, b.clone());
                s.put_snapshot(i, b).unwrap();
            }
            ModelOp::DeleteSnapshot(i) => {
                m.snaps.remove(&i);
                s.delete_snapshot(i).unwrap();
            }
            ModelOp::PutMeta(k, b) => {
                let key = format!("key-{k}");
                m.meta.insert(key.clone(), b.clone());
                s.put_meta(&key, &b).unwrap();
            }
            ModelOp::CrashAndReopen => s = h.crash_and_reopen(s),
        }
        // The whole observable state equals the model after every step.
        let last = m.wal.keys().next_back().copied().unwrap_or(0);
        assert_eq!(s.last_index().unwrap(), last);
        let all: Vec<(u64, Vec<u8>)> = m.wal.iter().map(|(k, v)| (*k, v.clone())).collect();
        assert_eq!(s.read_range(1, u64::MAX, 1_000).unwrap(), all);
        assert_eq!(
            s.read_last().unwrap(),
            m.wal.iter().next_back().map(|(k, v)| (*k, v.clone()))
        );
        assert_eq!(
            s.list_snapshots().unwrap(),
            m.snaps.keys().copied().collect::<Vec<_>>()
        );
        for (i, b) in &m.snaps {
            assert_eq!(s.get_snapshot(*i).unwrap().as_ref(), Some(b));
        }
        for (k, b) in &m.meta {
            assert_eq!(s.get_meta(k).unwrap().as_ref(), Some(b));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn lmdb_matches_the_btreemap_model(ops in proptest::collection::vec(model_op(), 1..25)) {
        run_model(&mut common::lmdb(), ops);
    }

    #[test]
    fn memory_matches_the_btreemap_model(ops in proptest::collection::vec(model_op(), 1..40)) {
        run_model(&mut common::mem(), ops);
    }
}
