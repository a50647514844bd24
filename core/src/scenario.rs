//! A pure, state-driven workload: given a node's state and the time, the
//! next proposal that moves a project along the statechart's happy path,
//! plus deliberate faults (stale hashes, forged signatures, replays …).
//!
//! Used by `swoosh demo`, the tests, the storage suite and the simulator, so
//! they all exercise the same realistic stream. Keys are derived from labels
//! (deterministic); this is for demos and tests, never for production keys.

use crate::backbeat::{Phase, Schedule};
use crate::facts::{
    Check, Finding, LicenseBody, LicenseToken, Pins, Probe, ProbeBody, Resources, RosterEntry,
    Vote, VoteBody,
};
use crate::hash::Hash;
use crate::hlc::Hlc;
use crate::proposal::{Proposal, ProposalBuilder};
use crate::sig::SignerId;
use crate::state::{Genesis, NodeState, ProjectState};
use crate::statechart::{Role, MACHINE_VERSION};
use ed25519_dalek::SigningKey;
use serde::Serialize;
use std::collections::BTreeMap;

/// A cluster's deterministic identities.
pub struct Keys {
    pub admin: SigningKey,
    /// The leader's key (operator): proposes lifecycle steps and certificates.
    pub leader: SigningKey,
    pub worker: SigningKey,
    pub council: Vec<SigningKey>,
    pub license_authority: SigningKey,
    pub prober: SigningKey,
    /// A key that is in no roster.
    pub outsider: SigningKey,
}

impl Keys {
    pub fn from_labels(prefix: &str, council: usize) -> Keys {
        let k = |n: &str| crate::sig::key_from_label(&format!("{prefix}/{n}"));
        Keys {
            admin: k("admin"),
            leader: k("leader"),
            worker: k("worker"),
            council: (0..council)
                .map(|i| k(&format!("council-{}", i + 1)))
                .collect(),
            license_authority: k("license-authority"),
            prober: k("tool-prober"),
            outsider: k("outsider"),
        }
    }

    pub fn roster(&self) -> Vec<RosterEntry> {
        let e = |k: &SigningKey, name: &str, roles: Vec<Role>| RosterEntry {
            key: SignerId::from_signing_key(k),
            name: name.into(),
            roles,
        };
        let mut r = vec![
            e(&self.admin, "admin", vec![Role::Admin]),
            e(&self.leader, "leader", vec![Role::Operator]),
            e(&self.worker, "worker", vec![Role::Worker]),
            e(
                &self.license_authority,
                "license-authority",
                vec![Role::LicenseAuthority],
            ),
            e(&self.prober, "tool-prober", vec![Role::ToolProber]),
        ];
        for (i, c) in self.council.iter().enumerate() {
            r.push(e(c, &format!("council-{}", i + 1), vec![Role::Council]));
        }
        r
    }
}

/// The default BACKBEAT schedule: a 600 ms beat with a 300 ms work phase,
/// then 150 ms review, then 150 ms reverb.
pub fn default_schedule(origin_ms: u64) -> Schedule {
    Schedule {
        origin_ms,
        period_ms: 600,
        phases: vec![
            Phase {
                name: "work".into(),
                start_ms: 0,
                end_ms: 300,
                opens: vec!["plan".into(), "work".into()],
            },
            Phase {
                name: "review".into(),
                start_ms: 300,
                end_ms: 450,
                opens: vec!["review".into()],
            },
            Phase {
                name: "reverb".into(),
                start_ms: 450,
                end_ms: 600,
                opens: vec!["reverb".into()],
            },
        ],
        amplitude_permille: 250,
    }
}

pub fn genesis(keys: &Keys, cluster_id: &str, origin_ms: u64) -> Genesis {
    Genesis {
        cluster_id: cluster_id.into(),
        machine_version: MACHINE_VERSION.into(),
        leader: SignerId::from_signing_key(&keys.leader),
        roster: keys.roster(),
        followers: vec![],
        backbeat: default_schedule(origin_ms),
        policy_rules: vec![crate::facts::PolicyRule {
            id: "no-secrets".into(),
            deny_codes: vec!["secret_leak".into(), "source:file".into()],
            rationale: "sources must not leak credentials or read the local filesystem".into(),
        }],
        quorum_threshold: (keys.council.len() as u32 / 2) + 1,
        hlc_max_offset_ms: 5_000,
        probe_max_age_ms: 60_000,
        facts_bound_to_genesis: true,
    }
}

