//! Properties of the codecs (SPEC §4, STYLE habit 10): canonical CBOR,
//! the strict decoder, and the text forms of HLCs, hashes, signers and
//! signatures. Canonical output is judged by the hand-written RFC 8949
//! §4.2.1 checker in `support/cbor_check.rs`, not by the encoder's own
//! decoder.

#[path = "support/cbor_check.rs"]
mod cbor_check;

use ciborium::value::Integer;
use ciborium::Value;
use proptest::prelude::*;
use swoosh_core::cbor::{
    canonicalize, decode_value, decode_value_strict, from_canonical, to_canonical,
    value_to_canonical, CanonicalError,
};
use swoosh_core::hlc::{HLC_COUNTER_MAX, HLC_WALL_MS_MAX};
use swoosh_core::record::{DecisionRecord, GuardOutcome, WalRecord};
use swoosh_core::sig::key_from_label;
use swoosh_core::{Hash, Hlc, Proposal, ProposalBuilder, Signature, SignerId};

// ---- strategies --------------------------------------------------------------

/// Every CBOR integer: major type 0 and 1 cover -2^64 ..= 2^64-1. Boundary
/// values are drawn often so every head size occurs.
fn integer() -> impl Strategy<Value = i128> {
    let edges: Vec<i128> = [0u32, 8, 16, 32, 64]
        .iter()
        .flat_map(|&b| {
            let p = 1i128 << b;
            [p - 1, p, -p, -p - 1, 23, 24, -24, -25]
        })
        .filter(|x| (-(1i128 << 64)..1i128 << 64).contains(x))
        .collect();
    prop_oneof![
        2 => proptest::sample::select(edges),
        2 => any::<i64>().prop_map(i128::from),
        1 => any::<u64>().prop_map(i128::from),
        1 => -(1i128 << 64)..=i64::MIN as i128,
    ]
}

fn int_value(i: i128) -> Value {
    Value::Integer(Integer::try_from(i).expect("strategy stays in the CBOR integer range"))
}

fn key() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => "\\PC{0,6}".prop_map(Value::Text),
        1 => integer().prop_map(int_value),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        "\\PC{0,30}".prop_map(Value::Text),
        integer().prop_map(int_value),
        prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..30),
            1 => proptest::collection::vec(any::<u8>(), 250..300),
        ]
        .prop_map(Value::Bytes),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ]
}

fn encoding(v: &Value) -> Vec<u8> {
    let mut out = vec![];
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

/// Map entries with distinct keys (by encoding), in generation order.
fn dedup_keys(entries: Vec<(Value, Value)>) -> Vec<(Value, Value)> {
    let mut seen = std::collections::BTreeSet::new();
    entries
        .into_iter()
        .filter(|(k, _)| seen.insert(encoding(k)))
        .collect()
}

/// Value trees without floats or tags; maps have text and integer keys.
fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..6).prop_map(|e| Value::Map(dedup_keys(e))),
        ]
    })
}

/// Like [`value`] but representable in JSON: text keys, no bytes, integers
/// in the i64/u64 range (what serde_json reads back as integers).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        "\\PC{0,20}".prop_map(Value::Text),
        any::<i64>().prop_map(|i| int_value(i.into())),
        any::<u64>().prop_map(|i| int_value(i.into())),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
    ];
    leaf.prop_recursive(3, 32, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            json_map(inner),
        ]
    })
}

fn json_map(inner: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    proptest::collection::vec(("[a-z_]{1,8}".prop_map(Value::Text), inner), 0..6)
        .prop_map(|e| Value::Map(dedup_keys(e)))
}

/// Reorders every map in the tree by a permutation derived from `seed`.
fn shuffle_maps(v: &mut Value, seed: &mut u64) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(|x| shuffle_maps(x, seed)),
        Value::Map(entries) => {
            for i in (1..entries.len()).rev() {
                *seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                entries.swap(i, (*seed >> 33) as usize % (i + 1));
            }
            entries.iter_mut().for_each(|(_, x)| shuffle_maps(x, seed));
        }
        _ => {}
    }
}

