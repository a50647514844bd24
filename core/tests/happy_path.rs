//! The scripted happy path: BOOT → lifecycle → three execution loops, for
//! several projects, with the invariant checker after every step.

use swoosh_core::invariants::{check_state, check_transition};
use swoosh_core::reducer::Outcome;
use swoosh_core::scenario::{genesis, run_happy_path, Driver, Keys};
use swoosh_core::state::NodeState;
use swoosh_core::Hash;

pub const ORIGIN_MS: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn run(projects: &[&str], loops: u64) -> (NodeState, Vec<String>) {
    let keys = Keys::from_labels("happy", 3);
    let mut node = NodeState::new(genesis(&keys, "happy-cluster", ORIGIN_MS)).unwrap();
    let driver = Driver::new(&keys, loops);
    let projects: Vec<String> = projects.iter().map(|s| s.to_string()).collect();
    let mut log = vec![];
    run_happy_path(
        &mut node,
        &driver,
        &projects,
        ORIGIN_MS + 10,
        10_000,
        |s| match &s.step.outcome {
            Outcome::Accepted(acc) => {
                // What the WAL writes as is: the reducer's encoding of the
                // record (the bytes of its hash) and the proposal's content hash.
                let bytes = swoosh_core::cbor::to_canonical(&acc.record).unwrap();
                assert_eq!(acc.record_bytes.as_deref(), Some(&bytes[..]));
                assert_eq!(Hash::of_bytes(&bytes), acc.record_hash);
                let decision = swoosh_core::cbor::to_canonical(&acc.decision).unwrap();
                assert_eq!(acc.decision_bytes.as_deref(), Some(&decision[..]));
                assert_eq!(Hash::of_bytes(&decision), acc.decision_hash);
                assert_eq!(
                    acc.content_hash,
                    acc.record.proposal().content_hash().unwrap()
                );
                let post = s.node.project(&acc.record.project);
                let v = check_transition(s.pre, &post, &acc.record);
                assert!(
                    v.is_empty(),
                    "invariant violations at {}: {v:?}",
                    acc.record.transition
                );
                assert!(check_state(&post).is_empty());
                log.push(format!("{} {}", acc.record.project, acc.record.transition));
            }
            other => panic!(
                "happy path proposal {} refused: {other:?}",
                s.proposal.transition
            ),
        },
    );
    (node, log)
}

#[test]
fn one_project_reaches_three_execution_loops() {
    let (node, log) = run(&["default"], 3);
    let st = node.project("default");
    assert_eq!(st.meta.phase, "EXECUTION");
    assert_eq!(st.execution.loops, 3);
    assert_eq!(st.execution.phase, "PLAN");
    for t in [
        "Boot_ConfigOk",
        "Boot_Licensed",
        "Council_QuorumCert",
        "Council_McpGreen",
        "Project_EnterExecution",
        "Execution_Submit",
    ] {
        assert!(log.iter().any(|l| l.ends_with(t)), "{t} never happened");
    }
    // 2 boot + 4 ingestion + 3 council + 3 environment + 1 entry + 3 × (lock, review, reverb, 2 approvals, submit, next)
    assert_eq!(log.len(), 2 + 4 + 3 + 3 + 1 + 3 * 7);
    assert_eq!(node.index as usize, log.len());
}

#[test]
fn same_stream_gives_same_hashes_every_time() {
    let (a, la) = run(&["alpha", "beta", "gamma"], 3);
    let (b, lb) = run(&["alpha", "beta", "gamma"], 3);
    assert_eq!(la, lb);
    assert_eq!(a.root_hash(), b.root_hash());
    assert_eq!(a.head_record, b.head_record);
    assert_ne!(a.project_hash("alpha"), a.project_hash("beta"));
}

