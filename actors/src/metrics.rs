//! Prometheus metrics with the brief's names, plus what operators need
//! (commit batch size, fsync latency, mailbox depths, attention events and
//! attention items per band, readiness, dropped region updates and snapshot
//! requests).

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// A count exported under its exact name. OpenMetrics names a counter's
/// sample `<family>_total`, so a counter family `swoosh_retry_count` is
/// scraped as `swoosh_retry_count_total`, while SPEC §8 and the brief name
/// the series `swoosh_retry_count{transition}`: this is typed `unknown`
/// (untyped to Prometheus), whose sample carries the family name as is.
/// It only rises, so `rate()` and `increase()` apply as to a counter.
#[derive(Clone, Debug, Default)]
pub struct ExactCount(Counter);

impl ExactCount {
    pub fn inc(&self) -> u64 {
        self.0.inc()
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for ExactCount {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for ExactCount {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabel {
    pub transition: String,
}

/// The `transition` label of a name the statechart does not know.
pub const TRANSITION_LABEL_UNKNOWN: &str = "unknown";

impl TransitionLabel {
    /// The label for a client-supplied transition name: the name when the
    /// statechart knows it, else [`TRANSITION_LABEL_UNKNOWN`]. Every
    /// distinct label value is a series the registry keeps forever, so a
    /// name nobody checked would let any client grow it without bound.
    pub fn checked(name: &str) -> TransitionLabel {
        let transition =
            swoosh_core::statechart::lookup(name).map_or(TRANSITION_LABEL_UNKNOWN, |t| t.name);
        TransitionLabel {
            transition: transition.to_string(),
        }
    }
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardLabel {
    pub guard: String,
}

/// The checks the reducer runs before a transition's own guards, by the
/// names its refusals carry (`Rejection::guard`), and the shape checks'
/// proposal fields.
pub const PRECHECK_GUARDS: &[&str] = &[
    "transition",
    "signature",
    "role",
    "idempotency",
    "idem_key",
    "state_hash",
    "hlc",
    "from_state",
    "inputs",
    "inputs_hash",
    "record_size",
    "project_status",
    "project",
    "window_id",
    "evidence",
    "proposal",
];

/// The `guard` label of a refusal whose guard name is not one of the known
/// ones: a name the client's input could shape must not become a series.
pub const GUARD_LABEL_OTHER: &str = "other";

/// How long an `inputs.<field>` label may be (the reducer's field names are
/// its own, well under this).
const INPUT_FIELD_LABEL_BYTES_MAX: usize = 40;

impl GuardLabel {
    /// The label for a refusal's guard: a statechart guard, a pre-check
    /// (see [`PRECHECK_GUARDS`]), `inputs.<field>` for a field the reducer
    /// names (lowercase letters and `_`), else [`GUARD_LABEL_OTHER`]. Every
    /// distinct value is a series kept until the process ends, so the set
    /// is closed whatever a proposal holds.
    pub fn checked(guard: &str) -> GuardLabel {
        let known = swoosh_core::statechart::Guard::ALL
            .iter()
            .any(|g| g.name() == guard)
            || PRECHECK_GUARDS.contains(&guard)
            || guard.strip_prefix("inputs.").is_some_and(|f| {
                !f.is_empty()
                    && guard.len() <= INPUT_FIELD_LABEL_BYTES_MAX
                    && f.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            });
        GuardLabel {
            guard: if known { guard } else { GUARD_LABEL_OTHER }.to_string(),
        }
    }
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabel {
    pub region: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActorLabel {
    pub actor: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BandLabel {
    pub band: String,
}
/// A follower by its name in genesis (`follower-1`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FollowerLabel {
    pub follower: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicationEventLabel {
    pub event: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub registry: Arc<Registry>,
    pub transition_total: Family<TransitionLabel, Counter>,
    pub guard_fail_total: Family<GuardLabel, Counter>,
    pub state_advance_latency_seconds: Family<RegionLabel, Histogram>,
    pub retry_count: Family<TransitionLabel, ExactCount>,
    pub quarantine_total: Counter,
    pub recovery_time_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 while the node recovers its state from the log (an actor restart
    /// here; before the node's first start `swoosh_net::recovering` serves
    /// the same name), else 0.
    pub recovery_in_progress: Gauge,
    /// When the process began to start (Unix seconds): its changes count
    /// restarts, a crash loop included.
    pub start_time_seconds: Gauge,
    /// How full the store is (`LogStore::usage`), read when `/metrics` is.
    pub store_used_bytes: Gauge,
    pub store_capacity_bytes: Gauge,
    /// The earliest license expiry (Unix seconds) among the projects that
    /// hold a license whose grace has not ended and are not terminated; 0
    /// when none does. Computed when `/metrics` is read.
    pub license_expiry_seconds: Gauge,
    pub wal_lag_records: Gauge,
    pub commit_batch_records: Histogram,
    pub fsync_latency_seconds: Histogram,
    pub rejected_total: Family<KindLabel, Counter>,
    /// `POST /transition` requests answered before the sequencer saw a
    /// proposal, by the error of the reply (`too_large`, `body_unreadable`,
    /// `timeout`, `malformed`, `backpressure`, `unavailable`, `gave_up`,
    /// `shutting_down`): refusals `rejected_total` never counts.
    pub http_refused_total: Family<KindLabel, Counter>,
    pub attention_events_total: Family<KindLabel, Counter>,
    /// Fingerprints the attention scorer tracks, by band (`ignore-fast` …
    /// `promote`).
    pub attention_items: Family<BandLabel, Gauge>,
    /// Every restart attempt, by actor: a pair restart retried N times
    /// counts N, so a node failing to recover trips the restart alert.
    pub actor_restarts_total: Family<ActorLabel, Counter>,
    /// 1 while the node serves proposals; 0 while it recovers, stops, or
    /// after it gave up restarting (the process then exits).
    pub ready: Gauge,
    /// Region read-model updates dropped on a full region mailbox (the view
    /// is then rebuilt from storage before it answers again).
    pub region_updates_dropped_total: Counter,
    /// Snapshot requests dropped on a full snapshotter mailbox (asked again
    /// at the first record after the mailbox has room).
    pub snapshot_requests_dropped_total: Counter,
    /// Snapshots the snapshotter wrote, by outcome (`ok`, `failed`).
    pub snapshots_total: Family<KindLabel, Counter>,
    /// Automatic compactions (`NodeConfig::compaction`), by outcome
    /// (`ok`, `failed`).
    pub compactions_total: Family<KindLabel, Counter>,
    /// Records archived and cut by automatic compaction.
    pub compacted_records_total: Counter,
    /// The WAL base: the log starts after this record (0: at record 1).
    pub wal_base_index: Gauge,
    /// 1 while the snapshot at the WAL base fails its check (checked after
    /// every snapshot): the only proof of archived records is damaged.
    pub base_snapshot_damaged: Gauge,
    pub wal_index: Gauge,
    pub backpressure_total: Counter,
    /// Idempotency keys in the state's bounded window (at most
    /// `IDEM_KEYS_TOTAL_MAX`); older keys are recalled from the store.
    pub idempotency_window_keys: Gauge,
    /// Proposals whose key had left the window and was found in the store's
    /// durable index (a late repeat or a conflicting reuse of an old key).
    pub idempotency_recalled_total: Counter,
    /// Times a start found the derived indexes disagreeing with the log
    /// and rebuilt them from it.
    pub index_rebuilds_total: Counter,
    /// The leader's view of each follower, refreshed at every scrape: a
    /// follower that is down cannot export its own lag, so alerts on
    /// replication read these.
    pub replica_connected: Family<FollowerLabel, Gauge>,
    pub replica_halted: Family<FollowerLabel, Gauge>,
    /// Absent until the follower's first status report.
    pub replica_lag_records: Family<FollowerLabel, Gauge>,
    /// Absent until the follower's first status report.
    pub replica_report_age_seconds: Family<FollowerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// The leader's replication transport's own counters (batches and
    /// records published, catch-up served, refusals), raised to the
    /// transport's totals at every scrape.
    pub replication_events_total: Family<ReplicationEventLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let transition_total = Family::<TransitionLabel, Counter>::default();
        r.register(
            "swoosh_transition",
            "Accepted transitions, by transition",
            transition_total.clone(),
        );
        let guard_fail_total = Family::<GuardLabel, Counter>::default();
        r.register(
            "swoosh_guard_fail",
            "Refused proposals, by failing guard or check",
            guard_fail_total.clone(),
        );
        let state_advance_latency_seconds =
            Family::<RegionLabel, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
            });
        r.register(
            "swoosh_state_advance_latency_seconds",
            "From receipt of a proposal to its durable application, by region advanced",
            state_advance_latency_seconds.clone(),
        );
        let retry_count = Family::<TransitionLabel, ExactCount>::default();
        r.register("swoosh_retry_count", "Proposals refused with a retriable outcome (stale hash, HLC order, closed window, backpressure), by transition", retry_count.clone());
        let quarantine_total = Counter::default();
        r.register(
            "swoosh_quarantine",
            "Projects moved to QUARANTINED",
            quarantine_total.clone(),
        );
        let license_expiry_seconds = Gauge::default();
        r.register(
            "swoosh_license_expiry_seconds",
            "Earliest license expiry (Unix seconds) among projects that are not terminated and hold a license whose grace has not ended, 0 when none does; the grace (DEGRADED) runs beyond it, then only Boot_LicenseRefresh is accepted",
            license_expiry_seconds.clone(),
        );
        let recovery_time_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        r.register(
            "swoosh_recovery_time_seconds",
            "Duration of the last recovery from storage",
            recovery_time_seconds.clone(),
        );
        let store_used_bytes = Gauge::default();
        r.register(
            "swoosh_store_used_bytes",
            "Bytes of the store's pages in use; commits fail once it reaches swoosh_store_capacity_bytes",
            store_used_bytes.clone(),
        );
        let store_capacity_bytes = Gauge::default();
        r.register(
            "swoosh_store_capacity_bytes",
            "Bytes the store may grow to (the LMDB map, --lmdb-map-gib)",
            store_capacity_bytes.clone(),
        );
        let start_time_seconds = Gauge::default();
        r.register(
            "swoosh_start_time_seconds",
            "When the process began to start (Unix seconds); changes() over a window counts restarts",
            start_time_seconds.clone(),
        );
        let recovery_in_progress = Gauge::default();
        r.register(
            "swoosh_recovery_in_progress",
            "1 while the node recovers its state from the log and serves no proposal, else 0",
            recovery_in_progress.clone(),
        );
        let wal_lag_records = Gauge::default();
        r.register(
            "swoosh_wal_lag_records",
            "Records accepted by the sequencer but not yet durable",
            wal_lag_records.clone(),
        );
        let commit_batch_records = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        r.register(
            "swoosh_commit_batch_records",
            "Records per WAL group commit",
            commit_batch_records.clone(),
        );
        let fsync_latency_seconds = Histogram::new(exponential_buckets(0.000_02, 2.0, 18));
        r.register(
            "swoosh_fsync_latency_seconds",
            "Duration of one WAL group commit including its fsyncs",
            fsync_latency_seconds.clone(),
        );
        let rejected_total = Family::<KindLabel, Counter>::default();
        r.register(
            "swoosh_rejected",
            "Proposals the sequencer refused, by kind (the `error` of the refusal's HTTP body)",
            rejected_total.clone(),
        );
        let http_refused_total = Family::<KindLabel, Counter>::default();
        r.register(
            "swoosh_http_refused",
            "POST /transition requests answered without the sequencer refusing a proposal (body too large, unreadable or late, malformed JSON, backpressure, unavailable), by the reply's error",
            http_refused_total.clone(),
        );
        let attention_events_total = Family::<KindLabel, Counter>::default();
        r.register(
            "swoosh_attention_events",
            "Operational events fed to the attention scorer, by kind",
            attention_events_total.clone(),
        );
        let attention_items = Family::<BandLabel, Gauge>::default();
        r.register(
            "swoosh_attention_items",
            "Fingerprints tracked by the attention scorer, by band",
            attention_items.clone(),
        );
        let actor_restarts_total = Family::<ActorLabel, Counter>::default();
        r.register(
            "swoosh_actor_restarts",
            "Supervisor restart attempts, by actor (a retried restart counts each attempt)",
            actor_restarts_total.clone(),
        );
        let ready = Gauge::default();
        r.register(
            "swoosh_ready",
            "1 while the node serves proposals; 0 while recovering, stopping or after giving up",
            ready.clone(),
        );
        let region_updates_dropped_total = Counter::default();
        r.register(
            "swoosh_region_updates_dropped",
            "Region read-model updates dropped on a full mailbox; the region view is rebuilt from storage before it answers again",
            region_updates_dropped_total.clone(),
        );
        let snapshot_requests_dropped_total = Counter::default();
        r.register(
            "swoosh_snapshot_requests_dropped",
            "Snapshot requests dropped on a full snapshotter mailbox",
            snapshot_requests_dropped_total.clone(),
        );
        let snapshots_total = Family::<KindLabel, Counter>::default();
        r.register(
            "swoosh_snapshots",
            "Snapshots written by the node, by outcome: ok, failed (a failed one is retried at the next interval; the log holds everything)",
            snapshots_total.clone(),
        );
        for kind in ["ok", "failed"] {
            let _ = snapshots_total.get_or_create(&KindLabel { kind: kind.into() });
        }
        let compactions_total = Family::<KindLabel, Counter>::default();
        r.register(
            "swoosh_compactions",
            "Automatic compactions of the log (records archived to --archive-dir, then cut), by outcome: ok, failed",
            compactions_total.clone(),
        );
        // Both outcomes exported from the start (0), so an alert on
        // `failed` has a series to compare before the first failure.
        for kind in ["ok", "failed"] {
            let _ = compactions_total.get_or_create(&KindLabel { kind: kind.into() });
        }
        let compacted_records_total = Counter::default();
        r.register(
            "swoosh_compacted_records",
            "Records archived and cut from the store by automatic compaction",
            compacted_records_total.clone(),
        );
        let wal_base_index = Gauge::default();
        r.register(
            "swoosh_wal_base_index",
            "The store's log starts after this record (its WAL base; 0: at record 1)",
            wal_base_index.clone(),
        );
        let base_snapshot_damaged = Gauge::default();
        r.register(
            "swoosh_base_snapshot_damaged",
            "1 while the snapshot at the WAL base (the only proof of archived records) fails its check, run after every snapshot; rebuild it with swoosh snapshot rebuild-base",
            base_snapshot_damaged.clone(),
        );
        let wal_index = Gauge::default();
        r.register(
            "swoosh_wal_index",
            "Index of the last durable WAL record",
            wal_index.clone(),
        );
        let backpressure_total = Counter::default();
        r.register(
            "swoosh_backpressure",
            "Proposals answered 429 because a queue was full",
            backpressure_total.clone(),
        );
        let idempotency_window_keys = Gauge::default();
        r.register(
            "swoosh_idempotency_window_keys",
            "Idempotency keys in the state's bounded window; older keys are answered from the durable index",
            idempotency_window_keys.clone(),
        );
        let idempotency_recalled_total = Counter::default();
        r.register(
            "swoosh_idempotency_recalled",
            "Proposals whose idempotency key had left the state's window and was found in the durable index",
            idempotency_recalled_total.clone(),
        );
        let index_rebuilds_total = Counter::default();
        r.register(
            "swoosh_index_rebuilds",
            "Starts that found the idempotency or decision index disagreeing with the log and rebuilt both from it",
            index_rebuilds_total.clone(),
        );
        let replica_connected = Family::<FollowerLabel, Gauge>::default();
        r.register(
            "swoosh_replica_connected",
            "1 while the leader's swarm has a connection to the follower (leader only)",
            replica_connected.clone(),
        );
        let replica_halted = Family::<FollowerLabel, Gauge>::default();
        r.register(
            "swoosh_replica_halted",
            "1 when the follower's last report says it halted (divergence or write failure)",
            replica_halted.clone(),
        );
        let replica_lag_records = Family::<FollowerLabel, Gauge>::default();
        r.register(
            "swoosh_replica_lag_records",
            "Records the follower's last report had not yet applied",
            replica_lag_records.clone(),
        );
        let replica_report_age_seconds =
            Family::<FollowerLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        r.register(
            "swoosh_replica_report_age_seconds",
            "Seconds since the follower's last status report reached the leader",
            replica_report_age_seconds.clone(),
        );
        let replication_events_total = Family::<ReplicationEventLabel, Counter>::default();
        r.register(
            "swoosh_leader_replication_events",
            "The leader's replication since its start, by event: batches_published, records_published, range_requests_served, range_records_served (catch-up), snapshot_offers, snapshot_chunks_served, requests_refused, peers_refused, publish_errors",
            replication_events_total.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            transition_total,
            guard_fail_total,
            state_advance_latency_seconds,
            retry_count,
            quarantine_total,
            recovery_time_seconds,
            recovery_in_progress,
            start_time_seconds,
            store_used_bytes,
            store_capacity_bytes,
            license_expiry_seconds,
            wal_lag_records,
            commit_batch_records,
            fsync_latency_seconds,
            rejected_total,
            http_refused_total,
            attention_events_total,
            attention_items,
            actor_restarts_total,
            ready,
            region_updates_dropped_total,
            snapshot_requests_dropped_total,
            snapshots_total,
            compactions_total,
            compacted_records_total,
            wal_base_index,
            base_snapshot_damaged,
            wal_index,
            backpressure_total,
            idempotency_window_keys,
            idempotency_recalled_total,
            index_rebuilds_total,
            replica_connected,
            replica_halted,
            replica_lag_records,
            replica_report_age_seconds,
            replication_events_total,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_labels_are_a_closed_set() {
        for known in [
            "quorum",
            "license_token",
            "signature",
            "state_hash",
            "inputs",
            "inputs.findings",
        ] {
            assert_eq!(GuardLabel::checked(known).guard, known);
        }
        for chosen in [
            "inputs.votes[1].body.genesis",
            "inputs.Attacker",
            &format!("inputs.{}", "a".repeat(60)),
            "quorum2",
            "",
            "x\"} 1\nswoosh_ready 0",
        ] {
            assert_eq!(
                GuardLabel::checked(chosen).guard,
                GUARD_LABEL_OTHER,
                "{chosen:?}"
            );
        }
    }
}
