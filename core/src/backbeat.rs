//! BACKBEAT / tidal windows: a periodic schedule of phases, each opening some
//! transition classes. Pure: `is_open(class, hlc)` depends only on the
//! schedule (part of the state) and the proposal's HLC.

use crate::hlc::{format_wall_ms, Hlc};
use serde::{Deserialize, Serialize};

pub const BACKBEAT_PHASES_MAX: usize = 32;

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
                p.phase.map_or("gap", |ph| ph.name.as_str())
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
            return starts.min().map(|s| self.origin_ms - hlc.wall_ms + s);
        }
        let offset = (hlc.wall_ms - self.origin_ms) % self.period_ms;
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
            .map(|ms| ms + ms.saturating_mul(self.amplitude_permille as u64) / 1000)
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
                format_wall_ms(hlc.wall_ms + ms)
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
}
