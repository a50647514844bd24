//! The Rust client SDK: builds, signs and submits proposals over the HTTP
//! API; on a stale state hash it re-reads HEAD and resubmits when the caller
//! allows it; on backpressure it backs off.

use crate::api::*;
use ed25519_dalek::SigningKey;
use serde::Serialize;
use std::time::Duration;
use swoosh_core::backbeat::Schedule;
use swoosh_core::{Hash, Hlc, Proposal, ProposalBuilder};

/// A proposal refused within this many ms of being built was judged at
/// about the HLC it was built with (no busy retries aged it): the `propose`
/// loop's test for a client clock behind the leader's.
pub const FRESH_PROPOSAL_MS: u64 = 250;

/// How many times `propose` re-reads HEAD after a stale hash.
pub const STALE_RETRIES_MAX: u32 = 8;
/// How many times a request is retried on 429/503.
pub const BUSY_RETRIES_MAX: u32 = 20;
/// How many times a request is retried after a connection error (counted
/// apart from the busy retries). A timeout is not retried: the caller has
/// already waited `REQUEST_TIMEOUT_MS`.
pub const CONNECT_RETRIES_MAX: u32 = 3;
/// First step of the exponential backoff between retries.
pub const BACKOFF_MS_BASE: u64 = 50;
/// Longest exponential backoff between retries (added to the server's hint).
pub const BACKOFF_MS_MAX: u64 = 2_000;
/// Longest server hint (`retry_after_ms` or `Retry-After`) honoured; a
/// larger one is clipped to this, so a wrong hint cannot park the client.
pub const RETRY_HINT_MS_MAX: u64 = 30_000;
/// First pause before resubmitting after a stale hash (another writer moved
/// HEAD); doubled each round up to `STALE_BACKOFF_MS_MAX`, with jitter.
pub const STALE_BACKOFF_MS_BASE: u64 = 10;
pub const STALE_BACKOFF_MS_MAX: u64 = 500;
/// Whole-request limit (the server's own submit limit is below it).
pub const REQUEST_TIMEOUT_MS: u64 = 35_000;
/// Largest reply body read. A node's largest replies (`GET /state` of a
/// node with many projects, a page of decisions) are far below it; a
/// server or proxy that sends more is refused before it can exhaust the
/// client's memory.
pub const RESPONSE_BYTES_MAX: usize = 64 << 20;
/// Limit on opening the TCP connection: an unreachable address fails in
/// this time instead of the whole request timeout.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// How a node URL is written, for error messages.
pub const URL_FORM: &str = "http://127.0.0.1:7700";
/// The accepted forms of a decision reference, for error messages.
pub const DECISION_REF_FORMS: &str =
    "blake3:<64 hex digits>, the bare 64 hex digits, or bubble://dr/<64 hex digits>";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No (complete) reply. `timed_out`: the connect or request limit ran
    /// out. `outcome_unknown`: a proposal may have reached the node, so it
    /// may or may not have been applied.
    #[error("{}", connect_text(url, detail, *timed_out, *outcome_unknown))]
    Connect {
        url: String,
        detail: String,
        timed_out: bool,
        outcome_unknown: bool,
    },
    #[error("{status} {}: {}", body.error, body.message)]
    Refused { status: u16, body: ErrorBody },
    /// A follower answered: it never takes proposals, so retrying it is
    /// pointless; the proposal must go to the leader.
    #[error("{url} is a read-only follower, not the leader; {}", match leader.as_deref() {
        Some(l) if l.starts_with("http://") => format!("send proposals to the leader at {l} (--to)"),
        // This client has no TLS; another client (or a tunnel) may reach it.
        Some(l) if l.starts_with("https://") => format!("the leader's URL is {l}, which this client cannot reach (it has no TLS): use the leader's http:// address, or a local tunnel to it"),
        // Without `--leader-http` a follower names the leader's p2p address.
        Some(l) => format!("the leader's p2p address is {l}; send proposals to its HTTP URL (start the follower with --leader-http to have it named here)"),
        None => "send proposals to the leader's URL (see `swoosh health` on a follower, or the cluster's genesis)".into(),
    })]
    NotLeader {
        url: String,
        leader: Option<String>,
        body: ErrorBody,
    },
    /// A reply that does not decode (or is over [`RESPONSE_BYTES_MAX`]).
    /// `outcome_unknown`: it answered a proposal, so the proposal may have
    /// been applied (a `2xx` is the node saying it was, in a shape this
    /// client does not read: another release, or a proxy's page).
    #[error("unexpected reply from {url}: {detail}{}", if *outcome_unknown { "; the outcome is UNKNOWN: the proposal may or may not have been applied; resubmit the same signed proposal (it is idempotent) or check `swoosh state`" } else { "" })]
    Decode {
        url: String,
        detail: String,
        outcome_unknown: bool,
    },
    #[error("could not build the proposal: {0}")]
    Build(String),
    /// An argument the client refuses before sending anything (a node URL,
    /// a decision reference).
    #[error("{0}")]
    Usage(String),
    /// The caller's deadline ([`RetryPolicy::deadline`]) ran out before an
    /// answer: during an attempt, or when the next wait would pass it.
    /// `outcome_unknown`: a proposal was sent without an answer about it.
    #[error("gave up when the deadline of {deadline_ms} ms ran out ({detail}){}", if *outcome_unknown { "; the outcome is UNKNOWN: the proposal may or may not have been applied; resubmit the same signed proposal (it is idempotent) or check `swoosh state`" } else { "" })]
    Deadline {
        deadline_ms: u64,
        detail: String,
        outcome_unknown: bool,
    },
    /// An earlier attempt of this proposal was sent to `url` and got no
    /// reply (`detail`), and the attempts after it ended without an answer
    /// about the proposal (`last`: `429`/`503` until the retries ran out,
    /// or a node that stopped): it may or may not have been applied.
    #[error("{last}; the outcome is UNKNOWN: an earlier attempt was sent to {url} and ended without an outcome ({detail}), so the proposal may or may not have been applied; resubmit the same signed proposal (it is idempotent) once the node answers, or check `swoosh state`")]
    OutcomeUnknown {
        url: String,
        detail: String,
        last: Box<ClientError>,
    },
}

fn connect_text(url: &str, detail: &str, timed_out: bool, outcome_unknown: bool) -> String {
    match (timed_out, outcome_unknown) {
        (true, true) => format!(
            "no reply from {url} within {REQUEST_TIMEOUT_MS} ms ({detail}); the outcome is UNKNOWN: the proposal may or may not have been applied; resubmit the same signed proposal (it is idempotent) or check `swoosh state`"
        ),
        (false, true) => format!(
            "the connection to {url} was lost before a reply ({detail}); the outcome is UNKNOWN: the proposal may or may not have been applied; resubmit the same signed proposal (it is idempotent) or check `swoosh state`"
        ),
        (true, false) => format!(
            "no answer from {url} in time (connect limit {CONNECT_TIMEOUT_MS} ms, request limit {REQUEST_TIMEOUT_MS} ms): {detail}; check that the node is up and not overloaded (`swoosh health`) and that the address is right"
        ),
        (false, false) => format!(
            "cannot reach {url}: {detail}; check that `swoosh serve` runs there and the address is right"
        ),
    }
}

