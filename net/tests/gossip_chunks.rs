//! WAL gossip of multi-chunk blobs over real libp2p swarms on 127.0.0.1
//! (wire-format §11): the leader signs the chunks of a large batch, and a
//! hostile peer of the mesh can neither poison nor evict them, so the batch
//! still arrives by gossip.

use ed25519_dalek::SigningKey;
use std::time::{Duration, Instant};
use swoosh_core::guards::Verify;
use swoosh_core::hash::Hash;
use swoosh_core::scenario::Keys;
use swoosh_core::sig::{self, key_from_label, SignerId};
use swoosh_core::state::{FollowerEntry, Genesis, NodeState};
use swoosh_net::p2p::envelope::{self, ChunkSigner, CHUNK_DATA_MAX, PARTIAL_BLOBS_MAX};
use swoosh_net::p2p::follower::{spawn_follower, FollowerOptions, FollowerP2p};
use swoosh_net::p2p::leader::spawn_leader_cfg;
use swoosh_net::p2p::peer::{spawn_peer, PeerHandle};
use swoosh_net::p2p::{agent_version, wal_topic, Multiaddr};
use swoosh_net::proto::leader::LeaderConfig;
use swoosh_net::proto::wire::{self, BatchHeader, Gossip, WalBatch, WAL_BATCH_DOMAIN};
use swoosh_storage::testkit::{stream_genesis, Stream};
use swoosh_storage::{BatchLimits, Durability, Entry, MemDisk, MemStore, WalWriter};

const WAIT: Duration = Duration::from_secs(60);

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A genesis with one follower, its keys, and the record stream after it.
struct Cluster {
    genesis: Genesis,
    genesis_hash: Hash,
    leader_key: SigningKey,
    follower_key: SigningKey,
    follower_age: age::x25519::Identity,
    stream: Stream,
}

fn cluster(label: &str) -> Cluster {
    let mut genesis = stream_genesis(label);
    let follower_key = key_from_label(&format!("{label}/follower-0"));
    let follower_age = age::x25519::Identity::generate();
    genesis.followers = vec![FollowerEntry {
        name: "follower-1".into(),
        key: SignerId::from_signing_key(&follower_key),
        age_recipient: follower_age.to_public().to_string(),
    }];
    genesis.validate().unwrap();
    let leader_key = Keys::from_labels(label, 3).leader;
    assert_eq!(SignerId::from_signing_key(&leader_key), genesis.leader);
    let stream = Stream::resume(
        label,
        2,
        NodeState::new(genesis.clone()).unwrap(),
        Verify::Trusted,
    );
    Cluster {
        genesis_hash: genesis.hash().unwrap(),
        genesis,
        leader_key,
        follower_key,
        follower_age,
        stream,
    }
}

impl Cluster {
    async fn follower(&self, leader: &Multiaddr) -> FollowerP2p {
        spawn_follower(
            MemStore::open("f", &MemDisk::new(), Durability::NoSync),
            FollowerOptions {
                key: self.follower_key.clone(),
                genesis: self.genesis.clone(),
                age_identity: self.follower_age.clone(),
                leader: leader.clone(),
                listen: Some("/ip4/127.0.0.1/tcp/0".parse().unwrap()),
                snapshot_every: swoosh_net::p2p::follower::FOLLOWER_SNAPSHOT_EVERY_DEFAULT,
                compaction: None,
            },
        )
        .await
        .unwrap()
    }

    /// A peer of the mesh that is neither leader nor follower.
    async fn peer(&self, label: &str, dial: &[Multiaddr]) -> PeerHandle {
        spawn_peer(
            &key_from_label(label),
            agent_version(&self.genesis),
            &[wal_topic(&self.genesis.cluster_id)],
            None,
            dial,
        )
        .await
        .unwrap()
    }
}

