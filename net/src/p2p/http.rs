//! A follower's read-only HTTP surface, in the leader's shapes where the
//! leader has the endpoint:
//!
//! - `GET /state?project=…&projection=…`: the leader's `StateReply`, read
//!   from the follower's replicated state, with the leader's query parsing,
//!   projection rules, limits and error bodies.
//! - `GET /state/summary`: the whole replicated node (index, head record,
//!   root and genesis hashes, every project's HEAD).
//! - `GET /health`: the leader's `HealthReply` (`role: follower`) plus the
//!   follower's replication position (lag in records and ms).
//! - `GET /metrics`: `swoosh_follower_*` text.
//! - `GET /openapi.json`: exactly these routes.
//! - `POST /transition`: `503 not_leader` naming the leader (its HTTP URL
//!   when the follower was given one, see [`FollowerHttp`]).
//!
//! Anything else is a JSON `404 not_found` / `405 method_not_allowed` naming
//! what a follower serves.

use super::follower::{lock_shared, FollowerShared};
use crate::api::{ErrorBody, HealthReply, StateReply};
use crate::http::{
    body_err, err, method_not_allowed, parse_state_query, query_rejection, StateQuery,
};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use swoosh_core::state::ProjectState;
use swoosh_core::statechart::Region;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

type Shared = Arc<Mutex<FollowerShared>>;

/// What a follower names in answers that are not its own to give.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowerHttp {
    /// The leader's HTTP URL (`swoosh follow --leader-http`), validated by
    /// [`parse_leader_http`]: the `leader` of a `503 not_leader`. Without
    /// it the `503` names the leader's libp2p address and says it is one.
    pub leader_http: Option<String>,
}

/// Check that `s` is an `http://` or `https://` URL with a host and no
/// query or fragment (a base URL the SDK appends `/transition` to), and
/// return it without a trailing `/`. The error says what is wrong.
pub fn parse_leader_http(s: &str) -> Result<String, String> {
    let hint = "give the leader's HTTP base URL, e.g. http://10.0.0.1:7700 (what `swoosh serve --http` listens on)";
    let u =
        reqwest::Url::parse(s.trim()).map_err(|e| format!("{s:?} is not a URL ({e}); {hint}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!(
            "{s:?} is a {}: URL, not http: or https: (the leader's libp2p address goes to --leader); {hint}",
            u.scheme()
        ));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} names no host; {hint}"));
    }
    // Served to anyone in /health and every 503: no credentials in it.
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!(
            "the URL carries a user name or password, which /health and every 503 would show to anyone; {hint}"
        ));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(format!(
            "{s:?} has a query or fragment; a base URL has neither; {hint}"
        ));
    }
    Ok(u.as_str().trim_end_matches('/').to_string())
}

#[derive(Clone)]
struct App {
    shared: Shared,
    opts: Arc<FollowerHttp>,
}

/// A follower's `GET /health`: the leader's health document (`role:
/// follower`, `index` = `applied_index`; `inflight` and `restarts` are 0,
/// `followers` empty) plus its replication position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FollowerHealthReply {
    #[serde(flatten)]
    pub base: HealthReply,
    /// Records applied (re-run through the reducer) from the leader's log.
    pub applied_index: u64,
    /// Records durable in this follower's own WAL.
    pub persisted_index: u64,
    /// The highest index the leader announced.
    pub leader_index: u64,
    /// `leader_index - applied_index`.
    pub lag_records: u64,
    /// 0 when caught up; else ms since this follower last applied a record.
    pub lag_ms: u64,
    /// Why this follower stopped applying (`null` while it applies).
    pub halted: Option<String>,
    /// The leader's libp2p address this follower dials.
    pub leader: String,
    /// The leader's HTTP URL (`--leader-http`), if given.
    pub leader_http: Option<String>,
    /// The replication protocol's counters.
    #[schema(value_type = Object)]
    pub stats: Value,
    pub undecryptable: u64,
    pub malformed: u64,
    /// Gossip dropped on the worker's full inbox (fetched again by range);
    /// non-zero: this follower lacks CPU for the write rate.
    pub inbox_full_drops: u64,
    /// Group commits of this follower's WAL, and the records they held.
    pub wal_commits: u64,
    pub wal_committed_records: u64,
    /// The leader's snapshots installed into this follower's store.
    pub snapshots_installed: u64,
    /// What is wrong with the snapshot at this follower's WAL base, the only
    /// proof of the records it archived (`null`: sound, or no base; also
    /// `swoosh_base_snapshot_damaged`).
    #[serde(default)]
    pub base_snapshot_fault: Option<String>,
    /// The last refused replication messages, `kind: message`.
    pub refusals: Vec<String>,
}

