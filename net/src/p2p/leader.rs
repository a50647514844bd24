//! The leader's replication task: tail the durable log of a store (the one
//! the node's WAL writer commits to), feed [`ReplLeader`], publish batches
//! and heads on the WAL topic (age-encrypted, chunked), and answer catch-up
//! requests from followers listed in genesis.

use super::agent::{decode_council, encode_council};
use super::bounds::{clip, WarnLimiter};
use super::envelope;
use super::{agent_version, build_swarm, check_handshake, peer_id_of, wal_topic, P2pError};
use super::{Behaviour, BehaviourEvent};
use crate::proto::council::{
    certificate_proposal, electable_members, CouncilCollector, CouncilMsg, VoteOutcome,
    VoteRejection,
};
use crate::proto::leader::{
    LeaderConfig, LeaderEffect, LeaderLog, LeaderStats, ReplLeader, SnapshotView,
    SNAPSHOT_CATCHUP_RECORDS,
};
use crate::proto::wire::{self, Bytes, Response};
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::request_response::{self, Message};
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, Multiaddr, PeerId, Swarm};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swoosh_core::attention::{Event, EventKind};
use swoosh_core::facts::Vote;
use swoosh_core::guards::Verify;
use swoosh_core::hash::Hash;
use swoosh_core::proposal::Proposal;
use swoosh_core::record::WalRecord;
use swoosh_core::reducer::apply_record;
use swoosh_core::sig::SignerId;
use swoosh_core::state::{Genesis, NodeState};
use swoosh_storage::wal::{decode_frame_payload, read_record, ReadError};
use swoosh_storage::LogStore;
use tokio::sync::mpsc;

/// How often the store's tail is polled for newly committed records.
pub const TAIL_POLL_MS: u64 = 5;
/// Records read from the store per poll at most.
pub const TAIL_RECORDS_PER_POLL: u64 = 4_096;
/// How often the signed head is published.
pub const HEAD_EVERY_MS: u64 = 500;
/// An open election's announcement (and a pending certificate proposal)
/// is sent again after this long.
pub const REANNOUNCE_MS: u64 = 3_000;
/// Announcements published in one poll, at most: elections opened together
/// fall due together, and a burst past a peer's gossip send queue
/// (`GOSSIP_PEER_QUEUE_MAX`) would be dropped for the later projects in
/// every round. The rest go out at the next polls.
pub const ANNOUNCES_PER_POLL_MAX: usize = 64;

/// How often the leader looks for a newer snapshot to offer.
pub const SNAPSHOT_REFRESH_MS: u64 = 1_000;
/// Older snapshots kept in memory because a follower was fetching them when
/// a newer one appeared, at most (each is a whole encoded state).
pub const SNAPSHOT_PINS_MAX: usize = 2;
/// A pinned snapshot no follower asked a chunk of for this long is dropped
/// (its follower is gone, or restarted with the newest).
pub const SNAPSHOT_PIN_IDLE_MS: u64 = 30_000;

/// The newest snapshot of the leader's store, encoded as replication
/// offers it (the canonical CBOR of the `NodeState`).
pub struct OfferedSnapshot {
    pub index: u64,
    pub head_record: Hash,
    pub root_hash: Hash,
    pub bytes: Vec<u8>,
}

impl OfferedSnapshot {
    fn view(&self) -> SnapshotView<'_> {
        SnapshotView {
            index: self.index,
            head_record: self.head_record,
            root_hash: self.root_hash,
            bytes: &self.bytes,
        }
    }

    /// The newest snapshot in `store` that decodes, checks, and joins the
    /// log (its head record is the record at its index).
    pub fn newest<S: LogStore>(store: &S) -> Option<OfferedSnapshot> {
        let list = store.list_snapshots().ok()?;
        for idx in list.into_iter().rev() {
            let Ok((_, snap)) = swoosh_storage::read_snapshot(store, idx) else {
                continue;
            };
            if snap.index != idx || snap.state.index != idx {
                continue;
            }
            // Joined to the log: the record at its index hashes to its head
            // (at a WAL base, which `swoosh wal compact` moves, the base hash).
            match swoosh_storage::recovery::snapshot_joins_log(
                store,
                idx,
                snap.head_record,
                snap.state.genesis_hash,
            ) {
                Ok(Ok(())) => {}
                _ => continue,
            }
            let Ok(bytes) = swoosh_core::cbor::to_canonical(&snap.state) else {
                continue;
            };
            return Some(OfferedSnapshot {
                index: idx,
                head_record: snap.head_record,
                root_hash: snap.root_hash,
                bytes,
            });
        }
        None
    }
}

/// The snapshots the leader serves: the newest, and older ones pinned while
/// a follower fetches them. A transfer takes many round trips (32 KiB each);
/// were only the newest served, a transfer slower than the snapshot
/// interval would start over at every new snapshot and never finish.
#[derive(Default)]
pub struct SnapshotServing {
    newest: Option<Arc<OfferedSnapshot>>,
    /// When a follower last got the newest's offer or one of its chunks.
    newest_served: Option<Instant>,
    /// index -> (snapshot, when a follower last got one of its chunks).
    pinned: BTreeMap<u64, (Arc<OfferedSnapshot>, Instant)>,
}

impl SnapshotServing {
    pub fn newest(&self) -> Option<&OfferedSnapshot> {
        self.newest.as_deref()
    }

    /// The snapshot at `index`, if served (the newest or a pinned one).
    pub fn get(&self, index: u64) -> Option<&OfferedSnapshot> {
        match &self.newest {
            Some(n) if n.index == index => Some(n),
            _ => self.pinned.get(&index).map(|(s, _)| &**s),
        }
    }

    /// A newer snapshot replaces the newest; the old one stays pinned if a
    /// follower was fetching it.
    pub fn replace_newest(&mut self, newest: Option<OfferedSnapshot>, now: Instant) {
        if let (Some(old), Some(t)) = (self.newest.take(), self.newest_served.take()) {
            self.pinned.insert(old.index, (old, t));
        }
        self.newest = newest.map(Arc::new);
        self.expire(now);
    }

    /// A follower got the offer or a chunk of snapshot `index`.
    pub fn served(&mut self, index: u64, now: Instant) {
        match (&self.newest, self.pinned.get_mut(&index)) {
            (Some(n), _) if n.index == index => self.newest_served = Some(now),
            (_, Some((_, t))) => *t = now,
            _ => {}
        }
    }

    /// Drop pins idle past [`SNAPSHOT_PIN_IDLE_MS`], then the least recently
    /// served beyond [`SNAPSHOT_PINS_MAX`].
    pub fn expire(&mut self, now: Instant) {
        let idle = Duration::from_millis(SNAPSHOT_PIN_IDLE_MS);
        self.pinned
            .retain(|_, (_, t)| now.saturating_duration_since(*t) < idle);
        while self.pinned.len() > SNAPSHOT_PINS_MAX {
            let Some(oldest) = self
                .pinned
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(i, _)| *i)
            else {
                break;
            };
            self.pinned.remove(&oldest);
        }
    }

    #[cfg(test)]
    fn pinned(&self) -> Vec<u64> {
        self.pinned.keys().copied().collect()
    }
}

/// [`LeaderLog`] over a [`LogStore`]: records from the first one the store
/// holds (1, or the one after the WAL base `swoosh wal compact` moved; a
/// follower asking for less is offered a snapshot), plus the snapshots the
/// leader serves.
pub struct StoreLog<'a, S: LogStore> {
    pub store: &'a S,
    pub snapshots: &'a SnapshotServing,
}

impl<S: LogStore> LeaderLog for StoreLog<'_, S> {
    fn first_index(&self) -> u64 {
        swoosh_storage::first_index(self.store).unwrap_or(1)
    }
    fn last_index(&self) -> u64 {
        self.store.last_index().unwrap_or(0)
    }
    fn log_end(&self) -> Option<u64> {
        swoosh_storage::log_end(self.store).ok()
    }
    fn record(&self, index: u64) -> Option<WalRecord> {
        read_record(self.store, index).ok().map(|v| v.record)
    }
    fn snapshot(&self) -> Option<SnapshotView<'_>> {
        self.snapshots.newest().map(OfferedSnapshot::view)
    }
    fn snapshot_at(&self, index: u64) -> Option<SnapshotView<'_>> {
        self.snapshots.get(index).map(OfferedSnapshot::view)
    }
}

/// A follower listed in genesis as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FollowerSeen {
    pub name: String,
    pub key: SignerId,
    pub connected: bool,
    /// From the follower's last status report (None before the first).
    pub applied_index: Option<u64>,
    pub root_hash: Option<Hash>,
    /// The leader's published index minus the follower's applied index,
    /// when the follower reported.
    pub lag_records: Option<u64>,
    /// Milliseconds since the last status report.
    pub last_report_ms_ago: Option<u64>,
    pub halted: bool,
}

