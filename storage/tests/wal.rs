//! The WAL, snapshots, derived indexes and recovery, on both backends:
//! group commit, verified reads, corruption named by index, torn tails,
//! snapshot fallback, repair, and the model check against the pure reducer.

#[macro_use]
mod common;

use common::Harness;
use proptest::prelude::*;
use swoosh_core::guards::Verify;
use swoosh_core::reducer::Accepted;
use swoosh_core::NodeState;
use swoosh_storage::frame::{self, FrameError, FrameKind};
use swoosh_storage::recovery::{read_cut_file, CUT_FILE_MAGIC};
use swoosh_storage::snapshot::{decode_snapshot, Snapshot};
use swoosh_storage::store::index_key;
use swoosh_storage::testkit::Stream;
use swoosh_storage::*;

const LABEL: &str = "wal-suite";

fn stream() -> Stream {
    Stream::new(LABEL, 2, Verify::Full)
}

fn writer<S: LogStore>(s: S, st: &Stream) -> WalWriter<S> {
    WalWriter::open(s, st.node().genesis_hash, BatchLimits::default()).expect("open writer")
}

fn entries(accs: Vec<Accepted>) -> Vec<Entry> {
    accs.into_iter().map(Entry::from_accepted).collect()
}

/// Append `n` records of `st` in batches of `batch`.
fn fill<S: LogStore>(w: &mut WalWriter<S>, st: &mut Stream, n: usize, batch: usize) {
    let mut left = n;
    while left > 0 {
        let k = left.min(batch);
        w.append_batch(&entries(st.take(k))).expect("append");
        left -= k;
    }
}

fn assert_same_node(a: &NodeState, b: &NodeState, ctx: &str) {
    assert_eq!(a.index, b.index, "{ctx}: index");
    assert_eq!(a.head_record, b.head_record, "{ctx}: head record");
    assert_eq!(a.root_hash(), b.root_hash(), "{ctx}: root hash");
    assert!(
        a == b,
        "{ctx}: node states differ beyond the hashes (idempotency index?)"
    );
}

/// Flip one bit of the stored frame of record `index`, `at` bytes into it.
fn flip<S: LogStore>(s: &mut S, space: Space, key: &[u8], at: usize) {
    let mut v = s.get(space, key).unwrap().expect("value to damage");
    let at = at.min(v.len() - 1);
    v[at] ^= 0x04;
    s.overwrite_raw(space, key, &v).unwrap();
}

// ---- group commit and verified reads -------------------------------------

fn group_commit_appends_and_reads_back_verified(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    assert_eq!((w.last_index(), w.head_hash()), (0, st.node().genesis_hash));
    let accs = st.take(40);
    let mut at = 0;
    for size in [1usize, 7, 32] {
        let r = w
            .append_batch(&entries(accs[at..at + size].to_vec()))
            .unwrap();
        assert_eq!(
            (r.first_index, r.last_index, r.records),
            (at as u64 + 1, (at + size) as u64, size)
        );
        assert_eq!(r.synced, h.durability() == Durability::Sync);
        assert!(r.bytes > 0);
        at += size;
    }
    assert_eq!(w.head_hash(), accs[39].record_hash);
    let s = w.store();
    for a in &accs {
        let v = read_record(s, a.record.index).unwrap();
        assert_eq!(v.hash, a.record_hash, "the frame hash is the record hash");
        assert_eq!(v.record, a.record);
    }
    let all: Vec<VerifiedRecord> = export(s, st.node().genesis_hash, 1, None)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(all.len(), 40);
    let tail: Vec<VerifiedRecord> = export(s, st.node().genesis_hash, 35, Some(37))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        tail.iter().map(|v| v.index).collect::<Vec<_>>(),
        [35, 36, 37]
    );
    assert!(matches!(
        read_record(s, 41),
        Err(ReadError::Missing {
            index: 41,
            last: 40,
            ..
        })
    ));
}

