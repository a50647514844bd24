//! `swoosh chaos`: the seeded whole-cluster simulation (`swoosh-chaos`,
//! `--mode sim`) and real processes over libp2p killed on a seeded schedule
//! (`--mode process`, `chaos_process.rs`).

use crate::chaos_process::{self, ProcessConfig, ProcessReport, PROCESS_PROJECTS_DEFAULT};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use swoosh_chaos::{run_with_progress, FaultRates, Sabotage, SimConfig, SimReport};

#[derive(Copy, Clone, ValueEnum)]
pub enum Mode {
    /// One thread, one seed, the whole cluster, faults everywhere.
    Sim,
    /// Real `swoosh` processes over libp2p on loopback, kill -9ed and
    /// restarted on a seeded schedule while SDK clients drive projects.
    Process,
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
    /// Sim mode: set one fault rate, NAME=P (after --calm, whatever the
    /// order); repeatable. Names: the `FaultRates` fields (drop, duplicate,
    /// reorder, delay, partition, restart, torn_write, snapshot_rollback,
    /// snapshot_corrupt, forged_message, workload_fault, license_latency,
    /// license_denial, vote_fault, storage_crash, clock_step).
    #[arg(long = "rate", value_name = "NAME=P")]
    rates: Vec<String>,
    /// Plant a deliberate bug (the simulator's own tests; only so that
    /// their reproduce lines replay).
    #[arg(long, hide = true)]
    sabotage: Option<String>,
    /// Run the seed twice and require the same report (determinism check).
    #[arg(long)]
    twice: bool,
    #[arg(long)]
    json: bool,
    /// Process mode: keep the run (cluster, WALs, node logs) in this
    /// directory; default a temporary one, kept only when the run fails.
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub async fn run(a: ChaosArgs) -> Result<()> {
    match a.mode {
        Mode::Sim => tokio::task::spawn_blocking(move || run_sim(a)).await?,
        Mode::Process => run_process(a).await,
    }
}

/// The simulation's configuration from the flags (`swoosh_chaos::parse_sim_args`
/// reads the same flags the same way; the tests hold the two together).
fn sim_config(a: &ChaosArgs) -> Result<SimConfig> {
    if a.dir.is_some() {
        bail!("--dir is for --mode process (the simulation keeps nothing on disk)");
    }
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
    for r in &a.rates {
        cfg.rates.set_assignment(r).map_err(anyhow::Error::msg)?;
    }
    if let Some(s) = &a.sabotage {
        cfg.sabotage = Sabotage::from_name(s).map_err(anyhow::Error::msg)?;
    }
    if let Err(e) = cfg.validate() {
        bail!("{e}");
    }
    Ok(cfg)
}

fn run_sim(a: ChaosArgs) -> Result<()> {
    let cfg = sim_config(&a)?;
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
    let mut reproduce = report.reproduce.clone();
    if a.twice {
        let (again, _) = go(&cfg);
        if again != report {
            problems.push(format!(
                "the same seed gave a different report the second time (final hashes {:?} vs {:?})",
                report.final_hashes, again.final_hashes
            ));
            reproduce = cfg.reproduce_twice();
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
        bail!("the simulation found problems\nreproduce with: {reproduce}");
    }
    Ok(())
}

async fn run_process(a: ChaosArgs) -> Result<()> {
    if a.twice {
        bail!("--twice is for --mode sim: real processes never interleave the same way twice (the seed fixes the kill schedule and the workload, not the timing)");
    }
    if a.council.is_some() || a.no_voters.is_some() {
        bail!("--council and --no-voters are for --mode sim; process mode signs the votes of {} council keys itself", chaos_process::AGENTS);
    }
    if !a.rates.is_empty() || a.sabotage.is_some() {
        bail!("--rate and --sabotage are for --mode sim; process mode has no fault rates (--calm turns its kills and workload faults off)");
    }
    let cfg = ProcessConfig {
        seed: a.seed,
        transitions: a.transitions,
        replicas: a.replicas,
        projects: a.projects.unwrap_or(PROCESS_PROJECTS_DEFAULT),
        dir: a.dir.clone(),
        calm: a.calm,
    };
    cfg.validate()?;
    let mut temp = None;
    let top = match &cfg.dir {
        Some(d) => d.clone(),
        None => {
            let t = tempfile::Builder::new()
                .prefix("swoosh-chaos-")
                .tempdir()
                .context("cannot create a temporary directory")?;
            let p = t.path().to_path_buf();
            temp = Some(t);
            p
        }
    };
    if !a.json {
        eprintln!(
            "chaos process seed {}: {} replicas, {} proposals, {} projects; run directory {}",
            cfg.seed,
            cfg.replicas,
            cfg.transitions,
            cfg.projects,
            top.display()
        );
    }
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(cfg.transitions)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} proposals {msg}")
            .expect("static template"),
    );
    let result = chaos_process::run(&cfg, &top, &bar).await;
    bar.finish_and_clear();
    let mut report = match result {
        Ok(r) => r,
        Err(e) => {
            // Keep the run directory: the node logs say what happened.
            if let Some(t) = temp {
                let _ = t.keep();
            }
            bail!(
                "{e:#}\nthe run directory is kept: {} (node logs in {}/logs)\nreproduce with: {}",
                top.display(),
                top.display(),
                cfg.reproduce()
            );
        }
    };
    let failed = !report.ok() || !report.converged();
    match temp {
        Some(t) if failed => {
            let _ = t.keep();
        }
        Some(_) => report.dir = None,
        None => {}
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_process(&report);
    }
    for v in &report.violations {
        eprintln!("violation: {v}");
    }
    if failed {
        bail!(
            "the process run found problems; node logs in {}/logs\nreproduce with: {}",
            top.display(),
            report.reproduce
        );
    }
    Ok(())
}