async fn listen_addr(f: &FollowerP2p) -> Multiaddr {
    let t0 = Instant::now();
    loop {
        if let Some(a) = f.listen_addrs().into_iter().next() {
            return a;
        }
        assert!(t0.elapsed() < WAIT, "the follower never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn chunk_counters(f: &FollowerP2p) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let net = f.shared.lock().unwrap().net.clone();
    (
        net.gossip_chunks.load(Relaxed),
        net.malformed_chunks.load(Relaxed),
    )
}

/// What a hostile peer sends: an SWC2 chunk of a multi-chunk blob with
/// any header and data, and a signature by its own key. Each `fill` gives
/// other bytes, so another gossipsub message id.
fn bogus(id: [u8; 32], index: u16, total: u16, last_index: u64, fill: u8) -> Vec<u8> {
    let len = if index + 1 == total {
        100
    } else {
        CHUNK_DATA_MAX
    };
    let mut f = b"SWC2".to_vec();
    f.extend_from_slice(&id);
    f.extend_from_slice(&index.to_be_bytes());
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&last_index.to_be_bytes());
    let hostile = key_from_label("gossip-chunks/hostile-signer");
    f.extend_from_slice(&sig::sign_bytes(&[fill], &hostile).0);
    f.extend(std::iter::repeat_n(fill, len));
    f
}

/// A peer with the leader's key publishes a large batch by gossip only
/// (it answers no range request): a bogus chunk for each index of the
/// batch's blob reaches the follower first, then more than
/// PARTIAL_BLOBS_MAX bogus partial blobs while the genuine one is partial.
/// Format 1 kept the first chunk of each index and the oldest partial blob
/// was evicted: the batch never arrived. Now it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bogus_chunks_neither_poison_nor_evict_a_large_batch() {
    let mut c = cluster("gossip-chunks-race");
    let n = 200u64;
    let records: Vec<_> = c
        .stream
        .take(n as usize)
        .into_iter()
        .map(|a| a.record)
        .collect();
    let header = BatchHeader {
        cluster_id: c.genesis.cluster_id.clone(),
        genesis_hash: c.genesis_hash,
        leader: c.genesis.leader.clone(),
        first_index: 1,
        last_index: n,
        prev_hash: records[0].prev_hash,
        record_hashes: records.iter().map(|r| r.hash()).collect(),
    };
    let signature = sig::sign(WAL_BATCH_DOMAIN, &header, &c.leader_key).unwrap();
    let plain = wire::encode_gossip(&Gossip::Batch(WalBatch {
        header,
        signature,
        records,
    }))
    .unwrap();
    let ct = envelope::encrypt(&plain, &[c.follower_age.to_public()]).unwrap();
    let id = Hash::of_bytes(&ct).0;
    let signer = ChunkSigner::new(&c.leader_key, c.genesis_hash);
    let frames = envelope::chunk_signed(&ct, &signer, n).unwrap();
    assert_eq!(&frames[0][4..36], &id[..]);
    let total = frames.len() as u16;
    assert!(total >= 3, "{total} chunks: the batch must span several");

    let topic = wal_topic(&c.genesis.cluster_id);
    // The "leader": a plain peer with the leader's key, so the follower
    // connects to it, and nothing but its gossip can bring the records.
    let leader = spawn_peer(
        &c.leader_key,
        agent_version(&c.genesis),
        std::slice::from_ref(&topic),
        Some("/ip4/127.0.0.1/tcp/0".parse().unwrap()),
        &[],
    )
    .await
    .unwrap();
    let f = c.follower(&leader.listen_addrs[0]).await;
    let hostile = c
        .peer("gossip-chunks-race/hostile", &[listen_addr(&f).await])
        .await;
    let subscribed =
        |p: &PeerHandle| p.subscriptions.load(std::sync::atomic::Ordering::Relaxed) > 0;
    wait_for("the follower's subscription", || {
        subscribed(&leader) && subscribed(&hostile)
    })
    .await;

    // A bogus chunk for every index of the genuine blob, first. Published
    // again (with other bytes, so another message id) until the follower
    // has received one of each.
    let mut round = 0u8;
    publish_until_received(&f, total as u64, || {
        round = round.wrapping_add(1);
        for index in 0..total {
            hostile.publish(&topic, bogus(id, index, total, n, round));
        }
    })
    .await;
    // The genuine chunks but the last: the blob is partial.
    let (received, _) = chunk_counters(&f);
    for fr in &frames[..frames.len() - 1] {
        leader.publish(&topic, fr.clone());
    }
    wait_for("the genuine chunks", || {
        chunk_counters(&f).0 >= received + total as u64 - 1
    })
    .await;
    // More bogus partial blobs than the follower holds at once.
    let flood = PARTIAL_BLOBS_MAX as u64 + 8;
    let (_, refused_before_flood) = chunk_counters(&f);
    publish_until_received(&f, flood, || {
        round = round.wrapping_add(1);
        for k in 0..flood {
            let fake_id = Hash::of_bytes(&[round, k as u8]).0;
            hostile.publish(&topic, bogus(fake_id, 0, 3, n + k, round));
        }
    })
    .await;
    assert_eq!(f.applied_index(), 0, "nothing complete yet");
    leader.publish(&topic, frames.last().unwrap().clone());
    wait_for("the batch, by gossip", || f.applied_index() == n).await;
    assert_eq!(f.root_hash(), c.stream.node().root_hash());
    // Every bogus chunk published is refused once it arrives (a late one
    // for a filled slot is dropped unverified and not counted, so only
    // the flood is counted on): wait for them rather than race them.
    wait_for("the flood's chunks, refused", || {
        chunk_counters(&f).1 >= refused_before_flood + flood
    })
    .await;
    let s = f.shared.lock().unwrap();
    assert_eq!(s.decrypted, 1, "one blob decrypted: the genuine one");
    assert!(s.halted_reason.is_none());
}

