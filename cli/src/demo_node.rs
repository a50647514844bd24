//! `swoosh demo` (default): a real cluster on loopback — the leader (LMDB
//! WAL with group commit, the actor tree, the HTTP API, the libp2p swarm),
//! followers tailing its age-encrypted WAL into their own WALs, and council
//! agents electing every project's council with signed votes over the mesh —
//! driven over HTTP by one SDK client per project. Each client keeps a
//! mirror of its project run through the pure reducer and checks that every
//! post hash the leader returns is the one it computes itself (for the
//! certificates the leader proposes from the agents' votes, it reads the
//! record from the leader's log and replays it). At the end every follower
//! must hold the leader's root hash at the leader's index, and the leader's
//! log is replayed from genesis to the same root hash. `--single-node` runs
//! the leader alone.

use crate::demo::{DemoArgs, NodeReport, ProjectReport, RejectionReport, Report, DEMO_FAULTS};
use crate::node::{now_ms, open_store, start_node, write_json, write_key, GENESIS_FILE};
use crate::p2p_cmd::{read_age, start_leader_p2p, write_secret, AGE_KEY_FILE};
use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use swoosh_core::guards::Verify;
use swoosh_core::record::WalRecord;
use swoosh_core::reducer::{step, Ctx, Outcome};
use swoosh_core::scenario::{genesis, Driver, Keys, Next};
use swoosh_core::state::{FollowerEntry, NodeState};
use swoosh_core::SignerId;
use swoosh_net::client::{Client, ClientError};
use swoosh_net::p2p::agent::{spawn_agent, AgentP2p};
use swoosh_net::p2p::follower::{lock_shared, spawn_follower, FollowerOptions, FollowerP2p};
use swoosh_net::proto::council::VotePolicy;
use swoosh_storage::LmdbStore;

/// How long the demo waits for the agents to elect one project's council.
const ELECTION_WAIT_S: u64 = 60;
/// How long the demo waits for the mesh to form and for the followers to
/// catch up at the end.
const CLUSTER_WAIT_S: u64 = 30;

/// Transitions the leader proposes itself from the agents' signed votes.
fn is_certificate(transition: &str) -> bool {
    transition == "Council_QuorumCert" || transition == "Council_ReElect"
}

/// Signed votes carried by a certificate proposal's inputs.
fn votes_in(p: &swoosh_core::Proposal) -> u64 {
    p.inputs
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("votes")))
        .and_then(|(_, v)| v.as_array())
        .map_or(0, |a| a.len() as u64)
}

/// What a client's mirror took from the leader's log: records of its
/// project that the client did not submit (the certificates the leader
/// proposes from the agents' votes).
#[derive(Default)]
struct Synced {
    records: Vec<WalRecord>,
}

/// Bring `mirror` up to date with the leader's records of `project` after
/// `scanned`: every record whose pre-state is the mirror's current HEAD is
/// replayed through the pure reducer and must land on the record's post hash.
fn sync_mirror(
    store: &LmdbStore,
    project: &str,
    scanned: &mut u64,
    mirror: &mut NodeState,
) -> Result<Synced> {
    use swoosh_storage::LogStore;
    let last = store.last_index().context("cannot read the leader's log")?;
    let mut out = Synced::default();
    for i in *scanned + 1..=last {
        let rec = swoosh_storage::wal::read_record(store, i)
            .with_context(|| format!("cannot read record {i} of the leader's log"))?
            .record;
        if rec.project != project || rec.state_pre_hash != mirror.project_hash(project) {
            continue;
        }
        let p = rec.proposal();
        let ctx = Ctx {
            now_ms: rec.timestamp_ms,
            verify: Verify::Full,
            snapshot_every: 0,
        };
        let s = step(mirror, &p, &ctx);
        ensure!(
            matches!(s.outcome, Outcome::Accepted(_)),
            "the mirror refused the leader's record {} ({}): {:?}",
            rec.index,
            rec.transition,
            s.outcome
        );
        let mine = mirror.project_hash(project);
        ensure!(
            mine == rec.state_post_hash,
            "divergence on {} at {}: the leader logged {}, the pure reducer says {mine}",
            rec.transition,
            rec.index,
            rec.state_post_hash
        );
        out.records.push(rec);
    }
    *scanned = last;
    Ok(out)
}

