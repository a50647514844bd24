//! BACKBEAT / tidal windows: a periodic schedule of phases, each opening some
//! transition classes. Pure: `is_open(class, hlc)` depends only on the
//! schedule (part of the state) and the proposal's HLC.

use crate::hlc::{format_wall_ms, Hlc, HLC_WALL_MS_MAX};
use crate::proposal::WINDOW_ID_BYTES_MAX;
use serde::{Deserialize, Serialize};

pub const BACKBEAT_PHASES_MAX: usize = 32;
/// What a window id (`backbeat:W-<beat>-<phase>`) holds besides the phase
/// name, at its longest: the prefix, a beat of up to 20 digits (`u64`)
/// and the dash.
const WINDOW_ID_OVERHEAD: usize = "backbeat:W-".len() + 20 + 1;
/// Longest phase name: its window ids must fit `WINDOW_ID_BYTES_MAX`, the
/// bound a proposal's `window_id` is checked against (96 bytes).
pub const PHASE_NAME_BYTES_MAX: usize = WINDOW_ID_BYTES_MAX - WINDOW_ID_OVERHEAD;
/// The name `window_id` gives the gap between phases; a phase may not take it.
const GAP: &str = "gap";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: String,
    /// Offset of the phase start within the period, inclusive.
    pub start_ms: u64,
    /// Offset of the phase end within the period, exclusive.
    pub end_ms: u64,
    /// Transition classes this phase opens (e.g. `review`, `reverb`).
    pub opens: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Wall time (ms since the epoch) at which beat 0 starts.
    pub origin_ms: u64,
    pub period_ms: u64,
    pub phases: Vec<Phase>,
    /// Tidal pressure, 0..=1000 ‰: scales the retry hint given to callers
    /// that arrive while their window is closed.
    pub amplitude_permille: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("backbeat period_ms must be greater than 0")]
    ZeroPeriod,
    #[error("backbeat has {0} phases; at most {BACKBEAT_PHASES_MAX} are allowed")]
    TooManyPhases(usize),
    #[error("backbeat phase {0:?} must satisfy start_ms < end_ms <= period_ms")]
    PhaseBounds(String),
    #[error("backbeat phases {0:?} and {1:?} overlap")]
    Overlap(String, String),
    #[error("backbeat amplitude_permille must be at most 1000")]
    Amplitude,
    #[error("backbeat phase name {0:?} must be 1..={PHASE_NAME_BYTES_MAX} bytes, so that its window ids fit {WINDOW_ID_BYTES_MAX} bytes; shorten it")]
    PhaseName(String),
    #[error("backbeat phase name {0:?} is used twice; window ids name phases, so give each phase its own name")]
    DuplicatePhase(String),
    #[error("backbeat phase name \"gap\" is reserved for the window id of the time between phases; rename the phase")]
    ReservedPhaseName,
    #[error("backbeat origin_ms {0} is past the latest HLC wall time {HLC_WALL_MS_MAX} (9999-12-31): no proposal could ever be in a window; use a wall time in ms since the epoch")]
    Origin(u64),
}

/// Where an HLC falls in the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position<'a> {
    pub beat: u64,
    pub offset_ms: u64,
    pub phase: Option<&'a Phase>,
}

impl Schedule {
    pub fn validate(&self) -> Result<(), ScheduleError> {
        if self.period_ms == 0 {
            return Err(ScheduleError::ZeroPeriod);
        }
        if self.phases.len() > BACKBEAT_PHASES_MAX {
            return Err(ScheduleError::TooManyPhases(self.phases.len()));
        }
        if self.amplitude_permille > 1000 {
            return Err(ScheduleError::Amplitude);
        }
        for p in &self.phases {
            if p.start_ms >= p.end_ms || p.end_ms > self.period_ms {
                return Err(ScheduleError::PhaseBounds(p.name.clone()));
            }
        }
        for (i, a) in self.phases.iter().enumerate() {
            for b in &self.phases[i + 1..] {
                if a.start_ms < b.end_ms && b.start_ms < a.end_ms {
                    return Err(ScheduleError::Overlap(a.name.clone(), b.name.clone()));
                }
            }
        }
        Ok(())
    }

