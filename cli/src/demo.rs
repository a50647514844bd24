//! `swoosh demo`: the happy path for several projects through the pure
//! reducer, on a virtual clock so every run gives the same hashes, with a
//! few deliberately faulty proposals to show how SWOOSH refuses them.

use anyhow::{ensure, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use swoosh_core::guards::Verify;
use swoosh_core::invariants::{check_state, check_transition};
use swoosh_core::reducer::{step, Ctx, Outcome};
use swoosh_core::scenario::{genesis, Driver, Fault, Keys, Next};
use swoosh_core::state::NodeState;

/// 2026-01-01T00:00:00Z: the demo's virtual clock starts here so that every
/// run is bit-identical.
const DEMO_ORIGIN_MS: u64 = 1_767_225_600_000;

#[derive(Args)]
pub struct DemoArgs {
    /// Number of projects to drive.
    #[arg(long, default_value_t = 3)]
    pub(crate) projects: usize,
    /// Execution loops (PLAN → WORK → REVIEW → REVERB) per project.
    #[arg(long, default_value_t = 3)]
    pub(crate) loops: u64,
    /// Print one JSON object instead of the human-readable run.
    #[arg(long)]
    pub(crate) json: bool,
    /// Do not print every transition.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Run the pure reducer in-process on a virtual clock (no node, no disk):
    /// every run prints the same hashes.
    #[arg(long)]
    pub(crate) in_process: bool,
    /// Keep the nodes' data in this directory (default: a temporary one).
    #[arg(long)]
    pub(crate) dir: Option<std::path::PathBuf>,
    /// Run the leader alone (no followers, no agents; the demo's clients
    /// then sign the council votes themselves).
    #[arg(long, conflicts_with = "in_process")]
    pub(crate) single_node: bool,
    /// Followers tailing the leader's WAL over libp2p.
    #[arg(long, default_value_t = 2)]
    pub(crate) followers: usize,
    /// Council agents voting over libp2p (they are the council roster).
    #[arg(long, default_value_t = 3)]
    pub(crate) agents: usize,
}

#[derive(Serialize)]
pub(crate) struct NodeReport {
    pub(crate) name: String,
    /// `leader`, `follower` or `agent`.
    pub(crate) role: String,
    pub(crate) dir: Option<String>,
    /// Root hash of the replica (agents hold no replica: null).
    pub(crate) hash: Option<String>,
    pub(crate) index: Option<u64>,
    /// Followers: records behind the leader at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) lag_records: Option<u64>,
    /// Agents: signed votes this agent sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) votes_sent: Option<u64>,
}

#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) nodes: Vec<NodeReport>,
    pub(crate) accepted: u64,
    pub(crate) rejected: u64,
    pub(crate) duplicates: u64,
    pub(crate) decision_records: u64,
    pub(crate) council_votes: u64,
    /// Signed votes the leader's collector counted over libp2p (cluster only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) council_votes_counted: Option<u64>,
    pub(crate) data_dir: Option<String>,
    pub(crate) projects: Vec<ProjectReport>,
    pub(crate) rejections: Vec<RejectionReport>,
}

#[derive(Serialize)]
pub(crate) struct ProjectReport {
    pub(crate) project: String,
    pub(crate) hash: String,
    pub(crate) phase: String,
    pub(crate) loops: u64,
}

#[derive(Serialize)]
pub(crate) struct RejectionReport {
    pub(crate) project: String,
    pub(crate) transition: String,
    pub(crate) status: u16,
    pub(crate) guard: String,
    pub(crate) reason: String,
}

/// Faults the demo injects, and after how many accepted steps of a project.
pub(crate) const DEMO_FAULTS: [(usize, Fault); 6] = [
    (3, Fault::StaleHash),
    (5, Fault::Replay),
    (8, Fault::ForgedSignature),
    (10, Fault::WrongRole),
    (13, Fault::UnknownTransition),
    (20, Fault::WrongWindow),
];

pub async fn run(args: DemoArgs) -> Result<()> {
    if !args.in_process {
        return crate::demo_node::run(args).await;
    }
    run_in_process(args)
}

