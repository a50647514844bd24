//! The client SDK against scripted fake nodes on 127.0.0.1:0: busy hints,
//! re-reads of HEAD, stale rounds, unknown outcomes, nodes that stopped for
//! good and arguments refused before any request; and against a real node
//! that shuts down or gives up. No assertion depends on timing.

use ed25519_dalek::SigningKey;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swoosh_actors::{ActorKind, NodeConfig, NodeHandle, SystemClock};
use swoosh_core::scenario::{genesis, Driver, Keys, Next};
use swoosh_core::state::NodeState;
use swoosh_net::api::{ERROR_GAVE_UP, ERROR_SHUTTING_DOWN};
use swoosh_net::client::{
    Client, ClientError, ProposeRequest, RetryPolicy, DECISION_REF_FORMS, STALE_RETRIES_MAX,
    URL_FORM,
};
use swoosh_storage::{Durability, LmdbOptions, LmdbStore, LogStore, Space};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request the fake node received: method, path, body.
type Seen = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A reply: status, extra headers, body; `None` drops the connection after
/// reading the request.
type Reply = Option<(u16, Vec<(&'static str, String)>, String)>;

/// A fake node answering each request with `script(method, path, n)`, `n`
/// counting earlier requests with the same method and path.
async fn fake_node<F>(script: F) -> (String, Seen)
where
    F: Fn(&str, &str, usize) -> Reply + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let (script, log) = (Arc::new(script), seen.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (script, log) = (script.clone(), log.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let mut words = head.split_whitespace();
                let method = words.next().unwrap_or("").to_string();
                let path = words.next().unwrap_or("").to_string();
                let n = {
                    let mut log = log.lock().unwrap();
                    let n = log
                        .iter()
                        .filter(|(m, p, _)| {
                            *m == method && p.split('?').next() == path.split('?').next()
                        })
                        .count();
                    log.push((
                        method.clone(),
                        path.clone(),
                        buf[head_end..head_end + len].to_vec(),
                    ));
                    n
                };
                let bare = path.split('?').next().unwrap_or("");
                let Some((status, headers, body)) = script(&method, bare, n) else {
                    return; // dropped: no reply
                };
                let mut out = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&body);
                let _ = sock.write_all(out.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, seen)
}

fn hex(b: u8) -> String {
    format!("{b:02x}").repeat(32)
}

fn state_reply() -> Reply {
    let body = serde_json::json!({
        "project": "default", "index": 0, "hash": format!("blake3:{}", hex(0x11)), "projection": {}
    });
    Some((200, vec![], body.to_string()))
}

fn accepted() -> Reply {
    let body = serde_json::json!({
        "index": 1, "transition": "Boot_ConfigOk",
        "state_post_hash": format!("blake3:{}", hex(0x22)),
        "decision": format!("bubble://dr/{}", hex(0x33)),
        "decision_hash": format!("blake3:{}", hex(0x33)),
        "duplicate": false
    });
    Some((202, vec![], body.to_string()))
}

fn refused(status: u16, error: &str, retry_after_ms: Option<u64>) -> Reply {
    let mut body = serde_json::json!({ "error": error, "message": format!("fake {error}") });
    if let Some(ms) = retry_after_ms {
        body["retry_after_ms"] = ms.into();
    }
    Some((status, vec![], body.to_string()))
}

fn count(seen: &Seen, method: &str, path: &str) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(m, p, _)| m == method && p.split('?').next() == Some(path))
        .count()
}

async fn proposal(c: &Client) -> swoosh_core::Proposal {
    let key = SigningKey::from_bytes(&[7; 32]);
    let inputs = serde_json::json!({});
    c.build(&ProposeRequest {
        project: "default",
        transition: "Boot_ConfigOk",
        inputs: &inputs,
        key: &key,
        idem_key: "default:Boot_ConfigOk:test".into(),
        evidence: vec![],
    })
    .await
    .unwrap()
}

