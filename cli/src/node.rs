//! `swoosh init`, `serve`, `propose`, `state`, `health`, `decisions`.

use anyhow::{bail, Context, Result};
use clap::Args;
use ed25519_dalek::SigningKey;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use swoosh_actors::{NodeConfig, NodeHandle, SystemClock};
use swoosh_core::backbeat::{Phase, Schedule};
use swoosh_core::facts::{PolicyRule, RosterEntry};
use swoosh_core::state::Genesis;
use swoosh_core::statechart::{Role, MACHINE_VERSION};
use swoosh_core::SignerId;
use swoosh_net::client::{Client, ClientError, ProposeRequest, RetryPolicy};
use swoosh_storage::{Durability, LmdbOptions, LmdbStore};

pub const GENESIS_FILE: &str = "genesis.json";
pub const DEFAULT_HTTP: &str = "127.0.0.1:7700";

/// Largest key or age identity file read (either is one line of text).
pub const KEY_FILE_BYTES_MAX: usize = 4 * 1024;
/// Largest genesis document read. Only there to stop `/dev/zero` or a huge
/// file given by mistake: far above any genesis `Genesis::validate` accepts
/// in practice (256 roster entries and 256 policy rules of 64 deny codes of
/// 1 KiB are ~17 MiB), since a genesis an earlier build wrote must still
/// be read by every command.
pub const GENESIS_FILE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// A file's bytes, refused when it is larger than `max`: `/dev/zero` or a
/// multi-gigabyte file given by mistake must not exhaust the command's
/// memory. Pipes and devices are read like files (`--inputs @/dev/stdin`,
/// `--key <(…)`), up to the same bound.
pub fn read_capped(path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than the {max}-byte limit for this file"),
        ));
    }
    Ok(bytes)
}

/// [`read_capped`] as UTF-8 text.
pub fn read_capped_text(path: &Path, max: usize) -> std::io::Result<String> {
    String::from_utf8(read_capped(path, max)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Why a secret file is readable by other users than its owner, if it is:
/// its mode grants group or other any access. Not refused (a Kubernetes
/// secret volume is 0644 by default, and refusing would stop a running
/// deployment at its next restart), but said on every read.
pub fn exposed_secret(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "warning: the secret file {} has mode {mode:04o}: it grants other users of this host access; `chmod 600 {}`",
            path.display(),
            path.display()
        )
    })
}

/// Print [`exposed_secret`]'s warning, if any, on stderr.
pub fn warn_if_exposed(path: &Path) {
    if let Some(w) = exposed_secret(path) {
        crate::node::say_warn(format_args!("{w}"));
    }
}

pub fn read_key(path: &Path) -> Result<SigningKey> {
    let text = read_capped_text(path, KEY_FILE_BYTES_MAX).map_err(|e| {
        // Only a missing key calls for a new one: a new key for an existing
        // node is not the key genesis names.
        let what = match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "create one with `swoosh keygen --out {}` or `swoosh init`",
                path.display()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "make it readable by the user this runs as (e.g. `chown -R swoosh:swoosh {}` for the systemd units)",
                path.parent().unwrap_or(path).display()
            ),
            _ => "check the path and the disk".to_string(),
        };
        anyhow::anyhow!("cannot read key file {}: {e}; {what}", path.display())
    })?;
    warn_if_exposed(path);
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).with_context(|| {
        format!(
            "{} is not a SWOOSH key file (64 hex digits of an ed25519 secret key)",
            path.display()
        )
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

pub fn write_key(path: &Path, key: &SigningKey) -> Result<()> {
    write_key_with(path, key, Replace::Yes)
}

/// [`write_key`], replacing a file already at `path` only with
/// [`Replace::Yes`].
pub fn write_key_with(path: &Path, key: &SigningKey, replace: Replace) -> Result<()> {
    let text = format!("{}\n", hex::encode(key.to_bytes()));
    write_file_atomic(path, text.as_bytes(), 0o600, replace)
}

/// Whether [`write_file_atomic`] may replace a file already at the path.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Replace {
    Yes,
    No,
}

/// Write `bytes` to `path` so that a crash or a power loss leaves the old
/// file or the new one, never an empty or partial one: a temporary file
/// beside it, synced, then renamed over it (or, with [`Replace::No`],
/// linked, which fails if the path exists), then the directory synced.
/// The file gets `mode` (0600 for a secret) whatever an old one had: a key
/// replaced with `--force` does not inherit an old file's looser mode.
pub fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32, replace: Replace) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let what = || format!("cannot write {}", path.display());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    // A new file under a name no one can guess, never one already there nor
    // a symlink's target: in a directory another user may write to, a
    // planted file or link under a predictable name would receive the
    // secret.
    let (mut f, tmp) = {
        let mut tries = 0;
        loop {
            let mut r = [0u8; 8];
            rand::fill(&mut r);
            let tmp = dir.join(format!(
                ".{}.tmp-{}",
                name.to_string_lossy(),
                hex::encode(r)
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
            {
                Ok(f) => break (f, tmp),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
                Err(e) => return Err(e).with_context(what),
            }
        }
    };
    let written = (|| -> std::io::Result<()> {
        // `mode` applies under the umask: a secret's is set outright;
        // other files keep the umask's say.
        if mode & 0o077 == 0 {
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        f.write_all(bytes)?;
        f.sync_all()
    })();
    let placed = written.and_then(|()| match replace {
        Replace::Yes => std::fs::rename(&tmp, path),
        Replace::No => match std::fs::hard_link(&tmp, path) {
            // The target is whole: a temporary name left behind is not a
            // failed write (it is removed below if it can be).
            Ok(()) => {
                let _ = std::fs::remove_file(&tmp);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
            // A filesystem without hard links (vfat, some network and FUSE
            // mounts): checked, then renamed; only a concurrent writer of
            // the same path could slip between the two.
            Err(_) if path.symlink_metadata().is_ok() => Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the file exists",
            )),
            Err(_) => std::fs::rename(&tmp, path),
        },
    });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(what);
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))
}

pub fn new_key() -> SigningKey {
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    SigningKey::from_bytes(&seed)
}

pub fn read_genesis(path: &Path) -> Result<Genesis> {
    let text = read_capped_text(path, GENESIS_FILE_BYTES_MAX).with_context(|| {
        format!(
            "cannot read {}: run `swoosh init --dir <dir>` to create a cluster",
            path.display()
        )
    })?;
    let g: Genesis = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid genesis document", path.display()))?;
    g.validate()
        .with_context(|| format!("{} is not a usable genesis", path.display()))?;
    Ok(g)
}

pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v)? + "\n";
    write_file_atomic(path, text.as_bytes(), 0o644, Replace::Yes)
}

/// The attention scorer's memory, in the node's data directory.
pub const ATTENTION_FILE: &str = "attention.cbor";

/// `--lmdb-map-gib`'s default: [`swoosh_storage::LMDB_MAP_BYTES_DEFAULT`].
pub const LMDB_MAP_GIB_DEFAULT: u64 = (swoosh_storage::LMDB_MAP_BYTES_DEFAULT >> 30) as u64;
/// The largest `--lmdb-map-gib`: 64 TiB, half the address space a 64-bit
/// Linux process has (the map is reserved address space).
pub const LMDB_MAP_GIB_MAX: u64 = 64 << 10;

static LMDB_MAP_GIB: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Set once, from the command line, before any store is opened.
pub fn set_lmdb_map_gib(gib: u64) {
    let _ = LMDB_MAP_GIB.set(gib.clamp(1, LMDB_MAP_GIB_MAX));
}

/// The map size every store this process opens gets.
pub fn lmdb_map_bytes() -> usize {
    let gib = LMDB_MAP_GIB.get().copied().unwrap_or(LMDB_MAP_GIB_DEFAULT);
    usize::try_from(gib << 30).unwrap_or(swoosh_storage::LMDB_MAP_BYTES_DEFAULT)
}

