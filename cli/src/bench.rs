//! `swoosh bench http|storage`: throughput and latency, always printed beside
//! the raw `fdatasync` rate of the same disk measured in the same run, since
//! the machines are shared and noisy and only ratios compare across runs.

use crate::node::now_ms;
use anyhow::{ensure, Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swoosh_actors::{NodeConfig, NodeHandle, SystemClock};
use swoosh_core::guards::Verify;
use swoosh_core::reducer::{step, Ctx};
use swoosh_core::scenario::{genesis, Driver, Keys, Next};
use swoosh_core::state::NodeState;
use swoosh_core::{Hlc, ProposalBuilder};
use swoosh_net::client::{Client, ClientError};
use swoosh_storage::{Durability, LmdbOptions, LmdbStore};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Durable accepted transitions/s and latency over HTTP on loopback.
    Http(HttpArgs),
    /// WAL append (batch 1, 64, 1024), replay and recovery throughput.
    Storage(StorageArgs),
    /// Follower lag over libp2p while the leader commits a sustained rate.
    Replication(crate::bench_repl::ReplArgs),
}

#[derive(Args)]
pub struct HttpArgs {
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Projects (default: one per client, so clients never conflict).
    #[arg(long)]
    projects: Option<usize>,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// UNSAFE: run the node without fsync (to see the CPU-bound ceiling).
    #[arg(long)]
    nosync: bool,
    /// The node writes a snapshot every N transitions, as `swoosh serve`
    /// does by default (10,000); 0 (the default here): none, so figures
    /// compare across sessions.
    #[arg(long, default_value_t = 0)]
    snapshot_every: u64,
    /// The node compacts its log while serving (`serve --archive-dir`),
    /// keeping N records before each snapshot (archives in the bench's
    /// temporary directory; at least 1,000 of them accumulate before each
    /// compaction, in steps of 5,000): measures what compaction steps cost
    /// the requests they run beside. Needs --snapshot-every.
    #[arg(long, requires = "snapshot_every")]
    compact_keep_records: Option<u64>,
    #[arg(long)]
    json: bool,
}

/// Records that accumulate past `--compact-keep-records` before `bench
/// http`'s node compacts (the node's default is 20,000; a short run needs
/// fewer to compact at all).
const BENCH_COMPACT_MIN_RECORDS: u64 = 1_000;

#[derive(Args)]
pub struct StorageArgs {
    /// Records in the recovery run.
    #[arg(long, default_value_t = 1_000_000)]
    recovery_records: u64,
    /// Records per append run.
    #[arg(long, default_value_t = 20_000)]
    append_records: usize,
    /// Directory to run in (must be empty; default: a temporary one).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    #[arg(long)]
    json: bool,
}

pub async fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Http(a) => http(a).await,
        BenchCmd::Storage(a) => storage(a),
        BenchCmd::Replication(a) => crate::bench_repl::run(a).await,
    }
}

#[derive(Serialize)]
struct HttpReport {
    clients: usize,
    projects: usize,
    seconds: f64,
    durability: &'static str,
    accepted: u64,
    accepted_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    snapshot_every: u64,
    compact_keep_records: Option<u64>,
    /// Snapshots written and compactions (records cut) finished while the
    /// clients ran (the last requests' may still be queued).
    snapshots: u64,
    compactions: u64,
    compacted_records: u64,
    /// The mean of the two measurements below, the baseline of every ratio.
    fdatasync_ms: f64,
    fdatasyncs_per_s: f64,
    fdatasync_before_ms: f64,
    fdatasync_after_ms: f64,
    accepted_per_s_over_fdatasyncs_per_s: f64,
    single_client_p50_over_fdatasync: Option<f64>,
}

