//! The reducer, specified one fact per case:
//!
//! 1. every transition of `statechart::TRANSITIONS` is accepted from a valid
//!    state and makes exactly its changes: region state, one epoch advance
//!    of its `to` region and of each `also` region, and its data fields;
//! 2. every rejection reason of every guard, with its kind (→ HTTP status),
//!    the failing check's name and a reason that names the offending value
//!    or the next step;
//! 3. determinism: the same proposals give the same hashes on two nodes and
//!    through a canonical CBOR round trip of the node state after each step.
//!
//! States are reached with the scenario `Driver` (the happy path) on a
//! virtual clock; the step under test is then written out by hand.

use ciborium::Value;
use ed25519_dalek::SigningKey;
use serde_json::{json, Value as Json};
use std::cell::Cell;
use std::collections::BTreeSet;
use swoosh_core::cbor::{from_canonical, to_canonical};
use swoosh_core::facts::{LicenseBody, LicenseToken, Probe, ProbeBody, Vote, VoteBody};
use swoosh_core::guards::Verify;
use swoosh_core::invariants::{check_state, check_transition};
use swoosh_core::reducer::{
    step, Accepted, Ctx, Effect, Outcome, RejectKind, Rejection, SnapshotReason, Step,
};
use swoosh_core::scenario::{genesis, Driver, Fault, Keys, Next};
use swoosh_core::state::{NodeState, ProjectState};
use swoosh_core::statechart::{
    lookup, Guard, Region, Role, TransitionSpec, ALWAYS_GUARDS, TRANSITIONS,
};
use swoosh_core::{Hash, Hlc, Proposal, ProposalBuilder, SignerId};

const P: &str = "default";
/// 2026-01-01T00:00:00Z; beat 0 of the BACKBEAT schedule starts here.
const ORIGIN_MS: u64 = 1_767_225_600_000;
const THRESHOLD: usize = 2;

fn h(label: &str) -> Hash {
    Hash::of_bytes(label.as_bytes())
}

fn ctx(now_ms: u64) -> Ctx {
    Ctx {
        now_ms,
        verify: Verify::Full,
        snapshot_every: 0,
    }
}

/// Identities of `Keys::from_labels("t", 3)`.
#[derive(Clone, Copy, Debug)]
enum Who {
    Admin,
    Leader,
    Worker,
    Council(usize),
    Authority,
    Prober,
    Outsider,
}
use Who as W;

// ---------------------------------------------------------------------------
// The fixture: one node, one project, a virtual clock.
// ---------------------------------------------------------------------------

struct Fx {
    k: Keys,
    node: NodeState,
    now: u64,
    seq: Cell<u64>,
    /// Every proposal applied, with the leader time it was applied at.
    log: Vec<(Proposal, u64)>,
    verify: Verify,
}

/// An accepted step: the project before and after it.
struct Change {
    pre: ProjectState,
    post: ProjectState,
    step: Step,
    acc: Accepted,
}

impl Change {
    /// The decision's outcome of `guard`.
    fn outcome(&self, guard: &str) -> &swoosh_core::record::GuardOutcome {
        self.acc
            .decision
            .guard_outcomes
            .iter()
            .find(|o| o.guard == guard)
            .unwrap_or_else(|| panic!("no {guard} outcome"))
    }

    fn emitted(&self, kind: &str) -> bool {
        self.step
            .effects
            .iter()
            .any(|e| matches!(e, Effect::Emit(ev) if ev.kind == kind))
    }
}

impl Fx {
    fn new() -> Fx {
        let k = Keys::from_labels("t", 3);
        let node = NodeState::new(genesis(&k, "t-cluster", ORIGIN_MS)).unwrap();
        Fx {
            k,
            node,
            now: ORIGIN_MS + 10,
            seq: Cell::new(0),
            log: vec![],
            verify: Verify::Full,
        }
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            verify: self.verify,
            ..ctx(self.now)
        }
    }

    fn key(&self, w: Who) -> &SigningKey {
        match w {
            W::Admin => &self.k.admin,
            W::Leader => &self.k.leader,
            W::Worker => &self.k.worker,
            W::Council(i) => &self.k.council[i],
            W::Authority => &self.k.license_authority,
            W::Prober => &self.k.prober,
            W::Outsider => &self.k.outsider,
        }
    }

    fn id(&self, w: Who) -> SignerId {
        SignerId::from_signing_key(self.key(w))
    }

    fn st(&self) -> ProjectState {
        self.node.project(P).into_owned()
    }

    /// The HLC a well-behaved proposer uses now.
    fn hlc(&self) -> Hlc {
        Driver::hlc_for(&self.st(), self.now)
    }

    fn driver(&self) -> Driver<'_> {
        Driver::new(&self.k, u64::MAX)
    }

    /// A well-formed proposal for HEAD at the current HLC and its window,
    /// with a fresh idempotency key; callers may change any field.
    fn builder(&self, transition: &str, inputs: Json) -> ProposalBuilder {
        let st = self.st();
        let hlc = Driver::hlc_for(&st, self.now);
        let n = self.seq.get();
        self.seq.set(n + 1);
        ProposalBuilder::new(
            P,
            transition,
            self.node.project_hash(P),
            hlc,
            &format!("t-{n}"),
        )
        .inputs(&inputs)
        .unwrap()
        .window(st.execution.schedule.window_id(&hlc))
    }

    fn p(&self, transition: &str, inputs: Json, w: Who) -> Proposal {
        self.builder(transition, inputs).sign(self.key(w)).unwrap()
    }

    fn apply(&mut self, p: &Proposal) -> Step {
        self.log.push((p.clone(), self.now));
        let c = self.ctx();
        let s = step(&mut self.node, p, &c);
        self.now += 1;
        s
    }

    fn accept(&mut self, transition: &str, inputs: Json, w: Who) -> Change {
        let p = self.p(transition, inputs, w);
        self.accept_p(&p, &[])
    }

    /// Apply `p`, which must be accepted with exactly its declared region
    /// changes plus the `automatic` ones.
    fn accept_p(&mut self, p: &Proposal, automatic: &[Region]) -> Change {
        let pre = self.st();
        let s = self.apply(p);
        let acc = match &s.outcome {
            Outcome::Accepted(a) => (**a).clone(),
            other => panic!("{} was refused: {other:#?}", p.transition),
        };
        let post = self.st();
        assert_advance(&p.transition, &pre, &post, automatic);
        let v = check_transition(&pre, &post, &acc.record);
        assert!(v.is_empty(), "{}: invariant violations {v:?}", p.transition);
        assert!(
            check_state(&post).is_empty(),
            "{}: {:?}",
            p.transition,
            check_state(&post)
        );
        assert_eq!(acc.record.transition, p.transition);
        assert_eq!(acc.record.index, self.node.index);
        assert_eq!(acc.record.state_pre_hash, pre.hash());
        assert_eq!(acc.record.state_post_hash, self.node.project_hash(P));
        assert_eq!(
            s.effects[..3],
            [
                Effect::AppendWal {
                    index: acc.record.index,
                    record_hash: acc.record_hash
                },
                Effect::StoreDecision {
                    address: acc.decision_hash
                },
                Effect::Reply { status: 202 },
            ]
        );
        Change {
            pre,
            post,
            step: s,
            acc,
        }
    }

    /// Apply `p`, which must be refused without touching the node.
    fn reject(&mut self, p: &Proposal) -> Rejection {
        let before = self.node.clone();
        let s = self.apply(p);
        let r = match s.outcome {
            Outcome::Rejected(r) => r,
            other => panic!("{} was not refused: {other:#?}", p.transition),
        };
        assert_eq!(self.node, before, "a refused proposal changed the node");
        assert_eq!(
            s.effects[0],
            Effect::Reply {
                status: r.kind.http_status()
            }
        );
        r
    }

    /// Follow the happy path until `done` holds.
    fn drive_until(&mut self, what: &str, done: impl Fn(&ProjectState) -> bool) {
        let driver = Driver::new(&self.k, u64::MAX);
        for _ in 0..200 {
            let st = self.node.project(P).into_owned();
            if done(&st) {
                return;
            }
            match driver.next(&self.node, P, self.now) {
                Next::Propose(p) => {
                    self.log.push(((*p).clone(), self.now));
                    let c = self.ctx();
                    let s = step(&mut self.node, &p, &c);
                    self.now += 1;
                    assert!(
                        matches!(s.outcome, Outcome::Accepted(_)),
                        "driving to {what}: {} refused: {:?}",
                        p.transition,
                        s.outcome
                    );
                }
                Next::WaitMs(ms) => self.now += ms,
                Next::Done => panic!("the driver stopped before {what}"),
            }
        }
        panic!("{what} not reached in 200 steps");
    }

    /// Let the virtual clock run until the BACKBEAT window of `class` opens.
    fn wait_for(&mut self, class: &str) {
        let st = self.st();
        self.now += st
            .execution
            .schedule
            .ms_until_open(class, &self.hlc())
            .unwrap();
    }

    fn members(&self) -> Vec<SignerId> {
        self.driver().members()
    }

    /// Approving votes of every council key over `members` at the current epoch.
    fn votes(&self, members: &[SignerId]) -> Vec<Vote> {
        self.driver().votes(&self.st(), members, true)
    }

    fn vote(&self, w: Who, edit: impl FnOnce(&mut VoteBody)) -> Vote {
        let st = self.st();
        let mut body = VoteBody {
            project: P.into(),
            epoch: st.epoch.council,
            member_set_hash: swoosh_core::facts::member_set_hash(&self.members()),
            approve: true,
            voter: self.id(w),
            genesis: Some(st.meta.genesis),
        };
        edit(&mut body);
        Vote::cast(body, self.key(w))
    }

    fn election(&self, transition: &str, members: &[SignerId], votes: &[Vote]) -> Proposal {
        self.p(
            transition,
            json!({ "members": members, "votes": votes }),
            W::Leader,
        )
    }

    fn probe(&self, tool: &str, version: &str, reachable: bool, at: Hlc, w: Who) -> Probe {
        let body = ProbeBody {
            project: P.into(),
            tool: tool.into(),
            reachable,
            version: version.into(),
            probed_at: at,
            prober: self.id(w),
            genesis: Some(self.st().meta.genesis),
        };
        Probe::sign(body, self.key(w))
    }

    fn token(&self, w: Who, edit: impl FnOnce(&mut LicenseBody)) -> LicenseToken {
        let hlc = self.hlc();
        let mut body = LicenseBody {
            cluster_id: "t-cluster".into(),
            project: "*".into(),
            issued_at: hlc,
            expires_at: Hlc::new(hlc.wall_ms + 86_400_000, 0),
            grace_ms: 3_600_000,
            authority: self.id(w),
        };
        edit(&mut body);
        LicenseToken::issue(body, self.key(w))
    }

    fn pins(&self) -> Json {
        json!(Driver::pins(&self.st()).expect("READY regions are pinned"))
    }

    /// Replace the placeholders of an expected reason fragment.
    fn fill(&self, s: &str, p: &Proposal) -> String {
        let st = self.st();
        let mut out = s.to_string();
        for (k, v) in [
            ("{signer}", p.signer.to_string()),
            ("{hlc}", p.hlc.to_string()),
            ("{idem}", p.idem_key.clone()),
            ("{head}", self.node.project_hash(P).to_string()),
            ("{window}", st.execution.schedule.window_id(&p.hlc)),
            (
                "{work}",
                st.execution
                    .work_hash
                    .map(|w| w.to_string())
                    .unwrap_or_default(),
            ),
            ("{bad}", h("bad").to_string()),
            ("{admin}", self.id(W::Admin).to_string()),
            ("{leader}", self.id(W::Leader).to_string()),
            ("{worker}", self.id(W::Worker).to_string()),
            ("{outsider}", self.id(W::Outsider).to_string()),
            ("{c0}", self.id(W::Council(0)).to_string()),
            ("{c2}", self.id(W::Council(2)).to_string()),
        ] {
            out = out.replace(k, &v);
        }
        out
    }
}

/// The declared regions (and the `automatic` ones) each advanced their epoch
/// exactly once, entered their target state, and no other epoch moved.
fn assert_advance(transition: &str, pre: &ProjectState, post: &ProjectState, automatic: &[Region]) {
    let spec = lookup(transition).unwrap();
    for r in Region::ALL {
        let declared = (spec.to.region == r) as u64
            + spec.also.iter().filter(|a| a.region == r).count() as u64;
        let auto = automatic.iter().filter(|a| **a == r).count() as u64;
        assert_eq!(
            post.epoch.get(r),
            pre.epoch.get(r) + declared + auto,
            "{transition}: epoch of {}",
            r.name()
        );
    }
    assert_eq!(
        post.region_state(spec.to.region),
        spec.to.state,
        "{transition}: target state"
    );
    for a in spec.also {
        assert_eq!(
            post.region_state(a.region),
            a.state,
            "{transition}: also-state {a}"
        );
    }
    assert_eq!(post.applied, pre.applied + 1);
}

// ---------------------------------------------------------------------------
// Named states, reached along the happy path.
// ---------------------------------------------------------------------------