/// [`open_store`] for a process that will write (a node or a follower),
/// which must hold the journal: without it, it would serve LMDB without the
/// commits a crash left in the journal, and append at their indexes.
pub fn open_writer_store(dir: &Path, nosync: bool) -> Result<LmdbStore> {
    let store = open_store(dir, nosync)?;
    if store.journal_busy() {
        bail!(
            "another process holds the commit journal {} (the directory lock is free, so it is a read-only command such as `swoosh wal verify`, `wal export` or `replay` reading this directory, which also folds what a crash left in the journal): wait for it to finish or stop it, then start the node again",
            dir.join("data").join(swoosh_storage::journal::JOURNAL_FILE).display()
        );
    }
    Ok(store)
}

pub fn open_store(dir: &Path, nosync: bool) -> Result<LmdbStore> {
    open_store_as(dir, nosync, false)
}

/// [`open_store`] for a command that only reads: see
/// `LmdbStore::open_reader` (it holds the journal's lock only while it
/// folds what a crash left, so a node can start beside it).
pub fn open_reader_store(dir: &Path) -> Result<LmdbStore> {
    open_store_as(dir, false, true)
}

fn open_store_as(dir: &Path, nosync: bool, reader: bool) -> Result<LmdbStore> {
    let data = dir.join("data");
    // `LmdbStore::open` creates it, synced into the node directory.
    let opts = LmdbOptions {
        durability: if nosync {
            Durability::NoSync
        } else {
            Durability::Sync
        },
        map_bytes: lmdb_map_bytes(),
    };
    let store = if reader {
        LmdbStore::open_reader(&data, &opts)
    } else {
        LmdbStore::open(&data, &opts)
    }
    .with_context(|| format!("cannot open the store in {}", data.display()))?;
    if let Some((asked, held)) = store.map_below_data() {
        crate::node::say_warn(format_args!(
            "warning: the store in {} already holds {:.1} GiB, more than the {} GiB map asked for (--lmdb-map-gib / SWOOSH_LMDB_MAP_GIB): it opened at its own size with no room to grow, so any write fails with \"the store … is full\"; give the size the node runs with (its unit's SWOOSH_LMDB_MAP_GIB)",
            data.display(),
            held as f64 / f64::from(1u32 << 30),
            asked >> 30
        ));
    }
    if store.journal_replayed() > 0 {
        tracing::warn!(
            entries = store.journal_replayed(),
            dir = %data.display(),
            "folded journal entries left by a crash into the store"
        );
    }
    Ok(store)
}

/// A BACKBEAT schedule of `beat_ms`: half work, a quarter review, a quarter reverb.
pub fn schedule(origin_ms: u64, beat_ms: u64) -> Schedule {
    let half = beat_ms / 2;
    let three_q = beat_ms * 3 / 4;
    Schedule {
        origin_ms,
        period_ms: beat_ms,
        phases: vec![
            Phase {
                name: "work".into(),
                start_ms: 0,
                end_ms: half,
                opens: vec!["plan".into(), "work".into()],
            },
            Phase {
                name: "review".into(),
                start_ms: half,
                end_ms: three_q,
                opens: vec!["review".into()],
            },
            Phase {
                name: "reverb".into(),
                start_ms: three_q,
                end_ms: beat_ms,
                opens: vec!["reverb".into()],
            },
        ],
        amplitude_permille: 250,
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Args)]
pub struct InitArgs {
    /// Directory to create the cluster in.
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value = "local")]
    pub cluster_id: String,
    /// Council agents (each gets a key and a directory).
    #[arg(long, default_value_t = 3)]
    pub agents: usize,
    /// Follower node directories to prepare.
    #[arg(long, default_value_t = 2)]
    pub followers: usize,
    /// BACKBEAT period in milliseconds.
    #[arg(long, default_value_t = 3_000)]
    pub beat_ms: u64,
    /// Overwrite an existing cluster directory (its keys are lost, the
    /// followers' age identities too: `p2p enroll` makes new ones).
    /// Refused while a node there holds a store, and while node
    /// directories beyond --followers / --agents exist (remove them first).
    #[arg(long)]
    pub force: bool,
}

pub fn init(a: InitArgs) -> Result<()> {
    if !(1..=32).contains(&a.agents) {
        bail!("--agents must be between 1 and 32");
    }
    if a.followers > 16 {
        bail!("--followers must be at most 16");
    }
    if a.beat_ms < 40 || a.beat_ms > 86_400_000 {
        bail!("--beat-ms must be between 40 and 86400000");
    }
    let top = &a.dir;
    // A node's own directory (what deploy copies to each machine) is not a
    // cluster directory: --force there would replace the only copy of the
    // genesis its store and keys belong to.
    for own in [
        "node.key",
        "agent.key",
        crate::p2p_cmd::AGE_KEY_FILE,
        "data",
    ] {
        if top.join(own).exists() {
            bail!(
                "{} holds {own}: it is a node's directory, not a cluster directory; `swoosh init` writes a new cluster and would leave this node unable to start. Pick a new, empty --dir",
                top.display()
            );
        }
    }
    if top.join(GENESIS_FILE).exists() && !a.force {
        bail!("{} already holds a cluster; pass --force to overwrite it (its keys are lost) or pick another --dir", top.display());
    }
    // A store is chained to the genesis it was written under: after --force
    // replaced genesis, no node could start on it again.
    if let Ok(entries) = std::fs::read_dir(top) {
        for e in entries.flatten() {
            let data = e.path().join("data");
            let holds_data = std::fs::read_dir(&data).is_ok_and(|mut d| d.next().is_some());
            if holds_data {
                bail!(
                    "{} holds a node's store, chained to the current genesis: a new genesis would leave it unusable. Move the data/ directories away first (or pick another --dir)",
                    data.display()
                );
            }
        }
    }
    // Node directories of an earlier init that this one would not write:
    // left in place they keep that cluster's keys and age identities, and
    // `p2p enroll` would list every follower-N it finds in the new genesis
    // (any host holding one could then read the new cluster's gossip).
    if let Ok(entries) = std::fs::read_dir(top) {
        let mut stale: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| {
                // Any name `p2p enroll` would take as a node directory
                // (`follower-01` parses as 1 there) that this init does not
                // write by that exact name.
                let beyond = |prefix: &str, max: usize| {
                    n.strip_prefix(prefix)
                        .and_then(|k| k.parse::<usize>().ok())
                        .is_some_and(|k| k == 0 || k > max || *n != format!("{prefix}{k}"))
                };
                beyond("follower-", a.followers) || beyond("agent-", a.agents)
            })
            .collect();
        stale.sort();
        if !stale.is_empty() {
            bail!(
                "{} holds {} from an earlier cluster, beyond --followers {} / --agents {}: they keep that cluster's keys (and `p2p enroll` would make every follower-N a follower of the new one). Remove them first, or give counts that cover them",
                top.display(),
                stale.join(", "),
                a.followers,
                a.agents
            );
        }
    }
    std::fs::create_dir_all(top.join("keys"))
        .with_context(|| format!("cannot create {}", top.display()))?;
    let admin = new_key();
    let leader = new_key();
    let worker = new_key();
    let authority = new_key();
    let prober = new_key();
    let agents: Vec<SigningKey> = (0..a.agents).map(|_| new_key()).collect();
    let entry = |k: &SigningKey, name: &str, roles: Vec<Role>| RosterEntry {
        key: SignerId::from_signing_key(k),
        name: name.into(),
        roles,
    };
    let mut roster = vec![
        entry(&admin, "admin", vec![Role::Admin]),
        entry(&leader, "leader", vec![Role::Operator]),
        entry(&worker, "worker", vec![Role::Worker]),
        entry(
            &authority,
            "license-authority",
            vec![Role::LicenseAuthority],
        ),
        entry(&prober, "tool-prober", vec![Role::ToolProber]),
    ];
    for (i, k) in agents.iter().enumerate() {
        roster.push(entry(k, &format!("agent-{}", i + 1), vec![Role::Council]));
    }
    let origin = now_ms() / 1000 * 1000;
    let genesis = Genesis {
        cluster_id: a.cluster_id.clone(),
        machine_version: MACHINE_VERSION.into(),
        leader: SignerId::from_signing_key(&leader),
        roster,
        followers: vec![],
        backbeat: schedule(origin, a.beat_ms),
        policy_rules: vec![PolicyRule {
            id: "no-secrets".into(),
            deny_codes: vec!["secret_leak".into(), "source:file".into()],
            rationale: "sources must not leak credentials or read the local filesystem".into(),
        }],
        quorum_threshold: (a.agents as u32 / 2) + 1,
        hlc_max_offset_ms: 5_000,
        probe_max_age_ms: 60_000,
        facts_bound_to_genesis: true,
    };
    genesis
        .validate_new()
        .map_err(|e| {
            // The flags are the only input of the genesis: name them first.
            anyhow::anyhow!(
                "the genesis these flags make is invalid: {e}; check the flags it names (--cluster-id: 1 to 64 of a-z, 0-9, '-', '_', '.')"
            )
        })?;
    let gh = genesis.hash()?;
    write_json(&top.join(GENESIS_FILE), &genesis)?;
    write_key(&top.join("admin.key"), &admin)?;
    write_key(&top.join("keys/worker.key"), &worker)?;
    write_key(&top.join("keys/license-authority.key"), &authority)?;
    write_key(&top.join("keys/tool-prober.key"), &prober)?;
    let node_dir = |name: &str| -> Result<PathBuf> {
        let d = top.join(name);
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
        write_json(&d.join(GENESIS_FILE), &genesis)?;
        Ok(d)
    };
    let ld = node_dir("leader")?;
    write_key(&ld.join("node.key"), &leader)?;
    for i in 1..=a.followers {
        let d = node_dir(&format!("follower-{i}"))?;
        write_key(&d.join("node.key"), &new_key())?;
        // An age identity of the cluster this one replaces: `p2p enroll`
        // would reuse it, and whoever kept a copy could read the new
        // cluster's gossip. Enroll makes a new one.
        let age = d.join(crate::p2p_cmd::AGE_KEY_FILE);
        match std::fs::remove_file(&age) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!(
                "cannot remove {}, the age identity of the cluster being replaced: {e}",
                age.display()
            ),
        }
    }
    for (i, k) in agents.iter().enumerate() {
        let d = node_dir(&format!("agent-{}", i + 1))?;
        write_key(&d.join("agent.key"), k)?;
    }
    println!("cluster {:?} created in {}", a.cluster_id, top.display());
    println!(
        "  genesis      {gh}  ({})",
        top.join(GENESIS_FILE).display()
    );
    println!(
        "  leader       {}  (leader/node.key)",
        SignerId::from_signing_key(&leader)
    );
    println!(
        "  admin        {}  (admin.key)",
        SignerId::from_signing_key(&admin)
    );
    println!("  worker, license authority, tool prober keys in keys/");
    println!(
        "  {} council agents (agent-N/agent.key), {} follower directories",
        a.agents, a.followers
    );
    println!(
        "next: swoosh serve --dir {} --http {DEFAULT_HTTP}",
        ld.display()
    );
    Ok(())
}

