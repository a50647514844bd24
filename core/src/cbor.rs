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

/// Most CBOR items a `ciborium::Value` tree is built for from untrusted
/// bytes ([`decode_value`], [`decode_value_strict`], and the diagnosis path
/// of [`from_canonical`]). An item is one CBOR data item: an integer, a
/// string, a simple value, a tag, an array or a map, and each element, key
/// and value inside them. [`scan_value_items`] counts them first, without
/// allocating, and more are refused with [`CanonicalError::TooManyItems`].
///
/// Why 2^16: a tree costs 32 bytes per item for its node (a
/// `ciborium::Value`), up to twice that while its vectors grow, and the
/// strict decoder holds two trees at once (the decoded one and the copy it
/// re-encodes): about 128 bytes per item. A one-byte item (`0x80`, an empty
/// array) thus costs over 100 times its size, and a 2 MiB gossip plaintext
/// of them some 256 MiB per message; 2^16 items cap that at about 8 MiB
/// whatever the input's shape. Real documents take about 17 bytes per item
/// (hashes, signatures and names are long texts; measured on WAL records,
/// decision records and node state), so every message of up to about 1 MiB
/// still gets a full diagnosis. Larger inputs are still decoded by the
/// typed decoders, which build no tree; only the explanation of a refusal
/// is shortened, to the typed decoder's reason.
pub const VALUE_TREE_ITEMS_MAX: usize = 1 << 16;

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
    /// Refused before a value tree was built: see [`VALUE_TREE_ITEMS_MAX`].
    #[error("CBOR input of {len} bytes holds more than {VALUE_TREE_ITEMS_MAX} items (VALUE_TREE_ITEMS_MAX; the first item past it starts at byte {at}), too many to decode into a value tree and name what is wrong; {detail}")]
    TooManyItems {
        /// Length of the whole input, in bytes.
        len: usize,
        /// Offset of the first item past the limit.
        at: usize,
        /// What is known without the tree (for [`from_canonical`], the
        /// typed decoder's reason).
        detail: String,
    },
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

/// Decode strictly: the bytes must be exactly one canonical CBOR item (of
/// at most [`VALUE_TREE_ITEMS_MAX`] items, as [`decode_value`]).
pub fn decode_value_strict(bytes: &[u8]) -> Result<Value, CanonicalError> {
    decode_value_strict_bounded(bytes, || {
        "decode it into its type with from_canonical, which builds no value tree".into()
    })
}

fn decode_value_strict_bounded(
    bytes: &[u8],
    detail: impl FnOnce() -> String,
) -> Result<Value, CanonicalError> {
    let v = decode_value_bounded(bytes, detail)?;
    let again = value_to_canonical(v.clone())?;
    if again != bytes {
        return Err(CanonicalError::NotCanonical);
    }
    Ok(v)
}

/// Decode one CBOR item (well-formedness and depth only; not canonicality).
///
/// At most [`VALUE_TREE_ITEMS_MAX`] items: the input is counted first by
/// [`scan_value_items`] and refused with [`CanonicalError::TooManyItems`]
/// before any tree is built. A large document is decoded into its type with
/// [`from_canonical`], which needs no tree.
pub fn decode_value(bytes: &[u8]) -> Result<Value, CanonicalError> {
    decode_value_bounded(bytes, || {
        "decode it into its type with from_canonical, which builds no value tree".into()
    })
}

