//! The HTTP API (axum), with its OpenAPI document generated from the
//! handlers (utoipa). Handlers only translate between JSON and the actors'
//! `NodeHandle`; every error body is JSON (see `api::ErrorBody`).

use crate::api::*;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::future::Future;
use swoosh_actors::{NodeHandle, SubmitResult};
use swoosh_core::attention::{Band, SURFACE_BAND_MIN};
use swoosh_core::reducer::{RejectKind, Rejection};
use swoosh_core::statechart::Region;
use swoosh_core::{Hash, Proposal};
use swoosh_storage::LmdbStore;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

pub type Node = NodeHandle<LmdbStore>;

#[derive(Clone)]
pub struct AppState {
    pub node: Node,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "SWOOSH",
        description = "Deterministic orchestrator: signed, idempotent transition proposals over a hierarchical statechart."
    ),
    components(schemas(
        ProposalSchema,
        AcceptedReply,
        ErrorBody,
        StateReply,
        HealthReply,
        FollowerReply,
        AttentionReply,
        AttentionItem
    ))
)]
struct ApiDoc;

/// The router and its OpenAPI document (also served at `/openapi.json`).
pub fn router(node: Node) -> (axum::Router, utoipa::openapi::OpenApi) {
    let (router, api) = OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(post_transition))
        .routes(routes!(get_state))
        .routes(routes!(get_health))
        .routes(routes!(get_metrics))
        .routes(routes!(get_decision))
        .routes(routes!(get_attention))
        .with_state(AppState { node })
        .split_for_parts();
    let doc = api.clone();
    let router = router
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { Json(doc) }),
        )
        .fallback(|| async {
            err(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see GET /openapi.json".into(),
            )
        })
        // The body limit is enforced by the handler so the 413 is JSON.
        .layer(axum::extract::DefaultBodyLimit::disable());
    (router, api)
}

/// Serve until `shutdown` resolves, then stop taking proposals, let every
/// admitted one become durable (the WAL is flushed) and stop the node.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Node,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (app, _) = router(node.clone());
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    node.shutdown().await;
    r
}

fn err(status: StatusCode, error: &str, message: String) -> Response {
    (
        status,
        Json(ErrorBody {
            error: error.into(),
            message,
            ..Default::default()
        }),
    )
        .into_response()
}

fn body_err(status: StatusCode, body: ErrorBody) -> Response {
    let retry = body.retry_after_ms;
    let mut resp = (status, Json(body)).into_response();
    if let Some(ms) = retry {
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            let secs = ms.div_ceil(1000).max(1);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
    }
    resp
}

fn kind_name(k: RejectKind) -> &'static str {
    match k {
        RejectKind::Malformed => "malformed",
        RejectKind::UnknownTransition => "unknown_transition",
        RejectKind::Guard => "guard",
        RejectKind::BadSignature => "bad_signature",
        RejectKind::UnknownSigner => "unknown_signer",
        RejectKind::Forbidden => "forbidden",
        RejectKind::StaleHash => "stale_hash",
        RejectKind::IdemConflict => "idem_conflict",
        RejectKind::HlcOrder => "hlc_order",
    }
}

fn rejection_response(r: Rejection) -> Response {
    let status = StatusCode::from_u16(r.kind.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let field = (r.kind == RejectKind::Malformed).then(|| r.guard.clone());
    body_err(
        status,
        ErrorBody {
            error: kind_name(r.kind).into(),
            message: r.reasons.join("; "),
            guard: Some(r.guard),
            reasons: r.reasons,
            field,
            head_hash: r.head_hash.map(|h| h.to_string()),
            hlc_last: r.hlc_last.map(|h| h.to_string()),
            retry_after_ms: r.retry_after_ms,
            leader: None,
        },
    )
}

/// Parse a proposal, naming the JSON field at fault.
pub fn parse_proposal(bytes: &[u8]) -> Result<Proposal, Box<ErrorBody>> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let p: Proposal = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = if path == "." || path.is_empty() {
            // serde names missing/unknown fields in the message itself.
            let m = inner.to_string();
            m.split('`').nth(1).map(str::to_string)
        } else {
            Some(path)
        };
        Box::new(ErrorBody {
            error: "malformed".into(),
            message: format!(
                "the body is not a valid proposal{}: {inner}; send a JSON object with the fields of GET /openapi.json (ProposalSchema)",
                field.as_deref().map(|f| format!(" (field `{f}`)")).unwrap_or_default()
            ),
            field,
            ..Default::default()
        })
    })?;
    Ok(p)
}