/// What the driver wants to do next for a project.
#[derive(Debug)]
pub enum Next {
    Propose(Box<Proposal>),
    /// The next step is time-gated; its window opens in this many ms.
    WaitMs(u64),
    /// Nothing left on the happy path (loops done, terminated, quarantined).
    Done,
}

pub const TOOL_PINS: [(&str, &str); 2] = [("mcp-git", "1.4.2"), ("mcp-search", "0.9.0")];

fn h(label: &str) -> Hash {
    Hash::of_bytes(label.as_bytes())
}

pub struct Driver<'k> {
    pub keys: &'k Keys,
    /// Stop after this many execution loops per project.
    pub loops: u64,
}

#[derive(Serialize)]
struct NoInputs {}

impl<'k> Driver<'k> {
    pub fn new(keys: &'k Keys, loops: u64) -> Self {
        Driver { keys, loops }
    }

    /// The HLC a well-behaved proposer would use now.
    pub fn hlc_for(state: &ProjectState, now_ms: u64) -> Hlc {
        Hlc::send(state.hlc_last.unwrap_or_default(), now_ms).expect("test clocks stay in range")
    }

    fn build<T: Serialize>(
        &self,
        node: &NodeState,
        project: &str,
        transition: &str,
        inputs: &T,
        key: &SigningKey,
        now_ms: u64,
    ) -> Proposal {
        let st = node.project(project);
        let hlc = Self::hlc_for(&st, now_ms);
        let window = st.execution.schedule.window_id(&hlc);
        let idem = format!(
            "{project}:{}:{transition}:{}",
            st.applied,
            hex::encode(&SignerId::from_signing_key(key).0[..4])
        );
        ProposalBuilder::new(project, transition, node.project_hash(project), hlc, &idem)
            .inputs(inputs)
            .expect("driver inputs encode")
            .window(window)
            .evidence(vec![format!("ucxl://chorus:spec@{project}/{transition}")])
            .sign(key)
            .expect("driver proposals encode")
    }

    pub fn license(
        &self,
        cluster_id: &str,
        issued: Hlc,
        expires_ms: u64,
        grace_ms: u64,
    ) -> LicenseToken {
        LicenseToken::issue(
            LicenseBody {
                cluster_id: cluster_id.into(),
                project: "*".into(),
                issued_at: issued,
                expires_at: Hlc::new(expires_ms, 0),
                grace_ms,
                authority: SignerId::from_signing_key(&self.keys.license_authority),
            },
            &self.keys.license_authority,
        )
    }

    pub fn members(&self) -> Vec<SignerId> {
        let mut m: Vec<SignerId> = self
            .keys
            .council
            .iter()
            .map(SignerId::from_signing_key)
            .collect();
        m.sort();
        m
    }

    pub fn votes(&self, st: &ProjectState, members: &[SignerId], approve: bool) -> Vec<Vote> {
        let set = crate::facts::member_set_hash(members);
        self.keys
            .council
            .iter()
            .map(|k| {
                Vote::cast(
                    VoteBody {
                        project: st.meta.project.clone(),
                        epoch: st.epoch.council,
                        member_set_hash: set,
                        approve,
                        voter: SignerId::from_signing_key(k),
                        genesis: Some(st.meta.genesis),
                    },
                    k,
                )
            })
            .collect()
    }

    pub fn probes(&self, st: &ProjectState, at: Hlc, healthy: bool) -> Vec<Probe> {
        TOOL_PINS
            .iter()
            .enumerate()
            .map(|(i, (tool, ver))| {
                Probe::sign(
                    ProbeBody {
                        project: st.meta.project.clone(),
                        tool: tool.to_string(),
                        reachable: healthy || i > 0,
                        version: ver.to_string(),
                        probed_at: at,
                        prober: SignerId::from_signing_key(&self.keys.prober),
                        genesis: Some(st.meta.genesis),
                    },
                    &self.keys.prober,
                )
            })
            .collect()
    }

