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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use swoosh_core::cbor::{from_canonical, to_canonical, CanonicalError};
use swoosh_core::sig::SignerId;
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
    /// When the agent started (Unix seconds): `swoosh_start_time_seconds`,
    /// whose changes count restarts, as on the nodes.
    pub started_unix_s: u64,
}

pub struct AgentP2p {
    pub peer_id: libp2p::PeerId,
    pub shared: Arc<Mutex<AgentShared>>,
    inbox_drops: Arc<AtomicU64>,
    peers: Arc<AtomicUsize>,
    council_peers: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl AgentP2p {
    pub fn snapshot(&self) -> AgentShared {
        let mut s = self.shared.lock().expect("lock").clone();
        s.inbox_drops = self.inbox_drops.load(Ordering::Relaxed);
        s
    }

    /// What `swoosh agent --http` serves: the counters, the peers of this
    /// cluster connected now and who this agent is.
    pub fn status(&self, signer: &SignerId) -> AgentStatus {
        AgentStatus {
            signer: signer.to_string(),
            peer_id: self.peer_id.to_string(),
            peers: self.peers.load(Ordering::Relaxed),
            council_peers: self.council_peers.load(Ordering::Relaxed),
            running: self.is_running(),
            counters: self.snapshot(),
        }
    }

    /// Whether the task that reads announcements and votes still runs:
    /// it ends only when its peer's inbox closes (the swarm's task ended),
    /// and an agent without it votes on nothing.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

/// An agent's state for its `/health` and `/metrics`.
#[derive(Clone, Debug)]
pub struct AgentStatus {
    pub signer: String,
    pub peer_id: String,
    /// Peers connected now whose genesis handshake passed (a peer of
    /// another cluster or release is disconnected at the handshake, so it
    /// never counts).
    pub peers: usize,
    /// Of those, the ones subscribed to the council topic, which an
    /// announcement can come from (a follower passes the handshake but
    /// carries only the WAL topic).
    pub council_peers: usize,
    /// Whether the voting task runs ([`AgentP2p::is_running`]).
    pub running: bool,
    pub counters: AgentShared,
}

impl AgentStatus {
    /// `/health`: `200` with `status: "ok"` while the agent is connected
    /// to a peer of its cluster that carries the council topic; `503`
    /// otherwise, with `status`: `disconnected` (no peer of its cluster:
    /// it redials every `PEER_REDIAL_MS`), `no_council_peer` (connected
    /// only to peers without the council topic, such as a follower: point
    /// `--peer` at the leader or another agent) or `stopped` (its voting
    /// task ended; the process exits). Until then it hears no announcement,
    /// and its vote is missing from every election.
    pub fn health(&self) -> (u16, serde_json::Value) {
        let c = &self.counters;
        let status = if !self.running {
            "stopped"
        } else if self.peers == 0 {
            "disconnected"
        } else if self.council_peers == 0 {
            "no_council_peer"
        } else {
            "ok"
        };
        let ok = status == "ok";
        let body = serde_json::json!({
            "status": status,
            "role": "agent",
            "signer": self.signer,
            "peer_id": self.peer_id,
            "peers": self.peers,
            "council_peers": self.council_peers,
            "announcements": c.announcements,
            "votes_sent": c.votes_sent,
            "refused": c.refused,
            "malformed": c.malformed,
            "inbox_drops": c.inbox_drops,
            "last_refusal": c.last_refusal,
        });
        (if ok { 200 } else { 503 }, body)
    }

    /// `/metrics`: `swoosh_agent_*`, Prometheus text.
    pub fn metrics_text(&self) -> String {
        let c = &self.counters;
        format!(
            "# HELP swoosh_agent_peers Peers of this cluster connected now, handshake passed (0: the agent hears no announcement).\n\
             # TYPE swoosh_agent_peers gauge\nswoosh_agent_peers {}\n\
             # HELP swoosh_agent_council_peers Of those, peers subscribed to the council topic (0: no announcement can reach the agent).\n\
             # TYPE swoosh_agent_council_peers gauge\nswoosh_agent_council_peers {}\n\
             # HELP swoosh_agent_announcements_total Election announcements received.\n\
             # TYPE swoosh_agent_announcements_total counter\nswoosh_agent_announcements_total {}\n\
             # HELP swoosh_agent_votes_sent_total Signed votes published.\n\
             # TYPE swoosh_agent_votes_sent_total counter\nswoosh_agent_votes_sent_total {}\n\
             # HELP swoosh_agent_refused_total Announcements refused (another cluster or genesis, not signed by the genesis leader, bad signature, member set mismatch, already voted in that epoch, an epoch older than one voted in).\n\
             # TYPE swoosh_agent_refused_total counter\nswoosh_agent_refused_total {}\n\
             # HELP swoosh_agent_malformed_total Council messages that do not decode.\n\
             # TYPE swoosh_agent_malformed_total counter\nswoosh_agent_malformed_total {}\n\
             # HELP swoosh_agent_inbox_full_drops_total Messages dropped because the agent's inbox was full.\n\
             # TYPE swoosh_agent_inbox_full_drops_total counter\nswoosh_agent_inbox_full_drops_total {}\n\
             # HELP swoosh_start_time_seconds When the process started (Unix seconds); changes() over a window counts restarts.\n\
             # TYPE swoosh_start_time_seconds gauge\nswoosh_start_time_seconds {}\n",
            self.peers,
            self.council_peers,
            c.announcements,
            c.votes_sent,
            c.refused,
            c.malformed,
            c.inbox_drops,
            c.started_unix_s,
        )
    }
}

/// The routes `swoosh agent --http` serves, for the `404`'s message.
const AGENT_ROUTES: &str = "GET /health, GET /metrics";

/// The agent's read-only HTTP surface: `/health` and `/metrics` (see
/// [`AgentStatus`]); `status` is read at every request.
pub fn agent_router(status: Arc<dyn Fn() -> AgentStatus + Send + Sync>) -> axum::Router {
    use axum::http::{header, StatusCode, Uri};
    use axum::response::IntoResponse;
    let health = {
        let status = status.clone();
        move || {
            let status = status.clone();
            async move {
                let (code, body) = status().health();
                let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (code, axum::Json(body)).into_response()
            }
        }
    };
    let metrics = move || {
        let status = status.clone();
        async move {
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                status().metrics_text(),
            )
                .into_response()
        }
    };
    axum::Router::new()
        .route("/health", axum::routing::get(health))
        .route("/metrics", axum::routing::get(metrics))
        .fallback(|uri: Uri| async move {
            (
                StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({
                    "error": "not_found",
                    "message": format!(
                        "no such endpoint on a council agent: {}; it serves {AGENT_ROUTES}",
                        clip(uri.path())
                    ),
                })),
            )
                .into_response()
        })
}

