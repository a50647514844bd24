//! The commit journal of the LMDB backend: one `fdatasync` per durable commit.
//!
//! An LMDB commit syncs twice (the data pages, then the meta page), and its
//! data sync flushes pages scattered over the file. A batch of appends and
//! index puts (what the WAL writer commits for every group of transitions) is
//! instead written as one entry at the head of a preallocated ring file,
//! `journal`, and made durable by one `fdatasync` of that sequential write.
//! The commit returns then; the batch is readable at once from an in-memory
//! overlay, and a background thread folds journaled batches into LMDB (one
//! ordinary, fully synced LMDB transaction per group of entries) and drops
//! them from the overlay. Every other batch (snapshots, metadata, deletes,
//! truncation, oversized batches) waits until the overlay is empty and
//! commits to LMDB directly, so LMDB alone holds everything the overlay does
//! not, and the overlay only ever holds appends and puts on top of it.
//!
//! Recovery: LMDB records, in the transaction that folds them, the sequence
//! number of the last folded entry and where the next one goes. Opening the
//! store reads the entries after it (each checked by its BLAKE3 hash, its
//! journal id and its sequence number) and folds them before anything else
//! can read the store. A torn last entry (a crash inside its write, so never
//! acknowledged) ends the journal; a missing or damaged entry is refused if
//! any later entry of this journal is anywhere in the ring (found by reading
//! every block boundary, not by trusting the damaged header), because
//! acknowledged commits would be lost. A NoSync store folds the journal at
//! open too, then commits to LMDB directly.
//!
//! Entry layout (all integers little-endian; `docs/wal-format.md` §6a):
//!
//! ```text
//! magic "SWJRNL\0\x01" (8) | journal id (16) | seq u64 | body length u32 |
//! op count u32 | BLAKE3 derive_key("swoosh journal entry v1",
//!     first 40 bytes ‖ body) (32) | body | zeros to 4 KiB
//! body op: tag u8 (1 append, 2 put) | space u8 | key length u16 |
//!          value length u32 | key | value
//! ```
//!
//! The file is [`JOURNAL_BYTES_MAX`] of written zeros from its creation
//! ([`preallocate`]), and entries wrap to offset 0 at its end: an entry's
//! `fdatasync` then writes data blocks only, never the block allocation and
//! file size an appending write needs (measured: a lone commit cost 1.6–1.8×
//! the raw `fdatasync` appending, 0.9–1.2× in place). An entry is never
//! written over one that is not yet folded: the writer waits for the fold.

use crate::store::{Op, Space, StoreError};
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// The journal's file name in the store directory.
pub const JOURNAL_FILE: &str = "journal";
/// Size of the ring, written as zeros when the journal is created: 16
/// entries of the largest size, ~4,000 transitions of ~4 KB.
pub const JOURNAL_BYTES_MAX: u64 = 16 << 20;
/// Largest journal entry; a larger batch commits to LMDB directly. Its two
/// LMDB syncs are shared by many records already, and journaling it would
/// write every byte twice: measured, batches of 1,024 records (~4 MB) ran
/// up to 4× slower through the journal, batches of 64 (~270 KB) 1.2–2.3×
/// faster.
pub const JOURNAL_ENTRY_BYTES_MAX: usize = 1 << 20;
/// Most entry bytes folded into LMDB by one transaction.
pub const JOURNAL_FOLD_BYTES_MAX: usize = 32 << 20;
/// An entry waits up to this long before it is folded, so one LMDB
/// transaction takes many entries: folding each entry at once cost the lone
/// client's node an LMDB commit (two more `fdatasync`s and ~27 % of the
/// process's CPU samples) per transition.
pub const JOURNAL_FOLD_DELAY: std::time::Duration = std::time::Duration::from_millis(20);
/// Unfolded entry bytes that start a fold without waiting for the delay.
pub const JOURNAL_FOLD_EAGER_BYTES: usize = 4 << 20;
/// Entries start on this boundary (one page: a write never shares a page
/// with the entry before it).
pub const JOURNAL_BLOCK_BYTES: u64 = 4096;

const MAGIC: [u8; 8] = *b"SWJRNL\x00\x01";
const HEAD_BYTES: usize = 40;
const HEADER_BYTES: usize = HEAD_BYTES + 32;
const OP_HEADER_BYTES: usize = 8;
const TAG_APPEND: u8 = 1;
const TAG_PUT: u8 = 2;

/// Identifies one journal file, so entries of another store's journal (or of
/// a journal this store replaced) are never replayed.
pub type JournalId = [u8; 16];

/// One operation of a journal entry: an append (`space` is the WAL, `key`
/// its big-endian index) or a put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct JOp {
    pub space: Space,
    pub key: Vec<u8>,
    pub value: Arc<Vec<u8>>,
}