/// [`decode_value`], with the `detail` of a [`CanonicalError::TooManyItems`]
/// refusal supplied by the caller (computed only then).
fn decode_value_bounded(
    bytes: &[u8],
    detail: impl FnOnce() -> String,
) -> Result<Value, CanonicalError> {
    if let ItemScan::OverLimit { at } = scan_value_items(bytes, VALUE_TREE_ITEMS_MAX) {
        return Err(CanonicalError::TooManyItems {
            len: bytes.len(),
            at,
            detail: detail(),
        });
    }
    // Complete, or malformed after at most VALUE_TREE_ITEMS_MAX items:
    // ciborium refuses at the same byte or before it (see `ItemScan`), so
    // its tree holds no more than were counted, and its message is the one
    // this function has always given.
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
/// tolerated on the way. Only a refusal takes the slow path, to say why;
/// that path builds a value tree of at most [`VALUE_TREE_ITEMS_MAX`] items,
/// and a larger refused input is answered with
/// [`CanonicalError::TooManyItems`] carrying the typed decoder's reason.
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
    let used = cursor.position() as usize;
    // Why the typed decode refused, for an input too large to diagnose
    // through a value tree.
    let typed_refusal = match typed {
        Ok(_) if used != bytes.len() => format!(
            "as the expected type it decodes, with {} trailing bytes after the value",
            bytes.len() - used
        ),
        Ok(t) => match to_canonical(&t) {
            Ok(again) if again == bytes => return Ok(t),
            Ok(_) => "as the expected type it decodes, but the bytes are not that value's \
                      canonical encoding (another spelling, or fields the type does not \
                      re-encode)"
                .to_string(),
            Err(e) => format!("as the expected type it decodes, but does not re-encode: {e}"),
        },
        Err(e) => format!("as the expected type it does not decode: {e}"),
    };
    from_canonical_slow(bytes, typed_refusal)
}

/// The value-tree path of [`from_canonical`]: taken only when the direct
/// decodes refused, so the error says why. (No type of the workspace needs
/// it to decode: whatever decodes through a value tree, the direct decoders
/// decode too; it is kept so that such a type would still decode.) Inputs
/// of more than [`VALUE_TREE_ITEMS_MAX`] items are refused before a tree is
/// built, with `typed_refusal` as the reason.
fn from_canonical_slow<T: DeserializeOwned + Serialize>(
    bytes: &[u8],
    typed_refusal: String,
) -> Result<T, CanonicalError> {
    let v = decode_value_strict_bounded(bytes, || typed_refusal)?;
    let t: T = v
        .deserialized()
        .map_err(|e| CanonicalError::Shape(e.to_string()))?;
    if to_canonical(&t)? != bytes {
        return Err(CanonicalError::Shape("the bytes carry fields or spellings the type does not re-encode; they are not this type's canonical encoding".into()));
    }
    Ok(t)
}

/// What [`scan_value_items`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemScan {
    /// One well-formed CBOR item of `items` items (as a `ciborium::Value`
    /// tree counts them, or more), ending at byte `end` (trailing bytes
    /// after it are not looked at).
    Complete { items: usize, end: usize },
    /// Not well-formed at byte `at` (the input ends inside an item, a
    /// reserved head, a misplaced break, a chunk of an indefinite-length
    /// string that is not a string of its type, or arrays and maps
    /// nested deeper than [`CBOR_DEPTH_MAX`]), after `items` items. ciborium
    /// refuses each of these, at that byte or before: its tree never holds
    /// more than `items` items.
    Malformed { items: usize, at: usize },
    /// More than the limit: the first item past it starts at byte `at`.
    OverLimit { at: usize },
}