    pub fn pins(st: &ProjectState) -> Option<Pins> {
        Some(Pins {
            content_hash: st.ingestion.content_hash?,
            index_hash: st.ingestion.index_hash?,
            version: st.ingestion.version,
            member_set_hash: st.council.member_set_hash?,
            env_hash: st.environment.env_hash?,
        })
    }

    /// The next happy-path proposal for `project` at `now_ms`.
    pub fn next(&self, node: &NodeState, project: &str, now_ms: u64) -> Next {
        let st = node.project(project).into_owned();
        let hlc = Self::hlc_for(&st, now_ms);
        let b = |t: &str, inputs: &dyn erased::Ser, key: &SigningKey| {
            Next::Propose(Box::new(self.build(
                node,
                project,
                t,
                &erased::Wrap(inputs),
                key,
                now_ms,
            )))
        };
        if st.meta.phase == "TERMINATED" || st.policy.phase == "QUARANTINED" {
            return Next::Done;
        }
        if st.boot.phase == "LICENSED" {
            if let crate::guards::LicenseAt::Expired { .. } = crate::guards::license_at(&st, &hlc) {
                let lic = self.license(
                    &st.meta.cluster_id,
                    hlc,
                    hlc.wall_ms + 365 * 86_400_000,
                    86_400_000,
                );
                return b(
                    "Boot_LicenseRefresh",
                    &one("license", lic),
                    &self.keys.leader,
                );
            }
        }
        match st.control.phase.as_str() {
            "PAUSED" => return b("Control_Resume", &NoInputs {}, &self.keys.leader),
            "RECOVERY" if st.council.phase == "READY" => {
                return b("Control_Recovered", &NoInputs {}, &self.keys.leader)
            }
            _ => {}
        }
        match st.meta.phase.as_str() {
            "BOOT" => match st.boot.phase.as_str() {
                "UNINITIALIZED" => b(
                    "Boot_ConfigOk",
                    &one("config_hash", h(&format!("config/{project}"))),
                    &self.keys.admin,
                ),
                _ => {
                    let lic = self.license(
                        &st.meta.cluster_id,
                        hlc,
                        hlc.wall_ms + 365 * 86_400_000,
                        86_400_000,
                    );
                    b("Boot_Licensed", &one("license", lic), &self.keys.leader)
                }
            },
            "PROJECT_LIFECYCLE" => {
                let regions = [
                    ("Ingestion", &st.ingestion.phase),
                    ("Council", &st.council.phase),
                    ("Environment", &st.environment.phase),
                ];
                let pending: Vec<&str> = regions
                    .iter()
                    .filter(|(_, p)| p.as_str() != "READY")
                    .map(|(n, _)| *n)
                    .collect();
                if pending.is_empty() {
                    let pins = Self::pins(&st).expect("READY regions carry their hashes");
                    return b(
                        "Project_EnterExecution",
                        &one("pins", pins),
                        &self.keys.leader,
                    );
                }
                // Interleave the parallel regions deterministically.
                let region = pending[(st.applied as usize) % pending.len()];
                self.lifecycle_step(node, project, &st, region, hlc, now_ms)
            }
            "EXECUTION" => {
                if let Some(r) = ["Ingestion", "Council", "Environment"]
                    .into_iter()
                    .find(|r| {
                        st.region_state(
                            crate::statechart::Region::from_name(r).expect("known region"),
                        ) != "READY"
                    })
                {
                    return self.lifecycle_step(node, project, &st, r, hlc, now_ms);
                }
                if st.execution.loops >= self.loops {
                    return Next::Done;
                }
                let sched = &st.execution.schedule;
                let gated = |class: &str, t: &str, inputs: &dyn erased::Ser, key: &SigningKey| {
                    if sched.is_open(class, &hlc) {
                        b(t, inputs, key)
                    } else {
                        Next::WaitMs(
                            sched
                                .ms_until_open(class, &hlc)
                                .unwrap_or(sched.period_ms)
                                .max(1),
                        )
                    }
                };
                match st.execution.phase.as_str() {
                    "PLAN" => {
                        let pins = Self::pins(&st).expect("executing projects are pinned");
                        b(
                            "Execution_PlanLocked",
                            &Two(
                                "plan_hash",
                                h(&format!("plan/{project}/{}", st.execution.loops)),
                                "pins",
                                pins,
                            ),
                            &self.keys.leader,
                        )
                    }
                    "WORK" => gated(
                        "review",
                        "Execution_BeatReviewGate",
                        &one("work_hash", work_hash(project, st.execution.loops)),
                        &self.keys.worker,
                    ),
                    "REVIEW" => gated(
                        "reverb",
                        "Execution_ReverbOpen",
                        &one(
                            "review_hash",
                            h(&format!("review/{project}/{}", st.execution.loops)),
                        ),
                        &self.keys.leader,
                    ),
                    _ => {
                        let need = st.council.quorum_threshold as usize;
                        if st.execution.approvals.len() < need {
                            let k = self
                                .keys
                                .council
                                .iter()
                                .find(|k| {
                                    let id = SignerId::from_signing_key(k);
                                    st.council.elected.contains(&id)
                                        && !st.execution.approvals.contains(&id)
                                })
                                .expect("enough elected members to approve");
                            gated(
                                "reverb",
                                "Execution_Approve",
                                &one("work_hash", work_hash(project, st.execution.loops)),
                                k,
                            )
                        } else if st.execution.submission.is_none() {
                            gated(
                                "reverb",
                                "Execution_Submit",
                                &one(
                                    "submission_hash",
                                    h(&format!("submission/{project}/{}", st.execution.loops)),
                                ),
                                &self.keys.leader,
                            )
                        } else {
                            b("Execution_NextWindow", &NoInputs {}, &self.keys.leader)
                        }
                    }
                }
            }
            _ => Next::Done,
        }
    }

