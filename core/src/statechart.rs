//! The transition registry: the Rust mirror of `core/statechart.yaml`.
//!
//! A test (`tests/statechart_yaml.rs`) parses the YAML and fails on any
//! difference in regions, states, transitions, guards, inputs, roles, time
//! gates or compensations, so the two cannot drift apart silently.

use serde::{Deserialize, Serialize};

/// The statechart YAML, embedded so `swoosh statechart` and the schema hash
/// need no file at run time.
pub const STATECHART_YAML: &str = include_str!("../statechart.yaml");

/// Machine version written into every state document; bump on any change of
/// reducer semantics (it is part of every state hash).
pub const MACHINE_VERSION: &str = "swoosh/1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Region {
    Project,
    Boot,
    Ingestion,
    Council,
    Environment,
    Execution,
    Control,
    Policy,
}

impl Region {
    pub const ALL: [Region; 8] = [
        Region::Project,
        Region::Boot,
        Region::Ingestion,
        Region::Council,
        Region::Environment,
        Region::Execution,
        Region::Control,
        Region::Policy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Region::Project => "Project",
            Region::Boot => "Boot",
            Region::Ingestion => "Ingestion",
            Region::Council => "Council",
            Region::Environment => "Environment",
            Region::Execution => "Execution",
            Region::Control => "Control",
            Region::Policy => "Policy",
        }
    }

    pub fn from_name(s: &str) -> Option<Region> {
        Region::ALL.into_iter().find(|r| r.name() == s)
    }

    /// States of the region; the first is its initial state.
    pub fn states(self) -> &'static [&'static str] {
        match self {
            Region::Project => &["BOOT", "PROJECT_LIFECYCLE", "EXECUTION", "TERMINATED"],
            Region::Boot => &["UNINITIALIZED", "LICENSE_CHECK", "LICENSED"],
            Region::Ingestion => &["DISCOVER", "FETCH", "VALIDATE", "INDEX", "READY"],
            Region::Council => &["PLAN_ROLES", "ELECT", "TOOLING_SYNC", "READY"],
            Region::Environment => &["ALLOCATE", "PROVISION", "HEALTHCHECK", "READY", "DEGRADED"],
            Region::Execution => &["PLAN", "WORK", "REVIEW", "REVERB"],
            Region::Control => &["NORMAL", "PAUSED", "RECOVERY", "DEGRADED"],
            Region::Policy => &["CLEAR", "QUARANTINED"],
        }
    }

    pub fn initial(self) -> &'static str {
        self.states()[0]
    }
}

/// A state qualified by its region, written `Region.STATE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateRef {
    pub region: Region,
    pub state: &'static str,
}

impl std::fmt::Display for StateRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.region.name(), self.state)
    }
}

const fn s(region: Region, state: &'static str) -> StateRef {
    StateRef { region, state }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Operator,
    Council,
    Worker,
    LicenseAuthority,
    ToolProber,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Admin,
        Role::Operator,
        Role::Council,
        Role::Worker,
        Role::LicenseAuthority,
        Role::ToolProber,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Council => "council",
            Role::Worker => "worker",
            Role::LicenseAuthority => "license_authority",
            Role::ToolProber => "tool_prober",
        }
    }
    pub fn from_name(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }
}

/// Guards named in the statechart. The checks every proposal passes
/// (signature, role, idempotency, state hash, HLC, from-state, project
/// status) are listed separately as [`ALWAYS_GUARDS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    License,
    LicenseToken,
    Policy,
    PolicyBreach,
    PolicyUpdate,
    Quorum,
    McpHealth,
    Capacity,
    EnvHealth,
    AllReady,
    Backbeat,
    CouncilMember,
    Approvals,
    Submission,
    Recovery,
    Roster,
}

impl Guard {
    pub const ALL: [Guard; 16] = [
        Guard::License,
        Guard::LicenseToken,
        Guard::Policy,
        Guard::PolicyBreach,
        Guard::PolicyUpdate,
        Guard::Quorum,
        Guard::McpHealth,
        Guard::Capacity,
        Guard::EnvHealth,
        Guard::AllReady,
        Guard::Backbeat,
        Guard::CouncilMember,
        Guard::Approvals,
        Guard::Submission,
        Guard::Recovery,
        Guard::Roster,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Guard::License => "license",
            Guard::LicenseToken => "license_token",
            Guard::Policy => "policy",
            Guard::PolicyBreach => "policy_breach",
            Guard::PolicyUpdate => "policy_update",
            Guard::Quorum => "quorum",
            Guard::McpHealth => "mcp_health",
            Guard::Capacity => "capacity",
            Guard::EnvHealth => "env_health",
            Guard::AllReady => "all_ready",
            Guard::Backbeat => "backbeat",
            Guard::CouncilMember => "council_member",
            Guard::Approvals => "approvals",
            Guard::Submission => "submission",
            Guard::Recovery => "recovery",
            Guard::Roster => "roster",
        }
    }
}