/// What the leader task shares with its owner (metrics, tests).
#[derive(Clone, Debug, Default)]
pub struct LeaderShared {
    pub stats: LeaderStats,
    pub published_index: u64,
    pub gossip_messages: u64,
    pub publish_errors: u64,
    /// Gossip not published because no peer was subscribed yet (at start,
    /// or while every follower is away): expected, and apart from
    /// `publish_errors` so that counter means trouble (queues full).
    pub publish_no_subscribers: u64,
    pub refused_peers: u64,
    pub connected_peers: usize,
    /// Council announcements published.
    pub announcements: u64,
    /// Signed votes counted by the collector (valid, distinct).
    pub council_votes: u64,
    /// Votes rejected (bad signature, outsider, stale epoch, ...).
    pub council_votes_rejected: u64,
    pub certificates: u64,
    pub certificate_proposals: u64,
    /// One entry per follower in genesis, in genesis order.
    pub followers: Vec<FollowerSeen>,
    /// Operational events for the attention scorer ([`ReplWatch`]) made.
    pub attention_events: u64,
    /// Of those, not delivered: no sink installed yet
    /// ([`LeaderP2p::set_attention`]) or the sink refused them (the
    /// scorer's mailbox was full or it was restarting).
    pub attention_dropped: u64,
    /// Per-message events (refused peers, requests and votes) not made
    /// because [`WatchConfig::refusals_per_sec_max`] was reached.
    pub attention_suppressed: u64,
}

pub struct LeaderP2p {
    pub peer_id: PeerId,
    /// Addresses the swarm listens on (the first is the one to give followers).
    pub listen_addrs: Vec<Multiaddr>,
    pub shared: Arc<Mutex<LeaderShared>>,
    reports: Arc<Mutex<Vec<Option<std::time::Instant>>>>,
    attention: Arc<Mutex<AttentionHook>>,
    task: tokio::task::JoinHandle<()>,
    state_copy: Option<StateCopy>,
}

/// The committed state the elections read, kept by its own thread: it tails
/// the store and re-runs the reducer on every record, work that on the swarm
/// task would stall gossip at high commit rates. `None` inside once the copy
/// refused a record (elections stop; replication goes on).
struct StateCopy {
    node: Arc<Mutex<Option<NodeState>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StateCopy {
    fn spawn<S: LogStore + Send + Sync + 'static>(
        store: Arc<S>,
        node: NodeState,
    ) -> Result<StateCopy, P2pError> {
        let at = node.index;
        let node = Arc::new(Mutex::new(Some(node)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (n, st) = (node.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("swoosh-leader-state".into())
            .spawn(move || state_copy_loop(&*store, &n, at, &st))
            .map_err(|e| P2pError::Config(format!("cannot start the leader's state copy: {e}")))?;
        Ok(StateCopy {
            node,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for StateCopy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the leader's state copy thread panicked");
            }
        }
    }
}

fn state_copy_loop<S: LogStore + ?Sized>(
    store: &S,
    node: &Mutex<Option<NodeState>>,
    mut at: u64,
    stop: &std::sync::atomic::AtomicBool,
) {
    let poll = Duration::from_millis(TAIL_POLL_MS);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let last = match store.last_index() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("the leader's state copy cannot read the log tail: {e}");
                at
            }
        };
        if last <= at {
            std::thread::sleep(poll);
            continue;
        }
        for i in at + 1..=last {
            if stop.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let rec = match read_record(store, i) {
                Ok(v) => v.record,
                // A compaction cut records this copy had not applied yet
                // (it fell behind by more than the records compaction
                // keeps): the snapshot at the base proves them.
                Err(ReadError::BelowBase { base, .. }) => {
                    match swoosh_storage::read_snapshot(store, base) {
                        Ok((_, snap)) if snap.state.index == base => {
                            let mut g = node.lock().expect("state copy lock");
                            if g.is_none() {
                                return;
                            }
                            *g = Some(snap.state);
                            at = base;
                            tracing::warn!(
                                base,
                                "the leader's state copy was behind the log's start; it continues from the snapshot at the base"
                            );
                        }
                        _ => {
                            tracing::error!("the leader's state copy cannot read record {i} (below the log's start {base}) nor the snapshot there");
                            std::thread::sleep(poll);
                        }
                    }
                    break;
                }
                Err(e) => {
                    tracing::error!("the leader's state copy cannot read record {i}: {e}");
                    std::thread::sleep(poll);
                    break;
                }
            };
            let mut g = node.lock().expect("state copy lock");
            let Some(n) = g.as_mut() else { return };
            if let Err(e) = apply_record(n, &rec, Verify::Trusted) {
                tracing::error!(
                    "the leader's state copy refused record {i} ({e}); council elections stop"
                );
                *g = None;
                return;
            }
            at = i;
        }
    }
}

impl LeaderP2p {
    /// The followers in genesis order, with the age of their last report.
    pub fn followers(&self) -> Vec<FollowerSeen> {
        let now = std::time::Instant::now();
        let mut v = self.snapshot().followers;
        let reports = self.reports.lock().expect("reports lock");
        for (f, r) in v.iter_mut().zip(reports.iter()) {
            f.last_report_ms_ago = r.map(|t| now.saturating_duration_since(t).as_millis() as u64);
        }
        v
    }

