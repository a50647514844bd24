//! `swoosh follow`, `swoosh p2p enroll`, `swoosh p2p leader`: the libp2p
//! replication transport from the command line.

use crate::node::{
    init_logs, open_store, read_genesis, read_key, write_json, LogFormat, DEFAULT_HTTP,
    GENESIS_FILE,
};
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use swoosh_core::state::FollowerEntry;
use swoosh_core::SignerId;
use swoosh_net::p2p::envelope;
use swoosh_net::p2p::follower::{spawn_follower_observed, FollowerOptions};
use swoosh_net::p2p::leader::spawn_leader_with;
use swoosh_net::p2p::Multiaddr;
use swoosh_storage::wal::META_GENESIS;
use swoosh_storage::LogStore;

/// A follower's age identity file, in its directory.
pub const AGE_KEY_FILE: &str = "age.key";
pub const DEFAULT_P2P: &str = "/ip4/127.0.0.1/tcp/7800";

#[derive(Args)]
pub struct FollowArgs {
    /// The follower directory (genesis.json, node.key, age.key; data in data/).
    #[arg(long)]
    pub dir: PathBuf,
    /// The leader's libp2p address, e.g. /ip4/127.0.0.1/tcp/7800.
    #[arg(long)]
    pub leader: String,
    /// Serve the read-only HTTP surface here: GET /state, /state/summary,
    /// /health, /metrics, /openapi.json (docs/api.md, "A follower's read-only surface").
    #[arg(long)]
    pub http: Option<String>,
    /// The leader's HTTP URL, e.g. http://10.0.0.1:7700: what this
    /// follower's `503 not_leader` names for clients to resubmit to
    /// (without it, the answer can only name the leader's libp2p address).
    #[arg(long, value_name = "URL")]
    pub leader_http: Option<String>,
    /// Also listen for peers here (optional).
    #[arg(long)]
    pub listen: Option<String>,
    /// UNSAFE: do not fsync the follower's WAL.
    #[arg(long)]
    pub nosync: bool,
    /// Forget a divergence halt recorded in this follower's store and apply
    /// again; only once its cause is understood (docs/runbooks/replication-triage.md).
    #[arg(long)]
    pub clear_halt: bool,
    /// Snapshot the follower's state every N records (0: never; a restart
    /// then replays the follower's whole log).
    #[arg(long, default_value_t = swoosh_net::p2p::follower::FOLLOWER_SNAPSHOT_EVERY_DEFAULT)]
    pub snapshot_every: u64,
    #[command(flatten)]
    pub compact: crate::node::CompactArgs,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log: LogFormat,
}

#[derive(Args)]
pub struct AgentArgs {
    /// The agent directory (genesis.json, agent.key).
    #[arg(long)]
    pub dir: PathBuf,
    /// A peer to join the mesh through (the leader's libp2p address); repeatable.
    #[arg(long, required = true)]
    pub peer: Vec<String>,
    /// Vote no on every announcement (makes a failed election visible).
    #[arg(long)]
    pub vote_no: bool,
    /// Serve the agent's `GET /health` and `GET /metrics` (`swoosh_agent_*`)
    /// on this HOST:PORT, e.g. 127.0.0.1:7720. Off by default.
    #[arg(long)]
    pub http: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log: LogFormat,
}

#[derive(Subcommand)]
pub enum P2pCmd {
    /// Give every follower directory an age identity and list the followers
    /// in genesis (rewritten in every node directory). Before the first record only.
    Enroll(EnrollArgs),
    /// Run the leader node (as `swoosh serve`) plus its libp2p replication swarm.
    Leader(LeaderArgs),
}

#[derive(Args)]
pub struct EnrollArgs {
    /// The cluster directory made by `swoosh init`.
    #[arg(long)]
    pub dir: PathBuf,
}

#[derive(Args)]
pub struct LeaderArgs {
    /// The leader directory (genesis.json, node.key).
    #[arg(long)]
    pub dir: PathBuf,
    /// libp2p listen address.
    #[arg(long, default_value = DEFAULT_P2P)]
    pub listen: String,
    /// HTTP API listen address, as `swoosh serve --http`.
    #[arg(long, default_value = DEFAULT_HTTP)]
    pub http: String,
    /// UNSAFE: do not fsync commits (throwaway runs and benchmarks only), as
    /// `swoosh serve --nosync`.
    #[arg(long)]
    pub nosync: bool,
    /// Snapshot every N records (besides every REVERB), as `swoosh serve`.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_every: u64,
    #[command(flatten)]
    pub compact: crate::node::CompactArgs,
    /// Log format (text by default here; `swoosh serve`, the production
    /// entry point, logs JSON by default for log collectors).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log: LogFormat,
}

