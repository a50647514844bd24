//! The HTTP surface of a process that is still recovering its state.
//!
//! A node replays its log before it can serve, which takes minutes on a
//! long log. A port that stays closed meanwhile reads as a node that is
//! down (an operator restarts it, which starts the replay over), and a bind
//! error (port in use) would only show after the whole replay. So `serve`,
//! `p2p leader` and `follow` bind their HTTP port first and answer on it
//! while they recover: `GET /health` is `503` with `status: recovering` and
//! the replay's progress, `GET /metrics` says `swoosh_recovery_in_progress
//! 1` with the same progress, and every other request is `503 recovering`
//! with a retry hint. When recovery is done the same listener is handed to
//! the real server; the connections opened meanwhile finish their request
//! in progress and are closed (clients reconnect).

use crate::api::{ErrorBody, HealthReply, RecoveryReply, ERROR_RECOVERING};
use crate::http::{accept_until, body_err, ServeLimits};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::future::Future;
use std::sync::Arc;
use swoosh_core::Hash;
use swoosh_storage::ProgressCell;

/// The `retry_after_ms` of a `503 recovering`: recovery takes seconds to
/// minutes, so a client polls about once a second.
pub const RECOVERING_RETRY_AFTER_MS: u64 = 1_000;

/// What a recovering process says about itself.
#[derive(Clone, Debug)]
pub struct Recovering {
    /// `leader` or `follower`.
    pub role: &'static str,
    pub genesis_hash: Hash,
    pub cluster_id: String,
    /// Written by the recovery, read by every answer.
    pub progress: Arc<ProgressCell>,
}

impl Recovering {
    fn reply(&self) -> RecoveryReply {
        swoosh_actors::RecoveryView::of(&self.progress).into()
    }

    /// One line: what is done of what, and for how long.
    fn line(&self) -> String {
        let r = self.reply();
        let what = match r.phase.as_str() {
            "snapshots" => format!("checking snapshots ({} of {})", r.done, r.total),
            "replay" => format!(
                "replaying the log ({} of {} records{})",
                r.done,
                r.total,
                percent(r.done, r.total)
            ),
            "starting" => "opening the log".into(),
            other => format!("{other} ({} of {})", r.done, r.total),
        };
        format!("{what}, {:.0} s so far", r.seconds)
    }

