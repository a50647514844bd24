//! Canonical CBOR (RFC 8949 §4.2.1 core deterministic encoding).
//!
//! ciborium writes shortest-form integers and definite lengths, but emits map
//! entries in iteration order and allows floats. Everything hashed or signed
//! in SWOOSH goes through [`to_canonical`], which serializes into a
//! `ciborium::Value`, sorts every map by the bytewise order of its encoded
//! keys, rejects floats, tags and duplicate keys, and only then writes bytes.
//! [`from_canonical`] is strict the other way: it decodes and re-encodes, and
//! refuses input whose bytes are not already canonical, so a hash can never
//! be computed over a second spelling of the same value.

use ciborium::Value;
use serde::{de::DeserializeOwned, Serialize};

/// Deepest nesting accepted from untrusted bytes; deeper input is refused
/// before it can exhaust the stack.
pub const CBOR_DEPTH_MAX: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CanonicalError {
    #[error("value could not be serialized: {0}")]
    Serialize(String),
    #[error("floats are not allowed in hashed data (at {path}); use integers, e.g. milli-units")]
    Float { path: String },
    #[error("CBOR tags are not allowed in hashed data (at {path})")]
    Tag { path: String },
    #[error("duplicate map key at {path}")]
    DuplicateKey { path: String },
    #[error("nesting deeper than {CBOR_DEPTH_MAX} levels at {path}")]
    TooDeep { path: String },
    #[error("malformed CBOR: {0}")]
    Decode(String),
    #[error("CBOR is well-formed but not canonical (RFC 8949 §4.2.1): re-encode it with sorted map keys, shortest integers and definite lengths")]
    NotCanonical,
    #[error("CBOR has {0} trailing bytes after the value")]
    Trailing(usize),
    #[error("decoded CBOR does not match the expected shape: {0}")]
    Shape(String),
}

/// The shortest head of a CBOR item (for callers that check or splice
/// canonical bytes by parts).
pub use crate::cbor_fast::head;

/// Encode any serde value canonically.
pub fn to_canonical<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    match crate::cbor_fast::encode(value) {
        Ok(bytes) => Ok(bytes),
        // The reference path names what is wrong and where.
        Err(_) => reference_to_canonical(value),
    }
}

/// The reference encoder: serialize into a `ciborium::Value`, canonicalize,
/// write. Slower; kept as the specification the fast path is tested against
/// and to produce detailed errors.
pub fn reference_to_canonical<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let v = Value::serialized(value).map_err(|e| CanonicalError::Serialize(e.to_string()))?;
    reference_value_to_canonical(v)
}

/// Encode a `ciborium::Value` canonically.
pub fn value_to_canonical(v: Value) -> Result<Vec<u8>, CanonicalError> {
    match crate::cbor_fast::encode(&v) {
        Ok(bytes) => Ok(bytes),
        Err(_) => reference_value_to_canonical(v),
    }
}

fn reference_value_to_canonical(v: Value) -> Result<Vec<u8>, CanonicalError> {
    let v = canonicalize(v)?;
    let mut out = Vec::with_capacity(128);
    ciborium::into_writer(&v, &mut out).map_err(|e| CanonicalError::Serialize(e.to_string()))?;
    Ok(out)
}

/// Put a value into canonical form: sorted maps, no floats, no tags, no
/// duplicate keys. Idempotent.
pub fn canonicalize(v: Value) -> Result<Value, CanonicalError> {
    canon(v, &mut String::from("$"), 0)
}

fn canon(v: Value, path: &mut String, depth: usize) -> Result<Value, CanonicalError> {
    // The decoders refuse a container nested in CBOR_DEPTH_MAX others; so
    // must the encoder, or it would write bytes no reader takes back.
    if depth >= CBOR_DEPTH_MAX && matches!(v, Value::Array(_) | Value::Map(_)) {
        return Err(CanonicalError::TooDeep { path: path.clone() });
    }
    Ok(match v {
        Value::Float(_) => return Err(CanonicalError::Float { path: path.clone() }),
        Value::Tag(_, _) => return Err(CanonicalError::Tag { path: path.clone() }),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                out.push(canon(item, path, depth + 1)?);
                path.truncate(len);
            }
            Value::Array(out)
        }
        Value::Map(entries) => {
            let mut keyed: Vec<(Vec<u8>, Value, Value)> = Vec::with_capacity(entries.len());
            for (k, val) in entries {
                let len = path.len();
                match &k {
                    Value::Text(t) => path.push_str(&format!(".{t}")),
                    _ => path.push_str(".<key>"),
                }
                let k = canon(k, path, depth + 1)?;
                let val = canon(val, path, depth + 1)?;
                path.truncate(len);
                let mut kb = Vec::new();
                ciborium::into_writer(&k, &mut kb)
                    .map_err(|e| CanonicalError::Serialize(e.to_string()))?;
                keyed.push((kb, k, val));
            }
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            for w in keyed.windows(2) {
                if w[0].0 == w[1].0 {
                    return Err(CanonicalError::DuplicateKey { path: path.clone() });
                }
            }
            Value::Map(keyed.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
        other => other,
    })
}

