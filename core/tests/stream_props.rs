//! Property: random streams of valid and faulty proposals over several
//! projects never violate an invariant, never accept a proposal that must
//! fail, and replay (twice, and through encode/decode of the whole node
//! state) to the same hashes; and the memoized project hashes (see
//! `ProjectState::hash_memo`) always equal the hash computed from scratch.

use proptest::prelude::*;
use swoosh_core::cbor::{from_canonical, to_canonical};
use swoosh_core::guards::Verify;
use swoosh_core::invariants::{check_state, check_transition};
use swoosh_core::record::WalRecord;
use swoosh_core::reducer::{apply_record, step, Ctx, Outcome};
use swoosh_core::scenario::{genesis, Driver, Fault, Keys, Next};
use swoosh_core::state::{HashMemo, NodeState};
use swoosh_core::Proposal;

const ORIGIN_MS: u64 = 1_767_225_600_000;
const STEPS: usize = 2_500;
const PROJECTS: [&str; 4] = ["default", "atlas", "borealis", "cygnus"];

#[derive(Clone, Debug)]
struct Op {
    project: usize,
    /// `None` = the driver's valid next step.
    fault: Option<Fault>,
    advance_ms: u64,
    pick: u64,
}

fn op() -> impl Strategy<Value = Op> {
    // Terminate is terminal, so it is kept rare; every other fault is common
    // enough to occur many times per case.
    let faults: Vec<Fault> = Fault::ALL
        .into_iter()
        .filter(|f| *f != Fault::Terminate)
        .collect();
    let fault = prop_oneof![
        3000 => Just(None),
        300 => proptest::sample::select(faults).prop_map(Some),
        1 => Just(Some(Fault::Terminate)),
    ];
    (
        0..PROJECTS.len(),
        fault,
        prop_oneof![3 => 0u64..20, 1 => 0u64..700],
        any::<u64>(),
    )
        .prop_map(|(project, fault, advance_ms, pick)| Op {
            project,
            fault,
            advance_ms,
            pick,
        })
}

struct Run {
    node: NodeState,
    stream: Vec<(Proposal, u64)>,
    records: Vec<WalRecord>,
    hashes: Vec<swoosh_core::Hash>,
}

fn ctx(now_ms: u64) -> Ctx {
    Ctx {
        now_ms,
        verify: Verify::Full,
        snapshot_every: 0,
    }
}

fn run(ops: &[Op]) -> Result<Run, TestCaseError> {
    let keys = Keys::from_labels("stream", 3);
    let driver = Driver::new(&keys, u64::MAX);
    let mut node = NodeState::new(genesis(&keys, "stream", ORIGIN_MS)).unwrap();
    let mut now = ORIGIN_MS + 1;
    let (mut stream, mut records, mut hashes, mut accepted) = (vec![], vec![], vec![], vec![]);
    let mut shared_memo = HashMemo::default();
    // Cycle through the ops until STEPS proposals were applied, so every case
    // really exercises that many steps.
    for o in ops.iter().cycle().take(ops.len() * 4) {
        if stream.len() >= STEPS {
            break;
        }
        now += o.advance_ms;
        let project = PROJECTS[o.project];
        let st = node.project(project);
        // Operators release quarantines now and then, so streams go on.
        let fault = if st.policy.phase == "QUARANTINED" && o.pick % 4 == 0 {
            Some(Fault::Release)
        } else {
            o.fault
        };
        drop(st);
        let proposal = match fault {
            None => match driver.next(&node, project, now) {
                Next::Propose(p) => *p,
                Next::WaitMs(ms) => {
                    now += ms;
                    match driver.next(&node, project, now) {
                        Next::Propose(p) => *p,
                        _ => continue,
                    }
                }
                Next::Done => continue,
            },
            Some(f) => match driver.fault(&node, project, now, f, &accepted, o.pick) {
                Some(p) => p,
                None => continue,
            },
        };
        let pre = node.project(project).into_owned();
        let s = step(&mut node, &proposal, &ctx(now));
        stream.push((proposal.clone(), now));
        match &s.outcome {
            Outcome::Accepted(acc) => {
                if let Some(f) = fault {
                    prop_assert!(
                        !f.must_fail(),
                        "fault {f:?} was accepted: {}",
                        proposal.transition
                    );
                }
                let post = node.project(project);
                // The memoized post hash the reducer recorded is the hash of
                // the whole document from scratch, and so is a memo shared by
                // every project (it mostly holds other projects' sections).
                let scratch = post.hash();
                prop_assert_eq!(
                    acc.record.state_post_hash,
                    scratch,
                    "memoized hash differs after {}",
                    acc.record.transition
                );
                prop_assert_eq!(node.projects[project].hash, scratch);
                prop_assert_eq!(post.hash_memo(&mut shared_memo), scratch);
                let v = check_transition(&pre, &post, &acc.record);
                prop_assert!(
                    v.is_empty(),
                    "violations after {}: {v:?}",
                    acc.record.transition
                );
                let v = check_state(&post);
                prop_assert!(
                    v.is_empty(),
                    "state violations after {}: {v:?}",
                    acc.record.transition
                );
                records.push(acc.record.clone());
                accepted.push(proposal);
            }
            Outcome::Duplicate(e) => {
                prop_assert_eq!(fault, Some(Fault::Replay));
                prop_assert!(e.index <= node.index);
            }
            Outcome::Rejected(r) => {
                prop_assert!(
                    !r.reasons.is_empty() && r.reasons.iter().all(|x| x.len() > 10),
                    "reasons must explain: {r:?}"
                );
                prop_assert!(
                    fault.is_some() || r.guard == "backbeat" || r.guard == "license",
                    "a valid step was refused: {r:?}"
                );
            }
        }
        hashes.push(node.root_hash());
        now += 1;
    }
    Ok(Run {
        node,
        stream,
        records,
        hashes,
    })
}