/// Checks applied to every proposal before the transition's own guards, in
/// this order; their names appear as `guard` in rejections.
pub const ALWAYS_GUARDS: [&str; 8] = [
    "shape",
    "signature",
    "role",
    "idempotency",
    "state_hash",
    "hlc",
    "project_status",
    "from_state",
];

/// Type of one input field, as written in the YAML.
pub type FieldSpec = (&'static str, &'static str);

#[derive(Debug, Clone, Copy)]
pub struct TransitionSpec {
    pub name: &'static str,
    /// The region whose epoch this transition advances (its `to` region).
    pub from: &'static [StateRef],
    pub to: StateRef,
    pub guards: &'static [Guard],
    pub inputs: &'static [FieldSpec],
    /// BACKBEAT transition class; `Some` means the transition is time-gated.
    pub time_gated: Option<&'static str>,
    pub roles: &'static [Role],
    pub compensation: Option<&'static str>,
    /// Other regions' states this transition always enters (each advances
    /// that region's epoch once).
    pub also: &'static [StateRef],
}

impl TransitionSpec {
    pub fn region(&self) -> Region {
        self.to.region
    }
}

use Guard as G;
use Region as R;
use Role as Ro;

pub static TRANSITIONS: &[TransitionSpec] = &[
    // ---- BOOT ----
    TransitionSpec {
        name: "Boot_ConfigOk",
        from: &[s(R::Boot, "UNINITIALIZED")],
        to: s(R::Boot, "LICENSE_CHECK"),
        guards: &[],
        inputs: &[("config_hash", "hash")],
        time_gated: None,
        roles: &[Ro::Admin, Ro::Operator],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Boot_Licensed",
        from: &[s(R::Boot, "LICENSE_CHECK")],
        to: s(R::Boot, "LICENSED"),
        guards: &[G::LicenseToken],
        inputs: &[("license", "license_token")],
        time_gated: None,
        roles: &[Ro::Admin, Ro::Operator],
        compensation: None,
        also: &[s(R::Project, "PROJECT_LIFECYCLE")],
    },
    TransitionSpec {
        name: "Boot_LicenseRefresh",
        from: &[s(R::Boot, "LICENSED")],
        to: s(R::Boot, "LICENSED"),
        guards: &[G::LicenseToken],
        inputs: &[("license", "license_token")],
        time_gated: None,
        roles: &[Ro::Admin, Ro::Operator],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Boot_SetRoster",
        from: &[s(R::Boot, "LICENSED")],
        to: s(R::Boot, "LICENSED"),
        guards: &[G::Roster],
        inputs: &[("roster", "[roster_entry]")],
        time_gated: None,
        roles: &[Ro::Admin],
        compensation: None,
        also: &[],
    },
    // ---- Ingestion ----
    TransitionSpec {
        name: "Ingestion_SourcesResolved",
        from: &[s(R::Ingestion, "DISCOVER")],
        to: s(R::Ingestion, "FETCH"),
        guards: &[G::License, G::Policy],
        inputs: &[("sources", "[text]")],
        time_gated: None,
        roles: &[Ro::Worker, Ro::Operator],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Ingestion_BytesOk",
        from: &[s(R::Ingestion, "FETCH")],
        to: s(R::Ingestion, "VALIDATE"),
        guards: &[G::License],
        inputs: &[("content_hash", "hash"), ("bytes", "uint")],
        time_gated: None,
        roles: &[Ro::Worker, Ro::Operator],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Ingestion_SchemaOk",
        from: &[s(R::Ingestion, "VALIDATE")],
        to: s(R::Ingestion, "INDEX"),
        guards: &[G::License, G::Policy],
        inputs: &[("schema_hash", "hash"), ("findings", "[finding]")],
        time_gated: None,
        roles: &[Ro::Worker, Ro::Operator],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Ingestion_PolicyViolation",
        from: &[s(R::Ingestion, "VALIDATE")],
        to: s(R::Policy, "QUARANTINED"),
        guards: &[G::PolicyBreach],
        inputs: &[("findings", "[finding]")],
        time_gated: None,
        roles: &[Ro::Worker, Ro::Operator, Ro::Admin],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Ingestion_CorpusBuilt",
        from: &[s(R::Ingestion, "INDEX")],
        to: s(R::Ingestion, "READY"),
        guards: &[G::License],
        inputs: &[("index_hash", "hash"), ("version", "uint")],
        time_gated: None,
        roles: &[Ro::Worker, Ro::Operator],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Ingestion_RollbackIndex",
        from: &[s(R::Ingestion, "INDEX"), s(R::Ingestion, "READY")],
        to: s(R::Ingestion, "DISCOVER"),
        guards: &[G::License],
        inputs: &[("reason", "text")],
        time_gated: None,
        roles: &[Ro::Operator, Ro::Admin],
        compensation: Some("ROLLBACK_INDEX"),
        also: &[],
    },
    // ---- Council ----
    TransitionSpec {
        name: "Council_ProfilesLoaded",
        from: &[s(R::Council, "PLAN_ROLES")],
        to: s(R::Council, "ELECT"),
        guards: &[G::License],
        inputs: &[
            ("roles", "[text]"),
            ("candidates", "[signer]"),
            ("tools", "{text:text}"),
        ],
        time_gated: None,
        roles: &[Ro::Operator],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Council_QuorumCert",
        from: &[s(R::Council, "ELECT")],
        to: s(R::Council, "TOOLING_SYNC"),
        guards: &[G::License, G::Quorum],
        inputs: &[("members", "[signer]"), ("votes", "[vote]")],
        time_gated: None,
        roles: &[Ro::Operator, Ro::Admin],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Council_McpGreen",
        from: &[s(R::Council, "TOOLING_SYNC")],
        to: s(R::Council, "READY"),
        guards: &[G::License, G::McpHealth],
        inputs: &[("probes", "[probe]")],
        time_gated: None,
        roles: &[Ro::Operator, Ro::ToolProber],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Council_ToolingLost",
        from: &[s(R::Council, "READY")],
        to: s(R::Council, "TOOLING_SYNC"),
        guards: &[G::McpHealth],
        inputs: &[("probes", "[probe]")],
        time_gated: None,
        roles: &[Ro::Operator, Ro::ToolProber],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Council_Eject",
        from: &[s(R::Council, "TOOLING_SYNC"), s(R::Council, "READY")],
        to: s(R::Council, "ELECT"),
        guards: &[G::License],
        inputs: &[("member", "signer"), ("reason", "text")],
        time_gated: None,
        roles: &[Ro::Operator, Ro::Admin],
        compensation: Some("EJECT"),
        also: &[],
    },
    TransitionSpec {
        name: "Council_ReElect",
        from: &[s(R::Council, "ELECT")],
        to: s(R::Council, "TOOLING_SYNC"),
        guards: &[G::License, G::Quorum],
        inputs: &[("members", "[signer]"), ("votes", "[vote]")],
        time_gated: None,
        roles: &[Ro::Operator, Ro::Admin],
        compensation: Some("RE_ELECT"),
        also: &[],
    },
    // ---- Environment ----
    TransitionSpec {
        name: "Environment_CapacityOk",
        from: &[s(R::Environment, "ALLOCATE")],
        to: s(R::Environment, "PROVISION"),
        guards: &[G::License, G::Capacity],
        inputs: &[("request", "resources"), ("capacity", "resources")],
        time_gated: None,
        roles: &[Ro::Worker, Ro::Operator],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Environment_Installed",
        from: &[s(R::Environment, "PROVISION")],
        to: s(R::Environment, "HEALTHCHECK"),
        guards: &[G::License],
        inputs: &[("assets", "[text]"), ("env_hash", "hash")],
        time_gated: None,
        roles: &[Ro::Worker, Ro::Operator],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Environment_Green",
        from: &[s(R::Environment, "HEALTHCHECK")],
        to: s(R::Environment, "READY"),
        guards: &[G::License, G::EnvHealth],
        inputs: &[("checks", "[check]")],
        time_gated: None,
        roles: &[Ro::Worker, Ro::Operator],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Environment_Amber",
        from: &[s(R::Environment, "HEALTHCHECK")],
        to: s(R::Environment, "DEGRADED"),
        guards: &[G::License, G::EnvHealth],
        inputs: &[("checks", "[check]")],
        time_gated: None,
        roles: &[Ro::Worker, Ro::Operator],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Environment_Recheck",
        from: &[s(R::Environment, "DEGRADED"), s(R::Environment, "READY")],
        to: s(R::Environment, "HEALTHCHECK"),
        guards: &[G::License],
        inputs: &[],
        time_gated: None,
        roles: &[Ro::Worker, Ro::Operator],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Environment_Deprovision",
        from: &[
            s(R::Environment, "PROVISION"),
            s(R::Environment, "HEALTHCHECK"),
            s(R::Environment, "READY"),
            s(R::Environment, "DEGRADED"),
        ],
        to: s(R::Environment, "ALLOCATE"),
        guards: &[],
        inputs: &[("reason", "text")],
        time_gated: None,
        roles: &[Ro::Operator, Ro::Admin],
        compensation: Some("DEPROVISION"),
        also: &[],
    },
    // ---- Project (top level) ----
    TransitionSpec {
        name: "Project_EnterExecution",
        from: &[s(R::Project, "PROJECT_LIFECYCLE")],
        to: s(R::Project, "EXECUTION"),
        guards: &[G::License, G::AllReady],
        inputs: &[("pins", "pins")],
        time_gated: None,
        roles: &[Ro::Operator],
        compensation: None,
        also: &[s(R::Execution, "PLAN")],
    },
    TransitionSpec {
        name: "Project_Terminate",
        from: &[
            s(R::Project, "BOOT"),
            s(R::Project, "PROJECT_LIFECYCLE"),
            s(R::Project, "EXECUTION"),
        ],
        to: s(R::Project, "TERMINATED"),
        guards: &[],
        inputs: &[("rationale", "text")],
        time_gated: None,
        roles: &[Ro::Admin],
        compensation: None,
        also: &[],
    },
    // ---- Execution ----
    TransitionSpec {
        name: "Execution_PlanLocked",
        from: &[s(R::Execution, "PLAN")],
        to: s(R::Execution, "WORK"),
        guards: &[G::License, G::AllReady],
        inputs: &[("plan_hash", "hash"), ("pins", "pins")],
        time_gated: None,
        roles: &[Ro::Operator, Ro::Council],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Execution_BeatReviewGate",
        from: &[s(R::Execution, "WORK")],
        to: s(R::Execution, "REVIEW"),
        guards: &[G::License, G::Backbeat],
        inputs: &[("work_hash", "hash")],
        time_gated: Some("review"),
        roles: &[Ro::Worker, Ro::Operator],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Execution_ReverbOpen",
        from: &[s(R::Execution, "REVIEW")],
        to: s(R::Execution, "REVERB"),
        guards: &[G::License, G::Backbeat],
        inputs: &[("review_hash", "hash")],
        time_gated: Some("reverb"),
        roles: &[Ro::Council, Ro::Operator],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Execution_Approve",
        from: &[s(R::Execution, "REVERB")],
        to: s(R::Execution, "REVERB"),
        guards: &[G::License, G::Backbeat, G::CouncilMember],
        inputs: &[("work_hash", "hash")],
        time_gated: Some("reverb"),
        roles: &[Ro::Council],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Execution_Submit",
        from: &[s(R::Execution, "REVERB")],
        to: s(R::Execution, "REVERB"),
        guards: &[G::License, G::Backbeat, G::Approvals],
        inputs: &[("submission_hash", "hash")],
        time_gated: Some("reverb"),
        roles: &[Ro::Operator, Ro::Council],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Execution_NextWindow",
        from: &[s(R::Execution, "REVERB")],
        to: s(R::Execution, "PLAN"),
        guards: &[G::License, G::Submission],
        inputs: &[],
        time_gated: None,
        roles: &[Ro::Operator],
        compensation: None,
        also: &[],
    },
    // ---- Control ----
    TransitionSpec {
        name: "Control_Pause",
        from: &[s(R::Control, "NORMAL"), s(R::Control, "DEGRADED")],
        to: s(R::Control, "PAUSED"),
        guards: &[],
        inputs: &[("reason", "text")],
        time_gated: None,
        roles: &[Ro::Operator, Ro::Admin],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Control_Resume",
        from: &[s(R::Control, "PAUSED")],
        to: s(R::Control, "NORMAL"),
        guards: &[G::License],
        inputs: &[],
        time_gated: None,
        roles: &[Ro::Operator, Ro::Admin],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Control_QuorumLost",
        from: &[s(R::Control, "NORMAL"), s(R::Control, "DEGRADED")],
        to: s(R::Control, "RECOVERY"),
        guards: &[],
        inputs: &[("reason", "text"), ("lost", "[signer]")],
        time_gated: None,
        roles: &[Ro::Operator, Ro::Council, Ro::Admin],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Control_Recovered",
        from: &[s(R::Control, "RECOVERY")],
        to: s(R::Control, "NORMAL"),
        guards: &[G::License, G::Recovery],
        inputs: &[],
        time_gated: None,
        roles: &[Ro::Operator, Ro::Admin],
        compensation: None,
        also: &[],
    },
    // ---- Policy ----
    TransitionSpec {
        name: "Policy_Quarantine",
        from: &[s(R::Policy, "CLEAR")],
        to: s(R::Policy, "QUARANTINED"),
        guards: &[],
        inputs: &[("rationale", "text")],
        time_gated: None,
        roles: &[Ro::Admin],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Policy_Release",
        from: &[s(R::Policy, "QUARANTINED")],
        to: s(R::Policy, "CLEAR"),
        guards: &[],
        inputs: &[("rationale", "text")],
        time_gated: None,
        roles: &[Ro::Admin],
        compensation: None,
        also: &[],
    },
    TransitionSpec {
        name: "Policy_Update",
        from: &[s(R::Policy, "CLEAR"), s(R::Policy, "QUARANTINED")],
        to: s(R::Policy, "CLEAR"),
        guards: &[G::PolicyUpdate],
        inputs: &[("rules", "[policy_rule]")],
        time_gated: None,
        roles: &[Ro::Admin],
        compensation: None,
        also: &[],
    },
];