/// A journaled batch, from its write until LMDB holds it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub seq: u64,
    pub offset: u64,
    /// Bytes the entry occupies in the file, padding included.
    pub len: u64,
    pub ops: Vec<JOp>,
    /// When it was journaled (the fold delay counts from here).
    pub at: std::time::Instant,
}

impl Entry {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// True when `batch` may go through the journal: only appends and puts of
/// derived indexes, and small enough for one entry.
pub(crate) fn journalable(ops: &[Op], bytes: usize) -> bool {
    let overhead = HEADER_BYTES + ops.len() * OP_HEADER_BYTES;
    !ops.is_empty()
        && bytes + overhead <= JOURNAL_ENTRY_BYTES_MAX
        && ops.iter().all(|op| match op {
            Op::Append { .. } => true,
            Op::Put { space, .. } => matches!(space, Space::Idem | Space::Decisions),
            _ => false,
        })
}

/// The journal operations of a batch [`journalable`] accepted.
pub(crate) fn to_jops(ops: Vec<Op>) -> Vec<JOp> {
    ops.into_iter()
        .filter_map(|op| match op {
            Op::Append { index, value } => Some(JOp {
                space: Space::Wal,
                key: crate::store::index_key(index).to_vec(),
                value: Arc::new(value),
            }),
            Op::Put { space, key, value } => Some(JOp {
                space,
                key,
                value: Arc::new(value),
            }),
            _ => None,
        })
        .collect()
}

/// The store operations of journal operations (to validate a replay).
pub(crate) fn to_ops(jops: &[JOp]) -> Vec<Op> {
    jops.iter()
        .map(|j| match j.space {
            Space::Wal => Op::Append {
                index: crate::store::key_index(&j.key).unwrap_or(0),
                value: j.value.to_vec(),
            },
            space => Op::Put {
                space,
                key: j.key.clone(),
                value: j.value.to_vec(),
            },
        })
        .collect()
}

fn space_of(slot: u8) -> Option<Space> {
    Space::ALL.into_iter().find(|s| s.slot() == slot as usize)
}

fn padded(len: usize) -> u64 {
    (len as u64).div_ceil(JOURNAL_BLOCK_BYTES) * JOURNAL_BLOCK_BYTES
}

/// The bytes of one entry, padded to [`JOURNAL_BLOCK_BYTES`].
pub(crate) fn encode_entry(id: &JournalId, seq: u64, ops: &[JOp]) -> Vec<u8> {
    let body_len: usize = ops
        .iter()
        .map(|o| OP_HEADER_BYTES + o.key.len() + o.value.len())
        .sum();
    let total = HEADER_BYTES + body_len;
    let mut out = Vec::with_capacity(padded(total) as usize);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(id);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 32]);
    for o in ops {
        out.push(if o.space == Space::Wal {
            TAG_APPEND
        } else {
            TAG_PUT
        });
        out.push(o.space.slot() as u8);
        out.extend_from_slice(&(o.key.len() as u16).to_le_bytes());
        out.extend_from_slice(&(o.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&o.key);
        out.extend_from_slice(&o.value);
    }
    let hash = entry_hash(&out[..HEAD_BYTES], &out[HEADER_BYTES..]);
    out[HEAD_BYTES..HEADER_BYTES].copy_from_slice(hash.as_bytes());
    out.resize(padded(total) as usize, 0);
    out
}

fn entry_hash(head: &[u8], body: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new_derive_key("swoosh journal entry v1");
    h.update(head);
    h.update(body);
    h.finalize()
}

/// What the file holds at an offset, for the entry `seq` of journal `id`.
#[derive(Debug)]
pub(crate) enum Found {
    Entry(Entry),
    /// Not that entry: zeros, an older entry, another journal's, or bytes
    /// that are not an entry at all.
    Nothing,
    /// The header names this entry but the entry does not check out (a torn
    /// or damaged write).
    Broken {
        why: String,
    },
}