#[derive(Args)]
pub struct ServeArgs {
    /// The node directory (holds genesis.json and node.key; data goes in data/).
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value = DEFAULT_HTTP)]
    pub http: String,
    /// UNSAFE: do not fsync commits (throwaway runs and benchmarks only).
    #[arg(long)]
    pub nosync: bool,
    /// Snapshot every N records (besides every REVERB).
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_every: u64,
    #[command(flatten)]
    pub compact: CompactArgs,
    /// Also run the libp2p replication swarm on this multiaddr (e.g.
    /// /ip4/0.0.0.0/tcp/7800): followers tail the WAL, agents vote. Same as
    /// `swoosh p2p leader`.
    #[arg(long)]
    pub p2p: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    pub log: LogFormat,
}

/// Automatic compaction while serving (`NodeConfig::compaction`).
#[derive(Args, Clone, Debug, Default)]
pub struct CompactArgs {
    /// Compact the log while serving: after the snapshot at S (every
    /// --snapshot-every records), once S minus --compact-keep-records is
    /// 20,000 records or more past the log's start, archive those records
    /// to a new file in this directory
    /// (wal-<first>-<last>.cbor, the `swoosh wal compact` format) and cut
    /// them from the store. Ship the files off the node: they are the only
    /// copy of those records. Without it the log grows for ever.
    #[arg(long)]
    pub archive_dir: Option<PathBuf>,
    /// Records kept before the newest snapshot when compacting (at least
    /// 10,000; the records after it are kept too) [default: 100000].
    #[arg(long, requires = "archive_dir")]
    pub compact_keep_records: Option<u64>,
    /// Also delete the cut records' decision records (then only in the
    /// archives; `GET /decisions/{hash}` answers 404 for them).
    #[arg(long, requires = "archive_dir")]
    pub compact_drop_decisions: bool,
}

impl CompactArgs {
    /// The policy, with its directory created and checked writable now (a
    /// compaction that can never write its archive is found at start, not
    /// hours later).
    pub fn policy(&self) -> Result<Option<swoosh_actors::CompactionPolicy>> {
        let Some(dir) = &self.archive_dir else {
            if self.compact_keep_records.is_some() || self.compact_drop_decisions {
                bail!("--compact-keep-records and --compact-drop-decisions need --archive-dir (where the archives go)");
            }
            return Ok(None);
        };
        let keep = self
            .compact_keep_records
            .unwrap_or(crate::storage_cmd::COMPACT_KEEP_RECORDS_DEFAULT);
        if keep < swoosh_actors::COMPACT_KEEP_RECORDS_MIN {
            bail!(
                "--compact-keep-records {} is below {}: the leader's replication tail and a lagging follower read records that recent; keep at least {}",
                keep,
                swoosh_actors::COMPACT_KEEP_RECORDS_MIN,
                swoosh_actors::COMPACT_KEEP_RECORDS_MIN
            );
        }
        // Synced into its parent: a compaction's cut is durable only with
        // its archive, and an archive in a directory whose own entry a power
        // loss drops is lost with it.
        swoosh_storage::create_dir_durably(dir)
            .with_context(|| format!("cannot create the --archive-dir {}", dir.display()))?;
        // What a compaction does there: write a file, then hard-link it to
        // its final name (an archive is never half-written under its name).
        // A file system without hard links (some FUSE and network mounts)
        // would fail every compaction while the log grows.
        let probe = dir.join(".swoosh-write-check");
        let linked = dir.join(".swoosh-link-check");
        let _ = std::fs::remove_file(&linked);
        std::fs::write(&probe, b"").with_context(|| {
            format!(
                "the --archive-dir {} is not writable: compaction could never write its archives",
                dir.display()
            )
        })?;
        let link = std::fs::hard_link(&probe, &linked);
        let _ = std::fs::remove_file(&probe);
        let _ = std::fs::remove_file(&linked);
        link.with_context(|| {
            format!(
                "the --archive-dir {} does not take hard links, which compaction needs to put each archive under its name only once it is complete: use a local file system (copy archives elsewhere afterwards)",
                dir.display()
            )
        })?;
        Ok(Some(swoosh_actors::CompactionPolicy {
            keep_records: keep,
            min_records: swoosh_storage::COMPACT_STEP_RECORDS,
            archive_dir: dir.clone(),
            drop_decisions: self.compact_drop_decisions,
        }))
    }
}

pub async fn start_node(
    dir: &Path,
    nosync: bool,
    snapshot_every: u64,
) -> Result<NodeHandle<LmdbStore>> {
    let (store, cfg) = prepare_node(dir, nosync, snapshot_every, None)?;
    tracing::info!(
        dir = %dir.display(),
        "recovering the state from the log (the newest valid snapshot, then the WAL after it)"
    );
    NodeHandle::start(store, cfg)
        .await
        .with_context(|| format!("cannot start the node in {}", dir.display()))
}

