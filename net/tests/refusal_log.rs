//! Every refused proposal leaves a log line saying why (SPEC §9: "shown by
//! guard logs"), with the transition, project, HLC and window it was for.
//! Its own test binary: it installs the process's global subscriber.

use std::sync::{Arc, Mutex};
use swoosh_actors::{NodeConfig, NodeHandle, SystemClock};
use swoosh_core::scenario::{genesis, Driver, Keys, Next};
use swoosh_core::state::NodeState;
use swoosh_net::client::{Client, ClientError};
use swoosh_storage::{LmdbOptions, LmdbStore};

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_proposal_is_logged_with_its_guard_and_reasons() {
    let lines = Lines::default();
    let sink = lines.clone();
    tracing_subscriber::fmt()
        .json()
        .with_writer(move || sink.clone())
        .with_max_level(tracing::Level::INFO)
        .init();

    let dir = tempfile::tempdir().unwrap();
    let store = LmdbStore::open(dir.path(), &LmdbOptions::default()).unwrap();
    let keys = Keys::from_labels("refusal-log", 3);
    let g = genesis(&keys, "refusal-log", now_ms() / 1000 * 1000);
    let cfg = NodeConfig {
        genesis: g.clone(),
        leader_key: keys.leader.clone(),
        snapshot_every: 10_000,
        snapshot_keep: 3,
        wal_limits: Default::default(),
        clock: Arc::new(SystemClock),
        advertise: String::new(),
        attention_file: None,
        compaction: None,
    };
    let node = NodeHandle::start(store, cfg).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(swoosh_net::http::serve(listener, node, async {
        let _ = rx.await;
    }));

    let mirror = NodeState::new(g).unwrap();
    let Next::Propose(p) = Driver::new(&keys, 3).next(&mirror, "default", now_ms()) else {
        panic!("the driver has a first step");
    };
    // Signed by a key the roster does not know: 401 unknown signer.
    let forged = swoosh_core::ProposalBuilder::new(
        &p.project,
        &p.transition,
        p.current_state_hash,
        p.hlc,
        "refused-for-the-log",
    )
    .inputs(&p.inputs)
    .unwrap()
    .sign(&keys.outsider)
    .unwrap();
    let c = Client::new(&url);
    match c.submit(&forged).await {
        Err(ClientError::Refused { status: 401, .. }) => {}
        other => panic!("expected 401: {other:?}"),
    }
    // A field far longer than any log line should carry, with a newline.
    let mut v = serde_json::to_value(&p).unwrap();
    v["window_id"] = serde_json::Value::String(format!("W\n{}", "x".repeat(10_000)));
    match c.submit_raw(serde_json::to_vec(&v).unwrap()).await {
        Err(ClientError::Refused { .. }) => {}
        other => panic!("expected a refusal: {other:?}"),
    }
    match c.submit_raw(b"[1, 2]".to_vec()).await {
        Err(ClientError::Refused { status: 400, .. }) => {}
        other => panic!("expected 400: {other:?}"),
    }
    // And an accepted one: its line has the same fields, spelled alike.
    let ok = c
        .submit(&p)
        .await
        .expect("the driver's first step is accepted");
    let _ = tx.send(());
    task.await.unwrap().unwrap();

    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let refusals: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "proposal refused")
        .collect();
    assert_eq!(refusals.len(), 3, "{text}");
    let f = &refusals[0]["fields"];
    assert_eq!(f["error"], "unknown_signer", "{f}");
    // Client-supplied text is logged as the accepted line logs it (no
    // quotes added), with control characters escaped, and cut.
    assert_eq!(f["transition"], p.transition.as_str(), "{f}");
    assert_eq!(f["project"], "default", "{f}");
    assert_eq!(f["state_pre_hash"], p.current_state_hash.to_string(), "{f}");
    assert_eq!(f["state_post_hash"], "", "{f}");
    assert_eq!(f["hlc"], p.hlc.to_string(), "{f}");
    assert!(f["guard"].as_str().is_some_and(|g| !g.is_empty()), "{f}");
    assert!(f["reasons"].as_str().is_some_and(|r| !r.is_empty()), "{f}");
    let w = refusals[1]["fields"]["window_id"]
        .as_str()
        .expect("window_id");
    // Quoted (it holds a control character), escaped, not a raw newline.
    assert!(
        w.starts_with("\"W\\n"),
        "escaped, not a raw newline: {w:.40}"
    );
    assert!(
        w.len() < 300,
        "cut to the log field limit: {} chars",
        w.len()
    );
    assert_eq!(refusals[2]["fields"]["error"], "malformed", "{text}");

    let accepted: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "transition accepted and durable")
        .collect();
    assert_eq!(accepted.len(), 1, "{text}");
    let a = &accepted[0]["fields"];
    assert_eq!(a["transition"], p.transition.as_str(), "{a}");
    assert_eq!(a["project"], "default", "{a}");
    assert_eq!(a["hlc"], p.hlc.to_string(), "{a}");
    assert_eq!(a["window_id"], p.window_id.as_str(), "{a}");
    assert_eq!(a["state_pre_hash"], p.current_state_hash.to_string(), "{a}");
    assert_eq!(a["state_post_hash"], ok.state_post_hash, "{a}");
    assert_eq!(a["index"], ok.index, "{a}");
    assert_eq!(a["decision"], ok.decision_hash, "{a}");
    assert!(a["elapsed_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{a}");
    assert_eq!(accepted[0]["span"]["name"], "transition", "{}", accepted[0]);
}