/// Read the entry `seq` at `offset`, if it is there.
pub(crate) fn read_entry(
    file: &File,
    file_len: u64,
    id: &JournalId,
    seq: u64,
    offset: u64,
) -> std::io::Result<Found> {
    if offset
        .checked_add(HEADER_BYTES as u64)
        .is_none_or(|e| e > file_len)
    {
        return Ok(Found::Nothing);
    }
    let mut header = [0u8; HEADER_BYTES];
    file.read_exact_at(&mut header, offset)?;
    if header[..8] != MAGIC || header[8..24] != id[..] {
        return Ok(Found::Nothing);
    }
    let got_seq = u64::from_le_bytes(header[24..32].try_into().unwrap_or_default());
    if got_seq != seq {
        return Ok(Found::Nothing);
    }
    let body_len = u32::from_le_bytes(header[32..36].try_into().unwrap_or_default()) as usize;
    let count = u32::from_le_bytes(header[36..40].try_into().unwrap_or_default()) as usize;
    let len = padded(HEADER_BYTES + body_len);
    let broken = |why: String| Found::Broken { why };
    if HEADER_BYTES + body_len > JOURNAL_ENTRY_BYTES_MAX {
        return Ok(broken(format!(
            "it declares {body_len} body bytes, more than an entry may hold"
        )));
    }
    if offset + (HEADER_BYTES + body_len) as u64 > file_len {
        return Ok(broken(format!(
            "it declares {body_len} body bytes but the file ends first"
        )));
    }
    let mut body = vec![0u8; body_len];
    file.read_exact_at(&mut body, offset + HEADER_BYTES as u64)?;
    if entry_hash(&header[..HEAD_BYTES], &body).as_bytes()[..] != header[HEAD_BYTES..] {
        return Ok(broken("its hash does not match its bytes".into()));
    }
    match decode_body(&body, count) {
        Ok(ops) => Ok(Found::Entry(Entry {
            seq,
            offset,
            len,
            ops,
            at: std::time::Instant::now(),
        })),
        Err(why) => Ok(broken(why)),
    }
}

fn decode_body(body: &[u8], count: usize) -> Result<Vec<JOp>, String> {
    let mut ops = Vec::with_capacity(count.min(body.len() / OP_HEADER_BYTES + 1));
    let mut at = 0usize;
    for n in 0..count {
        let h = body
            .get(at..at + OP_HEADER_BYTES)
            .ok_or_else(|| format!("operation {n} runs past the body"))?;
        let (tag, slot) = (h[0], h[1]);
        let klen = u16::from_le_bytes([h[2], h[3]]) as usize;
        let vlen = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        at += OP_HEADER_BYTES;
        let space = space_of(slot).ok_or_else(|| format!("operation {n} names space {slot}"))?;
        let ok = match tag {
            TAG_APPEND => space == Space::Wal && klen == 8,
            TAG_PUT => matches!(space, Space::Idem | Space::Decisions),
            _ => false,
        };
        if !ok {
            return Err(format!(
                "operation {n} has tag {tag} on space {space}, which a journal never holds"
            ));
        }
        let key = body
            .get(at..at + klen)
            .ok_or_else(|| format!("operation {n}'s key runs past the body"))?;
        let value = body
            .get(at + klen..at + klen + vlen)
            .ok_or_else(|| format!("operation {n}'s value runs past the body"))?;
        at += klen + vlen;
        ops.push(JOp {
            space,
            key: key.to_vec(),
            value: Arc::new(value.to_vec()),
        });
    }
    if at != body.len() {
        return Err(format!(
            "{} bytes follow the last operation",
            body.len() - at
        ));
    }
    Ok(ops)
}

/// The entries after `folded` (the last folded sequence number), starting
/// at `offset`: each next entry is where the previous one ends, or at 0
/// where the writer wrapped. Stops at the first position holding neither,
/// unless a later entry is anywhere in the ring: then an acknowledged entry
/// is damaged, and the store must not open.
pub(crate) fn replay(
    file: &File,
    id: &JournalId,
    folded: u64,
    offset: u64,
    location: &str,
) -> Result<Vec<Entry>, StoreError> {
    let io = |e: std::io::Error| StoreError::Open {
        location: location.to_string(),
        detail: format!("reading the journal: {e}"),
    };
    let file_len = file.metadata().map_err(io)?.len();
    let mut out: Vec<Entry> = vec![];
    let (mut seq, mut at) = (folded + 1, offset);
    loop {
        let mut broken = None;
        let mut found = None;
        for pos in [at, 0] {
            match read_entry(file, file_len, id, seq, pos).map_err(io)? {
                Found::Entry(e) => {
                    found = Some(e);
                    break;
                }
                Found::Broken { why } => broken = broken.or(Some((pos, why))),
                Found::Nothing => {}
            }
            if at == 0 {
                break;
            }
        }
        if let Some(e) = found {
            at = e.end();
            seq += 1;
            out.push(e);
            continue;
        }
        // Entry `seq` is not there. That ends the journal only if nothing
        // was journaled after it: the writer starts entry s + 1 only once
        // entry s's `fdatasync` has returned, so any later entry proves
        // `seq` was acknowledged, wherever a damaged header or length
        // would have sent the search.
        let Some((later, later_at)) = later_entry(file, file_len, id, seq).map_err(io)? else {
            // A torn last write is normal after a crash: that commit was
            // never acknowledged.
            return Ok(out);
        };
        let what = match broken {
            Some((pos, why)) => format!("journal entry {seq} at offset {pos} is damaged ({why})"),
            None if at == 0 => format!(
                "journal entry {seq} is not at offset 0 where it belongs (its header is damaged)"
            ),
            None => format!(
                "journal entry {seq} is neither at offset {at} nor at 0 where it belongs (its header is damaged)"
            ),
        };
        return Err(StoreError::Damaged {
            location: location.to_string(),
            detail: format!(
                "{what} and entry {later} at offset {later_at}, written after it, is in the journal: commits acknowledged as durable would be lost. Restore the store directory from a backup, or rebuild this node from its peers"
            ),
        });
    }
}

