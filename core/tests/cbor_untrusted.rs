//! Untrusted CBOR (STYLE habit 7): a value tree is built from network bytes
//! only to explain why they were refused, and never for more than
//! `VALUE_TREE_ITEMS_MAX` items, whatever the input's shape. The item count
//! comes from `scan_value_items`, a pass that allocates nothing, so these
//! tests assert on what it counted and on the error kind rather than on
//! memory: the refusal happens before any tree exists.

use ciborium::Value;
use proptest::prelude::*;
use swoosh_core::cbor::{
    decode_value, decode_value_strict, from_canonical, scan_value_items, to_canonical,
    value_to_canonical, CanonicalError, ItemScan, CBOR_DEPTH_MAX, VALUE_TREE_ITEMS_MAX,
};
use swoosh_core::record::WalRecord;

/// The largest gossip plaintext.
const TWO_MIB: usize = 2 << 20;

fn unhex(h: &str) -> Vec<u8> {
    let h: String = h.split_whitespace().collect();
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// `prefix`, then `fill` up to `len` bytes.
fn padded(prefix: &[u8], fill: u8, len: usize) -> Vec<u8> {
    let mut b = prefix.to_vec();
    b.resize(len, fill);
    b
}

/// An array head announcing 2^63 items, then empty arrays up to 2 MiB.
fn hostile_empty_arrays() -> Vec<u8> {
    let mut head = vec![0x9b];
    head.extend_from_slice(&(1u64 << 63).to_be_bytes());
    padded(&head, 0x80, TWO_MIB)
}

/// The message of a `TooManyItems` refusal, after checking its fields.
fn too_many(err: CanonicalError, len: usize, at: usize) -> String {
    let msg = err.to_string();
    match err {
        CanonicalError::TooManyItems { len: l, at: a, .. } => {
            assert_eq!((l, a), (len, at), "{msg}");
        }
        other => panic!("expected TooManyItems, got {other:?}"),
    }
    assert!(msg.contains("VALUE_TREE_ITEMS_MAX"), "{msg}");
    assert!(msg.contains(&VALUE_TREE_ITEMS_MAX.to_string()), "{msg}");
    msg
}

/// The hostile inputs of each shape, and the offset of the first item past
/// the limit in each: the pre-scan refuses all of them.
#[test]
fn hostile_shapes_of_2_mib_are_refused_by_the_pre_scan_before_any_tree() {
    let past = VALUE_TREE_ITEMS_MAX; // items before the one refused
    let mut deep_then_wide = vec![0x81; CBOR_DEPTH_MAX - 1];
    deep_then_wide.push(0x9f); // an indefinite array never closed, of integers
    let deep_then_wide_at = deep_then_wide.len() + past - CBOR_DEPTH_MAX;
    let mut map_head = vec![0xbb];
    map_head.extend_from_slice(&u64::MAX.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, usize)> = vec![
        (
            "array of empty arrays",
            hostile_empty_arrays(),
            9 + past - 1,
        ),
        (
            "indefinite array of empty maps",
            padded(&[0x9f], 0xa0, TWO_MIB),
            past,
        ),
        ("nested tags", padded(&[], 0xc6, TWO_MIB), past),
        (
            "64 levels deep, then wide",
            padded(&deep_then_wide, 0x00, TWO_MIB),
            deep_then_wide_at,
        ),
        (
            "map of one-byte keys and values",
            padded(&map_head, 0x00, TWO_MIB),
            9 + past - 1,
        ),
    ];
    for (name, bytes, at) in cases {
        assert_eq!(bytes.len(), TWO_MIB, "{name}");
        assert_eq!(
            scan_value_items(&bytes, VALUE_TREE_ITEMS_MAX),
            ItemScan::OverLimit { at },
            "{name}"
        );
        too_many(decode_value(&bytes).unwrap_err(), TWO_MIB, at);
        too_many(decode_value_strict(&bytes).unwrap_err(), TWO_MIB, at);
        let msg = too_many(
            from_canonical::<WalRecord>(&bytes).unwrap_err(),
            TWO_MIB,
            at,
        );
        // The typed decoder's reason stands in for the tree's diagnosis.
        assert!(
            msg.contains("as the expected type it does not decode"),
            "{name}: {msg}"
        );
    }
}

/// The limit is exact: `VALUE_TREE_ITEMS_MAX` items get a tree (and the
/// full diagnosis), one more does not.
#[test]
fn the_limit_is_exact() {
    let nulls = |n: usize| to_canonical(&vec![(); n]).unwrap();
    // The array is an item too.
    let at_limit = nulls(VALUE_TREE_ITEMS_MAX - 1);
    assert_eq!(
        scan_value_items(&at_limit, VALUE_TREE_ITEMS_MAX),
        ItemScan::Complete {
            items: VALUE_TREE_ITEMS_MAX,
            end: at_limit.len()
        }
    );
    assert!(decode_value_strict(&at_limit).is_ok());
    let over = nulls(VALUE_TREE_ITEMS_MAX);
    let head = over.len() - VALUE_TREE_ITEMS_MAX;
    assert_eq!(
        scan_value_items(&over, VALUE_TREE_ITEMS_MAX),
        ItemScan::OverLimit { at: over.len() - 1 }
    );
    too_many(
        decode_value(&over).unwrap_err(),
        over.len(),
        head + VALUE_TREE_ITEMS_MAX - 1,
    );
}

/// Decoding never depends on the limit: large canonical documents decode
/// into their type as before (the typed decoders build no value tree).
#[test]
fn legitimate_large_messages_still_decode() {
    let many = TWO_MIB - 5;
    let nulls = to_canonical(&vec![(); many]).unwrap();
    assert_eq!(nulls.len(), TWO_MIB);
    assert_eq!(from_canonical::<Vec<()>>(&nulls).unwrap().len(), many);

    let numbers: Vec<u64> = (0..200_000u64).map(|i| i * 7919).collect();
    let bytes = to_canonical(&numbers).unwrap();
    assert_eq!(from_canonical::<Vec<u64>>(&bytes).unwrap(), numbers);

    let arrays = Value::Array(vec![Value::Array(vec![]); 3 * VALUE_TREE_ITEMS_MAX]);
    let bytes = to_canonical(&arrays).unwrap();
    assert_eq!(from_canonical::<Value>(&bytes).unwrap(), arrays);
    // Only a tree of it, which nothing on the decode path needs, is refused.
    assert!(matches!(
        decode_value(&bytes),
        Err(CanonicalError::TooManyItems { .. })
    ));
}

/// A large input that is refused still says what is wrong with it, from
/// the typed decoder instead of the tree.
#[test]
fn large_refusals_keep_the_typed_reason() {
    let numbers: Vec<u64> = (0..100_000u64).collect();
    let canonical = to_canonical(&numbers).unwrap();

    // The last number (99 999) written with an eight-byte head.
    let mut long = canonical[..canonical.len() - 5].to_vec();
    long.push(0x1b);
    long.extend_from_slice(&99_999u64.to_be_bytes());
    let msg = from_canonical::<Vec<u64>>(&long).unwrap_err().to_string();
    assert!(msg.contains("not that value's canonical encoding"), "{msg}");

    let mut trailing = canonical.clone();
    trailing.push(0x00);
    let msg = from_canonical::<Vec<u64>>(&trailing)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("1 trailing bytes"), "{msg}");

    let msg = from_canonical::<Vec<String>>(&canonical)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("does not decode"), "{msg}");
    assert!(msg.contains("expected str"), "{msg}");
}