    fn lifecycle_step(
        &self,
        node: &NodeState,
        project: &str,
        st: &ProjectState,
        region: &str,
        hlc: Hlc,
        now_ms: u64,
    ) -> Next {
        let b = |t: &str, inputs: &dyn erased::Ser, key: &SigningKey| {
            Next::Propose(Box::new(self.build(
                node,
                project,
                t,
                &erased::Wrap(inputs),
                key,
                now_ms,
            )))
        };
        let w = &self.keys.worker;
        let l = &self.keys.leader;
        match (
            region,
            st.region_state(crate::statechart::Region::from_name(region).expect("known region")),
        ) {
            ("Ingestion", "DISCOVER") => b(
                "Ingestion_SourcesResolved",
                &one("sources", vec![format!("git://repos/{project}.git")]),
                w,
            ),
            ("Ingestion", "FETCH") => b(
                "Ingestion_BytesOk",
                &Two(
                    "content_hash",
                    h(&format!("content/{project}/{}", st.ingestion.rollbacks)),
                    "bytes",
                    1_048_576u64,
                ),
                w,
            ),
            ("Ingestion", "VALIDATE") => b(
                "Ingestion_SchemaOk",
                &Two(
                    "schema_hash",
                    h("schema/v1"),
                    "findings",
                    Vec::<Finding>::new(),
                ),
                w,
            ),
            ("Ingestion", "INDEX") => b(
                "Ingestion_CorpusBuilt",
                &Two(
                    "index_hash",
                    h(&format!("index/{project}/{}", st.ingestion.version + 1)),
                    "version",
                    st.ingestion.version + 1,
                ),
                w,
            ),
            ("Council", "PLAN_ROLES") => {
                let tools: BTreeMap<String, String> = TOOL_PINS
                    .iter()
                    .map(|(t, v)| (t.to_string(), v.to_string()))
                    .collect();
                b(
                    "Council_ProfilesLoaded",
                    &Three(
                        "roles",
                        vec!["architect".to_string(), "reviewer".into(), "builder".into()],
                        "candidates",
                        self.members(),
                        "tools",
                        tools,
                    ),
                    l,
                )
            }
            ("Council", "ELECT") => {
                let members: Vec<SignerId> = self
                    .members()
                    .into_iter()
                    .filter(|m| !st.council.ejected.contains(m))
                    .collect();
                let votes: Vec<Vote> = self
                    .votes(st, &members, true)
                    .into_iter()
                    .filter(|v| members.contains(&v.body.voter))
                    .collect();
                let t = if st.council.elections == 0 {
                    "Council_QuorumCert"
                } else {
                    "Council_ReElect"
                };
                b(t, &Two("members", members, "votes", votes), l)
            }
            ("Council", "TOOLING_SYNC") => b(
                "Council_McpGreen",
                &one("probes", self.probes(st, hlc, true)),
                &self.keys.prober,
            ),
            ("Environment", "ALLOCATE") => b(
                "Environment_CapacityOk",
                &Two(
                    "request",
                    Resources {
                        cpu_milli: 2_000,
                        mem_mb: 4_096,
                    },
                    "capacity",
                    Resources {
                        cpu_milli: 8_000,
                        mem_mb: 32_768,
                    },
                ),
                w,
            ),
            ("Environment", "PROVISION") => b(
                "Environment_Installed",
                &Two(
                    "assets",
                    vec![format!("vm://{project}/runner-1")],
                    "env_hash",
                    h(&format!("env/{project}/{}", st.environment.deprovisions)),
                ),
                w,
            ),
            ("Environment", "HEALTHCHECK") | ("Environment", "DEGRADED")
                if st.environment.phase == "HEALTHCHECK" =>
            {
                b(
                    "Environment_Green",
                    &one(
                        "checks",
                        vec![
                            Check {
                                name: "runner".into(),
                                ok: true,
                            },
                            Check {
                                name: "network".into(),
                                ok: true,
                            },
                        ],
                    ),
                    w,
                )
            }
            ("Environment", "DEGRADED") => b("Environment_Recheck", &NoInputs {}, w),
            _ => Next::Done,
        }
    }
}

