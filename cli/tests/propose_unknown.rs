//! `swoosh propose` whose outcome is unknown (the node drops the connection
//! after the proposal was sent, maybe then stops for good): it names the
//! idempotency key and keeps the signed proposal in a file that resubmits
//! as the very same proposal. And node URLs the client commands refuse or
//! explain.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// A fake node: `GET /state` answers a HEAD, `POST /transition` is read,
/// recorded and dropped without a reply.
fn fake_node() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    fake_node_answering(|_| None)
}

/// [`fake_node`] answering POST number `n` (0-based) with `post(n)`: a
/// status and JSON body, or `None` to drop it. Other paths are `404`.
fn fake_node_answering(
    post: impl Fn(usize) -> Option<(u16, String)> + Send + 'static,
) -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let posted: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let log = posted.clone();
    std::thread::spawn(move || {
        for sock in l.incoming() {
            let Ok(mut sock) = sock else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match sock.read(&mut chunk) {
                    Ok(0) | Err(_) => break 0,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            if head_end == 0 {
                continue;
            }
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
                match sock.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let (status, body) = if head.starts_with("POST") {
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(buf[head_end..].to_vec());
                    log.len() - 1
                };
                match post(n) {
                    Some(answer) => answer,
                    None => continue, // dropped: no reply
                }
            } else if head.starts_with("GET /state") {
                let body = serde_json::json!({
                    "project": "default", "index": 0,
                    "hash": format!("blake3:{}", "11".repeat(32)), "projection": {}
                });
                (200, body.to_string())
            } else {
                let body = serde_json::json!({
                    "error": "not_found", "message": "no such endpoint; see GET /openapi.json"
                });
                (404, body.to_string())
            };
            let _ = write!(
                sock,
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, posted)
}

fn swoosh(args: &[&str], tmp: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_swoosh"))
        .args(args)
        .env("TMPDIR", tmp)
        .output()
        .expect("run swoosh")
}

/// `swoosh propose` of `Boot_ConfigOk` to `url` under `idem`, saving an
/// unknown outcome's proposal to `chosen`: the output and its stderr.
fn propose_saving_to(
    url: &str,
    key: &std::path::Path,
    idem: &str,
    chosen: &std::path::Path,
    tmp: &std::path::Path,
) -> (std::process::Output, String) {
    let o = swoosh(
        &[
            "propose",
            "--to",
            url,
            "--key",
            key.to_str().unwrap(),
            "--transition",
            "Boot_ConfigOk",
            "--idem-key",
            idem,
            "--save",
            chosen.to_str().unwrap(),
        ],
        tmp,
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    (o, err)
}

/// The proposal kept in `chosen` is the one first posted.
fn assert_kept_the_first_post(posted: &Mutex<Vec<Vec<u8>>>, chosen: &std::path::Path) {
    let first: serde_json::Value = serde_json::from_slice(&posted.lock().unwrap()[0]).unwrap();
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(chosen).unwrap()).unwrap();
    assert_eq!(kept, first);
}

#[test]
fn an_unknown_outcome_keeps_the_proposal_to_resubmit_exactly() {
    let t = tempfile::tempdir().unwrap();
    let key = t.path().join("k");
    let o = swoosh(&["keygen", "--out", key.to_str().unwrap()], t.path());
    assert!(o.status.success(), "{o:?}");
    let (url, posted) = fake_node();
    let addr = url.trim_start_matches("http://");
    // Without a scheme, and with the default file in TMPDIR.
    let o = swoosh(
        &[
            "propose",
            "--to",
            addr,
            "--key",
            key.to_str().unwrap(),
            "--transition",
            "Boot_ConfigOk",
            "--idem-key",
            "default:boot/1",
        ],
        t.path(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("outcome unknown"), "{err}");
    assert!(err.contains("\"default:boot/1\""), "{err}");
    let saved = saved_path(t.path(), "default", "default:boot/1");
    assert!(err.contains(&saved.display().to_string()), "{err}");
    assert!(err.contains("swoosh propose --file"), "{err}");
    let first: serde_json::Value =
        serde_json::from_slice(posted.lock().unwrap().last().unwrap()).unwrap();
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    assert_eq!(kept, first, "the file holds the proposal that was sent");

    // Resubmitting the file sends the very same proposal (and, still
    // unanswered, says so again, pointing at the same file).
    let before = posted.lock().unwrap().len();
    let o = swoosh(
        &["propose", "--file", saved.to_str().unwrap(), "--url", &url],
        t.path(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("outcome unknown"), "{err}");
    assert!(err.contains(&saved.display().to_string()), "{err}");
    let log = posted.lock().unwrap();
    assert!(log.len() > before);
    for body in &log[before..] {
        let again: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(again, first);
    }

    // --save picks the file.
    drop(log);
    let chosen = t.path().join("chosen.json");
    let o = swoosh(
        &[
            "propose",
            "--to",
            &url,
            "--key",
            key.to_str().unwrap(),
            "--transition",
            "Boot_ConfigOk",
            "--save",
            chosen.to_str().unwrap(),
        ],
        t.path(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&chosen.display().to_string()), "{err}");
    assert!(chosen.exists());
    // Without --idem-key, the key made up is said before the first send,
    // so an interrupted run can be rerun under it.
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(&chosen).unwrap()).unwrap();
    let made_up = kept["idem_key"].as_str().unwrap();
    assert!(made_up.starts_with("default:Boot_ConfigOk:"), "{kept}");
    let said = format!("idempotency key {made_up}: if this command is interrupted");
    let at = err.find(&said).unwrap_or_else(|| panic!("{err}"));
    assert!(
        err[at..].contains(&format!("--idem-key {made_up}")),
        "{err}"
    );
    assert!(
        at < err.find("outcome unknown").unwrap(),
        "said first: {err}"
    );
}

#[test]
fn bad_addresses_and_decision_refs_are_refused_with_the_accepted_form() {
    let t = tempfile::tempdir().unwrap();
    let o = swoosh(&["health", "--to", "ftp://127.0.0.1:7700"], t.path());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("http://127.0.0.1:7700"), "{err}");
    // Refused before any connection: port 1 is never contacted.
    let o = swoosh(&["decisions", "../health", "--to", "127.0.0.1:1"], t.path());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("bubble://dr/"), "{err}");
    assert!(!err.contains("cannot reach"), "{err}");
}

/// The first attempt is dropped after it was sent (it may have been
/// applied); the resubmission meets a node that gave up. The outcome is
/// still unknown, so the proposal is kept to resubmit, as for a lost reply.
#[test]
fn an_unknown_attempt_then_a_node_that_gave_up_keeps_the_proposal() {
    let t = tempfile::tempdir().unwrap();
    let key = t.path().join("k");
    let o = swoosh(&["keygen", "--out", key.to_str().unwrap()], t.path());
    assert!(o.status.success(), "{o:?}");
    let (url, posted) = fake_node_answering(|n| {
        (n > 0).then(|| {
            let body = serde_json::json!({
                "error": "gave_up",
                "message": "the node gave up restarting its sequencer after 10 attempts"
            });
            (503, body.to_string())
        })
    });
    let chosen = t.path().join("kept.json");
    let (o, err) = propose_saving_to(&url, &key, "default:boot/2", &chosen, t.path());
    assert!(!o.status.success(), "{err}");
    assert_eq!(
        posted.lock().unwrap().len(),
        2,
        "not retried after gave_up: {err}"
    );
    assert!(err.contains("gave_up"), "{err}");
    assert!(err.contains("UNKNOWN"), "{err}");
    assert!(err.contains("outcome unknown"), "{err}");
    assert!(err.contains("\"default:boot/2\""), "{err}");
    assert!(err.contains(&chosen.display().to_string()), "{err}");
    assert_kept_the_first_post(&posted, &chosen);
}

/// A reverse proxy that gives up first (its own `504`, an HTML body) says
/// nothing of what the node did: the proposal is kept to resubmit.
#[test]
fn a_proxys_gateway_timeout_keeps_the_proposal() {
    let t = tempfile::tempdir().unwrap();
    let key = t.path().join("k");
    let o = swoosh(&["keygen", "--out", key.to_str().unwrap()], t.path());
    assert!(o.status.success(), "{o:?}");
    let (url, posted) =
        fake_node_answering(|_| Some((504, "<html>504 Gateway Time-out</html>".into())));
    let chosen = t.path().join("kept.json");
    let (o, err) = propose_saving_to(&url, &key, "default:boot/3", &chosen, t.path());
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("504"), "{err}");
    assert!(err.contains("outcome unknown"), "{err}");
    assert!(err.contains(&chosen.display().to_string()), "{err}");
    assert_kept_the_first_post(&posted, &chosen);
}