pub async fn run(cmd: P2pCmd) -> Result<()> {
    match cmd {
        P2pCmd::Enroll(a) => enroll(&a.dir),
        P2pCmd::Leader(a) => leader(a).await,
    }
}

fn parse_addr(s: &str, flag: &str) -> Result<Multiaddr> {
    s.parse().with_context(|| {
        format!("{flag} {s:?} is not a libp2p multiaddr (e.g. /ip4/127.0.0.1/tcp/7800)")
    })
}

pub(crate) fn write_secret(path: &Path, text: &str) -> Result<()> {
    crate::node::write_file_atomic(
        path,
        format!("{text}\n").as_bytes(),
        0o600,
        crate::node::Replace::No,
    )
}

pub(crate) fn read_age(path: &Path) -> Result<swoosh_net::p2p::envelope::AgeIdentity> {
    let text = crate::node::read_capped_text(path, crate::node::KEY_FILE_BYTES_MAX).with_context(
        || {
            format!(
            "cannot read the age identity {}: run `swoosh p2p enroll --dir <cluster dir>` first",
            path.display()
        )
        },
    )?;
    crate::node::warn_if_exposed(path);
    envelope::parse_identity(&text).with_context(|| format!("{}", path.display()))
}

pub fn enroll(top: &Path) -> Result<()> {
    let gpath = top.join(GENESIS_FILE);
    let mut genesis = read_genesis(&gpath)?;
    // Every node directory's store, not only the leader's: a follower or a
    // copied leader holding records chains the old genesis too. A store
    // with no record yet was only stamped with the old genesis when a node
    // opened it; it is stamped with the new one below, or the node would
    // refuse to start on it.
    let mut empty_stores = vec![];
    let mut node_dirs: Vec<PathBuf> = std::fs::read_dir(top)
        .with_context(|| format!("cannot list {}", top.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join(GENESIS_FILE).is_file() && p.join("data").is_dir())
        .collect();
    node_dirs.sort();
    for d in node_dirs {
        // Held until enroll exits: no node may start on it meanwhile.
        crate::dirlock::lock_node_dir(&d)?;
        let store = open_store(&d, true)?;
        let end = swoosh_storage::log_end(&store)
            .with_context(|| format!("cannot read the log in {}", d.display()))?;
        if end > 0 {
            bail!(
                "the node in {} already holds {end} records: genesis cannot change any more (its hash chains every record); enroll before the first `swoosh serve`, or move that directory's data/ away if it is a stale copy",
                d.display()
            );
        }
        empty_stores.push((d, store));
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir(top)
        .with_context(|| format!("cannot list {}", top.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let n: u32 = name.strip_prefix("follower-")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        bail!(
            "{} has no follower-N directories: give the cluster directory `swoosh init` made (it holds leader/ and follower-N/), or create a cluster with followers: `swoosh init --dir <new dir> --followers 2`",
            top.display()
        );
    }
    let mut followers = vec![];
    for (n, d) in &dirs {
        let key = read_key(&d.join("node.key"))?;
        let apath = d.join(AGE_KEY_FILE);
        let recipient = if apath.exists() {
            read_age(&apath)?.to_public().to_string()
        } else {
            let (secret, recipient) = envelope::generate_identity();
            write_secret(
                &apath,
                &format!("# swoosh follower-{n} age identity\n# public key: {recipient}\n{secret}"),
            )?;
            recipient
        };
        followers.push(FollowerEntry {
            name: format!("follower-{n}"),
            key: SignerId::from_signing_key(&key),
            age_recipient: recipient,
        });
    }
    genesis.followers = followers;
    // Enrolling writes a new genesis (its hash changes with the followers)
    // before any record: it binds facts as every new one does, even when an
    // earlier build's `swoosh init` wrote the one it starts from.
    genesis.facts_bound_to_genesis = true;
    genesis
        .validate_new()
        .context("the enrolled genesis is invalid")?;
    let gh = genesis.hash()?;
    write_json(&gpath, &genesis)?;
    let mut written = 1;
    for e in std::fs::read_dir(top)?.filter_map(|e| e.ok()) {
        let p = e.path().join(GENESIS_FILE);
        if p.exists() {
            write_json(&p, &genesis)?;
            written += 1;
        }
    }
    for (d, mut store) in empty_stores {
        if store.get_meta(META_GENESIS)?.is_some() {
            store
                .put_meta(META_GENESIS, gh.to_string().as_bytes())
                .with_context(|| {
                    format!(
                        "cannot record the new genesis in {}",
                        d.join("data").display()
                    )
                })?;
        }
    }
    println!(
        "enrolled {} followers; genesis is now {gh} (written to {written} files)",
        genesis.followers.len()
    );
    for f in &genesis.followers {
        println!("  {}  {}  {}", f.name, f.key, f.age_recipient);
    }
    Ok(())
}

pub async fn follow(a: FollowArgs) -> Result<()> {
    init_logs(a.log);
    let compaction = a.compact.policy()?;
    if compaction.is_some() && a.snapshot_every == 0 {
        bail!("--archive-dir compacts after each snapshot: give --snapshot-every N (not 0)");
    }
    let genesis = read_genesis(&a.dir.join(GENESIS_FILE))?;
    let key = read_key(&a.dir.join("node.key"))?;
    let age_identity = read_age(&a.dir.join(AGE_KEY_FILE))?;
    let me = SignerId::from_signing_key(&key);
    if !genesis.followers.iter().any(|f| f.key == me) {
        bail!(
            "{me} is not a follower listed in {}: run `swoosh p2p enroll` on the cluster directory",
            a.dir.join(GENESIS_FILE).display()
        );
    }
    let leader = parse_addr(&a.leader, "--leader")?;
    let leader_http = a
        .leader_http
        .as_deref()
        .map(|u| {
            swoosh_net::p2p::http::parse_leader_http(u)
                .map_err(|e| anyhow::anyhow!("--leader-http: {e}"))
        })
        .transpose()?;
    if leader_http.is_some() && a.http.is_none() {
        crate::node::say_warn(format_args!(
            "warning: --leader-http is only named by the HTTP surface; without --http it is unused"
        ));
    }
    let listen = a
        .listen
        .as_deref()
        .map(|l| parse_addr(l, "--listen"))
        .transpose()?;
    crate::dirlock::lock_node_dir(&a.dir)?;
    let mut store = crate::node::open_writer_store(&a.dir, a.nosync)?;
    if a.clear_halt {
        match swoosh_storage::clear_halt(&mut store)? {
            Some(m) => crate::node::say(format_args!(
                "--clear-halt: forgot the halt at index {} ({}); applying again",
                m.index, m.reason
            )),
            None => crate::node::say(format_args!("--clear-halt: no halt was recorded")),
        }
    }
    let progress = Arc::new(swoosh_storage::ProgressCell::new());
    let about = swoosh_net::recovering::Recovering {
        role: "follower",
        genesis_hash: genesis.hash().context("the genesis does not hash")?,
        cluster_id: genesis.cluster_id.clone(),
        progress: progress.clone(),
    };
    let spawn = spawn_follower_observed(
        store,
        FollowerOptions {
            key,
            genesis,
            age_identity,
            leader: leader.clone(),
            listen,
            snapshot_every: a.snapshot_every,
            compaction,
        },
        progress,
    );
    // Bound before recovery: a port in use fails at once, and meanwhile
    // the port answers `recovering` with the progress.
    let (f, listener) = match &a.http {
        Some(h) => {
            let listener = crate::node::bind_http(h).await?;
            crate::node::say(format_args!(
                "recovering the follower's state from its log (the newest valid snapshot, then the WAL after it); until it is done http://{} answers GET /health and GET /metrics with the progress and 503 recovering to everything else",
                listener.local_addr()?
            ));
            let (listener, f) =
                swoosh_net::recovering::serve_while(listener, about, spawn, Default::default())
                    .await?;
            (f?, Some(listener))
        }
        None => {
            crate::node::say(format_args!(
                "recovering the follower's state from its log (the newest valid snapshot, then the WAL after it)"
            ));
            (spawn.await?, None)
        }
    };
    crate::node::say(format_args!(
        "following {leader} as {me} (peer {}), applied index {}",
        f.peer_id,
        f.applied_index()
    ));
    if let Some(listener) = listener {
        crate::node::say(format_args!(
            "follower HTTP on http://{}",
            listener.local_addr()?
        ));
        let shared = f.shared.clone();
        let opts = swoosh_net::p2p::http::FollowerHttp { leader_http };
        tokio::spawn(async move {
            if let Err(e) = swoosh_net::p2p::http::serve_follower_with(listener, shared, opts).await
            {
                tracing::error!("follower HTTP stopped: {e}");
            }
        });
    }
    let sig = crate::stop_signal().await;
    crate::node::say(format_args!(
        "{sig}: follower stopping at index {}",
        f.applied_index()
    ));
    Ok(())
}

pub async fn leader(a: LeaderArgs) -> Result<()> {
    init_logs(a.log);
    crate::node::warn_if_demo_keys(&a.dir);
    let compaction = a.compact.policy()?;
    let listen = parse_addr(&a.listen, "--listen")?;
    let genesis = read_genesis(&a.dir.join(GENESIS_FILE))?;
    let key = read_key(&a.dir.join("node.key"))?;
    let (node, listener) = crate::node::start_node_serving(
        &a.dir,
        a.nosync,
        a.snapshot_every,
        &a.http,
        Some(&listen),
        compaction,
    )
    .await?;
    let p2p = start_leader_p2p(&node, key, genesis, listen).await?;
    for addr in &p2p.listen_addrs {
        crate::node::say(format_args!("leader p2p on {addr}/p2p/{}", p2p.peer_id));
    }
    crate::node::say(format_args!(
        "leader HTTP on http://{}",
        listener.local_addr()?
    ));
    let served = crate::node::serve_leader(listener, node, crate::stop_signal()).await;
    p2p.stop();
    served
}

/// How many times the leader rebuilds a certificate proposal refused for a
/// HEAD or HLC that moved on, before leaving it to the next resend.
const CERTIFICATE_REBUILDS_MAX: u32 = 3;

/// `p` signed again at the HEAD the refusal `r` names and an HLC after the
/// last applied one (same inputs, key and window).
fn rebuilt_at(
    p: &swoosh_core::Proposal,
    r: &swoosh_core::reducer::Rejection,
    key: &ed25519_dalek::SigningKey,
) -> Option<swoosh_core::Proposal> {
    let hlc = swoosh_core::Hlc::send(
        r.hlc_last.unwrap_or(p.hlc).max(p.hlc),
        crate::node::now_ms(),
    )
    .ok()?;
    swoosh_core::ProposalBuilder {
        project: p.project.clone(),
        transition: p.transition.clone(),
        current_state_hash: r.head_hash?,
        inputs: p.inputs.clone(),
        idem_key: p.idem_key.clone(),
        hlc,
        window_id: p.window_id.clone(),
        evidence: p.evidence.clone(),
    }
    .sign(key)
    .ok()
}

/// Start the leader's replication swarm beside `node`: certificate
/// proposals from the council elections are submitted to the node, and the
/// node's `/health` reports the followers the swarm sees.
pub(crate) async fn start_leader_p2p(
    node: &swoosh_actors::NodeHandle<swoosh_storage::LmdbStore>,
    key: ed25519_dalek::SigningKey,
    genesis: swoosh_core::state::Genesis,
    listen: Multiaddr,
) -> Result<std::sync::Arc<swoosh_net::p2p::leader::LeaderP2p>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let resign_key = key.clone();
    let p2p = std::sync::Arc::new(
        spawn_leader_with(node.store().clone(), key, genesis, listen, Some(tx)).await?,
    );
    // Follower lag, gaps, partitions and refused messages feed the node's
    // attention scorer (SPEC §7).
    p2p.set_attention(swoosh_net::p2p::leader::attention_sink(node));
    // Certificate proposals the council elections produce go through the
    // node like any other proposal.
    let submitter = node.clone();
    tokio::spawn(async move {
        while let Some(mut p) = rx.recv().await {
            let project = p.project.clone();
            // The swarm builds the proposal from its copy of the state,
            // which trails the log: in a project with other traffic it can
            // name a HEAD that moved on. Rebuilt at once from the HEAD and
            // HLC the refusal gives, rather than only at the next 3-second
            // resend, which the same traffic can beat every time.
            for attempt in 0..=CERTIFICATE_REBUILDS_MAX {
                match submitter.submit(p.clone()).await {
                    swoosh_actors::SubmitResult::Accepted(ok) => {
                        tracing::info!(%project, index = ok.index, transition = %ok.transition, "council certificate accepted");
                        break;
                    }
                    swoosh_actors::SubmitResult::Rejected(r)
                        if attempt < CERTIFICATE_REBUILDS_MAX
                            && matches!(
                                r.kind,
                                swoosh_core::reducer::RejectKind::StaleHash
                                    | swoosh_core::reducer::RejectKind::HlcOrder
                            )
                            && r.head_hash.is_some() =>
                    {
                        let Some(q) = rebuilt_at(&p, &r, &resign_key) else {
                            break;
                        };
                        p = q;
                    }
                    other => {
                        tracing::warn!(%project, "council certificate not accepted (retried): {other:?}");
                        break;
                    }
                }
            }
        }
    });
    let view = std::sync::Arc::downgrade(&p2p);
    node.set_replication(std::sync::Arc::new(move || {
        view.upgrade()
            .map(|p| {
                p.followers()
                    .into_iter()
                    .map(|f| swoosh_actors::FollowerHealth {
                        name: f.name,
                        key: f.key.to_string(),
                        connected: f.connected,
                        applied_index: f.applied_index,
                        lag_records: f.lag_records,
                        last_report_ms_ago: f.last_report_ms_ago,
                        halted: f.halted,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }));
    let counters = std::sync::Arc::downgrade(&p2p);
    node.set_replication_counters(std::sync::Arc::new(move || {
        counters
            .upgrade()
            .map(|p| {
                let s = p.snapshot();
                vec![
                    ("batches_published", s.stats.batches_published),
                    ("records_published", s.stats.records_published),
                    ("range_requests_served", s.stats.ranges_served),
                    ("range_records_served", s.stats.range_records_served),
                    ("snapshot_offers", s.stats.snapshot_offers),
                    ("snapshot_chunks_served", s.stats.snapshot_chunks),
                    ("requests_refused", s.stats.refused),
                    ("peers_refused", s.refused_peers),
                    ("publish_errors", s.publish_errors),
                    ("publish_no_subscribers", s.publish_no_subscribers),
                    // The council's elections, which ride the same swarm:
                    // otherwise visible only as log lines every 3 s.
                    ("council_announcements", s.announcements),
                    ("council_votes_counted", s.council_votes),
                    ("council_votes_rejected", s.council_votes_rejected),
                    ("council_certificates", s.certificates),
                    ("council_certificate_proposals", s.certificate_proposals),
                ]
            })
            .unwrap_or_default()
    }));
    Ok(p2p)
}

pub async fn agent(a: AgentArgs) -> Result<()> {
    use swoosh_net::proto::council::VotePolicy;
    init_logs(a.log);
    let genesis = read_genesis(&a.dir.join(GENESIS_FILE))?;
    let key = read_key(&a.dir.join("agent.key"))?;
    // One agent per key: a second copy would sign its own votes in the
    // elections the first voted in (each remembers only its own).
    crate::dirlock::lock_agent_dir(&a.dir)?;
    let me = SignerId::from_signing_key(&key);
    match genesis.roster.iter().find(|r| r.key == me) {
        // A project's roster may still add it (Boot_SetRoster).
        None => tracing::warn!(
            "{me} is not in the genesis roster: its votes will be rejected as outsiders"
        ),
        // The leader's, an admin's or a license authority's key copied onto
        // an agent's host: exposed there, and not what an agent is for.
        Some(r)
            if me == genesis.leader
                || r.roles.iter().any(|x| {
                    matches!(
                        x,
                        swoosh_core::statechart::Role::Admin
                            | swoosh_core::statechart::Role::LicenseAuthority
                    )
                }) =>
        {
            let roles: Vec<&str> = r.roles.iter().map(|x| x.name()).collect();
            bail!(
                "{} is the key of {:?} ({}) in the genesis roster, not a council member's: an agent runs with its own council key (`swoosh init` writes agent-N/agent.key); move this key off the agent's host",
                a.dir.join("agent.key").display(),
                r.name,
                roles.join(", ")
            );
        }
        // Another role: a project's roster may give it the council role.
        Some(r) if !r.roles.contains(&swoosh_core::statechart::Role::Council) => {
            tracing::warn!(
                "{me} ({:?}) has no council role in the genesis roster: its votes count only in projects whose roster gives it one (Boot_SetRoster)",
                r.name
            )
        }
        Some(_) => {}
    }
    let peers = a
        .peer
        .iter()
        .map(|p| parse_addr(p, "--peer"))
        .collect::<Result<Vec<_>>>()?;
    let policy = if a.vote_no {
        VotePolicy::VoteNo
    } else {
        VotePolicy::ApproveAll
    };
    // Bound before joining the mesh, so a taken port fails at once.
    let listener = match &a.http {
        Some(h) => Some(crate::node::bind_http(h).await?),
        None => None,
    };
    let ag =
        Arc::new(swoosh_net::p2p::agent::spawn_agent(key, &genesis, policy, &peers, None).await?);
    crate::node::say(format_args!(
        "council agent {me} (peer {}) dialling {} (again every second while not connected); policy {policy:?}",
        ag.peer_id,
        a.peer.join(", ")
    ));
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let http = match listener {
        Some(listener) => {
            crate::node::say(format_args!(
                "agent HTTP on http://{}",
                listener.local_addr()?
            ));
            let status = {
                let ag = ag.clone();
                Arc::new(move || ag.status(&me))
                    as Arc<dyn Fn() -> swoosh_net::p2p::agent::AgentStatus + Send + Sync>
            };
            Some(tokio::spawn(swoosh_net::p2p::agent::serve_agent(
                listener,
                status,
                async move {
                    let _ = stopped.await;
                },
            )))
        }
        None => None,
    };
    // The voting task ends only if its peer's swarm did: exit then (non-zero,
    // so a service manager restarts the agent) instead of answering
    // `/health` for an agent that votes on nothing.
    let stopped_voting = {
        let ag = ag.clone();
        async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            while ag.is_running() {
                tick.tick().await;
            }
        }
    };
    let sig = tokio::select! {
        sig = crate::stop_signal() => Some(sig),
        () = stopped_voting => None,
    };
    let _ = stop_http.send(());
    if let Some(h) = http {
        let _ = h.await;
    }
    let s = ag.snapshot();
    let Some(sig) = sig else {
        bail!(
            "the agent's voting task ended (its libp2p peer stopped): {} announcements, {} votes sent, {} refused; exiting so that it is started again",
            s.announcements,
            s.votes_sent,
            s.refused
        );
    };
    crate::node::say(format_args!(
        "{sig}: agent stopping: {} announcements, {} votes sent, {} refused",
        s.announcements, s.votes_sent, s.refused
    ));
    Ok(())
}

#[cfg(test)]
mod certificate_tests {
    use super::*;
    use swoosh_core::{Hash, Hlc, ProposalBuilder};

    /// A certificate proposal refused for a HEAD that moved on is signed
    /// again at the HEAD and after the HLC the refusal names, with the same
    /// inputs, key and idempotency key.
    #[test]
    fn a_stale_certificate_is_rebuilt_at_the_refusals_head() {
        let key = swoosh_core::sig::key_from_label("rebuild/leader");
        let p = ProposalBuilder::new(
            "p",
            "Council_QuorumCert",
            Hash::of_bytes(b"old"),
            Hlc::new(1_000, 0),
            "p:3:Council_QuorumCert:council-epoch-1",
        )
        .inputs(&serde_json::json!({"members": [], "votes": []}))
        .unwrap()
        .sign(&key)
        .unwrap();
        let mut r = swoosh_core::reducer::Rejection {
            kind: swoosh_core::reducer::RejectKind::StaleHash,
            guard: "state_hash".into(),
            reasons: vec![],
            head_hash: Some(Hash::of_bytes(b"new")),
            hlc_last: Some(Hlc::new(crate::node::now_ms() + 10_000, 7)),
            retry_after_ms: None,
        };
        let q = rebuilt_at(&p, &r, &key).expect("rebuilt");
        q.verify_signature().unwrap();
        assert_eq!(q.current_state_hash, Hash::of_bytes(b"new"));
        assert!(q.hlc > r.hlc_last.unwrap() && q.hlc > p.hlc);
        assert_eq!(
            (&q.inputs, &q.idem_key, &q.signer),
            (&p.inputs, &p.idem_key, &p.signer)
        );
        r.head_hash = None;
        assert!(rebuilt_at(&p, &r, &key).is_none());
    }
}
