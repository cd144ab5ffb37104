//! The loop's periodic chores (priority 3): collect the batch in flight once done; claim
//! entries idle on dead consumers and prune idle consumers; discover new streams; poll
//! the groups' state for the metrics; trim acknowledged entries; collect tombstones
//! below the horizon (`horizon.rs`, every `postgres.gc_every`); log progress. Each
//! runs when its period has passed; a failure is logged and tried next period.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Pipeline, PipelineError};
use crate::config::TrimMode;
use crate::entry::EntryId;
use crate::metrics::{GroupGauges, now_ms};
use crate::redis::{RedisError, admin};

/// How often glob patterns are re-scanned for new streams.
const DISCOVER_EVERY: Duration = Duration::from_secs(30);
/// How often the groups' lag and pending counts are read for the metrics.
const GAUGES_EVERY: Duration = Duration::from_secs(15);
/// How often the group is looked at for other live instances (`share.rs`).
const SHARE_EVERY: Duration = Duration::from_secs(5);
/// How often streams with `trim = "acked"` are trimmed.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// When each periodic chore last ran (`None`: never, which counts as due).
pub(super) struct Timers {
    claim: Option<Instant>,
    discover: Option<Instant>,
    gauges: Option<Instant>,
    share: Option<Instant>,
    trim: Option<Instant>,
    collect: Option<Instant>,
}

impl Timers {
    /// Every chore waits its first period, except the gauges (the metrics are filled at
    /// once) and the look for other instances.
    pub(super) fn new() -> Self {
        let now = Some(Instant::now());
        Self {
            claim: now,
            discover: now,
            gauges: None,
            share: None,
            trim: now,
            collect: now,
        }
    }

    /// `true` (and restarts the timer) when `every` has passed since `last`.
    fn due(last: &mut Option<Instant>, every: Duration) -> bool {
        if last.is_none_or(|t| t.elapsed() >= every) {
            *last = Some(Instant::now());
            return true;
        }
        false
    }
}

impl Pipeline {
    /// Collects the batch in flight once done (stats, errors); now and then claims
    /// entries of dead consumers, prunes idle consumers, re-discovers streams, polls the
    /// groups' state for the metrics and logs progress.
    pub(super) async fn housekeeping(
        &mut self,
        shutdown: &CancellationToken,
        timers: &mut Timers,
    ) -> Result<(), PipelineError> {
        self.core.collect_finished().await?;
        self.core.settle_owed_acks();
        let claim_every = (self.core.config.redis.claim_idle / 2).max(Duration::from_secs(1));
        if Timers::due(&mut timers.claim, claim_every) {
            self.claim(shutdown).await?;
        }
        if Timers::due(&mut timers.discover, DISCOVER_EVERY)
            && let Err(e) = self.discover().await
        {
            tracing::warn!(error = %e, "re-discovering streams failed");
        }
        if Timers::due(&mut timers.share, SHARE_EVERY) {
            self.share_keys().await;
        }
        if Timers::due(&mut timers.gauges, GAUGES_EVERY) {
            self.poll_gauges().await;
        }
        if Timers::due(&mut timers.trim, TRIM_EVERY) {
            self.trim().await;
        }
        let gc_every = self.core.config.postgres.gc_every;
        if !gc_every.is_zero() && Timers::due(&mut timers.collect, gc_every) {
            let mut horizons = std::mem::take(&mut self.horizons);
            self.collect(&mut horizons).await;
            self.horizons = horizons;
        }
        self.core.progress(self.reader.round_trips());
        Ok(())
    }

    /// Takes over (and processes) entries idle on other consumers for `claim_idle`, at
    /// most what the batch has room for; then removes consumers idle for `prune_idle`.
    async fn claim(&mut self, shutdown: &CancellationToken) -> Result<(), PipelineError> {
        // Entries held for the replicas' confirmation (`redis.wait_replicas`) are idle in
        // our own PEL: XAUTOCLAIM would take them and apply them unconfirmed.
        if self.reader.holds_unconfirmed() {
            return Ok(());
        }
        let room = self.core.batcher.room().max(1);
        let entries = self
            .reader
            .claim_idle(self.core.config.redis.claim_idle, room)
            .await;
        self.core.events.claimed(&entries);
        self.core.process(entries, shutdown).await?;
        self.reader
            .prune_consumers(self.core.config.redis.prune_idle)
            .await;
        Ok(())
    }