fn fresh(_: &mut Fx) {}
fn license_check(fx: &mut Fx) {
    fx.accept(
        "Boot_ConfigOk",
        json!({ "config_hash": h("config") }),
        W::Admin,
    );
}
/// As [`license_check`], then 10 s pass on the leader's clock.
fn license_check_10s_later(fx: &mut Fx) {
    license_check(fx);
    fx.now += 10_000;
}
/// The leader's clock stepped back 10 s after the project's last record.
fn license_check_clock_stepped_back(fx: &mut Fx) {
    license_check(fx);
    fx.now -= 10_000;
}
fn lifecycle(fx: &mut Fx) {
    fx.drive_until("PROJECT_LIFECYCLE", |s| s.meta.phase == "PROJECT_LIFECYCLE");
}
fn fetch(fx: &mut Fx) {
    fx.drive_until("Ingestion FETCH", |s| s.ingestion.phase == "FETCH");
}
fn validate(fx: &mut Fx) {
    fx.drive_until("Ingestion VALIDATE", |s| s.ingestion.phase == "VALIDATE");
}
fn index(fx: &mut Fx) {
    fx.drive_until("Ingestion INDEX", |s| s.ingestion.phase == "INDEX");
}
fn elect(fx: &mut Fx) {
    fx.drive_until("Council ELECT", |s| s.council.phase == "ELECT");
}
fn tooling_sync(fx: &mut Fx) {
    fx.drive_until("Council TOOLING_SYNC", |s| {
        s.council.phase == "TOOLING_SYNC"
    });
}
fn council_ready(fx: &mut Fx) {
    fx.drive_until("Council READY", |s| s.council.phase == "READY");
}
fn provision(fx: &mut Fx) {
    fx.drive_until("Environment PROVISION", |s| {
        s.environment.phase == "PROVISION"
    });
}
fn healthcheck(fx: &mut Fx) {
    fx.drive_until("Environment HEALTHCHECK", |s| {
        s.environment.phase == "HEALTHCHECK"
    });
}
fn env_degraded(fx: &mut Fx) {
    healthcheck(fx);
    fx.accept(
        "Environment_Amber",
        json!({ "checks": [{ "name": "network", "ok": false }] }),
        W::Worker,
    );
}
fn all_ready(fx: &mut Fx) {
    fx.drive_until("all regions READY", |s| {
        [&s.ingestion.phase, &s.council.phase, &s.environment.phase]
            .iter()
            .all(|p| *p == "READY")
    });
}
fn executing(fx: &mut Fx) {
    fx.drive_until("EXECUTION", |s| s.meta.phase == "EXECUTION");
}
/// Execution WORK, early in the beat's work phase (review closed).
fn work(fx: &mut Fx) {
    fx.drive_until("Execution WORK", |s| s.execution.phase == "WORK");
}
/// Execution WORK with the review window open.
fn review_open(fx: &mut Fx) {
    work(fx);
    fx.wait_for("review");
}
fn review(fx: &mut Fx) {
    fx.drive_until("Execution REVIEW", |s| s.execution.phase == "REVIEW");
}
fn reverb(fx: &mut Fx) {
    fx.drive_until("Execution REVERB", |s| s.execution.phase == "REVERB");
}
fn reverb_approved_by_c0(fx: &mut Fx) {
    reverb(fx);
    let work = fx.st().execution.work_hash;
    fx.accept(
        "Execution_Approve",
        json!({ "work_hash": work }),
        W::Council(0),
    );
}
fn reverb_c2_ejected(fx: &mut Fx) {
    reverb(fx);
    let c2 = fx.id(W::Council(2));
    fx.accept(
        "Council_Eject",
        json!({ "member": c2, "reason": "stopped answering" }),
        W::Leader,
    );
}
fn approved(fx: &mut Fx) {
    fx.drive_until("quorum of approvals", |s| {
        s.execution.approvals.len() >= THRESHOLD
    });
}
fn submitted(fx: &mut Fx) {
    fx.drive_until("submission", |s| s.execution.submission.is_some());
}
fn terminated(fx: &mut Fx) {
    lifecycle(fx);
    fx.accept(
        "Project_Terminate",
        json!({ "rationale": "cancelled by its owner" }),
        W::Admin,
    );
}
fn quarantined(fx: &mut Fx) {
    lifecycle(fx);
    fx.accept(
        "Policy_Quarantine",
        json!({ "rationale": "audit pending" }),
        W::Admin,
    );
}
fn quarantined_by_findings(fx: &mut Fx) {
    validate(fx);
    fx.accept(
        "Ingestion_PolicyViolation",
        json!({ "findings": [secret_leak()] }),
        W::Worker,
    );
}
fn paused(fx: &mut Fx) {
    lifecycle(fx);
    fx.accept(
        "Control_Pause",
        json!({ "reason": "maintenance" }),
        W::Leader,
    );
}
fn paused_at_boot(fx: &mut Fx) {
    fx.accept(
        "Control_Pause",
        json!({ "reason": "maintenance" }),
        W::Leader,
    );
}
fn recovering(fx: &mut Fx) {
    executing(fx);
    fx.accept(
        "Control_QuorumLost",
        json!({ "reason": "council unreachable", "lost": [] }),
        W::Leader,
    );
}
fn all_ready_recovering(fx: &mut Fx) {
    all_ready(fx);
    fx.accept(
        "Control_QuorumLost",
        json!({ "reason": "council unreachable", "lost": [] }),
        W::Leader,
    );
}
/// RECOVERY with a council that lost a member and is back in ELECT.
fn recovering_council_elect(fx: &mut Fx) {
    council_ready(fx);
    let c0 = fx.id(W::Council(0));
    fx.accept(
        "Control_QuorumLost",
        json!({ "reason": "council unreachable", "lost": [c0] }),
        W::Leader,
    );
    fx.accept(
        "Council_Eject",
        json!({ "member": c0, "reason": "unreachable" }),
        W::Leader,
    );
}
/// Council back in ELECT after an ejection (one election so far).
fn ejected(fx: &mut Fx) {
    council_ready(fx);
    let c0 = fx.id(W::Council(0));
    fx.accept(
        "Council_Eject",
        json!({ "member": c0, "reason": "stopped answering" }),
        W::Leader,
    );
}
/// A license that expires 1 s from now with a 2 s grace.
fn short_license(fx: &mut Fx) -> (u64, u64) {
    let expires = fx.now + 1_000;
    let token = fx.token(W::Authority, |b| {
        b.expires_at = Hlc::new(expires, 0);
        b.grace_ms = 2_000;
    });
    fx.accept(
        "Boot_LicenseRefresh",
        json!({ "license": token }),
        W::Leader,
    );
    (expires, expires + 2_000)
}
fn license_expired(fx: &mut Fx) {
    lifecycle(fx);
    let (_, grace_end) = short_license(fx);
    fx.now = grace_end;
}

fn secret_leak() -> Json {
    json!({ "code": "secret_leak", "detail": "AWS key in config.yaml" })
}

// ---------------------------------------------------------------------------
// 1. Every transition, accepted from a valid state.
// ---------------------------------------------------------------------------

/// Each transition of the statechart has a test below; this list names them.
const COVERED: &[&str] = &[
    "Boot_ConfigOk",
    "Boot_Licensed",
    "Boot_LicenseRefresh",
    "Boot_SetRoster",
    "Ingestion_SourcesResolved",
    "Ingestion_BytesOk",
    "Ingestion_SchemaOk",
    "Ingestion_PolicyViolation",
    "Ingestion_CorpusBuilt",
    "Ingestion_RollbackIndex",
    "Council_ProfilesLoaded",
    "Council_QuorumCert",
    "Council_McpGreen",
    "Council_ToolingLost",
    "Council_Eject",
    "Council_ReElect",
    "Environment_CapacityOk",
    "Environment_Installed",
    "Environment_Green",
    "Environment_Amber",
    "Environment_Recheck",
    "Environment_Deprovision",
    "Project_EnterExecution",
    "Project_Terminate",
    "Execution_PlanLocked",
    "Execution_BeatReviewGate",
    "Execution_ReverbOpen",
    "Execution_Approve",
    "Execution_Submit",
    "Execution_NextWindow",
    "Control_Pause",
    "Control_Resume",
    "Control_QuorumLost",
    "Control_Recovered",
    "Policy_Quarantine",
    "Policy_Release",
    "Policy_Update",
];

#[test]
fn every_transition_of_the_statechart_has_an_acceptance_test() {
    for t in TRANSITIONS {
        assert!(
            COVERED.contains(&t.name),
            "transition {} has no acceptance test in tests/transitions.rs",
            t.name
        );
    }
    for c in COVERED {
        assert!(
            lookup(c).is_some(),
            "COVERED names {c}, which is not in the statechart"
        );
    }
}

/// A project paused before it was licensed is not wedged: it resumes into
/// its boot (Boot_ConfigOk and Boot_Licensed are refused while it is
/// PAUSED), is configured and licensed, and enters its lifecycle. Before,
/// the resume was refused for the missing license that only those two
/// transitions could install.
#[test]
fn a_project_paused_at_boot_resumes_and_is_licensed() {
    let mut fx = Fx::new();
    paused_at_boot(&mut fx);
    let cfg = fx.p(
        "Boot_ConfigOk",
        json!({ "config_hash": h("config") }),
        W::Admin,
    );
    let r = fx.reject(&cfg);
    assert_eq!(r.guard, "project_status", "{r:#?}");
    let c = fx.accept("Control_Resume", json!({}), W::Leader);
    assert_eq!(c.post.control.phase, "NORMAL");
    assert_eq!(c.post.meta.phase, "BOOT");
    let said = c.outcome("license");
    assert!(
        said.ok && said.reasons[0].contains("no license yet"),
        "{said:?}"
    );
    license_check(&mut fx);
    let token = fx.token(W::Authority, |_| {});
    let c = fx.accept("Boot_Licensed", json!({ "license": token }), W::Leader);
    assert!(c.post.boot.license.is_some());
    // Licensed and paused again, a resume checks the license as before.
    fx.accept(
        "Control_Pause",
        json!({ "reason": "maintenance" }),
        W::Leader,
    );
    let c = fx.accept("Control_Resume", json!({}), W::Leader);
    let said = c.outcome("license");
    assert!(
        said.reasons[0].starts_with("license valid until"),
        "{said:?}"
    );
}

#[test]
fn boot_config_ok_records_the_config_and_awaits_the_license() {
    let mut fx = Fx::new();
    let c = fx.accept(
        "Boot_ConfigOk",
        json!({ "config_hash": h("config") }),
        W::Admin,
    );
    assert_eq!(c.post.boot.config_hash, Some(h("config")));
    assert_eq!(c.post.meta.phase, "BOOT");
    assert_eq!(c.post.boot.license, None);
}

#[test]
fn boot_licensed_installs_the_token_and_enters_the_lifecycle() {
    let mut fx = Fx::new();
    license_check(&mut fx);
    let token = fx.token(W::Authority, |_| {});
    let c = fx.accept("Boot_Licensed", json!({ "license": token }), W::Leader);
    let lic = c.post.boot.license.as_ref().unwrap();
    assert_eq!(
        (lic.authority.clone(), lic.expires_at, lic.grace_ms),
        (fx.id(W::Authority), token.body.expires_at, 3_600_000)
    );
    assert_eq!(c.post.meta.phase, "PROJECT_LIFECYCLE");
    // The three parallel regions start in their initial states.
    assert_eq!(
        [
            &c.post.ingestion.phase[..],
            &c.post.council.phase,
            &c.post.environment.phase
        ],
        ["DISCOVER", "PLAN_ROLES", "ALLOCATE"]
    );
}

#[test]
fn boot_license_refresh_replaces_the_token() {
    let mut fx = Fx::new();
    lifecycle(&mut fx);
    let token = fx.token(W::Authority, |b| {
        b.expires_at = Hlc::new(ORIGIN_MS + 7 * 86_400_000, 0)
    });
    let c = fx.accept("Boot_LicenseRefresh", json!({ "license": token }), W::Admin);
    assert_ne!(c.pre.boot.license, c.post.boot.license);
    assert_eq!(
        c.post.boot.license.clone().unwrap().expires_at,
        Hlc::new(ORIGIN_MS + 7 * 86_400_000, 0)
    );
    assert_eq!(c.post.control.phase, "NORMAL");
}

#[test]
fn boot_set_roster_replaces_the_signers_and_their_roles() {
    let mut fx = Fx::new();
    lifecycle(&mut fx);
    let mut roster = fx.k.roster();
    roster.push(swoosh_core::facts::RosterEntry {
        key: fx.id(W::Outsider),
        name: "new-worker".into(),
        roles: vec![Role::Worker],
    });
    let c = fx.accept("Boot_SetRoster", json!({ "roster": roster }), W::Admin);
    assert_eq!(c.post.boot.identities.len(), roster.len());
    assert!(
        c.post
            .boot
            .identities
            .windows(2)
            .all(|w| w[0].key < w[1].key),
        "the roster is kept sorted by key"
    );
    assert_eq!(
        c.post.roles_of(&fx.id(W::Outsider)),
        Some(&[Role::Worker][..])
    );
    // The new signer may now act in its role.
    fx.accept(
        "Ingestion_SourcesResolved",
        json!({ "sources": ["git://repos/a.git"] }),
        W::Outsider,
    );
}

#[test]
fn ingestion_sources_resolved_records_the_sorted_distinct_sources() {
    let mut fx = Fx::new();
    lifecycle(&mut fx);
    let c = fx.accept(
        "Ingestion_SourcesResolved",
        json!({ "sources": ["git://b.git", "git://a.git", "git://a.git"] }),
        W::Worker,
    );
    assert_eq!(c.post.ingestion.sources, ["git://a.git", "git://b.git"]);
}

#[test]
fn ingestion_bytes_ok_records_the_content_hash_and_size() {
    let mut fx = Fx::new();
    fetch(&mut fx);
    let c = fx.accept(
        "Ingestion_BytesOk",
        json!({ "content_hash": h("content"), "bytes": 4096 }),
        W::Worker,
    );
    assert_eq!(
        (c.post.ingestion.content_hash, c.post.ingestion.bytes),
        (Some(h("content")), 4096)
    );
}

#[test]
fn ingestion_schema_ok_records_the_schema_and_harmless_findings() {
    let mut fx = Fx::new();
    validate(&mut fx);
    let findings = json!([{ "code": "style", "detail": "long lines" }]);
    let c = fx.accept(
        "Ingestion_SchemaOk",
        json!({ "schema_hash": h("schema"), "findings": findings }),
        W::Worker,
    );
    assert_eq!(c.post.ingestion.schema_hash, Some(h("schema")));
    assert_eq!(c.post.ingestion.findings[0].code, "style");
    assert_eq!(c.post.policy.phase, "CLEAR");
}