    fn health(&self) -> Response {
        let body = HealthReply {
            status: "recovering".into(),
            role: self.role.into(),
            consensus: format!(
                "recovering the state from the log (the newest valid snapshot, then the WAL after it): {}; it serves once every record is checked. Do not restart it: a restart starts the replay over",
                self.line()
            ),
            index: 0,
            root_hash: None,
            last_snapshot_hlc: None,
            last_snapshot_index: None,
            wal_lag: 0,
            inflight: 0,
            restarts: 0,
            genesis_hash: self.genesis_hash.to_string(),
            cluster_id: self.cluster_id.clone(),
            followers: vec![],
            recovery: Some(self.reply()),
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }

    fn metrics(&self) -> Response {
        let mut resp = self.metrics_text().into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }

    /// What `GET /metrics` answers while the process recovers.
    pub fn metrics_text(&self) -> String {
        let r = self.reply();
        format!(
            "# HELP swoosh_recovery_in_progress 1 while the process recovers its state from the log and serves nothing else.\n\
             # TYPE swoosh_recovery_in_progress gauge\nswoosh_recovery_in_progress 1\n\
             # HELP swoosh_recovery_done Work done in the current recovery phase (snapshots checked, records replayed).\n\
             # TYPE swoosh_recovery_done gauge\nswoosh_recovery_done{{phase=\"{phase}\"}} {}\n\
             # HELP swoosh_recovery_total Work of the current recovery phase in all.\n\
             # TYPE swoosh_recovery_total gauge\nswoosh_recovery_total{{phase=\"{phase}\"}} {}\n\
             # HELP swoosh_recovery_elapsed_seconds Time since the recovery began.\n\
             # TYPE swoosh_recovery_elapsed_seconds gauge\nswoosh_recovery_elapsed_seconds {}\n\
             # HELP swoosh_start_time_seconds When the process began to start (Unix seconds); changes() over a window counts restarts.\n\
             # TYPE swoosh_start_time_seconds gauge\nswoosh_start_time_seconds {}\n",
            r.done,
            r.total,
            r.seconds,
            self.progress.started_unix_seconds(),
            phase = r.phase,
        )
    }

    fn refuse(&self) -> Response {
        body_err(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorBody {
                error: ERROR_RECOVERING.into(),
                message: format!(
                    "the {} is recovering its state from the log ({}) and answers nothing but GET /health and GET /metrics until it is done; nothing was done with this request: retry after Retry-After",
                    self.role,
                    self.line()
                ),
                retry_after_ms: Some(RECOVERING_RETRY_AFTER_MS),
                ..Default::default()
            },
        )
    }

    fn router(self) -> axum::Router {
        let me = Arc::new(self);
        let (h, m, f, n) = (me.clone(), me.clone(), me.clone(), me);
        axum::Router::new()
            .route(
                "/health",
                axum::routing::get(move || async move { h.health() }),
            )
            .route(
                "/metrics",
                axum::routing::get(move || async move { m.metrics() }),
            )
            .method_not_allowed_fallback(move || async move { n.refuse() })
            .fallback(move || async move { f.refuse() })
            // No keep-alive: a client polling once a second loses nothing,
            // and a connection kept open across the hand-off to the real
            // server would be closed under a request, which the client could
            // not tell from one the node took (an unknown outcome).
            .layer(axum::middleware::map_response(
                |mut r: Response| async move {
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    r
                },
            ))
    }
}

fn percent(done: u64, total: u64) -> String {
    if total == 0 {
        return String::new();
    }
    format!(", {:.1} %", done as f64 * 100.0 / total as f64)
}

/// Answer on `listener` as [`Recovering`] says while `work` (the recovery)
/// runs; then return the listener, for the real server, and what `work`
/// returned. The connections opened meanwhile finish their request in
/// progress and close within `limits.shutdown_grace`, in the background.
/// `work` runs as its own task: a start that computes for a while without
/// yielding (loading every region view) would otherwise hold up the
/// accept loop. A panic in it is raised again here; a cancelled task (a
/// runtime shutting down) is an error.
pub async fn serve_while<T: Send + 'static>(
    listener: tokio::net::TcpListener,
    about: Recovering,
    work: impl Future<Output = T> + Send + 'static,
    limits: ServeLimits,
) -> std::io::Result<(tokio::net::TcpListener, T)> {
    let task = tokio::spawn(work);
    let (open, joined) = accept_until(&listener, about.router(), task, limits).await;
    tokio::spawn(open.close(limits.shutdown_grace));
    match joined {
        Ok(out) => Ok((listener, out)),
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => Err(std::io::Error::other(format!(
                "the recovery task was cancelled: {e}"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorBody;
    use swoosh_storage::{Phase, Progress};

    async fn get(url: &str) -> (u16, Option<String>, String) {
        let r = reqwest::get(url).await.expect("the port answers");
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap_or("").to_string());
        (status, retry, r.text().await.expect("a body"))
    }

    /// While the work runs the port answers `recovering` with its
    /// progress; once it is done the same listener serves the next router,
    /// and what the work returned comes back.
    #[tokio::test]
    async fn the_port_answers_recovering_with_progress_then_is_handed_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let progress = Arc::new(ProgressCell::new());
        let about = Recovering {
            role: "leader",
            genesis_hash: Hash::of_bytes(b"genesis"),
            cluster_id: "c1".into(),
            progress: progress.clone(),
        };
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u32>();
        let served = tokio::spawn(serve_while(
            listener,
            about,
            async move { done_rx.await.unwrap_or(0) },
            ServeLimits::default(),
        ));
        let base = format!("http://{addr}");

        let (status, _, body) = get(&format!("{base}/health")).await;
        assert_eq!(status, 503);
        let h: HealthReply = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (h.status.as_str(), h.role.as_str()),
            ("recovering", "leader")
        );
        assert_eq!(
            h.recovery.as_ref().map(|r| r.phase.as_str()),
            Some("starting")
        );
        assert_eq!(h.genesis_hash, Hash::of_bytes(b"genesis").to_string());
        assert_eq!(h.cluster_id, "c1");

        progress.observe(&Progress {
            phase: Phase::Replay,
            done: 500,
            total: 1_000,
        });
        let (_, _, body) = get(&format!("{base}/health")).await;
        let h: HealthReply = serde_json::from_str(&body).unwrap();
        let r = h.recovery.expect("progress");
        assert_eq!((r.phase.as_str(), r.done, r.total), ("replay", 500, 1_000));
        assert!(
            h.consensus.contains("500 of 1000 records, 50.0 %"),
            "{}",
            h.consensus
        );

        let (status, _, text) = get(&format!("{base}/metrics")).await;
        assert_eq!(status, 200);
        for line in [
            "swoosh_recovery_in_progress 1\n",
            "swoosh_recovery_done{phase=\"replay\"} 500\n",
            "swoosh_recovery_total{phase=\"replay\"} 1000\n",
            &format!(
                "swoosh_start_time_seconds {}\n",
                progress.started_unix_seconds()
            ),
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }

        let post = |path: &str| {
            reqwest::Client::new()
                .post(format!("{base}{path}"))
                .body("{}")
                .send()
        };
        let r = post("/transition").await.unwrap();
        assert_eq!(r.status().as_u16(), 503);
        assert_eq!(
            r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
            Some("1")
        );
        let e: ErrorBody = r.json().await.unwrap();
        assert_eq!(e.error, ERROR_RECOVERING);
        assert_eq!(e.retry_after_ms, Some(RECOVERING_RETRY_AFTER_MS));
        // Any method, on any path; never kept alive across the hand-off.
        let r = post("/health").await.unwrap();
        assert_eq!(r.status().as_u16(), 503);
        assert_eq!(
            r.headers().get("connection").and_then(|v| v.to_str().ok()),
            Some("close")
        );
        let e: ErrorBody = r.json().await.unwrap();
        assert_eq!(e.error, ERROR_RECOVERING);
        assert!(
            e.message.contains("nothing was done with this request"),
            "{}",
            e.message
        );
        let (status, _, _) = get(&format!("{base}/state/default")).await;
        assert_eq!(status, 503);

        done_tx.send(7).unwrap();
        let (listener, out) = served.await.unwrap().unwrap();
        assert_eq!(out, 7);
        assert_eq!(listener.local_addr().unwrap(), addr, "the same port");
        let next = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::http::serve_router(
            listener,
            next,
            async move {
                let _ = stop_rx.await;
            },
            ServeLimits::default(),
        ));
        let (status, _, body) = get(&format!("{base}/health")).await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        stop_tx.send(()).unwrap();
        server.await.unwrap();
    }
}