/// A follower's `GET /state/summary`: its whole replicated node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FollowerStateSummary {
    /// Always `follower`.
    pub role: String,
    /// Records applied.
    pub index: u64,
    /// Hash of the last applied record (the genesis hash when none).
    pub head_record: String,
    pub root_hash: String,
    pub genesis_hash: String,
    /// Every project this node holds, with its HEAD hash.
    pub projects: BTreeMap<String, String>,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "SWOOSH follower",
        description = "A follower's read-only surface: the leader's GET /state and GET /health shapes, read from the replicated state. Proposals go to the leader (POST /transition here answers 503 not_leader)."
    ),
    components(schemas(StateReply, FollowerHealthReply, FollowerStateSummary, ErrorBody))
)]
struct FollowerApiDoc;

/// The routes a follower serves, for the `404`'s message.
const ROUTES: &str = "GET /state, GET /state/summary, GET /health, GET /metrics, GET /openapi.json (POST /transition answers 503 not_leader); /decisions and /attention are the leader's";

/// The follower's router with no leader URL (the `503` names the leader's
/// libp2p address).
pub fn follower_router(shared: Shared) -> Router {
    follower_router_with(shared, FollowerHttp::default())
}

/// The follower's router and what it names of the leader.
pub fn follower_router_with(shared: Shared, opts: FollowerHttp) -> Router {
    follower_router_doc(shared, opts).0
}

/// [`follower_router_with`] and its OpenAPI document (also served at
/// `/openapi.json`).
pub fn follower_router_doc(
    shared: Shared,
    opts: FollowerHttp,
) -> (Router, utoipa::openapi::OpenApi) {
    let (router, api) = OpenApiRouter::with_openapi(<FollowerApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(state))
        .routes(routes!(state_summary))
        .routes(routes!(health))
        .routes(routes!(metrics))
        .routes(routes!(not_leader))
        .with_state(App {
            shared,
            opts: Arc::new(opts),
        })
        .split_for_parts();
    let doc = api.clone();
    let router = router
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { Json(doc) }),
        )
        // After every route: it applies to the routes registered so far.
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            method_not_allowed(&method, &uri, " of a follower")
        })
        .fallback(|uri: Uri| async move {
            err(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no such endpoint on this read-only follower: {:?}; it serves {ROUTES} (see GET /openapi.json)",
                    super::bounds::clip(uri.path())
                ),
            )
        });
    (router, api)
}

// ---- GET /state: the leader's query parsing, rules and error bodies ----
// (`crate::http`'s own, so the two servers cannot drift apart; the tests
// compare their replies.)

/// The sections of region `r` of a project document, named as the leader's
/// region views name them.
fn section_values(st: &ProjectState, r: Region) -> Vec<(&'static str, Value)> {
    fn v<T: Serialize>(x: &T) -> Value {
        serde_json::to_value(x).unwrap_or(Value::Null)
    }
    match r {
        Region::Project => vec![
            ("meta", v(&st.meta)),
            ("epoch", v(&st.epoch)),
            ("hlc_last", v(&st.hlc_last)),
            ("applied", v(&st.applied)),
        ],
        Region::Boot => vec![("boot", v(&st.boot))],
        Region::Ingestion => vec![("ingestion", v(&st.ingestion))],
        Region::Council => vec![("council", v(&st.council))],
        Region::Environment => vec![("environment", v(&st.environment))],
        Region::Execution => vec![("execution", v(&st.execution))],
        Region::Control => vec![("control", v(&st.control))],
        Region::Policy => vec![("policy", v(&st.policy))],
    }
}