#[test]
fn ingestion_policy_violation_quarantines_with_the_rationale() {
    let mut fx = Fx::new();
    validate(&mut fx);
    let c = fx.accept(
        "Ingestion_PolicyViolation",
        json!({ "findings": [secret_leak()] }),
        W::Worker,
    );
    assert_eq!(c.post.policy.phase, "QUARANTINED");
    assert_eq!(
        c.post.ingestion.phase, "VALIDATE",
        "the Ingestion region stays where it was"
    );
    let rationale = c.post.policy.rationale.as_deref().unwrap();
    assert!(
        rationale.contains("secret_leak") && rationale.contains("no-secrets"),
        "{rationale}"
    );
    assert_eq!(c.post.policy.findings[0].code, "secret_leak");
    assert_eq!(c.post.policy.quarantines, 1);
    assert!(c.emitted("quarantine"));
}

#[test]
fn ingestion_policy_violation_also_denies_by_source_scheme_code() {
    let mut fx = Fx::new();
    validate(&mut fx);
    let finding = json!({ "code": "source:file", "detail": "file:///etc/passwd" });
    let c = fx.accept(
        "Ingestion_PolicyViolation",
        json!({ "findings": [finding] }),
        W::Admin,
    );
    assert_eq!(c.post.policy.phase, "QUARANTINED");
}

#[test]
fn ingestion_corpus_built_pins_the_index_and_its_version() {
    let mut fx = Fx::new();
    index(&mut fx);
    let c = fx.accept(
        "Ingestion_CorpusBuilt",
        json!({ "index_hash": h("index"), "version": 1 }),
        W::Worker,
    );
    assert_eq!(
        (c.post.ingestion.index_hash, c.post.ingestion.version),
        (Some(h("index")), 1)
    );
}

#[test]
fn ingestion_rollback_index_discards_the_index_from_index_and_ready() {
    for (from, setup) in [("INDEX", index as fn(&mut Fx)), ("READY", all_ready)] {
        let mut fx = Fx::new();
        setup(&mut fx);
        assert_eq!(fx.st().ingestion.phase, from);
        let c = fx.accept(
            "Ingestion_RollbackIndex",
            json!({ "reason": "index built from a bad snapshot" }),
            W::Leader,
        );
        let ing = &c.post.ingestion;
        assert_eq!(
            (ing.content_hash, ing.index_hash, ing.schema_hash, ing.bytes),
            (None, None, None, 0),
            "from {from}"
        );
        assert!(ing.sources.is_empty() && ing.findings.is_empty());
        assert_eq!(ing.rollbacks, 1);
        assert_eq!(
            ing.version, c.pre.ingestion.version,
            "versions are never reused"
        );
        // Ingestion runs again, to a new version.
        fx.drive_until("Ingestion READY again", |s| s.ingestion.phase == "READY");
        assert_eq!(fx.st().ingestion.version, c.pre.ingestion.version + 1);
    }
}

#[test]
fn council_profiles_loaded_records_roles_candidates_and_tool_pins() {
    let mut fx = Fx::new();
    lifecycle(&mut fx);
    let mut candidates = fx.members();
    candidates.reverse();
    let inputs = json!({ "roles": ["architect"], "candidates": candidates, "tools": { "mcp-git": "1.4.2" } });
    let c = fx.accept("Council_ProfilesLoaded", inputs, W::Leader);
    assert_eq!(c.post.council.roles, ["architect"]);
    assert_eq!(
        c.post.council.candidates,
        fx.members(),
        "candidates are kept sorted"
    );
    assert_eq!(
        c.post.council.tools.get("mcp-git").map(String::as_str),
        Some("1.4.2")
    );
}

#[test]
fn council_quorum_cert_elects_the_member_set() {
    let mut fx = Fx::new();
    elect(&mut fx);
    let members = fx.members();
    let p = fx.election("Council_QuorumCert", &members, &fx.votes(&members));
    let c = fx.accept_p(&p, &[]);
    let council = &c.post.council;
    assert_eq!(council.elected, members);
    assert_eq!(
        council.member_set_hash,
        Some(swoosh_core::facts::member_set_hash(&members))
    );
    assert!(council.quorum_cert.is_some());
    assert_eq!(council.elections, 1);
}

#[test]
fn council_quorum_cert_needs_only_the_threshold_of_votes() {
    let mut fx = Fx::new();
    elect(&mut fx);
    let members = fx.members();
    let votes = fx.votes(&members)[..THRESHOLD].to_vec();
    let p = fx.election("Council_QuorumCert", &members, &votes);
    fx.accept_p(&p, &[]);
}

#[test]
fn council_mcp_green_records_tool_health() {
    let mut fx = Fx::new();
    tooling_sync(&mut fx);
    let probes = fx.driver().probes(&fx.st(), fx.hlc(), true);
    let c = fx.accept("Council_McpGreen", json!({ "probes": probes }), W::Prober);
    assert!(!c.emitted("tool_recovered"), "nothing had failed");
    assert_eq!(c.post.council.tooling.len(), 2);
    assert!(c.post.council.tooling.values().all(|t| t.reachable));
    assert_eq!(c.post.council.tooling["mcp-git"].version, "1.4.2");
}

#[test]
fn council_tooling_lost_returns_to_tooling_sync_and_flags_the_flap() {
    let mut fx = Fx::new();
    council_ready(&mut fx);
    let probes = fx.driver().probes(&fx.st(), fx.hlc(), false);
    let c = fx.accept(
        "Council_ToolingLost",
        json!({ "probes": probes }),
        W::Prober,
    );
    assert!(!c.post.council.tooling["mcp-git"].reachable);
    assert!(c.emitted("tool_flap"));
    // The council recovers with healthy probes, and the flap counts as
    // healed (only after a failure: the first McpGreen heals nothing).
    let probes = fx.driver().probes(&fx.st(), fx.hlc(), true);
    let c = fx.accept("Council_McpGreen", json!({ "probes": probes }), W::Prober);
    assert_eq!(c.post.council.phase, "READY");
    assert!(c.emitted("tool_recovered"));
}

#[test]
fn council_eject_removes_a_member_from_tooling_sync_and_ready() {
    for (from, setup) in [
        ("TOOLING_SYNC", tooling_sync as fn(&mut Fx)),
        ("READY", council_ready),
    ] {
        let mut fx = Fx::new();
        setup(&mut fx);
        assert_eq!(fx.st().council.phase, from);
        let c0 = fx.id(W::Council(0));
        let c = fx.accept(
            "Council_Eject",
            json!({ "member": c0, "reason": "stopped answering" }),
            W::Admin,
        );
        assert!(!c.post.council.elected.contains(&c0), "from {from}");
        assert_eq!(c.post.council.elected.len(), 2);
        assert_eq!(c.post.council.ejected, [c0]);
        assert_eq!(
            (c.post.council.member_set_hash, c.post.council.quorum_cert),
            (None, None)
        );
    }
}

#[test]
fn council_re_elect_after_an_ejection_elects_the_remaining_members() {
    let mut fx = Fx::new();
    ejected(&mut fx);
    let members: Vec<SignerId> = fx.st().council.elected.clone();
    let votes: Vec<Vote> = fx
        .votes(&members)
        .into_iter()
        .filter(|v| members.contains(&v.body.voter))
        .collect();
    let p = fx.election("Council_ReElect", &members, &votes);
    let c = fx.accept_p(&p, &[]);
    assert_eq!(c.post.council.elected, members);
    assert_eq!(
        c.post.council.member_set_hash,
        Some(swoosh_core::facts::member_set_hash(&members))
    );
    assert_eq!(c.post.council.elections, 2);
    fx.drive_until("Council READY after re-election", |s| {
        s.council.phase == "READY"
    });
}

#[test]
fn environment_capacity_ok_records_the_request_and_capacity() {
    let mut fx = Fx::new();
    lifecycle(&mut fx);
    let inputs = json!({ "request": { "cpu_milli": 2000, "mem_mb": 4096 }, "capacity": { "cpu_milli": 2000, "mem_mb": 4096 } });
    let c = fx.accept("Environment_CapacityOk", inputs, W::Worker);
    assert_eq!(c.post.environment.request.unwrap().cpu_milli, 2000);
    assert_eq!(c.post.environment.capacity.unwrap().mem_mb, 4096);
}

#[test]
fn environment_installed_records_assets_and_env_hash() {
    let mut fx = Fx::new();
    provision(&mut fx);
    let c = fx.accept(
        "Environment_Installed",
        json!({ "assets": ["vm://default/runner-1"], "env_hash": h("env") }),
        W::Worker,
    );
    assert_eq!(c.post.environment.assets, ["vm://default/runner-1"]);
    assert_eq!(c.post.environment.env_hash, Some(h("env")));
}

#[test]
fn environment_green_and_amber_record_the_checks() {
    for (t, checks, to) in [
        (
            "Environment_Green",
            json!([{ "name": "runner", "ok": true }]),
            "READY",
        ),
        (
            "Environment_Amber",
            json!([{ "name": "runner", "ok": true }, { "name": "network", "ok": false }]),
            "DEGRADED",
        ),
    ] {
        let mut fx = Fx::new();
        healthcheck(&mut fx);
        let c = fx.accept(t, json!({ "checks": checks }), W::Worker);
        assert_eq!(c.post.environment.phase, to);
        assert_eq!(json!(c.post.environment.health), checks);
    }
}

#[test]
fn environment_recheck_returns_to_healthcheck_from_degraded_and_ready() {
    for (from, setup) in [
        ("DEGRADED", env_degraded as fn(&mut Fx)),
        ("READY", all_ready),
    ] {
        let mut fx = Fx::new();
        setup(&mut fx);
        assert_eq!(fx.st().environment.phase, from);
        let c = fx.accept("Environment_Recheck", json!({}), W::Worker);
        assert_eq!(
            c.post.environment.env_hash, c.pre.environment.env_hash,
            "from {from}"
        );
    }
}

#[test]
fn environment_deprovision_releases_the_environment_from_every_allocated_state() {
    for (from, setup) in [
        ("PROVISION", provision as fn(&mut Fx)),
        ("HEALTHCHECK", healthcheck),
        ("READY", all_ready),
        ("DEGRADED", env_degraded),
    ] {
        let mut fx = Fx::new();
        setup(&mut fx);
        assert_eq!(fx.st().environment.phase, from);
        let c = fx.accept(
            "Environment_Deprovision",
            json!({ "reason": "capacity reclaimed" }),
            W::Leader,
        );
        let env = &c.post.environment;
        assert_eq!(
            (env.request, env.capacity, env.env_hash),
            (None, None, None),
            "from {from}"
        );
        assert!(env.assets.is_empty() && env.health.is_empty());
        assert_eq!(env.deprovisions, 1);
        fx.drive_until("Environment READY again", |s| {
            s.environment.phase == "READY"
        });
    }
}

#[test]
fn project_enter_execution_pins_the_ready_regions() {
    let mut fx = Fx::new();
    all_ready(&mut fx);
    let pins = fx.pins();
    let c = fx.accept("Project_EnterExecution", json!({ "pins": pins }), W::Leader);
    assert_eq!(json!(c.post.execution.pins), pins);
    assert_eq!(
        (&c.post.meta.phase[..], &c.post.execution.phase[..]),
        ("EXECUTION", "PLAN")
    );
}

#[test]
fn project_terminate_ends_the_project_from_boot_lifecycle_and_execution() {
    for (from, setup) in [
        ("BOOT", fresh as fn(&mut Fx)),
        ("PROJECT_LIFECYCLE", lifecycle),
        ("EXECUTION", executing),
    ] {
        let mut fx = Fx::new();
        setup(&mut fx);
        assert_eq!(fx.st().meta.phase, from);
        let c = fx.accept(
            "Project_Terminate",
            json!({ "rationale": "cancelled by its owner" }),
            W::Admin,
        );
        assert_eq!(
            c.post.meta.terminated_rationale.as_deref(),
            Some("cancelled by its owner"),
            "from {from}"
        );
    }
}

/// A rostered identity holding one of the roles `spec` needs.
fn signer_for(spec: &TransitionSpec) -> Who {
    let by_role = [
        (Role::Admin, W::Admin),
        (Role::Operator, W::Leader),
        (Role::Worker, W::Worker),
        (Role::Council, W::Council(0)),
        (Role::ToolProber, W::Prober),
        (Role::LicenseAuthority, W::Authority),
    ];
    by_role
        .into_iter()
        .find(|(r, _)| spec.roles.contains(r))
        .map(|(_, w)| w)
        .unwrap()
}

#[test]
fn nothing_is_accepted_after_project_terminate() {
    let mut fx = Fx::new();
    terminated(&mut fx);
    for spec in TRANSITIONS {
        let p = fx.p(spec.name, json!({}), signer_for(spec));
        let r = fx.reject(&p);
        assert_eq!(
            (r.kind, r.guard.as_str()),
            (RejectKind::Guard, "project_status"),
            "{}: {r:?}",
            spec.name
        );
        assert!(
            r.reasons[0].contains("TERMINATED (\"cancelled by its owner\")"),
            "{:?}",
            r.reasons
        );
    }
}

#[test]
fn execution_plan_locked_locks_the_plan_against_the_pins() {
    let mut fx = Fx::new();
    executing(&mut fx);
    let pins = fx.pins();
    let p = fx
        .builder(
            "Execution_PlanLocked",
            json!({ "plan_hash": h("plan"), "pins": pins }),
        )
        .evidence(vec!["ucxl://chorus:spec@default/plan".into()])
        .sign(fx.key(W::Council(1)))
        .unwrap();
    let c = fx.accept_p(&p, &[]);
    assert_eq!(c.post.execution.plan_hash, Some(h("plan")));
    assert_eq!(
        c.post.execution.evidence,
        ["ucxl://chorus:spec@default/plan"]
    );
    assert!(c
        .acc
        .decision
        .links
        .contains(&"ucxl://chorus:spec@default/plan".to_string()));
}

#[test]
fn execution_beat_review_gate_moves_work_to_review_inside_the_review_window() {
    let mut fx = Fx::new();
    review_open(&mut fx);
    let c = fx.accept(
        "Execution_BeatReviewGate",
        json!({ "work_hash": h("work") }),
        W::Worker,
    );
    assert_eq!(c.post.execution.work_hash, Some(h("work")));
    assert!(c
        .post
        .execution
        .window_id
        .as_deref()
        .unwrap()
        .ends_with("-review"));
}