/// JSON text for a value, with map entries in the value's own order (so a
/// shuffled value gives shuffled JSON regardless of serde_json's map type).
fn json_text(v: &Value) -> String {
    match v {
        Value::Text(s) => serde_json::to_string(s).unwrap(),
        Value::Integer(i) => i128::from(*i).to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(json_text).collect::<Vec<_>>().join(",")
        ),
        Value::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, x)| format!("{}:{}", json_text(k), json_text(x)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => panic!("not JSON-representable: {other:?}"),
    }
}

fn hlc() -> impl Strategy<Value = Hlc> {
    prop_oneof![
        (0..=HLC_WALL_MS_MAX, 0..=HLC_COUNTER_MAX),
        (
            proptest::sample::select(vec![
                0,
                1,
                86_399_999,
                951_782_400_000,
                4_107_542_399_999,
                HLC_WALL_MS_MAX
            ]),
            proptest::sample::select(vec![0, 9, 10, 4_294_967_293, HLC_COUNTER_MAX]),
        ),
    ]
    .prop_map(|(w, c)| Hlc::new(w, c))
}

fn hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash)
}

fn wal_record() -> impl Strategy<Value = WalRecord> {
    (
        (
            any::<u64>(),
            hash(),
            "[a-z0-9]{1,8}",
            "[A-Za-z_]{1,20}",
            hash(),
            hash(),
        ),
        (
            json_map(json_value()),
            hash(),
            any::<[u8; 32]>(),
            "\\PC{1,20}",
            hlc(),
            "\\PC{0,10}",
        ),
        (
            proptest::collection::vec(
                (
                    "[a-z_]{1,10}",
                    any::<bool>(),
                    proptest::collection::vec("\\PC{0,20}", 0..3),
                ),
                0..4,
            ),
            proptest::collection::vec("ucxl://[a-z/]{0,10}", 0..3),
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            hash(),
        ),
    )
        .prop_map(
            |(
                (index, prev_hash, project, transition, pre, post),
                (inputs, inputs_hash, signer, idem_key, hlc, window_id),
                (outcomes, evidence, ts, s1, s2, decision),
            )| {
                let mut sig = [0u8; 64];
                sig[..32].copy_from_slice(&s1);
                sig[32..].copy_from_slice(&s2);
                WalRecord {
                    index,
                    prev_hash,
                    project,
                    transition,
                    state_pre_hash: pre,
                    state_post_hash: post,
                    inputs: canonicalize(inputs).unwrap(),
                    inputs_hash,
                    signer: SignerId(signer),
                    idem_key,
                    hlc,
                    window_id,
                    guard_outcomes: outcomes
                        .into_iter()
                        .map(|(guard, ok, reasons)| GuardOutcome { guard, ok, reasons })
                        .collect(),
                    evidence,
                    timestamp_ms: ts,
                    signature: Signature(sig),
                    decision,
                }
            },
        )
}

/// Canonical bytes with a few bytes overwritten, removed or appended: input
/// close to valid, which reaches deeper into the decoders than noise does.
fn corrupt(bytes: Vec<u8>, edits: Vec<(usize, u8, u8)>) -> Vec<u8> {
    let mut b = bytes;
    for (pos, byte, kind) in edits {
        if b.is_empty() {
            b.push(byte);
            continue;
        }
        let i = pos % b.len();
        match kind % 4 {
            0 => b[i] = byte,
            1 => b[i] ^= 1 << (byte % 8),
            2 => {
                b.remove(i);
            }
            _ => b.insert(i, byte),
        }
    }
    b
}