/// The lowest-numbered entry of journal `id` after `seq` anywhere in the
/// ring, and its offset: entry `seq + 1` by its header alone (an entry is
/// written only after every earlier one was durable, so even a torn next
/// entry proves `seq` was acknowledged), any later one only if it checks
/// out whole (its hash), so a bit flipped in an old entry's header proves
/// nothing.
fn later_entry(
    file: &File,
    file_len: u64,
    id: &JournalId,
    seq: u64,
) -> std::io::Result<Option<(u64, u64)>> {
    // Read in chunks of whole blocks: one `pread` per block would be 4,096
    // system calls for the 16 MiB ring.
    const CHUNK_BYTES: u64 = 256 * JOURNAL_BLOCK_BYTES;
    let mut best: Option<(u64, u64)> = None;
    let mut buf = vec![0u8; CHUNK_BYTES as usize];
    let mut chunk_at = 0u64;
    while chunk_at < file_len {
        let n = (file_len - chunk_at).min(CHUNK_BYTES) as usize;
        file.read_exact_at(&mut buf[..n], chunk_at)?;
        for (block, bytes) in buf[..n].chunks(JOURNAL_BLOCK_BYTES as usize).enumerate() {
            let Some(head) = bytes.get(..HEAD_BYTES) else {
                continue;
            };
            if head[..8] != MAGIC || head[8..24] != id[..] {
                continue;
            }
            let mut s = [0u8; 8];
            s.copy_from_slice(&head[24..32]);
            let got = u64::from_le_bytes(s);
            let at = chunk_at + block as u64 * JOURNAL_BLOCK_BYTES;
            // A header alone proves little: an old, folded entry whose
            // sequence number took a flipped bit would look "later". Only
            // the very next entry may be torn (a crash inside its write);
            // any other must check out whole.
            let proves = got == seq + 1
                || (got > seq
                    && matches!(read_entry(file, file_len, id, got, at)?, Found::Entry(_)));
            if proves && best.is_none_or(|(b, _)| got < b) {
                best = Some((got, at));
            }
        }
        chunk_at += n as u64;
    }
    Ok(best)
}

