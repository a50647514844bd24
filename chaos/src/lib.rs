//! SWOOSH chaos (issue 6), mode `sim`: a seeded, single-threaded simulation
//! of a whole cluster — one leader, followers and council agents — driving
//! the production code: the core reducer and invariant checker, the
//! `swoosh-storage` in-memory backend (leader WAL, group commit, crash, torn
//! commits, snapshots, recovery) and the sans-I/O replication and council
//! protocols of `swoosh_net::proto`. The simulator owns the clocks, the
//! network, the fault schedule, the follower disks, the checks, and the
//! loops a node runs around those parts (the leader's admission,
//! acknowledgement and start-up, which members to elect): docs/chaos.md,
//! "What is simulated, what is not".
//!
//! `run(SimConfig) -> SimReport`; the same config gives the same report,
//! byte for byte, every time (no wall clock, one PRNG; storage's replay
//! helper thread hands its results back in log order).
//! See `docs/chaos.md` for the faults, the invariants and how to reproduce.
//!
//! Architecture invariant: one thread, one seed, same final hash every run.

mod args;
mod checks;
mod disk;
mod forge;
mod net;
mod rng;
mod sim;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use args::{parse_sim_args, SimArgs, SIM_USAGE};
pub use rng::Rng;
pub use sim::FAULT_KEYS;

/// Per-fault probabilities. Network faults are per message, node faults per
/// simulation step, workload faults per proposal (see `docs/chaos.md`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultRates {
    /// A message is lost.
    pub drop: f64,
    /// A message is delivered twice.
    pub duplicate: f64,
    /// A message is held 5–40 ms so later ones overtake it.
    pub reorder: f64,
    /// A message is held 100–600 ms (past request timeouts).
    pub delay: f64,
    /// A follower or an agent is cut off for 50–1,500 ms.
    pub partition: f64,
    /// A node (leader or follower) is killed (-9) and restarted 20–400 ms later.
    pub restart: f64,
    /// A node is killed in the middle of a WAL write (torn tail).
    pub torn_write: f64,
    /// A follower restarts from its oldest snapshot (its newer state is lost).
    pub snapshot_rollback: f64,
    /// A node's newest snapshot is corrupted, then the node restarts.
    pub snapshot_corrupt: f64,
    /// A published batch or head is followed by a forged copy (bad
    /// signature, or re-signed by a non-leader key).
    pub forged_message: f64,
    /// A proposal is one of the scenario's faults (stale hash, replay,
    /// forged signature, clock skew, tool flap, capacity churn, …).
    pub workload_fault: f64,
    /// A due license refresh is answered late by the license server.
    pub license_latency: f64,
    /// A due license refresh is denied (the server returns an expired token).
    pub license_denial: f64,
    /// An agent's vote is accompanied by a bad vote (forged, outsider, stale
    /// epoch, or a "no" voter's vote flipped to approve), and a ready
    /// certificate is first proposed with a flipped "no" vote added.
    pub vote_fault: f64,
    /// Per rare write of the leader (a snapshot; a recovery's cut of a torn
    /// tail or deletion of a damaged snapshot): its store is armed to die
    /// in that very commit (`MemStore::crash_after_commits(0)`). Half of the
    /// `restart` faults that pick the leader arm its store too, to die at
    /// one of its next commits (a group commit or a snapshot write).
    pub storage_crash: f64,
    /// A node's clock is stepped (back or forward, up to
    /// `CLOCK_STEP_MS_MAX`); at every restart it is stepped anyway.
    pub clock_step: f64,
}

impl Default for FaultRates {
    fn default() -> Self {
        FaultRates {
            drop: 0.03,
            duplicate: 0.03,
            reorder: 0.03,
            delay: 0.02,
            partition: 0.01,
            restart: 0.01,
            torn_write: 0.01,
            snapshot_rollback: 0.01,
            snapshot_corrupt: 0.01,
            forged_message: 0.02,
            workload_fault: 0.10,
            license_latency: 0.05,
            license_denial: 0.05,
            vote_fault: 0.05,
            storage_crash: 0.1,
            clock_step: 0.005,
        }
    }
}

