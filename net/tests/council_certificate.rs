//! A council certificate holds exactly the quorum threshold of approving
//! votes, chosen by voter: with every approval collected, a large council's
//! certificate proposal outgrew `INPUTS_BYTES_MAX` and was refused at every
//! resend, so the council was never elected.

use swoosh_core::guards::Verify;
use swoosh_core::proposal::INPUTS_BYTES_MAX;
use swoosh_core::reducer::{step, Ctx, Outcome};
use swoosh_core::scenario::{genesis, Driver, Keys, Next};
use swoosh_core::state::NodeState;
use swoosh_net::proto::council::{
    certificate_proposal, electable_members, Certificate, CertificateError, CouncilAgent,
    CouncilCollector, VoteOutcome, VotePolicy,
};

const ORIGIN_MS: u64 = 1_767_225_600_000;

/// A node whose `project` sits in Council ELECT (first election), with the
/// scenario genesis' threshold (a majority of the council) or `threshold`.
fn at_elect(keys: &Keys, project: &str, threshold: Option<u32>) -> NodeState {
    let mut g = genesis(keys, "big-council", ORIGIN_MS);
    if let Some(t) = threshold {
        g.quorum_threshold = t;
    }
    let mut node = NodeState::new(g).unwrap();
    let d = Driver::new(keys, 1);
    for now in ORIGIN_MS + 1..ORIGIN_MS + 101 {
        if node.project(project).council.phase == "ELECT" {
            return node;
        }
        let Next::Propose(p) = d.next(&node, project, now) else {
            panic!("driver stalled")
        };
        let s = step(&mut node, &p, &ctx(now));
        assert!(matches!(s.outcome, Outcome::Accepted(_)), "{:?}", s.outcome);
    }
    panic!("never reached ELECT");
}

fn ctx(now_ms: u64) -> Ctx {
    Ctx {
        now_ms,
        verify: Verify::Full,
        snapshot_every: 0,
    }
}

/// Every council agent of `keys` approves, in `order`; the collector's
/// certificate once all votes are in.
fn elect(keys: &Keys, node: &NodeState, order: &[usize]) -> (Certificate, Certificate) {
    elect_in(keys, node, "default", order)
}

