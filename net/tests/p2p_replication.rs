//! WAL replication over real libp2p swarms on 127.0.0.1: a leader tailing an
//! LMDB log, followers tailing it by gossip and range requests.

use ed25519_dalek::SigningKey;
use std::time::{Duration, Instant};
use swoosh_core::guards::Verify;
use swoosh_core::scenario::Keys;
use swoosh_core::sig::{self, key_from_label, SignerId};
use swoosh_core::state::{FollowerEntry, Genesis, NodeState};
use swoosh_net::p2p::envelope::{self, Reassembler};
use swoosh_net::p2p::follower::{spawn_follower, FollowerOptions, FollowerP2p};
use swoosh_net::p2p::leader::{spawn_leader, LeaderP2p};
use swoosh_net::p2p::peer::spawn_peer;
use swoosh_net::p2p::{agent_version, wal_topic};
use swoosh_net::proto::wire::{self, BatchHeader, Gossip, WalBatch, WAL_BATCH_DOMAIN};
use swoosh_storage::testkit::{stream_genesis, Stream};
use swoosh_storage::{BatchLimits, Durability, Entry, LmdbOptions, LmdbStore, WalWriter};

const WAIT: Duration = Duration::from_secs(60);

struct Cluster {
    genesis: Genesis,
    leader_key: SigningKey,
    followers: Vec<(SigningKey, age::x25519::Identity)>,
    stream: Stream,
    writer: WalWriter<LmdbStore>,
    dirs: Vec<tempfile::TempDir>,
}

fn store(dirs: &mut Vec<tempfile::TempDir>) -> LmdbStore {
    let d = tempfile::tempdir().unwrap();
    let s = LmdbStore::open(
        d.path(),
        &LmdbOptions {
            durability: Durability::NoSync,
            ..Default::default()
        },
    )
    .unwrap();
    dirs.push(d);
    s
}

fn cluster(label: &str, followers: usize) -> Cluster {
    let mut g = stream_genesis(label);
    let fs: Vec<(SigningKey, age::x25519::Identity)> = (0..followers)
        .map(|i| {
            (
                key_from_label(&format!("{label}/follower-{i}")),
                age::x25519::Identity::generate(),
            )
        })
        .collect();
    g.followers = fs
        .iter()
        .enumerate()
        .map(|(i, (k, a))| FollowerEntry {
            name: format!("follower-{}", i + 1),
            key: SignerId::from_signing_key(k),
            age_recipient: a.to_public().to_string(),
        })
        .collect();
    g.validate().unwrap();
    let stream = Stream::resume(
        label,
        2,
        NodeState::new(g.clone()).unwrap(),
        Verify::Trusted,
    );
    let mut dirs = vec![];
    let s = store(&mut dirs);
    let writer = WalWriter::open(s, g.hash().unwrap(), BatchLimits::default()).unwrap();
    Cluster {
        genesis: g,
        leader_key: Keys::from_labels(label, 3).leader,
        followers: fs,
        stream,
        writer,
        dirs,
    }
}

impl Cluster {
    fn commit(&mut self, n: usize) {
        let entries: Vec<Entry> = self
            .stream
            .take(n)
            .into_iter()
            .map(Entry::from_accepted)
            .collect();
        self.writer.append_batch(&entries).unwrap();
    }