/// An error with its `source()` chain: reqwest's top line alone ("error
/// sending request for url") does not say what failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// A transport failure as a `Connect` error. `proposal`: the request
/// carried a proposal, so a failure after the connection was made leaves
/// its outcome unknown.
fn transport_error(url: &str, e: &reqwest::Error, proposal: bool) -> ClientError {
    // A request that could not be built (a URL `Client::new` kept as
    // given) was never sent: nothing to retry, no outcome to doubt.
    if e.is_builder() {
        return ClientError::Usage(format!(
            "cannot send a request to {url}: {}; give the node's URL like {URL_FORM}",
            error_chain(e)
        ));
    }
    ClientError::Connect {
        url: url.to_string(),
        detail: error_chain(e),
        timed_out: e.is_timeout(),
        outcome_unknown: proposal && !e.is_connect(),
    }
}

/// Why a `status` reply with `body` is not worth waiting out, if it is not:
/// a `503` of a node that gave up or is shutting down (no answer until its
/// process is started again), or a `503` without any retry hint (the node
/// did not say it would be back). Retrying those would only hold the
/// caller for `BUSY_RETRIES_MAX` backoffs.
fn stops_retrying(status: u16, body: &ErrorBody) -> Option<&'static str> {
    if status != 503 {
        return None;
    }
    if unavailable_for_good(&body.error) {
        return Some("not retried: this node answers only once its process is started again, so wait for that (`swoosh health` answers ok) or use another node");
    }
    body.retry_after_ms.is_none().then_some(
        "not retried: the node gave no retry hint (`retry_after_ms` or `Retry-After`); check it with `swoosh health` and try again once it answers ok (resubmitting a proposal is safe: it is idempotent)",
    )
}

/// The wait before retry number `attempt` (0-based) of a refused or failed
/// request: the server's hint (clipped to `RETRY_HINT_MS_MAX`) plus an
/// exponential backoff from `BACKOFF_MS_BASE` capped at `BACKOFF_MS_MAX`,
/// of which the upper half is jitter (`jitter` is any random number).
/// Saturating: no hint or attempt overflows.
pub fn backoff_ms(attempt: u32, hint_ms: Option<u64>, jitter: u64) -> u64 {
    let hint = hint_ms.unwrap_or(0).min(RETRY_HINT_MS_MAX);
    hint.saturating_add(jittered(attempt, BACKOFF_MS_BASE, BACKOFF_MS_MAX, jitter))
}

/// The pause before stale-hash round `round` (0-based).
pub fn stale_backoff_ms(round: u32, jitter: u64) -> u64 {
    jittered(round, STALE_BACKOFF_MS_BASE, STALE_BACKOFF_MS_MAX, jitter)
}

/// `base * 2^attempt` capped at `max`, the upper half replaced by jitter.
fn jittered(attempt: u32, base: u64, max: u64, jitter: u64) -> u64 {
    let exp = base
        .saturating_mul(1u64.checked_shl(attempt).unwrap_or(u64::MAX))
        .min(max);
    let half = exp / 2;
    half + jitter % (exp - half + 1)
}

/// A random number for jitter. The SDK has no RNG dependency; std's
/// per-hasher random keys are enough to spread clients apart.
fn jitter() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(wall_ms());
    h.finish()
}

/// A node URL as the client uses it: `127.0.0.1:7700` gets `http://`; a
/// scheme other than http(s) or an unparsable URL is refused.
// The SDK's one error type, as every request returns it; boxing it would
// change every caller for three argument checks.
#[allow(clippy::result_large_err)]
pub fn normalize_base(base: &str) -> Result<String, ClientError> {
    let t = base.trim();
    let bad = |why: String| {
        ClientError::Usage(format!(
            "{base:?} is not a node URL: {why}; give it like {URL_FORM}"
        ))
    };
    if t.is_empty() {
        return Err(bad("it is empty".into()));
    }
    let full = match t.find("://") {
        None => format!("http://{t}"),
        Some(i) => {
            let scheme = &t[..i];
            if scheme.eq_ignore_ascii_case("https") {
                // This client is built without TLS (the node serves plain
                // HTTP): an https URL would fail at every attempt with a
                // connect error that names neither cause.
                return Err(bad("https is not supported: this client has no TLS, and `swoosh serve` speaks plain HTTP; use the node's http:// address (or a local tunnel to it)".into()));
            }
            if !scheme.eq_ignore_ascii_case("http") {
                return Err(bad(format!("the scheme {scheme:?} is not http")));
            }
            t.to_string()
        }
    };
    let parsed = reqwest::Url::parse(&full).map_err(|e| bad(e.to_string()))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("it names no host".into()));
    }
    // Every endpoint is appended to the base, so a query or fragment would
    // swallow it (`…?x/health` asks for `/`).
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad(
            "it has a query or fragment (`?…`, `#…`), which a base URL cannot have".into(),
        ));
    }
    Ok(full.trim_end_matches('/').to_string())
}

/// The path of a normalized base (`/swoosh` of `http://proxy/swoosh`), if
/// it has one: the client puts it before every endpoint.
fn base_path(base: &str) -> Option<String> {
    let path = reqwest::Url::parse(base)
        .ok()?
        .path()
        .trim_end_matches('/')
        .to_string();
    (!path.is_empty()).then_some(path)
}

/// A decision reference as the 64 lowercase hex digits of its hash:
/// `bubble://dr/` and `blake3:` are stripped (any case), the rest trimmed
/// and lowercased. Anything else (`../health`, a short hash) is refused
/// here, before it can become a different path on the node.
// The SDK's one error type, as every request returns it; boxing it would
// change every caller for three argument checks.
#[allow(clippy::result_large_err)]
pub fn normalize_decision_ref(reference: &str) -> Result<String, ClientError> {
    let strip = |s: &str, prefix: &str| -> Option<String> {
        let head = s.get(..prefix.len())?;
        head.eq_ignore_ascii_case(prefix)
            .then(|| s[prefix.len()..].to_string())
    };
    let mut r = reference.trim().to_string();
    if let Some(rest) = strip(&r, "bubble://dr/") {
        r = rest;
    }
    if let Some(rest) = strip(&r, "blake3:") {
        r = rest;
    }
    let hex = r.trim().to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ClientError::Usage(format!(
            "{reference:?} is not a decision reference: give {DECISION_REF_FORMS} (the `decision` of an accepted proposal)"
        )));
    }
    Ok(hex)
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            ClientError::NotLeader { .. } => Some(503),
            ClientError::OutcomeUnknown { last, .. } => last.status(),
            _ => None,
        }
    }
    pub fn body(&self) -> Option<&ErrorBody> {
        match self {
            ClientError::Refused { body, .. } | ClientError::NotLeader { body, .. } => Some(body),
            ClientError::OutcomeUnknown { last, .. } => last.body(),
            _ => None,
        }
    }
    /// Whether a proposal may or may not have been applied: no complete
    /// reply after it was sent (on the last attempt or an earlier one),
    /// `503 unavailable` (no durable outcome in time), or a gateway's
    /// answer instead of the node's (a reverse proxy's `502`/`504`, or any
    /// `5xx` whose body is not a node's error: the proxy may have given up
    /// while the node went on and committed). Resubmitting the same signed
    /// proposal settles it.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            ClientError::Connect {
                outcome_unknown, ..
            } => *outcome_unknown,
            ClientError::OutcomeUnknown { .. } => true,
            ClientError::Decode {
                outcome_unknown, ..
            }
            | ClientError::Deadline {
                outcome_unknown, ..
            } => *outcome_unknown,
            ClientError::Refused { status: 503, body } if body.error == "unavailable" => true,
            ClientError::Refused { status, body } => {
                matches!(status, 502 | 504) || (*status >= 500 && body.error == "http")
            }
            _ => false,
        }
    }
}

