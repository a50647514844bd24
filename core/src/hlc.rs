//! Hybrid logical clock (Kulkarni, Demirbas et al., "Logical Physical Clocks").
//!
//! Written `YYYY-MM-DDTHH:MM:SS.mmm+00:00#counter` (UTC, exactly three
//! millisecond digits). Only that one spelling is accepted, because the HLC
//! is part of signed bytes: two spellings of the same instant would let a
//! proposal verify on one node and fail on another.
//!
//! The core never reads a clock: every function here is handed the wall time.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Largest counter value; past it the logical part would overflow.
pub const HLC_COUNTER_MAX: u32 = u32::MAX - 1;
/// Latest representable wall time (year 9999), so formatting stays 4-digit.
pub const HLC_WALL_MS_MAX: u64 = 253_402_300_799_999;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc {
    pub wall_ms: u64,
    pub counter: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HlcError {
    #[error("hlc {got:?} is not in the form YYYY-MM-DDTHH:MM:SS.mmm+00:00#counter (UTC, 3 millisecond digits): {why}")]
    Format { got: String, why: &'static str },
    #[error("hlc wall time {0} ms is outside 1970..=9999")]
    WallRange(u64),
}

impl Hlc {
    pub const fn new(wall_ms: u64, counter: u32) -> Hlc {
        Hlc { wall_ms, counter }
    }

    /// Send/local event rule: advance past both the last HLC and the wall
    /// time. A counter at [`HLC_COUNTER_MAX`] moves to the next millisecond
    /// instead (still after `last`): an error there let anyone whose
    /// proposal carried a maximal counter stop every proposal built after
    /// it (the leader's own quarantines and certificates included) until
    /// the wall clock passed that millisecond.
    pub fn send(last: Hlc, wall_ms: u64) -> Result<Hlc, HlcError> {
        let next = if wall_ms > last.wall_ms {
            Hlc::new(wall_ms, 0)
        } else {
            after(last.wall_ms, last.counter)
        };
        check_wall(next)
    }

    /// Receive rule: merge a remote HLC into the local one (a maximal
    /// counter moves to the next millisecond, as in [`Hlc::send`]).
    pub fn receive(local: Hlc, remote: Hlc, wall_ms: u64) -> Result<Hlc, HlcError> {
        let wall = wall_ms.max(local.wall_ms).max(remote.wall_ms);
        let next = if wall == local.wall_ms && wall == remote.wall_ms {
            after(wall, local.counter.max(remote.counter))
        } else if wall == local.wall_ms {
            after(wall, local.counter)
        } else if wall == remote.wall_ms {
            after(wall, remote.counter)
        } else {
            Hlc::new(wall, 0)
        };
        check_wall(next)
    }

    /// How far this HLC's physical part runs ahead of `wall_ms` (0 if behind).
    pub fn ahead_of_ms(&self, wall_ms: u64) -> u64 {
        self.wall_ms.saturating_sub(wall_ms)
    }
}

/// The HLC right after `(wall_ms, counter)`: the next counter, or the next
/// millisecond's first once the counter is at [`HLC_COUNTER_MAX`] (the
/// wall part past the year 9999 is refused by `check_wall`).
fn after(wall_ms: u64, counter: u32) -> Hlc {
    match counter.checked_add(1) {
        Some(c) if c <= HLC_COUNTER_MAX => Hlc::new(wall_ms, c),
        _ => Hlc::new(wall_ms.saturating_add(1), 0),
    }
}

fn check_wall(h: Hlc) -> Result<Hlc, HlcError> {
    if h.wall_ms > HLC_WALL_MS_MAX {
        Err(HlcError::WallRange(h.wall_ms))
    } else {
        Ok(h)
    }
}

/// Total order of proposals: HLC first, ties broken by (signer, idem_key).
pub fn order_key_cmp(a: (&Hlc, &str, &str), b: (&Hlc, &str, &str)) -> Ordering {
    a.0.cmp(b.0)
        .then_with(|| a.1.cmp(b.1))
        .then_with(|| a.2.cmp(b.2))
}

/// [`order_key_cmp`] with the signers as ids, without rendering them: a
/// signer's text is a fixed prefix and the lowercase hex of its key bytes,
/// and hex keeps byte order, so the bytes order exactly as the text does.
pub fn order_key_cmp_ids(
    a: (&Hlc, &crate::sig::SignerId, &str),
    b: (&Hlc, &crate::sig::SignerId, &str),
) -> Ordering {
    a.0.cmp(b.0)
        .then_with(|| a.1 .0.cmp(&b.1 .0))
        .then_with(|| a.2.cmp(b.2))
}

// Civil-calendar conversions (Howard Hinnant's algorithms), so formatting
// needs no time crate and no clock.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// One cached wall-clock text (see [`HlcText::wall`]); `len` 0 is empty.
#[derive(Clone, Copy)]
struct WallText {
    wall_ms: u64,
    len: u8,
    text: [u8; 40],
}

thread_local! {
    static WALL_TEXT: std::cell::RefCell<[WallText; 2]> = const {
        std::cell::RefCell::new(
            [WallText {
                wall_ms: 0,
                len: 0,
                text: [0; 40],
            }; 2],
        )
    };
}

/// The text form of an HLC, built on the stack: every WAL record, decision
/// record and proposal carries HLCs, and `format!` made their formatting a
/// visible share of the reducer's time. The longest form (a 9-digit year
/// and a 10-digit counter) is 45 bytes.
struct HlcText {
    b: [u8; 48],
    n: usize,
}

impl HlcText {
    fn new() -> HlcText {
        HlcText { b: [0; 48], n: 0 }
    }
    fn push(&mut self, c: u8) {
        self.b[self.n] = c;
        self.n += 1;
    }
    /// `v` in decimal, zero-padded to at least `width` digits.
    fn num(&mut self, mut v: u64, width: usize) {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for _ in tmp.len() - i..width {
            self.push(b'0');
        }
        for &c in &tmp[i..] {
            self.push(c);
        }
    }
    /// `YYYY-MM-DDTHH:MM:SS.mmm+00:00`, from a two-entry per-thread cache
    /// when the same instant was just formatted: a transition formats its
    /// proposal's HLC several times (guard reasons, the decision record, the
    /// WAL record), and the calendar arithmetic was ~8 % of replay.
    fn wall(&mut self, wall_ms: u64) {
        let start = self.n;
        let hit = WALL_TEXT.with(|c| {
            let c = c.borrow();
            match c.iter().find(|e| e.len > 0 && e.wall_ms == wall_ms) {
                Some(e) => {
                    let n = e.len as usize;
                    self.b[start..start + n].copy_from_slice(&e.text[..n]);
                    self.n = start + n;
                    true
                }
                None => false,
            }
        });
        if hit {
            return;
        }
        self.wall_uncached(wall_ms);
        let n = self.n - start;
        WALL_TEXT.with(|c| {
            let mut c = c.borrow_mut();
            c[1] = c[0];
            c[0].wall_ms = wall_ms;
            c[0].len = n as u8;
            c[0].text[..n].copy_from_slice(&self.b[start..start + n]);
        });
    }

    fn wall_uncached(&mut self, wall_ms: u64) {
        let secs = wall_ms / 1000;
        let ms = wall_ms % 1000;
        // secs <= u64::MAX / 1000 fits an i64; days and years are >= 0.
        let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
        let sod = secs % 86_400;
        self.num(y as u64, 4);
        self.push(b'-');
        self.num(mo as u64, 2);
        self.push(b'-');
        self.num(d as u64, 2);
        self.push(b'T');
        self.num(sod / 3600, 2);
        self.push(b':');
        self.num((sod / 60) % 60, 2);
        self.push(b':');
        self.num(sod % 60, 2);
        self.push(b'.');
        self.num(ms, 3);
        for &c in b"+00:00" {
            self.push(c);
        }
    }
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.b[..self.n]).expect("ASCII digits and punctuation")
    }
}

