//! A serde serializer that writes RFC 8949 §4.2.1 deterministic CBOR
//! directly: shortest-form heads, definite lengths, every map's entries
//! encoded separately and then sorted by their encoded keys. No intermediate
//! value tree and no per-node allocations beyond one buffer per map entry,
//! which is what makes hashing fast enough for replay.
//!
//! It produces exactly the bytes of the reference path in `cbor.rs`
//! (serialize to a `ciborium::Value`, canonicalize, write); the golden
//! vectors and a property test hold the two together. On any error the
//! caller falls back to the reference path, which names the offending path.

use serde::ser::{self, Serialize};

#[derive(Debug)]
pub struct FastError;

impl std::fmt::Display for FastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("value is not canonically encodable")
    }
}
impl std::error::Error for FastError {}
impl ser::Error for FastError {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        FastError
    }
}

const TAG_NAME: &str = "@@TAG@@";

pub fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, FastError> {
    encode_with_capacity(v, 256)
}

/// [`encode`] into a buffer of `capacity` bytes to start with: a caller
/// that knows the size (re-encoding bytes to compare with them) saves the
/// buffer's regrowth, a copy of everything written so far each time.
pub fn encode_with_capacity<T: Serialize + ?Sized>(
    v: &T,
    capacity: usize,
) -> Result<Vec<u8>, FastError> {
    let mut out = Vec::with_capacity(capacity);
    v.serialize(&mut Enc {
        out: &mut out,
        depth: 0,
    })?;
    Ok(out)
}

/// Write the shortest head of an item of major type `major` with argument
/// `n` (RFC 8949 §4.2.1).
pub fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= u8::MAX as u64 {
        out.push(m | 24);
        out.push(n as u8);
    } else if n <= u16::MAX as u64 {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u32::MAX as u64 {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn int(out: &mut Vec<u8>, v: i128) -> Result<(), FastError> {
    if v >= 0 {
        let n = u64::try_from(v).map_err(|_| FastError)?;
        head(out, 0, n);
    } else {
        let n = u64::try_from(-1 - v).map_err(|_| FastError)?;
        head(out, 1, n);
    }
    Ok(())
}

pub struct Enc<'a> {
    out: &'a mut Vec<u8>,
    depth: usize,
}

impl Enc<'_> {
    fn child(&mut self) -> Result<Enc<'_>, FastError> {
        if self.depth >= crate::cbor::CBOR_DEPTH_MAX {
            return Err(FastError);
        }
        Ok(Enc {
            out: self.out,
            depth: self.depth + 1,
        })
    }
}

/// An array being written: elements go straight out when the length is
/// known, or into a buffer when it is not.
pub struct SeqEnc<'a> {
    out: &'a mut Vec<u8>,
    depth: usize,
    buf: Option<(Vec<u8>, u64)>,
    /// For enum variants: the map wrapper `{variant: [...]}` is already open.
    _variant: bool,
}

/// A map or struct being written: entries are encoded back to back into one
/// scratch buffer (one allocation per map, not per entry) and written out in
/// the order of their encoded keys at `end`.
pub struct MapEnc<'a> {
    out: &'a mut Vec<u8>,
    depth: usize,
    buf: Vec<u8>,
    /// (key start, value start, value end) in `buf`.
    entries: Vec<(usize, usize, usize)>,
    pending_key: Option<(usize, usize)>,
}

/// Scratch buffers a thread keeps for the next maps it encodes: one record
/// opens dozens of maps, and allocating and freeing their buffers was a
/// large share of encoding time.
pub const MAP_SCRATCH_KEPT: usize = 32;
/// A scratch buffer that grew past this is freed rather than kept.
pub const MAP_SCRATCH_BYTES_MAX: usize = 64 * 1024;

