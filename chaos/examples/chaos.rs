//! Run the simulator from the command line until `swoosh chaos` lands in the
//! CLI (same flags):
//!
//! ```text
//! cargo run -p swoosh-chaos --example chaos -- --seed 7 --transitions 10000 --replicas 3 [--projects 4] [--twice] [--json] [--calm]
//! ```
//!
//! Prints a short summary (or the JSON report with `--json`); exits 1 on any
//! violation or on a different report for the same seed (`--twice`).

use swoosh_chaos::{run, FaultRates, SimConfig, SimReport};

fn usage() -> ! {
    eprintln!("usage: chaos --seed N [--transitions N] [--replicas N] [--projects N] [--twice] [--json] [--calm]");
    std::process::exit(2)
}

fn main() {
    let mut cfg = SimConfig::default();
    let (mut twice, mut json) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage())
        };
        match a.as_str() {
            "--seed" => cfg.seed = num(),
            "--transitions" => cfg.transitions = num(),
            "--replicas" => cfg.replicas = num() as usize,
            "--projects" => cfg.projects = num() as usize,
            "--twice" => twice = true,
            "--json" => json = true,
            "--calm" => cfg.rates = FaultRates::none(),
            _ => usage(),
        }
    }
    let go = |cfg: &SimConfig| -> (SimReport, std::time::Duration) {
        let t = std::time::Instant::now();
        let r = run(cfg.clone());
        (r, t.elapsed())
    };
    let (r, took) = go(&cfg);
    let mut failed = !r.ok() || !r.converged();
    if twice {
        let (again, _) = go(&cfg);
        if again != r {
            eprintln!("the same seed gave a different report the second time");
            failed = true;
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).expect("reports serialize")
        );
    } else {
        println!(
            "seed {}  transitions {}  accepted {}  rejected {}  acknowledged {}  final index {}  max lag {} (steady {})  ({:.1?})",
            r.seed, r.transitions, r.accepted, r.rejected, r.acknowledged, r.final_index, r.max_lag, r.max_lag_steady, took
        );
        for (i, h) in r.final_hashes.iter().enumerate() {
            let role = if i == 0 { "leader" } else { "follower" };
            println!("  {role:<8} {h}");
        }
        let faults: Vec<String> = r
            .faults
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        println!("  faults: {}", faults.join(" "));
        for v in &r.violations {
            println!("  VIOLATION {v}");
        }
    }
    if failed {
        eprintln!("reproduce with: {}", r.reproduce);
        std::process::exit(1);
    }
}
