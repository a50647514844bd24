//! A plain gossip peer: joins the mesh with its own key, publishes raw
//! messages and reports what it receives. Council agents and tests (an
//! observer without a follower identity, a forger) are built on it.

use super::BehaviourEvent;
use super::{build_swarm, check_handshake, P2pError};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, TopicHash};
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, Multiaddr, PeerId};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Messages queued toward the owner at most.
pub const PEER_INBOX_MAX: usize = 4_096;

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
        swarm
            .listen_on(l.clone())
            .map_err(|e| P2pError::Libp2p(format!("cannot listen on {l}: {e}")))?;
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
    let peer_id = *swarm.local_peer_id();
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<PeerCmd>();
    let (in_tx, in_rx) = mpsc::channel(PEER_INBOX_MAX);
    let subscriptions = Arc::new(AtomicUsize::new(0));
    let subs = subscriptions.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                ev = swarm.select_next_some() => match ev {
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
        task,
    })
}
