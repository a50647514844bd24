//! `swoosh bench replication`: follower lag while the leader commits a
//! sustained rate of durable records, over real libp2p swarms on loopback.
//!
//! The leader side is the storage layer's group-commit writer fed with
//! records the pure reducer computed ahead of time, paced to `--rate`; it
//! signs each decision record and frames each record from the reducer's
//! bytes as the node's WAL writer does (`LeaderEntry`). This isolates
//! replication (tail, batch, sign, age-encrypt, chunk, gossip,
//! reassemble, decrypt, verify, apply with the core, persist to the
//! follower's own WAL) from the HTTP path, whose own ceiling is
//! `swoosh bench http`. Lag of a record = the moment a follower's WAL holds
//! it durably minus the moment the leader's commit of it returned; both
//! instants come from one process clock.

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swoosh_core::guards::Verify;
use swoosh_core::sig::{key_from_label, SignerId};
use swoosh_core::state::{FollowerEntry, NodeState};
use swoosh_net::p2p::follower::{
    lock_shared, spawn_follower, FollowerOptions, FollowerP2p, WORKER_THREAD as FOLLOWER_THREAD,
};
use swoosh_net::p2p::leader::spawn_leader;
use swoosh_storage::testkit::{stream_genesis, Stream};
use swoosh_storage::{BatchLimits, Durability, LeaderEntry, LmdbOptions, LmdbStore, WalWriter};

/// The target for follower lag at 10,000 records/s.
const LAG_P99_TARGET_MS: f64 = 50.0;
/// Share of `--rate` the leader must sustain for a lag figure to speak for
/// that rate: a leader that fell behind offered the followers less load.
const RATE_SUSTAINED_SHARE: f64 = 0.95;
/// Largest group commit the paced writer makes when it is behind schedule.
const COMMIT_BATCH_MAX: usize = 1_024;
/// How long followers may take to drain after the leader stops.
const DRAIN_WAIT_S: u64 = 120;

#[derive(Args)]
pub struct ReplArgs {
    /// Leader commit rate to sustain (durable records/s).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, default_value_t = 2)]
    followers: usize,
    /// Projects the records are spread over.
    #[arg(long, default_value_t = 16)]
    projects: usize,
    /// UNSAFE, diagnosis only: followers do not fsync their WAL (shows how
    /// much of the lag is the followers' commits).
    #[arg(long)]
    follower_nosync: bool,
    /// Followers write their own snapshot every N records, as `swoosh
    /// follow` does by default (10,000); 0 (the default here): none, as the
    /// bench's leader writes none, so figures compare across sessions.
    #[arg(long, default_value_t = 0)]
    follower_snapshot_every: u64,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct ReplReport {
    target_rate: u64,
    seconds: f64,
    records: u64,
    leader_records_per_s: f64,
    leader_commits: u64,
    followers: usize,
    follower_snapshot_every: u64,
    /// Snapshots the followers wrote during the run (all of them).
    follower_snapshots: u64,
    lag_p50_ms: f64,
    lag_p99_ms: f64,
    lag_max_ms: f64,
    lag_target_p99_ms: f64,
    /// The leader committed at least 95 % of `target_rate`.
    leader_rate_sustained: bool,
    /// `lag_p99_ms` within the target at a sustained `target_rate`.
    target_met: bool,
    fdatasync_ms: f64,
    lag_p99_over_fdatasync: f64,
    /// Every follower ends on the leader's root hash.
    converged: bool,
    /// Each follower's protocol counters (gaps, range requests, duplicates).
    follower_stats: Vec<String>,
    /// CPU per record while the leader committed and the followers drained:
    /// each follower's worker thread (mean), and everything else in the
    /// process (leader commit, tail, swarms, the sampler). Lag depends on how
    /// busy the shared host is; CPU per record much less, so compare these
    /// across runs. None where /proc is not available.
    follower_worker_cpu_us_per_record: Option<f64>,
    rest_cpu_us_per_record: Option<f64>,
}

/// CPU seconds used so far by the whole process, and by its threads named
/// `name` (from Linux /proc; None elsewhere).
fn cpu_seconds(name: &str) -> Option<(f64, f64)> {
    // SAFETY: sysconf only reads a configuration value.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if tck <= 0 {
        return None;
    }
    let ticks = |stat: &str| -> Option<u64> {
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of the line, i.e. 12 and 13 after it.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    };
    let total = ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let mut named = 0;
    for t in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            if let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) {
                named += ticks(&stat).unwrap_or(0);
            }
        }
    }
    Some((total as f64 / tck as f64, named as f64 / tck as f64))
}

