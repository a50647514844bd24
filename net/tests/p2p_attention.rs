//! The leader's replication events reach the node's attention scorer: a
//! real leader and followers over loopback libp2p, the leader's
//! [`ReplWatch`](swoosh_net::p2p::leader::ReplWatch) feeding
//! `NodeHandle::observe`, read back through `NodeHandle::attention`.

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::request_response::{self, Message, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swoosh_actors::{AttentionView, NodeConfig, NodeHandle, SystemClock};
use swoosh_core::attention::{fingerprint, Band, Event, EventKind, Surfaced};
use swoosh_core::guards::Verify;
use swoosh_core::scenario::Keys;
use swoosh_core::sig::{key_from_label, SignerId};
use swoosh_core::state::{FollowerEntry, Genesis, NodeState};
use swoosh_net::p2p::follower::{spawn_follower, FollowerOptions};
use swoosh_net::p2p::leader::{
    attention_sink, reason, record_hash, spawn_leader, LeaderP2p, WatchConfig,
};
use swoosh_net::p2p::peer::spawn_peer;
use swoosh_net::p2p::{
    agent_version, agent_version_of, build_swarm, council_topic, BehaviourEvent,
};
use swoosh_net::proto::wire::{self, Bytes, Response, StatusReport};
use swoosh_storage::testkit::{stream_genesis, Stream};
use swoosh_storage::{
    BatchLimits, Durability, Entry, LmdbOptions, LmdbStore, MemDisk, MemStore, WalWriter,
};

/// Only turns a hang into a failure.
const WAIT: Duration = Duration::from_secs(60);

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

/// A leader's log (written directly) and a node whose attention scorer
/// the leader reports to.
struct Cluster {
    genesis: Genesis,
    leader_key: SigningKey,
    followers: Vec<(SigningKey, age::x25519::Identity)>,
    stream: Stream,
    writer: WalWriter<LmdbStore>,
    node: NodeHandle<LmdbStore>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn cluster(label: &str, followers: usize) -> Cluster {
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
    let leader_key = Keys::from_labels(label, 3).leader;
    let node = NodeHandle::start(
        store(&mut dirs),
        NodeConfig {
            genesis: g.clone(),
            leader_key: leader_key.clone(),
            snapshot_every: 10_000,
            snapshot_keep: 3,
            wal_limits: Default::default(),
            clock: Arc::new(SystemClock),
            advertise: String::new(),
            attention_file: None,
            compaction: None,
        },
    )
    .await
    .expect("node starts");
    Cluster {
        genesis: g,
        leader_key,
        followers: fs,
        stream,
        writer,
        node,
        _dirs: dirs,
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

    /// The leader, reporting to the node's scorer.
    async fn leader(&self, cfg: Option<WatchConfig>) -> LeaderP2p {
        let l = spawn_leader(
            self.writer.store().clone(),
            self.leader_key.clone(),
            self.genesis.clone(),
            "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        )
        .await
        .unwrap();
        // Staleness (no report for 5 s, or no connection within 5 s of the
        // start) is the unit tests' business: a loaded machine could stall
        // that long here and add a Partition the test does not expect.
        let c = cfg.unwrap_or(WatchConfig {
            report_stale_ms: 60_000,
            ..WatchConfig::default()
        });
        l.set_attention_with(attention_sink(&self.node), c);
        l
    }

    fn follower_opts(&self, i: usize, leader: &LeaderP2p) -> FollowerOptions {
        let (k, a) = &self.followers[i];
        FollowerOptions {
            key: k.clone(),
            genesis: self.genesis.clone(),
            age_identity: a.clone(),
            leader: leader.listen_addrs[0].clone(),
            listen: None,
            snapshot_every: swoosh_net::p2p::follower::FOLLOWER_SNAPSHOT_EVERY_DEFAULT,
            compaction: None,
        }
    }

    async fn view(&self) -> AttentionView {
        self.node.attention(Band::IgnoreFast).await.unwrap()
    }

    /// Wait until the scorer's view satisfies `f`.
    async fn until(&self, what: &str, f: impl Fn(&AttentionView) -> bool) -> AttentionView {
        let t0 = Instant::now();
        loop {
            let v = self.view().await;
            if f(&v) {
                return v;
            }
            assert!(
                t0.elapsed() < WAIT,
                "timed out waiting for {what}: {:?}",
                v.counts
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn count(v: &AttentionView, kind: EventKind) -> u64 {
    v.counts.get(kind.name()).copied().unwrap_or(0)
}

/// The first surfaced item of `kind`.
fn item(v: &AttentionView, kind: EventKind) -> Option<&Surfaced> {
    v.digest.items.iter().find(|i| i.kind == kind)
}

/// The item of `kind` and `reason` with no detail: the fingerprint the
/// chaos simulator gives the same event.
fn sim_item<'a>(v: &'a AttentionView, kind: EventKind, reason: &str) -> Option<&'a Surfaced> {
    let fp = fingerprint(&Event::new(kind, reason, 0));
    v.digest.items.iter().find(|i| i.fingerprint == fp)
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A follower that stops (its connection closes) is a `Partition` of that
/// follower; restarted behind the leader it reconnects
/// (`PartitionHealed`), asks for the range it missed (`FollowerGap`) and
/// catches up (`FollowerCaughtUp`), which heals both failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_follower_is_a_partition_healed_by_its_restart() {
    let mut c = cluster("attn-partition", 1).await;
    c.commit(40);
    let leader = c.leader(None).await;
    let disk = MemDisk::new();
    let f = spawn_follower(
        MemStore::open("f", &disk, Durability::Sync),
        c.follower_opts(0, &leader),
    )
    .await
    .unwrap();
    wait_for("the leader sees the follower at 40", || {
        let s = &leader.followers()[0];
        s.connected && s.applied_index == Some(40)
    })
    .await;
    let before = c.view().await;
    assert_eq!(
        count(&before, EventKind::Partition),
        0,
        "{:?}",
        before.counts
    );

    // Dropping joins the worker and closes the swarm: the leader sees the
    // connection go.
    drop(f);
    let v = c
        .until("a partition", |v| count(v, EventKind::Partition) == 1)
        .await;
    let p = sim_item(&v, EventKind::Partition, reason::CUT).expect("the partition is surfaced");
    assert_eq!(p.peers, vec!["follower-1".to_string()]);
    assert!(p.open, "not healed yet");

    c.commit(60);
    let caught_up_before = count(&v, EventKind::FollowerCaughtUp);
    let gaps_before = count(&v, EventKind::FollowerGap);
    // What the restart recovers from its own WAL, checked before it: once
    // spawned, it may fetch the leader's tail at once.
    let st = MemStore::open("f", &disk, Durability::Sync);
    assert_eq!(
        swoosh_storage::recover(&st, &c.genesis).unwrap().node.index,
        40
    );
    drop(st);
    let f = spawn_follower(
        MemStore::open("f", &disk, Durability::Sync),
        c.follower_opts(0, &leader),
    )
    .await
    .unwrap();
    // Once spawned, it may fetch the leader's tail at once.
    assert!(f.applied_index() >= 40, "restarted from its own WAL");
    let v = c
        .until("reconnected, gapped and caught up", |v| {
            count(v, EventKind::PartitionHealed) == 1
                && count(v, EventKind::FollowerGap) > gaps_before
                && count(v, EventKind::FollowerCaughtUp) > caught_up_before
        })
        .await;
    assert_eq!(f.applied_index(), 100);
    let p = item(&v, EventKind::Partition).unwrap();
    assert!(!p.open, "healed by the reconnection: {p:?}");
    assert!(p.heals >= 1);
    let gap = item(&v, EventKind::FollowerGap).expect("the gap is surfaced");
    assert_eq!(gap.peers, vec!["follower-1".to_string()]);
    assert!(!gap.open, "healed by catching up: {gap:?}");
    for k in [EventKind::PartitionHealed, EventKind::FollowerCaughtUp] {
        let i = item(&v, k).unwrap_or_else(|| panic!("{k:?} surfaced"));
        assert_eq!(i.peers, vec!["follower-1".to_string()], "{k:?}");
    }
    // One transition each, not one per status report.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let later = c.view().await;
    for k in [
        EventKind::Partition,
        EventKind::PartitionHealed,
        EventKind::FollowerGap,
        EventKind::FollowerCaughtUp,
        EventKind::FollowerLag,
    ] {
        assert_eq!(count(&later, k), count(&v, k), "{k:?}: {:?}", later.counts);
    }
    let s = leader.snapshot();
    assert!(s.attention_events >= 4, "{s:?}");
    assert_eq!(s.attention_dropped, 0);
    drop(f);
}

/// A follower whose WAL fails halts and says so: one `FollowerGap`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_follower_is_reported_once() {
    let mut c = cluster("attn-halt", 1).await;
    c.commit(20);
    let leader = c.leader(None).await;
    let disk = MemDisk::new();
    let mut store = MemStore::open("f", &disk, Durability::Sync);
    // Opening the writer commits its metadata; the first append then fails.
    store.crash_after_commits(1);
    let _f = spawn_follower(store, c.follower_opts(0, &leader))
        .await
        .unwrap();
    wait_for("the leader sees the halted follower", || {
        leader.followers()[0].halted
    })
    .await;
    let v = c
        .until("the halt", |v| {
            sim_item(v, EventKind::FollowerGap, reason::HALTED).is_some()
        })
        .await;
    let halt = sim_item(&v, EventKind::FollowerGap, reason::HALTED).unwrap();
    assert_eq!(halt.peers, vec!["follower-1".to_string()]);
    assert!(halt.open);
    assert!(halt.band >= Band::Watch);
    c.commit(20);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let later = c.view().await;
    assert_eq!(
        count(&later, EventKind::FollowerGap),
        count(&v, EventKind::FollowerGap),
        "reported once, not per report: {:?}",
        later.counts
    );
    assert_eq!(
        count(&later, EventKind::FollowerCaughtUp),
        count(&v, EventKind::FollowerCaughtUp),
        "a halted follower does not catch up"
    );
}

/// A peer driven by hand: it speaks the replication protocol with any key.
struct Fake {
    connected: Arc<AtomicBool>,
    cmd: tokio::sync::mpsc::UnboundedSender<(
        Vec<u8>,
        tokio::sync::oneshot::Sender<Option<Response>>,
    )>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    async fn start(key: &SigningKey, agent: String, leader: &LeaderP2p) -> Fake {
        let mut swarm = build_swarm(key, agent).unwrap();
        swarm.dial(leader.listen_addrs[0].clone()).unwrap();
        let to = leader.peer_id;
        let connected = Arc::new(AtomicBool::new(false));
        let up = connected.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(
            Vec<u8>,
            tokio::sync::oneshot::Sender<Option<Response>>,
        )>();
        let task = tokio::spawn(async move {
            let mut pending: HashMap<
                OutboundRequestId,
                tokio::sync::oneshot::Sender<Option<Response>>,
            > = HashMap::new();
            loop {
                tokio::select! {
                    ev = swarm.select_next_some() => match ev {
                        SwarmEvent::ConnectionEstablished { .. } => up.store(true, Ordering::SeqCst),
                        SwarmEvent::ConnectionClosed { .. } => up.store(false, Ordering::SeqCst),
                        SwarmEvent::Behaviour(BehaviourEvent::Rr(request_response::Event::Message {
                            message: Message::Response { request_id, response }, ..
                        })) => {
                            if let Some(r) = pending.remove(&request_id) {
                                let _ = r.send(wire::decode_response(&response.0).ok());
                            }
                        }
                        SwarmEvent::Behaviour(BehaviourEvent::Rr(
                            request_response::Event::OutboundFailure { request_id, .. },
                        )) => {
                            if let Some(r) = pending.remove(&request_id) {
                                let _ = r.send(None);
                            }
                        }
                        _ => {}
                    },
                    cmd = rx.recv() => match cmd {
                        Some((bytes, reply)) => {
                            let id = swarm.behaviour_mut().rr.send_request(&to, Bytes(bytes));
                            pending.insert(id, reply);
                        }
                        None => break,
                    },
                }
            }
        });
        let f = Fake {
            connected,
            cmd: tx,
            task,
        };
        wait_for("the fake peer connected", || {
            f.connected.load(Ordering::SeqCst)
        })
        .await;
        f
    }

    async fn raw(&self, bytes: Vec<u8>) -> Option<Response> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.cmd.send((bytes, tx)).ok()?;
        tokio::time::timeout(WAIT, rx).await.ok()?.ok()?
    }

    async fn request(&self, r: &wire::Request) -> Option<Response> {
        self.raw(wire::encode_request(r).unwrap()).await
    }

    async fn status(&self, applied_index: u64, applied_hash: swoosh_core::hash::Hash) {
        let r = self
            .request(&wire::Request::Status(StatusReport {
                applied_index,
                applied_hash,
                root_hash: applied_hash,
                leader_index: 0,
                halted: false,
            }))
            .await;
        assert!(
            matches!(r, Some(Response::StatusAck { .. })),
            "status answered with {r:?}"
        );
    }
}

/// A follower made to lag (a peer with its key reporting an old position):
/// `FollowerLag` once the lag passes the thresholds, once however many
/// reports follow; a range request is a `FollowerGap`; reporting the
/// leader's head again is `FollowerCaughtUp`, once. Requests that do not
/// decode, requests from outside genesis and peers of another genesis are
/// `ForgedMessage`s; its connection going is a `Partition`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_and_refused_peers_are_reported() {
    let mut c = cluster("attn-lag", 1).await;
    c.commit(100);
    let cfg = WatchConfig {
        lag_ms: 300,
        caught_up_ms: 150,
        report_stale_ms: 60_000,
        ..WatchConfig::default()
    };
    let leader = c.leader(Some(cfg)).await;
    wait_for("the leader published 100", || {
        leader.snapshot().published_index == 100
    })
    .await;
    let gh = c.genesis.hash().unwrap();
    let fake = Fake::start(&c.followers[0].0, agent_version(&c.genesis), &leader).await;

    // Stuck at 0, reporting every 50 ms.
    let t0 = Instant::now();
    let mut reports = 0;
    while count(&c.view().await, EventKind::FollowerLag) == 0 {
        assert!(t0.elapsed() < WAIT, "no lag reported");
        fake.status(0, gh).await;
        reports += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(cfg.lag_ms),
        "not before the lag time"
    );
    // The lag fires on the first report at least lag_ms after the first
    // one: the second, if the loop stalled that long.
    assert!(reports >= 2, "{reports} reports");
    for _ in 0..6 {
        fake.status(0, gh).await;
    }
    let v = c.view().await;
    assert_eq!(count(&v, EventKind::FollowerLag), 1, "{:?}", v.counts);
    let lag = sim_item(&v, EventKind::FollowerLag, reason::LAGGING)
        .expect("the simulator's lag fingerprint");
    assert_eq!(lag.peers, vec!["follower-1".to_string()]);
    assert!(lag.open);

    // A range request: the follower saw a gap (once).
    for _ in 0..2 {
        let r = fake
            .request(&wire::Request::Range { from: 1, to: 100 })
            .await;
        assert!(matches!(r, Some(Response::Range { .. })), "{r:?}");
    }
    let v = c
        .until("the gap", |v| count(v, EventKind::FollowerGap) == 1)
        .await;
    assert!(item(&v, EventKind::FollowerGap)
        .unwrap()
        .example
        .contains("asked for records 1 to 100"));

    // At the leader's head: caught up, once; both failures healed.
    let head = record_hash(c.writer.store(), 100, gh).unwrap();
    for _ in 0..4 {
        fake.status(100, head).await;
    }
    let v = c
        .until("caught up", |v| count(v, EventKind::FollowerCaughtUp) >= 1)
        .await;
    assert_eq!(count(&v, EventKind::FollowerCaughtUp), 1, "{:?}", v.counts);
    assert!(!item(&v, EventKind::FollowerLag).unwrap().open);
    assert!(!item(&v, EventKind::FollowerGap).unwrap().open);
    let caught = item(&v, EventKind::FollowerCaughtUp).unwrap();
    assert_eq!(caught.peers, vec!["follower-1".to_string()]);

    // Garbage from the follower's key: refused, a forged message of shape.
    let r = fake.raw(b"\xff not a request".to_vec()).await;
    assert!(matches!(r, Some(Response::Refused { .. })), "{r:?}");
    // A request from a key outside genesis.
    let stranger_key = key_from_label("attn-lag/stranger");
    let stranger = Fake::start(&stranger_key, agent_version(&c.genesis), &leader).await;
    let r = stranger
        .request(&wire::Request::Range { from: 1, to: 2 })
        .await;
    assert!(matches!(r, Some(Response::Refused { .. })), "{r:?}");
    // A peer of another genesis: disconnected at the handshake.
    let mut foreign = build_swarm(
        &key_from_label("attn-lag/foreign"),
        agent_version_of("another-cluster", &gh),
    )
    .unwrap();
    foreign.dial(leader.listen_addrs[0].clone()).unwrap();
    let v = {
        let t0 = Instant::now();
        loop {
            let _ =
                tokio::time::timeout(Duration::from_millis(20), foreign.select_next_some()).await;
            let v = c.view().await;
            if count(&v, EventKind::ForgedMessage) >= 3 {
                break v;
            }
            assert!(t0.elapsed() < WAIT, "forged messages: {:?}", v.counts);
        }
    };
    let forged = |r: &str| {
        sim_item(&v, EventKind::ForgedMessage, r)
            .unwrap_or_else(|| panic!("a forged message {r}: {:?}", v.digest.items))
    };
    assert_eq!(forged("shape").peers, vec!["follower-1".to_string()]);
    assert_eq!(
        forged("not_follower").peers,
        vec![stranger_key_peer(&stranger_key)]
    );
    assert_eq!(forged("wrong_cluster").peers.len(), 1);
    assert!(forged("shape").band >= Band::Watch);

    // The follower's connection goes: a partition.
    drop(fake);
    c.until("the partition", |v| count(v, EventKind::Partition) == 1)
        .await;
    assert_eq!(leader.snapshot().attention_dropped, 0);
}

fn stranger_key_peer(k: &SigningKey) -> String {
    swoosh_net::p2p::peer_id_of(&SignerId::from_signing_key(k))
        .unwrap()
        .to_string()
}

/// A council message that does not decode is a forged message; a vote the
/// collector refuses is `VoteRejected` with its reason, voter and project,
/// as the chaos simulator reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_council_votes_are_reported() {
    let c = cluster("attn-council", 1).await;
    let leader = c.leader(None).await;
    let keys = Keys::from_labels("attn-council", 3);
    let topic = council_topic(&c.genesis.cluster_id);
    let peer = spawn_peer(
        &keys.council[0],
        agent_version(&c.genesis),
        std::slice::from_ref(&topic),
        None,
        &leader.listen_addrs,
    )
    .await
    .unwrap();
    wait_for("the leader's council subscription", || {
        peer.subscriptions.load(Ordering::Relaxed) >= 1
    })
    .await;
    let voter = SignerId::from_signing_key(&keys.council[0]);
    let vote = swoosh_core::facts::Vote::cast(
        swoosh_core::facts::VoteBody {
            project: "p0".into(),
            epoch: 1,
            member_set_hash: swoosh_core::hash::Hash([0; 32]),
            approve: true,
            voter: voter.clone(),
            genesis: None,
        },
        &keys.council[0],
    );
    let bytes =
        swoosh_net::p2p::agent::encode_council(&swoosh_net::proto::council::CouncilMsg::Vote(vote))
            .unwrap();
    // Published again until it arrives (a publish before the mesh forms
    // may go nowhere; the content-hash id makes a repeat a duplicate only
    // while it is remembered).
    let t0 = Instant::now();
    let v = loop {
        peer.publish(&topic, bytes.clone());
        peer.publish(&topic, format!("garbage {:?}", t0.elapsed()).into_bytes());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let v = c.view().await;
        if count(&v, EventKind::VoteRejected) >= 1 && count(&v, EventKind::ForgedMessage) >= 1 {
            break v;
        }
        assert!(t0.elapsed() < WAIT, "{:?}", v.counts);
    };
    let r = item(&v, EventKind::VoteRejected).unwrap();
    assert_eq!(r.signers, vec![voter.to_string()]);
    assert_eq!(r.projects, vec!["p0".to_string()]);
    assert_eq!(
        Some(r.fingerprint.as_str()),
        sim_item(&v, EventKind::VoteRejected, "no_election").map(|i| i.fingerprint.as_str()),
        "the simulator's fingerprint: {r:?}"
    );
    let f = sim_item(&v, EventKind::ForgedMessage, "shape").unwrap();
    assert_eq!(f.peers, vec![peer.peer_id.to_string()]);
}