#[test]
fn execution_reverb_open_records_the_review_and_schedules_a_snapshot() {
    let mut fx = Fx::new();
    review(&mut fx);
    fx.wait_for("reverb");
    let c = fx.accept(
        "Execution_ReverbOpen",
        json!({ "review_hash": h("review") }),
        W::Council(1),
    );
    assert_eq!(c.post.execution.review_hash, Some(h("review")));
    assert!(c.step.effects.contains(&Effect::ScheduleSnapshot {
        reason: SnapshotReason::Reverb
    }));
}

#[test]
fn execution_approve_adds_the_council_member_and_stays_in_reverb() {
    let mut fx = Fx::new();
    reverb(&mut fx);
    let work = fx.st().execution.work_hash;
    let c = fx.accept(
        "Execution_Approve",
        json!({ "work_hash": work }),
        W::Council(2),
    );
    assert_eq!(c.post.execution.approvals, [fx.id(W::Council(2))]);
}

#[test]
fn execution_submit_records_the_submission_once_approved() {
    let mut fx = Fx::new();
    approved(&mut fx);
    let c = fx.accept(
        "Execution_Submit",
        json!({ "submission_hash": h("submission") }),
        W::Council(0),
    );
    assert_eq!(c.post.execution.submission, Some(h("submission")));
}

#[test]
fn execution_next_window_closes_the_window_and_counts_the_loop() {
    let mut fx = Fx::new();
    submitted(&mut fx);
    let c = fx.accept("Execution_NextWindow", json!({}), W::Leader);
    let ex = &c.post.execution;
    assert_eq!(ex.loops, 1);
    assert_eq!(
        (ex.plan_hash, ex.work_hash, ex.review_hash, ex.submission),
        (None, None, None, None)
    );
    assert!(ex.approvals.is_empty() && ex.evidence.is_empty() && ex.window_id.is_none());
    assert_eq!(
        ex.pins, c.pre.execution.pins,
        "the pins carry over to the next window"
    );
}

#[test]
fn control_pause_and_resume() {
    let mut fx = Fx::new();
    executing(&mut fx);
    let c = fx.accept(
        "Control_Pause",
        json!({ "reason": "maintenance" }),
        W::Admin,
    );
    assert_eq!(c.post.control.reason.as_deref(), Some("maintenance"));
    // Compensations proceed while paused.
    fx.accept(
        "Environment_Deprovision",
        json!({ "reason": "capacity reclaimed" }),
        W::Leader,
    );
    let c = fx.accept("Control_Resume", json!({}), W::Leader);
    assert_eq!(c.post.control.reason, None);
}

#[test]
fn control_quorum_lost_and_recovered_after_re_election() {
    let mut fx = Fx::new();
    executing(&mut fx);
    let c0 = fx.id(W::Council(0));
    let c = fx.accept(
        "Control_QuorumLost",
        json!({ "reason": "council unreachable", "lost": [c0] }),
        W::Council(1),
    );
    assert_eq!(
        c.post.control.reason.as_deref(),
        Some("council unreachable")
    );
    assert!(c.emitted("quorum_lost"));
    // The council is repaired while the project is in RECOVERY.
    fx.accept(
        "Council_Eject",
        json!({ "member": c0, "reason": "unreachable" }),
        W::Leader,
    );
    fx.drive_until("Council READY again", |s| s.council.phase == "READY");
    assert_eq!(fx.st().control.phase, "RECOVERY");
    let c = fx.accept("Control_Recovered", json!({}), W::Admin);
    assert_eq!(c.post.control.reason, None);
    assert!(c.emitted("recovered"));
}

#[test]
fn policy_quarantine_and_release_by_an_admin() {
    let mut fx = Fx::new();
    lifecycle(&mut fx);
    let c = fx.accept(
        "Policy_Quarantine",
        json!({ "rationale": "audit pending" }),
        W::Admin,
    );
    assert_eq!(
        (
            c.post.policy.rationale.as_deref(),
            c.post.policy.quarantines
        ),
        (Some("audit pending"), 1)
    );
    assert!(c.emitted("quarantine"));
    let c = fx.accept(
        "Policy_Release",
        json!({ "rationale": "audit passed" }),
        W::Admin,
    );
    assert_eq!(c.post.policy.rationale, None);
    assert!(c.emitted("quarantine_released"));
    // Work resumes.
    fx.accept(
        "Ingestion_SourcesResolved",
        json!({ "sources": ["git://repos/a.git"] }),
        W::Worker,
    );
}

#[test]
fn policy_release_lifts_a_findings_based_quarantine() {
    let mut fx = Fx::new();
    quarantined_by_findings(&mut fx);
    let c = fx.accept(
        "Policy_Release",
        json!({ "rationale": "secret rotated and purged" }),
        W::Admin,
    );
    assert!(c.post.policy.findings.is_empty());
}

#[test]
fn policy_update_installs_rules_from_clear() {
    let mut fx = Fx::new();
    lifecycle(&mut fx);
    let rules = json!([{ "id": "no-http", "deny_codes": ["source:http"], "rationale": "plain http leaks" }]);
    let c = fx.accept("Policy_Update", json!({ "rules": rules }), W::Admin);
    assert_eq!(json!(c.post.policy.rules), rules);
    // The new rule applies at once; the old one no longer does.
    let r = fx.reject(&fx.p(
        "Ingestion_SourcesResolved",
        json!({ "sources": ["http://x/a.git"] }),
        W::Worker,
    ));
    assert_eq!(r.guard, "policy");
    fx.accept(
        "Ingestion_SourcesResolved",
        json!({ "sources": ["file:///srv/a"] }),
        W::Worker,
    );
}

#[test]
fn policy_update_lifts_a_quarantine_its_rules_no_longer_support() {
    let mut fx = Fx::new();
    quarantined_by_findings(&mut fx);
    let rules =
        json!([{ "id": "no-files", "deny_codes": ["source:file"], "rationale": "no local reads" }]);
    let c = fx.accept("Policy_Update", json!({ "rules": rules }), W::Admin);
    assert_eq!(
        (c.pre.policy.phase.as_str(), c.post.policy.phase.as_str()),
        ("QUARANTINED", "CLEAR")
    );
    assert!(c.post.policy.findings.is_empty() && c.post.policy.rationale.is_none());
    // The attention scorer sees the quarantine healed, as after a release.
    assert!(c.emitted("quarantine_released"));
    // The finding that quarantined the project is now allowed.
    fx.accept(
        "Ingestion_SchemaOk",
        json!({ "schema_hash": h("schema"), "findings": [secret_leak()] }),
        W::Worker,
    );
}

// ---- automatic changes: license grace and refresh --------------------------

#[test]
fn license_grace_degrades_control_once_and_a_refresh_restores_it() {
    let mut fx = Fx::new();
    lifecycle(&mut fx);
    let (expires, _) = short_license(&mut fx);
    fx.now = expires + 10;
    // In grace: accepted, and Control becomes DEGRADED (its epoch advances once).
    let p = fx.p(
        "Ingestion_SourcesResolved",
        json!({ "sources": ["git://repos/a.git"] }),
        W::Worker,
    );
    let c = fx.accept_p(&p, &[Region::Control]);
    assert_eq!(c.post.control.phase, "DEGRADED");
    assert!(c.post.control.degraded_by_license);
    assert!(c
        .post
        .control
        .reason
        .as_deref()
        .unwrap()
        .starts_with("license grace until"));
    assert!(c.emitted("license_grace"));
    let grace = c
        .acc
        .record
        .guard_outcomes
        .iter()
        .find(|g| g.guard == "license")
        .unwrap();
    assert!(
        grace.ok && grace.reasons[0].contains("propose Boot_LicenseRefresh"),
        "{grace:?}"
    );
    // Still in grace: no second automatic change.
    let c = fx.accept(
        "Ingestion_BytesOk",
        json!({ "content_hash": h("c"), "bytes": 1 }),
        W::Worker,
    );
    assert_eq!(c.post.control.phase, "DEGRADED");
    // A refresh ends the grace: Control back to NORMAL, its epoch advanced once.
    let token = fx.token(W::Authority, |_| {});
    let p = fx.p(
        "Boot_LicenseRefresh",
        json!({ "license": token }),
        W::Leader,
    );
    let c = fx.accept_p(&p, &[Region::Control]);
    assert_eq!(c.post.control.phase, "NORMAL");
    assert!(!c.post.control.degraded_by_license && c.post.control.reason.is_none());
    assert!(c.emitted("license_restored"));
}

#[test]
fn control_pause_from_license_degraded() {
    let mut fx = Fx::new();
    lifecycle(&mut fx);
    let (expires, _) = short_license(&mut fx);
    fx.now = expires + 10;
    let p = fx.p(
        "Ingestion_SourcesResolved",
        json!({ "sources": ["git://repos/a.git"] }),
        W::Worker,
    );
    fx.accept_p(&p, &[Region::Control]);
    let c = fx.accept(
        "Control_Pause",
        json!({ "reason": "maintenance" }),
        W::Leader,
    );
    assert_eq!(c.pre.control.phase, "DEGRADED");
    assert!(!c.post.control.degraded_by_license);
}

#[test]
fn an_expired_license_admits_only_boot_license_refresh() {
    let mut fx = Fx::new();
    license_expired(&mut fx);
    for (t, inputs, w) in [
        (
            "Ingestion_SourcesResolved",
            json!({ "sources": ["git://repos/a.git"] }),
            W::Worker,
        ),
        (
            "Environment_CapacityOk",
            json!({ "request": { "cpu_milli": 1, "mem_mb": 1 }, "capacity": { "cpu_milli": 1, "mem_mb": 1 } }),
            W::Worker,
        ),
        (
            "Council_ProfilesLoaded",
            json!({ "roles": [], "candidates": fx.members(), "tools": {} }),
            W::Leader,
        ),
    ] {
        let r = fx.reject(&fx.p(t, inputs, w));
        assert_eq!(
            (r.kind, r.guard.as_str()),
            (RejectKind::Guard, "license"),
            "{t}"
        );
        assert!(
            r.reasons[0].contains("only Boot_LicenseRefresh"),
            "{:?}",
            r.reasons
        );
    }
    let token = fx.token(W::Authority, |_| {});
    fx.accept(
        "Boot_LicenseRefresh",
        json!({ "license": token }),
        W::Leader,
    );
    fx.accept(
        "Ingestion_SourcesResolved",
        json!({ "sources": ["git://repos/a.git"] }),
        W::Worker,
    );
}

// ---------------------------------------------------------------------------
// 2. Rejections: kind, failing check, actionable reasons.
// ---------------------------------------------------------------------------

/// One refused proposal: from the state `setup` reaches, `propose` is
/// refused by check `guard` with `kind`; every expected fragment in `says`
/// (placeholders filled by `Fx::fill`) appears in a reason, and every reason
/// contains one of them, so no reason goes unchecked.
struct Case {
    name: &'static str,
    setup: fn(&mut Fx),
    propose: fn(&Fx) -> Proposal,
    kind: RejectKind,
    guard: &'static str,
    says: &'static [&'static str],
}

fn run_case(c: &Case) -> Rejection {
    let mut fx = Fx::new();
    (c.setup)(&mut fx);
    let p = (c.propose)(&fx);
    let head = fx.node.project_hash(P);
    let hlc_last = fx.st().hlc_last;
    let r = fx.reject(&p);
    assert_eq!(
        (r.kind, r.guard.as_str()),
        (c.kind, c.guard),
        "{}: {r:#?}",
        c.name
    );
    let says: Vec<String> = c.says.iter().map(|s| fx.fill(s, &p)).collect();
    for s in &says {
        assert!(
            r.reasons.iter().any(|r| r.contains(s.as_str())),
            "{}: no reason says {s:?}: {:#?}",
            c.name,
            r.reasons
        );
    }
    for reason in &r.reasons {
        assert!(
            says.iter().any(|s| reason.contains(s.as_str())),
            "{}: unexpected reason {reason:?}",
            c.name
        );
    }
    if matches!(r.kind, RejectKind::StaleHash | RejectKind::HlcOrder) {
        assert_eq!(
            (r.head_hash, r.hlc_last),
            (Some(head), hlc_last),
            "{}: a 409 tells the proposer where HEAD is",
            c.name
        );
    }
    r
}

fn run_cases(cases: &[Case]) {
    for c in cases {
        run_case(c);
    }
}

use RejectKind as K;

