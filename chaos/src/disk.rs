//! A follower's simulated disk: snapshots plus a WAL of hashed frames, with
//! an unsynced tail that a crash loses (kill -9) or tears (a half-written
//! last frame that recovery must detect and cut).
//!
//! WAL frames keep the record as a value with its hash (the one the leader
//! signed) instead of its bytes, to spare an encoding per record; a torn
//! frame is marked as such. Recovery checks each frame by re-running it
//! through the reducer and comparing the re-encoded hash with the stored one.
//!
//! Why not `swoosh_storage::MemStore` (the leader uses it): storage's
//! recovery requires every snapshot to join a WAL record at its index, so a
//! follower that installs a leader snapshot without the WAL prefix cannot
//! persist it there yet. This model stores what such a follower would: the
//! installed snapshot, then the records after it.

use swoosh_core::cbor::from_trusted;
use swoosh_core::guards::Verify;
use swoosh_core::hash::Hash;
use swoosh_core::record::WalRecord;
use swoosh_core::reducer::apply_record;
use swoosh_core::state::{Genesis, NodeState};
use swoosh_net::proto::AppliedRecord;

/// Snapshots a follower keeps (older ones are deleted).
pub const FOLLOWER_SNAPSHOTS_KEEP: usize = 3;

struct Frame {
    index: u64,
    hash: Hash,
    record: WalRecord,
    /// Only part of the frame reached the disk.
    torn: bool,
}

struct SnapFile {
    index: u64,
    hash: Hash,
    bytes: Vec<u8>,
}

/// What recovery found on the way.
#[derive(Debug, Default, Clone, Copy)]
pub struct RecoverNotes {
    pub snapshot: Option<u64>,
    pub corrupt_snapshots: u64,
    pub torn_frames: u64,
    /// The WAL did not continue the usable snapshot and was dropped.
    pub wal_gap: bool,
    pub replayed: u64,
}

#[derive(Default)]
pub struct Disk {
    snapshots: Vec<SnapFile>,
    wal: Vec<Frame>,
    unsynced: Vec<Frame>,
}

impl Disk {
    fn last_index(&self) -> u64 {
        self.unsynced
            .last()
            .or(self.wal.last())
            .map(|f| f.index)
            .or(self.snapshots.last().map(|s| s.index))
            .unwrap_or(0)
    }

    /// Append applied records (not yet durable).
    pub fn append(&mut self, recs: &[AppliedRecord]) {
        for r in recs {
            let last = self.last_index();
            assert_eq!(r.record.index, last + 1, "follower WAL append out of order");
            self.unsynced.push(Frame {
                index: r.record.index,
                hash: r.hash,
                record: r.record.clone(),
                torn: false,
            });
        }
    }

    pub fn unsynced(&self) -> usize {
        self.unsynced.len()
    }

    pub fn sync(&mut self) {
        self.wal.append(&mut self.unsynced);
    }

    /// Store a snapshot durably; the WAL up to it is no longer needed.
    pub fn put_snapshot(&mut self, index: u64, bytes: Vec<u8>) {
        self.snapshots.retain(|s| s.index < index);
        self.snapshots.push(SnapFile {
            index,
            hash: Hash::of_bytes(&bytes),
            bytes,
        });
        if self.snapshots.len() > FOLLOWER_SNAPSHOTS_KEEP {
            self.snapshots.remove(0);
        }
        self.wal.retain(|f| f.index > index);
        self.unsynced.retain(|f| f.index > index);
        if self.wal.first().is_some_and(|f| f.index != index + 1) {
            // The log does not continue the snapshot (an installed leader
            // snapshot far ahead): it is useless now.
            self.wal.clear();
            self.unsynced.clear();
        }
    }

    /// kill -9: the unsynced tail is lost; with `torn`, its first frame
    /// reaches the disk cut in half. Returns whether a torn frame was left.
    pub fn crash(&mut self, torn: bool) -> bool {
        let mut tore = false;
        if torn && !self.unsynced.is_empty() {
            let mut f = self.unsynced.remove(0);
            f.torn = true;
            self.wal.push(f);
            tore = true;
        }
        self.unsynced.clear();
        tore
    }

    /// Restore from an older backup: only the oldest snapshot survives and
    /// the WAL after it is gone. Returns the index the node restarts from.
    pub fn rollback(&mut self) -> u64 {
        self.unsynced.clear();
        self.wal.clear();
        self.snapshots.truncate(1);
        self.snapshots.first().map_or(0, |s| s.index)
    }

    /// Flip a byte in the newest snapshot (bit rot). Returns its index.
    pub fn corrupt_newest_snapshot(&mut self, pick: u64) -> Option<u64> {
        let s = self.snapshots.last_mut()?;
        let at = (pick % s.bytes.len() as u64) as usize;
        s.bytes[at] ^= 0x5a;
        Some(s.index)
    }

    fn load(s: &SnapFile, genesis_hash: Hash) -> Result<NodeState, String> {
        if Hash::of_bytes(&s.bytes) != s.hash {
            return Err("hash mismatch".into());
        }
        let node: NodeState = from_trusted(&s.bytes).map_err(|e| e.to_string())?;
        if node.index != s.index || node.genesis_hash != genesis_hash {
            return Err("header mismatch".into());
        }
        for e in node.projects.values() {
            if e.state.hash() != e.hash {
                return Err("project hash mismatch".into());
            }
        }
        Ok(node)
    }

    /// Recover the node: newest intact snapshot (damaged ones are deleted),
    /// then the WAL after it, cut at the first torn frame. An intact frame
    /// that does not replay is an error (divergence), never skipped.
    pub fn recover(&mut self, genesis: &Genesis) -> Result<(NodeState, RecoverNotes), String> {
        let fresh = NodeState::new(genesis.clone()).map_err(|e| e.to_string())?;
        let mut notes = RecoverNotes::default();
        let mut node = None;
        while let Some(s) = self.snapshots.last() {
            match Self::load(s, fresh.genesis_hash) {
                Ok(n) => {
                    notes.snapshot = Some(s.index);
                    node = Some(n);
                    break;
                }
                Err(_) => {
                    notes.corrupt_snapshots += 1;
                    self.snapshots.pop();
                }
            }
        }
        let mut node = node.unwrap_or(fresh);
        self.wal.retain(|f| f.index > node.index);
        if self.wal.first().is_some_and(|f| f.index != node.index + 1) {
            notes.wal_gap = true;
            self.wal.clear();
        }
        let mut keep = 0;
        for f in &self.wal {
            if f.torn {
                notes.torn_frames += 1;
                break;
            }
            let acc = apply_record(&mut node, &f.record, Verify::Trusted)
                .map_err(|e| format!("durable record {} does not replay: {e}", f.index))?;
            if acc.record_hash != f.hash {
                return Err(format!(
                    "durable record {} re-encodes to {}, its frame says {}",
                    f.index, acc.record_hash, f.hash
                ));
            }
            keep += 1;
        }
        self.wal.truncate(keep);
        notes.replayed = keep as u64;
        Ok((node, notes))
    }
}