    pub fn stop(&self) {
        self.task.abort();
        if let Some(c) = &self.state_copy {
            c.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    pub fn snapshot(&self) -> LeaderShared {
        self.shared.lock().expect("leader stats lock").clone()
    }

    /// Send the replication events this leader sees (follower lag, gaps,
    /// catch-ups, halts, disconnects and reconnects, refused peers,
    /// requests and votes: [`ReplWatch`]) to `sink`, normally the node's
    /// attention scorer ([`attention_sink`]). Until a sink is set they are
    /// counted as dropped.
    pub fn set_attention(&self, sink: AttentionSink) {
        self.set_attention_with(sink, WatchConfig::default());
    }

    /// [`LeaderP2p::set_attention`] with other thresholds (tests).
    pub fn set_attention_with(&self, sink: AttentionSink, cfg: WatchConfig) {
        let mut h = self.attention.lock().expect("attention lock");
        h.sink = Some(sink);
        h.cfg = cfg;
    }
}

impl Drop for LeaderP2p {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start the leader's replication swarm on `listen`, tailing `store`.
pub async fn spawn_leader<S: LogStore + Send + Sync + 'static>(
    store: S,
    key: SigningKey,
    genesis: Genesis,
    listen: Multiaddr,
) -> Result<LeaderP2p, P2pError> {
    spawn_leader_with(store, key, genesis, listen, None).await
}

/// As [`spawn_leader`]; with `proposals`, the leader also runs the council
/// elections: it announces the candidate set of every project in Council
/// ELECT, collects the agents' signed votes, and sends the certificate
/// proposal (signed with `key`) to `proposals` for the node to submit.
pub async fn spawn_leader_with<S: LogStore + Send + Sync + 'static>(
    store: S,
    key: SigningKey,
    genesis: Genesis,
    listen: Multiaddr,
    proposals: Option<mpsc::UnboundedSender<Proposal>>,
) -> Result<LeaderP2p, P2pError> {
    let cfg = LeaderConfig {
        snapshot_catchup_records: SNAPSHOT_CATCHUP_RECORDS,
        ..LeaderConfig::default()
    };
    spawn_leader_cfg(store, key, genesis, listen, proposals, cfg).await
}

/// As [`spawn_leader_with`], with the replication protocol's configuration.
pub async fn spawn_leader_cfg<S: LogStore + Send + Sync + 'static>(
    store: S,
    key: SigningKey,
    genesis: Genesis,
    listen: Multiaddr,
    proposals: Option<mpsc::UnboundedSender<Proposal>>,
    cfg: LeaderConfig,
) -> Result<LeaderP2p, P2pError> {
    // The committed state (for elections) and the tail replication starts
    // from come from one recovery, so they agree even while the node commits.
    let node = swoosh_storage::recover(&store, &genesis)
        .map_err(|e| P2pError::Storage(e.to_string()))?
        .node;
    let (last, last_hash) = (node.index, node.head_record);
    let repl = ReplLeader::new(cfg, key.clone(), &genesis, last, last_hash)
        .map_err(|e| P2pError::Config(e.to_string()))?;
    let recipients = envelope::parse_recipients(
        &genesis
            .followers
            .iter()
            .map(|f| f.age_recipient.clone())
            .collect::<Vec<_>>(),
    )
    .map_err(|e| P2pError::Config(e.to_string()))?;
    // The chunks of a multi-chunk blob are signed with the node key, which
    // `ReplLeader::new` checked is `genesis.leader`: the key followers
    // verify them with (wire-format §11.2).
    let chunk_signer = envelope::ChunkSigner::new(
        &key,
        genesis
            .hash()
            .map_err(|e| P2pError::Config(e.to_string()))?,
    );
    if recipients.is_empty() {
        tracing::warn!(
            "genesis lists no followers: WAL gossip is not published (run `swoosh p2p enroll`)"
        );
    }
    let followers: BTreeMap<PeerId, usize> = genesis
        .followers
        .iter()
        .enumerate()
        .filter_map(|(i, f)| Some((peer_id_of(&f.key)?, i)))
        .collect();
    let seen: Vec<FollowerSeen> = genesis
        .followers
        .iter()
        .map(|f| FollowerSeen {
            name: f.name.clone(),
            key: f.key.clone(),
            connected: false,
            applied_index: None,
            root_hash: None,
            lag_records: None,
            last_report_ms_ago: None,
            halted: false,
        })
        .collect();
    let agent = agent_version(&genesis);
    let mut swarm = build_swarm(&key, agent.clone())?;
    let topic = wal_topic(&genesis.cluster_id);
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| P2pError::Libp2p(e.to_string()))?;
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&super::council_topic(&genesis.cluster_id))
        .map_err(|e| P2pError::Libp2p(e.to_string()))?;
    super::listen_exclusive(&mut swarm, &listen)?;
    let listen_addrs = loop {
        match tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { address, .. }) => break vec![address],
            Ok(_) => {}
            Err(_) => return Err(P2pError::Libp2p(format!("no listen address for {listen}"))),
        }
    };
    tracing::info!(peer = %swarm.local_peer_id(), addr = %listen_addrs[0], "leader p2p listening");
    let peer_id = *swarm.local_peer_id();
    let reports = Arc::new(Mutex::new(vec![None; seen.len()]));
    let attention = Arc::new(Mutex::new(AttentionHook::default()));
    let watch = ReplWatch::new(
        seen.iter().map(|f| f.name.clone()).collect(),
        WatchConfig::default(),
        LeaderTask::<S>::now_wall_ms(),
    );
    let shared = Arc::new(Mutex::new(LeaderShared {
        published_index: last,
        followers: seen,
        ..Default::default()
    }));
    let store = Arc::new(store);
    // Only elections read the state copy; without a proposal channel there
    // are none, and re-running the reducer per record would be waste.
    let state_copy = match proposals.is_some() {
        true => Some(StateCopy::spawn(store.clone(), node)?),
        false => None,
    };
    let mut t = LeaderTask {
        store,
        repl,
        swarm,
        recipients,
        chunk_signer,
        followers,
        reports: reports.clone(),
        snapshots: SnapshotServing::default(),
        offered_checked: None,
        newest_tried: None,
        elections_checked_at: None,
        agent,
        topic,
        shared: shared.clone(),
        council_topic: super::council_topic(&genesis.cluster_id),
        collector: CouncilCollector::new(key.clone(), &genesis),
        key,
        node: state_copy.as_ref().map(|c| c.node.clone()),
        proposals,
        announced: BTreeMap::new(),
        proposed: BTreeMap::new(),
        unelectable: Default::default(),
        t0: std::time::Instant::now(),
        warn: WarnLimiter::default(),
        watch,
        attention: attention.clone(),
    };
    let task = tokio::spawn(async move { t.run().await });
    Ok(LeaderP2p {
        peer_id,
        listen_addrs,
        shared,
        reports,
        attention,
        task,
        state_copy,
    })
}

/// The last WAL index a gossip message carries: the chunks of a
/// multi-chunk blob are signed with it, and a follower that holds that
/// index drops them as stale (wire-format §11.3).
fn gossip_last_index(g: &wire::Gossip) -> u64 {
    match g {
        wire::Gossip::Batch(b) => b.header.last_index,
        wire::Gossip::Head(h) => h.body.last_index,
    }
}

struct LeaderTask<S: LogStore> {
    store: Arc<S>,
    repl: ReplLeader,
    swarm: Swarm<Behaviour>,
    recipients: Vec<age::x25519::Recipient>,
    /// Signs the chunks of multi-chunk gossip blobs.
    chunk_signer: envelope::ChunkSigner,
    /// Follower peer -> its position in genesis followers.
    followers: BTreeMap<PeerId, usize>,
    /// When each follower last reported (same order as genesis followers).
    reports: Arc<Mutex<Vec<Option<std::time::Instant>>>>,
    /// The snapshots offered to far-behind followers, and when the store
    /// was last looked at for a newer one.
    snapshots: SnapshotServing,
    offered_checked: Option<std::time::Instant>,
    /// The newest stored snapshot index last read for serving, usable or
    /// not: one that fails to decode or join the log is not read (and the
    /// whole state re-encoded, on the swarm's task) again every
    /// `SNAPSHOT_REFRESH_MS`, only once a newer one is written.
    newest_tried: Option<u64>,
    /// The state copy's index when the open elections were last checked
    /// against it (`CouncilCollector::matches`): checked again only once it
    /// moves, not at every poll.
    elections_checked_at: Option<u64>,
    agent: String,
    topic: libp2p::gossipsub::IdentTopic,
    shared: Arc<Mutex<LeaderShared>>,
    council_topic: libp2p::gossipsub::IdentTopic,
    collector: CouncilCollector,
    key: SigningKey,
    /// The committed state for elections, kept by [`StateCopy`]'s thread.
    node: Option<Arc<Mutex<Option<NodeState>>>>,
    proposals: Option<mpsc::UnboundedSender<Proposal>>,
    /// project -> ms of the last announcement.
    announced: BTreeMap<String, u64>,
    /// (project, epoch) -> ms of the last certificate proposal sent.
    proposed: BTreeMap<(String, u64), u64>,
    /// (project, epoch) found with too few electable candidates (logged once).
    unelectable: std::collections::BTreeSet<(String, u64)>,
    t0: std::time::Instant,
    /// Rate limit of the per-message warnings (refused votes and peers).
    warn: WarnLimiter,
    /// The followers' replication health, as transitions for the scorer.
    watch: ReplWatch,
    /// Where the watch's events go, and its thresholds.
    attention: Arc<Mutex<AttentionHook>>,
}