#[test]
fn idempotency_window_is_bounded_and_exactly_once_survives_eviction() {
    use swoosh_core::guards::Verify;
    use swoosh_core::reducer::{step, step_recalled, Ctx, RejectKind, IDEM_KEYS_PER_PROJECT_MAX};
    use swoosh_core::state::IdemEntry;
    let keys = Keys::from_labels("idem", 3);
    let mut node = NodeState::new(genesis(&keys, "idem", ORIGIN_MS)).unwrap();
    let driver = Driver::new(&keys, 0);
    let p = "default".to_string();
    run_happy_path(
        &mut node,
        &driver,
        std::slice::from_ref(&p),
        ORIGIN_MS + 10,
        100,
        |_| {},
    );
    // Pause/resume enough times to overflow the window.
    let mut now = ORIGIN_MS + 10_000;
    let mut first = None;
    for i in 0..(IDEM_KEYS_PER_PROJECT_MAX + 10) {
        let st = node.project(&p).into_owned();
        let (t, inputs) = if st.control.phase == "NORMAL" {
            (
                "Control_Pause",
                serde_json::json!({"reason": "maintenance"}),
            )
        } else {
            ("Control_Resume", serde_json::json!({}))
        };
        let hlc = Driver::hlc_for(&st, now);
        let prop =
            swoosh_core::ProposalBuilder::new(&p, t, node.project_hash(&p), hlc, &format!("k{i}"))
                .inputs(&inputs)
                .unwrap()
                .sign(&keys.leader)
                .unwrap();
        let s = step(
            &mut node,
            &prop,
            &Ctx {
                now_ms: now,
                verify: Verify::Trusted,
                snapshot_every: 0,
            },
        );
        let Outcome::Accepted(acc) = s.outcome else {
            panic!("step {i} refused: {:?}", s.outcome)
        };
        // What a node's durable index holds for the first key.
        first.get_or_insert_with(|| {
            let e = IdemEntry {
                content_hash: acc.content_hash,
                transition: acc.record.transition.clone(),
                index: acc.record.index,
                state_post_hash: acc.record.state_post_hash,
                decision: acc.decision_hash,
            };
            (prop, e)
        });
        now += 1;
    }
    let (first, durable) = first.unwrap();
    assert!(node.idem["default"].len() <= IDEM_KEYS_PER_PROJECT_MAX);
    assert!(
        !node.idem["default"].contains_key(&first.idem_key),
        "the first key aged out of the window"
    );
    let ctx = Ctx {
        now_ms: now,
        verify: Verify::Full,
        snapshot_every: 0,
    };
    // Recalled from a durable index, the aged-out repeat gets its original
    // outcome, and the node does not change.
    let before = node.clone();
    let s = step_recalled(&mut node, &first, &ctx, Some(&durable));
    match s.outcome {
        Outcome::Duplicate(e) => assert_eq!(e, durable),
        other => panic!("a recalled repeat is a duplicate, got {other:?}"),
    }
    assert_eq!(node, before);
    // The same key with other content, recalled, is a conflict (not a stale
    // hash: idempotency is judged first, as for a key in the window).
    let st = node.project(&p).into_owned();
    let other = swoosh_core::ProposalBuilder::new(
        &p,
        "Control_Pause",
        node.project_hash(&p),
        Driver::hlc_for(&st, now),
        &first.idem_key,
    )
    .inputs(&serde_json::json!({"reason": "other content"}))
    .unwrap()
    .sign(&keys.leader)
    .unwrap();
    match step_recalled(&mut node, &other, &ctx, Some(&durable)).outcome {
        Outcome::Rejected(r) => {
            assert_eq!(r.kind, RejectKind::IdemConflict);
            let says = format!("already used at index {} for Control_Pause", durable.index);
            assert!(r.reasons[0].contains(&says), "{r:?}");
        }
        other => panic!("other content under a recalled key conflicts, got {other:?}"),
    }
    assert_eq!(node, before);
    // The evicted first proposal cannot apply again: it names an old HEAD.
    let again = step(
        &mut node,
        &first,
        &Ctx {
            now_ms: now,
            verify: Verify::Full,
            snapshot_every: 0,
        },
    );
    match again.outcome {
        Outcome::Rejected(r) => assert_eq!(r.kind, RejectKind::StaleHash),
        other => panic!("an evicted proposal must be refused, got {other:?}"),
    }
}

/// The records of one project's happy path, with the genesis and the node
/// that produced them.
fn happy_records() -> (
    swoosh_core::Genesis,
    NodeState,
    Vec<swoosh_core::record::WalRecord>,
) {
    let keys = Keys::from_labels("happy", 3);
    let g = genesis(&keys, "happy-cluster", ORIGIN_MS);
    let mut node = NodeState::new(g.clone()).unwrap();
    let driver = Driver::new(&keys, 3);
    let mut records = vec![];
    run_happy_path(
        &mut node,
        &driver,
        &["default".to_string()],
        ORIGIN_MS + 10,
        10_000,
        |s| {
            if let Outcome::Accepted(acc) = &s.step.outcome {
                records.push(acc.record.clone());
            }
        },
    );
    (g, node, records)
}

