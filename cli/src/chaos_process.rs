//! `swoosh chaos --mode process`: real `swoosh` processes over libp2p on
//! loopback, killed with SIGKILL and restarted on a seeded schedule while SDK
//! clients drive projects through their lifecycle.
//!
//! The run: `swoosh init` + `swoosh p2p enroll` in the run directory; a
//! leader (`swoosh p2p leader`) and followers (`swoosh follow`), children of
//! this process (`std::env::current_exe`), each logging to `logs/<node>.log`;
//! one client task per project, each keeping a mirror of its project in the
//! pure reducer (as `swoosh demo` does) and recording every `202` it gets
//! (index + post hash); a chaos task that kill -9s followers and the leader
//! at points of the proposal stream picked by the seed and restarts them.
//! At the end every node is up again, the followers must catch up to the
//! leader's index and root hash, then every node is stopped and its WAL is
//! opened: every acknowledged transition must be there at its index with its
//! post hash, and recovery of every replica must land on one root hash.
//!
//! The seed fixes the kill schedule and the workload's choices, not the
//! timing: real processes interleave differently every run. A failure is
//! reproduced by running the same command again (often, not always).
//!
//! Children are killed when this run ends on any path: `ClusterGuard` kills
//! them on drop (errors, panics), and each child gets `PR_SET_PDEATHSIG` so
//! it dies with this process even when this process is killed with -9.

use crate::node::{now_ms, open_store, read_genesis, read_key, GENESIS_FILE};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swoosh_chaos::{Rng, VIOLATIONS_LISTED_MAX};
use swoosh_core::guards::Verify;
use swoosh_core::reducer::{step, Ctx, Outcome};
use swoosh_core::scenario::{Driver, Fault, Keys, Next};
use swoosh_core::state::{Genesis, NodeState};
use swoosh_core::Proposal;
use swoosh_net::api::{AcceptedReply, ErrorBody};
use swoosh_net::client::{Client, ClientError};
use swoosh_storage::LogStore;

/// Leader plus at most this many followers minus one: every node is a real
/// process on this machine.
pub const PROCESS_REPLICAS_MAX: usize = 9;
/// Leader plus at least two followers.
pub const PROCESS_REPLICAS_MIN: usize = 3;
pub const PROCESS_PROJECTS_MAX: usize = 16;
pub const PROCESS_PROJECTS_DEFAULT: usize = 4;
/// Council agents' keys in genesis (the clients sign the votes; no agent
/// process runs).
pub const AGENTS: usize = 3;
/// BACKBEAT period of the run's genesis: short, so execution loops turn fast.
pub const BEAT_MS: u64 = 400;
/// One kill event per this many proposals (at least two: a follower and the leader).
pub const KILL_EVERY_TRANSITIONS: u64 = 50;
/// A killed node stays down this long before its restart, ms.
pub const DOWN_MS_MIN: u64 = 100;
pub const DOWN_MS_MAX: u64 = 1_500;
/// Share of kill events that take a follower down together with the leader.
pub const KILL_BOTH_RATE: f64 = 0.2;
/// Share of proposals that are deliberate faults (stale, replayed, forged, …).
pub const WORKLOAD_FAULT_RATE: f64 = 0.10;
/// A started node must answer `GET /health` within this long.
pub const NODE_START_SECS_MAX: u64 = 60;
/// Starts of a node that exits at once (a port still held, …) before giving up.
pub const NODE_START_ATTEMPTS_MAX: u32 = 3;
/// A client waits this long for the leader to answer again.
pub const LEADER_WAIT_SECS_MAX: u64 = 60;
/// Followers must reach the leader's index and root hash within this long.
pub const CATCH_UP_SECS_MAX: u64 = 60;
/// A node stopped with SIGINT must exit within this long (then SIGKILL).
pub const STOP_SECS_MAX: u64 = 10;
/// The run fails when no proposal was issued for this long.
pub const LOAD_STALL_SECS_MAX: u64 = 90;
/// `swoosh init` / `swoosh p2p enroll` must finish within this long.
pub const SETUP_SECS_MAX: u64 = 60;
/// How often the monitor reads every node's `/health`.
pub const LAG_POLL_MS: u64 = 200;
/// Accepted proposals kept per project for replays.
pub const HISTORY_PER_PROJECT_MAX: usize = 256;
/// One `GET /health` of a node during polling, at most.
pub const POLL_TIMEOUT_MS: u64 = 2_000;

/// The workload faults of process mode: those that leave the state alone
/// (refused, or answered with the original outcome). Stale and replayed
/// proposals are twice as likely as the others.
const WORKLOAD_FAULTS: [Fault; 11] = [
    Fault::StaleHash,
    Fault::StaleHash,
    Fault::Replay,
    Fault::Replay,
    Fault::IdemConflict,
    Fault::ForgedSignature,
    Fault::UnknownTransition,
    Fault::WrongRole,
    Fault::Outsider,
    Fault::ClockAhead,
    Fault::WrongWindow,
];

/// Fault counters every process report lists.
pub const FAULT_KEYS: [&str; 10] = [
    "restart",
    "stale_hash",
    "replay",
    "idem_conflict",
    "forged_signature",
    "unknown_transition",
    "wrong_role",
    "outsider",
    "clock_skew",
    "wrong_window",
];

/// The same names as the simulator's report.
fn fault_name(f: Fault) -> &'static str {
    match f {
        Fault::StaleHash => "stale_hash",
        Fault::Replay => "replay",
        Fault::IdemConflict => "idem_conflict",
        Fault::ForgedSignature => "forged_signature",
        Fault::UnknownTransition => "unknown_transition",
        Fault::WrongRole => "wrong_role",
        Fault::Outsider => "outsider",
        Fault::ClockAhead => "clock_skew",
        Fault::WrongWindow => "wrong_window",
        _ => "other",
    }
}

#[derive(Clone, Debug)]
pub struct ProcessConfig {
    pub seed: u64,
    pub transitions: u64,
    pub replicas: usize,
    pub projects: usize,
    /// Keep the run here (must not hold a cluster yet); default a temporary
    /// directory, kept only when the run fails.
    pub dir: Option<PathBuf>,
    /// No kills and no workload faults (a baseline).
    pub calm: bool,
}

impl ProcessConfig {
    pub fn validate(&self) -> Result<()> {
        if !(PROCESS_REPLICAS_MIN..=PROCESS_REPLICAS_MAX).contains(&self.replicas) {
            bail!(
                "--replicas must be between {PROCESS_REPLICAS_MIN} and {PROCESS_REPLICAS_MAX} in process mode (the leader plus at least two followers, each a real process)"
            );
        }
        if !(1..=PROCESS_PROJECTS_MAX).contains(&self.projects) {
            bail!("--projects must be between 1 and {PROCESS_PROJECTS_MAX} in process mode");
        }
        if self.transitions == 0 {
            bail!("--transitions must be at least 1");
        }
        if let Some(d) = &self.dir {
            if d.join(GENESIS_FILE).exists() {
                bail!(
                    "{} already holds a cluster; remove it or pick another --dir",
                    d.display()
                );
            }
        }
        Ok(())
    }

