//! A plain gossip peer: joins the mesh with its own key, publishes raw
//! messages and reports what it receives. Council agents and tests (an
//! observer without a follower identity, a forger) are built on it.

use super::BehaviourEvent;
use super::{build_swarm, check_handshake, P2pError};
use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, IdentTopic, TopicHash};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{identify, Multiaddr, PeerId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Messages queued toward the owner at most.
pub const PEER_INBOX_MAX: usize = 4_096;
/// How often an address this peer dials is dialled again while no
/// connection to it is open: a council agent must find the leader again
/// after the leader restarts, and may be started before it.
pub const PEER_REDIAL_MS: u64 = 1_000;

/// `a` without its `/p2p/<id>` part, to match a dialled address with the
/// address a connection reports.
fn transport_part(a: &Multiaddr) -> Multiaddr {
    a.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

pub enum PeerCmd {
    Publish { topic: IdentTopic, data: Vec<u8> },
    Dial(Multiaddr),
}

/// A gossip message this peer received.
#[derive(Clone, Debug)]
pub struct Received {
    pub topic: TopicHash,
    pub source: Option<PeerId>,
    pub data: Vec<u8>,
}

pub struct PeerHandle {
    pub peer_id: PeerId,
    pub listen_addrs: Vec<Multiaddr>,
    pub cmd: mpsc::UnboundedSender<PeerCmd>,
    pub inbox: mpsc::Receiver<Received>,
    /// Remote subscriptions this peer has seen (any topic), net of unsubscriptions.
    pub subscriptions: Arc<AtomicUsize>,
    /// Connections open now (either direction).
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl PeerHandle {
    pub fn publish(&self, topic: &IdentTopic, data: Vec<u8>) {
        let _ = self.cmd.send(PeerCmd::Publish {
            topic: topic.clone(),
            data,
        });
    }
    pub fn dial(&self, addr: Multiaddr) {
        let _ = self.cmd.send(PeerCmd::Dial(addr));
    }
}

impl Drop for PeerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start a peer with `key`, advertising `agent`, subscribed to `topics`.
pub async fn spawn_peer(
    key: &ed25519_dalek::SigningKey,
    agent: String,
    topics: &[IdentTopic],
    listen: Option<Multiaddr>,
    dial: &[Multiaddr],
) -> Result<PeerHandle, P2pError> {
    let mut swarm = build_swarm(key, agent.clone())?;
    for t in topics {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(t)
            .map_err(|e| P2pError::Libp2p(e.to_string()))?;
    }
    let mut listen_addrs = vec![];
    if let Some(l) = listen {
        super::listen_exclusive(&mut swarm, &l)?;
        loop {
            match tokio::time::timeout(std::time::Duration::from_secs(10), swarm.select_next_some())
                .await
            {
                Ok(SwarmEvent::NewListenAddr { address, .. }) => {
                    listen_addrs.push(address);
                    break;
                }
                Ok(_) => {}
                Err(_) => return Err(P2pError::Libp2p(format!("no listen address for {l}"))),
            }
        }
    }
    for d in dial {
        swarm
            .dial(d.clone())
            .map_err(|e| P2pError::Libp2p(format!("cannot dial {d}: {e}")))?;
    }
    // Addresses kept connected, and what each open outgoing connection dialled.
    let mut keep: Vec<Multiaddr> = dial.iter().map(transport_part).collect();
    let mut dialled: HashMap<ConnectionId, Multiaddr> = HashMap::new();
    let peer_id = *swarm.local_peer_id();
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<PeerCmd>();
    let (in_tx, in_rx) = mpsc::channel(PEER_INBOX_MAX);
    let subscriptions = Arc::new(AtomicUsize::new(0));
    let subs = subscriptions.clone();
    let connections = Arc::new(AtomicUsize::new(0));
    let conns = connections.clone();
    let task = tokio::spawn(async move {
        let mut redial = tokio::time::interval(std::time::Duration::from_millis(PEER_REDIAL_MS));
        redial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = redial.tick() => {
                    for a in &keep {
                        if !dialled.values().any(|d| d == a) {
                            // A failed dial is reported as an event; the next tick tries again.
                            let _ = swarm.dial(a.clone());
                        }
                    }
                }
                ev = swarm.select_next_some() => match ev {
                    SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                        conns.fetch_add(1, Ordering::Relaxed);
                        if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                            tracing::info!(peer = %peer_id, %address, "connected");
                            dialled.insert(connection_id, transport_part(address));
                        }
                    }
                    SwarmEvent::ConnectionClosed { peer_id, connection_id, .. } => {
                        let _ = conns.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                        if let Some(address) = dialled.remove(&connection_id) {
                            tracing::warn!(peer = %peer_id, %address, "connection closed; dialling it again every {PEER_REDIAL_MS} ms");
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                        check_handshake(&mut swarm, &agent, peer_id, &info);
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. })) => {
                        let _ = in_tx.try_send(Received { topic: message.topic, source: message.source, data: message.data });
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { .. })) => {
                        subs.fetch_add(1, Ordering::Relaxed);
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Unsubscribed { .. })) => {
                        let _ = subs.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                    }
                    _ => {}
                },
                cmd = cmd_rx.recv() => match cmd {
                    None => break,
                    Some(PeerCmd::Publish { topic, data }) => {
                        if let Err(e) = swarm.behaviour_mut().gossipsub.publish(topic, data) {
                            tracing::debug!("peer publish: {e}");
                        }
                    }
                    Some(PeerCmd::Dial(a)) => {
                        let t = transport_part(&a);
                        if !keep.contains(&t) {
                            keep.push(t);
                        }
                        let _ = swarm.dial(a);
                    }
                },
            }
        }
    });
    Ok(PeerHandle {
        peer_id,
        listen_addrs,
        cmd: cmd_tx,
        inbox: in_rx,
        subscriptions,
        connections,
        task,
    })
}
