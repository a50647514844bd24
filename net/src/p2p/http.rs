//! A follower's read-only HTTP surface: `GET /state`, `GET /health`,
//! `GET /metrics`; proposals (`POST /transition`) get `503` naming the leader.

use super::follower::{lock_shared, FollowerShared};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

type Shared = Arc<Mutex<FollowerShared>>;

pub fn follower_router(shared: Shared) -> Router {
    Router::new()
        .route("/state", get(state))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/transition", post(not_leader))
        .route("/proposals", post(not_leader))
        .with_state(shared)
}

async fn state(State(s): State<Shared>) -> Json<serde_json::Value> {
    let s = lock_shared(&s);
    let node = s.repl.node();
    let projects: BTreeMap<&str, String> = node
        .projects
        .iter()
        .map(|(id, e)| (id.as_str(), e.hash.to_string()))
        .collect();
    Json(json!({
        "role": "follower",
        "index": node.index,
        "head_record": node.head_record.to_string(),
        "root_hash": node.root_hash().to_string(),
        "genesis_hash": node.genesis_hash.to_string(),
        "projects": projects,
    }))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn health(State(s): State<Shared>) -> Response {
    let s = lock_shared(&s);
    let st = s.repl.status();
    let lag_ms = if st.lag_records == 0 {
        0
    } else {
        now_ms().saturating_sub(s.last_applied_ms)
    };
    let halted = st.halted || s.halted_reason.is_some();
    let body = json!({
        "role": "follower",
        "status": if halted { "halted" } else if s.leader_connected { "ok" } else { "disconnected" },
        "applied_index": st.applied_index,
        "persisted_index": s.persisted_index(),
        "leader_index": st.leader_index,
        "lag_records": st.lag_records,
        "lag_ms": lag_ms,
        "root_hash": st.root_hash.to_string(),
        "halted": s.halted_reason,
        "leader": s.leader_addr,
        "stats": s.repl.stats(),
        "undecryptable": s.undecryptable,
        "malformed": s.malformed + s.net.malformed_chunks.load(Ordering::Relaxed),
        // Non-zero: the worker fell behind and gossip was dropped (fetched
        // again by range); a sign this follower lacks CPU for the write rate.
        "inbox_full_drops": s.net.inbox_full_drops.load(Ordering::Relaxed),
        "wal_commits": s.commits,
        "wal_committed_records": s.committed_records,
        "refusals": s.last_refusals,
    });
    let code = if halted {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(s): State<Shared>) -> String {
    let s = lock_shared(&s);
    let st = s.repl.status();
    let f = s.repl.stats();
    format!(
        "# TYPE swoosh_follower_applied_index gauge\nswoosh_follower_applied_index {}\n\
         # TYPE swoosh_follower_lag_records gauge\nswoosh_follower_lag_records {}\n\
         # TYPE swoosh_follower_records_applied_total counter\nswoosh_follower_records_applied_total {}\n\
         # TYPE swoosh_follower_refused_total counter\nswoosh_follower_refused_total {}\n\
         # TYPE swoosh_follower_undecryptable_total counter\nswoosh_follower_undecryptable_total {}\n\
         # TYPE swoosh_follower_halted gauge\nswoosh_follower_halted {}\n\
         # TYPE swoosh_follower_inbox_full_drops_total counter\nswoosh_follower_inbox_full_drops_total {}\n\
         # TYPE swoosh_follower_wal_commits_total counter\nswoosh_follower_wal_commits_total {}\n",
        st.applied_index,
        st.lag_records,
        f.records_applied,
        f.refused,
        s.undecryptable,
        u8::from(st.halted || s.halted_reason.is_some()),
        s.net.inbox_full_drops.load(Ordering::Relaxed),
        s.commits,
    )
}

async fn not_leader(State(s): State<Shared>) -> Response {
    let leader = lock_shared(&s).leader_addr.clone();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "error": "not_leader",
            "message": format!("this node is a read-only follower; send proposals to the leader at {leader}"),
            "leader": leader,
        })),
    )
        .into_response()
}

/// Serve the follower's read-only surface on `listener` until the process ends.
pub async fn serve_follower(
    listener: tokio::net::TcpListener,
    shared: Shared,
) -> std::io::Result<()> {
    // The leader's accept loop and limits: header read timeout, connection
    // cap, bounded shutdown (axum::serve has none of them).
    crate::http::serve_router(
        listener,
        follower_router(shared),
        std::future::pending(),
        crate::http::ServeLimits::default(),
    )
    .await;
    Ok(())
}
