//! What the pipeline observes, each counted and logged in one place: a method per event
//! bumps the Prometheus counter (by stream or table), adds to the run's [`Stats`] and
//! writes the log line where there is one, so the metrics, the stats and the logs
//! cannot drift apart.
//!
//! | event | `/metrics` counter | [`Stats`] | log |
//! |---|---|---|---|
//! | [`read`](Events::read) | `entries_read` by stream | `read` | |
//! | [`claimed`](Events::claimed) | `entries_claimed` by stream | `claimed` | |
//! | [`skipped`](Events::skipped) | `entries_skipped` by stream | `skipped` | debug |
//! | [`committed`](Events::committed) | `rows_written` by table, `entries_acked` and `entries_dead_lettered` by stream, the batch histograms | `batches`, `rows_written`, `acked`, `dead_lettered`, `already_dead_lettered` (a replay's, not written again) | debug |
//! | [`retrying`](Events::retrying) | `retries` by operation; `/readyz` fails | | warn, naming the endpoint |
//! | [`write_slow`](Events::write_slow): a batch's write goes on past `postgres.slow_write_after` | | | warn, every `slow_write_after`, naming the tables |
//! | [`slow_write_ended`](Events::slow_write_ended) | | | info, with how long it took |
//! | [`lane`](Events::lane): a cluster lane's outage began | `retries` by operation `reading slot <n>`; `/readyz` fails | | warn, once per outage |
//! | [`lane`](Events::lane): the outage ended | `/readyz` no longer fails for it | | info, with the outage's length |
//! | [`group_recreated`](Events::group_recreated) | `groups_recreated` by stream | | warn |
//! | [`trimmed`](Events::trimmed), [`trim_dropped`](Events::trim_dropped) | `entries_trimmed`, `trim_dropped_unacked` by stream | | warn (dropped) |
//! | [`collected`](Events::collected) | `tombstones_removed`, `truncations_removed` by table | | info |

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::Stats;
use super::retry::{Side, source_chain};
use crate::batch::Batch;
use crate::decode::Skip;
use crate::entry::{DeadLetter, StreamEntry};
use crate::metrics::{Counter, Metrics};
use crate::read::LaneEvent;
use crate::table::TableName;
use crate::write::{Collected, Committed, WriteError};

/// The operation name of the idle instance's Postgres probe in the retry metrics and
/// `/readyz`.
const REACHING_POSTGRES: &str = "reaching postgres";

/// One run's events: its metrics (shared with the HTTP listener) and its totals (shared
/// with the task that writes the batch in flight).
pub(super) struct Events {
    metrics: Arc<Metrics>,
    stats: Mutex<Stats>,
    endpoints: Endpoints,
}

/// Where each side connects, as logs name it (see [`Events::retrying`]).
#[derive(Debug, Clone, Default)]
pub(super) struct Endpoints {
    pub(super) redis: String,
    pub(super) postgres: String,
}

impl Endpoints {
    pub(super) fn of(config: &crate::config::Config) -> Self {
        Self {
            redis: crate::redis::endpoint(&config.redis),
            postgres: crate::write::endpoint(&config.postgres),
        }
    }
}

impl Events {
    pub(super) fn new(metrics: Arc<Metrics>, endpoints: Endpoints) -> Self {
        Self {
            metrics,
            stats: Mutex::default(),
            endpoints,
        }
    }