/// Decode strictly: the bytes must be exactly one canonical CBOR item.
pub fn decode_value_strict(bytes: &[u8]) -> Result<Value, CanonicalError> {
    let v = decode_value(bytes)?;
    let again = value_to_canonical(v.clone())?;
    if again != bytes {
        return Err(CanonicalError::NotCanonical);
    }
    Ok(v)
}

/// Decode one CBOR item (well-formedness and depth only; not canonicality).
pub fn decode_value(bytes: &[u8]) -> Result<Value, CanonicalError> {
    let mut cursor = std::io::Cursor::new(bytes);
    let v: Value = ciborium::de::from_reader_with_recursion_limit(&mut cursor, CBOR_DEPTH_MAX)
        .map_err(|e| CanonicalError::Decode(e.to_string()))?;
    let used = cursor.position() as usize;
    if used != bytes.len() {
        return Err(CanonicalError::Trailing(bytes.len() - used));
    }
    Ok(v)
}

/// Decode canonical bytes into a typed value, refusing non-canonical input
/// and any input the type would not re-encode to exactly (unknown fields,
/// defaulted fields written differently): so the hash of what was received
/// is always the hash of what was decoded.
///
/// The typed value is decoded directly (no value tree): re-encoding it to
/// exactly `bytes` proves the bytes canonical, whatever the decoder
/// tolerated on the way. Only a refusal takes the slow path, to say why.
pub fn from_canonical<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<T, CanonicalError> {
    if let Ok((t, used)) = crate::cbor_de::decode::<T>(bytes) {
        // A refusal of the fast encoder falls through to the paths below,
        // which use the reference encoder and name what is wrong.
        if used == bytes.len()
            && crate::cbor_fast::encode_with_capacity(&t, bytes.len())
                .ok()
                .as_deref()
                == Some(bytes)
        {
            return Ok(t);
        }
    }
    let mut cursor = std::io::Cursor::new(bytes);
    let typed: Result<T, _> =
        ciborium::de::from_reader_with_recursion_limit(&mut cursor, CBOR_DEPTH_MAX);
    if let Ok(t) = typed {
        if cursor.position() as usize == bytes.len()
            && to_canonical(&t).ok().as_deref() == Some(bytes)
        {
            return Ok(t);
        }
    }
    from_canonical_slow(bytes)
}

/// The value-tree path of [`from_canonical`]: taken only when the direct
/// decode refused, so the error says why (or a type that only decodes
/// through a value tree still decodes).
fn from_canonical_slow<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<T, CanonicalError> {
    let v = decode_value_strict(bytes)?;
    let t: T = v
        .deserialized()
        .map_err(|e| CanonicalError::Shape(e.to_string()))?;
    if to_canonical(&t)? != bytes {
        return Err(CanonicalError::Shape("the bytes carry fields or spellings the type does not re-encode; they are not this type's canonical encoding".into()));
    }
    Ok(t)
}

