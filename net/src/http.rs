//! The HTTP API (axum), with its OpenAPI document generated from the
//! handlers (utoipa). Handlers only translate between JSON and the actors'
//! `NodeHandle`; every error body is JSON (see `api::ErrorBody`).

use crate::api::*;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use swoosh_actors::{NodeHandle, SubmitResult};
use swoosh_core::attention::{Band, SURFACE_BAND_MIN};
use swoosh_core::reducer::{RejectKind, Rejection};
use swoosh_core::statechart::Region;
use swoosh_core::{Hash, Proposal};
use swoosh_storage::LmdbStore;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

pub type Node = NodeHandle<LmdbStore>;

#[derive(Clone)]
pub struct AppState {
    pub node: Node,
    pub limits: ServeLimits,
}

/// The time and connection limits of [`serve_with`]; [`Default`] is the
/// named constants of [`crate::api`]. Tests shrink them to watch a limit act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// Request line and headers, and the idle wait for the next request on
    /// a kept-alive connection; the connection is closed unanswered after.
    pub header_read: Duration,
    /// A `POST /transition` body, whole; `408 timeout` after.
    pub body_read: Duration,
    /// A response write that makes no progress for this long drops the
    /// connection.
    pub write_stall: Duration,
    /// Connections served at once; one more is answered `503` and closed.
    pub connections_max: usize,
    /// After the shutdown signal: how long open requests may finish before
    /// their connections are dropped and the node is stopped anyway.
    pub shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read: Duration::from_millis(HEADER_READ_TIMEOUT_MS),
            body_read: Duration::from_millis(BODY_READ_TIMEOUT_MS),
            write_stall: Duration::from_millis(WRITE_STALL_TIMEOUT_MS),
            connections_max: CONNECTIONS_MAX,
            shutdown_grace: Duration::from_millis(SHUTDOWN_GRACE_MS),
        }
    }
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
        RecoveryReply,
        AttentionReply,
        AttentionItem
    ))
)]
struct ApiDoc;

/// The router and its OpenAPI document (also served at `/openapi.json`).
pub fn router(node: Node) -> (axum::Router, utoipa::openapi::OpenApi) {
    router_with(node, ServeLimits::default())
}

/// [`router`] with the body read timeout of `limits`.
pub fn router_with(node: Node, limits: ServeLimits) -> (axum::Router, utoipa::openapi::OpenApi) {
    let (router, api) = OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(post_transition))
        .routes(routes!(get_state))
        .routes(routes!(get_health))
        .routes(routes!(get_metrics))
        .routes(routes!(get_decision))
        .routes(routes!(get_attention))
        .with_state(AppState {
            node: node.clone(),
            limits,
        })
        .split_for_parts();
    let fallback_state = AppState { node, limits };
    let doc = api.clone();
    let router = router
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { Json(doc) }),
        )
        // After every route: it applies to the routes registered so far.
        // axum still sets the `Allow` header on its reply.
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            method_not_allowed(&method, &uri, "")
        })
        .fallback(move |method: Method, uri: Uri| {
            let st = fallback_state.clone();
            async move {
                // A 202's `decision` is `bubble://dr/<hex>`; pasted after
                // `/decisions/` unencoded it spans several path segments,
                // which `/decisions/{hash}` does not match.
                // Percent-decoded as the `{hash}` route decodes it (a client
                // may encode the `:` of `bubble:`).
                match uri.path().strip_prefix("/decisions/") {
                    // Bytes that are not UTF-8 decode to U+FFFD, which no
                    // reference holds: refused as any malformed one.
                    Some(raw) if method == Method::GET || method == Method::HEAD => {
                        decision_response(
                            &st,
                            &percent_encoding::percent_decode_str(raw).decode_utf8_lossy(),
                        )
                    }
                    Some(_) => {
                        let mut r = method_not_allowed(&method, &uri, "");
                        r.headers_mut().insert(
                            axum::http::header::ALLOW,
                            axum::http::HeaderValue::from_static("GET,HEAD"),
                        );
                        r
                    }
                    None => err(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "no such endpoint; see GET /openapi.json".into(),
                    ),
                }
            }
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
    serve_with(listener, node, shutdown, ServeLimits::default()).await
}

/// [`serve`] with explicit limits. However slow or stuck a client is, the
/// node is stopped (and its WAL flushed) at most `limits.shutdown_grace`
/// after `shutdown` resolves, plus the node's own stop.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    node: Node,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
) -> std::io::Result<()> {
    let (app, _) = router_with(node.clone(), limits);
    serve_router(listener, app, shutdown, limits).await;
    node.shutdown().await;
    Ok(())
}