fn print_process(r: &ProcessReport) {
    let p = &r.process;
    println!(
        "chaos process seed {} — {} replicas, {:.1} s (real processes: the seed fixes the kill schedule and the workload, not the timing)",
        r.seed,
        r.replicas,
        p.elapsed_ms as f64 / 1000.0
    );
    println!(
        "  proposals {}  accepted {}  refused {}  repeats {}  acknowledged (202) {}",
        r.transitions, r.accepted, r.rejected, r.duplicates, r.acknowledged
    );
    let faults: Vec<String> = r
        .faults
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!("  faults      {}", faults.join(", "));
    let guards: Vec<String> = r
        .rejections_by_guard
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    println!("  refusals    {}", guards.join(", "));
    println!(
        "  kill -9     leader {}, followers {} ({} events not reached); {} proposals went unanswered ({} found committed), {} connection errors, {} busy answers",
        p.leader_restarts,
        p.follower_restarts,
        p.kills_skipped,
        p.unanswered,
        p.unanswered_committed,
        p.connection_errors,
        p.busy_answers
    );
    println!(
        "  lag         max {} records; catch-up at the end {:.1} s",
        r.max_lag,
        p.catch_up_ms as f64 / 1000.0
    );
    println!(
        "  replicas    index {}, {}",
        r.final_index,
        if r.converged() {
            "all on one hash (every WAL recovered after a clean stop)"
        } else {
            "DIVERGED"
        }
    );
    for n in &p.nodes {
        println!(
            "              {:<11} {}  (index {}, started {}x, killed {}x)",
            n.name, n.wal_root_hash, n.wal_index, n.starts, n.kills
        );
    }
    println!(
        "  violations  {}",
        r.violations.len() as u64 + r.violations_unlisted
    );
    match &r.dir {
        Some(d) => println!("  data        {d} (node logs in {d}/logs)"),
        None => println!("  data        (a temporary directory, removed; pass --dir to keep it)"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `swoosh chaos …` as the binary parses it.
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand)]
    enum Cmd {
        Chaos(ChaosArgs),
    }

    fn parse(line: &str) -> (SimConfig, bool) {
        let Cmd::Chaos(a) = Cli::try_parse_from(line.split_whitespace())
            .unwrap_or_else(|e| panic!("{line}: {e}"))
            .cmd;
        assert!(matches!(a.mode, Mode::Sim), "{line}");
        let twice = a.twice;
        (
            sim_config(&a).unwrap_or_else(|e| panic!("{line}: {e}")),
            twice,
        )
    }

    /// Every reproduce line the simulator prints runs as it stands: the CLI
    /// parses it back into the very configuration (and `--twice` into the
    /// determinism check), as `swoosh_chaos::parse_sim_args` does.
    #[test]
    fn every_reproduce_line_parses_back_into_its_config() {
        let mut configs = vec![
            SimConfig::default(),
            SimConfig {
                seed: 7,
                transitions: 10_000,
                rates: FaultRates::none(),
                ..SimConfig::default()
            },
            SimConfig {
                seed: 11,
                rates: FaultRates {
                    restart: 0.05,
                    ..FaultRates::default()
                },
                sabotage: Sabotage::AckBeforeDurable,
                ..SimConfig::default()
            },
            SimConfig {
                seed: 5,
                projects: 9,
                council: 7,
                no_voters: 0,
                rates: FaultRates {
                    torn_write: 0.3,
                    drop: 1.0 / 3.0,
                    ..FaultRates::none()
                },
                sabotage: Sabotage::CutKeepsDerived,
                ..SimConfig::default()
            },
        ];
        for (i, name) in FaultRates::NAMES.iter().enumerate() {
            let mut rates = FaultRates::default();
            rates.set(name, 0.125 + i as f64 / 1000.0).unwrap();
            configs.push(SimConfig {
                seed: i as u64,
                no_voters: 2,
                rates,
                ..SimConfig::default()
            });
        }
        for cfg in configs {
            for (line, twice) in [(cfg.reproduce(), false), (cfg.reproduce_twice(), true)] {
                assert!(!line.contains('('), "not a command: {line}");
                assert_eq!(parse(&line), (cfg.clone(), twice), "{line}");
                let lib = swoosh_chaos::parse_sim_args(line.split_whitespace()).unwrap();
                assert_eq!((lib.config, lib.twice), (cfg.clone(), twice), "{line}");
            }
        }
        // The defaults agree too.
        let lib = swoosh_chaos::parse_sim_args(["swoosh", "chaos"]).unwrap();
        assert_eq!(parse("swoosh chaos").0, lib.config);
    }
}
