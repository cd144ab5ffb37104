//! Prometheus metrics: a small registry of our own (counters by one label, gauges,
//! fixed-bucket histograms) rendered in the Prometheus text format 0.0.4, and the
//! readiness they imply; [`serve`] answers `/metrics`, `/healthz` and `/readyz`.
//! A leaf: imports no step. The pipeline's events count into it (`pipeline::events`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod histogram;
mod serve;

pub use serve::serve;

use histogram::{ENTRIES, Histogram, SECONDS};

/// Counters, each with one label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    Read,
    Skipped,
    DeadLettered,
    Acked,
    Claimed,
    RowsWritten,
    Retries,
    Trimmed,
    TrimDroppedUnacked,
    TombstonesRemoved,
    TruncationsRemoved,
    GroupsRecreated,
    TransactionsApplied,
    TransactionsSplit,
    TransactionsTimedOut,
}

impl Counter {
    const ALL: [Counter; 15] = [
        Counter::Read,
        Counter::Skipped,
        Counter::DeadLettered,
        Counter::Acked,
        Counter::Claimed,
        Counter::RowsWritten,
        Counter::Retries,
        Counter::Trimmed,
        Counter::TrimDroppedUnacked,
        Counter::TombstonesRemoved,
        Counter::TruncationsRemoved,
        Counter::GroupsRecreated,
        Counter::TransactionsApplied,
        Counter::TransactionsSplit,
        Counter::TransactionsTimedOut,
    ];

    fn name(self) -> &'static str {
        match self {
            Counter::Read => "redsink_entries_read_total",
            Counter::Skipped => "redsink_entries_skipped_total",
            Counter::DeadLettered => "redsink_entries_dead_lettered_total",
            Counter::Acked => "redsink_entries_acked_total",
            Counter::Claimed => "redsink_entries_claimed_total",
            Counter::RowsWritten => "redsink_rows_written_total",
            Counter::Retries => "redsink_retries_total",
            Counter::Trimmed => "redsink_entries_trimmed_total",
            Counter::TrimDroppedUnacked => "redsink_trim_dropped_unacked_total",
            Counter::TombstonesRemoved => "redsink_tombstones_removed_total",
            Counter::TruncationsRemoved => "redsink_truncations_removed_total",
            Counter::GroupsRecreated => "redsink_groups_recreated_total",
            Counter::TransactionsApplied => "redsink_transactions_applied_total",
            Counter::TransactionsSplit => "redsink_transactions_split_total",
            Counter::TransactionsTimedOut => "redsink_transactions_timed_out_total",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Counter::RowsWritten | Counter::TombstonesRemoved | Counter::TruncationsRemoved => {
                "table"
            }
            Counter::Retries => "operation",
            _ => "stream",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Counter::Read => "Entries read from the stream (new, re-read or claimed).",
            Counter::Skipped => {
                "Entries recognised and skipped (tombstones, heartbeats, schema changes, messages)."
            }
            Counter::DeadLettered => {
                "Entries written to the dead-letter stream, then acknowledged."
            }
            Counter::Acked => "Entries acknowledged after their batch committed.",
            Counter::Claimed => "Entries taken over from idle consumers (XAUTOCLAIM).",
            Counter::RowsWritten => {
                "Row changes written (after coalescing; version-guarded no-ops included)."
            }
            Counter::Retries => "Failed attempts that are retried with backoff, by operation.",
            Counter::Trimmed => {
                "Entries trimmed from the stream after every group acknowledged them."
            }
            Counter::GroupsRecreated => {
                "Times the consumer group was gone from a stream being read and was created again (stream deleted, or Redis lost it): entries may be lost."
            }
            Counter::TrimDroppedUnacked => {
                "Entries not yet acknowledged by some group that a trim_max_age/trim_max_len ceiling dropped."
            }
            Counter::TombstonesRemoved => {
                "Tombstones of deleted rows removed once below the table's horizon (no event older can arrive)."
            }
            Counter::TruncationsRemoved => {
                "Truncation records removed once below the table's horizon (no event older can arrive)."
            }
            Counter::TransactionsApplied => {
                "Source transactions applied whole (transaction mode), by transaction stream."
            }
            Counter::TransactionsSplit => {
                "Source transactions larger than transactions.max_events, applied in pieces."
            }
            Counter::TransactionsTimedOut => {
                "Source transactions applied without all their events after transactions.wait."
            }
        }
    }
}

/// A consumer group's state on one stream, polled from Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GroupGauges {
    pub lag: Option<u64>,
    pub pending: u64,
    pub consumers: u64,
}