/// The accept loop behind [`serve_with`], for any router: HTTP/1.1 with a
/// header read timeout, at most `limits.connections_max` connections, and
/// a graceful shutdown that gives up after `limits.shutdown_grace`.
///
/// Not `axum::serve`: in axum 0.8.9 it installs no hyper timer (so hyper's
/// header read timeout is inert), caps nothing, and its graceful shutdown
/// waits for every connection however long it takes.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
) {
    let (open, ()) = accept_until(&listener, app, shutdown, limits).await;
    // New connections are refused by the kernel from here on.
    drop(listener);
    open.close(limits.shutdown_grace).await;
}

/// The connections an accept loop of [`accept_until`] left open.
pub(crate) struct OpenConnections {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl OpenConnections {
    /// Tell every connection to finish its request in progress and close;
    /// after `grace`, drop the ones still open.
    pub(crate) async fn close(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let open = self.tasks.len();
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                open_at_signal = open,
                still_open = self.tasks.len(),
                grace_ms = grace.as_millis() as u64,
                "shutdown grace elapsed: dropping the connections still open (their clients may resubmit; proposals are idempotent)"
            );
            self.tasks.shutdown().await;
        }
    }
}

/// Accept and serve connections on `listener` with `app` until `shutdown`
/// resolves, and return what it resolved to; the listener stays open (the
/// caller drops it, or hands it to the next server: see
/// [`crate::recovering`]).
pub(crate) async fn accept_until<T>(
    listener: &tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = T>,
    limits: ServeLimits,
) -> (OpenConnections, T) {
    let connections = Arc::new(Semaphore::new(limits.connections_max));
    let refusals = Arc::new(Semaphore::new(REFUSALS_INFLIGHT_MAX));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let out = loop {
        tokio::select! {
            out = &mut shutdown => break out,
            // Reap finished connections so the set stays as small as the cap.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        accept_error(e).await;
                        continue;
                    }
                };
                match connections.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tasks.spawn(serve_connection(stream, app.clone(), limits, stop_rx.clone(), permit));
                    }
                    Err(_) => match refusals.clone().try_acquire_owned() {
                        Ok(permit) => {
                            tasks.spawn(refuse_connection(stream, limits, permit));
                        }
                        // Past both caps the answer itself would be unbounded
                        // work: close unanswered (the client sees a reset).
                        Err(_) => drop(stream),
                    },
                }
            }
        }
    };
    (
        OpenConnections {
            stop: stop_tx,
            tasks,
        },
        out,
    )
}

/// What `accept` failing means: a connection that died in the backlog is
/// nothing; running out of file descriptors or memory needs a pause, or
/// the loop would spin on the same error.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed (out of file descriptors? raise LimitNOFILE); pausing 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: axum::Router,
    limits: ServeLimits,
    mut stop: watch::Receiver<bool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read);
    let service = hyper_util::service::TowerToHyperService::new(app);
    let stream = WriteStall::new(stream, limits.write_stall);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        // The watch guard must not live across the awaits below (not Send).
        _ = async { stop.wait_for(|stop| *stop).await.map(|_| ()) } => {
            // Finish the request in progress (if any) and close; the
            // caller's grace deadline bounds how long that may take.
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error during shutdown");
            }
        }
    }
}

/// A stream whose writes fail with `TimedOut` once they have made no
/// progress for `stall`. hyper has a read timeout for request heads but
/// none for writes: a client that sends requests and stops reading the
/// responses (or keeps its receive window shut) would hold its connection,
/// one of `connections_max`, until TCP gives up on it, which may be never.
struct WriteStall<T> {
    inner: T,
    stall: Duration,
    /// Armed at the first write that could not proceed; disarmed by any
    /// progress.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteStall<T> {
    fn new(inner: T, stall: Duration) -> Self {
        WriteStall {
            inner,
            stall,
            deadline: None,
        }
    }

