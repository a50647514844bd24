//! ed25519 identities and domain-separated signatures.
//!
//! A signer is written `hmmm:pubkey:<64 lowercase hex>` (the 32-byte ed25519
//! public key); a signature is 128 lowercase hex digits. Every signature is
//! over `DOMAIN || canonical_cbor(body)`, with a distinct domain per kind of
//! structure so a signature over a vote can never be replayed as a proposal.

use crate::cbor::{to_canonical, CanonicalError};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{LazyLock, PoisonError, RwLock};

pub const SIGNER_PREFIX: &str = "hmmm:pubkey:";

/// Signature domains (each ends in NUL so no domain is a prefix of another).
pub mod domain {
    pub const PROPOSAL: &[u8] = b"SWOOSH-PROPOSAL-v1\0";
    pub const VOTE: &[u8] = b"SWOOSH-VOTE-v1\0";
    pub const LICENSE: &[u8] = b"SWOOSH-LICENSE-v1\0";
    pub const PROBE: &[u8] = b"SWOOSH-PROBE-v1\0";
    pub const DECISION: &[u8] = b"SWOOSH-DR-v1\0";
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SignerId(pub [u8; 32]);

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SigError {
    #[error("signer must be \"hmmm:pubkey:\" followed by 64 lowercase hex digits (got {0:?})")]
    SignerFormat(String),
    #[error("signer {0} is not a valid ed25519 public key")]
    SignerKey(String),
    #[error("signature must be 128 lowercase hex digits (got {0:?})")]
    SignatureFormat(String),
    #[error("signature does not verify for signer {signer}: the signed bytes or the key differ")]
    Invalid { signer: String },
    #[error(transparent)]
    Encode(#[from] CanonicalError),
}

impl SignerId {
    pub fn from_signing_key(k: &SigningKey) -> SignerId {
        SignerId(k.verifying_key().to_bytes())
    }

    /// The decompressed public key, from [`VERIFYING_KEYS`] when this signer
    /// was seen before.
    pub fn verifying_key(&self) -> Result<VerifyingKey, SigError> {
        if let Some(vk) = VERIFYING_KEYS
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&self.0)
        {
            return Ok(*vk);
        }
        let vk =
            VerifyingKey::from_bytes(&self.0).map_err(|_| SigError::SignerKey(self.to_string()))?;
        let mut keys = VERIFYING_KEYS
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if keys.len() >= VERIFYING_KEYS_CACHED_MAX {
            keys.clear();
        }
        keys.insert(self.0, vk);
        Ok(vk)
    }
}

/// Most decompressed keys [`VERIFYING_KEYS`] holds; at the limit it starts
/// over (a flood of one-off signers costs their decompression, nothing more).
pub const VERIFYING_KEYS_CACHED_MAX: usize = 1024;

/// Decompressed public keys of signers already seen, by their 32 bytes.
/// Decompressing is a field square root: ~6 of a verification's ~55 µs on
/// the reference machine, and a node meets the same few roster keys over
/// and over. Only keys that decompress are kept, and a key's decompression
/// has one answer, so the cache changes no result, only its cost.
static VERIFYING_KEYS: LazyLock<RwLock<HashMap<[u8; 32], VerifyingKey>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));

impl fmt::Display for SignerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 12 + 64];
        f.write_str(crate::hash::hex_into(&mut buf, SIGNER_PREFIX, &self.0))
    }
}
impl fmt::Debug for SignerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for SignerId {
    type Err = SigError;
    fn from_str(s: &str) -> Result<Self, SigError> {
        let mut out = [0u8; 32];
        match s.strip_prefix(SIGNER_PREFIX) {
            Some(h) if crate::hash::lower_hex_decode(h.as_bytes(), &mut out) => Ok(SignerId(out)),
            _ => Err(SigError::SignerFormat(crate::hash::truncate(s))),
        }
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 128];
        f.write_str(crate::hash::hex_into(&mut buf, "", &self.0))
    }
}
impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for Signature {
    type Err = SigError;
    fn from_str(s: &str) -> Result<Self, SigError> {
        let mut out = [0u8; 64];
        if !crate::hash::lower_hex_decode(s.as_bytes(), &mut out) {
            return Err(SigError::SignatureFormat(crate::hash::truncate(s)));
        }
        Ok(Signature(out))
    }
}

macro_rules! string_serde {
    ($t:ty, $len:expr, $prefix:expr, $what:expr) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut buf = [0u8; $len];
                s.serialize_str(crate::hash::hex_into(&mut buf, $prefix, &self.0))
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                crate::hash::deserialize_parsed(d, $what)
            }
        }
    };
}
string_serde!(
    SignerId,
    12 + 64,
    SIGNER_PREFIX,
    "a signer id (\"hmmm:pubkey:\" + 64 lowercase hex)"
);
string_serde!(
    Signature,
    128,
    "",
    "an ed25519 signature (128 lowercase hex)"
);

