//! Run the simulator from the command line without building the CLI. It
//! takes exactly the flags of `swoosh chaos --mode sim`
//! (`swoosh_chaos::parse_sim_args`), so every `reproduce with:` line runs
//! here too, with `swoosh chaos` replaced by the cargo command:
//!
//! ```text
//! cargo run -p swoosh-chaos --example chaos -- --seed 7 --transitions 10000 --replicas 3 \
//!     [--projects 4] [--council 5 --no-voters 1] [--calm] [--rate NAME=P]... [--twice] [--json]
//! ```
//!
//! Prints a short summary (or the JSON report with `--json`); exits 1 on any
//! violation or on a different report for the same seed (`--twice`), 2 on
//! bad arguments.

use swoosh_chaos::{parse_sim_args, run, SimConfig, SimReport};

fn main() {
    let args = match parse_sim_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2)
        }
    };
    let cfg = args.config;
    if let Err(e) = cfg.validate() {
        eprintln!("{e}");
        std::process::exit(2)
    }
    let go = |cfg: &SimConfig| -> (SimReport, std::time::Duration) {
        let t = std::time::Instant::now();
        let r = run(cfg.clone());
        (r, t.elapsed())
    };
    let (r, took) = go(&cfg);
    let mut failed = !r.ok() || !r.converged();
    let mut reproduce = r.reproduce.clone();
    if args.twice {
        let (again, _) = go(&cfg);
        if again != r {
            eprintln!("the same seed gave a different report the second time");
            failed = true;
            reproduce = cfg.reproduce_twice();
        }
    }
    if args.json {
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
        eprintln!("reproduce with: {reproduce}");
        std::process::exit(1);
    }
}
