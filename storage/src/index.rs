//! Derived indexes: idempotency keys → original outcome, and decision records
//! by content hash. Both are written in the same commit as the records they
//! come from ([`crate::WalWriter::append_batch`]) and both can be rebuilt from
//! the WAL alone ([`rebuild_indexes`]); the WAL stays the source of truth.
//!
//! The HTTP layer uses them to answer a repeated proposal and
//! `GET /decisions/{hash}` without holding everything in memory.

use crate::frame::{self, FrameError, FrameKind};
use crate::recovery::{Phase, Progress, RecoveryError, PROGRESS_EVERY_RECORDS};
use crate::store::{Batch, LogStore, Space, StoreError};
use crate::wal::{
    check_meta, AppendError, DecisionDoc, Entry, ReadError, WalIter, DECISION_BYTES_MAX,
    IDEM_ENTRY_BYTES_MAX,
};
use std::time::{Duration, Instant};
use swoosh_core::guards::Verify;
use swoosh_core::reducer::apply_record;
use swoosh_core::state::{Genesis, IdemEntry, NodeState};
use swoosh_core::Hash;

/// Records replayed per commit while rebuilding.
pub const REINDEX_CHUNK_RECORDS: u64 = 1024;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum IndexError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the {space} entry stored under {key} at {location} is corrupt ({reason}): rebuild the derived indexes with `swoosh wal reindex --dir <node dir, which holds {location}>`")]
    Corrupt {
        location: String,
        space: Space,
        key: String,
        reason: FrameError,
    },
    #[error("the decision stored under {key} at {location} is decision {got}: rebuild the derived indexes with `swoosh wal reindex --dir <node dir, which holds {location}>`")]
    WrongKey {
        location: String,
        key: Hash,
        got: Hash,
    },
    #[error("{0}")]
    BadKey(String),
}

/// The original outcome of `(project, idem_key)`, if it was ever accepted.
pub fn lookup_idem<S: LogStore + ?Sized>(
    store: &S,
    project: &str,
    idem_key: &str,
) -> Result<Option<IdemEntry>, IndexError> {
    let key = crate::wal::idem_key(project, idem_key).map_err(IndexError::BadKey)?;
    let Some(bytes) = store.get(Space::Idem, &key)? else {
        return Ok(None);
    };
    let (_, e) =
        frame::open_decode::<IdemEntry>(FrameKind::IdemEntry, &bytes, IDEM_ENTRY_BYTES_MAX)
            .map_err(|reason| IndexError::Corrupt {
                location: store.location(),
                space: Space::Idem,
                key: format!("{project:?}/{idem_key:?}"),
                reason,
            })?;
    Ok(Some(e))
}