pub fn work_hash(project: &str, loop_no: u64) -> Hash {
    h(&format!("work/{project}/{loop_no}"))
}

/// A single-field inputs map.
pub fn one<T: Serialize>(k: &'static str, v: T) -> BTreeMap<&'static str, T> {
    let mut m = BTreeMap::new();
    m.insert(k, v);
    m
}

/// A two-field inputs map of differently typed values.
pub struct Two<A, B>(pub &'static str, pub A, pub &'static str, pub B);
/// A three-field inputs map of differently typed values.
pub struct Three<A, B, C>(
    pub &'static str,
    pub A,
    pub &'static str,
    pub B,
    pub &'static str,
    pub C,
);

impl<A: Serialize, B: Serialize> Serialize for Two<A, B> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        pairs::ser2(self, s)
    }
}
impl<A: Serialize, B: Serialize, C: Serialize> Serialize for Three<A, B, C> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        pairs::ser3(self, s)
    }
}

// Inputs maps of two or three fields of different types.
mod pairs {
    use super::{Three, Two};
    use serde::ser::{SerializeMap, Serializer};
    use serde::Serialize;

    pub fn ser2<S: Serializer, A: Serialize, B: Serialize>(
        t: &Two<A, B>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry(t.0, &t.1)?;
        m.serialize_entry(t.2, &t.3)?;
        m.end()
    }
    pub fn ser3<S: Serializer, A: Serialize, B: Serialize, C: Serialize>(
        t: &Three<A, B, C>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry(t.0, &t.1)?;
        m.serialize_entry(t.2, &t.3)?;
        m.serialize_entry(t.4, &t.5)?;
        m.end()
    }
}

// Object-safe serialization of inputs so the driver's closures can take any
// inputs type.
mod erased {
    use serde::Serialize;

    pub trait Ser {
        fn value(&self) -> ciborium::Value;
    }
    impl<T: Serialize> Ser for T {
        fn value(&self) -> ciborium::Value {
            ciborium::Value::serialized(self).expect("driver inputs serialize")
        }
    }
    pub struct Wrap<'a>(pub &'a dyn Ser);
    impl Serialize for Wrap<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            self.0.value().serialize(s)
        }
    }
}

