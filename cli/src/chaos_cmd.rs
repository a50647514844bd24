//! `swoosh chaos`: the seeded whole-cluster simulation (`swoosh-chaos`).

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use swoosh_chaos::{run_with_progress, FaultRates, SimConfig, SimReport};

#[derive(Copy, Clone, ValueEnum)]
pub enum Mode {
    /// One thread, one seed, the whole cluster, faults everywhere.
    Sim,
}

#[derive(Args)]
pub struct ChaosArgs {
    #[arg(long, value_enum, default_value = "sim")]
    mode: Mode,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Proposals to submit.
    #[arg(long, default_value_t = 1_000)]
    transitions: u64,
    /// Leader plus followers.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    #[arg(long)]
    projects: Option<usize>,
    #[arg(long)]
    council: Option<usize>,
    #[arg(long)]
    no_voters: Option<usize>,
    /// Turn every fault off (a baseline).
    #[arg(long)]
    calm: bool,
    /// Run the seed twice and require the same report (determinism check).
    #[arg(long)]
    twice: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(a: ChaosArgs) -> Result<()> {
    let Mode::Sim = a.mode;
    let mut cfg = SimConfig {
        seed: a.seed,
        transitions: a.transitions,
        replicas: a.replicas,
        ..SimConfig::default()
    };
    if let Some(p) = a.projects {
        cfg.projects = p;
    }
    if let Some(c) = a.council {
        cfg.council = c;
    }
    if let Some(n) = a.no_voters {
        cfg.no_voters = n;
    }
    if a.calm {
        cfg.rates = FaultRates::none();
    }
    if let Err(e) = cfg.validate() {
        bail!("{e}");
    }
    let go = |cfg: &SimConfig| -> (SimReport, f64) {
        let bar = if a.json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(cfg.transitions)
        };
        bar.set_style(
            ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} proposals {msg}")
                .expect("static template"),
        );
        let t = std::time::Instant::now();
        let r = run_with_progress(cfg.clone(), &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        });
        bar.finish_and_clear();
        (r, t.elapsed().as_secs_f64())
    };
    let (report, secs) = go(&cfg);
    let mut problems = vec![];
    if a.twice {
        let (again, _) = go(&cfg);
        if again != report {
            problems.push(format!(
                "the same seed gave a different report the second time (final hashes {:?} vs {:?})",
                report.final_hashes, again.final_hashes
            ));
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "chaos sim seed {} — {} replicas, {:.1} s ({} ms simulated)",
            report.seed, report.replicas, secs, report.virtual_ms
        );
        println!(
            "  proposals {}  accepted {}  refused {}  repeats {}  acknowledged (202) {}",
            report.transitions,
            report.accepted,
            report.rejected,
            report.duplicates,
            report.acknowledged
        );
        let faults: Vec<String> = report
            .faults
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!("  faults      {}", faults.join(", "));
        let guards: Vec<String> = report
            .rejections_by_guard
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!("  refusals    {}", guards.join(", "));
        println!(
            "  council     {} elections, {} votes counted, {} refused, {} certificates accepted",
            report.council.elections_opened,
            report.council.votes_counted,
            report.council.votes_rejected.values().sum::<u64>(),
            report.council.certificates_accepted
        );
        println!(
            "  lag         max {} records, steady tailing max {}",
            report.max_lag, report.max_lag_steady
        );
        println!(
            "  replicas    index {}, {}",
            report.final_index,
            if report.converged() {
                "all on one hash"
            } else {
                "DIVERGED"
            }
        );
        for h in &report.final_hashes {
            println!("              {h}");
        }
        println!(
            "  violations  {}",
            report.violations.len() as u64 + report.violations_unlisted
        );
        print_attention(&report);
    }
    for v in &report.violations {
        eprintln!("violation: {v}");
    }
    if !report.ok() || !report.converged() || !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        bail!(
            "the simulation found problems; reproduce with: {}",
            report.reproduce
        );
    }
    Ok(())
}

/// The attention scorer's items of band watch and above, most important first.
fn print_attention(report: &SimReport) {
    let b = report.attention_by_band;
    println!(
        "  attention   {} fingerprints: promote {}, investigate {}, watch {}, background {}, ignore-fast {}",
        b.iter().sum::<u64>(),
        b[4],
        b[3],
        b[2],
        b[1],
        b[0]
    );
    for i in &report.attention {
        println!(
            "    [{:<11}] {:>6}x  {}  {}",
            i.band, i.count, i.fingerprint, i.what
        );
        println!("                          {}", i.how_often);
        println!("                          next: {}", i.next);
    }
}
