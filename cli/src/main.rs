//! `swoosh`: the SWOOSH command line.

mod bench;
mod bench_repl;
mod chaos_cmd;
mod chaos_process;
mod demo;
mod demo_node;
mod dirlock;
mod facts_cmd;
mod node;
mod p2p_cmd;
mod storage_cmd;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

// The reducer, the canonical encoder and the HTTP stack allocate many small,
// short-lived values per transition; glibc's malloc spent ~40 % of the replay
// thread in malloc/free/consolidate (perf, docs/performance.md). mimalloc's
// per-thread free lists cut that cost; it changes no byte of any output.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "swoosh",
    // The commit and its date (cli/build.rs): builds are compared across
    // hosts when replicas diverge.
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SWOOSH_BUILD"), ")"),
    about = "SWOOSH: a deterministic orchestrator (statechart reducer, WAL, HLC, signed proposals)"
)]
struct Cli {
    /// How large a node's store may grow, in GiB (the LMDB map: address
    /// space, not disk; the file grows only as data is written). Raise it
    /// when `swoosh_store_used_bytes` nears `swoosh_store_capacity_bytes`
    /// or a commit fails with "the store … is full". A store that already
    /// holds more opens at exactly its own size, with no room to grow (a
    /// warning says so): give every command the size the node runs with.
    #[arg(
        long,
        global = true,
        env = "SWOOSH_LMDB_MAP_GIB",
        value_name = "GIB",
        default_value_t = node::LMDB_MAP_GIB_DEFAULT,
        value_parser = clap::value_parser!(u64).range(1..=node::LMDB_MAP_GIB_MAX)
    )]
    lmdb_map_gib: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Copy, Clone, ValueEnum)]
enum ChartFormat {
    Yaml,
    Mermaid,
}

#[derive(Subcommand)]
enum LicenseCmd {
    Issue(facts_cmd::LicenseArgs),
}

#[derive(Subcommand)]
enum ProbeCmd {
    Sign(facts_cmd::ProbeArgs),
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the statechart (the YAML source of truth, or a mermaid diagram).
    Statechart {
        #[arg(long, value_enum, default_value = "yaml")]
        format: ChartFormat,
    },
    /// Run the demo: several projects through BOOT, the lifecycle and
    /// execution loops, with some deliberately refused proposals.
    Demo(demo::DemoArgs),
    /// Create a local cluster: genesis, keys, and a directory per node.
    Init(node::InitArgs),
    /// Run a leader node: WAL on LMDB, the actor tree and the HTTP API.
    Serve(node::ServeArgs),
    /// Build, sign and submit a proposal (or submit a signed one with --file).
    Propose(node::ProposeArgs),
    /// Read a project's state (HEAD hash and sections).
    State {
        #[command(flatten)]
        read: node::ReadArgs,
        #[arg(long, default_value = "default")]
        project: String,
        /// Comma-separated regions, e.g. Council,Ingestion.
        #[arg(long)]
        projection: Option<String>,
    },
    /// Node health: status, index, root hash, WAL lag, last snapshot.
    Health {
        #[command(flatten)]
        read: node::ReadArgs,
    },
    /// What the attention scorer surfaced from the node's operational
    /// stream, by band: what, why, how often and where, what to check next.
    Attention {
        #[command(flatten)]
        read: node::ReadArgs,
        /// Lowest band shown: 0..=4 or ignore-fast, background, watch,
        /// investigate, promote (default: watch).
        #[arg(long)]
        min_band: Option<String>,
    },
    /// Show a decision record (blake3:<hex>, <hex> or bubble://dr/<hex>).
    Decisions {
        #[command(flatten)]
        read: node::ReadArgs,
        reference: String,
    },
    /// Chaos: the seeded simulation of a whole cluster under faults (--mode
    /// sim), or real processes over libp2p killed with -9 (--mode process).
    Chaos(chaos_cmd::ChaosArgs),
    /// Benchmarks, each beside the raw fdatasync rate measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Issue a signed license token (prints {"license": …}, the inputs of Boot_Licensed).
    License {
        #[command(subcommand)]
        cmd: LicenseCmd,
    },
    /// Sign an MCP tool probe fact (an element of the `probes` input).
    Probe {
        #[command(subcommand)]
        cmd: ProbeCmd,
    },
    /// Generate an ed25519 signing key; prints the signer id and writes the
    /// secret key (hex) to --out with 0600 permissions.
    Keygen {
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing key file.
        #[arg(long)]
        force: bool,
    },
    /// Operate on a node's WAL: verify, export, inspect, repair, reindex.
    Wal {
        #[command(subcommand)]
        cmd: storage_cmd::WalCmd,
    },
    /// Snapshots of a node's state: create, list, restore.
    Snapshot {
        #[command(subcommand)]
        cmd: storage_cmd::SnapshotCmd,
    },
    /// Replay a node's log (from its newest valid snapshot, or from genesis)
    /// and print records, final root hash, seconds and records/s.
    Replay(storage_cmd::ReplayArgs),
    /// Run a follower: tail the leader's age-encrypted WAL over libp2p.
    Follow(p2p_cmd::FollowArgs),
    /// Run a council agent: join the mesh and answer announcements with signed votes.
    Agent(p2p_cmd::AgentArgs),
    /// libp2p replication: enroll followers, run the leader with its swarm.
    P2p {
        #[command(subcommand)]
        cmd: p2p_cmd::P2pCmd,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if cli.cmd.ends_with_its_reader() {
        // Like other Unix tools, end quietly when the reader of our output
        // goes away (`swoosh wal export | head`) instead of panicking on
        // EPIPE.
        // SAFETY: SIG_DFL is a valid disposition for SIGPIPE; the runtime's
        // threads started already touch no pipe yet.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    } else {
        end_quietly_when_stdout_closes();
    }
    // Best effort (see the function): a refusal only costs speed.
    let _ = disable_transparent_huge_pages();
    if let Err(e) = run(cli).await {
        // A JSON line under `--log json`, so the last and most telling line
        // of a failed node reaches a pipeline that parses stderr as JSON.
        node::say_error(format_args!("{e:#}"));
        std::process::exit(e.downcast_ref::<Exit>().map_or(1, |x| x.code));
    }
}

/// The status a process killed by SIGPIPE reports to its shell (128 + 13).
const SIGPIPE_EXIT: i32 = 141;

/// For the commands that keep SIGPIPE ignored: a `println!` whose reader
/// went away (`swoosh state … | head -1`) panics ("failed printing to
/// stdout: Broken pipe"); end as SIGPIPE would have, quietly, instead.
fn end_quietly_when_stdout_closes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(SIGPIPE_EXIT);
        }
        default(info)
    }));
}

