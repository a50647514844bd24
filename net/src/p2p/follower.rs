//! A follower's replication task: receive WAL gossip, reassemble, decrypt
//! with the follower's age identity, feed [`ReplFollower`], fetch gaps from
//! the leader over request-response, and persist applied records to the
//! follower's own WAL.

use super::envelope::{self, Reassembler};
use super::{
    agent_version, build_swarm, check_handshake, ms_since, peer_id_of, wal_topic, P2pError,
};
use super::{Behaviour, BehaviourEvent};
use crate::proto::follower::{FollowerConfig, FollowerEffect, ReplFollower};
use crate::proto::wire::{self, Bytes};
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::request_response::{self, Message};
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, Multiaddr, PeerId, Swarm};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swoosh_core::sig::SignerId;
use swoosh_core::state::Genesis;
use swoosh_storage::{BatchLimits, Entry, LogStore, WalWriter};

/// How often the follower ticks its protocol (request timeouts, gaps).
pub const TICK_MS: u64 = 50;
/// How often a lost connection to the leader is dialled again.
pub const REDIAL_MS: u64 = 1_000;
/// How often the follower reports its position to the leader.
pub const STATUS_EVERY_MS: u64 = 500;
/// Refusal reasons kept for the health view.
pub const REFUSALS_KEPT: usize = 16;

/// The follower's state as its HTTP surface and tests see it.
pub struct FollowerShared {
    pub repl: ReplFollower,
    pub gossip_chunks: u64,
    pub decrypted: u64,
    /// Complete gossip messages this follower could not decrypt.
    pub undecryptable: u64,
    pub malformed: u64,
    pub persisted_index: u64,
    /// Snapshots installed into this follower's store (late join, far behind).
    pub snapshots_installed: u64,
    pub last_refusals: Vec<String>,
    pub halted_reason: Option<String>,
    pub leader_connected: bool,
    /// Where the leader was dialled (for 503 answers).
    pub leader_addr: String,
    /// Wall-clock ms of the last applied record (for lag in ms).
    pub last_applied_ms: u64,
    /// Addresses this follower listens on (when it was given `listen`).
    pub listen_addrs: Vec<Multiaddr>,
}

pub struct FollowerP2p {
    pub peer_id: PeerId,
    pub shared: Arc<Mutex<FollowerShared>>,
    task: tokio::task::JoinHandle<()>,
}

impl FollowerP2p {
    pub fn stop(&self) {
        self.task.abort();
    }
    pub fn applied_index(&self) -> u64 {
        self.shared.lock().expect("lock").repl.applied_index()
    }
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.shared.lock().expect("lock").listen_addrs.clone()
    }
    pub fn root_hash(&self) -> swoosh_core::hash::Hash {
        self.shared.lock().expect("lock").repl.node().root_hash()
    }
}

impl Drop for FollowerP2p {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct FollowerOptions {
    pub key: SigningKey,
    pub genesis: Genesis,
    pub age_identity: age::x25519::Identity,
    pub leader: Multiaddr,
    /// Optional listen address (other peers may relay through this one).
    pub listen: Option<Multiaddr>,
}

fn now_wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Recover the follower's node from `store`, then start its swarm.
pub async fn spawn_follower<S: LogStore + Send + 'static>(
    store: S,
    opts: FollowerOptions,
) -> Result<FollowerP2p, P2pError> {
    let FollowerOptions {
        key,
        genesis,
        age_identity,
        leader,
        listen,
    } = opts;
    let gh = genesis
        .hash()
        .map_err(|e| P2pError::Config(e.to_string()))?;
    // log_end, not last_index: a store based on an installed snapshot may
    // hold no record yet and still be far from genesis.
    let node =
        if swoosh_storage::log_end(&store).map_err(|e| P2pError::Storage(e.to_string()))? == 0 {
            swoosh_core::state::NodeState::new(genesis.clone())
                .map_err(|e| P2pError::Config(e.to_string()))?
        } else {
            swoosh_storage::recover(&store, &genesis)
                .map_err(|e| P2pError::Storage(e.to_string()))?
                .node
        };
    let writer = WalWriter::open(store, gh, BatchLimits::default())
        .map_err(|e| P2pError::Storage(e.to_string()))?;
    if writer.last_index() != node.index {
        return Err(P2pError::Storage(format!(
            "recovered index {} but the WAL ends at {}",
            node.index,
            writer.last_index()
        )));
    }
    let id = SignerId::from_signing_key(&key);
    let leader_peer = peer_id_of(&genesis.leader)
        .ok_or_else(|| P2pError::Config("the genesis leader key is not an ed25519 key".into()))?;
    let agent = agent_version(&genesis);
    let mut swarm = build_swarm(&key, agent.clone())?;
    let topic = wal_topic(&genesis.cluster_id);
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| P2pError::Libp2p(e.to_string()))?;
    if let Some(l) = &listen {
        swarm
            .listen_on(l.clone())
            .map_err(|e| P2pError::Libp2p(format!("cannot listen on {l}: {e}")))?;
    }
    swarm
        .dial(leader.clone())
        .map_err(|e| P2pError::Libp2p(format!("cannot dial the leader at {leader}: {e}")))?;
    let persisted = writer.last_index();
    let repl = ReplFollower::new(
        FollowerConfig {
            gap_grace_ms: crate::proto::follower::GAP_GRACE_MS,
            ..FollowerConfig::default()
        },
        id,
        node,
    );
    let shared = Arc::new(Mutex::new(FollowerShared {
        repl,
        gossip_chunks: 0,
        decrypted: 0,
        undecryptable: 0,
        malformed: 0,
        persisted_index: persisted,
        snapshots_installed: 0,
        last_refusals: vec![],
        halted_reason: None,
        leader_connected: false,
        leader_addr: leader.to_string(),
        last_applied_ms: now_wall_ms(),
        listen_addrs: vec![],
    }));
    let peer_id = *swarm.local_peer_id();
    let mut t = FollowerTask {
        swarm,
        writer,
        identity: age_identity,
        reasm: Reassembler::default(),
        leader_peer,
        leader_addr: leader,
        agent,
        topic_hash: topic.hash(),
        shared: shared.clone(),
        t0: Instant::now(),
    };
    let task = tokio::spawn(async move { t.run().await });
    Ok(FollowerP2p {
        peer_id,
        shared,
        task,
    })
}

