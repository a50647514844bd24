//! The libp2p transport: it carries the sans-I/O protocols of [`crate::proto`]
//! over tcp + noise + yamux, with gossipsub (anonymous envelopes: every
//! payload carries its own signature by a genesis key; content-hash message
//! ids), request-response (CBOR byte strings holding the
//! canonical encodings of [`crate::proto::wire::Request`] / `Response`) and
//! identify (which carries the genesis handshake).
//!
//! - A node's libp2p identity is its ed25519 signing key.
//! - Topics: `swoosh/<cluster>/wal/v1` and `swoosh/<cluster>/council/v1`.
//! - Handshake: every peer advertises `swoosh/<cluster>/<genesis hash hex>`
//!   as its identify agent version; a peer advertising anything else is
//!   disconnected with a log line naming both genesis hashes.
//! - WAL gossip is age-encrypted to the followers of genesis and chunked
//!   under the gossip size limit ([`envelope`]).

pub mod agent;
pub mod bounds;
pub mod envelope;
pub mod follower;
pub mod hist;
pub mod http;
pub mod leader;
pub mod peer;

pub use libp2p::Multiaddr;

/// Bind the TCP port `addr` names with a plain socket and hold it, so a
/// node can refuse a port in use before a long recovery rather than after
/// it, and keep another process from taking the port meanwhile. Drop it
/// just before the swarm listens there ([`listen_exclusive`] checks again).
/// `None` when there is nothing to hold: port 0, or an address that is not
/// `/ip4|ip6/…/tcp/PORT`.
pub fn reserve_listen_port(addr: &Multiaddr) -> Result<Option<std::net::TcpListener>, P2pError> {
    match tcp_listen_socket(addr) {
        Some(sock) if sock.port() != 0 => bind_only(sock).map(Some).map_err(|e| {
            let port = sock.port();
            let hint = match e.kind() {
                std::io::ErrorKind::AddrNotAvailable => {
                    "this host has no such address: pick one of its addresses, or 0.0.0.0 (/ip6/:: for IPv6)".to_string()
                }
                std::io::ErrorKind::PermissionDenied => {
                    "ports below 1024 need privileges: pick a higher port".to_string()
                }
                _ => format!("is another process (another swoosh node?) using port {port}?"),
            };
            P2pError::Libp2p(format!("cannot listen on {addr}: {e}; {hint}"))
        }),
        _ => Ok(None),
    }
}

/// A listening socket on exactly `sock`: an IPv6 one does not also take
/// the IPv4 port (libp2p's TCP transport binds IPv6 only too), so a process
/// on `0.0.0.0:P` does not make `/ip6/::/tcp/P` look taken.
fn bind_only(sock: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(sock), Type::STREAM, None)?;
    // As std's listeners do: a restarted node's port may still hold its
    // predecessor's connections in TIME_WAIT, which is not "in use".
    s.set_reuse_address(true)?;
    if sock.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&sock.into())?;
    s.listen(16)?;
    Ok(s.into())
}

/// The TCP socket address a listen multiaddr names (`/ip4|ip6/…/tcp/PORT`,
/// nothing after it), or `None` for any other form (DNS names, other
/// transports), which a caller cannot bind itself.
pub fn tcp_listen_socket(addr: &Multiaddr) -> Option<std::net::SocketAddr> {
    use libp2p::multiaddr::Protocol;
    let mut parts = addr.iter();
    let ip: std::net::IpAddr = match parts.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    let Protocol::Tcp(port) = parts.next()? else {
        return None;
    };
    // libp2p's TCP transport listens on `…/tcp/PORT/p2p/<own id>` too.
    parts
        .all(|p| matches!(p, Protocol::P2p(_)))
        .then_some(std::net::SocketAddr::new(ip, port))
}

use ed25519_dalek::SigningKey;
use libp2p::gossipsub::{self, MessageAuthenticity, ValidationMode};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, noise, tcp, yamux, PeerId, StreamProtocol, Swarm};
use std::time::Duration;
use swoosh_core::hash::Hash;
use swoosh_core::sig::SignerId;
use swoosh_core::state::Genesis;

use crate::proto::wire::Bytes;