impl FaultRates {
    /// No faults at all (a calm run: useful as a baseline).
    pub fn none() -> FaultRates {
        FaultRates {
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            delay: 0.0,
            partition: 0.0,
            restart: 0.0,
            torn_write: 0.0,
            snapshot_rollback: 0.0,
            snapshot_corrupt: 0.0,
            forged_message: 0.0,
            workload_fault: 0.0,
            license_latency: 0.0,
            license_denial: 0.0,
            vote_fault: 0.0,
            storage_crash: 0.0,
            clock_step: 0.0,
        }
    }

    /// Every rate's name: the field, the serde key, the `--rate NAME=P` name.
    pub const NAMES: [&'static str; 16] = [
        "drop",
        "duplicate",
        "reorder",
        "delay",
        "partition",
        "restart",
        "torn_write",
        "snapshot_rollback",
        "snapshot_corrupt",
        "forged_message",
        "workload_fault",
        "license_latency",
        "license_denial",
        "vote_fault",
        "storage_crash",
        "clock_step",
    ];

    fn fields_mut(&mut self) -> [&mut f64; 16] {
        [
            &mut self.drop,
            &mut self.duplicate,
            &mut self.reorder,
            &mut self.delay,
            &mut self.partition,
            &mut self.restart,
            &mut self.torn_write,
            &mut self.snapshot_rollback,
            &mut self.snapshot_corrupt,
            &mut self.forged_message,
            &mut self.workload_fault,
            &mut self.license_latency,
            &mut self.license_denial,
            &mut self.vote_fault,
            &mut self.storage_crash,
            &mut self.clock_step,
        ]
    }

    /// Every rate with its name, in `NAMES` order.
    pub fn named(&self) -> [(&'static str, f64); 16] {
        let mut copy = *self;
        let vals = copy.fields_mut().map(|p| *p);
        std::array::from_fn(|i| (Self::NAMES[i], vals[i]))
    }

    /// Set the rate called `name` (one of `NAMES`).
    pub fn set(&mut self, name: &str, p: f64) -> Result<(), String> {
        let i = Self::NAMES.iter().position(|n| *n == name).ok_or_else(|| {
            format!(
                "unknown fault rate {name:?}; the rates are {}",
                Self::NAMES.join(", ")
            )
        })?;
        *self.fields_mut()[i] = p;
        Ok(())
    }

    /// Apply `NAME=P` (the `--rate` flag's value).
    pub fn set_assignment(&mut self, a: &str) -> Result<(), String> {
        let (name, p) = a
            .split_once('=')
            .ok_or_else(|| format!("--rate takes NAME=P (e.g. drop=0.05), got {a:?}"))?;
        let p: f64 = p
            .parse()
            .map_err(|_| format!("--rate {name}: {p:?} is not a probability"))?;
        self.set(name, p)
    }
}

pub const REPLICAS_DEFAULT: usize = 3;
pub const PROJECTS_DEFAULT: usize = 4;
pub const COUNCIL_DEFAULT: usize = 5;
/// Most replicas a simulation runs (leader included).
pub const REPLICAS_MAX: usize = 16;
/// Most projects driven at once.
pub const PROJECTS_MAX: usize = 64;
/// Most council agents.
pub const COUNCIL_MAX: usize = 32;
/// Violations listed in a report; further ones are only counted.
pub const VIOLATIONS_LISTED_MAX: usize = 100;
/// Attention items listed in a report (band watch and above, most important first).
pub const ATTENTION_LISTED_MAX: usize = 20;

/// One item the attention scorer surfaced from the run's own operational
/// events (rejections, stale hashes, duplicates, restarts, torn writes,
/// snapshot rollbacks, partitions, follower lag, forged messages, …).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttentionItem {
    pub fingerprint: String,
    pub kind: String,
    /// `watch`, `investigate` or `promote`.
    pub band: String,
    /// 2..=4.
    pub level: u8,
    pub count: u64,
    pub what: String,
    pub how_often: String,
    pub next: String,
}

/// A deliberate bug to plant in the simulated cluster, to show that the
/// checkers catch it (tests of the simulator itself). Never set in a real
/// run; the hidden `--sabotage NAME` flag exists only so that the reproduce
/// line of such a run replays it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sabotage {
    #[default]
    None,
    /// The leader answers `202` as soon as the reducer accepts, before the
    /// group commit is durable (so a crash loses acknowledged transitions).
    AckBeforeDurable,
    /// The leader cuts a torn WAL tail with a bare truncation that keeps the
    /// cut records' idempotency entries and decisions (orphans).
    CutKeepsDerived,
}