/// Fill the file with zeros up to [`JOURNAL_BYTES_MAX`] and sync it, so every
/// later entry overwrites allocated blocks.
pub(crate) fn preallocate(file: &File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len >= JOURNAL_BYTES_MAX {
        return Ok(());
    }
    let zeros = vec![0u8; 1 << 20];
    let mut at = len;
    while at < JOURNAL_BYTES_MAX {
        let n = (JOURNAL_BYTES_MAX - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_all()
}

/// Moves journaled entries into LMDB; implemented by the backend.
pub(crate) trait Fold: Send + 'static {
    /// Apply `entries` (in order) in one durable transaction that also
    /// records the last one's sequence number and `next_offset`.
    fn fold(&mut self, entries: &[Arc<Entry>], next_offset: u64) -> Result<(), StoreError>;
    /// Everything is folded and the store is closing.
    fn close(&mut self) -> Result<(), StoreError>;
}

/// The journal's writing end: the file and where the next entry goes.
pub(crate) struct Writer {
    file: File,
    id: JournalId,
    head: u64,
    next_seq: u64,
}

type Overlay = BTreeMap<Vec<u8>, (u64, Arc<Vec<u8>>)>;

#[derive(Default)]
struct Pending {
    entries: VecDeque<Arc<Entry>>,
    /// Per space, the newest journaled value of each key and the sequence
    /// number of the entry that wrote it.
    maps: [Overlay; 5],
    failed: Option<StoreError>,
    stop: bool,
    paused: bool,
    /// Entry bytes in `entries`.
    bytes: usize,
    /// Callers waiting for the fold (for ring space, or to commit to LMDB
    /// directly): the fold does not wait for its delay while any are.
    waiting: usize,
}

struct Shared {
    location: String,
    writer: Mutex<Writer>,
    pending: Mutex<Pending>,
    changed: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock cannot leave these structures
    // half-updated (every update is a single push/pop/insert), so go on.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The journal of one open store: writer, overlay and fold thread.
pub(crate) struct Journal {
    shared: Arc<Shared>,
    folder: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("location", &self.shared.location)
            .finish()
    }
}

impl Journal {
    /// Start writing `file` (locked by the caller) at offset 0 with sequence
    /// number `next_seq`, and the thread that folds into LMDB.
    pub fn start(
        location: String,
        file: File,
        id: JournalId,
        next_seq: u64,
        folder: Box<dyn Fold>,
    ) -> Result<Journal, StoreError> {
        let shared = Arc::new(Shared {
            location,
            writer: Mutex::new(Writer {
                file,
                id,
                head: 0,
                next_seq,
            }),
            pending: Mutex::new(Pending::default()),
            changed: Condvar::new(),
        });
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("swoosh-journal-fold".into())
            .spawn(move || fold_loop(s, folder))
            .map_err(|e| StoreError::Open {
                location: shared.location.clone(),
                detail: format!("starting the journal's fold thread: {e}"),
            })?;
        Ok(Journal {
            shared,
            folder: Mutex::new(Some(handle)),
        })
    }

    fn err(&self, op: &'static str, e: std::io::Error) -> StoreError {
        StoreError::Backend {
            location: self.shared.location.clone(),
            op,
            detail: e.to_string(),
        }
    }

    /// Journal `ops` durably. `check` runs first, under the writer's lock,
    /// with the last WAL index the overlay holds; an `Err` from it refuses
    /// the batch with nothing written.
    pub fn commit(
        &self,
        ops: Vec<Op>,
        check: impl FnOnce(Option<u64>, &[Op]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut w = lock(&self.shared.writer);
        self.failed()?;
        check(self.wal_last(), &ops)?;
        let jops = to_jops(ops);
        let bytes = encode_entry(&w.id, w.next_seq, &jops);
        let len = bytes.len() as u64;
        let pos = self.place(&w, len)?;
        let written = w
            .file
            .write_all_at(&bytes, pos)
            .and_then(|()| w.file.sync_data());
        if let Err(e) = written {
            // After a failed fsync the page cache cannot be trusted to hold
            // what was written; nothing more is journaled until a reopen.
            let err = self.err("writing the journal (write + fdatasync)", e);
            lock(&self.shared.pending).failed = Some(err.clone());
            return Err(err);
        }
        let entry = Arc::new(Entry {
            seq: w.next_seq,
            offset: pos,
            len,
            ops: jops,
            at: std::time::Instant::now(),
        });
        w.head = pos + len;
        w.next_seq += 1;
        let mut p = lock(&self.shared.pending);
        for op in &entry.ops {
            p.maps[op.space.slot()].insert(op.key.clone(), (entry.seq, op.value.clone()));
        }
        let (was_empty, was_eager) = (p.entries.is_empty(), p.bytes >= JOURNAL_FOLD_EAGER_BYTES);
        p.bytes += entry.len as usize;
        p.entries.push_back(entry);
        // The fold sleeps without a deadline only while nothing is pending,
        // and otherwise wakes by itself when its delay is up; it needs a
        // notice only for the first entry and for crossing the eager size.
        // (One notice per commit was a futex wake and a cross-CPU wake-up
        // of the fold thread on every lone client's transition.) The writer
        // lock is held, so no other writer waits on `changed` here.
        if was_empty || (!was_eager && p.bytes >= JOURNAL_FOLD_EAGER_BYTES) {
            self.shared.changed.notify_all();
        }
        Ok(())
    }

    /// Where an entry of `len` bytes goes: the head, or 0 when it would pass
    /// the end of the ring; waits while that space holds unfolded entries.
    fn place(&self, w: &Writer, len: u64) -> Result<u64, StoreError> {
        let pos = if w.head + len > JOURNAL_BYTES_MAX {
            0
        } else {
            w.head
        };
        let mut p = lock(&self.shared.pending);
        loop {
            if let Some(e) = &p.failed {
                return Err(e.clone());
            }
            if !p
                .entries
                .iter()
                .any(|e| e.offset < pos + len && pos < e.end())
            {
                return Ok(pos);
            }
            p = self.wait_for_fold(p);
        }
    }

    fn wait_for_fold<'a>(&'a self, mut p: MutexGuard<'a, Pending>) -> MutexGuard<'a, Pending> {
        p.waiting += 1;
        self.shared.changed.notify_all();
        let mut p = self
            .shared
            .changed
            .wait(p)
            .unwrap_or_else(|e| e.into_inner());
        p.waiting -= 1;
        p
    }

    fn failed(&self) -> Result<(), StoreError> {
        match &lock(&self.shared.pending).failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Hold the writer and wait until LMDB holds every journaled entry: the
    /// caller may then commit to LMDB directly. Nothing is journaled while
    /// the returned guard lives.
    pub fn barrier(&self) -> Result<MutexGuard<'_, Writer>, StoreError> {
        let w = lock(&self.shared.writer);
        let mut p = lock(&self.shared.pending);
        loop {
            if let Some(e) = &p.failed {
                return Err(e.clone());
            }
            if p.entries.is_empty() {
                return Ok(w);
            }
            p = self.wait_for_fold(p);
        }
    }

    /// The overlay's value of `key`, if journaled and not yet folded.
    pub fn get(&self, space: Space, key: &[u8]) -> Option<Arc<Vec<u8>>> {
        lock(&self.shared.pending).maps[space.slot()]
            .get(key)
            .map(|(_, v)| v.clone())
    }

    /// The overlay's entries with `from <= key < to`, at most `limit`.
    pub fn range(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Vec<u8>, Arc<Vec<u8>>)> {
        let p = lock(&self.shared.pending);
        let upper = match to {
            Some(t) => Bound::Excluded(t),
            None => Bound::Unbounded,
        };
        p.maps[space.slot()]
            .range::<[u8], _>((Bound::Included(from), upper))
            .take(limit)
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect()
    }

    pub fn last(&self, space: Space) -> Option<(Vec<u8>, Arc<Vec<u8>>)> {
        lock(&self.shared.pending).maps[space.slot()]
            .last_key_value()
            .map(|(k, (_, v))| (k.clone(), v.clone()))
    }

    pub fn keys(&self, space: Space) -> Vec<Vec<u8>> {
        lock(&self.shared.pending).maps[space.slot()]
            .keys()
            .cloned()
            .collect()
    }

    fn wal_last(&self) -> Option<u64> {
        self.last(Space::Wal)
            .and_then(|(k, _)| crate::store::key_index(&k))
    }

    /// Entries journaled and not yet in LMDB.
    pub fn unfolded(&self) -> usize {
        lock(&self.shared.pending).entries.len()
    }

    /// Stop or restart folding (tests: holds entries in the journal only).
    pub fn pause(&self, paused: bool) {
        lock(&self.shared.pending).paused = paused;
        self.shared.changed.notify_all();
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        {
            let mut p = lock(&self.shared.pending);
            p.stop = true;
            p.paused = false;
        }
        self.shared.changed.notify_all();
        if let Some(h) = lock(&self.folder).take() {
            // The fold thread never panics on bad data (it reports errors);
            // a panic here would be a bug, and dropping must not panic.
            let _ = h.join();
        }
    }
}

fn fold_loop(shared: Arc<Shared>, mut folder: Box<dyn Fold>) {
    loop {
        let batch: Vec<Arc<Entry>> = {
            let mut p = lock(&shared.pending);
            while !p.stop {
                if p.entries.is_empty() || p.paused {
                    p = shared.changed.wait(p).unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                let age = p
                    .entries
                    .front()
                    .map_or(JOURNAL_FOLD_DELAY, |e| e.at.elapsed());
                if p.waiting > 0 || p.bytes >= JOURNAL_FOLD_EAGER_BYTES || age >= JOURNAL_FOLD_DELAY
                {
                    break;
                }
                p = shared
                    .changed
                    .wait_timeout(p, JOURNAL_FOLD_DELAY - age)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if p.entries.is_empty() || p.failed.is_some() {
                break;
            }
            let mut bytes = 0;
            p.entries
                .iter()
                .take_while(|e| {
                    let first = bytes == 0;
                    bytes += e.len as usize;
                    first || bytes <= JOURNAL_FOLD_BYTES_MAX
                })
                .cloned()
                .collect()
        };
        let next = batch.last().map_or(0, |e| e.end());
        match folder.fold(&batch, next) {
            Ok(()) => {
                let mut p = lock(&shared.pending);
                for e in &batch {
                    p.entries.pop_front();
                    p.bytes -= e.len as usize;
                    for op in &e.ops {
                        let map = &mut p.maps[op.space.slot()];
                        if map.get(&op.key).is_some_and(|(seq, _)| *seq == e.seq) {
                            map.remove(&op.key);
                        }
                    }
                }
                drop(p);
                shared.changed.notify_all();
            }
            Err(e) => {
                // The entries stay readable from the overlay and durable in
                // the journal; the next open folds them again.
                lock(&shared.pending).failed = Some(e);
                shared.changed.notify_all();
                return;
            }
        }
    }
    let clean = lock(&shared.pending).failed.is_none();
    if clean {
        if let Err(e) = folder.close() {
            lock(&shared.pending).failed = Some(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const ID: JournalId = *b"0123456789abcdef";

    fn ops(n: u64, first: u64) -> Vec<JOp> {
        (0..n)
            .map(|i| JOp {
                space: Space::Wal,
                key: crate::store::index_key(first + i).to_vec(),
                value: Arc::new(vec![(first + i) as u8; 100 + i as usize]),
            })
            .chain(std::iter::once(JOp {
                space: Space::Decisions,
                key: vec![7; 32],
                value: Arc::new(vec![1, 2, 3]),
            }))
            .collect()
    }

    fn file_with(parts: &[(u64, Vec<u8>)]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![0u8; 1 << 16]).unwrap();
        for (at, b) in parts {
            f.write_all_at(b, *at).unwrap();
        }
        let f = std::fs::OpenOptions::new().read(true).open(&path).unwrap();
        (dir, f)
    }

    #[test]
    fn entries_round_trip_and_pad_to_a_block() {
        let o = ops(3, 10);
        let b = encode_entry(&ID, 5, &o);
        assert_eq!(b.len() as u64 % JOURNAL_BLOCK_BYTES, 0);
        let (_d, f) = file_with(&[(8192, b)]);
        match read_entry(&f, 1 << 16, &ID, 5, 8192).unwrap() {
            Found::Entry(e) => {
                assert_eq!(e.ops, o);
                assert_eq!((e.seq, e.offset, e.len), (5, 8192, 4096));
            }
            other => panic!("{other:?}"),
        }
        // Another sequence number or journal id is not this entry.
        assert!(matches!(
            read_entry(&f, 1 << 16, &ID, 6, 8192).unwrap(),
            Found::Nothing
        ));
        assert!(matches!(
            read_entry(&f, 1 << 16, b"fedcba9876543210", 5, 8192).unwrap(),
            Found::Nothing
        ));
    }

    #[test]
    fn every_flipped_byte_of_an_entry_is_refused_or_not_an_entry() {
        let o = ops(2, 1);
        let b = encode_entry(&ID, 1, &o);
        let used = HEADER_BYTES
            + o.iter()
                .map(|x| 8 + x.key.len() + x.value.len())
                .sum::<usize>();
        for i in 0..used {
            let mut d = b.clone();
            d[i] ^= 0x10;
            let (_dir, f) = file_with(&[(0, d)]);
            match read_entry(&f, 1 << 16, &ID, 1, 0).unwrap() {
                Found::Entry(e) => panic!("flip at {i} accepted: {e:?}"),
                Found::Broken { .. } | Found::Nothing => {}
            }
        }
    }

    #[test]
    fn replay_follows_the_ring_and_stops_at_a_torn_tail() {
        let e1 = encode_entry(&ID, 1, &ops(1, 1));
        let e2 = encode_entry(&ID, 2, &ops(1, 2));
        // Entry 3 wrapped to offset 0, over an older entry 0's bytes; a
        // stale entry from before sits where entry 3 would have gone.
        let e3 = encode_entry(&ID, 3, &ops(1, 3));
        let stale = encode_entry(&ID, 0, &ops(1, 9));
        let mut torn = encode_entry(&ID, 4, &ops(1, 4));
        torn[HEADER_BYTES + 3] ^= 1;
        let (_d, f) = file_with(&[
            (40960, e1),
            (45056, e2),
            (49152, stale),
            (0, e3),
            (4096, torn),
        ]);
        let got = replay(&f, &ID, 0, 40960, "t").unwrap();
        assert_eq!(
            got.iter().map(|e| (e.seq, e.offset)).collect::<Vec<_>>(),
            vec![(1, 40960), (2, 45056), (3, 0)]
        );
        // Starting later skips what is folded.
        let got = replay(&f, &ID, 2, 49152, "t").unwrap();
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn a_damaged_entry_before_an_intact_one_is_refused() {
        let mut e1 = encode_entry(&ID, 1, &ops(1, 1));
        e1[HEADER_BYTES + 2] ^= 1;
        let e2 = encode_entry(&ID, 2, &ops(1, 2));
        let (_d, f) = file_with(&[(0, e1), (4096, e2)]);
        let err = replay(&f, &ID, 0, 0, "t").unwrap_err().to_string();
        assert!(err.contains("entry 1 at offset 0 is damaged"), "{err}");
    }

    /// Replay of entries 1, 2, 3 (at 0, 4096, 8192) with byte `at` of entry
    /// 1 xored with `flip`.
    fn replay_with_entry_1_flipped(at: usize, flip: u8) -> Result<Vec<Entry>, StoreError> {
        let mut e1 = encode_entry(&ID, 1, &ops(1, 1));
        e1[at] ^= flip;
        let e2 = encode_entry(&ID, 2, &ops(1, 2));
        let e3 = encode_entry(&ID, 3, &ops(1, 3));
        let (_d, f) = file_with(&[(0, e1), (4096, e2), (8192, e3)]);
        replay(&f, &ID, 0, 0, "t")
    }

    #[test]
    fn a_damaged_header_before_intact_entries_is_refused() {
        // (byte, flip, what the refusal says): magic, sequence number (low
        // and high byte: the damaged entry then names a later number
        // itself), and body length (low byte: past the header's hash; high
        // byte: past the end of the file, so the old successor check looked
        // 64 KiB away).
        let cases: [(usize, u8, &str); 5] = [
            (0, 0x01, "entry 1 is not at offset 0 where it belongs"),
            (24, 0x01, "entry 1 is not at offset 0 where it belongs"),
            (31, 0x80, "entry 1 is not at offset 0 where it belongs"),
            (32, 0x01, "entry 1 at offset 0 is damaged (its hash"),
            (34, 0x01, "entry 1 at offset 0 is damaged (it declares"),
        ];
        for (at, flip, says) in cases {
            let err = match replay_with_entry_1_flipped(at, flip) {
                Ok(got) => panic!(
                    "byte {at} flipped: replay ended the journal after {} entries",
                    got.len()
                ),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(says), "byte {at}: {err}");
            assert!(
                err.contains("entry 2 at offset 4096, written after it"),
                "byte {at}: {err}"
            );
        }
    }

    #[test]
    fn a_damaged_header_where_the_ring_wrapped_is_refused() {
        let e1 = encode_entry(&ID, 1, &ops(1, 1));
        let mut e2 = encode_entry(&ID, 2, &ops(1, 2));
        e2[3] ^= 0x40;
        let e3 = encode_entry(&ID, 3, &ops(1, 3));
        let (_d, f) = file_with(&[(40960, e1), (45056, e2), (0, e3)]);
        let err = replay(&f, &ID, 0, 40960, "t").unwrap_err().to_string();
        assert!(
            err.contains("entry 2 is neither at offset 45056 nor at 0"),
            "{err}"
        );
        assert!(
            err.contains("entry 3 at offset 0, written after it"),
            "{err}"
        );
    }

    /// An old, folded entry whose sequence number took a flipped bit looks
    /// like a later entry by its header; it does not check out, so it
    /// proves nothing and the journal simply ends (it used to refuse a
    /// healthy store).
    #[test]
    fn a_flipped_sequence_number_in_an_old_entry_proves_nothing() {
        let e1 = encode_entry(&ID, 1, &ops(1, 1));
        let mut old = encode_entry(&ID, 1, &ops(1, 9));
        old[31] ^= 0x40;
        let (_d, f) = file_with(&[(0, e1), (8192, old)]);
        let got = replay(&f, &ID, 1, 4096, "t").expect("opens");
        assert!(got.is_empty());
    }

    #[test]
    fn a_damaged_last_entry_ends_the_journal() {
        // Nothing was journaled after it, so it may be a write torn by a
        // crash, never acknowledged: the journal ends before it. (A flip
        // that raises its own sequence number is refused instead: no tear
        // writes a later number.)
        for (at, flip) in [(0, 0x01), (24, 0x02), (34, 0x01), (HEADER_BYTES + 2, 0x01)] {
            let e1 = encode_entry(&ID, 1, &ops(1, 1));
            let mut e2 = encode_entry(&ID, 2, &ops(1, 2));
            e2[at] ^= flip;
            // Entries of an older journal and older entries of this one,
            // with higher offsets, are not later entries.
            let other = encode_entry(b"fedcba9876543210", 7, &ops(1, 7));
            let older = encode_entry(&ID, 0, &ops(1, 9));
            let (_d, f) = file_with(&[(0, e1), (4096, e2), (8192, other), (12288, older)]);
            let got = replay(&f, &ID, 0, 0, "t").unwrap();
            assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1]);
        }
    }

    #[test]
    fn only_appends_and_index_puts_are_journaled() {
        let mut b = crate::store::Batch::new();
        b.append(1, vec![1; 10]);
        b.put(Space::Idem, vec![1], vec![2]);
        assert!(journalable(b.ops(), b.bytes()));
        let mut s = b.clone();
        s.put(Space::Snapshots, vec![0; 8], vec![1]);
        assert!(!journalable(s.ops(), s.bytes()));
        let mut t = b.clone();
        t.truncate_wal_after(0);
        assert!(!journalable(t.ops(), t.bytes()));
        let mut m = crate::store::Batch::new();
        m.put(Space::Meta, b"k".to_vec(), vec![1]);
        assert!(!journalable(m.ops(), m.bytes()));
        let mut big = crate::store::Batch::new();
        big.append(1, vec![0; JOURNAL_ENTRY_BYTES_MAX]);
        assert!(!journalable(big.ops(), big.bytes()));
        assert!(!journalable(&[], 0));
    }
}