struct FollowerTask<S: LogStore> {
    swarm: Swarm<Behaviour>,
    writer: WalWriter<S>,
    identity: age::x25519::Identity,
    reasm: Reassembler,
    leader_peer: PeerId,
    leader_addr: Multiaddr,
    agent: String,
    topic_hash: gossipsub::TopicHash,
    shared: Arc<Mutex<FollowerShared>>,
    t0: Instant,
}

impl<S: LogStore> FollowerTask<S> {
    async fn run(&mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
        let mut redial = tokio::time::interval(Duration::from_millis(REDIAL_MS));
        let mut status = tokio::time::interval(Duration::from_millis(STATUS_EVERY_MS));
        loop {
            tokio::select! {
                _ = status.tick() => {
                    if self.swarm.is_connected(&self.leader_peer) {
                        // Sent even when halted, so the leader raises the alarm too.
                        let mut r = self.shared.lock().expect("lock").repl.status_report();
                        r.halted |= self.shared.lock().expect("lock").halted_reason.is_some();
                        self.send(&wire::Request::Status(r));
                    }
                }
                ev = self.swarm.select_next_some() => self.on_event(ev),
                _ = tick.tick() => {
                    let now = ms_since(self.t0);
                    let eff = self.shared.lock().expect("lock").repl.tick(now);
                    self.effects(eff);
                }
                _ = redial.tick() => {
                    if !self.swarm.is_connected(&self.leader_peer) {
                        let _ = self.swarm.dial(self.leader_addr.clone());
                    }
                }
            }
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                check_handshake(&mut self.swarm, &self.agent, peer_id, &info);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message,
                ..
            })) if message.topic == self.topic_hash => self.on_chunk(&message.data),
            SwarmEvent::Behaviour(BehaviourEvent::Rr(request_response::Event::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            })) if peer == self.leader_peer => match wire::decode_response(&response.0) {
                Ok(resp) => {
                    let now = ms_since(self.t0);
                    let eff = self
                        .shared
                        .lock()
                        .expect("lock")
                        .repl
                        .on_response(&resp, now);
                    self.effects(eff);
                }
                Err(e) => {
                    tracing::warn!("a response from the leader does not decode: {e}");
                    self.shared.lock().expect("lock").malformed += 1;
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Rr(request_response::Event::Message {
                message: Message::Request { channel, .. },
                ..
            })) => {
                // Followers serve nothing.
                let resp = wire::encode_response(&wire::Response::Refused {
                    reason: "followers do not serve the log; ask the leader".into(),
                })
                .unwrap_or_default();
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .rr
                    .send_response(channel, Bytes(resp));
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                self.shared.lock().expect("lock").listen_addrs.push(address);
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == self.leader_peer => {
                tracing::info!(leader = %peer_id, "connected to the leader");
                self.shared.lock().expect("lock").leader_connected = true;
            }
            SwarmEvent::ConnectionClosed { peer_id, .. } if peer_id == self.leader_peer => {
                let connected = self.swarm.is_connected(&self.leader_peer);
                self.shared.lock().expect("lock").leader_connected = connected;
                if !connected {
                    tracing::warn!(leader = %peer_id, "lost the connection to the leader; redialling");
                }
            }
            _ => {}
        }
    }

    fn on_chunk(&mut self, data: &[u8]) {
        self.shared.lock().expect("lock").gossip_chunks += 1;
        let ct = match self.reasm.push(data) {
            Ok(Some(ct)) => ct,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!("gossip chunk refused: {e}");
                self.shared.lock().expect("lock").malformed += 1;
                return;
            }
        };
        let plain = match envelope::decrypt(&ct, &self.identity) {
            Ok(p) => p,
            Err(e) => {
                let mut s = self.shared.lock().expect("lock");
                s.undecryptable += 1;
                if s.undecryptable == 1 {
                    tracing::warn!("WAL gossip is not readable with this follower's age identity ({e}): is it listed in genesis followers?");
                }
                return;
            }
        };
        let msg = match wire::decode_gossip(&plain) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("decrypted gossip does not decode: {e}");
                self.shared.lock().expect("lock").malformed += 1;
                return;
            }
        };
        let now = ms_since(self.t0);
        let eff = {
            let mut s = self.shared.lock().expect("lock");
            s.decrypted += 1;
            s.repl.on_gossip(&msg, now)
        };
        self.effects(eff);
    }

    fn send(&mut self, req: &wire::Request) {
        match wire::encode_request(req) {
            Ok(b) => {
                let leader = self.leader_peer;
                self.swarm
                    .behaviour_mut()
                    .rr
                    .send_request(&leader, Bytes(b));
            }
            Err(e) => tracing::error!("cannot encode a request: {e}"),
        }
    }

    fn effects(&mut self, eff: Vec<FollowerEffect>) {
        for e in eff {
            if self.shared.lock().expect("lock").halted_reason.is_some() {
                // Halted (divergence or a WAL that refused a write): apply,
                // persist and ask for nothing more.
                return;
            }
            match e {
                FollowerEffect::Applied(recs) => {
                    let entries: Vec<Entry> =
                        recs.into_iter().map(|a| Entry::record(a.record)).collect();
                    match self.writer.append_batch(&entries) {
                        Ok(r) => {
                            let mut s = self.shared.lock().expect("lock");
                            s.persisted_index = r.last_index;
                            s.last_applied_ms = now_wall_ms();
                        }
                        Err(err) => {
                            tracing::error!("ALARM: cannot persist replicated records: {err}; this follower stops applying");
                            let mut s = self.shared.lock().expect("lock");
                            s.halted_reason = Some(format!("persist: {err}"));
                        }
                    }
                }
                FollowerEffect::InstallSnapshot { index, bytes } => {
                    // The protocol verified the bytes against the leader's
                    // signed manifest; the store makes the snapshot the base
                    // its own WAL continues from, in one commit.
                    let installed =
                        swoosh_core::cbor::from_canonical::<swoosh_core::state::NodeState>(&bytes)
                            .map_err(|e| e.to_string())
                            .and_then(|node| {
                                self.writer
                                    .install_snapshot(&node)
                                    .map_err(|e| e.to_string())
                            });
                    match installed {
                        Ok(r) => {
                            tracing::info!(
                                index,
                                cut = r.cut_records,
                                "installed the leader's snapshot; the WAL continues after it"
                            );
                            let mut s = self.shared.lock().expect("lock");
                            s.persisted_index = index;
                            s.snapshots_installed += 1;
                            s.last_applied_ms = now_wall_ms();
                        }
                        Err(err) => {
                            tracing::error!("ALARM: cannot persist the leader's snapshot at {index}: {err}; this follower stops applying");
                            let mut s = self.shared.lock().expect("lock");
                            s.halted_reason = Some(format!("snapshot install: {err}"));
                        }
                    }
                }
                FollowerEffect::Send(req) => self.send(&req),
                FollowerEffect::Refused(r) => {
                    tracing::warn!(kind = r.kind(), "refused a replication message: {r}");
                    let mut s = self.shared.lock().expect("lock");
                    if s.last_refusals.len() >= REFUSALS_KEPT {
                        s.last_refusals.remove(0);
                    }
                    s.last_refusals.push(format!("{}: {r}", r.kind()));
                }
                FollowerEffect::Halted(d) => {
                    tracing::error!(
                        index = d.index,
                        "ALARM: divergence from the leader: {}; this follower applies nothing more",
                        d.reason
                    );
                    self.shared.lock().expect("lock").halted_reason =
                        Some(format!("divergence at {}: {}", d.index, d.reason));
                }
            }
        }
    }
}