fn config_ok(fx: &Fx) -> Proposal {
    fx.p(
        "Boot_ConfigOk",
        json!({ "config_hash": h("config") }),
        W::Admin,
    )
}
fn sources_ok(fx: &Fx) -> Proposal {
    fx.p(
        "Ingestion_SourcesResolved",
        json!({ "sources": ["git://repos/a.git"] }),
        W::Worker,
    )
}
const SHAPE: &[Case] = &[
    Case {
        name: "bad project id",
        setup: fresh,
        propose: |fx| {
            let mut b = fx.builder("Boot_ConfigOk", json!({ "config_hash": h("config") }));
            b.project = "Bad Project!".into();
            b.sign(fx.key(W::Admin)).unwrap()
        },
        kind: K::Malformed,
        guard: "project",
        says: &["field `project`: must be 1..=64 characters of [a-z0-9._-]"],
    },
    Case {
        name: "empty idem_key",
        setup: fresh,
        propose: |fx| {
            let mut b = fx.builder("Boot_ConfigOk", json!({ "config_hash": h("config") }));
            b.idem_key = String::new();
            b.sign(fx.key(W::Admin)).unwrap()
        },
        kind: K::Malformed,
        guard: "idem_key",
        says: &["field `idem_key`: must be 1..=256 bytes, e.g. goalId:beatIndex:opClass:uuid"],
    },
    Case {
        name: "evidence that is neither ucxl:// nor bubble://",
        setup: fresh,
        propose: |fx| {
            let b = fx.builder("Boot_ConfigOk", json!({ "config_hash": h("config") }));
            b.evidence(vec!["https://example.com/x".into()]).sign(fx.key(W::Admin)).unwrap()
        },
        kind: K::Malformed,
        guard: "evidence",
        says: &["each a ucxl:// or bubble:// address"],
    },
    Case {
        name: "inputs not a map",
        setup: fresh,
        propose: |fx| {
            let mut p = config_ok(fx);
            p.inputs = Value::Array(vec![Value::Text("config_hash".into())]);
            p
        },
        kind: K::Malformed,
        guard: "inputs",
        says: &["field `inputs`: must be a map with text keys"],
    },
    Case {
        name: "inputs_hash not the hash of the inputs",
        setup: fresh,
        propose: |fx| {
            let mut p = config_ok(fx);
            p.inputs_hash = h("bad");
            p
        },
        kind: K::Malformed,
        guard: "inputs_hash",
        says: &["field `inputs_hash`: {bad} does not match the hash of the canonical encoding of `inputs`"],
    },
    Case {
        name: "a float in the inputs",
        setup: fetch,
        propose: |fx| {
            let mut p = fx.p("Ingestion_BytesOk", json!({ "content_hash": h("c"), "bytes": 1 }), W::Worker);
            p.inputs = Value::Map(vec![(Value::Text("bytes".into()), Value::Float(1.5))]);
            p
        },
        kind: K::Malformed,
        guard: "inputs",
        says: &["floats are not allowed in hashed data (at $.bytes); use integers"],
    },
];

#[test]
fn shape_rejections() {
    run_cases(SHAPE);
}

const AUTH: &[Case] = &[
    Case {
        name: "unknown transition",
        setup: fresh,
        propose: |fx| fx.p("Council_Coup", json!({}), W::Admin),
        kind: K::UnknownTransition,
        guard: "transition",
        says: &["unknown transition \"Council_Coup\"; `swoosh statechart` lists the 37 transitions"],
    },
    Case {
        name: "signer not in the roster",
        setup: fresh,
        propose: |fx| fx.p("Boot_ConfigOk", json!({ "config_hash": h("config") }), W::Outsider),
        kind: K::UnknownSigner,
        guard: "signature",
        says: &["signer {outsider} is not in project \"default\"'s roster; ask an admin to add it (Boot_SetRoster)"],
    },
    Case {
        name: "forged signature (one flipped byte)",
        setup: fresh,
        propose: |fx| {
            let mut p = config_ok(fx);
            p.signature.0[17] ^= 0x01;
            p
        },
        kind: K::BadSignature,
        guard: "signature",
        says: &["signature does not verify for signer {admin}", "sign the canonical CBOR of the proposal without `signature`"],
    },
    Case {
        name: "signed by someone else than the signer field",
        setup: fresh,
        propose: |fx| {
            let mut p = config_ok(fx);
            p.signer = fx.id(W::Leader);
            p
        },
        kind: K::BadSignature,
        guard: "signature",
        says: &["signature does not verify for signer {leader}"],
    },
    Case {
        name: "signer lacks the role",
        setup: fresh,
        propose: |fx| fx.p("Boot_ConfigOk", json!({ "config_hash": h("config") }), W::Worker),
        kind: K::Forbidden,
        guard: "role",
        says: &["Boot_ConfigOk needs one of the roles [admin, operator]; signer {worker} has [worker]"],
    },
    Case {
        name: "a council member cannot release a quarantine",
        setup: quarantined,
        propose: |fx| fx.p("Policy_Release", json!({ "rationale": "trust me" }), W::Council(0)),
        kind: K::Forbidden,
        guard: "role",
        says: &["Policy_Release needs one of the roles [admin]; signer {c0} has [council]"],
    },
];

#[test]
fn authentication_and_authorization_rejections() {
    run_cases(AUTH);
}

const ORDERING: &[Case] = &[
    Case {
        name: "idem_key reused with other content",
        setup: license_check,
        propose: |fx| {
            let used = fx.node.idem[P].keys().next().unwrap().clone();
            let mut b = fx.builder("Boot_Licensed", json!({ "license": fx.token(W::Authority, |_| {}) }));
            b.idem_key = used;
            b.sign(fx.key(W::Leader)).unwrap()
        },
        kind: K::IdemConflict,
        guard: "idempotency",
        says: &["idem_key \"{idem}\" was already used at index 1 for Boot_ConfigOk with different content; use a new idem_key"],
    },
    Case {
        name: "stale current_state_hash",
        setup: license_check,
        propose: |fx| {
            let mut b = fx.builder("Boot_Licensed", json!({ "license": fx.token(W::Authority, |_| {}) }));
            b.current_state_hash = h("bad");
            b.sign(fx.key(W::Leader)).unwrap()
        },
        kind: K::StaleHash,
        guard: "state_hash",
        says: &["HEAD of project \"default\" is {head}, the proposal names {bad}; re-read with `swoosh state` and resubmit"],
    },
    Case {
        name: "hlc before the last applied one",
        setup: license_check,
        propose: |fx| {
            let mut b = fx.builder("Boot_Licensed", json!({ "license": fx.token(W::Authority, |_| {}) }));
            b.hlc = Hlc::new(fx.st().hlc_last.unwrap().wall_ms - 1, 0);
            b.sign(fx.key(W::Leader)).unwrap()
        },
        kind: K::HlcOrder,
        guard: "hlc",
        says: &["hlc {hlc} is not after the last applied", "take a fresh HLC above it and resubmit"],
    },
    Case {
        name: "hlc ahead of the leader clock by more than hlc_max_offset_ms",
        setup: license_check,
        propose: |fx| {
            let mut b = fx.builder("Boot_Licensed", json!({ "license": fx.token(W::Authority, |_| {}) }));
            b.hlc = Hlc::new(fx.now + 5_001, 0);
            b.sign(fx.key(W::Leader)).unwrap()
        },
        kind: K::Guard,
        guard: "hlc",
        says: &["hlc {hlc} runs 5001 ms ahead of the leader's clock", "the maximum offset is 5000 ms: check the proposer's clock"],
    },
    Case {
        // Nothing can follow the last HLC within the offset: the leader's
        // clock is behind its log, not the proposer's ahead.
        name: "hlc after a last HLC that is itself ahead of the leader clock",
        setup: license_check_clock_stepped_back,
        propose: |fx| {
            let mut b = fx.builder("Boot_Licensed", json!({ "license": fx.token(W::Authority, |_| {}) }));
            let last = fx.st().hlc_last.unwrap();
            b.hlc = Hlc::new(last.wall_ms, last.counter + 1);
            b.sign(fx.key(W::Leader)).unwrap()
        },
        kind: K::Guard,
        guard: "hlc",
        says: &["the leader's clock is behind its own log", "correct the leader's clock if it is wrong, else wait"],
    },
    Case {
        // Judged at a backdated HLC, an expired license or a closed window
        // would pass: the lag is bounded like the lead.
        name: "hlc behind the leader clock by more than hlc_max_offset_ms",
        setup: license_check_10s_later,
        propose: |fx| {
            let mut b = fx.builder("Boot_Licensed", json!({ "license": fx.token(W::Authority, |_| {}) }));
            b.hlc = Hlc::new(fx.now - 5_001, 0);
            b.sign(fx.key(W::Leader)).unwrap()
        },
        kind: K::HlcOrder,
        guard: "hlc",
        says: &["hlc {hlc} runs 5001 ms behind the leader's clock", "the maximum offset is 5000 ms either way", "take a fresh HLC and resubmit"],
    },
];

#[test]
fn idempotency_state_hash_and_hlc_rejections() {
    run_cases(ORDERING);
}

#[test]
fn an_hlc_behind_the_leader_clock_within_the_offset_is_accepted() {
    let mut fx = Fx::new();
    license_check_10s_later(&mut fx);
    let at = Hlc::new(fx.now - 5_000, 0);
    let token = fx.token(W::Authority, |t| t.issued_at = at);
    let mut b = fx.builder("Boot_Licensed", json!({ "license": token }));
    b.hlc = at;
    let p = b.sign(fx.key(W::Leader)).unwrap();
    fx.accept_p(&p, &[]);
}

#[test]
fn an_exact_repeat_returns_the_original_outcome_and_applies_nothing() {
    let mut fx = Fx::new();
    let p = config_ok(&fx);
    let first = fx.accept_p(&p, &[]);
    license_check_then_licensed(&mut fx);
    let before = fx.node.clone();
    // The repeat names an old HEAD: idempotency is judged before the state hash.
    let s = fx.apply(&p);
    let Outcome::Duplicate(e) = s.outcome else {
        panic!("not a duplicate: {:?}", s.outcome)
    };
    assert_eq!(
        (e.index, e.state_post_hash, e.decision),
        (
            first.acc.record.index,
            first.acc.record.state_post_hash,
            first.acc.decision_hash
        )
    );
    assert_eq!(e.transition, "Boot_ConfigOk");
    assert_eq!(s.effects[0], Effect::Reply { status: 202 });
    assert_eq!(fx.node, before);
}

fn license_check_then_licensed(fx: &mut Fx) {
    let token = fx.token(W::Authority, |_| {});
    fx.accept("Boot_Licensed", json!({ "license": token }), W::Leader);
}

#[test]
fn idem_keys_are_per_project() {
    let mut fx = Fx::new();
    let p = config_ok(&fx);
    fx.accept_p(&p, &[]);
    let mut b = fx.builder("Boot_ConfigOk", json!({ "config_hash": h("config") }));
    b.project = "other".into();
    b.current_state_hash = fx.node.project_hash("other");
    b.idem_key = p.idem_key.clone();
    let q = b.sign(fx.key(W::Admin)).unwrap();
    assert!(matches!(fx.apply(&q).outcome, Outcome::Accepted(_)));
}

#[test]
fn hlc_ties_are_broken_by_signer_then_idem_key() {
    let mut fx = Fx::new();
    fetch(&mut fx);
    // Leader (operator) and worker may both sign the ingestion steps below.
    let (lo, hi) = if fx.id(W::Leader) < fx.id(W::Worker) {
        (W::Leader, W::Worker)
    } else {
        (W::Worker, W::Leader)
    };
    let at = fx.hlc();
    let tied = |fx: &Fx, t: &str, inputs: Json, w: Who, idem: &str| {
        let mut b = fx.builder(t, inputs);
        (b.hlc, b.idem_key) = (at, idem.into());
        b.sign(fx.key(w)).unwrap()
    };
    let bytes = json!({ "content_hash": h("c"), "bytes": 1 });
    fx.accept_p(&tied(&fx, "Ingestion_BytesOk", bytes, lo, "m"), &[]);
    let schema = || json!({ "schema_hash": h("s"), "findings": [] });
    // Same HLC and signer: an idem_key that sorts before the last one is refused.
    let r = fx.reject(&tied(&fx, "Ingestion_SchemaOk", schema(), lo, "l"));
    assert_eq!(
        (r.kind, r.guard.as_str(), r.hlc_last),
        (K::HlcOrder, "hlc", Some(at))
    );
    // A signer that sorts after the last one wins the tie whatever its idem_key.
    fx.accept_p(&tied(&fx, "Ingestion_SchemaOk", schema(), hi, "a"), &[]);
    // A signer that sorts before it loses the tie whatever its idem_key.
    let corpus = || json!({ "index_hash": h("i"), "version": 1 });
    let r = fx.reject(&tied(&fx, "Ingestion_CorpusBuilt", corpus(), lo, "z"));
    assert_eq!(r.kind, K::HlcOrder);
    // Same signer, an idem_key that sorts after: accepted at the same HLC.
    fx.accept_p(&tied(&fx, "Ingestion_CorpusBuilt", corpus(), hi, "b"), &[]);
    assert_eq!(fx.st().hlc_last, Some(at));
}

#[test]
fn hlc_exactly_at_the_maximum_offset_is_accepted() {
    let mut fx = Fx::new();
    let mut b = fx.builder("Boot_ConfigOk", json!({ "config_hash": h("config") }));
    b.hlc = Hlc::new(fx.now + 5_000, 0);
    let p = b.sign(fx.key(W::Admin)).unwrap();
    fx.accept_p(&p, &[]);
}

const STATUS: &[Case] = &[
    Case {
        name: "TERMINATED",
        setup: terminated,
        propose: |fx| fx.p("Policy_Release", json!({ "rationale": "undo" }), W::Admin),
        kind: K::Guard,
        guard: "project_status",
        says: &["project \"default\" is TERMINATED (\"cancelled by its owner\"); nothing leaves TERMINATED: start a new project id"],
    },
    Case {
        name: "QUARANTINED blocks lifecycle work",
        setup: quarantined,
        propose: sources_ok,
        kind: K::Guard,
        guard: "project_status",
        says: &["project \"default\" is QUARANTINED (\"audit pending\"); only an admin-signed Policy_Release or a Policy_Update leaves it"],
    },
    Case {
        name: "QUARANTINED blocks control transitions",
        setup: quarantined,
        propose: |fx| fx.p("Control_Pause", json!({ "reason": "x" }), W::Leader),
        kind: K::Guard,
        guard: "project_status",
        says: &["is QUARANTINED (\"audit pending\"); only an admin-signed Policy_Release"],
    },
    Case {
        name: "PAUSED blocks lifecycle work",
        setup: paused,
        propose: sources_ok,
        kind: K::Guard,
        guard: "project_status",
        says: &["project \"default\" is PAUSED (\"maintenance\"); propose Control_Resume first"],
    },
    Case {
        name: "RECOVERY blocks execution",
        setup: recovering,
        propose: |fx| fx.p("Execution_PlanLocked", json!({ "plan_hash": h("plan"), "pins": fx.pins() }), W::Leader),
        kind: K::Guard,
        guard: "project_status",
        says: &["project \"default\" is in RECOVERY (\"council unreachable\"); restore the council quorum and propose Control_Recovered first"],
    },
    Case {
        name: "RECOVERY blocks entering execution",
        setup: all_ready_recovering,
        propose: |fx| fx.p("Project_EnterExecution", json!({ "pins": fx.pins() }), W::Leader),
        kind: K::Guard,
        guard: "project_status",
        says: &["is in RECOVERY (\"council unreachable\"); restore the council quorum and propose Control_Recovered first"],
    },
    Case {
        name: "lifecycle work before the license",
        setup: fresh,
        propose: sources_ok,
        kind: K::Guard,
        guard: "project_status",
        says: &["Ingestion_SourcesResolved needs the project in PROJECT_LIFECYCLE or EXECUTION; project \"default\" is in BOOT"],
    },
    Case {
        name: "execution before entering it",
        setup: lifecycle,
        propose: |fx| fx.p("Execution_NextWindow", json!({}), W::Leader),
        kind: K::Guard,
        guard: "project_status",
        says: &["Execution_NextWindow needs the project in EXECUTION; project \"default\" is in PROJECT_LIFECYCLE"],
    },
    Case {
        name: "boot configuration after boot",
        setup: lifecycle,
        propose: config_ok,
        kind: K::Guard,
        guard: "project_status",
        says: &["Boot_ConfigOk needs the project in BOOT; project \"default\" is in PROJECT_LIFECYCLE"],
    },
];