impl Cmd {
    /// True for the commands that only read local files and write to
    /// stdout, which may take SIGPIPE's default action (end the process).
    /// Every command that opens a socket keeps Rust's default (SIGPIPE
    /// ignored, EPIPE returned): a vectored socket write (`writev`, which
    /// hyper and others use) to a peer that reset the connection raises
    /// SIGPIPE, which would kill a node, and systemd counts that end as a
    /// clean exit that `Restart=on-failure` does not restart.
    fn ends_with_its_reader(&self) -> bool {
        match self {
            Cmd::Statechart { .. }
            | Cmd::Wal { .. }
            | Cmd::Snapshot { .. }
            | Cmd::Replay(_)
            | Cmd::License { .. }
            | Cmd::Probe { .. }
            | Cmd::Keygen { .. }
            | Cmd::Init(_) => true,
            Cmd::Demo(_)
            | Cmd::Serve(_)
            | Cmd::Propose(_)
            | Cmd::State { .. }
            | Cmd::Health { .. }
            | Cmd::Attention { .. }
            | Cmd::Decisions { .. }
            | Cmd::Chaos(_)
            | Cmd::Bench(_)
            | Cmd::Follow(_)
            | Cmd::Agent(_)
            | Cmd::P2p { .. } => false,
        }
    }
}

/// Wait until the process is asked to stop: SIGINT (Ctrl-C) or SIGTERM,
/// which systemd, Docker and Kubernetes send by default. Returns the
/// signal's name for the log line that follows.
pub async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}); stop this process with SIGINT");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term => "SIGTERM",
    }
}