/// What a tree decode said about small inputs before the limit existed: the
/// limit must not change a single message of theirs.
fn unbounded_strict(bytes: &[u8]) -> Result<Value, CanonicalError> {
    let mut cursor = std::io::Cursor::new(bytes);
    let v: Value = ciborium::de::from_reader_with_recursion_limit(&mut cursor, CBOR_DEPTH_MAX)
        .map_err(|e| CanonicalError::Decode(e.to_string()))?;
    let used = cursor.position() as usize;
    if used != bytes.len() {
        return Err(CanonicalError::Trailing(bytes.len() - used));
    }
    if value_to_canonical(v.clone())? != bytes {
        return Err(CanonicalError::NotCanonical);
    }
    Ok(v)
}

#[test]
fn ordinary_malformed_inputs_keep_their_messages() {
    for h in [
        "82 01",
        "01 02",
        "",
        "1c",
        "ff",
        "81 ff",
        "bf 01 ff",
        "c1 ff",
        "1f",
        "5f 61 00 ff",
        "5f 41",
        "a2 61 62 02 62 61 61 01",
        "18 01",
        "9f 01 ff",
        "fb 3f f8 00 00 00 00 00 00",
        "c1 1a 51 4b 67 b0",
    ] {
        let bytes = unhex(h);
        assert_eq!(decode_value_strict(&bytes), unbounded_strict(&bytes), "{h}");
        assert!(
            !matches!(
                from_canonical::<WalRecord>(&bytes),
                Err(CanonicalError::TooManyItems { .. })
            ),
            "{h}"
        );
    }
    let mut deep = vec![0x81; 200];
    deep.push(0x00);
    assert_eq!(decode_value_strict(&deep), unbounded_strict(&deep));
}

