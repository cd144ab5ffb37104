//! Histograms with fixed buckets, in the Prometheus text format, and the buckets the
//! metrics use.

use std::fmt::Write as _;
use std::sync::Mutex;

/// A histogram with fixed buckets.
pub(super) struct Histogram {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

#[derive(Default)]
struct HistogramState {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub(super) fn new(name: &'static str, help: &'static str, bounds: &'static [f64]) -> Self {
        Self {
            name,
            help,
            bounds,
            state: Mutex::new(HistogramState {
                counts: vec![0; bounds.len()],
                ..HistogramState::default()
            }),
        }
    }

    pub(super) fn observe_all(&self, values: impl IntoIterator<Item = f64>) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for v in values {
            if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
                s.counts[i] += 1;
            }
            s.sum += v;
            s.count += 1;
        }
    }

    pub(super) fn render(&self, out: &mut String) {
        let s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&s.counts) {
            cumulative += n;
            let _ = writeln!(out, "{}_bucket{{le=\"{bound}\"}} {cumulative}", self.name);
        }
        let _ = writeln!(out, "{}_bucket{{le=\"+Inf\"}} {}", self.name, s.count);
        let _ = writeln!(out, "{}_sum {}", self.name, s.sum);
        let _ = writeln!(out, "{}_count {}", self.name, s.count);
    }
}

pub(super) const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
pub(super) const ENTRIES: &[f64] = &[
    1.0, 8.0, 32.0, 128.0, 512.0, 1024.0, 2048.0, 4096.0, 16384.0,
];