/// A region change the reducer makes on its own when a condition holds at
/// the proposal's HLC; it advances that region's epoch once.
#[derive(Debug, Clone, Copy)]
pub struct AutomaticSpec {
    pub name: &'static str,
    pub from: &'static [StateRef],
    pub to: StateRef,
    pub when: &'static str,
}

pub static AUTOMATIC: &[AutomaticSpec] = &[
    AutomaticSpec {
        name: "license_grace",
        from: &[s(R::Control, "NORMAL")],
        to: s(R::Control, "DEGRADED"),
        when: "an accepted transition's HLC is past the license expiry but inside its grace period",
    },
    AutomaticSpec {
        name: "license_restored",
        from: &[s(R::Control, "DEGRADED")],
        to: s(R::Control, "NORMAL"),
        when: "Boot_LicenseRefresh is accepted while Control is DEGRADED by license grace",
    },
];

pub fn lookup(name: &str) -> Option<&'static TransitionSpec> {
    TRANSITIONS.iter().find(|t| t.name == name)
}

/// Transitions that may be applied while the project is QUARANTINED.
pub fn allowed_in_quarantine(name: &str) -> bool {
    matches!(
        name,
        "Policy_Release"
            | "Policy_Update"
            | "Project_Terminate"
            | "Boot_LicenseRefresh"
            | "Boot_SetRoster"
    )
}