/// Serve [`agent_router`] on `listener` with the node's accept loop and
/// limits (header read timeout, connection cap) until `shutdown`.
pub async fn serve_agent(
    listener: tokio::net::TcpListener,
    status: Arc<dyn Fn() -> AgentStatus + Send + Sync>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    crate::http::serve_router(
        listener,
        agent_router(status),
        shutdown,
        crate::http::ServeLimits::default(),
    )
    .await;
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
    let peers = peer.peers.clone();
    let council_peers = peer.topic_peers.clone();
    let shared = Arc::new(Mutex::new(AgentShared {
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ..AgentShared::default()
    }));
    let agent = CouncilAgent::new(key, genesis, policy);
    let s2 = shared.clone();
    let task = tokio::spawn(async move { run(peer, agent, topic, s2).await });
    Ok(AgentP2p {
        peer_id,
        shared,
        inbox_drops,
        peers,
        council_peers,
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
                    // Counted first: whoever sees the vote can see the count.
                    shared.lock().expect("lock").votes_sent += 1;
                    peer.publish(&topic, bytes);
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

    fn status(peers: usize) -> AgentStatus {
        AgentStatus {
            signer: "ed25519:ab".into(),
            peer_id: "12D3KooW".into(),
            peers,
            council_peers: peers,
            running: true,
            counters: AgentShared {
                announcements: 4,
                votes_sent: 3,
                refused: 1,
                malformed: 2,
                last_refusal: Some("wrong cluster".into()),
                inbox_drops: 5,
                started_unix_s: 1_800_000_000,
            },
        }
    }

    /// An agent without a connection hears no announcement: `/health`
    /// says so with a `503`, so a probe or a load balancer sees it.
    #[test]
    fn health_is_503_while_the_agent_has_no_peer() {
        let (code, body) = status(0).health();
        assert_eq!(code, 503);
        assert_eq!(body["status"], "disconnected");
        let (code, body) = status(2).health();
        assert_eq!(code, 200);
        assert_eq!(body["status"], "ok");
        assert_eq!(body["peers"], 2);
        assert_eq!(body["votes_sent"], 3);
        assert_eq!(body["last_refusal"], "wrong cluster");
        // Connected only to peers without the council topic (a follower):
        // it hears no announcement.
        let (code, body) = AgentStatus {
            council_peers: 0,
            ..status(2)
        }
        .health();
        assert_eq!((code, &body["status"]), (503, &"no_council_peer".into()));
        // Its voting task ended.
        let (code, body) = AgentStatus {
            running: false,
            ..status(2)
        }
        .health();
        assert_eq!((code, &body["status"]), (503, &"stopped".into()));
    }

    #[test]
    fn metrics_name_every_counter_once() {
        let text = status(2).metrics_text();
        for (name, value) in [
            ("swoosh_agent_peers", 2),
            ("swoosh_agent_council_peers", 2),
            ("swoosh_agent_announcements_total", 4),
            ("swoosh_agent_votes_sent_total", 3),
            ("swoosh_agent_refused_total", 1),
            ("swoosh_agent_malformed_total", 2),
            ("swoosh_agent_inbox_full_drops_total", 5),
            ("swoosh_start_time_seconds", 1_800_000_000),
        ] {
            let line = format!("\n{name} {value}\n");
            assert_eq!(text.matches(&line).count(), 1, "{name}: {text}");
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{text}"
            );
        }
    }

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
