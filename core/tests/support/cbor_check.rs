//! An independent checker for SWOOSH's canonical CBOR (SPEC §4, RFC 8949
//! §4.2.1 core deterministic encoding), written from the RFC without using
//! ciborium or `swoosh_core::cbor`, so the tests do not grade the encoder with
//! its own decoder.
//!
//! Accepted: exactly one data item with shortest-form heads (integers, lengths
//! and counts), definite lengths only, valid UTF-8 text, map keys strictly
//! increasing in the bytewise order of their encodings (hence no duplicates),
//! and of major type 7 only `false`, `true` and `null`. Refused: floats, tags,
//! `undefined` and other simple values, indefinite lengths, trailing bytes.

#![allow(dead_code)] // each test binary uses a different part

pub const DEPTH_MAX: usize = 128;

/// `Ok(())` if `bytes` is one canonical item; otherwise where and why not.
pub fn check_canonical(bytes: &[u8]) -> Result<(), String> {
    let mut p = Parser { b: bytes, pos: 0 };
    p.item(0)?;
    if p.pos != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the item",
            bytes.len() - p.pos
        ));
    }
    Ok(())
}

/// The encoded keys of every map in `bytes`, map by map, in the order they
/// appear. `bytes` must pass [`check_canonical`].
pub fn map_keys(bytes: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let mut p = Parser { b: bytes, pos: 0 };
    let mut out = vec![];
    p.collect_keys(&mut out)
        .expect("map_keys needs canonical input");
    out
}

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err<T>(&self, why: impl std::fmt::Display) -> Result<T, String> {
        Err(format!("at byte {}: {why}", self.pos))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let left = (self.b.len() - self.pos) as u64;
        if n > left {
            return self.err(format!("needs {n} bytes, {left} left"));
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn uint(&mut self, n: u64) -> Result<u64, String> {
        Ok(self.take(n)?.iter().fold(0u64, |a, b| (a << 8) | *b as u64))
    }

    /// Reads an initial byte and its argument; returns (major type, argument).
    fn head(&mut self) -> Result<(u8, u64), String> {
        let ib = self.take(1)?[0];
        let (major, ai) = (ib >> 5, ib & 0x1f);
        if major == 7 {
            return match ai {
                20..=22 => Ok((7, ai as u64)),
                23 => self.err("`undefined` is not allowed"),
                25..=27 => self.err("floats are not allowed in hashed data"),
                31 => self.err("break outside an indefinite-length item"),
                _ => self.err(format!("simple value {ai} is not allowed")),
            };
        }
        let (arg, min) = match ai {
            0..=23 => return Ok((major, ai as u64)),
            24 => (self.uint(1)?, 24),
            25 => (self.uint(2)?, 0x100),
            26 => (self.uint(4)?, 0x1_0000),
            27 => (self.uint(8)?, 0x1_0000_0000),
            28..=30 => return self.err(format!("reserved additional information {ai}")),
            _ => return self.err("indefinite length"),
        };
        if arg < min {
            return self.err(format!("argument {arg} is not in shortest form"));
        }
        Ok((major, arg))
    }

    fn item(&mut self, depth: usize) -> Result<(), String> {
        if depth > DEPTH_MAX {
            return self.err("nesting too deep");
        }
        let (major, arg) = self.head()?;
        match major {
            0 | 1 | 7 => Ok(()),
            2 => self.take(arg).map(|_| ()),
            3 => {
                let s = self.take(arg)?;
                std::str::from_utf8(s)
                    .map(|_| ())
                    .map_err(|e| format!("invalid UTF-8 text: {e}"))
            }
            4 => (0..arg).try_for_each(|_| self.item(depth + 1)),
            5 => {
                let mut prev: Option<&[u8]> = None;
                for _ in 0..arg {
                    let start = self.pos;
                    self.item(depth + 1)?;
                    let key = &self.b[start..self.pos];
                    if let Some(p) = prev {
                        if p >= key {
                            return Err(format!(
                                "at byte {start}: map key {} does not sort after {} \
                                 (bytewise order of encodings, no duplicates)",
                                hex(key),
                                hex(p)
                            ));
                        }
                    }
                    prev = Some(key);
                    self.item(depth + 1)?;
                }
                Ok(())
            }
            _ => self.err(format!("tag {arg} is not allowed in hashed data")),
        }
    }

    fn collect_keys(&mut self, out: &mut Vec<Vec<Vec<u8>>>) -> Result<(), String> {
        let (major, arg) = self.head()?;
        match major {
            2 | 3 => self.take(arg).map(|_| ()),
            4 => (0..arg).try_for_each(|_| self.collect_keys(out)),
            5 => {
                let slot = out.len();
                out.push(vec![]);
                for _ in 0..arg {
                    let start = self.pos;
                    self.collect_keys(out)?;
                    out[slot].push(self.b[start..self.pos].to_vec());
                    self.collect_keys(out)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn the_checker_itself_refuses_each_non_canonical_form() {
    let cases: &[(&str, &str)] = &[
        ("a2616202626161 01", ""),
        ("a2626161016162 02", "does not sort"),
        ("a2616101616102", "does not sort"),
        ("1801", "shortest"),
        ("190017", "shortest"),
        ("1a0000ffff", "shortest"),
        ("1b00000000ffffffff", "shortest"),
        ("3800", "shortest"),
        ("5800", "shortest"),
        ("9f01ff", "indefinite"),
        ("f93c00", "floats"),
        ("fb3ff8000000000000", "floats"),
        ("c11a514b67b0", "tag"),
        ("f7", "undefined"),
        ("f0", "simple value"),
        ("0101", "trailing"),
        ("8201", "needs 1 bytes"),
        ("62c328", "UTF-8"),
        ("1c", "reserved"),
    ];
    for (h, want) in cases {
        let bytes: Vec<u8> = (0..h.replace(' ', "").len() / 2)
            .map(|i| u8::from_str_radix(&h.replace(' ', "")[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let got = check_canonical(&bytes);
        if want.is_empty() {
            assert_eq!(got, Ok(()), "{h}");
        } else {
            let e = got.expect_err(h);
            assert!(e.contains(want), "{h}: {e} should mention {want:?}");
        }
    }
}