    /// The command that reruns this configuration.
    pub fn reproduce(&self) -> String {
        let mut s = format!(
            "swoosh chaos --mode process --seed {} --transitions {} --replicas {}",
            self.seed, self.transitions, self.replicas
        );
        if self.projects != PROCESS_PROJECTS_DEFAULT {
            s.push_str(&format!(" --projects {}", self.projects));
        }
        if self.calm {
            s.push_str(" --calm");
        }
        s
    }
}

/// One replica at the end of the run.
#[derive(Clone, Debug, Serialize)]
pub struct NodeSummary {
    pub name: String,
    pub dir: String,
    pub log: String,
    pub http: String,
    pub starts: u32,
    pub kills: u32,
    /// Index and root hash its HTTP surface reported after catch-up.
    pub live_index: u64,
    pub live_root_hash: String,
    /// Index and root hash recovered from its WAL after it stopped.
    pub wal_index: u64,
    pub wal_root_hash: String,
}

/// What is particular to process mode.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProcessStats {
    pub leader_restarts: u64,
    pub follower_restarts: u64,
    /// Kill events of the schedule not reached before the load ended.
    pub kills_skipped: u64,
    /// Proposals with at least one attempt that got no answer (leader down,
    /// connection reset): their outcome was unknown until resolved.
    pub unanswered: u64,
    /// Of those, the ones found committed (a repeat answered with the
    /// original outcome, or HEAD showing their post hash).
    pub unanswered_committed: u64,
    /// Attempts that failed without an answer.
    pub connection_errors: u64,
    /// Attempts answered 429/503 (backpressure, recovering).
    pub busy_answers: u64,
    pub catch_up_ms: u64,
    pub elapsed_ms: u64,
    pub nodes: Vec<NodeSummary>,
}

/// The report: the keys of the simulator's report, plus `process`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProcessReport {
    pub seed: u64,
    pub mode: String,
    pub replicas: usize,
    /// Proposals submitted (a resubmission of the same proposal counts once).
    pub transitions: u64,
    /// Proposals that became WAL records (acknowledged or found committed).
    pub accepted: u64,
    pub rejected: u64,
    /// Replays answered with the original outcome.
    pub duplicates: u64,
    /// Distinct `202`s the clients received, each checked on every replica.
    pub acknowledged: u64,
    pub rejections_by_guard: BTreeMap<String, u64>,
    pub faults: BTreeMap<String, u64>,
    pub violations: Vec<String>,
    pub violations_unlisted: u64,
    /// Root hash recovered from each replica's WAL at the end, leader first.
    pub final_hashes: Vec<String>,
    pub final_index: u64,
    /// Largest lag (records behind the leader) a running follower reported.
    pub max_lag: u64,
    /// Not scored in this build (the same as the simulator's report).
    pub attention: Vec<serde_json::Value>,
    pub process: ProcessStats,
    /// The run directory (`null` when it was temporary and removed).
    pub dir: Option<String>,
    pub reproduce: String,
}

impl ProcessReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.violations_unlisted == 0
    }
    pub fn converged(&self) -> bool {
        !self.final_hashes.is_empty() && self.final_hashes.windows(2).all(|w| w[0] == w[1])
    }
}

// ---- the kill schedule ----------------------------------------------------

/// Kill `targets` (0 = leader, n = follower-n) once `at` proposals were
/// issued, keep them down `down_ms`, restart them in the listed order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kill {
    pub at: u64,
    pub targets: Vec<usize>,
    pub down_ms: u64,
}

/// The seeded kill schedule: one event per [`KILL_EVERY_TRANSITIONS`]
/// proposals, at least two; the first two take down a follower and the
/// leader (in a seeded order), so every run has both.
pub fn kill_schedule(seed: u64, transitions: u64, followers: usize) -> Vec<Kill> {
    let mut rng = Rng::new(seed ^ 0x6b69_6c6c); // "kill"
    let n = (transitions / KILL_EVERY_TRANSITIONS).max(2);
    let lo = transitions / 10;
    let hi = (transitions * 9 / 10).max(lo);
    let mut at: Vec<u64> = (0..n).map(|_| rng.range(lo, hi)).collect();
    at.sort_unstable();
    let leader_first = rng.chance(0.5);
    at.into_iter()
        .enumerate()
        .map(|(i, at)| {
            let follower = 1 + rng.below(followers as u64) as usize;
            let mut targets = match i {
                0 | 1 if (i == 0) == leader_first => vec![0],
                0 | 1 => vec![follower],
                _ if rng.chance(KILL_BOTH_RATE) => vec![0, follower],
                _ => vec![rng.below(followers as u64 + 1) as usize],
            };
            if targets.len() == 2 && rng.chance(0.5) {
                targets.reverse();
            }
            Kill {
                at,
                targets,
                down_ms: rng.range(DOWN_MS_MIN, DOWN_MS_MAX),
            }
        })
        .collect()
}

// ---- the processes --------------------------------------------------------

struct Node {
    name: String,
    leader: bool,
    dir: PathBuf,
    http: String,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
    kills: u32,
    /// Down because the schedule killed it (not a crash).
    down_on_purpose: bool,
    /// Started and answering: from here on an exit is a crash (the monitor
    /// leaves a node that is starting to `start_node`).
    ready: bool,
}

/// The run's child processes. Every exit path kills them: `ClusterGuard`
/// on drop, and `Drop` here.
struct Cluster {
    exe: PathBuf,
    nodes: Vec<Node>,
    leader_p2p: String,
    t0: Instant,
    /// Set when the run ends: nothing may start any more.
    closed: bool,
}