fn writer_checks_order_chain_and_claimed_hash(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    let accs = st.take(3);
    // Out of order: record 2 first.
    let e = w.append_batch(&entries(vec![accs[1].clone()])).unwrap_err();
    assert!(
        matches!(e, AppendError::OutOfOrder { got: 2, last: 0 }),
        "{e}"
    );
    // A claimed hash that is not the hash of the bytes.
    let mut bad = Entry::from_accepted(accs[0].clone());
    bad.record_hash = Some(swoosh_core::Hash::of_bytes(b"not it"));
    assert!(matches!(
        w.append_batch(&[bad]),
        Err(AppendError::HashMismatch { index: 1, .. })
    ));
    // A record chained to something else.
    let mut r = accs[0].record.clone();
    r.prev_hash = swoosh_core::Hash::of_bytes(b"elsewhere");
    let e = w.append_batch(&[Entry::record(r)]).unwrap_err();
    assert!(
        matches!(e, AppendError::ChainBroken { index: 1, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("recover the node and resubmit"));
    // A decision that is not the record's.
    let mut d = Entry::from_accepted(accs[0].clone());
    d.decision = Some(DecisionDoc::Unsigned(accs[1].decision.clone()));
    assert!(matches!(
        w.append_batch(&[d]),
        Err(AppendError::DecisionMismatch { index: 1, .. })
    ));
    // Nothing of the refused batches reached the log; the good one goes in.
    assert_eq!(w.store().last_index().unwrap(), 0);
    w.append_batch(&entries(accs)).unwrap();
    assert_eq!(w.last_index(), 3);
}

fn record_and_batch_limits_are_typed_errors(h: &mut impl Harness) {
    let mut st = stream();
    let limits = BatchLimits {
        wal_batch_records_max: 4,
        wal_batch_bytes_max: 64 << 10,
    };
    let mut w = WalWriter::open(h.open(), st.node().genesis_hash, limits).unwrap();
    let accs = st.take(5);
    let e = w.append_batch(&entries(accs.clone())).unwrap_err();
    assert!(
        matches!(
            e,
            AppendError::BatchTooLarge {
                records: 5,
                records_max: 4,
                ..
            }
        ),
        "{e}"
    );
    let mut huge = accs[0].record.clone();
    huge.evidence = vec!["x".repeat(1024); 1100];
    let e = w.append_batch(&[Entry::record(huge)]).unwrap_err();
    assert!(
        matches!(e, AppendError::RecordTooLarge { index: 1, bytes } if bytes > WAL_RECORD_BYTES_MAX),
        "{e}"
    );
    assert!(e.to_string().contains("at most 1048576"));
    let tight = BatchLimits {
        wal_batch_records_max: 4,
        wal_batch_bytes_max: 100,
    };
    let mut w = WalWriter::open(w.into_store(), st.node().genesis_hash, tight).unwrap();
    assert!(matches!(
        w.append_batch(&entries(accs[..1].to_vec())),
        Err(AppendError::BatchTooLarge { records: 1, .. })
    ));
    assert!(!tight.fits(1, 101) && tight.fits(4, 100));
}

/// A batch over the byte limit is committed in several group commits, in
/// order, reported as one; one `append_encoded` of it is refused whole.
fn a_split_append_commits_a_batch_over_the_byte_limit_in_parts(h: &mut impl Harness) {
    let mut st = stream();
    let accs = st.take(12);
    let encoded = |accs: &[Accepted]| -> Vec<EncodedEntry> {
        entries(accs.to_vec())
            .iter()
            .map(|e| e.encode().unwrap())
            .collect()
    };
    let one: usize = encoded(&accs[..1])[0].bytes();
    // About three records per commit.
    let limits = BatchLimits {
        wal_batch_records_max: 1_024,
        wal_batch_bytes_max: one * 3 + one / 2,
    };
    let mut w = WalWriter::open(h.open(), st.node().genesis_hash, limits).unwrap();
    assert!(matches!(
        w.append_encoded(encoded(&accs)),
        Err(AppendError::BatchTooLarge { records: 12, .. })
    ));
    let mut each = vec![];
    let r = w
        .append_encoded_split_each(encoded(&accs), &mut |c| each.push(*c))
        .unwrap();
    assert_eq!((r.first_index, r.last_index, r.records), (1, 12, 12));
    // Every commit is reported on its own (the fsync metric observes each).
    assert!(each.len() >= 4, "3.5 records' worth per commit: {each:?}");
    assert_eq!(each.iter().map(|c| c.records).sum::<usize>(), 12);
    assert_eq!(
        (each[0].first_index, each.last().unwrap().last_index),
        (1, 12)
    );
    assert!(each.iter().all(|c| c.records <= 3));
    assert_eq!(w.last_index(), 12);
    let node = recover(w.store(), st.genesis()).unwrap().node;
    assert_same_node(&node, st.node(), "after a split append");
    // An empty batch is an empty report.
    let r = w.append_encoded_split(vec![]).unwrap();
    assert_eq!((r.records, r.last_index), (0, 12));
}

fn derived_indexes_answer_lookups(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    let leader = swoosh_core::scenario::Keys::from_labels(LABEL, 3).leader;
    let accs = st.take(12);
    let mut es = vec![];
    for (i, a) in accs.iter().enumerate() {
        es.push(match i % 4 {
            0 => Entry::from_accepted_signed(a.clone(), &leader),
            1 => Entry::from_accepted(a.clone()),
            3 => {
                // Signed from the reducer's own encoding, as the node's WAL
                // writer does: the same entry, frames and signature.
                let mut e = Entry::from_accepted(a.clone());
                let bytes = a.decision_bytes.clone().expect("step keeps them");
                e.sign_decision_encoded(&leader, bytes);
                assert_eq!(e, Entry::from_accepted_signed(a.clone(), &leader));
                assert_eq!(
                    e.encode().unwrap(),
                    Entry::from_accepted_signed(a.clone(), &leader)
                        .encode()
                        .unwrap()
                );
                e
            }
            _ => {
                // Signed later, as the node's WAL writer does; twice is once.
                let mut e = Entry::from_accepted(a.clone());
                e.sign_decision(&leader);
                e.sign_decision(&leader);
                assert_eq!(e, Entry::from_accepted_signed(a.clone(), &leader));
                e
            }
        });
    }
    w.append_batch(&es).unwrap();
    let s = w.store();
    for (i, a) in accs.iter().enumerate() {
        let r = &a.record;
        let e = lookup_idem(s, &r.project, &r.idem_key)
            .unwrap()
            .expect("indexed");
        assert_eq!(
            Some(&e),
            st.node()
                .idem
                .get(&r.project)
                .and_then(|m| m.get(&r.idem_key)),
            "same entry as the reducer's"
        );
        let d = get_decision(s, &a.decision_hash).unwrap().expect("stored");
        assert_eq!(d.record(), &a.decision);
        match d {
            DecisionDoc::Signed(sd) => {
                assert_ne!(i % 4, 1);
                sd.verify().unwrap();
            }
            DecisionDoc::Unsigned(_) => assert_eq!(i % 4, 1),
        }
    }
    assert_eq!(lookup_idem(s, "p0", "never-used").unwrap(), None);
    assert_eq!(
        get_decision(s, &swoosh_core::Hash::of_bytes(b"none")).unwrap(),
        None
    );
}

fn writer_reopens_at_the_durable_tail(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 9, 4);
    let head = w.head_hash();
    let s = h.crash_and_reopen(w.into_store());
    let mut w = writer(s, &st);
    assert_eq!((w.last_index(), w.head_hash()), (9, head));
    fill(&mut w, &mut st, 3, 3);
    let rec = recover(w.store(), st.genesis()).unwrap();
    assert_same_node(&rec.node, st.node(), "after reopen");
}

// ---- recovery ------------------------------------------------------------

fn recovery_reproduces_the_pure_reducer(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    let mut progress = vec![];
    let rec = recover_with(
        w.store(),
        st.genesis(),
        &RecoverOptions::default(),
        &mut |p| progress.push(*p),
    )
    .unwrap();
    assert_eq!(
        (rec.node.index, rec.replayed, rec.snapshot),
        (0, 0, None),
        "an empty log recovers to genesis"
    );
    fill(&mut w, &mut st, 60, 16);
    let s = h.crash_and_reopen(w.into_store());
    progress.clear();
    let rec = recover_with(
        &s,
        st.genesis(),
        &RecoverOptions {
            verify: Verify::Full,
            use_snapshots: true,
        },
        &mut |p| progress.push(*p),
    )
    .unwrap();
    assert_same_node(&rec.node, st.node(), "full replay");
    assert_eq!(rec.replayed, 60);
    let last = progress.last().expect("progress reported");
    assert_eq!((last.phase, last.done, last.total), (Phase::Replay, 60, 60));
}

fn store_for_another_genesis_is_refused(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 2, 2);
    let other = swoosh_storage::testkit::stream_genesis("someone-else");
    let e = recover(w.store(), &other).unwrap_err();
    assert!(
        matches!(e, RecoveryError::Meta(MetaError::WrongGenesis { .. })),
        "{e}"
    );
    assert!(e
        .to_string()
        .contains("point --dir at this cluster's data directory"));
    let other_hash = other.hash().unwrap();
    assert!(matches!(
        WalWriter::open(w.into_store(), other_hash, BatchLimits::default()),
        Err(OpenError::Meta(MetaError::WrongGenesis { .. }))
    ));
}

// ---- corruption ----------------------------------------------------------

fn flipped_byte_is_named_by_index(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 20, 8);
    let mut s = h.crash_and_reopen(w.into_store());
    flip(&mut s, Space::Wal, &index_key(13), 200);
    let e = recover(&s, st.genesis()).unwrap_err();
    assert_eq!(e.index(), Some(13), "{e}");
    assert!(
        matches!(
            &e,
            RecoveryError::Read(ReadError::Corrupt {
                index: 13,
                reason: RecordFault::Frame(
                    FrameError::HashMismatch { .. } | FrameError::Decompress { .. }
                ),
                ..
            })
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("WAL record 13") && msg.contains("hash mismatch"),
        "{msg}"
    );
    assert!(
        msg.contains("swoosh wal verify --dir <node dir, which holds")
            && msg.contains(&s.location()),
        "{msg}"
    );
    assert!(
        msg.contains("cut the log back to record 12") && msg.contains("swoosh wal repair"),
        "{msg}"
    );
    // verify and export name the same record; export yields the good prefix first.
    let v = verify(&s, st.genesis(), &VerifyOptions::default(), &mut |_| {}).unwrap_err();
    assert_eq!(v.index(), Some(13));
    let items: Vec<_> = export(&s, st.node().genesis_hash, 1, None)
        .unwrap()
        .collect();
    assert_eq!(
        items.len(),
        13,
        "12 good records, then the error, then nothing"
    );
    assert!(items[..12].iter().all(Result::is_ok));
    assert_eq!(items[12].as_ref().unwrap_err().index(), Some(13));
}

/// Long replays run their record-local checks on a helper thread, chunks
/// ahead of the reducer (`recovery::REPLAY_PIPELINE_RECORDS_MIN`): the result
/// and the first fault named are those of the single-threaded path.
fn long_replays_recover_and_name_faults_like_short_ones(h: &mut impl Harness) {
    let n = recovery::REPLAY_PIPELINE_RECORDS_MIN as usize + 700;
    let mut st = Stream::new(LABEL, 2, Verify::Trusted);
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, n, 512);
    let mut s = h.crash_and_reopen(w.into_store());
    let r = recover(&s, st.genesis()).unwrap();
    assert_eq!(r.replayed, n as u64);
    assert_same_node(&r.node, st.node(), "long replay");
    let full = verify(&s, st.genesis(), &VerifyOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(full.head_hash, st.node().head_record);

    // A damaged frame in the third chunk is named by its index.
    let bad = 2 * recovery::REPLAY_CHUNK_RECORDS as u64 + 37;
    flip(&mut s, Space::Wal, &index_key(bad), 200);
    let e = recover(&s, st.genesis()).unwrap_err();
    assert!(
        matches!(
            &e,
            RecoveryError::Read(ReadError::Corrupt {
                index,
                reason: RecordFault::Frame(
                    FrameError::HashMismatch { .. } | FrameError::Decompress { .. }
                ),
                ..
            }) if *index == bad
        ),
        "{e}"
    );
    let v = verify(&s, st.genesis(), &VerifyOptions::default(), &mut |_| {}).unwrap_err();
    assert_eq!(v.index(), Some(bad));
}

