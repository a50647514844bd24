//! Invariants checked after every step by the tests, the simulator and
//! `swoosh demo` (the node does not run them). Each check is independent of
//! the reducer's code path: it reads the registry (the spec) and compares
//! pre and post.

use crate::facts::{member_set_hash, Vote};
use crate::hash::hash_of;
use crate::hlc::order_key_cmp;
use crate::record::WalRecord;
use crate::sig::SignerId;
use crate::state::{Genesis, ProjectState};
use crate::statechart::{self, Region, Role, AUTOMATIC};
use std::cmp::Ordering;
use std::collections::BTreeSet;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

fn v(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// Check one accepted transition of one project.
pub fn check_transition(
    pre: &ProjectState,
    post: &ProjectState,
    rec: &WalRecord,
) -> Vec<Violation> {
    let mut out = vec![];
    let Some(spec) = statechart::lookup(&rec.transition) else {
        return vec![v(
            "known_transition",
            format!(
                "record {} names unknown transition {}",
                rec.index, rec.transition
            ),
        )];
    };

    // HLC monotone (with the signer/idem_key tie-break)
    match (pre.hlc_last, &pre.order_last, post.hlc_last) {
        (_, _, None) => out.push(v("hlc_monotone", "post state has no hlc_last".into())),
        (Some(a), Some(ord), Some(b)) => {
            let c = order_key_cmp(
                (&b, &rec.signer.to_string(), &rec.idem_key),
                (&a, &ord.signer.to_string(), &ord.idem_key),
            );
            if c != Ordering::Greater {
                out.push(v(
                    "hlc_monotone",
                    format!("record {}: hlc {b} does not follow {a}", rec.index),
                ));
            }
        }
        _ => {}
    }
    if post.hlc_last != Some(rec.hlc) {
        out.push(v(
            "hlc_monotone",
            format!("record {}: hlc_last is not the record's hlc", rec.index),
        ));
    }

    // Exactly-once epoch advance per region advance.
    for r in Region::ALL {
        let delta = post.epoch.get(r) as i128 - pre.epoch.get(r) as i128;
        let declared = spec.to.region == r || spec.also.iter().any(|a| a.region == r);
        let changed = pre.region_state(r) != post.region_state(r);
        let automatic = !declared
            && changed
            && AUTOMATIC.iter().any(|a| {
                a.to.region == r
                    && a.to.state == post.region_state(r)
                    && a.from.iter().any(|f| f.state == pre.region_state(r))
            });
        let expected = if declared || automatic { 1 } else { 0 };
        if delta != expected {
            out.push(v(
                "epoch_exactly_once",
                format!(
                    "record {} ({}): region {} epoch moved by {delta}, expected {expected}",
                    rec.index,
                    rec.transition,
                    r.name()
                ),
            ));
        }
        if changed && !declared && !automatic {
            out.push(v(
                "declared_regions_only",
                format!(
                    "record {} ({}): region {} changed without the statechart saying so",
                    rec.index,
                    rec.transition,
                    r.name()
                ),
            ));
        }
    }

    // The transition's target state is reached.
    if post.region_state(spec.to.region) != spec.to.state {
        out.push(v(
            "target_state",
            format!(
                "record {}: {} is not in {}",
                rec.index,
                spec.to.region.name(),
                spec.to
            ),
        ));
    }

    // EXECUTION entered only with all READY and matching pins.
    if pre.meta.phase != "EXECUTION" && post.meta.phase == "EXECUTION" {
        for (name, ph) in [
            ("Ingestion", &post.ingestion.phase),
            ("Council", &post.council.phase),
            ("Environment", &post.environment.phase),
        ] {
            if ph != "READY" {
                out.push(v(
                    "execution_entry",
                    format!("record {}: EXECUTION entered with {name} {ph}", rec.index),
                ));
            }
        }
        match &post.execution.pins {
            None => out.push(v(
                "execution_entry",
                format!("record {}: EXECUTION entered without pins", rec.index),
            )),
            Some(p) => {
                if Some(p.content_hash) != post.ingestion.content_hash
                    || Some(p.index_hash) != post.ingestion.index_hash
                    || p.version != post.ingestion.version
                    || Some(p.member_set_hash) != post.council.member_set_hash
                    || Some(p.env_hash) != post.environment.env_hash
                {
                    out.push(v(
                        "execution_entry",
                        format!(
                            "record {}: EXECUTION pins do not match the READY regions",
                            rec.index
                        ),
                    ));
                }
            }
        }
    }
    // Work only advances past PLAN on pins that still match.
    if pre.execution.phase == "PLAN" && post.execution.phase == "WORK" {
        match &post.execution.pins {
            Some(p)
                if Some(p.content_hash) == post.ingestion.content_hash
                    && post.ingestion.phase == "READY" => {}
            _ => out.push(v(
                "execution_entry",
                format!(
                    "record {}: plan locked without matching READY pins",
                    rec.index
                ),
            )),
        }
    }

    // REVIEW/REVERB only inside their windows.
    if let Some(class) = spec.time_gated {
        if !post.execution.schedule.is_open(class, &rec.hlc) {
            out.push(v(
                "backbeat_window",
                format!(
                    "record {}: {} applied outside a '{class}' window at {}",
                    rec.index, rec.transition, rec.hlc
                ),
            ));
        }
    }

    // Quorum certificate matches the elected set.
    if let Some(h) = post.council.member_set_hash {
        if h != member_set_hash(&post.council.elected) {
            out.push(v(
                "quorum_matches_elected",
                format!(
                    "record {}: member_set_hash {h} is not the hash of the elected set",
                    rec.index
                ),
            ));
        }
        if post.council.quorum_cert.is_none() {
            out.push(v(
                "quorum_matches_elected",
                format!(
                    "record {}: elected set without a quorum certificate",
                    rec.index
                ),
            ));
        }
    }

    // QUARANTINED is sticky.
    if pre.policy.phase == "QUARANTINED" && post.policy.phase != "QUARANTINED" {
        let admin = pre
            .roles_of(&rec.signer)
            .is_some_and(|r| r.contains(&Role::Admin));
        if !matches!(rec.transition.as_str(), "Policy_Release" | "Policy_Update") || !admin {
            out.push(v(
                "quarantine_sticky",
                format!("record {}: {} left QUARANTINED", rec.index, rec.transition),
            ));
        }
    }
    if pre.policy.phase == "QUARANTINED" && !statechart::allowed_in_quarantine(&rec.transition) {
        out.push(v(
            "quarantine_sticky",
            format!(
                "record {}: {} applied while QUARANTINED",
                rec.index, rec.transition
            ),
        ));
    }

    // Nothing leaves TERMINATED.
    if pre.meta.phase == "TERMINATED" {
        out.push(v(
            "terminated_terminal",
            format!(
                "record {}: {} applied to a TERMINATED project",
                rec.index, rec.transition
            ),
        ));
    }

    // The record tells the truth about the states.
    if rec.state_pre_hash != pre.hash() {
        out.push(v(
            "record_pre_hash",
            format!(
                "record {}: state_pre_hash differs from the pre state",
                rec.index
            ),
        ));
    }
    if rec.state_post_hash != post.hash() {
        out.push(v(
            "record_post_hash",
            format!(
                "record {}: state_post_hash differs from the post state",
                rec.index
            ),
        ));
    }
    out
}

/// The transitions whose record stores a quorum certificate (inputs
/// `{members, votes}`).
pub const CERTIFICATE_TRANSITIONS: [&str; 2] = ["Council_QuorumCert", "Council_ReElect"];

/// Check the quorum certificate an accepted council record stores, from
/// genesis, the pre state and the record alone (not through the reducer's
/// quorum guard): every vote's signature verifies; voters are distinct,
/// hold the council role in the project's roster before the record (which
/// `Boot_SetRoster` may have changed since genesis) and are not ejected
/// from this council; every vote is for this project, this genesis (its
/// hash, or no genesis where the genesis allows unbound votes), this
/// council epoch (the pre state's) and this member set; at least
/// `quorum_threshold` of the valid votes approve (a valid "no" is allowed
/// and not counted, as the guard does); and
/// the post state elected exactly that set under the hash of exactly these
/// votes. Other transitions pass untouched.
pub fn check_quorum_certificate(
    genesis: &Genesis,
    pre: &ProjectState,
    post: &ProjectState,
    rec: &WalRecord,
) -> Vec<Violation> {
    if !CERTIFICATE_TRANSITIONS.contains(&rec.transition.as_str()) {
        return vec![];
    }
    #[derive(serde::Deserialize)]
    struct Elect {
        members: Vec<SignerId>,
        votes: Vec<Vote>,
    }
    let mut out = vec![];
    let mut bad = |detail: String| {
        out.push(v(
            "quorum_certificate",
            format!("record {} ({}): {detail}", rec.index, rec.transition),
        ))
    };
    let e: Elect = match rec.inputs.deserialized() {
        Ok(e) => e,
        Err(err) => {
            bad(format!("its inputs are not a certificate: {err}"));
            return out;
        }
    };
    let members: BTreeSet<&SignerId> = e.members.iter().collect();
    if e.members.is_empty() || members.len() != e.members.len() {
        bad(format!(
            "the member set has {} entries, {} distinct",
            e.members.len(),
            members.len()
        ));
    }
    let set_hash = member_set_hash(&e.members);
    // The roster and threshold in force before the record: `Boot_SetRoster`
    // may have changed both since genesis.
    let council = |who: &SignerId| {
        pre.roles_of(who)
            .is_some_and(|r| r.contains(&Role::Council))
    };
    let epoch = pre.epoch.council;
    // From the genesis itself, not the state the reducer built from it.
    let genesis_hash = genesis.hash().ok();
    let mut voters = BTreeSet::new();
    let mut approving = 0usize;
    for vote in &e.votes {
        let b = &vote.body;
        let mut fine = true;
        let mut flag = |why: String| {
            fine = false;
            bad(format!("vote of {}: {why}", b.voter));
        };
        if !voters.insert(&b.voter) {
            flag("a second vote by the same voter".into());
            continue;
        }
        if let Err(err) = vote.verify() {
            flag(format!("its signature does not verify ({err})"));
        }
        if !council(&b.voter) {
            flag("not a council member of the project's roster".into());
        }
        if pre.council.ejected.contains(&b.voter) {
            flag("ejected from this council".into());
        }
        if b.project != rec.project {
            flag(format!("it is for project {:?}", b.project));
        }
        match b.genesis {
            Some(h) if Some(h) != genesis_hash => flag(format!(
                "it was signed for genesis {h}, not this cluster's ({})",
                genesis_hash.map_or("unhashable".into(), |g| g.to_string())
            )),
            None if genesis.facts_bound_to_genesis => {
                flag("it names no genesis, and the genesis requires bound votes".into())
            }
            _ => {}
        }
        if b.epoch != epoch {
            flag(format!("it is for council epoch {}, not {epoch}", b.epoch));
        }
        if b.member_set_hash != set_hash {
            flag(format!(
                "it is for member set {}, the record elects {set_hash}",
                b.member_set_hash
            ));
        }
        // A valid "no" vote is allowed in a certificate and not counted.
        if fine && b.approve {
            approving += 1;
        }
    }
    let threshold = pre.council.quorum_threshold as usize;
    if approving < threshold {
        bad(format!(
            "{approving} valid approving votes; the quorum threshold is {threshold}"
        ));
    }
    let mut sorted: Vec<&Vote> = e.votes.iter().collect();
    sorted.sort_by(|a, b| a.body.voter.cmp(&b.body.voter));
    let cert = hash_of(&sorted).ok();
    if post.council.quorum_cert.is_none() || post.council.quorum_cert != cert {
        bad("the stored certificate hash is not the hash of the record's votes".into());
    }
    let mut elected = e.members.clone();
    elected.sort();
    if post.council.member_set_hash != Some(set_hash) || post.council.elected != elected {
        bad("the post state did not elect the record's member set".into());
    }
    out
}

/// Whole-document checks that hold in every reachable state.
pub fn check_state(s: &ProjectState) -> Vec<Violation> {
    let mut out = vec![];
    for r in Region::ALL {
        if !r.states().contains(&s.region_state(r)) {
            out.push(v(
                "known_state",
                format!("{} is in unknown state {}", r.name(), s.region_state(r)),
            ));
        }
    }
    if s.meta.phase == "EXECUTION" && s.execution.pins.is_none() {
        out.push(v("execution_entry", "EXECUTION without pins".into()));
    }
    if let Some(h) = s.council.member_set_hash {
        if h != member_set_hash(&s.council.elected) {
            out.push(v(
                "quorum_matches_elected",
                "member_set_hash is not the hash of the elected set".into(),
            ));
        }
    }
    if s.execution
        .approvals
        .iter()
        .any(|a| !s.council.elected.contains(a))
        && s.council.member_set_hash.is_some()
    {
        // An ejected member's earlier approval may remain until the window
        // closes; only flag approvals by signers that were never elected.
        if s.execution
            .approvals
            .iter()
            .any(|a| !s.council.elected.contains(a) && !s.council.ejected.contains(a))
        {
            out.push(v(
                "approvals_by_members",
                "an approval comes from a signer that was never elected".into(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::VoteBody;
    use crate::hash::Hash;
    use crate::hlc::Hlc;
    use crate::scenario::{genesis, Keys};
    use crate::sig::Signature;
    use crate::state::NodeState;

    struct Cert {
        genesis: Genesis,
        pre: ProjectState,
        post: ProjectState,
        members: Vec<SignerId>,
        votes: Vec<Vote>,
    }

    impl Cert {
        fn record(&self) -> WalRecord {
            #[derive(serde::Serialize)]
            struct Elect<'a> {
                members: &'a [SignerId],
                votes: &'a [Vote],
            }
            let inputs = ciborium::Value::serialized(&Elect {
                members: &self.members,
                votes: &self.votes,
            })
            .unwrap();
            WalRecord {
                index: 9,
                prev_hash: Hash::of_bytes(b"prev"),
                project: "p".into(),
                transition: "Council_QuorumCert".into(),
                state_pre_hash: self.pre.hash(),
                state_post_hash: self.post.hash(),
                inputs_hash: Hash::of_bytes(b"inputs"),
                inputs,
                signer: self.members[0].clone(),
                idem_key: "k".into(),
                hlc: Hlc::new(1, 0),
                window_id: String::new(),
                guard_outcomes: vec![],
                evidence: vec![],
                timestamp_ms: 1,
                signature: Signature([0; 64]),
                decision: Hash::of_bytes(b"decision"),
            }
        }

        fn check(&mut self) -> Vec<Violation> {
            let mut sorted: Vec<&Vote> = self.votes.iter().collect();
            sorted.sort_by(|a, b| a.body.voter.cmp(&b.body.voter));
            self.post.council.quorum_cert = Some(hash_of(&sorted).unwrap());
            let rec = self.record();
            check_quorum_certificate(&self.genesis, &self.pre, &self.post, &rec)
        }
    }

    /// A certificate of every council key approving, at council epoch 3.
    fn cert(keys: &Keys) -> Cert {
        let genesis = genesis(keys, "chaos", 1_767_225_600_000);
        let mut pre = NodeState::new(genesis.clone())
            .unwrap()
            .project("p")
            .into_owned();
        pre.epoch.council = 3;
        let mut members: Vec<SignerId> = keys
            .council
            .iter()
            .map(SignerId::from_signing_key)
            .collect();
        members.sort();
        let votes = keys
            .council
            .iter()
            .map(|k| {
                Vote::cast(
                    VoteBody {
                        project: "p".into(),
                        epoch: 3,
                        member_set_hash: member_set_hash(&members),
                        approve: true,
                        voter: SignerId::from_signing_key(k),
                        genesis: Some(pre.meta.genesis),
                    },
                    k,
                )
            })
            .collect();
        let mut post = pre.clone();
        post.council.member_set_hash = Some(member_set_hash(&members));
        post.council.elected = members.clone();
        Cert {
            genesis,
            pre,
            post,
            members,
            votes,
        }
    }

    fn fires(c: &mut Cert, what: &str) {
        let v = c.check();
        assert!(
            v.iter()
                .any(|v| v.invariant == "quorum_certificate" && v.detail.contains(what)),
            "expected {what:?} in {v:#?}"
        );
    }

    #[test]
    fn a_sound_certificate_passes() {
        let keys = Keys::from_labels("inv", 5);
        assert_eq!(cert(&keys).check(), vec![]);
    }

    #[test]
    fn a_no_vote_flipped_to_approve_is_caught() {
        let keys = Keys::from_labels("inv", 5);
        let mut c = cert(&keys);
        // A "no" voter's vote with its choice flipped, its signature kept.
        let k = &keys.council[0];
        let mut no = Vote::cast(
            VoteBody {
                approve: false,
                ..c.votes[0].body.clone()
            },
            k,
        );
        no.body.approve = true;
        c.votes[0] = no;
        fires(&mut c, "signature does not verify");
    }

    /// What the quorum guard accepts, the check accepts: a valid "no" vote
    /// beside enough approvals (the guard does not count it), and the vote
    /// of a council member `Boot_SetRoster` added after genesis (the guard
    /// reads the project's roster). Both were flagged as violations.
    #[test]
    fn a_no_vote_and_a_member_added_after_genesis_pass() {
        let keys = Keys::from_labels("inv", 5);
        let mut c = cert(&keys);
        let b = VoteBody {
            approve: false,
            ..c.votes[1].body.clone()
        };
        c.votes[1] = Vote::cast(b, &keys.council[1]);
        assert_eq!(c.check(), vec![]);

        let mut c = cert(&keys);
        let added = SignerId::from_signing_key(&keys.outsider);
        let ids = &mut c.pre.boot.identities;
        let mut entry = ids[0].clone();
        entry.key = added.clone();
        entry.roles = vec![Role::Council];
        ids.push(entry);
        ids.sort_by(|a, b| a.key.cmp(&b.key));
        let b = VoteBody {
            voter: added,
            ..c.votes[1].body.clone()
        };
        c.votes[1] = Vote::cast(b, &keys.outsider);
        assert_eq!(c.check(), vec![]);
    }

    #[test]
    fn every_rule_of_a_certificate_is_checked() {
        let keys = Keys::from_labels("inv", 5);
        // An outsider's well-signed vote.
        let mut c = cert(&keys);
        let b = VoteBody {
            voter: SignerId::from_signing_key(&keys.outsider),
            ..c.votes[1].body.clone()
        };
        c.votes[1] = Vote::cast(b, &keys.outsider);
        fires(&mut c, "not a council member of the project's roster");
        // The same voter twice.
        let mut c = cert(&keys);
        c.votes[1] = c.votes[0].clone();
        fires(&mut c, "a second vote by the same voter");
        // A stale epoch, another project, another member set.
        let mut c = cert(&keys);
        let b = VoteBody {
            epoch: 2,
            ..c.votes[2].body.clone()
        };
        c.votes[2] = Vote::cast(b, &keys.council[2]);
        fires(&mut c, "council epoch 2, not 3");
        let mut c = cert(&keys);
        let b = VoteBody {
            project: "q".into(),
            ..c.votes[2].body.clone()
        };
        c.votes[2] = Vote::cast(b, &keys.council[2]);
        fires(&mut c, "for project \"q\"");
        let mut c = cert(&keys);
        let b = VoteBody {
            member_set_hash: Hash::of_bytes(b"other"),
            ..c.votes[2].body.clone()
        };
        c.votes[2] = Vote::cast(b, &keys.council[2]);
        fires(&mut c, "it is for member set");
        // A vote signed for another cluster, and one bound to none.
        let mut c = cert(&keys);
        let b = VoteBody {
            genesis: Some(Hash::of_bytes(b"another cluster")),
            ..c.votes[2].body.clone()
        };
        c.votes[2] = Vote::cast(b, &keys.council[2]);
        fires(&mut c, "it was signed for genesis");
        let mut c = cert(&keys);
        let b = VoteBody {
            genesis: None,
            ..c.votes[2].body.clone()
        };
        c.votes[2] = Vote::cast(b, &keys.council[2]);
        fires(&mut c, "it names no genesis");
        // An ejected voter.
        let mut c = cert(&keys);
        c.pre.council.ejected = vec![c.votes[3].body.voter.clone()];
        fires(&mut c, "ejected from this council");
        // Too few approvals (threshold 3 of 5).
        let mut c = cert(&keys);
        c.votes.truncate(2);
        fires(&mut c, "2 valid approving votes; the quorum threshold is 3");
        // Three valid votes, one of them "no": two approvals.
        let mut c = cert(&keys);
        c.votes.truncate(3);
        let b = VoteBody {
            approve: false,
            ..c.votes[1].body.clone()
        };
        c.votes[1] = Vote::cast(b, &keys.council[1]);
        fires(&mut c, "2 valid approving votes; the quorum threshold is 3");
        // A stored certificate hash that is not these votes'.
        let mut c = cert(&keys);
        let rec = c.record();
        c.post.council.quorum_cert = Some(Hash::of_bytes(b"other"));
        let v = check_quorum_certificate(&c.genesis, &c.pre, &c.post, &rec);
        assert!(
            v.iter()
                .any(|v| v.detail.contains("stored certificate hash")),
            "{v:?}"
        );
        // A post state that elected another set.
        let mut c = cert(&keys);
        c.post.council.elected.pop();
        fires(&mut c, "did not elect the record's member set");
        // Other transitions are not certificates.
        let mut c = cert(&keys);
        let mut rec = c.record();
        rec.transition = "Council_McpGreen".into();
        c.votes.clear();
        assert_eq!(
            check_quorum_certificate(&c.genesis, &c.pre, &c.post, &rec),
            vec![]
        );
    }
}
