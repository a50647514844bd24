//! A follower's replication: a network task and a worker thread.
//!
//! The network task only polls the swarm: it reassembles WAL gossip chunks
//! (keeping a chunk of a multi-chunk blob only once the genesis leader's
//! signature on it verifies, [`envelope`]) and hands complete sealed
//! messages and the leader's responses to the worker through a bounded
//! inbox, and sends the requests the worker asks for. The worker decrypts
//! with the follower's age identity, feeds [`ReplFollower`] (which re-runs
//! the reducer on every record), and persists what was applied to the
//! follower's own WAL, coalescing everything that arrived meanwhile into
//! one group commit.
//!
//! Why split: applying and fsyncing on the swarm task stalled the swarm, so
//! gossip backed up behind the follower's work, messages were dropped and
//! the follower fell back to slow range catch-up.

use super::bounds::{clip, QueuedBytes, WarnLimiter};
use super::envelope::{self, Reassembler};
use super::{
    agent_version, build_swarm, check_handshake, ms_since, peer_id_of, wal_topic, P2pError,
};
use super::{Behaviour, BehaviourEvent};
use crate::proto::follower::{
    Divergence, FollowerConfig, FollowerEffect, RefusedMessage, ReplFollower,
};
use crate::proto::wire::{self, Bytes};
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::request_response::{self, Message};
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, Multiaddr, PeerId, Swarm};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use swoosh_core::hlc::Hlc;
use swoosh_core::sig::SignerId;
use swoosh_core::state::Genesis;
use swoosh_storage::{BatchLimits, EncodedEntry, Entry, LogStore, ProgressCell, WalWriter};

/// The name of the follower's worker thread (for per-thread CPU accounting).
pub const WORKER_THREAD: &str = "swoosh-follower";
/// The name of the thread that writes a follower's own snapshot and
/// compacts its log beside the worker (at most 15 characters: Linux's limit).
pub const UPKEEP_THREAD: &str = "swoosh-f-upkeep";
/// How often the follower ticks its protocol (request timeouts, gaps).
pub const TICK_MS: u64 = 50;
/// How often a lost connection to the leader is dialled again.
pub const REDIAL_MS: u64 = 1_000;
/// How often the follower reports its position to the leader.
pub const STATUS_EVERY_MS: u64 = 500;
/// Refusal reasons kept for the health view.
pub const REFUSALS_KEPT: usize = 16;
/// Complete sealed gossip messages waiting for the worker. When it is full
/// the network task drops the message (counted in `inbox_full_drops`); the
/// protocol fetches what was lost by range.
pub const INBOX_MAX: usize = 1_024;
/// The leader's responses waiting for the worker, in a lane of their own
/// that the worker empties first: any peer of the mesh can fill the gossip
/// lane (junk chunks, replayed ciphertexts), and a response dropped or
/// stuck behind that is the catch-up the follower is waiting for. They
/// answer the follower's own requests, at most [`OUTBOX_MAX`] at a time.
pub const RESPONSE_INBOX_MAX: usize = OUTBOX_MAX;
/// Bytes of the responses waiting, at most: 16 range answers of the
/// largest size ([`wire::RANGE_BYTES_MAX`], 1 MiB).
pub const RESPONSE_INBOX_BYTES_MAX: usize = 16 << 20;
/// Bytes of the messages waiting in the worker's inbox, at most: a message
/// that does not fit is dropped as when [`INBOX_MAX`] is reached. Without
/// it the inbox could hold `INBOX_MAX` ciphertexts of up to
/// [`envelope::BLOB_BYTES_MAX`] (2 MiB) each, 2 GiB. 64 MiB is 32 blobs of
/// the largest size, and thousands of ordinary batches (at most
/// `BATCH_BYTES_MAX` = 48 KiB of records each).
pub const INBOX_BYTES_MAX: usize = 64 << 20;
/// Requests the worker asked for, waiting for the network task.
pub const OUTBOX_MAX: usize = 64;
/// The worker commits what it applied at least this often while messages
/// keep arriving (a bound on the lag its group commits add)...
pub const COALESCE_MS: u64 = 5;
/// ...or once this many records wait, whichever comes first.
pub const COALESCE_RECORDS_MAX: usize = 512;

/// Counters the network task keeps without taking the shared lock (the
/// worker holds it while it applies, and the swarm must never wait on that).
#[derive(Default, Debug)]
pub struct NetCounters {
    pub gossip_chunks: AtomicU64,
    /// Chunks the reassembler refused: malformed, of another chunk format,
    /// or not signed by the genesis leader.
    pub malformed_chunks: AtomicU64,
    /// Messages dropped because the worker had stopped (see `/health`).
    pub worker_stopped_drops: AtomicU64,
    /// Messages dropped because the worker's inbox was full (it held
    /// [`INBOX_MAX`] messages, or the message did not fit in
    /// [`INBOX_BYTES_MAX`]).
    pub inbox_full_drops: AtomicU64,
    pub leader_connected: AtomicBool,
    /// The last index durable in this follower's WAL; atomic so a watcher
    /// polling for durability never contends with the worker's lock.
    pub persisted_index: AtomicU64,
}

/// The follower's state as its HTTP surface and tests see it.
pub struct FollowerShared {
    pub repl: ReplFollower,
    pub net: Arc<NetCounters>,
    pub decrypted: u64,
    /// Complete gossip messages this follower could not decrypt.
    pub undecryptable: u64,
    pub malformed: u64,
    /// Group commits of the follower's WAL, and the records they held.
    pub commits: u64,
    pub committed_records: u64,
    /// Each group commit's duration (fsyncs included) and record count, as
    /// the leader's `swoosh_fsync_latency_seconds` and
    /// `swoosh_commit_batch_records` (same buckets).
    pub commit_seconds: super::hist::Hist,
    pub commit_records: super::hist::Hist,
    /// Snapshots installed into this follower's store (late join, far behind).
    pub snapshots_installed: u64,
    /// How full this follower's store was after its last commit.
    pub store_usage: Option<swoosh_storage::StoreUsage>,
    /// When the process began to start (Unix seconds).
    pub start_time_s: u64,
    /// Automatic compactions of this follower's log (`--archive-dir`), by
    /// outcome, and the records they archived.
    pub compactions_ok: u64,
    pub compactions_failed: u64,
    pub compacted_records: u64,
    /// This follower's own snapshots (`FollowerOptions::snapshot_every`), by
    /// outcome. A failed one is retried an interval later; the log still
    /// holds everything.
    pub snapshots_ok: u64,
    pub snapshots_failed: u64,
    /// The WAL base: records at or below it were cut by a compaction or
    /// replaced by an installed leader snapshot (0: the log starts at 1).
    pub wal_base_index: u64,
    /// What is wrong with the snapshot at the WAL base, as found after this
    /// follower's last snapshot (`None`: sound, or no base).
    pub base_snapshot_fault: Option<String>,
    /// The newest snapshot in this follower's store, `(index, its HLC)`:
    /// the one recovery started from, the leader's it installed since, or
    /// its own (every `FollowerOptions::snapshot_every` records).
    /// `/health`'s `lastSnapshotHLC`.
    pub last_snapshot: Option<(u64, Option<swoosh_core::hlc::Hlc>)>,
    /// The last [`REFUSALS_KEPT`] refusals, `kind: reason`, each reason
    /// clipped to [`super::bounds::LOG_FIELD_CHARS_MAX`] characters (it may
    /// quote a peer's text).
    pub last_refusals: Vec<String>,
    pub halted_reason: Option<String>,
    pub leader_connected: bool,
    /// Where the leader was dialled (for 503 answers).
    pub leader_addr: String,
    /// Wall-clock ms of the last applied record (for lag in ms).
    pub last_applied_ms: u64,
    /// Addresses this follower listens on (when it was given `listen`).
    pub listen_addrs: Vec<Multiaddr>,
}

/// Lock the follower's shared state, also after a thread panicked while
/// holding it. The worker applies a record on the side and installs it in
/// one step, so a poisoned state is still one the follower reached; and a
/// panicking worker marks the follower halted ([`run_guarded`]), so the HTTP
/// surface goes on answering (with the halt in `/health`) instead of
/// panicking on every request.
pub fn lock_shared(m: &Mutex<FollowerShared>) -> MutexGuard<'_, FollowerShared> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Run the worker; if it panics (a bug, never expected from input, which
/// is refused with a reason), record the halt where `/health` and the
/// leader's status reports show it, and log it, instead of dying silently.
fn run_guarded(shared: &Mutex<FollowerShared>, work: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        let what = panic_message(&*panic);
        let reason = format!(
            "the follower's worker stopped on an internal error ({what}); it applies nothing more. Restart the follower: it resumes from its own WAL"
        );
        tracing::error!(%reason, "follower halted");
        lock_shared(shared).halted_reason = Some(reason);
    }
}