/// A node directory without `node.key`: a cluster directory given for the
/// leader's (which `read_key`'s "create one" hint would make worse: a new
/// key is not the genesis leader, and the node would first create a stray
/// store there), or a key that went missing.
pub fn check_node_key_present(dir: &Path) -> Result<()> {
    if dir.join("node.key").exists() {
        return Ok(());
    }
    let leader = dir.join("leader");
    if leader.join("node.key").is_file() {
        bail!(
            "{} holds no node.key: it is a cluster directory; did you mean --dir {}?",
            dir.display(),
            leader.display()
        );
    }
    bail!(
        "{} holds no node.key: a node runs with the key `swoosh init` wrote into its directory (a new key would not be the one genesis names); restore it from a backup, or give the node's own directory",
        dir.display()
    );
}

/// Read the node's genesis and key, lock its directory and open its store:
/// everything before recovery, which fails fast on a bad configuration.
fn prepare_node(
    dir: &Path,
    nosync: bool,
    snapshot_every: u64,
    compaction: Option<swoosh_actors::CompactionPolicy>,
) -> Result<(LmdbStore, NodeConfig)> {
    let genesis = read_genesis(&dir.join(GENESIS_FILE))?;
    check_node_key_present(dir)?;
    let key = read_key(&dir.join("node.key"))?;
    crate::dirlock::lock_node_dir(dir)?;
    let store = open_writer_store(dir, nosync)?;
    let cfg = NodeConfig {
        genesis,
        leader_key: key,
        snapshot_every,
        snapshot_keep: 3,
        wal_limits: Default::default(),
        clock: Arc::new(SystemClock),
        advertise: String::new(),
        attention_file: Some(dir.join("data").join(ATTENTION_FILE)),
        compaction,
    };
    Ok((store, cfg))
}

/// [`start_node`] for a node that serves HTTP on `http`: the port is bound
/// before recovery (a port in use fails at once, not after the replay) and
/// answers `recovering` while the node replays its log (see
/// `swoosh_net::recovering`); it is returned for the real server. The
/// libp2p port the caller will listen on next (`p2p`), if any, is held
/// through recovery for the same reason, and released on return.
pub async fn start_node_serving(
    dir: &Path,
    nosync: bool,
    snapshot_every: u64,
    http: &str,
    p2p: Option<&swoosh_net::p2p::Multiaddr>,
    compaction: Option<swoosh_actors::CompactionPolicy>,
) -> Result<(NodeHandle<LmdbStore>, tokio::net::TcpListener)> {
    let (store, cfg) = prepare_node(dir, nosync, snapshot_every, compaction)?;
    let listener = bind_http(http).await?;
    let _p2p_port = p2p
        .map(swoosh_net::p2p::reserve_listen_port)
        .transpose()
        .context("the libp2p listen address")?;
    let progress = Arc::new(swoosh_storage::ProgressCell::new());
    let about = swoosh_net::recovering::Recovering {
        role: "leader",
        genesis_hash: cfg
            .genesis
            .hash()
            .with_context(|| format!("the genesis of {} does not hash", dir.display()))?,
        cluster_id: cfg.genesis.cluster_id.clone(),
        progress: progress.clone(),
    };
    // Until recovery is done the port answers only `recovering`: say what
    // the node is doing, or a long replay looks like a node that hangs.
    tracing::info!(
        dir = %dir.display(),
        http = %listener.local_addr()?,
        "recovering the state from the log (the newest valid snapshot, then the WAL after it); until it is done the HTTP port answers GET /health and GET /metrics with the progress and 503 recovering to everything else"
    );
    let (listener, node) = swoosh_net::recovering::serve_while(
        listener,
        about,
        NodeHandle::start_observed(store, cfg, progress),
        Default::default(),
    )
    .await?;
    let node = node.with_context(|| format!("cannot start the node in {}", dir.display()))?;
    Ok((node, listener))
}

/// How a long-running command writes its log lines (stderr).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log shippers).
    Json,
    /// Human-readable lines.
    Text,
}

/// Whether this process logs JSON lines (`--log json`): its own
/// `swoosh: …` lines then go through tracing too, so a log pipeline that
/// parses every stderr line as JSON does not meet plain text.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A line of the command's own: `swoosh: …` on stderr, or under `--log
/// json` a JSON line of the log's shape (`timestamp`, `level`, `target`,
/// `message`). Written directly, not through tracing: `RUST_LOG` filters
/// the log, and these lines (what it serves, where; why it stops; key and
/// store warnings) must show whatever the filter.
pub fn say(msg: std::fmt::Arguments<'_>) {
    say_at("INFO", msg)
}

/// [`say`] for a warning (level `WARN` in JSON; the text says `warning:`
/// itself).
pub fn say_warn(msg: std::fmt::Arguments<'_>) {
    say_at("WARN", msg)
}

/// [`say`] for an error that ends the process (`error: ` in text, level
/// `ERROR` in JSON; text without the `swoosh: ` prefix, as before).
pub fn say_error(msg: std::fmt::Arguments<'_>) {
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        say_at("ERROR", msg)
    } else {
        eprintln!("error: {msg}");
    }
}

fn say_at(level: &str, msg: std::fmt::Arguments<'_>) {
    if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        let line = serde_json::json!({
            // RFC 3339 in UTC with `Z`, as the tracing lines beside it.
            "timestamp": swoosh_core::hlc::format_wall_ms(now_ms()).replace("+00:00", "Z"),
            "level": level,
            "target": "swoosh",
            "message": msg.to_string(),
        });
        eprintln!("{line}");
    } else {
        eprintln!("swoosh: {msg}");
    }
}

pub fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // gossipsub warns once per message it drops for a peer whose send
    // queue is full (`GOSSIP_PEER_QUEUE_MAX`): a peer that stops reading
    // would flood the log. Its errors still show; RUST_LOG overrides.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,libp2p_gossipsub=error"));
    // stderr, beside the command's own `swoosh: …` lines (tracing's
    // default is stdout): one stream keeps their order, and stdout stays
    // free for what a command prints as its result.
    if format == LogFormat::Json {
        JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
        swoosh_net::p2p::bounds::set_log_text_quoting(false);
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
}

pub async fn serve(a: ServeArgs) -> Result<()> {
    init_logs(a.log);
    warn_if_demo_keys(&a.dir);
    let compaction = a.compact.policy()?;
    // Checked before the replay, not after it.
    let p2p_listen = a
        .p2p
        .as_deref()
        .map(|l| {
            l.parse::<swoosh_net::p2p::Multiaddr>().with_context(|| {
                format!("--p2p {l:?} is not a libp2p multiaddr (e.g. /ip4/127.0.0.1/tcp/7800)")
            })
        })
        .transpose()?;
    let (node, listener) = start_node_serving(
        &a.dir,
        a.nosync,
        a.snapshot_every,
        &a.http,
        p2p_listen.as_ref(),
        compaction,
    )
    .await?;
    let p2p = match p2p_listen {
        Some(listen) => {
            let genesis = read_genesis(&a.dir.join(GENESIS_FILE))?;
            let key = read_key(&a.dir.join("node.key"))?;
            let p = crate::p2p_cmd::start_leader_p2p(&node, key, genesis, listen).await?;
            for addr in &p.listen_addrs {
                crate::node::say(format_args!("leader p2p on {addr}/p2p/{}", p.peer_id));
            }
            Some(p)
        }
        None => None,
    };
    let addr = listener.local_addr()?;
    let h = node.health();
    tracing::info!(http = %addr, index = h.index, root_hash = %h.root_hash.map_or("none".to_string(), |x| x.to_string()), "serving");
    crate::node::say(format_args!(
        "serving {} on http://{addr} (index {}, {})",
        a.dir.display(),
        h.index,
        if a.nosync { "NOSYNC: unsafe" } else { "sync" }
    ));
    let served = serve_leader(listener, node, crate::stop_signal()).await;
    if let Some(p) = p2p {
        p.stop();
    }
    served
}