/// Read a project's state from this follower's replicated state: its HEAD
/// hash and the requested sections, as the leader answers. `index` is the
/// follower's applied index (the read is current as of it); a project never
/// touched reads as its initial document at index 0.
#[utoipa::path(get, path = "/state", params(StateQuery), responses((status = 200, description = "the project's replicated HEAD and the projected sections, in the leader's shape", body = StateReply), (status = 400, description = "`malformed`: a bad project id or projection (the field is named)", body = ErrorBody)))]
async fn state(State(app): State<App>, q: Result<Query<StateQuery>, QueryRejection>) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(r) => return query_rejection(r),
    };
    let (project, regions) = match parse_state_query(q) {
        Ok(x) => x,
        Err(e) => return body_err(StatusCode::BAD_REQUEST, *e),
    };
    let regions: &[Region] = if regions.is_empty() {
        &Region::ALL
    } else {
        &regions
    };
    let s = lock_shared(&app.shared);
    let node = s.repl.node();
    let (index, hash, doc) = match node.projects.get(&project) {
        Some(e) => (node.index, e.hash, std::borrow::Cow::Borrowed(&e.state)),
        None => {
            let initial = ProjectState::initial(&node.genesis, node.genesis_hash, &project);
            (0, initial.hash(), std::borrow::Cow::Owned(initial))
        }
    };
    let projection: BTreeMap<String, Value> = regions
        .iter()
        .flat_map(|r| section_values(&doc, *r))
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    drop(s);
    Json(StateReply {
        project,
        index,
        hash: hash.to_string(),
        projection,
    })
    .into_response()
}

/// This follower's whole replicated node: index, head record, root and
/// genesis hashes, and every project's HEAD.
#[utoipa::path(get, path = "/state/summary", responses((status = 200, description = "the whole replicated node: index, root hash and every project's hash", body = FollowerStateSummary)))]
async fn state_summary(State(app): State<App>) -> Json<FollowerStateSummary> {
    let s = lock_shared(&app.shared);
    let node = s.repl.node();
    Json(FollowerStateSummary {
        role: "follower".into(),
        index: node.index,
        head_record: node.head_record.to_string(),
        root_hash: node.root_hash().to_string(),
        genesis_hash: node.genesis_hash.to_string(),
        projects: node
            .projects
            .iter()
            .map(|(id, e)| (id.clone(), e.hash.to_string()))
            .collect(),
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Liveness and replication position: the leader's health document with
/// `role: follower` plus lag in records and ms. `status`: `ok` (connected
/// to the leader), `disconnected` (redialling; it serves what it holds) or
/// `halted` (503: it applies nothing more).
#[utoipa::path(
    get,
    path = "/health",
    responses(
        (status = 200, description = "ok or disconnected", body = FollowerHealthReply),
        (status = 503, description = "halted; the body is the same health document", body = FollowerHealthReply),
    )
)]
async fn health(State(app): State<App>) -> Response {
    let s = lock_shared(&app.shared);
    let st = s.repl.status();
    let lag_ms = if st.lag_records == 0 {
        0
    } else {
        now_ms().saturating_sub(s.last_applied_ms)
    };
    let halted = st.halted || s.halted_reason.is_some();
    let persisted = s.persisted_index();
    let status = if halted {
        "halted"
    } else if s.leader_connected {
        "ok"
    } else {
        "disconnected"
    };
    let leader_named = match &app.opts.leader_http {
        Some(url) => format!("{url} ({})", s.leader_addr),
        None => s.leader_addr.clone(),
    };
    let consensus = if halted {
        format!(
            "follower of the single-writer leader at {leader_named}; ALARM: HALTED at applied index {}, it applies nothing more ({})",
            st.applied_index,
            s.halted_reason.as_deref().unwrap_or("divergence")
        )
    } else if !s.leader_connected {
        format!(
            "follower of the single-writer leader at {leader_named}; DISCONNECTED (redialling every {} ms), applied {} of the leader's last announced {}",
            super::follower::REDIAL_MS,
            st.applied_index,
            st.leader_index
        )
    } else {
        format!(
            "follower of the single-writer leader at {leader_named}; applied {} of {}, lag {} records / {lag_ms} ms",
            st.applied_index, st.leader_index, st.lag_records
        )
    };
    let node = s.repl.node();
    let body = FollowerHealthReply {
        base: HealthReply {
            status: status.into(),
            role: "follower".into(),
            consensus,
            index: st.applied_index,
            root_hash: Some(st.root_hash.to_string()),
            last_snapshot_hlc: s.last_snapshot.and_then(|(_, h)| h).map(|h| h.to_string()),
            last_snapshot_index: s.last_snapshot.map(|(i, _)| i),
            // As on the leader: records applied in memory, not yet durable
            // in this node's WAL.
            wal_lag: st.applied_index.saturating_sub(persisted),
            inflight: 0,
            restarts: 0,
            genesis_hash: node.genesis_hash.to_string(),
            cluster_id: node.genesis.cluster_id.clone(),
            followers: vec![],
            recovery: None,
        },
        applied_index: st.applied_index,
        persisted_index: persisted,
        leader_index: st.leader_index,
        lag_records: st.lag_records,
        lag_ms,
        halted: s.halted_reason.clone(),
        leader: s.leader_addr.clone(),
        leader_http: app.opts.leader_http.clone(),
        stats: serde_json::to_value(s.repl.stats()).unwrap_or(Value::Null),
        undecryptable: s.undecryptable,
        malformed: s.malformed + s.net.malformed_chunks.load(Ordering::Relaxed),
        inbox_full_drops: s.net.inbox_full_drops.load(Ordering::Relaxed),
        wal_commits: s.commits,
        wal_committed_records: s.committed_records,
        snapshots_installed: s.snapshots_installed,
        base_snapshot_fault: s.base_snapshot_fault.clone(),
        refusals: s.last_refusals.clone(),
    };
    drop(s);
    let code = if halted {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body)).into_response()
}