impl<S: LogStore> LeaderTask<S> {
    async fn run(&mut self) {
        let mut poll = tokio::time::interval(Duration::from_millis(TAIL_POLL_MS));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut head = tokio::time::interval(Duration::from_millis(HEAD_EVERY_MS));
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_event(ev),
                _ = poll.tick() => {
                    self.tail();
                    self.council();
                }
                _ = head.tick() => {
                    let first = swoosh_storage::first_index(&*self.store).unwrap_or(1);
                    let h = self.repl.head(first);
                    self.publish(&h);
                    let now = self.watch_now();
                    let ev = self.watch.on_tick(now);
                    self.attend(ev);
                }
            }
        }
    }

    fn tail(&mut self) {
        let last = match self.store.last_index() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot read the log tail: {e}");
                return;
            }
        };
        let from = self.repl.published_index() + 1;
        if last < from {
            return;
        }
        let to = last.min(from + TAIL_RECORDS_PER_POLL - 1);
        let mut effects = vec![];
        // The canonical encodings of the records read here, from `from` on,
        // in index order: a published batch splices them in instead of
        // encoding its records again. A record read another way leaves a
        // gap, and its batch is encoded whole.
        let mut payloads: Vec<Option<Vec<u8>>> = vec![];
        for i in from..=to {
            // The frame's verified hash is the record's hash, and its
            // verified payload the record's canonical encoding. No
            // re-encoding needed.
            let read = self
                .store
                .read_at(i)
                .map_err(ReadError::from)
                .and_then(|b| match b {
                    Some(bytes) => decode_frame_payload(i, &bytes)
                        .map(|(v, payload)| (v, payload.len(), Some(payload)))
                        .map_err(|reason| ReadError::Corrupt {
                            location: self.store.location(),
                            index: i,
                            reason,
                        }),
                    // Absent: read_record names why (below the WAL base, missing).
                    None => read_record(&*self.store, i).map(|v| {
                        let size =
                            swoosh_core::cbor::to_canonical(&v.record).map_or(0, |b| b.len());
                        (v, size, None)
                    }),
                });
            let (rec, hash, size) = match read {
                Ok((v, size, payload)) => {
                    payloads.push(payload);
                    (v.record, v.hash, size)
                }
                Err(ReadError::BelowBase { .. }) => {
                    // A compaction cut records not yet published (the tail
                    // fell behind by more than the records it keeps):
                    // publishing goes on after the base; a follower that
                    // misses them is offered the snapshot there.
                    if let Ok(Some(b)) = swoosh_storage::wal_base(&*self.store) {
                        effects.extend(self.repl.flush());
                        self.repl.skip_to(b.index, b.hash);
                        tracing::warn!(
                            base = b.index,
                            "the replication tail was behind the log's start; it continues after it"
                        );
                    }
                    break;
                }
                Err(e) => {
                    tracing::error!("cannot read record {i} for replication: {e}");
                    break;
                }
            };
            match self.repl.on_committed_hashed(&rec, hash, size) {
                Ok(e) => effects.extend(e),
                Err(e) => {
                    tracing::error!("replication refused record {i}: {e}");
                    break;
                }
            }
        }
        effects.extend(self.repl.flush());
        for LeaderEffect::Publish(g) in effects {
            if self.recipients.is_empty() {
                continue;
            }
            let last_index = gossip_last_index(&g);
            let plain = match &g {
                wire::Gossip::Batch(b) => {
                    let encodings: Option<Vec<&[u8]>> = (b.header.first_index
                        ..=b.header.last_index)
                        .map(|i| {
                            let at = usize::try_from(i.checked_sub(from)?).ok()?;
                            payloads.get(at)?.as_deref()
                        })
                        .collect();
                    match encodings {
                        Some(e) => wire::encode_batch_with(b, &e),
                        None => wire::encode_gossip(&g),
                    }
                }
                other => wire::encode_gossip(other),
            };
            self.publish_encoded(plain, last_index);
        }
        let mut s = self.shared.lock().expect("leader stats lock");
        s.stats = self.repl.stats().clone();
        s.published_index = self.repl.published_index();
    }

    fn publish(&mut self, g: &wire::Gossip) {
        self.publish_encoded(wire::encode_gossip(g), gossip_last_index(g));
    }

    /// Seal `plain` (the encoding of a `Gossip` whose last WAL index is
    /// `last_index`) and publish its chunks.
    fn publish_encoded(
        &mut self,
        plain: Result<Vec<u8>, swoosh_core::cbor::CanonicalError>,
        last_index: u64,
    ) {
        if self.recipients.is_empty() {
            return;
        }
        let plain = match plain {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("cannot encode gossip: {e}");
                return;
            }
        };
        let chunks =
            match envelope::seal_signed(&plain, &self.recipients, &self.chunk_signer, last_index) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("cannot seal gossip: {e}");
                    return;
                }
            };
        let mut s = self.shared.lock().expect("leader stats lock");
        for c in chunks {
            match self
                .swarm
                .behaviour_mut()
                .gossipsub
                .publish(self.topic.clone(), c)
            {
                Ok(_) => s.gossip_messages += 1,
                // No subscribed peer yet: followers catch up by range.
                Err(libp2p::gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                    s.publish_no_subscribers += 1;
                }
                Err(e) => {
                    s.publish_errors += 1;
                    tracing::debug!("gossip publish: {e}");
                }
            }
        }
    }

    fn now_wall_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    /// The watch's clock: the wall clock the leader stamps its proposals
    /// with (the node's scorer reads the same), after taking the
    /// thresholds the owner set.
    fn watch_now(&mut self) -> u64 {
        let cfg = self.attention.lock().expect("attention lock").cfg;
        self.watch.set_config(cfg);
        Self::now_wall_ms()
    }

    /// Hand `events` to the attention sink. Never waits: the sink only
    /// queues them (and drops them when the scorer's mailbox is full).
    fn attend(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let n = events.len() as u64;
        let sink = self.attention.lock().expect("attention lock").sink.clone();
        let delivered = sink.is_some_and(|f| f(events));
        let mut s = self.shared.lock().expect("lock");
        s.attention_events += n;
        if !delivered {
            s.attention_dropped += n;
        }
    }

    /// A peer as events name it: a follower by its genesis name (as
    /// `/health` and the metrics do), anyone else by its libp2p peer id.
    fn peer_name(&self, peer: &PeerId) -> String {
        self.followers
            .get(peer)
            .and_then(|i| self.watch.name(*i))
            .map_or_else(|| peer.to_string(), str::to_string)
    }

    /// A per-message event (a refused peer, request or vote), within the
    /// watch's rate limit.
    fn attend_refusal(&mut self, e: Event) {
        let now = self.watch_now();
        let e = Event { at_ms: now, ..e };
        match self.watch.refusal(now, e) {
            Some(e) => self.attend(vec![e]),
            None => {
                self.shared.lock().expect("lock").attention_suppressed = self.watch.suppressed()
            }
        }
    }

    fn publish_council(&mut self, m: &CouncilMsg) {
        let Ok(bytes) = encode_council(m) else {
            return;
        };
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.council_topic.clone(), bytes)
        {
            tracing::debug!("council publish: {e}");
        }
    }

    /// Announce open elections (again after a timeout) and resend pending
    /// certificate proposals.
    fn council(&mut self) {
        if self.proposals.is_none() {
            return;
        }
        let Some(copy) = self.node.clone() else {
            return;
        };
        let guard = copy.lock().expect("state copy lock");
        let Some(node) = guard.as_ref() else {
            return;
        };
        let now = super::ms_since(self.t0);
        let mut announce = vec![];
        let mut propose = vec![];
        let mut close = vec![];
        let moved = self.elections_checked_at != Some(node.index);
        self.elections_checked_at = Some(node.index);
        for (id, e) in &node.projects {
            let st = &e.state;
            let epoch = st.epoch.council;
            // A project the reducer refuses any certificate for (terminated,
            // quarantined, paused) holds no election: announcing and
            // proposing for it would be refused every REANNOUNCE_MS for as
            // long as it lasts, and hold one of ELECTIONS_OPEN_MAX.
            if st.council.phase != "ELECT" || crate::proto::council::uncertifiable(st).is_some() {
                if self.collector.open_for(id).is_some() {
                    close.push(id.clone());
                }
                continue;
            }
            let members = || electable_members(st);
            if moved
                && self.collector.open_for(id).is_some()
                && !self.collector.matches(st, &members())
            {
                // Its roster, ejected members, threshold or member set
                // changed since it opened: open it again below.
                tracing::info!(project = %id, epoch, "the council roster or threshold changed during the election: announcing it again");
                self.collector.close(id);
                self.announced.remove(id);
            }
            if let Some(cert) = self.collector.certificate(id) {
                if cert.epoch == epoch {
                    let last = self.proposed.get(&(id.clone(), epoch)).copied();
                    if last.is_none_or(|l| now >= l + REANNOUNCE_MS) {
                        propose.push(cert);
                    }
                    continue;
                }
            }
            match self.collector.open_for(id) {
                Some((ep, _)) if ep == epoch => {
                    let last = self.announced.get(id).copied().unwrap_or(0);
                    if now >= last + REANNOUNCE_MS {
                        if let Some(a) = self.collector.announcement(id) {
                            announce.push(a.clone());
                        }
                    }
                }
                _ => {
                    let members = members();
                    if members.len() < st.council.quorum_threshold as usize {
                        // The quorum guard would refuse any certificate:
                        // say so once per epoch instead of electing in vain.
                        if !self.unelectable.contains(&(id.clone(), epoch)) {
                            // One entry per project: its older epochs go.
                            self.unelectable.retain(|(p, _)| p != id);
                            self.unelectable.insert((id.clone(), epoch));
                            tracing::warn!(project = %id, epoch, electable = members.len(), threshold = st.council.quorum_threshold, "cannot open the election: fewer electable candidates (not ejected) than the quorum threshold; load more candidates");
                        }
                        continue;
                    }
                    match self.collector.open(st, &members) {
                        Ok(a) => announce.push(a),
                        Err(e) => {
                            // Polled every few ms: one line a second.
                            if let Some(suppressed) = self.warn.check("election_open", now) {
                                tracing::warn!(project = %id, suppressed, "cannot open the election: {e}");
                            }
                        }
                    }
                }
            }
        }
        // send_certificate locks the copy again (std mutexes do not nest).
        drop(guard);
        for id in close {
            self.collector.close(&id);
            self.announced.remove(&id);
        }
        announce.truncate(ANNOUNCES_PER_POLL_MAX);
        for a in announce {
            tracing::info!(project = %a.body.project, epoch = a.body.epoch, members = a.body.members.len(), "announcing the council candidates");
            self.announced.insert(a.body.project.clone(), now);
            self.shared.lock().expect("lock").announcements += 1;
            self.publish_council(&CouncilMsg::Announce(a));
        }
        for cert in propose {
            self.send_certificate(&cert, now);
        }
    }

    /// Note when `cert` was last proposed (or failed to build). One entry
    /// per project: its older epochs are dropped, so the map holds at most
    /// one entry per project, not one per election ever held.
    fn mark_proposed(&mut self, cert: &crate::proto::council::Certificate, now: u64) {
        self.proposed
            .retain(|(p, e), _| p != &cert.project || *e == cert.epoch);
        self.proposed
            .insert((cert.project.clone(), cert.epoch), now);
    }

    fn send_certificate(&mut self, cert: &crate::proto::council::Certificate, now: u64) {
        let (Some(copy), Some(tx)) = (&self.node, &self.proposals) else {
            return;
        };
        let built = match copy.lock().expect("state copy lock").as_ref() {
            Some(node) => certificate_proposal(cert, node, &self.key, Self::now_wall_ms()),
            None => return,
        };
        match built {
            Ok(p) => {
                tracing::info!(project = %cert.project, epoch = cert.epoch, votes = cert.votes.len(), "proposing the quorum certificate");
                let _ = tx.send(p);
                self.mark_proposed(cert, now);
                self.shared.lock().expect("lock").certificate_proposals += 1;
            }
            Err(e) => {
                tracing::error!(project = %cert.project, epoch = cert.epoch, "cannot build the certificate proposal: {e}");
                // Tried again at the resend period, not at every poll.
                self.mark_proposed(cert, now);
            }
        }
    }

    fn refresh_snapshot(&mut self) {
        let due = self
            .offered_checked
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(SNAPSHOT_REFRESH_MS));
        if !due {
            return;
        }
        let now = std::time::Instant::now();
        self.offered_checked = Some(now);
        self.snapshots.expire(now);
        let newest = self
            .store
            .list_snapshots()
            .ok()
            .and_then(|l| l.last().copied());
        if newest.is_some()
            && newest != self.snapshots.newest().map(|o| o.index)
            && newest != self.newest_tried
        {
            self.newest_tried = newest;
            self.snapshots
                .replace_newest(OfferedSnapshot::newest(&*self.store), now);
        }
    }

    fn on_status(&mut self, i: usize, r: &wire::StatusReport) -> Response {
        let Some(key) = self
            .shared
            .lock()
            .expect("lock")
            .followers
            .get(i)
            .map(|f| f.key.clone())
        else {
            return Response::Refused {
                reason: "unknown follower".into(),
            };
        };
        let log = StoreLog {
            store: &*self.store,
            snapshots: &self.snapshots,
        };
        let resp = self.repl.on_status_report(key, r, &log);
        let published = self.repl.published_index();
        if let Some(t) = self.reports.lock().expect("lock").get_mut(i) {
            *t = Some(std::time::Instant::now());
        }
        let mut s = self.shared.lock().expect("lock");
        if let Some(f) = s.followers.get_mut(i) {
            if let Response::Diverged { reason, .. } = &resp {
                if !f.halted {
                    tracing::error!(follower = %f.name, index = r.applied_index, "ALARM: a follower is not on this leader's log: {reason}; it is told to halt");
                }
            } else if r.halted && !f.halted {
                tracing::error!(follower = %f.name, index = r.applied_index, "ALARM: a follower reports it halted (divergence or a failed write)");
            }
            f.applied_index = Some(r.applied_index);
            f.root_hash = Some(r.root_hash);
            f.lag_records = Some(published.saturating_sub(r.applied_index));
            f.halted = r.halted || matches!(resp, Response::Diverged { .. });
        }
        drop(s);
        let diverged = match &resp {
            Response::Diverged { reason, .. } => Some(reason.as_str()),
            _ => None,
        };
        let now = self.watch_now();
        let ev = self
            .watch
            .on_report(i, now, r.applied_index, published, r.halted, diverged);
        self.attend(ev);
        resp
    }

    fn on_council_message(&mut self, data: &[u8], from: PeerId) {
        let v = match decode_council(data) {
            Ok(CouncilMsg::Vote(v)) => v,
            Ok(CouncilMsg::Announce(_)) => return,
            Err(e) => {
                let now = super::ms_since(self.t0);
                if let Some(suppressed) = self.warn.check("council_malformed", now) {
                    let e = e.to_string();
                    tracing::debug!(%from, error = ?clip(&e), suppressed, "a council message does not decode");
                }
                self.attend_refusal(
                    Event::new(EventKind::ForgedMessage, "shape", 0).peer(from.to_string()),
                );
                return;
            }
        };
        let outcome = self.collector.on_vote(&v);
        {
            let mut s = self.shared.lock().expect("lock");
            s.council_votes = self.collector.counted();
            s.council_votes_rejected = self.collector.rejected().values().sum();
            s.certificates = self.collector.certificates();
        }
        match outcome {
            VoteOutcome::Certificate(cert) => {
                let now = super::ms_since(self.t0);
                self.send_certificate(&cert, now);
            }
            VoteOutcome::Rejected(r) => {
                let now = super::ms_since(self.t0);
                let e = rejected_vote(&mut self.warn, &v, r, now);
                self.attend_refusal(e);
            }
            _ => {}
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if check_handshake(&mut self.swarm, &self.agent, peer_id, &info) {
                    // A follower counts as connected for the watch once it
                    // passed the handshake: a follower key on another
                    // genesis is a refusal, not a flapping link.
                    if let Some(i) = self.followers.get(&peer_id).copied() {
                        let now = self.watch_now();
                        let ev = self.watch.on_connection(i, true, now);
                        self.attend(ev);
                    }
                } else {
                    self.shared.lock().expect("lock").refused_peers += 1;
                    let reason = if info.protocol_version != super::IDENTIFY_PROTOCOL {
                        "wrong_protocol"
                    } else {
                        "wrong_cluster"
                    };
                    self.attend_refusal(
                        Event::new(EventKind::ForgedMessage, reason, 0)
                            .peer(self.peer_name(&peer_id)),
                    );
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rr(request_response::Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            })) => {
                let resp = match self.followers.get(&peer).copied() {
                    None => {
                        let now = super::ms_since(self.t0);
                        if let Some(suppressed) = self.warn.check("not_follower", now) {
                            tracing::warn!(%peer, suppressed, "refusing a catch-up request: the peer is not a follower listed in genesis");
                        }
                        self.attend_refusal(
                            Event::new(EventKind::ForgedMessage, "not_follower", 0)
                                .peer(peer.to_string()),
                        );
                        Response::Refused {
                            reason: "only followers listed in genesis may read the log".into(),
                        }
                    }
                    Some(i) => match wire::decode_request(&request.0) {
                        Ok(wire::Request::Status(r)) => self.on_status(i, &r),
                        Ok(req) => {
                            if let wire::Request::Range { from, to } = req {
                                let now = self.watch_now();
                                let published = self.repl.published_index();
                                let ev = self.watch.on_range(i, now, from, to, published);
                                self.attend(ev);
                            }
                            self.refresh_snapshot();
                            let log = StoreLog {
                                store: &*self.store,
                                snapshots: &self.snapshots,
                            };
                            let resp = self.repl.on_request(&req, &log);
                            let served = match &resp {
                                Response::SnapshotOffer(m) => Some(m.body.index),
                                Response::SnapshotChunk(c) => Some(c.index),
                                _ => None,
                            };
                            if let Some(index) = served {
                                self.snapshots.served(index, std::time::Instant::now());
                            }
                            resp
                        }
                        Err(e) => {
                            self.attend_refusal(
                                Event::new(EventKind::ForgedMessage, "shape", 0)
                                    .peer(self.peer_name(&peer)),
                            );
                            Response::Refused {
                                reason: format!("request does not decode: {e}"),
                            }
                        }
                    },
                };
                self.shared.lock().expect("lock").stats = self.repl.stats().clone();
                match wire::encode_response(&resp) {
                    Ok(bytes) => {
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .rr
                            .send_response(channel, Bytes(bytes));
                    }
                    Err(e) => tracing::error!("cannot encode a response: {e}"),
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(
                libp2p::gossipsub::Event::Message {
                    propagation_source,
                    message,
                    ..
                },
            )) if message.topic == self.council_topic.hash() => {
                self.on_council_message(&message.data, propagation_source);
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. }
            | SwarmEvent::ConnectionClosed { peer_id, .. } => {
                let n = self.swarm.connected_peers().count();
                {
                    let mut s = self.shared.lock().expect("lock");
                    s.connected_peers = n;
                    for (peer, i) in &self.followers {
                        if let Some(f) = s.followers.get_mut(*i) {
                            f.connected = self.swarm.is_connected(peer);
                        }
                    }
                }
                // The last connection to a follower closed: it is cut off.
                // (Connected again once its handshake passes, above.)
                if let Some(i) = self.followers.get(&peer_id).copied() {
                    if !self.swarm.is_connected(&peer_id) {
                        let now = self.watch_now();
                        let ev = self.watch.on_connection(i, false, now);
                        self.attend(ev);
                    }
                }
            }
            _ => {}
        }
    }
}