fn run_in_process(args: DemoArgs) -> Result<()> {
    ensure!(
        args.projects >= 1 && args.projects <= 64,
        "--projects must be between 1 and 64"
    );
    ensure!(
        args.loops >= 1 && args.loops <= 1000,
        "--loops must be between 1 and 1000"
    );
    let keys = Keys::from_labels("demo", 3);
    let mut node = NodeState::new(genesis(&keys, "swoosh-demo", DEMO_ORIGIN_MS))?;
    let driver = Driver::new(&keys, args.loops);
    let projects: Vec<String> = (0..args.projects)
        .map(|i| {
            if i == 0 {
                "default".to_string()
            } else {
                format!("project-{i}")
            }
        })
        .collect();
    let verbose = !args.json && !args.quiet;
    // 2 boot + 10 lifecycle + 1 entry + 7 per loop, per project.
    let expected = (projects.len() as u64) * (13 + 7 * args.loops);
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(expected)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} transitions {msg}")
            .expect("static template"),
    );

    let mut now = DEMO_ORIGIN_MS + 10;
    let (mut accepted, mut rejected, mut duplicates, mut votes) = (0u64, 0u64, 0u64, 0u64);
    let mut history = vec![];
    let mut rejections = vec![];
    let mut injected = std::collections::BTreeSet::new();
    loop {
        let mut progressed = false;
        let mut wait = u64::MAX;
        for (pi, p) in projects.iter().enumerate() {
            let applied = node.project(p).applied as usize;
            let fault = DEMO_FAULTS
                .iter()
                .find(|(at, f)| {
                    *at <= applied && pi == (*at % projects.len()) && !injected.contains(&(pi, *f))
                })
                .and_then(|(_, f)| {
                    driver
                        .fault(&node, p, now, *f, &history, applied as u64)
                        .map(|x| (*f, x))
                });
            let proposal = if let Some((f, x)) = fault {
                injected.insert((pi, f));
                x
            } else {
                match driver.next(&node, p, now) {
                    Next::Propose(x) => *x,
                    Next::WaitMs(ms) => {
                        wait = wait.min(ms);
                        continue;
                    }
                    Next::Done => continue,
                }
            };
            let pre = node.project(p).into_owned();
            let s = step(
                &mut node,
                &proposal,
                &Ctx {
                    now_ms: now,
                    verify: Verify::Full,
                    snapshot_every: 0,
                },
            );
            progressed = true;
            now += 1;
            match s.outcome {
                Outcome::Accepted(acc) => {
                    let post = node.project(p);
                    let v = check_transition(&pre, &post, &acc.record);
                    ensure!(
                        v.is_empty() && check_state(&post).is_empty(),
                        "invariant violation (a bug; please report): {v:?}"
                    );
                    accepted += 1;
                    if acc.record.transition == "Council_QuorumCert"
                        || acc.record.transition == "Council_ReElect"
                    {
                        votes += acc
                            .record
                            .inputs
                            .as_map()
                            .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("votes")))
                            .and_then(|(_, v)| v.as_array())
                            .map_or(0, |a| a.len() as u64);
                    }
                    if verbose {
                        bar.suspend(|| {
                            println!(
                                "✓ #{:<4} {:<10} {:<26} {} → {}  post {}",
                                acc.record.index,
                                p,
                                acc.record.transition,
                                acc.decision.from,
                                acc.decision.to,
                                short(&acc.record.state_post_hash.to_string())
                            )
                        });
                    }
                    bar.inc(1);
                    history.push(proposal);
                }
                Outcome::Duplicate(e) => {
                    duplicates += 1;
                    if verbose {
                        bar.suspend(|| println!("= {:<10} {:<26} repeat of #{}: original outcome returned, nothing applied", p, proposal.transition, e.index));
                    }
                }
                Outcome::Rejected(r) => {
                    rejected += 1;
                    if verbose {
                        bar.suspend(|| {
                            println!(
                                "✗ {:<10} {:<26} {} {}: {}",
                                p,
                                proposal.transition,
                                r.kind.http_status(),
                                r.guard,
                                r.reasons.join("; ")
                            )
                        });
                    }
                    rejections.push(RejectionReport {
                        project: p.clone(),
                        transition: proposal.transition.clone(),
                        status: r.kind.http_status(),
                        guard: r.guard,
                        reason: r.reasons.join("; "),
                    });
                }
            }
        }
        if !progressed {
            if wait == u64::MAX {
                break;
            }
            now += wait;
        }
    }
    bar.finish_and_clear();
    let root = node.root_hash();
    let report = Report {
        nodes: vec![NodeReport {
            name: "leader".into(),
            role: "leader".into(),
            dir: None,
            hash: Some(root.to_string()),
            index: Some(node.index),
            lag_records: None,
            votes_sent: None,
        }],
        accepted,
        rejected,
        duplicates,
        decision_records: accepted,
        council_votes: votes,
        council_votes_counted: None,
        data_dir: None,
        projects: projects
            .iter()
            .map(|p| {
                let st = node.project(p);
                ProjectReport {
                    project: p.clone(),
                    hash: node.project_hash(p).to_string(),
                    phase: st.meta.phase.clone(),
                    loops: st.execution.loops,
                }
            })
            .collect(),
        rejections,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!();
        println!("projects:");
        for p in &report.projects {
            println!(
                "  {:<10} {:<10} loops {:<3} {}",
                p.project, p.phase, p.loops, p.hash
            );
        }
        println!(
            "accepted {accepted} (each with a decision record), refused {rejected}, duplicates {duplicates}, council votes verified {votes}"
        );
        println!("final root hash {root} at WAL index {}", node.index);
        println!("(virtual clock from 2026-01-01T00:00:00Z: every run prints the same hashes)");
    }
    Ok(())
}

pub(crate) fn short(h: &str) -> &str {
    &h[..h.len().min(7 + 16)]
}