/// A log written before compression (version-1 frames) keeps reading, and
/// a log that mixes both versions recovers, verifies and takes appends.
fn a_log_mixing_plain_and_compressed_frames_recovers(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 12, 4);
    let mut s = w.into_store();
    for i in 3..=8u64 {
        let v = s.read_at(i).unwrap().unwrap();
        assert_eq!(
            v[0],
            frame::FRAME_VERSION_LZ4,
            "record {i} is stored compressed"
        );
        let (hash, payload) = frame::open(FrameKind::WalRecord, &v, WAL_RECORD_BYTES_MAX).unwrap();
        // The frame as a build before compression wrote it.
        let mut plain = vec![frame::FRAME_VERSION, FrameKind::WalRecord as u8];
        plain.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        plain.extend_from_slice(&hash.0);
        plain.extend_from_slice(&payload);
        s.overwrite_raw(Space::Wal, &index_key(i), &plain).unwrap();
    }
    let s = h.crash_and_reopen(s);
    assert_eq!(s.read_at(5).unwrap().unwrap()[0], frame::FRAME_VERSION);
    let r = recover(&s, st.genesis()).unwrap();
    assert_eq!(r.replayed, 12);
    assert_same_node(&r.node, st.node(), "mixed frames");
    verify(&s, st.genesis(), &VerifyOptions::default(), &mut |_| {}).unwrap();
    let mut w = writer(s, &st);
    fill(&mut w, &mut st, 5, 5);
    let s = h.crash_and_reopen(w.into_store());
    let r = recover(&s, st.genesis()).unwrap();
    assert_eq!(r.replayed, 17);
    assert_same_node(&r.node, st.node(), "appended after mixed frames");
}

fn damaged_header_and_torn_frames_are_named(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 10, 10);
    let mut s = w.into_store();
    // Length field (bytes 2..6) damaged: reads as torn (a compressed frame
    // no longer decompresses to the declared length).
    flip(&mut s, Space::Wal, &index_key(4), 4);
    let e = recover(&s, st.genesis()).unwrap_err();
    assert!(
        matches!(
            &e,
            RecoveryError::Read(ReadError::Corrupt {
                index: 4,
                reason: RecordFault::Frame(
                    FrameError::Length { .. } | FrameError::Decompress { .. }
                ),
                ..
            })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("torn"));
    // A torn tail: the last frame cut in half.
    let mut st2 = stream();
    let mut h2 = common::mem();
    let mut w2 = writer(h2.open(), &st2);
    fill(&mut w2, &mut st2, 10, 5);
    let mut s2 = w2.into_store();
    let last = s2.read_at(10).unwrap().unwrap();
    s2.overwrite_raw(Space::Wal, &index_key(10), &last[..last.len() / 2])
        .unwrap();
    let e = recover(&s2, st2.genesis()).unwrap_err();
    assert!(
        matches!(
            &e,
            RecoveryError::Read(ReadError::Corrupt {
                index: 10,
                reason: RecordFault::Frame(
                    FrameError::Length { .. } | FrameError::Decompress { .. }
                ),
                ..
            })
        ),
        "{e}"
    );
    let s2 = h2.crash_and_reopen(s2);
    assert!(
        recover(&s2, st2.genesis()).is_err(),
        "torn bytes are on the durable part"
    );
    // A frame copied to another key: index mismatch.
    let eight = s.read_at(8).unwrap().unwrap();
    s.overwrite_raw(Space::Wal, &index_key(9), &eight).unwrap();
    let items: Vec<_> = export(&s, st.node().genesis_hash, 8, None)
        .unwrap()
        .collect();
    assert!(items[0].is_ok());
    assert!(
        matches!(
            &items[1],
            Err(ReadError::Corrupt {
                index: 9,
                reason: RecordFault::IndexMismatch { key: 9, stored: 8 },
                ..
            })
        ),
        "{items:?}"
    );
}

fn re_sealed_record_breaks_the_chain(h: &mut impl Harness) {
    // Record 5 is rewritten with a valid frame: its own hash checks out, but
    // record 6's prev_hash no longer matches.
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 8, 8);
    let mut s = w.into_store();
    let original5 = s.read_at(5).unwrap().unwrap();
    let mut r5 = read_record(&s, 5).unwrap().record;
    r5.timestamp_ms += 1;
    let (f, _) = frame::seal(
        FrameKind::WalRecord,
        &swoosh_core::cbor::to_canonical(&r5).unwrap(),
    );
    s.overwrite_raw(Space::Wal, &index_key(5), &f).unwrap();
    // The reducer reproduces record 5 (one ms changes nothing it decides), so
    // the damage shows where the chain no longer links: record 6.
    let e = recover(&s, st.genesis()).unwrap_err();
    assert!(
        matches!(
            &e,
            RecoveryError::Read(ReadError::Corrupt {
                index: 6,
                reason: RecordFault::Chain { .. },
                ..
            })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("chain broken"));
    let items: Vec<_> = export(&s, st.node().genesis_hash, 1, None)
        .unwrap()
        .collect();
    assert_eq!(items.len(), 6);
    assert!(
        matches!(
            &items[5],
            Err(ReadError::Corrupt {
                index: 6,
                reason: RecordFault::Chain { .. },
                ..
            })
        ),
        "{items:?}"
    );

    // A well-formed, well-chained record the reducer does not reproduce is a
    // divergence, not damage: recovery refuses it and repair does not cut it.
    s.overwrite_raw(Space::Wal, &index_key(5), &original5)
        .unwrap();
    let mut r7 = read_record(&s, 7).unwrap().record;
    s.truncate_after(6).unwrap();
    let mut w = writer(s, &st);
    r7.state_post_hash = swoosh_core::Hash::of_bytes(b"wrong");
    w.append_batch(&[Entry::record(r7)]).unwrap();
    let mut s = w.into_store();
    let e = recover(&s, st.genesis()).unwrap_err();
    assert!(
        matches!(
            &e,
            RecoveryError::Divergence {
                index: 7,
                source: swoosh_core::reducer::ReplayError::PostHash { .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("do NOT repair"), "{e}");
    let rep = repair(
        &mut s,
        st.node().genesis_hash,
        &h.scratch().join("never.bin"),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!((rep.last_good, rep.cut_records), (7, 0));
    assert!(!h.scratch().join("never.bin").exists());
}

fn torn_commit_in_a_crash_is_detected_and_repaired() {
    // Memory only: the disk receives a batch whose last frame is cut short.
    let mut st = stream();
    let mut h = common::mem();
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 10, 5);
    let mut s = w.into_store();
    s.tear_next_commit();
    let mut w = writer(s, &st);
    let pending = st.take(3);
    assert!(matches!(
        w.append_batch(&entries(pending)),
        Err(AppendError::Store(StoreError::Crashed { .. }))
    ));
    let mut s = h.crash_and_reopen(w.into_store());
    let e = recover(&s, st.genesis()).unwrap_err();
    assert_eq!(e.index(), Some(13), "{e}");
    let side = h.scratch().join("cut.bin");
    let rep = repair(&mut s, st.node().genesis_hash, &side, &mut |_| {}).unwrap();
    assert_eq!((rep.last_good, rep.cut_records), (12, 1));
    let rec = recover(&s, st.genesis()).unwrap();
    assert_eq!(rec.node.index, 12, "records 11 and 12 were whole and stay");
}

#[test]
fn memory_torn_commit_in_a_crash_is_detected_and_repaired() {
    torn_commit_in_a_crash_is_detected_and_repaired();
}

// ---- repair --------------------------------------------------------------

fn repair_cuts_to_the_last_good_record_and_keeps_a_copy(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 10, 10);
    write_snapshot(w.store_mut(), st.node(), 3).unwrap();
    let at10 = st.node().clone();
    fill(&mut w, &mut st, 5, 5);
    write_snapshot(w.store_mut(), st.node(), 3).unwrap();
    fill(&mut w, &mut st, 5, 5);
    let mut s = w.into_store();
    let original: Vec<(u64, Vec<u8>)> = s.read_range(13, 20, 100).unwrap();
    flip(&mut s, Space::Wal, &index_key(13), 100);
    let damaged = s.read_at(13).unwrap().unwrap();

    let side = h.scratch().join("cut-13.bin");
    let rep = repair(&mut s, st.node().genesis_hash, &side, &mut |_| {}).unwrap();
    assert_eq!(rep.last_good, 12);
    assert_eq!(rep.fault.as_ref().and_then(ReadError::index), Some(13));
    assert_eq!(rep.cut_records, 8);
    assert_eq!(rep.cut_snapshots, vec![15]);
    assert_eq!(
        rep.removed_derived, 16,
        "8 idempotency entries and 8 decisions of the cut records"
    );
    assert_eq!(s.last_index().unwrap(), 12);
    assert_eq!(s.list_snapshots().unwrap(), vec![10]);

    // The side file holds exactly what was cut, damaged record included,
    // readable by its owner only (plain records, like `data.mdb`).
    assert!(std::fs::read(&side).unwrap().starts_with(CUT_FILE_MAGIC));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&side).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "side file mode {mode:o}");
    }
    let cut = read_cut_file(&side).unwrap();
    let wal: Vec<(u64, Vec<u8>)> = cut
        .iter()
        .filter(|c| c.space == Space::Wal)
        .map(|c| (c.index, c.bytes.clone()))
        .collect();
    assert_eq!(wal[0], (13, damaged));
    assert_eq!(wal[1..], original[1..]);
    assert_eq!(
        cut.iter()
            .filter(|c| c.space == Space::Snapshots)
            .map(|c| c.index)
            .collect::<Vec<_>>(),
        [15]
    );

    // Recovery now succeeds at 12 from snapshot 10; the index forgot 13..20.
    let rec = recover(&s, st.genesis()).unwrap();
    assert_eq!((rec.snapshot, rec.node.index), (Some(10), 12));
    let mut pure = Stream::resume(LABEL, 2, at10, Verify::Full);
    pure.advance_to(12);
    assert_same_node(&rec.node, pure.node(), "after repair");
    let r13 = &original[0];
    let lost = decode_record_idem(&r13.1);
    assert_eq!(lookup_idem(&s, &lost.0, &lost.1).unwrap(), None);

    // The log continues from 13 with new records.
    let mut w = writer(s, &st);
    fill(&mut w, &mut pure, 4, 2);
    let rec = recover(w.store(), st.genesis()).unwrap();
    assert_same_node(&rec.node, pure.node(), "continued after repair");

    // Repair never overwrites an earlier side file, and a sound log is left alone.
    let mut s = w.into_store();
    let again = repair(&mut s, st.node().genesis_hash, &side, &mut |_| {}).unwrap();
    assert_eq!((again.cut_records, again.side_file), (0, None));
    flip(&mut s, Space::Wal, &index_key(16), 80);
    assert!(matches!(
        repair(&mut s, st.node().genesis_hash, &side, &mut |_| {}),
        Err(RepairError::SideFileExists { .. })
    ));
    assert_eq!(
        s.last_index().unwrap(),
        16,
        "nothing cut when the side file cannot be written"
    );
}