/// `429` with `retry_after_ms`, then `202`: the client waits and succeeds.
#[tokio::test]
async fn a_busy_reply_with_a_hint_is_retried_until_accepted() {
    let (url, seen) = fake_node(|m, p, n| match (m, p) {
        ("GET", "/state") => state_reply(),
        ("POST", "/transition") if n == 0 => refused(429, "backpressure", Some(30)),
        ("POST", "/transition") => accepted(),
        _ => refused(404, "not_found", None),
    })
    .await;
    let c = Client::new(&url);
    let p = proposal(&c).await;
    let (reply, retries) = c.submit_retrying(&p).await.unwrap();
    assert_eq!(reply.index, 1);
    assert_eq!(retries, 1);
    assert_eq!(count(&seen, "POST", "/transition"), 2);
    // Both attempts carried the same proposal.
    let log = seen.lock().unwrap();
    let bodies: Vec<_> = log
        .iter()
        .filter(|(m, ..)| m == "POST")
        .map(|(.., b)| b)
        .collect();
    assert_eq!(bodies[0], bodies[1]);
}

/// A `503` carrying only a `Retry-After` header (as a proxy sends it): the
/// client sees the hint, and retries.
#[tokio::test]
async fn a_retry_after_header_is_read_when_the_body_has_no_hint() {
    let (url, seen) = fake_node(|m, p, n| match (m, p) {
        ("GET", "/state") => state_reply(),
        ("POST", "/transition") if n < 2 => Some((
            503,
            vec![("retry-after", "1".to_string())],
            "busy".to_string(),
        )),
        ("POST", "/transition") => accepted(),
        _ => refused(404, "not_found", None),
    })
    .await;
    let c = Client::new(&url);
    let p = proposal(&c).await;
    match c.submit(&p).await {
        Err(ClientError::Refused { status: 503, body }) => {
            assert_eq!(body.retry_after_ms, Some(1_000), "{body:?}")
        }
        other => panic!("{other:?}"),
    }
    let (_, retries) = c.submit_retrying(&p).await.unwrap();
    assert_eq!(retries, 1);
    assert_eq!(count(&seen, "POST", "/transition"), 3);
}

/// `build` re-reads HEAD through a busy `/state`, and a stale hash makes
/// `propose` re-read HEAD and resubmit.
#[tokio::test]
async fn propose_retries_a_busy_head_read_and_resubmits_after_a_stale_hash() {
    let (url, seen) = fake_node(|m, p, n| match (m, p) {
        ("GET", "/state") if n == 0 => refused(503, "unavailable", Some(1)),
        ("GET", "/state") => state_reply(),
        ("POST", "/transition") if n < 2 => refused(409, "stale_hash", None),
        ("POST", "/transition") => accepted(),
        _ => refused(404, "not_found", None),
    })
    .await;
    let c = Client::new(&url);
    let key = SigningKey::from_bytes(&[7; 32]);
    let inputs = serde_json::json!({});
    let req = propose_request(&key, &inputs);
    let done = c.propose(&req, RetryPolicy::default()).await.unwrap();
    assert_eq!(done.stale_retries, 2);
    assert_eq!(count(&seen, "GET", "/state"), 4);
    assert_eq!(count(&seen, "POST", "/transition"), 3);
}

/// A HEAD that never stops moving ends the rounds with a message saying so.
#[tokio::test]
async fn a_head_that_keeps_moving_is_reported_after_the_last_round() {
    let (url, seen) = fake_node(|m, p, _| match (m, p) {
        ("GET", "/state") => state_reply(),
        ("POST", "/transition") => refused(409, "stale_hash", None),
        _ => refused(404, "not_found", None),
    })
    .await;
    let c = Client::new(&url);
    let key = SigningKey::from_bytes(&[7; 32]);
    let inputs = serde_json::json!({});
    let req = propose_request(&key, &inputs);
    let f = c
        .propose_keeping_last(&req, RetryPolicy::default())
        .await
        .unwrap_err();
    let attempts = STALE_RETRIES_MAX as usize + 1;
    let text = f.error.to_string();
    assert!(
        text.contains(&format!("HEAD kept moving after {attempts} attempts")),
        "{text}"
    );
    assert!(text.contains("another writer"), "{text}");
    assert!(f.last.is_some());
    assert_eq!(count(&seen, "POST", "/transition"), attempts);
}

