//! Checks of what the cluster answered to a fault, written as functions of
//! the answer alone so the tests can hand them a wrong answer (a forgery
//! applied, a replay taken for a new proposal, a bad vote counted) and see
//! them fire, without a knob in the production code that makes it misbehave.

use swoosh_core::hash::Hash;
use swoosh_core::reducer::Outcome;
use swoosh_net::proto::{FollowerEffect, VoteOutcome, VoteRejection};

/// A forged message delivered to a running follower must be refused with
/// `expected` (a `RefusedMessage::kind`), and nothing else may come of it:
/// no record applied, no snapshot installed, no halt. Returns the refusal,
/// or what the follower did instead.
pub fn forged_refused(effects: &[FollowerEffect], expected: &str) -> Result<(), String> {
    let mut refusals = vec![];
    let mut other = vec![];
    for e in effects {
        match e {
            FollowerEffect::Refused(r) => refusals.push(r.kind()),
            FollowerEffect::Applied(recs) => other.push(format!(
                "applied records {}",
                recs.iter()
                    .map(|r| r.record.index.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            FollowerEffect::InstallSnapshot { index, .. } => {
                other.push(format!("installed a snapshot at {index}"))
            }
            FollowerEffect::Halted(d) => other.push(format!("halted at {}: {}", d.index, d.reason)),
            // A request for a gap the forgery did not open is harmless.
            FollowerEffect::Send(_) => {}
        }
    }
    match (refusals.as_slice(), other.is_empty()) {
        ([k], true) if *k == expected => Ok(()),
        ([], _) => Err(format!(
            "it was not refused{}",
            if other.is_empty() {
                String::new()
            } else {
                format!(" ({})", other.join("; "))
            }
        )),
        _ => Err(format!(
            "refusals {refusals:?} (expected one {expected}){}",
            if other.is_empty() {
                String::new()
            } else {
                format!(", and it {}", other.join("; "))
            }
        )),
    }
}

/// Forged messages delivered to each running follower, and how many of
/// them it refused as it must.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForgeryTally {
    pub delivered: Vec<u64>,
    pub refused: Vec<u64>,
}

impl ForgeryTally {
    pub fn new(followers: usize) -> ForgeryTally {
        ForgeryTally {
            delivered: vec![0; followers],
            refused: vec![0; followers],
        }
    }

    /// One forged message delivered to follower `i` (0-based).
    pub fn record(&mut self, i: usize, refused: bool) {
        self.delivered[i] += 1;
        if refused {
            self.refused[i] += 1;
        }
    }

    /// One line per follower that did not refuse every forgery it got.
    pub fn mismatches(&self) -> Vec<String> {
        self.delivered
            .iter()
            .zip(&self.refused)
            .enumerate()
            .filter(|(_, (d, r))| d != r)
            .map(|(i, (d, r))| {
                format!(
                    "follower {} was delivered {d} forged message(s) and refused {r}",
                    i + 1
                )
            })
            .collect()
    }
}

/// A replay (the very proposal accepted before) must be answered as a
/// duplicate carrying the original record's index and post hash.
/// `original` is what the first acceptance answered; `None` when the
/// simulator lost track of it (itself a finding).
pub fn check_replay(original: Option<(u64, Hash)>, outcome: &Outcome) -> Option<String> {
    let Some((index, post)) = original else {
        return Some("a replay of a proposal with no recorded acceptance".into());
    };
    match outcome {
        Outcome::Duplicate(e) if e.index == index && e.state_post_hash == post => None,
        Outcome::Duplicate(e) => Some(format!(
            "a replay of record {index} was answered as a duplicate of record {} with post hash {}, not the original's {post}",
            e.index, e.state_post_hash
        )),
        Outcome::Accepted(a) => Some(format!(
            "a replay of record {index} was accepted again as new record {}",
            a.record.index
        )),
        Outcome::Rejected(r) => Some(format!(
            "a replay of record {index} was refused by {} ({}) instead of answered with the original outcome",
            r.guard,
            r.reasons.join("; ")
        )),
    }
}

/// A bad vote must be refused by the collector: for the reason its fault
/// planted, or one the collector checks first that applies anyway (no
/// election open any more; an ejected voter, checked before the genesis,
/// the epoch and the member set). The signature is checked after every
/// field check (`CouncilCollector::on_vote`: it costs ~50 µs and any peer
/// can send votes), so a forged copy of a vote whose fields no longer fit
/// the election (its voter ejected or off the roster, its election moved
/// on) is refused for that instead.
pub fn check_bad_vote(expected: VoteRejection, outcome: &VoteOutcome) -> Option<String> {
    use VoteRejection::*;
    let earlier_ok = |r: VoteRejection| {
        r == NoElection
            || (r == Ejected && matches!(expected, WrongGenesis | StaleEpoch | WrongMemberSet))
            || (expected == BadSignature
                && matches!(
                    r,
                    Outsider | Ejected | WrongGenesis | StaleEpoch | WrongMemberSet
                ))
    };
    match outcome {
        VoteOutcome::Rejected(r) if *r == expected || earlier_ok(*r) => None,
        VoteOutcome::Rejected(r) => Some(format!(
            "refused as {} instead of {}",
            r.name(),
            expected.name()
        )),
        VoteOutcome::Counted { .. } => Some("counted".into()),
        VoteOutcome::Duplicate => Some("taken as a repeat of a counted vote".into()),
        VoteOutcome::Certificate(_) => Some("counted, and it completed a certificate".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::{forge_batch, forge_head, Forgery};
    use swoosh_core::guards::Verify;
    use swoosh_core::reducer::{apply_record, step, Ctx, Rejection};
    use swoosh_core::scenario::{genesis, Driver, Keys, Next};
    use swoosh_core::sig::SignerId;
    use swoosh_core::state::{IdemEntry, NodeState};
    use swoosh_net::proto::wire::WalBatch;
    use swoosh_net::proto::{
        AppliedRecord, FollowerConfig, Gossip, LeaderConfig, ReplFollower, ReplLeader,
    };

    const T0: u64 = 1_767_225_600_000;

    /// A real signed batch of the first `n` records of project `default`,
    /// with the node state before it.
    fn batch(keys: &Keys, n: usize) -> (NodeState, WalBatch, Gossip) {
        let g = genesis(keys, "chaos", T0);
        let start = NodeState::new(g.clone()).unwrap();
        let mut node = start.clone();
        let driver = Driver::new(keys, u64::MAX);
        let mut leader = ReplLeader::new(
            LeaderConfig::default(),
            keys.leader.clone(),
            &g,
            0,
            start.genesis_hash,
        )
        .unwrap();
        let mut now = T0 + 1;
        for _ in 0..n {
            let Next::Propose(p) = driver.next(&node, "default", now) else {
                panic!("the driver has a first step")
            };
            let ctx = Ctx {
                now_ms: now,
                verify: Verify::Full,
                snapshot_every: 0,
            };
            let Outcome::Accepted(a) = step(&mut node, &p, &ctx).outcome else {
                panic!("the driver's step is accepted")
            };
            assert!(leader.on_committed(&a.record).unwrap().is_empty());
            now += 10;
        }
        let mut out = leader.flush();
        let swoosh_net::proto::LeaderEffect::Publish(g) = out.pop().unwrap();
        let Gossip::Batch(b) = &g else { panic!() };
        (start, b.clone(), g)
    }

    #[test]
    fn a_forged_batch_differs_only_where_the_signature_can_tell() {
        let keys = Keys::from_labels("chaos", 3);
        let (start, real, _) = batch(&keys, 3);
        for how in Forgery::ALL {
            let f = forge_batch(&real, how, &keys, 7);
            // Self-consistent: each record hashes to the header's hash and
            // the chain links, so only origin and signature checks remain.
            for (i, r) in f.records.iter().enumerate() {
                assert_eq!(r.hash(), f.header.record_hashes[i], "{how:?}");
                let prev = if i == 0 {
                    f.header.prev_hash
                } else {
                    f.header.record_hashes[i - 1]
                };
                assert_eq!(r.prev_hash, prev);
            }
            assert_ne!(f.header.record_hashes, real.header.record_hashes);
            // Accepting it forks the follower: the altered record replays,
            // under a hash the leader never wrote.
            let mut node = start.clone();
            for r in &f.records {
                apply_record(&mut node, r, Verify::Trusted).unwrap();
            }
            assert_ne!(node.head_record, *real.header.record_hashes.last().unwrap());
            // A real follower refuses it as the forgery's kind says.
            let id = SignerId::from_signing_key(&keys.worker);
            let mut fol = ReplFollower::new(FollowerConfig::default(), id, start.clone());
            let eff = fol.on_gossip(&Gossip::Batch(f), T0);
            assert_eq!(
                forged_refused(&eff, how.expected_refusal()),
                Ok(()),
                "{how:?}"
            );
            assert_eq!(fol.applied_index(), 0);
        }
    }

    #[test]
    fn a_forged_head_is_refused_and_would_halt_a_follower_on_its_index() {
        let keys = Keys::from_labels("chaos", 3);
        let (start, _, _) = batch(&keys, 1);
        let id = SignerId::from_signing_key(&keys.worker);
        let leader = ReplLeader::new(
            LeaderConfig::default(),
            keys.leader.clone(),
            &start.genesis,
            0,
            start.genesis_hash,
        )
        .unwrap();
        let Gossip::Head(head) = leader.head(1) else {
            panic!()
        };
        for how in Forgery::ALL {
            let f = forge_head(&head, how, &keys, 99, 0);
            let mut fol = ReplFollower::new(FollowerConfig::default(), id.clone(), start.clone());
            let eff = fol.on_gossip(&Gossip::Head(f.clone()), T0);
            assert_eq!(
                forged_refused(&eff, how.expected_refusal()),
                Ok(()),
                "{how:?}"
            );
            assert!(fol.halted().is_none());
        }
        // The same lie under the leader's own signature halts a follower
        // standing on that index: what accepting a forged head would do.
        let mut f = forge_head(&head, Forgery::Altered, &keys, 99, 0);
        f.signature = swoosh_core::sig::sign(
            swoosh_net::proto::wire::WAL_HEAD_DOMAIN,
            &f.body,
            &keys.leader,
        )
        .unwrap();
        let mut fol = ReplFollower::new(FollowerConfig::default(), id, start);
        let eff = fol.on_gossip(&Gossip::Head(f), T0);
        assert!(fol.halted().is_some(), "{eff:?}");
        assert!(forged_refused(&eff, "bad_signature").is_err());
    }

    #[test]
    fn the_forgery_check_fires_on_a_follower_that_accepts() {
        let keys = Keys::from_labels("chaos", 3);
        let (_, real, _) = batch(&keys, 1);
        let rec = real.records[0].clone();
        let applied = FollowerEffect::Applied(vec![AppliedRecord {
            hash: rec.hash(),
            record: rec,
            bytes: vec![],
            content_hash: Hash::of_bytes(b"x"),
        }]);
        let e = forged_refused(std::slice::from_ref(&applied), "bad_signature").unwrap_err();
        assert!(
            e.contains("not refused") && e.contains("applied records 1"),
            "{e}"
        );
        // Refused for another reason than the forgery's is flagged too.
        let refused = FollowerEffect::Refused(swoosh_net::proto::RefusedMessage::Shape("x".into()));
        assert!(forged_refused(std::slice::from_ref(&refused), "bad_signature").is_err());
        assert!(forged_refused(&[refused, applied], "shape").is_err());
        // Per follower: one forgery not refused shows up at the end.
        let mut t = ForgeryTally::new(2);
        t.record(0, true);
        t.record(1, true);
        t.record(1, false);
        let m = t.mismatches();
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].contains("follower 2 was delivered 2 forged message(s) and refused 1"));
    }

    #[test]
    fn the_replay_check_wants_the_original_index_and_post_hash() {
        let post = Hash::of_bytes(b"post");
        let dup = |index, post| {
            Outcome::Duplicate(IdemEntry {
                content_hash: Hash::of_bytes(b"c"),
                transition: "Boot_ConfigOk".into(),
                index,
                state_post_hash: post,
                decision: Hash::of_bytes(b"d"),
            })
        };
        assert_eq!(check_replay(Some((7, post)), &dup(7, post)), None);
        assert!(check_replay(Some((7, post)), &dup(8, post))
            .unwrap()
            .contains("duplicate of record 8"));
        assert!(check_replay(Some((7, post)), &dup(7, Hash::of_bytes(b"other"))).is_some());
        assert!(check_replay(None, &dup(7, post)).is_some());
        let refused = Outcome::Rejected(Rejection {
            kind: swoosh_core::reducer::RejectKind::Guard,
            guard: "state_hash".into(),
            reasons: vec!["stale".into()],
            head_hash: None,
            hlc_last: None,
            retry_after_ms: None,
        });
        assert!(check_replay(Some((7, post)), &refused)
            .unwrap()
            .contains("refused by state_hash"));
        let keys = Keys::from_labels("chaos", 3);
        let mut node = NodeState::new(genesis(&keys, "chaos", T0)).unwrap();
        let driver = Driver::new(&keys, u64::MAX);
        let Next::Propose(p) = driver.next(&node, "default", T0 + 1) else {
            panic!()
        };
        let ctx = Ctx {
            now_ms: T0 + 1,
            verify: Verify::Full,
            snapshot_every: 0,
        };
        let accepted = step(&mut node, &p, &ctx).outcome;
        assert!(check_replay(Some((7, post)), &accepted)
            .unwrap()
            .contains("accepted again"));
        // The same proposal again, through the reducer: the original answer.
        let Outcome::Accepted(a) = &accepted else {
            panic!()
        };
        let again = step(&mut node, &p, &ctx).outcome;
        assert_eq!(
            check_replay(Some((a.record.index, a.record.state_post_hash)), &again),
            None
        );
    }

    #[test]
    fn the_bad_vote_check_fires_on_a_counted_vote() {
        use VoteRejection::*;
        assert_eq!(
            check_bad_vote(BadSignature, &VoteOutcome::Rejected(BadSignature)),
            None
        );
        assert_eq!(
            check_bad_vote(Outsider, &VoteOutcome::Rejected(NoElection)),
            None
        );
        assert!(check_bad_vote(StaleEpoch, &VoteOutcome::Rejected(Outsider)).is_some());
        assert_eq!(
            check_bad_vote(StaleEpoch, &VoteOutcome::Rejected(Ejected)),
            None
        );
        assert_eq!(
            check_bad_vote(BadSignature, &VoteOutcome::Rejected(Ejected)),
            None,
            "the signature is checked after the voter"
        );
        assert!(check_bad_vote(Outsider, &VoteOutcome::Rejected(BadSignature)).is_some());
        assert_eq!(
            check_bad_vote(WrongGenesis, &VoteOutcome::Rejected(Ejected)),
            None
        );
        assert!(check_bad_vote(WrongGenesis, &VoteOutcome::Rejected(StaleEpoch)).is_some());
        let counted = VoteOutcome::Counted {
            approvals: 1,
            noes: 0,
        };
        assert_eq!(
            check_bad_vote(BadSignature, &counted).as_deref(),
            Some("counted")
        );
        assert!(check_bad_vote(BadSignature, &VoteOutcome::Duplicate).is_some());
    }
}