fn hlc_text(h: &Hlc) -> HlcText {
    let mut t = HlcText::new();
    t.wall(h.wall_ms);
    t.push(b'#');
    t.num(h.counter as u64, 1);
    t
}

/// Format milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmm+00:00`.
pub fn format_wall_ms(wall_ms: u64) -> String {
    let mut t = HlcText::new();
    t.wall(wall_ms);
    t.as_str().to_owned()
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(hlc_text(self).as_str())
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

fn digits(s: &[u8], n: usize) -> Option<u64> {
    if s.len() != n || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |acc, b| acc * 10 + (b - b'0') as u64))
}

impl FromStr for Hlc {
    type Err = HlcError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| HlcError::Format {
            got: crate::hash::truncate(s),
            why,
        };
        let (time, counter) = s.split_once('#').ok_or_else(|| err("missing '#counter'"))?;
        let b = time.as_bytes();
        if b.len() != 29 {
            return Err(err("the time part must be exactly 29 characters"));
        }
        if &b[4..5] != b"-"
            || &b[7..8] != b"-"
            || &b[10..11] != b"T"
            || &b[13..14] != b":"
            || &b[16..17] != b":"
            || &b[19..20] != b"."
        {
            return Err(err("separators must be - - T : : ."));
        }
        if &b[23..] != b"+00:00" {
            return Err(err("the offset must be +00:00 (UTC)"));
        }
        let y = digits(&b[0..4], 4).ok_or_else(|| err("bad year"))?;
        let mo = digits(&b[5..7], 2).ok_or_else(|| err("bad month"))?;
        let d = digits(&b[8..10], 2).ok_or_else(|| err("bad day"))?;
        let h = digits(&b[11..13], 2).ok_or_else(|| err("bad hour"))?;
        let mi = digits(&b[14..16], 2).ok_or_else(|| err("bad minute"))?;
        let se = digits(&b[17..19], 2).ok_or_else(|| err("bad second"))?;
        let ms = digits(&b[20..23], 3).ok_or_else(|| err("bad milliseconds"))?;
        if y < 1970 || !(1..=12).contains(&mo) || h > 23 || mi > 59 || se > 59 {
            return Err(err("a date or time field is out of range"));
        }
        let days_in_month = match mo {
            2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        if d == 0 || d > days_in_month {
            return Err(err("day out of range for the month"));
        }
        if counter.is_empty()
            || counter.len() > 10
            || (counter.len() > 1 && counter.starts_with('0'))
        {
            return Err(err(
                "the counter must be a decimal integer without leading zeros",
            ));
        }
        let counter = digits(counter.as_bytes(), counter.len())
            .ok_or_else(|| err("the counter must be decimal digits"))?;
        if counter > HLC_COUNTER_MAX as u64 {
            return Err(err("the counter is too large"));
        }
        let days = days_from_civil(y as i64, mo as u32, d as u32);
        let wall_ms = (days as u64 * 86_400 + h * 3600 + mi * 60 + se) * 1000 + ms;
        Ok(Hlc::new(wall_ms, counter as u32))
    }
}