/// An error that ends the process with its own exit code (default: 1).
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Turn transparent huge pages off for this process (and the node processes
/// it starts, which inherit the flag). With THP on, the allocator's first
/// touch of each 2 MiB region faults in a huge page that the kernel zeroes in
/// one go: 11 % of all CPU samples in the replication benchmark, and stalls
/// of the worker that showed up as lag spikes. Off, the same memory is zeroed
/// 4 KiB at a time as it is touched. Measured in docs/performance.md
/// ("Huge pages and gossip signatures"). Best effort: a kernel without the
/// call (or a seccomp filter refusing it) keeps its default, which changes
/// speed, never results. Returns whether the kernel took the flag.
fn disable_transparent_huge_pages() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes
        // no memory; it sets a flag on the process's address space.
        // Nothing is logging yet and a failure only costs speed: the caller
        // ignores the result.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

async fn run(cli: Cli) -> Result<()> {
    node::set_lmdb_map_gib(cli.lmdb_map_gib);
    match cli.cmd {
        Cmd::Statechart { format } => {
            match format {
                ChartFormat::Yaml => print!("{}", swoosh_core::statechart::STATECHART_YAML),
                ChartFormat::Mermaid => print!("{}", swoosh_core::statechart::to_mermaid()),
            }
            Ok(())
        }
        Cmd::Demo(args) => demo::run(args).await,
        Cmd::Init(a) => node::init(a),
        Cmd::License {
            cmd: LicenseCmd::Issue(a),
        } => facts_cmd::license(a),
        Cmd::Probe {
            cmd: ProbeCmd::Sign(a),
        } => facts_cmd::probe(a),
        Cmd::Bench(b) => bench::run(b).await,
        Cmd::Chaos(a) => chaos_cmd::run(a).await,
        Cmd::Serve(a) => node::serve(a).await,
        Cmd::Propose(a) => node::propose(a).await,
        Cmd::State {
            read,
            project,
            projection,
        } => node::state(read, project, projection).await,
        Cmd::Health { read } => node::health(read).await,
        Cmd::Attention { read, min_band } => node::attention(read, min_band).await,
        Cmd::Decisions { read, reference } => node::decisions(read, reference).await,
        Cmd::Keygen { out, force } => keygen(&out, force),
        Cmd::Wal { cmd } => storage_cmd::wal(cmd),
        Cmd::Snapshot { cmd } => storage_cmd::snapshot(cmd),
        Cmd::Replay(a) => storage_cmd::replay(a),
        Cmd::Follow(a) => p2p_cmd::follow(a).await,
        Cmd::Agent(a) => p2p_cmd::agent(a).await,
        Cmd::P2p { cmd } => p2p_cmd::run(cmd).await,
    }
}

fn keygen(out: &std::path::Path, force: bool) -> Result<()> {
    // The path itself, not what a symlink there points to: a link to a
    // missing file is an existing path too.
    if out.symlink_metadata().is_ok() && !force {
        bail!(
            "{} already exists; pass --force to overwrite it (the old key is lost)",
            out.display()
        );
    }
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let replace = if force {
        node::Replace::Yes
    } else {
        // Two keygens racing for one path: the second fails, not overwrites.
        node::Replace::No
    };
    node::write_key_with(out, &key, replace).with_context(|| {
        format!(
            "cannot write the key file {}: check the directory exists and is writable",
            out.display()
        )
    })?;
    println!("{}", swoosh_core::SignerId::from_signing_key(&key));
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    fn ends_with_its_reader(args: &[&str]) -> bool {
        let cli = super::Cli::try_parse_from(std::iter::once("swoosh").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        cli.cmd.ends_with_its_reader()
    }

    /// A node, a client or anything else with a socket must never take
    /// SIGPIPE's default action; local output commands may.
    #[test]
    fn only_local_output_commands_end_on_sigpipe() {
        for args in [
            &["serve", "--dir", "d"][..],
            &["follow", "--dir", "d", "--leader", "/ip4/127.0.0.1/tcp/1"],
            &["p2p", "leader", "--dir", "d"],
            &["agent", "--dir", "d", "--peer", "/ip4/127.0.0.1/tcp/1"],
            &["demo"],
            &["state", "--project", "p"],
            &["health"],
            &["bench", "http"],
        ] {
            assert!(!ends_with_its_reader(args), "{args:?} opens sockets");
        }
        for args in [
            &["wal", "export", "--dir", "d", "--format", "jsonl"][..],
            &["replay", "--dir", "d"],
            &["statechart"],
            &["snapshot", "list", "--dir", "d"],
        ] {
            assert!(ends_with_its_reader(args), "{args:?} only writes to stdout");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn transparent_huge_pages_are_off_after_start_up() {
        if !super::disable_transparent_huge_pages() {
            // Production ignores this failure (it costs speed only), so
            // there is nothing to check here.
            eprintln!(
                "skipped: PR_SET_THP_DISABLE fails on this machine ({}): a kernel without \
                 the call or a seccomp filter; the flag cannot be checked",
                std::io::Error::last_os_error()
            );
            return;
        }
        // SAFETY: as in disable_transparent_huge_pages; this call only reads.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1, "PR_GET_THP_DISABLE after start-up");
    }
}