/// Listen on `--http ADDR`, or say why not and what to do (every
/// command's `--http`: serve, p2p leader, follow, agent).
pub async fn bind_http(addr: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "another process is using it: stop it or pick another --http"
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "this host has no such address: pick one of its addresses, or 0.0.0.0"
            }
            std::io::ErrorKind::PermissionDenied => {
                "ports below 1024 need privileges: pick a higher port"
            }
            _ => "give --http as HOST:PORT, e.g. 127.0.0.1:7700",
        };
        anyhow::anyhow!("cannot listen on {addr}: {e}; {hint}")
    })
}

/// Serve `node` over HTTP until `stop` resolves (a signal) or the node gives
/// up restarting its actors. A node that gave up serves nothing more but
/// would keep the process up, "recovering" forever, so the service
/// manager's `Restart=on-failure` never fired: this returns its reason as
/// an error instead, so the process exits non-zero and is started again,
/// which recovers from storage from scratch.
pub async fn serve_leader(
    listener: tokio::net::TcpListener,
    node: NodeHandle<LmdbStore>,
    stop: impl std::future::Future<Output = &'static str> + Send + 'static,
) -> Result<()> {
    let watched = node.clone();
    swoosh_net::http::serve(listener, node.clone(), async move {
        tokio::select! {
            sig = stop => crate::node::say(format_args!("{sig}: shutting down, flushing the WAL")),
            g = watched.given_up() => crate::node::say_error(format_args!("{g}; exiting non-zero so the service manager restarts the process")),
        }
    })
    .await?;
    match node.gave_up() {
        Some(g) => Err(anyhow::Error::new(g).context(
            "the leader stopped: it could not restart its actors (a fresh start recovers from storage)",
        )),
        None => Ok(()),
    }
}

#[derive(Args)]
pub struct ProposeArgs {
    /// Node URL (the leader's), like http://127.0.0.1:7700.
    #[arg(long, visible_alias = "url", default_value = "http://127.0.0.1:7700")]
    pub to: String,
    /// Submit this already signed proposal (JSON) as is.
    #[arg(long, conflicts_with_all = ["transition", "key"])]
    pub file: Option<PathBuf>,
    /// Signing key file.
    #[arg(long)]
    pub key: Option<PathBuf>,
    #[arg(long, default_value = "default")]
    pub project: String,
    #[arg(long)]
    pub transition: Option<String>,
    /// Inputs as a JSON object, or @path to read them from a file.
    #[arg(long, default_value = "{}")]
    pub inputs: String,
    #[arg(long)]
    pub evidence: Vec<String>,
    /// Idempotency key (default: project:transition:<random>).
    #[arg(long)]
    pub idem_key: Option<String>,
    /// Do not re-read HEAD and resubmit after a stale hash.
    #[arg(long)]
    pub no_retry: bool,
    /// Where to write the signed proposal when its outcome is unknown
    /// (default: <tmpdir>/swoosh-proposal-<project>-<idem key>-<8 hex of
    /// the key's hash>.json), to resubmit it with `--file`.
    #[arg(long, conflicts_with = "file")]
    pub save: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    /// Give up after this many seconds, reading HEAD, retries and their
    /// waits included (without it the retries, paced by the node's hints,
    /// can take minutes). A proposal sent by then without an answer is kept
    /// as for any unknown outcome.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: Option<u64>,
}

/// A directory `swoosh demo` wrote holds keys derived from public labels
/// (`demo/leader`, `demo/admin`, …): anyone can sign as its leader or
/// admin. `swoosh serve` on it says so; the demo itself does not go
/// through `serve`.
pub fn warn_if_demo_keys(dir: &Path) {
    let demo = SignerId::from_signing_key(&swoosh_core::sig::key_from_label("demo/leader"));
    if read_key(&dir.join("node.key")).is_ok_and(|k| SignerId::from_signing_key(&k) == demo) {
        tracing::warn!(
            dir = %dir.display(),
            "this node runs with the demo's well-known leader key, derived from a public label: anyone can sign as it. Keep it off any reachable interface; make a real cluster with `swoosh init`"
        );
    }
}

/// Longest part of an idempotency key put in a default `--save` file name.
pub const SAVE_NAME_IDEM_CHARS_MAX: usize = 80;

/// Where an unknown-outcome proposal is written without `--save`: named
/// by its project, its key made safe for a file name, and a hash of the
/// whole key, so that keys which read alike once made safe (`a:1`, `a/1`,
/// or one cut at `SAVE_NAME_IDEM_CHARS_MAX`) or one key in two projects
/// do not overwrite each other's proposal.
pub fn default_save_path(project: &str, idem_key: &str) -> PathBuf {
    let safe: String = idem_key
        .chars()
        .take(SAVE_NAME_IDEM_CHARS_MAX)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let tag = swoosh_core::hash::Hash::of_bytes(idem_key.as_bytes()).to_hex();
    std::env::temp_dir().join(format!(
        "swoosh-proposal-{project}-{safe}-{}.json",
        &tag[..8]
    ))
}

/// The client for `--to`, refusing an address that is not an http:// URL.
fn client_for(to: &str) -> Result<Client> {
    Ok(Client::try_new(to)?)
}