fn store(dir: &std::path::Path, durability: Durability) -> Result<LmdbStore> {
    std::fs::create_dir_all(dir)?;
    LmdbStore::open(
        dir,
        &LmdbOptions {
            durability,
            map_bytes: crate::node::lmdb_map_bytes(),
        },
    )
    .with_context(|| format!("cannot open a store in {}", dir.display()))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub async fn run(a: ReplArgs) -> Result<()> {
    ensure!(
        (1..=1_000_000).contains(&a.rate),
        "--rate must be 1..=1000000"
    );
    ensure!((1..=600).contains(&a.seconds), "--seconds must be 1..=600");
    ensure!((1..=8).contains(&a.followers), "--followers must be 1..=8");
    ensure!(
        (1..=256).contains(&a.projects),
        "--projects must be 1..=256"
    );
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let disk = swoosh_storage::bench::fdatasync_rate(tmp.path(), 300)
        .context("cannot measure the disk's fdatasync rate")?;
    let fsync_ms = 1000.0 / disk.per_second;

    let label = "bench-repl";
    let mut g = stream_genesis(label);
    let fkeys: Vec<(
        ed25519_dalek::SigningKey,
        swoosh_net::p2p::envelope::AgeIdentity,
    )> = (0..a.followers)
        .map(|i| {
            let (secret, _) = swoosh_net::p2p::envelope::generate_identity();
            let id = swoosh_net::p2p::envelope::parse_identity(&secret)?;
            Ok((key_from_label(&format!("{label}/follower-{i}")), id))
        })
        .collect::<Result<_>>()?;
    g.followers = fkeys
        .iter()
        .enumerate()
        .map(|(i, (k, id))| FollowerEntry {
            name: format!("follower-{}", i + 1),
            key: SignerId::from_signing_key(k),
            age_recipient: id.to_public().to_string(),
        })
        .collect();
    g.validate_new()
        .context("the benchmark genesis is invalid")?;

    // Compute every record ahead of time so the paced writer does only what
    // the node's WAL writer does: sign, frame and commit.
    let total = a.rate * a.seconds;
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40.cyan/blue} {pos}/{len}")
            .expect("static template"),
    );
    bar.set_message("computing records with the pure reducer");
    let g2 = g.clone();
    let bar2 = bar.clone();
    let (entries, root) = tokio::task::spawn_blocking(move || -> Result<(Vec<LeaderEntry>, _)> {
        let mut s = Stream::resume(label, a.projects, NodeState::new(g2)?, Verify::Trusted);
        let mut v = Vec::with_capacity(total as usize);
        for _ in 0..total {
            v.push(LeaderEntry::from_accepted(s.next_accepted()));
            bar2.inc(1);
        }
        Ok((v, s.node().root_hash()))
    })
    .await??;
    bar.finish_and_clear();

    let leader_store = store(&tmp.path().join("leader"), Durability::Sync)?;
    let gh = g.hash()?;
    let mut writer = WalWriter::open(leader_store.clone(), gh, BatchLimits::default())
        .context("cannot open the leader's WAL")?;
    let leader_key = swoosh_core::scenario::Keys::from_labels(label, 3).leader;
    let leader = spawn_leader(
        leader_store,
        leader_key.clone(),
        g.clone(),
        "/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr"),
    )
    .await?;
    let mut followers: Vec<FollowerP2p> = vec![];
    for (i, (k, id)) in fkeys.iter().enumerate() {
        let s = store(
            &tmp.path().join(format!("follower-{}", i + 1)),
            if a.follower_nosync {
                Durability::NoSync
            } else {
                Durability::Sync
            },
        )?;
        followers.push(
            spawn_follower(
                s,
                FollowerOptions {
                    key: k.clone(),
                    genesis: g.clone(),
                    age_identity: id.clone(),
                    leader: leader.listen_addrs[0].clone(),
                    listen: None,
                    snapshot_every: a.follower_snapshot_every,
                    compaction: None,
                },
            )
            .await?,
        );
    }
    let t0 = Instant::now();
    while leader.followers().iter().any(|f| f.applied_index.is_none()) {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("the followers did not connect to the leader within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A few gossipsub heartbeats so the mesh is grafted before the load.
    tokio::time::sleep(Duration::from_millis(600)).await;

    // The follower side: note when each index becomes durable on each follower.
    let n = total as usize;
    let seen: Arc<Mutex<Vec<Vec<Option<Instant>>>>> =
        Arc::new(Mutex::new(vec![vec![None; n + 1]; a.followers]));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Polled every 200 µs: read the atomic copy, never the worker's lock.
    let counters: Vec<_> = followers
        .iter()
        .map(|f| lock_shared(&f.shared).net.clone())
        .collect();
    let sampler = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut last = vec![0usize; counters.len()];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = Instant::now();
                for (fi, c) in counters.iter().enumerate() {
                    let at = (c.persisted_index.load(std::sync::atomic::Ordering::Acquire)
                        as usize)
                        .min(n);
                    if at > last[fi] {
                        let mut s = seen.lock().expect("seen lock");
                        for slot in &mut s[fi][last[fi] + 1..=at] {
                            *slot = Some(now);
                        }
                        last[fi] = at;
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };

    // The leader side: commit on schedule, as one group commit per catch-up.
    if !a.json {
        eprintln!(
            "leader commits {} records/s for {} s; {} followers tail over libp2p",
            a.rate, a.seconds, a.followers
        );
    }
    let rate = a.rate;
    let cpu_before = cpu_seconds(FOLLOWER_THREAD);
    let (committed_at, commits, elapsed) = tokio::task::spawn_blocking(move || {
        let mut at: Vec<Option<Instant>> = vec![None; n + 1];
        let mut entries = entries.into_iter();
        let mut i = 0usize;
        let mut commits = 0u64;
        let start = Instant::now();
        while i < n {
            let due = ((start.elapsed().as_secs_f64() * rate as f64) as usize).min(n);
            if due <= i {
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            let j = due.min(i + COMMIT_BATCH_MAX);
            let batch = entries
                .by_ref()
                .take(j - i)
                .map(|mut e| {
                    e.sign_decision(&leader_key);
                    e.encode()
                })
                .collect::<Result<Vec<_>, _>>()
                .context("the leader could not frame a record")?;
            writer
                .append_encoded(batch)
                .context("the leader's commit failed")?;
            let now = Instant::now();
            for slot in &mut at[i + 1..=j] {
                *slot = Some(now);
            }
            commits += 1;
            i = j;
        }
        Ok::<_, anyhow::Error>((at, commits, start.elapsed()))
    })
    .await??;

    let t0 = Instant::now();
    loop {
        let done = followers.iter().all(|f| {
            let s = lock_shared(&f.shared);
            s.persisted_index() as usize >= n || s.halted_reason.is_some()
        });
        if done {
            break;
        }
        if t0.elapsed() > Duration::from_secs(DRAIN_WAIT_S) {
            let at: Vec<u64> = followers.iter().map(|f| f.applied_index()).collect();
            bail!(
                "followers did not catch up within {DRAIN_WAIT_S} s of the end (at {at:?} of {n})"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_after = cpu_seconds(FOLLOWER_THREAD);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    let cpu = cpu_before.zip(cpu_after).map(|((t0, f0), (t1, f1))| {
        let per = |s: f64| s * 1e6 / n.max(1) as f64;
        (
            per(f1 - f0) / a.followers.max(1) as f64,
            per((t1 - t0) - (f1 - f0)),
        )
    });
    for f in &followers {
        if let Some(h) = &lock_shared(&f.shared).halted_reason {
            bail!("a follower halted: {h}");
        }
    }
    let converged = followers.iter().all(|f| f.root_hash() == root);
    let seen = seen.lock().expect("seen lock");
    let mut lags: Vec<f64> = vec![];
    for fs in seen.iter() {
        for i in 1..=n {
            if let (Some(c), Some(f)) = (committed_at[i], fs[i]) {
                lags.push(f.saturating_duration_since(c).as_secs_f64() * 1000.0);
            }
        }
    }
    lags.sort_by(f64::total_cmp);
    let leader_rate = total as f64 / elapsed.as_secs_f64();
    let sustained = leader_rate >= RATE_SUSTAINED_SHARE * a.rate as f64;
    let r = ReplReport {
        target_rate: a.rate,
        seconds: elapsed.as_secs_f64(),
        records: total,
        leader_records_per_s: leader_rate,
        leader_commits: commits,
        followers: a.followers,
        follower_snapshot_every: a.follower_snapshot_every,
        follower_snapshots: followers
            .iter()
            .map(|f| lock_shared(&f.shared).snapshots_ok)
            .sum(),
        lag_p50_ms: pct(&lags, 0.50),
        lag_p99_ms: pct(&lags, 0.99),
        lag_max_ms: lags.last().copied().unwrap_or(0.0),
        lag_target_p99_ms: LAG_P99_TARGET_MS,
        leader_rate_sustained: sustained,
        target_met: sustained && pct(&lags, 0.99) <= LAG_P99_TARGET_MS,
        fdatasync_ms: fsync_ms,
        lag_p99_over_fdatasync: pct(&lags, 0.99) / fsync_ms,
        converged,
        follower_worker_cpu_us_per_record: cpu.map(|c| c.0),
        rest_cpu_us_per_record: cpu.map(|c| c.1),
        follower_stats: followers
            .iter()
            .map(|f| {
                let s = lock_shared(&f.shared);
                format!(
                    "{:?}; gossip chunks {}, decrypted {}, malformed {}, inbox full drops {}, WAL commits {} ({} records)",
                    s.repl.stats(),
                    s.net.gossip_chunks.load(std::sync::atomic::Ordering::Relaxed),
                    s.decrypted,
                    s.malformed + s.net.malformed_chunks.load(std::sync::atomic::Ordering::Relaxed),
                    s.net.inbox_full_drops.load(std::sync::atomic::Ordering::Relaxed),
                    s.commits,
                    s.committed_records
                )
            })
            .collect(),
    };
    let ls = leader.snapshot();
    let leader_stats = format!(
        "gossip messages {}, publish errors {}, {:?}",
        ls.gossip_messages, ls.publish_errors, ls.stats
    );
    drop(followers);
    drop(leader);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "raw fdatasync in this run: {:.3} ms ({:.0}/s)",
            fsync_ms, disk.per_second
        );
        println!(
            "leader: {} records in {:.2} s = {:.0} durable records/s (target {}), {} group commits",
            r.records, r.seconds, r.leader_records_per_s, r.target_rate, r.leader_commits
        );
        let verdict = if r.target_met {
            "met".to_string()
        } else if !r.leader_rate_sustained {
            format!(
                "NOT met (the leader sustained {:.0} of {} records/s)",
                r.leader_records_per_s, r.target_rate
            )
        } else {
            "NOT met".to_string()
        };
        println!(
            "follower lag (leader commit → follower WAL durable), {} followers: p50 {:.1} ms, p99 {:.1} ms (= {:.0}× one fdatasync), max {:.1} ms; target p99 ≤ {} ms: {verdict}",
            r.followers,
            r.lag_p50_ms,
            r.lag_p99_ms,
            r.lag_p99_over_fdatasync,
            r.lag_max_ms,
            LAG_P99_TARGET_MS,
        );
        if let (Some(f), Some(rest)) = (
            r.follower_worker_cpu_us_per_record,
            r.rest_cpu_us_per_record,
        ) {
            println!(
                "CPU per record: {f:.0} µs in each follower's worker, {rest:.0} µs in the rest of the process (leader commit, tail, swarms)"
            );
        }
        if r.follower_snapshot_every > 0 {
            println!(
                "followers' own snapshots: every {} records, {} written in all",
                r.follower_snapshot_every, r.follower_snapshots
            );
        }
        println!("leader protocol: {leader_stats}");
        for st in &r.follower_stats {
            println!("follower protocol: {st}");
        }
        println!(
            "every follower on the leader's root hash: {}",
            if converged { "yes" } else { "NO" }
        );
    }
    ensure!(
        converged,
        "a follower ended on another root hash than the leader"
    );
    Ok(())
}
