//! kill -9 while appending: a child process (`wal-crash-writer`) appends
//! group commits of the deterministic test stream to an LMDB store and prints
//! every acknowledged index; the test kills it with SIGKILL at random moments,
//! reopens the store, and checks that every acknowledged record is there, the
//! chain verifies, and recovery's hashes equal the pure reducer's.

use rand::{RngExt, SeedableRng};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use swoosh_core::guards::Verify;
use swoosh_storage::testkit::{stream_genesis, Stream};
use swoosh_storage::{recover, verify, LmdbOptions, LmdbStore, LogStore, VerifyOptions};

/// Must match the writer binary's constants.
const LABEL: &str = "crash";
const PROJECTS: usize = 3;
/// Kills per run.
const KILLS: usize = 50;
/// Kills of the writer that never folds its journal.
const HOLD_KILLS: usize = 12;
/// How long to wait for a child's first acknowledgement.
const FIRST_ACK_WAIT: Duration = Duration::from_secs(20);
/// After the first acknowledgement, the kill lands within this many ms.
const KILL_WINDOW_MS: u64 = 40;

#[test]
fn every_acknowledged_record_survives_kill_9() {
    kill_loop(KILLS, &["--snapshot-every", "150"], false);
}

/// The writer never folds its journal into LMDB: every acknowledged commit is
/// in the journal only when the kill lands, and reopening must fold it.
#[test]
fn commits_held_only_by_the_journal_survive_kill_9() {
    kill_loop(HOLD_KILLS, &["--hold-fold"], true);
}

fn kill_loop(kills: usize, args: &[&str], held: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let genesis = stream_genesis(LABEL);
    let mut pure = Stream::new(LABEL, PROJECTS, Verify::Trusted);
    let seed = std::env::var("SWOOSH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let mut max_acked = 0u64;
    let mut kills_mid_batch = 0;
    let mut replays = 0;
    for kill in 0..kills {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wal-crash-writer"))
            .arg(&db)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wal-crash-writer");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<u64>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("ack ").and_then(|n| n.parse().ok()) {
                    if tx.send(n).is_err() {
                        break;
                    }
                }
            }
        });
        let first = rx.recv_timeout(FIRST_ACK_WAIT);
        if first.is_err() {
            let _ = child.kill();
            let out = child.wait_with_output().expect("child output");
            panic!(
                "kill {kill}: the writer acknowledged nothing: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..KILL_WINDOW_MS)));
        child.kill().expect("SIGKILL the writer");
        let status = child.wait().expect("reap the writer");
        assert!(
            !status.success(),
            "kill {kill}: the writer was killed, not finished"
        );
        reader.join().expect("reader thread");
        let acked: Vec<u64> = std::iter::once(first.unwrap())
            .chain(rx.try_iter())
            .collect();
        let last_ack = *acked.iter().max().expect("at least one ack");
        assert!(
            acked.windows(2).all(|w| w[0] < w[1]),
            "kill {kill}: acknowledgements go up"
        );
        max_acked = max_acked.max(last_ack);

        if held && kill + 1 == kills {
            // Without its journal, a store a crash left unfolded refuses to
            // open rather than serve a log missing acknowledged commits.
            let (j, moved) = (db.join("journal"), dir.path().join("journal.moved"));
            std::fs::rename(&j, &moved).unwrap();
            let err = LmdbStore::open(&db, &LmdbOptions::default()).unwrap_err();
            assert!(
                err.to_string()
                    .contains("is missing and the store was not closed cleanly"),
                "{err}"
            );
            assert!(!j.exists(), "a refused open leaves no empty journal behind");
            std::fs::rename(&moved, &j).unwrap();
        }
        // Reopen and recover; nothing acknowledged may be missing.
        let store = LmdbStore::open(&db, &LmdbOptions::default()).expect("reopen after kill -9");
        if store.journal_replayed() > 0 {
            replays += 1;
        }
        let rec = recover(&store, &genesis)
            .unwrap_or_else(|e| panic!("kill {kill}: recovery failed: {e}"));
        let n = rec.node.index;
        assert!(
            n >= max_acked,
            "kill {kill}: acknowledged up to {max_acked} but only {n} records survived"
        );
        if n > last_ack {
            kills_mid_batch += 1;
        }
        pure.advance_to(n);
        assert_eq!(
            rec.node.head_record,
            pure.node().head_record,
            "kill {kill}: chain head at {n}"
        );
        assert_eq!(
            rec.node.root_hash(),
            pure.node().root_hash(),
            "kill {kill}: root hash at {n}"
        );
        assert_eq!(store.last_index().unwrap(), n);
        drop(store);
    }
    if held {
        assert_eq!(
            replays, kills,
            "every reopen after a held journal folds entries from it"
        );
    }
    // One full check from genesis at the end: every frame, link, signature,
    // snapshot and index entry.
    let store = LmdbStore::open(&db, &LmdbOptions::default()).unwrap();
    let rep = verify(&store, &genesis, &VerifyOptions::default(), &mut |_| {})
        .expect("the whole log verifies");
    assert_eq!(rep.head_hash, pure.node().head_record);
    assert!(
        rep.snapshot_problems.is_empty(),
        "{:?}",
        rep.snapshot_problems
    );
    assert_eq!(rep.index_problems_total, 0, "{:?}", rep.index_problems);
    eprintln!(
        "{kills} kills (seed {seed}) in {:.1} s: {} records, {kills_mid_batch} kills left a durable but unacknowledged batch, {replays} reopens folded journal entries, snapshots {:?}",
        t0.elapsed().as_secs_f64(),
        rep.records,
        store.list_snapshots().unwrap()
    );
}
