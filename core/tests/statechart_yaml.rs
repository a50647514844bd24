//! SPEC §3: `core/statechart.yaml` is the machine-readable source of truth and
//! the Rust transition registry (`swoosh_core::statechart`) must agree with it
//! exactly. [`differences`] parses the YAML into typed structs (unknown fields
//! are an error) and lists every disagreement as a sentence naming the item
//! and the field; the conformance test asserts that list is empty, and the
//! mutation tests prove the comparison can fail.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use swoosh_core::statechart::{
    Guard, Region, Role, StateRef, ALWAYS_GUARDS, AUTOMATIC, MACHINE_VERSION, STATECHART_YAML,
    TRANSITIONS,
};

// ---- the YAML schema --------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    machine_version: String,
    always_guards: Vec<String>,
    roles: Vec<String>,
    regions: Vec<YRegion>,
    guards: Vec<YGuard>,
    transitions: Vec<YTransition>,
    #[serde(default)]
    automatic: Vec<YAutomatic>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YRegion {
    name: String,
    description: String,
    initial: String,
    states: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YGuard {
    name: String,
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YTransition {
    name: String,
    description: String,
    from: Vec<String>,
    to: String,
    #[serde(default)]
    also: Vec<String>,
    guards: Vec<String>,
    inputs: BTreeMap<String, String>,
    time_gated: Option<String>,
    roles: Vec<String>,
    #[serde(default)]
    compensation: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct YAutomatic {
    name: String,
    from: Vec<String>,
    to: String,
    when: String,
}

// ---- the comparison ---------------------------------------------------------

fn refs(states: &[StateRef]) -> Vec<String> {
    states.iter().map(|s| s.to_string()).collect()
}

fn duplicates<'a>(what: &str, names: impl Iterator<Item = &'a str>, out: &mut Vec<String>) {
    let mut seen = BTreeSet::new();
    for n in names {
        if !seen.insert(n) {
            out.push(format!("{what} {n:?} is listed twice in the YAML"));
        }
    }
}

/// Compare two name sets in both directions.
fn compare_sets(
    what: &str,
    yaml: &BTreeSet<String>,
    rust: &BTreeSet<String>,
    out: &mut Vec<String>,
) {
    for n in yaml.difference(rust) {
        out.push(format!(
            "{what} {n:?} is in the YAML but not in the Rust registry"
        ));
    }
    for n in rust.difference(yaml) {
        out.push(format!(
            "{what} {n:?} is in the Rust registry but not in the YAML"
        ));
    }
}

fn field<T: PartialEq + std::fmt::Debug>(
    item: &str,
    name: &str,
    field: &str,
    yaml: T,
    rust: T,
    out: &mut Vec<String>,
) {
    if yaml != rust {
        let item = if name.is_empty() {
            item.to_string()
        } else {
            format!("{item} {name}")
        };
        out.push(format!(
            "{item}: field `{field}` is {yaml:?} in the YAML but {rust:?} in Rust"
        ));
    }
}

/// Every state reference in the YAML must name a region and one of its states.
fn check_ref(yaml_states: &BTreeMap<&str, Vec<&str>>, item: &str, r: &str, out: &mut Vec<String>) {
    let ok = r
        .split_once('.')
        .is_some_and(|(region, st)| yaml_states.get(region).is_some_and(|sts| sts.contains(&st)));
    if !ok {
        out.push(format!(
            "{item}: {r:?} is not a Region.STATE declared under `regions:`"
        ));
    }
}

/// All disagreements between a statechart YAML text and the Rust registry.
/// An empty list means they agree exactly.
fn differences(yaml_text: &str) -> Vec<String> {
    let doc: Doc = match serde_norway::from_str(yaml_text) {
        Ok(d) => d,
        Err(e) => {
            return vec![format!(
                "the YAML does not parse into the statechart schema: {e}"
            )]
        }
    };
    let mut out = vec![];

    field(
        "statechart",
        "",
        "machine_version",
        doc.machine_version.as_str(),
        MACHINE_VERSION,
        &mut out,
    );
    field(
        "statechart",
        "",
        "always_guards",
        doc.always_guards
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ALWAYS_GUARDS.to_vec(),
        &mut out,
    );
    field(
        "statechart",
        "",
        "roles",
        doc.roles.iter().map(String::as_str).collect::<Vec<_>>(),
        Role::ALL.iter().map(|r| r.name()).collect::<Vec<_>>(),
        &mut out,
    );

    // Regions: the same set, in the same order, each with the same ordered
    // states and initial state.
    duplicates(
        "region",
        doc.regions.iter().map(|r| r.name.as_str()),
        &mut out,
    );
    compare_sets(
        "region",
        &doc.regions.iter().map(|r| r.name.clone()).collect(),
        &Region::ALL.iter().map(|r| r.name().to_string()).collect(),
        &mut out,
    );
    let yaml_order: Vec<&str> = doc.regions.iter().map(|r| r.name.as_str()).collect();
    let rust_order: Vec<&str> = Region::ALL.iter().map(|r| r.name()).collect();
    if yaml_order != rust_order {
        out.push(format!(
            "regions are listed as {yaml_order:?} in the YAML but {rust_order:?} in Region::ALL"
        ));
    }
    for yr in &doc.regions {
        let Some(r) = Region::from_name(&yr.name) else {
            continue;
        };
        field(
            "region",
            &yr.name,
            "states",
            yr.states.iter().map(String::as_str).collect::<Vec<_>>(),
            r.states().to_vec(),
            &mut out,
        );
        field(
            "region",
            &yr.name,
            "initial",
            yr.initial.as_str(),
            r.initial(),
            &mut out,
        );
        if yr.states.first() != Some(&yr.initial) {
            out.push(format!(
                "region {}: `initial` {} is not the first of its `states`",
                yr.name, yr.initial
            ));
        }
        duplicates(
            &format!("region {} state", yr.name),
            yr.states.iter().map(String::as_str),
            &mut out,
        );
    }
    let yaml_states: BTreeMap<&str, Vec<&str>> = doc
        .regions
        .iter()
        .map(|r| {
            (
                r.name.as_str(),
                r.states.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let yaml_roles: BTreeSet<&str> = doc.roles.iter().map(String::as_str).collect();

    // Guards: the YAML `guards:` list is exactly Guard::ALL.
    duplicates(
        "guard",
        doc.guards.iter().map(|g| g.name.as_str()),
        &mut out,
    );
    let yaml_guards: BTreeSet<String> = doc.guards.iter().map(|g| g.name.clone()).collect();
    compare_sets(
        "guard",
        &yaml_guards,
        &Guard::ALL.iter().map(|g| g.name().to_string()).collect(),
        &mut out,
    );

    // Transitions, both directions, then field by field.
    duplicates(
        "transition",
        doc.transitions.iter().map(|t| t.name.as_str()),
        &mut out,
    );
    compare_sets(
        "transition",
        &doc.transitions.iter().map(|t| t.name.clone()).collect(),
        &TRANSITIONS.iter().map(|t| t.name.to_string()).collect(),
        &mut out,
    );
    for yt in &doc.transitions {
        let item = format!("transition {}", yt.name);
        for r in yt
            .from
            .iter()
            .chain(std::iter::once(&yt.to))
            .chain(&yt.also)
        {
            check_ref(&yaml_states, &item, r, &mut out);
        }
        for g in &yt.guards {
            if !yaml_guards.contains(g) {
                out.push(format!(
                    "{item}: guard {g:?} is not declared under `guards:`"
                ));
            }
        }
        for r in &yt.roles {
            if !yaml_roles.contains(r.as_str()) {
                out.push(format!("{item}: role {r:?} is not declared under `roles:`"));
            }
        }
        let Some(rt) = TRANSITIONS.iter().find(|t| t.name == yt.name) else {
            continue;
        };
        let n = &yt.name;
        let o = &mut out;
        field("transition", n, "from", yt.from.clone(), refs(rt.from), o);
        field("transition", n, "to", yt.to.clone(), rt.to.to_string(), o);
        field("transition", n, "also", yt.also.clone(), refs(rt.also), o);
        field(
            "transition",
            n,
            "guards",
            yt.guards.iter().map(String::as_str).collect::<Vec<_>>(),
            rt.guards.iter().map(|g| g.name()).collect::<Vec<_>>(),
            o,
        );
        let mut rust_inputs: Vec<(&str, &str)> = rt.inputs.to_vec();
        rust_inputs.sort();
        field(
            "transition",
            n,
            "inputs",
            yt.inputs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
            rust_inputs,
            o,
        );
        field(
            "transition",
            n,
            "time_gated",
            yt.time_gated.as_deref(),
            rt.time_gated,
            o,
        );
        field(
            "transition",
            n,
            "roles",
            yt.roles.iter().map(String::as_str).collect::<Vec<_>>(),
            rt.roles.iter().map(|r| r.name()).collect::<Vec<_>>(),
            o,
        );
        field(
            "transition",
            n,
            "compensation",
            yt.compensation.as_deref(),
            rt.compensation,
            o,
        );
    }

    // Automatic region changes.
    duplicates(
        "automatic change",
        doc.automatic.iter().map(|a| a.name.as_str()),
        &mut out,
    );
    compare_sets(
        "automatic change",
        &doc.automatic.iter().map(|a| a.name.clone()).collect(),
        &AUTOMATIC.iter().map(|a| a.name.to_string()).collect(),
        &mut out,
    );
    for ya in &doc.automatic {
        let item = format!("automatic change {}", ya.name);
        for r in ya.from.iter().chain(std::iter::once(&ya.to)) {
            check_ref(&yaml_states, &item, r, &mut out);
        }
        let Some(ra) = AUTOMATIC.iter().find(|a| a.name == ya.name) else {
            continue;
        };
        field(
            "automatic change",
            &ya.name,
            "from",
            ya.from.clone(),
            refs(ra.from),
            &mut out,
        );
        field(
            "automatic change",
            &ya.name,
            "to",
            ya.to.clone(),
            ra.to.to_string(),
            &mut out,
        );
        field(
            "automatic change",
            &ya.name,
            "when",
            ya.when.as_str(),
            ra.when,
            &mut out,
        );
    }
    out
}

fn yaml_on_disk() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/statechart.yaml");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

// ---- the specification ------------------------------------------------------

#[test]
fn yaml_and_rust_registry_agree_exactly() {
    let diffs = differences(STATECHART_YAML);
    assert!(
        diffs.is_empty(),
        "core/statechart.yaml and core/src/statechart.rs disagree ({} differences); \
         change both together:\n  {}",
        diffs.len(),
        diffs.join("\n  ")
    );
}

#[test]
fn embedded_yaml_is_the_file_on_disk() {
    assert!(
        STATECHART_YAML == yaml_on_disk(),
        "STATECHART_YAML differs from core/statechart.yaml; rebuild (it is include_str!'d)"
    );
}

#[test]
fn every_yaml_item_has_a_description() {
    let doc: Doc = serde_norway::from_str(STATECHART_YAML).unwrap();
    let blank: Vec<String> = doc
        .regions
        .iter()
        .map(|r| (format!("region {}", r.name), &r.description))
        .chain(
            doc.guards
                .iter()
                .map(|g| (format!("guard {}", g.name), &g.description)),
        )
        .chain(
            doc.transitions
                .iter()
                .map(|t| (format!("transition {}", t.name), &t.description)),
        )
        .chain(
            doc.automatic
                .iter()
                .map(|a| (format!("automatic change {}", a.name), &a.when)),
        )
        .filter(|(_, d)| d.trim().is_empty())
        .map(|(n, _)| n)
        .collect();
    assert!(blank.is_empty(), "items without a description: {blank:?}");
}

#[test]
fn rust_names_are_the_serde_names() {
    // The names compared above are also how guards and roles are written in
    // JSON and CBOR (rejections, roster entries).
    for g in Guard::ALL {
        assert_eq!(
            serde_json::to_string(&g).unwrap(),
            format!("\"{}\"", g.name()),
            "{g:?}"
        );
    }
    for r in Role::ALL {
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            format!("\"{}\"", r.name()),
            "{r:?}"
        );
        assert_eq!(Role::from_name(r.name()), Some(r));
    }
    for r in Region::ALL {
        assert_eq!(Region::from_name(r.name()), Some(r));
    }
}

/// One edit of the YAML text and a fragment the resulting difference must
/// contain. Each `find` must occur in the YAML, so a stale row fails loudly
/// instead of passing vacuously.
struct Mutation {
    what: &'static str,
    find: &'static str,
    replace: &'static str,
    expect: &'static [&'static str],
}

const MUTATIONS: &[Mutation] = &[
    Mutation {
        what: "a transition's guard renamed",
        find: "    guards: [license, quorum]\n",
        replace: "    guards: [license, capacity]\n",
        expect: &["transition Council_QuorumCert", "`guards`"],
    },
    Mutation {
        what: "a guard undeclared in the YAML",
        find: "guards: [license, capacity]",
        replace: "guards: [license, capacity_v2]",
        expect: &["Environment_CapacityOk", "\"capacity_v2\" is not declared"],
    },
    Mutation {
        what: "the guards list loses an entry",
        find: "  - name: roster\n    description:",
        replace: "  - name: rosterless\n    description:",
        expect: &["guard \"roster\" is in the Rust registry but not in the YAML"],
    },
    Mutation {
        what: "a transition renamed (missing on both sides)",
        find: "- name: Control_Resume\n",
        replace: "- name: Control_Unpause\n",
        expect: &[
            "transition \"Control_Unpause\" is in the YAML but not in the Rust registry",
            "transition \"Control_Resume\" is in the Rust registry but not in the YAML",
        ],
    },
    Mutation {
        what: "a from-state list reordered",
        find: "from: [Ingestion.INDEX, Ingestion.READY]",
        replace: "from: [Ingestion.READY, Ingestion.INDEX]",
        expect: &["transition Ingestion_RollbackIndex", "`from`"],
    },
    Mutation {
        what: "a target state changed",
        find: "to: Environment.DEGRADED\n",
        replace: "to: Environment.READY\n",
        expect: &["transition Environment_Amber", "`to`"],
    },
    Mutation {
        what: "an `also` entry dropped",
        find: "    also: [Execution.PLAN]\n",
        replace: "",
        expect: &["transition Project_EnterExecution", "`also`"],
    },
    Mutation {
        what: "an input type changed",
        find: "      bytes: \"uint\"\n",
        replace: "      bytes: \"int\"\n",
        expect: &["transition Ingestion_BytesOk", "`inputs`"],
    },
    Mutation {
        what: "a time gate removed",
        find: "    time_gated: review\n",
        replace: "    time_gated: null\n",
        expect: &["transition Execution_BeatReviewGate", "`time_gated`"],
    },
    Mutation {
        what: "a role list reordered",
        find: "    roles: [worker, operator, admin]\n",
        replace: "    roles: [admin, worker, operator]\n",
        expect: &["transition Ingestion_PolicyViolation", "`roles`"],
    },
    Mutation {
        what: "a compensation dropped",
        find: "    compensation: EJECT\n",
        replace: "",
        expect: &["transition Council_Eject", "`compensation`"],
    },
    Mutation {
        what: "a region's states reordered",
        find: "states: [PLAN, WORK, REVIEW, REVERB]",
        replace: "states: [PLAN, REVIEW, WORK, REVERB]",
        expect: &["region Execution", "`states`"],
    },
    Mutation {
        what: "an initial state changed",
        find: "initial: CLEAR",
        replace: "initial: QUARANTINED",
        expect: &["region Policy", "`initial`"],
    },
    Mutation {
        what: "the machine version bumped in the YAML only",
        find: "machine_version: swoosh/1",
        replace: "machine_version: swoosh/2",
        expect: &["`machine_version`"],
    },
    Mutation {
        what: "an always-guard reordered",
        find: "always_guards: [shape, signature, role,",
        replace: "always_guards: [signature, shape, role,",
        expect: &["`always_guards`"],
    },
    Mutation {
        what: "an automatic change retargeted",
        find: "    to: Control.DEGRADED\n    when:",
        replace: "    to: Control.PAUSED\n    when:",
        expect: &["automatic change license_grace", "`to`"],
    },
    Mutation {
        what: "an unknown field",
        find: "    time_gated: reverb\n",
        replace: "    time_gated: reverb\n    priority: 3\n",
        expect: &["does not parse", "priority"],
    },
    Mutation {
        what: "a reference to an undeclared state",
        find: "to: Control.RECOVERY",
        replace: "to: Control.LIMBO",
        expect: &[
            "transition Control_QuorumLost",
            "\"Control.LIMBO\" is not a Region.STATE",
        ],
    },
];

#[test]
fn every_kind_of_disagreement_is_reported() {
    let base = yaml_on_disk();
    let mut failures = vec![];
    for m in MUTATIONS {
        assert!(
            base.contains(m.find),
            "mutation {:?}: {:?} no longer occurs in the YAML; update the row",
            m.what,
            m.find
        );
        let mutated = base.replacen(m.find, m.replace, 1);
        let diffs = differences(&mutated);
        // A rename is reported as two differences, one per direction, so
        // each fragment may come from a different line.
        let hit = m.expect.iter().all(|e| diffs.iter().any(|d| d.contains(e)));
        if !hit {
            failures.push(format!(
                "{}: expected a difference mentioning {:?}, got {diffs:?}",
                m.what, m.expect
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "undetected mutations:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn a_transition_deleted_from_the_yaml_is_reported_by_name() {
    let base = yaml_on_disk();
    let start = base
        .find("  - name: Policy_Release\n")
        .expect("Policy_Release is in the YAML");
    let end = start
        + base[start..]
            .find("  - name: Policy_Update\n")
            .expect("Policy_Update follows it");
    let mutated = format!("{}{}", &base[..start], &base[end..]);
    assert_eq!(
        differences(&mutated),
        vec![
            "transition \"Policy_Release\" is in the Rust registry but not in the YAML".to_string()
        ]
    );
}