/// A vote the collector rejected: logged (at most one line per rejection
/// kind per [`super::bounds::WARN_EVERY_MS`], saying how many were
/// skipped) and returned as the attention event the leader reports, as the
/// chaos simulator does. Its project is clipped and logged with `?`: the
/// collector rejects a vote for a project with no open election before it
/// checks the signature, so that text comes from anyone, up to a gossip
/// message's worth with newlines in it.
fn rejected_vote(warn: &mut WarnLimiter, v: &Vote, r: VoteRejection, now_ms: u64) -> Event {
    let project = clip(&v.body.project);
    if let Some(suppressed) = warn.check(r.name(), now_ms) {
        tracing::warn!(voter = %v.body.voter, project = ?project, suppressed, "vote rejected: {}", r.name());
    }
    Event::new(EventKind::VoteRejected, r.name(), 0)
        .signer(v.body.voter.to_string())
        .project(project)
}

// ------------------------------------------------------------- attention

/// A follower is lagging once it reports at least this many records behind
/// the leader's published index (the lag `/health` and
/// `swoosh_replica_lag_records` show; the chaos simulator's threshold) …
pub const FOLLOWER_LAG_EVENT_RECORDS: u64 = 32;
/// … while a record the leader had published at least this long ago is
/// still not applied. A follower that is many records behind only because
/// the leader commits fast, but applies what it gets within this time, is
/// not lagging.
pub const FOLLOWER_LAG_EVENT_MS: u64 = 2_000;
/// A lagging follower is caught up again once it reports fewer than this
/// many records behind …
pub const FOLLOWER_CAUGHT_UP_RECORDS: u64 = FOLLOWER_LAG_EVENT_RECORDS / 2;
/// … or has applied what the leader had published at most this long
/// before. Both half the lag thresholds, so a follower hovering at them
/// does not flap. (A gapped or halted follower is caught up once it applied
/// what the leader had published when the gap or halt was seen.)
pub const FOLLOWER_CAUGHT_UP_MS: u64 = FOLLOWER_LAG_EVENT_MS / 2;
/// A connected follower without a status report for this long is lagging;
/// a follower not connected for this long (since the leader started) is
/// cut off. The age at which `/health` stops counting a follower as
/// following.
pub const FOLLOWER_REPORT_STALE_MS: u64 = swoosh_actors::FOLLOWER_REPORT_STALE_MS;
/// Per-message events (refused peers, requests and votes) made per second
/// at most: a flood of them must not crowd the scorer's mailbox, where the
/// reducer's events queue too.
pub const REFUSAL_EVENTS_PER_SEC_MAX: u64 = 32;