/// The request-response protocol name of replication catch-up.
pub const REPL_PROTOCOL: &str = "/swoosh/repl/1";
/// The identify protocol version every SWOOSH peer announces. Version 2:
/// gossipsub envelopes are anonymous (a version-1 peer signs them and would
/// drop ours, so the two refuse each other at the handshake instead).
pub const IDENTIFY_PROTOCOL: &str = "/swoosh/id/2";
/// gossipsub heartbeat: short, so a small loopback mesh forms quickly.
pub const HEARTBEAT_MS: u64 = 250;
/// How long a message id is remembered as seen.
pub const DUPLICATE_CACHE_MS: u64 = 2_500;
/// A request without a response after this long fails (the follower's own
/// timeout asks again).
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Connections with no traffic stay open this long.
pub const IDLE_CONNECTION_SECS: u64 = 3_600;
/// gossipsub messages queued toward one peer, at most (libp2p's default is
/// 5,000). Any peer that passes the handshake may subscribe to the WAL
/// topic and stop reading: each queued message is a copy of up to
/// `GOSSIP_PAYLOAD_BYTES_MAX` (64 KiB), so the default let one such peer
/// hold ~320 MiB of the leader's memory; this holds it to 16 MiB. A
/// follower that falls this far behind loses gossip and fetches it by range.
pub const GOSSIP_PEER_QUEUE_MAX: usize = 256;
/// Established incoming connections a peer accepts in all, and from one
/// peer id: a cluster has at most 16 followers and 32 agents, and every
/// connection holds queues and buffers.
pub const CONNECTIONS_INCOMING_MAX: u32 = 256;
pub const CONNECTIONS_PER_PEER_MAX: u32 = 4;
/// Incoming connections still in their handshake, at most.
pub const CONNECTIONS_PENDING_MAX: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    #[error("libp2p: {0}")]
    Libp2p(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("{0}")]
    Config(String),
}

fn lp<E: std::fmt::Display>(e: E) -> P2pError {
    P2pError::Libp2p(e.to_string())
}

/// `e` and every error below it, joined: libp2p's transport errors often
/// print nothing themselves and keep the reason (an OS error) in a source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(s) = next {
        parts.push(s.to_string());
        next = s.source();
    }
    let parts: Vec<String> = parts.into_iter().filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        "no reason given".into()
    } else {
        parts.join(": ")
    }
}

/// Listen on `addr`, first making sure no other process listens there: the
/// TCP transport sets `SO_REUSEPORT`, so a second leader on the same port
/// would start too and the kernel would split followers and agents between
/// the two. A plain bind fails while any socket holds the port.
pub fn listen_exclusive(swarm: &mut Swarm<Behaviour>, addr: &Multiaddr) -> Result<(), P2pError> {
    drop(reserve_listen_port(addr)?);
    swarm
        .listen_on(addr.clone())
        .map(|_| ())
        .map_err(|e| P2pError::Libp2p(format!("cannot listen on {addr}: {}", error_chain(&e))))
}

pub fn wal_topic(cluster_id: &str) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("swoosh/{cluster_id}/wal/v1"))
}

pub fn council_topic(cluster_id: &str) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("swoosh/{cluster_id}/council/v1"))
}

/// What a peer of this cluster advertises as its identify agent version.
pub fn agent_version(genesis: &Genesis) -> String {
    let gh = genesis.hash().expect("a validated genesis encodes");
    agent_version_of(&genesis.cluster_id, &gh)
}

pub fn agent_version_of(cluster_id: &str, genesis_hash: &Hash) -> String {
    format!("swoosh/{cluster_id}/{}", genesis_hash.to_hex())
}

/// The libp2p keypair of a SWOOSH ed25519 key (the same key signs batches,
/// proposals and votes).
pub fn keypair(key: &SigningKey) -> Keypair {
    Keypair::ed25519_from_bytes(key.to_bytes()).expect("an ed25519 secret key is 32 bytes")
}

/// The libp2p peer id of a signer.
pub fn peer_id_of(id: &SignerId) -> Option<PeerId> {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(&id.0).ok()?;
    Some(libp2p::identity::PublicKey::from(pk).to_peer_id())
}

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub limits: libp2p::connection_limits::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub rr: request_response::cbor::Behaviour<Bytes, Bytes>,
    pub identify: identify::Behaviour,
}

/// Build a swarm whose identity is `key`, advertising `agent`.
pub fn build_swarm(key: &SigningKey, agent: String) -> Result<Swarm<Behaviour>, P2pError> {
    build_swarm_speaking(key, agent, IDENTIFY_PROTOCOL)
}

/// [`build_swarm`] announcing another identify protocol version: what an
/// incompatible SWOOSH release would look like to this one (handshake tests).
pub fn build_swarm_speaking(
    key: &SigningKey,
    agent: String,
    identify_protocol: &str,
) -> Result<Swarm<Behaviour>, P2pError> {
    build_swarm_limited(key, agent, identify_protocol, connection_limits())
}