#[test]
fn project_status_rejections() {
    run_cases(STATUS);
}

const FROM_STATE_AND_INPUTS: &[Case] = &[
    Case {
        name: "transition from the wrong state",
        setup: lifecycle,
        propose: |fx| {
            fx.p(
                "Ingestion_BytesOk",
                json!({ "content_hash": h("c"), "bytes": 1 }),
                W::Worker,
            )
        },
        kind: K::Guard,
        guard: "from_state",
        says: &["Ingestion_BytesOk needs Ingestion in FETCH; it is in DISCOVER"],
    },
    Case {
        name: "release without a quarantine",
        setup: lifecycle,
        propose: |fx| fx.p("Policy_Release", json!({ "rationale": "x" }), W::Admin),
        kind: K::Guard,
        guard: "from_state",
        says: &["Policy_Release needs Policy in QUARANTINED; it is in CLEAR"],
    },
    Case {
        name: "recheck from a state with no checks",
        setup: provision,
        propose: |fx| fx.p("Environment_Recheck", json!({}), W::Worker),
        kind: K::Guard,
        guard: "from_state",
        says: &["Environment_Recheck needs Environment in DEGRADED or READY; it is in PROVISION"],
    },
    Case {
        name: "unknown input field",
        setup: fresh,
        propose: |fx| {
            fx.p(
                "Boot_ConfigOk",
                json!({ "config_hash": h("config"), "colour": "blue" }),
                W::Admin,
            )
        },
        kind: K::Malformed,
        guard: "inputs",
        says: &[
            "inputs of Boot_ConfigOk do not match its schema",
            "unknown field `colour`, expected `config_hash`",
        ],
    },
    Case {
        name: "missing input field",
        setup: fresh,
        propose: |fx| fx.p("Boot_ConfigOk", json!({}), W::Admin),
        kind: K::Malformed,
        guard: "inputs",
        says: &[
            "inputs of Boot_ConfigOk do not match its schema",
            "missing field `config_hash`",
        ],
    },
    Case {
        name: "input of the wrong type",
        setup: fetch,
        propose: |fx| {
            fx.p(
                "Ingestion_BytesOk",
                json!({ "content_hash": "sha1:00", "bytes": 1 }),
                W::Worker,
            )
        },
        kind: K::Malformed,
        guard: "inputs",
        says: &[
            "inputs of Ingestion_BytesOk do not match its schema",
            "hash must start with",
            "sha1:00",
        ],
    },
    Case {
        name: "no sources",
        setup: lifecycle,
        propose: |fx| {
            fx.p(
                "Ingestion_SourcesResolved",
                json!({ "sources": [] }),
                W::Worker,
            )
        },
        kind: K::Malformed,
        guard: "inputs.sources",
        says: &["inputs.sources must name at least one source"],
    },
    Case {
        name: "empty reason",
        setup: lifecycle,
        propose: |fx| fx.p("Control_Pause", json!({ "reason": "" }), W::Leader),
        kind: K::Malformed,
        guard: "inputs.reason",
        says: &["inputs.reason must be 1..=1024 bytes of text"],
    },
    Case {
        name: "index version not above the last",
        setup: index,
        propose: |fx| {
            fx.p(
                "Ingestion_CorpusBuilt",
                json!({ "index_hash": h("i"), "version": 0 }),
                W::Worker,
            )
        },
        kind: K::Malformed,
        guard: "inputs.version",
        says: &["a new index must carry a new version: 0 is not above the last indexed version 0"],
    },
    Case {
        name: "candidate without the council role",
        setup: lifecycle,
        propose: |fx| {
            fx.p(
                "Council_ProfilesLoaded",
                json!({ "roles": [], "candidates": [fx.id(W::Admin)], "tools": {} }),
                W::Leader,
            )
        },
        kind: K::Malformed,
        guard: "inputs.candidates",
        says: &["candidate {admin} is not a council member of the roster"],
    },
    Case {
        name: "fewer candidates than the quorum threshold",
        setup: lifecycle,
        propose: |fx| {
            fx.p(
                "Council_ProfilesLoaded",
                json!({ "roles": [], "candidates": [fx.id(W::Council(0))], "tools": {} }),
                W::Leader,
            )
        },
        kind: K::Malformed,
        guard: "inputs.candidates",
        says: &["1 candidates cannot reach the quorum threshold 2"],
    },
    Case {
        name: "ejecting a signer that is not elected",
        setup: council_ready,
        propose: |fx| {
            fx.p(
                "Council_Eject",
                json!({ "member": fx.id(W::Outsider), "reason": "x" }),
                W::Leader,
            )
        },
        kind: K::Malformed,
        guard: "inputs.member",
        says: &["{outsider} is not in the elected council"],
    },
];

#[test]
fn from_state_and_inputs_rejections() {
    run_cases(FROM_STATE_AND_INPUTS);
}

fn licensed(fx: &Fx, edit: fn(&Fx, &mut LicenseBody), w: Who) -> Proposal {
    let token = fx.token(w, |b| edit(fx, b));
    fx.p("Boot_Licensed", json!({ "license": token }), W::Leader)
}

const LICENSE: &[Case] = &[
    Case {
        name: "license expired past its grace",
        setup: license_expired,
        propose: sources_ok,
        kind: K::Guard,
        guard: "license",
        says: &[
            "and its grace ended at",
            "(judged at the proposal's HLC {hlc}): only Boot_LicenseRefresh with a fresh token",
        ],
    },
    Case {
        name: "token signature invalid",
        setup: license_check,
        propose: |fx| {
            let mut token = fx.token(W::Authority, |_| {});
            token.signature.0[3] ^= 0x40;
            fx.p("Boot_Licensed", json!({ "license": token }), W::Leader)
        },
        kind: K::Guard,
        guard: "license_token",
        says: &[
            "license token signature is invalid",
            "request a new token from the license authority",
        ],
    },
    Case {
        name: "token authority is not a license_authority",
        setup: license_check,
        propose: |fx| licensed(fx, |_, _| {}, W::Admin),
        kind: K::Guard,
        guard: "license_token",
        says: &["license token authority {admin} is not a license_authority in the roster"],
    },
    Case {
        name: "token for another cluster",
        setup: license_check,
        propose: |fx| licensed(fx, |_, b| b.cluster_id = "elsewhere".into(), W::Authority),
        kind: K::Guard,
        guard: "license_token",
        says: &["license token is for cluster \"elsewhere\", this is cluster \"t-cluster\""],
    },
    Case {
        name: "token for another project",
        setup: license_check,
        propose: |fx| licensed(fx, |_, b| b.project = "other".into(), W::Authority),
        kind: K::Guard,
        guard: "license_token",
        says: &["license token covers project \"other\", not \"default\""],
    },
    Case {
        name: "token issued after the proposal's HLC",
        setup: license_check,
        propose: |fx| {
            licensed(
                fx,
                |fx, b| b.issued_at = Hlc::new(fx.now + 1_000, 0),
                W::Authority,
            )
        },
        kind: K::Guard,
        guard: "license_token",
        says: &[
            "license token is issued at",
            "after the proposal's HLC {hlc}",
        ],
    },
    Case {
        name: "token already expired",
        setup: license_check,
        propose: |fx| licensed(fx, |fx, b| b.expires_at = fx.hlc(), W::Authority),
        kind: K::Guard,
        guard: "license_token",
        says: &["license token already expired at {hlc} (proposal HLC {hlc}): request a fresh one"],
    },
    Case {
        name: "refresh with a token for another cluster",
        setup: lifecycle,
        propose: |fx| {
            let token = fx.token(W::Authority, |b| b.cluster_id = "elsewhere".into());
            fx.p(
                "Boot_LicenseRefresh",
                json!({ "license": token }),
                W::Leader,
            )
        },
        kind: K::Guard,
        guard: "license_token",
        says: &["license token is for cluster \"elsewhere\""],
    },
];

#[test]
fn license_and_license_token_rejections() {
    run_cases(LICENSE);
}

const POLICY: &[Case] = &[
    Case {
        name: "SchemaOk with a denied finding",
        setup: validate,
        propose: |fx| fx.p("Ingestion_SchemaOk", json!({ "schema_hash": h("s"), "findings": [secret_leak()] }), W::Worker),
        kind: K::Guard,
        guard: "policy",
        says: &["finding 'secret_leak' (AWS key in config.yaml) breaches policy rule 'no-secrets'", "propose Ingestion_PolicyViolation to quarantine the project"],
    },
    Case {
        name: "SourcesResolved with a file:/// source",
        setup: lifecycle,
        propose: |fx| fx.p("Ingestion_SourcesResolved", json!({ "sources": ["git://ok.git", "file:///etc/passwd"] }), W::Worker),
        kind: K::Guard,
        guard: "policy",
        says: &["source \"file:///etc/passwd\" is denied by policy rule 'no-secrets'", "remove it from the source set"],
    },
    Case {
        name: "PolicyViolation without a breaching finding",
        setup: validate,
        propose: |fx| fx.p("Ingestion_PolicyViolation", json!({ "findings": [{ "code": "style", "detail": "tabs" }] }), W::Worker),
        kind: K::Guard,
        guard: "policy_breach",
        says: &["none of the findings breaches a policy rule", "propose Ingestion_SchemaOk, or ask an admin for Policy_Quarantine"],
    },
    Case {
        name: "Policy_Update with duplicate rule ids",
        setup: lifecycle,
        propose: |fx| {
            let rule = json!({ "id": "r1", "deny_codes": [], "rationale": "x" });
            fx.p("Policy_Update", json!({ "rules": [rule, rule] }), W::Admin)
        },
        kind: K::Guard,
        guard: "policy_update",
        says: &["rule id 'r1' appears twice"],
    },
    Case {
        name: "Policy_Update whose rules still deny the quarantining finding",
        setup: quarantined_by_findings,
        propose: |fx| {
            let rule = json!({ "id": "no-secrets-v2", "deny_codes": ["secret_leak"], "rationale": "still no secrets" });
            fx.p("Policy_Update", json!({ "rules": [rule] }), W::Admin)
        },
        kind: K::Guard,
        guard: "policy_update",
        says: &["the new rules still deny finding 'secret_leak' (rule 'no-secrets-v2') that quarantined the project; change the rule or use Policy_Release"],
    },
];

#[test]
fn policy_rejections() {
    run_cases(POLICY);
}

fn first_election(fx: &Fx, votes: Vec<Vote>) -> Proposal {
    fx.election("Council_QuorumCert", &fx.members(), &votes)
}
fn valid_votes(fx: &Fx, n: usize) -> Vec<Vote> {
    fx.votes(&fx.members())[..n].to_vec()
}