impl FollowerShared {
    /// The last index durable in this follower's WAL.
    pub fn persisted_index(&self) -> u64 {
        self.net.persisted_index.load(Ordering::Acquire)
    }

    fn new(
        repl: ReplFollower,
        net: Arc<NetCounters>,
        persisted_index: u64,
        leader_addr: String,
    ) -> FollowerShared {
        net.persisted_index
            .store(persisted_index, Ordering::Release);
        FollowerShared {
            repl,
            net,
            decrypted: 0,
            undecryptable: 0,
            malformed: 0,
            commits: 0,
            committed_records: 0,
            commit_seconds: super::hist::Hist::exponential(0.000_02, 2.0, 18),
            commit_records: super::hist::Hist::exponential(1.0, 2.0, 14),
            snapshots_installed: 0,
            store_usage: None,
            start_time_s: 0,
            compactions_ok: 0,
            compactions_failed: 0,
            snapshots_ok: 0,
            snapshots_failed: 0,
            wal_base_index: 0,
            base_snapshot_fault: None,
            compacted_records: 0,
            last_snapshot: None,
            last_refusals: vec![],
            halted_reason: None,
            leader_connected: false,
            leader_addr,
            last_applied_ms: now_wall_ms(),
            listen_addrs: vec![],
        }
    }
}

pub struct FollowerP2p {
    pub peer_id: PeerId,
    pub shared: Arc<Mutex<FollowerShared>>,
    task: tokio::task::JoinHandle<()>,
    stop: Arc<AtomicBool>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl FollowerP2p {
    /// Stop the swarm and the worker. Returns once the worker has persisted
    /// what it applied and released the store (at most one tick plus the
    /// batch in hand, and a snapshot write or compaction step in progress:
    /// a compaction stops between steps), so the store may be opened again
    /// at once.
    pub fn stop(&self) {
        self.task.abort();
        self.stop.store(true, Ordering::SeqCst);
        let handle = self.worker.lock().map(|mut w| w.take()).unwrap_or(None);
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!("the follower's worker thread panicked");
            }
        }
    }
    pub fn applied_index(&self) -> u64 {
        lock_shared(&self.shared).repl.applied_index()
    }
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        lock_shared(&self.shared).listen_addrs.clone()
    }
    pub fn root_hash(&self) -> swoosh_core::hash::Hash {
        lock_shared(&self.shared).repl.node().root_hash()
    }
}

impl Drop for FollowerP2p {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct FollowerOptions {
    pub key: SigningKey,
    pub genesis: Genesis,
    pub age_identity: age::x25519::Identity,
    pub leader: Multiaddr,
    /// Optional listen address (other peers may relay through this one).
    pub listen: Option<Multiaddr>,
    /// Write a snapshot of the durable state every this many records (0:
    /// never), keeping [`FOLLOWER_SNAPSHOTS_KEEP`]: a restart then replays
    /// from the newest one, not from the log's start.
    pub snapshot_every: u64,
    /// Compact the follower's own log after a snapshot, as the leader does
    /// (`swoosh follow --archive-dir`).
    pub compaction: Option<swoosh_actors::CompactionPolicy>,
}

/// A follower's default snapshot cadence (the leader's default too).
pub const FOLLOWER_SNAPSHOT_EVERY_DEFAULT: u64 = 10_000;
/// Snapshots a follower keeps.
pub const FOLLOWER_SNAPSHOTS_KEEP: usize = swoosh_storage::SNAPSHOTS_KEEP_DEFAULT;

/// The follower's recovered node and the snapshot it started from (index,
/// HLC), and the store back.
type FollowerRecovery<S> = (S, swoosh_core::state::NodeState, Option<(u64, Option<Hlc>)>);

fn recover_follower<S: LogStore>(
    store: S,
    genesis: &Genesis,
    progress: &ProgressCell,
) -> Result<FollowerRecovery<S>, P2pError> {
    // log_end, not last_index: a store based on an installed snapshot may
    // hold no record yet and still be far from genesis.
    if swoosh_storage::log_end(&store).map_err(|e| P2pError::Storage(e.to_string()))? == 0 {
        let node = swoosh_core::state::NodeState::new(genesis.clone())
            .map_err(|e| P2pError::Config(e.to_string()))?;
        return Ok((store, node, None));
    }
    let rec = swoosh_storage::recover_with(
        &store,
        genesis,
        &swoosh_storage::RecoverOptions::default(),
        &mut |p| progress.observe(p),
    )
    .map_err(|e| P2pError::Storage(e.to_string()))?;
    // The HLC from the header alone (for `/health` only: a damaged
    // header shows none rather than failing the start).
    let snap = rec.snapshot.map(|i| {
        let hlc = if i == rec.node.index {
            rec.node.hlc
        } else {
            swoosh_storage::snapshot::read_snapshot_head(&store, i)
                .ok()
                .and_then(|h| h.hlc)
        };
        (i, hlc)
    });
    Ok((store, rec.node, snap))
}

/// What `/health` and the log say about a halt recorded before this start.
fn held_halt_reason(m: &swoosh_storage::HaltMarker) -> String {
    format!(
        "divergence at {}: {} (recorded at {} ms since the epoch and held across restarts; \
         find the cause as docs/runbooks/replication-triage.md says, then start this follower \
         with `swoosh follow --clear-halt` or move its data/ away to rebuild it from the leader)",
        m.index, m.reason, m.at_ms
    )
}

fn now_wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Recover the follower's node from `store`, then start its swarm.
pub async fn spawn_follower<S: LogStore + Send + 'static>(
    store: S,
    opts: FollowerOptions,
) -> Result<FollowerP2p, P2pError> {
    spawn_follower_observed(store, opts, Arc::new(ProgressCell::new())).await
}