/// `409 hlc_order` for an HLC that follows the project's last one, twice in
/// a row for a proposal refused as soon as it was built, is the lag bound:
/// this client's clock runs behind the leader's. The SDK says so after the
/// second such round; it used to rebuild from the same clock eight more
/// times and blame "another writer". A proposal that only aged in busy
/// retries is rebuilt, as before.
#[tokio::test]
async fn a_client_clock_behind_the_leaders_is_named_after_two_fresh_refusals() {
    let (url, seen) = fake_node(|m, p, _| match (m, p) {
        ("GET", "/state") => state_reply(),
        ("POST", "/transition") => refused(409, "hlc_order", None),
        _ => refused(404, "not_found", None),
    })
    .await;
    let f = propose_fails(&url, RetryPolicy::default()).await;
    let text = f.error.to_string();
    assert!(text.contains("runs behind the leader's"), "{text}");
    assert!(!text.contains("another writer"), "{text}");
    assert_eq!(count(&seen, "POST", "/transition"), 2);

    // Aged by a busy retry past FRESH_PROPOSAL_MS, then refused as behind:
    // rebuilt, and the fresh one is accepted.
    let (url, seen) = fake_node(|m, p, n| match (m, p) {
        ("GET", "/state") => state_reply(),
        ("POST", "/transition") if n == 0 => refused(503, "unavailable", Some(400)),
        ("POST", "/transition") if n == 1 => refused(409, "hlc_order", None),
        ("POST", "/transition") => accepted(),
        _ => refused(404, "not_found", None),
    })
    .await;
    let c = Client::new(&url);
    let key = SigningKey::from_bytes(&[7; 32]);
    let inputs = serde_json::json!({});
    let done = c
        .propose(&propose_request(&key, &inputs), RetryPolicy::default())
        .await
        .unwrap();
    assert_eq!(done.stale_retries, 1);
    assert_eq!(count(&seen, "POST", "/transition"), 3);
}

/// A round refused as stale, then a HEAD read the node cannot answer: the
/// read's `503 unavailable` says nothing about the refused proposal, whose
/// outcome is settled (`unknown` false), though the error itself is the
/// kind a submission would call unknown.
#[tokio::test]
async fn a_failed_head_read_after_a_stale_round_leaves_the_last_proposal_settled() {
    let (url, _seen) = fake_node(|m, p, n| match (m, p) {
        ("GET", "/state") if n == 0 => state_reply(),
        ("GET", "/state") => refused(503, "unavailable", None),
        ("POST", "/transition") => refused(409, "stale_hash", None),
        _ => refused(404, "not_found", None),
    })
    .await;
    let f = propose_fails(&url, RetryPolicy::default()).await;
    assert_eq!(f.error.status(), Some(503), "{}", f.error);
    assert!(f.last.is_some(), "the stale round's proposal is kept");
    assert!(!f.unknown, "a refused proposal is settled: {}", f.error);
}

/// A proposal whose connection is dropped after it was sent has an unknown
/// outcome; the error says so and names the cause.
#[tokio::test]
async fn a_connection_lost_after_sending_leaves_the_outcome_unknown() {
    let (url, seen) = fake_node(|m, p, _| match (m, p) {
        ("GET", "/state") => state_reply(),
        ("POST", "/transition") => None,
        _ => refused(404, "not_found", None),
    })
    .await;
    let c = Client::new(&url);
    let p = proposal(&c).await;
    let e = c.submit_retrying(&p).await.unwrap_err();
    assert!(e.outcome_unknown(), "{e}");
    assert!(e.to_string().contains("UNKNOWN"), "{e}");
    assert_eq!(
        count(&seen, "POST", "/transition"),
        1 + swoosh_net::client::CONNECT_RETRIES_MAX as usize
    );
}

/// A closed port: the error carries the cause under reqwest's top line,
/// and a proposal sent there never left, so its outcome is known.
#[tokio::test]
async fn a_refused_connection_names_its_cause() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = Client::new(&format!("127.0.0.1:{port}"));
    let e = c.health().await.unwrap_err();
    let text = e.to_string();
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(text.starts_with("cannot reach"), "{text}");
    let (url, _) = fake_node(|_, _, _| state_reply()).await;
    let p = proposal(&Client::new(&url)).await;
    let e = c.submit_retrying(&p).await.unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
    assert!(!e.outcome_unknown(), "nothing was sent: {e}");
}

