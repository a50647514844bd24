//! The HTTP API's limits and error contract over real loopback HTTP: slow
//! and stuck clients are bounded (body and header read timeouts, the
//! connection cap, the shutdown deadline), every non-2xx reply is JSON, the
//! OpenAPI document says what the server does, and the SDK encodes its
//! queries and does not retry a follower's permanent `not_leader`.
//!
//! Timeouts here are shrunk through `ServeLimits`; `PATIENCE` only turns a
//! hang into a failure, it is not a performance bound.

use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use swoosh_actors::{NodeConfig, NodeHandle, SystemClock};
use swoosh_core::scenario::{genesis, Driver, Keys, Next};
use swoosh_core::state::{Genesis, NodeState};
use swoosh_core::{Proposal, ProposalBuilder};
use swoosh_net::api::{ErrorBody, PROJECTION_SECTIONS_MAX};
use swoosh_net::client::{Client, ClientError};
use swoosh_net::http::{serve_with, ServeLimits};
use swoosh_storage::{Durability, LmdbOptions, LmdbStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long enough for any honest step on a loaded 2-core machine; reaching it
/// means the server hung.
const PATIENCE: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(200);
const LONG: Duration = Duration::from_secs(3_600);

struct Server {
    url: String,
    addr: std::net::SocketAddr,
    node: NodeHandle<LmdbStore>,
    keys: Keys,
    genesis: Genesis,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn start(limits: ServeLimits) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = LmdbStore::open(
        dir.path(),
        &LmdbOptions {
            durability: Durability::Sync,
            ..Default::default()
        },
    )
    .expect("open store");
    let keys = Keys::from_labels("hardening", 3);
    let g = genesis(&keys, "hardening", now_ms() / 1000 * 1000);
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
    let node = NodeHandle::start(store, cfg).await.expect("node starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_with(
        listener,
        node.clone(),
        async {
            let _ = rx.await;
        },
        limits,
    ));
    Server {
        url: format!("http://{addr}"),
        addr,
        node,
        keys,
        genesis: g,
        stop: Some(tx),
        task,
        _dir: dir,
    }
}

impl Server {
    fn first_proposal(&self) -> Proposal {
        let mirror = NodeState::new(self.genesis.clone()).expect("genesis state");
        match Driver::new(&self.keys, 3).next(&mirror, "default", now_ms()) {
            Next::Propose(p) => *p,
            other => panic!("the driver has no first step: {other:?}"),
        }
    }

    /// Signal shutdown and wait for `serve_with` to return.
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the server finished its shutdown")
            .expect("the server task did not panic")
            .expect("serve returned Ok");
    }
}

/// One HTTP/1.1 response read off a raw stream: status, head, body.
/// `carry` holds bytes read past the previous response on this stream (a
/// `100 Continue` and the response after it can arrive in one read when the
/// test thread is descheduled) and receives the bytes read past this one.
async fn read_response(s: &mut TcpStream, carry: &mut Vec<u8>) -> (u16, String, Vec<u8>) {
    let mut buf = std::mem::take(carry);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status = head[9..12].parse().expect("a status code");
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.expect("read the body");
                assert!(n > 0, "closed in the middle of the body: {head}");
                buf.extend_from_slice(&chunk[..n]);
            }
            *carry = buf[end + 4 + len..].to_vec();
            return (status, head, buf[end + 4..end + 4 + len].to_vec());
        }
        let n = s.read(&mut chunk).await.expect("read the head");
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn error_body(head: &str, body: &[u8]) -> ErrorBody {
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "not JSON: {head}"
    );
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not an error body ({e}): {}", String::from_utf8_lossy(body)))
}