impl Cluster {
    fn args(&self, i: usize) -> Vec<String> {
        let n = &self.nodes[i];
        let dir = n.dir.display().to_string();
        if n.leader {
            [
                "p2p",
                "leader",
                "--dir",
                &dir,
                "--listen",
                &self.leader_p2p,
                "--http",
                &n.http,
                "--log",
                "text",
            ]
            .map(String::from)
            .to_vec()
        } else {
            [
                "follow",
                "--dir",
                &dir,
                "--leader",
                &self.leader_p2p,
                "--http",
                &n.http,
                "--log",
                "text",
            ]
            .map(String::from)
            .to_vec()
        }
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        if self.closed {
            bail!(
                "the run is ending: {} is not started again",
                self.nodes[i].name
            );
        }
        let args = self.args(i);
        let elapsed = self.t0.elapsed().as_secs_f64();
        let n = &mut self.nodes[i];
        if n.child.is_some() {
            bail!("{} is already running (a bug in the chaos runner)", n.name);
        }
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .with_context(|| format!("cannot open the log {}", n.log.display()))?;
        writeln!(
            log,
            "==== chaos: start #{} of {} at +{elapsed:.3} s: swoosh {}",
            n.starts + 1,
            n.name,
            args.join(" ")
        )?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(&args)
            .env("NO_COLOR", "1")
            // The map this process was given, not the variable's value.
            .env(
                "SWOOSH_LMDB_MAP_GIB",
                (crate::node::lmdb_map_bytes() >> 30).to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe and touches no memory of
            // the parent; it makes the child die with this process (even on
            // kill -9 of this process), so no node outlives a run.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} ({})", n.name, self.exe.display()))?;
        n.child = Some(child);
        n.starts += 1;
        n.down_on_purpose = false;
        n.ready = false;
        Ok(())
    }

    /// SIGKILL and reap. False when it was not running.
    fn kill9(&mut self, i: usize) -> bool {
        let n = &mut self.nodes[i];
        n.down_on_purpose = true;
        n.ready = false;
        match n.child.take() {
            Some(mut c) => {
                let _ = c.kill();
                let _ = c.wait();
                if let Ok(mut log) = std::fs::OpenOptions::new().append(true).open(&n.log) {
                    let _ = writeln!(
                        log,
                        "==== chaos: kill -9 of {} at +{:.3} s",
                        n.name,
                        self.t0.elapsed().as_secs_f64()
                    );
                }
                n.kills += 1;
                true
            }
            None => false,
        }
    }

    /// The exit status, when the node's process has ended (it is then reaped
    /// and forgotten).
    fn exited(&mut self, i: usize) -> Option<String> {
        let n = &mut self.nodes[i];
        let c = n.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => {
                n.child = None;
                Some(status.to_string())
            }
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    fn interrupt(&mut self, i: usize) {
        if let Some(c) = &self.nodes[i].child {
            // SAFETY: kill(2) on our own child's pid; the child is not reaped
            // yet (we hold it), so the pid cannot have been reused.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGINT);
            }
        }
    }

    fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.closed = true;
        self.kill_all();
    }
}

type Shared = Arc<Mutex<Cluster>>;

fn lock(c: &Shared) -> std::sync::MutexGuard<'_, Cluster> {
    // A panic elsewhere must not keep the children alive: use the data anyway.
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills every child when the run ends, however it ends; the tasks that
/// still hold the cluster can start nothing after that.
struct ClusterGuard(Shared);

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let mut c = lock(&self.0);
        c.closed = true;
        c.kill_all();
    }
}

/// The last `n` lines of a log, for error messages.
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `n` distinct loopback ports free now. Every listener is held until all
/// are chosen: binding port 0 again after dropping the last listener may
/// hand back the same port, and two nodes on one port fail to start.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port"))
        .collect::<Result<Vec<_>>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Start node `i` and wait until it answers `GET /health`.
