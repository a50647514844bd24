//! Deterministic streams of valid WAL records, for the storage tests, the
//! crash-writer, the benchmarks and the simulator.
//!
//! A [`Stream`] drives several projects along the statechart's happy path
//! with `swoosh_core::scenario::Driver` (BOOT, lifecycle, then execution
//! loops forever) through the pure reducer. Its clock is a function of the
//! node state alone (one millisecond past the node's HLC, jumping ahead when
//! every project waits for a BACKBEAT window), so a stream resumed from a
//! recovered node produces exactly the records an uninterrupted one would:
//! the crash test depends on that. Keys come from labels: for tests only.

use swoosh_core::guards::Verify;
use swoosh_core::reducer::{step, Accepted, Ctx, Outcome};
use swoosh_core::scenario::{genesis, Driver, Keys, Next};
use swoosh_core::state::{Genesis, NodeState};

/// 2026-01-01T00:00:00Z: where every test stream's clock starts.
pub const STREAM_ORIGIN_MS: u64 = 1_767_225_600_000;
/// Council members in a test cluster.
pub const STREAM_COUNCIL_MEMBERS: usize = 3;
/// Most consecutive window waits before a stream gives up (a driver bug).
pub const STREAM_WAITS_MAX: usize = 64;

/// The cluster id every test stream uses.
pub const STREAM_CLUSTER_ID: &str = "storage-test";

fn keys(label: &str) -> Keys {
    Keys::from_labels(label, STREAM_COUNCIL_MEMBERS)
}

/// The genesis of the stream labelled `label`.
pub fn stream_genesis(label: &str) -> Genesis {
    genesis(&keys(label), STREAM_CLUSTER_ID, STREAM_ORIGIN_MS)
}

fn project_ids(projects: usize) -> Vec<String> {
    (0..projects.max(1)).map(|i| format!("p{i}")).collect()
}

/// A deterministic source of accepted transitions.
pub struct Stream {
    keys: Keys,
    genesis: Genesis,
    projects: Vec<String>,
    node: NodeState,
    verify: Verify,
}

impl Stream {
    /// A stream over `projects` projects from genesis. `verify` is what the
    /// reducer checks while generating (`Trusted` skips signature checks and
    /// makes the same records faster).
    pub fn new(label: &str, projects: usize, verify: Verify) -> Stream {
        Stream::with_origin(label, projects, verify, STREAM_ORIGIN_MS)
    }

    /// [`Stream::new`] with its genesis (and so its clock) starting at
    /// `origin_ms` instead of [`STREAM_ORIGIN_MS`]. For tests whose nodes
    /// judge the stream's proposals at the real clock: the stream's license
    /// runs a year from its origin, so a fixed origin expires in the tests.
    pub fn with_origin(label: &str, projects: usize, verify: Verify, origin_ms: u64) -> Stream {
        let g = genesis(&keys(label), STREAM_CLUSTER_ID, origin_ms);
        let node = NodeState::new(g.clone()).expect("the test genesis is valid");
        Stream {
            keys: keys(label),
            genesis: g,
            projects: project_ids(projects),
            node,
            verify,
        }
    }

    /// Continue the stream from `node` (e.g. a recovered node).
    pub fn resume(label: &str, projects: usize, node: NodeState, verify: Verify) -> Stream {
        Stream {
            keys: keys(label),
            genesis: stream_genesis(label),
            projects: project_ids(projects),
            node,
            verify,
        }
    }

    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// The pure reducer's node after every record produced so far.
    pub fn node(&self) -> &NodeState {
        &self.node
    }

    /// The next accepted transition (the node advances past it).
    pub fn next_accepted(&mut self) -> Accepted {
        let driver = Driver::new(&self.keys, u64::MAX);
        let n = self.projects.len();
        let origin = self.genesis.backbeat.origin_ms;
        let mut now = self.node.hlc.map_or(origin, |h| h.wall_ms.max(origin)) + 1;
        for _ in 0..STREAM_WAITS_MAX {
            let start = (self.node.index as usize) % n;
            let mut wait = u64::MAX;
            for k in 0..n {
                let project = &self.projects[(start + k) % n];
                match driver.next(&self.node, project, now) {
                    Next::Propose(p) => {
                        let ctx = Ctx {
                            now_ms: now,
                            verify: self.verify,
                            snapshot_every: 0,
                        };
                        match step(&mut self.node, &p, &ctx).outcome {
                            Outcome::Accepted(acc) => return *acc,
                            other => panic!(
                                "test stream: the driver's {} for {project} was refused: {other:?}",
                                p.transition
                            ),
                        }
                    }
                    Next::WaitMs(ms) => wait = wait.min(ms),
                    Next::Done => {}
                }
            }
            assert!(wait != u64::MAX, "test stream: every project is done; the driver runs loops forever, so this is a bug");
            now += wait;
        }
        panic!("test stream: still waiting for a window after {STREAM_WAITS_MAX} waits");
    }

    /// The next `n` accepted transitions.
    pub fn take(&mut self, n: usize) -> Vec<Accepted> {
        (0..n).map(|_| self.next_accepted()).collect()
    }

    /// Advance until the node's index is `index` (no-op if already there).
    pub fn advance_to(&mut self, index: u64) {
        while self.node.index < index {
            self.next_accepted();
        }
    }
}
