//! The Rust client SDK: builds, signs and submits proposals over the HTTP
//! API; on a stale state hash it re-reads HEAD and resubmits when the caller
//! allows it; on backpressure it backs off.

use crate::api::*;
use ed25519_dalek::SigningKey;
use serde::Serialize;
use std::time::Duration;
use swoosh_core::backbeat::Schedule;
use swoosh_core::{Hash, Hlc, Proposal, ProposalBuilder};

/// How many times `propose` re-reads HEAD after a stale hash.
pub const STALE_RETRIES_MAX: u32 = 8;
/// How many times a submit is retried on 429/503.
pub const BUSY_RETRIES_MAX: u32 = 20;
/// Longest backoff between retries.
pub const BACKOFF_MS_MAX: u64 = 2_000;
pub const REQUEST_TIMEOUT_MS: u64 = 35_000;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {url}: {detail}; check that `swoosh serve` runs there and the address is right")]
    Connect { url: String, detail: String },
    #[error("{status} {}: {}", body.error, body.message)]
    Refused { status: u16, body: ErrorBody },
    /// A follower answered: it never takes proposals, so retrying it is
    /// pointless; the proposal must go to the leader.
    #[error("{url} is a read-only follower, not the leader; {}", match leader.as_deref() {
        Some(l) if l.starts_with("http://") || l.starts_with("https://") => format!("send proposals to the leader at {l} (--url)"),
        // Without `--leader-http` a follower names the leader's p2p address.
        Some(l) => format!("the leader's p2p address is {l}; send proposals to its HTTP URL (start the follower with --leader-http to have it named here)"),
        None => "send proposals to the leader's URL (see `swoosh health` on a follower, or the cluster's genesis)".into(),
    })]
    NotLeader {
        url: String,
        leader: Option<String>,
        body: ErrorBody,
    },
    #[error("unexpected reply from {url}: {detail}")]
    Decode { url: String, detail: String },
    #[error("could not build the proposal: {0}")]
    Build(String),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            ClientError::NotLeader { .. } => Some(503),
            _ => None,
        }
    }
    pub fn body(&self) -> Option<&ErrorBody> {
        match self {
            ClientError::Refused { body, .. } | ClientError::NotLeader { body, .. } => Some(body),
            _ => None,
        }
    }
}