/// [`spawn_follower`], reporting the recovery's progress into `progress`
/// (read by whatever answers `/health` while the follower recovers).
pub async fn spawn_follower_observed<S: LogStore + Send + 'static>(
    store: S,
    opts: FollowerOptions,
    progress: Arc<ProgressCell>,
) -> Result<FollowerP2p, P2pError> {
    let progress_in = progress.clone();
    let FollowerOptions {
        key,
        genesis,
        age_identity,
        leader,
        listen,
        snapshot_every,
        compaction,
    } = opts;
    if compaction.is_some() && snapshot_every == 0 {
        return Err(P2pError::Config(
            "a follower compacts its log after its own snapshots: with compaction set, \
             snapshot_every must be above 0 (swoosh follow --snapshot-every N)"
                .into(),
        ));
    }
    if compaction.as_ref().is_some_and(|p| p.keep_records == 0) {
        // The compaction runs beside the WAL writer: a cut through the last
        // record would move the log's start under the writer's tail.
        return Err(P2pError::Config(
            "a follower's compaction keeps at least one record before its snapshot: \
             keep_records must be above 0 (swoosh follow --compact-keep-records N)"
                .into(),
        ));
    }
    let gh = genesis
        .hash()
        .map_err(|e| P2pError::Config(e.to_string()))?;
    // The listen port is held through recovery, as a leader's is: a port
    // in use fails before the replay, not after it.
    let reserved = listen
        .as_ref()
        .map(super::reserve_listen_port)
        .transpose()?;
    // Off the runtime: a long replay would hold one of its workers (and
    // the HTTP port that answers `recovering` meanwhile runs on them).
    let g = genesis.clone();
    let ((store, node, last_snapshot), base_fault) = tokio::task::spawn_blocking(move || {
        let r = recover_follower(store, &g, &progress_in)?;
        // Recovery started from a newer snapshot: a store that cannot read
        // the base's does not stop the start (the regular check goes on).
        let fault = swoosh_storage::base_snapshot_fault(&r.0).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot check the snapshot at the WAL base");
            None
        });
        Ok::<_, P2pError>((r, fault))
    })
    .await
    .map_err(|e| P2pError::Storage(format!("the recovery task failed: {e}")))??;
    let writer = WalWriter::open(store, gh, BatchLimits::default())
        .map_err(|e| P2pError::Storage(e.to_string()))?;
    if writer.last_index() != node.index {
        return Err(P2pError::Storage(format!(
            "recovered index {} but the WAL ends at {}",
            node.index,
            writer.last_index()
        )));
    }
    let id = SignerId::from_signing_key(&key);
    let leader_peer = peer_id_of(&genesis.leader)
        .ok_or_else(|| P2pError::Config("the genesis leader key is not an ed25519 key".into()))?;
    // The chunks of a multi-chunk gossip blob must carry the signature of
    // the key that signs the batch headers inside: `genesis.leader`.
    let mut reasm = Reassembler::new(&genesis.leader, gh)
        .map_err(|e| P2pError::Config(format!("the genesis leader key: {e}")))?;
    let agent = agent_version(&genesis);
    let mut swarm = build_swarm(&key, agent.clone())?;
    let topic = wal_topic(&genesis.cluster_id);
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&topic)
        .map_err(|e| P2pError::Libp2p(e.to_string()))?;
    drop(reserved);
    if let Some(l) = &listen {
        super::listen_exclusive(&mut swarm, l)?;
    }
    swarm
        .dial(leader.clone())
        .map_err(|e| P2pError::Libp2p(format!("cannot dial the leader at {leader}: {e}")))?;
    let persisted = writer.last_index();
    reasm.held_through(persisted);
    let halt = swoosh_storage::recorded_halt(writer.store())
        .map_err(|e| P2pError::Storage(e.to_string()))?;
    let mut repl = ReplFollower::new(
        FollowerConfig {
            gap_grace_ms: crate::proto::follower::GAP_GRACE_MS,
            ..FollowerConfig::default()
        },
        id,
        node,
    );
    let held_reason = halt.map(|m| {
        let reason = held_halt_reason(&m);
        tracing::error!(index = m.index, "ALARM: {reason}");
        repl.resume_halted(Divergence {
            index: m.index,
            reason: m.reason,
            record: None,
        });
        reason
    });
    let net = Arc::new(NetCounters::default());
    let mut fs = FollowerShared::new(repl, net.clone(), persisted, leader.to_string());
    fs.halted_reason = held_reason;
    let snapshot_at = last_snapshot.map_or(0, |(i, _)| i);
    fs.last_snapshot = last_snapshot;
    fs.store_usage = writer.store().usage();
    fs.wal_base_index = swoosh_storage::wal_base(writer.store())
        .map_err(|e| P2pError::Storage(e.to_string()))?
        .map_or(0, |b| b.index);
    // At every start too: recovery started from a newer snapshot whatever
    // the base's holds.
    fs.base_snapshot_fault = base_fault;
    if let Some(why) = &fs.base_snapshot_fault {
        tracing::error!(fault = %why, "ALARM: the snapshot at the WAL base is damaged; it is the only proof of the records this follower archived: stop it and run `swoosh snapshot rebuild-base` with its archives, or move its data/ away to rebuild it from the leader");
    }
    fs.start_time_s = progress.started_unix_seconds();
    let shared = Arc::new(Mutex::new(fs));
    let peer_id = *swarm.local_peer_id();
    let t0 = Instant::now();
    let (inbox, inbox_rx) = inbox(INBOX_MAX, INBOX_BYTES_MAX);
    let (outbox, outbox_rx) = tokio::sync::mpsc::channel(OUTBOX_MAX);
    let stop = Arc::new(AtomicBool::new(false));
    let mut w = Worker {
        writer,
        identity: age_identity,
        shared: shared.clone(),
        outbox,
        net: net.clone(),
        t0,
        pending: vec![],
        persist_failed: false,
        warn: WarnLimiter::default(),
        upkeep: Upkeep {
            genesis: genesis.clone(),
            snapshot_every,
            snapshot_at,
            compaction,
            stopping: false,
            job: None,
        },
    };
    let worker_stop = stop.clone();
    let guard_shared = shared.clone();
    let worker = std::thread::Builder::new()
        .name(WORKER_THREAD.into())
        .spawn(move || run_guarded(&guard_shared, move || w.run(inbox_rx, &worker_stop)))
        .map_err(|e| P2pError::Config(format!("cannot start the follower's worker: {e}")))?;
    let mut t = FollowerTask {
        swarm,
        inbox,
        outbox: outbox_rx,
        reasm,
        leader_peer,
        leader_addr: leader,
        agent,
        topic_hash: topic.hash(),
        shared: shared.clone(),
        net,
        t0,
        warn: WarnLimiter::default(),
    };
    let task = tokio::spawn(async move { t.run().await });
    Ok(FollowerP2p {
        peer_id,
        shared,
        task,
        stop,
        worker: Mutex::new(Some(worker)),
    })
}

/// What the network task hands the worker.
enum Input {
    /// A reassembled, still sealed WAL gossip message.
    Sealed(Vec<u8>),
    /// A response from the leader, undecoded.
    Response(Vec<u8>),
    /// Queued in the gossip lane with each response, so a worker waiting
    /// on that lane looks at the response lane; carries nothing.
    Wake,
}

impl Input {
    /// The bytes it holds (what it counts against its lane's byte bound).
    fn bytes(&self) -> usize {
        match self {
            Input::Sealed(b) | Input::Response(b) => b.len(),
            Input::Wake => 0,
        }
    }
}

/// One lane of the worker's inbox, bounded in messages (by its channel)
/// and in bytes.
struct Lane {
    tx: SyncSender<Input>,
    bytes: QueuedBytes,
}

/// The worker's inbox: the network task's end. Gossip and the leader's
/// responses travel in separate lanes, responses first.
struct InboxTx {
    tx: SyncSender<Input>,
    bytes: QueuedBytes,
    responses: Lane,
    /// Set once the worker's end is gone (see [`InboxRx`]'s `Drop`).
    stopped: Arc<AtomicBool>,
}

/// The worker's end: taking a message releases its bytes.
struct InboxRx {
    rx: Receiver<Input>,
    bytes: QueuedBytes,
    responses: Receiver<Input>,
    response_bytes: QueuedBytes,
    stopped: Arc<AtomicBool>,
}

/// A worker that stopped (returned or panicked) leaves messages queued:
/// without this their bytes stayed reserved for good, so every later
/// message was refused as "bytes" (a full inbox) instead of "stopped".
impl Drop for InboxRx {
    fn drop(&mut self) {
        // First: from here on `InboxTx::offer` queues nothing. A message
        // racing this drop may still slip in after the drain and keep its
        // bytes; the inbox is refusing everything by then anyway.
        self.stopped.store(true, Ordering::Release);
        while let Ok(m) = self.rx.try_recv() {
            self.bytes.release(m.bytes());
        }
        while let Ok(m) = self.responses.try_recv() {
            self.response_bytes.release(m.bytes());
        }
    }
}

fn inbox(messages_max: usize, bytes_max: usize) -> (InboxTx, InboxRx) {
    let (tx, rx) = sync_channel(messages_max);
    let bytes = QueuedBytes::new(bytes_max);
    let (rtx, rrx) = sync_channel(RESPONSE_INBOX_MAX);
    let response_bytes = QueuedBytes::new(RESPONSE_INBOX_BYTES_MAX);
    let stopped = Arc::new(AtomicBool::new(false));
    (
        InboxTx {
            tx,
            bytes: bytes.clone(),
            responses: Lane {
                tx: rtx,
                bytes: response_bytes.clone(),
            },
            stopped: stopped.clone(),
        },
        InboxRx {
            rx,
            bytes,
            responses: rrx,
            response_bytes,
            stopped,
        },
    )
}

/// Why the inbox did not take a message.
#[derive(Debug, PartialEq, Eq)]
enum NotQueued {
    /// [`INBOX_MAX`] messages wait.
    Messages,
    /// The message does not fit in [`INBOX_BYTES_MAX`].
    Bytes,
    /// The worker has stopped.
    Stopped,
}

/// Queue `m` in `tx` if it fits both bounds; never blocks.
fn offer_to(tx: &SyncSender<Input>, bytes: &QueuedBytes, m: Input) -> Result<(), NotQueued> {
    let n = m.bytes();
    if !bytes.try_reserve(n) {
        return Err(NotQueued::Bytes);
    }
    let refused = match tx.try_send(m) {
        Ok(()) => return Ok(()),
        Err(TrySendError::Full(_)) => NotQueued::Messages,
        Err(TrySendError::Disconnected(_)) => NotQueued::Stopped,
    };
    bytes.release(n);
    Err(refused)
}