/// The retry decisions of [`Client::submit_retrying`] and the other
/// `*_retrying` calls, apart from the waiting so they can be tested
/// without a clock.
#[derive(Debug, Default)]
struct Retries {
    /// The attempts submit a proposal (a read's `503 unavailable` or lost
    /// reply leaves nothing unknown).
    proposal: bool,
    busy: u32,
    connect: u32,
    /// The first attempt sent without a reply: its URL and cause.
    unknown: Option<(String, String)>,
}

impl Retries {
    fn count(&self) -> u32 {
        self.busy + self.connect
    }

    /// After a failed attempt: how long to wait before the next one, or
    /// the error to return.
    // Boxing the error would change every caller (see normalize_base).
    #[allow(clippy::result_large_err)]
    fn after(&mut self, e: ClientError, jitter: u64) -> Result<u64, ClientError> {
        // A `503 unavailable` leaves this attempt's outcome unknown, as a
        // lost connection does: a later ending that does not answer for the
        // proposal must still say so.
        // This very attempt is the first unknown one: if it ends the
        // retries it says so itself, and is not wrapped in its own mark.
        let fresh = self.proposal && e.outcome_unknown() && self.unknown.is_none();
        if fresh {
            let (url, detail) = match &e {
                ClientError::Connect { url, detail, .. } => (url.clone(), detail.clone()),
                other => ("the node".to_string(), other.to_string()),
            };
            self.unknown = Some((url, detail));
        }
        let earlier = |r: &mut Self| if fresh { None } else { r.unknown.take() };
        match e {
            ClientError::Refused { status, mut body } if status == 429 || status == 503 => {
                if let Some(why) = stops_retrying(status, &body) {
                    body.message = format!("{}; {why}", body.message);
                    return Err(after_unknown(
                        earlier(self),
                        ClientError::Refused { status, body },
                    ));
                }
                if self.busy >= BUSY_RETRIES_MAX {
                    return Err(after_unknown(
                        earlier(self),
                        ClientError::Refused { status, body },
                    ));
                }
                let w = backoff_ms(self.busy, body.retry_after_ms, jitter);
                self.busy += 1;
                Ok(w)
            }
            ClientError::Connect {
                timed_out: false, ..
            } if self.connect < CONNECT_RETRIES_MAX => {
                self.connect += 1;
                // From 100 ms: a restarting node needs a moment.
                Ok(backoff_ms(self.connect, None, jitter))
            }
            ClientError::Connect {
                url,
                detail,
                timed_out,
                outcome_unknown,
            } => Err(ClientError::Connect {
                url,
                detail,
                timed_out,
                outcome_unknown: outcome_unknown || self.unknown.is_some(),
            }),
            // A refusal of a resubmission by the node's own checks settles
            // what an earlier unknown attempt did: had that one been
            // applied, this one would be answered as its duplicate (the
            // node checks idempotency before these). Nothing else does: a
            // follower's `not_leader`, a proxy's 4xx/502/504, a body
            // timeout, a reply that does not decode, nor `forbidden` and
            // `unknown_signer`, which the node checks before idempotency
            // and the unknown attempt itself may have caused (a roster
            // change).
            ClientError::Refused { status, body } if settles(&body.error) => {
                Err(ClientError::Refused { status, body })
            }
            other => Err(after_unknown(earlier(self), other)),
        }
    }
}

/// Whether a refusal with this `error` code answers for a resubmitted
/// proposal: the node's own checks at or after its idempotency check, and
/// those that depend on the proposal's bytes alone.
fn settles(error: &str) -> bool {
    matches!(
        error,
        "malformed"
            | "unknown_transition"
            | "bad_signature"
            | "too_large"
            | "idem_conflict"
            | "stale_hash"
            | "hlc_order"
            | "guard"
    )
}

/// `last`, marked as of unknown outcome when an earlier attempt (`unknown`:
/// its URL and cause) was sent without a reply.
fn after_unknown(unknown: Option<(String, String)>, last: ClientError) -> ClientError {
    match unknown {
        Some((url, detail)) => ClientError::OutcomeUnknown {
            url,
            detail,
            last: Box::new(last),
        },
        None => last,
    }
}

/// A failed `propose`, with the last proposal built (if any): when the
/// outcome is unknown, that exact proposal is the one to resubmit.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct ProposeFailure {
    pub error: ClientError,
    pub last: Option<Proposal>,
    /// Whether `last` may have been applied: the failure ended a
    /// submission of it whose outcome is unknown. A failure to build the
    /// next round (reading HEAD) leaves the last one settled (it was
    /// refused as stale), whatever the read's error says.
    pub unknown: bool,
}

impl ProposeFailure {
    /// Whether [`ProposeFailure::last`] may have been applied. Unlike
    /// `error.outcome_unknown()`, false when what failed was reading HEAD
    /// for a proposal that was never sent (a `503` of `GET /state`).
    pub fn outcome_unknown(&self) -> bool {
        self.unknown
    }
}

/// What to do when a proposal meets a stale HEAD or backpressure.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Re-read HEAD and resubmit on `409 stale_hash` / `hlc_order`.
    pub resubmit_on_stale: bool,
    /// Back off and resubmit on `429` / `503`.
    pub retry_busy: bool,
    /// Give up once this much time has passed since the call began, with
    /// [`ClientError::Deadline`] (and the last proposal sent, to resubmit
    /// when its outcome is unknown). `None`: bounded only by the retry
    /// counts, which with the server's hints can take minutes.
    pub deadline: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            resubmit_on_stale: true,
            retry_busy: true,
            deadline: None,
        }
    }
}

/// A caller's deadline: when it ends, and how long it was (for messages).
#[derive(Clone, Copy, Debug)]
struct Deadline {
    at: tokio::time::Instant,
    ms: u64,
}

impl Deadline {
    fn after(d: Option<Duration>) -> Option<Deadline> {
        d.map(|d| Deadline {
            at: tokio::time::Instant::now() + d,
            ms: d.as_millis().min(u64::MAX as u128) as u64,
        })
    }

    fn error(&self, detail: String, outcome_unknown: bool) -> ClientError {
        ClientError::Deadline {
            deadline_ms: self.ms,
            detail,
            outcome_unknown,
        }
    }

    /// `attempt`, cut off when the deadline ends (`proposal`: an attempt
    /// cut off may have reached the node).
    async fn bound<R>(
        d: Option<Deadline>,
        proposal: bool,
        attempt: impl std::future::Future<Output = Result<R, ClientError>>,
    ) -> Result<R, ClientError> {
        match d {
            None => attempt.await,
            Some(d) => match tokio::time::timeout_at(d.at, attempt).await {
                Ok(r) => r,
                Err(_) => Err(d.error(
                    "an attempt was still waiting for its reply".into(),
                    proposal,
                )),
            },
        }
    }
}