/// Count the items of the CBOR item at the start of `bytes`, up to
/// `items_max`, without decoding or allocating anything: the gate in front
/// of every value tree built from untrusted bytes.
///
/// Items are counted as a `ciborium::Value` tree holds them, generously: a
/// tag and its content are two (a bignum becomes one integer), and an
/// indefinite-length string is one whatever its chunks. Well-formedness is
/// checked no more strictly than ciborium checks it (floats, tags, simple
/// values and indefinite lengths are counted, not refused: canonicality is
/// the strict decoder's job), so that whatever ciborium would decode is
/// counted in full. The cost is one pass over the heads, linear in
/// `bytes.len()` and independent of what the heads announce.
pub fn scan_value_items(bytes: &[u8], items_max: usize) -> ItemScan {
    /// One open array or map.
    #[derive(Clone, Copy)]
    struct Open {
        /// Items still to come in a definite-length container (a map
        /// counts keys and values); items read so far in an indefinite one.
        count: u128,
        indefinite: bool,
        map: bool,
    }
    let mut open = [Open {
        count: 0,
        indefinite: false,
        map: false,
    }; CBOR_DEPTH_MAX];
    let mut depth = 0usize;
    let mut pos = 0usize;
    let mut items = 0usize;
    // The next item is the content of a tag, not an element of its own.
    let mut tagged = false;
    loop {
        // Close the definite-length containers that are complete.
        while depth > 0 && !open[depth - 1].indefinite && open[depth - 1].count == 0 {
            depth -= 1;
        }
        if depth == 0 && items > 0 && !tagged {
            return ItemScan::Complete { items, end: pos };
        }
        let at = pos;
        let malformed = ItemScan::Malformed { items, at };
        let Some(&initial) = bytes.get(pos) else {
            return malformed;
        };
        if initial == 0xff {
            // A break closes the innermost indefinite-length container, and
            // in a map only where a key would start.
            match depth.checked_sub(1).map(|i| open[i]) {
                Some(o) if o.indefinite && !tagged && (!o.map || o.count % 2 == 0) => {
                    depth -= 1;
                    pos += 1;
                    continue;
                }
                _ => return malformed,
            }
        }
        let major = initial >> 5;
        let Some((arg, head_len)) = head_arg(&bytes[pos..]) else {
            return malformed;
        };
        // `arg` is None for an indefinite length (additional information
        // 31), which only strings, arrays and maps may have.
        if arg.is_none() && !matches!(major, 2..=5) {
            return malformed;
        }
        items += 1;
        if items > items_max {
            return ItemScan::OverLimit { at };
        }
        if !tagged && depth > 0 {
            let o = &mut open[depth - 1];
            if o.indefinite {
                o.count += 1;
            } else {
                o.count -= 1;
            }
        }
        tagged = false;
        pos += head_len;
        match (major, arg) {
            (2 | 3, Some(n)) => match skip(bytes, pos, n) {
                Some(end) => pos = end,
                None => return malformed,
            },
            (2 | 3, None) => match skip_chunks(bytes, pos, major) {
                Ok(end) => pos = end,
                Err(at) => return ItemScan::Malformed { items, at },
            },
            (4 | 5, n) => {
                if depth == CBOR_DEPTH_MAX {
                    return malformed;
                }
                let map = major == 5;
                open[depth] = Open {
                    count: n.map_or(0, |n| if map { 2 * n as u128 } else { n as u128 }),
                    indefinite: n.is_none(),
                    map,
                };
                depth += 1;
            }
            (6, _) => tagged = true,
            // Integers, simple values and floats: the head is the item.
            _ => {}
        }
    }
}

/// The argument of the head at the start of `b` (None for an indefinite
/// length) and the head's length; None if `b` ends inside the head or the
/// additional information is reserved (28–30).
fn head_arg(b: &[u8]) -> Option<(Option<u64>, usize)> {
    let info = b.first()? & 0x1f;
    let n = match info {
        0..=23 => return Some((Some(info as u64), 1)),
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        31 => return Some((None, 1)),
        _ => return None,
    };
    let arg = b
        .get(1..1 + n)?
        .iter()
        .fold(0u64, |a, &x| (a << 8) | x as u64);
    Some((Some(arg), 1 + n))
}

/// The end of the chunks of an indefinite-length string of major type
/// `major` whose head ends at `pos`, up to its break; or where a chunk is
/// malformed. ciborium also takes an indefinite-length chunk (closed by its
/// own break) where RFC 8949 wants a definite one, so this does too: the
/// scan must not stop where ciborium goes on.
fn skip_chunks(bytes: &[u8], mut pos: usize, major: u8) -> Result<usize, usize> {
    let mut unclosed = 1usize;
    while unclosed > 0 {
        let at = pos;
        match bytes.get(pos) {
            Some(0xff) => {
                pos += 1;
                unclosed -= 1;
                continue;
            }
            Some(&b) if b >> 5 == major => {}
            _ => return Err(at),
        }
        match head_arg(&bytes[pos..]) {
            Some((None, len)) => {
                pos += len;
                unclosed += 1;
            }
            Some((Some(n), len)) => pos = skip(bytes, pos + len, n).ok_or(at)?,
            None => return Err(at),
        }
    }
    Ok(pos)
}

/// The end of a string payload of `n` bytes starting at `pos`, if the input
/// holds it.
fn skip(bytes: &[u8], pos: usize, n: u64) -> Option<usize> {
    let end = pos.checked_add(usize::try_from(n).ok()?)?;
    (end <= bytes.len()).then_some(end)
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
