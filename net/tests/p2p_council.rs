//! Council agents as libp2p peers on 127.0.0.1: the leader announces a
//! candidate member set, agents answer with signed votes over the mesh, the
//! collector certifies, and the reducer accepts the certificate proposal.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use swoosh_core::guards::Verify;
use swoosh_core::proposal::Proposal;
use swoosh_core::reducer::{step, Ctx, Outcome};
use swoosh_core::scenario::{genesis, Driver, Keys, Next};
use swoosh_core::state::NodeState;
use swoosh_core::state::ProjectState;
use swoosh_net::p2p::agent::{decode_council, encode_council, spawn_agent, AgentP2p};
use swoosh_net::p2p::leader::LeaderP2p;
use swoosh_net::p2p::peer::spawn_peer;
use swoosh_net::p2p::{agent_version, council_topic};
use swoosh_net::proto::council::{
    certificate_proposal, CouncilCollector, CouncilMsg, VoteOutcome, VotePolicy, VoteRejection,
};

const ORIGIN_MS: u64 = 1_767_225_600_000;

fn at_elect(keys: &Keys, project: &str) -> NodeState {
    let g = genesis(keys, "p2p-council", ORIGIN_MS);
    let mut node = NodeState::new(g).unwrap();
    let d = Driver::new(keys, 1);
    for now in ORIGIN_MS + 1..ORIGIN_MS + 101 {
        if node.project(project).council.phase == "ELECT" {
            return node;
        }
        let Next::Propose(p) = d.next(&node, project, now) else {
            panic!("driver stalled")
        };
        let ctx = Ctx {
            now_ms: now,
            verify: Verify::Full,
            snapshot_every: 0,
        };
        assert!(matches!(
            step(&mut node, &p, &ctx).outcome,
            Outcome::Accepted(_)
        ));
    }
    panic!("never reached ELECT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_agents_vote_over_the_mesh_and_the_certificate_is_accepted() {
    let keys = Keys::from_labels("p2p-council", 3);
    let mut node = at_elect(&keys, "default");
    let g = node.genesis.clone();
    let topic = council_topic(&g.cluster_id);
    let mut leader = spawn_peer(
        &keys.leader,
        agent_version(&g),
        std::slice::from_ref(&topic),
        Some("/ip4/127.0.0.1/tcp/0".parse().unwrap()),
        &[],
    )
    .await
    .unwrap();
    let mut agents = vec![];
    for k in &keys.council {
        agents.push(
            spawn_agent(
                k.clone(),
                &g,
                VotePolicy::ApproveAll,
                &leader.listen_addrs,
                None,
            )
            .await
            .unwrap(),
        );
    }
    // An outsider's vote (not in the roster) arrives too and is rejected.
    let outsider = keys.outsider.clone();
    let mut col = CouncilCollector::new(keys.leader.clone(), &g);
    let members = Driver::new(&keys, 1).members();
    let ann = col.open(&node.project("default"), &members).unwrap();
    let mut forged = keys.council.len();
    let bytes = encode_council(&CouncilMsg::Announce(ann.clone())).unwrap();
    let t0 = Instant::now();
    let mut cert = None;
    let mut announced = false;
    while cert.is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no certificate: counted {}",
            col.counted()
        );
        // Announce once every agent's subscription reached the leader
        // (gossipsub drops a publish with no subscribed peer, and the
        // content-hash message id makes a second identical publish a duplicate).
        if !announced && leader.subscriptions.load(Ordering::Relaxed) >= keys.council.len() {
            leader.publish(&topic, bytes.clone());
            announced = true;
        }
        let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(100), leader.inbox.recv()).await
        else {
            continue;
        };
        let Ok(CouncilMsg::Vote(v)) = decode_council(&m.data) else {
            continue;
        };
        if forged > 0 {
            forged = 0;
            // A vote from outside the roster, and a member's vote re-signed
            // by someone else: both rejected and counted.
            let mut body = v.body.clone();
            body.voter = swoosh_core::SignerId::from_signing_key(&outsider);
            let out = swoosh_core::facts::Vote::cast(body, &outsider);
            assert_eq!(
                col.on_vote(&out),
                VoteOutcome::Rejected(VoteRejection::Outsider)
            );
            let resigned = swoosh_core::facts::Vote::cast(v.body.clone(), &outsider);
            assert_eq!(
                col.on_vote(&resigned),
                VoteOutcome::Rejected(VoteRejection::BadSignature)
            );
        }
        if let VoteOutcome::Certificate(c) = col.on_vote(&v) {
            cert = Some(c);
        }
    }
    let cert = cert.unwrap();
    assert!(cert.votes.len() >= g.quorum_threshold as usize);
    assert!(agents.iter().all(|a| a.snapshot().refused == 0));
    agent_http_reports(agents.remove(0), &keys.council[0]).await;
    let p = certificate_proposal(&cert, &node, &keys.leader, ORIGIN_MS + 1_000).unwrap();
    let ctx = Ctx {
        now_ms: ORIGIN_MS + 1_000,
        verify: Verify::Full,
        snapshot_every: 0,
    };
    let s = step(&mut node, &p, &ctx);
    assert!(matches!(s.outcome, Outcome::Accepted(_)), "{:?}", s.outcome);
    assert_eq!(node.project("default").council.phase, "TOOLING_SYNC");
}

