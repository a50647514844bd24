//! A plain gossip peer: joins the mesh with its own key, publishes raw
//! messages and reports what it receives. Council agents and tests (an
//! observer without a follower identity, a forger) are built on it.

use super::bounds::{QueuedBytes, WarnLimiter};
use super::BehaviourEvent;
use super::{build_swarm, check_handshake, ms_since, P2pError};
use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, IdentTopic, TopicHash};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{identify, Multiaddr, PeerId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Messages queued toward the owner at most.
pub const PEER_INBOX_MAX: usize = 4_096;
/// Bytes of the messages queued toward the owner at most: a message that
/// does not fit is dropped as when [`PEER_INBOX_MAX`] is reached. Without
/// it the queue could hold `PEER_INBOX_MAX` gossip messages of up to
/// `GOSSIP_PAYLOAD_BYTES_MAX` (64 KiB) each, 256 MiB. 16 MiB is 256 of the
/// largest, and far more announcements (a 256-member one is ~20 KiB) or
/// votes (~400 bytes) than a council agent has pending. What an agent
/// loses is published again: the leader re-announces an open election
/// every `REANNOUNCE_MS`.
pub const PEER_INBOX_BYTES_MAX: usize = 16 << 20;
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

/// The messages this peer received, bounded in messages
/// ([`PEER_INBOX_MAX`]) and bytes ([`PEER_INBOX_BYTES_MAX`]): the owner's
/// end. Taking a message releases its bytes.
pub struct PeerInbox {
    rx: mpsc::Receiver<Received>,
    bytes: QueuedBytes,
}

impl PeerInbox {
    pub async fn recv(&mut self) -> Option<Received> {
        let m = self.rx.recv().await?;
        self.bytes.release(m.data.len());
        Some(m)
    }

    pub fn try_recv(&mut self) -> Option<Received> {
        let m = self.rx.try_recv().ok()?;
        self.bytes.release(m.data.len());
        Some(m)
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.bytes.queued()
    }
}

/// The swarm task's end of a [`PeerInbox`].
struct PeerInboxTx {
    tx: mpsc::Sender<Received>,
    bytes: QueuedBytes,
    /// Messages dropped because they did not fit.
    drops: Arc<AtomicU64>,
    warn: WarnLimiter,
}

fn peer_inbox(messages_max: usize, bytes_max: usize) -> (PeerInboxTx, PeerInbox) {
    let (tx, rx) = mpsc::channel(messages_max);
    let bytes = QueuedBytes::new(bytes_max);
    (
        PeerInboxTx {
            tx,
            bytes: bytes.clone(),
            drops: Arc::default(),
            warn: WarnLimiter::default(),
        },
        PeerInbox { rx, bytes },
    )
}

impl PeerInboxTx {
    /// Queue `m` if it fits both bounds; never blocks the swarm. What does
    /// not fit is dropped, counted, and warned of (rate-limited).
    fn offer(&mut self, m: Received, now_ms: u64) {
        let n = m.data.len();
        let full = if !self.bytes.try_reserve(n) {
            "bytes"
        } else {
            match self.tx.try_send(m) {
                Ok(()) => return,
                // The owner is gone: nothing reads the queue any more.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.bytes.release(n);
                    return;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.bytes.release(n);
                    "messages"
                }
            }
        };
        self.drops.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.warn.check("inbox_full", now_ms) {
            tracing::warn!(
                full,
                queued_bytes = self.bytes.queued(),
                suppressed,
                "gossip arrives faster than it is handled (at most {PEER_INBOX_MAX} messages and {} bytes wait): dropping it",
                self.bytes.max()
            );
        }
    }
}