/// The connection limits every SWOOSH node applies.
pub fn connection_limits() -> libp2p::connection_limits::ConnectionLimits {
    libp2p::connection_limits::ConnectionLimits::default()
        .with_max_established_incoming(Some(CONNECTIONS_INCOMING_MAX))
        .with_max_established_per_peer(Some(CONNECTIONS_PER_PEER_MAX))
        .with_max_pending_incoming(Some(CONNECTIONS_PENDING_MAX))
}

/// [`build_swarm_speaking`] with other connection limits (tests: a peer
/// that does not limit its own dials, to see the other side's limits act).
pub fn build_swarm_limited(
    key: &SigningKey,
    agent: String,
    identify_protocol: &str,
    limits: libp2p::connection_limits::ConnectionLimits,
) -> Result<Swarm<Behaviour>, P2pError> {
    let kp = keypair(key);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(kp)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(lp)?
        .with_behaviour(|key| {
            let cfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_millis(HEARTBEAT_MS))
                // Anonymous: no `from`, `seqno` or envelope signature. Every
                // SWOOSH payload is already signed by a genesis key and
                // checked by the protocol (batches, heads, manifests,
                // announcements, votes), and the envelope signature only
                // named the relaying peer: it was a second ed25519 signature
                // and SHA-512 pass over every message, ~6 % of the
                // replication benchmark's CPU (docs/performance.md).
                .validation_mode(ValidationMode::Anonymous)
                .max_transmit_size(crate::proto::wire::GOSSIP_PAYLOAD_BYTES_MAX)
                .connection_handler_queue_len(GOSSIP_PEER_QUEUE_MAX)
                // Short, so a deterministic message (an announcement, a vote)
                // can be published again after a timeout; longer than the
                // gossip window (history_length x heartbeat).
                .duplicate_cache_time(Duration::from_millis(DUPLICATE_CACHE_MS))
                .message_id_fn(|m: &gossipsub::Message| {
                    gossipsub::MessageId::from(Hash::of_bytes(&m.data).0.to_vec())
                })
                .build()
                .map_err(|e| e.to_string())?;
            let gossipsub = gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, cfg)?;
            let rr = request_response::cbor::Behaviour::new(
                [(StreamProtocol::new(REPL_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_millis(REQUEST_TIMEOUT_MS)),
            );
            let identify = identify::Behaviour::new(
                identify::Config::new(identify_protocol.into(), key.public())
                    .with_agent_version(agent.clone()),
            );
            let limits = libp2p::connection_limits::Behaviour::new(limits);
            Ok(Behaviour {
                limits,
                gossipsub,
                rr,
                identify,
            })
        })
        .map_err(lp)?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(Duration::from_secs(IDLE_CONNECTION_SECS))
        })
        .build();
    Ok(swarm)
}

/// Handshake refusals logged, process-wide: a peer that reconnects in a
/// loop would otherwise write a line per attempt.
static HANDSHAKE_WARN: std::sync::LazyLock<
    std::sync::Mutex<(std::time::Instant, bounds::WarnLimiter)>,
> = std::sync::LazyLock::new(|| {
    std::sync::Mutex::new((std::time::Instant::now(), bounds::WarnLimiter::default()))
});

/// `Some(suppressed)` when a handshake refusal of `kind` may be logged now.
fn handshake_warn(kind: &'static str) -> Option<u64> {
    let mut w = HANDSHAKE_WARN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = ms_since(w.0);
    w.1.check(kind, now)
}

/// The genesis handshake: `true` when the peer runs our genesis. A peer that
/// does not is disconnected, with a log line naming both (at most one a
/// second of each kind, saying how many were suppressed).
pub fn check_handshake(
    swarm: &mut Swarm<Behaviour>,
    ours: &str,
    peer: PeerId,
    info: &identify::Info,
) -> bool {
    // What a peer announces is its own text (up to identify's 4 KiB):
    // clipped, and logged with `?` so it cannot forge a line.
    if info.protocol_version != IDENTIFY_PROTOCOL {
        if let Some(suppressed) = handshake_warn("protocol") {
            tracing::warn!(
                %peer,
                theirs = ?bounds::clip(&info.protocol_version),
                ours = IDENTIFY_PROTOCOL,
                suppressed,
                "refusing peer {peer}: it speaks protocol {:?}, this node {:?} (an incompatible SWOOSH release); disconnecting",
                bounds::clip(&info.protocol_version),
                IDENTIFY_PROTOCOL
            );
        }
        let _ = swarm.disconnect_peer_id(peer);
        return false;
    }
    if info.agent_version == ours {
        return true;
    }
    if let Some(suppressed) = handshake_warn("genesis") {
        tracing::warn!(
            %peer,
            theirs = ?bounds::clip(&info.agent_version),
            ours = %ours,
            suppressed,
            "refusing peer {peer}: it runs genesis {:?}, this node runs {:?} (a different cluster or genesis); disconnecting",
            bounds::clip(&info.agent_version),
            ours
        );
    }
    let _ = swarm.disconnect_peer_id(peer);
    false
}