    /// [`Self::validate`] and the checks a new schedule must pass besides:
    /// phase names unique, not `gap`, short enough for their window ids, and
    /// an origin an HLC can reach. Kept out of `validate`, which every
    /// recovery runs on the stored genesis: a cluster whose genesis an
    /// earlier build accepted must still start (its hash is in the chain,
    /// so it can never be corrected).
    pub fn validate_new(&self) -> Result<(), ScheduleError> {
        self.validate()?;
        if self.origin_ms > HLC_WALL_MS_MAX {
            return Err(ScheduleError::Origin(self.origin_ms));
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &self.phases {
            if p.name.is_empty() || p.name.len() > PHASE_NAME_BYTES_MAX {
                return Err(ScheduleError::PhaseName(p.name.clone()));
            }
            if p.name == GAP {
                return Err(ScheduleError::ReservedPhaseName);
            }
            if !names.insert(p.name.as_str()) {
                return Err(ScheduleError::DuplicatePhase(p.name.clone()));
            }
        }
        Ok(())
    }

    /// `None` before the schedule's origin.
    pub fn position(&self, hlc: &Hlc) -> Option<Position<'_>> {
        if hlc.wall_ms < self.origin_ms || self.period_ms == 0 {
            return None;
        }
        let since = hlc.wall_ms - self.origin_ms;
        let offset_ms = since % self.period_ms;
        let phase = self
            .phases
            .iter()
            .find(|p| p.start_ms <= offset_ms && offset_ms < p.end_ms);
        Some(Position {
            beat: since / self.period_ms,
            offset_ms,
            phase,
        })
    }

    pub fn is_open(&self, class: &str, hlc: &Hlc) -> bool {
        self.position(hlc)
            .and_then(|p| p.phase)
            .is_some_and(|ph| ph.opens.iter().any(|c| c == class))
    }

    /// The window identifier of an HLC: `backbeat:W-<beat>-<phase>`.
    pub fn window_id(&self, hlc: &Hlc) -> String {
        match self.position(hlc) {
            None => "backbeat:before-origin".to_string(),
            Some(p) => format!(
                "backbeat:W-{}-{}",
                p.beat,
                p.phase.map_or(GAP, |ph| ph.name.as_str())
            ),
        }
    }

    /// Milliseconds from `hlc` until `class` next opens, if any phase opens it.
    pub fn ms_until_open(&self, class: &str, hlc: &Hlc) -> Option<u64> {
        if self.is_open(class, hlc) {
            return Some(0);
        }
        let starts = self
            .phases
            .iter()
            .filter(|p| p.opens.iter().any(|c| c == class))
            .map(|p| p.start_ms);
        if hlc.wall_ms < self.origin_ms {
            // Saturating: an origin near `u64::MAX` (which `validate`
            // refuses, but a caller may hold an unvalidated schedule) must
            // not overflow.
            return starts
                .min()
                .map(|s| (self.origin_ms - hlc.wall_ms).saturating_add(s));
        }
        // `checked_rem`: a zero period (refused by `validate`, but this may
        // be an unvalidated schedule) has no next window.
        let offset = (hlc.wall_ms - self.origin_ms).checked_rem(self.period_ms)?;
        starts
            .map(|s| {
                if s > offset {
                    s - offset
                } else {
                    self.period_ms - offset + s
                }
            })
            .min()
    }

    /// Retry hint for a caller whose window is closed, scaled by pressure.
    pub fn retry_after_ms(&self, class: &str, hlc: &Hlc) -> Option<u64> {
        self.ms_until_open(class, hlc)
            .map(|ms| ms.saturating_add(ms.saturating_mul(self.amplitude_permille as u64) / 1000))
    }

