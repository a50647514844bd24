//! Unit tests of the replication and council state machines, driven by hand:
//! each test is the message sequence it names.

use super::wire::*;
use super::*;
use swoosh_core::cbor::to_canonical;
use swoosh_core::guards::Verify;
use swoosh_core::hash::Hash;
use swoosh_core::record::WalRecord;
use swoosh_core::reducer::{step, Ctx, Outcome};
use swoosh_core::scenario::{genesis, run_happy_path, Driver, Keys, Next};
use swoosh_core::sig::{self, SignerId};
use swoosh_core::state::NodeState;

const ORIGIN_MS: u64 = 1_767_225_600_000;

struct Cluster {
    keys: Keys,
    genesis: swoosh_core::Genesis,
    /// The leader's state after all `records`.
    node: NodeState,
    records: Vec<WalRecord>,
}

/// A leader log produced by the scenario driver: `n` records over two projects.
fn cluster(n: usize) -> Cluster {
    let keys = Keys::from_labels("net-proto", 3);
    let g = genesis(&keys, "net-proto", ORIGIN_MS);
    let mut node = NodeState::new(g.clone()).unwrap();
    let mut records = vec![];
    {
        let driver = Driver::new(&keys, 10);
        let projects = ["default".to_string(), "atlas".to_string()];
        run_happy_path(&mut node, &driver, &projects, ORIGIN_MS + 1, n * 2, |s| {
            if let Outcome::Accepted(a) = &s.step.outcome {
                records.push(a.record.clone());
            }
        });
    }
    assert!(
        records.len() >= n,
        "driver produced {} records",
        records.len()
    );
    records.truncate(n);
    let mut replay = NodeState::new(g.clone()).unwrap();
    for r in &records {
        swoosh_core::reducer::apply_record(&mut replay, r, Verify::Trusted).unwrap();
    }
    Cluster {
        keys,
        genesis: g,
        node: replay,
        records,
    }
}

impl Cluster {
    fn fresh(&self) -> NodeState {
        NodeState::new(self.genesis.clone()).unwrap()
    }
    fn follower(&self) -> ReplFollower {
        let id = SignerId::from_signing_key(&sig::key_from_label("net-proto/follower-1"));
        ReplFollower::new(FollowerConfig::default(), id, self.fresh())
    }
    fn leader(&self, cfg: LeaderConfig) -> ReplLeader {
        let gh = self.genesis.hash().unwrap();
        ReplLeader::new(cfg, self.keys.leader.clone(), &self.genesis, 0, gh).unwrap()
    }
    /// A leader whose log ends where the cluster's records do.
    fn leader_at_head(&self, cfg: LeaderConfig) -> ReplLeader {
        ReplLeader::new(
            cfg,
            self.keys.leader.clone(),
            &self.genesis,
            self.node.index,
            self.node.head_record,
        )
        .unwrap()
    }
    /// All records published through a leader with `cfg`, flushed at the end.
    fn batches(&self, cfg: LeaderConfig) -> Vec<WalBatch> {
        let mut l = self.leader(cfg);
        let mut out = vec![];
        for r in &self.records {
            out.extend(l.on_committed(r).unwrap());
        }
        out.extend(l.flush());
        out.into_iter()
            .map(|LeaderEffect::Publish(g)| match g {
                Gossip::Batch(b) => b,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }
}

fn small_batches() -> LeaderConfig {
    LeaderConfig {
        batch_records_max: 4,
        ..LeaderConfig::default()
    }
}

/// Small batches and 4 KiB snapshot chunks, so a snapshot spans several.
fn chunked() -> LeaderConfig {
    LeaderConfig {
        snapshot_chunk_bytes_max: 4_096,
        ..small_batches()
    }
}

/// An in-memory leader log: records from `first`, optionally a snapshot.
struct MemLog {
    records: Vec<WalRecord>,
    first: u64,
    snapshot: Option<(u64, Hash, Hash, Vec<u8>)>,
    /// Older snapshots still served (pinned by a transfer in progress).
    older: Vec<(u64, Hash, Hash, Vec<u8>)>,
}

impl MemLog {
    fn full(c: &Cluster) -> MemLog {
        MemLog {
            records: c.records.clone(),
            first: 1,
            snapshot: None,
            older: vec![],
        }
    }
    /// Snapshot after `at` and keep only the records after it.
    fn truncated(c: &Cluster, at: u64) -> MemLog {
        let mut n = c.fresh();
        for r in &c.records[..at as usize] {
            swoosh_core::reducer::apply_record(&mut n, r, Verify::Trusted).unwrap();
        }
        let bytes = to_canonical(&n).unwrap();
        MemLog {
            records: c.records[at as usize..].to_vec(),
            first: at + 1,
            snapshot: Some((at, n.head_record, n.root_hash(), bytes)),
            older: vec![],
        }
    }
}

impl LeaderLog for MemLog {
    fn first_index(&self) -> u64 {
        self.first
    }
    fn last_index(&self) -> u64 {
        self.first + self.records.len() as u64 - 1
    }
    fn record(&self, index: u64) -> Option<WalRecord> {
        index
            .checked_sub(self.first)
            .and_then(|i| self.records.get(i as usize).cloned())
    }
    fn snapshot(&self) -> Option<SnapshotView<'_>> {
        self.snapshot.as_ref().map(|(i, h, r, b)| SnapshotView {
            index: *i,
            head_record: *h,
            root_hash: *r,
            bytes: b,
        })
    }
    fn snapshot_at(&self, index: u64) -> Option<SnapshotView<'_>> {
        self.snapshot
            .iter()
            .chain(&self.older)
            .find(|s| s.0 == index)
            .map(|(i, h, r, b)| SnapshotView {
                index: *i,
                head_record: *h,
                root_hash: *r,
                bytes: b,
            })
    }
}

fn applied(effects: &[FollowerEffect]) -> usize {
    effects
        .iter()
        .map(|e| match e {
            FollowerEffect::Applied(r) => r.len(),
            _ => 0,
        })
        .sum()
}