type Scratch = (Vec<u8>, Vec<(usize, usize, usize)>);

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<Scratch>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl<'a> MapEnc<'a> {
    fn new(out: &'a mut Vec<u8>, depth: usize, len: usize) -> MapEnc<'a> {
        let (buf, entries) = SCRATCH
            .with(|s| s.borrow_mut().pop())
            .unwrap_or_else(|| (Vec::with_capacity(64 * len.max(1)), Vec::with_capacity(len)));
        MapEnc {
            out,
            depth,
            buf,
            entries,
            pending_key: None,
        }
    }
    fn finish(mut self) -> Result<(), FastError> {
        let buf = &self.buf;
        // Bytewise order of the encoded keys (RFC 8949 §4.2.1). Keys of one
        // struct nearly always differ in their first byte (a text key's
        // head carries its length), which settles the comparison without a
        // memcmp call; the full comparison is the same order.
        self.entries.sort_unstable_by(|a, b| {
            buf[a.0]
                .cmp(&buf[b.0])
                .then_with(|| buf[a.0 + 1..a.1].cmp(&buf[b.0 + 1..b.1]))
        });
        for w in self.entries.windows(2) {
            if buf[w[0].0..w[0].1] == buf[w[1].0..w[1].1] {
                return Err(FastError);
            }
        }
        head(self.out, 5, self.entries.len() as u64);
        for (k, _, end) in &self.entries {
            self.out.extend_from_slice(&buf[*k..*end]);
        }
        Ok(())
    }
    fn encode_part<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(usize, usize), FastError> {
        if self.depth >= crate::cbor::CBOR_DEPTH_MAX {
            return Err(FastError);
        }
        let start = self.buf.len();
        v.serialize(&mut Enc {
            out: &mut self.buf,
            depth: self.depth + 1,
        })?;
        Ok((start, self.buf.len()))
    }
}

impl Drop for MapEnc<'_> {
    fn drop(&mut self) {
        if self.buf.capacity() > MAP_SCRATCH_BYTES_MAX {
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        let mut entries = std::mem::take(&mut self.entries);
        buf.clear();
        entries.clear();
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < MAP_SCRATCH_KEPT {
                s.push((buf, entries));
            }
        });
    }
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