/// Milliseconds since `t0` (the protocols' `now_ms`).
pub(crate) fn ms_since(t0: std::time::Instant) -> u64 {
    t0.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer reconnecting in a loop gets one refusal line a second.
    #[test]
    fn handshake_refusals_are_logged_once_a_second() {
        assert_eq!(handshake_warn("test-kind"), Some(0));
        for _ in 0..100 {
            assert_eq!(handshake_warn("test-kind"), None);
        }
    }

    /// Listen addresses name the socket a node holds through its recovery
    /// (with libp2p's own `/p2p/<id>` suffix too); the hold refuses a port
    /// in use with a reason and keeps others off it until dropped.
    #[test]
    fn listen_addresses_name_their_tcp_socket_and_reservations_hold_it() {
        let sock = |a: &str| tcp_listen_socket(&a.parse().unwrap());
        assert_eq!(
            sock("/ip4/127.0.0.1/tcp/7800"),
            Some("127.0.0.1:7800".parse().unwrap())
        );
        assert_eq!(sock("/ip6/::1/tcp/9"), Some("[::1]:9".parse().unwrap()));
        assert_eq!(sock("/dns4/example.com/tcp/7800"), None);
        assert_eq!(sock("/ip4/127.0.0.1/udp/7800/quic-v1"), None);
        assert_eq!(sock("/ip4/127.0.0.1/tcp/7800/ws"), None);
        let id = libp2p::PeerId::random();
        assert_eq!(
            sock(&format!("/ip4/127.0.0.1/tcp/7800/p2p/{id}")),
            Some("127.0.0.1:7800".parse().unwrap())
        );
        assert!(
            reserve_listen_port(&"/ip4/127.0.0.1/tcp/0".parse().unwrap())
                .unwrap()
                .is_none()
        );
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let err = reserve_listen_port(&addr).unwrap_err().to_string();
        assert!(
            err.contains("another process") && err.contains(&port.to_string()),
            "{err}"
        );
        drop(held);
        let reserved = reserve_listen_port(&addr).unwrap().expect("a port to hold");
        assert!(reserve_listen_port(&addr).is_err(), "held while reserved");
        drop(reserved);
        reserve_listen_port(&addr).unwrap();
        // An address the host does not have is named as that, not as a
        // port another process uses.
        let err = reserve_listen_port(&"/ip4/192.0.2.1/tcp/7800".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("this host has no such address"), "{err}");
        // An IPv6 hold is IPv6 only, as libp2p's listener is: a process on
        // the IPv4 wildcard of that port does not make it look taken.
        if let Ok(v4) = std::net::TcpListener::bind("0.0.0.0:0") {
            let port = v4.local_addr().unwrap().port();
            let v6: Multiaddr = format!("/ip6/::/tcp/{port}").parse().unwrap();
            if std::net::TcpListener::bind("[::1]:0").is_ok() {
                reserve_listen_port(&v6).unwrap().expect("a port to hold");
            }
        }
    }

    /// A port another process (or another swarm, which shares ports through
    /// `SO_REUSEPORT`) listens on is refused with a reason, not shared.
    #[tokio::test]
    async fn a_port_already_listened_on_is_refused_with_a_reason() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut first = build_swarm(&key, "t".into()).unwrap();
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let err = listen_exclusive(&mut first, &addr).unwrap_err().to_string();
        assert!(err.contains("another process"), "{err}");
        drop(held);
        listen_exclusive(&mut first, &addr).unwrap();
        // Wait until the swarm's listener is bound.
        loop {
            if let libp2p::swarm::SwarmEvent::NewListenAddr { .. } =
                futures::StreamExt::select_next_some(&mut first).await
            {
                break;
            }
        }
        let mut second = build_swarm(&key, "t".into()).unwrap();
        let err = listen_exclusive(&mut second, &addr)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("port {port}")), "{err}");
    }

    #[test]
    fn an_error_chain_keeps_the_reason_an_empty_top_hides() {
        #[derive(Debug)]
        struct Empty(std::io::Error);
        impl std::fmt::Display for Empty {
            fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                Ok(())
            }
        }
        impl std::error::Error for Empty {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Empty(std::io::Error::other("Cannot assign requested address"));
        assert_eq!(error_chain(&e), "Cannot assign requested address");
    }
}