pub async fn propose(a: ProposeArgs) -> Result<()> {
    let json = a.json;
    let mut printed = false;
    let r = propose_run(a, &mut printed).await;
    if let (Err(e), true, false) = (&r, json, printed) {
        // Refused before any request (a file, a key, the inputs): still
        // one object on stdout, as every other failure of `--json`.
        let v = serde_json::json!({
            "error": "usage",
            "message": format!("{e:#}"),
            "status": null,
            "outcome_unknown": false,
            "idempotency_key": null,
            "saved": null,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    r
}

/// [`propose`]; `printed`: whether its `--json` error object was printed.
async fn propose_run(a: ProposeArgs, printed: &mut bool) -> Result<()> {
    let client = match Client::try_new(&a.to) {
        Ok(c) => c,
        Err(e) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&error_json(&e, false, None, None))?
                );
                *printed = true;
            }
            return Err(e.into());
        }
    };
    // The proposal sent and where it is (or is to be) kept, for a hint when
    // the outcome is unknown.
    let mut sent: Option<(swoosh_core::Proposal, Option<PathBuf>)> = None;
    // Whether that proposal's outcome is unknown (a failed read of HEAD
    // for the next round leaves the last one settled: it was stale).
    let mut unknown = false;
    // Known before anything is sent, so `--json` can name it whatever fails.
    let idem_key: Option<String>;
    let reply = if let Some(f) = &a.file {
        let bytes = read_capped(f, swoosh_net::api::BODY_BYTES_MAX).with_context(|| {
            format!(
                "cannot read {} (a signed proposal, at most the API's body limit)",
                f.display()
            )
        })?;
        let p = swoosh_net::http::parse_proposal(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {}", f.display(), e.message))?;
        idem_key = Some(p.idem_key.clone());
        let r = match a.timeout {
            Some(secs) => client
                .submit_retrying_within(&p, std::time::Duration::from_secs(secs))
                .await
                .map(|(r, _)| r),
            None => client.submit_retrying(&p).await.map(|(r, _)| r),
        };
        unknown = r.as_ref().err().is_some_and(|e| e.outcome_unknown());
        sent = Some((p, Some(f.clone())));
        r
    } else {
        let (Some(t), Some(k)) = (&a.transition, &a.key) else {
            bail!("give --transition and --key (or --file with a signed proposal)");
        };
        let key = read_key(k)?;
        let text = match a.inputs.strip_prefix('@') {
            Some(path) => read_capped_text(Path::new(path), swoosh_net::api::BODY_BYTES_MAX)
                .with_context(|| format!("cannot read inputs file {path}"))?,
            None => a.inputs.clone(),
        };
        let inputs: serde_json::Value = serde_json::from_str(&text).context(
            "--inputs is not valid JSON: give a JSON object like '{\"reason\":\"maintenance\"}'",
        )?;
        if !inputs.is_object() {
            bail!("--inputs must be a JSON object (the transition's input fields); `swoosh statechart` lists them");
        }
        let mut rnd = [0u8; 8];
        rand::fill(&mut rnd);
        let idem = a
            .idem_key
            .clone()
            .unwrap_or_else(|| format!("{}:{t}:{}", a.project, hex::encode(rnd)));
        idem_key = Some(idem.clone());
        if a.idem_key.is_none() {
            // Said before anything is sent: the retries below can take
            // minutes, and a run interrupted meanwhile (Ctrl-C, a CI
            // timeout) would otherwise leave no way to retry without
            // risking a second application under a new key.
            eprintln!(
                "idempotency key {idem}: if this command is interrupted before it answers, rerun it with --idem-key {idem} (one key is applied at most once)"
            );
        }
        let req = ProposeRequest {
            project: &a.project,
            transition: t,
            inputs: &inputs,
            key: &key,
            idem_key: idem,
            evidence: a.evidence.clone(),
        };
        match client
            .propose_keeping_last(
                &req,
                RetryPolicy {
                    resubmit_on_stale: !a.no_retry,
                    retry_busy: true,
                    deadline: a.timeout.map(std::time::Duration::from_secs),
                },
            )
            .await
        {
            Ok(p) => Ok(p.reply),
            Err(f) => {
                sent = f.last.map(|p| (p, None));
                unknown = f.unknown;
                Err(f.error)
            }
        }
    };
    match reply {
        Ok(r) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "accepted{}: {} at index {}\n  post hash {}\n  decision  {}",
                    if r.duplicate {
                        " (repeat: original outcome)"
                    } else {
                        ""
                    },
                    r.transition,
                    r.index,
                    r.state_post_hash,
                    r.decision
                );
            }
            Ok(())
        }
        Err(e) => {
            // Kept before `--json` prints, so that `saved` can name the file.
            let kept = match &sent {
                Some((p, file)) if unknown => Some(unknown_outcome_hint(&a, p, file.clone())),
                _ => None,
            };
            if a.json {
                let saved = kept.as_ref().and_then(|k| k.as_ref().ok());
                println!(
                    "{}",
                    serde_json::to_string_pretty(&error_json(
                        &e,
                        unknown,
                        idem_key.as_deref(),
                        saved
                    ))?
                );
                *printed = true;
            }
            if let Some(Err(not_kept)) = kept {
                return Err(not_kept);
            }
            if let Some((p, _)) = sent {
                if !unknown && e.body().is_some_and(|b| b.error == "idem_conflict") {
                    return Err(anyhow::Error::new(e).context(format!(
                        "the idempotency key {:?} was already used for a different proposal: the operation may already be done; see `swoosh state --to {}` and `swoosh decisions`, or pick another --idem-key",
                        p.idem_key, a.to
                    )));
                }
            }
            Err(e.into())
        }
    }
}

/// `propose --json`'s one object on stdout for a failure: the node's error
/// body when it answered (what `--json` printed before), else the client's
/// own `error` class and `message`; with, alike for both, the HTTP
/// `status` (or `null`), whether the outcome is unknown, the idempotency
/// key and the file the signed proposal was kept in (or `null`).
fn error_json(
    e: &ClientError,
    unknown: bool,
    idem_key: Option<&str>,
    saved: Option<&PathBuf>,
) -> serde_json::Value {
    let mut v = match e.body().map(serde_json::to_value) {
        Some(Ok(v)) => v,
        _ => {
            // The class of what ended it, under an unknown-outcome mark.
            let cause = match e {
                ClientError::OutcomeUnknown { last, .. } => last.as_ref(),
                e => e,
            };
            let error = match cause {
                ClientError::Connect {
                    timed_out: true, ..
                } => "client_timeout",
                ClientError::Connect {
                    outcome_unknown: true,
                    ..
                } => "connection_lost",
                ClientError::Connect { .. } => "connect",
                ClientError::Decode { .. } => "decode",
                ClientError::Deadline { .. } => "deadline",
                ClientError::Build(_) => "build",
                ClientError::Usage(_) => "usage",
                _ => "client",
            };
            serde_json::json!({ "error": error, "message": e.to_string() })
        }
    };
    v["status"] = e.status().into();
    v["outcome_unknown"] = unknown.into();
    v["idempotency_key"] = idem_key.into();
    v["saved"] = saved.map(|p| p.display().to_string()).into();
    v
}

/// Say on stderr that the outcome of `p` is unknown, keep it in a file
/// (unless it came from one) and say how to settle it. Returns the file.
fn unknown_outcome_hint(
    a: &ProposeArgs,
    p: &swoosh_core::Proposal,
    file: Option<PathBuf>,
) -> Result<PathBuf> {
    let file = match file {
        Some(f) => f,
        None => {
            let path = a
                .save
                .clone()
                .unwrap_or_else(|| default_save_path(&p.project, &p.idem_key));
            write_json(&path, p).with_context(|| {
                format!(
                    "the outcome of {} (idempotency key {:?}) is unknown, and the signed proposal could not be kept",
                    p.transition, p.idem_key
                )
            })?;
            path
        }
    };
    eprintln!(
        "outcome unknown: {} on {} (idempotency key {:?}) may or may not have been applied.\n  the signed proposal is in {}\n  resubmit it exactly (idempotent): swoosh propose --file {} --to {}\n  or check: swoosh state --to {} --project {}",
        p.transition,
        p.project,
        p.idem_key,
        file.display(),
        file.display(),
        a.to,
        a.to,
        p.project
    );
    Ok(file)
}

#[derive(Args)]
pub struct ReadArgs {
    #[arg(long, visible_alias = "url", default_value = "http://127.0.0.1:7700")]
    pub to: String,
    #[arg(long)]
    pub json: bool,
}

pub async fn state(r: ReadArgs, project: String, projection: Option<String>) -> Result<()> {
    let client = client_for(&r.to)?;
    let proj: Vec<&str> = projection
        .as_deref()
        .map(|p| p.split(',').collect())
        .unwrap_or_default();
    let s = client.state(&project, &proj).await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!(
            "project {} at index {}\nHEAD {}",
            s.project, s.index, s.hash
        );
        let phase = |k: &str| {
            s.projection
                .get(k)
                .and_then(|v| v.get("phase"))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        for k in [
            "meta",
            "boot",
            "ingestion",
            "council",
            "environment",
            "execution",
            "control",
            "policy",
        ] {
            if let Some(p) = phase(k) {
                println!("  {k:<12} {p}");
            }
        }
        if let Some(h) = s.projection.get("hlc_last") {
            println!("  hlc_last     {}", h.as_str().unwrap_or("none"));
        }
    }
    Ok(())
}

pub async fn health(r: ReadArgs) -> Result<()> {
    let client = client_for(&r.to)?;
    let (status, v) = client.health_any().await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{}", render_health(&v)?);
    }
    if !(200..300).contains(&status) {
        bail!(
            "{} answered {status}: the node is {}",
            r.to,
            v["status"].as_str().unwrap_or("not healthy")
        );
    }
    Ok(())
}