/// The follower's metrics (`swoosh_follower_*`, Prometheus text).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
async fn metrics(State(app): State<App>) -> String {
    let s = lock_shared(&app.shared);
    let st = s.repl.status();
    let f = s.repl.stats();
    let hists = format!(
        "{}{}",
        s.commit_seconds.render(
            "swoosh_fsync_latency_seconds",
            "Duration of one of this follower's WAL group commits, fsyncs included"
        ),
        s.commit_records.render(
            "swoosh_commit_batch_records",
            "Records per WAL group commit of this follower"
        )
    );
    let text = format!(
        "# TYPE swoosh_follower_applied_index gauge\nswoosh_follower_applied_index {}\n\
         # TYPE swoosh_follower_lag_records gauge\nswoosh_follower_lag_records {}\n\
         # TYPE swoosh_follower_records_applied_total counter\nswoosh_follower_records_applied_total {}\n\
         # TYPE swoosh_follower_refused_total counter\nswoosh_follower_refused_total {}\n\
         # TYPE swoosh_follower_undecryptable_total counter\nswoosh_follower_undecryptable_total {}\n\
         # TYPE swoosh_follower_halted gauge\nswoosh_follower_halted {}\n\
         # TYPE swoosh_follower_inbox_full_drops_total counter\nswoosh_follower_inbox_full_drops_total {}\n\
         # TYPE swoosh_follower_worker_stopped_drops_total counter\nswoosh_follower_worker_stopped_drops_total {}\n\
         # TYPE swoosh_follower_wal_commits_total counter\nswoosh_follower_wal_commits_total {}\n\
         # TYPE swoosh_recovery_in_progress gauge\nswoosh_recovery_in_progress 0\n\
         # TYPE swoosh_store_used_bytes gauge\nswoosh_store_used_bytes {}\n\
         # TYPE swoosh_store_capacity_bytes gauge\nswoosh_store_capacity_bytes {}\n\
         # TYPE swoosh_start_time_seconds gauge\nswoosh_start_time_seconds {}\n\
         # TYPE swoosh_compactions_total counter\nswoosh_compactions_total{{kind=\"ok\"}} {}\nswoosh_compactions_total{{kind=\"failed\"}} {}\n\
         # TYPE swoosh_compacted_records_total counter\nswoosh_compacted_records_total {}\n\
         # TYPE swoosh_wal_base_index gauge\nswoosh_wal_base_index {}\n\
         # TYPE swoosh_base_snapshot_damaged gauge\nswoosh_base_snapshot_damaged {}\n\
         # TYPE swoosh_snapshots_total counter\nswoosh_snapshots_total{{kind=\"ok\"}} {}\nswoosh_snapshots_total{{kind=\"failed\"}} {}\n",
        st.applied_index,
        st.lag_records,
        f.records_applied,
        f.refused,
        s.undecryptable,
        u8::from(st.halted || s.halted_reason.is_some()),
        s.net.inbox_full_drops.load(Ordering::Relaxed),
        s.net.worker_stopped_drops.load(Ordering::Relaxed),
        s.commits,
        s.store_usage.map_or(0, |u| u.used_bytes),
        s.store_usage.map_or(0, |u| u.capacity_bytes),
        s.start_time_s,
        s.compactions_ok,
        s.compactions_failed,
        s.compacted_records,
        s.wal_base_index,
        u8::from(s.base_snapshot_fault.is_some()),
        s.snapshots_ok,
        s.snapshots_failed,
    );
    text + &hists
}