/// `fdatasync`s in each of the two baseline measurements of `bench http`.
const FDATASYNC_BASELINE_SYNCS: u64 = 300;

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn http(a: HttpArgs) -> Result<()> {
    ensure!(
        (1..=1024).contains(&a.clients),
        "--clients must be between 1 and 1024"
    );
    let projects = a.projects.unwrap_or(a.clients);
    ensure!(
        projects >= a.clients && projects <= 65_536,
        "--projects must be at least --clients (each client owns its projects) and at most 65536"
    );
    ensure!(
        (1..=3600).contains(&a.seconds),
        "--seconds must be between 1 and 3600"
    );
    ensure!(
        a.compact_keep_records.is_none() || a.snapshot_every > 0,
        "--compact-keep-records needs --snapshot-every above 0 (compaction follows a snapshot)"
    );
    ensure!(
        a.compact_keep_records != Some(0),
        "--compact-keep-records must be at least 1"
    );
    let dir = tempfile::tempdir()?;
    // The raw disk is measured before the run and again after it, and the
    // ratios use both: one ~50 ms window alone moved the baseline by up to
    // 1.7x between runs on a shared host.
    let disk_before = swoosh_storage::bench::fdatasync_rate(dir.path(), FDATASYNC_BASELINE_SYNCS)
        .context("cannot measure the disk's fdatasync rate")?;

    let keys = Arc::new(Keys::from_labels("bench", 3));
    let g = genesis(&keys, "bench", now_ms() / 1000 * 1000);
    let store = LmdbStore::open(
        &dir.path().join("data"),
        &LmdbOptions {
            durability: if a.nosync {
                Durability::NoSync
            } else {
                Durability::Sync
            },
            map_bytes: crate::node::lmdb_map_bytes(),
        },
    )
    .or_else(|_| {
        std::fs::create_dir_all(dir.path().join("data"))?;
        LmdbStore::open(
            &dir.path().join("data"),
            &LmdbOptions {
                durability: if a.nosync {
                    Durability::NoSync
                } else {
                    Durability::Sync
                },
                map_bytes: crate::node::lmdb_map_bytes(),
            },
        )
        .map_err(|e| std::io::Error::other(e.to_string()))
    })
    .context("cannot open the bench store")?;
    if a.compact_keep_records.is_some() {
        std::fs::create_dir_all(dir.path().join("archives"))?;
    }
    let cfg = NodeConfig {
        genesis: g.clone(),
        leader_key: keys.leader.clone(),
        snapshot_every: a.snapshot_every,
        snapshot_keep: 2,
        wal_limits: Default::default(),
        clock: Arc::new(SystemClock),
        advertise: String::new(),
        attention_file: None,
        compaction: a
            .compact_keep_records
            .map(|keep| swoosh_actors::CompactionPolicy {
                keep_records: keep,
                min_records: BENCH_COMPACT_MIN_RECORDS,
                archive_dir: dir.path().join("archives"),
                drop_decisions: false,
            }),
    };
    let node = NodeHandle::start(store, cfg).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(swoosh_net::http::serve(listener, node.clone(), async {
        let _ = stop_rx.await;
    }));

    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(a.seconds)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} s {msg}")
            .expect("static template"),
    );
    // The measured window opens only once every client has booted its
    // projects (durable commits, untimed): on a slow disk the boots alone
    // can outlast a short run. Each client reports when it is booted, then
    // waits for the window's deadline.
    let (booted_tx, mut booted_rx) = tokio::sync::mpsc::channel::<()>(a.clients);
    let (deadline_tx, deadline_rx) = tokio::sync::watch::channel::<Option<Instant>>(None);
    let mut tasks = tokio::task::JoinSet::new();
    for ci in 0..a.clients {
        let mine: Vec<String> = (0..projects)
            .filter(|j| j % a.clients == ci)
            .map(|j| format!("bench-{j}"))
            .collect();
        let (keys, g, url) = (keys.clone(), g.clone(), url.clone());
        let (booted, mut deadline_rx) = (booted_tx.clone(), deadline_rx.clone());
        tasks.spawn(async move {
            let c = Client::new(&url);
            let driver = Driver::new(&keys, 0);
            let mut mirror = NodeState::new(g)?;
            // Boot every project (not timed).
            for p in &mine {
                while mirror.project(p).boot.phase != "LICENSED" {
                    let Next::Propose(q) = driver.next(&mirror, p, now_ms()) else {
                        anyhow::bail!("cannot boot {p}")
                    };
                    c.submit_retrying(&q).await?;
                    step(
                        &mut mirror,
                        &q,
                        &Ctx {
                            now_ms: q.hlc.wall_ms,
                            verify: Verify::Trusted,
                            snapshot_every: 0,
                        },
                    );
                }
            }
            // Steady state: Control_Pause / Control_Resume, each durable.
            // A load generator does not run the reducer: the 202 reply names
            // the project's new HEAD, and this client is the only writer of
            // its projects, so its own last HLC is the project's. (Running a
            // mirror reducer here cost ~15 % of the two cores the node needs.)
            struct Own {
                name: String,
                head: swoosh_core::Hash,
                hlc: Hlc,
                paused: bool,
            }
            let mut own = Vec::with_capacity(mine.len());
            for p in &mine {
                let st = mirror.project(p);
                own.push(Own {
                    name: p.clone(),
                    head: mirror.project_hash(p),
                    hlc: st.hlc_last.unwrap_or_default(),
                    paused: st.control.phase != "NORMAL",
                });
            }
            drop(mirror);
            // Booted; the sender goes with the report, so a client that
            // failed to boot shows as a closed channel, not a hang.
            let _ = booted.send(()).await;
            drop(booted);
            let deadline = match deadline_rx.wait_for(Option::is_some).await {
                Ok(d) => d.expect("waited for Some"),
                // The run was abandoned: another client failed to boot, and
                // its error is the one reported.
                Err(_) => return Ok((0, vec![], vec![])),
            };
            let mut lat = Vec::with_capacity(4096);
            let mut n = 0u64;
            'outer: loop {
                for o in &mut own {
                    // Every client submits at least once in the window, so a
                    // client scheduled late still measures something.
                    if n > 0 && Instant::now() >= deadline {
                        break 'outer;
                    }
                    let hlc = Hlc::send(o.hlc, now_ms())?;
                    let b = ProposalBuilder::new(
                        &o.name,
                        if o.paused {
                            "Control_Resume"
                        } else {
                            "Control_Pause"
                        },
                        o.head,
                        hlc,
                        &format!("{}:{n}", o.name),
                    );
                    let b = if o.paused {
                        b.inputs(&json!({}))?
                    } else {
                        b.inputs(&json!({"reason": "bench"}))?
                    };
                    let q = b.sign(&keys.leader)?;
                    let t0 = Instant::now();
                    let (reply, retries) = match c.submit_retrying(&q).await {
                        Ok(r) => r,
                        // The node is stopping at the end of the run (an
                        // earlier attempt may have been unknown: wrapped).
                        Err(e)
                            if e.status() == Some(503)
                                && !matches!(e, ClientError::NotLeader { .. }) =>
                        {
                            break 'outer
                        }
                        Err(e) => return Err(e.into()),
                    };
                    lat.push(t0.elapsed());
                    // A retry may be answered as a repeat of its own first
                    // attempt (sent, reply lost); only a first attempt may not.
                    anyhow::ensure!(
                        !reply.duplicate || retries > 0,
                        "the node took a fresh proposal as a repeat"
                    );
                    o.head = reply
                        .state_post_hash
                        .parse()
                        .map_err(|e| anyhow::anyhow!("bad state_post_hash in the reply: {e}"))?;
                    o.hlc = hlc;
                    o.paused = !o.paused;
                    n += 1;
                }
            }
            let heads: Vec<(String, swoosh_core::Hash)> =
                own.into_iter().map(|o| (o.name, o.head)).collect();
            Ok::<_, anyhow::Error>((n, lat, heads))
        });
    }
    drop((booted_tx, deadline_rx));
    let mut booted = 0;
    while booted < a.clients {
        if booted_rx.recv().await.is_none() {
            // A client ended before it booted: abandon the run (the booted
            // ones stop waiting) and report its error.
            drop(deadline_tx);
            while let Some(r) = tasks.join_next().await {
                r??;
            }
            anyhow::bail!("a bench client stopped before booting its projects");
        }
        booted += 1;
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.seconds);
    deadline_tx.send_replace(Some(deadline));
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                bar.inc(1);
            }
        })
    };
    let mut accepted = 0;
    let mut lat = vec![];
    let mut heads = vec![];
    while let Some(r) = tasks.join_next().await {
        let (n, l, h) = r??;
        accepted += n;
        lat.extend(l);
        heads.extend(h);
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The clients tracked HEAD from the replies alone; the node must agree.
    for (project, head) in &heads {
        let view = node
            .state(project, &[swoosh_core::statechart::Region::Control])
            .await
            .map_err(|e| anyhow::anyhow!("cannot read {project} back: {e}"))?;
        ensure!(
            view.hash == *head,
            "project {project}: the node's HEAD {} is not the {} its replies named",
            view.hash,
            head
        );
    }
    ticker.abort();
    bar.finish_and_clear();
    let metrics = node.metrics_text();
    let counter = |line: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let (snapshots, compactions, compacted_records) = (
        counter("swoosh_snapshots_total{kind=\"ok\"} "),
        counter("swoosh_compactions_total{kind=\"ok\"} "),
        counter("swoosh_compacted_records_total "),
    );
    let _ = stop_tx.send(());
    server.await??;
    node.shutdown().await;
    drop(node);
    let disk_after = swoosh_storage::bench::fdatasync_rate(dir.path(), FDATASYNC_BASELINE_SYNCS)
        .context("cannot measure the disk's fdatasync rate")?;
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let syncs = disk_before.syncs + disk_after.syncs;
    let disk_elapsed = disk_before.elapsed + disk_after.elapsed;
    let per_sync_ms = ms(disk_elapsed) / syncs as f64;
    let per_second = syncs as f64 / disk_elapsed.as_secs_f64();
    let p50 = pct(&lat, 0.5);
    let report = HttpReport {
        clients: a.clients,
        projects,
        seconds: elapsed,
        durability: if a.nosync { "nosync (UNSAFE)" } else { "sync" },
        accepted,
        accepted_per_s: accepted as f64 / elapsed,
        p50_ms: p50,
        p99_ms: pct(&lat, 0.99),
        max_ms: lat.last().map_or(0.0, |d| ms(*d)),
        snapshot_every: a.snapshot_every,
        compact_keep_records: a.compact_keep_records,
        snapshots,
        compactions,
        compacted_records,
        fdatasync_ms: per_sync_ms,
        fdatasyncs_per_s: per_second,
        fdatasync_before_ms: ms(disk_before.per_sync),
        fdatasync_after_ms: ms(disk_after.per_sync),
        accepted_per_s_over_fdatasyncs_per_s: accepted as f64 / elapsed / per_second,
        single_client_p50_over_fdatasync: (a.clients == 1).then(|| p50 / per_sync_ms),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "bench http: {} clients, {} projects, {:.1} s, {}",
            report.clients, report.projects, report.seconds, report.durability
        );
        println!(
            "  raw disk       fdatasync {:.3} ms  ({:.0}/s)  <- baseline, same run (before {:.3} ms, after {:.3} ms)",
            report.fdatasync_ms, report.fdatasyncs_per_s, report.fdatasync_before_ms, report.fdatasync_after_ms
        );
        println!(
            "  accepted       {} durable transitions, {:.0}/s  ({:.2}× the raw fdatasync rate)",
            report.accepted, report.accepted_per_s, report.accepted_per_s_over_fdatasyncs_per_s
        );
        println!(
            "  latency        p50 {:.3} ms ({:.2}× one fdatasync), p99 {:.3} ms, max {:.3} ms",
            report.p50_ms,
            report.p50_ms / report.fdatasync_ms,
            report.p99_ms,
            report.max_ms
        );
        if report.snapshot_every > 0 {
            println!(
                "  upkeep         {} snapshot(s) (every {} transitions), {} compaction(s) cutting {} records, finished while the clients ran",
                report.snapshots, report.snapshot_every, report.compactions, report.compacted_records
            );
        }
    }
    Ok(())
}