    /// The metrics, for what is not an event of the flow (gauges, liveness).
    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The totals so far (the round trips are the caller's to fill in).
    pub(super) fn stats(&self) -> Stats {
        self.tally().clone()
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Entries read from the streams (new, re-read or claimed).
    pub(super) fn read(&self, entries: &[StreamEntry]) {
        self.tally().read += entries.len() as u64;
        for (stream, n) in crate::entry::count_by_stream(entries) {
            self.metrics.add(Counter::Read, stream, n as u64);
        }
    }

    /// Entries taken over from idle consumers (they are read next).
    pub(super) fn claimed(&self, entries: &[StreamEntry]) {
        self.tally().claimed += entries.len() as u64;
        for e in entries {
            self.metrics.add(Counter::Claimed, &e.stream, 1);
        }
    }

    /// An entry recognised and skipped (acknowledged with its batch, nothing written).
    pub(super) fn skipped(&self, entry: &StreamEntry, skip: Skip) {
        self.tally().skipped += 1;
        self.metrics.add(Counter::Skipped, &entry.stream, 1);
        tracing::debug!(stream = %entry.stream, entry = %entry.id, kind = skip.as_str(), "skipped");
    }

    /// A batch written, committed, dead-lettered and acknowledged, `took` to write;
    /// `already` of its dead letters were left out, found in the dead-letter stream
    /// already (a replay's).
    pub(super) fn committed(
        &self,
        batch: &Batch,
        committed: &Committed,
        already: &[DeadLetter],
        took: Duration,
    ) {
        {
            let mut stats = self.tally();
            stats.batches += 1;
            stats.rows_written += committed.rows() as u64;
            stats.dead_lettered += committed.dead().len().saturating_sub(already.len()) as u64;
            stats.already_dead_lettered += already.len() as u64;
            stats.acked += committed.acks().len() as u64;
        }
        self.count_commit(batch, committed, already, took);
        let mut acked: HashMap<&str, u64> = HashMap::new();
        for (stream, _) in committed.acks() {
            *acked.entry(stream).or_default() += 1;
        }
        for (stream, n) in acked {
            self.metrics.add(Counter::Acked, stream, n);
        }
        tracing::debug!(
            rows = committed.rows(),
            acked = committed.acks().len(),
            "batch committed"
        );
    }

    /// A commit of transaction mode's committer: in the metrics (its events were
    /// counted as read and acknowledged by the loop that held or staged them).
    pub(super) fn transactions_committed(
        &self,
        batch: &Batch,
        committed: &Committed,
        took: Duration,
    ) {
        self.count_commit(batch, committed, &[], took);
    }

    /// A commit in the metrics: its entries and time, rows per table, dead letters per
    /// stream (but `already`, a replay's left out).
    fn count_commit(
        &self,
        batch: &Batch,
        committed: &Committed,
        already: &[DeadLetter],
        took: Duration,
    ) {
        let metrics = &self.metrics;
        metrics.committed(batch.acks.len(), took, &batch.source_ts_ms);
        for t in &batch.tables {
            metrics.add(
                Counter::RowsWritten,
                &t.table.name.to_string(),
                t.rows.len() as u64,
            );
        }
        let mut dead: HashMap<&str, u64> = HashMap::new();
        for d in committed.dead() {
            *dead.entry(&d.entry.stream).or_default() += 1;
        }
        for d in already {
            if let Some(n) = dead.get_mut(d.entry.stream.as_ref()) {
                *n = n.saturating_sub(1);
            }
        }
        for (stream, n) in dead {
            metrics.add(Counter::DeadLettered, stream, n);
        }
    }

    /// `what` failed with `error` and will be tried again (`/readyz` fails meanwhile).
    /// The line names the endpoint of the side that failed (`redis=host:port` or
    /// `postgres=host:port/database`, never a password).
    pub(super) fn retrying(
        &self,
        what: &str,
        side: Side,
        error: &(dyn std::error::Error + 'static),
    ) {
        self.metrics.retrying(what);
        // An error without a source (a timeout) says it all in its message.
        let cause = source_chain(error);
        let cause = (!cause.is_empty()).then_some(cause);
        match side {
            Side::Redis => tracing::warn!(
                redis = %self.endpoints.redis, error = %error, cause,
                "{} failed, retrying", what
            ),
            Side::Postgres => tracing::warn!(
                postgres = %self.endpoints.postgres, error = %error, cause,
                "{} failed, retrying", what
            ),
        }
    }

    /// A batch's write (with its retries) has gone on for `waited`: named by its tables,
    /// since a lock on one of them (`LOCK TABLE`, a long DDL) is the likely cause.
    pub(super) fn write_slow(&self, batch: &Batch, waited: Duration) {
        let waited_s = waited.as_secs();
        tracing::warn!(
            postgres = %self.endpoints.postgres,
            tables = %table_names(batch),
            entries = batch.acks.len(),
            waited_s,
            "writing a batch has taken {waited_s} s so far and goes on waiting: a lock on \
             one of its tables (see pg_locks), or postgres being slow or away"
        );
    }

    /// A batch whose write was reported slow ([`Events::write_slow`]) is written.
    pub(super) fn slow_write_ended(&self, batch: &Batch, took: Duration) {
        let took_s = (took.as_secs_f64() * 10.0).round() / 10.0;
        tracing::info!(
            tables = %table_names(batch),
            took_s,
            "the slow write ended after {took_s:.1} s"
        );
    }

    /// A cluster lane's outage began or ended (its master is away, or back). The other
    /// lanes go on meanwhile; one line when it begins, one when it ends.
    pub(super) fn lane(&self, event: LaneEvent) {
        match event {
            LaneEvent::Failed {
                slot,
                streams,
                error,
            } => {
                let what = format!("reading slot {slot}");
                self.metrics.retrying(&what);
                let streams = names(&streams);
                match source_chain(&error) {
                    cause if cause.is_empty() => tracing::warn!(
                        slot, streams = %streams, error = %error,
                        "reading from redis (slot {slot}) failed: only its streams wait, retrying"
                    ),
                    cause => tracing::warn!(
                        slot, streams = %streams, error = %error, cause = %cause,
                        "reading from redis (slot {slot}) failed: only its streams wait, retrying"
                    ),
                }
            }
            LaneEvent::Recovered {
                slot,
                streams,
                after,
            } => {
                self.metrics.recovered(&format!("reading slot {slot}"));
                let after_s = (after.as_secs_f64() * 10.0).round() / 10.0;
                tracing::info!(
                    slot, streams = %names(&streams), outage_s = after_s,
                    "reading from redis (slot {slot}) recovered after {after_s:.1} s"
                );
            }
        }
    }

    /// `what` succeeded, or failed for good: it is no longer failing on.
    pub(super) fn recovered(&self, what: &str) {
        self.metrics.recovered(what);
    }

    /// An idle instance's Postgres answered its probe.
    pub(super) fn postgres_answers(&self) {
        self.metrics.recovered(REACHING_POSTGRES);
    }

    /// An idle instance's Postgres did not answer its probe (`/readyz` fails).
    pub(super) fn postgres_silent(&self, error: &WriteError) {
        tracing::warn!(
            postgres = %self.endpoints.postgres, error = %error, cause = %source_chain(error),
            "postgres does not answer"
        );
        self.metrics.retrying(REACHING_POSTGRES);
    }

    /// The group on `stream`, which this instance was reading, was gone and had to be
    /// created again: the stream was deleted, or Redis restarted without persistence.
    pub(super) fn group_recreated(&self, stream: &str) {
        self.metrics.add(Counter::GroupsRecreated, stream, 1);
        tracing::warn!(
            stream = %stream,
            "the stream lost its consumer group while being read (deleted, or redis restarted \
             without persistence): the group was created again from 0; entries added before \
             the loss and not yet applied may be gone (replay them from the source if so)"
        );
    }

    /// Entries trimmed from `stream` after every group acknowledged them.
    pub(super) fn trimmed(&self, stream: &str, n: u64) {
        self.metrics.add(Counter::Trimmed, stream, n);
    }

    /// Entries some group had not acknowledged that a trim ceiling dropped from `stream`.
    pub(super) fn trim_dropped(&self, stream: &str, dropped: u64) {
        if dropped == 0 {
            return;
        }
        self.metrics
            .add(Counter::TrimDroppedUnacked, stream, dropped);
        tracing::warn!(
            stream = %stream,
            dropped,
            "a trim ceiling dropped entries some group had not acknowledged: they are \
             dead-lettered as deleted if they were pending, and never seen if not yet read"
        );
    }

    /// Tombstones and truncations of `table` removed below its horizon.
    pub(super) fn collected(&self, table: &TableName, collected: Collected) {
        if collected == Collected::default() {
            return;
        }
        let name = table.to_string();
        let metrics = &self.metrics;
        metrics.add(Counter::TombstonesRemoved, &name, collected.tombstones);
        metrics.add(Counter::TruncationsRemoved, &name, collected.truncations);
        tracing::info!(
            table = %name,
            tombstones = collected.tombstones,
            truncations = collected.truncations,
            "removed what no event can still need"
        );
    }
}

/// A batch's tables for a log line: comma-separated.
fn table_names(batch: &Batch) -> String {
    batch
        .tables
        .iter()
        .map(|t| t.table.name.to_string())
        .collect::<Vec<String>>()
        .join(",")
}

/// Stream names for a log line: comma-separated.
fn names(streams: &[Arc<str>]) -> String {
    streams
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<&str>>()
        .join(",")
}
