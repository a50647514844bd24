//! Time a full replay from genesis of a generated log (the recovery part of
//! `swoosh bench storage`) without building the CLI:
//! `cargo run --release -p swoosh-storage --example replay_timing -- 50000`.

use swoosh_storage::bench::{fdatasync_rate, recovery_run};

fn main() {
    let records: u64 = std::env::args()
        .nth(1)
        .map_or(50_000, |s| s.parse().expect("records: a number"));
    let dir = std::env::temp_dir().join(format!("swoosh-replay-timing-{}", std::process::id()));
    let disk = fdatasync_rate(&dir.join("disk"), 200).expect("fdatasync probe");
    let r = recovery_run(&dir.join("log"), records, records / 10, &mut |_, _, _| {})
        .expect("recovery run");
    println!(
        "fdatasync {:.0} us ({:.0}/s); build {:.2} s; full replay of {} records {:.3} s = {:.0} records/s ({:.1}x the fdatasync rate); from snapshot (tail {}) {:.3} s",
        disk.per_sync.as_secs_f64() * 1e6,
        disk.per_second,
        r.build.as_secs_f64(),
        r.records,
        r.full_replay.as_secs_f64(),
        r.replay_records_per_second,
        r.replay_records_per_second / disk.per_second,
        r.tail_records,
        r.from_snapshot.map_or(0.0, |d| d.as_secs_f64()),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