fn elect_in(
    keys: &Keys,
    node: &NodeState,
    project: &str,
    order: &[usize],
) -> (Certificate, Certificate) {
    let g = node.genesis.clone();
    let st = node.project(project).into_owned();
    let mut col = CouncilCollector::new(keys.leader.clone(), &g);
    let ann = col.open(&st, &electable_members(&st)).unwrap();
    let mut first = None;
    for &i in order {
        let mut a = CouncilAgent::new(keys.council[i].clone(), &g, VotePolicy::ApproveAll);
        match col.on_vote(&a.on_announce(&ann).unwrap()) {
            VoteOutcome::Certificate(c) => first = Some(c),
            VoteOutcome::Counted { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    let first = first.expect("the quorum was reached");
    (first, col.certificate(project).expect("certified"))
}

#[test]
fn a_large_councils_certificate_holds_the_threshold_of_votes_and_is_accepted() {
    let council = 200;
    let keys = Keys::from_labels("big-council", council);
    let node = at_elect(&keys, "default", None);
    let threshold = node.project("default").council.quorum_threshold as usize;
    assert_eq!(threshold, council / 2 + 1);
    let order: Vec<usize> = (0..council).collect();
    let (first, cert) = elect(&keys, &node, &order);
    for c in [&first, &cert] {
        assert_eq!(c.votes.len(), threshold, "exactly the threshold of votes");
        assert!(
            c.votes
                .windows(2)
                .all(|w| w[0].body.voter < w[1].body.voter),
            "distinct, sorted by voter"
        );
        assert!(c.votes.iter().all(|v| v.body.approve));
    }
    // The certificate is fixed when the quorum is reached: the approvals
    // that reached it, sorted by voter. The ones after it change nothing,
    // so every resend of its proposal (one idempotency key) carries the
    // same inputs; a set chosen again on each resend changed when a late
    // approval sorted first, and a resend after an unacknowledged attempt
    // met an idempotency conflict.
    assert_eq!(first, cert, "votes after the quorum do not change it");
    for order in [
        (0..council).collect::<Vec<_>>(),
        (0..council).rev().collect(),
    ] {
        let (first, cert) = elect(&keys, &node, &order);
        assert_eq!(first, cert);
        let mut reached: Vec<_> = order[..threshold]
            .iter()
            .map(|&i| swoosh_core::sig::SignerId::from_signing_key(&keys.council[i]))
            .collect();
        reached.sort();
        let chosen: Vec<_> = cert.votes.iter().map(|v| v.body.voter.clone()).collect();
        assert_eq!(chosen, reached);
    }

    // The resent certificate's proposal fits and the quorum guard takes it.
    let now = ORIGIN_MS + 1_000;
    let p = certificate_proposal(&cert, &node, &keys.leader, now).unwrap();
    let size = swoosh_core::cbor::value_to_canonical(p.inputs.clone())
        .unwrap()
        .len();
    assert!(size <= INPUTS_BYTES_MAX, "{size} bytes of inputs");
    let mut node = node;
    let s = step(&mut node, &p, &ctx(now));
    assert!(matches!(s.outcome, Outcome::Accepted(_)), "{:?}", s.outcome);
    assert_eq!(node.project("default").council.phase, "TOOLING_SYNC");
}

/// The largest certificate a new genesis allows still fits one proposal:
/// the most council members a roster holds, the largest threshold
/// `validate_new` accepts, the longest project id, and votes bound to the
/// genesis (81 bytes more each than unbound ones).
#[test]
fn the_largest_certificate_a_new_genesis_allows_fits_one_proposal() {
    use swoosh_core::state::{PROJECT_ID_BYTES_MAX, QUORUM_THRESHOLD_MAX, ROSTER_ENTRIES_MAX};
    let council = ROSTER_ENTRIES_MAX - 5; // the scenario's 5 other roster entries
    let keys = Keys::from_labels("big-council", council);
    let project = format!("p{}", "x".repeat(PROJECT_ID_BYTES_MAX - 1));
    let node = at_elect(&keys, &project, Some(QUORUM_THRESHOLD_MAX));
    node.genesis
        .validate_new()
        .expect("a genesis a new cluster may have");
    let order: Vec<usize> = (0..council).collect();
    let (_, cert) = elect_in(&keys, &node, &project, &order);
    assert_eq!(cert.votes.len(), QUORUM_THRESHOLD_MAX as usize);
    assert_eq!(cert.members.len(), council);
    assert!(cert.votes.iter().all(|v| v.body.genesis.is_some()));
    let now = ORIGIN_MS + 1_000;
    let p = certificate_proposal(&cert, &node, &keys.leader, now).unwrap();
    let mut node = node;
    let s = step(&mut node, &p, &ctx(now));
    assert!(matches!(s.outcome, Outcome::Accepted(_)), "{:?}", s.outcome);
    assert_eq!(node.project(&project).council.phase, "TOOLING_SYNC");
}

/// A threshold so large that even its votes alone outgrow the inputs limit
/// is named when the proposal is built, not refused by the node at every
/// resend.
#[test]
fn a_certificate_too_large_for_one_proposal_is_refused_with_the_reason() {
    let council = 251; // ROSTER_ENTRIES_MAX less the scenario's 5 others
    let keys = Keys::from_labels("big-council", council);
    let node = at_elect(&keys, "default", Some(council as u32));
    let order: Vec<usize> = (0..council).collect();
    let (_, cert) = elect(&keys, &node, &order);
    assert_eq!(cert.votes.len(), council);
    let err = certificate_proposal(&cert, &node, &keys.leader, ORIGIN_MS + 1_000).unwrap_err();
    assert!(
        matches!(err, CertificateError::TooLarge { votes: 251, members: 251, bytes } if bytes > INPUTS_BYTES_MAX),
        "{err:?}"
    );
    assert!(err.to_string().contains("quorum_threshold"), "{err}");
}

/// An agent that voted no and then approves (restarted without
/// `--vote-no`, its memory of the no gone) is counted: its approval used to
/// be a duplicate, holding the election short until the leader restarted.
/// A no after an approval stays a duplicate (the approval may be in the
/// certificate).
#[test]
fn an_approval_after_a_no_replaces_it_and_a_no_after_an_approval_is_a_duplicate() {
    let council = 3;
    let keys = Keys::from_labels("changed-mind", council);
    let node = at_elect(&keys, "default", Some(2));
    let g = node.genesis.clone();
    let st = node.project("default").into_owned();
    let mut col = CouncilCollector::new(keys.leader.clone(), &g);
    let ann = col.open(&st, &electable_members(&st)).unwrap();
    let vote = |i: usize, policy: VotePolicy| {
        CouncilAgent::new(keys.council[i].clone(), &g, policy)
            .on_announce(&ann)
            .unwrap()
    };
    assert!(matches!(
        col.on_vote(&vote(0, VotePolicy::VoteNo)),
        VoteOutcome::Counted {
            approvals: 0,
            noes: 1
        }
    ));
    assert!(matches!(
        col.on_vote(&vote(1, VotePolicy::ApproveAll)),
        VoteOutcome::Counted {
            approvals: 1,
            noes: 1
        }
    ));
    let VoteOutcome::Certificate(c) = col.on_vote(&vote(0, VotePolicy::ApproveAll)) else {
        panic!("the changed vote reaches the threshold of 2");
    };
    assert_eq!(c.votes.len(), 2);
    assert!(matches!(
        col.on_vote(&vote(1, VotePolicy::VoteNo)),
        VoteOutcome::Duplicate
    ));
    assert!(matches!(
        col.on_vote(&vote(2, VotePolicy::ApproveAll)),
        VoteOutcome::Counted {
            approvals: 3,
            noes: 0
        }
    ));
    assert_eq!(col.certificate("default"), Some(c), "fixed at the quorum");
}
