//! A follower's HTTP surface (SPEC §6) over real loopback HTTP, against a
//! leader node replicating to it over libp2p: `GET /state` answers as the
//! leader's does (same shape, same hashes and sections, same 400 bodies),
//! `GET /health` carries the leader's fields plus the lag, a proposal gets
//! `503 not_leader` naming the leader's HTTP URL, and `/openapi.json`
//! documents exactly what a follower serves.

use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swoosh_actors::{NodeConfig, NodeHandle, SystemClock};
use swoosh_core::guards::Verify;
use swoosh_core::reducer::{step, Ctx, Outcome};
use swoosh_core::scenario::{genesis, Driver, Keys, Next};
use swoosh_core::sig::{key_from_label, SignerId};
use swoosh_core::state::{FollowerEntry, Genesis, NodeState};
use swoosh_net::api::{ErrorBody, HealthReply, StateReply};
use swoosh_net::client::{Client, ClientError};
use swoosh_net::http::{serve_with, ServeLimits};
use swoosh_net::p2p::follower::{lock_shared, spawn_follower, FollowerOptions, FollowerP2p};
use swoosh_net::p2p::http::{
    serve_follower, serve_follower_with, FollowerHealthReply, FollowerHttp,
};
use swoosh_net::p2p::leader::{spawn_leader, LeaderP2p};
use swoosh_storage::{Durability, LmdbOptions, LmdbStore};

/// Only turns a hang into a failure.
const WAIT: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn store(dir: &tempfile::TempDir) -> LmdbStore {
    LmdbStore::open(
        dir.path(),
        &LmdbOptions {
            durability: Durability::NoSync,
            ..Default::default()
        },
    )
    .expect("open store")
}

/// A leader node serving HTTP and replicating to one follower, which
/// serves its own HTTP with `--leader-http` set to the leader's URL.
struct Cluster {
    keys: Keys,
    genesis: Genesis,
    node: NodeHandle<LmdbStore>,
    leader: Client,
    leader_url: String,
    _p2p: LeaderP2p,
    follower: FollowerP2p,
    follower_url: String,
    _dirs: Vec<tempfile::TempDir>,
}

async fn bind() -> (tokio::net::TcpListener, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    (l, url)
}

