//! The HTTP contract of SPEC §6 over real loopback HTTP: every status code,
//! arbitrary bodies, exactly-once under concurrency, and many concurrent
//! clients ending on the hash the pure reducer computes from the WAL.

use proptest::prelude::*;
use serde_json::{json, Value};
use swoosh_core::guards::Verify;
use swoosh_core::reducer::{step, Ctx, Outcome};
use swoosh_core::scenario::{Driver, Fault, Next};
use swoosh_core::state::NodeState;
use swoosh_core::Proposal;
use swoosh_net::client::{Client, ClientError};
use swoosh_tests::{now_ms, TestNode};

fn refused(
    r: Result<swoosh_net::api::AcceptedReply, ClientError>,
) -> (u16, swoosh_net::api::ErrorBody) {
    match r {
        Err(ClientError::Refused { status, body }) => (status, body),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The driver's next proposal for `project`, against a client-side mirror.
fn next(driver: &Driver, mirror: &NodeState, project: &str) -> Proposal {
    match driver.next(mirror, project, now_ms()) {
        Next::Propose(p) => *p,
        other => panic!("the driver has no next step: {other:?}"),
    }
}

fn mirror_apply(mirror: &mut NodeState, p: &Proposal) {
    let s = step(
        mirror,
        p,
        &Ctx {
            now_ms: p.hlc.wall_ms,
            verify: Verify::Full,
            snapshot_every: 0,
        },
    );
    assert!(
        matches!(s.outcome, Outcome::Accepted(_)),
        "mirror refused {}: {:?}",
        p.transition,
        s.outcome
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_code_of_the_contract() {
    let mut t = TestNode::start().await;
    let c = Client::new(&t.url);
    let driver = Driver::new(&t.keys, 3);
    let mut mirror = NodeState::new(t.genesis.clone()).unwrap();

    // 202, with index, post hash and a decision record address.
    let p = next(&driver, &mirror, "default");
    let ok = c.submit(&p).await.expect("202");
    mirror_apply(&mut mirror, &p);
    assert_eq!(ok.index, 1);
    assert_eq!(
        ok.state_post_hash,
        mirror.project_hash("default").to_string()
    );
    assert!(ok.decision.starts_with("bubble://dr/"));
    assert!(!ok.duplicate);
    // The same proposal again: the original outcome.
    let again = c.submit(&p).await.expect("repeat is 202");
    assert!(again.duplicate);
    assert_eq!(again.index, ok.index);

    // 400 malformed JSON, naming the problem.
    let (s, b) = refused(c.submit_raw(b"{\"transition\":".to_vec()).await);
    assert_eq!((s, b.error.as_str()), (400, "malformed"));
    // 400 missing field, naming the field.
    let mut v: Value = serde_json::to_value(next(&driver, &mirror, "default")).unwrap();
    v.as_object_mut().unwrap().remove("hlc");
    let (s, b) = refused(c.submit_raw(serde_json::to_vec(&v).unwrap()).await);
    assert_eq!(s, 400);
    assert_eq!(b.field.as_deref(), Some("hlc"), "{b:?}");
    // 400 a field of the wrong form, naming it.
    let mut v: Value = serde_json::to_value(next(&driver, &mirror, "default")).unwrap();
    v["current_state_hash"] = json!("sha256-abc");
    let (s, b) = refused(c.submit_raw(serde_json::to_vec(&v).unwrap()).await);
    assert_eq!(
        (s, b.field.as_deref()),
        (400, Some("current_state_hash")),
        "{b:?}"
    );

    // 400 unknown transition; 401 forged signature and unknown signer; 403 role.
    for (fault, status, error) in [
        (Fault::UnknownTransition, 400, "unknown_transition"),
        (Fault::ForgedSignature, 401, "bad_signature"),
        (Fault::Outsider, 401, "unknown_signer"),
        (Fault::WrongRole, 403, "forbidden"),
        (Fault::StaleHash, 409, "stale_hash"),
        (Fault::IdemConflict, 409, "idem_conflict"),
    ] {
        let bad = driver
            .fault(
                &mirror,
                "default",
                now_ms(),
                fault,
                std::slice::from_ref(&p),
                3,
            )
            .expect("fault applies");
        let (s, b) = refused(c.submit(&bad).await);
        assert_eq!((s, b.error.as_str()), (status, error), "{fault:?}: {b:?}");
        assert!(!b.message.is_empty());
        if fault == Fault::StaleHash {
            assert_eq!(
                b.head_hash.as_deref(),
                Some(mirror.project_hash("default").to_string().as_str())
            );
            assert!(b.hlc_last.is_some());
        }
    }
    // 400 guard, naming the guard and its reasons.
    let lic = driver.license(
        &t.genesis.cluster_id,
        swoosh_core::Hlc::new(now_ms(), 0),
        now_ms() + 1_000,
        0,
    );
    let wrong = swoosh_core::ProposalBuilder::new(
        "default",
        "Council_ProfilesLoaded",
        mirror.project_hash("default"),
        swoosh_core::Hlc::new(now_ms(), 9),
        "x:1",
    )
    .inputs(&json!({"roles": [], "candidates": [], "tools": {}}))
    .unwrap()
    .sign(&t.keys.leader)
    .unwrap();
    let _ = lic;
    let (s, b) = refused(c.submit(&wrong).await);
    assert_eq!(
        (s, b.error.as_str(), b.guard.as_deref()),
        (400, "guard", Some("project_status")),
        "{b:?}"
    );

    // 413 too large.
    let big = vec![b' '; swoosh_net::api::BODY_BYTES_MAX + 1];
    let (s, b) = refused(c.submit_raw(big).await);
    assert_eq!((s, b.error.as_str()), (413, "too_large"));

    // 429 backpressure with Retry-After. A limit of 0 refuses every
    // submission, so the 429 does not depend on how many of a burst of
    // requests happen to overlap on a loaded machine (a limit of 1 with 40
    // concurrent submissions saw none when they arrived one at a time).
    t.node.set_inflight_max(0);
    for i in 0..3 {
        let mut q = next(&driver, &mirror, "default");
        q.idem_key = format!("flood-{i}");
        let (s, b) = refused(c.submit(&q).await);
        assert_eq!((s, b.error.as_str()), (429, "backpressure"), "{b:?}");
        assert!(b.retry_after_ms.is_some(), "{b:?}");
        assert!(b.message.contains("paused"), "{b:?}");
    }
    t.node.set_inflight_max(usize::MAX);
    // Refusals are counted: the sequencer's by the refusal's `error`, the
    // ones answered before it under their own family.
    let m = c.metrics().await.unwrap();
    for line in [
        "swoosh_rejected_total{kind=\"stale_hash\"} 1",
        "swoosh_rejected_total{kind=\"guard\"}",
        "swoosh_http_refused_total{kind=\"too_large\"} 1",
        "swoosh_http_refused_total{kind=\"backpressure\"} 3",
    ] {
        assert!(m.contains(line), "metrics lack {line}: {m}");
    }
    let raw = reqwest::Client::new()
        .post(format!("{}/transition", t.url))
        .json(&p)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 202);

    // Reads.
    let st = c.state("default", &["Council", "Ingestion"]).await.unwrap();
    assert_eq!(
        st.projection.keys().cloned().collect::<Vec<_>>(),
        vec!["council".to_string(), "ingestion".to_string()]
    );
    let (s, b) = match c.state("default", &["Nonsense"]).await {
        Err(ClientError::Refused { status, body }) => (status, body),
        other => panic!("{other:?}"),
    };
    assert_eq!((s, b.field.as_deref()), (400, Some("projection")));
    let fresh = c.state("never-touched", &[]).await.unwrap();
    assert_eq!(fresh.index, 0);
    assert_eq!(fresh.hash, mirror.project_hash("never-touched").to_string());
    let dr = c
        .decision(&ok.decision)
        .await
        .expect("decision by bubble address");
    assert!(dr.to_string().contains("guard_outcomes"));
    assert!(matches!(
        c.decision(&format!("blake3:{}", "0".repeat(64))).await,
        Err(ClientError::Refused { status: 404, .. })
    ));
    // The SDK refuses a reference that is no decision hash before sending
    // it; the server refuses one too.
    assert!(matches!(
        c.decision("nothex").await,
        Err(ClientError::Usage(_))
    ));
    let bad = reqwest::get(format!("{}/decisions/nothex", t.url))
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let h = c.health().await.unwrap();
    assert_eq!((h.status.as_str(), h.index), ("ok", 1));
    // The leader's view of its followers, as the p2p transport reports it.
    t.node.set_replication(std::sync::Arc::new(|| {
        vec![swoosh_actors::FollowerHealth {
            name: "follower-1".into(),
            key: "hmmm:pubkey:f1".into(),
            connected: true,
            applied_index: Some(1),
            lag_records: Some(0),
            last_report_ms_ago: Some(120),
            halted: false,
        }]
    }));
    // Its own counters, raised to the transport's totals at every scrape
    // (a total that went down, a restarted transport, leaves them).
    let totals = std::sync::Arc::new(std::sync::Mutex::new(vec![
        ("records_published", 10u64),
        ("range_records_served", 3),
    ]));
    let source = totals.clone();
    t.node
        .set_replication_counters(std::sync::Arc::new(move || source.lock().unwrap().clone()));
    let m = c.metrics().await.unwrap();
    assert!(
        m.contains("swoosh_leader_replication_events_total{event=\"records_published\"} 10"),
        "{m}"
    );
    *totals.lock().unwrap() = vec![("records_published", 25), ("range_records_served", 1)];
    let m = c.metrics().await.unwrap();
    for line in [
        "swoosh_leader_replication_events_total{event=\"records_published\"} 25",
        "swoosh_leader_replication_events_total{event=\"range_records_served\"} 3",
        "swoosh_replica_connected{follower=\"follower-1\"} 1",
        "swoosh_replica_lag_records{follower=\"follower-1\"} 0",
        "swoosh_replica_report_age_seconds{follower=\"follower-1\"} 0.12",
    ] {
        assert!(m.contains(line), "metrics lack {line}");
    }
    // Every leader metric the shipped alerts and dashboard read exists
    // (the followers' `swoosh_follower_*` come from `swoosh follow`), and
    // every agent metric they read is one `swoosh agent --http` exports.
    let agent = swoosh_net::p2p::agent::AgentStatus {
        signer: String::new(),
        peer_id: String::new(),
        peers: 0,
        council_peers: 0,
        running: true,
        counters: Default::default(),
    }
    .metrics_text();
    // What a process answers before it serves, while it replays its log.
    let recovering = swoosh_net::recovering::Recovering {
        role: "leader",
        genesis_hash: swoosh_core::Hash::of_bytes(b"g"),
        cluster_id: "c".into(),
        progress: std::sync::Arc::new(swoosh_storage::ProgressCell::new()),
    }
    .metrics_text();
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for file in [
        "prometheus/swoosh-alerts.yml",
        "grafana/swoosh-dashboard.json",
    ] {
        let text = std::fs::read_to_string(deploy.join(file)).expect("deploy file");
        let names = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("swoosh_") && !w.starts_with("swoosh_follower_"));
        for name in names {
            // A histogram's series, or a family whose own name ends so
            // (`swoosh_retry_count`).
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .fold(name, |n, suffix| n.strip_suffix(suffix).unwrap_or(n));
            let (exported, who) = if name.starts_with("swoosh_agent_") {
                (&agent, "an agent")
            } else if name.starts_with("swoosh_recovery_") && !m.contains(&format!("{name} ")) {
                (&recovering, "a recovering process")
            } else {
                (&m, "the leader")
            };
            let has = |n: &str| {
                exported.contains(&format!("{n} ")) || exported.contains(&format!("{n}{{"))
            };
            assert!(
                has(name) || has(family),
                "{file} reads {name}, which {who} does not export"
            );
        }
    }
    for name in [
        "swoosh_transition_total",
        "swoosh_guard_fail_total",
        "swoosh_wal_lag_records",
        "swoosh_commit_batch_records",
        "swoosh_fsync_latency_seconds",
    ] {
        assert!(m.contains(name), "metrics lack {name}");
    }
    let a = c.attention(None).await.unwrap();
    assert!(
        a.counts.get("auth_failure").copied().unwrap_or(0) >= 2,
        "{:?}",
        a.counts
    );
    let api = c.openapi().await.unwrap();
    for path in [
        "/transition",
        "/state",
        "/health",
        "/metrics",
        "/decisions/{hash}",
        "/attention",
    ] {
        assert!(api["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    let nf = reqwest::get(format!("{}/nope", t.url)).await.unwrap();
    assert_eq!(nf.status().as_u16(), 404);

    // 503 once the node is shutting down: for good, so without a retry hint.
    t.node.shutdown().await;
    let (s, b) = refused(c.submit(&next(&driver, &mirror, "default")).await);
    assert_eq!((s, b.error.as_str()), (503, "shutting_down"), "{b:?}");
    assert_eq!(b.retry_after_ms, None, "{b:?}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_submissions_of_one_idempotency_key_apply_once() {
    let mut t = TestNode::start().await;
    let c = Client::new(&t.url);
    let driver = Driver::new(&t.keys, 3);
    let mirror = NodeState::new(t.genesis.clone()).unwrap();
    let p = next(&driver, &mirror, "default");
    let joins: Vec<_> = (0..50)
        .map(|_| {
            let (c, p) = (c.clone(), p.clone());
            tokio::spawn(async move { c.submit_retrying(&p).await })
        })
        .collect();
    let mut replies = vec![];
    for j in joins {
        replies.push(
            j.await
                .unwrap()
                .expect("every submission is acknowledged")
                .0,
        );
    }
    assert!(replies
        .iter()
        .all(|r| r.index == 1 && r.state_post_hash == replies[0].state_post_hash));
    assert_eq!(
        replies.iter().filter(|r| !r.duplicate).count(),
        1,
        "exactly one application"
    );
    t.stop().await;
    let replayed = t.replay();
    assert_eq!(replayed.index, 1, "the WAL holds the proposal once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_over_many_projects_match_the_pure_replay() {
    let mut t = TestNode::start().await;
    let projects: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    let mut joins = vec![];
    for p in projects.clone() {
        let (keys, g, url) = (t.keys.clone(), t.genesis.clone(), t.url.clone());
        joins.push(tokio::spawn(async move {
            let c = Client::new(&url);
            let driver = Driver::new(&keys, 2);
            let mut mirror = NodeState::new(g).unwrap();
            loop {
                match driver.next(&mirror, &p, now_ms()) {
                    Next::Done => break,
                    Next::WaitMs(ms) => {
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await
                    }
                    Next::Propose(q) => match c.submit_retrying(&q).await {
                        Ok((r, _)) => {
                            mirror_apply(&mut mirror, &q);
                            assert_eq!(r.state_post_hash, mirror.project_hash(&p).to_string());
                        }
                        Err(ClientError::Refused { status: 400, body })
                            if body.guard.as_deref() == Some("backbeat") =>
                        {
                            tokio::time::sleep(std::time::Duration::from_millis(
                                body.retry_after_ms.unwrap_or(20),
                            ))
                            .await
                        }
                        // Built, then retried past the HLC offset on a
                        // stalled machine: not committed; plan it again.
                        Err(ClientError::Refused { status: 409, body })
                            if body.error == "hlc_order"
                                && body.message.contains("behind the leader's clock") => {}
                        Err(e) => panic!("{p}: {e}"),
                    },
                }
            }
            (p.clone(), mirror.project_hash(&p))
        }));
    }
    let mut expected = vec![];
    for j in joins {
        expected.push(j.await.unwrap());
    }
    let root = t.node.health().root_hash.expect("root hash");
    t.stop().await;
    let replayed = t.replay();
    assert_eq!(
        replayed.root_hash(),
        root,
        "the node's root is the pure replay's"
    );
    for (p, h) in expected {
        assert_eq!(replayed.project_hash(&p), h, "project {p}");
        assert_eq!(replayed.project(&p).execution.loops, 2);
    }
}

fn body_strategy(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let v2 = valid.clone();
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        "\\PC{0,300}".prop_map(|s| s.into_bytes()),
        // A valid proposal with bytes flipped or cut.
        (any::<usize>(), any::<u8>()).prop_map(move |(i, b)| {
            let mut x = valid.clone();
            let n = x.len();
            x[i % n] = b;
            x
        }),
        any::<usize>().prop_map(move |i| v2[..i % v2.len()].to_vec()),
        // Valid JSON of the wrong shapes.
        prop_oneof![
            Just(json!(null)),
            Just(json!([])),
            Just(json!({"transition": 5})),
            Just(json!({"inputs": {"x": 1.5}}))
        ]
        .prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_bodies_never_get_a_5xx() {
    let mut t = TestNode::start().await;
    let driver = Driver::new(&t.keys, 3);
    let mirror = NodeState::new(t.genesis.clone()).unwrap();
    let valid = serde_json::to_vec(&next(&driver, &mirror, "default")).unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    });
    let http = reqwest::Client::new();
    let url = format!("{}/transition", t.url);
    let handle = tokio::runtime::Handle::current();
    let result = tokio::task::block_in_place(|| {
        runner.run(&body_strategy(valid), |body| {
            let status = handle.block_on(async {
                http.post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap()
            });
            let code = status.status().as_u16();
            let text = handle.block_on(status.text()).unwrap();
            prop_assert!(
                code < 500,
                "status {code} for body {:?}: {text}",
                String::from_utf8_lossy(&body)
            );
            let parsed: Value = serde_json::from_str(&text)
                .map_err(|e| TestCaseError::fail(format!("non-JSON reply {text}: {e}")))?;
            if code != 202 {
                prop_assert!(
                    parsed["error"].is_string() && parsed["message"].is_string(),
                    "{text}"
                );
            }
            Ok(())
        })
    });
    result.unwrap();
    assert_eq!(t.node.health().status, "ok");
    t.stop().await;
}