/// A `POST /transition` that promises 100 bytes and sends one.
async fn stall_in_body(s: &mut TcpStream, carry: &mut Vec<u8>) {
    s.write_all(
        b"POST /transition HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 100\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // hyper answers 100 Continue when the handler starts reading the body:
    // from here on the request is in the handler, not in a queue.
    let (status, head, _) = read_response(s, carry).await;
    assert_eq!(status, 100, "{head}");
    // The server may already have timed the body out and closed: what
    // matters is the response it sent, read next.
    let _ = s.write_all(b"{").await;
}

/// A chunked body (no Content-Length to refuse up front) over the limit is
/// `413 too_large`; a broken chunked encoding is `400 body_unreadable`
/// (not 413, and not `malformed`, which answers for the proposal's bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_is_413_and_a_broken_one_400() {
    let srv = start(ServeLimits::default()).await;
    let head = b"POST /transition HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                 transfer-encoding: chunked\r\n\r\n";
    let big = swoosh_net::api::BODY_BYTES_MAX + 1;
    let mut over = head.to_vec();
    over.extend_from_slice(format!("{big:x}\r\n").as_bytes());
    over.extend(std::iter::repeat_n(b' ', big));
    over.extend_from_slice(b"\r\n0\r\n\r\n");
    let mut broken = head.to_vec();
    broken.extend_from_slice(b"zz\r\n{}\r\n0\r\n\r\n");
    for (request, want) in [
        (over, (413, "too_large")),
        (broken, (400, "body_unreadable")),
    ] {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let (status, head, body) = tokio::time::timeout(PATIENCE, async {
            // The server may answer and close before it has read it all.
            let _ = s.write_all(&request).await;
            read_response(&mut s, &mut vec![]).await
        })
        .await
        .expect("a reply");
        let b = error_body(&head, &body);
        assert_eq!((status, b.error.as_str()), want, "{b:?}");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_body_gets_408_json_after_the_body_read_timeout() {
    let srv = start(ServeLimits {
        body_read: SHORT,
        ..Default::default()
    })
    .await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let (status, head, body) = tokio::time::timeout(PATIENCE, async {
        let mut carry = vec![];
        stall_in_body(&mut s, &mut carry).await;
        read_response(&mut s, &mut carry).await
    })
    .await
    .expect("a reply to the stalled body");
    assert_eq!(status, 408, "{head}");
    let b = error_body(&head, &body);
    assert_eq!(b.error, "timeout", "{b:?}");
    assert!(b.message.contains("200 ms"), "{b:?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_head_is_closed_after_the_header_read_timeout() {
    let srv = start(ServeLimits {
        header_read: SHORT,
        ..Default::default()
    })
    .await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut rest = vec![];
    let closed = tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the connection is still open with half a request head"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_and_stops_the_node_despite_a_stuck_client() {
    // The read timeouts would never fire here: only the grace deadline can
    // end the stuck request.
    let srv = start(ServeLimits {
        header_read: LONG,
        body_read: LONG,
        shutdown_grace: SHORT,
        ..Default::default()
    })
    .await;
    let node = srv.node.clone();
    let mut stuck = TcpStream::connect(srv.addr).await.unwrap();
    tokio::time::timeout(PATIENCE, stall_in_body(&mut stuck, &mut vec![]))
        .await
        .expect("the handler reads the body");
    srv.stop().await;
    // `serve_with` returned: the node was stopped (WAL flushed) after it.
    assert_eq!(node.health().status, "stopping");
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_cap_gets_503_json_and_the_slot_frees() {
    let srv = start(ServeLimits {
        connections_max: 1,
        ..Default::default()
    })
    .await;
    // Hold the only slot with a kept-alive connection that has been served.
    let mut holder = TcpStream::connect(srv.addr).await.unwrap();
    holder
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _, _) = tokio::time::timeout(PATIENCE, read_response(&mut holder, &mut vec![]))
        .await
        .unwrap();
    assert_eq!(status, 200);

    let mut over = TcpStream::connect(srv.addr).await.unwrap();
    over.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, head, body) =
        tokio::time::timeout(PATIENCE, read_response(&mut over, &mut vec![]))
            .await
            .unwrap();
    assert_eq!(status, 503, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    let b = error_body(&head, &body);
    assert_eq!(b.error, "unavailable");
    assert!(b.message.contains("1 connections"), "{b:?}");

    drop(holder);
    let c = Client::new(&srv.url);
    let freed = tokio::time::timeout(PATIENCE, async {
        loop {
            if c.health().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "the slot was not released after the close");
    srv.stop().await;
}

/// A client that pipelines requests and never reads the responses holds
/// its connection only until the server's writes have stalled for
/// `write_stall`; then the slot is free again. Before, it held the slot
/// (here the only one) for as long as the socket lived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_connection_after_the_write_stall() {
    let srv = start(ServeLimits {
        connections_max: 1,
        header_read: LONG,
        write_stall: SHORT,
        ..Default::default()
    })
    .await;
    // Far more response bytes than the socket buffers of both ends hold
    // (each /openapi.json is kilobytes); written from a task, as the
    // server stops reading requests once its writes block.
    let mut hog = TcpStream::connect(srv.addr).await.unwrap();
    let requests = b"GET /openapi.json HTTP/1.1\r\nhost: x\r\n\r\n".repeat(20_000);
    let (_read_half, mut write_half) = hog.split();
    let wrote = tokio::time::timeout(PATIENCE, async {
        // Ends with an error once the server drops the connection.
        let _ = write_half.write_all(&requests).await;
    });
    let c = Client::new(&srv.url);
    let (_, freed) = tokio::join!(
        wrote,
        tokio::time::timeout(PATIENCE, async {
            loop {
                if c.health().await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    );
    assert!(
        freed.is_ok(),
        "a client that reads nothing still holds the only connection slot"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_proposal_fields_are_optional_not_nullable() {
    let srv = start(ServeLimits::default()).await;
    let c = Client::new(&srv.url);
    let doc = c.openapi().await.unwrap();
    let schema = &doc["components"]["schemas"]["ProposalSchema"];
    let mut required: Vec<&str> = schema["required"]
        .as_array()
        .expect("required")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort_unstable();
    assert_eq!(
        required,
        [
            "current_state_hash",
            "hlc",
            "idem_key",
            "inputs_hash",
            "signature",
            "signer",
            "transition"
        ]
    );
    for (name, prop) in schema["properties"].as_object().expect("properties") {
        let text = prop.to_string();
        assert!(
            !text.contains("null") && prop.get("nullable").is_none(),
            "{name} is documented as nullable: {text}"
        );
    }

    // What a generator reading the document sends: optional fields left
    // out when they hold their defaults. It is accepted as is. (The
    // driver's proposal carries a window and evidence; the same step
    // without them is still valid.)
    let p = srv.first_proposal();
    assert_eq!(p.project, "default");
    let bare = ProposalBuilder::new(
        "default",
        &p.transition,
        p.current_state_hash,
        p.hlc,
        "omitted-optional-fields",
    )
    .inputs(&p.inputs)
    .unwrap()
    .sign(&srv.keys.admin)
    .unwrap();
    assert_eq!(bare.signer, p.signer, "the first step is the admin's");
    let mut v: Value = serde_json::to_value(&bare).unwrap();
    let o = v.as_object_mut().unwrap();
    for field in ["project", "window_id", "evidence"] {
        assert!(o.remove(field).is_some(), "{field}");
    }
    let ok = c.submit_raw(serde_json::to_vec(&v).unwrap()).await;
    assert!(ok.is_ok(), "project, window_id, evidence omitted: {ok:?}");
    // And null is refused, as the document (not nullable) says.
    let mut v: Value = serde_json::to_value(&p).unwrap();
    v["window_id"] = Value::Null;
    match c.submit_raw(serde_json::to_vec(&v).unwrap()).await {
        Err(ClientError::Refused { status: 400, body }) => {
            assert_eq!(body.field.as_deref(), Some("window_id"), "{body:?}")
        }
        other => panic!("null window_id: {other:?}"),
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_encodes_query_values() {
    let srv = start(ServeLimits::default()).await;
    let c = Client::new(&srv.url);
    // Unencoded, `#oops` became a fragment and this read project p1.
    match c.state("p1#oops", &[]).await {
        Err(ClientError::Refused { status: 400, body }) => {
            assert_eq!(body.field.as_deref(), Some("project"), "{body:?}")
        }
        other => panic!("p1#oops: {other:?}"),
    }
    match c.state("p1&project=p2", &[]).await {
        Err(ClientError::Refused { status: 400, body }) => {
            assert_eq!(body.field.as_deref(), Some("project"), "{body:?}")
        }
        other => panic!("p1&project=p2: {other:?}"),
    }
    match c.attention(Some("watch#x")).await {
        Err(ClientError::Refused { status: 400, body }) => {
            assert_eq!(body.field.as_deref(), Some("min_band"), "{body:?}")
        }
        other => panic!("watch#x: {other:?}"),
    }
    // Ordinary values still work.
    let st = c.state("p1", &["Project", "Council"]).await.unwrap();
    assert_eq!(st.project, "p1");
    c.attention(Some("watch")).await.unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_returns_a_followers_not_leader_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    // A follower's reply in the shape `p2p::http::not_leader` sends (the
    // SDK reads only `error` and `leader`).
    let leader = "http://10.1.2.3:7700";
    let body = json!({
        "error": "not_leader",
        "message": format!("this node is a read-only follower; send proposals to the leader at {leader}"),
        "leader": leader,
    })
    .to_string();
    let fake = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let body = body.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![];
                let mut chunk = [0u8; 4096];
                // Read the head and the body it announces, then answer.
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                counted.fetch_add(1, Ordering::AcqRel);
                let reply = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    let srv_keys = Keys::from_labels("hardening", 3);
    let g = genesis(&srv_keys, "hardening", now_ms() / 1000 * 1000);
    let p = match Driver::new(&srv_keys, 3).next(&NodeState::new(g).unwrap(), "default", now_ms()) {
        Next::Propose(p) => *p,
        other => panic!("{other:?}"),
    };
    let c = Client::new(&url);
    let r = tokio::time::timeout(PATIENCE, c.submit_retrying(&p))
        .await
        .expect("the SDK gave up on the follower");
    match r {
        Err(e @ ClientError::NotLeader { .. }) => {
            assert!(e.to_string().contains(leader), "{e}");
            assert_eq!(e.status(), Some(503));
            assert_eq!(e.body().map(|b| b.error.as_str()), Some("not_leader"));
        }
        other => panic!("expected NotLeader, got {other:?}"),
    }
    assert_eq!(requests.load(Ordering::Acquire), 1, "the SDK retried");
    fake.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_projection_sections_is_a_400_naming_projection() {
    let srv = start(ServeLimits::default()).await;
    let http = reqwest::Client::new();
    let get = |projection: String| {
        let http = http.clone();
        let url = format!("{}/state", srv.url);
        async move {
            let r = http
                .get(url)
                .query(&[("projection", projection)])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap())
        }
    };
    // Every region, once each: exactly the limit.
    let all = "Project,Boot,Ingestion,Council,Environment,Execution,Control,Policy";
    assert_eq!(all.split(',').count(), PROJECTION_SECTIONS_MAX);
    assert_eq!(get(all.into()).await.0, 200);
    // One more name (here an alias of Project) used to be dropped silently,
    // as were any past it.
    for over in [format!("{all},meta"), format!("{all},meta,Nonsense,Boot")] {
        let (status, body) = get(over.clone()).await;
        assert_eq!(status, 400, "{over}");
        let b: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(b.field.as_deref(), Some("projection"), "{b:?}");
        assert!(
            b.message.contains(&PROJECTION_SECTIONS_MAX.to_string()),
            "{b:?}"
        );
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_non_2xx_reply_is_json() {
    let srv = start(ServeLimits::default()).await;
    let http = reqwest::Client::new();
    for (method, path, status, error, field) in [
        (
            "GET",
            "/state?project=a&project=b",
            400,
            "malformed",
            Some("project"),
        ),
        (
            "GET",
            "/attention?min_band=1&min_band=2",
            400,
            "malformed",
            Some("min_band"),
        ),
        ("GET", "/decisions/%FF", 400, "malformed", Some("hash")),
        ("DELETE", "/transition", 405, "method_not_allowed", None),
        ("POST", "/state", 405, "method_not_allowed", None),
        ("PUT", "/openapi.json", 405, "method_not_allowed", None),
        ("GET", "/no-such-endpoint", 404, "not_found", None),
    ] {
        let r = http
            .request(method.parse().unwrap(), format!("{}{path}", srv.url))
            .send()
            .await
            .unwrap();
        let got = r.status().as_u16();
        let ctype = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let allow = r.headers().get("allow").cloned();
        let bytes = r.bytes().await.unwrap();
        let what = format!(
            "{method} {path}: {got} {ctype:?} {}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(got, status, "{what}");
        assert_eq!(ctype.as_deref(), Some("application/json"), "{what}");
        let b: ErrorBody = serde_json::from_slice(&bytes).expect(&what);
        assert_eq!(b.error, error, "{what}");
        assert_eq!(b.field.as_deref(), field, "{what}");
        assert!(!b.message.is_empty(), "{what}");
        if status == 405 {
            assert!(allow.is_some(), "{what}: no Allow header");
        }
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_status_the_server_sends() {
    let srv = start(ServeLimits::default()).await;
    let doc = Client::new(&srv.url).openapi().await.unwrap();
    let responses = |path: &str, method: &str| doc["paths"][path][method]["responses"].clone();
    let health = responses("/health", "get");
    for status in ["200", "503"] {
        assert_eq!(
            health[status]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/HealthReply",
            "/health {status}: {health}"
        );
    }
    let decisions = responses("/decisions/{hash}", "get");
    assert!(
        decisions["500"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("storage")),
        "{decisions}"
    );
    assert!(responses("/transition", "post")["408"].is_object());
    let classes = doc["components"]["schemas"]["ErrorBody"]["properties"]["error"]["description"]
        .as_str()
        .expect("the error classes are described")
        .to_string();
    for class in [
        "storage",
        "timeout",
        "not_leader",
        "method_not_allowed",
        "not_found",
    ] {
        assert!(
            classes.contains(&format!("`{class}`")),
            "{class} missing: {classes}"
        );
    }
    srv.stop().await;
}

/// Query parameters are documented `in: query` (utoipa's default for
/// `IntoParams` is the path, which made the document invalid: `/state` has
/// no `{project}` segment, and generated clients built wrong URLs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_puts_query_parameters_in_the_query() {
    let srv = start(ServeLimits::default()).await;
    let doc = Client::new(&srv.url).openapi().await.unwrap();
    for (path, names) in [
        ("/state", &["project", "projection"][..]),
        ("/attention", &["min_band"][..]),
    ] {
        let params = doc["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{path} documents its parameters"));
        let mut seen: Vec<&str> = vec![];
        for p in params {
            let name = p["name"].as_str().expect("a named parameter");
            assert_eq!(p["in"], "query", "{path} {name}: {p}");
            assert_ne!(p["required"], true, "{path} {name} is optional: {p}");
            seen.push(name);
        }
        seen.sort_unstable();
        assert_eq!(seen, names, "{path}");
    }
    srv.stop().await;
}

/// The `decision` of a 202 is `bubble://dr/<hex>`; a client that pastes it
/// after `/decisions/` unencoded gets the record, as with the encoded form
/// and the bare hex.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_address_reads_back_raw_encoded_or_bare() {
    let srv = start(ServeLimits::default()).await;
    let c = Client::new(&srv.url);
    let ok = c.submit(&srv.first_proposal()).await.expect("accepted");
    assert!(ok.decision.starts_with("bubble://dr/"), "{}", ok.decision);
    let hex = ok.decision.trim_start_matches("bubble://dr/").to_string();
    let http = reqwest::Client::new();
    let mut bodies = vec![];
    for path in [
        format!("/decisions/{}", ok.decision),
        format!("/decisions/bubble%3A%2F%2Fdr%2F{hex}"),
        format!("/decisions/{hex}"),
        format!("/decisions/blake3:{hex}"),
    ] {
        let r = http.get(format!("{}{path}", srv.url)).send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    // Other methods on such a path are a JSON 405, as on `/decisions/{hash}`.
    let r = http
        .post(format!("{}/decisions/{}", srv.url, ok.decision))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let b: ErrorBody = r.json().await.expect("JSON 405");
    assert_eq!(b.error, "method_not_allowed");
    srv.stop().await;
}

/// A JSON array (serde's sequence form of a struct) is not a proposal, and
/// a body that is not JSON at all names no field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_must_be_a_json_object() {
    let srv = start(ServeLimits::default()).await;
    let c = Client::new(&srv.url);
    let p = srv.first_proposal();
    let v = serde_json::to_value(&p).unwrap();
    let fields: Vec<Value> = v.as_object().unwrap().values().cloned().collect();
    for (body, what) in [
        (
            serde_json::to_vec(&fields).unwrap(),
            "an array of the fields",
        ),
        (b"  \"a string\"".to_vec(), "a string"),
        (b"{\"project\": ".to_vec(), "truncated JSON"),
        (b"{not json}".to_vec(), "not JSON"),
    ] {
        match c.submit_raw(body).await {
            Err(ClientError::Refused { status: 400, body }) => {
                assert_eq!(body.error, "malformed", "{what}: {body:?}");
                assert_eq!(body.field, None, "{what}: {body:?}");
                assert!(
                    body.message.contains("JSON object") || body.message.contains("line"),
                    "{what}: {body:?}"
                );
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // The object form of the same proposal is accepted.
    let ok = c.submit_raw(serde_json::to_vec(&v).unwrap()).await;
    assert!(ok.is_ok(), "{ok:?}");
    srv.stop().await;
}

/// Every response object of an OpenAPI document: (path, method, status, it).
pub fn responses_of(doc: &serde_json::Value) -> Vec<(String, String, String, serde_json::Value)> {
    let mut out = vec![];
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            for (status, r) in op["responses"].as_object().into_iter().flatten() {
                out.push((path.clone(), method.clone(), status.clone(), r.clone()));
            }
        }
    }
    out
}

/// OpenAPI 3.1 requires a description on every response: without one
/// validators (and the code generators that validate first) refuse the
/// whole document. Retry-After is declared where the server sends it, the
/// decision's body has a schema, and the proposal's schema refuses unknown
/// fields as the server does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_responses_are_described_and_declare_what_is_sent() {
    let srv = start(ServeLimits::default()).await;
    let doc = Client::new(&srv.url).openapi().await.unwrap();
    for (path, method, status, r) in responses_of(&doc) {
        assert!(
            r["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{method} {path} {status} has no description: {r}"
        );
        if status == "429" || (status == "503" && path != "/health") {
            assert!(
                r["headers"]["Retry-After"].is_object(),
                "{method} {path} {status} does not declare Retry-After: {r}"
            );
        }
    }
    let dr = &doc["paths"]["/decisions/{hash}"]["get"]["responses"]["200"];
    assert!(
        dr["content"]["application/json"]["schema"].is_object(),
        "{dr}"
    );
    assert_eq!(
        doc["components"]["schemas"]["ProposalSchema"]["additionalProperties"],
        false
    );
    srv.stop().await;
}

/// One proposal per request: bytes after the object were ignored and the
/// proposal before them accepted (a second proposal appended was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_the_proposal_are_refused() {
    let srv = start(ServeLimits::default()).await;
    let p = serde_json::to_string(&srv.first_proposal()).unwrap();
    let http = reqwest::Client::new();
    for tail in ["}]} not json", " {\"another\": 1}", "x"] {
        let r = http
            .post(format!("{}/transition", srv.url))
            .header("content-type", "application/json")
            .body(format!("{p}{tail}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{tail:?}");
        let b: ErrorBody = r.json().await.unwrap();
        assert_eq!(b.error, "malformed", "{tail:?}");
        assert!(b.message.contains("more than one JSON value"), "{b:?}");
    }
    // Trailing whitespace is not a second value.
    let r = http
        .post(format!("{}/transition", srv.url))
        .body(format!("{p} \n"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    srv.stop().await;
}

/// A pasted `bubble://dr/<hex>` works percent-encoded too, by HEAD as by
/// GET, and another method is a 405 naming what is allowed (it was a 404,
/// and an encoded `bubble%3A` a 400). A long path is clipped in the 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pasted_decision_reference_is_decoded_and_methods_are_named() {
    let srv = start(ServeLimits::default()).await;
    let p = srv.first_proposal();
    let reply = Client::new(&srv.url).submit(&p).await.unwrap();
    let hex = reply
        .decision
        .strip_prefix("bubble://dr/")
        .unwrap()
        .to_string();
    let http = reqwest::Client::new();
    for path in [
        format!("/decisions/bubble://dr/{hex}"),
        format!("/decisions/bubble%3A//dr/{hex}"),
        format!("/decisions/bubble%3A%2F%2Fdr%2F{hex}"),
    ] {
        let r = http.get(format!("{}{path}", srv.url)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "GET {path}");
        let r = http
            .head(format!("{}{path}", srv.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "HEAD {path}");
    }
    let r = http
        .post(format!("{}/decisions/bubble://dr/{hex}", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "GET,HEAD");
    let long = "a".repeat(60_000);
    let r = http
        .post(format!("{}/decisions/{long}", srv.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let b: ErrorBody = r.json().await.unwrap();
    assert!(b.message.len() < 2_000, "{} bytes", b.message.len());
    srv.stop().await;
}