/// Event reasons: those the chaos simulator also reports are spelled as it
/// spells them, so a pattern fingerprints the same in a run and on a node.
pub mod reason {
    /// FollowerLag (the simulator's).
    pub const LAGGING: &str = "records behind the leader";
    /// FollowerLag: connected, but no status report for
    /// [`super::FOLLOWER_REPORT_STALE_MS`].
    pub const REPORTS_STOPPED: &str = "status reports stopped";
    /// FollowerCaughtUp (the simulator's).
    pub const CAUGHT_UP: &str = "caught up with the leader";
    /// FollowerGap: the follower asked for a record range it missed.
    pub const RANGE_AFTER_GAP: &str = "range request after a gap";
    /// FollowerGap: the follower reports it halted.
    pub const HALTED: &str = "follower halted (divergence or a failed write)";
    /// FollowerGap: the leader found the follower off its log and told it
    /// to halt.
    pub const DIVERGED: &str = "follower off the leader's log; told to halt";
    /// Partition (the simulator's).
    pub const CUT: &str = "network cut";
    /// PartitionHealed.
    pub const RECONNECTED: &str = "reconnected";
}

/// Where the leader's replication events go: the node's attention scorer
/// (`NodeHandle::observe`, see [`attention_sink`]). It must not wait;
/// `false` when it dropped the events.
pub type AttentionSink = Arc<dyn Fn(Vec<Event>) -> bool + Send + Sync>;

/// `node`'s attention scorer as the leader's sink.
pub fn attention_sink<S>(node: &swoosh_actors::NodeHandle<S>) -> AttentionSink
where
    S: LogStore + Clone + Send + Sync + 'static,
{
    let node = node.clone();
    Arc::new(move |events| node.observe(events))
}

/// The sink and thresholds the owner set, read by the leader task.
#[derive(Default)]
struct AttentionHook {
    sink: Option<AttentionSink>,
    cfg: WatchConfig,
}

/// The thresholds of [`ReplWatch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    pub lag_records: u64,
    pub lag_ms: u64,
    pub caught_up_records: u64,
    pub caught_up_ms: u64,
    pub report_stale_ms: u64,
    pub refusals_per_sec_max: u64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            lag_records: FOLLOWER_LAG_EVENT_RECORDS,
            lag_ms: FOLLOWER_LAG_EVENT_MS,
            caught_up_records: FOLLOWER_CAUGHT_UP_RECORDS,
            caught_up_ms: FOLLOWER_CAUGHT_UP_MS,
            report_stale_ms: FOLLOWER_REPORT_STALE_MS,
            refusals_per_sec_max: REFUSAL_EVENTS_PER_SEC_MAX,
        }
    }
}

/// One genesis follower as the watch tracks it.
#[derive(Clone, Debug, Default)]
struct Watched {
    name: String,
    /// Connected and past the handshake.
    connected: bool,
    /// When it connected, or when the watch started (wall ms).
    since_ms: u64,
    /// A `Partition` was reported and no `PartitionHealed` since.
    cut: bool,
    last_report_ms: Option<u64>,
    /// `(when, the leader's published index then)` at an earlier report:
    /// while the follower's applied index is below that index it is at least
    /// `now - when` behind; once past it, at most that.
    mark: Option<(u64, u64)>,
    /// A `FollowerLag` is open.
    lagging: bool,
    /// A `FollowerGap` is open (a range request, a halt): the leader's
    /// published index then, which the follower must reach.
    gap: Option<u64>,
    /// The follower is halted (reported once per halt).
    halted: bool,
}

/// The replication health of the genesis followers, as the leader sees it,
/// turned into attention events on **transitions**: a follower crossing
/// the lag threshold, asking for a range after a gap, halting, catching up
/// again, disconnecting and reconnecting, each reported once and not on
/// every status report. Sans-I/O: the leader task feeds it what it sees and
/// the wall-clock time, and sends what it returns to the [`AttentionSink`].
///
/// Subjects: a follower by its genesis name as `peer` (as `/health` and
/// the `follower` metric label name it); a refused peer by its libp2p peer
/// id; a refused vote by its voter (`signer`) and project.
///
/// Bounded: one entry per genesis follower (at most `FOLLOWERS_MAX`) and a
/// per-second counter; no buffer.
pub struct ReplWatch {
    cfg: WatchConfig,
    followers: Vec<Watched>,
    /// The second (wall ms / 1000) the refusal budget counts, and its use.
    refusal_window: (u64, u64),
    suppressed: u64,
}

impl ReplWatch {
    /// Followers in genesis order, by name; `now_ms` starts the clock a
    /// follower that never connects is judged by.
    pub fn new(names: Vec<String>, cfg: WatchConfig, now_ms: u64) -> ReplWatch {
        let followers = names
            .into_iter()
            .take(swoosh_core::state::FOLLOWERS_MAX)
            .map(|name| Watched {
                name,
                since_ms: now_ms,
                ..Default::default()
            })
            .collect();
        ReplWatch {
            cfg,
            followers,
            refusal_window: (0, 0),
            suppressed: 0,
        }
    }

    pub fn set_config(&mut self, cfg: WatchConfig) {
        self.cfg = cfg;
    }

    /// Follower `i`'s genesis name.
    pub fn name(&self, i: usize) -> Option<&str> {
        self.followers.get(i).map(|w| w.name.as_str())
    }