    /// A sentence describing why `class` is closed at `hlc`.
    pub fn closed_reason(&self, class: &str, hlc: &Hlc) -> String {
        let here = match self.position(hlc) {
            None => format!(
                "before the schedule origin {}",
                format_wall_ms(self.origin_ms)
            ),
            Some(p) => format!(
                "in {} of beat {}",
                p.phase
                    .map_or("the gap between phases".to_string(), |ph| format!(
                        "phase '{}'",
                        ph.name
                    )),
                p.beat
            ),
        };
        match self.ms_until_open(class, hlc) {
            Some(ms) => format!(
                "the BACKBEAT window for class '{class}' is closed at {hlc} ({here}); it opens in {ms} ms at {}: resubmit then with a fresh HLC",
                format_wall_ms(hlc.wall_ms.saturating_add(ms))
            ),
            None => format!("no BACKBEAT phase ever opens class '{class}' ({here}); ask an admin to fix the schedule"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched() -> Schedule {
        Schedule {
            origin_ms: 1_000,
            period_ms: 100,
            phases: vec![
                Phase {
                    name: "work".into(),
                    start_ms: 0,
                    end_ms: 50,
                    opens: vec!["plan".into()],
                },
                Phase {
                    name: "review".into(),
                    start_ms: 50,
                    end_ms: 75,
                    opens: vec!["review".into()],
                },
                Phase {
                    name: "reverb".into(),
                    start_ms: 75,
                    end_ms: 100,
                    opens: vec!["reverb".into()],
                },
            ],
            amplitude_permille: 500,
        }
    }

    #[test]
    fn windows_open_and_close_with_the_beat() {
        let s = sched();
        s.validate().unwrap();
        assert!(!s.is_open("review", &Hlc::new(999, 0)));
        assert!(s.is_open("review", &Hlc::new(1_050, 0)));
        assert!(!s.is_open("review", &Hlc::new(1_075, 0)));
        assert!(s.is_open("reverb", &Hlc::new(1_175, 3)));
        assert_eq!(s.window_id(&Hlc::new(1_260, 0)), "backbeat:W-2-review");
        assert_eq!(s.ms_until_open("review", &Hlc::new(1_080, 0)), Some(70));
        assert_eq!(s.retry_after_ms("review", &Hlc::new(1_080, 0)), Some(105));
        assert_eq!(s.ms_until_open("nope", &Hlc::new(1_080, 0)), None);
        assert!(s
            .closed_reason("review", &Hlc::new(1_080, 0))
            .contains("opens in 70 ms"));
    }

    #[test]
    fn invalid_schedules_are_named() {
        let mut s = sched();
        s.phases[1].start_ms = 40;
        assert!(matches!(s.validate(), Err(ScheduleError::Overlap(_, _))));
        let mut s = sched();
        s.period_ms = 0;
        assert_eq!(s.validate(), Err(ScheduleError::ZeroPeriod));
    }

    #[test]
    fn phase_names_are_unique_and_fit_the_window_id() {
        let mut s = sched();
        s.phases[2].name = "review".into();
        assert_eq!(
            s.validate_new(),
            Err(ScheduleError::DuplicatePhase("review".into()))
        );
        // A stored genesis an earlier build accepted still loads.
        s.validate().unwrap();
        let mut s = sched();
        s.phases[0].name = "gap".into();
        assert_eq!(s.validate_new(), Err(ScheduleError::ReservedPhaseName));
        let mut s = sched();
        s.phases[0].name = String::new();
        assert_eq!(
            s.validate_new(),
            Err(ScheduleError::PhaseName(String::new()))
        );
        // The longest name allowed gives window ids within the bound even
        // at the largest beat a u64 holds.
        let mut s = sched();
        s.phases[0].name = "w".repeat(PHASE_NAME_BYTES_MAX);
        s.validate_new().unwrap();
        let id = format!("backbeat:W-{}-{}", u64::MAX, s.phases[0].name);
        assert_eq!(id.len(), WINDOW_ID_BYTES_MAX);
        s.phases[0].name.push('w');
        assert!(matches!(s.validate_new(), Err(ScheduleError::PhaseName(_))));
        let e = s.validate_new().unwrap_err().to_string();
        assert!(
            e.contains("1..=96 bytes") && e.contains("shorten it"),
            "{e}"
        );
    }

    #[test]
    fn an_origin_near_the_end_of_time_neither_overflows_nor_validates() {
        let mut s = sched();
        s.origin_ms = u64::MAX - 10;
        assert_eq!(s.validate_new(), Err(ScheduleError::Origin(u64::MAX - 10)));
        let at = Hlc::new(0, 0);
        // Before the origin: the wait saturates instead of overflowing.
        assert_eq!(s.ms_until_open("review", &at), Some(u64::MAX));
        assert_eq!(s.retry_after_ms("review", &at), Some(u64::MAX));
        assert!(s.closed_reason("review", &at).contains("opens in"));
        let mut s = sched();
        s.origin_ms = HLC_WALL_MS_MAX;
        s.validate_new().unwrap();
    }

    /// A zero period (refused by validation) has no next window, and asking
    /// for one does not divide by zero.
    #[test]
    fn a_zero_period_has_no_next_window() {
        let mut s = sched();
        s.period_ms = 0;
        assert!(s.validate_new().is_err());
        let at = Hlc::new(s.origin_ms + 5, 0);
        assert!(!s.is_open("review", &at));
        assert_eq!(s.ms_until_open("review", &at), None);
    }
}