const QUORUM: &[Case] = &[
    Case {
        name: "votes below the threshold",
        setup: elect,
        propose: |fx| first_election(fx, valid_votes(fx, 1)),
        kind: K::Guard,
        guard: "quorum",
        says: &["1 approving council votes for member set", "the quorum threshold is 2"],
    },
    Case {
        name: "approve=false votes do not count",
        setup: elect,
        propose: |fx| first_election(fx, fx.driver().votes(&fx.st(), &fx.members(), false)),
        kind: K::Guard,
        guard: "quorum",
        says: &["0 approving council votes", "the quorum threshold is 2"],
    },
    Case {
        name: "a vote with a bad signature",
        setup: elect,
        propose: |fx| {
            let mut votes = valid_votes(fx, 3);
            votes[0].signature.0[5] ^= 0x01;
            first_election(fx, votes)
        },
        kind: K::Guard,
        guard: "quorum",
        says: &["vote of {c0} has an invalid signature"],
    },
    Case {
        name: "a voter without the council role",
        setup: elect,
        propose: |fx| {
            let mut votes = valid_votes(fx, 2);
            votes.push(fx.vote(W::Admin, |_| {}));
            first_election(fx, votes)
        },
        kind: K::Guard,
        guard: "quorum",
        says: &["voter {admin} is not a council member of the roster"],
    },
    Case {
        name: "a vote for another project",
        setup: elect,
        propose: |fx| {
            let mut votes = valid_votes(fx, 2);
            votes.push(fx.vote(W::Council(2), |b| b.project = "other".into()));
            first_election(fx, votes)
        },
        kind: K::Guard,
        guard: "quorum",
        says: &["vote of {c2} is for project \"other\", not \"default\""],
    },
    Case {
        name: "a vote from a stale council epoch",
        setup: elect,
        propose: |fx| {
            let mut votes = valid_votes(fx, 2);
            votes.push(fx.vote(W::Council(2), |b| b.epoch -= 1));
            first_election(fx, votes)
        },
        kind: K::Guard,
        guard: "quorum",
        says: &["vote of {c2} is for council epoch 0, the current epoch is 1: stale vote, collect a new one"],
    },
    Case {
        name: "a vote for another member set",
        setup: elect,
        propose: |fx| {
            let mut votes = valid_votes(fx, 2);
            votes.push(fx.vote(W::Council(2), |b| b.member_set_hash = h("bad")));
            first_election(fx, votes)
        },
        kind: K::Guard,
        guard: "quorum",
        says: &["vote of {c2} is for member set {bad}, the proposed set hashes to"],
    },
    Case {
        name: "a voter voting twice",
        setup: elect,
        propose: |fx| {
            let mut votes = valid_votes(fx, 2);
            votes.insert(1, votes[0].clone());
            first_election(fx, votes)
        },
        kind: K::Guard,
        guard: "quorum",
        says: &["voter {c0} voted twice"],
    },
    Case {
        name: "a member that is not a candidate",
        setup: elect,
        propose: |fx| {
            let mut members = fx.members();
            members.push(fx.id(W::Admin));
            fx.election("Council_QuorumCert", &members, &fx.votes(&members))
        },
        kind: K::Guard,
        guard: "quorum",
        says: &["member {admin} is not among the council candidates of Council_ProfilesLoaded"],
    },
    Case {
        name: "a member listed twice",
        setup: elect,
        propose: |fx| {
            let mut members = fx.members();
            members.push(members[0].clone());
            fx.election("Council_QuorumCert", &members, &fx.votes(&members))
        },
        kind: K::Guard,
        guard: "quorum",
        says: &["list each elected member exactly once"],
    },
    Case {
        name: "QuorumCert after a previous election",
        setup: ejected,
        propose: |fx| {
            let members = fx.st().council.elected.clone();
            fx.election("Council_QuorumCert", &members, &fx.votes(&members))
        },
        kind: K::Guard,
        guard: "quorum",
        says: &[
            "this council was elected before (1 elections): after an ejection propose Council_ReElect",
            "was ejected from this council and may not vote in its re-election",
        ],
    },
    Case {
        // Regression: a council smaller than the threshold could never approve.
        name: "a member set smaller than the threshold",
        setup: elect,
        propose: |fx| {
            let one = vec![fx.id(W::Council(0))];
            fx.election("Council_QuorumCert", &one, &fx.votes(&one))
        },
        kind: K::Guard,
        guard: "quorum",
        says: &["a council of 1 members could never reach the quorum threshold 2"],
    },
    Case {
        name: "ReElect before any election",
        setup: elect,
        propose: |fx| fx.election("Council_ReElect", &fx.members(), &valid_votes(fx, 3)),
        kind: K::Guard,
        guard: "quorum",
        says: &["no council has been elected yet: propose Council_QuorumCert for the first election"],
    },
    Case {
        name: "ReElect of an ejected member",
        setup: ejected,
        propose: |fx| fx.election("Council_ReElect", &fx.members(), &fx.votes(&fx.members())),
        kind: K::Guard,
        guard: "quorum",
        says: &[
            "member {c0} was ejected and cannot be re-elected",
            "voter {c0} was ejected from this council and may not vote in its re-election",
        ],
    },
];

#[test]
fn quorum_rejections() {
    run_cases(QUORUM);
}

fn mcp_green(fx: &Fx, probes: Vec<Probe>) -> Proposal {
    fx.p("Council_McpGreen", json!({ "probes": probes }), W::Prober)
}
/// A healthy probe of `mcp-search` next to the `mcp-git` probe under test.
fn with_search(fx: &Fx, git: Probe) -> Vec<Probe> {
    vec![
        git,
        fx.probe("mcp-search", "0.9.0", true, fx.hlc(), W::Prober),
    ]
}

const MCP: &[Case] = &[
    Case {
        name: "no probe for a pinned tool",
        setup: tooling_sync,
        propose: |fx| mcp_green(fx, vec![fx.probe("mcp-search", "0.9.0", true, fx.hlc(), W::Prober)]),
        kind: K::Guard,
        guard: "mcp_health",
        says: &["no valid fresh probe for pinned tool 'mcp-git'"],
    },
    Case {
        name: "a pinned tool unreachable",
        setup: tooling_sync,
        propose: |fx| mcp_green(fx, fx.driver().probes(&fx.st(), fx.hlc(), false)),
        kind: K::Guard,
        guard: "mcp_health",
        says: &["tool 'mcp-git' is unreachable (probed at {hlc})"],
    },
    Case {
        name: "a pinned tool at another version",
        setup: tooling_sync,
        propose: |fx| mcp_green(fx, with_search(fx, fx.probe("mcp-git", "9.9.9", true, fx.hlc(), W::Prober))),
        kind: K::Guard,
        guard: "mcp_health",
        says: &["tool 'mcp-git' runs version 9.9.9 but the council pinned 1.4.2"],
    },
    Case {
        name: "a stale probe",
        setup: tooling_sync,
        propose: |fx| {
            let old = Hlc::new(fx.hlc().wall_ms - 60_001, 0);
            mcp_green(fx, with_search(fx, fx.probe("mcp-git", "1.4.2", true, old, W::Prober)))
        },
        kind: K::Guard,
        guard: "mcp_health",
        says: &["is older than 60000 ms at {hlc}: probe again", "no valid fresh probe for pinned tool 'mcp-git'"],
    },
    Case {
        name: "a probe signed by a non-prober",
        setup: tooling_sync,
        propose: |fx| mcp_green(fx, with_search(fx, fx.probe("mcp-git", "1.4.2", true, fx.hlc(), W::Admin))),
        kind: K::Guard,
        guard: "mcp_health",
        says: &["probe of tool 'mcp-git' is signed by {admin}, who is not a tool_prober in the roster", "no valid fresh probe for pinned tool 'mcp-git'"],
    },
    Case {
        name: "a probe with a bad signature",
        setup: tooling_sync,
        propose: |fx| {
            let mut git = fx.probe("mcp-git", "1.4.2", true, fx.hlc(), W::Prober);
            git.signature.0[0] ^= 0x08;
            mcp_green(fx, with_search(fx, git))
        },
        kind: K::Guard,
        guard: "mcp_health",
        says: &["probe of tool 'mcp-git' has an invalid signature", "no valid fresh probe for pinned tool 'mcp-git'"],
    },
    Case {
        name: "a probe for another project",
        setup: tooling_sync,
        propose: |fx| {
            let mut git = fx.probe("mcp-git", "1.4.2", true, fx.hlc(), W::Prober).body;
            git.project = "other".into();
            mcp_green(fx, with_search(fx, Probe::sign(git, fx.key(W::Prober))))
        },
        kind: K::Guard,
        guard: "mcp_health",
        says: &["probe of tool 'mcp-git' is for project \"other\"", "no valid fresh probe for pinned tool 'mcp-git'"],
    },
    Case {
        name: "a probe dated after the proposal's HLC",
        setup: tooling_sync,
        propose: |fx| {
            let later = Hlc::new(fx.hlc().wall_ms + 1, 0);
            mcp_green(fx, with_search(fx, fx.probe("mcp-git", "1.4.2", true, later, W::Prober)))
        },
        kind: K::Guard,
        guard: "mcp_health",
        says: &["probe of tool 'mcp-git' is dated", "after the proposal's HLC {hlc}", "no valid fresh probe for pinned tool 'mcp-git'"],
    },
    Case {
        name: "ToolingLost with a failing probe beside a forged one",
        setup: council_ready,
        propose: |fx| {
            let lost = fx.probe("mcp-git", "1.4.2", false, fx.hlc(), W::Prober);
            // The prober's name, someone else's signature.
            let body = fx.probe("mcp-search", "6.6.6-FORGED", true, fx.hlc(), W::Prober).body;
            let forged = Probe::sign(body, fx.key(W::Worker));
            fx.p("Council_ToolingLost", json!({ "probes": [lost, forged] }), W::Prober)
        },
        kind: K::Guard,
        guard: "mcp_health",
        says: &["probe of tool 'mcp-search' has an invalid signature"],
    },
    Case {
        name: "ToolingLost with a failing probe beside one for another project",
        setup: council_ready,
        propose: |fx| {
            let lost = fx.probe("mcp-git", "1.4.2", false, fx.hlc(), W::Prober);
            let mut other = fx.probe("mcp-search", "0.9.0", true, fx.hlc(), W::Prober).body;
            other.project = "other".into();
            let other = Probe::sign(other, fx.key(W::Prober));
            fx.p("Council_ToolingLost", json!({ "probes": [lost, other] }), W::Prober)
        },
        kind: K::Guard,
        guard: "mcp_health",
        says: &["probe of tool 'mcp-search' is for project \"other\""],
    },
    Case {
        name: "ToolingLost with every tool healthy",
        setup: council_ready,
        propose: |fx| fx.p("Council_ToolingLost", json!({ "probes": fx.driver().probes(&fx.st(), fx.hlc(), true) }), W::Prober),
        kind: K::Guard,
        guard: "mcp_health",
        says: &["no valid probe shows a pinned tool unreachable or off its pinned version, so tooling is not lost"],
    },
];

#[test]
fn mcp_health_rejections() {
    run_cases(MCP);
}

fn capacity_ok(fx: &Fx, cpu: u64, mem: u64) -> Proposal {
    let inputs = json!({ "request": { "cpu_milli": cpu, "mem_mb": mem }, "capacity": { "cpu_milli": 8000, "mem_mb": 32768 } });
    fx.p("Environment_CapacityOk", inputs, W::Worker)
}
fn checks(fx: &Fx, t: &str, checks: Json) -> Proposal {
    fx.p(t, json!({ "checks": checks }), W::Worker)
}

const ENVIRONMENT: &[Case] = &[
    Case {
        name: "CPU over capacity",
        setup: lifecycle,
        propose: |fx| capacity_ok(fx, 16_000, 4_096),
        kind: K::Guard,
        guard: "capacity",
        says: &["requested 16000 mCPU exceeds the 8000 mCPU available; wait for capacity or shrink the request"],
    },
    Case {
        name: "memory over capacity",
        setup: lifecycle,
        propose: |fx| capacity_ok(fx, 1_000, 65_536),
        kind: K::Guard,
        guard: "capacity",
        says: &["requested 65536 MB memory exceeds the 32768 MB available"],
    },
    Case {
        name: "an empty request",
        setup: lifecycle,
        propose: |fx| capacity_ok(fx, 0, 0),
        kind: K::Guard,
        guard: "capacity",
        says: &["the request must ask for some CPU and memory"],
    },
    Case {
        name: "Green with a failing check",
        setup: healthcheck,
        propose: |fx| checks(fx, "Environment_Green", json!([{ "name": "runner", "ok": true }, { "name": "network", "ok": false }])),
        kind: K::Guard,
        guard: "env_health",
        says: &["health check 'network' fails: propose Environment_Amber instead"],
    },
    Case {
        name: "Amber with every check passing",
        setup: healthcheck,
        propose: |fx| checks(fx, "Environment_Amber", json!([{ "name": "runner", "ok": true }])),
        kind: K::Guard,
        guard: "env_health",
        says: &["every health check passes, so the environment is not degraded: propose Environment_Green"],
    },
    Case {
        name: "Green without checks",
        setup: healthcheck,
        propose: |fx| checks(fx, "Environment_Green", json!([])),
        kind: K::Guard,
        guard: "env_health",
        says: &["no health checks were reported"],
    },
    Case {
        name: "Amber without checks",
        setup: healthcheck,
        propose: |fx| checks(fx, "Environment_Amber", json!([])),
        kind: K::Guard,
        guard: "env_health",
        says: &["no health checks were reported"],
    },
];

#[test]
fn capacity_and_env_health_rejections() {
    run_cases(ENVIRONMENT);
}

/// Project_EnterExecution with the state's pins, one field replaced.
fn enter_with(fx: &Fx, field: &str, value: Json) -> Proposal {
    let mut pins = fx.pins();
    pins[field] = value;
    fx.p("Project_EnterExecution", json!({ "pins": pins }), W::Leader)
}
fn env_rechecking(fx: &mut Fx) {
    all_ready(fx);
    fx.accept("Environment_Recheck", json!({}), W::Worker);
}

const ALL_READY: &[Case] = &[
    Case {
        name: "a region not READY",
        setup: env_rechecking,
        propose: |fx| {
            fx.p(
                "Project_EnterExecution",
                json!({ "pins": fx.pins() }),
                W::Leader,
            )
        },
        kind: K::Guard,
        guard: "all_ready",
        says: &["Environment is HEALTHCHECK, not READY"],
    },
    Case {
        name: "content_hash pin mismatch",
        setup: all_ready,
        propose: |fx| enter_with(fx, "content_hash", json!(h("bad"))),
        kind: K::Guard,
        guard: "all_ready",
        says: &[
            "pinned content_hash {bad} does not match the state's blake3:",
            "re-read the state and pin what is READY",
        ],
    },
    Case {
        name: "index_hash pin mismatch",
        setup: all_ready,
        propose: |fx| enter_with(fx, "index_hash", json!(h("bad"))),
        kind: K::Guard,
        guard: "all_ready",
        says: &["pinned index_hash {bad} does not match the state's blake3:"],
    },
    Case {
        name: "member_set_hash pin mismatch",
        setup: all_ready,
        propose: |fx| enter_with(fx, "member_set_hash", json!(h("bad"))),
        kind: K::Guard,
        guard: "all_ready",
        says: &["pinned member_set_hash {bad} does not match the state's blake3:"],
    },
    Case {
        name: "env_hash pin mismatch",
        setup: all_ready,
        propose: |fx| enter_with(fx, "env_hash", json!(h("bad"))),
        kind: K::Guard,
        guard: "all_ready",
        says: &["pinned env_hash {bad} does not match the state's blake3:"],
    },
    Case {
        name: "version pin mismatch",
        setup: all_ready,
        propose: |fx| enter_with(fx, "version", json!(99)),
        kind: K::Guard,
        guard: "all_ready",
        says: &["pinned index version 99 does not match the state's version 1"],
    },
    Case {
        name: "PlanLocked on pins made stale by a rollback",
        setup: |fx| {
            executing(fx);
            fx.accept(
                "Ingestion_RollbackIndex",
                json!({ "reason": "bad index" }),
                W::Leader,
            );
        },
        propose: |fx| {
            let pins = fx.st().execution.pins.clone().unwrap();
            fx.p(
                "Execution_PlanLocked",
                json!({ "plan_hash": h("plan"), "pins": pins }),
                W::Leader,
            )
        },
        kind: K::Guard,
        guard: "all_ready",
        says: &[
            "Ingestion is DISCOVER, not READY",
            "does not match the state's none",
        ],
    },
];