    /// Per-message events not made (rate limit), in total.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    fn event(w: &Watched, kind: EventKind, reason: &str, now_ms: u64) -> Event {
        Event::new(kind, reason, now_ms).peer(w.name.clone())
    }

    /// Follower `i` connected (past the handshake) or lost its last
    /// connection: `Partition` on the loss, `PartitionHealed` on the
    /// reconnection that follows a `Partition`.
    pub fn on_connection(&mut self, i: usize, connected: bool, now_ms: u64) -> Vec<Event> {
        let Some(w) = self.followers.get_mut(i) else {
            return vec![];
        };
        if w.connected == connected {
            return vec![];
        }
        w.connected = connected;
        w.since_ms = now_ms;
        w.last_report_ms = None;
        w.mark = None;
        if connected {
            if !std::mem::take(&mut w.cut) {
                return vec![];
            }
            return vec![
                Self::event(w, EventKind::PartitionHealed, reason::RECONNECTED, now_ms)
                    .detail("the follower connected again and passed the handshake"),
            ];
        }
        w.cut = true;
        vec![Self::event(w, EventKind::Partition, reason::CUT, now_ms)]
    }

    /// Follower `i` reported `applied` (and whether it halted) when the
    /// leader had published `published`; `diverged` is the leader's verdict
    /// when the report is off its log.
    pub fn on_report(
        &mut self,
        i: usize,
        now_ms: u64,
        applied: u64,
        published: u64,
        halted: bool,
        diverged: Option<&str>,
    ) -> Vec<Event> {
        let cfg = self.cfg;
        let Some(w) = self.followers.get_mut(i) else {
            return vec![];
        };
        w.last_report_ms = Some(now_ms);
        if halted || diverged.is_some() {
            w.mark = None;
            if std::mem::replace(&mut w.halted, true) {
                return vec![];
            }
            w.gap = Some(w.gap.map_or(published, |g| g.max(published)));
            let e = match diverged {
                Some(why) => {
                    Self::event(w, EventKind::FollowerGap, reason::DIVERGED, now_ms).detail(why)
                }
                None => Self::event(w, EventKind::FollowerGap, reason::HALTED, now_ms),
            };
            return vec![e];
        }
        // Running again (repaired, restarted): the halt's gap stays open
        // until it catches up.
        w.halted = false;
        let lag = published.saturating_sub(applied);
        let (behind_ms, within_ms) = match w.mark {
            Some((t, index)) if applied < index => (Some(now_ms.saturating_sub(t)), None),
            Some((t, _)) => (None, Some(now_ms.saturating_sub(t))),
            None => (None, None),
        };
        if w.mark.is_none() || within_ms.is_some() {
            w.mark = Some((now_ms, published));
        }
        let was_open = w.lagging || w.gap.is_some();
        if lag < cfg.caught_up_records || within_ms.is_some_and(|ms| ms <= cfg.caught_up_ms) {
            w.lagging = false;
        }
        if w.gap.is_some_and(|target| applied >= target) {
            w.gap = None;
        }
        if was_open && !w.lagging && w.gap.is_none() {
            let e = Self::event(w, EventKind::FollowerCaughtUp, reason::CAUGHT_UP, now_ms).detail(
                format!("applied {applied} of the {published} records the leader published"),
            );
            return vec![e];
        }
        if !w.lagging && lag >= cfg.lag_records && behind_ms.is_some_and(|ms| ms >= cfg.lag_ms) {
            w.lagging = true;
            return vec![Self::event(
                w,
                EventKind::FollowerLag,
                reason::LAGGING,
                now_ms,
            )];
        }
        vec![]
    }

    /// Follower `i` asked for records `from..=to` when the leader had
    /// published `published`: it saw a gap (gossip it missed, or a restart
    /// behind the leader). Once per gap, until it catches up.
    pub fn on_range(
        &mut self,
        i: usize,
        now_ms: u64,
        from: u64,
        to: u64,
        published: u64,
    ) -> Vec<Event> {
        let Some(w) = self.followers.get_mut(i) else {
            return vec![];
        };
        if from == 0 || from > published || w.gap.is_some() || w.halted {
            return vec![];
        }
        w.gap = Some(published);
        vec![
            Self::event(w, EventKind::FollowerGap, reason::RANGE_AFTER_GAP, now_ms).detail(
                format!("asked for records {from} to {to}; the leader published {published}"),
            ),
        ]
    }

    /// The periodic check (every head): a connected follower silent for
    /// [`WatchConfig::report_stale_ms`] is lagging, one not connected for
    /// that long since the leader started is cut off.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Event> {
        let stale = self.cfg.report_stale_ms;
        let mut out = vec![];
        for w in &mut self.followers {
            let since = w.last_report_ms.unwrap_or(w.since_ms);
            if now_ms.saturating_sub(since) < stale {
                continue;
            }
            if w.connected && !w.halted && !w.lagging {
                w.lagging = true;
                out.push(
                    Self::event(w, EventKind::FollowerLag, reason::REPORTS_STOPPED, now_ms)
                        .detail(format!("no status report for {} ms", now_ms - since)),
                );
            } else if !w.connected && !w.cut {
                w.cut = true;
                out.push(Self::event(w, EventKind::Partition, reason::CUT, now_ms));
            }
        }
        out
    }

    /// `e` (a refused peer, request or vote) unless this second's budget of
    /// [`WatchConfig::refusals_per_sec_max`] is spent.
    pub fn refusal(&mut self, now_ms: u64, e: Event) -> Option<Event> {
        let second = now_ms / 1000;
        if self.refusal_window.0 != second {
            self.refusal_window = (second, 0);
        }
        if self.refusal_window.1 >= self.cfg.refusals_per_sec_max {
            self.suppressed += 1;
            return None;
        }
        self.refusal_window.1 += 1;
        Some(e)
    }
}