/// One accepted or refused proposal of a run, with the project state before it.
pub struct RunStep<'a> {
    pub proposal: &'a Proposal,
    pub step: &'a crate::reducer::Step,
    pub pre: &'a ProjectState,
    pub node: &'a NodeState,
    pub now_ms: u64,
}

/// Drive `projects` along the happy path on a virtual clock that starts at
/// `start_ms` and jumps ahead whenever every project waits for a window.
/// Returns the final virtual time. Stops when all projects are done or after
/// `steps_max` proposals.
pub fn run_happy_path(
    node: &mut NodeState,
    driver: &Driver,
    projects: &[String],
    start_ms: u64,
    steps_max: usize,
    mut on_step: impl FnMut(RunStep<'_>),
) -> u64 {
    let mut now = start_ms;
    let mut steps = 0;
    loop {
        let mut progressed = false;
        let mut wait = u64::MAX;
        for p in projects {
            if steps >= steps_max {
                return now;
            }
            match driver.next(node, p, now) {
                Next::Propose(prop) => {
                    let pre = node.project(p).into_owned();
                    let ctx = crate::reducer::Ctx {
                        now_ms: now,
                        verify: crate::guards::Verify::Full,
                        snapshot_every: 0,
                    };
                    let st = crate::reducer::step(node, &prop, &ctx);
                    on_step(RunStep {
                        proposal: &prop,
                        step: &st,
                        pre: &pre,
                        node,
                        now_ms: now,
                    });
                    steps += 1;
                    progressed = true;
                    now += 1;
                }
                Next::WaitMs(ms) => wait = wait.min(ms),
                Next::Done => {}
            }
        }
        if !progressed {
            if wait == u64::MAX {
                return now;
            }
            now += wait;
        }
    }
}

/// Deliberate faults a workload mixes into its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// A valid next step but naming an outdated state hash.
    StaleHash,
    /// Resubmit an already accepted proposal unchanged.
    Replay,
    /// Reuse an accepted idempotency key for different content.
    IdemConflict,
    /// Corrupt the signature of a valid proposal.
    ForgedSignature,
    UnknownTransition,
    /// A valid step signed by a rostered key lacking the role.
    WrongRole,
    /// A valid step signed by a key outside the roster.
    Outsider,
    /// An HLC far ahead of the leader's clock.
    ClockAhead,
    /// A time-gated step naming the wrong window.
    WrongWindow,
    /// A quorum certificate carrying a forged vote.
    ForgedVote,
    Pause,
    QuorumLost,
    Eject,
    Deprovision,
    RollbackIndex,
    ToolingLost,
    PolicyViolation,
    Release,
    /// Refresh the license with one that expires soon (grace, then expiry).
    ShortLicense,
    /// Environment capacity churn: a request that does not fit.
    CapacityChurn,
    Terminate,
}

impl Fault {
    pub const ALL: [Fault; 21] = [
        Fault::StaleHash,
        Fault::Replay,
        Fault::IdemConflict,
        Fault::ForgedSignature,
        Fault::UnknownTransition,
        Fault::WrongRole,
        Fault::Outsider,
        Fault::ClockAhead,
        Fault::WrongWindow,
        Fault::ForgedVote,
        Fault::Pause,
        Fault::QuorumLost,
        Fault::Eject,
        Fault::Deprovision,
        Fault::RollbackIndex,
        Fault::ToolingLost,
        Fault::PolicyViolation,
        Fault::Release,
        Fault::ShortLicense,
        Fault::CapacityChurn,
        Fault::Terminate,
    ];

    /// Faults whose proposal must never be accepted.
    pub fn must_fail(self) -> bool {
        matches!(
            self,
            Fault::StaleHash
                | Fault::IdemConflict
                | Fault::ForgedSignature
                | Fault::UnknownTransition
                | Fault::WrongRole
                | Fault::Outsider
                | Fault::ClockAhead
                | Fault::WrongWindow
                | Fault::ForgedVote
                | Fault::CapacityChurn
        )
    }
}

