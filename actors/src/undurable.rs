//! The idempotency entries of records the sequencer accepted and the WAL
//! writer has not yet made durable.
//!
//! The state's bounded window evicts a project's oldest keys by WAL index,
//! and the sequencer recalls a key that left it from the store's durable
//! index. A key evicted while its record is still queued for the disk is in
//! neither: with enough of a project's records in flight (the window keeps
//! 3,072 of a project's keys after an eviction; the WAL mailbox holds 16,384
//! records, and clients that give up free their in-flight slots) a repeat
//! would have been evaluated as new and refused as stale. This set closes
//! that gap: an entry stays here from acceptance until its record is durable,
//! when the store answers for it.

use std::collections::{HashMap, VecDeque};
use swoosh_core::state::IdemEntry;

#[derive(Default)]
pub struct Undurable {
    /// project → key → entry (nested so a lookup borrows its strs).
    by_project: HashMap<Box<str>, HashMap<Box<str>, IdemEntry>>,
    /// `(index, project, key)` in acceptance (= WAL index) order.
    order: VecDeque<(u64, Box<str>, Box<str>)>,
}

impl Undurable {
    /// Remember the entry of a record just accepted (indexes increase).
    pub fn accepted(&mut self, project: &str, key: &str, entry: IdemEntry) {
        let (p, k): (Box<str>, Box<str>) = (project.into(), key.into());
        self.order.push_back((entry.index, p.clone(), k.clone()));
        self.by_project.entry(p).or_default().insert(k, entry);
    }

    /// Forget every entry whose record is durable (index `<= up_to`).
    pub fn durable(&mut self, up_to: u64) {
        while self
            .order
            .front()
            .is_some_and(|(index, _, _)| *index <= up_to)
        {
            let Some((index, p, k)) = self.order.pop_front() else {
                break;
            };
            // A key is accepted once, so the entry under it is this one;
            // the check keeps that an invariant rather than an assumption.
            let Some(keys) = self.by_project.get_mut(&p) else {
                continue;
            };
            if keys.get(&k).map(|e| e.index) == Some(index) {
                keys.remove(&k);
                if keys.is_empty() {
                    self.by_project.remove(&p);
                }
            }
        }
    }

    pub fn get(&self, project: &str, key: &str) -> Option<&IdemEntry> {
        self.by_project.get(project).and_then(|m| m.get(key))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_project.values().map(HashMap::len).sum()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_project.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swoosh_core::Hash;

    fn entry(index: u64) -> IdemEntry {
        IdemEntry {
            content_hash: Hash([index as u8; 32]),
            transition: "Control_Pause".into(),
            index,
            state_post_hash: Hash([1; 32]),
            decision: Hash([2; 32]),
        }
    }

    #[test]
    fn entries_stay_until_their_record_is_durable() {
        let mut u = Undurable::default();
        u.accepted("a", "k1", entry(1));
        u.accepted("b", "k1", entry(2));
        u.accepted("a", "k2", entry(3));
        assert_eq!(u.len(), 3);
        assert_eq!(u.get("b", "k1").map(|e| e.index), Some(2));
        assert_eq!(u.get("b", "k2"), None);
        u.durable(2);
        assert_eq!((u.get("a", "k1"), u.get("b", "k1")), (None, None));
        assert_eq!(u.get("a", "k2").map(|e| e.index), Some(3));
        // A durability notice never goes backwards past what was released.
        u.durable(1);
        assert_eq!(u.len(), 1);
        u.durable(10);
        assert!(u.is_empty());
        assert!(u.order.is_empty() && u.by_project.is_empty());
    }
}