/// `swoosh health`'s text: a leader's (`swoosh serve`, `swoosh p2p leader`)
/// or a follower's (`swoosh follow --http`) `/health`, told apart by `role`.
fn render_health(v: &serde_json::Value) -> Result<String> {
    use std::fmt::Write;
    let mut out = String::new();
    // A process still replaying its log after a start: nothing but the
    // progress is known yet (`swoosh_net::recovering`).
    if v["status"] == "recovering" && v["recovery"].is_object() {
        let r = &v["recovery"];
        writeln!(
            out,
            "recovering ({}): {} of {} ({}), {:.0} s so far\n  {}\n  cluster {}, genesis {}",
            v["role"].as_str().unwrap_or("-"),
            r["done"].as_u64().unwrap_or(0),
            r["total"].as_u64().unwrap_or(0),
            r["phase"].as_str().unwrap_or("-"),
            r["seconds"].as_f64().unwrap_or(0.0),
            v["consensus"].as_str().unwrap_or("-"),
            v["cluster_id"].as_str().unwrap_or("-"),
            v["genesis_hash"].as_str().unwrap_or("-"),
        )?;
        return Ok(out.trim_end().to_string());
    }
    match v["role"].as_str() {
        Some("leader") => {
            let h: swoosh_net::api::HealthReply = serde_json::from_value(v.clone())
                .context("the leader's /health does not have the expected shape")?;
            writeln!(
                out,
                "{} ({}), index {}, root {}\n  {}\n  wal lag {} records, in flight {}, actor restarts {}\n  last snapshot at {}",
                h.status,
                h.role,
                h.index,
                h.root_hash.as_deref().unwrap_or("-"),
                h.consensus,
                h.wal_lag,
                h.inflight,
                h.restarts,
                h.last_snapshot_index.map_or("never".to_string(), |i| format!(
                    "index {i} ({})",
                    h.last_snapshot_hlc.as_deref().unwrap_or("-")
                ))
            )?;
            for f in &h.followers {
                let opt = |x: Option<u64>| x.map_or("-".to_string(), |n| n.to_string());
                writeln!(
                    out,
                    "  follower {:<12} {:<12} applied {:>8}  lag {:>6}  {}{}",
                    f.name,
                    if f.connected {
                        "connected"
                    } else {
                        "DISCONNECTED"
                    },
                    opt(f.applied_index),
                    opt(f.lag_records),
                    f.last_report_ms_ago
                        .map_or("no report yet".to_string(), |ms| format!(
                            "last report {ms} ms ago"
                        )),
                    if f.halted { "  HALTED" } else { "" }
                )?;
            }
        }
        Some("follower") => {
            let n = |k: &str| v[k].as_u64().map_or("-".to_string(), |n| n.to_string());
            writeln!(
                out,
                "{} (follower), applied index {} (durable {}), leader index {}, lag {} records / {} ms\n  root {}\n  leader {}\n  undecryptable {}, malformed {}, inbox-full drops {}",
                v["status"].as_str().unwrap_or("-"),
                n("applied_index"),
                n("persisted_index"),
                n("leader_index"),
                n("lag_records"),
                n("lag_ms"),
                v["root_hash"].as_str().unwrap_or("-"),
                v["leader"].as_str().unwrap_or("-"),
                n("undecryptable"),
                n("malformed"),
                n("inbox_full_drops"),
            )?;
            // The leader-shaped fields (absent from older followers).
            if let Some(c) = v["consensus"].as_str() {
                writeln!(
                    out,
                    "  {c}\n  wal lag {} records, last snapshot {}",
                    n("walLag"),
                    v["last_snapshot_index"]
                        .as_u64()
                        .map_or("never".to_string(), |i| format!(
                            "index {i} ({})",
                            v["lastSnapshotHLC"].as_str().unwrap_or("-")
                        ))
                )?;
            }
            if let Some(reason) = v["halted"].as_str() {
                writeln!(out, "  HALTED: {reason}")?;
            }
            for r in v["refusals"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str())
            {
                writeln!(out, "  refused: {r}")?;
            }
        }
        Some("agent") => {
            let n = |k: &str| v[k].as_u64().map_or("-".to_string(), |x| x.to_string());
            writeln!(
                out,
                "{} (council agent {}), peers {}
  announcements {}, votes sent {}, refused {}, malformed {}, inbox drops {}",
                v["status"].as_str().unwrap_or("-"),
                v["signer"].as_str().unwrap_or("-"),
                n("peers"),
                n("announcements"),
                n("votes_sent"),
                n("refused"),
                n("malformed"),
                n("inbox_drops"),
            )?;
            if let Some(r) = v["last_refusal"].as_str() {
                writeln!(out, "  last refusal: {r}")?;
            }
        }
        _ => bail!(
            "this /health names no role swoosh knows (leader, follower or agent): {}",
            serde_json::to_string(v)?
        ),
    }
    Ok(out.trim_end().to_string())
}

pub async fn attention(r: ReadArgs, min_band: Option<String>) -> Result<()> {
    let client = client_for(&r.to)?;
    let a = client.attention(min_band.as_deref()).await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&a)?);
    } else {
        print!("{}", render_attention(&a));
    }
    Ok(())
}

/// The attention digest as a table by band, most important first.
pub fn render_attention(a: &swoosh_net::api::AttentionReply) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let band = |n: &str| a.by_band.get(n).copied().unwrap_or(0);
    let _ = writeln!(
        out,
        "attention: {} fingerprints tracked ({} events all time, session {}): promote {}, investigate {}, watch {}, background {}, ignore-fast {}",
        a.tracked,
        a.observed,
        a.session,
        band("promote"),
        band("investigate"),
        band("watch"),
        band("background"),
        band("ignore-fast"),
    );
    let _ = writeln!(out, "  memory: {}", a.memory_note);
    if a.items.is_empty() {
        let _ = writeln!(
            out,
            "nothing at {} or above: nothing needs a look (use --min-band background to see weaker signals)",
            a.min_band
        );
        return out;
    }
    let mut current = String::new();
    for i in &a.items {
        if i.band != current {
            current = i.band.clone();
            let _ = writeln!(out, "\n{} ({})", current.to_uppercase(), i.level);
        }
        let _ = writeln!(
            out,
            "  {}  {:>6}x  {}{}",
            i.fingerprint,
            i.count,
            i.what,
            if i.seen_before {
                "  [seen before a restart]"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "      why:   {}", i.why);
        let _ = writeln!(out, "      where: {}", i.how_often);
        let subjects: Vec<String> = [
            ("project", &i.projects),
            ("signer", &i.signers),
            ("peer", &i.peers),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| {
            let shown: Vec<&str> = v.iter().take(4).map(String::as_str).collect();
            let more = if v.len() > 4 {
                format!(" +{}", v.len() - 4)
            } else {
                String::new()
            };
            format!("{n}s {}{more}", shown.join(", "))
        })
        .collect();
        if !subjects.is_empty() {
            let _ = writeln!(out, "             {}", subjects.join("; "));
        }
        let _ = writeln!(out, "      next:  {}", i.next);
    }
    out
}