/// Publish with `publish` every 200 ms until the follower has received at
/// least `n` more chunks than when called.
async fn publish_until_received(f: &FollowerP2p, n: u64, mut publish: impl FnMut()) {
    let (before, _) = chunk_counters(f);
    let t0 = Instant::now();
    loop {
        publish();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if chunk_counters(f).0 >= before + n {
                return;
            }
        }
        assert!(
            t0.elapsed() < WAIT,
            "the follower never received {n} chunks"
        );
    }
}

/// The real leader, with batches large enough to span several chunks,
/// signs them and the follower converges, while a hostile peer that sees
/// each of the leader's chunks races bogus chunks for the rest of its blob
/// and floods bogus partial blobs. (Whether every record came by gossip is
/// not asserted: on a loaded machine the follower's 150 ms gap grace may
/// expire first and it rightly asks for a range; the fake leader of the
/// test above answers none, which is what proves delivery by gossip.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_signed_large_batches_arrive_by_gossip_under_a_flood() {
    let mut c = cluster("gossip-chunks-leader");
    let dir = tempfile::tempdir().unwrap();
    let store = swoosh_storage::LmdbStore::open(
        dir.path(),
        &swoosh_storage::LmdbOptions {
            durability: Durability::NoSync,
            ..Default::default()
        },
    )
    .unwrap();
    let mut writer = WalWriter::open(store, c.genesis_hash, BatchLimits::default()).unwrap();
    let leader = spawn_leader_cfg(
        writer.store().clone(),
        c.leader_key.clone(),
        c.genesis.clone(),
        "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        None,
        LeaderConfig {
            batch_records_max: 1_024,
            batch_bytes_max: 1 << 20,
            ..LeaderConfig::default()
        },
    )
    .await
    .unwrap();
    let f = c.follower(&leader.listen_addrs[0]).await;
    let topic = wal_topic(&c.genesis.cluster_id);
    let mut hostile = c
        .peer(
            "gossip-chunks-leader/hostile",
            &[leader.listen_addrs[0].clone(), listen_addr(&f).await],
        )
        .await;
    // The follower gets the leader's heads: gossip flows.
    wait_for("the leader's heads at the follower", || {
        // The leader's two topics and the follower's one.
        chunk_counters(&f).0 > 0
            && hostile
                .subscriptions
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 3
    })
    .await;
    let n = 600u64;
    let entries: Vec<Entry> = c
        .stream
        .take(n as usize)
        .into_iter()
        .map(Entry::from_accepted)
        .collect();
    writer.append_batch(&entries).unwrap();
    let mut multi_chunk = 0;
    let mut round = 0u8;
    let t0 = Instant::now();
    while f.applied_index() < n {
        assert!(
            t0.elapsed() < WAIT,
            "the follower stopped at {}",
            f.applied_index()
        );
        let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(20), hostile.inbox.recv()).await
        else {
            continue;
        };
        let total = u16::from_be_bytes([m.data[38], m.data[39]]);
        if total < 2 || m.data[36..38] != [0, 0] {
            continue;
        }
        // Chunk 0 of a genuine multi-chunk blob: race the rest, and flood.
        multi_chunk += 1;
        round = round.wrapping_add(1);
        let mut id = [0u8; 32];
        id.copy_from_slice(&m.data[4..36]);
        let last = u64::from_be_bytes(m.data[40..48].try_into().unwrap());
        for index in 1..total {
            hostile.publish(&topic, bogus(id, index, total, last, round));
        }
        for k in 0..PARTIAL_BLOBS_MAX as u8 + 4 {
            let fake_id = Hash::of_bytes(&[round, k]).0;
            hostile.publish(&topic, bogus(fake_id, 0, 3, last + 1, round));
        }
    }
    assert!(multi_chunk >= 1, "the leader published no multi-chunk blob");
    wait_for("the hostile peer's chunks, refused", || {
        chunk_counters(&f).1 > 0
    })
    .await;
    assert_eq!(f.root_hash(), c.stream.node().root_hash());
    let s = f.shared.lock().unwrap();
    assert!(s.halted_reason.is_none(), "{:?}", s.halted_reason);
}