/// The hash of the leader's record `index` (the genesis hash for 0), for tests.
pub fn record_hash<S: LogStore>(store: &S, index: u64, genesis_hash: Hash) -> Option<Hash> {
    if index == 0 {
        return Some(genesis_hash);
    }
    read_record(store, index).ok().map(|v| v.hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(v: &[Event]) -> Vec<(EventKind, &str, Option<&str>)> {
        v.iter()
            .map(|e| (e.kind, e.reason.as_str(), e.subject.peer.as_deref()))
            .collect()
    }

    fn watch() -> ReplWatch {
        ReplWatch::new(
            vec!["follower-1".into(), "follower-2".into()],
            WatchConfig::default(),
            0,
        )
    }

    /// Status reports every 500 ms: crossing the lag threshold (records and
    /// time) is reported once, not per report; catching up once; a fast
    /// leader with a follower that keeps up is never "lagging".
    #[test]
    fn lag_is_reported_on_the_crossing_not_on_every_report() {
        let mut w = watch();
        let mut all = vec![];
        // In step: nothing.
        for k in 0..4u64 {
            all.extend(w.on_report(0, 500 * k, 10 * k, 10 * k, false, None));
        }
        assert!(all.is_empty(), "{all:?}");
        // Stuck at 30 while the leader goes on: the lag needs both
        // FOLLOWER_LAG_EVENT_RECORDS and FOLLOWER_LAG_EVENT_MS.
        let mut t = 2_000;
        let mut published = 30;
        let mut crossings = vec![];
        for _ in 0..12 {
            t += 500;
            published += 40;
            let ev = w.on_report(0, t, 30, published, false, None);
            if !ev.is_empty() {
                crossings.push((t, ev));
            }
        }
        assert_eq!(crossings.len(), 1, "{crossings:?}");
        let (at, ev) = &crossings[0];
        assert_eq!(
            kinds(ev),
            vec![(EventKind::FollowerLag, reason::LAGGING, Some("follower-1"))]
        );
        assert_eq!(ev[0].detail, "", "the simulator's fingerprint: no detail");
        assert!(
            *at >= 2_500 + FOLLOWER_LAG_EVENT_MS,
            "not before the time threshold: {at}"
        );
        // Still behind, even under the lag threshold but not under half
        // of it: nothing more.
        assert!(w
            .on_report(0, t + 500, 40, published + 40, false, None)
            .is_empty());
        let under = FOLLOWER_LAG_EVENT_RECORDS - 2;
        assert!(w
            .on_report(
                0,
                t + 700,
                published + 40 - under,
                published + 40,
                false,
                None
            )
            .is_empty());
        // Caught up: once.
        let ev = w.on_report(0, t + 1_000, published + 40, published + 50, false, None);
        assert_eq!(
            kinds(&ev),
            vec![(
                EventKind::FollowerCaughtUp,
                reason::CAUGHT_UP,
                Some("follower-1")
            )]
        );
        assert!(w
            .on_report(0, t + 1_500, published + 50, published + 50, false, None)
            .is_empty());
        // The other follower was never mentioned.
        assert!(w.on_report(1, t + 1_500, 0, 0, false, None).is_empty());

        // A leader committing fast: the follower is always 200 records
        // behind but applies, within 500 ms, what the leader had published.
        let mut w = watch();
        for k in 1..40u64 {
            let ev = w.on_report(
                0,
                500 * k,
                1_000 * (k - 1),
                1_000 * (k - 1) + 200,
                false,
                None,
            );
            assert!(ev.is_empty(), "report {k}: {ev:?}");
        }
    }

    #[test]
    fn a_gap_and_a_halt_are_reported_once_and_healed_by_catching_up() {
        let mut w = watch();
        assert!(w.on_report(0, 0, 100, 100, false, None).is_empty());
        // A range past what the leader published is no gap.
        assert!(w.on_range(0, 100, 101, 150, 100).is_empty());
        let ev = w.on_range(0, 200, 101, 150, 180);
        assert_eq!(
            kinds(&ev),
            vec![(
                EventKind::FollowerGap,
                reason::RANGE_AFTER_GAP,
                Some("follower-1")
            )]
        );
        // Further ranges of the same catch-up: nothing; a report a few
        // records behind, short of the published index the range was
        // asked at, is not caught up either.
        assert!(w.on_range(0, 300, 151, 180, 180).is_empty());
        assert!(w.on_report(0, 400, 170, 180, false, None).is_empty());
        let ev = w.on_report(0, 500, 180, 180, false, None);
        assert_eq!(ev[0].kind, EventKind::FollowerCaughtUp);
        assert!(w.on_report(0, 1_000, 180, 180, false, None).is_empty());

        // Halted: one FollowerGap whatever the reports say next.
        let ev = w.on_report(0, 1_500, 180, 200, true, None);
        assert_eq!(
            kinds(&ev),
            vec![(EventKind::FollowerGap, reason::HALTED, Some("follower-1"))]
        );
        assert!(w.on_report(0, 2_000, 180, 300, true, None).is_empty());
        assert!(w.on_connection(0, true, 2_000).is_empty());
        assert!(
            w.on_tick(60_000)
                .iter()
                .all(|e| e.subject.peer.as_deref() != Some("follower-1")),
            "a halted follower is not also stale"
        );
        assert!(w.on_range(0, 2_100, 181, 300, 300).is_empty());
        // Repaired and back: caught up heals it.
        let ev = w.on_report(0, 61_000, 300, 300, false, None);
        assert_eq!(ev[0].kind, EventKind::FollowerCaughtUp);

        // The leader's divergence verdict: its reason is the detail.
        let ev = w.on_report(1, 0, 500, 400, false, Some("the leader's log ends at 400"));
        assert_eq!(
            kinds(&ev),
            vec![(EventKind::FollowerGap, reason::DIVERGED, Some("follower-2"))]
        );
        assert_eq!(ev[0].detail, "the leader's log ends at 400");
        assert!(w
            .on_report(1, 500, 500, 400, false, Some("again"))
            .is_empty());
    }

    #[test]
    fn disconnects_reconnects_and_silence_are_transitions() {
        let mut w = watch();
        // First connection: nothing to heal.
        assert!(w.on_connection(0, true, 10).is_empty());
        assert!(
            w.on_connection(0, true, 20).is_empty(),
            "a second connection"
        );
        let ev = w.on_connection(0, false, 100);
        assert_eq!(
            kinds(&ev),
            vec![(EventKind::Partition, reason::CUT, Some("follower-1"))]
        );
        assert!(w.on_connection(0, false, 150).is_empty());
        let ev = w.on_connection(0, true, 200);
        assert_eq!(
            kinds(&ev),
            vec![(
                EventKind::PartitionHealed,
                reason::RECONNECTED,
                Some("follower-1")
            )]
        );
        // Connected and silent past the stale age: lagging, once; the
        // never-connected follower-2 is cut off, once.
        let stale = 200 + FOLLOWER_REPORT_STALE_MS;
        assert!(w
            .on_tick(stale - 1)
            .iter()
            .all(|e| e.subject.peer.as_deref() != Some("follower-1")));
        let ev = w.on_tick(stale);
        assert_eq!(
            kinds(&ev),
            vec![(
                EventKind::FollowerLag,
                reason::REPORTS_STOPPED,
                Some("follower-1")
            )]
        );
        let earlier: Vec<Event> = ReplWatch::new(vec!["x".into()], WatchConfig::default(), 0)
            .on_tick(FOLLOWER_REPORT_STALE_MS);
        assert_eq!(
            kinds(&earlier),
            vec![(EventKind::Partition, reason::CUT, Some("x"))]
        );
        assert!(w.on_tick(stale + 500).is_empty());
        // Reporting again, in step: caught up.
        let ev = w.on_report(0, stale + 600, 10, 10, false, None);
        assert_eq!(ev[0].kind, EventKind::FollowerCaughtUp);
        // Out of range followers are ignored.
        assert!(w.on_connection(7, false, 0).is_empty());
        assert!(w.on_report(7, 0, 0, 100, true, None).is_empty());
    }

    #[test]
    fn refusals_are_rate_limited_per_second() {
        let mut w = watch();
        let e = || Event::new(EventKind::ForgedMessage, "not_follower", 0);
        let passed = (0..REFUSAL_EVENTS_PER_SEC_MAX + 5)
            .filter(|_| w.refusal(1_000, e()).is_some())
            .count() as u64;
        assert_eq!(passed, REFUSAL_EVENTS_PER_SEC_MAX);
        assert_eq!(w.suppressed(), 5);
        assert!(
            w.refusal(2_000, e()).is_some(),
            "a new second, a new budget"
        );
    }

    /// Forged votes for a 60 KB project name with newlines, no election
    /// open: one short, escaped line a second per rejection kind, and the
    /// event's project clipped.
    #[test]
    fn rejected_votes_are_logged_clipped_escaped_and_rate_limited() {
        use crate::p2p::bounds::{captured_logs, LOG_FIELD_CHARS_MAX, TEST_LOG_LINE_CHARS_MAX};
        use swoosh_core::facts::VoteBody;
        let key = SigningKey::from_bytes(&[9; 32]);
        let v = Vote::cast(
            VoteBody {
                project: "p\nERROR forged line ".repeat(60_000 / 19),
                epoch: 1,
                member_set_hash: Hash([3; 32]),
                approve: true,
                voter: SignerId::from_signing_key(&key),
                genesis: None,
            },
            &key,
        );
        let mut warn = WarnLimiter::default();
        let mut events = vec![];
        let logs = captured_logs(|| {
            for k in 0..200 {
                events.push(rejected_vote(
                    &mut warn,
                    &v,
                    VoteRejection::NoElection,
                    7_000 + k,
                ));
            }
            events.push(rejected_vote(&mut warn, &v, VoteRejection::Outsider, 7_100));
        });
        let lines: Vec<&str> = logs.lines().collect();
        assert_eq!(lines.len(), 2, "one line per kind: {logs}");
        assert!(lines[0].contains("no_election") && lines[1].contains("outsider"));
        for l in &lines {
            assert!(
                l.chars().count() <= TEST_LOG_LINE_CHARS_MAX,
                "{} characters",
                l.len()
            );
        }
        assert_eq!(events.len(), 201, "every rejection is still an event");
        for e in &events {
            assert_eq!(
                e.subject.project.as_deref().map(|p| p.chars().count()),
                Some(LOG_FIELD_CHARS_MAX)
            );
        }
        let logs = captured_logs(|| {
            rejected_vote(&mut warn, &v, VoteRejection::NoElection, 8_000);
        });
        assert!(logs.contains("suppressed=199"), "{logs}");
    }

    fn snap(index: u64) -> OfferedSnapshot {
        OfferedSnapshot {
            index,
            head_record: Hash([index as u8; 32]),
            root_hash: Hash([1; 32]),
            bytes: vec![index as u8; 8],
        }
    }

    #[test]
    fn a_snapshot_being_fetched_stays_served_until_idle_or_crowded_out() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = SnapshotServing::default();
        s.replace_newest(Some(snap(10)), at(0));
        // Never fetched: replaced without a pin.
        s.replace_newest(Some(snap(20)), at(10));
        assert_eq!(
            (s.newest().map(|n| n.index), s.pinned()),
            (Some(20), vec![])
        );
        assert!(s.get(10).is_none());
        // Fetched, then replaced: pinned, and still served by index.
        s.served(20, at(20));
        s.replace_newest(Some(snap(30)), at(30));
        assert_eq!(s.pinned(), vec![20]);
        assert_eq!(s.get(20).map(|x| x.bytes.clone()), Some(vec![20; 8]));
        assert_eq!(s.get(30).map(|x| x.index), Some(30));
        // Chunks keep the pin alive; idle past the limit, it goes.
        s.served(20, at(20_000));
        s.expire(at(20_000 + SNAPSHOT_PIN_IDLE_MS - 1));
        assert_eq!(s.pinned(), vec![20]);
        s.expire(at(20_000 + SNAPSHOT_PIN_IDLE_MS));
        assert!(s.pinned().is_empty());
        // At most SNAPSHOT_PINS_MAX, the least recently served go first.
        let mut s = SnapshotServing::default();
        for (i, index) in [40u64, 50, 60].into_iter().enumerate() {
            s.replace_newest(Some(snap(index)), at(100 * i as u64));
            s.served(index, at(100 * i as u64 + 1));
        }
        assert_eq!(s.pinned(), vec![40, 50]);
        s.served(40, at(250));
        s.replace_newest(Some(snap(70)), at(300));
        assert_eq!(s.pinned().len(), SNAPSHOT_PINS_MAX);
        assert_eq!(s.pinned(), vec![40, 60], "50 was served least recently");
    }
}