/// Everything the scanner calls malformed, ciborium refuses too (at that
/// byte or before): otherwise ciborium could go on past the scan and build
/// items that were never counted.
#[test]
fn what_the_scan_calls_malformed_ciborium_refuses() {
    let mut too_deep = vec![0x81; CBOR_DEPTH_MAX];
    too_deep.push(0x80);
    let mut deepest = vec![0x81; CBOR_DEPTH_MAX - 1];
    deepest.push(0x80);
    for (h, at) in [
        ("82 01", 2),
        ("1c", 0),
        ("ff", 0),
        ("81 ff", 1),
        ("bf 01 ff", 2),
        ("c1 ff", 1),
        ("1f", 0),
        ("df", 0),
        ("5f 61 00 ff", 1),
        ("5f 41", 1),
        ("5f 5f 41 00 ff", 5),
        ("7f 5c", 1),
    ] {
        let bytes = unhex(h);
        assert!(
            matches!(
                scan_value_items(&bytes, usize::MAX),
                ItemScan::Malformed { at: a, .. } if a == at
            ),
            "{h}: {:?}",
            scan_value_items(&bytes, usize::MAX)
        );
        assert!(decode_value(&bytes).is_err(), "{h}");
    }
    assert!(matches!(
        scan_value_items(&too_deep, usize::MAX),
        ItemScan::Malformed { at, .. } if at == CBOR_DEPTH_MAX
    ));
    assert!(decode_value(&too_deep).is_err());
    assert_eq!(
        scan_value_items(&deepest, usize::MAX),
        ItemScan::Complete {
            items: CBOR_DEPTH_MAX,
            end: CBOR_DEPTH_MAX
        }
    );
    assert!(decode_value(&deepest).is_ok());
    // ciborium takes an indefinite-length chunk inside an indefinite-length
    // string (RFC 8949 does not): the scan follows it rather than stop.
    let nested_chunks = unhex("5f 5f 41 00 ff ff 00");
    assert_eq!(
        scan_value_items(&nested_chunks, usize::MAX),
        ItemScan::Complete { items: 1, end: 6 }
    );
    assert_eq!(
        decode_value(&nested_chunks),
        Err(CanonicalError::Trailing(1))
    );
}

/// Nodes of a value tree, as the scan counts items.
fn nodes(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(nodes).sum(),
        Value::Map(m) => m.iter().map(|(k, v)| nodes(k) + nodes(v)).sum(),
        Value::Tag(_, v) => nodes(v),
        _ => 0,
    }
}

/// A head of major type `major` and argument `arg`, in the shortest form
/// or, when `long`, in a longer one (well-formed, not canonical).
fn head(major: u8, arg: u64, long: bool) -> Vec<u8> {
    let mut h = ciborium_head(major, arg);
    if long && h.len() < 9 {
        h = vec![(major << 5) | 27];
        h.extend_from_slice(&arg.to_be_bytes());
    }
    h
}

fn ciborium_head(major: u8, arg: u64) -> Vec<u8> {
    let m = major << 5;
    match arg {
        0..=23 => vec![m | arg as u8],
        24..=0xff => vec![m | 24, arg as u8],
        0x100..=0xffff => [&[m | 25][..], &(arg as u16).to_be_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[m | 26][..], &(arg as u32).to_be_bytes()].concat(),
        _ => [&[m | 27][..], &arg.to_be_bytes()].concat(),
    }
}