/// A `2xx` to a proposal that this client cannot read (a node of another
/// release, a proxy's page) says the proposal was applied in a shape it
/// does not know: the outcome is unknown, and `propose` says so and keeps
/// the proposal. Before, it was an "unexpected reply" taken as settled, and
/// a rerun signed a new key.
#[tokio::test]
async fn a_2xx_that_does_not_decode_leaves_the_outcome_unknown() {
    let (url, _) = fake_node(|m, p, _| match (m, p) {
        ("GET", "/state") => state_reply(),
        ("POST", "/transition") => Some((200, vec![], "<html>accepted</html>".into())),
        _ => refused(404, "not_found", None),
    })
    .await;
    let c = Client::new(&url);
    let p = proposal(&c).await;
    let e = c.submit_retrying(&p).await.unwrap_err();
    assert!(matches!(e, ClientError::Decode { .. }), "{e:?}");
    assert!(e.outcome_unknown(), "{e}");
    assert!(e.to_string().contains("UNKNOWN"), "{e}");
    let key = SigningKey::from_bytes(&[7; 32]);
    let inputs = serde_json::json!({});
    let f = c
        .propose(&propose_request(&key, &inputs), RetryPolicy::default())
        .await
        .unwrap_err();
    assert!(f.outcome_unknown() && f.last.is_some(), "{f:?}");
    // A read that does not decode sent no proposal.
    let e = c.health().await.unwrap_err();
    assert!(!e.outcome_unknown(), "{e}");
}

/// A reply over `RESPONSE_BYTES_MAX` is refused from its length, before
/// any of it is held; to a proposal, the outcome is unknown.
#[tokio::test]
async fn a_reply_over_the_limit_is_refused_unread() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let claimed = swoosh_net::client::RESPONSE_BYTES_MAX + 1;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 65536];
                let _ = sock.read(&mut buf).await;
                let head = format!("HTTP/1.1 202 Accepted\r\ncontent-length: {claimed}\r\n\r\n{{");
                let _ = sock.write_all(head.as_bytes()).await;
                // Held open: a client reading the whole claim would wait
                // out its request limit; one refusing it returns now.
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    let c = Client::new(&url);
    let p = proposal(&Client::new(&fake_node(|_, _, _| state_reply()).await.0)).await;
    let e = c.submit(&p).await.unwrap_err();
    assert!(matches!(e, ClientError::Decode { .. }), "{e:?}");
    assert!(e.to_string().contains("over this client's limit"), "{e}");
    assert!(e.outcome_unknown(), "{e}");
    let e = c.health().await.unwrap_err();
    assert!(e.to_string().contains("over this client's limit"), "{e}");
    assert!(!e.outcome_unknown(), "{e}");
}

/// `https://` is refused up front (this client has no TLS: every attempt
/// failed as a connect error naming neither cause), and a URL that cannot
/// be built into a request sends nothing and doubts no outcome.
#[tokio::test]
async fn https_and_unbuildable_urls_are_refused_without_a_request() {
    let Err(e) = Client::try_new("https://node.example:7700") else {
        panic!("https was taken");
    };
    assert!(e.to_string().contains("https is not supported"), "{e}");
    let c = Client::new("http://[::1");
    let (url, _) = fake_node(|_, _, _| state_reply()).await;
    let p = proposal(&Client::new(&url)).await;
    let e = c.submit_retrying(&p).await.unwrap_err();
    assert!(matches!(e, ClientError::Usage(_)), "{e:?}");
    assert!(!e.outcome_unknown(), "{e}");
}

/// `propose` tells a proposal that was never sent from one that may have
/// been applied: a HEAD read answered `503 unavailable` is an unknown
/// outcome for the read's error, but nothing was proposed.
#[tokio::test]
async fn a_failed_head_read_is_no_unknown_proposal() {
    let (url, seen) = fake_node(|m, p, _| match (m, p) {
        ("GET", "/state") => refused(503, "unavailable", None),
        _ => refused(404, "not_found", None),
    })
    .await;
    let f = propose_fails(&url, RetryPolicy::default()).await;
    assert!(f.error.outcome_unknown(), "the read's error, alone: {f:?}");
    assert!(!f.outcome_unknown() && f.last.is_none(), "{f:?}");
    assert_eq!(count(&seen, "POST", "/transition"), 0);
}

