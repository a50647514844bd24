//! Invariants checked after every step (by tests, the simulator and, in
//! debug builds, the runtime). Each check is independent of the reducer's
//! code path: it reads the registry (the spec) and compares pre and post.

use crate::facts::member_set_hash;
use crate::hlc::order_key_cmp;
use crate::record::WalRecord;
use crate::state::ProjectState;
use crate::statechart::{self, Region, Role, AUTOMATIC};
use std::cmp::Ordering;

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