/// `swoosh agent --http`: an agent that voted says so on `/health` and
/// `/metrics`, and an unknown path is a `404` naming the routes.
async fn agent_http_reports(agent: AgentP2p, key: &ed25519_dalek::SigningKey) {
    let me = swoosh_core::SignerId::from_signing_key(key);
    let agent = std::sync::Arc::new(agent);
    let status = {
        let (agent, me) = (agent.clone(), me.clone());
        std::sync::Arc::new(move || agent.status(&me))
            as std::sync::Arc<dyn Fn() -> swoosh_net::p2p::agent::AgentStatus + Send + Sync>
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(swoosh_net::p2p::agent::serve_agent(
        listener,
        status,
        async move {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();
    // The certificate needs only a threshold of votes: this agent's may
    // still be on its way; it votes once it hears the announcement.
    let t0 = Instant::now();
    let h = loop {
        let r = http.get(format!("{url}/health")).send().await.unwrap();
        let code = r.status().as_u16();
        let h: serde_json::Value = r.json().await.unwrap();
        if code == 200 && h["votes_sent"].as_u64().unwrap_or(0) >= 1 {
            break h;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{code}: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["signer"], me.to_string());
    assert!(h["peers"].as_u64().unwrap() >= 1, "{h}");
    let m = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let votes = m
        .lines()
        .find_map(|l| l.strip_prefix("swoosh_agent_votes_sent_total "))
        .unwrap_or_else(|| panic!("{m}"));
    assert!(votes.parse::<u64>().unwrap() >= 1, "{m}");
    let r = http.get(format!("{url}/nope")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("GET /health, GET /metrics"));
    let _ = stop.send(());
    served.await.unwrap();
}

/// A leader store whose log a test stream drove (project `p0`) until
/// `done`, with the stream itself.
struct DrivenLog {
    stream: swoosh_storage::testkit::Stream,
    writer: swoosh_storage::WalWriter<swoosh_storage::LmdbStore>,
    _dir: tempfile::TempDir,
}

fn drive_log(label: &str, what: &str, done: impl Fn(&ProjectState) -> bool) -> DrivenLog {
    use swoosh_storage::testkit::Stream;
    use swoosh_storage::{BatchLimits, Durability, Entry, LmdbOptions, LmdbStore, WalWriter};
    // The leader signs its certificate at the real clock, and the stream's
    // license runs a year from the stream's origin: a fixed origin would
    // expire these tests. An hour back leaves room for the stream's clock,
    // which jumps ahead to BACKBEAT windows, to stay behind the real one.
    let origin = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        / 1000
        * 1000
        - 3_600_000;
    let mut stream = Stream::with_origin(label, 1, Verify::Trusted, origin);
    let g = stream.genesis().clone();
    let dir = tempfile::tempdir().unwrap();
    let store = LmdbStore::open(
        dir.path(),
        &LmdbOptions {
            durability: Durability::NoSync,
            ..Default::default()
        },
    )
    .unwrap();
    let mut writer = WalWriter::open(store, g.hash().unwrap(), BatchLimits::default()).unwrap();
    let mut guard = 0;
    while !done(&stream.node().project("p0")) {
        let acc = stream.next_accepted();
        writer.append_batch(&[Entry::from_accepted(acc)]).unwrap();
        guard += 1;
        assert!(guard < 500, "the stream never {what}");
    }
    DrivenLog {
        stream,
        writer,
        _dir: dir,
    }
}

/// Start the leader on `log` with elections on, and one agent per council
/// key (agent `i` votes with `policy(i)`); return the first certificate
/// proposal the leader sends, with the leader and agents still running.
async fn certificate_over_the_mesh(
    log: &DrivenLog,
    keys: &Keys,
    policy: impl Fn(usize) -> VotePolicy,
) -> (Proposal, LeaderP2p, Vec<AgentP2p>) {
    let g = log.stream.genesis().clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let leader = swoosh_net::p2p::leader::spawn_leader_with(
        log.writer.store().clone(),
        keys.leader.clone(),
        g.clone(),
        "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        Some(tx),
    )
    .await
    .unwrap();
    let mut agents = vec![];
    for (i, k) in keys.council.iter().enumerate() {
        agents.push(
            spawn_agent(k.clone(), &g, policy(i), &leader.listen_addrs, None)
                .await
                .unwrap(),
        );
    }
    let p = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("no certificate proposal within 60 s")
        .unwrap();
    (p, leader, agents)
}

/// Run the leader's proposal through the reducer at the wall clock it was
/// signed with; it must be accepted. (Not at the real clock: a test thread
/// stalled past the HLC offset would see it refused as lagging.)
fn accept_now(node: &mut NodeState, p: &Proposal) {
    let out = step(
        node,
        p,
        &Ctx {
            now_ms: p.hlc.wall_ms,
            verify: Verify::Full,
            snapshot_every: 0,
        },
    );
    assert!(
        matches!(out.outcome, Outcome::Accepted(_)),
        "{:?}",
        out.outcome
    );
}

/// The leader task itself runs the election: a store whose log has driven a
/// project into Council ELECT, three agents on the mesh (one voting no), and
/// the certificate proposal that comes out is accepted by the reducer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_leader_runs_the_election_from_its_log() {
    let label = "p2p-elect";
    let log = drive_log(label, "reached ELECT", |st| st.council.phase == "ELECT");
    let keys = Keys::from_labels(label, 3);
    let (p, leader, _agents) = certificate_over_the_mesh(&log, &keys, |i| {
        if i == 0 {
            VotePolicy::VoteNo
        } else {
            VotePolicy::ApproveAll
        }
    })
    .await;
    assert_eq!(p.transition, "Council_QuorumCert");
    let s = leader.snapshot();
    assert!(s.announcements >= 1);
    assert!(s.council_votes >= 2, "{s:?}");
    let mut node = log.stream.node().clone();
    accept_now(&mut node, &p);
    assert_eq!(node.project("p0").council.phase, "TOOLING_SYNC");
}

/// After `Council_Eject` the leader re-elects without the ejected member:
/// its announcement leaves it out, the agents vote over the mesh, and the
/// reducer accepts the `Council_ReElect` certificate (a set still holding
/// the ejected member is refused by the quorum guard, so the election could
/// never finish).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_leader_re_elects_without_the_ejected_member() {
    use swoosh_core::scenario::Fault;
    use swoosh_storage::Entry;
    let label = "p2p-reelect";
    // Past the first election, with every member still elected.
    let mut log = drive_log(label, "passed its first election", |st| {
        st.council.elections > 0 && st.council.phase != "ELECT"
    });
    let keys = Keys::from_labels(label, 3);
    let mut node = log.stream.node().clone();
    let now = node.project("p0").hlc_last.map_or(0, |h| h.wall_ms) + 1;
    let eject = Driver::new(&keys, 1)
        .fault(&node, "p0", now, Fault::Eject, &[], 0)
        .expect("an elected member can be ejected");
    let ctx = Ctx {
        now_ms: now,
        verify: Verify::Full,
        snapshot_every: 0,
    };
    let Outcome::Accepted(acc) = step(&mut node, &eject, &ctx).outcome else {
        panic!("the eject was refused")
    };
    log.writer
        .append_batch(&[Entry::from_accepted(*acc)])
        .unwrap();
    let st = node.project("p0");
    assert_eq!(st.council.phase, "ELECT");
    let ejected = st.council.ejected[0].clone();
    assert!(st.council.candidates.contains(&ejected));

    let (p, _leader, _agents) =
        certificate_over_the_mesh(&log, &keys, |_| VotePolicy::ApproveAll).await;
    assert_eq!(p.transition, "Council_ReElect");
    let members: Vec<String> = p
        .inputs
        .as_map()
        .expect("inputs are a map")
        .iter()
        .find(|(k, _)| k.as_text() == Some("members"))
        .expect("a members input")
        .1
        .as_array()
        .expect("members are a list")
        .iter()
        .map(|m| m.as_text().expect("a signer id").to_string())
        .collect();
    assert!(!members.contains(&ejected.to_string()), "{members:?}");
    accept_now(&mut node, &p);
    assert_eq!(node.project("p0").council.phase, "TOOLING_SYNC");
}

/// A council agent keeps dialling the address it joined through: one
/// started before the leader joins when the leader comes up, and one whose
/// leader restarts joins the new one (before, both stayed cut off for good
/// and every election stalled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2p_agents_find_the_leader_again_after_it_restarts() {
    let keys = Keys::from_labels("p2p-redial", 3);
    let g = genesis(&keys, "p2p-redial", ORIGIN_MS);
    let topic = council_topic(&g.cluster_id);
    // A free port nobody listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    let leader = || async {
        // The dropped leader's listener closes a moment after the drop.
        let t0 = Instant::now();
        loop {
            match spawn_peer(
                &keys.leader,
                agent_version(&g),
                std::slice::from_ref(&topic),
                Some(addr.clone()),
                &[],
            )
            .await
            {
                Ok(p) => return p,
                Err(e) => {
                    assert!(t0.elapsed() < Duration::from_secs(60), "{e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    let agent = spawn_agent(
        keys.council[0].clone(),
        &g,
        VotePolicy::ApproveAll,
        std::slice::from_ref(&addr),
        None,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = leader().await;
    joined("the agent started first joins the leader", &first).await;
    drop(first);
    let second = leader().await;
    joined("the agent joins the restarted leader", &second).await;
    drop(agent);
}

/// Wait until `leader` saw a subscription (an agent joined its mesh).
async fn joined(what: &str, leader: &swoosh_net::p2p::peer::PeerHandle) {
    let t0 = Instant::now();
    while leader.subscriptions.load(Ordering::Relaxed) < 1 {
        assert!(t0.elapsed() < Duration::from_secs(60), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
