//! The scripted happy path: BOOT → lifecycle → three execution loops, for
//! several projects, with the invariant checker after every step.

use swoosh_core::invariants::{check_state, check_transition};
use swoosh_core::reducer::Outcome;
use swoosh_core::scenario::{genesis, run_happy_path, Driver, Keys};
use swoosh_core::state::NodeState;

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
