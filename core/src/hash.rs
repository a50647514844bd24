//! BLAKE3-256 content hashes, written `blake3:<64 lowercase hex>`.
//!
//! The hash of a structure is always BLAKE3 over its canonical CBOR encoding
//! ([`hash_of`]); the only other hash inputs are the Merkle nodes of the root
//! hash, which carry their own domain prefixes (see `state::root_hash`).

use crate::cbor::{to_canonical, CanonicalError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

pub const HASH_PREFIX: &str = "blake3:";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashParseError {
    #[error("hash must start with \"blake3:\" (got {0:?})")]
    Prefix(String),
    #[error("hash must have 64 lowercase hex digits after \"blake3:\" (got {0:?})")]
    Digits(String),
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes` after `prefix`, into `buf`; no allocation.
pub(crate) fn hex_into<'a>(buf: &'a mut [u8], prefix: &str, bytes: &[u8]) -> &'a str {
    let p = prefix.len();
    buf[..p].copy_from_slice(prefix.as_bytes());
    for (i, b) in bytes.iter().enumerate() {
        buf[p + 2 * i] = HEX[(b >> 4) as usize];
        buf[p + 2 * i + 1] = HEX[(b & 0x0f) as usize];
    }
    let n = p + 2 * bytes.len();
    std::str::from_utf8(&buf[..n]).expect("ASCII prefix and hex digits are UTF-8")
}

impl Hash {
    pub const ZERO: Hash = Hash([0; 32]);

    pub fn of_bytes(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// BLAKE3 of the canonical CBOR encoding of `value`.
pub fn hash_of<T: Serialize + ?Sized>(value: &T) -> Result<Hash, CanonicalError> {
    Ok(Hash::of_bytes(&to_canonical(value)?))
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 7 + 64];
        f.write_str(hex_into(&mut buf, HASH_PREFIX, &self.0))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl FromStr for Hash {
    type Err = HashParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s
            .strip_prefix(HASH_PREFIX)
            .ok_or_else(|| HashParseError::Prefix(truncate(s)))?;
        if digits.len() != 64
            || !digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(HashParseError::Digits(truncate(s)));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(digits, &mut out).map_err(|_| HashParseError::Digits(truncate(s)))?;
        Ok(Hash(out))
    }
}

pub(crate) fn truncate(s: &str) -> String {
    if s.len() <= 80 {
        s.to_string()
    } else {
        let mut end = 80;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 7 + 64];
        s.serialize_str(hex_into(&mut buf, HASH_PREFIX, &self.0))
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: std::borrow::Cow<'de, str> = Deserialize::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let h = Hash::of_bytes(b"swoosh");
        let s = h.to_string();
        assert!(s.starts_with("blake3:"));
        assert_eq!(s.len(), 7 + 64);
        assert_eq!(s.parse::<Hash>().unwrap(), h);
    }

    #[test]
    fn parse_errors_name_the_problem() {
        assert!(matches!(
            "sha256:00".parse::<Hash>(),
            Err(HashParseError::Prefix(_))
        ));
        assert!(matches!(
            "blake3:00".parse::<Hash>(),
            Err(HashParseError::Digits(_))
        ));
        let upper = format!("blake3:{}", "A".repeat(64));
        assert!(matches!(
            upper.parse::<Hash>(),
            Err(HashParseError::Digits(_))
        ));
    }
}