// ---- canonical CBOR ------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Canonical output is RFC 8949 §4.2.1, decodes strictly, and re-encodes
    /// to the same bytes; typed and untyped encoding agree.
    #[test]
    fn canonical_output_decodes_strictly_and_reencodes_identically(v in value()) {
        let bytes = value_to_canonical(v.clone()).unwrap();
        if let Err(e) = cbor_check::check_canonical(&bytes) {
            prop_assert!(false, "not canonical: {e}\n{}", hex::encode(&bytes));
        }
        let back = decode_value_strict(&bytes).unwrap();
        prop_assert_eq!(value_to_canonical(back.clone()).unwrap(), bytes.clone());
        prop_assert_eq!(to_canonical(&v).unwrap(), bytes.clone(), "to_canonical(&Value) and value_to_canonical disagree");
        prop_assert_eq!(from_canonical::<Value>(&bytes).unwrap(), back);
    }

    /// canonicalize is idempotent and its result is what gets written.
    #[test]
    fn canonicalization_is_idempotent(v in value()) {
        let once = canonicalize(v).unwrap();
        let twice = canonicalize(once.clone()).unwrap();
        prop_assert_eq!(&once, &twice);
        // A canonical value is already in canonical order: plain ciborium
        // writes the same bytes as the canonical writer.
        prop_assert_eq!(encoding(&once), value_to_canonical(once.clone()).unwrap());
    }

    /// Map order in the input never matters; keys come out bytewise-sorted
    /// by encoding, pairwise strictly increasing in every map.
    #[test]
    fn map_order_is_bytewise_by_encoding_whatever_the_input_order(v in value(), seed in any::<u64>()) {
        let bytes = value_to_canonical(v.clone()).unwrap();
        let mut shuffled = v;
        let mut s = seed;
        shuffle_maps(&mut shuffled, &mut s);
        prop_assert_eq!(value_to_canonical(shuffled).unwrap(), bytes.clone());
        for keys in cbor_check::map_keys(&bytes) {
            for pair in keys.windows(2) {
                prop_assert!(pair[0] < pair[1], "keys out of order: {} then {}", hex::encode(&pair[0]), hex::encode(&pair[1]));
            }
        }
    }

    /// Another spelling of the same value (unsorted maps as ciborium writes
    /// them) is refused unless it happens to be the canonical one.
    #[test]
    fn only_the_canonical_spelling_is_accepted(v in value(), seed in any::<u64>()) {
        let canonical = value_to_canonical(v.clone()).unwrap();
        let mut shuffled = v;
        let mut s = seed;
        shuffle_maps(&mut shuffled, &mut s);
        let other = encoding(&shuffled);
        match decode_value_strict(&other) {
            Ok(_) => prop_assert_eq!(&other, &canonical),
            Err(e) => {
                prop_assert_ne!(&other, &canonical);
                prop_assert_eq!(e, CanonicalError::NotCanonical);
                prop_assert!(cbor_check::check_canonical(&other).is_err(), "our checker accepts what the decoder refuses");
            }
        }
    }

    /// The strict decoder and the independent checker agree on any input.
    #[test]
    fn strict_decoder_agrees_with_the_independent_checker(v in value(), edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4)) {
        let bytes = corrupt(value_to_canonical(v).unwrap(), edits);
        let ours = cbor_check::check_canonical(&bytes);
        let theirs = decode_value_strict(&bytes);
        prop_assert_eq!(
            ours.is_ok(),
            theirs.is_ok(),
            "checker {:?} vs decode_value_strict {:?} on {}",
            ours,
            theirs,
            hex::encode(&bytes)
        );
    }

    /// Untrusted bytes never panic the decoders.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_value(&bytes);
        let _ = decode_value_strict(&bytes);
        let _ = from_canonical::<WalRecord>(&bytes);
        let _ = from_canonical::<Proposal>(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A WAL record round-trips through its canonical encoding, and damaged
    /// encodings are refused without a panic.
    #[test]
    fn wal_records_round_trip_and_damaged_records_never_panic(
        rec in wal_record(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4),
    ) {
        let bytes = to_canonical(&rec).unwrap();
        prop_assert!(cbor_check::check_canonical(&bytes).is_ok());
        prop_assert_eq!(from_canonical::<WalRecord>(&bytes).unwrap(), rec.clone());
        prop_assert_eq!(rec.hash(), Hash::of_bytes(&bytes));
        let damaged = corrupt(bytes, edits);
        if let Ok(r) = from_canonical::<WalRecord>(&damaged) {
            // Whatever decodes must be canonical and re-encode to these bytes.
            prop_assert_eq!(to_canonical(&r).unwrap(), damaged);
        }
    }
}

