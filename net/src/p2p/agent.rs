//! A council agent on the mesh: it listens on `swoosh/<cluster>/council/v1`
//! for the leader's signed candidate announcements and answers each with a
//! vote signed by its own key ([`CouncilAgent`]). Council messages are the
//! canonical CBOR of [`CouncilMsg`], unencrypted (votes are public facts).

use super::bounds::{clip, WarnLimiter};
use super::peer::{spawn_peer, PeerHandle};
use super::{agent_version, council_topic, ms_since, P2pError};
use crate::proto::council::{AgentRefusal, CouncilAgent, CouncilMsg, VotePolicy};
use ed25519_dalek::SigningKey;
use libp2p::Multiaddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use swoosh_core::cbor::{from_canonical, to_canonical, CanonicalError};
use swoosh_core::state::Genesis;

pub fn encode_council(m: &CouncilMsg) -> Result<Vec<u8>, CanonicalError> {
    to_canonical(m)
}

pub fn decode_council(bytes: &[u8]) -> Result<CouncilMsg, CanonicalError> {
    from_canonical(bytes)
}

#[derive(Clone, Debug, Default)]
pub struct AgentShared {
    pub announcements: u64,
    pub votes_sent: u64,
    pub refused: u64,
    pub malformed: u64,
    /// The last refusal's reason, clipped to
    /// [`super::bounds::LOG_FIELD_CHARS_MAX`] characters (it may quote the
    /// announcement's `cluster_id`, which anyone can set).
    pub last_refusal: Option<String>,
    /// Council messages dropped because the agent's inbox was full (filled
    /// in by [`AgentP2p::snapshot`]).
    pub inbox_drops: u64,
}

pub struct AgentP2p {
    pub peer_id: libp2p::PeerId,
    pub shared: Arc<Mutex<AgentShared>>,
    inbox_drops: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl AgentP2p {
    pub fn snapshot(&self) -> AgentShared {
        let mut s = self.shared.lock().expect("lock").clone();
        s.inbox_drops = self.inbox_drops.load(Ordering::Relaxed);
        s
    }
}

impl Drop for AgentP2p {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Join the mesh through `peers` and vote on every announcement.
pub async fn spawn_agent(
    key: SigningKey,
    genesis: &Genesis,
    policy: VotePolicy,
    peers: &[Multiaddr],
    listen: Option<Multiaddr>,
) -> Result<AgentP2p, P2pError> {
    let topic = council_topic(&genesis.cluster_id);
    let peer = spawn_peer(
        &key,
        agent_version(genesis),
        std::slice::from_ref(&topic),
        listen,
        peers,
    )
    .await?;
    let peer_id = peer.peer_id;
    let inbox_drops = peer.inbox_drops.clone();
    let shared = Arc::new(Mutex::new(AgentShared::default()));
    let agent = CouncilAgent::new(key, genesis, policy);
    let s2 = shared.clone();
    let task = tokio::spawn(async move { run(peer, agent, topic, s2).await });
    Ok(AgentP2p {
        peer_id,
        shared,
        inbox_drops,
        task,
    })
}

async fn run(
    mut peer: PeerHandle,
    mut agent: CouncilAgent,
    topic: libp2p::gossipsub::IdentTopic,
    shared: Arc<Mutex<AgentShared>>,
) {
    let th = topic.hash();
    let t0 = std::time::Instant::now();
    let mut warn = WarnLimiter::default();
    while let Some(m) = peer.inbox.recv().await {
        if m.topic != th {
            continue;
        }
        let msg = match decode_council(&m.data) {
            Ok(x) => x,
            Err(e) => {
                shared.lock().expect("lock").malformed += 1;
                if let Some(suppressed) = warn.check("malformed", ms_since(t0)) {
                    let e = e.to_string();
                    tracing::debug!(error = ?clip(&e), suppressed, "a council message does not decode");
                }
                continue;
            }
        };
        let CouncilMsg::Announce(a) = msg else {
            continue; // other agents' votes
        };
        shared.lock().expect("lock").announcements += 1;
        match agent.on_announce(&a) {
            Ok(v) => match encode_council(&CouncilMsg::Vote(v)) {
                Ok(bytes) => {
                    tracing::info!(project = %a.body.project, epoch = a.body.epoch, "voting");
                    peer.publish(&topic, bytes);
                    shared.lock().expect("lock").votes_sent += 1;
                }
                Err(e) => tracing::error!("cannot encode a vote: {e}"),
            },
            Err(r) => refused(&shared, &mut warn, &r, ms_since(t0)),
        }
    }
}

/// A refused announcement: counted, logged (rate-limited per kind) and
/// kept for the snapshot, its reason clipped (a `WrongCluster` refusal
/// quotes the announcement's `cluster_id`, up to a gossip message of any
/// text) and logged with `?` so it cannot forge a line.
fn refused(shared: &Mutex<AgentShared>, warn: &mut WarnLimiter, r: &AgentRefusal, now_ms: u64) {
    let text = r.to_string();
    let reason = clip(&text);
    if let Some(suppressed) = warn.check(r.kind(), now_ms) {
        tracing::warn!(kind = r.kind(), reason = ?reason, suppressed, "refused an announcement");
    }
    let mut s = shared.lock().expect("lock");
    s.refused += 1;
    s.last_refusal = Some(reason.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::p2p::bounds::{captured_logs, LOG_FIELD_CHARS_MAX, TEST_LOG_LINE_CHARS_MAX};

    /// An announcement naming another cluster with a 2 MiB id full of
    /// newlines, 50 times in a second: one short, escaped line, and the
    /// kept reason clipped.
    #[test]
    fn a_refusal_quoting_a_huge_cluster_id_is_clipped_and_rate_limited() {
        let shared = Mutex::new(AgentShared::default());
        let mut warn = WarnLimiter::default();
        let r = AgentRefusal::WrongCluster("c\nWARN forged line ".repeat((2 << 20) / 19));
        let logs = captured_logs(|| {
            for k in 0..50 {
                refused(&shared, &mut warn, &r, 20_000 + k);
            }
        });
        let lines: Vec<&str> = logs.lines().collect();
        assert_eq!(lines.len(), 1, "one line for 50 refusals in a second");
        assert!(lines[0].contains("wrong_cluster"), "{}", lines[0]);
        assert!(
            lines[0].chars().count() <= TEST_LOG_LINE_CHARS_MAX,
            "{} characters",
            lines[0].len()
        );
        let s = shared.lock().unwrap();
        assert_eq!(s.refused, 50);
        let kept = s.last_refusal.as_deref().unwrap();
        assert_eq!(kept.chars().count(), LOG_FIELD_CHARS_MAX);
    }
}