#[test]
fn all_ready_rejections() {
    run_cases(ALL_READY);
}

const EXECUTION: &[Case] = &[
    Case {
        name: "review gate while the review window is closed",
        setup: work,
        propose: |fx| fx.p("Execution_BeatReviewGate", json!({ "work_hash": h("work") }), W::Worker),
        kind: K::Guard,
        guard: "backbeat",
        says: &["the BACKBEAT window for class 'review' is closed at {hlc} (in phase 'work' of beat 0); it opens in", "resubmit then with a fresh HLC"],
    },
    Case {
        name: "window_id not naming the HLC's window",
        setup: review_open,
        propose: |fx| {
            let b = fx.builder("Execution_BeatReviewGate", json!({ "work_hash": h("work") }));
            b.window("backbeat:W-0-nowhere").sign(fx.key(W::Worker)).unwrap()
        },
        kind: K::Guard,
        guard: "backbeat",
        says: &["window_id \"backbeat:W-0-nowhere\" does not name the window of the proposal's HLC {hlc}, which is \"{window}\"; set window_id to it"],
    },
    Case {
        name: "approval by a council member that is not elected",
        setup: reverb_c2_ejected,
        propose: |fx| fx.p("Execution_Approve", json!({ "work_hash": fx.st().execution.work_hash }), W::Council(2)),
        kind: K::Guard,
        guard: "council_member",
        says: &["{c2} is not in the elected council set, so it cannot approve"],
    },
    Case {
        name: "a second approval by the same member",
        setup: reverb_approved_by_c0,
        propose: |fx| fx.p("Execution_Approve", json!({ "work_hash": fx.st().execution.work_hash }), W::Council(0)),
        kind: K::Guard,
        guard: "council_member",
        says: &["{c0} already approved this window"],
    },
    Case {
        name: "approval of other work",
        setup: reverb,
        propose: |fx| fx.p("Execution_Approve", json!({ "work_hash": h("bad") }), W::Council(0)),
        kind: K::Guard,
        guard: "council_member",
        says: &["the approval is for work {bad}, but the work under review is {work}"],
    },
    Case {
        name: "submission below the approval threshold",
        setup: reverb_approved_by_c0,
        propose: |fx| fx.p("Execution_Submit", json!({ "submission_hash": h("s") }), W::Leader),
        kind: K::Guard,
        guard: "approvals",
        says: &["1 council approvals in this REVERB; submission needs 2"],
    },
    Case {
        // Regression: an ejected member's approval must not count.
        name: "submission counting an ejected member's approval",
        setup: |fx| {
            reverb_approved_by_c0(fx);
            let c0 = fx.id(W::Council(0));
            fx.accept("Council_Eject", json!({ "member": c0, "reason": "left" }), W::Leader);
            let work = fx.st().execution.work_hash;
            fx.accept("Execution_Approve", json!({ "work_hash": work }), W::Council(1));
        },
        propose: |fx| fx.p("Execution_Submit", json!({ "submission_hash": h("s") }), W::Leader),
        kind: K::Guard,
        guard: "approvals",
        says: &["1 council approvals in this REVERB; submission needs 2"],
    },
    Case {
        name: "a second submission",
        setup: submitted,
        propose: |fx| fx.p("Execution_Submit", json!({ "submission_hash": h("s2") }), W::Leader),
        kind: K::Guard,
        guard: "approvals",
        says: &["this window's work was already submitted; propose Execution_NextWindow"],
    },
    Case {
        name: "next window without a submission",
        setup: approved,
        propose: |fx| fx.p("Execution_NextWindow", json!({}), W::Leader),
        kind: K::Guard,
        guard: "submission",
        says: &["nothing was submitted in this REVERB: collect approvals and propose Execution_Submit first"],
    },
];

#[test]
fn backbeat_council_member_approvals_and_submission_rejections() {
    run_cases(EXECUTION);
}

#[test]
fn a_closed_window_tells_when_to_retry() {
    let c = EXECUTION
        .iter()
        .find(|c| c.guard == "backbeat" && c.name.contains("closed"))
        .unwrap();
    let r = run_case(c);
    let mut fx = Fx::new();
    work(&mut fx);
    let hlc = fx.hlc();
    let sched = fx.st().execution.schedule.clone();
    let wait = sched.ms_until_open("review", &hlc).unwrap();
    assert!(wait > 0);
    assert!(
        r.reasons[0].contains(&format!("opens in {wait} ms")),
        "{:?}",
        r.reasons
    );
    // The hint is the wait scaled up by the tidal amplitude (250 ‰).
    assert_eq!(r.retry_after_ms, Some(wait + wait / 4));
    // A wrong window_id is not a matter of waiting.
    let c = EXECUTION
        .iter()
        .find(|c| c.guard == "backbeat" && c.name.contains("window_id"))
        .unwrap();
    assert_eq!(run_case(c).retry_after_ms, None);
}

const RECOVERY_AND_ROSTER: &[Case] = &[
    Case {
        name: "recovered while the council is not READY",
        setup: recovering_council_elect,
        propose: |fx| fx.p("Control_Recovered", json!({}), W::Leader),
        kind: K::Guard,
        guard: "recovery",
        says: &["council is ELECT with 2 elected members (threshold 2): re-elect a quorum (Council_Eject / Council_ReElect) before recovering"],
    },
    Case {
        name: "a roster without an admin",
        setup: lifecycle,
        propose: |fx| {
            let roster: Vec<_> = fx.k.roster().into_iter().filter(|e| !e.roles.contains(&Role::Admin)).collect();
            fx.p("Boot_SetRoster", json!({ "roster": roster }), W::Admin)
        },
        kind: K::Guard,
        guard: "roster",
        says: &["the new roster is invalid: it names no admin"],
    },
    Case {
        name: "a roster listing a key twice",
        setup: lifecycle,
        propose: |fx| {
            let mut roster = fx.k.roster();
            roster.push(roster[2].clone());
            fx.p("Boot_SetRoster", json!({ "roster": roster }), W::Admin)
        },
        kind: K::Guard,
        guard: "roster",
        says: &["the new roster is invalid: it lists {worker} twice"],
    },
    Case {
        name: "a roster entry without roles",
        setup: lifecycle,
        propose: |fx| {
            let mut roster = fx.k.roster();
            roster[2].roles.clear();
            fx.p("Boot_SetRoster", json!({ "roster": roster }), W::Admin)
        },
        kind: K::Guard,
        guard: "roster",
        says: &["the new roster is invalid: entry {worker} has no roles"],
    },
];

#[test]
fn recovery_and_roster_rejections() {
    run_cases(RECOVERY_AND_ROSTER);
}

const TABLES: &[&[Case]] = &[
    SHAPE,
    AUTH,
    ORDERING,
    STATUS,
    FROM_STATE_AND_INPUTS,
    LICENSE,
    POLICY,
    QUORUM,
    MCP,
    ENVIRONMENT,
    ALL_READY,
    EXECUTION,
    RECOVERY_AND_ROSTER,
];

#[test]
fn every_guard_and_every_rejection_kind_has_a_rejection_case() {
    let cases: Vec<&Case> = TABLES.iter().flat_map(|t| t.iter()).collect();
    let guards: BTreeSet<&str> = cases.iter().map(|c| c.guard).collect();
    for g in Guard::ALL {
        assert!(
            guards.contains(g.name()),
            "guard {} has no rejection case",
            g.name()
        );
    }
    // `shape` reports the offending field instead of its own name.
    for g in ALWAYS_GUARDS.iter().filter(|g| **g != "shape") {
        assert!(guards.contains(g), "always-guard {g} has no rejection case");
    }
    for k in [
        K::Malformed,
        K::UnknownTransition,
        K::Guard,
        K::BadSignature,
        K::UnknownSigner,
        K::Forbidden,
        K::StaleHash,
        K::IdemConflict,
        K::HlcOrder,
    ] {
        assert!(
            cases.iter().any(|c| c.kind == k),
            "rejection kind {k:?} has no case"
        );
    }
    let statuses: Vec<(K, u16)> = [
        K::Malformed,
        K::UnknownTransition,
        K::Guard,
        K::BadSignature,
        K::UnknownSigner,
        K::Forbidden,
        K::StaleHash,
        K::IdemConflict,
        K::HlcOrder,
    ]
    .into_iter()
    .map(|k| (k, k.http_status()))
    .collect();
    assert_eq!(
        statuses,
        [
            (K::Malformed, 400),
            (K::UnknownTransition, 400),
            (K::Guard, 400),
            (K::BadSignature, 401),
            (K::UnknownSigner, 401),
            (K::Forbidden, 403),
            (K::StaleHash, 409),
            (K::IdemConflict, 409),
            (K::HlcOrder, 409)
        ]
    );
}

// ---------------------------------------------------------------------------
// 3. Determinism.
// ---------------------------------------------------------------------------

/// A stream that visits the happy path, every compensation and most faults:
/// the driver's next step, with one of the scenario faults every third step.
fn mixed_stream() -> Vec<(Proposal, u64)> {
    let mut fx = Fx::new();
    let faults: Vec<Fault> = Fault::ALL
        .into_iter()
        .filter(|f| *f != Fault::Terminate)
        .collect();
    let mut accepted: Vec<Proposal> = vec![];
    for i in 0..240u64 {
        let d = Driver::new(&fx.k, 3);
        let p = if i % 3 == 2 {
            d.fault(
                &fx.node,
                P,
                fx.now,
                faults[(i as usize / 3) % faults.len()],
                &accepted,
                i,
            )
        } else {
            match d.next(&fx.node, P, fx.now) {
                Next::Propose(p) => Some(*p),
                Next::WaitMs(ms) => {
                    fx.now += ms;
                    None
                }
                Next::Done => None,
            }
        };
        if let Some(p) = p {
            if matches!(fx.apply(&p).outcome, Outcome::Accepted(_)) {
                accepted.push(p);
            }
        }
    }
    let d = Driver::new(&fx.k, 3);
    let last = d
        .fault(&fx.node, P, fx.now, Fault::Terminate, &accepted, 0)
        .unwrap();
    fx.apply(&last);
    assert!(
        accepted.len() > 60,
        "the stream should make progress: {} accepted",
        accepted.len()
    );
    fx.log
}

#[test]
fn the_same_proposals_give_the_same_hashes_on_two_nodes() {
    let stream = mixed_stream();
    let fresh_node = || Fx::new().node;
    let (mut a, mut b) = (fresh_node(), fresh_node());
    let mut transitions = BTreeSet::new();
    for (i, (p, now)) in stream.iter().enumerate() {
        let sa = step(&mut a, p, &ctx(*now));
        let sb = step(&mut b, p, &ctx(*now));
        assert_eq!(sa, sb, "step {i} ({})", p.transition);
        assert_eq!(a.root_hash(), b.root_hash(), "step {i}");
        if let Outcome::Accepted(acc) = &sa.outcome {
            transitions.insert(acc.record.transition.clone());
        }
    }
    assert_eq!(a, b);
    assert!(
        transitions.len() > 25,
        "the stream covers many transitions: {transitions:?}"
    );
}

#[test]
fn the_node_state_survives_canonical_cbor_after_every_step() {
    let stream = mixed_stream();
    let mut kept = Fx::new().node;
    let mut decoded = kept.clone();
    for (i, (p, now)) in stream.iter().enumerate() {
        let sa = step(&mut kept, p, &ctx(*now));
        let sb = step(&mut decoded, p, &ctx(*now));
        assert_eq!(sa, sb, "step {i} ({})", p.transition);
        let bytes = to_canonical(&decoded).unwrap();
        let again: NodeState = from_canonical(&bytes).unwrap();
        assert_eq!(again, decoded, "step {i}: the decoded state differs");
        assert_eq!(
            to_canonical(&again).unwrap(),
            bytes,
            "step {i}: re-encoding changes the bytes"
        );
        decoded = again;
        assert_eq!(decoded.root_hash(), kept.root_hash(), "step {i}");
    }
}

/// `ProposalChecked` is what the node's sequencer runs with after checking the
/// proposal's signature at admission: it must still verify every embedded
/// signature, and on valid input it must decide exactly as `Full` does.
#[test]
fn proposal_checked_skips_only_the_proposal_s_own_signature() {
    // Embedded signatures are still verified.
    let mut fx = Fx::new();
    fx.verify = Verify::ProposalChecked;
    elect(&mut fx);
    let mut votes = valid_votes(&fx, 3);
    votes[0].signature.0[5] ^= 0x01;
    let p = first_election(&fx, votes);
    let r = fx.reject(&p);
    assert_eq!((r.kind, r.guard.as_str()), (K::Guard, "quorum"));
    assert!(
        r.reasons
            .iter()
            .any(|x| x.contains("has an invalid signature")),
        "{r:#?}"
    );

    // The proposal's own signature is the caller's to check: the mode skips it.
    let mut fx = Fx::new();
    fx.verify = Verify::ProposalChecked;
    let mut p = config_ok(&fx);
    p.signature.0[17] ^= 0x01;
    assert!(matches!(fx.apply(&p).outcome, Outcome::Accepted(_)));

    // On valid input, both modes make the same records and the same state.
    let mut full = Fx::new();
    let mut checked = Fx::new();
    checked.verify = Verify::ProposalChecked;
    full.drive_until("Council ELECT", |s| s.council.phase == "ELECT");
    for (p, now) in full.log.clone() {
        checked.now = now;
        let s = checked.apply(&p);
        assert!(
            matches!(s.outcome, Outcome::Accepted(_)),
            "{}",
            p.transition
        );
    }
    assert_eq!(checked.node.root_hash(), full.node.root_hash());
    assert_eq!(checked.node.head_record, full.node.head_record);
}