/// Replay hashes a borrowed view of each decision instead of the record:
/// the two must encode to the same bytes, for every decision of a run.
#[test]
fn decision_view_encodes_exactly_as_the_decision_record() {
    let keys = Keys::from_labels("happy", 3);
    let g = genesis(&keys, "happy-cluster", ORIGIN_MS);
    let mut node = NodeState::new(g).unwrap();
    let driver = Driver::new(&keys, 3);
    let mut decisions = vec![];
    run_happy_path(
        &mut node,
        &driver,
        &["default".to_string(), "p-2".to_string()],
        ORIGIN_MS + 10,
        10_000,
        |s| {
            if let Outcome::Accepted(acc) = &s.step.outcome {
                decisions.push((acc.decision.clone(), acc.decision_hash));
            }
        },
    );
    assert!(decisions.len() > 20, "{} decisions", decisions.len());
    for (d, h) in decisions {
        let view = swoosh_core::cbor::to_canonical(&d.view()).unwrap();
        assert_eq!(view, swoosh_core::cbor::to_canonical(&d).unwrap());
        assert_eq!(d.view().hash(), h);
        assert_eq!(d.hash(), h);
    }
}

/// A caller holding a record's hash (a follower hashed the encoding it
/// checked) prepares exactly what a fresh re-encoding prepares, and replay
/// through either path ends on the same root.
#[test]
fn prepare_with_a_known_hash_matches_prepare() {
    use swoosh_core::guards::Verify;
    use swoosh_core::reducer::{apply_prepared, prepare_record, prepare_record_hashed};
    let (g, node, records) = happy_records();
    assert!(records.len() > 10, "{} records", records.len());
    let mut replay = NodeState::new(g).unwrap();
    for r in records {
        let fresh = prepare_record(r.clone()).unwrap();
        let hashed = prepare_record_hashed(r.clone(), r.hash()).unwrap();
        assert_eq!(fresh, hashed);
        assert_eq!(hashed.content_hash(), r.proposal().content_hash().unwrap());
        apply_prepared(&mut replay, &hashed, Verify::Trusted).unwrap();
    }
    assert_eq!(replay.root_hash(), node.root_hash());
}

/// The lean replay check that recovery and followers run decides exactly as
/// the full one: the same state after every record, and the same verdict on
/// every tampered copy of it (refusals leave the node untouched).
#[test]
fn lean_replay_check_matches_the_full_one() {
    use swoosh_core::guards::Verify;
    use swoosh_core::reducer::{apply_prepared, apply_prepared_check, prepare_record};
    let (g, node, records) = happy_records();
    type Tamper = fn(&mut swoosh_core::record::WalRecord);
    let tampers: Vec<(&str, Tamper)> = vec![
        ("post hash", |r| r.state_post_hash = Hash::of_bytes(b"x")),
        ("pre hash", |r| r.state_pre_hash = Hash::of_bytes(b"x")),
        ("decision", |r| r.decision = Hash::of_bytes(b"x")),
        ("outcome reason", |r| {
            r.guard_outcomes[0].reasons.push("extra".into())
        }),
        ("outcome dropped", |r| {
            r.guard_outcomes.pop();
        }),
        ("evidence", |r| r.evidence.push("ucxl://elsewhere".into())),
        ("idem key", |r| r.idem_key.push('x')),
        ("timestamp", |r| r.timestamp_ms += 1),
        ("transition", |r| r.transition = "Control_Pause".into()),
    ];
    let mut full = NodeState::new(g.clone()).unwrap();
    let mut lean = NodeState::new(g).unwrap();
    let mut refused = 0;
    for r in &records {
        for (what, tamper) in &tampers {
            let mut t = r.clone();
            tamper(&mut t);
            let Ok(prep) = prepare_record(t) else {
                continue;
            };
            let (mut f, mut l) = (full.clone(), lean.clone());
            let vf = apply_prepared(&mut f, &prep, Verify::Trusted).map(|_| ());
            let vl = apply_prepared_check(&mut l, &prep, Verify::Trusted);
            assert_eq!(vf, vl, "record {} with its {what} changed", r.index);
            assert_eq!(f, l, "record {} with its {what} changed", r.index);
            refused += usize::from(vf.is_err());
        }
        let prep = prepare_record(r.clone()).unwrap();
        apply_prepared(&mut full, &prep, Verify::Trusted).unwrap();
        apply_prepared_check(&mut lean, &prep, Verify::Trusted).unwrap();
        assert_eq!(full, lean, "after record {}", r.index);
    }
    assert_eq!(lean.root_hash(), node.root_hash());
    assert!(refused > records.len() * 6, "{refused} refusals");
}