/// A follower takes no proposals: `503 not_leader` with the leader's
/// address in `leader` (its HTTP URL when the follower was started with
/// `--leader-http`, else its libp2p address, which the message says).
#[utoipa::path(post, path = "/transition", responses((status = 503, description = "not_leader: send the proposal to `leader`", body = ErrorBody)))]
async fn not_leader(State(app): State<App>) -> Response {
    let (leader, message) = match &app.opts.leader_http {
        Some(url) => (
            url.clone(),
            format!("this node is a read-only follower and takes no proposals; send them to the leader at {url}"),
        ),
        None => {
            let p2p = lock_shared(&app.shared).leader_addr.clone();
            let message = format!(
                "this node is a read-only follower and takes no proposals; send them to the leader's HTTP URL. This follower knows only the leader's p2p address, {p2p} (not an HTTP URL); start the follower with --leader-http URL to name the leader's HTTP URL here"
            );
            (p2p, message)
        }
    };
    body_err(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorBody {
            error: "not_leader".into(),
            message,
            leader: Some(leader),
            ..Default::default()
        },
    )
}

/// Serve the follower's read-only surface on `listener` until the process
/// ends, naming the leader by its libp2p address only.
pub async fn serve_follower(
    listener: tokio::net::TcpListener,
    shared: Shared,
) -> std::io::Result<()> {
    serve_follower_with(listener, shared, FollowerHttp::default()).await
}

/// [`serve_follower`] with what the follower names of the leader.
pub async fn serve_follower_with(
    listener: tokio::net::TcpListener,
    shared: Shared,
    opts: FollowerHttp,
) -> std::io::Result<()> {
    // The leader's accept loop and limits: header read timeout, connection
    // cap, bounded shutdown (axum::serve has none of them).
    crate::http::serve_router(
        listener,
        follower_router_with(shared, opts),
        std::future::pending(),
        crate::http::ServeLimits::default(),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_leader_http;

    #[test]
    fn leader_http_must_be_an_http_base_url() {
        assert_eq!(
            parse_leader_http("http://127.0.0.1:7700/").as_deref(),
            Ok("http://127.0.0.1:7700")
        );
        assert_eq!(
            parse_leader_http("https://leader.example/swoosh").as_deref(),
            Ok("https://leader.example/swoosh")
        );
        for bad in [
            "/ip4/127.0.0.1/tcp/7800",
            "127.0.0.1:7700",
            "ftp://leader",
            "http://leader:7700/?x=1",
            "http://leader:7700/#f",
            "http://user:secret@leader:7700",
            "",
        ] {
            let e = parse_leader_http(bad).expect_err(bad);
            assert!(e.contains("http://10.0.0.1:7700"), "{bad}: {e}");
        }
    }
}