    /// After the inner stream returned `r`: disarm on progress; on
    /// `Pending`, arm the deadline (its waker is `cx`'s) or fail once it
    /// has passed.
    fn watch<R>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        r: std::task::Poll<std::io::Result<R>>,
    ) -> std::task::Poll<std::io::Result<R>> {
        use std::task::Poll;
        if r.is_ready() {
            self.deadline = None;
            return r;
        }
        let stall = self.stall;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing of the response for {} ms",
                    stall.as_millis()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteStall<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteStall<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, r)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, r)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, r)
    }
}

/// Answer one request on a connection over the cap with `503 unavailable`
/// (JSON, `Retry-After`) and close it, within `REFUSAL_MS_MAX`.
async fn refuse_connection(
    stream: tokio::net::TcpStream,
    limits: ServeLimits,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let connections_max = limits.connections_max;
    let service = hyper::service::service_fn(move |_req| async move {
        Ok::<_, Infallible>(body_err(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorBody {
                error: "unavailable".into(),
                message: format!(
                    "the node already serves {connections_max} connections; retry after Retry-After, and reuse connections (keep-alive) rather than opening one per request"
                ),
                retry_after_ms: Some(1_000),
                ..Default::default()
            },
        ))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(
            limits
                .header_read
                .min(Duration::from_millis(REFUSAL_MS_MAX)),
        )
        .keep_alive(false);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let _ = tokio::time::timeout(Duration::from_millis(REFUSAL_MS_MAX), conn).await;
}

/// The JSON `405` of the leader's and a follower's routers (`whose`: how
/// the path is named, e.g. " of a follower"); axum still sets `Allow`.
pub(crate) fn method_not_allowed(method: &Method, uri: &Uri, whose: &str) -> Response {
    err(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{method} is not allowed on {}{whose}; the Allow header lists what is, and GET /openapi.json documents each endpoint",
            clip(uri.path())
        ),
    )
}

pub(crate) fn err(status: StatusCode, error: &str, message: String) -> Response {
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

pub(crate) fn body_err(status: StatusCode, body: ErrorBody) -> Response {
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

fn rejection_response(r: Rejection) -> Response {
    let status = StatusCode::from_u16(r.kind.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let field = (r.kind == RejectKind::Malformed).then(|| r.guard.clone());
    body_err(
        status,
        ErrorBody {
            error: r.kind.name().into(),
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

/// The name serde put in backticks in `message` (`missing field `hlc``,
/// `duplicate field `project``), if any.
fn backticked(message: &str) -> Option<String> {
    message.split('`').nth(1).map(str::to_string)
}

/// A query string the extractor refused (a repeated or unparsable
/// parameter), as the JSON error every other 400 is.
pub(crate) fn query_rejection(r: QueryRejection) -> Response {
    let detail = r.body_text();
    body_err(
        r.status(),
        ErrorBody {
            error: "malformed".into(),
            message: format!(
                "{detail}; give each query parameter at most once, as GET /openapi.json documents it"
            ),
            field: backticked(&detail),
            ..Default::default()
        },
    )
}

/// A path segment the extractor refused (e.g. percent-encoded bytes that
/// are not UTF-8), as JSON naming the parameter.
fn path_rejection(r: PathRejection, param: &str, expected: &str) -> Response {
    body_err(
        r.status(),
        ErrorBody {
            error: "malformed".into(),
            message: format!("{}; `{param}` must be {expected}", r.body_text()),
            field: Some(param.into()),
            ..Default::default()
        },
    )
}

// A client-supplied text is cut for a log line as a peer's is (anyone can
// send a refused proposal, and its fields may hold up to a body's worth of
// text); logged with `?` so newlines and quotes stay escaped.
use crate::p2p::bounds::{clip, LogText};

/// Parse a proposal, naming the JSON field at fault.
pub fn parse_proposal(bytes: &[u8]) -> Result<Proposal, Box<ErrorBody>> {
    // serde accepts a struct as a JSON array of its fields in order too;
    // the contract (and every SDK) sends an object, and an array's errors
    // could only name positions.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(Box::new(ErrorBody {
            error: "malformed".into(),
            message: "the body is not a JSON object; send a proposal as a JSON object with the fields of GET /openapi.json (ProposalSchema)".into(),
            ..Default::default()
        }));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let p: Proposal = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // `?`: the JSON itself did not parse (the message gives line and
        // column); there is no field to name.
        let field = if inner.is_syntax() || inner.is_eof() || path == "?" {
            None
        } else if path == "." || path.is_empty() {
            // serde names missing/unknown fields in the message itself.
            backticked(&inner.to_string())
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
    // One proposal per request: bytes after the object (a second proposal
    // appended, a body damaged in transit) were ignored, and the proposal
    // before them accepted.
    de.end().map_err(|e| {
        Box::new(ErrorBody {
            error: "malformed".into(),
            message: format!(
                "the body holds more than one JSON value ({e}); send exactly one proposal object per request"
            ),
            ..Default::default()
        })
    })?;
    Ok(p)
}

/// Whether a failed body read hit the size limit (`413`) rather than a
/// broken body (a malformed chunked encoding, a connection closed before
/// the promised length: `400`).
fn over_limit(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Submit a signed transition proposal.
#[utoipa::path(
    post,
    path = "/transition",
    request_body(content = ProposalSchema, description = "a signed proposal", content_type = "application/json"),
    responses(
        (status = 202, description = "accepted and durable", body = AcceptedReply),
        (status = 400, description = "refused by a guard, malformed body (`malformed`), a body that could not be read whole (`body_unreadable`) or unknown transition", body = ErrorBody),
        (status = 401, description = "bad signature or unknown signer", body = ErrorBody),
        (status = 403, description = "the signer lacks the role", body = ErrorBody),
        (status = 409, description = "stale state hash (with head_hash and hlc_last), HLC order, or idempotency conflict", body = ErrorBody),
        (status = 408, description = "the body did not arrive within the body read timeout", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "backpressure; retry after Retry-After", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait before retrying"))),
        (status = 503, description = "`unavailable`: not available now (recovering, or no durable outcome in time: the outcome is unknown); resubmit the same proposal after `retry_after_ms` / `Retry-After`. Without a retry hint the node gave up or began shutting down while this proposal was in flight: its outcome is unknown and retrying this process is pointless. `gave_up` (the node gave up restarting its actors) or `shutting_down`: refused before admission and until the node's process is started again; no retry hint. (A follower answers `not_leader`.)", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait before retrying"))),
    )
)]
async fn post_transition(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    let node = st.node.clone();
    let resp = submit_transition(st, headers, body).await;
    if let Some(HttpRefusal(what)) = resp.extensions().get::<HttpRefusal>() {
        node.metrics()
            .http_refused_total
            .get_or_create(&swoosh_actors::metrics::KindLabel {
                kind: (*what).to_string(),
            })
            .inc();
    }
    resp
}

/// Marks a `POST /transition` reply the sequencer did not decide (see
/// `Metrics::http_refused_total`), by its error: counted by
/// [`post_transition`], never sent.
#[derive(Clone, Copy)]
struct HttpRefusal(&'static str);

fn refused_here(mut resp: Response, what: &'static str) -> Response {
    resp.extensions_mut().insert(HttpRefusal(what));
    resp
}

async fn submit_transition(st: AppState, headers: axum::http::HeaderMap, body: Body) -> Response {
    let too_large = || {
        refused_here(
            err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body exceeds {BODY_BYTES_MAX} bytes; shrink the inputs (large artifacts belong in evidence addresses, not inputs)"),
            ),
            "too_large",
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
    // A client that promises a body and sends part of it would otherwise
    // hold this request (and a shutdown waiting for it) forever.
    let body_read_ms = st.limits.body_read.as_millis() as u64;
    let bytes: Bytes =
        match tokio::time::timeout(st.limits.body_read, axum::body::to_bytes(body, BODY_BYTES_MAX)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) if over_limit(&e) => return too_large(),
            Ok(Err(e)) => {
                // Not `malformed`, which answers for the proposal's bytes
                // (a client takes it as settling an earlier unknown
                // attempt): these bytes were never all read.
                return refused_here(
                    err(
                        StatusCode::BAD_REQUEST,
                        "body_unreadable",
                        format!(
                            "the body could not be read ({}): send it whole, with a Content-Length that matches or a well-formed chunked encoding, and resubmit the same proposal",
                            crate::p2p::bounds::clip(&e.to_string())
                        ),
                    ),
                    "body_unreadable",
                )
            }
            Err(_) => {
                return refused_here(
                    err(
                        StatusCode::REQUEST_TIMEOUT,
                        "timeout",
                        format!(
                            "the body did not arrive within {body_read_ms} ms (BODY_READ_TIMEOUT_MS); send the whole body at once (the Content-Length promised must be what is sent) and resubmit"
                        ),
                    ),
                    "timeout",
                )
            }
        };
    let p = match parse_proposal(&bytes) {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(
                error = "malformed",
                field = %LogText(clip(e.field.as_deref().unwrap_or(""))),
                detail = %LogText(clip(&e.message)),
                "proposal refused"
            );
            return refused_here(body_err(StatusCode::BAD_REQUEST, *e), "malformed");
        }
    };
    // `Unavailable` carries only a reason: whether the node had already given
    // up before this proposal (refused unadmitted) or gave up while it was
    // in flight (outcome unknown) is told apart by asking before.
    let gave_up_before = st.node.gave_up().is_some();
    let stopping_before = st.node.is_stopping();
    // For the refusal's log line (SPEC §9: guard logs show why a proposal
    // was refused); an accepted one is logged by the node with its hashes.
    let (project, transition, window_id, hlc, pre) = (
        p.project.clone(),
        p.transition.clone(),
        p.window_id.clone(),
        p.hlc,
        p.current_state_hash,
    );
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
        SubmitResult::Rejected(r) => {
            // The fields an accepted transition's line carries, spelled the
            // same way (Display, not Debug: a query on `window_id` must
            // match both), with control characters and quotes escaped so a
            // client's text cannot forge a line; `state_pre_hash` is the
            // HEAD the proposal named, and nothing was posted.
            tracing::info!(
                error = r.kind.name(),
                guard = %LogText(clip(&r.guard)),
                reasons = %LogText(clip(&r.reasons.join("; "))),
                project = %LogText(clip(&project)),
                transition = %LogText(clip(&transition)),
                hlc = %hlc,
                window_id = %LogText(clip(&window_id)),
                state_pre_hash = %pre,
                state_post_hash = "",
                "proposal refused"
            );
            rejection_response(r)
        }
        SubmitResult::Busy { retry_after_ms, reason } => refused_here(
            body_err(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorBody {
                    error: "backpressure".into(),
                    message: format!("{reason}; retry after {retry_after_ms} ms with the same proposal (it is idempotent)"),
                    retry_after_ms: Some(retry_after_ms),
                    ..Default::default()
                },
            ),
            "backpressure",
        ),
        SubmitResult::Unavailable { reason } => {
            let (resp, what) = submit_unavailable(&st.node, reason, gave_up_before, stopping_before);
            refused_here(resp, what)
        }
    }
}

/// Why a node refuses every request until its process is started again.
enum Down {
    GaveUp(swoosh_actors::GaveUp),
    ShuttingDown,
}

/// Whether `node` is down for good. `SubmitResult::Unavailable` and a
/// read's error carry only a reason text, so the node itself is asked
/// (only on that error path: `health` is not free).
fn down(node: &Node) -> Option<Down> {
    if let Some(g) = node.gave_up() {
        return Some(Down::GaveUp(g));
    }
    node.is_stopping().then_some(Down::ShuttingDown)
}

/// The `503` of a node that is down for good: a class of its own and no
/// retry hint, so a client stops at once instead of backing off for
/// minutes against a node that will not come back. `then`: what to do once
/// it is back.
fn down_response(down: &Down, then: &str) -> Response {
    let (error, what) = match down {
        Down::GaveUp(g) => (ERROR_GAVE_UP, g.to_string()),
        Down::ShuttingDown => (
            ERROR_SHUTTING_DOWN,
            "the node is shutting down and takes no more requests".to_string(),
        ),
    };
    err(
        StatusCode::SERVICE_UNAVAILABLE,
        error,
        format!(
            "{what}. Retrying is pointless until the node's process is started again (a service manager restarts it; `swoosh health` then answers ok): {then}"
        ),
    )
}

/// The `503` of a proposal the node answered `Unavailable`.
/// `gave_up_before`, `stopping_before`: what the node was before the
/// proposal was handed to it.
fn submit_unavailable(
    node: &Node,
    reason: String,
    gave_up_before: bool,
    stopping_before: bool,
) -> (Response, &'static str) {
    let unknown = |meanwhile: String| {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "{reason}; meanwhile {meanwhile}. The outcome of this proposal is UNKNOWN: resubmit the same signed proposal (it is idempotent) once the node's process is started again (`swoosh health` answers ok)"
            ),
        )
    };
    match down(node) {
        // Given up or began stopping while this proposal was in flight: it
        // may have been admitted and reached the WAL (shutdown waits for
        // admitted proposals only up to its own timeout, and a reply can be
        // lost as the actors stop), so its outcome is unknown, which
        // `unavailable` says; no hint, because this process will not answer
        // it any more.
        Some(Down::GaveUp(g)) if !gave_up_before => (unknown(g.to_string()), "unavailable"),
        Some(Down::ShuttingDown) if !stopping_before => (
            unknown("the node began shutting down".into()),
            "unavailable",
        ),
        // Down before the proposal was handed over: refused at admission.
        Some(d) => (
            down_response(
                &d,
                "this proposal was refused before admission; resubmit it then (the same signed proposal is safe to resubmit)",
            ),
            match d {
                Down::GaveUp(_) => ERROR_GAVE_UP,
                Down::ShuttingDown => ERROR_SHUTTING_DOWN,
            },
        ),
        None => (
            body_err(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorBody {
                    error: "unavailable".into(),
                    message: reason,
                    retry_after_ms: Some(200),
                    ..Default::default()
                },
            ),
            "unavailable",
        ),
    }
}

/// The `503` of a read (`/state`, `/attention`) the node could not answer.
fn read_unavailable(node: &Node, reason: String, then: &str) -> Response {
    match down(node) {
        Some(d) => down_response(&d, then),
        None => body_err(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorBody {
                error: "unavailable".into(),
                message: reason,
                retry_after_ms: Some(100),
                ..Default::default()
            },
        ),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct StateQuery {
    /// Project id (default `default`).
    pub(crate) project: Option<String>,
    /// Comma-separated regions: Project (meta, epoch, hlc_last, applied), Boot, Ingestion, Council, Environment, Execution, Control, Policy. Default: all.
    pub(crate) projection: Option<String>,
}

/// A `400 malformed` body naming `field`.
fn malformed(field: &str, message: String) -> Box<ErrorBody> {
    Box::new(ErrorBody {
        error: "malformed".into(),
        message,
        field: Some(field.into()),
        ..Default::default()
    })
}

/// The project and regions a `GET /state` names, or its `400` body (the
/// leader's and a follower's `/state` parse alike).
pub(crate) fn parse_state_query(q: StateQuery) -> Result<(String, Vec<Region>), Box<ErrorBody>> {
    let project = q
        .project
        .unwrap_or_else(|| swoosh_core::state::DEFAULT_PROJECT.to_string());
    if !swoosh_core::state::valid_id(&project) {
        return Err(malformed(
            "project",
            "project must be 1..=64 characters of [a-z0-9._-] starting with a letter or digit"
                .into(),
        ));
    }
    let mut regions = vec![];
    if let Some(p) = q.projection.as_deref().filter(|p| !p.is_empty()) {
        let names: Vec<&str> = p
            .split(',')
            .map(str::trim)
            .take(PROJECTION_SECTIONS_MAX + 1)
            .collect();
        if names.len() > PROJECTION_SECTIONS_MAX {
            return Err(malformed(
                "projection",
                format!(
                    "projection names more than {PROJECTION_SECTIONS_MAX} sections (PROJECTION_SECTIONS_MAX); name each region at most once, or leave projection out to read them all"
                ),
            ));
        }
        for name in names {
            let r = Region::ALL
                .into_iter()
                .find(|r| r.name().eq_ignore_ascii_case(name))
                .or_else(|| name.eq_ignore_ascii_case("meta").then_some(Region::Project));
            match r {
                Some(r) if !regions.contains(&r) => regions.push(r),
                Some(_) => {}
                None => {
                    let names: Vec<&str> = Region::ALL.iter().map(|r| r.name()).collect();
                    return Err(malformed(
                        "projection",
                        format!(
                            "unknown projection {name:?}; use a comma-separated list of {}",
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    Ok((project, regions))
}

/// Read a project's state: its HEAD hash and the requested sections.
#[utoipa::path(get, path = "/state", params(StateQuery), responses((status = 200, description = "the project's HEAD and the projected sections", body = StateReply), (status = 400, description = "`malformed`: a bad project id or projection (the field is named)", body = ErrorBody), (status = 503, description = "`unavailable`: a region actor is restarting; retry after `retry_after_ms` / `Retry-After`. `gave_up` or `shutting_down`: no answer until the node's process is started again; no retry hint", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait before retrying")))))]
async fn get_state(
    State(st): State<AppState>,
    q: Result<Query<StateQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(r) => return query_rejection(r),
    };
    let (project, regions) = match parse_state_query(q) {
        Ok(x) => x,
        Err(e) => return body_err(StatusCode::BAD_REQUEST, *e),
    };
    match st.node.state(&project, &regions).await {
        Ok(v) => Json(StateReply {
            project: v.project,
            index: v.index,
            hash: v.hash.to_string(),
            projection: v.projection,
        })
        .into_response(),
        Err(e) => read_unavailable(
            &st.node,
            e,
            "read again then, or read a follower's `GET /state` meanwhile",
        ),
    }
}

/// Liveness, readiness and consensus status.
#[utoipa::path(
    get,
    path = "/health",
    responses(
        (status = 200, description = "ok: serving", body = HealthReply),
        (status = 503, description = "recovering, stopping or failed (gave up restarting its actors); the body is the same health document", body = HealthReply),
    )
)]
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
            recovery: h.recovery.map(RecoveryReply::from),
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
    responses(
        (status = 200, description = "the decision record, signed by the leader: `{signed: {record, leader, signature}}`", body = Object, content_type = "application/json"),
        (status = 400, description = "not a decision reference", body = ErrorBody),
        (status = 404, description = "no such decision record", body = ErrorBody),
        (status = 500, description = "`storage`: the decision index could not be read", body = ErrorBody),
    )
)]
async fn get_decision(
    State(st): State<AppState>,
    hash: Result<Path<String>, PathRejection>,
) -> Response {
    let hash = match hash {
        Ok(Path(h)) => h,
        Err(r) => {
            return path_rejection(
                r,
                "hash",
                "blake3:<hex>, the bare hex, or bubble://dr/<hex>",
            )
        }
    };
    decision_response(&st, &hash)
}

fn decision_response(st: &AppState, hash: &str) -> Response {
    let Some(h) = parse_decision_ref(hash) else {
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
#[into_params(parameter_in = Query)]
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
#[utoipa::path(get, path = "/attention", params(AttentionQuery), responses((status = 200, description = "the operator digest: surfaced patterns, most important first", body = AttentionReply), (status = 400, description = "`malformed`: an unknown `min_band`", body = ErrorBody), (status = 503, description = "`unavailable`: the attention actor is restarting; retry after `retry_after_ms` / `Retry-After`. `gave_up` or `shutting_down`: no answer until the node's process is started again; no retry hint", body = ErrorBody, headers(("Retry-After" = u64, description = "seconds to wait before retrying")))))]
async fn get_attention(
    State(st): State<AppState>,
    q: Result<Query<AttentionQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(r) => return query_rejection(r),
    };
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
        Err(e) => read_unavailable(&st.node, e, "read again then"),
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
