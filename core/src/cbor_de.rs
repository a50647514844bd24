//! A serde deserializer that reads CBOR straight from a byte slice,
//! borrowing text and byte strings from it.
//!
//! It accepts exactly the subset [`crate::cbor_fast`] writes: integers,
//! byte and text strings, definite-length arrays and maps, `false`, `true`
//! and `null`; enums as a text string (unit variant) or a one-entry map
//! `{variant: value}`, the way ciborium writes them. Floats, tags,
//! indefinite lengths and `undefined` are refused, and so is anything nested
//! deeper than [`CBOR_DEPTH_MAX`].
//!
//! It is only a fast path: every caller in `cbor.rs` falls back to ciborium
//! when it refuses, so what decodes at all and the error a refusal names are
//! unchanged. Reading the WAL spent about half of its time inside ciborium's
//! reader (header conversions, a scratch copy of every string); this
//! removes both. `from_canonical` still re-encodes what this decodes and
//! compares bytes, and a property test holds the two decoders together.

use crate::cbor::CBOR_DEPTH_MAX;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

#[derive(Debug)]
pub struct DeError;

impl std::fmt::Display for DeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not decodable on the fast path")
    }
}
impl std::error::Error for DeError {}
impl de::Error for DeError {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        DeError
    }
}

/// Decode one value from the start of `bytes`; returns it and the number of
/// bytes it took.
pub fn decode<'de, T: de::Deserialize<'de>>(bytes: &'de [u8]) -> Result<(T, usize), DeError> {
    let mut d = SliceDe {
        input: bytes,
        pos: 0,
        depth: 0,
    };
    let v = T::deserialize(&mut d)?;
    Ok((v, d.pos))
}

struct SliceDe<'de> {
    input: &'de [u8],
    pos: usize,
    depth: usize,
}

/// One item's head: major type and argument (additional info 0–27 only).
#[derive(Clone, Copy)]
struct Head {
    major: u8,
    arg: u64,
}

impl<'de> SliceDe<'de> {
    fn peek(&self) -> Result<u8, DeError> {
        self.input.get(self.pos).copied().ok_or(DeError)
    }

    fn take(&mut self, n: usize) -> Result<&'de [u8], DeError> {
        let end = self.pos.checked_add(n).ok_or(DeError)?;
        let s = self.input.get(self.pos..end).ok_or(DeError)?;
        self.pos = end;
        Ok(s)
    }

    fn head(&mut self) -> Result<Head, DeError> {
        let b = self.peek()?;
        self.pos += 1;
        let major = b >> 5;
        let info = b & 0x1f;
        let arg = match info {
            0..=23 => info as u64,
            24 => self.take(1)?[0] as u64,
            25 => u16::from_be_bytes(self.take(2)?.try_into().map_err(|_| DeError)?) as u64,
            26 => u32::from_be_bytes(self.take(4)?.try_into().map_err(|_| DeError)?) as u64,
            27 => u64::from_be_bytes(self.take(8)?.try_into().map_err(|_| DeError)?),
            // Reserved values and indefinite lengths.
            _ => return Err(DeError),
        };
        Ok(Head { major, arg })
    }

    fn len(&self, arg: u64) -> Result<usize, DeError> {
        let n = usize::try_from(arg).map_err(|_| DeError)?;
        // Every element takes at least one byte: a longer claim is a lie
        // that must not size an allocation.
        if n > self.input.len() - self.pos {
            return Err(DeError);
        }
        Ok(n)
    }

    fn enter(&mut self) -> Result<(), DeError> {
        if self.depth >= CBOR_DEPTH_MAX {
            return Err(DeError);
        }
        self.depth += 1;
        Ok(())
    }

    fn text(&mut self, arg: u64) -> Result<&'de str, DeError> {
        let n = usize::try_from(arg).map_err(|_| DeError)?;
        std::str::from_utf8(self.take(n)?).map_err(|_| DeError)
    }
}

impl<'de> de::Deserializer<'de> for &mut SliceDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let h = self.head()?;
        match h.major {
            0 => v.visit_u64(h.arg),
            1 => {
                let n = -1i128 - h.arg as i128;
                match i64::try_from(n) {
                    Ok(n) => v.visit_i64(n),
                    Err(_) => v.visit_i128(n),
                }
            }
            2 => {
                let n = usize::try_from(h.arg).map_err(|_| DeError)?;
                v.visit_borrowed_bytes(self.take(n)?)
            }
            3 => v.visit_borrowed_str(self.text(h.arg)?),
            4 => {
                let n = self.len(h.arg)?;
                self.enter()?;
                let r = v.visit_seq(Seq { de: self, left: n })?;
                self.depth -= 1;
                Ok(r)
            }
            5 => {
                let n = self.len(h.arg)?;
                self.enter()?;
                let r = v.visit_map(Map { de: self, left: n })?;
                self.depth -= 1;
                Ok(r)
            }
            7 => match h.arg {
                20 => v.visit_bool(false),
                21 => v.visit_bool(true),
                22 => v.visit_unit(),
                // undefined, floats, simple values: not in canonical data.
                _ => Err(DeError),
            },
            // Tags.
            _ => Err(DeError),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.peek()? == 0xf6 {
            self.pos += 1;
            v.visit_none()
        } else {
            v.visit_some(self)
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let b = self.peek()?;
        match b >> 5 {
            // A unit variant: its name.
            3 => {
                let h = self.head()?;
                let name = self.text(h.arg)?;
                v.visit_enum(IntoDeserializer::<DeError>::into_deserializer(name))
            }
            // {variant: value}
            5 => {
                let h = self.head()?;
                if h.arg != 1 {
                    return Err(DeError);
                }
                self.enter()?;
                let r = v.visit_enum(Variant { de: self })?;
                self.depth -= 1;
                Ok(r)
            }
            _ => Err(DeError),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_any(de::IgnoredAny)?;
        v.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        // As ciborium: the two decoders must hand types the same view.
        false
    }

    // What ciborium takes for each of these, and nothing more: through
    // `deserialize_any`, a byte string would reach serde's string visitor
    // (which takes UTF-8 bytes), an array a derived struct's visitor (which
    // takes a sequence) and an integer a derived field visitor (which takes
    // a field's position).
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let h = self.head()?;
        if h.major != 3 {
            return Err(DeError);
        }
        v.visit_borrowed_str(self.text(h.arg)?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.peek()? >> 5 {
            2 | 3 => self.deserialize_any(v),
            _ => Err(DeError),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        if self.peek()? >> 5 != 5 {
            return Err(DeError);
        }
        self.deserialize_any(v)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(v)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64
        bytes byte_buf unit unit_struct seq tuple
        tuple_struct
    }
}

struct Seq<'a, 'de> {
    de: &'a mut SliceDe<'de>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Seq<'_, 'de> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

struct Map<'a, 'de> {
    de: &'a mut SliceDe<'de>,
    left: usize,
}

impl<'de> de::MapAccess<'de> for Map<'_, 'de> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        seed.deserialize(&mut *self.de)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

struct Variant<'a, 'de> {
    de: &'a mut SliceDe<'de>,
}

impl<'a, 'de> de::EnumAccess<'de> for Variant<'a, 'de> {
    type Error = DeError;
    type Variant = Self;
    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), DeError> {
        let v = seed.deserialize(&mut *self.de)?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, 'de> {
    type Error = DeError;
    fn unit_variant(self) -> Result<(), DeError> {
        // The writer spells a unit variant as its bare name, never as a map.
        Err(DeError)
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(&mut *self.de)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_any(&mut *self.de, v)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_any(&mut *self.de, v)
    }
}