impl InboxTx {
    /// Queue `m` in its lane if it fits that lane's bounds; never blocks.
    fn offer(&self, m: Input) -> Result<(), NotQueued> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(NotQueued::Stopped);
        }
        if !matches!(m, Input::Response(_)) {
            return offer_to(&self.tx, &self.bytes, m);
        }
        offer_to(&self.responses.tx, &self.responses.bytes, m)?;
        // A full gossip lane needs no wake: the worker is not waiting, and
        // it looks at the responses before each gossip message it takes.
        let _ = self.tx.try_send(Input::Wake);
        Ok(())
    }
}

impl InboxRx {
    fn response(&self) -> Option<Input> {
        let m = self.responses.try_recv().ok()?;
        self.response_bytes.release(m.bytes());
        Some(m)
    }

    /// The next message, a waiting response first.
    fn recv_timeout(&self, timeout: Duration) -> Result<Input, RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.response() {
                return Ok(r);
            }
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(Input::Wake) => continue,
                Ok(m) => {
                    self.bytes.release(m.bytes());
                    return Ok(m);
                }
                Err(e) => return self.response().ok_or(e),
            }
        }
    }

    fn try_recv(&self) -> Option<Input> {
        loop {
            if let Some(r) = self.response() {
                return Some(r);
            }
            match self.rx.try_recv().ok()? {
                Input::Wake => continue,
                m => {
                    self.bytes.release(m.bytes());
                    return Some(m);
                }
            }
        }
    }
}

/// Hand `m` to the worker through `inbox`. Never blocks the swarm: a
/// message that does not fit (in messages or in bytes) is dropped and
/// counted, and the protocol fetches what it carried once the worker
/// catches up (a lost batch leaves a gap it asks for by range, a lost
/// response times its request out and it is asked again, §19.3 of
/// docs/wire-format.md). The warning is rate-limited.
fn hand_over(inbox: &InboxTx, m: Input, net: &NetCounters, warn: &mut WarnLimiter, now_ms: u64) {
    let response = matches!(m, Input::Response(_));
    let why = match inbox.offer(m) {
        Ok(()) => return,
        Err(NotQueued::Stopped) => {
            // Once per message would be a line per gossip chunk for as
            // long as the process runs; `/health` holds the halt's reason.
            net.worker_stopped_drops.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = warn.check("worker_stopped", now_ms) {
                tracing::error!(
                    suppressed,
                    "the follower's worker has stopped: dropping what the leader sends; restart the follower (it resumes from its own WAL)"
                );
            }
            return;
        }
        Err(NotQueued::Messages) => "messages",
        Err(NotQueued::Bytes) => "bytes",
    };
    net.inbox_full_drops.fetch_add(1, Ordering::Relaxed);
    if response {
        if let Some(suppressed) = warn.check("response_inbox_full", now_ms) {
            tracing::warn!(
                full = why,
                queued_bytes = inbox.responses.bytes.queued(),
                suppressed,
                "the follower's worker is behind on the leader's responses (at most {RESPONSE_INBOX_MAX} and {} bytes wait): dropping one, its request is sent again",
                inbox.responses.bytes.max()
            );
        }
        return;
    }
    if let Some(suppressed) = warn.check("inbox_full", now_ms) {
        tracing::warn!(
            full = why,
            queued_bytes = inbox.bytes.queued(),
            suppressed,
            "the follower's worker is behind (its inbox holds at most {INBOX_MAX} messages and {} bytes): dropping gossip, it catches up by range",
            inbox.bytes.max()
        );
    }
}

/// A gossip chunk the reassembler refused: counted, and logged
/// (rate-limited per kind: any peer of the mesh may send chunks).
fn chunk_refused(
    net: &NetCounters,
    warn: &mut WarnLimiter,
    e: &envelope::EnvelopeError,
    now_ms: u64,
) {
    net.malformed_chunks.fetch_add(1, Ordering::Relaxed);
    let kind = e.kind();
    if let Some(suppressed) = warn.check(kind, now_ms) {
        let text = e.to_string();
        tracing::warn!(kind, reason = ?clip(&text), suppressed, "refused a gossip chunk");
    }
}

struct FollowerTask {
    swarm: Swarm<Behaviour>,
    inbox: InboxTx,
    outbox: tokio::sync::mpsc::Receiver<wire::Request>,
    reasm: Reassembler,
    leader_peer: PeerId,
    leader_addr: Multiaddr,
    agent: String,
    topic_hash: gossipsub::TopicHash,
    shared: Arc<Mutex<FollowerShared>>,
    net: Arc<NetCounters>,
    t0: Instant,
    warn: WarnLimiter,
}

impl FollowerTask {
    async fn run(&mut self) {
        let mut redial = tokio::time::interval(Duration::from_millis(REDIAL_MS));
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_event(ev),
                Some(req) = self.outbox.recv() => self.send(&req),
                _ = redial.tick() => {
                    if !self.swarm.is_connected(&self.leader_peer) {
                        let _ = self.swarm.dial(self.leader_addr.clone());
                    }
                }
            }
        }
    }

    fn on_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                check_handshake(&mut self.swarm, &self.agent, peer_id, &info);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                message,
                ..
            })) if message.topic == self.topic_hash => self.on_chunk(&message.data),
            SwarmEvent::Behaviour(BehaviourEvent::Rr(request_response::Event::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            })) if peer == self.leader_peer => self.hand_to_worker(Input::Response(response.0)),
            SwarmEvent::Behaviour(BehaviourEvent::Rr(request_response::Event::Message {
                message: Message::Request { channel, .. },
                ..
            })) => {
                // Followers serve nothing.
                let resp = wire::encode_response(&wire::Response::Refused {
                    reason: "followers do not serve the log; ask the leader".into(),
                })
                .unwrap_or_default();
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .rr
                    .send_response(channel, Bytes(resp));
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                lock_shared(&self.shared).listen_addrs.push(address);
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == self.leader_peer => {
                tracing::info!(leader = %peer_id, "connected to the leader");
                self.net.leader_connected.store(true, Ordering::SeqCst);
            }
            SwarmEvent::ConnectionClosed { peer_id, .. } if peer_id == self.leader_peer => {
                let connected = self.swarm.is_connected(&self.leader_peer);
                self.net.leader_connected.store(connected, Ordering::SeqCst);
                if !connected {
                    tracing::warn!(leader = %peer_id, "lost the connection to the leader; redialling");
                }
            }
            _ => {}
        }
    }

    fn on_chunk(&mut self, data: &[u8]) {
        self.net.gossip_chunks.fetch_add(1, Ordering::Relaxed);
        // Chunks of blobs whose records are durable here are stale (a
        // late copy, or a peer replaying the leader's old chunks).
        self.reasm
            .held_through(self.net.persisted_index.load(Ordering::Acquire));
        match self.reasm.push(data) {
            Ok(Some(ct)) => self.hand_to_worker(Input::Sealed(ct)),
            Ok(None) => {}
            Err(e) => chunk_refused(&self.net, &mut self.warn, &e, ms_since(self.t0)),
        }
    }

    /// Never blocks the swarm ([`hand_over`]).
    fn hand_to_worker(&mut self, m: Input) {
        let now = ms_since(self.t0);
        hand_over(&self.inbox, m, &self.net, &mut self.warn, now);
    }

    fn send(&mut self, req: &wire::Request) {
        match wire::encode_request(req) {
            Ok(b) => {
                let leader = self.leader_peer;
                self.swarm
                    .behaviour_mut()
                    .rr
                    .send_request(&leader, Bytes(b));
            }
            Err(e) => tracing::error!("cannot encode a request: {e}"),
        }
    }
}

/// An applied record waiting for its group commit, with the encoding and
/// proposal hash the protocol computed (so persisting encodes nothing again).
struct Applied {
    entry: Entry,
    bytes: Vec<u8>,
    content_hash: swoosh_core::hash::Hash,
}

/// The follower's worker thread: protocol, reducer and WAL.
struct Worker<S: LogStore> {
    writer: WalWriter<S>,
    identity: age::x25519::Identity,
    shared: Arc<Mutex<FollowerShared>>,
    outbox: tokio::sync::mpsc::Sender<wire::Request>,
    net: Arc<NetCounters>,
    t0: Instant,
    /// Applied and not yet durable: committed together once the inbox is
    /// drained, or when a group commit is full.
    pending: Vec<Applied>,
    persist_failed: bool,
    /// Rate limit of the per-message warnings (refusals, undecodable input).
    warn: WarnLimiter,
    upkeep: Upkeep,
}

