//! The follower's halt marker: a divergence from the leader, kept in the
//! store's metadata so it outlives a restart.
//!
//! A follower that computes a record differently from the leader stops
//! applying. Held only in memory, that halt ended at the next restart (a
//! service manager restarts a stopped unit): the follower re-fetched, served
//! a healthy `/health` until it reached the same record, and halted again,
//! or went on if the leader's log had changed meanwhile, with nobody having
//! looked at why they disagreed. The marker makes the halt last until an
//! operator clears it (`swoosh follow --clear-halt`) or moves the store away.
//!
//! The marker is stored in the same LMDB environment as the WAL it concerns,
//! so copying or moving `data/` carries it along. Its value is the canonical
//! CBOR map `{at_ms, index, reason}` (`docs/wal-format.md` §1); markers
//! written before it was canonical (ciborium in field order `{index, reason,
//! at_ms}`) still read, since the reader takes the keys in any order.

use crate::store::{Batch, LogStore, Space, StoreError};

/// Metadata key of the marker.
pub const META_HALT: &str = "follower_halt";

/// Why and where a follower halted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HaltMarker {
    /// The record index the follower could not agree with.
    pub index: u64,
    pub reason: String,
    /// Wall-clock ms when it halted (for the operator; never compared).
    pub at_ms: u64,
}

/// Record `m` durably (the store's own durability mode).
pub fn record_halt<S: LogStore + ?Sized>(store: &mut S, m: &HaltMarker) -> Result<(), StoreError> {
    // Canonical, like every other CBOR value SWOOSH stores. Encoding two
    // integers and a text cannot fail; a failure would be a bug in the
    // encoder, reported as a store error rather than a panic.
    let bytes = swoosh_core::cbor::to_canonical(m).map_err(|e| StoreError::Backend {
        location: store.location(),
        op: "encode the halt marker",
        detail: e.to_string(),
    })?;
    store.put_meta(META_HALT, &bytes)?;
    Ok(())
}

/// The recorded halt, if any. A marker that does not decode still means the
/// follower halted: it is returned with a reason that says so, because
/// resuming on an unreadable marker would defeat it. Read leniently (map
/// keys in any order), so a marker an older build wrote in field order
/// still reads.
pub fn recorded_halt<S: LogStore + ?Sized>(store: &S) -> Result<Option<HaltMarker>, StoreError> {
    let Some(bytes) = store.get_meta(META_HALT)? else {
        return Ok(None);
    };
    Ok(Some(
        ciborium::from_reader::<HaltMarker, _>(bytes.as_slice()).unwrap_or_else(|e| HaltMarker {
            index: 0,
            reason: format!(
                "a halt is recorded in {} but its marker does not decode ({e})",
                store.location()
            ),
            at_ms: 0,
        }),
    ))
}

/// Remove the marker; returns what it held (None when there was none).
pub fn clear_halt<S: LogStore + ?Sized>(store: &mut S) -> Result<Option<HaltMarker>, StoreError> {
    let was = recorded_halt(store)?;
    if was.is_some() {
        let mut b = Batch::new();
        b.delete(Space::Meta, META_HALT.as_bytes().to_vec());
        store.commit(b)?;
    }
    Ok(was)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemStore;

    #[test]
    fn a_halt_is_recorded_read_back_and_cleared() {
        let mut s = MemStore::new("halt", crate::store::Durability::Sync);
        assert_eq!(recorded_halt(&s).unwrap(), None);
        let m = HaltMarker {
            index: 42,
            reason: "record 42: post-state hash differs".into(),
            at_ms: 1_767_225_600_000,
        };
        record_halt(&mut s, &m).unwrap();
        assert_eq!(recorded_halt(&s).unwrap(), Some(m.clone()));
        assert_eq!(clear_halt(&mut s).unwrap(), Some(m));
        assert_eq!(recorded_halt(&s).unwrap(), None);
        assert_eq!(clear_halt(&mut s).unwrap(), None);
    }

    /// The stored value is the canonical encoding (keys `at_ms`, `index`,
    /// `reason`), and a marker in the field order older builds wrote
    /// (`index`, `reason`, `at_ms`) still reads as the same halt.
    #[test]
    fn the_marker_is_canonical_and_an_old_field_order_marker_still_reads() {
        let mut s = MemStore::new("halt", crate::store::Durability::Sync);
        let m = HaltMarker {
            index: 42,
            reason: "record 42: post-state hash differs".into(),
            at_ms: 1_767_225_600_000,
        };
        record_halt(&mut s, &m).unwrap();
        let stored = s.get_meta(META_HALT).unwrap().expect("written");
        assert_eq!(stored, swoosh_core::cbor::to_canonical(&m).unwrap());
        // Strict decoding refuses anything but the canonical bytes.
        let back: HaltMarker = swoosh_core::cbor::from_canonical(&stored).unwrap();
        assert_eq!(back, m);
        // Keys in canonical order: `at_ms` < `index` (same length, then
        // bytewise) < `reason` (longer).
        let map = match swoosh_core::cbor::decode_value(&stored).unwrap() {
            ciborium::Value::Map(entries) => entries,
            other => panic!("not a map: {other:?}"),
        };
        let keys: Vec<&str> = map.iter().filter_map(|(k, _)| k.as_text()).collect();
        assert_eq!(keys, ["at_ms", "index", "reason"]);

        // What ciborium wrote in field order before the marker was canonical.
        let mut old = vec![];
        ciborium::into_writer(&m, &mut old).unwrap();
        assert_ne!(old, stored, "the old encoding is not the canonical one");
        assert!(swoosh_core::cbor::from_canonical::<HaltMarker>(&old).is_err());
        s.put_meta(META_HALT, &old).unwrap();
        assert_eq!(recorded_halt(&s).unwrap(), Some(m.clone()));
        assert_eq!(clear_halt(&mut s).unwrap(), Some(m));
    }

    #[test]
    fn an_unreadable_marker_still_halts_and_says_why() {
        let mut s = MemStore::new("halt", crate::store::Durability::Sync);
        s.put_meta(META_HALT, b"\xff not cbor").unwrap();
        let m = recorded_halt(&s).unwrap().expect("still a halt");
        assert!(m.reason.contains("does not decode"), "{}", m.reason);
    }
}