impl Sabotage {
    pub const ALL: [Sabotage; 3] = [
        Sabotage::None,
        Sabotage::AckBeforeDurable,
        Sabotage::CutKeepsDerived,
    ];

    /// The `--sabotage` name.
    pub fn name(self) -> &'static str {
        match self {
            Sabotage::None => "none",
            Sabotage::AckBeforeDurable => "ack-before-durable",
            Sabotage::CutKeepsDerived => "cut-keeps-derived",
        }
    }

    pub fn from_name(s: &str) -> Result<Sabotage, String> {
        Self::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|x| x.name()).collect();
                format!("unknown sabotage {s:?}; one of {}", names.join(", "))
            })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    pub seed: u64,
    /// Leader plus followers.
    pub replicas: usize,
    /// Proposals to submit to the leader.
    pub transitions: u64,
    /// Projects driven concurrently (a terminated project is replaced).
    pub projects: usize,
    /// Council agents (the roster's council members).
    pub council: usize,
    /// How many of the agents vote no on every election.
    pub no_voters: usize,
    pub rates: FaultRates,
    #[doc(hidden)]
    pub sabotage: Sabotage,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            replicas: REPLICAS_DEFAULT,
            transitions: 1_000,
            projects: PROJECTS_DEFAULT,
            council: COUNCIL_DEFAULT,
            no_voters: 1,
            rates: FaultRates::default(),
            sabotage: Sabotage::None,
        }
    }
}

impl SimConfig {
    /// The command that reruns this configuration: `swoosh chaos` (and the
    /// example, and [`parse_sim_args`]) parse it back into this very config.
    pub fn reproduce(&self) -> String {
        self.command(false)
    }

    /// [`SimConfig::reproduce`] with `--twice`: the command that shows a
    /// determinism failure (the same seed giving two reports).
    pub fn reproduce_twice(&self) -> String {
        self.command(true)
    }

    fn command(&self, twice: bool) -> String {
        let mut s = format!(
            "swoosh chaos --seed {} --transitions {} --replicas {}",
            self.seed, self.transitions, self.replicas
        );
        if self.projects != PROJECTS_DEFAULT {
            s.push_str(&format!(" --projects {}", self.projects));
        }
        if self.council != COUNCIL_DEFAULT || self.no_voters != 1 {
            s.push_str(&format!(
                " --council {} --no-voters {}",
                self.council, self.no_voters
            ));
        }
        // The rates as the fewest flags: `--calm` and what is not zero, or
        // what differs from the defaults (`{p}` prints the shortest decimal
        // that parses back to the same f64).
        let (rates, none, default) = (
            self.rates.named(),
            FaultRates::none().named(),
            FaultRates::default().named(),
        );
        let differ = |base: &[(&'static str, f64); 16]| -> Vec<(&'static str, f64)> {
            rates
                .iter()
                .zip(base)
                .filter(|(a, b)| a.1.to_bits() != b.1.to_bits())
                .map(|(a, _)| *a)
                .collect()
        };
        let (from_none, from_default) = (differ(&none), differ(&default));
        let set = if from_none.len() < from_default.len() {
            s.push_str(" --calm");
            from_none
        } else {
            from_default
        };
        for (name, p) in set {
            s.push_str(&format!(" --rate {name}={p}"));
        }
        if self.sabotage != Sabotage::None {
            s.push_str(&format!(" --sabotage {}", self.sabotage.name()));
        }
        if twice {
            s.push_str(" --twice");
        }
        s
    }
}

/// Council protocol activity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CouncilReport {
    pub elections_opened: u64,
    pub announcements: u64,
    /// Valid votes counted by the leader's collector (approving or not).
    pub votes_counted: u64,
    pub votes_duplicate: u64,
    /// Votes refused by the collector, by reason (`bad_signature`,
    /// `outsider`, `ejected`, `wrong_genesis`, `stale_epoch`, `no_election`,
    /// `wrong_member_set`, `full`).
    pub votes_rejected: BTreeMap<String, u64>,
    pub certificates: u64,
    /// Certificates proposed and accepted as Council_QuorumCert/ReElect.
    pub certificates_accepted: u64,
    /// Bad votes (`vote_fault`) that reached the leader's collector, and
    /// how many it refused for the planted reason (or no open election).
    pub bad_votes_delivered: u64,
    pub bad_votes_refused: u64,
    /// Certificates with a flipped "no" vote that the quorum guard refused.
    pub forged_certificates_refused: u64,
}

