//! `swoosh demo` (default): a real node on loopback — LMDB WAL with group
//! commit, the actor tree, the HTTP API — driven over HTTP by one SDK client
//! per project. Each client keeps a mirror of its project run through the
//! pure reducer and checks that every post hash the node returns is the one
//! it computes itself. At the end the node shuts down and its log is replayed
//! from genesis to the same root hash.

use crate::demo::{DemoArgs, NodeReport, ProjectReport, RejectionReport, Report, DEMO_FAULTS};
use crate::node::{now_ms, start_node, write_json, write_key, GENESIS_FILE};
use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use swoosh_core::guards::Verify;
use swoosh_core::reducer::{step, Ctx, Outcome};
use swoosh_core::scenario::{genesis, Driver, Keys, Next};
use swoosh_core::state::NodeState;
use swoosh_net::client::{Client, ClientError};

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    rejected: AtomicU64,
    duplicates: AtomicU64,
    votes: AtomicU64,
    window_retries: AtomicU64,
}

pub async fn run(args: DemoArgs) -> Result<()> {
    ensure!(
        args.projects >= 1 && args.projects <= 64,
        "--projects must be between 1 and 64"
    );
    ensure!(
        args.loops >= 1 && args.loops <= 100,
        "--loops must be between 1 and 100 for the served demo"
    );
    let temp;
    let (dir, keep) = match &args.dir {
        Some(d) => {
            if d.join("leader").join("data").exists() {
                bail!(
                    "{} already holds a demo node; remove it or pick another --dir",
                    d.display()
                );
            }
            (d.clone(), true)
        }
        None => {
            temp = tempfile::tempdir().context("cannot create a temporary directory")?;
            (temp.path().to_path_buf(), false)
        }
    };
    let leader_dir = dir.join("leader");
    std::fs::create_dir_all(&leader_dir)
        .with_context(|| format!("cannot create {}", leader_dir.display()))?;
    let keys = Arc::new(Keys::from_labels("demo", 3));
    let g = genesis(&keys, "swoosh-demo", now_ms() / 1000 * 1000);
    write_json(&dir.join(GENESIS_FILE), &g)?;
    write_json(&leader_dir.join(GENESIS_FILE), &g)?;
    write_key(&leader_dir.join("node.key"), &keys.leader)?;
    write_key(&dir.join("admin.key"), &keys.admin)?;

    let node = start_node(&leader_dir, false, 10_000).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on loopback")?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(swoosh_net::http::serve(listener, node.clone(), async {
        let _ = stop_rx.await;
    }));

    let projects: Vec<String> = (0..args.projects)
        .map(|i| {
            if i == 0 {
                "default".to_string()
            } else {
                format!("project-{i}")
            }
        })
        .collect();
    let expected = (projects.len() as u64) * (13 + 7 * args.loops);
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(expected)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} durable transitions {msg}")
            .expect("static template"),
    );
    let counters = Arc::new(Counters::default());
    let rejections = Arc::new(std::sync::Mutex::new(Vec::<RejectionReport>::new()));
    let decisions = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let verbose = !args.json && !args.quiet;
    let started = std::time::Instant::now();

    let mut tasks = tokio::task::JoinSet::new();
    for (pi, p) in projects.iter().cloned().enumerate() {
        let (keys, g, client) = (keys.clone(), g.clone(), Client::new(&url));
        let (bar, counters, rejections, decisions) = (
            bar.clone(),
            counters.clone(),
            rejections.clone(),
            decisions.clone(),
        );
        let loops = args.loops;
        let n_projects = projects.len();
        tasks.spawn(async move {
            let driver = Driver::new(&keys, loops);
            let mut mirror = NodeState::new(g)?;
            let mut history = vec![];
            let mut injected = std::collections::BTreeSet::new();
            loop {
                let now = now_ms();
                let applied = mirror.project(&p).applied as usize;
                let fault = DEMO_FAULTS
                    .iter()
                    .find(|(at, f)| *at <= applied && pi == (*at % n_projects) && !injected.contains(f))
                    .and_then(|(_, f)| driver.fault(&mirror, &p, now, *f, &history, applied as u64).map(|x| (*f, x)));
                if let Some((f, bad)) = fault {
                    injected.insert(f);
                    match client.submit(&bad).await {
                        Ok(r) if r.duplicate => {
                            counters.duplicates.fetch_add(1, Ordering::Relaxed);
                            if verbose {
                                bar.suspend(|| println!("= {:<10} {:<26} repeat of #{}: original outcome returned, nothing applied", p, bad.transition, r.index));
                            }
                        }
                        Ok(r) => bail!("the node accepted a deliberately faulty proposal ({f:?}, {} at index {}): this is a bug", bad.transition, r.index),
                        Err(ClientError::Refused { status, body }) => {
                            counters.rejected.fetch_add(1, Ordering::Relaxed);
                            if verbose {
                                bar.suspend(|| println!("✗ {:<10} {:<26} {status} {}: {}", p, bad.transition, body.guard.as_deref().unwrap_or(&body.error), body.message));
                            }
                            rejections.lock().expect("lock").push(RejectionReport {
                                project: p.clone(),
                                transition: bad.transition.clone(),
                                status,
                                guard: body.guard.unwrap_or(body.error),
                                reason: body.message,
                            });
                        }
                        Err(e) => return Err(e.into()),
                    }
                    continue;
                }
                match driver.next(&mirror, &p, now) {
                    Next::Done => break,
                    Next::WaitMs(ms) => tokio::time::sleep(Duration::from_millis(ms.min(5_000))).await,
                    Next::Propose(prop) => match client.submit_retrying(&prop).await {
                        Ok((reply, _)) => {
                            let ctx = Ctx { now_ms: prop.hlc.wall_ms, verify: Verify::Full, snapshot_every: 0 };
                            let s = step(&mut mirror, &prop, &ctx);
                            ensure!(matches!(s.outcome, Outcome::Accepted(_)), "the mirror refused what the node accepted: {:?}", s.outcome);
                            let mine = mirror.project_hash(&p).to_string();
                            ensure!(mine == reply.state_post_hash, "divergence on {}: node says {}, the pure reducer says {mine}", prop.transition, reply.state_post_hash);
                            if prop.transition == "Council_QuorumCert" || prop.transition == "Council_ReElect" {
                                let n = prop.inputs.as_map().and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("votes"))).and_then(|(_, v)| v.as_array()).map_or(0, |a| a.len());
                                counters.votes.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            counters.accepted.fetch_add(1, Ordering::Relaxed);
                            decisions.lock().expect("lock").push(reply.decision_hash.clone());
                            if verbose {
                                bar.suspend(|| println!("✓ #{:<4} {:<10} {:<26} post {}", reply.index, p, reply.transition, crate::demo::short(&reply.state_post_hash)));
                            }
                            bar.inc(1);
                            history.push(*prop);
                        }
                        // The window closed between choosing and committing: wait for the next one.
                        Err(ClientError::Refused { status: 400, body }) if body.guard.as_deref() == Some("backbeat") => {
                            counters.window_retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(body.retry_after_ms.unwrap_or(50).min(5_000))).await;
                        }
                        Err(e) => bail!("{} on {p}: {e}", prop.transition),
                    },
                }
            }
            let st = mirror.project(&p);
            Ok(ProjectReport { project: p.clone(), hash: mirror.project_hash(&p).to_string(), phase: st.meta.phase.clone(), loops: st.execution.loops })
        });
    }
    let mut project_reports = vec![];
    while let Some(r) = tasks.join_next().await {
        project_reports.push(r.context("a demo client task panicked")??);
    }
    project_reports.sort_by(|a, b| a.project.cmp(&b.project));
    bar.finish_and_clear();

    // Every accepted transition has a decision record the node serves.
    let client = Client::new(&url);
    let mut drs = 0;
    let all: Vec<String> = std::mem::take(&mut *decisions.lock().expect("lock"));
    for d in &all {
        client
            .decision(d)
            .await
            .with_context(|| format!("decision record {d} is missing"))?;
        drs += 1;
    }
    let health = client.health().await?;
    for pr in &project_reports {
        let s = client.state(&pr.project, &[]).await?;
        ensure!(
            s.hash == pr.hash,
            "project {}: the node's HEAD {} differs from the clients' {}",
            pr.project,
            s.hash,
            pr.hash
        );
    }
    let store = node.store().clone();
    let _ = stop_tx.send(());
    server.await.context("the server task failed")??;
    drop(node);
    let elapsed = started.elapsed();

    // Replay the durable log from genesis: it must land on the same root.
    let rec = swoosh_storage::recovery::recover_with(
        &store,
        &g,
        &swoosh_storage::recovery::RecoverOptions {
            verify: Verify::Full,
            use_snapshots: false,
        },
        &mut |_| {},
    )
    .context("replaying the demo's log failed")?;
    let replayed = rec.node.root_hash().to_string();
    ensure!(
        Some(&replayed) == health.root_hash.as_ref(),
        "replay gives {replayed}, the node said {:?}",
        health.root_hash
    );

    let c = &counters;
    let report = Report {
        nodes: vec![NodeReport {
            name: "leader".into(),
            role: "leader".into(),
            dir: Some(leader_dir.display().to_string()),
            hash: replayed.clone(),
            index: rec.node.index,
        }],
        accepted: c.accepted.load(Ordering::Relaxed),
        rejected: c.rejected.load(Ordering::Relaxed),
        duplicates: c.duplicates.load(Ordering::Relaxed),
        decision_records: drs,
        council_votes: c.votes.load(Ordering::Relaxed),
        data_dir: keep.then(|| dir.display().to_string()),
        projects: project_reports,
        rejections: std::mem::take(&mut *rejections.lock().expect("lock")),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!();
        println!(
            "projects (HEAD computed by the node and by each client's pure reducer: identical):"
        );
        for p in &report.projects {
            println!(
                "  {:<10} {:<10} loops {:<3} {}",
                p.project, p.phase, p.loops, p.hash
            );
        }
        println!(
            "accepted {} durable transitions (each with a leader-signed decision record), refused {}, repeats {}, council votes verified {}",
            report.accepted, report.rejected, report.duplicates, report.council_votes
        );
        println!("node root hash {replayed} at WAL index {}; replaying the log from genesis gives the same hash", rec.node.index);
        println!(
            "took {:.1} s; BACKBEAT windows waited for: {}",
            elapsed.as_secs_f64(),
            c.window_retries.load(Ordering::Relaxed)
        );
        match &report.data_dir {
            Some(d) => println!("data kept in {d}: try `swoosh wal verify --dir {d}/leader`"),
            None => println!("(data was in a temporary directory; pass --dir to keep it)"),
        }
    }
    Ok(())
}