/// The follower's own snapshots and compaction.
struct Upkeep {
    genesis: Genesis,
    snapshot_every: u64,
    /// Index of the newest snapshot written, tried or recovered from.
    snapshot_at: u64,
    compaction: Option<swoosh_actors::CompactionPolicy>,
    stopping: bool,
    /// The snapshot and compaction running beside the worker (a store with
    /// concurrent handles); at most one at a time.
    job: Option<UpkeepJob>,
}

struct UpkeepJob {
    handle: std::thread::JoinHandle<()>,
    /// Set to end the job's compaction before its next step (a stop, or an
    /// installed leader snapshot that moves the base).
    cancel: Arc<AtomicBool>,
}

impl Upkeep {
    /// Wait for the job running beside the worker, if any (`cancel`: end
    /// its compaction before the next step).
    fn end_job(&mut self, cancel: bool) {
        let Some(j) = self.job.take() else {
            return;
        };
        if cancel {
            j.cancel.store(true, Ordering::SeqCst);
        }
        // Its work catches its own panics; this is only the thread itself.
        if j.handle.join().is_err() {
            tracing::error!("the follower's snapshot thread stopped on an internal error");
        }
    }
}

impl Drop for Upkeep {
    /// Also when the worker panicked: the job holds a handle on the store,
    /// which must be released before the follower's stop returns.
    fn drop(&mut self) {
        self.end_job(true);
    }
}

/// One snapshot and the compaction after it, on whichever thread runs them.
struct UpkeepWork {
    genesis: Genesis,
    compaction: Option<swoosh_actors::CompactionPolicy>,
    shared: Arc<Mutex<FollowerShared>>,
}

/// How a compaction beside the worker ended without finishing.
enum CompactFailure {
    /// Asked to stop (a stop, or a leader snapshot to install).
    Stopped(String),
    Failed(String),
}

impl From<String> for CompactFailure {
    fn from(s: String) -> Self {
        CompactFailure::Failed(s)
    }
}

/// A panic inside a snapshot write or a compaction is a failed upkeep, not
/// a failed follower: the log holds everything.
fn catch_upkeep<T, E: From<String>>(work: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        Err(E::from(format!(
            "internal error: {}",
            panic_message(&*panic)
        )))
    })
}

/// The text a panic carried (`panic!` with a literal or a formatted one).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

impl UpkeepWork {
    fn run<S: LogStore + ?Sized>(
        self,
        store: &mut S,
        node: &swoosh_core::state::NodeState,
        cancel: &AtomicBool,
    ) {
        if self.snapshot_and_compact(store, node, cancel) && !cancel.load(Ordering::SeqCst) {
            self.check_base_snapshot(&*store);
        }
    }

    /// As the leader does after each snapshot: the snapshot at the WAL
    /// base is the only proof of the records this follower archived.
    fn check_base_snapshot<S: LogStore + ?Sized>(&self, store: &S) {
        let fault =
            catch_upkeep(|| swoosh_storage::base_snapshot_fault(store).map_err(|e| e.to_string()));
        let mut s = lock_shared(&self.shared);
        match fault {
            Ok(None) => {
                if s.base_snapshot_fault.take().is_some() {
                    tracing::info!("the snapshot at the WAL base checks sound again");
                }
            }
            Ok(Some(why)) => {
                if s.base_snapshot_fault.is_none() {
                    tracing::error!(fault = %why, "ALARM: the snapshot at the WAL base is damaged; it is the only proof of the records this follower archived: stop it and run `swoosh snapshot rebuild-base` with its archives, or move its data/ away to rebuild it from the leader");
                }
                s.base_snapshot_fault = Some(why);
            }
            Err(e) => tracing::warn!(error = %e, "cannot check the snapshot at the WAL base"),
        }
    }

    /// The snapshot, then the compaction after it; true when the snapshot
    /// was written.
    fn snapshot_and_compact<S: LogStore + ?Sized>(
        &self,
        store: &mut S,
        node: &swoosh_core::state::NodeState,
        cancel: &AtomicBool,
    ) -> bool {
        let (index, hlc) = (node.index, node.hlc);
        let written = catch_upkeep(|| {
            swoosh_storage::write_snapshot(store, node, FOLLOWER_SNAPSHOTS_KEEP)
                .map_err(|e| e.to_string())
        });
        {
            let mut s = lock_shared(&self.shared);
            match written {
                Ok(_) => {
                    s.snapshots_ok += 1;
                    s.last_snapshot = Some((index, hlc));
                    s.store_usage = store.usage();
                    tracing::info!(index, "snapshot written");
                }
                Err(e) => {
                    // Tried again an interval later.
                    s.snapshots_failed += 1;
                    tracing::warn!(index, error = %e, "snapshot failed; the log still holds everything");
                    return false;
                }
            }
        }
        let Some(policy) = &self.compaction else {
            return true;
        };
        let base = match swoosh_storage::wal_base(&*store) {
            Ok(b) => b.map_or(0, |b| b.index),
            Err(e) => {
                lock_shared(&self.shared).compactions_failed += 1;
                tracing::error!(error = %e, "automatic compaction cannot read the WAL base");
                return true;
            }
        };
        let Some(through) = policy.through(base, index) else {
            return true;
        };
        if cancel.load(Ordering::SeqCst) {
            return true;
        }
        let path = policy.archive_path(base + 1, through);
        let genesis = &self.genesis;
        let r = catch_upkeep(|| {
            swoosh_storage::compact_cancellable(
                store,
                genesis,
                through,
                &path,
                // The leader's step size: each step's commit holds the
                // store's writer (and the journal's barrier) while the
                // worker waits to commit.
                &swoosh_storage::CompactOptions {
                    drop_decisions: policy.drop_decisions,
                    step_records: swoosh_actors::COMPACT_ONLINE_STEP_RECORDS,
                },
                cancel,
                &mut |_| {},
            )
            .map_err(|e| {
                let stopped = match &e {
                    swoosh_storage::CompactError::Cancelled => true,
                    swoosh_storage::CompactError::Interrupted { source, .. } => {
                        matches!(**source, swoosh_storage::CompactError::Cancelled)
                    }
                    _ => false,
                };
                if stopped {
                    CompactFailure::Stopped(e.to_string())
                } else {
                    CompactFailure::Failed(e.to_string())
                }
            })
        });
        let mut s = lock_shared(&self.shared);
        match r {
            Ok(rep) => {
                s.compactions_ok += 1;
                s.compacted_records += rep.archive.records;
                s.wal_base_index = rep.base.index;
                tracing::info!(
                    first = rep.archive.first,
                    through = rep.base.index,
                    records = rep.archive.records,
                    seconds = rep.elapsed.as_secs_f64(),
                    archive = %path.display(),
                    "compacted the log: the records are in the archive, the log starts after the last one"
                );
            }
            Err(e) => {
                // An interrupted compaction may have cut some steps.
                if let Ok(Some(b)) = swoosh_storage::wal_base(&*store) {
                    s.wal_base_index = b.index;
                }
                match e {
                    // Asked to stop: not a failure (no alert).
                    CompactFailure::Stopped(e) => {
                        tracing::info!(error = %e, "automatic compaction stopped early")
                    }
                    CompactFailure::Failed(e) => {
                        s.compactions_failed += 1;
                        tracing::error!(error = %e, archive_dir = %policy.archive_dir.display(), "automatic compaction failed; it is tried again after the next snapshot, and the log grows until it succeeds");
                    }
                }
            }
        }
        s.store_usage = store.usage();
        true
    }
}