/// The slice decoder (`cbor_de`, the fast path of `from_trusted` and
/// `from_canonical`) never disagrees with ciborium: whatever it decodes,
/// ciborium decodes to the same value, from well-formed and damaged input
/// alike; and it decodes every canonical encoding.
fn fast_agrees_with_ciborium<T>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok((fast, used)) = swoosh_core::cbor_de::decode::<T>(bytes) {
        let mut cursor = std::io::Cursor::new(bytes);
        let slow: T = ciborium::from_reader(&mut cursor).map_err(|e| {
            TestCaseError::fail(format!("fast path decoded what ciborium refuses: {e}"))
        })?;
        prop_assert_eq!(fast, slow);
        prop_assert_eq!(used as u64, cursor.position());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn slice_decoder_agrees_with_ciborium_on_values(
        v in value(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4),
    ) {
        let bytes = encoding(&v);
        let (fast, used) = swoosh_core::cbor_de::decode::<Value>(&bytes).unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(&fast, &v);
        fast_agrees_with_ciborium::<Value>(&bytes)?;
        fast_agrees_with_ciborium::<Value>(&corrupt(bytes, edits))?;
    }

    #[test]
    fn slice_decoder_agrees_with_ciborium_on_wal_records(
        rec in wal_record(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..4),
    ) {
        let bytes = to_canonical(&rec).unwrap();
        let (fast, used) = swoosh_core::cbor_de::decode::<WalRecord>(&bytes).unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(&fast, &rec);
        for cut in [1, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
            prop_assert!(swoosh_core::cbor_de::decode::<WalRecord>(&bytes[..cut]).is_err());
        }
        let damaged = corrupt(bytes, edits);
        fast_agrees_with_ciborium::<WalRecord>(&damaged)?;
        fast_agrees_with_ciborium::<Value>(&damaged)?;
    }

    #[test]
    fn slice_decoder_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        fast_agrees_with_ciborium::<Value>(&bytes)?;
        fast_agrees_with_ciborium::<WalRecord>(&bytes)?;
        fast_agrees_with_ciborium::<Proposal>(&bytes)?;
    }
}

/// Nesting past the depth limit is refused, not a stack overflow.
#[test]
fn slice_decoder_refuses_nesting_past_the_limit() {
    let mut deep = vec![0x81u8; 100_000];
    deep.push(0x00);
    assert!(swoosh_core::cbor_de::decode::<Value>(&deep).is_err());
    // An array claiming more elements than there are bytes allocates nothing.
    assert!(swoosh_core::cbor_de::decode::<Vec<u64>>(&[
        0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
    ])
    .is_err());
}