    /// Finds the streams of every mapping and starts reading the new ones, each routed
    /// to the first mapping that names it (a stream's route never changes).
    pub(super) async fn discover(&mut self) -> Result<(), RedisError> {
        let found = self.core.mapped_streams(self.reader.control()).await?;
        let names: Vec<String> = found.iter().map(|(name, _)| name.clone()).collect();
        let added = self
            .reader
            .add_streams(&names, &self.core.config.redis.start)
            .await;
        // On an error, only the streams the reader took are routed.
        let read: Option<HashSet<&str>> = added
            .is_err()
            .then(|| self.reader.streams().map(AsRef::as_ref).collect());
        for (name, index) in &found {
            if read
                .as_ref()
                .is_none_or(|read| read.contains(name.as_str()))
            {
                self.core
                    .routes
                    .entry(Arc::from(name.as_str()))
                    .or_insert(*index);
            }
        }
        added
    }

    /// Trims the streams of mappings with `trim = "acked"`: first what every group has
    /// acknowledged, then (counted as dropped) what a `trim_max_age`/`trim_max_len`
    /// ceiling cuts beyond that.
    async fn trim(&mut self) {
        let streams: Vec<(Arc<str>, usize)> = self
            .core
            .routes
            .iter()
            .map(|(s, i)| (s.clone(), *i))
            .collect();
        for (stream, index) in streams {
            if self.core.config.mappings[index].trim == TrimMode::Acked {
                self.trim_stream(&stream, index).await;
            }
        }
    }

    /// Trims one stream of mapping `index` (see [`Self::trim`]).
    async fn trim_stream(&mut self, stream: &str, index: usize) {
        let m = &self.core.config.mappings[index];
        let (max_age, max_len) = (m.trim_max_age, m.trim_max_len);
        let conn = self.reader.control();
        match admin::trim_acked(conn, stream).await {
            Ok(n) => self.core.events.trimmed(stream, n),
            Err(e) => tracing::warn!(stream = %stream, error = %e, "trimming failed"),
        }
        let mut dropped = 0;
        if let Some(age) = max_age {
            let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
            let cut = EntryId {
                ms: now_ms().saturating_sub(age_ms),
                seq: 0,
            };
            match admin::trim_below(conn, stream, cut).await {
                Ok(n) => dropped += n,
                Err(e) => {
                    tracing::warn!(stream = %stream, error = %e, "trimming by age failed")
                }
            }
        }
        if let Some(len) = max_len {
            match admin::trim_to_len(conn, stream, len).await {
                Ok(n) => dropped += n,
                Err(e) => {
                    tracing::warn!(stream = %stream, error = %e, "trimming by length failed")
                }
            }
        }
        self.core.events.trim_dropped(stream, dropped);
    }

    /// Lag, pending and consumers of every group, and dead-letter lengths, per stream.
    async fn poll_gauges(&mut self) {
        // An idle instance writes nothing: ask Postgres, so readiness shows an outage.
        match self.core.writer.ping(Duration::from_secs(5)).await {
            Ok(()) => self.core.events.postgres_answers(),
            Err(e) => self.core.events.postgres_silent(&e),
        }
        let streams: Vec<(Arc<str>, String)> = self
            .core
            .routes
            .keys()
            .map(|s| (s.clone(), self.core.config.redis.dlq_stream(s)))
            .collect();
        let metrics = self.core.events.metrics();
        for (stream, outcome) in self.reader.gauges(streams).await {
            match outcome {
                Ok(Some(status)) => {
                    for g in &status.groups {
                        let gauges = GroupGauges {
                            lag: g.lag,
                            pending: g.pending,
                            consumers: g.consumers,
                        };
                        metrics.set_group(&stream, &g.group, gauges);
                    }
                    metrics.set_dlq_length(&stream, status.dlq_length);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(stream = %stream, error = %e, "polling the group state failed")
                }
            }
        }
    }
}