impl<S: LogStore + Send + 'static> Worker<S> {
    fn run(&mut self, inbox: InboxRx, stop: &AtomicBool) {
        let tick = Duration::from_millis(TICK_MS);
        let status_every = Duration::from_millis(STATUS_EVERY_MS);
        let coalesce = Duration::from_millis(COALESCE_MS);
        let mut next_tick = Instant::now() + tick;
        let mut next_status = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            match inbox.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                Ok(m) => {
                    let started = Instant::now();
                    self.input(m);
                    // What is already waiting joins this group commit, within
                    // a bound on the delay it adds to the first record.
                    while self.pending.len() < COALESCE_RECORDS_MAX
                        && started.elapsed() < coalesce
                        && !stop.load(Ordering::SeqCst)
                    {
                        let Some(m) = inbox.try_recv() else { break };
                        self.input(m);
                    }
                    self.persist();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now_i = Instant::now();
            if now_i >= next_tick {
                next_tick = now_i + tick;
                let now = ms_since(self.t0);
                let connected = self.net.leader_connected.load(Ordering::SeqCst);
                let (eff, report) = {
                    let mut s = lock_shared(&self.shared);
                    s.leader_connected = connected;
                    let eff = s.repl.tick(now);
                    // Sent even when halted, so the leader raises the alarm too.
                    let report = (connected && now_i >= next_status).then(|| {
                        let mut r = s.repl.status_report();
                        r.halted |= s.halted_reason.is_some();
                        r
                    });
                    (eff, report)
                };
                if let Some(r) = report {
                    next_status = now_i + status_every;
                    self.send(wire::Request::Status(r));
                }
                self.effects(eff);
                self.persist();
            }
        }
        // Stopping: persist what was applied, but start no snapshot or
        // compaction (a stop returns within a tick and a batch), and end
        // the one running at its next compaction step.
        self.upkeep.stopping = true;
        self.upkeep.end_job(true);
        self.persist();
    }

    fn input(&mut self, m: Input) {
        if self.persist_failed {
            // Its WAL refused a write: applying more in memory would only
            // report an applied index its disk does not hold.
            return;
        }
        let now = ms_since(self.t0);
        match m {
            // The inbox never hands one out.
            Input::Wake => {}
            Input::Sealed(ct) => {
                let plain = match envelope::decrypt(&ct, &self.identity) {
                    Ok(p) => p,
                    Err(e) => {
                        let mut s = lock_shared(&self.shared);
                        s.undecryptable += 1;
                        if s.undecryptable == 1 {
                            tracing::warn!("WAL gossip is not readable with this follower's age identity ({e}): is it listed in genesis followers?");
                        }
                        return;
                    }
                };
                let (msg, encodings) = match wire::decode_gossip_records(&plain) {
                    Ok(m) => m,
                    Err(e) => {
                        // Anyone may seal gossip to the followers' public
                        // recipients: the error may quote their text.
                        malformed(&self.shared, &mut self.warn, "gossip", &e, now);
                        return;
                    }
                };
                let eff = {
                    let mut s = lock_shared(&self.shared);
                    s.decrypted += 1;
                    s.repl.on_gossip_records(msg, encodings, now)
                };
                self.effects(eff);
            }
            Input::Response(bytes) => match wire::decode_response(&bytes) {
                Ok(resp) => {
                    let eff = lock_shared(&self.shared).repl.on_response(&resp, now);
                    self.effects(eff);
                }
                Err(e) => malformed(&self.shared, &mut self.warn, "response", &e, now),
            },
        }
    }

    fn send(&mut self, req: wire::Request) {
        if let Err(e) = self.outbox.try_send(req) {
            // Only a burst of timeouts fills it; the request is sent again
            // at the next timeout.
            tracing::warn!("the follower's request queue is full: {e}");
        }
    }

    /// Make every applied record durable in group commits, then start a
    /// snapshot if one is due.
    fn persist(&mut self) {
        if self.persist_pending() {
            self.upkeep();
        }
    }

    /// Make every applied record durable in group commits; true when it
    /// committed some.
    fn persist_pending(&mut self) -> bool {
        if self.pending.is_empty() || self.persist_failed {
            return false;
        }
        let limits = self.writer.limits();
        let mut parts: Vec<Vec<EncodedEntry>> = vec![];
        let (mut n, mut bytes) = (0usize, 0usize);
        for a in std::mem::take(&mut self.pending) {
            // The protocol hashed exactly these bytes against the leader's
            // signed header; that hash is the entry's record hash.
            let enc = match a.entry.record_hash {
                Some(h) => a.entry.encode_with_hash(a.bytes, h, a.content_hash),
                None => a.entry.encode_with(a.bytes, a.content_hash),
            };
            let enc = match enc {
                Ok(enc) => enc,
                Err(err) => {
                    self.persist_error(err);
                    return false;
                }
            };
            // Split where the writer's limits would refuse the batch.
            if parts.is_empty() || !limits.fits(n + 1, bytes + enc.bytes()) {
                parts.push(vec![]);
                (n, bytes) = (0, 0);
            }
            n += 1;
            bytes += enc.bytes();
            parts.last_mut().expect("pushed").push(enc);
        }
        for part in parts {
            match self.writer.append_encoded(part) {
                Ok(r) => {
                    let mut s = lock_shared(&self.shared);
                    s.net.persisted_index.store(r.last_index, Ordering::Release);
                    s.last_applied_ms = now_wall_ms();
                    s.commits += 1;
                    s.committed_records += r.records as u64;
                    s.commit_seconds.observe(r.commit.as_secs_f64());
                    s.commit_records.observe(r.records as f64);
                    s.store_usage = self.writer.store().usage();
                }
                Err(err) => {
                    self.persist_error(err);
                    return false;
                }
            }
        }
        true
    }

    /// After a group commit: a snapshot every `snapshot_every` records, of
    /// the state at the durable index (skipped while the in-memory state is
    /// ahead of it; the next commit tries again), then compaction if
    /// configured. With a store that has concurrent handles (LMDB) both run
    /// on their own thread while the worker goes on applying and
    /// committing: a snapshot of a large state, or the replay a compaction
    /// makes, would otherwise stall replication (and the status reports the
    /// leader's lag alarm watches) for as long as it takes. Otherwise (the
    /// in-memory store) they run here.
    fn upkeep(&mut self) {
        if let Some(j) = &self.upkeep.job {
            if !j.handle.is_finished() {
                // The next commit after it ends starts the next one.
                return;
            }
            self.upkeep.end_job(false);
        }
        let u = &self.upkeep;
        if u.snapshot_every == 0 || self.persist_failed || u.stopping {
            return;
        }
        let persisted = self.net.persisted_index.load(Ordering::Acquire);
        if persisted < u.snapshot_at.saturating_add(u.snapshot_every) {
            return;
        }
        let node = {
            let s = lock_shared(&self.shared);
            let n = s.repl.node();
            // A divergence seen but not yet recorded counts as a halt.
            if s.halted_reason.is_some() || s.repl.halted().is_some() || n.index != persisted {
                return;
            }
            n.clone()
        };
        // Whatever its outcome, the next one is an interval later.
        self.upkeep.snapshot_at = node.index;
        let work = UpkeepWork {
            genesis: self.upkeep.genesis.clone(),
            compaction: self.upkeep.compaction.clone(),
            shared: self.shared.clone(),
        };
        let Some(mut store) = self.writer.store().concurrent_handle() else {
            work.run(self.writer.store_mut(), &node, &AtomicBool::new(false));
            return;
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let c = cancel.clone();
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name(UPKEEP_THREAD.into())
            .spawn(move || work.run(&mut store, &node, &c));
        match spawned {
            Ok(handle) => self.upkeep.job = Some(UpkeepJob { handle, cancel }),
            Err(e) => {
                lock_shared(&shared).snapshots_failed += 1;
                tracing::warn!(error = %e, "cannot start the snapshot thread; tried again an interval later");
            }
        }
    }

    fn persist_error(&mut self, err: swoosh_storage::AppendError) {
        tracing::error!(
            "ALARM: cannot persist replicated records: {err}; this follower stops applying"
        );
        self.persist_failed = true;
        self.pending.clear();
        let mut s = lock_shared(&self.shared);
        s.halted_reason = Some(format!("persist: {err}"));
    }

    fn effects(&mut self, eff: Vec<FollowerEffect>) {
        for e in eff {
            if lock_shared(&self.shared).halted_reason.is_some() {
                // Halted (divergence or a WAL that refused a write): apply,
                // persist and ask for nothing more.
                return;
            }
            match e {
                FollowerEffect::Applied(recs) => {
                    for a in recs {
                        // The leader logs each accepted record at info; a
                        // follower's copy of that line is for debugging.
                        tracing::debug!(
                            index = a.record.index,
                            project = %a.record.project,
                            transition = %a.record.transition,
                            hlc = %a.record.hlc,
                            window_id = %a.record.window_id,
                            state_pre_hash = %a.record.state_pre_hash,
                            state_post_hash = %a.record.state_post_hash,
                            "record applied"
                        );
                        let mut entry = Entry::record(a.record);
                        entry.record_hash = Some(a.hash);
                        self.pending.push(Applied {
                            entry,
                            bytes: a.bytes,
                            content_hash: a.content_hash,
                        });
                        if self.pending.len() >= self.writer.limits().wal_batch_records_max {
                            self.persist();
                        }
                    }
                }
                FollowerEffect::InstallSnapshot { index, bytes } => {
                    // The install moves the base and cuts the whole log:
                    // nothing else may write the store meanwhile, and no
                    // snapshot starts before it (its state is replaced).
                    self.upkeep.end_job(true);
                    self.persist_pending();
                    // The protocol verified the bytes against the leader's
                    // signed manifest; the store makes the snapshot the base
                    // its own WAL continues from, in one commit.
                    let installed =
                        swoosh_core::cbor::from_canonical::<swoosh_core::state::NodeState>(&bytes)
                            .map_err(|e| e.to_string())
                            .and_then(|node| {
                                self.writer
                                    .install_snapshot(&node)
                                    .map(|r| (r, node.hlc))
                                    .map_err(|e| e.to_string())
                            });
                    match installed {
                        Ok((r, hlc)) => {
                            tracing::info!(
                                index,
                                cut = r.cut_records,
                                "installed the leader's snapshot; the WAL continues after it"
                            );
                            // The leader's snapshot is this store's newest.
                            self.upkeep.snapshot_at = index;
                            let mut s = lock_shared(&self.shared);
                            s.net.persisted_index.store(index, Ordering::Release);
                            s.snapshots_installed += 1;
                            s.last_snapshot = Some((index, hlc));
                            s.wal_base_index = index;
                            // A new base, whose snapshot the next regular
                            // check looks at.
                            s.base_snapshot_fault = None;
                            s.last_applied_ms = now_wall_ms();
                        }
                        Err(err) => {
                            tracing::error!("ALARM: cannot persist the leader's snapshot at {index}: {err}; this follower stops applying");
                            let mut s = lock_shared(&self.shared);
                            s.halted_reason = Some(format!("snapshot install: {err}"));
                        }
                    }
                }
                FollowerEffect::Send(req) => self.send(req),
                FollowerEffect::Refused(r) => {
                    let now = ms_since(self.t0);
                    refused(&self.shared, &mut self.warn, &r, now);
                }
                FollowerEffect::Halted(d) => {
                    match &d.record {
                        // The record's fields as the leader's accepted line
                        // logs them, so triage can find its twin there.
                        Some(r) => tracing::error!(
                            index = d.index,
                            project = %r.project,
                            transition = %r.transition,
                            hlc = %r.hlc,
                            window_id = %r.window_id,
                            state_pre_hash = %r.state_pre_hash,
                            state_post_hash = %r.state_post_hash,
                            reason = %d.reason,
                            "ALARM: divergence from the leader: {}; this follower applies nothing more",
                            d.reason
                        ),
                        None => tracing::error!(
                            index = d.index,
                            reason = %d.reason,
                            "ALARM: divergence from the leader: {}; this follower applies nothing more",
                            d.reason
                        ),
                    }
                    // What it applied before the divergence is sound: keep
                    // it, then record the halt so a restart stays halted.
                    self.persist();
                    let marker = swoosh_storage::HaltMarker {
                        index: d.index,
                        reason: d.reason.clone(),
                        at_ms: now_wall_ms(),
                    };
                    if let Err(e) = swoosh_storage::record_halt(self.writer.store_mut(), &marker) {
                        tracing::error!("cannot record the halt in the follower's store ({e}); it holds until this process stops");
                    }
                    lock_shared(&self.shared).halted_reason =
                        Some(format!("divergence at {}: {}", d.index, d.reason));
                }
            }
        }
    }
}