/// The slice decoder takes for a string, a struct and a field name only
/// what ciborium takes: no byte string as a string (a case proptest found),
/// no array as a struct, no integer as a field name. A byte-string field
/// name is taken by both.
#[test]
fn slice_decoder_takes_text_only_for_strings_and_field_names() {
    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Named {
        name: String,
    }
    // {"name": "a"}: accepted by both.
    let text = [0xa1, 0x64, b'n', b'a', b'm', b'e', 0x61, b'a'];
    assert_eq!(
        swoosh_core::cbor_de::decode::<Named>(&text).unwrap().0,
        Named { name: "a".into() }
    );
    // {"name": h'61'}: refused by both.
    let bytes_value = [0xa1, 0x64, b'n', b'a', b'm', b'e', 0x41, b'a'];
    assert!(swoosh_core::cbor_de::decode::<Named>(&bytes_value).is_err());
    assert!(ciborium::from_reader::<Named, _>(&bytes_value[..]).is_err());
    // {h'6e616d65': "a"}: taken by both, alike.
    let bytes_key = [0xa1, 0x44, b'n', b'a', b'm', b'e', 0x61, b'a'];
    assert_eq!(
        swoosh_core::cbor_de::decode::<Named>(&bytes_key).unwrap().0,
        ciborium::from_reader::<Named, _>(&bytes_key[..]).unwrap()
    );
    // ["a"] for the struct, and {0: "a"} (a field by position): ciborium
    // takes neither, so neither does the slice decoder.
    let as_array = [0x81, 0x61, b'a'];
    let by_position = [0xa1, 0x00, 0x61, b'a'];
    for bad in [&as_array[..], &by_position[..]] {
        assert!(ciborium::from_reader::<Named, _>(bad).is_err());
        assert!(swoosh_core::cbor_de::decode::<Named>(bad).is_err());
    }
    let mut char_bytes = vec![0x41, b'x'];
    assert!(swoosh_core::cbor_de::decode::<char>(&char_bytes).is_err());
    char_bytes[0] = 0x61;
    assert_eq!(
        swoosh_core::cbor_de::decode::<char>(&char_bytes).unwrap().0,
        'x'
    );
}

/// `from_canonical` promises that "a hash can never be computed over a
/// second spelling of the same value". For the content-addressed records
/// that means: bytes it accepts as a `T` are exactly the canonical encoding
/// of that `T`, so the hash of the bytes is the hash of the value. Each case
/// is canonical CBOR (sorted keys, shortest heads) of the record's map with
/// one unknown field added.
#[test]
fn typed_decoding_accepts_only_the_canonical_encoding_of_the_type() {
    fn with_unknown_field<T: serde::Serialize>(value: &T) -> Vec<u8> {
        let mut v = Value::serialized(value).unwrap();
        let Value::Map(entries) = &mut v else {
            panic!("a struct encodes as a map")
        };
        entries.push((Value::Text("zz_unknown".into()), Value::Integer(1.into())));
        value_to_canonical(v).unwrap()
    }
    fn second_spelling<T>(what: &str, value: &T) -> Option<String>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let bytes = with_unknown_field(value);
        let t: T = from_canonical(&bytes).ok()?;
        let own = to_canonical(&t).unwrap();
        (own != bytes).then(|| {
            format!(
                "{what}: {} bytes with field \"zz_unknown\" were accepted; the decoded value \
                 re-encodes as {} other bytes with hash {} instead of {}",
                bytes.len(),
                own.len(),
                Hash::of_bytes(&own),
                Hash::of_bytes(&bytes)
            )
        })
    }
    let rec = WalRecord {
        index: 1,
        prev_hash: Hash::ZERO,
        project: "default".into(),
        transition: "Boot_ConfigOk".into(),
        state_pre_hash: Hash::ZERO,
        state_post_hash: Hash::ZERO,
        inputs: Value::Map(vec![]),
        inputs_hash: Hash::ZERO,
        signer: SignerId([1; 32]),
        idem_key: "k".into(),
        hlc: Hlc::new(1, 0),
        window_id: String::new(),
        guard_outcomes: vec![],
        evidence: vec![],
        timestamp_ms: 1,
        signature: Signature([2; 64]),
        decision: Hash::ZERO,
    };
    let dr = DecisionRecord {
        kind: "bubble.dr.v1".into(),
        cluster_id: "c".into(),
        project: "default".into(),
        index: 1,
        transition: "Boot_ConfigOk".into(),
        region: "Boot".into(),
        from: "Boot.UNINITIALIZED".into(),
        to: "Boot.LICENSE_CHECK".into(),
        signer: SignerId([1; 32]),
        signer_roles: vec!["operator".into()],
        idem_key: "k".into(),
        hlc: Hlc::new(1, 0),
        window_id: String::new(),
        state_pre_hash: Hash::ZERO,
        state_post_hash: Hash::ZERO,
        inputs_hash: Hash::ZERO,
        guard_outcomes: vec![],
        evidence: vec![],
        links: vec![],
        justification: "j".into(),
    };
    let found: Vec<String> = [
        second_spelling("WalRecord", &rec),
        second_spelling("DecisionRecord", &dr),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(
        found.is_empty(),
        "from_canonical::<T> accepts a second spelling of a hashed record: core/src/cbor.rs \
         from_canonical checks that the CBOR value is canonical, not that T re-encodes to the \
         same bytes (and WalRecord/DecisionRecord lack #[serde(deny_unknown_fields)]):\n  {}",
        found.join("\n  ")
    );
}