/// What to do when a proposal meets a stale HEAD or backpressure.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Re-read HEAD and resubmit on `409 stale_hash` / `hlc_order`.
    pub resubmit_on_stale: bool,
    /// Back off and resubmit on `429` / `503`.
    pub retry_busy: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            resubmit_on_stale: true,
            retry_busy: true,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    base: String,
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

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Client {
    /// `base` is like `http://127.0.0.1:7700`.
    pub fn new(base: &str) -> Client {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS))
            // Drop idle connections before the server does
            // (HEADER_READ_TIMEOUT_MS): reusing one the server is closing
            // fails the request instead of opening a new connection.
            .pool_idle_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS / 2))
            .build()
            .expect("a plain HTTP client builds");
        Client {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The status and body of a reply; a failure to get them is `Connect`.
    async fn status_and_body(
        url: &str,
        resp: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let connect = |e: reqwest::Error| ClientError::Connect {
            url: url.to_string(),
            detail: e.to_string(),
        };
        let resp = resp.map_err(connect)?;
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().await.map_err(connect)?.to_vec()))
    }

    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        url: String,
        resp: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<T, ClientError> {
        // The URL as sent, with its encoded query, for error messages.
        let url = match &resp {
            Ok(r) => r.url().to_string(),
            Err(e) => e.url().map(|u| u.to_string()).unwrap_or(url),
        };
        let (status, bytes) = Self::status_and_body(&url, resp).await?;
        if (200..300).contains(&status) {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                url,
                detail: e.to_string(),
            })
        } else {
            let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|_| ErrorBody {
                error: "http".into(),
                message: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
                ..Default::default()
            });
            if body.error == "not_leader" {
                let leader = body.leader.clone().filter(|l| !l.is_empty());
                return Err(ClientError::NotLeader { url, leader, body });
            }
            Err(ClientError::Refused { status, body })
        }
    }

    /// One submission, no retries.
    pub async fn submit(&self, p: &Proposal) -> Result<AcceptedReply, ClientError> {
        let url = self.url("/transition");
        let r = self.http.post(&url).json(p).send().await;
        self.read(url, r).await
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
        self.read(url, r).await
    }

    /// Submit, backing off on 429/503 (the proposal is idempotent, so a
    /// resubmission after an unacknowledged attempt is safe). A follower's
    /// `503 not_leader` is permanent and returned at once
    /// ([`ClientError::NotLeader`]).
    pub async fn submit_retrying(&self, p: &Proposal) -> Result<(AcceptedReply, u32), ClientError> {
        let mut tries = 0;
        loop {
            match self.submit(p).await {
                Err(ClientError::Refused { status, body })
                    if (status == 429 || status == 503) && tries < BUSY_RETRIES_MAX =>
                {
                    tries += 1;
                    let hint = body.retry_after_ms.unwrap_or(50);
                    let backoff = (hint.max(10) << tries.min(5)).min(BACKOFF_MS_MAX);
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
                Err(ClientError::Connect { .. }) if tries < 3 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100 << tries)).await;
                }
                other => return other.map(|r| (r, tries)),
            }
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
        self.read(url, r).await
    }

    pub async fn health(&self) -> Result<HealthReply, ClientError> {
        let url = self.url("/health");
        let r = self.http.get(&url).send().await;
        self.read(url, r).await
    }

    /// `GET /health` of any node, leader or follower, with its HTTP status:
    /// a halted follower answers `503` with its health as the body, which
    /// an operator needs to read, not an error body.
    pub async fn health_any(&self) -> Result<(u16, serde_json::Value), ClientError> {
        let url = self.url("/health");
        let (status, bytes) = Self::status_and_body(&url, self.http.get(&url).send().await).await?;
        let v = serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url,
            detail: format!("{status} with a body that is not JSON ({e})"),
        })?;
        Ok((status, v))
    }

    /// `GET path` as untyped JSON: for surfaces with their own shapes, such
    /// as a follower's `/health` and `/state` (`p2p::http`).
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        let url = self.url(path);
        let r = self.http.get(&url).send().await;
        self.read(url, r).await
    }

    /// The attention digest; `min_band` is `0..=4` or a band name
    /// (`None`: the server's default, `watch`).
    pub async fn attention(&self, min_band: Option<&str>) -> Result<AttentionReply, ClientError> {
        let url = self.url("/attention");
        let query: Vec<(&str, &str)> = min_band.map(|b| ("min_band", b)).into_iter().collect();
        let r = self.http.get(&url).query(&query).send().await;
        self.read(url, r).await
    }

    /// A decision record by `blake3:<hex>`, `<hex>` or `bubble://dr/<hex>`.
    pub async fn decision(&self, reference: &str) -> Result<serde_json::Value, ClientError> {
        // The bubble address carries slashes; the path segment takes the hex.
        let reference = reference.strip_prefix("bubble://dr/").unwrap_or(reference);
        let url = self.url(&format!("/decisions/{reference}"));
        let r = self.http.get(&url).send().await;
        self.read(url, r).await
    }

    pub async fn metrics(&self) -> Result<String, ClientError> {
        let url = self.url("/metrics");
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| ClientError::Connect {
                url: url.clone(),
                detail: e.to_string(),
            })?;
        resp.text().await.map_err(|e| ClientError::Connect {
            url,
            detail: e.to_string(),
        })
    }

    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        let url = self.url("/openapi.json");
        let r = self.http.get(&url).send().await;
        self.read(url, r).await
    }

    /// Build a proposal against the project's current HEAD (hash, last HLC,
    /// BACKBEAT window), sign it, and submit it, re-reading HEAD after a
    /// stale hash when the policy allows.
    pub async fn propose<T: Serialize>(
        &self,
        req: &ProposeRequest<'_, T>,
        policy: RetryPolicy,
    ) -> Result<Proposed, ClientError> {
        let mut stale = 0;
        loop {
            let p = self.build(req).await?;
            let result = if policy.retry_busy {
                self.submit_retrying(&p).await
            } else {
                self.submit(&p).await.map(|r| (r, 0))
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
                        && stale < STALE_RETRIES_MAX
                        && (body.error == "stale_hash" || body.error == "hlc_order") =>
                {
                    stale += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Build and sign a proposal against the current HEAD.
    pub async fn build<T: Serialize>(
        &self,
        req: &ProposeRequest<'_, T>,
    ) -> Result<Proposal, ClientError> {
        let st = self.state(req.project, &["Project", "Execution"]).await?;
        let head: Hash = st.hash.parse().map_err(|e| ClientError::Decode {
            url: self.base.clone(),
            detail: format!("state hash: {e}"),
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
        assert!(t.contains("at http://leader:7700 (--url)"), "{t}");
        let t = not_leader(Some("/ip4/10.0.0.1/tcp/7800"));
        assert!(t.contains("p2p address is /ip4/10.0.0.1/tcp/7800"), "{t}");
        assert!(t.contains("--leader-http"), "{t}");
        assert!(!t.contains("(--url)"), "{t}");
        assert!(not_leader(None).contains("leader's URL"));
    }
}