/// Followers and agents beside the leader.
struct Cluster {
    leader_p2p: Arc<swoosh_net::p2p::leader::LeaderP2p>,
    followers: Vec<(String, std::path::PathBuf, FollowerP2p)>,
    agents: Vec<(String, std::path::PathBuf, AgentP2p)>,
}

impl Cluster {
    fn stop(&self) {
        for (_, _, f) in &self.followers {
            f.stop();
        }
        self.leader_p2p.stop();
    }
}

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
            // The demo writes fixed, well-known keys and its own genesis:
            // over a real cluster's directory it would replace its keys.
            if d.join(GENESIS_FILE).exists() || d.join("leader").join("data").exists() {
                bail!(
                    "{} already holds a cluster (genesis.json or leader/data); the demo would overwrite its keys and genesis: remove it or pick another --dir",
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
    let cluster_mode = !args.single_node;
    ensure!(
        !cluster_mode || (1..=8).contains(&args.followers),
        "--followers must be between 1 and 8"
    );
    ensure!(
        !cluster_mode || (1..=7).contains(&args.agents),
        "--agents must be between 1 and 7 (they form the council roster)"
    );
    let keys = Arc::new(Keys::from_labels(
        "demo",
        if cluster_mode { args.agents } else { 3 },
    ));
    let mut g = genesis(&keys, "swoosh-demo", now_ms() / 1000 * 1000);
    let mut follower_dirs = vec![];
    if cluster_mode {
        for i in 1..=args.followers {
            let name = format!("follower-{i}");
            let fdir = dir.join(&name);
            std::fs::create_dir_all(&fdir)
                .with_context(|| format!("cannot create {}", fdir.display()))?;
            let key = swoosh_core::sig::key_from_label(&format!("demo/{name}"));
            write_key(&fdir.join("node.key"), &key)?;
            let (secret, recipient) = swoosh_net::p2p::envelope::generate_identity();
            write_secret(
                &fdir.join(AGE_KEY_FILE),
                &format!("# swoosh {name} age identity\n# public key: {recipient}\n{secret}"),
            )?;
            g.followers.push(FollowerEntry {
                name: name.clone(),
                key: SignerId::from_signing_key(&key),
                age_recipient: recipient,
            });
            follower_dirs.push((name, fdir, key));
        }
        for (i, k) in keys.council.iter().enumerate() {
            let adir = dir.join(format!("agent-{}", i + 1));
            std::fs::create_dir_all(&adir)
                .with_context(|| format!("cannot create {}", adir.display()))?;
            write_key(&adir.join("agent.key"), k)?;
        }
        g.validate_new()
            .context("the demo cluster's genesis is invalid")?;
    }
    let g = g;
    write_json(&dir.join(GENESIS_FILE), &g)?;
    write_json(&leader_dir.join(GENESIS_FILE), &g)?;
    for (_, fdir, _) in &follower_dirs {
        write_json(&fdir.join(GENESIS_FILE), &g)?;
    }
    for i in 1..=keys.council.len() {
        let adir = dir.join(format!("agent-{i}"));
        if adir.exists() {
            write_json(&adir.join(GENESIS_FILE), &g)?;
        }
    }
    write_key(&leader_dir.join("node.key"), &keys.leader)?;
    write_key(&dir.join("admin.key"), &keys.admin)?;

    let node = start_node(&leader_dir, false, 10_000).await?;
    let cluster = if cluster_mode {
        Some(start_cluster(&node, &keys, &g, follower_dirs, &dir, args.json).await?)
    } else {
        None
    };
    let leader_store = Arc::new(node.store().clone());
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
        let elect_by_agents = cluster.is_some();
        let leader_store = leader_store.clone();
        tasks.spawn(async move {
            let mut scanned = 0u64;
            let mut election_since: Option<std::time::Instant> = None;
            let driver = Driver::new(&keys, loops);
            let mut mirror = NodeState::new(g)?;
            let mut history = vec![];
            let mut injected = std::collections::BTreeSet::new();
            loop {
                if elect_by_agents {
                    for rec in sync_mirror(&leader_store, &p, &mut scanned, &mut mirror)?.records {
                        let cert = rec.proposal();
                        counters.votes.fetch_add(votes_in(&cert), Ordering::Relaxed);
                        counters.accepted.fetch_add(1, Ordering::Relaxed);
                        decisions.lock().expect("lock").push(rec.decision.to_string());
                        if verbose {
                            bar.suspend(|| println!("✓ #{:<4} {:<10} {:<26} post {}  (proposed by the leader: {} signed votes from the agents)", rec.index, p, rec.transition, crate::demo::short(&rec.state_post_hash.to_string()), votes_in(&cert)));
                        }
                        bar.inc(1);
                        history.push(cert);
                        election_since = None;
                    }
                }
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
                    // The council is elected by the agents' signed votes over
                    // libp2p: the leader proposes the certificate. Follow it
                    // in the mirror from the leader's log.
                    // The council is elected by the agents' signed votes over
                    // libp2p and the leader proposes the certificate: wait for
                    // it (the mirror takes it from the leader's log above).
                    Next::Propose(prop) if elect_by_agents && is_certificate(&prop.transition) => {
                        let since = *election_since.get_or_insert_with(std::time::Instant::now);
                        if since.elapsed() > Duration::from_secs(ELECTION_WAIT_S) {
                            bail!("project {p}: no council certificate within {ELECTION_WAIT_S} s; the leader announces the candidates on the council topic and needs a quorum of the agents' signed votes: check that the agents are connected");
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Next::Propose(prop) => match client.submit_retrying(&prop).await {
                        Ok((reply, _)) => {
                            let ctx = Ctx { now_ms: prop.hlc.wall_ms, verify: Verify::Full, snapshot_every: 0 };
                            let s = step(&mut mirror, &prop, &ctx);
                            ensure!(matches!(s.outcome, Outcome::Accepted(_)), "the mirror refused what the node accepted: {:?}", s.outcome);
                            let mine = mirror.project_hash(&p).to_string();
                            ensure!(mine == reply.state_post_hash, "divergence on {}: node says {}, the pure reducer says {mine}", prop.transition, reply.state_post_hash);
                            if is_certificate(&prop.transition) {
                                counters.votes.fetch_add(votes_in(&prop), Ordering::Relaxed);
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
                        // The leader's certificate moved HEAD first: take it from
                        // the leader's log (loop top) and plan again.
                        Err(ClientError::Refused { status: 409, body }) if elect_by_agents && body.error == "stale_hash" => {}
                        // Retried past the HLC offset (a busy node answered
                        // 429 for seconds): refused, so not committed (a
                        // repeat of a committed one gets its original 202).
                        // Plan it again with a fresh HLC.
                        Err(ClientError::Refused { status: 409, body }) if body.error == "hlc_order" && body.message.contains("behind the leader's clock") => {}
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
    let mut nodes = vec![];
    let mut council_votes_counted = None;
    if let Some(c) = &cluster {
        let target = node.health().index;
        wait_caught_up(c, target, health.root_hash.as_deref()).await?;
        council_votes_counted = Some(c.leader_p2p.snapshot().council_votes);
        for (name, fdir, f) in &c.followers {
            let st = lock_shared(&f.shared);
            nodes.push(NodeReport {
                name: name.clone(),
                role: "follower".into(),
                dir: Some(fdir.display().to_string()),
                hash: Some(st.repl.node().root_hash().to_string()),
                index: Some(st.persisted_index()),
                lag_records: Some(target.saturating_sub(st.persisted_index())),
                votes_sent: None,
            });
        }
        for (name, adir, a) in &c.agents {
            nodes.push(NodeReport {
                name: name.clone(),
                role: "agent".into(),
                dir: Some(adir.display().to_string()),
                hash: None,
                index: None,
                lag_records: None,
                votes_sent: Some(a.snapshot().votes_sent),
            });
        }
        c.stop();
    }
    drop(cluster);
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
        nodes: std::iter::once(NodeReport {
            name: "leader".into(),
            role: "leader".into(),
            dir: Some(leader_dir.display().to_string()),
            hash: Some(replayed.clone()),
            index: Some(rec.node.index),
            lag_records: None,
            votes_sent: None,
        })
        .chain(nodes)
        .collect(),
        council_votes_counted,
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
        println!("leader root hash {replayed} at WAL index {}; replaying its log from genesis gives the same hash", rec.node.index);
        if report.nodes.len() > 1 {
            println!();
            println!(
                "{:<12} {:<9} {:>7} {:>5}  root hash / votes",
                "node", "role", "index", "lag"
            );
            for n in &report.nodes {
                let idx = n.index.map_or("-".into(), |i| i.to_string());
                let lag = n.lag_records.map_or("-".into(), |l| l.to_string());
                let last = match (&n.hash, n.votes_sent) {
                    (Some(h), _) => h.clone(),
                    (None, Some(v)) => format!("{v} signed votes sent"),
                    _ => String::new(),
                };
                println!("{:<12} {:<9} {:>7} {:>5}  {last}", n.name, n.role, idx, lag);
            }
            println!("every replica holds the same root hash at the same index");
        }
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

/// Start the leader's swarm, the followers and the agents, and wait until
/// every one of them is on the mesh.
async fn start_cluster(
    node: &swoosh_actors::NodeHandle<LmdbStore>,
    keys: &Keys,
    g: &swoosh_core::state::Genesis,
    follower_dirs: Vec<(String, std::path::PathBuf, ed25519_dalek::SigningKey)>,
    dir: &std::path::Path,
    quiet: bool,
) -> Result<Cluster> {
    let listen = "/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr");
    let leader_p2p = start_leader_p2p(node, keys.leader.clone(), g.clone(), listen).await?;
    let addr = leader_p2p.listen_addrs[0].clone();
    let mut followers = vec![];
    for (name, fdir, key) in follower_dirs {
        let store = open_store(&fdir, false)?;
        let f = spawn_follower(
            store,
            FollowerOptions {
                key,
                genesis: g.clone(),
                age_identity: read_age(&fdir.join(AGE_KEY_FILE))?,
                leader: addr.clone(),
                listen: None,
                snapshot_every: swoosh_net::p2p::follower::FOLLOWER_SNAPSHOT_EVERY_DEFAULT,
                compaction: None,
            },
        )
        .await
        .with_context(|| format!("cannot start {name}"))?;
        followers.push((name, fdir, f));
    }
    let mut agents = vec![];
    for (i, k) in keys.council.iter().enumerate() {
        let a = spawn_agent(
            k.clone(),
            g,
            VotePolicy::ApproveAll,
            std::slice::from_ref(&addr),
            None,
        )
        .await
        .with_context(|| format!("cannot start agent-{}", i + 1))?;
        agents.push((
            format!("agent-{}", i + 1),
            dir.join(format!("agent-{}", i + 1)),
            a,
        ));
    }
    let c = Cluster {
        leader_p2p,
        followers,
        agents,
    };
    // Every peer connected and every follower reporting over request-response.
    let want = c.followers.len() + c.agents.len();
    let deadline = std::time::Instant::now() + Duration::from_secs(CLUSTER_WAIT_S);
    loop {
        let connected = c.leader_p2p.snapshot().connected_peers;
        let reporting = c
            .leader_p2p
            .followers()
            .iter()
            .filter(|f| f.applied_index.is_some())
            .count();
        if connected >= want && reporting == c.followers.len() {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("the demo cluster did not form within {CLUSTER_WAIT_S} s: {connected}/{want} peers connected, {reporting}/{} followers reporting", c.followers.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let gossipsub exchange subscriptions and graft its meshes (a few
    // heartbeats) so the first batches and announcements reach everyone.
    tokio::time::sleep(Duration::from_millis(600)).await;
    if !quiet {
        eprintln!(
            "cluster on loopback: leader {addr}/p2p/{}, {} followers, {} council agents",
            c.leader_p2p.peer_id,
            c.followers.len(),
            c.agents.len()
        );
    }
    Ok(c)
}

/// Wait until every follower has applied and persisted the leader's log up
/// to `target` and computes the leader's root hash.
async fn wait_caught_up(c: &Cluster, target: u64, root: Option<&str>) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(CLUSTER_WAIT_S);
    loop {
        let mut behind = vec![];
        for (name, _, f) in &c.followers {
            let st = lock_shared(&f.shared);
            if let Some(h) = &st.halted_reason {
                bail!("{name} halted: {h}");
            }
            let at = st.persisted_index();
            let hash = st.repl.node().root_hash().to_string();
            if at < target || (at == target && root.is_some_and(|r| r != hash)) {
                behind.push(format!("{name} at {at}"));
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "followers did not reach the leader's index {target} within {CLUSTER_WAIT_S} s: {}",
                behind.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
