//! ed25519 identities and domain-separated signatures.
//!
//! A signer is written `hmmm:pubkey:<64 lowercase hex>` (the 32-byte ed25519
//! public key); a signature is 128 lowercase hex digits. Every signature is
//! over `DOMAIN || canonical_cbor(body)`, with a distinct domain per kind of
//! structure so a signature over a vote can never be replayed as a proposal.

use crate::cbor::{to_canonical, CanonicalError};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

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

    pub fn verifying_key(&self) -> Result<VerifyingKey, SigError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| SigError::SignerKey(self.to_string()))
    }
}

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
    fn ids_round_trip_and_bad_forms_are_refused() {
        let id = SignerId::from_signing_key(&key_from_label("bob"));
        assert_eq!(id.to_string().parse::<SignerId>().unwrap(), id);
        assert!("hmmm:pubkey:xyz".parse::<SignerId>().is_err());
        assert!("pubkey:00".parse::<SignerId>().is_err());
        assert!("00".parse::<Signature>().is_err());
    }
}