pub struct PeerHandle {
    pub peer_id: PeerId,
    pub listen_addrs: Vec<Multiaddr>,
    pub cmd: mpsc::UnboundedSender<PeerCmd>,
    pub inbox: PeerInbox,
    /// Received messages dropped because the inbox was full (in messages
    /// or in bytes).
    pub inbox_drops: Arc<AtomicU64>,
    /// Remote subscriptions this peer has seen (any topic), net of unsubscriptions.
    pub subscriptions: Arc<AtomicUsize>,
    /// Connections open now (either direction), the handshake passed or not.
    pub connections: Arc<AtomicUsize>,
    /// Peers connected now whose genesis handshake passed (same protocol,
    /// same cluster and genesis): the ones this peer exchanges messages with.
    pub peers: Arc<AtomicUsize>,
    /// Of those, the ones subscribed to one of this peer's topics: the ones
    /// it can hear its topics' messages from (a follower, say, passes the
    /// handshake but carries only the WAL topic).
    pub topic_peers: Arc<AtomicUsize>,
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
    let (mut in_tx, in_rx) = peer_inbox(PEER_INBOX_MAX, PEER_INBOX_BYTES_MAX);
    let inbox_drops = in_tx.drops.clone();
    let t0 = std::time::Instant::now();
    let subscriptions = Arc::new(AtomicUsize::new(0));
    let subs = subscriptions.clone();
    let connections = Arc::new(AtomicUsize::new(0));
    let conns = connections.clone();
    let peers = Arc::new(AtomicUsize::new(0));
    let peers_gauge = peers.clone();
    let topic_peers = Arc::new(AtomicUsize::new(0));
    let topic_gauge = topic_peers.clone();
    let ours: Vec<TopicHash> = topics.iter().map(|t| t.hash()).collect();
    let task = tokio::spawn(async move {
        // Peers that passed the genesis handshake and are still connected.
        let mut verified: std::collections::HashSet<PeerId> = Default::default();
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
                ev = swarm.select_next_some() => {
                    let recount = matches!(
                        ev,
                        SwarmEvent::ConnectionClosed { .. }
                            | SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { .. }))
                            | SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(
                                gossipsub::Event::Subscribed { .. } | gossipsub::Event::Unsubscribed { .. }
                            ))
                    );
                    match ev {
                    SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                        conns.fetch_add(1, Ordering::Relaxed);
                        if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                            tracing::info!(peer = %peer_id, %address, "connected");
                            dialled.insert(connection_id, transport_part(address));
                        }
                    }
                    SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, .. } => {
                        let _ = conns.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                        if num_established == 0 && verified.remove(&peer_id) {
                            peers_gauge.store(verified.len(), Ordering::Relaxed);
                        }
                        if let Some(address) = dialled.remove(&connection_id) {
                            tracing::warn!(peer = %peer_id, %address, "connection closed; dialling it again every {PEER_REDIAL_MS} ms");
                        }
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }))
                        if check_handshake(&mut swarm, &agent, peer_id, &info)
                            && swarm.is_connected(&peer_id) =>
                    {
                        verified.insert(peer_id);
                        peers_gauge.store(verified.len(), Ordering::Relaxed);
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. })) => {
                        in_tx.offer(Received { topic: message.topic, source: message.source, data: message.data }, ms_since(t0));
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { .. })) => {
                        subs.fetch_add(1, Ordering::Relaxed);
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Unsubscribed { .. })) => {
                        let _ = subs.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                    }
                    _ => {}
                    }
                    if recount {
                        let n = swarm
                            .behaviour()
                            .gossipsub
                            .all_peers()
                            .filter(|(p, ts)| verified.contains(*p) && ts.iter().any(|t| ours.contains(t)))
                            .count();
                        topic_gauge.store(n, Ordering::Relaxed);
                    }
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
        inbox_drops,
        subscriptions,
        connections,
        peers,
        topic_peers,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(bytes: usize) -> Received {
        Received {
            topic: TopicHash::from_raw("t"),
            source: None,
            data: vec![0; bytes],
        }
    }

    /// Largest-size gossip messages beyond PEER_INBOX_BYTES_MAX are dropped
    /// and counted long before PEER_INBOX_MAX wait; once the owner took
    /// some, they fit again.
    #[test]
    fn the_inbox_drops_what_does_not_fit_in_its_bytes() {
        let big = crate::proto::wire::GOSSIP_PAYLOAD_BYTES_MAX;
        let fit = PEER_INBOX_BYTES_MAX / big;
        assert!(fit < PEER_INBOX_MAX, "the byte bound is the one that acts");
        let (mut tx, mut rx) = peer_inbox(PEER_INBOX_MAX, PEER_INBOX_BYTES_MAX);
        let logs = crate::p2p::bounds::captured_logs(|| {
            for _ in 0..fit + 5 {
                tx.offer(msg(big), 0);
            }
        });
        assert_eq!(tx.drops.load(Ordering::Relaxed), 5);
        assert_eq!(rx.queued_bytes(), fit * big);
        assert_eq!(logs.lines().count(), 1, "one warning: {logs}");
        assert_eq!(rx.try_recv().map(|m| m.data.len()), Some(big));
        tx.offer(msg(big), 1);
        assert_eq!(tx.drops.load(Ordering::Relaxed), 5, "it fits again");
        tx.offer(msg(1), 2);
        assert_eq!(tx.drops.load(Ordering::Relaxed), 6);
        // Small messages still stop at PEER_INBOX_MAX.
        let (mut tx, rx) = peer_inbox(PEER_INBOX_MAX, PEER_INBOX_BYTES_MAX);
        for _ in 0..PEER_INBOX_MAX + 1 {
            tx.offer(msg(100), 0);
        }
        assert_eq!(tx.drops.load(Ordering::Relaxed), 1);
        assert_eq!(rx.queued_bytes(), PEER_INBOX_MAX * 100);
    }
}