/// One pipeline's metrics.
pub struct Metrics {
    counters: Mutex<BTreeMap<(Counter, String), u64>>,
    groups: Mutex<BTreeMap<(String, String), GroupGauges>>,
    dlq: Mutex<BTreeMap<String, u64>>,
    batch_entries: Histogram,
    commit_seconds: Histogram,
    latency_seconds: Histogram,
    started: AtomicBool,
    /// Operations failing right now (retrying), by name.
    failing: Mutex<BTreeMap<String, u64>>,
    /// When the pipeline loop last went round (ms since the epoch).
    last_loop_ms: AtomicU64,
    /// Transaction mode: source transactions staged and not applied, and the seconds
    /// the oldest of their events has waited.
    open_transactions: Mutex<Option<(u64, f64)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Escapes a label value (backslash, quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            counters: Mutex::default(),
            groups: Mutex::default(),
            dlq: Mutex::default(),
            batch_entries: Histogram::new(
                "redsink_batch_entries",
                "Entries per committed batch.",
                ENTRIES,
            ),
            commit_seconds: Histogram::new(
                "redsink_commit_duration_seconds",
                "Time to write and commit a batch (retries included).",
                SECONDS,
            ),
            latency_seconds: Histogram::new(
                "redsink_end_to_end_latency_seconds",
                "From the event's source timestamp (source.ts_ms) to the commit that applied it.",
                SECONDS,
            ),
            started: AtomicBool::new(false),
            failing: Mutex::default(),
            last_loop_ms: AtomicU64::new(0),
            open_transactions: Mutex::default(),
        }
    }

    /// Transaction mode: the open (staged, not applied) transactions and the age of
    /// the oldest staged event.
    pub fn set_open_transactions(&self, open: u64, oldest_seconds: f64) {
        *self
            .open_transactions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((open, oldest_seconds));
    }

    /// Adds `n` to a counter.
    pub fn add(&self, counter: Counter, label: &str, n: u64) {
        if n == 0 {
            return;
        }
        let mut c = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *c.entry((counter, label.to_string())).or_default() += n;
    }

    /// A counter's value (for tests and logs).
    pub fn get(&self, counter: Counter, label: &str) -> u64 {
        let c = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.get(&(counter, label.to_string())).copied().unwrap_or(0)
    }

    /// A committed batch: its size, how long writing took, and the source timestamps of
    /// its events (ms since the epoch).
    pub fn committed(&self, entries: usize, took: Duration, source_ts_ms: &[i64]) {
        self.batch_entries.observe_all([entries as f64]);
        self.commit_seconds.observe_all([took.as_secs_f64()]);
        let now = now_ms() as f64;
        self.latency_seconds.observe_all(
            source_ts_ms
                .iter()
                .filter(|ts| **ts > 0)
                .map(|ts| ((now - *ts as f64) / 1000.0).max(0.0)),
        );
    }

    pub fn set_group(&self, stream: &str, group: &str, gauges: GroupGauges) {
        let mut g = self
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.insert((stream.to_string(), group.to_string()), gauges);
    }

    pub fn set_dlq_length(&self, stream: &str, length: u64) {
        let mut d = self
            .dlq
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        d.insert(stream.to_string(), length);
    }

    /// Connected to both sides and reading.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Relaxed);
        self.tick();
    }

    /// The loop went round.
    pub fn tick(&self) {
        self.last_loop_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// `operation` failed and will be retried.
    pub fn retrying(&self, operation: &str) {
        self.add(Counter::Retries, operation, 1);
        let mut f = self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *f.entry(operation.to_string()).or_default() += 1;
    }

    /// `operation` succeeded (after failures or not).
    pub fn recovered(&self, operation: &str) {
        let mut f = self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f.remove(operation);
    }

    /// `Ok` when connected to both sides and not stalled; else why not.
    pub fn readiness(&self, stall_after: Duration) -> Result<(), String> {
        if !self.started.load(Ordering::Relaxed) {
            return Err("starting: not yet connected to redis and postgres".into());
        }
        let f = self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((op, n)) = f.iter().next() {
            return Err(format!("{op} is failing ({n} attempts so far)"));
        }
        let idle = now_ms().saturating_sub(self.last_loop_ms.load(Ordering::Relaxed));
        let limit = u64::try_from(stall_after.as_millis()).unwrap_or(u64::MAX);
        if idle > limit {
            return Err(format!(
                "stalled: the loop has not gone round for {idle} ms"
            ));
        }
        Ok(())
    }

    fn render_groups(&self, out: &mut String) {
        let g = self
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        type Pick = fn(&GroupGauges) -> Option<u64>;
        let gauges: [(&str, &str, Pick); 3] = [
            (
                "redsink_group_lag",
                "Entries not yet delivered to the consumer group.",
                |g| g.lag,
            ),
            (
                "redsink_group_pending",
                "Entries delivered and not yet acknowledged.",
                |g| Some(g.pending),
            ),
            (
                "redsink_group_consumers",
                "Consumers registered in the group.",
                |g| Some(g.consumers),
            ),
        ];
        for (name, help, pick) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for ((stream, group), v) in g.iter() {
                if let Some(v) = pick(v) {
                    let _ = writeln!(
                        out,
                        "{name}{{stream=\"{}\",group=\"{}\"}} {v}",
                        escape(stream),
                        escape(group)
                    );
                }
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, stall_after: Duration) -> String {
        let mut out = String::new();
        self.render_state(&mut out, stall_after);
        self.render_counters(&mut out);
        for h in [
            &self.batch_entries,
            &self.commit_seconds,
            &self.latency_seconds,
        ] {
            h.render(&mut out);
        }
        self.render_groups(&mut out);
        self.render_dlq(&mut out);
        self.render_transactions(&mut out);
        out
    }

    /// Transaction mode's gauges (once the committer has counted).
    fn render_transactions(&self, out: &mut String) {
        let open = *self
            .open_transactions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some((open, oldest)) = open else {
            return;
        };
        let _ = writeln!(
            out,
            "# HELP redsink_transactions_open Source transactions with events staged, not yet applied."
        );
        let _ = writeln!(out, "# TYPE redsink_transactions_open gauge");
        let _ = writeln!(out, "redsink_transactions_open {open}");
        let _ = writeln!(
            out,
            "# HELP redsink_transactions_oldest_open_seconds How long the oldest staged event has waited for its transaction to be applied."
        );
        let _ = writeln!(out, "# TYPE redsink_transactions_oldest_open_seconds gauge");
        let _ = writeln!(out, "redsink_transactions_oldest_open_seconds {oldest:.3}");
    }

    /// The build and whether the instance is ready.
    fn render_state(&self, out: &mut String, stall_after: Duration) {
        let _ = writeln!(
            out,
            "# HELP redsink_build_info The running redsink's version."
        );
        let _ = writeln!(out, "# TYPE redsink_build_info gauge");
        let _ = writeln!(
            out,
            "redsink_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let ready = u8::from(self.readiness(stall_after).is_ok());
        let _ = writeln!(
            out,
            "# HELP redsink_ready 1 when connected to Redis and Postgres and not stalled."
        );
        let _ = writeln!(out, "# TYPE redsink_ready gauge");
        let _ = writeln!(out, "redsink_ready {ready}");
    }

    /// Every counter, described even before it counts anything.
    fn render_counters(&self, out: &mut String) {
        let c = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for counter in Counter::ALL {
            let _ = writeln!(out, "# HELP {} {}", counter.name(), counter.help());
            let _ = writeln!(out, "# TYPE {} counter", counter.name());
            for ((_, label), n) in c
                .range((counter, String::new())..)
                .take_while(|((k, _), _)| *k == counter)
            {
                let _ = writeln!(
                    out,
                    "{}{{{}=\"{}\"}} {n}",
                    counter.name(),
                    counter.label(),
                    escape(label)
                );
            }
        }
    }

    fn render_dlq(&self, out: &mut String) {
        let d = self
            .dlq
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(
            out,
            "# HELP redsink_dlq_length Entries in the stream's dead-letter stream."
        );
        let _ = writeln!(out, "# TYPE redsink_dlq_length gauge");
        for (stream, n) in d.iter() {
            let _ = writeln!(
                out,
                "redsink_dlq_length{{stream=\"{}\"}} {n}",
                escape(stream)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::new();
        m.add(Counter::Read, "orders:0", 3);
        m.add(Counter::Read, "orders:\"1\"", 2);
        m.add(Counter::RowsWritten, "public.orders", 5);
        m.committed(5, Duration::from_millis(20), &[1]);
        m.set_group(
            "orders:0",
            "redsink",
            GroupGauges {
                lag: Some(7),
                pending: 2,
                consumers: 1,
            },
        );
        m.set_dlq_length("orders:0", 4);
        let text = m.render(Duration::from_secs(60));
        for line in [
            "redsink_entries_read_total{stream=\"orders:0\"} 3",
            "redsink_entries_read_total{stream=\"orders:\\\"1\\\"\"} 2",
            "redsink_rows_written_total{table=\"public.orders\"} 5",
            "redsink_batch_entries_bucket{le=\"8\"} 1",
            "redsink_batch_entries_count 1",
            "redsink_commit_duration_seconds_bucket{le=\"0.025\"} 1",
            "redsink_end_to_end_latency_seconds_count 1",
            "redsink_group_lag{stream=\"orders:0\",group=\"redsink\"} 7",
            "redsink_group_pending{stream=\"orders:0\",group=\"redsink\"} 2",
            "redsink_dlq_length{stream=\"orders:0\"} 4",
            "redsink_ready 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn readiness_follows_start_failures_and_stalls() {
        let m = Metrics::new();
        assert!(m.readiness(Duration::from_secs(60)).is_err());
        m.set_started();
        assert!(m.readiness(Duration::from_secs(60)).is_ok());
        m.retrying("writing to postgres");
        let why = m
            .readiness(Duration::from_secs(60))
            .err()
            .unwrap_or_default();
        assert!(why.contains("writing to postgres is failing"), "{why}");
        m.recovered("writing to postgres");
        assert!(m.readiness(Duration::from_secs(60)).is_ok());
        m.last_loop_ms.store(0, Ordering::Relaxed);
        assert!(
            m.readiness(Duration::from_secs(60))
                .is_err_and(|e| e.contains("stalled"))
        );
    }
}