proptest! {
    // 4 cases × 2,500 operations = 10,000 steps in the default suite.
    #![proptest_config(ProptestConfig { cases: 4, max_shrink_iters: 0, ..ProptestConfig::default() })]

    #[test]
    fn random_streams_keep_every_invariant_and_replay_identically(ops in proptest::collection::vec(op(), STEPS)) {
        let a = run(&ops)?;
        if a.stream.len() < STEPS {
            for p in PROJECTS {
                let st = a.node.project(p);
                eprintln!("{p}: {} boot={} ing={} council={} env={} exec={} control={} policy={} elected={} ejected={} lic={:?}", st.meta.phase, st.boot.phase, st.ingestion.phase, st.council.phase, st.environment.phase, st.execution.phase, st.control.phase, st.policy.phase, st.council.elected.len(), st.council.ejected.len(), st.boot.license.as_ref().map(|l| l.expires_at));
            }
            let keys = Keys::from_labels("stream", 3);
            let driver = Driver::new(&keys, u64::MAX);
            for p in PROJECTS { eprintln!("next {p}: {:?}", match driver.next(&a.node, p, a.stream.last().unwrap().1 + 5) { Next::Propose(x) => x.transition.clone(), o => format!("{o:?}") }); }
        }
        // A stream ends early only when every project was terminated (the
        // rare Terminate fault, replayed as the ops cycle, can reach all
        // four): then the driver is done with each of them.
        let all_terminated = PROJECTS
            .iter()
            .all(|p| a.node.project(p).meta.phase == "TERMINATED");
        prop_assert!(
            a.stream.len() == STEPS || all_terminated,
            "the stream stalled at {} of {STEPS} proposals",
            a.stream.len()
        );
        eprintln!("accepted {} of {} proposals; loops {:?}", a.records.len(), a.stream.len(), PROJECTS.iter().map(|p| a.node.project(p).execution.loops).collect::<Vec<_>>());

        // The same proposals applied again give the same hash after every step.
        let keys = Keys::from_labels("stream", 3);
        let fresh = || NodeState::new(genesis(&keys, "stream", ORIGIN_MS)).unwrap();
        let mut b = fresh();
        for (i, (p, now)) in a.stream.iter().enumerate() {
            step(&mut b, p, &ctx(*now));
            prop_assert_eq!(b.root_hash(), a.hashes[i], "divergence at stream step {}", i);
        }
        prop_assert_eq!(&b, &a.node);

        // Again, with the whole node state encoded and decoded between steps.
        let mut c = fresh();
        for (i, (p, now)) in a.stream.iter().enumerate() {
            if i % 100 == 0 {
                let bytes = to_canonical(&c).unwrap();
                c = from_canonical(&bytes).unwrap();
            }
            step(&mut c, p, &ctx(*now));
            prop_assert_eq!(c.root_hash(), a.hashes[i]);
        }

        // Replaying the WAL records alone reproduces the node.
        let mut d = fresh();
        for r in &a.records {
            apply_record(&mut d, r, Verify::Trusted).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        prop_assert_eq!(d.root_hash(), a.node.root_hash());
        prop_assert_eq!(d.head_record, a.node.head_record);
    }
}