// ---- text forms -------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn hlc_display_and_parse_round_trip(h in hlc()) {
        let s = h.to_string();
        prop_assert_eq!(s.parse::<Hlc>(), Ok(h));
        let (time, counter) = s.split_once('#').unwrap();
        prop_assert_eq!(time.len(), 29);
        prop_assert!(time.ends_with("+00:00"));
        prop_assert_eq!(counter, h.counter.to_string());
        // The same through serde (JSON and canonical CBOR carry the text form).
        prop_assert_eq!(serde_json::from_str::<Hlc>(&serde_json::to_string(&h).unwrap()).unwrap(), h);
        prop_assert_eq!(from_canonical::<Hlc>(&to_canonical(&h).unwrap()).unwrap(), h);
    }

    /// Order of HLCs is the order of (wall_ms, counter).
    #[test]
    fn hlc_order_is_wall_then_counter(a in hlc(), b in hlc()) {
        prop_assert_eq!(a.cmp(&b), (a.wall_ms, a.counter).cmp(&(b.wall_ms, b.counter)));
    }

    /// Any string parses or fails without a panic; whatever parses has
    /// exactly one spelling (signed bytes contain it).
    #[test]
    fn any_string_parses_or_fails_and_parsed_hlcs_have_one_spelling(s in "\\PC{0,40}") {
        if let Ok(h) = s.parse::<Hlc>() {
            prop_assert_eq!(h.to_string(), s);
        }
    }

    /// Near-misses of a valid HLC (one character replaced, inserted or
    /// removed) are either refused or spelled back exactly.
    #[test]
    fn near_miss_hlcs_are_refused_or_canonical(h in hlc(), pos in any::<usize>(), c in prop_oneof![proptest::char::range('0', '9'), any::<char>()], kind in 0u8..3) {
        let mut chars: Vec<char> = h.to_string().chars().collect();
        let i = pos % chars.len();
        match kind {
            0 => chars[i] = c,
            1 => chars.insert(i, c),
            _ => {
                chars.remove(i);
            }
        }
        let s: String = chars.into_iter().collect();
        if let Ok(p) = s.parse::<Hlc>() {
            prop_assert_eq!(p.to_string(), s.clone(), "{} parses but is spelled differently", s);
            prop_assert!(p.wall_ms <= HLC_WALL_MS_MAX && p.counter <= HLC_COUNTER_MAX);
        }
    }

    #[test]
    fn hash_signer_and_signature_text_forms_round_trip(a in any::<[u8; 32]>(), b in any::<[u8; 32]>()) {
        let h = Hash(a);
        prop_assert_eq!(h.to_string().parse::<Hash>(), Ok(h));
        prop_assert_eq!(serde_json::from_str::<Hash>(&serde_json::to_string(&h).unwrap()).unwrap(), h);
        let id = SignerId(a);
        prop_assert_eq!(id.to_string().parse::<SignerId>(), Ok(id.clone()));
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&a);
        sig[32..].copy_from_slice(&b);
        let sig = Signature(sig);
        prop_assert_eq!(sig.to_string().parse::<Signature>(), Ok(sig));
        // Upper-case hex is a second spelling and is refused.
        let upper = h.to_string().replace("blake3:", "").to_uppercase();
        if upper.chars().any(|c| c.is_ascii_uppercase()) {
            let upper_hash = format!("blake3:{}", upper);
            prop_assert!(upper_hash.parse::<Hash>().is_err());
            let upper_id = format!("hmmm:pubkey:{}", upper);
            prop_assert!(upper_id.parse::<SignerId>().is_err());
        }
    }

    #[test]
    fn any_string_parses_as_hash_signer_or_signature_without_panic(s in "\\PC{0,140}") {
        if let Ok(h) = s.parse::<Hash>() {
            prop_assert_eq!(h.to_string(), s.clone());
        }
        if let Ok(id) = s.parse::<SignerId>() {
            prop_assert_eq!(id.to_string(), s.clone());
        }
        if let Ok(sig) = s.parse::<Signature>() {
            prop_assert_eq!(sig.to_string(), s);
        }
    }

    /// Prefixed near-misses exercise the digit checks, including multi-byte
    /// characters where a byte length of 64 is not 64 characters.
    #[test]
    fn near_miss_hashes_and_signers_never_panic(a in any::<[u8; 32]>(), pos in any::<usize>(), c in any::<char>()) {
        for s in [Hash(a).to_string(), SignerId(a).to_string()] {
            let mut chars: Vec<char> = s.chars().collect();
            let i = pos % chars.len();
            chars[i] = c;
            let t: String = chars.into_iter().collect();
            if let Ok(h) = t.parse::<Hash>() {
                prop_assert_eq!(h.to_string(), t.clone());
            }
            if let Ok(id) = t.parse::<SignerId>() {
                prop_assert_eq!(id.to_string(), t.clone());
            }
        }
    }
}