/// `--to 127.0.0.1:port` reaches the node; a decision reference that is
/// not one is refused without a request, and the accepted forms all ask
/// for `/decisions/<hex>`.
#[tokio::test]
async fn schemeless_bases_work_and_bad_decision_refs_send_nothing() {
    let (url, seen) = fake_node(|m, p, _| match (m, p) {
        ("GET", "/health") => Some((200, vec![], "{\"status\":\"ok\"}".into())),
        ("GET", _) if p.starts_with("/decisions/") => Some((200, vec![], "{}".into())),
        _ => refused(404, "not_found", None),
    })
    .await;
    let c = Client::try_new(url.trim_start_matches("http://")).unwrap();
    assert_eq!(c.base(), url);
    let (status, _) = c.health_any().await.unwrap();
    assert_eq!(status, 200);
    for bad in ["../health", "blake3:abc", "bubble://dr/../../health"] {
        match c.decision(bad).await {
            Err(e @ ClientError::Usage(_)) => {
                assert!(e.to_string().contains(DECISION_REF_FORMS), "{e}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    assert_eq!(seen.lock().unwrap().len(), 1, "only /health was asked");
    let h = hex(0xab);
    for good in [
        h.clone(),
        format!("blake3:{h}"),
        format!("bubble://dr/{}", h.to_uppercase()),
    ] {
        c.decision(&good).await.unwrap();
    }
    let log = seen.lock().unwrap();
    assert!(
        log[1..]
            .iter()
            .all(|(_, p, _)| *p == format!("/decisions/{h}")),
        "{log:?}"
    );
}

fn propose_request<'a>(
    key: &'a SigningKey,
    inputs: &'a serde_json::Value,
) -> ProposeRequest<'a, serde_json::Value> {
    ProposeRequest {
        project: "default",
        transition: "Boot_ConfigOk",
        inputs,
        key,
        idem_key: "k".into(),
        evidence: vec![],
    }
}

/// A `503` of a node that gave up or is shutting down (no retry hint) ends
/// the retries at once, with the node's words and what to do; before,
/// `BUSY_RETRIES_MAX` backoffs were spent on it.
#[tokio::test]
async fn a_503_of_a_node_that_stopped_for_good_is_not_retried() {
    for code in [ERROR_GAVE_UP, ERROR_SHUTTING_DOWN, "unavailable"] {
        let (url, seen) = fake_node(move |m, p, _| match (m, p) {
            ("GET", "/state") => state_reply(),
            ("POST", "/transition") => refused(503, code, None),
            _ => refused(404, "not_found", None),
        })
        .await;
        let c = Client::new(&url);
        let p = proposal(&c).await;
        let e = c.submit_retrying(&p).await.unwrap_err();
        assert_eq!(count(&seen, "POST", "/transition"), 1, "{code}: {e}");
        assert_eq!(e.status(), Some(503));
        let text = e.to_string();
        assert!(text.contains(&format!("fake {code}")), "{text}");
        assert!(text.contains("not retried"), "{text}");
        assert!(text.contains("swoosh health"), "{text}");
        // Refused before admission; `unavailable` says nothing of it.
        assert_eq!(e.outcome_unknown(), code == "unavailable", "{code}");
    }
}

/// The first attempt is sent and its connection dropped; the resubmission
/// meets a node that gave up. The proposal may have been applied by the
/// first: the error says UNKNOWN, and `propose` keeps the proposal to
/// resubmit.
#[tokio::test]
async fn an_unknown_attempt_then_a_node_that_gave_up_is_unknown() {
    let (url, seen) = fake_node(|m, p, n| match (m, p) {
        ("GET", "/state") => state_reply(),
        ("POST", "/transition") if n == 0 => None,
        ("POST", "/transition") => refused(503, ERROR_GAVE_UP, None),
        _ => refused(404, "not_found", None),
    })
    .await;
    let f = propose_fails(&url, RetryPolicy::default()).await;
    assert_eq!(count(&seen, "POST", "/transition"), 2);
    assert!(f.error.outcome_unknown(), "{}", f.error);
    let text = f.error.to_string();
    assert!(text.contains("fake gave_up"), "{text}");
    assert!(text.contains("UNKNOWN"), "{text}");
    assert_eq!(
        f.error.body().map(|b| b.error.as_str()),
        Some(ERROR_GAVE_UP)
    );
    assert!(f.last.is_some());
}

/// A node URL with a path: the path is put before every endpoint (as for a
/// reverse proxy), and the 404 a node answers says so and names the
/// accepted form, for `/health` as for every other read.
#[tokio::test]
async fn a_base_url_with_a_path_is_named_in_the_404() {
    let (url, seen) = fake_node(|m, p, _| match (m, p) {
        ("GET", "/health") => Some((200, vec![], "{\"status\":\"ok\"}".into())),
        ("GET", "/state") => state_reply(),
        _ => refused(404, "not_found", None),
    })
    .await;
    let c = Client::try_new(&format!("{url}/some/path/")).unwrap();
    let e = c.health_any().await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
    let text = e.to_string();
    assert!(text.contains("fake not_found"), "{text}");
    assert!(text.contains("ends in the path /some/path"), "{text}");
    assert!(text.contains(URL_FORM), "{text}");
    let e = c.state("default", &[]).await.unwrap_err();
    assert!(e.to_string().contains("ends in the path /some/path"), "{e}");
    assert_eq!(count(&seen, "GET", "/some/path/health"), 1);
    // Without the path both answer.
    let c = Client::try_new(&url).unwrap();
    assert_eq!(c.health_any().await.unwrap().0, 200);
    c.state("default", &[]).await.unwrap();
}

/// A real node on a loopback port (its HTTP served until the test ends).
async fn real_node(label: &str) -> (String, NodeHandle<LmdbStore>, Keys, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = LmdbStore::open(
        dir.path(),
        &LmdbOptions {
            durability: Durability::Sync,
            ..Default::default()
        },
    )
    .unwrap();
    let keys = Keys::from_labels(label, 3);
    let cfg = NodeConfig {
        genesis: genesis(&keys, label, now_ms() / 1000 * 1000),
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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (app, _) = swoosh_net::http::router(node.clone());
    tokio::spawn(swoosh_net::http::serve_router(
        listener,
        app,
        std::future::pending(),
        Default::default(),
    ));
    (url, node, keys, dir)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn first_proposal(node: &NodeHandle<LmdbStore>, keys: &Keys) -> swoosh_core::Proposal {
    let mirror = NodeState::new(node.genesis().clone()).unwrap();
    match Driver::new(keys, 3).next(&mirror, "default", now_ms()) {
        Next::Propose(p) => *p,
        other => panic!("the driver has no first step: {other:?}"),
    }
}

/// What a raw request got: status, `Retry-After`, body.
async fn raw(req: reqwest::RequestBuilder) -> (u16, Option<String>, swoosh_net::api::ErrorBody) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry_after, r.json().await.unwrap())
}

/// A node shutting down answers proposals and reads `503 shutting_down`,
/// without a retry hint in the body or the headers; the SDK returns it
/// from the first attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shutting_down_says_so_without_a_retry_hint() {
    let (url, node, keys, _dir) = real_node("sdk-stopping").await;
    let p = first_proposal(&node, &keys);
    node.shutdown().await;
    let http = reqwest::Client::new();
    for req in [
        http.post(format!("{url}/transition")).json(&p),
        http.get(format!("{url}/state")),
        http.get(format!("{url}/attention")),
    ] {
        let (status, retry_after, body) = raw(req).await;
        assert_eq!(
            (status, body.error.as_str()),
            (503, ERROR_SHUTTING_DOWN),
            "{body:?}"
        );
        assert_eq!((retry_after, body.retry_after_ms), (None, None), "{body:?}");
        assert!(
            body.message.contains("process is started again"),
            "{body:?}"
        );
    }
    let c = Client::new(&url);
    let e = c.submit_retrying(&p).await.unwrap_err();
    assert_eq!(
        e.body().map(|b| b.error.as_str()),
        Some(ERROR_SHUTTING_DOWN),
        "{e}"
    );
    assert!(!e.outcome_unknown(), "{e}");
    assert!(e.to_string().contains("refused before admission"), "{e}");
}

/// A node that gave up restarting its actors answers proposals `503
/// gave_up`, with its reason and no retry hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_gave_up_says_so_without_a_retry_hint() {
    let (url, node, keys, _dir) = real_node("sdk-gave-up").await;
    let p = first_proposal(&node, &keys);
    // Recovery refuses the store at every attempt.
    node.store()
        .clone()
        .overwrite_raw(Space::Meta, b"format", b"not-a-swoosh-store")
        .unwrap();
    node.kill(ActorKind::Sequencer);
    // Giving up takes about seven seconds of backoff; the bound only turns
    // a regression into a failure instead of a hang.
    tokio::time::timeout(Duration::from_secs(60), node.given_up())
        .await
        .expect("the node gives up");
    let (status, retry_after, body) = raw(reqwest::Client::new()
        .post(format!("{url}/transition"))
        .json(&p))
    .await;
    assert_eq!(
        (status, body.error.as_str()),
        (503, ERROR_GAVE_UP),
        "{body:?}"
    );
    assert_eq!((retry_after, body.retry_after_ms), (None, None), "{body:?}");
    assert!(
        body.message.contains("gave up restarting its sequencer"),
        "{body:?}"
    );
    let e = Client::new(&url).submit_retrying(&p).await.unwrap_err();
    assert_eq!(
        e.body().map(|b| b.error.as_str()),
        Some(ERROR_GAVE_UP),
        "{e}"
    );
    assert!(!e.outcome_unknown(), "{e}");
}

