//! A fixed-bucket histogram rendered as Prometheus text: what the follower's
//! hand-written `/metrics` needs to export its commit latency and batch
//! sizes under the leader's names and buckets.

use std::fmt::Write;

/// Observations counted into buckets with fixed upper bounds.
#[derive(Clone, Debug)]
pub struct Hist {
    bounds: Vec<f64>,
    /// Per bucket (not cumulative); one more for above the last bound.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Hist {
    /// `n` buckets with upper bounds `start`, `start × factor`, … (as
    /// `prometheus_client`'s `exponential_buckets`).
    pub fn exponential(start: f64, factor: f64, n: usize) -> Hist {
        let bounds: Vec<f64> = (0..n).map(|i| start * factor.powi(i as i32)).collect();
        Hist {
            counts: vec![0; bounds.len() + 1],
            bounds,
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The family as Prometheus text (`_bucket` cumulative with `le`,
    /// `+Inf`, `_sum`, `_count`).
    pub fn render(&self, name: &str, help: &str) -> String {
        let mut out = format!("# HELP {name} {help}\n# TYPE {name} histogram\n");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c;
            // `1.0`, not `1`, as the leader's `prometheus_client` writes
            // whole bounds: one `le` value per bound across the cluster.
            let le = if b.fract() == 0.0 {
                format!("{b:.1}")
            } else {
                format!("{b}")
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_the_rest_goes_to_inf() {
        let mut h = Hist::exponential(1.0, 2.0, 3); // 1, 2, 4
        for v in [0.5, 1.0, 3.0, 9.0] {
            h.observe(v);
        }
        let t = h.render("x", "help");
        for line in [
            "# TYPE x histogram",
            "x_bucket{le=\"1.0\"} 2",
            "x_bucket{le=\"2.0\"} 2",
            "x_bucket{le=\"4.0\"} 3",
            "x_bucket{le=\"+Inf\"} 4",
            "x_sum 13.5",
            "x_count 4",
        ] {
            assert!(t.lines().any(|l| l == line), "{line} in:\n{t}");
        }
    }
}