/// The decision record with content hash `hash` (`bubble://dr/<hex>`), checked
/// against its key on every read.
pub fn get_decision<S: LogStore + ?Sized>(
    store: &S,
    hash: &Hash,
) -> Result<Option<DecisionDoc>, IndexError> {
    let Some(bytes) = store.get(Space::Decisions, &hash.0)? else {
        return Ok(None);
    };
    let (_, d) = frame::open_decode::<DecisionDoc>(FrameKind::Decision, &bytes, DECISION_BYTES_MAX)
        .map_err(|reason| IndexError::Corrupt {
            location: store.location(),
            space: Space::Decisions,
            key: hash.to_string(),
            reason,
        })?;
    let got = d.hash();
    if got != *hash {
        return Err(IndexError::WrongKey {
            location: store.location(),
            key: *hash,
            got,
        });
    }
    Ok(Some(d))
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RebuildError {
    #[error(transparent)]
    Replay(#[from] RecoveryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("rebuilding the index entry of a record failed: {0}")]
    Encode(#[from] AppendError),
    #[error("rebuilding the idempotency entries of the snapshot at the WAL base failed: {0}")]
    Base(#[from] crate::base::InstallError),
    #[error("the key {key} is not the genesis leader {leader}: decisions are signed by the leader, and any other signer fails `wal verify`; rebuild with the leader's key")]
    NotLeader { key: String, leader: String },
}

impl From<ReadError> for RebuildError {
    fn from(e: ReadError) -> Self {
        RebuildError::Replay(e.into())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuildReport {
    pub records: u64,
    pub idem_entries: u64,
    /// Decision records of the replayed records, kept or rebuilt.
    pub decisions: u64,
    /// Of `decisions`, those kept as stored: signed by the genesis leader
    /// (a rebuild without the leader's key would store them unsigned).
    pub decisions_kept_signed: u64,
    pub elapsed: Duration,
}

/// Drop and rebuild both derived indexes from the WAL by replaying it from
/// genesis, or from the snapshot at the WAL base (the decision records are recomputed by the reducer). Decisions are
/// signed with `leader` if given. Without it, a decision the store holds
/// signed by the genesis leader (signature verified, under its own hash,
/// the decision of a record of the log) is kept as it is, and only the
/// others are stored unsigned: the leader's signatures are the audit
/// evidence of its decisions, and a rebuild run where its key is not at
/// hand must not destroy them. Commits every [`REINDEX_CHUNK_RECORDS`]
/// records; if interrupted, run it again. For a leader's store; a
/// follower's stores no decisions ([`rebuild_follower_indexes`]).
pub fn rebuild_indexes<S: LogStore + ?Sized>(
    store: &mut S,
    genesis: &Genesis,
    leader: Option<&ed25519_dalek::SigningKey>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RebuildReport, RebuildError> {
    rebuild(store, genesis, leader, true, progress)
}

/// [`rebuild_indexes`] for a follower's store, which holds no decision
/// records (the leader's are the record of its decisions; a follower
/// checks its records' decision hashes as it applies them): only the
/// idempotency entries are rebuilt, and decisions above the WAL base that
/// an earlier build's rebuild stored are removed.
pub fn rebuild_follower_indexes<S: LogStore + ?Sized>(
    store: &mut S,
    genesis: &Genesis,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RebuildReport, RebuildError> {
    rebuild(store, genesis, None, false, progress)
}

fn rebuild<S: LogStore + ?Sized>(
    store: &mut S,
    genesis: &Genesis,
    leader: Option<&ed25519_dalek::SigningKey>,
    decisions: bool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RebuildReport, RebuildError> {
    let t0 = Instant::now();
    if let Some(k) = leader {
        let key = swoosh_core::SignerId::from_signing_key(k);
        if key != genesis.leader {
            return Err(RebuildError::NotLeader {
                key: key.to_string(),
                leader: genesis.leader.to_string(),
            });
        }
    }
    let mut node = NodeState::new(genesis.clone()).map_err(RecoveryError::from)?;
    check_meta(&*store, node.genesis_hash).map_err(RecoveryError::from)?;
    // Entries of records at or below a WAL base cannot be derived again
    // (their records were archived by a compaction, or never held after an
    // install): intact ones are kept, everything else is rebuilt.
    let wal_base = crate::base::wal_base(&*store)?;
    let base_index = wal_base.map_or(0, |b| b.index);
    // A based log starts from the snapshot at its base. Proven before
    // anything is cleared: a rebuild refused for want of it (a damaged base
    // snapshot) must leave the indexes as they were, not emptied, or the
    // node that ran it could no longer start (its audit finds the entries
    // gone, and the rebuild that would restore them is refused again).
    if let Some(base) = wal_base {
        node = crate::recovery::base_state(&*store, node.genesis_hash, base)?;
    }
    clear_space(store, Space::Idem, &mut |_, v| {
        crate::recovery::decode_idem(v).is_some_and(|e| e.index <= base_index)
    })?;
    // Kept signed decisions above the base; any the replay does not name
    // (a record cut since, or a decision no record holds) is deleted after it.
    let mut signed_kept: std::collections::HashSet<[u8; 32]> = Default::default();
    clear_space(store, Space::Decisions, &mut |k, v| {
        let Some(d) = crate::recovery::decode_decision(v) else {
            return false;
        };
        if d.hash().0[..] != k[..] {
            return false;
        }
        if d.record().index <= base_index {
            return true;
        }
        let signed_by_leader = decisions
            && leader.is_none()
            && matches!(&d, DecisionDoc::Signed(s) if s.leader == genesis.leader && s.verify().is_ok());
        if signed_by_leader {
            signed_kept.insert(d.hash().0);
        }
        signed_by_leader
    })?;
    let mut report = RebuildReport {
        records: 0,
        idem_entries: 0,
        decisions: 0,
        decisions_kept_signed: 0,
        elapsed: Duration::ZERO,
    };
    // The base snapshot's own idempotency index stands for the records at
    // or below the base.
    if let Some(base) = wal_base {
        let mut b = Batch::new();
        report.idem_entries += crate::base::put_snapshot_idem(&node, &mut b)?;
        store.commit(b)?;
        let kept = crate::base::count_derived_through(&*store, base.index)?;
        let mut b = Batch::new();
        b.put(
            Space::Meta,
            crate::base::META_BASE_DERIVED.as_bytes().to_vec(),
            kept.encode(),
        );
        store.commit(b)?;
    }
    let last = crate::base::log_end(&*store)?;
    let mut from = node.index + 1;
    while from <= last {
        let to = last.min(from + REINDEX_CHUNK_RECORDS - 1);
        let mut b = Batch::new();
        for item in WalIter::new(&*store, from, to, node.head_record) {
            let v = item?;
            let acc = apply_record(&mut node, &v.record, Verify::Trusted).map_err(|source| {
                RecoveryError::Divergence {
                    location: store.location(),
                    index: v.index,
                    source,
                }
            })?;
            let entry = match leader {
                Some(k) => Entry::from_accepted_signed(acc, k),
                None => Entry::from_accepted(acc),
            };
            let enc = entry.encode()?;
            b.put(Space::Idem, enc.idem_key, enc.idem_frame);
            report.idem_entries += 1;
            if let Some((h, f)) = enc.decision.filter(|_| decisions) {
                if signed_kept.remove(&h.0) {
                    report.decisions_kept_signed += 1;
                } else {
                    b.put(Space::Decisions, h.0.to_vec(), f);
                }
                report.decisions += 1;
            }
            report.records += 1;
        }
        store.commit(b)?;
        from = to + 1;
        if report.records.is_multiple_of(PROGRESS_EVERY_RECORDS) || from > last {
            progress(&Progress {
                phase: Phase::Reindex,
                done: report.records,
                total: last,
            });
        }
    }
    let stale: Vec<[u8; 32]> = signed_kept.into_iter().collect();
    for chunk in stale.chunks(crate::store::SCAN_ENTRIES_MAX) {
        let mut b = Batch::new();
        for k in chunk {
            b.delete(Space::Decisions, k.to_vec());
        }
        store.commit(b)?;
    }
    report.elapsed = t0.elapsed();
    Ok(report)
}

/// Delete every entry of a (derived) space but those `keep` says to keep,
/// a page at a time (one commit per page): a long log's keys are never all
/// held in memory.
fn clear_space<S: LogStore + ?Sized>(
    store: &mut S,
    space: Space,
    keep: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<(), StoreError> {
    let mut from: Vec<u8> = vec![];
    loop {
        let rows = store.scan(space, &from, None, CLEAR_PAGE_ENTRIES)?;
        let Some((last, _)) = rows.last() else { break };
        // The next key after `last` in byte order is `last ++ [0]`; keys
        // deleted below it do not move it.
        from = last.clone();
        from.push(0);
        let mut b = Batch::new();
        for (k, v) in &rows {
            if !keep(k, v) {
                b.delete(space, k.clone());
            }
        }
        if !b.is_empty() {
            store.commit(b)?;
        }
        // Not `rows.len() < CLEAR_PAGE_ENTRIES`: a scan also stops at
        // `SCAN_BYTES_MAX` of values, so a short page is not the last one.
    }
    Ok(())
}

/// Entries a rebuild reads (and deletes) per page: decisions are ~2.4 KB,
/// so a page holds ~10 MB.
const CLEAR_PAGE_ENTRIES: usize = 4_096;

/// Records at the end of the log whose entries [`audit_indexes`] looks up
/// one by one. The newest records are the ones a crash or a cut touches.
pub const AUDIT_TAIL_RECORDS: u64 = 256;

/// What [`audit_indexes`] found. `findings` empty: the indexes agree with
/// the log as far as the audit looks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexAudit {
    /// Records of the log (after its base, if any).
    pub records: u64,
    pub idem_entries: u64,
    pub decisions: u64,
    pub findings: Vec<String>,
}

impl IndexAudit {
    pub fn is_sound(&self) -> bool {
        self.findings.is_empty()
    }
}

/// A leader's start-up check of its derived indexes against its log, in
/// time that does not grow with the log: the entry counts (one idempotency
/// entry and one decision per record; a based log also holds the window of
/// the snapshot at its base) and each entry of the last
/// [`AUDIT_TAIL_RECORDS`] records. The node answers repeats and
/// `GET /decisions/{hash}` from these indexes, so a missing or orphan entry
/// changes answers; the full check is `verify` with `check_indexes`.
/// `last` is the log's last index, as recovery found it.
pub fn audit_indexes<S: LogStore + ?Sized>(
    store: &S,
    last: u64,
) -> Result<IndexAudit, RecoveryError> {
    let base = crate::base::wal_base(store)?.map_or(0, |b| b.index);
    let records = last.saturating_sub(base);
    let idem_entries = store.count(Space::Idem)?;
    let decisions = store.count(Space::Decisions)?;
    let mut findings = vec![];
    if base == 0 && idem_entries != records {
        findings.push(format!(
            "{idem_entries} idempotency entries for {records} records (one each expected)"
        ));
    }
    // What the store holds for records at or below the base (meta
    // `base_derived`); a store based before it was kept gets bounds only.
    let kept = if base > 0 {
        crate::base::base_derived(store)?
    } else {
        Some(crate::base::BaseDerived::default())
    };
    match kept {
        Some(k) => {
            if base > 0 && idem_entries != k.idem.saturating_add(records) {
                findings.push(format!(
                    "{idem_entries} idempotency entries for the {records} records after the WAL base {base} and the {} kept for those at or below it",
                    k.idem
                ));
            }
            if decisions != k.decisions.saturating_add(records) {
                findings.push(format!(
                    "{decisions} decisions for {records} records{} (one each expected)",
                    if k.decisions > 0 {
                        format!(
                            " and the {} kept at or below the WAL base {base}",
                            k.decisions
                        )
                    } else {
                        String::new()
                    }
                ));
            }
        }
        None => {
            if idem_entries < records {
                findings.push(format!(
                    "{idem_entries} idempotency entries for the {records} records after the WAL base {base}"
                ));
            }
            let window_max = swoosh_core::state::IDEM_KEYS_TOTAL_MAX as u64;
            if idem_entries > records + window_max {
                findings.push(format!(
                    "{idem_entries} idempotency entries for the {records} records after the WAL base {base} and a window of at most {window_max}"
                ));
            }
            if decisions != records {
                findings.push(format!(
                    "{decisions} decisions for {records} records (one each expected)"
                ));
            }
        }
    }
    let from = (base + 1).max(last.saturating_sub(AUDIT_TAIL_RECORDS - 1));
    for index in from..=last {
        let v = crate::wal::read_record(store, index)?;
        crate::recovery::check_indexes(store, &v, true, None, &mut |f| findings.push(f))?;
    }
    Ok(IndexAudit {
        records,
        idem_entries,
        decisions,
        findings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemStore;

    /// Across pages, and deleting as it goes: exactly the entries `keep`
    /// refuses are gone, whatever page they were on.
    #[test]
    fn clear_space_pages_through_a_space_larger_than_a_page() {
        let mut s = MemStore::new("clear", crate::Durability::Sync);
        let n = CLEAR_PAGE_ENTRIES * 2 + 17;
        let mut b = Batch::new();
        for i in 0..n as u32 {
            b.put(Space::Idem, i.to_be_bytes().to_vec(), vec![(i % 3) as u8]);
        }
        s.commit(b).unwrap();
        clear_space(&mut s, Space::Idem, &mut |_, v| v[0] == 0).unwrap();
        let left = s.scan(Space::Idem, &[], None, usize::MAX).unwrap();
        let want: Vec<u32> = (0..n as u32).filter(|i| i % 3 == 0).collect();
        let got: Vec<u32> = left
            .iter()
            .map(|(k, _)| u32::from_be_bytes(k[..].try_into().unwrap()))
            .collect();
        assert_eq!(got, want);
    }

    /// A page the scan cut short at its byte bound (large decisions) is not
    /// the last one.
    #[test]
    fn clear_space_goes_on_past_a_page_the_byte_bound_cut_short() {
        let mut s = MemStore::new("clear-bytes", crate::Durability::Sync);
        let value = crate::store::SCAN_BYTES_MAX / (CLEAR_PAGE_ENTRIES / 2);
        let n = CLEAR_PAGE_ENTRIES;
        for chunk in (0..n as u32).collect::<Vec<_>>().chunks(256) {
            let mut b = Batch::new();
            for i in chunk {
                b.put(Space::Decisions, i.to_be_bytes().to_vec(), vec![0; value]);
            }
            s.commit(b).unwrap();
        }
        let first = s
            .scan(Space::Decisions, &[], None, CLEAR_PAGE_ENTRIES)
            .unwrap();
        assert!(first.len() < n, "the byte bound cuts the first page short");
        drop(first);
        clear_space(&mut s, Space::Decisions, &mut |_, _| false).unwrap();
        assert_eq!(s.count(Space::Decisions).unwrap(), 0);
    }
}