fn sends(effects: &[FollowerEffect]) -> Vec<Request> {
    effects
        .iter()
        .filter_map(|e| match e {
            FollowerEffect::Send(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn refused(effects: &[FollowerEffect]) -> Vec<&'static str> {
    effects
        .iter()
        .filter_map(|e| match e {
            FollowerEffect::Refused(r) => Some(r.kind()),
            _ => None,
        })
        .collect()
}

/// Run request/response rounds between a follower and a leader until the
/// follower asks for nothing more. Returns the number of rounds.
fn serve(
    f: &mut ReplFollower,
    l: &mut ReplLeader,
    log: &MemLog,
    mut pending: Vec<Request>,
) -> usize {
    let mut rounds = 0;
    while let Some(req) = pending.pop() {
        rounds += 1;
        assert!(rounds < 10_000, "catch-up does not terminate");
        let resp = l.on_request(&req, log);
        let eff = f.on_response(&resp, 0);
        pending.extend(sends(&eff));
    }
    rounds
}

#[test]
fn steady_tailing_applies_every_batch_and_ends_on_the_leader_hash() {
    let c = cluster(40);
    let batches = c.batches(small_batches());
    assert_eq!(batches.len(), 10);
    let mut f = c.follower();
    for b in &batches {
        let eff = f.on_gossip(&Gossip::Batch(b.clone()), 0);
        assert_eq!(applied(&eff), b.records.len());
        assert!(sends(&eff).is_empty(), "no gap, no request");
    }
    assert_eq!(f.applied_index(), 40);
    assert_eq!(f.node().root_hash(), c.node.root_hash());
    assert_eq!(f.node().head_record, c.node.head_record);
    assert_eq!(f.lag(), 0);
    assert_eq!(f.status().lag_records, 0);
}

/// The follower hands its WAL each record's canonical encoding, its hash and
/// its proposal's content hash, computed once while verifying and applying;
/// the leader's hashed entry point (frames it already holds) publishes the
/// same batches as re-encoding every record.
#[test]
fn applied_records_carry_their_encoding_and_hashed_publishing_matches() {
    let c = cluster(24);
    let mut hashed = c.leader(small_batches());
    let mut by_hash = vec![];
    for r in &c.records {
        let bytes = to_canonical(r).unwrap();
        // A frame length bounds the encoding from above, as the p2p leader passes it.
        by_hash.extend(
            hashed
                .on_committed_hashed(r, Hash::of_bytes(&bytes), bytes.len() + 16)
                .unwrap(),
        );
    }
    by_hash.extend(hashed.flush());
    let by_hash: Vec<WalBatch> = by_hash
        .into_iter()
        .map(|LeaderEffect::Publish(g)| match g {
            Gossip::Batch(b) => b,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let batches = c.batches(small_batches());
    assert_eq!(by_hash, batches);
    let mut f = c.follower();
    let mut seen = 0;
    for b in &batches {
        for e in f.on_gossip(&Gossip::Batch(b.clone()), 0) {
            if let FollowerEffect::Applied(recs) = e {
                for a in recs {
                    assert_eq!(a.bytes, to_canonical(&a.record).unwrap());
                    assert_eq!(a.hash, Hash::of_bytes(&a.bytes));
                    assert_eq!(a.hash, a.record.hash());
                    assert_eq!(a.content_hash, a.record.proposal().content_hash().unwrap());
                    seen += 1;
                }
            }
        }
    }
    assert_eq!(seen, 24);
    assert_eq!(f.node().root_hash(), c.node.root_hash());
}

#[test]
fn batches_are_bounded_by_count_and_bytes_and_fit_a_gossip_message() {
    let c = cluster(60);
    for b in c.batches(LeaderConfig::default()) {
        assert!(b.records.len() <= BATCH_RECORDS_MAX);
        let enc = encode_gossip(&Gossip::Batch(b.clone())).unwrap();
        assert!(enc.len() < GOSSIP_PAYLOAD_BYTES_MAX, "{} bytes", enc.len());
        assert_eq!(decode_gossip(&enc).unwrap(), Gossip::Batch(b));
    }
    let cfg = LeaderConfig {
        batch_bytes_max: 6_000,
        ..LeaderConfig::default()
    };
    let batches = c.batches(cfg);
    assert!(batches.len() > 1);
    let mut next = 1;
    for b in &batches {
        assert_eq!(b.header.first_index, next);
        next = b.header.last_index + 1;
        let bytes: usize = b
            .records
            .iter()
            .map(|r| to_canonical(r).unwrap().len())
            .sum();
        assert!(bytes <= 6_000 || b.records.len() == 1, "{bytes} bytes");
    }
    assert_eq!(next, 61);
}

#[test]
fn a_gap_is_buffered_requested_and_filled() {
    let c = cluster(24);
    let batches = c.batches(small_batches());
    let log = MemLog::full(&c);
    let mut l = c.leader(small_batches());
    let mut f = c.follower();
    f.on_gossip(&Gossip::Batch(batches[0].clone()), 0);
    // batches[1] and [2] are lost; [3] arrives.
    let eff = f.on_gossip(&Gossip::Batch(batches[3].clone()), 10);
    assert_eq!(applied(&eff), 0);
    assert_eq!(f.pending_batches(), 1);
    assert_eq!(sends(&eff), vec![Request::Range { from: 5, to: 12 }]);
    let resp = l.on_request(&Request::Range { from: 5, to: 12 }, &log);
    let eff = f.on_response(&resp, 20);
    assert_eq!(applied(&eff), 12, "the gap and the buffered batch");
    assert_eq!(f.pending_batches(), 0);
    assert_eq!(f.applied_index(), 16);
    for b in &batches[4..] {
        f.on_gossip(&Gossip::Batch(b.clone()), 30);
    }
    assert_eq!(f.node().root_hash(), c.node.root_hash());
}

#[test]
fn a_missed_tail_is_noticed_from_the_head_and_fetched() {
    let c = cluster(12);
    let log = MemLog::full(&c);
    let mut l = c.leader(small_batches());
    for r in &c.records {
        l.on_committed(r).unwrap(); // every batch is lost
    }
    l.flush();
    let mut f = c.follower();
    let eff = f.on_gossip(&l.head(1), 0);
    assert_eq!(sends(&eff), vec![Request::Range { from: 1, to: 12 }]);
    serve(&mut f, &mut l, &log, sends(&eff));
    assert_eq!(f.applied_index(), 12);
    assert_eq!(f.node().root_hash(), c.node.root_hash());
}

#[test]
fn duplicates_are_dropped_and_reordered_batches_converge() {
    let c = cluster(32);
    let batches = c.batches(small_batches());
    let log = MemLog::full(&c);
    let mut l = c.leader(small_batches());
    let mut f = c.follower();
    let mut reqs = vec![];
    for b in batches.iter().rev() {
        let eff = f.on_gossip(&Gossip::Batch(b.clone()), 0);
        reqs.extend(sends(&eff));
    }
    // The first batch arrived last and filled the gap from the buffer.
    assert_eq!(f.applied_index(), 32);
    assert_eq!(
        reqs.len(),
        1,
        "one request while the gap was open: {reqs:?}"
    );
    for b in &batches {
        let eff = f.on_gossip(&Gossip::Batch(b.clone()), 1);
        assert_eq!(applied(&eff), 0);
    }
    assert!(f.stats().duplicates >= batches.len() as u64);
    // A late range response for what is already applied changes nothing.
    let resp = l.on_request(&Request::Range { from: 1, to: 8 }, &log);
    assert_eq!(applied(&f.on_response(&resp, 2)), 0);
    assert_eq!(f.node().root_hash(), c.node.root_hash());
}

#[test]
fn the_out_of_order_buffer_is_bounded() {
    let c = cluster(40);
    let batches = c.batches(small_batches());
    let id = SignerId::from_signing_key(&sig::key_from_label("f"));
    let cfg = FollowerConfig {
        pending_batches_max: 3,
        ..FollowerConfig::default()
    };
    let mut f = ReplFollower::new(cfg, id, c.fresh());
    for b in &batches[1..] {
        f.on_gossip(&Gossip::Batch(b.clone()), 0);
    }
    assert_eq!(f.pending_batches(), 3);
    assert_eq!(f.stats().buffer_full_drops, batches.len() as u64 - 4);
}

#[test]
fn a_forged_batch_signature_is_refused() {
    let c = cluster(8);
    let mut b = c.batches(small_batches())[0].clone();
    b.signature.0[7] ^= 0x40;
    let mut f = c.follower();
    let eff = f.on_gossip(&Gossip::Batch(b), 0);
    assert_eq!(refused(&eff), vec!["bad_signature"]);
    assert_eq!(f.applied_index(), 0);
    assert!(
        f.halted().is_none(),
        "a forgery is refused, not a divergence"
    );
}

#[test]
fn a_batch_re_signed_by_a_non_leader_is_refused() {
    let c = cluster(8);
    let b = c.batches(small_batches())[0].clone();
    let mut f = c.follower();
    // Names itself as the signer.
    let mut h = b.header.clone();
    h.leader = SignerId::from_signing_key(&c.keys.outsider);
    let forged = WalBatch {
        signature: sig::sign(WAL_BATCH_DOMAIN, &h, &c.keys.outsider).unwrap(),
        header: h,
        records: b.records.clone(),
    };
    assert_eq!(
        refused(&f.on_gossip(&Gossip::Batch(forged), 0)),
        vec!["not_leader"]
    );
    // Keeps the leader's name but signs with another rostered key.
    let forged = WalBatch {
        signature: sig::sign(WAL_BATCH_DOMAIN, &b.header, &c.keys.admin).unwrap(),
        header: b.header.clone(),
        records: b.records.clone(),
    };
    assert_eq!(
        refused(&f.on_gossip(&Gossip::Batch(forged), 0)),
        vec!["bad_signature"]
    );
    // A signed head from a non-leader is refused too.
    let l = c.leader(small_batches());
    let Gossip::Head(mut head) = l.head(1) else {
        unreachable!()
    };
    head.body.last_index = 99;
    head.signature = sig::sign(WAL_HEAD_DOMAIN, &head.body, &c.keys.worker).unwrap();
    assert_eq!(
        refused(&f.on_gossip(&Gossip::Head(head), 0)),
        vec!["bad_signature"]
    );
    assert_eq!(f.applied_index(), 0);
    assert_eq!(f.lag(), 0);
}

#[test]
fn a_record_swapped_under_a_signed_header_is_refused() {
    let c = cluster(8);
    let batches = c.batches(small_batches());
    let mut b = batches[0].clone();
    b.records[1].timestamp_ms += 1;
    let mut f = c.follower();
    assert_eq!(
        refused(&f.on_gossip(&Gossip::Batch(b), 0)),
        vec!["record_hash"]
    );
    assert_eq!(f.applied_index(), 0);
}

#[test]
fn a_divergent_record_signed_by_the_leader_halts_the_follower() {
    let c = cluster(8);
    let mut recs = c.records[..3].to_vec();
    // The leader's log claims a post hash the reducer does not compute.
    recs[2].state_post_hash = Hash::of_bytes(b"fork");
    let hashes: Vec<Hash> = recs.iter().map(WalRecord::hash).collect();
    let header = BatchHeader {
        cluster_id: c.genesis.cluster_id.clone(),
        genesis_hash: c.genesis.hash().unwrap(),
        leader: c.genesis.leader.clone(),
        first_index: 1,
        last_index: 3,
        prev_hash: c.genesis.hash().unwrap(),
        record_hashes: hashes,
    };
    let b = WalBatch {
        signature: sig::sign(WAL_BATCH_DOMAIN, &header, &c.keys.leader).unwrap(),
        header,
        records: recs,
    };
    let mut f = c.follower();
    let eff = f.on_gossip(&Gossip::Batch(b), 0);
    assert_eq!(
        applied(&eff),
        2,
        "records before the divergence are applied"
    );
    let halted: Vec<_> = eff
        .iter()
        .filter_map(|e| match e {
            FollowerEffect::Halted(d) => Some(d.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(halted.len(), 1);
    assert_eq!(halted[0].index, 3);
    assert!(
        halted[0].reason.contains("divergence"),
        "{}",
        halted[0].reason
    );
    assert_eq!(f.applied_index(), 2);
    // Nothing more is applied, not even valid batches.
    for b in c.batches(small_batches()) {
        assert!(f.on_gossip(&Gossip::Batch(b), 1).is_empty());
    }
    assert!(f.tick(10_000).is_empty());
    assert!(f.status().halted);
}

#[test]
fn a_head_naming_another_hash_at_our_index_halts_the_follower() {
    let c = cluster(8);
    let batches = c.batches(small_batches());
    let mut f = c.follower();
    f.on_gossip(&Gossip::Batch(batches[0].clone()), 0);
    let body = HeadBody {
        cluster_id: c.genesis.cluster_id.clone(),
        genesis_hash: c.genesis.hash().unwrap(),
        leader: c.genesis.leader.clone(),
        last_index: 4,
        last_hash: Hash::of_bytes(b"other history"),
        log_first_index: 1,
    };
    let head = SignedHead {
        signature: sig::sign(WAL_HEAD_DOMAIN, &body, &c.keys.leader).unwrap(),
        body,
    };
    let eff = f.on_gossip(&Gossip::Head(head), 0);
    assert!(matches!(eff.as_slice(), [FollowerEffect::Halted(d)] if d.index == 4));
}

#[test]
fn a_follower_behind_a_truncated_log_catches_up_from_a_snapshot_in_chunks() {
    let c = cluster(40);
    let log = MemLog::truncated(&c, 30);
    let mut l = c.leader_at_head(chunked());
    let mut f = c.follower();
    let eff = f.on_gossip(&l.head(log.first_index()), 0);
    assert_eq!(sends(&eff), vec![Request::Range { from: 1, to: 40 }]);
    let offer = l.on_request(&sends(&eff)[0], &log);
    let Response::SnapshotOffer(m) = &offer else {
        panic!("expected a snapshot offer, got {offer:?}")
    };
    assert_eq!(m.body.index, 30);
    let total = m.body.total_bytes;
    assert!(total > 3 * 4_096, "the snapshot spans several chunks");
    let eff = f.on_response(&offer, 1);
    assert_eq!(
        sends(&eff),
        vec![Request::Snapshot {
            index: 30,
            offset: 0
        }]
    );
    // First chunk arrives; the second is lost; the timeout asks again at
    // the same offset (resumable).
    let chunk0 = l.on_request(&sends(&eff)[0], &log);
    let eff = f.on_response(&chunk0, 2);
    assert_eq!(
        sends(&eff),
        vec![Request::Snapshot {
            index: 30,
            offset: 4_096
        }]
    );
    assert!(f.tick(100).is_empty(), "not timed out yet");
    let eff = f.tick(2 + follower::REQUEST_TIMEOUT_MS);
    assert_eq!(
        sends(&eff),
        vec![Request::Snapshot {
            index: 30,
            offset: 4_096
        }]
    );
    // A duplicated first chunk is ignored.
    assert!(sends(&f.on_response(&chunk0, 3)).is_empty());
    serve(&mut f, &mut l, &log, sends(&eff));
    assert_eq!(f.stats().snapshots_installed, 1);
    assert_eq!(f.applied_index(), 40);
    assert_eq!(f.node().root_hash(), c.node.root_hash());
    assert_eq!(f.node(), &c.node);
}

/// A newer snapshot appearing mid-transfer does not restart it while the
/// leader still serves the one being fetched; only a snapshot no longer
/// served is answered with an offer of the newest.
#[test]
fn a_transfer_in_progress_survives_a_newer_snapshot() {
    let c = cluster(40);
    let log = MemLog::truncated(&c, 30);
    let mut l = c.leader_at_head(chunked());
    let mut f = c.follower();
    let eff = f.on_gossip(&l.head(log.first_index()), 0);
    let offer = l.on_request(&sends(&eff)[0], &log);
    let eff = f.on_response(&offer, 1);
    let chunk0 = l.on_request(&sends(&eff)[0], &log);
    let eff = f.on_response(&chunk0, 2);
    assert_eq!(
        sends(&eff),
        vec![Request::Snapshot {
            index: 30,
            offset: 4_096
        }]
    );

    // Snapshot 35 is now the newest; 30 is still served (pinned).
    let mut pinned = MemLog::truncated(&c, 30);
    let at30 = pinned.snapshot.take().unwrap();
    pinned.snapshot = MemLog::truncated(&c, 35).snapshot;
    pinned.older.push(at30);
    // Without the pin the next chunk request would be answered with 35.
    let mut gone = MemLog::truncated(&c, 35);
    gone.first = 31;
    gone.records = c.records[30..].to_vec();
    match l.on_request(&sends(&eff)[0], &gone) {
        Response::SnapshotOffer(m) => assert_eq!(m.body.index, 35),
        other => panic!("a chunk of a snapshot no longer served: {other:?}"),
    }
    let offers = l.stats().snapshot_offers;
    serve(&mut f, &mut l, &pinned, sends(&eff));
    assert_eq!(
        l.stats().snapshot_offers,
        offers,
        "no new offer: no restart"
    );
    assert_eq!(f.stats().snapshots_installed, 1);
    assert_eq!(f.applied_index(), 40);
    assert_eq!(f.node(), &c.node);
}

#[test]
fn a_snapshot_that_does_not_match_its_manifest_is_refused() {
    let c = cluster(20);
    let mut log = MemLog::truncated(&c, 10);
    let mut l = c.leader(small_batches());
    let mut f = c.follower();
    let offer = l.on_request(&Request::Range { from: 1, to: 20 }, &log);
    f.on_response(&offer, 0);
    // The bytes change after the manifest was signed (storage corruption).
    let snap = log.snapshot.as_mut().unwrap();
    let n = snap.3.len();
    snap.3[n / 2] ^= 0xff;
    let mut eff = vec![];
    let mut req = Request::Snapshot {
        index: 10,
        offset: 0,
    };
    for _ in 0..1000 {
        let resp = l.on_request(&req, &log);
        eff = f.on_response(&resp, 1);
        match sends(&eff).pop() {
            Some(r @ Request::Snapshot { .. }) => req = r,
            _ => break,
        }
    }
    assert_eq!(refused(&eff), vec!["snapshot"]);
    assert_eq!(f.applied_index(), 0);
    assert!(f.halted().is_none());
}

/// A snapshot whose bytes are the ones the leader signed, but which this
/// follower cannot accept as the state the manifest names, is a divergence:
/// the follower halts (before, it refused it, asked again and was offered
/// the same snapshot for ever).
#[test]
fn a_signed_snapshot_the_follower_computes_differently_halts_it() {
    let c = cluster(20);
    let mut log = MemLog::truncated(&c, 10);
    // Damaged before the leader signs its manifest: the content hash
    // matches, the state inside does not.
    let snap = log.snapshot.as_mut().unwrap();
    let n = snap.3.len();
    snap.3[n / 2] ^= 0xff;
    let mut l = c.leader(small_batches());
    let mut f = c.follower();
    let offer = l.on_request(&Request::Range { from: 1, to: 20 }, &log);
    let mut eff = f.on_response(&offer, 0);
    for _ in 0..1000 {
        let Some(req @ Request::Snapshot { .. }) = sends(&eff).pop() else {
            break;
        };
        let resp = l.on_request(&req, &log);
        eff = f.on_response(&resp, 1);
    }
    let d = f.halted().expect("halted");
    assert_eq!(d.index, 10);
    assert!(d.reason.contains("signed snapshot at 10"), "{}", d.reason);
    assert!(matches!(eff.last(), Some(FollowerEffect::Halted(_))));
    assert_eq!(f.applied_index(), 0);
    assert!(sends(&f.tick(10 * follower::REQUEST_TIMEOUT_MS)).is_empty());
}

/// A follower holding records the leader's log no longer has (the leader's
/// tail was cut, or its store restored from an older copy) is told so at
/// its next status report and halts; before, it counted the leader as
/// behind and served its history as healthy until the leader's new records
/// reached its index. A follower on the leader's log is acknowledged.
#[test]
fn a_follower_off_the_leaders_log_is_told_to_halt() {
    let c = cluster(20);
    let log = MemLog::full(&c);
    let mut l = c.leader_at_head(small_batches());
    let mut f = c.follower();
    let eff = f.on_gossip(&l.head(1), 0);
    serve(&mut f, &mut l, &log, sends(&eff));
    assert_eq!(f.applied_index(), 20);
    let id = f.status().follower;
    assert!(matches!(
        l.on_status_report(id.clone(), &f.status_report(), &log),
        Response::StatusAck { .. }
    ));

    // The leader restarts on a log that ends at 12.
    let mut short = MemLog::full(&c);
    short.records.truncate(12);
    let mut l = ReplLeader::new(
        small_batches(),
        c.keys.leader.clone(),
        &c.genesis,
        12,
        c.records[11].hash(),
    )
    .unwrap();
    let resp = l.on_status_report(id.clone(), &f.status_report(), &short);
    let Response::Diverged { index, reason } = &resp else {
        panic!("expected Diverged, got {resp:?}")
    };
    assert_eq!(*index, 20);
    assert!(reason.contains("the leader's log ends at 12"), "{reason}");
    assert!(
        l.followers()[&id].halted,
        "the leader's view raises the alarm"
    );
    let eff = f.on_response(&resp, 1);
    assert!(matches!(eff.as_slice(), [FollowerEffect::Halted(d)] if d.index == 20));
    assert!(f
        .halted()
        .unwrap()
        .reason
        .starts_with("the leader reports:"));

    // A log that cannot be read now is no evidence: acknowledged.
    struct Unreadable;
    impl LeaderLog for Unreadable {
        fn first_index(&self) -> u64 {
            1
        }
        fn last_index(&self) -> u64 {
            0
        }
        fn log_end(&self) -> Option<u64> {
            None
        }
        fn record(&self, _: u64) -> Option<WalRecord> {
            None
        }
        fn snapshot(&self) -> Option<SnapshotView<'_>> {
            None
        }
    }
    let mut fresh = c.follower();
    let eff = fresh.on_gossip(&l.head(1), 0);
    serve(&mut fresh, &mut l, &short, sends(&eff));
    assert!(matches!(
        l.on_status_report(id.clone(), &fresh.status_report(), &Unreadable),
        Response::StatusAck { .. }
    ));

    // Same length, another record at the reported index.
    let mut other = c.follower();
    let eff = other.on_gossip(&l.head(1), 0);
    serve(&mut other, &mut l, &short, sends(&eff));
    assert_eq!(other.applied_index(), 12);
    let mut r = other.status_report();
    r.applied_hash = Hash::of_bytes(b"another history");
    let resp = l.on_status_report(id, &r, &short);
    assert!(
        matches!(&resp, Response::Diverged { index: 12, reason } if reason.contains("the leader's log holds")),
        "{resp:?}"
    );
}

#[test]
fn a_restarted_leader_resumes_and_followers_converge() {
    let c = cluster(30);
    let log = MemLog::full(&c);
    let mut f = c.follower();
    let mut l = c.leader(small_batches());
    for r in &c.records[..10] {
        for LeaderEffect::Publish(g) in l.on_committed(r).unwrap() {
            f.on_gossip(&g, 0);
        }
    }
    // Crash: the open batch (records 9, 10) was never published.
    assert_eq!(f.applied_index(), 8);
    let mut l = ReplLeader::new(
        small_batches(),
        c.keys.leader.clone(),
        &c.genesis,
        30,
        c.records[29].hash(),
    )
    .unwrap();
    let eff = f.on_gossip(&l.head(1), 5);
    serve(&mut f, &mut l, &log, sends(&eff));
    assert_eq!(f.applied_index(), 30);
    assert_eq!(f.node().root_hash(), c.node.root_hash());
    l.on_status(f.status());
    assert_eq!(l.followers().values().next().unwrap().lag_records, 0);
}

#[test]
fn the_leader_refuses_out_of_order_commits_and_foreign_keys() {
    let c = cluster(4);
    let mut l = c.leader(small_batches());
    assert!(matches!(
        l.on_committed(&c.records[1]),
        Err(LeaderError::OutOfOrder { index: 2, last: 0 })
    ));
    let gh = c.genesis.hash().unwrap();
    assert!(matches!(
        ReplLeader::new(
            LeaderConfig::default(),
            c.keys.admin.clone(),
            &c.genesis,
            0,
            gh
        ),
        Err(LeaderError::NotLeader { .. })
    ));
}

#[test]
fn wire_messages_round_trip_canonically() {
    let c = cluster(12);
    let log = MemLog::truncated(&c, 6);
    let mut l = c.leader(small_batches());
    let msgs = [
        Request::Range { from: 1, to: 12 },
        Request::Range { from: 7, to: 12 },
        Request::Snapshot {
            index: 6,
            offset: 0,
        },
    ];
    for m in &msgs {
        assert_eq!(&decode_request(&encode_request(m).unwrap()).unwrap(), m);
        let r = l.on_request(m, &log);
        assert_eq!(decode_response(&encode_response(&r).unwrap()).unwrap(), r);
    }
    let h = l.head(7);
    assert_eq!(decode_gossip(&encode_gossip(&h).unwrap()).unwrap(), h);
}

// ---- council ----

/// A node whose `project` sits in Council ELECT (first election).
fn at_elect(keys: &Keys, project: &str) -> NodeState {
    at_elect_with(keys, project, |_| {})
}

fn at_elect_with(
    keys: &Keys,
    project: &str,
    edit: impl FnOnce(&mut swoosh_core::Genesis),
) -> NodeState {
    let mut g = genesis(keys, "net-council", ORIGIN_MS);
    edit(&mut g);
    let mut node = NodeState::new(g).unwrap();
    let d = Driver::new(keys, 1);
    for now in ORIGIN_MS + 1..ORIGIN_MS + 101 {
        if node.project(project).council.phase == "ELECT" {
            return node;
        }
        let Next::Propose(p) = d.next(&node, project, now) else {
            panic!("driver stalled")
        };
        let s = step(
            &mut node,
            &p,
            &Ctx {
                now_ms: now,
                verify: Verify::Full,
                snapshot_every: 0,
            },
        );
        assert!(matches!(s.outcome, Outcome::Accepted(_)), "{:?}", s.outcome);
    }
    panic!("never reached ELECT");
}

/// The leader's proposal of `cert`, stepped through the reducer (which
/// must accept it) a second after the vector origin.
fn propose_certificate(
    node: &mut NodeState,
    cert: &Certificate,
    keys: &Keys,
) -> swoosh_core::Proposal {
    let p = certificate_proposal(cert, node, &keys.leader, ORIGIN_MS + 1_000).unwrap();
    let s = step(
        node,
        &p,
        &Ctx {
            now_ms: ORIGIN_MS + 1_000,
            verify: Verify::Full,
            snapshot_every: 0,
        },
    );
    assert!(matches!(s.outcome, Outcome::Accepted(_)), "{:?}", s.outcome);
    p
}

fn members(keys: &Keys) -> Vec<SignerId> {
    Driver::new(keys, 1).members()
}

fn agents(keys: &Keys, g: &swoosh_core::Genesis, policy: VotePolicy) -> Vec<CouncilAgent> {
    keys.council
        .iter()
        .map(|k| CouncilAgent::new(k.clone(), g, policy))
        .collect()
}

#[test]
fn agents_vote_and_the_certificate_is_accepted_by_the_reducer() {
    let keys = Keys::from_labels("council", 3);
    let mut node = at_elect(&keys, "atlas");
    let g = node.genesis.clone();
    let mut col = CouncilCollector::new(keys.leader.clone(), &g);
    let ann = col.open(&node.project("atlas"), &members(&keys)).unwrap();
    let mut ags = agents(&keys, &g, VotePolicy::ApproveAll);
    let mut cert = None;
    for a in &mut ags {
        let v = a.on_announce(&ann).unwrap();
        // The same announcement again yields the very same vote.
        assert_eq!(a.on_announce(&ann).unwrap(), v);
        match col.on_vote(&v) {
            VoteOutcome::Certificate(c) => cert = Some(c),
            VoteOutcome::Counted { .. } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(col.on_vote(&v), VoteOutcome::Duplicate);
    }
    let cert = cert.expect("threshold 2 of 3 reached");
    assert_eq!(cert.votes.len(), 2, "certified at the threshold");
    assert_eq!(col.certificates(), 1);
    assert_eq!(col.counted(), 3);
    let p = propose_certificate(&mut node, &cert, &keys);
    assert_eq!(p.transition, "Council_QuorumCert");
    let st = node.project("atlas");
    assert_eq!(st.council.phase, "TOOLING_SYNC");
    assert_eq!(
        st.council.member_set_hash,
        Some(swoosh_core::facts::member_set_hash(&members(&keys)))
    );
}

/// One vote per (project, epoch): the same announcement gets the same vote
/// back, another member set in that epoch is refused (no equivocation), an
/// older epoch than the one it voted in is refused (a replayed old
/// announcement), and when the memory is full the project idle longest is
/// forgotten first.
#[test]
fn an_agent_signs_one_vote_per_project_epoch_and_forgets_the_oldest_first() {
    let keys = Keys::from_labels("council", 3);
    let node = at_elect(&keys, "default");
    let g = node.genesis.clone();
    let st = node.project("default").into_owned();
    let mut col = CouncilCollector::new(keys.leader.clone(), &g);
    let all = members(&keys);
    let ann = col.open(&st, &all).unwrap();
    let mut a = CouncilAgent::new(keys.council[0].clone(), &g, VotePolicy::ApproveAll);
    let v = a.on_announce(&ann).unwrap();
    assert_eq!(a.on_announce(&ann).unwrap(), v);
    let mut other = CouncilCollector::new(keys.leader.clone(), &g);
    let fewer = other.open(&st, &all[..2]).unwrap();
    assert_eq!(fewer.body.epoch, ann.body.epoch);
    assert_eq!(
        a.on_announce(&fewer),
        Err(AgentRefusal::AlreadyVoted {
            project: "default".into(),
            epoch: ann.body.epoch
        })
    );
    let sign = |body: council::AnnounceBody| Announcement {
        signature: swoosh_core::sig::sign(council::COUNCIL_ANNOUNCE_DOMAIN, &body, &keys.leader)
            .unwrap(),
        body,
    };
    // A newer epoch gets a new vote; the older one is then refused.
    let mut next = fewer.body.clone();
    next.epoch = ann.body.epoch + 1;
    let v2 = a.on_announce(&sign(next)).unwrap();
    assert_eq!(v2.body.epoch, ann.body.epoch + 1);
    assert_eq!(
        a.on_announce(&ann),
        Err(AgentRefusal::StaleEpoch {
            project: "default".into(),
            epoch: ann.body.epoch,
            latest: ann.body.epoch + 1
        })
    );
    // Other projects fill the memory: "default", idle longest, is the one
    // forgotten; the newest are kept.
    for n in 0..council::AGENT_VOTES_REMEMBERED_MAX {
        let mut b = fewer.body.clone();
        b.project = format!("p{n}");
        a.on_announce(&sign(b)).unwrap();
    }
    assert!(
        a.on_announce(&ann).is_ok(),
        "the idle project was forgotten"
    );
    let mut recent = ann.body.clone();
    recent.project = format!("p{}", council::AGENT_VOTES_REMEMBERED_MAX - 1);
    assert!(
        matches!(
            a.on_announce(&sign(recent)),
            Err(AgentRefusal::AlreadyVoted { .. })
        ),
        "a recent vote is still remembered"
    );
}

#[test]
fn a_council_voting_no_never_certifies() {
    let keys = Keys::from_labels("council", 3);
    let node = at_elect(&keys, "default");
    let g = node.genesis.clone();
    let mut col = CouncilCollector::new(keys.leader.clone(), &g);
    let ann = col.open(&node.project("default"), &members(&keys)).unwrap();
    for a in &mut agents(&keys, &g, VotePolicy::VoteNo) {
        let v = a.on_announce(&ann).unwrap();
        assert!(!v.body.approve);
        assert!(matches!(
            col.on_vote(&v),
            VoteOutcome::Counted { approvals: 0, .. }
        ));
    }
    assert_eq!(col.certificate("default"), None);
    assert_eq!(col.counted(), 3);
}

#[test]
fn forged_outsider_stale_and_misdirected_votes_are_rejected_and_counted() {
    let keys = Keys::from_labels("council", 3);
    let node = at_elect(&keys, "default");
    let g = node.genesis.clone();
    let st = node.project("default").into_owned();
    let mut col = CouncilCollector::new(keys.leader.clone(), &g);
    let ann = col.open(&st, &members(&keys)).unwrap();
    let mut a = CouncilAgent::new(keys.council[0].clone(), &g, VotePolicy::ApproveAll);
    let good = a.on_announce(&ann).unwrap();

    let mut forged = good.clone();
    forged.signature.0[3] ^= 1;
    assert_eq!(
        col.on_vote(&forged),
        VoteOutcome::Rejected(VoteRejection::BadSignature)
    );

    let outsider = swoosh_core::facts::Vote::cast(
        swoosh_core::facts::VoteBody {
            voter: SignerId::from_signing_key(&keys.outsider),
            ..good.body.clone()
        },
        &keys.outsider,
    );
    assert_eq!(
        col.on_vote(&outsider),
        VoteOutcome::Rejected(VoteRejection::Outsider)
    );
    // A rostered key without the council role is an outsider to the council.
    let worker = swoosh_core::facts::Vote::cast(
        swoosh_core::facts::VoteBody {
            voter: SignerId::from_signing_key(&keys.worker),
            ..good.body.clone()
        },
        &keys.worker,
    );
    assert_eq!(
        col.on_vote(&worker),
        VoteOutcome::Rejected(VoteRejection::Outsider)
    );

    let stale = swoosh_core::facts::Vote::cast(
        swoosh_core::facts::VoteBody {
            epoch: good.body.epoch - 1,
            ..good.body.clone()
        },
        &keys.council[1],
    );
    // (signed by council-2 over council-1's voter field, a bad signature;
    // the epoch refuses it first: the signature is checked only after the
    // checks that cost nothing)
    assert_eq!(
        col.on_vote(&stale),
        VoteOutcome::Rejected(VoteRejection::StaleEpoch)
    );
    let stale = swoosh_core::facts::Vote::cast(
        swoosh_core::facts::VoteBody {
            epoch: good.body.epoch - 1,
            ..good.body.clone()
        },
        &keys.council[0],
    );
    assert_eq!(
        col.on_vote(&stale),
        VoteOutcome::Rejected(VoteRejection::StaleEpoch)
    );

    let other_set = swoosh_core::facts::Vote::cast(
        swoosh_core::facts::VoteBody {
            member_set_hash: Hash::of_bytes(b"another set"),
            ..good.body.clone()
        },
        &keys.council[0],
    );
    assert_eq!(
        col.on_vote(&other_set),
        VoteOutcome::Rejected(VoteRejection::WrongMemberSet)
    );
    let elsewhere = swoosh_core::facts::Vote::cast(
        swoosh_core::facts::VoteBody {
            project: "nowhere".into(),
            ..good.body.clone()
        },
        &keys.council[0],
    );
    assert_eq!(
        col.on_vote(&elsewhere),
        VoteOutcome::Rejected(VoteRejection::NoElection)
    );
    // The agent binds its vote to the cluster; a vote of the same key cast
    // for another cluster's genesis, or bound to none where the genesis
    // requires binding, would not count in a certificate here.
    assert_eq!(good.body.genesis, Some(g.hash().unwrap()));
    assert!(g.facts_bound_to_genesis);
    for genesis in [Some(Hash::of_bytes(b"another cluster")), None] {
        let foreign = swoosh_core::facts::Vote::cast(
            swoosh_core::facts::VoteBody {
                genesis,
                ..good.body.clone()
            },
            &keys.council[0],
        );
        assert_eq!(
            col.on_vote(&foreign),
            VoteOutcome::Rejected(VoteRejection::WrongGenesis)
        );
    }

    let counts: Vec<(&str, u64)> = col.rejected().iter().map(|(k, v)| (k.name(), *v)).collect();
    assert_eq!(
        counts,
        vec![
            ("bad_signature", 1),
            ("outsider", 2),
            ("stale_epoch", 2),
            ("no_election", 1),
            ("wrong_member_set", 1),
            ("wrong_genesis", 2)
        ]
    );
    // The good vote still counts.
    assert!(matches!(
        col.on_vote(&good),
        VoteOutcome::Counted { approvals: 1, .. }
    ));
}

/// An election opened before a roster or threshold change no longer
/// matches the project (the council epoch does not move with them), so the
/// leader opens it again; a project the reducer would refuse any
/// certificate for holds no election.
#[test]
fn an_election_follows_roster_changes_and_skips_uncertifiable_projects() {
    let keys = Keys::from_labels("council", 3);
    let node = at_elect(&keys, "default");
    let g = node.genesis.clone();
    let st = node.project("default").into_owned();
    let all = members(&keys);
    let mut col = CouncilCollector::new(keys.leader.clone(), &g);
    col.open(&st, &all).unwrap();
    assert!(col.matches(&st, &all));
    assert!(!col.matches(&st, &all[..2]), "another member set");
    let mut fewer = st.clone();
    fewer.boot.identities.retain(|e| {
        e.key != SignerId::from_signing_key(&keys.council[2])
            || !e.roles.contains(&swoosh_core::statechart::Role::Council)
    });
    assert_eq!(fewer.epoch.council, st.epoch.council, "the epoch stays");
    assert!(
        !col.matches(&fewer, &all),
        "a council member left the roster"
    );
    let mut higher = st.clone();
    higher.council.quorum_threshold += 1;
    assert!(!col.matches(&higher, &all), "another threshold");

    assert_eq!(crate::proto::council::uncertifiable(&st), None);
    let mut t = st.clone();
    t.meta.phase = "TERMINATED".into();
    assert!(crate::proto::council::uncertifiable(&t).is_some());
    let mut q = st.clone();
    q.policy.phase = "QUARANTINED".into();
    assert!(crate::proto::council::uncertifiable(&q).is_some());
    let mut p = st.clone();
    p.control.phase = "PAUSED".into();
    assert!(crate::proto::council::uncertifiable(&p).is_some());
}

/// A cluster whose genesis predates binding (no `facts_bound_to_genesis`)
/// still counts unbound votes (an agent of an earlier build casts them)
/// beside the bound ones this build's agents cast, and the reducer accepts
/// the certificate; a vote bound to another genesis is refused there too.
#[test]
fn a_legacy_genesis_counts_unbound_votes_and_refuses_foreign_ones() {
    let keys = Keys::from_labels("council", 3);
    let mut node = at_elect_with(&keys, "default", |g| g.facts_bound_to_genesis = false);
    let g = node.genesis.clone();
    assert!(!g.facts_bound_to_genesis);
    let mut col = CouncilCollector::new(keys.leader.clone(), &g);
    let ann = col.open(&node.project("default"), &members(&keys)).unwrap();
    let mut a = CouncilAgent::new(keys.council[0].clone(), &g, VotePolicy::ApproveAll);
    let bound = a.on_announce(&ann).unwrap();
    assert_eq!(bound.body.genesis, Some(g.hash().unwrap()));
    let recast = |k: &ed25519_dalek::SigningKey, genesis| {
        swoosh_core::facts::Vote::cast(
            swoosh_core::facts::VoteBody {
                voter: SignerId::from_signing_key(k),
                genesis,
                ..bound.body.clone()
            },
            k,
        )
    };
    let foreign = recast(&keys.council[1], Some(Hash::of_bytes(b"another cluster")));
    assert_eq!(
        col.on_vote(&foreign),
        VoteOutcome::Rejected(VoteRejection::WrongGenesis)
    );
    assert!(matches!(
        col.on_vote(&bound),
        VoteOutcome::Counted { approvals: 1, .. }
    ));
    let VoteOutcome::Certificate(cert) = col.on_vote(&recast(&keys.council[1], None)) else {
        panic!("an unbound vote counts under a legacy genesis")
    };
    propose_certificate(&mut node, &cert, &keys);
    assert_eq!(node.project("default").council.phase, "TOOLING_SYNC");
}

#[test]
fn agents_refuse_forged_and_foreign_announcements() {
    let keys = Keys::from_labels("council", 3);
    let node = at_elect(&keys, "default");
    let g = node.genesis.clone();
    let mut col = CouncilCollector::new(keys.leader.clone(), &g);
    let ann = col.open(&node.project("default"), &members(&keys)).unwrap();
    let mut a = CouncilAgent::new(keys.council[0].clone(), &g, VotePolicy::ApproveAll);
    let mut forged = ann.clone();
    forged.body.members.pop();
    assert_eq!(a.on_announce(&forged), Err(AgentRefusal::BadSignature));
    let mut not_leader = ann.clone();
    not_leader.body.leader = SignerId::from_signing_key(&keys.admin);
    assert!(matches!(
        a.on_announce(&not_leader),
        Err(AgentRefusal::NotLeader(_))
    ));
    // The collector refuses to open outside ELECT.
    let fresh = NodeState::new(g).unwrap();
    assert!(matches!(
        col.open(&fresh.project("other"), &members(&keys)),
        Err(OpenError::NotElect { .. })
    ));
}

#[test]
fn a_far_behind_follower_is_offered_the_snapshot_even_when_the_log_is_whole() {
    let c = cluster(40);
    // The whole log is kept, and a snapshot after 30.
    let mut log = MemLog::truncated(&c, 30);
    log.records = c.records.clone();
    log.first = 1;
    let cfg = LeaderConfig {
        snapshot_catchup_records: 25,
        ..small_batches()
    };
    let mut l = ReplLeader::new(
        cfg.clone(),
        c.keys.leader.clone(),
        &c.genesis,
        40,
        c.node.head_record,
    )
    .unwrap();
    // 30 >= 1 + 25: the snapshot is offered.
    let offer = l.on_request(&Request::Range { from: 1, to: 40 }, &log);
    assert!(
        matches!(&offer, Response::SnapshotOffer(m) if m.body.index == 30),
        "{offer:?}"
    );
    // Closer than the threshold: records.
    let near = l.on_request(&Request::Range { from: 10, to: 40 }, &log);
    assert!(matches!(near, Response::Range { .. }), "{near:?}");
    // A snapshot larger than a follower takes is never offered: records
    // instead (the follower would refuse the offer and ask again for ever),
    // and a refusal saying so when the log no longer holds them.
    let size = log.snapshot().unwrap().bytes.len() as u64;
    let small = LeaderConfig {
        snapshot_offer_bytes_max: size - 1,
        ..cfg.clone()
    };
    let mut ls = c.leader_at_head(small);
    let r = ls.on_request(&Request::Range { from: 1, to: 40 }, &log);
    assert!(matches!(r, Response::Range { .. }), "{r:?}");
    match ls.on_request(
        &Request::Range { from: 1, to: 40 },
        &MemLog::truncated(&c, 30),
    ) {
        Response::Refused { reason } => {
            assert!(reason.contains("cannot catch up"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // A new follower hears the head, asks for everything, gets the
    // snapshot, then the tail, and lands on the leader's state.
    let mut f = c.follower();
    let eff = f.on_gossip(&l.head(1), 0);
    serve(&mut f, &mut l, &log, sends(&eff));
    assert_eq!(f.stats().snapshots_installed, 1);
    assert_eq!(f.applied_index(), 40);
    assert_eq!(f.node(), &c.node);
    // With the policy off (the default), the same request gets records.
    let mut l0 = c.leader_at_head(LeaderConfig {
        snapshot_catchup_records: 0,
        ..cfg
    });
    let r = l0.on_request(&Request::Range { from: 1, to: 40 }, &log);
    assert!(matches!(r, Response::Range { .. }), "{r:?}");
}

#[test]
fn with_a_gap_grace_a_follower_waits_for_gossip_before_asking_for_a_range() {
    let c = cluster(40);
    let log = MemLog::full(&c);
    let mut l = c.leader_at_head(LeaderConfig {
        range_records_max: 16,
        ..small_batches()
    });
    let id = SignerId::from_signing_key(&sig::key_from_label("net-proto/follower-1"));
    let mut f = ReplFollower::new(
        FollowerConfig {
            gap_grace_ms: 100,
            range_records_max: 16,
            ..FollowerConfig::default()
        },
        id,
        c.fresh(),
    );
    // The head says 40; the records may still be on their way by gossip.
    assert!(sends(&f.on_gossip(&l.head(1), 0)).is_empty());
    assert!(sends(&f.tick(50)).is_empty(), "still within the grace");
    let eff = f.tick(100);
    assert_eq!(sends(&eff), vec![Request::Range { from: 1, to: 16 }]);
    // A full answer: keep catching up without waiting.
    let resp = l.on_request(&sends(&eff)[0], &log);
    let eff = f.on_response(&resp, 101);
    assert_eq!(sends(&eff), vec![Request::Range { from: 17, to: 32 }]);
    let resp = l.on_request(&sends(&eff)[0], &log);
    let eff = f.on_response(&resp, 102);
    assert_eq!(sends(&eff), vec![Request::Range { from: 33, to: 40 }]);
    // A short answer reaches the leader's end: caught up, nothing more.
    let resp = l.on_request(&sends(&eff)[0], &log);
    assert!(sends(&f.on_response(&resp, 103)).is_empty());
    assert_eq!(f.applied_index(), 40);
    assert_eq!(f.node(), &c.node);
}

/// A batch assembled around its records' encodings is the canonical
/// encoding of the whole message, byte for byte; given encodings that do not
/// match the records in number, it encodes the whole message instead.
#[test]
fn a_batch_spliced_from_record_encodings_is_the_canonical_message() {
    let c = cluster(24);
    let mut batches = c.batches(small_batches());
    batches.push(c.batches(LeaderConfig::default()).remove(0));
    for b in &batches {
        let encs: Vec<Vec<u8>> = b.records.iter().map(|r| to_canonical(r).unwrap()).collect();
        let refs: Vec<&[u8]> = encs.iter().map(Vec::as_slice).collect();
        let want = encode_gossip(&Gossip::Batch(b.clone())).unwrap();
        assert_eq!(encode_batch_with(b, &refs).unwrap(), want);
        assert_eq!(encode_batch_with(b, &refs[1..]).unwrap(), want);
    }
}

/// `decode_gossip_records` accepts exactly what `decode_gossip` accepts, to
/// the same message, and hands out each batch record's canonical encoding.
#[test]
fn gossip_decoded_by_parts_matches_the_whole_message_decoder() {
    let c = cluster(24);
    let mut messages: Vec<Gossip> = c
        .batches(small_batches())
        .into_iter()
        .map(Gossip::Batch)
        .collect();
    messages.push(Gossip::Batch(c.batches(LeaderConfig::default()).remove(0)));
    messages.push(c.leader(small_batches()).head(1));
    for g in &messages {
        let bytes = encode_gossip(g).unwrap();
        let (got, encodings) = decode_gossip_records(&bytes).unwrap();
        assert_eq!(&got, g);
        match g {
            Gossip::Batch(b) => {
                let want: Vec<Vec<u8>> =
                    b.records.iter().map(|r| to_canonical(r).unwrap()).collect();
                assert_eq!(encodings, Some(want));
            }
            Gossip::Head(_) => assert_eq!(encodings, None),
        }
    }
    // The same verdict as the strict decoder on damaged and non-canonical
    // variants of a batch: every byte flipped, cut short, extended, and a
    // record array head in a longer form than needed.
    let bytes = encode_gossip(&messages[0]).unwrap();
    let strict = |m: &[u8]| decode_gossip(m).ok();
    let by_parts = |m: &[u8]| decode_gossip_records(m).ok().map(|(g, _)| g);
    let mut variants: Vec<Vec<u8>> = vec![];
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut m = bytes.clone();
            m[i] ^= bit;
            variants.push(m);
        }
    }
    variants.push(bytes[..bytes.len() - 1].to_vec());
    variants.push([bytes.clone(), vec![0]].concat());
    let key = b"\x67records";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    assert_eq!(bytes[at], 0x84, "four records under a short array head");
    let long_head = [&bytes[..at], &[0x98, 4], &bytes[at + 1..]].concat();
    assert!(strict(&long_head).is_none() && by_parts(&long_head).is_none());
    variants.push(long_head);
    let mut accepted = 0;
    for m in &variants {
        let (a, b) = (strict(m), by_parts(m));
        assert_eq!(a, b, "the decoders disagree on a variant");
        accepted += usize::from(a.is_some());
        if let Some(Gossip::Batch(batch)) = &b {
            let (_, enc) = decode_gossip_records(m).unwrap();
            let want: Vec<Vec<u8>> = batch
                .records
                .iter()
                .map(|r| to_canonical(r).unwrap())
                .collect();
            assert_eq!(enc, Some(want));
        }
    }
    // Flips inside text values keep some variants canonical (another
    // letter): both accept those, which the loop above checked.
    assert!(
        accepted < variants.len() / 2,
        "{accepted} of {}",
        variants.len()
    );
}

/// A follower fed the encodings from the parts decoder applies exactly what
/// it applies without them; encodings that are not the records' are refused
/// by the signed hashes, never applied.
#[test]
fn a_follower_fed_record_encodings_applies_the_same_and_refuses_wrong_ones() {
    let c = cluster(12);
    let batches = c.batches(small_batches());
    let mut plain = c.follower();
    let mut fed = c.follower();
    for b in &batches {
        let g = Gossip::Batch(b.clone());
        let (g2, enc) = decode_gossip_records(&encode_gossip(&g).unwrap()).unwrap();
        assert!(enc.is_some());
        assert_eq!(plain.on_gossip(&g, 0), fed.on_gossip_records(g2, enc, 0));
    }
    assert_eq!(fed.node().root_hash(), c.node.root_hash());
    // Wrong bytes for the first record of a fresh follower: refused.
    let mut f = c.follower();
    let g = Gossip::Batch(batches[0].clone());
    let mut enc: Vec<Vec<u8>> = batches[0]
        .records
        .iter()
        .map(|r| to_canonical(r).unwrap())
        .collect();
    enc[0].push(0);
    assert_eq!(
        refused(&f.on_gossip_records(g, Some(enc), 0)),
        vec!["record_hash"]
    );
    assert_eq!(f.applied_index(), 0);
}