fn with_deadline(ms: u64) -> RetryPolicy {
    RetryPolicy {
        deadline: Some(Duration::from_millis(ms)),
        ..RetryPolicy::default()
    }
}

/// A deadline ends the retries when the next wait would pass it. The
/// proposal was answered `503 unavailable` (no durable outcome in time), so
/// its outcome is unknown, and it is returned to resubmit.
#[tokio::test]
async fn a_deadline_ends_the_retries_and_keeps_an_unknown_proposal() {
    let (url, seen) = fake_node(|m, p, _| match (m, p) {
        ("GET", "/state") => state_reply(),
        ("POST", "/transition") => refused(503, "unavailable", Some(5_000)),
        _ => refused(404, "not_found", None),
    })
    .await;
    let f = propose_fails(&url, with_deadline(300)).await;
    assert!(
        matches!(
            f.error,
            ClientError::Deadline {
                deadline_ms: 300,
                ..
            }
        ),
        "{f:?}"
    );
    assert!(f.outcome_unknown() && f.error.outcome_unknown(), "{f:?}");
    assert!(f.last.is_some());
    assert!(f.error.to_string().contains("UNKNOWN"), "{}", f.error);
    assert_eq!(count(&seen, "POST", "/transition"), 1, "no second attempt");
}

/// A deadline that ends while HEAD is still being read sent nothing.
#[tokio::test]
async fn a_deadline_reading_head_leaves_nothing_unknown() {
    let (url, seen) = fake_node(|m, p, _| match (m, p) {
        ("GET", "/state") => refused(429, "busy", Some(5_000)),
        _ => refused(404, "not_found", None),
    })
    .await;
    let f = propose_fails(&url, with_deadline(300)).await;
    assert!(matches!(f.error, ClientError::Deadline { .. }), "{f:?}");
    assert!(!f.outcome_unknown() && !f.error.outcome_unknown(), "{f:?}");
    assert!(f.last.is_none());
    assert_eq!(count(&seen, "POST", "/transition"), 0);
}

/// A node that takes the proposal and never answers: the deadline cuts the
/// attempt short, and the proposal may have been applied.
#[tokio::test]
async fn a_deadline_during_an_unanswered_attempt_is_unknown() {
    let (state_url, _) = fake_node(|_, _, _| state_reply()).await;
    let p = proposal(&Client::new(&state_url)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 65536];
                let _ = sock.read(&mut buf).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    let e = Client::new(&url)
        .submit_retrying_within(&p, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Deadline { .. }), "{e:?}");
    assert!(e.outcome_unknown(), "{e}");
    assert!(e.to_string().contains("still waiting for its reply"), "{e}");
}

/// `propose` against the node at `url` with `policy`, which must fail.
async fn propose_fails(url: &str, policy: RetryPolicy) -> swoosh_net::client::ProposeFailure {
    let key = SigningKey::from_bytes(&[7; 32]);
    let inputs = serde_json::json!({});
    Client::new(url)
        .propose(&propose_request(&key, &inputs), policy)
        .await
        .unwrap_err()
}
