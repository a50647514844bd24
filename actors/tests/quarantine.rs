//! SPEC §5: a policy breach moves the project to QUARANTINED with the
//! rationale. A worker's `Ingestion_SchemaOk` whose findings breach a rule
//! is refused, and the leader itself proposes `Ingestion_PolicyViolation`
//! with those findings, so the breach is quarantined even if the worker
//! gives up; the log replays to the node's state.

mod common;

use common::*;
use std::time::Duration;
use swoosh_actors::SubmitResult;
use swoosh_core::facts::Finding;
use swoosh_core::guards::Verify;
use swoosh_core::reducer::{Ctx, RejectKind};
use swoosh_core::scenario::{Driver, Next};
use swoosh_core::statechart::Region;
use swoosh_core::{NodeState, ProposalBuilder};

#[derive(serde::Serialize)]
struct SchemaInputs {
    schema_hash: swoosh_core::Hash,
    findings: Vec<Finding>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaching_schema_ok_is_refused_and_the_leader_quarantines_the_project() {
    quarantined_after(
        "shhh",
        vec![Finding {
            code: "secret_leak".into(),
            detail: "AWS key in config.yaml".into(),
        }],
    )
    .await;
}

/// A breach with repeated findings and more breach reasons than one record
/// may carry: the leader's quarantine keeps each breaching finding once,
/// within the budget, so it still lands (it carried every finding and was
/// refused at admission, and the project stayed unquarantined).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breach_too_large_to_repeat_whole_is_still_quarantined() {
    let mut findings: Vec<Finding> = (0..255)
        .map(|i| Finding {
            code: "secret_leak".into(),
            detail: format!("key number {i} in config.yaml"),
        })
        .collect();
    findings.push(findings[0].clone());
    let stored = quarantined_after("shhh-big", findings).await;
    assert!(
        (1..255).contains(&stored),
        "the quarantine carries a part of the findings: {stored}"
    );
}

/// Drive a project to `Ingestion_SchemaOk`, submit one with `findings`
/// (which breach the genesis rule), check the leader quarantines the project
/// and the log replays to it; the number of findings the quarantine holds.
async fn quarantined_after(label: &str, findings: Vec<Finding>) -> usize {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let fx = Fixture::new(label);
    let node = start(&fx, open_store(dir.path()), 0).await;
    let project = "q";
    let mut mirror = NodeState::new(fx.genesis.clone()).unwrap();
    let driver = Driver::new(&fx.keys, 1);
    // Drive the project along the happy path until Ingestion validates.
    let schema_ok = loop {
        let now = fx.now();
        let p = match driver.next(&mirror, project, now) {
            Next::Propose(p) => *p,
            other => panic!("expected a proposal, got {other:?}"),
        };
        if p.transition == "Ingestion_SchemaOk" {
            break p;
        }
        match node.submit(p.clone()).await {
            SubmitResult::Accepted(_) => {
                let ctx = Ctx {
                    now_ms: now,
                    verify: Verify::Full,
                    snapshot_every: 0,
                };
                swoosh_core::step(&mut mirror, &p, &ctx);
            }
            other => panic!("{} not accepted: {other:?}", p.transition),
        }
    };
    let breach = ProposalBuilder::new(
        project,
        "Ingestion_SchemaOk",
        schema_ok.current_state_hash,
        schema_ok.hlc,
        "schema-with-a-leak",
    )
    .inputs(&SchemaInputs {
        schema_hash: swoosh_core::Hash::of_bytes(b"schema/v1"),
        findings,
    })
    .unwrap()
    .sign(&fx.keys.worker)
    .unwrap();
    match node.submit(breach.clone()).await {
        SubmitResult::Rejected(r) => {
            assert_eq!((r.kind, r.guard.as_str()), (RejectKind::Guard, "policy"));
            assert!(
                r.reasons
                    .iter()
                    .any(|x| x.contains("the leader will propose Ingestion_PolicyViolation")),
                "{:?}",
                r.reasons
            );
        }
        other => panic!("a breaching SchemaOk is refused: {other:?}"),
    }
    // The leader's own proposal lands shortly after.
    let deadline = std::time::Instant::now() + PATIENCE;
    let policy = loop {
        let v = node.state(project, &[Region::Policy]).await.unwrap();
        let policy = v.projection["policy"].clone();
        if policy["phase"] == "QUARANTINED" || std::time::Instant::now() > deadline {
            break policy;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(policy["phase"], "QUARANTINED", "{policy}");
    assert!(
        policy["rationale"]
            .as_str()
            .is_some_and(|r| r.contains("secret_leak")),
        "{policy}"
    );
    assert_eq!(policy["quarantines"], 1, "{policy}");
    // The same breach again, and another one: refused (the HEAD moved, the
    // project is quarantined), and no second quarantine.
    assert!(matches!(
        node.submit(breach).await,
        SubmitResult::Rejected(_)
    ));
    let v = node.state(project, &[Region::Policy]).await.unwrap();
    assert_eq!(v.projection["policy"]["quarantines"], 1);
    assert!(node
        .metrics()
        .encode()
        .contains("swoosh_quarantine_total 1"));
    node.shutdown().await;
    drop(node);

    // The quarantine is an ordinary record of the log, signed by the leader.
    let store = reopen(dir.path()).await;
    let replayed = replay_from_genesis(&store, &fx.genesis);
    let last = wal_records(&store, replayed.genesis_hash)
        .pop()
        .expect("records");
    assert_eq!(last.record.transition, "Ingestion_PolicyViolation");
    assert!(
        last.record.idem_key.starts_with("shhh-quarantine:"),
        "{}",
        last.record.idem_key
    );
    assert_eq!(
        last.record.signer,
        swoosh_core::SignerId::from_signing_key(&fx.keys.leader)
    );
    assert_eq!(replayed.project(project).policy.phase, "QUARANTINED");
    replayed.project(project).policy.findings.len()
}