pub async fn decisions(r: ReadArgs, reference: String) -> Result<()> {
    let client = client_for(&r.to)?;
    let d = client.decision(&reference).await?;
    if r.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        let rec = d
            .get("signed")
            .and_then(|s| s.get("record"))
            .or_else(|| d.get("unsigned"))
            .unwrap_or(&d);
        let g = |k: &str| {
            rec.get(k)
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .unwrap_or_default()
        };
        println!(
            "{} #{} {} → {} (project {})",
            g("transition"),
            g("index"),
            g("from"),
            g("to"),
            g("project")
        );
        println!(
            "  signer {} ({})",
            g("signer"),
            rec.get("signer_roles")
                .map(|v| v.to_string())
                .unwrap_or_default()
        );
        println!(
            "  pre {}  post {}",
            g("state_pre_hash"),
            g("state_post_hash")
        );
        println!("  {}", g("justification"));
        if let Some(outs) = rec.get("guard_outcomes").and_then(|v| v.as_array()) {
            for o in outs {
                println!(
                    "  ✓ {:<14} {}",
                    o.get("guard").and_then(|v| v.as_str()).unwrap_or(""),
                    o.get("reasons").map(|v| v.to_string()).unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::render_health;
    use serde_json::json;

    /// A replaced file takes the new mode and content and leaves no
    /// temporary file; `Replace::No` refuses an existing file and keeps it.
    #[test]
    fn an_atomic_write_replaces_the_mode_and_refuses_when_asked() {
        use super::{write_file_atomic, Replace};
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("age.key");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();

        let e = write_file_atomic(&path, b"new", 0o600, Replace::No).unwrap_err();
        assert!(format!("{e:#}").contains("age.key"), "{e:#}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");

        write_file_atomic(&path, b"new", 0o600, Replace::Yes).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the old file's 0644 is not kept");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("age.key")]);

        let fresh = dir.path().join("fresh.key");
        write_file_atomic(&fresh, b"k", 0o600, Replace::No).unwrap();
        assert_eq!(std::fs::read(&fresh).unwrap(), b"k");
    }

    /// The temporary file is never one already there: a file or symlink
    /// planted under the old predictable name (`.<name>.tmp-<pid>`) is left
    /// alone and receives nothing.
    #[test]
    fn an_atomic_write_ignores_a_planted_temporary_name() {
        use super::{write_file_atomic, Replace};
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        let planted = dir
            .path()
            .join(format!(".node.key.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        let path = dir.path().join("node.key");
        write_file_atomic(&path, b"secret", 0o600, Replace::Yes).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        assert!(!target.exists(), "the link's target got the secret");
        assert!(
            planted.symlink_metadata().is_ok(),
            "the planted link is untouched"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".tmp-") && !n.ends_with(&std::process::id().to_string()))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// A key file others can read is named with its mode and the fix; one
    /// `write_key` made (0600) is not; either still reads.
    #[test]
    fn a_secret_file_readable_by_others_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        super::write_key(&path, &key).unwrap();
        assert_eq!(super::exposed_secret(&path), None);
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let w = super::exposed_secret(&path).expect("exposed");
            assert!(w.contains(&format!("mode {mode:04o}")), "{w}");
            assert!(w.contains("chmod 600"), "{w}");
            assert_eq!(super::read_key(&path).unwrap().to_bytes(), key.to_bytes());
        }
    }

    /// A leader that gives up restarting its sequencer used to keep
    /// `swoosh serve` running; it now ends with the reason (non-zero exit).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_ends_with_an_error_once_the_node_gives_up() {
        use std::sync::atomic::AtomicU64;
        use swoosh_core::scenario::{genesis, Keys};
        use swoosh_storage::{LogStore, Space};
        let dir = tempfile::tempdir().expect("temp dir");
        let store = super::open_store(dir.path(), false).expect("store");
        let keys = Keys::from_labels("serve-gives-up", 3);
        let origin_ms = 1_700_000_000_000;
        let cfg = super::NodeConfig {
            genesis: genesis(&keys, "serve-gives-up", origin_ms),
            leader_key: keys.leader.clone(),
            snapshot_every: 0,
            snapshot_keep: 3,
            wal_limits: Default::default(),
            clock: std::sync::Arc::new(swoosh_actors::ManualClock(AtomicU64::new(origin_ms))),
            advertise: String::new(),
            attention_file: None,
            compaction: None,
        };
        let node = super::NodeHandle::start(store, cfg).await.expect("starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let served = tokio::spawn(super::serve_leader(
            listener,
            node.clone(),
            std::future::pending(),
        ));
        // Recovery now refuses the store, at every attempt.
        node.store()
            .clone()
            .overwrite_raw(Space::Meta, b"format", b"not-a-swoosh-store")
            .unwrap();
        node.kill(swoosh_actors::ActorKind::Sequencer);
        // Bound only so a regression fails instead of hanging (giving up
        // takes about seven seconds of backoff).
        let r = tokio::time::timeout(std::time::Duration::from_secs(60), served)
            .await
            .expect("serve returns once the node gave up")
            .expect("the serve task");
        let e = format!("{:#}", r.expect_err("serve ends with an error"));
        assert!(e.contains("could not restart its actors"), "{e}");
        assert!(e.contains("gave up restarting its sequencer"), "{e}");
    }

    #[test]
    fn health_renders_a_recovering_process_by_its_progress() {
        for role in ["leader", "follower"] {
            let v = json!({
                "status": "recovering", "role": role,
                "consensus": "recovering the state from the log: replaying the log (5 of 10 records, 50.0 %), 3 s so far",
                "index": 0, "root_hash": null, "lastSnapshotHLC": null,
                "last_snapshot_index": null, "walLag": 0, "inflight": 0, "restarts": 0,
                "genesis_hash": "blake3:cd", "cluster_id": "c",
                "recovery": {"phase": "replay", "done": 5, "total": 10, "seconds": 3.2}
            });
            let t = render_health(&v).unwrap();
            assert!(
                t.starts_with(&format!(
                    "recovering ({role}): 5 of 10 (replay), 3 s so far"
                )),
                "{t}"
            );
            assert!(t.contains("cluster c, genesis blake3:cd"), "{t}");
        }
    }

    #[test]
    fn health_renders_a_leader_with_its_followers_and_a_halted_follower() {
        let leader = json!({
            "status": "ok", "role": "leader",
            "consensus": "single-writer leader; 1/2 followers following, max lag 0 records",
            "index": 42, "root_hash": "blake3:ab", "lastSnapshotHLC": null,
            "last_snapshot_index": null, "walLag": 0, "inflight": 0, "restarts": 0,
            "genesis_hash": "blake3:cd", "cluster_id": "c",
            "followers": [
                {"name": "follower-1", "key": "k1", "connected": true, "applied_index": 42,
                 "lag_records": 0, "last_report_ms_ago": 120, "halted": false},
                {"name": "follower-2", "key": "k2", "connected": false, "applied_index": null,
                 "lag_records": null, "last_report_ms_ago": null, "halted": false}
            ]
        });
        let t = render_health(&leader).unwrap();
        assert!(t.contains("1/2 followers following"), "{t}");
        assert!(
            t.contains("follower follower-1") && t.contains("last report 120 ms ago"),
            "{t}"
        );
        assert!(
            t.contains("follower-2") && t.contains("DISCONNECTED"),
            "{t}"
        );
        assert!(t.contains("no report yet"), "{t}");

        let follower = json!({
            "role": "follower", "status": "halted", "applied_index": 7, "persisted_index": 7,
            "leader_index": 9, "lag_records": 2, "lag_ms": 1500, "root_hash": "blake3:ef",
            "halted": "divergence at 8: post hash differs", "leader": "/ip4/10.0.0.1/tcp/7800",
            "undecryptable": 0, "malformed": 0, "inbox_full_drops": 0, "wal_commits": 3,
            "refusals": ["bad_signature: the leader's signature does not verify"], "stats": {}
        });
        let t = render_health(&follower).unwrap();
        assert!(t.starts_with("halted (follower), applied index 7 (durable 7), leader index 9, lag 2 records / 1500 ms"), "{t}");
        assert!(t.contains("HALTED: divergence at 8"), "{t}");
        assert!(t.contains("refused: bad_signature"), "{t}");
        let mut follower = follower;
        follower["consensus"] = json!("follower of the single-writer leader at http://10.0.0.1:7700 (/ip4/10.0.0.1/tcp/7800); ALARM: HALTED");
        follower["walLag"] = json!(0);
        follower["last_snapshot_index"] = json!(5);
        follower["lastSnapshotHLC"] = json!("2026-01-01T00:00:00.000+00:00#0");
        let t = render_health(&follower).unwrap();
        assert!(
            t.contains("\n  follower of the single-writer leader at http://10.0.0.1:7700"),
            "{t}"
        );
        assert!(
            t.contains(
                "wal lag 0 records, last snapshot index 5 (2026-01-01T00:00:00.000+00:00#0)"
            ),
            "{t}"
        );

        let e = render_health(&json!({"status": "ok"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("names no role"), "{e}");

        // A council agent's /health (`swoosh health --to` an agent's --http
        // was refused as a role it did not know).
        let agent = swoosh_net::p2p::agent::AgentStatus {
            signer: "hmmm:pubkey:ab".into(),
            peer_id: "12D3KooWx".into(),
            peers: 0,
            council_peers: 0,
            running: true,
            counters: Default::default(),
        }
        .health()
        .1;
        let t = render_health(&agent).unwrap();
        assert!(
            t.starts_with("disconnected (council agent hmmm:pubkey:ab), peers 0"),
            "{t}"
        );
    }
}