fn decode_record_idem(frame_bytes: &[u8]) -> (String, String) {
    let (_, r): (_, swoosh_core::record::WalRecord) =
        frame::open_decode(FrameKind::WalRecord, frame_bytes, WAL_RECORD_BYTES_MAX).unwrap();
    (r.project, r.idem_key)
}

// ---- snapshots -----------------------------------------------------------

fn snapshots_keep_the_newest_k_and_check_on_read(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    let mut infos = vec![];
    for _ in 0..5 {
        fill(&mut w, &mut st, 4, 4);
        infos.push(write_snapshot(w.store_mut(), st.node(), 3).unwrap());
    }
    assert_eq!(w.store().list_snapshots().unwrap(), vec![12, 16, 20]);
    assert_eq!(infos[4].deleted, vec![8]);
    let (hash, snap) = read_snapshot(w.store(), 20).unwrap();
    assert_eq!(hash, infos[4].hash);
    assert_eq!(
        (snap.index, snap.head_record, snap.root_hash),
        (20, st.node().head_record, st.node().root_hash())
    );
    assert_same_node(&snap.state, st.node(), "snapshot state");
    assert!(matches!(
        read_snapshot(w.store(), 7),
        Err(SnapshotError::Missing { index: 7, .. })
    ));

    // A re-sealed snapshot (valid frame hash) whose contents disagree is refused.
    let mut s = w.into_store();
    let mut bad: Snapshot = snap.clone();
    bad.root_hash = swoosh_core::Hash::of_bytes(b"forged");
    let (f, _) = frame::seal(
        FrameKind::Snapshot,
        &swoosh_core::cbor::to_canonical(&bad).unwrap(),
    );
    assert!(matches!(
        decode_snapshot(20, &f),
        Err(SnapshotFault::Header("root_hash"))
    ));
    let mut bad = snap;
    if let Some((_, e)) = bad.state.projects.iter_mut().next() {
        e.state.applied += 1;
    }
    let (f, _) = frame::seal(
        FrameKind::Snapshot,
        &swoosh_core::cbor::to_canonical(&bad).unwrap(),
    );
    assert!(matches!(
        decode_snapshot(20, &f),
        Err(SnapshotFault::ProjectHash { .. })
    ));
    assert!(matches!(
        decode_snapshot(19, &f),
        Err(SnapshotFault::Key { key: 19, index: 20 })
    ));
    s.overwrite_raw(Space::Snapshots, &index_key(20), &f)
        .unwrap();
    let e = read_snapshot(&s, 20).unwrap_err();
    assert!(
        e.to_string().contains("snapshot 20") && e.to_string().contains("recovery skips it"),
        "{e}"
    );
}

fn snapshot_pruning_counts_only_usable_snapshots(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    fn snaps<S: LogStore>(w: &WalWriter<S>) -> Vec<u64> {
        w.store().list_snapshots().unwrap()
    }

    // A damaged snapshot above the one written does not push it out, and is
    // itself left alone.
    fill(&mut w, &mut st, 4, 4);
    w.store_mut()
        .put_snapshot(100, b"not a snapshot".to_vec())
        .unwrap();
    let info = write_snapshot(w.store_mut(), st.node(), 1).unwrap();
    assert_eq!(info.deleted, Vec::<u64>::new());
    assert_eq!(snaps(&w), vec![4, 100]);
    read_snapshot(w.store(), 4).unwrap();

    // A damaged snapshot does not count toward `keep`: with 8 damaged, 4 is
    // the only other usable snapshot, so writing 12 (keep 2) keeps both.
    fill(&mut w, &mut st, 4, 4);
    write_snapshot(w.store_mut(), st.node(), 2).unwrap();
    flip(w.store_mut(), Space::Snapshots, &index_key(8), 40);
    fill(&mut w, &mut st, 4, 4);
    let info = write_snapshot(w.store_mut(), st.node(), 2).unwrap();
    assert_eq!(info.deleted, Vec::<u64>::new());
    assert_eq!(snaps(&w), vec![4, 8, 12, 100]);
    // Once 12 is the other usable one, everything older goes, damaged or not.
    fill(&mut w, &mut st, 4, 4);
    let info = write_snapshot(w.store_mut(), st.node(), 2).unwrap();
    assert_eq!(info.deleted, vec![4, 8]);
    assert_eq!(snaps(&w), vec![12, 16, 100]);

    // A snapshot that does not join the log (a valid frame whose head
    // record is not the record at its index) is not usable either.
    let (_, mut forged) = read_snapshot(w.store(), 16).unwrap();
    forged.index = 18;
    forged.state.index = 18;
    let (f, _) = frame::seal(
        FrameKind::Snapshot,
        &swoosh_core::cbor::to_canonical(&forged).unwrap(),
    );
    fill(&mut w, &mut st, 4, 4);
    w.store_mut().put_snapshot(18, f).unwrap();
    let info = write_snapshot(w.store_mut(), st.node(), 2).unwrap();
    assert_eq!(info.deleted, vec![12]);
    assert_eq!(snaps(&w), vec![16, 18, 20, 100]);
    let rec = recover(w.store(), st.genesis()).unwrap();
    assert_eq!(rec.snapshot, Some(20));
    assert_same_node(&rec.node, st.node(), "recovered after pruning");
}