/// Submit a signed transition proposal.
#[utoipa::path(
    post,
    path = "/transition",
    request_body(content = ProposalSchema, description = "a signed proposal", content_type = "application/json"),
    responses(
        (status = 202, description = "accepted and durable", body = AcceptedReply),
        (status = 400, description = "refused by a guard, malformed body or unknown transition", body = ErrorBody),
        (status = 401, description = "bad signature or unknown signer", body = ErrorBody),
        (status = 403, description = "the signer lacks the role", body = ErrorBody),
        (status = 409, description = "stale state hash (with head_hash and hlc_last), HLC order, or idempotency conflict", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "backpressure; retry after Retry-After", body = ErrorBody),
        (status = 503, description = "not the leader or not available now", body = ErrorBody),
    )
)]
async fn post_transition(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    let too_large = || {
        err(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body exceeds {BODY_BYTES_MAX} bytes; shrink the inputs (large artifacts belong in evidence addresses, not inputs)"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > BODY_BYTES_MAX {
            return too_large();
        }
    }
    let bytes: Bytes = match axum::body::to_bytes(body, BODY_BYTES_MAX).await {
        Ok(b) => b,
        Err(_) => return too_large(),
    };
    let p = match parse_proposal(&bytes) {
        Ok(p) => p,
        Err(e) => return body_err(StatusCode::BAD_REQUEST, *e),
    };
    match st.node.submit(p).await {
        SubmitResult::Accepted(ok) => (
            StatusCode::ACCEPTED,
            Json(AcceptedReply {
                index: ok.index,
                transition: ok.transition,
                state_post_hash: ok.state_post_hash.to_string(),
                decision: swoosh_core::record::decision_address(&ok.decision),
                decision_hash: ok.decision.to_string(),
                duplicate: ok.duplicate,
            }),
        )
            .into_response(),
        SubmitResult::Rejected(r) => rejection_response(r),
        SubmitResult::Busy { retry_after_ms, reason } => body_err(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorBody {
                error: "backpressure".into(),
                message: format!("{reason}; retry after {retry_after_ms} ms with the same proposal (it is idempotent)"),
                retry_after_ms: Some(retry_after_ms),
                ..Default::default()
            },
        ),
        SubmitResult::Unavailable { reason } => body_err(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorBody { error: "unavailable".into(), message: reason, retry_after_ms: Some(200), ..Default::default() },
        ),
    }
}

#[derive(Deserialize, IntoParams)]
struct StateQuery {
    /// Project id (default `default`).
    project: Option<String>,
    /// Comma-separated regions: Project (meta, epoch, hlc_last), Boot, Ingestion, Council, Environment, Execution, Control, Policy. Default: all.
    projection: Option<String>,
}

/// Read a project's state: its HEAD hash and the requested sections.
#[utoipa::path(get, path = "/state", params(StateQuery), responses((status = 200, body = StateReply), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn get_state(State(st): State<AppState>, Query(q): Query<StateQuery>) -> Response {
    let project = q
        .project
        .unwrap_or_else(|| swoosh_core::state::DEFAULT_PROJECT.to_string());
    if !swoosh_core::state::valid_id(&project) {
        return body_err(
            StatusCode::BAD_REQUEST,
            ErrorBody {
                error: "malformed".into(),
                message: "project must be 1..=64 characters of [a-z0-9._-] starting with a letter or digit".into(),
                field: Some("project".into()),
                ..Default::default()
            },
        );
    }
    let mut regions = vec![];
    if let Some(p) = q.projection.as_deref().filter(|p| !p.is_empty()) {
        for name in p
            .split(',')
            .map(str::trim)
            .take(PROJECTION_SECTIONS_MAX + 1)
        {
            let r = Region::ALL
                .into_iter()
                .find(|r| r.name().eq_ignore_ascii_case(name))
                .or_else(|| name.eq_ignore_ascii_case("meta").then_some(Region::Project));
            match r {
                Some(r) if !regions.contains(&r) => regions.push(r),
                Some(_) => {}
                None => {
                    let names: Vec<&str> = Region::ALL.iter().map(|r| r.name()).collect();
                    return body_err(
                        StatusCode::BAD_REQUEST,
                        ErrorBody {
                            error: "malformed".into(),
                            message: format!(
                                "unknown projection {name:?}; use a comma-separated list of {}",
                                names.join(", ")
                            ),
                            field: Some("projection".into()),
                            ..Default::default()
                        },
                    );
                }
            }
        }
    }
    match st.node.state(&project, &regions).await {
        Ok(v) => Json(StateReply {
            project: v.project,
            index: v.index,
            hash: v.hash.to_string(),
            projection: v.projection,
        })
        .into_response(),
        Err(e) => body_err(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorBody {
                error: "unavailable".into(),
                message: e,
                retry_after_ms: Some(100),
                ..Default::default()
            },
        ),
    }
}