/// The exact bytes a signature covers.
pub fn signing_bytes<T: Serialize + ?Sized>(
    domain: &[u8],
    body: &T,
) -> Result<Vec<u8>, CanonicalError> {
    let enc = to_canonical(body)?;
    let mut out = Vec::with_capacity(domain.len() + enc.len());
    out.extend_from_slice(domain);
    out.extend_from_slice(&enc);
    Ok(out)
}

pub fn sign<T: Serialize + ?Sized>(
    domain: &[u8],
    body: &T,
    key: &SigningKey,
) -> Result<Signature, CanonicalError> {
    let bytes = signing_bytes(domain, body)?;
    Ok(sign_bytes(&bytes, key))
}

/// Sign `bytes`, already domain-prefixed ([`signing_bytes`]).
pub fn sign_bytes(bytes: &[u8], key: &SigningKey) -> Signature {
    Signature(key.sign(bytes).to_bytes())
}

pub fn verify<T: Serialize + ?Sized>(
    domain: &[u8],
    body: &T,
    signer: &SignerId,
    sig: &Signature,
) -> Result<(), SigError> {
    let bytes = signing_bytes(domain, body)?;
    verify_bytes(&bytes, signer, sig)
}

pub fn verify_bytes(bytes: &[u8], signer: &SignerId, sig: &Signature) -> Result<(), SigError> {
    let vk = signer.verifying_key()?;
    let s = ed25519_dalek::Signature::from_bytes(&sig.0);
    vk.verify_strict(bytes, &s).map_err(|_| SigError::Invalid {
        signer: signer.to_string(),
    })
}

/// Deterministic test/demo key from a seed label. Never for production keys:
/// `swoosh keygen` draws from the OS RNG outside the core.
pub fn key_from_label(label: &str) -> SigningKey {
    SigningKey::from_bytes(blake3::hash(label.as_bytes()).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_domain_separation() {
        let k = key_from_label("alice");
        let id = SignerId::from_signing_key(&k);
        let body = ("x", 1u8);
        let s = sign(domain::VOTE, &body, &k).unwrap();
        verify(domain::VOTE, &body, &id, &s).unwrap();
        assert!(verify(domain::PROPOSAL, &body, &id, &s).is_err());
        assert!(verify(domain::VOTE, &("x", 2u8), &id, &s).is_err());
    }

    #[test]
    fn cached_keys_verify_exactly_like_fresh_ones() {
        let body = ("cache", 7u8);
        let k = key_from_label("carol");
        let id = SignerId::from_signing_key(&k);
        let good = sign(domain::VOTE, &body, &k).unwrap();
        let other = sign(domain::VOTE, &body, &key_from_label("dave")).unwrap();
        for _ in 0..3 {
            verify(domain::VOTE, &body, &id, &good).unwrap();
            assert!(matches!(
                verify(domain::VOTE, &body, &id, &other),
                Err(SigError::Invalid { .. })
            ));
        }
        // A key that does not decompress is refused every time, never kept.
        let bad = (0u8..=255)
            .map(|b| SignerId([b; 32]))
            .find(|s| VerifyingKey::from_bytes(&s.0).is_err())
            .expect("some repeated byte is not a curve point");
        for _ in 0..2 {
            assert!(matches!(bad.verifying_key(), Err(SigError::SignerKey(_))));
            assert!(!VERIFYING_KEYS.read().unwrap().contains_key(&bad.0));
        }
        // Past the bound the cache starts over and stays right.
        for i in 0..VERIFYING_KEYS_CACHED_MAX + 10 {
            let k = SigningKey::from_bytes(
                &[(i % 251) as u8, (i / 251) as u8, 1, 2]
                    .repeat(8)
                    .try_into()
                    .unwrap(),
            );
            let id = SignerId::from_signing_key(&k);
            assert_eq!(id.verifying_key().unwrap(), k.verifying_key());
            assert!(VERIFYING_KEYS.read().unwrap().len() <= VERIFYING_KEYS_CACHED_MAX);
        }
        verify(domain::VOTE, &body, &id, &good).unwrap();
    }

    #[test]
    fn ids_round_trip_and_bad_forms_are_refused() {
        let id = SignerId::from_signing_key(&key_from_label("bob"));
        assert_eq!(id.to_string().parse::<SignerId>().unwrap(), id);
        assert!("hmmm:pubkey:xyz".parse::<SignerId>().is_err());
        assert!("pubkey:00".parse::<SignerId>().is_err());
        assert!("00".parse::<Signature>().is_err());
    }
}