impl Serialize for Hlc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(hlc_text(self).as_str())
    }
}

impl<'de> Deserialize<'de> for Hlc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::hash::deserialize_parsed(d, "an HLC (\"YYYY-MM-DDTHH:MM:SS.mmm+00:00#counter\")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-thread cache of wall-clock texts never serves a stale one,
    /// whatever the order of repeats and misses.
    #[test]
    fn cached_wall_texts_match_the_reference_in_any_order() {
        let walls = [
            1_767_225_600_000u64,
            1_767_225_600_001,
            0,
            1_767_225_600_000,
            253_402_300_799_999,
            1_767_225_600_001,
            1_767_225_600_001,
            0,
            u64::MAX / 2,
            1_767_225_600_000,
        ];
        for (i, &w) in walls.iter().cycle().take(100).enumerate() {
            let h = Hlc {
                wall_ms: w,
                counter: i as u32,
            };
            assert_eq!(h.to_string(), reference_text(&h), "{w}");
        }
    }

    /// The `format!` spelling the stack formatter replaced.
    fn reference_text(h: &Hlc) -> String {
        let secs = (h.wall_ms / 1000) as i64;
        let ms = h.wall_ms % 1000;
        let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        format!(
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}+00:00#{}",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60,
            h.counter
        )
    }

    #[test]
    fn stack_formatting_matches_the_format_macro() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut cases = vec![
            Hlc::new(0, 0),
            Hlc::new(999, u32::MAX),
            Hlc::new(1_760_837_025_678, 1234),
            Hlc::new(253_402_300_799_999, 7),
            Hlc::new(253_402_300_800_000, 7),
            Hlc::new(u64::MAX, u32::MAX),
        ];
        for _ in 0..20_000 {
            // xorshift: spread over the whole range and over small values.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let wall = if x & 1 == 0 { x } else { x % 4_102_444_800_000 };
            cases.push(Hlc::new(wall, (x >> 32) as u32 % 100_000));
        }
        for h in cases {
            let text = h.to_string();
            assert_eq!(text, reference_text(&h), "wall_ms {}", h.wall_ms);
            let cbor = crate::cbor::to_canonical(&h).unwrap();
            assert_eq!(cbor, crate::cbor::to_canonical(&text).unwrap());
        }
    }

    #[test]
    fn brief_example_round_trips() {
        let s = "2025-10-19T01:23:45.678+00:00#1234";
        let h: Hlc = s.parse().unwrap();
        assert_eq!(h.counter, 1234);
        assert_eq!(h.wall_ms, 1_760_837_025_678);
        assert_eq!(h.to_string(), s);
    }

    #[test]
    fn other_spellings_are_refused() {
        for bad in [
            "2025-10-19T01:23:45.678Z#1",
            "2025-10-19T01:23:45.678+01:00#1",
            "2025-10-19T01:23:45.67+00:00#1",
            "2025-10-19T01:23:45.678+00:00#01",
            "2025-10-19T01:23:45.678+00:00",
            "2025-02-30T01:23:45.678+00:00#0",
            "2025-10-19T24:00:00.000+00:00#0",
            "",
            "#",
            "２025-10-19T01:23:45.678+00:00#1",
        ] {
            assert!(bad.parse::<Hlc>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn send_advances_with_wall_or_counter() {
        let h = Hlc::new(1000, 5);
        assert_eq!(Hlc::send(h, 2000).unwrap(), Hlc::new(2000, 0));
        assert_eq!(Hlc::send(h, 900).unwrap(), Hlc::new(1000, 6));
        assert_eq!(Hlc::send(h, 1000).unwrap(), Hlc::new(1000, 6));
        // A maximal counter (any signer may put one in an accepted
        // proposal) moves on to the next millisecond, still after it.
        let max = Hlc::new(1000, HLC_COUNTER_MAX);
        assert_eq!(Hlc::send(max, 900).unwrap(), Hlc::new(1001, 0));
        assert!(Hlc::send(max, 900).unwrap() > max);
        assert!(Hlc::send(Hlc::new(HLC_WALL_MS_MAX, HLC_COUNTER_MAX), 0).is_err());
    }

    #[test]
    fn receive_takes_the_max_and_stays_monotone() {
        let local = Hlc::new(1000, 2);
        let remote = Hlc::new(1000, 7);
        assert_eq!(Hlc::receive(local, remote, 500).unwrap(), Hlc::new(1000, 8));
        assert_eq!(
            Hlc::receive(local, Hlc::new(3000, 1), 500).unwrap(),
            Hlc::new(3000, 2)
        );
        assert_eq!(
            Hlc::receive(local, remote, 5000).unwrap(),
            Hlc::new(5000, 0)
        );
        assert_eq!(
            Hlc::receive(Hlc::new(1, HLC_COUNTER_MAX), Hlc::new(1, 0), 0).unwrap(),
            Hlc::new(2, 0)
        );
        assert_eq!(
            Hlc::receive(Hlc::new(1, 0), Hlc::new(1, HLC_COUNTER_MAX), 0).unwrap(),
            Hlc::new(2, 0)
        );
    }

    #[test]
    fn ties_break_by_signer_then_idem_key() {
        let h = Hlc::new(1, 1);
        assert_eq!(
            order_key_cmp((&h, "a", "z"), (&h, "b", "a")),
            Ordering::Less
        );
        assert_eq!(
            order_key_cmp((&h, "a", "a"), (&h, "a", "b")),
            Ordering::Less
        );
        assert_eq!(
            order_key_cmp((&Hlc::new(2, 0), "a", "a"), (&h, "z", "z")),
            Ordering::Greater
        );
    }

    #[test]
    fn signer_ids_order_as_their_text() {
        use crate::sig::SignerId;
        let h = Hlc::new(1, 0);
        let mut ids = vec![];
        for pos in [0usize, 1, 15, 31] {
            for v in [0x00u8, 0x01, 0x0f, 0x10, 0x7f, 0x80, 0xf0, 0xff] {
                let mut k = [0x5au8; 32];
                k[pos] = v;
                ids.push(SignerId(k));
            }
        }
        for a in &ids {
            for b in &ids {
                for (ka, kb) in [("x", "x"), ("a", "b"), ("b", "a")] {
                    assert_eq!(
                        order_key_cmp_ids((&h, a, ka), (&h, b, kb)),
                        order_key_cmp((&h, &a.to_string(), ka), (&h, &b.to_string(), kb)),
                        "{a} {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn format_parse_agree_over_a_range_of_days() {
        for day in (0..200_000u64).step_by(97) {
            let h = Hlc::new(day * 86_400_000 + 12_345_678, 3);
            assert_eq!(h.to_string().parse::<Hlc>().unwrap(), h);
        }
    }
}