/// Liveness, readiness and consensus status.
#[utoipa::path(get, path = "/health", responses((status = 200, body = HealthReply)))]
async fn get_health(State(st): State<AppState>) -> Response {
    let h = st.node.health();
    let status = if h.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(HealthReply {
            status: h.status,
            role: h.role,
            consensus: h.consensus,
            index: h.index,
            root_hash: h.root_hash.map(|x| x.to_string()),
            last_snapshot_hlc: h.last_snapshot_hlc.map(|x| x.to_string()),
            last_snapshot_index: h.last_snapshot_index,
            wal_lag: h.wal_lag,
            inflight: h.inflight,
            restarts: h.restarts,
            genesis_hash: h.genesis_hash.to_string(),
            cluster_id: h.cluster_id,
            followers: h
                .followers
                .into_iter()
                .map(|f| FollowerReply {
                    name: f.name,
                    key: f.key,
                    connected: f.connected,
                    applied_index: f.applied_index,
                    lag_records: f.lag_records,
                    last_report_ms_ago: f.last_report_ms_ago,
                    halted: f.halted,
                })
                .collect(),
        }),
    )
        .into_response()
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
async fn get_metrics(State(st): State<AppState>) -> Response {
    let text = st.node.metrics_text();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Parse `blake3:<hex>`, `<hex>` or `bubble://dr/<hex>`.
pub fn parse_decision_ref(s: &str) -> Option<Hash> {
    let hex = s
        .strip_prefix("bubble://dr/")
        .or_else(|| s.strip_prefix("blake3:"))
        .unwrap_or(s);
    format!("blake3:{hex}").parse().ok()
}

/// A decision record by its content hash.
#[utoipa::path(
    get,
    path = "/decisions/{hash}",
    params(("hash" = String, Path, description = "blake3:<hex>, <hex> or bubble://dr/<hex>")),
    responses((status = 200, description = "the decision record, signed by the leader"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
async fn get_decision(State(st): State<AppState>, Path(hash): Path<String>) -> Response {
    let Some(h) = parse_decision_ref(&hash) else {
        return body_err(
            StatusCode::BAD_REQUEST,
            ErrorBody {
                error: "malformed".into(),
                message: "a decision reference is blake3:<64 lowercase hex>, the bare hex, or bubble://dr/<hex>".into(),
                field: Some("hash".into()),
                ..Default::default()
            },
        );
    };
    match st.node.decision(&h) {
        Ok(Some(doc)) => Json(doc).into_response(),
        Ok(None) => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no decision record {h}; decision addresses come from 202 replies and WAL records"
            ),
        ),
        Err(e) => err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            format!("{e}; run `swoosh wal verify` on this node's directory"),
        ),
    }
}

#[derive(Deserialize, IntoParams)]
struct AttentionQuery {
    /// Lowest band listed: 0..=4 or a name (`ignore-fast`, `background`,
    /// `watch`, `investigate`, `promote`). Default `watch` (2).
    min_band: Option<String>,
}

fn parse_band(s: &str) -> Option<Band> {
    Band::ALL
        .into_iter()
        .find(|b| b.name() == s || b.level().to_string() == s)
}

/// The attention digest: what the scorer surfaced from the node's own
/// operational stream, by band, with what, why, how often and where, whether
/// seen before and what to check next.
#[utoipa::path(get, path = "/attention", params(AttentionQuery), responses((status = 200, body = AttentionReply), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn get_attention(State(st): State<AppState>, Query(q): Query<AttentionQuery>) -> Response {
    let min_band = match q.min_band.as_deref() {
        None | Some("") => SURFACE_BAND_MIN,
        Some(s) => match parse_band(s) {
            Some(b) => b,
            None => {
                return body_err(
                    StatusCode::BAD_REQUEST,
                    ErrorBody {
                        error: "malformed".into(),
                        message: format!("min_band {s:?} is not a band: use 0..=4 or ignore-fast, background, watch, investigate, promote"),
                        field: Some("min_band".into()),
                        ..Default::default()
                    },
                )
            }
        },
    };
    match st.node.attention(min_band).await {
        Ok(v) => Json(attention_reply(v, min_band)).into_response(),
        Err(e) => body_err(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorBody {
                error: "unavailable".into(),
                message: e,
                retry_after_ms: Some(100),
                ..Default::default()
            },
        ),
    }
}

fn attention_reply(v: swoosh_actors::AttentionView, min_band: Band) -> AttentionReply {
    let d = v.digest;
    AttentionReply {
        now_ms: d.now_ms,
        session: d.session,
        observed: d.observed,
        tracked: d.tracked,
        evicted: d.evicted,
        by_band: Band::ALL
            .into_iter()
            .map(|b| (b.name().to_string(), d.by_band[b.level() as usize]))
            .collect(),
        min_band: min_band.name().to_string(),
        items: d
            .items
            .into_iter()
            .map(|i| AttentionItem {
                fingerprint: i.fingerprint,
                kind: i.kind.name().to_string(),
                band: i.band.name().to_string(),
                level: i.level,
                peak_band: i.peak_band.name().to_string(),
                what: i.what,
                why: i.why,
                how_often: i.how_often,
                count: i.count,
                episodes: i.episodes,
                bursts: i.bursts,
                first_seen_ms: i.first_seen_ms,
                last_seen_ms: i.last_seen_ms,
                projects: i.projects,
                signers: i.signers,
                peers: i.peers,
                seen_before: i.seen_before,
                sessions: i.sessions,
                heals: i.heals,
                open: i.open,
                next: i.next,
                factors: i
                    .factors
                    .into_iter()
                    .map(|f| format!("{:+} {}: {}", f.delta, f.name, f.why))
                    .collect(),
                example: i.example,
            })
            .collect(),
        counts: v.counts,
        memory_file: v.memory_file,
        saved_at_ms: v.saved_at_ms,
        memory_note: v.memory_note,
    }
}