/// Well-formed CBOR of every kind ciborium reads: definite and indefinite
/// lengths, chunked strings (nested too), tags, floats, simple values and
/// longer-than-needed heads.
fn well_formed() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        (0u8..2, any::<u64>(), any::<bool>()).prop_map(|(m, a, l)| head(m, a % 300, l)),
        (2u8..4, "[a-z]{0,5}", any::<bool>())
            .prop_map(|(m, t, l)| { [head(m, t.len() as u64, l), t.into_bytes()].concat() }),
        (
            2u8..4,
            prop::collection::vec("[a-z]{0,3}", 0..3),
            any::<bool>()
        )
            .prop_map(|(m, chunks, nest)| {
                let mut b = vec![(m << 5) | 31];
                for c in chunks {
                    b.extend(head(m, c.len() as u64, false));
                    b.extend(c.into_bytes());
                }
                if nest {
                    b.extend([(m << 5) | 31, 0xff]);
                }
                b.push(0xff);
                b
            }),
        prop::sample::select(vec![
            vec![0xf4],
            vec![0xf5],
            vec![0xf6],
            vec![0xf7],
            vec![0xf8, 0x20],
            vec![0xf9, 0x3c, 0x00],
            vec![0xfa, 0x3f, 0xc0, 0x00, 0x00],
            vec![0xc2, 0x41, 0x01],
        ]),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            (
                prop::collection::vec(inner.clone(), 0..5),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(items, indefinite, long)| {
                    let mut b = if indefinite {
                        vec![0x9f]
                    } else {
                        head(4, items.len() as u64, long)
                    };
                    b.extend(items.concat());
                    if indefinite {
                        b.push(0xff);
                    }
                    b
                }),
            (
                prop::collection::vec((inner.clone(), inner.clone()), 0..4),
                any::<bool>()
            )
                .prop_map(|(entries, indefinite)| {
                    let mut b = if indefinite {
                        vec![0xbf]
                    } else {
                        head(5, entries.len() as u64, false)
                    };
                    for (k, v) in entries {
                        b.extend(k);
                        b.extend(v);
                    }
                    if indefinite {
                        b.push(0xff);
                    }
                    b
                }),
            (0u64..30, inner).prop_map(|(t, v)| [head(6, t, false), v].concat()),
        ]
    })
}

/// Well-formed CBOR, then up to three bytes flipped, removed or inserted.
fn cbor_ish() -> impl Strategy<Value = Vec<u8>> {
    (
        well_formed(),
        prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 0..4),
    )
        .prop_map(|(mut b, edits)| {
            for (i, byte, op) in edits {
                let i = i % (b.len() + 1);
                match op {
                    0 if i < b.len() => b[i] = byte,
                    1 if i < b.len() => {
                        b.remove(i);
                    }
                    2 => b.insert(i, byte),
                    _ => b.insert(i, 0xff),
                }
            }
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// The scan agrees with ciborium on every input: what it counts bounds
    /// the tree, where it ends ciborium ends, and what it calls malformed
    /// ciborium refuses.
    #[test]
    fn the_scan_bounds_what_ciborium_builds(bytes in cbor_ish()) {
        let scan = scan_value_items(&bytes, usize::MAX);
        let mut cursor = std::io::Cursor::new(&bytes[..]);
        let tree: Result<Value, _> =
            ciborium::de::from_reader_with_recursion_limit(&mut cursor, CBOR_DEPTH_MAX);
        match (scan, tree) {
            (ItemScan::Complete { items, end }, Ok(v)) => {
                prop_assert!(nodes(&v) <= items, "{} nodes, {} counted", nodes(&v), items);
                prop_assert_eq!(cursor.position() as usize, end);
            }
            (ItemScan::Complete { .. }, Err(_)) => {}
            (ItemScan::Malformed { .. }, Ok(v)) => {
                prop_assert!(false, "scan refused what ciborium decodes: {:?}", v);
            }
            (ItemScan::Malformed { .. }, Err(_)) => {}
            (ItemScan::OverLimit { .. }, _) => prop_assert!(false, "no limit was set"),
        }
        // Small inputs are never over the limit: same answers as before.
        prop_assert_eq!(decode_value_strict(&bytes), unbounded_strict(&bytes));
    }

    /// Unedited, the generator's output is one well-formed item: the scan
    /// reads all of it (or finds it nested too deep, as ciborium does).
    #[test]
    fn the_scan_reads_well_formed_input_to_its_end(bytes in well_formed()) {
        match scan_value_items(&bytes, usize::MAX) {
            ItemScan::Complete { end, .. } => prop_assert_eq!(end, bytes.len()),
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