#[derive(Clone)]
pub struct Client {
    base: String,
    /// [`base_path`] of `base`, for the hint on a `404`.
    base_path: Option<String>,
    http: reqwest::Client,
}

/// A proposal to build against the current HEAD.
pub struct ProposeRequest<'a, T: Serialize> {
    pub project: &'a str,
    pub transition: &'a str,
    pub inputs: &'a T,
    pub key: &'a SigningKey,
    pub idem_key: String,
    pub evidence: Vec<String>,
}

/// What `propose` learned: the reply and how many retries it took.
#[derive(Debug)]
pub struct Proposed {
    pub reply: AcceptedReply,
    pub proposal: Proposal,
    pub stale_retries: u32,
    pub busy_retries: u32,
}

/// A reply's body, refused once it is over [`RESPONSE_BYTES_MAX`] (by its
/// `Content-Length` before reading, else as it arrives).
async fn read_capped(
    url: &str,
    mut resp: reqwest::Response,
    proposal: bool,
) -> Result<Vec<u8>, ClientError> {
    let too_large = |n: String| {
        ClientError::Decode {
        url: url.to_string(),
        detail: format!(
            "the reply is {n} bytes, over this client's limit of {RESPONSE_BYTES_MAX}; is this a SWOOSH node?"
        ),
        outcome_unknown: proposal,
    }
    };
    if let Some(n) = resp.content_length() {
        if n > RESPONSE_BYTES_MAX as u64 {
            return Err(too_large(n.to_string()));
        }
    }
    let mut out = Vec::with_capacity(resp.content_length().unwrap_or(0) as usize);
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| transport_error(url, &e, proposal))?
    {
        if out.len() + chunk.len() > RESPONSE_BYTES_MAX {
            return Err(too_large(format!("more than {}", out.len())));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Client {
    /// `base` is like `http://127.0.0.1:7700`; without a scheme `http://`
    /// is assumed. A base [`normalize_base`] refuses is kept as given (its
    /// requests then fail); use [`Client::try_new`] to refuse it up front.
    pub fn new(base: &str) -> Client {
        let base = normalize_base(base).unwrap_or_else(|_| base.trim_end_matches('/').to_string());
        Client::with_base(base)
    }

    /// [`Client::new`], refusing a base that is not an http(s) URL with an
    /// error saying the expected form.
    #[allow(clippy::result_large_err)] // see normalize_base
    pub fn try_new(base: &str) -> Result<Client, ClientError> {
        Ok(Client::with_base(normalize_base(base)?))
    }

    fn with_base(base: String) -> Client {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            // Drop idle connections before the server does
            // (HEADER_READ_TIMEOUT_MS): reusing one the server is closing
            // fails the request instead of opening a new connection.
            .pool_idle_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS / 2))
            .build()
            .expect("a plain HTTP client builds");
        Client {
            base_path: base_path(&base),
            base,
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The status, `Retry-After` (in ms) and body of a reply; a failure to
    /// get them is `Connect` (`proposal`: see [`transport_error`]).
    async fn status_and_body(
        url: &str,
        resp: Result<reqwest::Response, reqwest::Error>,
        proposal: bool,
    ) -> Result<(u16, Option<u64>, Vec<u8>), ClientError> {
        let resp = resp.map_err(|e| transport_error(url, &e, proposal))?;
        let status = resp.status().as_u16();
        // Delta-seconds only; an HTTP date is rare and ignored.
        let retry_after_ms = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| secs.saturating_mul(1000));
        let bytes = read_capped(url, resp, proposal).await?;
        Ok((status, retry_after_ms, bytes))
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        url: String,
        resp: Result<reqwest::Response, reqwest::Error>,
        proposal: bool,
    ) -> Result<T, ClientError> {
        // The URL as sent, with its encoded query, for error messages.
        let url = match &resp {
            Ok(r) => r.url().to_string(),
            Err(e) => e.url().map(|u| u.to_string()).unwrap_or(url),
        };
        let (status, retry_after_ms, bytes) = Self::status_and_body(&url, resp, proposal).await?;
        if (200..300).contains(&status) {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                url,
                detail: format!("{status} with a body this client cannot read ({e})"),
                outcome_unknown: proposal,
            })
        } else {
            Err(self.refusal(url, status, retry_after_ms, &bytes))
        }
    }

    /// A non-2xx reply as an error.
    fn refusal(
        &self,
        url: String,
        status: u16,
        retry_after_ms: Option<u64>,
        bytes: &[u8],
    ) -> ClientError {
        let mut body: ErrorBody = serde_json::from_slice(bytes).unwrap_or_else(|_| ErrorBody {
            error: "http".into(),
            message: String::from_utf8_lossy(bytes).chars().take(500).collect(),
            ..Default::default()
        });
        // A proxy's 429/503 may carry only the header.
        if body.retry_after_ms.is_none() {
            body.retry_after_ms = retry_after_ms;
        }
        if body.error == "not_leader" {
            let leader = body.leader.clone().filter(|l| !l.is_empty());
            return ClientError::NotLeader { url, leader, body };
        }
        // A node serves its API at the root; a path in the base (kept for a
        // reverse proxy that maps it there) is the likely cause of a 404.
        if let (404, Some(path)) = (status, &self.base_path) {
            body.message = format!(
                "{}; {url} was asked because the node URL {} ends in the path {path}, which the client puts before every endpoint: a node serves its API at the root, so give its URL as scheme, host and port, like {URL_FORM} (keep a path only where a reverse proxy maps it to the node's root)",
                body.message, self.base
            );
        }
        ClientError::Refused { status, body }
    }

    /// One submission, no retries.
    pub async fn submit(&self, p: &Proposal) -> Result<AcceptedReply, ClientError> {
        let url = self.url("/transition");
        let r = self.http.post(&url).json(p).send().await;
        self.read(url, r, true).await
    }

    /// Submit raw bytes (for tests of malformed input).
    pub async fn submit_raw(&self, body: Vec<u8>) -> Result<AcceptedReply, ClientError> {
        let url = self.url("/transition");
        let r = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        self.read(url, r, true).await
    }

    /// Submit, backing off on 429/503 and connection errors (the proposal
    /// is idempotent, so a resubmission after an unacknowledged attempt is
    /// safe). A follower's `503 not_leader` is permanent and returned at
    /// once ([`ClientError::NotLeader`]), as is a `503` of a node that gave
    /// up or is shutting down, or one without a retry hint. Returns the
    /// reply and the number of retries (busy and connection).
    pub async fn submit_retrying(&self, p: &Proposal) -> Result<(AcceptedReply, u32), ClientError> {
        Self::retrying(true, None, || self.submit(p)).await
    }

    /// [`Client::submit_retrying`], giving up with [`ClientError::Deadline`]
    /// once `deadline` has passed since the call.
    pub async fn submit_retrying_within(
        &self,
        p: &Proposal,
        deadline: Duration,
    ) -> Result<(AcceptedReply, u32), ClientError> {
        Self::retrying(true, Deadline::after(Some(deadline)), || self.submit(p)).await
    }

    /// Run `attempt` until it is answered: on 429/503 wait at least the
    /// server's hint plus a jittered backoff (up to `BUSY_RETRIES_MAX`
    /// times); on a connection error (not a timeout) back off and retry (up
    /// to `CONNECT_RETRIES_MAX` times, counted apart). A `503` that no wait
    /// cures (see [`stops_retrying`]) ends it at once. Once any attempt's
    /// outcome was unknown, a final error that does not answer for the
    /// proposal (a connection error, 429, 503) says so too.
    async fn retrying<R, F, Fut>(
        proposal: bool,
        deadline: Option<Deadline>,
        mut attempt: F,
    ) -> Result<(R, u32), ClientError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<R, ClientError>>,
    {
        let mut retries = Retries {
            proposal,
            ..Retries::default()
        };
        loop {
            // Nothing is sent once the deadline has passed (an attempt
            // started then would be cut off at once, and called unknown).
            if let Some(d) = deadline.filter(|d| tokio::time::Instant::now() >= d.at) {
                return Err(d.error(
                    format!("{} retries", retries.count()),
                    retries.unknown.is_some(),
                ));
            }
            let e = match Deadline::bound(deadline, proposal, attempt()).await {
                Ok(r) => return Ok((r, retries.count())),
                Err(ClientError::Deadline {
                    deadline_ms,
                    detail,
                    outcome_unknown,
                }) => {
                    return Err(ClientError::Deadline {
                        deadline_ms,
                        detail: format!("{detail}, after {} retries", retries.count()),
                        outcome_unknown: outcome_unknown || retries.unknown.is_some(),
                    })
                }
                Err(e) => e,
            };
            let last = e.to_string();
            let wait = retries.after(e, jitter())?;
            if let Some(d) = deadline {
                if tokio::time::Instant::now() + Duration::from_millis(wait) >= d.at {
                    return Err(d.error(
                        format!(
                            "{} attempts; the next would wait {wait} ms; the last: {last}",
                            retries.count()
                        ),
                        retries.unknown.is_some(),
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }

    pub async fn state(
        &self,
        project: &str,
        projection: &[&str],
    ) -> Result<StateReply, ClientError> {
        let url = self.url("/state");
        let mut query = vec![("project", project.to_string())];
        if !projection.is_empty() {
            query.push(("projection", projection.join(",")));
        }
        let r = self.http.get(&url).query(&query).send().await;
        self.read(url, r, false).await
    }

    /// [`Client::state`] with the busy and connection retries of
    /// [`Client::submit_retrying`].
    pub async fn state_retrying(
        &self,
        project: &str,
        projection: &[&str],
    ) -> Result<StateReply, ClientError> {
        Self::retrying(false, None, || self.state(project, projection))
            .await
            .map(|(s, _)| s)
    }

    pub async fn health(&self) -> Result<HealthReply, ClientError> {
        let url = self.url("/health");
        let r = self.http.get(&url).send().await;
        self.read(url, r, false).await
    }

    /// `GET /health` of any node, leader or follower, with its HTTP status:
    /// a halted follower answers `503` with its health as the body, which
    /// an operator needs to read, not an error body.
    /// Any other reply (a `404` of a wrong base URL, an error body) is an
    /// error, not a health document.
    pub async fn health_any(&self) -> Result<(u16, serde_json::Value), ClientError> {
        let url = self.url("/health");
        let (status, retry_after_ms, bytes) =
            Self::status_and_body(&url, self.http.get(&url).send().await, false).await?;
        let health = (200..300).contains(&status) || status == 503;
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) if health && v.get("status").is_some_and(|s| s.is_string()) => Ok((status, v)),
            Err(e) if (200..300).contains(&status) => Err(ClientError::Decode {
                url,
                detail: format!("{status} with a body that is not JSON ({e})"),
                outcome_unknown: false,
            }),
            _ => Err(self.refusal(url, status, retry_after_ms, &bytes)),
        }
    }

    /// `GET path` as untyped JSON: for surfaces with their own shapes, such
    /// as a follower's `/health` and `/state` (`p2p::http`).
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let url = self.url(path);
        let r = self.http.get(&url).send().await;
        self.read(url, r, false).await
    }

    /// The attention digest; `min_band` is `0..=4` or a band name
    /// (`None`: the server's default, `watch`).
    pub async fn attention(&self, min_band: Option<&str>) -> Result<AttentionReply, ClientError> {
        let url = self.url("/attention");
        let query: Vec<(&str, &str)> = min_band.map(|b| ("min_band", b)).into_iter().collect();
        let r = self.http.get(&url).query(&query).send().await;
        self.read(url, r, false).await
    }

    /// A decision record by `blake3:<hex>`, `<hex>` or `bubble://dr/<hex>`
    /// ([`normalize_decision_ref`]); anything else is refused without a
    /// request.
    pub async fn decision(&self, reference: &str) -> Result<serde_json::Value, ClientError> {
        let hex = normalize_decision_ref(reference)?;
        let url = self.url(&format!("/decisions/{hex}"));
        let r = self.http.get(&url).send().await;
        self.read(url, r, false).await
    }

    pub async fn metrics(&self) -> Result<String, ClientError> {
        let url = self.url("/metrics");
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| transport_error(&url, &e, false))?;
        let bytes = read_capped(&url, resp, false).await?;
        String::from_utf8(bytes).map_err(|e| ClientError::Decode {
            url,
            detail: format!("the metrics are not UTF-8 text ({e})"),
            outcome_unknown: false,
        })
    }

    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        let url = self.url("/openapi.json");
        let r = self.http.get(&url).send().await;
        self.read(url, r, false).await
    }

    /// Build a proposal against the project's current HEAD (hash, last HLC,
    /// BACKBEAT window), sign it, and submit it, re-reading HEAD after a
    /// stale hash when the policy allows. A failure carries the last
    /// proposal sent and whether its outcome is unknown
    /// ([`ProposeFailure::outcome_unknown`]): resubmitting exactly that
    /// proposal (idempotent) settles it, where calling `propose` again
    /// would sign a new one (a new HLC and HEAD under the same key, which
    /// the node refuses as an `idem_conflict` if the first was applied).
    pub async fn propose<T: Serialize>(
        &self,
        req: &ProposeRequest<'_, T>,
        policy: RetryPolicy,
    ) -> Result<Proposed, ProposeFailure> {
        self.propose_keeping_last(req, policy).await
    }

    /// [`Client::propose`] (its earlier name).
    pub async fn propose_keeping_last<T: Serialize>(
        &self,
        req: &ProposeRequest<'_, T>,
        policy: RetryPolicy,
    ) -> Result<Proposed, ProposeFailure> {
        let mut stale = 0;
        let mut last = None;
        let deadline = Deadline::after(policy.deadline);
        // Rounds in a row whose freshly built proposal was refused as too
        // far behind the leader's clock (see below).
        let mut behind_fresh = 0u32;
        loop {
            let p = match self.build_within(req, deadline).await {
                Ok(p) => p,
                Err(error) => {
                    return Err(ProposeFailure {
                        error,
                        last,
                        unknown: false,
                    })
                }
            };
            let built = std::time::Instant::now();
            let result = if policy.retry_busy {
                Self::retrying(true, deadline, || self.submit(&p)).await
            } else if let Some(d) = deadline.filter(|d| tokio::time::Instant::now() >= d.at) {
                // Nothing sent once the deadline has passed.
                Err(d.error("reading HEAD took it all".into(), false))
            } else {
                Deadline::bound(deadline, true, self.submit(&p))
                    .await
                    .map(|r| (r, 0))
            };
            match result {
                Ok((reply, busy)) => {
                    return Ok(Proposed {
                        reply,
                        proposal: p,
                        stale_retries: stale,
                        busy_retries: busy,
                    })
                }
                Err(ClientError::Refused { status: 409, body })
                    if policy.resubmit_on_stale
                        && (body.error == "stale_hash" || body.error == "hlc_order") =>
                {
                    // `hlc_order` for an HLC that follows the project's last
                    // one is the lag bound. For a proposal that aged in busy
                    // retries, rebuilding fixes it; for one refused as soon
                    // as it was built, twice in a row, this client's clock
                    // runs behind the leader's and rebuilding from it cannot
                    // pass (eight more rounds then blamed "another writer").
                    let follows_last = body
                        .hlc_last
                        .as_deref()
                        .and_then(|h| h.parse::<Hlc>().ok())
                        .is_none_or(|last| p.hlc > last);
                    let fresh = built.elapsed() < Duration::from_millis(FRESH_PROPOSAL_MS);
                    if body.error == "hlc_order" && follows_last && fresh {
                        behind_fresh += 1;
                    } else {
                        behind_fresh = 0;
                    }
                    if behind_fresh >= 2 {
                        let mut body = body;
                        body.message = format!(
                            "{}; this client's clock ({}) runs behind the leader's by more than the cluster's hlc_max_offset_ms (a proposal built just now was refused so twice): correct it (NTP) and resubmit",
                            body.message, p.hlc
                        );
                        return Err(ProposeFailure {
                            error: ClientError::Refused { status: 409, body },
                            last: Some(p),
                            unknown: false,
                        });
                    }
                    if stale >= STALE_RETRIES_MAX {
                        let mut body = body;
                        body.message = format!(
                            "{}; HEAD kept moving after {} attempts (another writer is active): re-read with `swoosh state` and resubmit later",
                            body.message,
                            stale + 1
                        );
                        return Err(ProposeFailure {
                            error: ClientError::Refused { status: 409, body },
                            last: Some(p),
                            unknown: false,
                        });
                    }
                    // Spread competing writers apart before the next round.
                    let wait = Duration::from_millis(stale_backoff_ms(stale, jitter()));
                    if let Some(d) = deadline.filter(|d| tokio::time::Instant::now() + wait >= d.at)
                    {
                        return Err(ProposeFailure {
                            error: d.error(
                                format!("{} rounds refused as stale: {}", stale + 1, body.message),
                                false,
                            ),
                            last: Some(p),
                            unknown: false,
                        });
                    }
                    tokio::time::sleep(wait).await;
                    stale += 1;
                    last = Some(p);
                }
                Err(error) => {
                    return Err(ProposeFailure {
                        unknown: error.outcome_unknown(),
                        error,
                        last: Some(p),
                    })
                }
            }
        }
    }

    /// Build and sign a proposal against the current HEAD (read with the
    /// busy and connection retries).
    pub async fn build<T: Serialize>(
        &self,
        req: &ProposeRequest<'_, T>,
    ) -> Result<Proposal, ClientError> {
        self.build_within(req, None).await
    }

    async fn build_within<T: Serialize>(
        &self,
        req: &ProposeRequest<'_, T>,
        deadline: Option<Deadline>,
    ) -> Result<Proposal, ClientError> {
        let (st, _) = Self::retrying(false, deadline, || {
            self.state(req.project, &["Project", "Execution"])
        })
        .await?;
        let head: Hash = st.hash.parse().map_err(|e| ClientError::Decode {
            url: self.base.clone(),
            detail: format!("state hash: {e}"),
            outcome_unknown: false,
        })?;
        let last: Option<Hlc> = st
            .projection
            .get("hlc_last")
            .and_then(|v| v.as_str())
            .map(|s| s.parse())
            .transpose()
            .map_err(|e| ClientError::Decode {
                url: self.base.clone(),
                detail: format!("hlc_last: {e}"),
                outcome_unknown: false,
            })?;
        let schedule: Option<Schedule> = st
            .projection
            .get("execution")
            .and_then(|e| e.get("schedule"))
            .and_then(|s| serde_json::from_value(s.clone()).ok());
        let hlc = Hlc::send(last.unwrap_or_default(), wall_ms())
            .map_err(|e| ClientError::Build(e.to_string()))?;
        let window = schedule.map(|s| s.window_id(&hlc)).unwrap_or_default();
        ProposalBuilder::new(req.project, req.transition, head, hlc, &req.idem_key)
            .inputs(req.inputs)
            .map_err(|e| ClientError::Build(e.to_string()))?
            .window(window)
            .evidence(req.evidence.clone())
            .sign(req.key)
            .map_err(|e| ClientError::Build(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_leader(leader: Option<&str>) -> String {
        ClientError::NotLeader {
            url: "http://f:1".into(),
            leader: leader.map(str::to_string),
            body: ErrorBody::default(),
        }
        .to_string()
    }

    /// Only an HTTP URL is offered as one to resubmit to.
    #[test]
    fn not_leader_names_a_url_only_when_it_is_one() {
        let t = not_leader(Some("http://leader:7700"));
        assert!(t.contains("at http://leader:7700 (--to)"), "{t}");
        let t = not_leader(Some("/ip4/10.0.0.1/tcp/7800"));
        assert!(t.contains("p2p address is /ip4/10.0.0.1/tcp/7800"), "{t}");
        assert!(t.contains("--leader-http"), "{t}");
        assert!(!t.contains("(--to)"), "{t}");
        assert!(not_leader(None).contains("leader's URL"));
    }

    /// The server's hint is waited in full (clipped at RETRY_HINT_MS_MAX),
    /// plus a jittered exponential part capped at BACKOFF_MS_MAX; no input
    /// overflows.
    #[test]
    fn backoff_honours_the_hint_and_saturates() {
        for jitter in [0, 1, 7, u64::MAX / 3, u64::MAX] {
            for attempt in [0, 1, 5, 31, 32, 63, 64, 65, u32::MAX] {
                let exp_cap = BACKOFF_MS_MAX;
                let w = backoff_ms(attempt, None, jitter);
                assert!(w <= exp_cap, "attempt {attempt}: {w}");
                assert!(w >= BACKOFF_MS_BASE / 2, "attempt {attempt}: {w}");
                for hint in [0, 1, 100, 5_000, RETRY_HINT_MS_MAX, u64::MAX / 2, u64::MAX] {
                    let w = backoff_ms(attempt, Some(hint), jitter);
                    let honoured = hint.min(RETRY_HINT_MS_MAX);
                    assert!(w >= honoured, "hint {hint} attempt {attempt}: {w}");
                    assert!(
                        w <= honoured + exp_cap,
                        "hint {hint} attempt {attempt}: {w}"
                    );
                }
            }
        }
        // The first retry does not double the hint.
        assert!(backoff_ms(0, Some(1_000), 0) < 2_000);
        // A hint above the old 2 s cap is honoured.
        assert!(backoff_ms(0, Some(5_000), 0) >= 5_000);
        // The exponential part grows, then stops at its cap.
        assert!(backoff_ms(3, None, 0) > backoff_ms(0, None, 0));
        assert_eq!(backoff_ms(40, None, 0), BACKOFF_MS_MAX / 2);
        for round in [0, 3, 64, u32::MAX] {
            for jitter in [0, 9, u64::MAX] {
                assert!(stale_backoff_ms(round, jitter) <= STALE_BACKOFF_MS_MAX);
                assert!(stale_backoff_ms(round, jitter) >= STALE_BACKOFF_MS_BASE / 2);
            }
        }
    }

    #[test]
    fn a_base_without_a_scheme_gets_http_and_other_schemes_are_refused() {
        for (given, want) in [
            ("127.0.0.1:7700", "http://127.0.0.1:7700"),
            (" 127.0.0.1:7700/ ", "http://127.0.0.1:7700"),
            ("localhost:7700", "http://localhost:7700"),
            ("http://127.0.0.1:7700/", "http://127.0.0.1:7700"),
            ("HTTP://node.example:80", "HTTP://node.example:80"),
        ] {
            assert_eq!(normalize_base(given).unwrap(), want, "{given}");
            assert_eq!(Client::try_new(given).unwrap().base(), want, "{given}");
            assert_eq!(Client::new(given).base(), want, "{given}");
        }
        for bad in [
            "ftp://127.0.0.1:7700",
            // No TLS in this client (the node serves plain HTTP).
            "https://node.example:443",
            "HTTPS://node.example:443",
            "",
            "unix:///run/swoosh.sock",
            "http://",
            // Appending `/health` to these would ask for `/`.
            "http://127.0.0.1:7700?x=1",
            "http://127.0.0.1:7700/#top",
            "127.0.0.1:7700/?",
        ] {
            let e = normalize_base(bad).unwrap_err().to_string();
            assert!(e.contains(URL_FORM), "{bad}: {e}");
            assert!(Client::try_new(bad).is_err(), "{bad}");
        }
    }

    /// A path is kept (a reverse proxy may map it to a node) and put
    /// before every endpoint; it is what a 404's hint names.
    #[test]
    fn a_base_path_is_kept_and_named() {
        let c = Client::try_new("http://127.0.0.1:7700/some/path/").unwrap();
        assert_eq!(c.base(), "http://127.0.0.1:7700/some/path");
        assert_eq!(c.url("/health"), "http://127.0.0.1:7700/some/path/health");
        assert_eq!(c.base_path.as_deref(), Some("/some/path"));
        for root in ["127.0.0.1:7700", "http://127.0.0.1:7700/"] {
            assert_eq!(Client::try_new(root).unwrap().base_path, None, "{root}");
        }
        let e = c.refusal(
            c.url("/health"),
            404,
            None,
            br#"{"error":"not_found","message":"no such endpoint"}"#,
        );
        let text = e.to_string();
        assert!(text.contains("ends in the path /some/path"), "{text}");
        assert!(text.contains(URL_FORM), "{text}");
        // Without a path a 404 is the node's word alone.
        let c = Client::try_new("127.0.0.1:7700").unwrap();
        let e = c.refusal(
            c.url("/nope"),
            404,
            None,
            br#"{"error":"not_found","message":"no such endpoint"}"#,
        );
        assert_eq!(e.to_string(), "404 not_found: no such endpoint");
    }

    fn refusal(status: u16, error: &str, retry_after_ms: Option<u64>) -> ClientError {
        ClientError::Refused {
            status,
            body: ErrorBody {
                error: error.into(),
                message: format!("node says {error}"),
                retry_after_ms,
                ..Default::default()
            },
        }
    }

    fn lost(outcome_unknown: bool) -> ClientError {
        ClientError::Connect {
            url: "http://n:1/transition".into(),
            detail: "connection reset".into(),
            timed_out: false,
            outcome_unknown,
        }
    }

    /// Feed `errors` to one retry sequence: the waits until it stops, and
    /// the error it stops with (`None`: it would still retry).
    fn run(errors: Vec<ClientError>) -> (usize, Option<ClientError>) {
        run_as(true, errors)
    }

    fn run_as(proposal: bool, errors: Vec<ClientError>) -> (usize, Option<ClientError>) {
        let mut r = Retries {
            proposal,
            ..Retries::default()
        };
        let mut waits = 0;
        for e in errors {
            match r.after(e, 0) {
                Ok(_) => waits += 1,
                Err(e) => return (waits, Some(e)),
            }
        }
        (waits, None)
    }

    /// A 503 no wait cures ends the retries at once, saying why; a passing
    /// one (with a hint) and a 429 are waited out.
    #[test]
    fn a_503_of_a_node_that_stopped_or_gave_no_hint_is_not_retried() {
        for code in [ERROR_GAVE_UP, ERROR_SHUTTING_DOWN] {
            let (waits, e) = run(vec![refusal(503, code, None)]);
            let e = e.expect("stops");
            assert_eq!(waits, 0, "{code}");
            assert!(!e.outcome_unknown(), "{code}: refused before admission");
            let text = e.to_string();
            assert!(
                text.contains(&format!("503 {code}: node says {code}")),
                "{text}"
            );
            assert!(text.contains("process is started again"), "{text}");
        }
        let (waits, e) = run(vec![refusal(503, "unavailable", None)]);
        let e = e.expect("stops");
        assert_eq!(waits, 0);
        assert!(e.to_string().contains("no retry hint"), "{e}");
        assert!(
            e.outcome_unknown(),
            "`unavailable` says nothing of the outcome"
        );
        let (waits, e) = run(vec![
            refusal(503, "unavailable", Some(100)),
            refusal(429, "backpressure", None),
            refusal(429, "backpressure", Some(5)),
        ]);
        assert_eq!((waits, e.is_none()), (3, true));
    }

    /// A node still replaying its log after a start did nothing with the
    /// request: its `503 recovering` is waited out like a 429, and when the
    /// retries run out the proposal's outcome is known (not applied),
    /// unless an earlier attempt had gone unanswered.
    #[test]
    fn a_recovering_node_is_waited_out_and_leaves_nothing_unknown() {
        let recovering = || refusal(503, ERROR_RECOVERING, Some(1_000));
        let many = || (0..=BUSY_RETRIES_MAX).map(|_| recovering());
        let (waits, e) = run(many().collect());
        assert_eq!(waits, BUSY_RETRIES_MAX as usize);
        let e = e.expect("stops once the retries run out");
        assert!(!e.outcome_unknown(), "{e}");
        assert!(e.to_string().contains("recovering"), "{e}");
        let mut errors = vec![lost(true)];
        errors.extend(many());
        let (_, e) = run(errors);
        assert!(e.expect("stops").outcome_unknown());
    }

    /// Once an attempt was sent without a reply, every later ending that
    /// does not answer for the proposal (busy until the retries ran out, a
    /// node that stopped, a connection error) says the outcome is UNKNOWN;
    /// a refusal of the resubmission settles it.
    #[test]
    fn an_earlier_unknown_attempt_makes_a_busy_or_stopped_ending_unknown() {
        let busy = |n: u32| (0..n).map(|_| refusal(429, "backpressure", Some(1)));
        let mut errors = vec![lost(true)];
        errors.extend(busy(BUSY_RETRIES_MAX + 1));
        let (waits, e) = run(errors);
        assert_eq!(waits, 1 + BUSY_RETRIES_MAX as usize);
        let e = e.expect("the busy retries run out");
        assert!(e.outcome_unknown(), "{e}");
        assert_eq!(e.status(), Some(429));
        assert_eq!(e.body().map(|b| b.error.as_str()), Some("backpressure"));
        let text = e.to_string();
        assert!(text.starts_with("429 backpressure"), "{text}");
        assert!(text.contains("UNKNOWN"), "{text}");
        assert!(text.contains("connection reset"), "{text}");

        for code in [ERROR_GAVE_UP, ERROR_SHUTTING_DOWN] {
            let (waits, e) = run(vec![lost(true), refusal(503, code, None)]);
            let e = e.expect("stops");
            assert_eq!(waits, 1);
            assert!(e.outcome_unknown(), "{code}: {e}");
            assert!(e.to_string().contains("UNKNOWN"), "{e}");
        }
        // The same without an unknown attempt: only the busy ending.
        let (_, e) = run(busy(BUSY_RETRIES_MAX + 1).collect());
        assert!(!e.expect("runs out").outcome_unknown());
        let (_, e) = run(vec![lost(false), refusal(503, ERROR_GAVE_UP, None)]);
        assert!(!e.expect("stops").outcome_unknown());
        // A refusal of the same proposal settles it.
        let (_, e) = run(vec![lost(true), refusal(409, "stale_hash", None)]);
        assert!(!e.expect("stops").outcome_unknown());
        // A final connection error, as before.
        let mut errors = vec![lost(true)];
        errors.extend((0..CONNECT_RETRIES_MAX).map(|_| lost(false)));
        let (_, e) = run(errors);
        assert!(e.expect("runs out").outcome_unknown());
        // A `503 unavailable` with a hint (no durable outcome in time) is an
        // unknown attempt too: a node that then refuses connections until
        // the retries run out leaves it unknown.
        let mut errors = vec![refusal(503, "unavailable", Some(200))];
        errors.extend((0..=CONNECT_RETRIES_MAX).map(|_| lost(false)));
        let (_, e) = run(errors);
        let e = e.expect("runs out");
        assert!(e.outcome_unknown(), "{e}");
        let mut errors = vec![refusal(503, "unavailable", Some(200))];
        errors.extend(busy(BUSY_RETRIES_MAX));
        let (_, e) = run(errors);
        let e = e.expect("runs out");
        assert!(
            e.outcome_unknown() && e.to_string().contains("UNKNOWN"),
            "{e}"
        );
        // A 503 without a hint on the first attempt is unknown by itself,
        // not wrapped in its own mark.
        let (_, e) = run(vec![refusal(503, "unavailable", None)]);
        let e = e.expect("stops");
        assert!(
            e.outcome_unknown() && matches!(e, ClientError::Refused { .. }),
            "{e}"
        );
        // A proxy's 4xx, or a roster refusal the unknown attempt may have
        // caused, does not settle it; a refusal by the proposal's bytes does.
        for (status, code, settled) in [
            (403, "http", false),
            (404, "http", false),
            (403, "forbidden", false),
            (403, "unknown_signer", false),
            (400, "malformed", true),
            (409, "idem_conflict", true),
        ] {
            let (_, e) = run(vec![lost(true), refusal(status, code, None)]);
            let e = e.expect("stops");
            assert_eq!(e.outcome_unknown(), !settled, "{code}: {e}");
        }
        // A read's 503 leaves nothing unknown.
        let mut errors = vec![refusal(503, "unavailable", Some(200))];
        errors.extend((0..=CONNECT_RETRIES_MAX).map(|_| lost(false)));
        let (_, e) = run_as(false, errors);
        let e = e.expect("runs out");
        assert!(
            !e.outcome_unknown() && !e.to_string().contains("UNKNOWN"),
            "{e}"
        );
        // A gateway's answer on the first attempt is unknown by itself: the
        // proxy may have given up while the node committed.
        for (status, code) in [
            (502, "http"),
            (504, "http"),
            (500, "http"),
            (504, "timeout"),
        ] {
            let (_, e) = run(vec![refusal(status, code, None)]);
            let e = e.expect("stops");
            assert!(e.outcome_unknown(), "{status} {code}: {e}");
        }
        // A node's own 500 (its storage refused before admission) is not.
        let (_, e) = run(vec![refusal(500, "storage", None)]);
        assert!(!e.expect("stops").outcome_unknown());
        // Endings that do not answer for the proposal keep it unknown: a
        // proxy's 502, a body timeout.
        for (status, code) in [(502, "http"), (504, "http"), (408, "timeout")] {
            let (_, e) = run(vec![lost(true), refusal(status, code, None)]);
            let e = e.expect("stops");
            assert!(e.outcome_unknown(), "{status}: {e}");
            assert_eq!(e.status(), Some(status));
        }
    }

    #[test]
    fn decision_references_are_normalised_or_refused() {
        let hex = "ab".repeat(32);
        let upper = hex.to_uppercase();
        for given in [
            hex.clone(),
            format!("blake3:{hex}"),
            format!("BLAKE3:{upper}"),
            format!("bubble://dr/{hex}"),
            format!("Bubble://DR/blake3:{upper}"),
            format!("  {hex}\n"),
        ] {
            assert_eq!(normalize_decision_ref(&given).unwrap(), hex, "{given:?}");
        }
        for bad in [
            "../health".to_string(),
            "".into(),
            "blake3:".into(),
            hex[..63].to_string(),
            format!("{hex}0"),
            format!("{}zz", &hex[..62]),
            format!("bubble://dr/../{hex}"),
            format!("sha256:{hex}"),
        ] {
            let e = normalize_decision_ref(&bad).unwrap_err().to_string();
            assert!(e.contains(DECISION_REF_FORMS), "{bad:?}: {e}");
        }
    }

    /// A proposal without a reply says its outcome is unknown; a failure to
    /// connect does not.
    #[test]
    fn connect_errors_say_whether_the_outcome_is_unknown() {
        let e = |timed_out, outcome_unknown| ClientError::Connect {
            url: "http://n:1/transition".into(),
            detail: "error sending request: connection reset".into(),
            timed_out,
            outcome_unknown,
        };
        for (t, u) in [(true, true), (false, true)] {
            assert!(e(t, u).outcome_unknown());
            assert!(e(t, u).to_string().contains("UNKNOWN"), "{}", e(t, u));
            assert!(e(t, u).to_string().contains("connection reset"));
        }
        assert!(e(true, false).to_string().contains("in time"));
        assert!(e(false, false).to_string().starts_with("cannot reach"));
        assert!(!e(false, false).outcome_unknown());
        let unavailable = ClientError::Refused {
            status: 503,
            body: ErrorBody {
                error: "unavailable".into(),
                ..Default::default()
            },
        };
        assert!(unavailable.outcome_unknown());
    }
}