impl<'k> Driver<'k> {
    fn resign(&self, p: &Proposal, key: &SigningKey) -> Proposal {
        ProposalBuilder {
            project: p.project.clone(),
            transition: p.transition.clone(),
            current_state_hash: p.current_state_hash,
            inputs: p.inputs.clone(),
            idem_key: p.idem_key.clone(),
            hlc: p.hlc,
            window_id: p.window_id.clone(),
            evidence: p.evidence.clone(),
        }
        .sign(key)
        .expect("re-signing a valid proposal")
    }

    fn valid_next(&self, node: &NodeState, project: &str, now_ms: u64) -> Option<Proposal> {
        match self.next(node, project, now_ms) {
            Next::Propose(p) => Some(*p),
            _ => None,
        }
    }

    /// A faulty proposal for `project`, or `None` when the fault does not
    /// apply in the current state. `accepted` is the history of accepted
    /// proposals (for replays).
    pub fn fault(
        &self,
        node: &NodeState,
        project: &str,
        now_ms: u64,
        fault: Fault,
        accepted: &[Proposal],
        pick: u64,
    ) -> Option<Proposal> {
        let st = node.project(project).into_owned();
        let hlc = Self::hlc_for(&st, now_ms);
        let b = |t: &str, inputs: &dyn erased::Ser, key: &SigningKey| {
            self.build(node, project, t, &erased::Wrap(inputs), key, now_ms)
        };
        let mine: Vec<&Proposal> = accepted.iter().filter(|p| p.project == project).collect();
        match fault {
            Fault::StaleHash => {
                let mut p = self.valid_next(node, project, now_ms)?;
                p.current_state_hash = mine
                    .get(pick as usize % mine.len().max(1))
                    .map(|q| q.current_state_hash)
                    .unwrap_or(Hash::of_bytes(b"stale"));
                p.idem_key.push_str(":stale");
                Some(self.resign(&p, self.signer_of(&p)?))
            }
            Fault::Replay => mine
                .get(pick as usize % mine.len().max(1))
                .map(|p| (*p).clone()),
            Fault::IdemConflict => {
                let old = mine.get(pick as usize % mine.len().max(1))?;
                let mut p = self.valid_next(node, project, now_ms)?;
                p.idem_key = old.idem_key.clone();
                Some(self.resign(&p, self.signer_of(&p)?))
            }
            Fault::ForgedSignature => {
                let mut p = self.valid_next(node, project, now_ms)?;
                p.signature.0[(pick % 64) as usize] ^= 0x20;
                Some(p)
            }
            Fault::UnknownTransition => Some(b("Council_Coup", &NoInputs {}, &self.keys.admin)),
            Fault::WrongRole => {
                let p = self.valid_next(node, project, now_ms)?;
                let spec = crate::statechart::lookup(&p.transition)?;
                let roster = self.keys.roster();
                let wrong = roster
                    .iter()
                    .find(|e| !e.roles.iter().any(|r| spec.roles.contains(r)))?;
                let key = self.key_of(&wrong.key)?;
                Some(self.resign(&p, key))
            }
            Fault::Outsider => {
                let p = self.valid_next(node, project, now_ms)?;
                Some(self.resign(&p, &self.keys.outsider))
            }
            Fault::ClockAhead => {
                let mut p = self.valid_next(node, project, now_ms)?;
                p.hlc = Hlc::new(now_ms + st.meta.hlc_max_offset_ms + 1 + pick % 10_000, 0);
                p.window_id = st.execution.schedule.window_id(&p.hlc);
                Some(self.resign(&p, self.signer_of(&p)?))
            }
            Fault::WrongWindow => {
                let mut p = self.valid_next(node, project, now_ms)?;
                crate::statechart::lookup(&p.transition)?.time_gated?;
                p.window_id = "backbeat:W-0-nowhere".into();
                Some(self.resign(&p, self.signer_of(&p)?))
            }
            Fault::ForgedVote => {
                if st.council.phase != "ELECT" {
                    return None;
                }
                let members: Vec<SignerId> = self
                    .members()
                    .into_iter()
                    .filter(|m| !st.council.ejected.contains(m))
                    .collect();
                let mut votes: Vec<Vote> = self
                    .votes(&st, &members, true)
                    .into_iter()
                    .filter(|v| members.contains(&v.body.voter))
                    .collect();
                let v = votes.first_mut()?;
                v.signature.0[(pick % 64) as usize] ^= 0x01;
                let t = if st.council.elections == 0 {
                    "Council_QuorumCert"
                } else {
                    "Council_ReElect"
                };
                Some(b(
                    t,
                    &Two("members", members, "votes", votes),
                    &self.keys.leader,
                ))
            }
            Fault::Pause => Some(b(
                "Control_Pause",
                &one("reason", "operator maintenance window"),
                &self.keys.leader,
            )),
            Fault::QuorumLost => {
                let lost: Vec<SignerId> = st.council.elected.iter().take(1).cloned().collect();
                Some(b(
                    "Control_QuorumLost",
                    &Two("reason", "council members unreachable", "lost", lost),
                    &self.keys.leader,
                ))
            }
            Fault::Eject => {
                // Keep enough members to re-elect a quorum.
                if st.council.elected.len() <= st.council.quorum_threshold as usize {
                    return None;
                }
                let m = st
                    .council
                    .elected
                    .get(pick as usize % st.council.elected.len())?
                    .clone();
                Some(b(
                    "Council_Eject",
                    &Two("member", m, "reason", "member stopped answering"),
                    &self.keys.leader,
                ))
            }
            Fault::Deprovision => Some(b(
                "Environment_Deprovision",
                &one("reason", "capacity reclaimed"),
                &self.keys.leader,
            )),
            Fault::RollbackIndex => Some(b(
                "Ingestion_RollbackIndex",
                &one("reason", "index built from a bad snapshot"),
                &self.keys.leader,
            )),
            Fault::ToolingLost => Some(b(
                "Council_ToolingLost",
                &one("probes", self.probes(&st, hlc, false)),
                &self.keys.prober,
            )),
            Fault::PolicyViolation => Some(b(
                "Ingestion_PolicyViolation",
                &one(
                    "findings",
                    vec![Finding {
                        code: "secret_leak".into(),
                        detail: "AWS key in config.yaml".into(),
                    }],
                ),
                &self.keys.worker,
            )),
            Fault::Release => Some(b(
                "Policy_Release",
                &one("rationale", "secret rotated and purged"),
                &self.keys.admin,
            )),
            Fault::ShortLicense => {
                let lic = self.license(
                    &st.meta.cluster_id,
                    hlc,
                    now_ms + 1_000 + pick % 2_000,
                    1_500,
                );
                Some(b(
                    "Boot_LicenseRefresh",
                    &one("license", lic),
                    &self.keys.leader,
                ))
            }
            Fault::CapacityChurn => {
                if st.environment.phase != "ALLOCATE" {
                    return None;
                }
                Some(b(
                    "Environment_CapacityOk",
                    &Two(
                        "request",
                        Resources {
                            cpu_milli: 16_000,
                            mem_mb: 4_096,
                        },
                        "capacity",
                        Resources {
                            cpu_milli: 1_000 + pick % 4_000,
                            mem_mb: 32_768,
                        },
                    ),
                    &self.keys.worker,
                ))
            }
            Fault::Terminate => Some(b(
                "Project_Terminate",
                &one("rationale", "project cancelled by its owner"),
                &self.keys.admin,
            )),
        }
    }

    fn all_keys(&self) -> impl Iterator<Item = &SigningKey> {
        [
            &self.keys.admin,
            &self.keys.leader,
            &self.keys.worker,
            &self.keys.license_authority,
            &self.keys.prober,
        ]
        .into_iter()
        .chain(self.keys.council.iter())
    }

    fn key_of(&self, id: &SignerId) -> Option<&SigningKey> {
        self.all_keys()
            .find(|k| &SignerId::from_signing_key(k) == id)
    }

    fn signer_of(&self, p: &Proposal) -> Option<&SigningKey> {
        self.key_of(&p.signer)
    }
}