fn damaged_snapshot_falls_back_to_the_previous_one(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    for _ in 0..3 {
        fill(&mut w, &mut st, 10, 5);
        write_snapshot(w.store_mut(), st.node(), 3).unwrap();
    }
    fill(&mut w, &mut st, 5, 5);
    let mut s = h.crash_and_reopen(w.into_store());
    let rec = recover(&s, st.genesis()).unwrap();
    assert_eq!((rec.snapshot, rec.replayed), (Some(30), 5));
    assert_same_node(&rec.node, st.node(), "newest snapshot");

    flip(&mut s, Space::Snapshots, &index_key(30), 5_000);
    let rec = recover(&s, st.genesis()).unwrap();
    assert_eq!(
        (rec.snapshot, rec.replayed),
        (Some(20), 15),
        "forced snapshot rollback"
    );
    assert_eq!(rec.skipped_snapshots.len(), 1);
    assert_eq!(rec.skipped_snapshots[0].index, 30);
    assert!(matches!(
        rec.skipped_snapshots[0].reason,
        SnapshotFault::Frame(FrameError::HashMismatch { .. } | FrameError::Decompress { .. })
    ));
    assert!(rec.skipped_snapshots[0]
        .to_string()
        .starts_with("snapshot 30 skipped: hash mismatch"));
    assert_same_node(&rec.node, st.node(), "rolled back one snapshot");

    s.overwrite_raw(Space::Snapshots, &index_key(20), b"short")
        .unwrap();
    flip(&mut s, Space::Snapshots, &index_key(10), 1);
    let rec = recover(&s, st.genesis()).unwrap();
    assert_eq!(
        (rec.snapshot, rec.replayed, rec.skipped_snapshots.len()),
        (None, 35, 3),
        "all damaged: replay from genesis"
    );
    assert_same_node(&rec.node, st.node(), "from genesis");

    // verify reports the damaged snapshots without failing.
    let rep = verify(&s, st.genesis(), &VerifyOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(rep.records, 35);
    assert_eq!(
        rep.snapshot_problems
            .iter()
            .map(|p| p.index)
            .collect::<Vec<_>>(),
        [10, 20, 30]
    );
}

fn snapshot_that_does_not_join_the_log_is_skipped(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 10, 10);
    write_snapshot(w.store_mut(), st.node(), 3).unwrap();
    let at10 = st.node().clone();
    fill(&mut w, &mut st, 10, 10);
    write_snapshot(w.store_mut(), st.node(), 3).unwrap();
    let mut s = w.into_store();
    // The log loses its tail (e.g. restored from an older backup): snapshot 20 is beyond it.
    s.truncate_after(15).unwrap();
    let rec = recover(&s, st.genesis()).unwrap();
    assert_eq!((rec.snapshot, rec.node.index), (Some(10), 15));
    assert!(matches!(
        &rec.skipped_snapshots[0].reason,
        SnapshotFault::Wal { index: 20, .. }
    ));
    let mut pure = Stream::resume(LABEL, 2, at10, Verify::Full);
    pure.advance_to(15);
    assert_same_node(&rec.node, pure.node(), "snapshot 10 + replay to 15");
}

// ---- verify and derived-index rebuild -------------------------------------

fn verify_of_a_leader_requires_every_decision(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 12, 4);
    let mut s = w.into_store();
    let mut b = Batch::new();
    for (k, _) in s.scan(Space::Decisions, &[], None, 1000).unwrap() {
        b.delete(Space::Decisions, k);
    }
    s.commit(b).unwrap();
    assert_eq!(s.count(Space::Decisions).unwrap(), 0);
    let opts = VerifyOptions {
        verify: Verify::Trusted,
        ..VerifyOptions::default()
    };
    // (role, missing decisions reported)
    let cases = [
        (ExpectDecisions::Leader, 12),
        (ExpectDecisions::Follower, 0),
        // Without the role, a store holding no decision looks like a
        // follower's.
        (ExpectDecisions::Infer, 0),
    ];
    for (role, missing) in cases {
        let r = verify_expecting(&s, st.genesis(), &opts, role, &mut |_| {}).unwrap();
        assert_eq!(
            r.index_problems_total, missing,
            "{role:?}: {:?}",
            r.index_problems
        );
        assert!(
            r.index_problems.iter().all(|p| p.contains("is not stored")),
            "{role:?}: {:?}",
            r.index_problems
        );
    }
}

/// A decision whose hash matches its record but which another key signed
/// (the content hash covers the record, not the signature) is named by a
/// full verify; a trusted one does not check signatures at all.
fn verify_names_a_decision_not_signed_by_the_genesis_leader(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 6, 3);
    let mut s = w.into_store();
    let keys = swoosh_core::scenario::Keys::from_labels(LABEL, 3);
    // A rebuild signs with the leader's key only.
    let e = rebuild_indexes(&mut s, st.genesis(), Some(&keys.outsider), &mut |_| {}).unwrap_err();
    assert!(matches!(e, RebuildError::NotLeader { .. }), "{e}");
    rebuild_indexes(&mut s, st.genesis(), Some(&keys.leader), &mut |_| {}).unwrap();
    // Re-sign record 4's decision with another key, sealed as a sound frame.
    let r4 = read_record(&s, 4).unwrap().record;
    let Some(DecisionDoc::Signed(sd)) = get_decision(&s, &r4.decision).unwrap() else {
        panic!("a rebuilt decision is signed");
    };
    let forged = DecisionDoc::Signed(swoosh_core::record::SignedDecision::sign(
        sd.record,
        &keys.outsider,
    ));
    let bytes = swoosh_core::cbor::to_canonical(&forged).unwrap();
    s.overwrite_raw(
        Space::Decisions,
        &r4.decision.0,
        &frame::seal(FrameKind::Decision, &bytes).0,
    )
    .unwrap();
    assert_eq!(get_decision(&s, &r4.decision).unwrap(), Some(forged));
    let rep = verify(&s, st.genesis(), &VerifyOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(rep.index_problems_total, 1, "{:?}", rep.index_problems);
    assert!(
        rep.index_problems[0].contains("record 4")
            && rep.index_problems[0].contains("not by the genesis leader"),
        "{:?}",
        rep.index_problems
    );
    let trusted = VerifyOptions {
        verify: Verify::Trusted,
        ..VerifyOptions::default()
    };
    let rep = verify(&s, st.genesis(), &trusted, &mut |_| {}).unwrap();
    assert_eq!(rep.index_problems_total, 0, "{:?}", rep.index_problems);
    rebuild_indexes(&mut s, st.genesis(), Some(&keys.leader), &mut |_| {}).unwrap();
    let rep = verify(&s, st.genesis(), &VerifyOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(rep.index_problems_total, 0, "{:?}", rep.index_problems);
}

/// A reindex run without the leader's key (a follower's directory, or a
/// leader whose key is kept elsewhere) keeps the decisions the store holds
/// signed by the genesis leader, and stores unsigned only those it cannot
/// keep: one signed by another key, one missing. A signed decision that no
/// record of the log holds is removed.
fn reindex_without_the_leader_key_keeps_the_leaders_signatures(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 6, 3);
    let mut s = w.into_store();
    let keys = swoosh_core::scenario::Keys::from_labels(LABEL, 3);
    rebuild_indexes(&mut s, st.genesis(), Some(&keys.leader), &mut |_| {}).unwrap();
    let doc = |s: &_, i: u64| {
        let r = read_record(s, i).unwrap().record;
        get_decision(s, &r.decision).unwrap()
    };
    let Some(DecisionDoc::Signed(sd4)) = doc(&s, 4) else {
        panic!("a rebuilt decision is signed");
    };
    let put = |s: &mut _, d: &DecisionDoc| {
        let bytes = swoosh_core::cbor::to_canonical(d).unwrap();
        LogStore::overwrite_raw(
            s,
            Space::Decisions,
            &d.hash().0,
            &frame::seal(FrameKind::Decision, &bytes).0,
        )
        .unwrap();
    };
    // Record 4's decision signed by another key.
    put(
        &mut s,
        &DecisionDoc::Signed(swoosh_core::record::SignedDecision::sign(
            sd4.record.clone(),
            &keys.outsider,
        )),
    );
    // Record 5's decision missing.
    let r5 = read_record(&s, 5).unwrap().record;
    LogStore::commit(&mut s, {
        let mut b = Batch::new();
        b.delete(Space::Decisions, r5.decision.0.to_vec());
        b
    })
    .unwrap();
    // A decision signed by the leader that no record holds.
    let mut other = sd4.record.clone();
    other.justification.push_str(" (not this log's)");
    let stale = DecisionDoc::Signed(swoosh_core::record::SignedDecision::sign(
        other,
        &keys.leader,
    ));
    put(&mut s, &stale);
    assert!(get_decision(&s, &stale.hash()).unwrap().is_some());

    let r = rebuild_indexes(&mut s, st.genesis(), None, &mut |_| {}).unwrap();
    assert_eq!((r.records, r.decisions), (6, 6));
    assert_eq!(r.decisions_kept_signed, 4, "{r:?}");
    for i in 1..=6 {
        let d = doc(&s, i).expect("every record's decision is stored");
        match (i, d) {
            (4 | 5, DecisionDoc::Unsigned(_)) => {}
            (4 | 5, d) => panic!("record {i}: {d:?}"),
            (_, DecisionDoc::Signed(sd)) => {
                assert_eq!(sd.leader, st.genesis().leader);
                sd.verify().unwrap();
            }
            (_, d) => panic!("record {i} lost its signature: {d:?}"),
        }
    }
    assert_eq!(get_decision(&s, &stale.hash()).unwrap(), None);
    // Nothing to keep with the key at hand: every decision signed again.
    let r = rebuild_indexes(&mut s, st.genesis(), Some(&keys.leader), &mut |_| {}).unwrap();
    assert_eq!((r.decisions, r.decisions_kept_signed), (6, 0));
    assert!((1..=6).all(|i| matches!(doc(&s, i), Some(DecisionDoc::Signed(_)))));
}