/// A decrypted gossip message or a response that does not decode: counted,
/// and logged (rate-limited) with the decoder's error clipped and escaped.
fn malformed(
    shared: &Mutex<FollowerShared>,
    warn: &mut WarnLimiter,
    what: &'static str,
    e: &dyn std::fmt::Display,
    now_ms: u64,
) {
    lock_shared(shared).malformed += 1;
    if let Some(suppressed) = warn.check(what, now_ms) {
        let e = e.to_string();
        tracing::warn!(what, error = ?clip(&e), suppressed, "a replication message does not decode");
    }
}

/// A refused replication message: logged (rate-limited per kind) and kept
/// for `/health`, its reason clipped (it may quote a peer's text, e.g. a
/// forged batch's `cluster_id`) and logged with `?` so it cannot forge a
/// line.
fn refused(
    shared: &Mutex<FollowerShared>,
    warn: &mut WarnLimiter,
    r: &RefusedMessage,
    now_ms: u64,
) {
    let text = r.to_string();
    let reason = clip(&text);
    if let Some(suppressed) = warn.check(r.kind(), now_ms) {
        tracing::warn!(kind = r.kind(), reason = ?reason, suppressed, "refused a replication message");
    }
    let mut s = lock_shared(shared);
    if s.last_refusals.len() >= REFUSALS_KEPT {
        s.last_refusals.remove(0);
    }
    s.last_refusals.push(format!("{}: {reason}", r.kind()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use swoosh_core::scenario::{genesis, Keys};
    use swoosh_core::state::NodeState;

    fn shared() -> Arc<Mutex<FollowerShared>> {
        let keys = Keys::from_labels("guarded", 3);
        let node = NodeState::new(genesis(&keys, "guarded", 1_767_225_600_000)).unwrap();
        let id = SignerId(keys.leader.verifying_key().to_bytes());
        let repl = ReplFollower::new(FollowerConfig::default(), id, node);
        Arc::new(Mutex::new(FollowerShared::new(
            repl,
            Arc::new(NetCounters::default()),
            0,
            "/ip4/127.0.0.1/tcp/1".into(),
        )))
    }

    #[test]
    fn a_worker_panic_halts_the_follower_and_its_state_stays_readable() {
        let s = shared();
        let held = s.clone();
        run_guarded(&s, move || {
            let _guard = lock_shared(&held);
            panic!("boom while holding the lock");
        });
        assert!(s.is_poisoned(), "the panic happened under the lock");
        let st = lock_shared(&s);
        let why = st.halted_reason.as_deref().expect("halted");
        assert!(
            why.contains("boom while holding the lock") && why.contains("Restart the follower"),
            "{why}"
        );
        assert_eq!(st.repl.applied_index(), 0);
    }

    /// The inbox holds at most INBOX_BYTES_MAX: largest-size ciphertexts
    /// beyond it are dropped and counted, long before INBOX_MAX messages
    /// wait, and fit again once the worker took what was queued.
    #[test]
    fn the_inbox_drops_what_does_not_fit_in_its_bytes_and_takes_it_once_read() {
        use crate::p2p::envelope::BLOB_BYTES_MAX;
        let (tx, rx) = inbox(INBOX_MAX, INBOX_BYTES_MAX);
        let net = NetCounters::default();
        let mut warn = WarnLimiter::default();
        let fit = INBOX_BYTES_MAX / BLOB_BYTES_MAX;
        assert!(fit < INBOX_MAX, "the byte bound is the one that acts");
        // `vec!` of zeros is allocated lazily: this holds little memory.
        let blob = || Input::Sealed(vec![0; BLOB_BYTES_MAX]);
        let logs = crate::p2p::bounds::captured_logs(|| {
            for _ in 0..fit + 8 {
                hand_over(&tx, blob(), &net, &mut warn, 1_000);
            }
        });
        assert_eq!(net.inbox_full_drops.load(Ordering::Relaxed), 8);
        assert_eq!(tx.bytes.queued(), fit * BLOB_BYTES_MAX);
        assert_eq!(logs.lines().count(), 1, "one warning for the burst: {logs}");
        assert!(logs.contains("full=\"bytes\""), "{logs}");
        // The worker takes one: one more fits, the next does not.
        assert_eq!(rx.try_recv().map(|m| m.bytes()), Some(BLOB_BYTES_MAX));
        assert_eq!(tx.offer(blob()), Ok(()));
        assert_eq!(tx.offer(blob()), Err(NotQueued::Bytes));
        // Small messages still stop at INBOX_MAX.
        let (tx, _rx) = inbox(INBOX_MAX, INBOX_BYTES_MAX);
        for _ in 0..INBOX_MAX {
            assert_eq!(tx.offer(Input::Sealed(vec![0; 64])), Ok(()));
        }
        assert_eq!(
            tx.offer(Input::Sealed(vec![0; 64])),
            Err(NotQueued::Messages)
        );
        assert_eq!(
            tx.bytes.queued(),
            INBOX_MAX * 64,
            "the refused one holds nothing"
        );
        drop(rx);
    }

    /// Gossip from any peer cannot crowd out the leader's responses: with
    /// the gossip lane full a response is still queued, and the worker takes
    /// it before the gossip queued ahead of it; a response to an idle inbox
    /// wakes a worker waiting on it.
    #[test]
    fn the_leaders_responses_pass_a_full_gossip_lane() {
        let (tx, rx) = inbox(INBOX_MAX, INBOX_BYTES_MAX);
        for _ in 0..INBOX_MAX {
            assert_eq!(tx.offer(Input::Sealed(vec![1; 8])), Ok(()));
        }
        assert_eq!(
            tx.offer(Input::Sealed(vec![1; 8])),
            Err(NotQueued::Messages)
        );
        assert_eq!(tx.offer(Input::Response(vec![2; 8])), Ok(()));
        assert!(matches!(rx.try_recv(), Some(Input::Response(_))));
        assert!(matches!(rx.try_recv(), Some(Input::Sealed(_))));
        // Its own bound: as many as the follower can have asked for.
        let mut queued = 0;
        while tx.offer(Input::Response(vec![2; 8])).is_ok() {
            queued += 1;
        }
        assert_eq!(queued, RESPONSE_INBOX_MAX);
        while rx.try_recv().is_some() {}
        assert_eq!((tx.bytes.queued(), tx.responses.bytes.queued()), (0, 0));

        let waiter = std::thread::spawn(move || {
            let t0 = Instant::now();
            let got = rx.recv_timeout(Duration::from_secs(60));
            // Without the wake it would see the response only at the
            // timeout: 60 s, not the moment it arrived.
            let woke =
                matches!(got, Ok(Input::Response(_))) && t0.elapsed() < Duration::from_secs(30);
            (woke, rx)
        });
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(tx.offer(Input::Response(vec![3; 8])), Ok(()));
        let (woke, _rx) = waiter.join().unwrap();
        assert!(woke, "the waiting worker got the response, not a timeout");
    }

    /// A worker that stopped with messages queued gives their bytes back,
    /// and what arrives later is dropped as "stopped" (counted, one line a
    /// second), not as a full inbox.
    #[test]
    fn a_stopped_worker_releases_its_queued_bytes_and_is_named() {
        let (tx, rx) = inbox(INBOX_MAX, 1_000);
        for _ in 0..4 {
            assert_eq!(tx.offer(Input::Sealed(vec![0; 200])), Ok(()));
        }
        assert_eq!(tx.offer(Input::Response(vec![0; 300])), Ok(()));
        assert_eq!(tx.bytes.queued(), 800);
        assert_eq!(tx.responses.bytes.queued(), 300);
        drop(rx);
        assert_eq!(tx.bytes.queued(), 0, "the dropped messages hold nothing");
        assert_eq!(tx.responses.bytes.queued(), 0);
        let net = NetCounters::default();
        let mut warn = WarnLimiter::default();
        let logs = crate::p2p::bounds::captured_logs(|| {
            for k in 0..50 {
                hand_over(
                    &tx,
                    Input::Response(vec![0; 600]),
                    &net,
                    &mut warn,
                    1_000 + k,
                );
            }
        });
        assert_eq!(net.worker_stopped_drops.load(Ordering::Relaxed), 50);
        assert_eq!(net.inbox_full_drops.load(Ordering::Relaxed), 0);
        assert_eq!(logs.lines().count(), 1, "{logs}");
        assert!(logs.contains("worker has stopped"), "{logs}");
        assert_eq!(tx.bytes.queued(), 0);
    }

    /// A forged batch may name a 2 MiB cluster id full of newlines: its
    /// refusal is logged once per second per kind, clipped and escaped, and
    /// `/health` keeps it clipped.
    #[test]
    fn a_refusal_quoting_a_huge_cluster_id_is_clipped_in_the_log_and_in_health() {
        use crate::p2p::bounds::{LOG_FIELD_CHARS_MAX, TEST_LOG_LINE_CHARS_MAX};
        let s = shared();
        let mut warn = WarnLimiter::default();
        let forged = "x\nINFO forged line ".repeat((2 << 20) / 20);
        let r = RefusedMessage::WrongCluster {
            cluster_id: forged,
            genesis_hash: swoosh_core::hash::Hash([7; 32]),
        };
        let logs = crate::p2p::bounds::captured_logs(|| {
            for k in 0..100 {
                refused(&s, &mut warn, &r, 5_000 + k);
            }
        });
        let lines: Vec<&str> = logs.lines().collect();
        assert_eq!(lines.len(), 1, "one line for 100 refusals in a second");
        assert!(
            lines[0].chars().count() <= TEST_LOG_LINE_CHARS_MAX,
            "{} characters",
            lines[0].len()
        );
        assert!(lines[0].contains("wrong_cluster"), "{}", lines[0]);
        let st = lock_shared(&s);
        assert_eq!(st.last_refusals.len(), REFUSALS_KEPT);
        for kept in &st.last_refusals {
            assert!(kept.starts_with("wrong_cluster: "), "{kept}");
            assert!(
                kept.chars().count() <= "wrong_cluster: ".len() + LOG_FIELD_CHARS_MAX,
                "{} characters kept",
                kept.len()
            );
        }
        drop(st);
        // The next second, one more line, saying how many were skipped.
        let logs = crate::p2p::bounds::captured_logs(|| refused(&s, &mut warn, &r, 6_000));
        assert!(logs.contains("suppressed=99"), "{logs}");
    }

    /// Anyone may seal gossip to a follower's public age recipient; what
    /// does not decode is counted and its decoder error, which may quote
    /// the sender's text, is logged clipped and escaped.
    #[test]
    fn undecodable_gossip_is_logged_clipped_and_escaped() {
        use crate::p2p::bounds::TEST_LOG_LINE_CHARS_MAX;
        let s = shared();
        let mut warn = WarnLimiter::default();
        let junk = "\nERROR forged\n".repeat(4_000);
        let mut plain = vec![];
        ciborium::into_writer(
            &std::collections::BTreeMap::from([(junk.as_str(), 1u8)]),
            &mut plain,
        )
        .unwrap();
        let Err(e) = wire::decode_gossip_records(&plain) else {
            panic!("a map of junk decoded as gossip");
        };
        let logs = crate::p2p::bounds::captured_logs(|| {
            for k in 0..10 {
                malformed(&s, &mut warn, "gossip", &e, k);
            }
        });
        assert_eq!(lock_shared(&s).malformed, 10);
        let lines: Vec<&str> = logs.lines().collect();
        // The sender's newlines stay escaped: one line, and short.
        assert_eq!(lines.len(), 1, "{logs}");
        assert!(lines[0].contains("ERROR forged"), "{}", lines[0]);
        assert!(lines[0].chars().count() <= TEST_LOG_LINE_CHARS_MAX);
    }

    /// Refused gossip chunks (a peer's bogus chunks, a leader of another
    /// release) are all counted, and logged once per second per kind.
    #[test]
    fn refused_chunks_are_counted_and_warned_of_once_a_second_per_kind() {
        use crate::p2p::envelope::{chunk_signed, ChunkSigner};
        use swoosh_core::hash::Hash;
        let leader = swoosh_core::sig::key_from_label("follower/leader");
        let hostile = ChunkSigner::new(
            &swoosh_core::sig::key_from_label("follower/hostile"),
            Hash([1; 32]),
        );
        let mut r = Reassembler::new(&SignerId::from_signing_key(&leader), Hash([1; 32])).unwrap();
        let bogus = chunk_signed(&vec![7; 100_000], &hostile, 5).unwrap();
        let mut v1 = bogus[0].clone();
        v1[..4].copy_from_slice(b"SWC1");
        let net = NetCounters::default();
        let mut warn = WarnLimiter::default();
        let logs = crate::p2p::bounds::captured_logs(|| {
            for k in 0..50 {
                for f in [&bogus[0], &bogus[1], &v1] {
                    let e = r.push(f).unwrap_err();
                    chunk_refused(&net, &mut warn, &e, 1_000 + k);
                }
            }
        });
        assert_eq!(net.malformed_chunks.load(Ordering::Relaxed), 150);
        let lines: Vec<&str> = logs.lines().collect();
        assert_eq!(lines.len(), 2, "one line per kind: {logs}");
        assert!(
            lines[0].contains("chunk_signature") && lines[0].contains("not the genesis leader's"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("chunk_version") && lines[1].contains("older SWOOSH release"),
            "{}",
            lines[1]
        );
        let e = r.push(&bogus[0]).unwrap_err();
        let logs = crate::p2p::bounds::captured_logs(|| chunk_refused(&net, &mut warn, &e, 2_000));
        assert!(logs.contains("suppressed=99"), "{logs}");
    }

    #[test]
    fn a_worker_that_returns_is_not_halted() {
        let s = shared();
        run_guarded(&s, || {});
        assert!(lock_shared(&s).halted_reason.is_none());
    }
}
