//! Bounds on what peers can make this node hold or write: text a peer
//! chose is clipped before it reaches a log line or `/health`, per-message
//! warnings are rate-limited by kind, and the queues between a network
//! task and its consumer are bounded in bytes as well as in messages.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Most characters of one peer-supplied text in a log line or in `/health`
/// (the HTTP API's limit for a client-supplied field in a log line).
pub const LOG_FIELD_CHARS_MAX: usize = 256;

/// A per-message warning of one kind (a refused vote, a refused replication
/// message, ...) is logged at most once in this many ms; the lines skipped
/// meanwhile are counted and the next line of that kind says how many.
pub const WARN_EVERY_MS: u64 = 1_000;

/// `s` cut to [`LOG_FIELD_CHARS_MAX`] characters. A peer's text may hold up
/// to a gossip message's worth of anything: log it with `?` (Debug) so
/// newlines and quotes stay escaped and cannot forge a line.
pub fn clip(s: &str) -> &str {
    match s.char_indices().nth(LOG_FIELD_CHARS_MAX) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// A client's or peer's text for a log field. A plain value (no space,
/// `=`, `"`, backslash or control character: every real transition name,
/// project id or window id) is written as it is, so a query matches it as
/// the same field of an accepted line (which `?`, Debug, quoted). Anything
/// else is written quoted, with `"`, backslashes and control characters
/// escaped: no newline or escape sequence can forge a line or drive a
/// terminal, and no `key=value` inside it can pass for a field of a text
/// log line. Clip it first ([`clip`]).
pub struct LogText<'a>(pub &'a str);

/// Whether [`LogText`] quotes what is not a plain token: on for text logs
/// (the default), off for JSON logs, whose encoder escapes every string
/// itself (quoting there put `\"` inside every value with a space).
static LOG_TEXT_QUOTES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Set by a process that logs JSON lines (see [`LOG_TEXT_QUOTES`]).
pub fn set_log_text_quoting(on: bool) {
    LOG_TEXT_QUOTES.store(on, std::sync::atomic::Ordering::Relaxed);
}

impl std::fmt::Display for LogText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        let plain =
            |c: char| !(c.is_whitespace() || c.is_control() || matches!(c, '=' | '"' | '\\'));
        let quotes = LOG_TEXT_QUOTES.load(std::sync::atomic::Ordering::Relaxed);
        if !quotes || (!self.0.is_empty() && self.0.chars().all(plain)) {
            return f.write_str(self.0);
        }
        f.write_char('"')?;
        for c in self.0.chars() {
            if matches!(c, '"' | '\\') || c.is_control() {
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        f.write_char('"')
    }
}

/// One kind's state in a [`WarnLimiter`].
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    last_ms: Option<u64>,
    suppressed: u64,
}

/// Rate limit of per-message warnings, by kind: at most one line of a kind
/// every [`WARN_EVERY_MS`]. Sans-I/O: the caller passes the time.
/// Bounded: kinds are `&'static str`, names the code spells out (a
/// rejection's or refusal's `name()`/`kind()`), never text from a peer.
#[derive(Debug, Default)]
pub struct WarnLimiter {
    kinds: BTreeMap<&'static str, Window>,
}

impl WarnLimiter {
    /// `Some(n)`: log this line of `kind` now, and say `n` lines of the kind
    /// were suppressed since the last one. `None`: suppressed (counted).
    pub fn check(&mut self, kind: &'static str, now_ms: u64) -> Option<u64> {
        let w = self.kinds.entry(kind).or_default();
        match w.last_ms {
            Some(last) if now_ms.saturating_sub(last) < WARN_EVERY_MS => {
                w.suppressed += 1;
                None
            }
            _ => {
                w.last_ms = Some(now_ms);
                Some(std::mem::take(&mut w.suppressed))
            }
        }
    }
}

/// The bytes waiting in one queue between a network task and its consumer,
/// at most `max`. The sender reserves a message's bytes before it queues
/// it and drops the message when they do not fit; the consumer releases
/// them when it takes the message. A count bound alone let a queue of
/// 1,024 messages of up to 2 MiB each hold 2 GiB.
#[derive(Clone, Debug)]
pub struct QueuedBytes {
    queued: Arc<AtomicUsize>,
    max: usize,
}