fn verify_compares_snapshots_and_indexes_and_reindex_repairs_them(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 12, 6);
    write_snapshot(w.store_mut(), st.node(), 3).unwrap();
    fill(&mut w, &mut st, 6, 6);
    let mut s = w.into_store();
    let rep = verify(&s, st.genesis(), &VerifyOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(
        (rep.records, rep.head_hash, rep.root_hash),
        (18, st.node().head_record, st.node().root_hash())
    );
    assert_eq!(rep.snapshots_ok, vec![12]);
    assert_eq!(rep.index_problems_total, 0, "{:?}", rep.index_problems);

    // Lose one idempotency entry and damage one decision.
    let r3 = read_record(&s, 3).unwrap().record;
    let mut b = Batch::new();
    b.delete(
        Space::Idem,
        swoosh_storage::wal::idem_key(&r3.project, &r3.idem_key).unwrap(),
    );
    s.commit(b).unwrap();
    let r5 = read_record(&s, 5).unwrap().record;
    flip(&mut s, Space::Decisions, &r5.decision.0, 60);
    assert!(matches!(
        get_decision(&s, &r5.decision),
        Err(IndexError::Corrupt { .. })
    ));
    let rep = verify(&s, st.genesis(), &VerifyOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(rep.index_problems_total, 2, "{:?}", rep.index_problems);
    assert!(rep.index_problems[0].contains("record 3"));

    let leader = swoosh_core::scenario::Keys::from_labels(LABEL, 3).leader;
    let mut phases = vec![];
    let rr = rebuild_indexes(&mut s, st.genesis(), Some(&leader), &mut |p| {
        phases.push(p.phase)
    })
    .unwrap();
    assert_eq!((rr.records, rr.idem_entries, rr.decisions), (18, 18, 18));
    assert!(phases.contains(&Phase::Reindex));
    let rep = verify(&s, st.genesis(), &VerifyOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(rep.index_problems_total, 0, "{:?}", rep.index_problems);
    match get_decision(&s, &r5.decision).unwrap() {
        Some(DecisionDoc::Signed(sd)) => sd.verify().unwrap(),
        other => panic!("rebuilt decision should be signed: {other:?}"),
    }
}

/// A WAL cut that keeps the cut records' idempotency keys and decisions
/// leaves an index answering for records the log no longer holds (a node
/// would refuse a retry of an unacknowledged proposal as a conflict with a
/// record that does not exist): `verify` names them, and `cut_after` (what
/// `repair` cuts with) removes them with the records.
fn a_cut_leaves_no_derived_entry_behind(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    let accs = st.take(12);
    w.append_batch(&entries(accs.clone())).unwrap();
    let mut s = w.into_store();
    let opts = VerifyOptions::default();
    assert_eq!(
        verify(&s, st.genesis(), &opts, &mut |_| {})
            .unwrap()
            .index_problems_total,
        0
    );

    s.truncate_after(8).unwrap();
    let rep = verify(&s, st.genesis(), &opts, &mut |_| {}).unwrap();
    assert_eq!(rep.records, 8);
    let all = rep.index_problems.join("\n");
    assert_eq!(
        rep.index_problems_total, 10,
        "4 keys, 4 decisions, both counts: {all}"
    );
    assert!(all.contains("record beyond the log's end (8)"), "{all}");
    assert!(
        all.contains("12 idempotency entries for 8 records"),
        "{all}"
    );
    assert!(all.contains("12 decisions for 8 records"), "{all}");
    assert!(
        all.contains("is for record 9, beyond the log's end"),
        "{all}"
    );

    let cut = cut_after(&mut s, 8).unwrap();
    assert_eq!((cut.snapshots, cut.removed_derived), (vec![], 8));
    let rep = verify(&s, st.genesis(), &opts, &mut |_| {}).unwrap();
    assert_eq!(rep.index_problems_total, 0, "{:?}", rep.index_problems);
    for (i, a) in accs.iter().enumerate() {
        let r = &a.record;
        let kept = lookup_idem(&s, &r.project, &r.idem_key).unwrap();
        assert_eq!(kept.is_some(), i < 8, "record {}", r.index);
        assert_eq!(get_decision(&s, &r.decision).unwrap().is_some(), i < 8);
    }
}

/// The node's start-up audit sees a lost entry far behind the tail (by the
/// counts), an orphan (by the counts), and a damaged or missing entry of a
/// tail record (by name), and a rebuild satisfies it.
fn the_start_audit_sees_lost_orphan_and_damaged_entries(h: &mut impl Harness) {
    let mut st = stream();
    let mut w = writer(h.open(), &st);
    let n = AUDIT_TAIL_RECORDS + 44;
    fill(&mut w, &mut st, n as usize, 64);
    let mut s = w.into_store();
    let a = audit_indexes(&s, n).unwrap();
    assert!(a.is_sound(), "{:?}", a.findings);
    assert_eq!((a.records, a.idem_entries, a.decisions), (n, n, n));
    let leader = swoosh_core::scenario::Keys::from_labels(LABEL, 3).leader;
    let rebuild = |s: &mut _| {
        rebuild_indexes(s, st.genesis(), Some(&leader), &mut |_| {}).unwrap();
        let a = audit_indexes(s, n).unwrap();
        assert!(a.is_sound(), "after a rebuild: {:?}", a.findings);
    };

    // Record 3 is far behind the audited tail: only the count shows it.
    let r3 = read_record(&s, 3).unwrap().record;
    let k3 = swoosh_storage::wal::idem_key(&r3.project, &r3.idem_key).unwrap();
    let v3 = s.get(Space::Idem, &k3).unwrap().unwrap();
    let mut b = Batch::new();
    b.delete(Space::Idem, k3.clone())
        .delete(Space::Decisions, r3.decision.0.to_vec());
    s.commit(b).unwrap();
    let a = audit_indexes(&s, n).unwrap();
    assert_eq!(
        a.findings,
        vec![
            format!(
                "{} idempotency entries for {n} records (one each expected)",
                n - 1
            ),
            format!("{} decisions for {n} records (one each expected)", n - 1),
        ]
    );
    // The full check names both.
    let rep = verify(&s, st.genesis(), &VerifyOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(
        rep.index_problems,
        vec![
            format!(
                "record 3: no idempotency entry for project {:?} key {:?}",
                r3.project, r3.idem_key
            ),
            format!("record 3: its decision {} is not stored", r3.decision),
        ]
    );
    rebuild(&mut s);
    assert_eq!(s.get(Space::Idem, &k3).unwrap(), Some(v3.clone()));

    // An entry no record accounts for (a cut that kept it, a stray write).
    let mut b = Batch::new();
    b.put(Space::Idem, b"orphan".to_vec(), v3);
    s.commit(b).unwrap();
    let a = audit_indexes(&s, n).unwrap();
    assert_eq!(
        a.findings,
        vec![format!(
            "{} idempotency entries for {n} records (one each expected)",
            n + 1
        )]
    );
    rebuild(&mut s);

    // A damaged entry of a tail record is named with its record.
    let last = read_record(&s, n).unwrap().record;
    let kl = swoosh_storage::wal::idem_key(&last.project, &last.idem_key).unwrap();
    flip(&mut s, Space::Idem, &kl, 40);
    let a = audit_indexes(&s, n).unwrap();
    assert_eq!(a.findings.len(), 1, "{:?}", a.findings);
    assert!(
        a.findings[0].starts_with(&format!("record {n}: ")),
        "{:?}",
        a.findings
    );
    rebuild(&mut s);
}

both_backends!(
    the_start_audit_sees_lost_orphan_and_damaged_entries,
    a_cut_leaves_no_derived_entry_behind,
    group_commit_appends_and_reads_back_verified,
    writer_checks_order_chain_and_claimed_hash,
    record_and_batch_limits_are_typed_errors,
    a_split_append_commits_a_batch_over_the_byte_limit_in_parts,
    derived_indexes_answer_lookups,
    writer_reopens_at_the_durable_tail,
    recovery_reproduces_the_pure_reducer,
    store_for_another_genesis_is_refused,
    flipped_byte_is_named_by_index,
    long_replays_recover_and_name_faults_like_short_ones,
    damaged_header_and_torn_frames_are_named,
    a_log_mixing_plain_and_compressed_frames_recovers,
    re_sealed_record_breaks_the_chain,
    repair_cuts_to_the_last_good_record_and_keeps_a_copy,
    snapshots_keep_the_newest_k_and_check_on_read,
    snapshot_pruning_counts_only_usable_snapshots,
    damaged_snapshot_falls_back_to_the_previous_one,
    snapshot_that_does_not_join_the_log_is_skipped,
    verify_compares_snapshots_and_indexes_and_reindex_repairs_them,
    verify_of_a_leader_requires_every_decision,
    verify_names_a_decision_not_signed_by_the_genesis_leader,
    reindex_without_the_leader_key_keeps_the_leaders_signatures,
    group_committer_batches_within_limits_and_returns_tokens,
);

#[test]
fn snapshot_policy_is_due_every_n_records() {
    let p = SnapshotPolicy::default();
    assert_eq!((p.every_records, p.keep), (10_000, 3));
    assert!(!p.due(0, 9_999));
    assert!(p.due(0, 10_000));
    assert!(!p.due(10_000, 19_999));
    assert!(p.due(10_000, 20_001));
    assert!(!SnapshotPolicy {
        every_records: 0,
        keep: 3
    }
    .due(0, u64::MAX));
}

#[test]
fn memory_failed_commit_leaves_the_writer_consistent() {
    let mut st = stream();
    let mut h = common::mem();
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 4, 4);
    let acked = st.node().clone();
    let mut s = w.into_store();
    s.crash_after_commits(0);
    let mut w = writer(s, &st);
    assert!(matches!(
        w.append_batch(&entries(st.take(2))),
        Err(AppendError::Store(StoreError::Crashed { .. }))
    ));
    let s = h.crash_and_reopen(w.into_store());
    let rec = recover(&s, st.genesis()).unwrap();
    assert_same_node(&rec.node, &acked, "only acknowledged batches survive");
    // The client was not acknowledged; the node goes on from the durable state.
    let mut again = Stream::resume(LABEL, 2, rec.node, Verify::Full);
    let mut w = writer(s, &again);
    fill(&mut w, &mut again, 3, 3);
    assert_eq!(w.last_index(), 7);
}

// ---- malformed keys: a stray write under a key that is no index ----------

/// A WAL key that is not an 8-byte index holds no record. The store still
/// opens (so repair can run: it used to refuse, and every command pointed at
/// `wal verify`, which could not open it either), every read that meets the
/// key names it, no commit goes past it, and `repair` removes it after
/// copying it, in the same commit as the cut of records damaged after it.
/// (LMDB only: the in-memory store cannot be given such a key but by hand.)
#[test]
fn lmdb_malformed_wal_keys_are_named_and_repaired() {
    let mut h = common::lmdb();
    let mut st = stream();
    let gh = st.node().genesis_hash;
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 12, 4);
    let mut s = w.into_store();
    // Only a malformed WAL key may be deleted, never a record's.
    let mut b = Batch::new();
    b.delete(Space::Wal, index_key(5).to_vec());
    let e = s.commit(b).unwrap_err();
    assert!(matches!(e, StoreError::WalWrite { .. }), "{e}");
    let tail = [&index_key(12)[..], &[0]].concat();
    let mid = [&index_key(3)[..], &[7, 7]].concat();
    s.overwrite_raw(Space::Wal, &tail, b"t").unwrap();
    s.overwrite_raw(Space::Wal, &mid, b"m").unwrap();
    let mut s = h.crash_and_reopen(s);

    let e = s.last_index().unwrap_err();
    assert!(
        matches!(&e, StoreError::BadIndexKey { key, len: 9, .. } if key == "000000000000000c00"),
        "{e}"
    );
    assert!(e.to_string().contains("swoosh wal repair"), "{e}");
    let e = s.append(vec![(13, b"x".to_vec())]).unwrap_err();
    assert!(matches!(e, StoreError::BadIndexKey { .. }), "{e}");

    flip(&mut s, Space::Wal, &index_key(8), 100);
    let plan = recovery::plan_repair(&s, gh, &mut |_| {}).unwrap();
    assert_eq!(plan.fault.as_ref().and_then(ReadError::index), Some(8));
    assert_eq!(plan.malformed.len(), 2, "{plan:?}");
    let side = h.scratch().join("cut.bin");
    let r = repair(&mut s, gh, &side, &mut |_| {}).unwrap();
    assert_eq!(
        (r.last_good, r.cut_records, r.removed_malformed.len()),
        (7, 5, 2)
    );
    assert_eq!(s.last_index().unwrap(), 7);
    assert_eq!(s.count(Space::Wal).unwrap(), 7);

    let cut = read_cut_file(&side).unwrap();
    let records: Vec<u64> = cut
        .iter()
        .filter(|c| c.malformed_key.is_none())
        .map(|c| c.index)
        .collect();
    assert_eq!(records, (8..=12).collect::<Vec<_>>());
    let mut keys: Vec<(Vec<u8>, Vec<u8>)> = cut
        .iter()
        .filter_map(|c| Some((c.malformed_key.clone()?, c.bytes.clone())))
        .collect();
    keys.sort();
    assert_eq!(keys, [(mid, b"m".to_vec()), (tail, b"t".to_vec())]);

    let rec = recover(&s, st.genesis()).unwrap();
    assert_eq!(rec.node.index, 7);
    let mut pure = stream();
    pure.advance_to(7);
    let mut w = writer(s, &pure);
    fill(&mut w, &mut pure, 2, 2);
    let rec = recover(w.store(), pure.genesis()).unwrap();
    assert_same_node(&rec.node, pure.node(), "continued after the repair");
}

/// A WAL key of `u64::MAX` is damage like a key of the wrong length: taken
/// as an index, `repair`'s copy loop wrapped to index 0 and copied the log
/// into the side file until the disk filled (release) or panicked (debug).
#[test]
fn lmdb_a_wal_key_of_u64_max_is_malformed_and_repair_ends() {
    let mut h = common::lmdb();
    let mut st = stream();
    let gh = st.node().genesis_hash;
    let mut w = writer(h.open(), &st);
    fill(&mut w, &mut st, 6, 3);
    let mut s = w.into_store();
    s.overwrite_raw(Space::Wal, &index_key(u64::MAX), b"x")
        .unwrap();
    let mut s = h.crash_and_reopen(s);
    let e = s.last_index().unwrap_err();
    assert!(matches!(&e, StoreError::BadIndexKey { len: 8, .. }), "{e}");
    let side = h.scratch().join("cut.bin");
    let r = repair(&mut s, gh, &side, &mut |_| {}).unwrap();
    assert_eq!(
        (r.last_good, r.cut_records, r.removed_malformed.len()),
        (6, 0, 1)
    );
    assert_eq!(s.last_index().unwrap(), 6);
    assert_eq!(recover(&s, st.genesis()).unwrap().node.index, 6);
}

// ---- model-based: the pure reducer vs WAL + recovery ---------------------

#[derive(Clone, Copy, Debug)]
enum Then {
    Nothing,
    Snapshot,
    CrashAndRecover,
}

fn then() -> impl Strategy<Value = Then> {
    prop_oneof![3 => Just(Then::Nothing), 1 => Just(Then::Snapshot), 1 => Just(Then::CrashAndRecover)]
}

/// Feed one stream to the pure reducer (the `Stream`'s own node) and to WAL +
/// snapshots + crash + recovery, comparing hashes after every batch.
fn model_run(h: &mut impl Harness, steps: Vec<(usize, Then)>) {
    let mut st = Stream::new("model", 3, Verify::Trusted);
    let mut w = writer(h.open(), &st);
    for (n, (batch, then)) in steps.into_iter().enumerate() {
        fill(&mut w, &mut st, batch, batch);
        match then {
            Then::Nothing => {}
            Then::Snapshot => {
                write_snapshot(w.store_mut(), st.node(), 2).unwrap();
            }
            Then::CrashAndRecover => {
                let s = h.crash_and_reopen(w.into_store());
                w = writer(s, &st);
            }
        }
        let rec = recover(w.store(), st.genesis()).unwrap();
        assert_eq!(
            rec.node.root_hash(),
            st.node().root_hash(),
            "step {n}: root hash"
        );
        assert_eq!(
            rec.node.head_record,
            st.node().head_record,
            "step {n}: chain head"
        );
    }
    let rec = recover_with(
        w.store(),
        st.genesis(),
        &RecoverOptions {
            verify: Verify::Full,
            use_snapshots: false,
        },
        &mut |_| {},
    )
    .unwrap();
    assert_same_node(&rec.node, st.node(), "final full replay");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn lmdb_wal_and_recovery_match_the_pure_reducer(steps in proptest::collection::vec((1usize..24, then()), 1..10)) {
        model_run(&mut common::lmdb(), steps);
    }

    #[test]
    fn memory_wal_and_recovery_match_the_pure_reducer(steps in proptest::collection::vec((1usize..24, then()), 1..10)) {
        model_run(&mut common::mem(), steps);
    }
}

fn group_committer_batches_within_limits_and_returns_tokens(h: &mut impl Harness) {
    let mut st = stream();
    let limits = BatchLimits {
        wal_batch_records_max: 3,
        wal_batch_bytes_max: 1 << 20,
    };
    let mut w = WalWriter::open(h.open(), st.node().genesis_hash, limits).unwrap();
    let mut gc: GroupCommitter<usize> = GroupCommitter::new(limits);
    let mut replies = vec![];
    let mut commits = 0;
    for (i, a) in st.take(8).into_iter().enumerate() {
        let mut e = Entry::from_accepted(a).encode().unwrap();
        let mut token = i;
        loop {
            match gc.push(e, token) {
                Ok(()) => break,
                Err((back, t)) => {
                    let (r, tokens) = gc.commit(&mut w);
                    assert_eq!(r.unwrap().records, tokens.len());
                    replies.extend(tokens);
                    commits += 1;
                    (e, token) = (back, t);
                }
            }
        }
        assert!(gc.len() <= 3);
    }
    let (r, tokens) = gc.commit(&mut w);
    r.unwrap();
    replies.extend(tokens);
    commits += 1;
    assert_eq!(
        replies,
        (0..8).collect::<Vec<_>>(),
        "every token answered once, in order"
    );
    assert_eq!(commits, 3, "8 records at 3 per commit");
    assert!(gc.is_empty() && gc.bytes() == 0);
    assert_eq!(
        recover(w.store(), st.genesis()).unwrap().node.head_record,
        st.node().head_record
    );
}

/// A caller that already encoded the record and hashed its proposal (a
/// follower) gets the same frames as a fresh encoding; a payload that is not
/// the record's is refused by the hash check, not written.
#[test]
fn encode_with_a_known_encoding_matches_encode() {
    let mut st = stream();
    for acc in st.take(12) {
        let rec = acc.record.clone();
        let mut e = Entry::record(rec.clone());
        e.record_hash = Some(acc.record_hash);
        let bytes = swoosh_core::cbor::to_canonical(&rec).unwrap();
        let ch = rec.proposal().content_hash().unwrap();
        assert_eq!(
            e.encode_with(bytes.clone(), ch).unwrap(),
            e.encode().unwrap()
        );
        let mut other = bytes;
        other.push(0);
        assert!(matches!(
            e.encode_with(other, ch),
            Err(AppendError::HashMismatch { .. })
        ));
    }
}

/// The leader's path (the node's WAL writer, `bench replication`): signing
/// and framing from the reducer's bytes gives exactly the entry, frames and
/// signature of a fresh signing and encoding; without the bytes it encodes
/// afresh to the same; record bytes that are not the record's are refused
/// by the hash check, never written.
#[test]
fn a_leader_entry_frames_what_a_fresh_signing_would() {
    let mut st = stream();
    let leader = swoosh_core::scenario::Keys::from_labels(LABEL, 3).leader;
    for acc in st.take(12) {
        assert!(acc.record_bytes.is_some() && acc.decision_bytes.is_some());
        let signed = Entry::from_accepted_signed(acc.clone(), &leader);
        let fresh = signed.encode().unwrap();
        let mut le = LeaderEntry::from_accepted(acc.clone());
        le.sign_decision(&leader);
        assert_eq!(le.entry(), &signed);
        assert_eq!(le.encode().unwrap(), fresh);

        let mut bare = acc.clone();
        bare.record_bytes = None;
        bare.decision_bytes = None;
        let mut le = LeaderEntry::from_accepted(bare);
        le.sign_decision(&leader);
        assert_eq!(le.encode().unwrap(), fresh);

        let mut bad = acc.clone();
        bad.record_bytes.as_mut().unwrap().push(0);
        let mut le = LeaderEntry::from_accepted(bad);
        le.sign_decision(&leader);
        assert!(matches!(le.encode(), Err(AppendError::HashMismatch { .. })));
    }
}

/// A caller that also hashed the encoding (a follower checked it against the
/// leader's signed list) gets the same frames without a second hash; a hash
/// that is not the payload's is written as given, and the first read of that
/// record names it corrupt: the broken contract is loud, never accepted.
#[test]
fn encode_with_a_known_hash_matches_encode_and_a_wrong_one_is_caught_on_read() {
    let mut st = stream();
    let accs = st.take(6);
    let mut encoded = vec![];
    for acc in &accs {
        let rec = acc.record.clone();
        let mut e = Entry::record(rec.clone());
        e.record_hash = Some(acc.record_hash);
        let bytes = swoosh_core::cbor::to_canonical(&rec).unwrap();
        let ch = rec.proposal().content_hash().unwrap();
        let enc = e
            .encode_with_hash(bytes.clone(), acc.record_hash, ch)
            .unwrap();
        assert_eq!(enc, e.encode().unwrap());
        if rec.index == 6 {
            // The claimed hash stays the record's; only the bytes differ.
            let mut other = bytes;
            let last = other.len() - 1;
            other[last] ^= 1;
            encoded.push(e.encode_with_hash(other, acc.record_hash, ch).unwrap());
        } else {
            encoded.push(enc);
        }
    }
    let mut w = writer(MemStore::new("known-hash", Durability::Sync), &st);
    w.append_encoded(encoded).unwrap();
    let s = w.into_store();
    assert_eq!(read_record(&s, 5).unwrap().hash, accs[4].record_hash);
    assert!(
        matches!(read_record(&s, 6), Err(ReadError::Corrupt { index: 6, .. })),
        "{:?}",
        read_record(&s, 6)
    );
}
