//! `swoosh propose` whose outcome is unknown (the node drops the connection
//! after the proposal was sent): it names the idempotency key and keeps the
//! signed proposal in a file that resubmits as the very same proposal.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// A fake node: `GET /state` answers a HEAD, `POST /transition` is read,
/// recorded and dropped without a reply.
fn fake_node() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
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
            if head.starts_with("POST") {
                log.lock().unwrap().push(buf[head_end..].to_vec());
                continue; // dropped: no reply
            }
            let body = serde_json::json!({
                "project": "default", "index": 0,
                "hash": format!("blake3:{}", "11".repeat(32)), "projection": {}
            })
            .to_string();
            let _ = write!(
                sock,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
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
    let saved = t.path().join("swoosh-proposal-default_boot_1.json");
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