/// Transitions that may be applied while Control is PAUSED.
pub fn allowed_while_paused(name: &str) -> bool {
    name.starts_with("Policy_")
        || name.starts_with("Control_")
        || matches!(
            name,
            "Project_Terminate"
                | "Boot_LicenseRefresh"
                | "Boot_SetRoster"
                | "Environment_Deprovision"
        )
}

/// Transitions that may be applied while Control is RECOVERY: everything
/// but execution progress, so the council can be re-elected and the other
/// regions kept healthy while no work is done on a lost quorum.
pub fn allowed_in_recovery(name: &str) -> bool {
    !name.starts_with("Execution_") && name != "Project_EnterExecution"
}

/// A canonical, hashable description of the registry: its hash is the
/// `schema_hash` in every state document's `meta`.
#[derive(Serialize)]
struct SchemaDoc {
    machine_version: &'static str,
    regions: Vec<(&'static str, Vec<&'static str>)>,
    transitions: Vec<SchemaTransition>,
    always_guards: Vec<&'static str>,
    automatic: Vec<(&'static str, Vec<String>, String)>,
}

#[derive(Serialize)]
struct SchemaTransition {
    name: &'static str,
    from: Vec<String>,
    to: String,
    guards: Vec<&'static str>,
    inputs: Vec<(&'static str, &'static str)>,
    time_gated: Option<&'static str>,
    roles: Vec<&'static str>,
    compensation: Option<&'static str>,
    also: Vec<String>,
}

pub fn schema_hash() -> crate::hash::Hash {
    let doc = SchemaDoc {
        machine_version: MACHINE_VERSION,
        regions: Region::ALL
            .iter()
            .map(|r| (r.name(), r.states().to_vec()))
            .collect(),
        transitions: TRANSITIONS
            .iter()
            .map(|t| SchemaTransition {
                name: t.name,
                from: t.from.iter().map(|s| s.to_string()).collect(),
                to: t.to.to_string(),
                guards: t.guards.iter().map(|g| g.name()).collect(),
                inputs: t.inputs.to_vec(),
                time_gated: t.time_gated,
                roles: t.roles.iter().map(|r| r.name()).collect(),
                compensation: t.compensation,
                also: t.also.iter().map(|s| s.to_string()).collect(),
            })
            .collect(),
        always_guards: ALWAYS_GUARDS.to_vec(),
        automatic: AUTOMATIC
            .iter()
            .map(|a| {
                (
                    a.name,
                    a.from.iter().map(|s| s.to_string()).collect(),
                    a.to.to_string(),
                )
            })
            .collect(),
    };
    crate::hash::hash_of(&doc).expect("the schema document has no floats and encodes")
}

/// Render the registry as a mermaid `stateDiagram-v2`.
pub fn to_mermaid() -> String {
    let mut out = String::from("stateDiagram-v2\n");
    let id = |s: &StateRef| format!("{}_{}", s.region.name(), s.state);
    for r in Region::ALL {
        out.push_str(&format!("  state {} {{\n", r.name()));
        out.push_str(&format!("    [*] --> {}_{}\n", r.name(), r.initial()));
        for st in r.states() {
            out.push_str(&format!("    {0}_{1} : {1}\n", r.name(), st));
        }
        out.push_str("  }\n");
    }
    for t in TRANSITIONS {
        let label = match t.time_gated {
            Some(c) => format!("{} ⏱{}", t.name, c),
            None => t.name.to_string(),
        };
        for f in t.from {
            out.push_str(&format!("  {} --> {} : {}\n", id(f), id(&t.to), label));
            for a in t.also {
                out.push_str(&format!("  {} --> {} : {} (also)\n", id(f), id(a), t.name));
            }
        }
    }
    for a in AUTOMATIC {
        for f in a.from {
            out.push_str(&format!(
                "  {} --> {} : auto {}\n",
                id(f),
                id(&a.to),
                a.name
            ));
        }
    }
    out.push_str("  Project_TERMINATED --> [*]\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn registry_is_internally_consistent() {
        let mut names = BTreeSet::new();
        for t in TRANSITIONS {
            assert!(names.insert(t.name), "duplicate transition {}", t.name);
            for f in t.from.iter().chain(std::iter::once(&t.to)) {
                assert!(
                    f.region.states().contains(&f.state),
                    "{}: unknown state {f}",
                    t.name
                );
            }
            assert!(!t.roles.is_empty(), "{} has no roles", t.name);
            if t.guards.contains(&Guard::Backbeat) {
                assert!(
                    t.time_gated.is_some(),
                    "{} checks backbeat but is not time-gated",
                    t.name
                );
            }
            if t.time_gated.is_some() {
                assert!(
                    t.guards.contains(&Guard::Backbeat),
                    "{} is time-gated without the backbeat guard",
                    t.name
                );
            }
        }
    }

    #[test]
    fn every_guard_is_used_and_every_state_reachable() {
        for g in Guard::ALL {
            assert!(
                TRANSITIONS.iter().any(|t| t.guards.contains(&g)),
                "guard {} unused",
                g.name()
            );
        }
        for r in Region::ALL {
            for st in r.states().iter().skip(1) {
                let target = StateRef {
                    region: r,
                    state: st,
                };
                assert!(
                    TRANSITIONS
                        .iter()
                        .any(|t| t.to == target || t.also.contains(&target))
                        || AUTOMATIC.iter().any(|a| a.to == target),
                    "{target} is never entered"
                );
            }
        }
        for c in ["DEPROVISION", "EJECT", "RE_ELECT", "ROLLBACK_INDEX"] {
            assert!(
                TRANSITIONS.iter().any(|t| t.compensation == Some(c)),
                "compensation {c} missing"
            );
        }
    }

    #[test]
    fn mermaid_names_every_transition() {
        let m = to_mermaid();
        assert!(m.starts_with("stateDiagram-v2"));
        for t in TRANSITIONS {
            assert!(m.contains(t.name), "{}", t.name);
        }
    }
}
