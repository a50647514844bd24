//! Run the storage benchmark without the CLI:
//! `cargo run -p swoosh-storage --release --example bench-storage -- DIR [--records N] [--recovery N] [--tail N] [--nosync]`
//! DIR must be empty or absent and on the disk to measure.

use swoosh_storage::bench::{run, BenchOptions};
use swoosh_storage::Durability;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: bench-storage DIR [--records N] [--recovery N] [--tail N] [--nosync]");
        std::process::exit(2);
    };
    let mut opts = BenchOptions::default();
    while let Some(a) = args.next() {
        let mut num = || {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{a} needs a number"))
        };
        match a.as_str() {
            "--records" => opts.append_records = num() as usize,
            "--recovery" => opts.recovery_records = num(),
            "--tail" => opts.recovery_tail = num(),
            "--nosync" => opts.durability = Durability::NoSync,
            other => panic!("unknown argument {other}"),
        }
    }
    let mut last = String::new();
    let report = run(
        std::path::Path::new(&dir),
        &opts,
        &mut |phase, done, total| {
            if phase != last || done == total {
                eprintln!("{phase}: {done}/{total}");
                last = phase.to_string();
            }
        },
    );
    match report {
        Ok(r) => print!("{r}"),
        Err(e) => {
            eprintln!("bench-storage: {e}");
            std::process::exit(1);
        }
    }
}