/// A node URL with a path is put before every endpoint (a reverse proxy
/// may map it to the node): a node's `404` then says so and names the
/// accepted form, for every client command alike. A query or fragment,
/// which would swallow the endpoint, is refused before any request.
#[test]
fn a_node_url_with_a_path_is_explained_and_one_with_a_query_refused() {
    let t = tempfile::tempdir().unwrap();
    let (url, _) = fake_node();
    let with_path = format!("{url}/some/path");
    for args in [
        vec!["health", "--to", &with_path],
        vec!["state", "--to", &with_path],
    ] {
        let o = swoosh(&args, t.path());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("ends in the path /some/path"),
            "{args:?}: {err}"
        );
        assert!(err.contains("http://127.0.0.1:7700"), "{args:?}: {err}");
        assert!(!err.contains("names no role"), "{args:?}: {err}");
    }
    for bad in ["http://127.0.0.1:1/?x=1", "127.0.0.1:1/#top"] {
        let o = swoosh(&["health", "--to", bad], t.path());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains("query or fragment"), "{bad}: {err}");
        assert!(err.contains("http://127.0.0.1:7700"), "{bad}: {err}");
        assert!(!err.contains("cannot reach"), "{bad}: {err}");
    }
}

/// `propose --json` prints one JSON object on stdout for every failure, in
/// one shape: the node's error body when it answered, else the client's
/// own `error` and `message`; with `status`, `outcome_unknown`,
/// `idempotency_key` and `saved` alike. It still exits non-zero.
#[test]
fn propose_json_prints_one_object_for_every_client_error() {
    let t = tempfile::tempdir().unwrap();
    let key = t.path().join("k");
    let o = swoosh(&["keygen", "--out", key.to_str().unwrap()], t.path());
    assert!(o.status.success(), "{o:?}");
    let propose = |to: &str, idem: &str| {
        let o = swoosh(
            &[
                "propose",
                "--to",
                to,
                "--key",
                key.to_str().unwrap(),
                "--transition",
                "Boot_ConfigOk",
                "--idem-key",
                idem,
                "--json",
            ],
            t.path(),
        );
        assert!(!o.status.success(), "{o:?}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {o:?}"));
        v
    };

    // Nothing listens: nothing was sent. (Port 1, tcpmux, which no test
    // host serves: a port bound and released here could be taken by
    // another test's server before the command connects.)
    let v = propose("127.0.0.1:1", "default:json/1");
    assert_eq!(v["error"], "connect", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("cannot reach"),
        "{v}"
    );
    assert_eq!(v["status"], serde_json::Value::Null, "{v}");
    assert_eq!(v["outcome_unknown"], false, "{v}");
    assert_eq!(v["idempotency_key"], "default:json/1", "{v}");
    assert_eq!(v["saved"], serde_json::Value::Null, "{v}");

    // Sent, and the connection dropped: unknown, and kept.
    let (url, _) = fake_node();
    let v = propose(&url, "default:json/2");
    assert_eq!(v["error"], "connection_lost", "{v}");
    assert!(v["message"].as_str().unwrap().contains("UNKNOWN"), "{v}");
    assert_eq!(v["outcome_unknown"], true, "{v}");
    assert_eq!(v["idempotency_key"], "default:json/2", "{v}");
    let saved = saved_path(t.path(), "default", "default:json/2");
    assert_eq!(v["saved"], saved.display().to_string(), "{v}");
    assert!(saved.exists());

    // --timeout: a node answering `503 unavailable` with a long hint; the
    // deadline ends the retries, the outcome is unknown, and it is kept.
    let (url, posted) = fake_node_answering(|_| {
        let body = serde_json::json!({
            "error": "unavailable", "message": "no durable outcome in time", "retry_after_ms": 30_000
        });
        Some((503, body.to_string()))
    });
    let o = swoosh(
        &[
            "propose",
            "--to",
            &url,
            "--key",
            key.to_str().unwrap(),
            "--transition",
            "Boot_ConfigOk",
            "--idem-key",
            "default:json/5",
            "--json",
            "--timeout",
            "1",
        ],
        t.path(),
    );
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"));
    assert_eq!(v["error"], "deadline", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("deadline of 1000 ms"),
        "{v}"
    );
    assert_eq!(v["outcome_unknown"], true, "{v}");
    assert!(
        saved_path(t.path(), "default", "default:json/5").exists(),
        "{v}"
    );
    assert_eq!(
        posted.lock().unwrap().len(),
        1,
        "the 30 s hint was not waited out"
    );

    // Refused: the node's body, as before, with the same added fields.
    let (url, _) = fake_node_answering(|_| {
        let body = serde_json::json!({"error": "forbidden", "message": "fake forbidden"});
        Some((403, body.to_string()))
    });
    let v = propose(&url, "default:json/3");
    assert_eq!(v["error"], "forbidden", "{v}");
    assert_eq!(v["message"], "fake forbidden", "{v}");
    assert_eq!(v["status"], 403, "{v}");
    assert_eq!(v["outcome_unknown"], false, "{v}");
    assert_eq!(v["idempotency_key"], "default:json/3", "{v}");
    assert_eq!(v["saved"], serde_json::Value::Null, "{v}");

    // Refused before any request (no such key file): one object too.
    let o = swoosh(
        &[
            "propose",
            "--to",
            "127.0.0.1:1",
            "--key",
            t.path().join("missing.key").to_str().unwrap(),
            "--transition",
            "Boot_ConfigOk",
            "--json",
        ],
        t.path(),
    );
    assert!(!o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {o:?}"));
    assert_eq!(v["error"], "usage", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("missing.key"),
        "{v}"
    );
    assert_eq!(v["outcome_unknown"], false, "{v}");
}

/// Where `swoosh propose` keeps a proposal of unknown outcome without
/// `--save` (`node::default_save_path`), under `tmp` as its `TMPDIR`.
fn saved_path(tmp: &std::path::Path, project: &str, idem_key: &str) -> std::path::PathBuf {
    let safe: String = idem_key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let tag = swoosh_core::hash::Hash::of_bytes(idem_key.as_bytes()).to_hex();
    tmp.join(format!(
        "swoosh-proposal-{project}-{safe}-{}.json",
        &tag[..8]
    ))
}