/// Decode bytes produced by this crate's own writer without re-encoding them.
/// Only for data whose integrity is already proven by a hash check (the WAL
/// reader verifies the record hash first); untrusted input uses
/// [`from_canonical`].
pub fn from_trusted<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CanonicalError> {
    if let Ok((t, _)) = crate::cbor_de::decode::<T>(bytes) {
        return Ok(t);
    }
    ciborium::from_reader(bytes).map_err(|e| CanonicalError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    /// Exactly what the decoders take back: `n` arrays nested in each other.
    #[test]
    fn the_encoder_refuses_the_nesting_the_decoders_refuse() {
        let nested = |n: usize| (0..n).fold(Value::Array(vec![]), |v, _| Value::Array(vec![v]));
        // `nested(n)` is n + 1 containers deep.
        let ok = super::to_canonical(&nested(CBOR_DEPTH_MAX - 1)).expect("64 levels encode");
        let back: Value = super::from_canonical(&ok).expect("and decode");
        assert_eq!(back, nested(CBOR_DEPTH_MAX - 1));
        let err = super::to_canonical(&nested(CBOR_DEPTH_MAX)).unwrap_err();
        assert!(
            matches!(err, super::CanonicalError::TooDeep { .. }),
            "{err}"
        );
    }

    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn map_keys_sort_by_encoded_bytes_not_by_string_order() {
        // "b" encodes as 0x61 0x62, "aa" as 0x62 0x61 0x61: shorter key first.
        let mut m = BTreeMap::new();
        m.insert("aa", 1u8);
        m.insert("b", 2u8);
        let bytes = to_canonical(&m).unwrap();
        assert_eq!(hex::encode(&bytes), "a261620262616101");
    }

    #[test]
    fn integers_are_shortest_form() {
        assert_eq!(to_canonical(&23u64).unwrap(), vec![0x17]);
        assert_eq!(to_canonical(&24u64).unwrap(), vec![0x18, 24]);
        assert_eq!(to_canonical(&256u64).unwrap(), vec![0x19, 1, 0]);
        assert_eq!(to_canonical(&-1i64).unwrap(), vec![0x20]);
    }

    #[test]
    fn floats_are_refused_with_their_path() {
        let v = Value::Map(vec![(Value::Text("x".into()), Value::Float(1.5))]);
        assert_eq!(
            value_to_canonical(v),
            Err(CanonicalError::Float { path: "$.x".into() })
        );
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let v = Value::Map(vec![
            (Value::Text("a".into()), Value::Integer(1.into())),
            (Value::Text("a".into()), Value::Integer(2.into())),
        ]);
        assert!(matches!(
            value_to_canonical(v),
            Err(CanonicalError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn non_canonical_bytes_are_refused() {
        // {"b":2,"aa":1} written in the wrong order.
        let bad = hex::decode("a262616101616202").unwrap();
        assert_eq!(decode_value_strict(&bad), Err(CanonicalError::NotCanonical));
        // 1 written as a two-byte integer.
        assert_eq!(
            decode_value_strict(&[0x18, 0x01]),
            Err(CanonicalError::NotCanonical)
        );
        // Indefinite-length array.
        assert_eq!(
            decode_value_strict(&[0x9f, 0x01, 0xff]),
            Err(CanonicalError::NotCanonical)
        );
    }

    #[test]
    fn truncated_and_trailing_input_is_an_error_not_a_panic() {
        assert!(matches!(
            decode_value_strict(&[0x82, 0x01]),
            Err(CanonicalError::Decode(_))
        ));
        assert_eq!(
            decode_value_strict(&[0x01, 0x02]),
            Err(CanonicalError::Trailing(1))
        );
        assert!(decode_value_strict(&[]).is_err());
    }

    fn arb_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| Value::Integer(i.into())),
            any::<u64>().prop_map(|i| Value::Integer(i.into())),
            "[a-z]{0,12}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{0,6}", inner.clone(), 0..6).prop_map(|m| {
                    Value::Map(m.into_iter().map(|(k, v)| (Value::Text(k), v)).collect())
                }),
                proptest::collection::vec((any::<i32>(), inner), 0..4).prop_map(|m| {
                    let mut seen = std::collections::BTreeSet::new();
                    Value::Map(
                        m.into_iter()
                            .filter(|(k, _)| seen.insert(*k))
                            .map(|(k, v)| (Value::Integer(k.into()), v))
                            .collect(),
                    )
                }),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn fast_encoder_matches_the_reference(v in arb_value()) {
            let fast = crate::cbor_fast::encode(&v).expect("no floats or tags");
            let reference = reference_value_to_canonical(v).expect("no floats or tags");
            proptest::prop_assert_eq!(fast, reference);
        }

        /// The encoder reuses map scratch buffers per thread: a refusal
        /// half-way through nested maps must leave nothing behind that
        /// changes the next encoding.
        #[test]
        fn a_refused_encoding_leaves_the_next_one_exact(v in arb_value(), w in arb_value()) {
            let poisoned = Value::Map(vec![
                (Value::Text("a".into()), v.clone()),
                (Value::Text("b".into()), Value::Map(vec![(Value::Text("x".into()), Value::Float(0.5))])),
                (Value::Text("c".into()), v),
            ]);
            proptest::prop_assert!(crate::cbor_fast::encode(&poisoned).is_err());
            let fast = crate::cbor_fast::encode(&w).expect("no floats or tags");
            let reference = reference_value_to_canonical(w).expect("no floats or tags");
            proptest::prop_assert_eq!(fast, reference);
        }
    }

    #[test]
    fn fast_encoder_matches_the_reference_on_typed_documents() {
        use crate::scenario::{genesis, run_happy_path, Driver, Keys};
        let keys = Keys::from_labels("cbor", 3);
        let mut node =
            crate::state::NodeState::new(genesis(&keys, "cbor", 1_767_225_600_000)).unwrap();
        let driver = Driver::new(&keys, 1);
        let mut checked = 0;
        run_happy_path(
            &mut node,
            &driver,
            &["p".to_string()],
            1_767_225_600_010,
            100,
            |s| {
                if let crate::reducer::Outcome::Accepted(acc) = &s.step.outcome {
                    assert_eq!(
                        crate::cbor_fast::encode(&acc.record).unwrap(),
                        reference_to_canonical(&acc.record).unwrap()
                    );
                    assert_eq!(
                        crate::cbor_fast::encode(&acc.decision).unwrap(),
                        reference_to_canonical(&acc.decision).unwrap()
                    );
                    let st = s.node.project("p");
                    assert_eq!(
                        crate::cbor_fast::encode(&*st).unwrap(),
                        reference_to_canonical(&*st).unwrap()
                    );
                    checked += 1;
                }
            },
        );
        assert_eq!(checked, 20);
        assert_eq!(
            crate::cbor_fast::encode(&node).unwrap(),
            reference_to_canonical(&node).unwrap()
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut bytes = vec![0x81; 200];
        bytes.push(0x00);
        assert!(decode_value_strict(&bytes).is_err());
    }
}