/// Replication protocol activity (summed over leader and follower restarts).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicationReport {
    pub batches_published: u64,
    pub records_published: u64,
    pub ranges_served: u64,
    pub snapshot_offers: u64,
    pub snapshot_chunks: u64,
    pub snapshots_installed: u64,
    pub records_applied: u64,
    pub duplicates_dropped: u64,
    pub request_timeouts: u64,
    /// Messages followers refused, by kind (`bad_signature`, `not_leader`, …).
    pub refused: BTreeMap<String, u64>,
    pub leader_restarts: u64,
    pub follower_restarts: u64,
    pub torn_tails_cut: u64,
    pub corrupt_snapshots_skipped: u64,
    pub messages_sent: u64,
    pub messages_delivered: u64,
    /// `Request::Status` reports the leader answered (`on_status_report`).
    pub status_reports: u64,
    /// Per follower (index 0 = follower 1): forged messages delivered while
    /// it ran, and how many it refused with the forgery's refusal.
    pub forged_delivered: Vec<u64>,
    pub forged_refused: Vec<u64>,
    /// Leader decisions whose signature was verified at the end.
    pub decisions_verified: u64,
    /// The leader's log compactions (`swoosh_storage::compact`: records
    /// archived and cut where the modelled truncation had reached), and the
    /// records they archived. The archives are checked at the end to chain
    /// from genesis to the store's base.
    pub compactions: u64,
    pub records_compacted: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SimReport {
    pub seed: u64,
    pub mode: String,
    pub replicas: usize,
    /// Proposals submitted to the leader.
    pub transitions: u64,
    /// Proposals that became WAL records.
    pub accepted: u64,
    pub rejected: u64,
    /// Repeats answered with the original outcome.
    pub duplicates: u64,
    /// `202`s the simulated clients received (each checked on every replica).
    pub acknowledged: u64,
    pub rejections_by_guard: BTreeMap<String, u64>,
    pub faults: BTreeMap<String, u64>,
    pub violations: Vec<String>,
    /// Violations beyond `VIOLATIONS_LISTED_MAX` (only counted).
    pub violations_unlisted: u64,
    /// Root hash of each replica at the end, leader first.
    pub final_hashes: Vec<String>,
    pub final_index: u64,
    /// Largest lag (records behind the leader's durable index) observed on a
    /// running follower, including right after a restart from an old
    /// snapshot or from genesis.
    pub max_lag: u64,
    /// The same, only for followers up for a second or more and not cut off
    /// by a partition: how far steady tailing falls behind under the faults.
    /// Under the default node faults a follower thrown back to genesis can
    /// stay far behind for long (see docs/chaos.md); with node faults off it
    /// stays within the leader's retained log (a test).
    pub max_lag_steady: u64,
    pub council: CouncilReport,
    pub replication: ReplicationReport,
    /// What the attention scorer surfaced (band watch and above), fed with
    /// the run's own operational events on the virtual clock.
    #[serde(default)]
    pub attention: Vec<AttentionItem>,
    /// Fingerprints the scorer tracked per band (index = band 0..=4).
    #[serde(default)]
    pub attention_by_band: [u64; 5],
    /// Simulated time covered, ms.
    pub virtual_ms: u64,
    pub reproduce: String,
}

impl SimReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.violations_unlisted == 0
    }

    /// Every replica ended on the same root hash.
    pub fn converged(&self) -> bool {
        self.final_hashes.windows(2).all(|w| w[0] == w[1])
    }
}

/// Run one simulation.
pub fn run(config: SimConfig) -> SimReport {
    run_with_progress(config, &mut |_, _| {})
}

/// Run one simulation, calling `progress(done, total)` as proposals are
/// submitted (for a progress bar).
pub fn run_with_progress(config: SimConfig, progress: &mut dyn FnMut(u64, u64)) -> SimReport {
    sim::run(config, progress)
}