async fn cluster(label: &str) -> Cluster {
    let keys = Keys::from_labels(label, 3);
    let mut g = genesis(&keys, label, now_ms() / 1000 * 1000);
    let fkey = key_from_label(&format!("{label}/follower-1"));
    let fage = age::x25519::Identity::generate();
    g.followers = vec![FollowerEntry {
        name: "follower-1".into(),
        key: SignerId::from_signing_key(&fkey),
        age_recipient: fage.to_public().to_string(),
    }];
    g.validate().expect("genesis");
    let dirs = vec![tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let node = NodeHandle::start(
        store(&dirs[0]),
        NodeConfig {
            genesis: g.clone(),
            leader_key: keys.leader.clone(),
            snapshot_every: 10_000,
            snapshot_keep: 3,
            wal_limits: Default::default(),
            clock: Arc::new(SystemClock),
            advertise: String::new(),
            attention_file: None,
            compaction: None,
        },
    )
    .await
    .expect("node starts");
    let (l, leader_url) = bind().await;
    tokio::spawn(serve_with(
        l,
        node.clone(),
        std::future::pending(),
        ServeLimits::default(),
    ));
    let p2p = spawn_leader(
        node.store().clone(),
        keys.leader.clone(),
        g.clone(),
        "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
    )
    .await
    .expect("leader swarm");
    let follower = spawn_follower(
        store(&dirs[1]),
        FollowerOptions {
            key: fkey,
            genesis: g.clone(),
            age_identity: fage,
            leader: p2p.listen_addrs[0].clone(),
            listen: None,
            snapshot_every: swoosh_net::p2p::follower::FOLLOWER_SNAPSHOT_EVERY_DEFAULT,
            compaction: None,
        },
    )
    .await
    .expect("follower");
    let (l, follower_url) = bind().await;
    let leader_http = swoosh_net::p2p::http::parse_leader_http(&format!("{leader_url}/"))
        .expect("a loopback URL is an HTTP URL");
    assert_eq!(leader_http, leader_url, "the trailing / is dropped");
    tokio::spawn(serve_follower_with(
        l,
        follower.shared.clone(),
        FollowerHttp {
            leader_http: Some(leader_http),
        },
    ));
    Cluster {
        keys,
        genesis: g,
        node,
        leader: Client::new(&leader_url),
        leader_url,
        _p2p: p2p,
        follower,
        follower_url,
        _dirs: dirs,
    }
}

impl Cluster {
    /// Up to `steps` accepted proposals on `project`, through the leader.
    async fn drive(&self, project: &str, steps: usize) {
        let driver = Driver::new(&self.keys, 3);
        let mut mirror = NodeState::new(self.genesis.clone()).unwrap();
        // The mirror starts where the leader is for this project.
        let mut done = 0;
        let t0 = Instant::now();
        while done < steps {
            assert!(t0.elapsed() < WAIT, "driving {project} took too long");
            match driver.next(&mirror, project, now_ms()) {
                Next::Done => break,
                Next::WaitMs(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Next::Propose(p) => match self.leader.submit_retrying(&p).await {
                    Ok(_) => {
                        let s = step(
                            &mut mirror,
                            &p,
                            &Ctx {
                                now_ms: p.hlc.wall_ms,
                                verify: Verify::Full,
                                snapshot_every: 0,
                            },
                        );
                        assert!(matches!(s.outcome, Outcome::Accepted(_)), "{s:?}");
                        done += 1;
                    }
                    Err(ClientError::Refused { status: 400, body })
                        if body.guard.as_deref() == Some("backbeat") =>
                    {
                        tokio::time::sleep(Duration::from_millis(body.retry_after_ms.unwrap_or(20)))
                            .await
                    }
                    // Retried past the HLC offset on a stalled machine: not
                    // committed; plan it again with a fresh HLC.
                    Err(ClientError::Refused { status: 409, body })
                        if body.error == "hlc_order"
                            && body.message.contains("behind the leader's clock") => {}
                    Err(e) => panic!("{project}: {e}"),
                },
            }
        }
        assert!(done > 0, "the driver proposed nothing for {project}");
    }

    /// Wait until the follower has applied everything the leader holds.
    async fn caught_up(&self) -> u64 {
        let want = self.node.health().index;
        let t0 = Instant::now();
        loop {
            let (applied, connected) = {
                let s = lock_shared(&self.follower.shared);
                (s.repl.applied_index(), s.leader_connected)
            };
            if applied == want && connected {
                return want;
            }
            assert!(
                t0.elapsed() < WAIT,
                "the follower is at {applied}, the leader at {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `GET path` on `base`: status and JSON body.
async fn get(base: &str, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{base}{path}")).await.expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.expect("a JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_answers_state_as_the_leader_does() {
    let c = cluster("follower-http-state").await;
    c.drive("p1", 4).await;
    // The last record changes `default`, so the leader dates it by the
    // follower's applied index too.
    c.drive("default", 5).await;
    let index = c.caught_up().await;
    let follower = Client::new(&c.follower_url);

    for projection in [
        vec![],
        vec!["Council"],
        vec!["Council", "Ingestion"],
        vec!["meta", " boot "],
        vec!["project", "Project", "Policy"],
    ] {
        let l = c.leader.state("default", &projection).await.unwrap();
        let f = follower.state("default", &projection).await.unwrap();
        assert_eq!(f, l, "default, projection {projection:?}");
        assert_eq!(f.index, index);
    }
    // The leader dates `p1` by the record that last changed it; the
    // follower by its applied index, at which that version still holds.
    let l = c.leader.state("p1", &["Council"]).await.unwrap();
    let f = follower.state("p1", &["Council"]).await.unwrap();
    assert_eq!(
        (&f.project, &f.hash, &f.projection),
        (&l.project, &l.hash, &l.projection)
    );
    assert!(l.index < index && f.index == index, "{l:?} {f:?}");
    // A project never touched: its initial document at index 0 on both.
    let l = c.leader.state("never-touched", &[]).await.unwrap();
    let f = follower.state("never-touched", &[]).await.unwrap();
    assert_eq!(f, l);
    assert_eq!(f.index, 0);
    // No project: the leader's default project, on both.
    let (sl, l) = get(&c.leader_url, "/state?projection=Execution").await;
    let (sf, f) = get(&c.follower_url, "/state?projection=Execution").await;
    assert_eq!((sf, &f), (sl, &l));
    let f: StateReply = serde_json::from_value(f).unwrap();
    assert_eq!(f.project, "default");
    assert_eq!(f.projection.keys().collect::<Vec<_>>(), ["execution"]);

    // The whole replicated node, at /state/summary.
    let (s, sum) = get(&c.follower_url, "/state/summary").await;
    assert_eq!(s, 200, "{sum}");
    assert_eq!(sum["role"], "follower");
    assert_eq!(sum["index"], index);
    assert_eq!(
        sum["root_hash"].as_str(),
        c.node.health().root_hash.map(|h| h.to_string()).as_deref()
    );
    for p in ["default", "p1"] {
        let l = c.leader.state(p, &[]).await.unwrap();
        assert_eq!(sum["projects"][p].as_str(), Some(l.hash.as_str()), "{sum}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refuses_bad_queries_with_the_leaders_400s() {
    let c = cluster("follower-http-400").await;
    c.drive("default", 2).await;
    c.caught_up().await;
    for q in [
        "?project=a&project=b",
        "?projection=Council&projection=Boot",
        "?project=Bad!",
        "?project=",
        "?project=%FF",
        "?projection=Nope",
        "?projection=Council,,Boot",
        "?projection=a,b,c,d,e,f,g,h,i",
        "?projection=Project,Boot,Ingestion,Council,Environment,Execution,Control,Policy,meta",
    ] {
        let path = format!("/state{q}");
        let (sl, l) = get(&c.leader_url, &path).await;
        let (sf, f) = get(&c.follower_url, &path).await;
        assert_eq!(sl, 400, "{path}: the leader answered {l}");
        assert_eq!((sf, &f), (sl, &l), "{path}");
        let body: ErrorBody = serde_json::from_value(f).unwrap();
        assert_eq!(body.error, "malformed", "{path}");
        assert!(body.field.is_some(), "{path}: {body:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reports_health_and_sends_proposals_to_the_leaders_url() {
    let c = cluster("follower-http-health").await;
    c.drive("default", 3).await;
    let index = c.caught_up().await;

    // /health: the leader's fields with their types, plus the lag.
    let (s, h) = get(&c.follower_url, "/health").await;
    assert_eq!(s, 200, "{h}");
    assert_eq!(
        (h["status"].as_str(), h["role"].as_str()),
        (Some("ok"), Some("follower")),
        "{h}"
    );
    let consensus = h["consensus"].as_str().expect("consensus is a string");
    assert!(consensus.contains(&c.leader_url), "{consensus}");
    assert!(h["walLag"].is_u64(), "{h}");
    let snap = h
        .get("lastSnapshotHLC")
        .expect("lastSnapshotHLC is present");
    assert!(snap.is_null() || snap.is_string(), "{h}");
    let snap_index = h.get("last_snapshot_index").expect("present");
    assert!(snap_index.is_null() || snap_index.is_u64(), "{h}");
    for k in [
        "index",
        "applied_index",
        "persisted_index",
        "leader_index",
        "lag_records",
        "lag_ms",
        "inflight",
        "restarts",
    ] {
        assert!(h[k].is_u64(), "{k} in {h}");
    }
    assert_eq!(h["index"], index);
    assert_eq!(h["applied_index"], index);
    assert_eq!(h["leader_http"].as_str(), Some(c.leader_url.as_str()));
    assert!(h["base_snapshot_fault"].is_null(), "{h}");
    let leader = c.leader.health().await.unwrap();
    assert_eq!(
        h["genesis_hash"].as_str(),
        Some(leader.genesis_hash.as_str())
    );
    assert_eq!(h["cluster_id"].as_str(), Some(leader.cluster_id.as_str()));
    assert_eq!(h["root_hash"].as_str(), leader.root_hash.as_deref());
    // It parses as the leader's document (what `swoosh health` and the
    // SDK read) and as the follower's own.
    let hr: HealthReply = Client::new(&c.follower_url).health().await.unwrap();
    assert_eq!((hr.role.as_str(), hr.index), ("follower", index));
    let fr: FollowerHealthReply = serde_json::from_value(h).unwrap();
    assert_eq!(fr.lag_records, 0);

    // POST /transition: 503 naming the leader's URL; the SDK's NotLeader.
    let driver = Driver::new(&c.keys, 3);
    let mirror = NodeState::new(c.genesis.clone()).unwrap();
    let Next::Propose(p) = driver.next(&mirror, "other", now_ms()) else {
        panic!("the driver has a first step")
    };
    let r = reqwest::Client::new()
        .post(format!("{}/transition", c.follower_url))
        .json(&*p)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let body: ErrorBody = r.json().await.unwrap();
    assert_eq!(body.error, "not_leader");
    assert_eq!(body.leader.as_deref(), Some(c.leader_url.as_str()));
    assert!(body.message.contains(&c.leader_url), "{}", body.message);
    match Client::new(&c.follower_url).submit_retrying(&p).await {
        Err(ClientError::NotLeader { leader, .. }) => {
            assert_eq!(leader.as_deref(), Some(c.leader_url.as_str()));
            // Resubmitting to that URL works.
            let ok = Client::new(&leader.unwrap()).submit(&p).await.unwrap();
            assert_eq!(ok.index, index + 1);
        }
        other => panic!("expected not_leader, got {other:?}"),
    }

    // Without --leader-http: the p2p address, and the message says so.
    let (l, bare) = bind().await;
    tokio::spawn(serve_follower(l, c.follower.shared.clone()));
    let r = reqwest::Client::new()
        .post(format!("{bare}/transition"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let body: ErrorBody = r.json().await.unwrap();
    let p2p = lock_shared(&c.follower.shared).leader_addr.clone();
    assert_eq!(body.leader.as_deref(), Some(p2p.as_str()));
    assert!(
        body.message.contains("p2p address") && body.message.contains("--leader-http"),
        "{}",
        body.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_documents_exactly_its_routes() {
    let c = cluster("follower-http-routes").await;
    let (s, doc) = get(&c.follower_url, "/openapi.json").await;
    assert_eq!(s, 200);
    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/health",
            "/metrics",
            "/state",
            "/state/summary",
            "/transition"
        ]
    );
    let ops: Vec<&str> = doc["paths"]["/transition"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(ops, ["post"]);
    // OpenAPI 3.1 requires a description on every response (validators
    // refused the document without them).
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for (status, r) in op["responses"].as_object().into_iter().flatten() {
                assert!(
                    r["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{method} {path} {status}: {r}"
                );
            }
        }
    }
    // The `/state` parameters are the leader's.
    let (_, leader_doc) = get(&c.leader_url, "/openapi.json").await;
    assert_eq!(
        doc["paths"]["/state"]["get"]["parameters"],
        leader_doc["paths"]["/state"]["get"]["parameters"]
    );

    // Everything else is JSON naming what a follower serves.
    for path in ["/decisions/abc", "/attention", "/nope"] {
        let (s, b) = get(&c.follower_url, path).await;
        assert_eq!(s, 404, "{path}: {b}");
        let b: ErrorBody = serde_json::from_value(b).unwrap();
        assert_eq!(b.error, "not_found");
        assert!(
            b.message.contains("GET /state") && b.message.contains(path),
            "{}",
            b.message
        );
    }
    let (s, b) = get(&c.follower_url, "/transition").await;
    assert_eq!(s, 405, "{b}");
    assert_eq!(b["error"], "method_not_allowed");
    let r = reqwest::Client::new()
        .post(format!("{}/state", c.follower_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.headers().contains_key("allow"));
    let metrics = reqwest::get(format!("{}/metrics", c.follower_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "swoosh_follower_applied_index ",
        // What the shipped alerts read on every node (`SwooshSnapshotFailing`,
        // `SwooshCompactionFailing`), and the log's start.
        "swoosh_snapshots_total{kind=\"failed\"} 0",
        "swoosh_compactions_total{kind=\"failed\"} 0",
        "swoosh_wal_base_index 0",
        "swoosh_base_snapshot_damaged 0",
    ] {
        assert!(metrics.contains(line), "no {line} in {metrics}");
    }
}