impl QueuedBytes {
    pub fn new(max: usize) -> QueuedBytes {
        QueuedBytes {
            queued: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Reserve `n` bytes: `false` (nothing reserved) when they would take
    /// the queue past its bound.
    pub fn try_reserve(&self, n: usize) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                q.checked_add(n).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    /// Give back `n` reserved bytes (the message left the queue).
    pub fn release(&self, n: usize) {
        let before = self.queued.fetch_sub(n, Ordering::AcqRel);
        assert!(
            before >= n,
            "released {n} bytes of a queue holding {before}"
        );
    }

    /// Bytes reserved now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// What `f` logs (every level, as text lines), for tests of log lines.
#[cfg(test)]
pub(crate) fn captured_logs(f: impl FnOnce()) -> String {
    use std::sync::Mutex;
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let sink = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = lines.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
    String::from_utf8(bytes).expect("log lines are UTF-8")
}

/// The longest line a log of clipped peer text may hold: the fields this
/// node writes, plus at most a few clipped fields, each escaped (an escape
/// takes up to 10 characters, `\u{10ffff}`).
#[cfg(test)]
pub(crate) const TEST_LOG_LINE_CHARS_MAX: usize = 600 + 10 * LOG_FIELD_CHARS_MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_at_a_character_boundary() {
        let long = "é".repeat(LOG_FIELD_CHARS_MAX + 10);
        let c = clip(&long);
        assert_eq!(c.chars().count(), LOG_FIELD_CHARS_MAX);
        assert_eq!(clip("short\nline"), "short\nline");
        // Debug escapes what a peer could use to forge a line.
        assert_eq!(format!("{:?}", clip("a\nb\"c")), r#""a\nb\"c""#);
        // So does LogText, without quoting a plain value.
        assert_eq!(LogText("default").to_string(), "default");
        assert_eq!(
            LogText("backbeat:W-3-reverb").to_string(),
            "backbeat:W-3-reverb"
        );
        assert_eq!(
            LogText("a\nb\"c\\d\u{1b}[31m'é").to_string(),
            r#""a\nb\"c\\d\u{1b}[31m'é""#
        );
        // A value that could pass for fields of a text line is quoted.
        assert_eq!(
            LogText("Bogus guard=forged error=ok").to_string(),
            r#""Bogus guard=forged error=ok""#
        );
        assert_eq!(LogText("").to_string(), "\"\"");
        // JSON logs escape every string themselves: no quotes added there.
        // (In this one test: the switch is process-wide.)
        set_log_text_quoting(false);
        let unquoted = LogText("Bogus guard=forged").to_string();
        set_log_text_quoting(true);
        assert_eq!(unquoted, "Bogus guard=forged");
    }

    #[test]
    fn warnings_of_a_kind_are_logged_once_a_window_and_say_what_was_skipped() {
        let mut l = WarnLimiter::default();
        assert_eq!(l.check("no_election", 10_000), Some(0));
        for t in 0..50 {
            assert_eq!(l.check("no_election", 10_000 + t * 10), None);
        }
        // Another kind has its own window.
        assert_eq!(l.check("bad_signature", 10_500), Some(0));
        assert_eq!(l.check("no_election", 10_000 + WARN_EVERY_MS), Some(50));
        assert_eq!(l.check("no_election", 10_000 + 2 * WARN_EVERY_MS), Some(0));
        // A clock that goes back never panics and never floods.
        assert_eq!(l.check("no_election", 0), None);
    }

    #[test]
    fn queued_bytes_refuse_what_does_not_fit_and_take_it_once_released() {
        let q = QueuedBytes::new(100);
        assert!(q.try_reserve(60));
        assert!(!q.try_reserve(41), "past the bound");
        assert_eq!(q.queued(), 60, "a refused reservation holds nothing");
        assert!(q.try_reserve(40));
        assert!(!q.try_reserve(1));
        q.release(60);
        assert!(q.try_reserve(60));
        assert!(!q.try_reserve(usize::MAX), "no overflow");
        q.release(100);
        assert_eq!(q.queued(), 0);
    }
}
