//! A council agent on the mesh: it listens on `swoosh/<cluster>/council/v1`
//! for the leader's signed candidate announcements and answers each with a
//! vote signed by its own key ([`CouncilAgent`]). Council messages are the
//! canonical CBOR of [`CouncilMsg`], unencrypted (votes are public facts).

use super::peer::{spawn_peer, PeerHandle};
use super::{agent_version, council_topic, P2pError};
use crate::proto::council::{CouncilAgent, CouncilMsg, VotePolicy};
use ed25519_dalek::SigningKey;
use libp2p::Multiaddr;
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
    pub last_refusal: Option<String>,
}

pub struct AgentP2p {
    pub peer_id: libp2p::PeerId,
    pub shared: Arc<Mutex<AgentShared>>,
    task: tokio::task::JoinHandle<()>,
}

impl AgentP2p {
    pub fn snapshot(&self) -> AgentShared {
        self.shared.lock().expect("lock").clone()
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
    let shared = Arc::new(Mutex::new(AgentShared::default()));
    let agent = CouncilAgent::new(key, genesis, policy);
    let s2 = shared.clone();
    let task = tokio::spawn(async move { run(peer, agent, topic, s2).await });
    Ok(AgentP2p {
        peer_id,
        shared,
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
    while let Some(m) = peer.inbox.recv().await {
        if m.topic != th {
            continue;
        }
        let msg = match decode_council(&m.data) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("council message does not decode: {e}");
                shared.lock().expect("lock").malformed += 1;
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
            Err(r) => {
                tracing::warn!("refused an announcement: {r}");
                let mut s = shared.lock().expect("lock");
                s.refused += 1;
                s.last_refusal = Some(r.to_string());
            }
        }
    }
}