// ---- proposals over JSON --------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A proposal sent as JSON with its inputs in any order is the same
    /// signed proposal: identical signing bytes, a valid signature and a
    /// matching inputs_hash.
    #[test]
    fn proposal_json_round_trip_keeps_signing_bytes(
        inputs in json_map(json_value()),
        seed in any::<u64>(),
        h in hlc(),
        idem in "[ -~]{1,40}",
        window in "\\PC{0,20}",
        evidence in proptest::collection::vec("(ucxl|bubble)://\\PC{0,20}", 0..3),
        project in "[a-z0-9][a-z0-9._-]{0,10}",
    ) {
        let p = ProposalBuilder::new(&project, "Boot_ConfigOk", Hash::of_bytes(b"head"), h, &idem)
            .inputs(&inputs)
            .unwrap()
            .window(window)
            .evidence(evidence)
            .sign(&key_from_label("cbor-props/signer"))
            .unwrap();
        prop_assert_eq!(p.check_shape(), Ok(()));

        let mut shuffled = inputs;
        let mut s = seed;
        shuffle_maps(&mut shuffled, &mut s);
        let mut fields = serde_json::to_value(&p).unwrap();
        fields.as_object_mut().unwrap().remove("inputs");
        let rest = serde_json::to_string(&fields).unwrap();
        let text = format!("{{\"inputs\":{},{}", json_text(&shuffled), &rest[1..]);

        let q: Proposal = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(q.signing_bytes().unwrap(), p.signing_bytes().unwrap());
        prop_assert_eq!(q.content_hash().unwrap(), p.content_hash().unwrap());
        prop_assert!(q.verify_signature().is_ok());
        prop_assert_eq!(q.check_shape(), Ok(()));
        // And back out: serde_json of the parsed proposal parses to the same bytes.
        let again: Proposal = serde_json::from_str(&serde_json::to_string(&q).unwrap()).unwrap();
        prop_assert_eq!(again.signing_bytes().unwrap(), p.signing_bytes().unwrap());
    }
}