    async fn leader(&self) -> LeaderP2p {
        spawn_leader(
            self.writer.store().clone(),
            self.leader_key.clone(),
            self.genesis.clone(),
            "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        )
        .await
        .unwrap()
    }

    async fn follower(&mut self, i: usize, leader: &LeaderP2p, listen: bool) -> FollowerP2p {
        let s = store(&mut self.dirs);
        let (k, a) = &self.followers[i];
        spawn_follower(
            s,
            FollowerOptions {
                key: k.clone(),
                genesis: self.genesis.clone(),
                age_identity: a.clone(),
                leader: leader.listen_addrs[0].clone(),
                listen: listen.then(|| "/ip4/127.0.0.1/tcp/0".parse().unwrap()),
                snapshot_every: swoosh_net::p2p::follower::FOLLOWER_SNAPSHOT_EVERY_DEFAULT,
                compaction: None,
            },
        )
        .await
        .unwrap()
    }
}

/// `stranger` (a raw swarm that never refuses anyone itself) dials the
/// leader; the leader's handshake check must close the connection and count it.
/// The cluster's leader started again on `store` at `addr`, retrying while
/// the old listener's port is not free yet.
async fn restart_leader<S>(store: S, c: &Cluster, addr: &libp2p::Multiaddr) -> LeaderP2p
where
    S: swoosh_storage::LogStore + Clone + Send + Sync + 'static,
{
    let t0 = Instant::now();
    loop {
        match spawn_leader(
            store.clone(),
            c.leader_key.clone(),
            c.genesis.clone(),
            addr.clone(),
        )
        .await
        {
            Ok(l) => return l,
            Err(e) => {
                assert!(
                    t0.elapsed() < WAIT,
                    "cannot restart the leader on {addr}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn leader_refuses(
    mut stranger: libp2p::Swarm<swoosh_net::p2p::Behaviour>,
    leader: &LeaderP2p,
) {
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    stranger.dial(leader.listen_addrs[0].clone()).unwrap();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if let SwarmEvent::ConnectionClosed { peer_id, .. } = stranger.select_next_some().await
            {
                break peer_id;
            }
        }
    })
    .await
    .expect("the leader never closed the connection");
    assert_eq!(closed, leader.peer_id);
    assert!(leader.snapshot().refused_peers >= 1);
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_leader_and_two_followers_tail_to_the_same_root() {
    let mut c = cluster("p2p-tail", 2);
    c.commit(20);
    let leader = c.leader().await;
    let f1 = c.follower(0, &leader, false).await;
    let f2 = c.follower(1, &leader, false).await;
    for _ in 0..10 {
        c.commit(25);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let want = c.stream.node().index;
    assert_eq!(want, 270);
    wait_for("both followers at the leader's index", || {
        [&f1, &f2]
            .iter()
            .all(|f| f.shared.lock().unwrap().persisted_index() == want)
    })
    .await;
    let root = c.stream.node().root_hash();
    assert_eq!(f1.root_hash(), root);
    assert_eq!(f2.root_hash(), root);
    for f in [&f1, &f2] {
        let s = f.shared.lock().unwrap();
        assert_eq!(s.persisted_index(), want, "applied records are persisted");
        assert_eq!(
            s.net
                .persisted_index
                .load(std::sync::atomic::Ordering::Acquire),
            want,
            "the lock-free copy agrees"
        );
        assert!(s.halted_reason.is_none());
    }
    // A follower may have caught up by range requests alone; the leader's
    // head, gossiped every HEAD_EVERY_MS, reaches it in time.
    wait_for("both followers decrypting gossip", || {
        [&f1, &f2]
            .iter()
            .all(|f| f.shared.lock().unwrap().decrypted > 0)
    })
    .await;
    assert!(leader.snapshot().stats.batches_published > 0);
    // The followers report their position; the leader's view shows them
    // connected and caught up.
    wait_for("both followers reporting the leader's index", || {
        leader
            .followers()
            .iter()
            .all(|f| f.applied_index == Some(want))
    })
    .await;
    for f in leader.followers() {
        assert!(f.connected, "{f:?}");
        assert_eq!(f.lag_records, Some(0), "{f:?}");
        assert_eq!(f.root_hash, Some(root), "{f:?}");
        assert!(!f.halted);
        assert!(f.last_report_ms_ago.is_some());
    }
    // The follower's own /health, as `swoosh health --to <follower>` reads
    // it (the fields its text form prints).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(swoosh_net::p2p::http::serve_follower(
        listener,
        f1.shared.clone(),
    ));
    let (status, h) = swoosh_net::client::Client::new(&url)
        .health_any()
        .await
        .unwrap();
    assert_eq!(status, 200, "{h}");
    assert_eq!(
        (h["role"].as_str(), h["status"].as_str()),
        (Some("follower"), Some("ok"))
    );
    assert_eq!(h["applied_index"].as_u64(), Some(want), "{h}");
    assert_eq!(
        h["root_hash"].as_str(),
        Some(root.to_string().as_str()),
        "{h}"
    );
    for k in [
        "persisted_index",
        "leader_index",
        "lag_records",
        "lag_ms",
        "undecryptable",
        "malformed",
        "inbox_full_drops",
    ] {
        assert!(h[k].is_u64(), "{k} in {h}");
    }
    assert!(h["leader"].is_string() && h["refusals"].is_array(), "{h}");
    assert!(h["halted"].is_null(), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_leader_restart_followers_resume() {
    let mut c = cluster("p2p-leader-restart", 2);
    c.commit(30);
    let leader = c.leader().await;
    let addr = leader.listen_addrs[0].clone();
    let f1 = c.follower(0, &leader, false).await;
    let f2 = c.follower(1, &leader, false).await;
    wait_for("both followers at 30", || {
        f1.applied_index() == 30 && f2.applied_index() == 30
    })
    .await;
    // The leader goes away; the log keeps growing (as after a restart that
    // recovered and committed more before the swarm came back).
    drop(leader);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.commit(70);
    wait_for("followers to notice the leader is gone", || {
        !f1.shared.lock().unwrap().leader_connected
    })
    .await;
    // Same identity, same address: the followers redial it and catch up.
    let leader = restart_leader(c.writer.store().clone(), &c, &addr).await;
    c.commit(50);
    let want = c.stream.node().index;
    assert_eq!(want, 150);
    // Applied first, then persisted by the same task: wait for both.
    wait_for("both followers at 150 after the leader restart", || {
        [&f1, &f2]
            .iter()
            .all(|f| f.shared.lock().unwrap().persisted_index() == want)
    })
    .await;
    let root = c.stream.node().root_hash();
    assert_eq!(f1.root_hash(), root);
    assert_eq!(f2.root_hash(), root);
    for f in [&f1, &f2] {
        let s = f.shared.lock().unwrap();
        assert_eq!(s.persisted_index(), want);
        assert_eq!(
            s.net
                .persisted_index
                .load(std::sync::atomic::Ordering::Acquire),
            want
        );
        assert!(s.halted_reason.is_none());
    }
    wait_for("the restarted leader sees both followers", || {
        leader
            .followers()
            .iter()
            .all(|f| f.connected && f.applied_index == Some(want))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_late_follower_catches_up_by_range_requests() {
    let mut c = cluster("p2p-late", 1);
    c.commit(600);
    let leader = c.leader().await;
    let f = c.follower(0, &leader, false).await;
    wait_for("the late follower to catch up", || f.applied_index() == 600).await;
    assert_eq!(f.root_hash(), c.stream.node().root_hash());
    let st = f.shared.lock().unwrap().repl.stats().clone();
    assert!(
        st.requests_sent >= 2,
        "600 records need two range requests: {st:?}"
    );
    assert!(leader.snapshot().stats.ranges_served >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_peer_without_follower_identity_cannot_decrypt() {
    let mut c = cluster("p2p-observer", 1);
    let leader = c.leader().await;
    let observer_key = key_from_label("p2p-observer/outsider");
    let mut obs = spawn_peer(
        &observer_key,
        agent_version(&c.genesis),
        &[wal_topic(&c.genesis.cluster_id)],
        None,
        &leader.listen_addrs,
    )
    .await
    .unwrap();
    let observer_age = age::x25519::Identity::generate();
    let t0 = Instant::now();
    let mut received = 0;
    let mut readable_by_follower = 0;
    let mut reasm = Reassembler::default();
    while received < 3 {
        c.commit(5);
        assert!(t0.elapsed() < WAIT, "the observer received no gossip");
        if let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(300), obs.inbox.recv()).await
        {
            // wire-format §9.2: envelopes are anonymous; the signature that
            // counts is the leader's, inside the ciphertext.
            assert_eq!(m.source, None, "gossip envelopes carry no source");
            if let Some(ct) = reasm.push(&m.data).unwrap() {
                received += 1;
                assert!(
                    envelope::decrypt(&ct, &observer_age).is_err(),
                    "a peer that is not a follower must not read the WAL"
                );
                if envelope::decrypt(&ct, &c.followers[0].1).is_ok() {
                    readable_by_follower += 1;
                }
            }
        }
    }
    assert_eq!(
        readable_by_follower, received,
        "the follower's identity reads it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_forged_batch_is_rejected() {
    let mut c = cluster("p2p-forged", 1);
    c.commit(10);
    let leader = c.leader().await;
    let f = c.follower(0, &leader, true).await;
    wait_for("the follower at 10", || f.applied_index() == 10).await;
    // The next records, signed by someone who is not the leader.
    let forger = key_from_label("p2p-forged/forger");
    let records: Vec<_> = c.stream.take(3).into_iter().map(|a| a.record).collect();
    let header = BatchHeader {
        cluster_id: c.genesis.cluster_id.clone(),
        genesis_hash: c.genesis.hash().unwrap(),
        leader: c.genesis.leader.clone(),
        first_index: 11,
        last_index: 13,
        prev_hash: records[0].prev_hash,
        record_hashes: records.iter().map(|r| r.hash()).collect(),
    };
    let signature = sig::sign(WAL_BATCH_DOMAIN, &header, &forger).unwrap();
    let plain = wire::encode_gossip(&Gossip::Batch(WalBatch {
        header,
        signature,
        records,
    }))
    .unwrap();
    let recipients: Vec<_> = c.followers.iter().map(|(_, a)| a.to_public()).collect();
    // The forger dials the follower directly (it listens on an ephemeral port).
    let follower_addr = {
        let t0 = Instant::now();
        loop {
            let a = f.listen_addrs();
            if let Some(a) = a.into_iter().next() {
                break a;
            }
            assert!(t0.elapsed() < WAIT, "the follower never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let peer = spawn_peer(
        &forger,
        agent_version(&c.genesis),
        &[wal_topic(&c.genesis.cluster_id)],
        None,
        &[follower_addr],
    )
    .await
    .unwrap();
    let topic = wal_topic(&c.genesis.cluster_id);
    let t0 = Instant::now();
    loop {
        for chunk in envelope::seal(&plain, &recipients).unwrap() {
            peer.publish(&topic, chunk);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = f.shared.lock().unwrap();
        if s.last_refusals
            .iter()
            .any(|r| r.starts_with("bad_signature"))
        {
            break;
        }
        assert!(t0.elapsed() < WAIT, "the forged batch was never refused");
    }
    assert_eq!(
        f.applied_index(),
        10,
        "nothing of the forged batch was applied"
    );
    assert!(f.shared.lock().unwrap().halted_reason.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_follower_restart_resumes_from_its_own_wal() {
    use swoosh_storage::{MemDisk, MemStore};
    let mut c = cluster("p2p-restart", 1);
    c.commit(40);
    let leader = c.leader().await;
    let disk = MemDisk::new();
    let (k, a) = c.followers[0].clone();
    let g = c.genesis.clone();
    let opts = |leader: &LeaderP2p| FollowerOptions {
        key: k.clone(),
        genesis: g.clone(),
        age_identity: a.clone(),
        leader: leader.listen_addrs[0].clone(),
        listen: None,
        snapshot_every: swoosh_net::p2p::follower::FOLLOWER_SNAPSHOT_EVERY_DEFAULT,
        compaction: None,
    };
    let f = spawn_follower(MemStore::open("f", &disk, Durability::Sync), opts(&leader))
        .await
        .unwrap();
    wait_for("the follower at 40", || f.applied_index() == 40).await;
    // Dropping joins the worker, so the store is free to open at once.
    drop(f);
    c.commit(60);
    // What a restart recovers from its own WAL, checked before the restart:
    // once spawned, the follower may fetch the leader's tail at once.
    let st = MemStore::open("f", &disk, Durability::Sync);
    assert_eq!(swoosh_storage::recover(&st, &g).unwrap().node.index, 40);
    drop(st);
    let f = spawn_follower(MemStore::open("f", &disk, Durability::Sync), opts(&leader))
        .await
        .unwrap();
    assert!(f.applied_index() >= 40, "recovered from its own WAL");
    wait_for("the restarted follower at 100", || f.applied_index() == 100).await;
    assert_eq!(f.root_hash(), c.stream.node().root_hash());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_peer_with_another_genesis_is_disconnected() {
    let c = cluster("p2p-handshake", 1);
    let leader = c.leader().await;
    let other = stream_genesis("p2p-handshake-other");
    // A raw swarm that never refuses anyone itself: whatever closes the
    // connection is the leader's handshake check.
    let stranger = swoosh_net::p2p::build_swarm(
        &key_from_label("p2p-handshake/stranger"),
        agent_version(&other),
    )
    .unwrap();
    leader_refuses(stranger, &leader).await;
}

/// A peer of the same cluster that speaks another identify protocol version
/// (an incompatible release) is refused like a peer of another genesis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_peer_speaking_another_protocol_version_is_disconnected() {
    let c = cluster("p2p-protocol", 1);
    let leader = c.leader().await;
    let stranger = swoosh_net::p2p::build_swarm_speaking(
        &key_from_label("p2p-protocol/stranger"),
        agent_version(&c.genesis),
        "/swoosh/id/0",
    )
    .unwrap();
    leader_refuses(stranger, &leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_late_joiner_catches_up_from_a_snapshot_and_restarts_from_it() {
    use swoosh_net::p2p::leader::spawn_leader_cfg;
    use swoosh_net::proto::leader::LeaderConfig;
    use swoosh_storage::{MemDisk, MemStore};
    let mut c = cluster("p2p-snapshot", 1);
    c.commit(120);
    let node = c.stream.node().clone();
    swoosh_storage::write_snapshot(c.writer.store_mut(), &node, 3).unwrap();
    c.commit(30);
    let leader = spawn_leader_cfg(
        c.writer.store().clone(),
        c.leader_key.clone(),
        c.genesis.clone(),
        "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        None,
        LeaderConfig {
            snapshot_catchup_records: 50,
            snapshot_chunk_bytes_max: 4_096,
            ..LeaderConfig::default()
        },
    )
    .await
    .unwrap();
    let disk = MemDisk::new();
    let (k, a) = c.followers[0].clone();
    let g = c.genesis.clone();
    let opts = |leader: &LeaderP2p| FollowerOptions {
        key: k.clone(),
        genesis: g.clone(),
        age_identity: a.clone(),
        leader: leader.listen_addrs[0].clone(),
        listen: None,
        snapshot_every: swoosh_net::p2p::follower::FOLLOWER_SNAPSHOT_EVERY_DEFAULT,
        compaction: None,
    };
    let f = spawn_follower(MemStore::open("f", &disk, Durability::Sync), opts(&leader))
        .await
        .unwrap();
    wait_for("the late joiner at 150, persisted", || {
        f.shared.lock().unwrap().persisted_index() == 150
    })
    .await;
    {
        let s = f.shared.lock().unwrap();
        assert_eq!(s.snapshots_installed, 1, "joined through the snapshot");
        assert!(s.halted_reason.is_none());
        assert!(s.repl.stats().snapshots_installed == 1);
        // `/health`'s lastSnapshotHLC: the snapshot it installed.
        assert_eq!(s.last_snapshot, Some((120, node.hlc)));
    }
    assert_eq!(f.root_hash(), c.stream.node().root_hash());
    assert!(leader.snapshot().stats.snapshot_offers >= 1);
    assert!(
        leader.snapshot().stats.snapshot_chunks > 1,
        "resumable chunks"
    );
    // Its own store holds the snapshot as its WAL base plus the tail only.
    drop(f);
    let st = MemStore::open("f", &disk, Durability::Sync);
    assert_eq!(swoosh_storage::first_index(&st).unwrap(), 121);
    let rec = swoosh_storage::recover(&st, &g).unwrap();
    assert_eq!(rec.node.index, 150);
    assert_eq!(rec.node.root_hash(), c.stream.node().root_hash());
    drop(st);
    // Restarted, it resumes from snapshot + tail and follows on.
    c.commit(20);
    let f = spawn_follower(MemStore::open("f", &disk, Durability::Sync), opts(&leader))
        .await
        .unwrap();
    // Recovery was checked above; once spawned it may already follow on.
    assert!(f.applied_index() >= 150, "recovered from its own store");
    wait_for("the restarted follower at 170", || {
        f.shared.lock().unwrap().persisted_index() == 170
    })
    .await;
    assert_eq!(f.root_hash(), c.stream.node().root_hash());
    assert_eq!(f.shared.lock().unwrap().snapshots_installed, 0);
    // The snapshot recovery started from, as `/health` shows it.
    assert_eq!(
        f.shared.lock().unwrap().last_snapshot,
        Some((120, node.hlc))
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(swoosh_net::p2p::http::serve_follower(
        listener,
        f.shared.clone(),
    ));
    let h = swoosh_net::client::Client::new(&url)
        .health()
        .await
        .unwrap();
    assert_eq!(h.last_snapshot_index, Some(120));
    assert_eq!(h.last_snapshot_hlc, node.hlc.map(|h| h.to_string()));
    assert!(h.last_snapshot_hlc.is_some());
}

/// A leader whose log was compacted (`swoosh wal compact`: records 1..=120,
/// all it held, archived and cut, the snapshot at 120 its WAL base) serves a
/// new follower: a range from record 1 is answered with the base snapshot
/// even while the WAL holds no record after it, then records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_follower_of_a_compacted_leader_catches_up_from_its_base_snapshot() {
    use swoosh_storage::{MemDisk, MemStore};
    let mut c = cluster("p2p-compacted", 1);
    c.commit(120);
    let archive = c.dirs[0].path().join("archive.cbor");
    let g = c.genesis.clone();
    let r = swoosh_storage::compact(
        c.writer.store_mut(),
        &g,
        120,
        &archive,
        &swoosh_storage::CompactOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(r.base.index, 120);
    assert_eq!(
        swoosh_storage::LogStore::list_snapshots(c.writer.store()).unwrap(),
        vec![120]
    );
    let leader = c.leader().await;
    let disk = MemDisk::new();
    let (k, a) = c.followers[0].clone();
    let f = spawn_follower(
        MemStore::open("f", &disk, Durability::Sync),
        FollowerOptions {
            key: k,
            genesis: g.clone(),
            age_identity: a,
            leader: leader.listen_addrs[0].clone(),
            listen: None,
            snapshot_every: swoosh_net::p2p::follower::FOLLOWER_SNAPSHOT_EVERY_DEFAULT,
            compaction: None,
        },
    )
    .await
    .unwrap();
    wait_for("the new follower at 120, from the snapshot", || {
        f.shared.lock().unwrap().persisted_index() == 120
    })
    .await;
    c.commit(30);
    wait_for("the new follower at 150, persisted", || {
        f.shared.lock().unwrap().persisted_index() == 150
    })
    .await;
    assert_eq!(f.shared.lock().unwrap().snapshots_installed, 1);
    assert_eq!(f.root_hash(), c.stream.node().root_hash());
    assert!(leader.snapshot().stats.snapshot_offers >= 1);
    drop(f);
    let st = MemStore::open("f", &disk, Durability::Sync);
    assert_eq!(swoosh_storage::first_index(&st).unwrap(), 121);
}

/// A follower snapshots its own state every N records and, with a
/// compaction policy, compacts its own log after a snapshot; restarted, it
/// recovers from its newest snapshot, not from the start of its log. On the
/// in-memory store this runs on the worker thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_follower_snapshots_and_compacts_its_own_log() {
    use swoosh_storage::{MemDisk, MemStore};
    let disk = MemDisk::new();
    follower_upkeep("p2p-follower-upkeep", || {
        MemStore::open("f", &disk, Durability::Sync)
    })
    .await;
}

/// The same on LMDB with its commit journal, where the snapshot and the
/// compaction run on their own thread beside the worker, which goes on
/// committing meanwhile: a stop waits for that thread, so the store reopens
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_follower_on_lmdb_snapshots_and_compacts_beside_its_worker() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().to_path_buf();
    follower_upkeep("p2p-follower-upkeep-lmdb", move || {
        LmdbStore::open(
            &path,
            &LmdbOptions {
                durability: Durability::Sync,
                ..Default::default()
            },
        )
        .expect("the follower's store reopens once the follower stopped")
    })
    .await;
}

async fn follower_upkeep<S: swoosh_storage::LogStore + Send + 'static>(
    label: &str,
    open: impl Fn() -> S,
) {
    let mut c = cluster(label, 1);
    let leader = c.leader().await;
    let archives = tempfile::tempdir().unwrap();
    let (k, a) = c.followers[0].clone();
    let g = c.genesis.clone();
    let opts = |leader: &LeaderP2p| FollowerOptions {
        key: k.clone(),
        genesis: g.clone(),
        age_identity: a.clone(),
        leader: leader.listen_addrs[0].clone(),
        listen: None,
        snapshot_every: 20,
        compaction: Some(swoosh_actors::CompactionPolicy {
            keep_records: 15,
            min_records: 10,
            archive_dir: archives.path().to_path_buf(),
            drop_decisions: false,
        }),
    };
    let f = spawn_follower(open(), opts(&leader)).await.unwrap();
    for _ in 0..10 {
        c.commit(10);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for("the follower at 100, persisted", || {
        f.shared.lock().unwrap().persisted_index() == 100
    })
    .await;
    wait_for("a compaction of the follower's log", || {
        f.shared.lock().unwrap().compactions_ok > 0
    })
    .await;
    {
        let s = f.shared.lock().unwrap();
        let snap = s.last_snapshot.expect("a snapshot");
        assert!(snap.0 >= 20, "{snap:?}");
        assert!(s.snapshots_ok >= 1);
        assert_eq!((s.snapshots_failed, s.compactions_failed), (0, 0));
        assert!(s.wal_base_index > 0 && s.wal_base_index < snap.0);
    }
    assert_eq!(f.root_hash(), c.stream.node().root_hash());
    drop(f);

    let st = open();
    let base = swoosh_storage::wal_base(&st).unwrap().expect("compacted");
    let rec = swoosh_storage::recover(&st, &g).unwrap();
    assert!(rec.snapshot.is_some_and(|s| s >= 20), "{:?}", rec.snapshot);
    assert!(
        rec.replayed < 100,
        "recovered from a snapshot: {}",
        rec.replayed
    );
    assert_eq!(rec.node.root_hash(), c.stream.node().root_hash());
    drop(st);
    let mut files: Vec<_> = std::fs::read_dir(archives.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let first = swoosh_storage::read_archive(&files[0]).unwrap();
    let last = swoosh_storage::read_archive(files.last().unwrap()).unwrap();
    assert_eq!((first.first, first.prev_hash), (1, g.hash().unwrap()));
    assert_eq!((last.last, last.last_hash), (base.index, base.hash));

    // Restarted on its compacted store, it follows on; stopped while
    // records arrive, it leaves exactly what it persisted.
    let f = spawn_follower(open(), opts(&leader)).await.unwrap();
    assert_eq!(f.shared.lock().unwrap().wal_base_index, base.index);
    assert_eq!(f.shared.lock().unwrap().base_snapshot_fault, None);
    c.commit(20);
    wait_for("the restarted follower at 120", || {
        f.shared.lock().unwrap().persisted_index() == 120
    })
    .await;
    assert_eq!(f.root_hash(), c.stream.node().root_hash());
    c.commit(40);
    tokio::time::sleep(Duration::from_millis(30)).await;
    f.stop();
    let persisted = f.shared.lock().unwrap().persisted_index();
    drop(f);
    let st = open();
    let rec = swoosh_storage::recover(&st, &g).unwrap();
    assert_eq!(
        rec.node.index, persisted,
        "what the stop persisted, and no more"
    );
    // The counts a compaction beside the WAL writer recorded for the
    // records it cut still add up with what the writer added meanwhile
    // (a follower stores one idempotency entry per record, no decisions).
    let base = swoosh_storage::wal_base(&st).unwrap().expect("compacted");
    let kept = swoosh_storage::base::base_derived(&st)
        .unwrap()
        .expect("compaction records what it kept");
    assert_eq!(
        st.count(swoosh_storage::Space::Idem).unwrap(),
        kept.idem + (persisted - base.index),
        "idempotency entries: {kept:?} at or below the base {}",
        base.index
    );

    // Damage the snapshot at the base (recovery starts from a newer one):
    // the restarted follower reports it at once.
    let key = swoosh_storage::store::index_key(base.index);
    let mut v = st
        .get(swoosh_storage::Space::Snapshots, &key)
        .unwrap()
        .expect("the base snapshot");
    let at = v.len() / 2;
    v[at] ^= 0x04;
    let mut st = st;
    st.overwrite_raw(swoosh_storage::Space::Snapshots, &key, &v)
        .unwrap();
    drop(st);
    let f = spawn_follower(open(), opts(&leader)).await.unwrap();
    let fault = f.shared.lock().unwrap().base_snapshot_fault.clone();
    assert!(
        fault
            .as_deref()
            .is_some_and(|w| w.contains(&format!("WAL base {} is damaged", base.index))),
        "{fault:?}"
    );
}

/// Compaction runs after a follower's own snapshots: asked for without
/// them, the follower refuses to start instead of never compacting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_follower_refuses_compaction_without_snapshots() {
    use swoosh_storage::{MemDisk, MemStore};
    let c = cluster("p2p-follower-compaction-config", 1);
    let leader = c.leader().await;
    let archives = tempfile::tempdir().unwrap();
    // No snapshots to compact after; a compaction that may cut through the
    // record the writer holds.
    for (snapshot_every, keep_records, says) in [(0, 15, "snapshot_every"), (20, 0, "keep_records")]
    {
        let (k, a) = c.followers[0].clone();
        let r = spawn_follower(
            MemStore::open("f", &MemDisk::new(), Durability::Sync),
            FollowerOptions {
                key: k,
                genesis: c.genesis.clone(),
                age_identity: a,
                leader: leader.listen_addrs[0].clone(),
                listen: None,
                snapshot_every,
                compaction: Some(swoosh_actors::CompactionPolicy {
                    keep_records,
                    min_records: 10,
                    archive_dir: archives.path().to_path_buf(),
                    drop_decisions: false,
                }),
            },
        )
        .await;
        let Err(e) = r else {
            panic!("a follower started with snapshot_every {snapshot_every}, keep_records {keep_records}")
        };
        assert!(e.to_string().contains(says), "{e}");
    }
}

/// A follower whose own WAL refuses a write halts: it applies nothing more
/// in memory (its applied index never runs ahead of what it could not
/// persist), and the leader's view of it raises the alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_follower_whose_wal_fails_halts_and_the_leader_sees_it() {
    use swoosh_storage::{MemDisk, MemStore};
    let mut c = cluster("p2p-persist-fail", 1);
    c.commit(20);
    let leader = c.leader().await;
    let disk = MemDisk::new();
    let (k, a) = c.followers[0].clone();
    let mut store = MemStore::open("f", &disk, Durability::Sync);
    // Opening the writer commits its metadata; the first append then fails.
    store.crash_after_commits(1);
    let f = spawn_follower(
        store,
        FollowerOptions {
            key: k.clone(),
            genesis: c.genesis.clone(),
            age_identity: a.clone(),
            leader: leader.listen_addrs[0].clone(),
            listen: None,
            snapshot_every: swoosh_net::p2p::follower::FOLLOWER_SNAPSHOT_EVERY_DEFAULT,
            compaction: None,
        },
    )
    .await
    .unwrap();
    wait_for("the follower halted on its WAL", || {
        f.shared
            .lock()
            .unwrap()
            .halted_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("persist"))
    })
    .await;
    assert_eq!(f.shared.lock().unwrap().persisted_index(), 0);
    let at = f.applied_index();
    c.commit(30);
    wait_for("the leader sees the halted follower", || {
        leader.followers()[0].halted
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.applied_index(), at, "nothing applied after the failure");
}

/// A divergence halt is recorded in the follower's store: a restart stays
/// halted (applies and asks for nothing, and says so)
/// instead of serving as healthy until it meets the same record again; only
/// clearing the marker lets it run the protocol again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_divergence_halt_is_held_across_a_restart() {
    use swoosh_storage::{clear_halt, recorded_halt, MemDisk, MemStore};
    let mut c = cluster("p2p-diverge", 1);
    c.commit(30);
    let leader = c.leader().await;
    // The follower's store holds 10 valid records of another history of the
    // same genesis (one project instead of two): the leader's record 10 is
    // another one, and its record 11 does not chain onto the follower's.
    let disk = MemDisk::new();
    let mut other = Stream::resume(
        "p2p-diverge",
        1,
        NodeState::new(c.genesis.clone()).unwrap(),
        Verify::Trusted,
    );
    let mut w = WalWriter::open(
        MemStore::open("f", &disk, Durability::Sync),
        c.genesis.hash().unwrap(),
        BatchLimits::default(),
    )
    .unwrap();
    let entries: Vec<Entry> = other
        .take(10)
        .into_iter()
        .map(Entry::from_accepted)
        .collect();
    w.append_batch(&entries).unwrap();
    drop(w);
    let (k, a) = c.followers[0].clone();
    let g = c.genesis.clone();
    let opts = |leader: &LeaderP2p| FollowerOptions {
        key: k.clone(),
        genesis: g.clone(),
        age_identity: a.clone(),
        leader: leader.listen_addrs[0].clone(),
        listen: None,
        snapshot_every: swoosh_net::p2p::follower::FOLLOWER_SNAPSHOT_EVERY_DEFAULT,
        compaction: None,
    };
    let halted = |f: &FollowerP2p| f.shared.lock().unwrap().halted_reason.clone();
    let f = spawn_follower(MemStore::open("f", &disk, Durability::Sync), opts(&leader))
        .await
        .unwrap();
    // Whichever comes first: the leader's answer to its status report
    // (record 10 differs) or applying record 11.
    wait_for("the follower halts on the divergence", || {
        halted(&f).is_some_and(|r| r.starts_with("divergence at 1"))
    })
    .await;
    drop(f);
    let m = recorded_halt(&MemStore::open("f", &disk, Durability::Sync))
        .unwrap()
        .expect("the halt is recorded in the store");
    assert!(m.index == 10 || m.index == 11, "{m:?}");
    let at = format!("divergence at {}", m.index);

    // Restarted: halted from the start, on the recorded reason.
    let f = spawn_follower(MemStore::open("f", &disk, Durability::Sync), opts(&leader))
        .await
        .unwrap();
    let why = halted(&f).expect("halted before any message");
    assert!(
        why.starts_with(&at) && why.contains("--clear-halt"),
        "{why}"
    );
    assert!(f.shared.lock().unwrap().repl.halted().is_some());
    c.commit(20);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.applied_index(), 10, "a held halt applies nothing");
    drop(f);

    // Cleared: it runs the protocol again (and, its store still being
    // another history, halts again on what it finds, not on the marker).
    let mut s = MemStore::open("f", &disk, Durability::Sync);
    assert_eq!(clear_halt(&mut s).unwrap(), Some(m));
    let f = spawn_follower(s, opts(&leader)).await.unwrap();
    wait_for("a fresh divergence after clearing", || {
        halted(&f).is_some_and(|r| r.starts_with("divergence at 1") && !r.contains("--clear-halt"))
    })
    .await;
}

/// A leader restarted on a shorter log (its tail cut by a repair, or its
/// store restored from an older copy) tells a follower that holds more
/// records to halt at its next status report, and shows it halted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_a_follower_ahead_of_a_restarted_leader_halts() {
    let mut c = cluster("p2p-ahead", 1);
    c.commit(30);
    let leader = c.leader().await;
    let addr = leader.listen_addrs[0].clone();
    let f = c.follower(0, &leader, false).await;
    wait_for("the follower at 30", || f.applied_index() == 30).await;
    leader.stop();
    drop(leader);
    // The same genesis and stream, 12 records: what the leader holds after
    // losing its tail.
    let mut dirs = vec![];
    let mut stream = Stream::resume(
        "p2p-ahead",
        2,
        NodeState::new(c.genesis.clone()).unwrap(),
        Verify::Trusted,
    );
    let mut w = WalWriter::open(
        store(&mut dirs),
        c.genesis.hash().unwrap(),
        BatchLimits::default(),
    )
    .unwrap();
    let entries: Vec<Entry> = stream
        .take(12)
        .into_iter()
        .map(Entry::from_accepted)
        .collect();
    w.append_batch(&entries).unwrap();
    let short = restart_leader(w.store().clone(), &c, &addr).await;
    wait_for("the follower halts on the leader's word", || {
        f.shared
            .lock()
            .unwrap()
            .halted_reason
            .as_deref()
            .is_some_and(|r| r.contains("the leader's log ends at 12"))
    })
    .await;
    assert!(short.followers()[0].halted);
    assert_eq!(f.applied_index(), 30, "it keeps what it holds, as evidence");
}

/// The follower's `/health` and `/metrics` show how its worker keeps up:
/// group commits made, records they held, gossip dropped for a full inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_follower_health_shows_its_commits_and_inbox_drops() {
    let mut c = cluster("p2p-health", 1);
    c.commit(30);
    let leader = c.leader().await;
    let f = c.follower(0, &leader, false).await;
    wait_for("the follower at 30, persisted", || {
        f.shared.lock().unwrap().persisted_index() == 30
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = f.shared.clone();
    tokio::spawn(async move { swoosh_net::p2p::http::serve_follower(listener, shared).await });
    let http = reqwest::Client::new();
    let h: serde_json::Value = http
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["persisted_index"], 30);
    assert_eq!(h["inbox_full_drops"], 0);
    assert_eq!(h["wal_committed_records"], 30);
    let commits = h["wal_commits"].as_u64().unwrap();
    assert!((1..=30).contains(&commits), "{commits} commits");
    let m = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(&format!("swoosh_follower_wal_commits_total {commits}\n")),
        "{m}"
    );
    assert!(
        m.contains("swoosh_follower_inbox_full_drops_total 0\n"),
        "{m}"
    );
    // Each commit observed, under the leader's names: latency and size.
    assert!(
        m.contains(&format!("swoosh_fsync_latency_seconds_count {commits}\n")),
        "{m}"
    );
    assert!(
        m.contains("# TYPE swoosh_commit_batch_records histogram"),
        "{m}"
    );
    assert!(m.contains("swoosh_commit_batch_records_sum 30\n"), "{m}");
}

/// One peer id holds at most `CONNECTIONS_PER_PEER_MAX` connections to the
/// leader at once: more are refused (every connection holds buffers and a
/// gossip queue, and the handshake authenticates nobody).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_one_peer_cannot_open_more_connections_than_the_cap() {
    use futures::StreamExt;
    use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
    use swoosh_net::p2p::CONNECTIONS_PER_PEER_MAX;
    let c = cluster("p2p-conn-cap", 1);
    let leader = c.leader().await;
    // A dialer without limits of its own: what refuses is the leader.
    let mut peer = swoosh_net::p2p::build_swarm_limited(
        &key_from_label("p2p-conn-cap/peer"),
        agent_version(&c.genesis),
        swoosh_net::p2p::IDENTIFY_PROTOCOL,
        libp2p::connection_limits::ConnectionLimits::default(),
    )
    .unwrap();
    let extra = 3;
    for _ in 0..CONNECTIONS_PER_PEER_MAX + extra {
        peer.dial(
            DialOpts::peer_id(leader.peer_id)
                .addresses(vec![leader.listen_addrs[0].clone()])
                .condition(PeerCondition::Always)
                .build(),
        )
        .unwrap();
    }
    let (mut established, mut ended) = (0u32, 0u32);
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match peer.select_next_some().await {
                libp2p::swarm::SwarmEvent::ConnectionEstablished { .. } => established += 1,
                libp2p::swarm::SwarmEvent::ConnectionClosed { .. }
                | libp2p::swarm::SwarmEvent::OutgoingConnectionError { .. } => ended += 1,
                _ => {}
            }
        }
    })
    .await;
    let open = established.saturating_sub(ended);
    assert!(
        open <= CONNECTIONS_PER_PEER_MAX,
        "{open} connections open ({established} established, {ended} ended)"
    );
    assert!(
        ended >= extra,
        "the ones past the cap were refused: {ended} ended"
    );
}