async fn start_node(cluster: &Shared, i: usize) -> Result<()> {
    let (name, url, leader, log) = {
        let c = lock(cluster);
        let n = &c.nodes[i];
        (
            n.name.clone(),
            format!("http://{}", n.http),
            n.leader,
            n.log.clone(),
        )
    };
    let client = Client::new(&url);
    for attempt in 1..=NODE_START_ATTEMPTS_MAX {
        lock(cluster).spawn(i)?;
        let deadline = Instant::now() + Duration::from_secs(NODE_START_SECS_MAX);
        loop {
            let exited = {
                let mut c = lock(cluster);
                c.exited(i)
                    .or_else(|| c.nodes[i].child.is_none().then(|| "reaped".to_string()))
            };
            if let Some(status) = exited {
                if attempt == NODE_START_ATTEMPTS_MAX {
                    bail!(
                        "{name} exited at start ({status}) {attempt} times; its log {}:\n{}",
                        log.display(),
                        log_tail(&log, 15)
                    );
                }
                // A port of the killed process may be held for a moment.
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            }
            let ready = if leader {
                matches!(
                    tokio::time::timeout(Duration::from_millis(POLL_TIMEOUT_MS), client.health()).await,
                    Ok(Ok(h)) if h.status == "ok"
                )
            } else {
                matches!(
                    tokio::time::timeout(
                        Duration::from_millis(POLL_TIMEOUT_MS),
                        client.get_json("/health")
                    )
                    .await,
                    Ok(Ok(_))
                )
            };
            if ready {
                lock(cluster).nodes[i].ready = true;
                return Ok(());
            }
            if Instant::now() > deadline {
                lock(cluster).kill9(i);
                bail!(
                    "{name} did not answer on {url}/health within {NODE_START_SECS_MAX} s; its log {}:\n{}",
                    log.display(),
                    log_tail(&log, 15)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    unreachable!("the last attempt returns")
}

/// Run a setup command (`init`, `p2p enroll`) to completion, output to `log`.
async fn setup(exe: &Path, args: &[&str], log: &Path) -> Result<()> {
    let out =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut child = tokio::process::Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run swoosh {}", args.join(" ")))?;
    let status = tokio::time::timeout(Duration::from_secs(SETUP_SECS_MAX), child.wait())
        .await
        .map_err(|_| {
            anyhow!(
                "swoosh {} did not finish within {SETUP_SECS_MAX} s; its output: {}",
                args.join(" "),
                log.display()
            )
        })??;
    if !status.success() {
        bail!(
            "swoosh {} failed ({status}):\n{}",
            args.join(" "),
            log_tail(log, 20)
        );
    }
    Ok(())
}

// ---- the load -------------------------------------------------------------

/// A `202` a client received.
#[derive(Clone, Debug)]
struct Ack {
    project: String,
    transition: String,
    idem_key: String,
    index: u64,
    post_hash: String,
}

#[derive(Default)]
struct Tally {
    accepted: u64,
    rejected: u64,
    duplicates: u64,
    rejections_by_guard: BTreeMap<String, u64>,
    faults: BTreeMap<String, u64>,
    violations: Vec<String>,
    violations_unlisted: u64,
    acks: Vec<Ack>,
    unanswered: u64,
    unanswered_committed: u64,
    connection_errors: u64,
    busy_answers: u64,
    leader_restarts: u64,
    follower_restarts: u64,
    kills_skipped: u64,
}

impl Tally {
    fn violation(&mut self, v: String) {
        if self.violations.len() < VIOLATIONS_LISTED_MAX {
            self.violations.push(v);
        } else {
            self.violations_unlisted += 1;
        }
    }
    fn fault(&mut self, k: &str) {
        *self.faults.entry(k.to_string()).or_default() += 1;
    }
    fn refused(&mut self, guard: &str) {
        self.rejected += 1;
        *self
            .rejections_by_guard
            .entry(guard.to_string())
            .or_default() += 1;
    }
}

struct Load {
    keys: Keys,
    genesis: Genesis,
    leader: Client,
    total: u64,
    calm: bool,
    issued: AtomicU64,
    /// The run is aborting: clients and the chaos task stop.
    stop: AtomicBool,
    /// Every client is done.
    load_done: AtomicBool,
    max_lag: AtomicU64,
    tally: Mutex<Tally>,
}

impl Load {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn violation(&self, v: String) {
        self.tally().violation(v);
    }
    /// Take one proposal of the budget; false when it is spent.
    fn ticket(&self) -> bool {
        !self.stop.load(Ordering::Acquire)
            && self.issued.fetch_add(1, Ordering::AcqRel) < self.total
    }
}

/// How the leader answered a proposal.
enum Answer {
    Accepted(AcceptedReply),
    Refused { status: u16, body: ErrorBody },
}

/// A 409 `hlc_order` because the proposal's HLC lags the leader's clock by
/// more than the allowed offset: the proposal is stale, not wrong.
fn lagged_behind_the_leader(body: &ErrorBody) -> bool {
    body.error == "hlc_order"
        && body
            .reasons
            .iter()
            .any(|r| r.contains("behind the leader's clock"))
}

fn guard_of(body: &ErrorBody) -> String {
    body.guard.clone().unwrap_or_else(|| body.error.clone())
}

/// Submit `p` until the leader answers it: attempts without an answer
/// (leader down, connection reset) and 429/503 are retried with the same
/// proposal, which is idempotent. Returns the answer and whether an earlier
/// attempt went unanswered (its outcome was unknown).
async fn submit_until_answered(load: &Load, p: &Proposal) -> Result<(Answer, bool)> {
    let deadline = Instant::now() + Duration::from_secs(LEADER_WAIT_SECS_MAX);
    let mut unanswered = false;
    let mut backoff_ms = 20u64;
    loop {
        match load.leader.submit(p).await {
            Ok(r) => return Ok((Answer::Accepted(r), unanswered)),
            Err(ClientError::Refused { status, body }) if status == 429 || status == 503 => {
                // A `503 unavailable` means no durable outcome in time: the
                // proposal may still commit, so a later answer may rightly
                // be a duplicate.
                if (ClientError::Refused { status, body }).outcome_unknown() {
                    if !unanswered {
                        load.tally().unanswered += 1;
                    }
                    unanswered = true;
                }
                load.tally().busy_answers += 1;
            }
            Err(ClientError::Refused { status, body }) => {
                return Ok((Answer::Refused { status, body }, unanswered))
            }
            Err(ClientError::Connect { .. }) => {
                if !unanswered {
                    load.tally().unanswered += 1;
                }
                unanswered = true;
                load.tally().connection_errors += 1;
            }
            Err(e) => return Err(anyhow!("{} on {}: {e}", p.transition, p.project)),
        }
        if load.stop.load(Ordering::Acquire) {
            bail!("stopped");
        }
        if Instant::now() > deadline {
            bail!(
                "the leader at {} did not answer {} on {} for {LEADER_WAIT_SECS_MAX} s",
                load.leader.base(),
                p.transition,
                p.project
            );
        }
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        backoff_ms = (backoff_ms * 2).min(400);
    }
}

/// The project's HEAD on the leader, waiting for the leader to answer.
async fn read_head(load: &Load, project: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(LEADER_WAIT_SECS_MAX);
    loop {
        match load.leader.state(project, &[]).await {
            Ok(s) => return Ok(s.hash),
            Err(ClientError::Connect { .. }) | Err(ClientError::Refused { status: 503, .. }) => {}
            Err(e) => return Err(anyhow!("reading HEAD of {project}: {e}")),
        }
        if load.stop.load(Ordering::Acquire) {
            bail!("stopped");
        }
        if Instant::now() > deadline {
            bail!(
                "the leader at {} did not serve GET /state for {LEADER_WAIT_SECS_MAX} s",
                load.leader.base()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a client leaves behind: its mirror's final HEAD of the project.
struct ProjectEnd {
    project: String,
    hash: String,
    /// False when the client stopped early after a violation that left its
    /// mirror unusable (its HEAD is then not compared).
    in_sync: bool,
}

/// One project's client: the driver's next step against the mirror, or
/// now and then a deliberate fault; every 202 recorded.
async fn drive(load: Arc<Load>, project: String, mut rng: Rng) -> Result<ProjectEnd> {
    let driver = Driver::new(&load.keys, u64::MAX);
    let mut mirror = NodeState::new(load.genesis.clone())?;
    // Accepted proposals (for replays) and their 202s by idem key.
    let mut history: Vec<Proposal> = vec![];
    let mut acked: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let end = |mirror: &NodeState, in_sync: bool| ProjectEnd {
        project: project.clone(),
        hash: mirror.project_hash(&project).to_string(),
        in_sync,
    };
    loop {
        if load.stop.load(Ordering::Acquire) {
            bail!("stopped");
        }
        let now = now_ms();
        if !load.calm && rng.chance(WORKLOAD_FAULT_RATE) {
            let f = WORKLOAD_FAULTS[rng.below(WORKLOAD_FAULTS.len() as u64) as usize];
            let pick = rng.next_u64();
            let recent = &history[history.len().saturating_sub(HISTORY_PER_PROJECT_MAX)..];
            if let Some(bad) = driver.fault(&mirror, &project, now, f, recent, pick) {
                if !load.ticket() {
                    break;
                }
                load.tally().fault(fault_name(f));
                let (answer, _) = submit_until_answered(&load, &bad).await?;
                match answer {
                    Answer::Accepted(r) if f == Fault::Replay => {
                        let mut t = load.tally();
                        t.duplicates += 1;
                        if !r.duplicate {
                            t.violation(format!("a replay of {} on {project} (idem {:?}) was accepted as new at index {}", bad.transition, bad.idem_key, r.index));
                        }
                        match acked.get(&bad.idem_key) {
                            Some((i, h)) if (*i, h) != (r.index, &r.state_post_hash) => t.violation(format!(
                                "a replay of {} on {project} (idem {:?}) was answered index {} post {}, the original 202 said index {i} post {h}",
                                bad.transition, bad.idem_key, r.index, r.state_post_hash
                            )),
                            Some(_) => {}
                            None => {
                                // Committed without a 202 (the outcome was
                                // unknown): this repeat is its first 202.
                                acked.insert(bad.idem_key.clone(), (r.index, r.state_post_hash.clone()));
                                t.acks.push(Ack { project: project.clone(), transition: bad.transition.clone(), idem_key: bad.idem_key.clone(), index: r.index, post_hash: r.state_post_hash.clone() });
                            }
                        }
                    }
                    Answer::Accepted(r) => {
                        load.violation(format!(
                            "a deliberately faulty proposal ({}: {} on {project}) was accepted at index {}",
                            fault_name(f), bad.transition, r.index
                        ));
                        // The mirror no longer knows HEAD: stop this project.
                        return Ok(end(&mirror, false));
                    }
                    Answer::Refused { status, body } => {
                        let mut t = load.tally();
                        t.refused(&guard_of(&body));
                        if f == Fault::Replay {
                            t.violation(format!(
                                "a replay of the accepted {} on {project} (idem {:?}) was refused ({status} {}: {}) instead of answered with its original outcome",
                                bad.transition, bad.idem_key, body.error, body.message
                            ));
                        }
                    }
                }
                continue;
            }
        }
        let p = match driver.next(&mirror, &project, now) {
            Next::Done => break,
            Next::WaitMs(ms) => {
                tokio::time::sleep(Duration::from_millis(ms.clamp(1, 1_000))).await;
                continue;
            }
            Next::Propose(p) => *p,
        };
        if !load.ticket() {
            break;
        }
        // What the leader must compute, by the pure reducer.
        let pre_hash = mirror.project_hash(&project).to_string();
        let mut trial = mirror.clone();
        let s = step(
            &mut trial,
            &p,
            &Ctx {
                now_ms: p.hlc.wall_ms,
                verify: Verify::Full,
                snapshot_every: 0,
            },
        );
        if !matches!(s.outcome, Outcome::Accepted(_)) {
            bail!(
                "the pure reducer refuses the workload's own {} on {project}: {:?} (a bug in the workload)",
                p.transition,
                s.outcome
            );
        }
        let post_hash = trial.project_hash(&project).to_string();
        let (answer, unanswered) = submit_until_answered(&load, &p).await?;
        match answer {
            Answer::Accepted(r) => {
                let mut t = load.tally();
                if r.duplicate && !unanswered {
                    t.violation(format!(
                        "a new {} on {project} (idem {:?}) was answered as a repeat of index {}",
                        p.transition, p.idem_key, r.index
                    ));
                }
                if r.duplicate && unanswered {
                    t.unanswered_committed += 1;
                }
                if r.state_post_hash != post_hash {
                    t.violation(format!(
                        "{} on {project} at index {}: the leader's post hash {} differs from the pure reducer's {post_hash}",
                        p.transition, r.index, r.state_post_hash
                    ));
                }
                t.accepted += 1;
                acked.insert(p.idem_key.clone(), (r.index, r.state_post_hash.clone()));
                t.acks.push(Ack {
                    project: project.clone(),
                    transition: p.transition.clone(),
                    idem_key: p.idem_key.clone(),
                    index: r.index,
                    post_hash: r.state_post_hash.clone(),
                });
                drop(t);
                mirror = trial;
                history.push(p);
            }
            Answer::Refused { status, body } => {
                if unanswered {
                    // An attempt went unanswered: was it committed after all?
                    // (A repeat of a committed proposal is answered with its
                    // original outcome, so this refusal says no; HEAD decides.)
                    let head = read_head(&load, &project).await?;
                    if head == post_hash {
                        load.violation(format!(
                            "{} on {project} (idem {:?}) is committed (HEAD {head}) but its resubmission was refused ({status} {}: {}) instead of answered with the original outcome",
                            p.transition, p.idem_key, body.error, body.message
                        ));
                        let mut t = load.tally();
                        t.accepted += 1;
                        t.unanswered_committed += 1;
                        drop(t);
                        mirror = trial;
                        history.push(p);
                        continue;
                    }
                    if head != pre_hash {
                        load.violation(format!(
                            "HEAD of {project} is {head}: neither before ({pre_hash}) nor after ({post_hash}) the unanswered {} — a transition nobody proposed?",
                            p.transition
                        ));
                        return Ok(end(&mirror, false));
                    }
                }
                let guard = guard_of(&body);
                load.tally().refused(&guard);
                if lagged_behind_the_leader(&body) {
                    // Built before a leader restart (or a long stall) and
                    // retried past the HLC offset: not committed (HEAD said
                    // so above when an attempt went unanswered), so the next
                    // turn rebuilds it with a fresh HLC, as any client must.
                } else if guard == "backbeat" || guard == "license" {
                    let wait = body.retry_after_ms.unwrap_or(50).clamp(1, 1_000);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                } else {
                    load.violation(format!(
                        "a valid {} on {project} was refused: {status} {guard}: {}",
                        p.transition, body.message
                    ));
                }
            }
        }
    }
    Ok(end(&mirror, true))
}

/// Submit one proposal with a forged signature on a project no client
/// drives, counted as a `forged_signature` fault; it must be refused (401).
async fn forge_after_the_kills(load: &Load) -> Result<()> {
    let project = "chaos-forgery";
    let driver = Driver::new(&load.keys, u64::MAX);
    let mirror = NodeState::new(load.genesis.clone())?;
    let Some(bad) = driver.fault(&mirror, project, now_ms(), Fault::ForgedSignature, &[], 0) else {
        bail!("the driver could not forge a proposal on a fresh project");
    };
    load.tally().fault(fault_name(Fault::ForgedSignature));
    match submit_until_answered(load, &bad).await?.0 {
        Answer::Refused { status: 401, .. } => {}
        Answer::Refused { status, body } => load.violation(format!(
            "a forged {} on {project} was refused with {status} {} instead of 401: {}",
            bad.transition, body.error, body.message
        )),
        Answer::Accepted(r) => load.violation(format!(
            "a forged {} on {project} was accepted at index {}",
            bad.transition, r.index
        )),
    }
    Ok(())
}

/// Kill and restart nodes on the schedule, as the proposal stream passes
/// each event's point.
async fn chaos(load: Arc<Load>, cluster: Shared, schedule: Vec<Kill>) -> Result<()> {
    let total = schedule.len();
    for (n, k) in schedule.into_iter().enumerate() {
        // Restarts take time (a follower replays its WAL), so the schedule
        // can fall behind the load. Once the load is done only the first two
        // events (a follower and the leader) are still owed.
        if n >= 2 && load.load_done.load(Ordering::Acquire) {
            load.tally().kills_skipped = (total - n) as u64;
            break;
        }
        while load.issued.load(Ordering::Acquire) < k.at && !load.load_done.load(Ordering::Acquire)
        {
            if load.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if load.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        for &i in &k.targets {
            let was_up = lock(&cluster).kill9(i);
            if was_up {
                let mut t = load.tally();
                t.fault("restart");
                if i == 0 {
                    t.leader_restarts += 1;
                } else {
                    t.follower_restarts += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(k.down_ms)).await;
        for &i in &k.targets {
            start_node(&cluster, i).await?;
        }
    }
    Ok(())
}

/// Every `LAG_POLL_MS`: each follower's lag behind the leader, halted
/// followers, nodes that died by themselves.
async fn monitor(load: Arc<Load>, cluster: Shared, stop: Arc<AtomicBool>) {
    let nodes: Vec<(String, Client)> = {
        let c = lock(&cluster);
        c.nodes
            .iter()
            .map(|n| (n.name.clone(), Client::new(&format!("http://{}", n.http))))
            .collect()
    };
    let mut halted_reported = vec![false; nodes.len()];
    let t = Duration::from_millis(POLL_TIMEOUT_MS);
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(LAG_POLL_MS)).await;
        for i in 0..nodes.len() {
            let mut c = lock(&cluster);
            if !c.nodes[i].ready {
                continue;
            }
            if let Some(status) = c.exited(i) {
                if !c.nodes[i].down_on_purpose {
                    let n = &c.nodes[i];
                    load.violation(format!(
                        "{} exited by itself ({status}); its log: {}",
                        n.name,
                        n.log.display()
                    ));
                    c.nodes[i].down_on_purpose = true;
                }
            }
        }
        let Ok(Ok(h)) = tokio::time::timeout(t, nodes[0].1.health()).await else {
            continue;
        };
        for (i, (name, client)) in nodes.iter().enumerate().skip(1) {
            match tokio::time::timeout(t, client.get_json("/health")).await {
                Ok(Ok(f)) => {
                    let applied = f["applied_index"].as_u64().unwrap_or(0);
                    load.max_lag
                        .fetch_max(h.index.saturating_sub(applied), Ordering::AcqRel);
                }
                Ok(Err(ClientError::Refused { status: 503, body }))
                    if !halted_reported[i] && !recovering(&body.message) =>
                {
                    halted_reported[i] = true;
                    load.violation(format!("{name} halted: {}", body.message));
                }
                _ => {}
            }
        }
    }
}

/// A follower's `/health` answered `503` with this body because it is
/// replaying its log after a (scheduled) restart, not because it halted:
/// its port answers from before its recovery, and the monitor polls every
/// follower, ready or not. The client keeps the first 500 characters of a
/// body that is not an API error, so this reads the status field as text
/// (a halted follower's says `"status":"halted"`).
fn recovering(body: &str) -> bool {
    body.trim_start().starts_with('{') && body.contains(r#""status":"recovering""#)
}

/// A node's index and root hash as its HTTP surface reports them.
async fn live_head(client: &Client, leader: bool) -> Option<(u64, String, u64)> {
    let t = Duration::from_millis(POLL_TIMEOUT_MS);
    if leader {
        let h = tokio::time::timeout(t, client.health()).await.ok()?.ok()?;
        Some((h.index, h.root_hash.unwrap_or_default(), h.index))
    } else {
        let f = tokio::time::timeout(t, client.get_json("/health"))
            .await
            .ok()?
            .ok()?;
        Some((
            f["applied_index"].as_u64()?,
            f["root_hash"].as_str()?.to_string(),
            f["persisted_index"].as_u64()?,
        ))
    }
}

fn load_keys(top: &Path, seed: u64) -> Result<Keys> {
    Ok(Keys {
        admin: read_key(&top.join("admin.key"))?,
        leader: read_key(&top.join("leader/node.key"))?,
        worker: read_key(&top.join("keys/worker.key"))?,
        council: (1..=AGENTS)
            .map(|i| read_key(&top.join(format!("agent-{i}/agent.key"))))
            .collect::<Result<_>>()?,
        license_authority: read_key(&top.join("keys/license-authority.key"))?,
        prober: read_key(&top.join("keys/tool-prober.key"))?,
        outsider: swoosh_core::sig::key_from_label(&format!("chaos-process/{seed}/outsider")),
    })
}

/// Run process mode. `Ok` holds the report whatever it found; `Err` is a
/// run that could not be carried out (a node that does not start, a leader
/// that never answers again, …).
pub async fn run(
    cfg: &ProcessConfig,
    top: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<ProcessReport> {
    let t0 = Instant::now();
    let exe = std::env::current_exe().context("cannot find the swoosh executable")?;
    let followers = cfg.replicas - 1;
    let logs = top.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let top_s = top.display().to_string();
    setup(
        &exe,
        &[
            "init",
            "--dir",
            &top_s,
            "--cluster-id",
            "chaos",
            "--agents",
            &AGENTS.to_string(),
            "--followers",
            &followers.to_string(),
            "--beat-ms",
            &BEAT_MS.to_string(),
        ],
        &logs.join("init.log"),
    )
    .await?;
    setup(
        &exe,
        &["p2p", "enroll", "--dir", &top_s],
        &logs.join("enroll.log"),
    )
    .await?;
    let genesis = read_genesis(&top.join(GENESIS_FILE))?;
    let keys = load_keys(top, cfg.seed)?;

    // One port per node's HTTP, then the leader's libp2p port.
    let mut ports = free_ports(cfg.replicas + 1)?;
    let leader_p2p_port = ports.pop().expect("replicas + 1 ports");
    let mut nodes = vec![];
    for (i, port) in ports.into_iter().enumerate() {
        let name = if i == 0 {
            "leader".to_string()
        } else {
            format!("follower-{i}")
        };
        nodes.push(Node {
            dir: top.join(&name),
            log: logs.join(format!("{name}.log")),
            http: format!("127.0.0.1:{port}"),
            name,
            leader: i == 0,
            child: None,
            starts: 0,
            kills: 0,
            down_on_purpose: false,
            ready: false,
        });
    }
    let cluster: Shared = Arc::new(Mutex::new(Cluster {
        exe: exe.clone(),
        nodes,
        leader_p2p: format!("/ip4/127.0.0.1/tcp/{leader_p2p_port}"),
        t0,
        closed: false,
    }));
    let _guard = ClusterGuard(cluster.clone());
    for i in 0..cfg.replicas {
        start_node(&cluster, i).await?;
    }
    let leader_url = format!("http://{}", lock(&cluster).nodes[0].http);

    let load = Arc::new(Load {
        keys,
        genesis: genesis.clone(),
        leader: Client::new(&leader_url),
        total: cfg.transitions,
        calm: cfg.calm,
        issued: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        load_done: AtomicBool::new(false),
        max_lag: AtomicU64::new(0),
        tally: Mutex::new(Tally::default()),
    });
    let schedule = if cfg.calm {
        vec![]
    } else {
        kill_schedule(cfg.seed, cfg.transitions, followers)
    };
    let monitor_stop = Arc::new(AtomicBool::new(false));
    let monitor_task = tokio::spawn(monitor(load.clone(), cluster.clone(), monitor_stop.clone()));
    let mut chaos_task = tokio::spawn(chaos(load.clone(), cluster.clone(), schedule));
    let mut rng = Rng::new(cfg.seed);
    let mut clients = tokio::task::JoinSet::new();
    for pi in 0..cfg.projects {
        let project = if pi == 0 {
            "default".to_string()
        } else {
            format!("project-{pi}")
        };
        clients.spawn(drive(load.clone(), project, rng.fork()));
    }

    // Wait for the load; the first failure stops everything.
    let mut ends = vec![];
    let mut failure: Option<anyhow::Error> = None;
    let mut chaos_result: Option<Result<()>> = None;
    let (mut seen, mut progress_at) = (0u64, Instant::now());
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            r = clients.join_next() => match r {
                None => break,
                Some(Ok(Ok(end))) => ends.push(end),
                Some(Ok(Err(e))) => {
                    if failure.is_none() && !load.stop.load(Ordering::Acquire) {
                        failure = Some(e.context("a client failed"));
                    }
                    load.stop.store(true, Ordering::Release);
                }
                Some(Err(e)) => {
                    if failure.is_none() {
                        failure = Some(anyhow!("a client task panicked: {e}"));
                    }
                    load.stop.store(true, Ordering::Release);
                }
            },
            r = &mut chaos_task, if chaos_result.is_none() => {
                let r = r.map_err(|e| anyhow!("the chaos task panicked: {e}")).and_then(|r| r);
                if let Err(e) = &r {
                    if failure.is_none() {
                        failure = Some(anyhow!("{e:#}"));
                    }
                    load.stop.store(true, Ordering::Release);
                }
                chaos_result = Some(r);
            }
            _ = tick.tick() => {
                let issued = load.issued.load(Ordering::Acquire);
                bar.set_position(issued.min(cfg.transitions));
                if issued != seen {
                    (seen, progress_at) = (issued, Instant::now());
                } else if progress_at.elapsed() > Duration::from_secs(LOAD_STALL_SECS_MAX) && failure.is_none() {
                    failure = Some(anyhow!("the load made no progress for {LOAD_STALL_SECS_MAX} s ({issued} of {} proposals issued)", cfg.transitions));
                    load.stop.store(true, Ordering::Release);
                    clients.abort_all();
                }
            }
        }
    }
    load.load_done.store(true, Ordering::Release);
    if let Some(e) = failure {
        monitor_stop.store(true, Ordering::Release);
        chaos_task.abort();
        monitor_task.abort();
        return Err(e);
    }
    // The kill events not reached yet run now, back to back.
    if chaos_result.is_none() {
        chaos_task
            .await
            .map_err(|e| anyhow!("the chaos task panicked: {e}"))??;
    }

    // Every node up again (a node that died by itself was reported).
    for i in 0..cfg.replicas {
        let down = {
            let mut c = lock(&cluster);
            c.exited(i);
            c.nodes[i].child.is_none()
        };
        if down {
            start_node(&cluster, i).await?;
        }
    }

    // One forged proposal after the last kill: the leader keeps its
    // attention memory on a timer and at a clean stop, so what it saw of the
    // forgeries before a kill -9 may be gone, and the digest below must show
    // that the node's own scorer sees forged signatures.
    if !load.calm {
        forge_after_the_kills(&load).await?;
    }

    // Catch-up: every follower at the leader's index and root hash.
    let clients_http: Vec<(String, Client, bool)> = {
        let c = lock(&cluster);
        c.nodes
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    Client::new(&format!("http://{}", n.http)),
                    n.leader,
                )
            })
            .collect()
    };
    let catch_up_t0 = Instant::now();
    let mut live: Vec<Option<(u64, String, u64)>>;
    loop {
        live = vec![];
        for (_, c, leader) in &clients_http {
            live.push(live_head(c, *leader).await);
        }
        let caught_up = live[0].as_ref().is_some_and(|l| {
            live.iter().all(|f| {
                f.as_ref()
                    .is_some_and(|f| f.0 == l.0 && f.1 == l.1 && f.2 == l.0)
            })
        });
        if caught_up {
            break;
        }
        if catch_up_t0.elapsed() > Duration::from_secs(CATCH_UP_SECS_MAX) {
            let leader = live[0].clone().unwrap_or((0, "unreachable".into(), 0));
            for (i, (name, _, _)) in clients_http.iter().enumerate().skip(1) {
                let log = lock(&cluster).nodes[i].log.clone();
                match &live[i] {
                    Some(f) if f.0 == leader.0 && f.1 == leader.1 && f.2 == leader.0 => {}
                    Some(f) => load.violation(format!(
                        "{name} did not catch up within {CATCH_UP_SECS_MAX} s: applied {} (persisted {}) root {}, the leader is at {} root {}; its log: {}",
                        f.0, f.2, f.1, leader.0, leader.1, log.display()
                    )),
                    None => load.violation(format!(
                        "{name} did not answer GET /health at the end; its log: {}",
                        log.display()
                    )),
                }
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let catch_up_ms = catch_up_t0.elapsed().as_millis() as u64;
    monitor_stop.store(true, Ordering::Release);
    let _ = monitor_task.await;

    // The leader's attention digest (band watch and above) goes in the
    // report: what the node's own scorer made of the kills and the faults.
    let attention: Vec<serde_json::Value> = match tokio::time::timeout(
        Duration::from_secs(30),
        Client::new(&leader_url).attention(None),
    )
    .await
    {
        Ok(Ok(d)) => d
            .items
            .into_iter()
            .filter_map(|i| serde_json::to_value(i).ok())
            .collect(),
        // An empty digest would read as "the scorer saw nothing".
        Ok(Err(e)) => {
            load.violation(format!(
                "the leader's attention digest could not be read: {e}"
            ));
            vec![]
        }
        Err(_) => {
            load.violation("the leader did not answer GET /attention within 30 s".to_string());
            vec![]
        }
    };

    // Stop every node (SIGINT: a clean shutdown), SIGKILL past the limit.
    {
        let mut c = lock(&cluster);
        for i in 0..cfg.replicas {
            c.nodes[i].down_on_purpose = true;
            c.interrupt(i);
        }
    }
    let stop_deadline = Instant::now() + Duration::from_secs(STOP_SECS_MAX);
    loop {
        let running = {
            let mut c = lock(&cluster);
            (0..cfg.replicas)
                .filter(|&i| {
                    c.exited(i);
                    c.nodes[i].child.is_some()
                })
                .count()
        };
        if running == 0 {
            break;
        }
        if Instant::now() > stop_deadline {
            lock(&cluster).kill_all();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every acknowledged transition, on every replica's WAL; one root hash.
    let mut tally = std::mem::take(&mut *load.tally());
    let acks = std::mem::take(&mut tally.acks);
    let mut summaries = vec![];
    let mut final_hashes = vec![];
    let mut final_index = 0;
    let node_info: Vec<(String, PathBuf, PathBuf, String, u32, u32)> = {
        let c = lock(&cluster);
        c.nodes
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    n.dir.clone(),
                    n.log.clone(),
                    n.http.clone(),
                    n.starts,
                    n.kills,
                )
            })
            .collect()
    };
    let mut leader_node: Option<NodeState> = None;
    for (i, (name, dir, log, http, starts, kills)) in node_info.into_iter().enumerate() {
        let store = open_store(&dir, false)?;
        let mut missing = 0u64;
        for a in &acks {
            let found = swoosh_storage::wal::read_record(&store, a.index).ok();
            let ok = found.as_ref().is_some_and(|v| {
                v.record.project == a.project
                    && v.record.idem_key == a.idem_key
                    && v.record.state_post_hash.to_string() == a.post_hash
            });
            if !ok {
                missing += 1;
                if missing <= 5 {
                    let what = match &found {
                        None => "no such record".to_string(),
                        Some(v) => format!(
                            "{} on {} post {}",
                            v.record.transition, v.record.project, v.record.state_post_hash
                        ),
                    };
                    tally.violation(format!(
                        "{name}: the acknowledged {} on {} at index {} (post {}) is not in its WAL: {what}",
                        a.transition, a.project, a.index, a.post_hash
                    ));
                }
            }
        }
        if missing > 5 {
            tally.violation(format!(
                "{name}: {missing} acknowledged transitions in all are missing from its WAL"
            ));
        }
        let (wal_index, wal_root) = match swoosh_storage::recover(&store, &genesis) {
            Ok(r) => {
                let out = (r.node.index, r.node.root_hash().to_string());
                if i == 0 {
                    leader_node = Some(r.node);
                }
                out
            }
            Err(e) => {
                tally.violation(format!(
                    "{name}: its WAL does not recover: {e}; its log: {}",
                    log.display()
                ));
                (
                    store.last_index().unwrap_or(0),
                    format!("unrecoverable: {e}"),
                )
            }
        };
        let (live_index, live_root) = live[i]
            .as_ref()
            .map(|l| (l.0, l.1.clone()))
            .unwrap_or((0, "unreachable".into()));
        if live_index != wal_index || live_root != wal_root {
            tally.violation(format!(
                "{name}: it reported index {live_index} root {live_root} before it stopped, its WAL recovers to index {wal_index} root {wal_root}"
            ));
        }
        if i == 0 {
            final_index = wal_index;
        } else if wal_index != final_index {
            tally.violation(format!(
                "{name} ends at index {wal_index}, the leader at {final_index}"
            ));
        }
        final_hashes.push(wal_root.clone());
        summaries.push(NodeSummary {
            name,
            dir: dir.display().to_string(),
            log: log.display().to_string(),
            http,
            starts,
            kills,
            live_index,
            live_root_hash: live_root,
            wal_index,
            wal_root_hash: wal_root,
        });
    }
    // Each client's mirror ends on the leader's HEAD of its project.
    if let Some(node) = &leader_node {
        for e in ends.iter().filter(|e| e.in_sync) {
            let h = node.project_hash(&e.project).to_string();
            if h != e.hash {
                tally.violation(format!(
                    "project {}: the leader's WAL ends on HEAD {h}, the client's pure-reducer mirror on {}",
                    e.project, e.hash
                ));
            }
        }
    }
    if final_hashes.windows(2).any(|w| w[0] != w[1]) {
        tally.violation(format!(
            "the replicas end on different root hashes: {}",
            final_hashes.join(", ")
        ));
    }
    let mut faults: BTreeMap<String, u64> = FAULT_KEYS.iter().map(|k| (k.to_string(), 0)).collect();
    faults.extend(std::mem::take(&mut tally.faults));
    let mut acked_indexes: Vec<u64> = acks.iter().map(|a| a.index).collect();
    acked_indexes.sort_unstable();
    acked_indexes.dedup();
    Ok(ProcessReport {
        seed: cfg.seed,
        mode: "process".into(),
        replicas: cfg.replicas,
        transitions: load.issued.load(Ordering::Acquire).min(cfg.transitions),
        accepted: tally.accepted,
        rejected: tally.rejected,
        duplicates: tally.duplicates,
        acknowledged: acked_indexes.len() as u64,
        rejections_by_guard: tally.rejections_by_guard,
        faults,
        violations: tally.violations,
        violations_unlisted: tally.violations_unlisted,
        final_hashes,
        final_index,
        max_lag: load.max_lag.load(Ordering::Acquire),
        attention,
        process: ProcessStats {
            leader_restarts: tally.leader_restarts,
            follower_restarts: tally.follower_restarts,
            kills_skipped: tally.kills_skipped,
            unanswered: tally.unanswered,
            unanswered_committed: tally.unanswered_committed,
            connection_errors: tally.connection_errors,
            busy_answers: tally.busy_answers,
            catch_up_ms,
            elapsed_ms: t0.elapsed().as_millis() as u64,
            nodes: summaries,
        },
        dir: Some(top_s),
        reproduce: cfg.reproduce(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The monitor counted a follower replaying its log after a scheduled
    /// kill (its port answers `503 recovering` meanwhile) as halted, a false
    /// violation whenever a poll fell inside the replay.
    #[test]
    fn a_recovering_follower_is_not_a_halted_one() {
        assert!(recovering(
            r#"{"status":"recovering","role":"follower","index":0}"#
        ));
        assert!(!recovering(
            r#"{"status":"halted","role":"follower","index":40}"#
        ));
        assert!(!recovering("Service Unavailable"));
        // As the client keeps it: cut at 500 characters, no longer JSON.
        let long = format!(
            r#"{{"status":"recovering","consensus":"{}"}}"#,
            "x".repeat(600)
        );
        assert!(recovering(&long.chars().take(500).collect::<String>()));
    }

    #[test]
    fn every_schedule_kills_a_follower_and_the_leader() {
        for seed in 0..200 {
            for (transitions, followers) in [(1, 2), (150, 2), (1_000, 4), (10_000, 2)] {
                let s = kill_schedule(seed, transitions, followers);
                assert!(s.len() as u64 >= 2, "seed {seed}: {s:?}");
                assert!(
                    s.iter().any(|k| k.targets.contains(&0)),
                    "seed {seed}: no leader kill"
                );
                assert!(
                    s.iter().any(|k| k.targets.iter().any(|&t| t >= 1)),
                    "seed {seed}: no follower kill"
                );
                for k in &s {
                    assert!(k.at <= transitions, "{k:?}");
                    assert!(k.targets.iter().all(|&t| t <= followers), "{k:?}");
                    assert!((DOWN_MS_MIN..=DOWN_MS_MAX).contains(&k.down_ms));
                }
                assert!(s.windows(2).all(|w| w[0].at <= w[1].at));
            }
        }
        assert_eq!(kill_schedule(7, 150, 2), kill_schedule(7, 150, 2));
    }
}
