//! The attention actor: operational events reach the scorer, the digest
//! lists them by band, the memory is saved in the node's directory and
//! loaded again after a restart ("seen before"), and a damaged memory file
//! is set aside without stopping the node.

mod common;

use common::*;
use std::time::Duration;
use swoosh_actors::{NodeHandle, SubmitResult};
use swoosh_core::attention::Band;
use swoosh_core::scenario::{Driver, Next};
use swoosh_core::NodeState;

/// A proposal with a flipped signature bit: refused 401, one `auth_failure` event.
fn forged(fx: &Fixture, n: u8) -> swoosh_core::Proposal {
    let driver = Driver::new(&fx.keys, 1);
    let mirror = NodeState::new(fx.genesis.clone()).unwrap();
    let Next::Propose(p) = driver.next(&mirror, "default", fx.now()) else {
        panic!("the driver has a first proposal")
    };
    let mut p = *p;
    p.signature.0[(n % 64) as usize] ^= 0x01;
    p
}

async fn start_with(fx: &Fixture, dir: &std::path::Path) -> Node {
    let mut cfg = fx.config(0);
    cfg.attention_file = Some(dir.join("attention.cbor"));
    // The stopped node's last store handle may take a moment to go.
    let t0 = std::time::Instant::now();
    let store = loop {
        match swoosh_storage::LmdbStore::open(
            &dir.join("data"),
            &swoosh_storage::LmdbOptions::default(),
        ) {
            Ok(s) => break s,
            Err(swoosh_storage::StoreError::AlreadyOpen { .. }) if t0.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("reopening the store: {e}"),
        }
    };
    NodeHandle::start(store, cfg)
        .await
        .expect("the node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_survives_a_restart_and_a_damaged_file_is_set_aside() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let fx = Fixture::new("attn");

    let node = start_with(&fx, dir.path()).await;
    for n in 0..3 {
        assert!(matches!(
            node.submit(forged(&fx, n)).await,
            SubmitResult::Rejected(_)
        ));
    }
    let v = node.attention(Band::IgnoreFast).await.unwrap();
    assert_eq!(v.counts.get("auth_failure"), Some(&3), "{:?}", v.counts);
    let item = v
        .digest
        .items
        .iter()
        .find(|i| i.kind == swoosh_core::attention::EventKind::AuthFailure)
        .expect("the auth failures are one item");
    assert_eq!(item.count, 3);
    assert!(item.band >= Band::Watch);
    assert!(!item.seen_before);
    assert!(!item.next.is_empty());
    assert!(node
        .metrics()
        .encode()
        .contains("swoosh_attention_items{band=\"watch\"}"));
    node.shutdown().await;
    drop(node);
    let file = dir.path().join("attention.cbor");
    assert!(file.exists(), "saved at shutdown");

    // Restarted: the same pattern is remembered; it was "seen before" only
    // once it recurs in this session.
    let node = start_with(&fx, dir.path()).await;
    let v = node.attention(Band::IgnoreFast).await.unwrap();
    assert_eq!(v.digest.session, 2);
    let item = v
        .digest
        .items
        .iter()
        .find(|i| i.kind == swoosh_core::attention::EventKind::AuthFailure)
        .expect("remembered across the restart");
    assert_eq!(item.count, 3);
    assert!(!item.seen_before, "not seen again yet");
    assert!(matches!(
        node.submit(forged(&fx, 3)).await,
        SubmitResult::Rejected(_)
    ));
    let v = node.attention(Band::IgnoreFast).await.unwrap();
    let item = v
        .digest
        .items
        .iter()
        .find(|i| i.kind == swoosh_core::attention::EventKind::AuthFailure)
        .expect("the same pattern");
    assert_eq!(item.count, 4);
    assert!(item.seen_before, "seen in session 1 and again in 2");
    assert!(v
        .digest
        .items
        .iter()
        .any(|i| i.kind == swoosh_core::attention::EventKind::Restart));
    node.shutdown().await;
    drop(node);

    // A damaged file: set aside, the node starts with a fresh memory.
    std::fs::write(&file, b"\xff\x00 not cbor").unwrap();
    let node = tokio::time::timeout(2 * PATIENCE, start_with(&fx, dir.path()))
        .await
        .expect("starts in time");
    let v = node.attention(Band::IgnoreFast).await.unwrap();
    assert_eq!(v.digest.session, 1);
    assert!(v.memory_note.contains("set aside"), "{}", v.memory_note);
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains(".corrupt-"));
    assert!(aside, "the damaged file is kept beside, renamed");
    node.shutdown().await;
    drop(node);
    assert!(swoosh_core::attention::Scorer::from_bytes(
        &std::fs::read(&file).unwrap(),
        swoosh_core::attention::Tuning::OPERATIONS
    )
    .is_ok());
}

/// Events from outside the reducer (`NodeHandle::observe`, as the p2p
/// leader sends its followers' lag, gaps and partitions) reach the digest,
/// with their subjects, and a recovery heals the failure it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observed_events_reach_the_digest() {
    use swoosh_core::attention::{Event, EventKind};
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let fx = Fixture::new("attn-observe");
    let node = start_with(&fx, dir.path()).await;
    assert!(node.observe(vec![]), "nothing to send is sent");
    let cut = |at| Event::new(EventKind::Partition, "network cut", at).peer("follower-1");
    assert!(node.observe(vec![
        cut(fx.now()),
        Event::new(
            EventKind::FollowerLag,
            "records behind the leader",
            fx.now()
        )
        .peer("follower-2"),
    ]));
    // Observe is asynchronous: the digest shows the events once the actor took them.
    let t0 = std::time::Instant::now();
    let v = loop {
        let v = node.attention(Band::IgnoreFast).await.unwrap();
        if v.counts.get("partition") == Some(&1) && v.counts.get("follower_lag") == Some(&1) {
            break v;
        }
        assert!(t0.elapsed() < PATIENCE, "{:?}", v.counts);
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let p = v
        .digest
        .items
        .iter()
        .find(|i| i.kind == EventKind::Partition)
        .expect("the partition is an item");
    assert_eq!(p.peers, vec!["follower-1".to_string()]);
    assert!(p.open);
    assert!(node
        .metrics()
        .encode()
        .contains("swoosh_attention_events_total{kind=\"partition\"} 1"));
    // The reconnection heals it (and only the partition of that peer).
    assert!(node.observe(vec![Event::new(
        EventKind::PartitionHealed,
        "reconnected",
        fx.now()
    )
    .peer("follower-1")]));
    let t0 = std::time::Instant::now();
    loop {
        let v = node.attention(Band::IgnoreFast).await.unwrap();
        let find = |k| v.digest.items.iter().find(|i| i.kind == k).cloned();
        if let (Some(p), Some(lag)) = (find(EventKind::Partition), find(EventKind::FollowerLag)) {
            if !p.open {
                assert_eq!(p.heals, 1);
                assert!(lag.open, "another peer's lag stays open");
                break;
            }
        }
        assert!(t0.elapsed() < PATIENCE, "{:?}", v.counts);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.shutdown().await;
}