fn storage(a: StorageArgs) -> Result<()> {
    let temp;
    let dir = match a.dir {
        Some(d) => d,
        None => {
            temp = tempfile::tempdir()?;
            temp.path().join("bench")
        }
    };
    let opts = swoosh_storage::bench::BenchOptions {
        append_records: a.append_records,
        recovery_records: a.recovery_records,
        ..Default::default()
    };
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(100)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40.cyan/blue} {msg}").expect("static template"),
    );
    let report = swoosh_storage::bench::run(&dir, &opts, &mut |phase, done, total| {
        bar.set_message(format!("{phase} {done}/{total}"));
        if let Some(pct) = (done * 100).checked_div(total) {
            bar.set_position(pct);
        }
    })
    .context("the storage benchmark failed")?;
    bar.finish_and_clear();
    let per_sync_ms = report.disk.per_sync.as_secs_f64() * 1000.0;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let appends: Vec<serde_json::Value> = report
        .appends
        .iter()
        .map(|r| {
            json!({
                "batch_records": r.batch_records,
                "records": r.records,
                "commits": r.commits,
                "bytes": r.bytes,
                "records_per_s": r.records_per_second,
                "commits_per_s": r.commits_per_second,
                "commit_p50_ms": ms(r.commit_p50),
                "commit_p99_ms": ms(r.commit_p99),
                "commit_max_ms": ms(r.commit_max),
                "commit_p50_over_fdatasync": ms(r.commit_p50) / per_sync_ms,
            })
        })
        .collect();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "fdatasync_ms": per_sync_ms,
                "fdatasyncs_per_s": report.disk.per_second,
                "record_bytes_mean": report.record_bytes_mean,
                "record_payload_bytes_mean": report.record_payload_bytes_mean,
                "appends": appends,
                "recovery": report.recovery.as_ref().map(|r| json!({
                    "records": r.records,
                    "full_replay_s": r.full_replay.as_secs_f64(),
                    "replay_records_per_s": r.replay_records_per_second,
                    "full_replay_cpu_us_per_record": r.full_replay_cpu_us_per_record,
                    "from_snapshot_s": r.from_snapshot.map(|d| d.as_secs_f64()),
                    "snapshot_bytes": r.snapshot_bytes,
                    "tail_records": r.tail_records,
                })),
            }))?
        );
    } else {
        println!("bench storage ({:?})", report.durability);
        println!(
            "  raw disk   fdatasync {per_sync_ms:.3} ms ({:.0}/s)  <- baseline, same run",
            report.disk.per_second
        );
        println!(
            "  records    {:.0} bytes mean, {:.0} stored (frame, LZ4 where it pays), encode {:?} each",
            report.record_payload_bytes_mean, report.record_bytes_mean, report.encode_per_record
        );
        for r in &report.appends {
            println!(
                "  append     batch {:>5}  {:>8.0} records/s  commit p50 {:.3} ms ({:.2}× one fdatasync), p99 {:.3} ms, max {:.3} ms",
                r.batch_records,
                r.records_per_second,
                ms(r.commit_p50),
                ms(r.commit_p50) / per_sync_ms,
                ms(r.commit_p99),
                ms(r.commit_max),
            );
        }
        if let Some(r) = &report.recovery {
            let cpu = r
                .full_replay_cpu_us_per_record
                .map_or(String::new(), |c| format!(", {c:.1} µs of CPU per record"));
            println!(
                "  replay     {} records from genesis in {:.2} s = {:.0} records/s{cpu}",
                r.records,
                r.full_replay.as_secs_f64(),
                r.replay_records_per_second,
            );
            if let Some(d) = r.from_snapshot {
                println!(
                    "  recovery   newest snapshot ({} bytes) + {}-record tail in {:.3} s",
                    r.snapshot_bytes.unwrap_or(0),
                    r.tail_records,
                    d.as_secs_f64()
                );
            }
        }
    }
    Ok(())
}