impl<'a, 'b> ser::Serializer for &'a mut Enc<'b> {
    type Ok = ();
    type Error = FastError;
    type SerializeSeq = SeqEnc<'a>;
    type SerializeTuple = SeqEnc<'a>;
    type SerializeTupleStruct = SeqEnc<'a>;
    type SerializeTupleVariant = SeqEnc<'a>;
    type SerializeMap = MapEnc<'a>;
    type SerializeStruct = MapEnc<'a>;
    type SerializeStructVariant = VariantMap<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), FastError> {
        self.out.push(if v { 0xf5 } else { 0xf4 });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), FastError> {
        int(self.out, v as i128)
    }
    fn serialize_i16(self, v: i16) -> Result<(), FastError> {
        int(self.out, v as i128)
    }
    fn serialize_i32(self, v: i32) -> Result<(), FastError> {
        int(self.out, v as i128)
    }
    fn serialize_i64(self, v: i64) -> Result<(), FastError> {
        int(self.out, v as i128)
    }
    fn serialize_i128(self, v: i128) -> Result<(), FastError> {
        int(self.out, v)
    }
    fn serialize_u8(self, v: u8) -> Result<(), FastError> {
        head(self.out, 0, v as u64);
        Ok(())
    }
    fn serialize_u16(self, v: u16) -> Result<(), FastError> {
        head(self.out, 0, v as u64);
        Ok(())
    }
    fn serialize_u32(self, v: u32) -> Result<(), FastError> {
        head(self.out, 0, v as u64);
        Ok(())
    }
    fn serialize_u64(self, v: u64) -> Result<(), FastError> {
        head(self.out, 0, v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), FastError> {
        head(self.out, 0, u64::try_from(v).map_err(|_| FastError)?);
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> Result<(), FastError> {
        Err(FastError)
    }
    fn serialize_f64(self, _: f64) -> Result<(), FastError> {
        Err(FastError)
    }
    fn serialize_char(self, v: char) -> Result<(), FastError> {
        let mut b = [0u8; 4];
        text(self.out, v.encode_utf8(&mut b));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), FastError> {
        text(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), FastError> {
        head(self.out, 2, v.len() as u64);
        self.out.extend_from_slice(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), FastError> {
        self.out.push(0xf6);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), FastError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), FastError> {
        self.out.push(0xf6);
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), FastError> {
        self.out.push(0xf6);
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), FastError> {
        text(self.out, variant);
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        v: &T,
    ) -> Result<(), FastError> {
        if name == TAG_NAME {
            return Err(FastError);
        }
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        _: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<(), FastError> {
        if name == TAG_NAME {
            return Err(FastError);
        }
        // {variant: value}: a one-entry map needs no sorting.
        head(self.out, 5, 1);
        text(self.out, variant);
        v.serialize(&mut self.child()?)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqEnc<'a>, FastError> {
        if self.depth >= crate::cbor::CBOR_DEPTH_MAX {
            return Err(FastError);
        }
        let buf = match len {
            Some(n) => {
                head(self.out, 4, n as u64);
                None
            }
            None => Some((Vec::new(), 0)),
        };
        Ok(SeqEnc {
            out: self.out,
            depth: self.depth,
            buf,
            _variant: false,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqEnc<'a>, FastError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<SeqEnc<'a>, FastError> {
        if name == TAG_NAME {
            return Err(FastError);
        }
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqEnc<'a>, FastError> {
        if name == TAG_NAME {
            return Err(FastError);
        }
        head(self.out, 5, 1);
        text(self.out, variant);
        head(self.out, 4, len as u64);
        Ok(SeqEnc {
            out: self.out,
            depth: self.depth + 1,
            buf: None,
            _variant: true,
        })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapEnc<'a>, FastError> {
        if self.depth >= crate::cbor::CBOR_DEPTH_MAX {
            return Err(FastError);
        }
        Ok(MapEnc::new(self.out, self.depth, len.unwrap_or(4)))
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<MapEnc<'a>, FastError> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<VariantMap<'a>, FastError> {
        head(self.out, 5, 1);
        text(self.out, variant);
        let depth = self.depth + 1;
        Ok(VariantMap(MapEnc::new(self.out, depth, len)))
    }
}

impl SeqEnc<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), FastError> {
        if self.depth >= crate::cbor::CBOR_DEPTH_MAX {
            return Err(FastError);
        }
        match &mut self.buf {
            None => v.serialize(&mut Enc {
                out: self.out,
                depth: self.depth + 1,
            }),
            Some((buf, n)) => {
                *n += 1;
                v.serialize(&mut Enc {
                    out: buf,
                    depth: self.depth + 1,
                })
            }
        }
    }
    fn finish(self) -> Result<(), FastError> {
        if let Some((buf, n)) = self.buf {
            head(self.out, 4, n);
            self.out.extend_from_slice(&buf);
        }
        Ok(())
    }
}

impl ser::SerializeSeq for SeqEnc<'_> {
    type Ok = ();
    type Error = FastError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), FastError> {
        self.element(v)
    }
    fn end(self) -> Result<(), FastError> {
        self.finish()
    }
}
impl ser::SerializeTuple for SeqEnc<'_> {
    type Ok = ();
    type Error = FastError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), FastError> {
        self.element(v)
    }
    fn end(self) -> Result<(), FastError> {
        self.finish()
    }
}
impl ser::SerializeTupleStruct for SeqEnc<'_> {
    type Ok = ();
    type Error = FastError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), FastError> {
        self.element(v)
    }
    fn end(self) -> Result<(), FastError> {
        self.finish()
    }
}
impl ser::SerializeTupleVariant for SeqEnc<'_> {
    type Ok = ();
    type Error = FastError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), FastError> {
        self.element(v)
    }
    fn end(self) -> Result<(), FastError> {
        self.finish()
    }
}

impl ser::SerializeMap for MapEnc<'_> {
    type Ok = ();
    type Error = FastError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), FastError> {
        self.pending_key = Some(self.encode_part(k)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), FastError> {
        let (ks, _) = self.pending_key.take().ok_or(FastError)?;
        let (vs, end) = self.encode_part(v)?;
        self.entries.push((ks, vs, end));
        Ok(())
    }
    fn end(self) -> Result<(), FastError> {
        self.finish()
    }
}

impl ser::SerializeStruct for MapEnc<'_> {
    type Ok = ();
    type Error = FastError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), FastError> {
        let ks = self.buf.len();
        text(&mut self.buf, key);
        let (vs, end) = self.encode_part(v)?;
        self.entries.push((ks, vs, end));
        Ok(())
    }
    fn end(self) -> Result<(), FastError> {
        self.finish()
    }
}

pub struct VariantMap<'a>(MapEnc<'a>);

impl ser::SerializeStructVariant for VariantMap<'_> {
    type Ok = ();
    type Error = FastError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        v: &T,
    ) -> Result<(), FastError> {
        ser::SerializeStruct::serialize_field(&mut self.0, key, v)
    }
    fn end(self) -> Result<(), FastError> {
        self.0.finish()
    }
}
