//! The leader's replication task: tail the durable log of a store (the one
//! the node's WAL writer commits to), feed [`ReplLeader`], publish batches
//! and heads on the WAL topic (age-encrypted, chunked), and answer catch-up
//! requests from followers listed in genesis.

use super::agent::{decode_council, encode_council};
use super::envelope;
use super::{agent_version, build_swarm, check_handshake, peer_id_of, wal_topic, P2pError};
use super::{Behaviour, BehaviourEvent};
use crate::proto::council::{
    certificate_proposal, electable_members, CouncilCollector, CouncilMsg, VoteOutcome,
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
            match read_record(store, idx) {
                Ok(v) if v.hash == snap.head_record => {}
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

/// [`LeaderLog`] over a [`LogStore`]: records from 1 (the leader's WAL is
/// never truncated), plus the snapshots the leader serves.
pub struct StoreLog<'a, S: LogStore> {
    pub store: &'a S,
    pub snapshots: &'a SnapshotServing,
}

impl<S: LogStore> LeaderLog for StoreLog<'_, S> {
    fn first_index(&self) -> u64 {
        1
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
}

pub struct LeaderP2p {
    pub peer_id: PeerId,
    /// Addresses the swarm listens on (the first is the one to give followers).
    pub listen_addrs: Vec<Multiaddr>,
    pub shared: Arc<Mutex<LeaderShared>>,
    reports: Arc<Mutex<Vec<Option<std::time::Instant>>>>,
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
        followers,
        reports: reports.clone(),
        snapshots: SnapshotServing::default(),
        offered_checked: None,
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
    };
    let task = tokio::spawn(async move { t.run().await });
    Ok(LeaderP2p {
        peer_id,
        listen_addrs,
        shared,
        reports,
        task,
        state_copy,
    })
}

struct LeaderTask<S: LogStore> {
    store: Arc<S>,
    repl: ReplLeader,
    swarm: Swarm<Behaviour>,
    recipients: Vec<age::x25519::Recipient>,
    /// Follower peer -> its position in genesis followers.
    followers: BTreeMap<PeerId, usize>,
    /// When each follower last reported (same order as genesis followers).
    reports: Arc<Mutex<Vec<Option<std::time::Instant>>>>,
    /// The snapshots offered to far-behind followers, and when the store
    /// was last looked at for a newer one.
    snapshots: SnapshotServing,
    offered_checked: Option<std::time::Instant>,
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
                    let h = self.repl.head(1);
                    self.publish(&h);
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
            self.publish_encoded(plain);
        }
        let mut s = self.shared.lock().expect("leader stats lock");
        s.stats = self.repl.stats().clone();
        s.published_index = self.repl.published_index();
    }

    fn publish(&mut self, g: &wire::Gossip) {
        self.publish_encoded(wire::encode_gossip(g));
    }

    fn publish_encoded(&mut self, plain: Result<Vec<u8>, swoosh_core::cbor::CanonicalError>) {
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
        let chunks = match envelope::seal(&plain, &self.recipients) {
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
                Err(e) => {
                    // No subscribed peer yet: followers catch up by range.
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
        for (id, e) in &node.projects {
            let st = &e.state;
            let epoch = st.epoch.council;
            if st.council.phase != "ELECT" {
                if self.collector.open_for(id).is_some() {
                    close.push(id.clone());
                }
                continue;
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
                    let members = electable_members(st);
                    if members.len() < st.council.quorum_threshold as usize {
                        // The quorum guard would refuse any certificate:
                        // say so once per epoch instead of electing in vain.
                        if self.unelectable.insert((id.clone(), epoch)) {
                            tracing::warn!(project = %id, epoch, electable = members.len(), threshold = st.council.quorum_threshold, "cannot open the election: fewer electable candidates (not ejected) than the quorum threshold; load more candidates");
                        }
                        continue;
                    }
                    match self.collector.open(st, &members) {
                        Ok(a) => announce.push(a),
                        Err(e) => tracing::warn!(project = %id, "cannot open the election: {e}"),
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
                self.proposed
                    .insert((cert.project.clone(), cert.epoch), now);
                self.shared.lock().expect("lock").certificate_proposals += 1;
            }
            Err(e) => tracing::error!("cannot build the certificate proposal: {e}"),
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
        if newest.is_some() && newest != self.snapshots.newest().map(|o| o.index) {
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
        resp
    }

    fn on_council_message(&mut self, data: &[u8]) {
        let Ok(CouncilMsg::Vote(v)) = decode_council(data) else {
            return;
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
                tracing::warn!(voter = %v.body.voter, project = %v.body.project, "vote rejected: {}", r.name());
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
            })) if !check_handshake(&mut self.swarm, &self.agent, peer_id, &info) => {
                self.shared.lock().expect("lock").refused_peers += 1;
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
                        tracing::warn!(%peer, "refusing a catch-up request: the peer is not a follower listed in genesis");
                        Response::Refused {
                            reason: "only followers listed in genesis may read the log".into(),
                        }
                    }
                    Some(i) => match wire::decode_request(&request.0) {
                        Ok(wire::Request::Status(r)) => self.on_status(i, &r),
                        Ok(req) => {
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
                        Err(e) => Response::Refused {
                            reason: format!("request does not decode: {e}"),
                        },
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
                libp2p::gossipsub::Event::Message { message, .. },
            )) if message.topic == self.council_topic.hash() => {
                self.on_council_message(&message.data);
            }
            SwarmEvent::ConnectionEstablished { .. } | SwarmEvent::ConnectionClosed { .. } => {
                let n = self.swarm.connected_peers().count();
                let mut s = self.shared.lock().expect("lock");
                s.connected_peers = n;
                for (peer, i) in &self.followers {
                    if let Some(f) = s.followers.get_mut(*i) {
                        f.connected = self.swarm.is_connected(peer);
                    }
                }
            }
            _ => {}
        }
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
