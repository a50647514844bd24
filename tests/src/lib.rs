//! Harness for SWOOSH's end-to-end tests: a real node (LMDB WAL, actor tree,
//! HTTP API) on a loopback port, with the deterministic scenario keys.

use std::sync::Arc;
use swoosh_actors::{NodeConfig, NodeHandle, SystemClock};
use swoosh_core::scenario::{genesis, Keys};
use swoosh_core::state::Genesis;
use swoosh_storage::{Durability, LmdbOptions, LmdbStore};

pub struct TestNode {
    pub url: String,
    pub node: NodeHandle<LmdbStore>,
    pub keys: Arc<Keys>,
    pub genesis: Genesis,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl TestNode {
    /// Start a leader on a fresh LMDB store in a temporary directory.
    pub async fn start() -> TestNode {
        let keys = Arc::new(Keys::from_labels("e2e", 3));
        let g = genesis(&keys, "e2e", now_ms() / 1000 * 1000);
        Self::start_with(keys, g).await
    }

    pub async fn start_with(keys: Arc<Keys>, g: Genesis) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = LmdbStore::open(
            dir.path(),
            &LmdbOptions {
                durability: Durability::Sync,
                ..Default::default()
            },
        )
        .expect("open store");
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
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(swoosh_net::http::serve(listener, node.clone(), async {
            let _ = rx.await;
        }));
        TestNode {
            url,
            node,
            keys,
            genesis: g,
            dir,
            stop: Some(tx),
            server: Some(server),
        }
    }

    /// Graceful shutdown: stop HTTP, flush the WAL, stop the actors.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
    }

    /// Replay the node's WAL from genesis with the pure reducer.
    pub fn replay(&self) -> swoosh_core::state::NodeState {
        let opts = swoosh_storage::recovery::RecoverOptions {
            verify: swoosh_core::guards::Verify::Full,
            use_snapshots: false,
        };
        swoosh_storage::recovery::recover_with(self.node.store(), &self.genesis, &opts, &mut |_| {})
            .expect("the WAL replays")
            .node
    }
}
