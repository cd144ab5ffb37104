//! The pipeline: wires read → decode → map → batch → write → ack, and is the only
//! place that retries. No SQL and no Redis commands here.
//!
//! The loop, in priority order:
//! 1. shutdown requested → flush, commit, ack, leave the group (when nothing of ours is
//!    pending), return;
//! 2. the batch is full or its oldest entry has waited `max_delay` → flush;
//! 3. periodically: claim entries idle on dead consumers, re-discover glob streams;
//! 4. read the next entries (blocking at most until the flush deadline) while the
//!    previous read's go through decode → map → batch.
//!
//! A flush hands the batch to a task that writes and acknowledges it while the loop
//! fills the next one; at most one batch is in flight, so batches commit in order.
//!
//! Reads are never cancelled (a cancelled XREADGROUP can strand entries in the PEL);
//! shutdown is noticed between reads, so it takes at most `redis.block`.

mod replay;

pub use replay::{ReplayOptions, ReplayProgress, replay};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use crate::ack::{AckError, Acker};
use crate::batch::Batcher;
use crate::config::Config;
use crate::config::TruncateMode;
use crate::decode::{self, Decoded, Op, Skip};
use crate::entry::{EntryId, StreamEntry};
use crate::map::{self, MapError, Mapping};
use crate::metrics::{Counter, GroupGauges, Metrics};
use crate::read::Reader;
use crate::redis::{RedisError, admin};
use crate::write::{self, Catalog, ErrorClass, WriteError, Writer};

/// How often glob patterns are re-scanned for new streams.
const DISCOVER_EVERY: Duration = Duration::from_secs(30);
/// How often a progress line is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// The operation name of reads in the retry metrics and `/readyz`.
const READING: &str = "reading from redis";
/// How often the groups' lag and pending counts are read for the metrics.
const GAUGES_EVERY: Duration = Duration::from_secs(15);
/// The readiness probe of an idle instance's Postgres (in the gauge round).
const REACHING_POSTGRES: &str = "reaching postgres";
/// How often streams with `trim = "acked"` are trimmed.
const TRIM_EVERY: Duration = Duration::from_secs(10);
/// `/readyz` fails when the loop has not gone round for this long (plus `redis.block`).
const STALL_AFTER: Duration = Duration::from_secs(60);

/// When each periodic chore last ran (`None`: never, which counts as due).
struct Timers {
    claim: Option<Instant>,
    discover: Option<Instant>,
    gauges: Option<Instant>,
    trim: Option<Instant>,
    progress: Option<Instant>,
}

impl Timers {
    /// Every chore waits its first period, except the gauges (the metrics are filled at once).
    fn new() -> Self {
        let now = Some(Instant::now());
        Self {
            claim: now,
            discover: now,
            gauges: None,
            trim: now,
            progress: now,
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

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Read(#[from] RedisError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Ack(#[from] AckError),
    #[error("stream {stream} entry {entry}: {source}")]
    Entry {
        stream: Arc<str>,
        entry: String,
        #[source]
        source: Box<PipelineError>,
    },
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("config: {0}")]
    Config(String),
}

/// Counters of one run (also logged every few seconds).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub read: u64,
    pub rows_written: u64,
    pub skipped: u64,
    pub dead_lettered: u64,
    pub acked: u64,
    pub batches: u64,
    pub claimed: u64,
    /// Statements sent to Postgres to write batches (a transaction's opening is one).
    pub pg_round_trips: u64,
    /// Commands and pipelines sent to Redis to read entries and to acknowledge them.
    pub redis_round_trips: u64,
}

/// Backoff with jitter between attempts; waiting gives up when shutdown is requested.
struct Retry {
    delays: backon::ExponentialBackoff,
}

impl Retry {
    fn new() -> Self {
        Self {
            delays: ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(10))
                .with_jitter()
                .without_max_times()
                .build(),
        }
    }

    /// Sleeps the next delay; `false` when shutdown was requested meanwhile.
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.delays.next().unwrap_or(Duration::from_secs(10));
        tokio::select! {
            biased;
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

/// Which errors are worth another attempt.
trait Transient {
    fn is_transient(&self) -> bool;
}

impl Transient for WriteError {
    fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Retry
    }
}

impl Transient for RedisError {
    fn is_transient(&self) -> bool {
        self.is_retryable()
    }
}

impl Transient for AckError {
    fn is_transient(&self) -> bool {
        self.is_retryable()
    }
}

/// Awaits `$op` (an expression giving a future) until it succeeds or fails for
/// good, backing off after transient errors: `Ok(Some(value))`, `Err(error)`, or
/// `Ok(None)` when shutdown was requested while waiting. A macro rather than a
/// function taking an async closure, so the pipeline's future stays `Send`.
macro_rules! retrying {
    ($metrics:expr, $shutdown:expr, $what:expr, $op:expr) => {{
        let mut retry = Retry::new();
        loop {
            match $op.await {
                Ok(value) => {
                    $metrics.recovered($what);
                    break Ok(Some(value));
                }
                Err(e) if Transient::is_transient(&e) => {
                    $metrics.retrying($what);
                    tracing::warn!(error = %e, cause = %source_chain(&e), "{} failed, retrying", $what);
                    if !retry.wait($shutdown).await {
                        break Ok(None);
                    }
                }
                Err(e) => {
                    // Not retried: whatever comes of it, this operation is not failing on.
                    $metrics.recovered($what);
                    break Err(e);
                }
            }
        }
    }};
}

/// Runs the sync until `shutdown` is cancelled (then flushes and returns) or a fatal
/// error occurs.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Stats, PipelineError> {
    let metrics = Arc::new(Metrics::new());
    let stop_http = CancellationToken::new();
    let http = match &config.http.address {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
                PipelineError::Config(format!(
                    "http.address {address}: cannot listen: {e} (is the port taken?)"
                ))
            })?;
            tracing::info!(address, "serving /metrics, /healthz and /readyz");
            let stall_after = config.redis.block + STALL_AFTER;
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                metrics.clone(),
                stall_after,
                stop_http.clone(),
            )))
        }
        None => None,
    };
    let result = match Pipeline::start(config, &shutdown, metrics).await {
        Ok(Some(mut pipeline)) => {
            let result = pipeline.run_loop(&shutdown).await;
            let stats = pipeline.stats();
            tracing::info!(stats = ?stats, "stopped");
            result.map(|()| stats)
        }
        Ok(None) => Ok(Stats::default()),
        Err(e) => Err(e),
    };
    stop_http.cancel();
    if let Some(http) = http {
        let _ = http.await;
    }
    result
}

struct Pipeline {
    reader: Reader,
    /// Entries read while the previous read's were being decoded: processed next.
    prefetched: Vec<StreamEntry>,
    core: Core,
}

/// Everything but the reader, so a read can run while entries are decoded.
struct Core {
    config: Config,
    mappings: Vec<Mapping>,
    routes: HashMap<Arc<str>, usize>,
    catalog: Catalog,
    writer: Writer,
    acker: Acker,
    batcher: Batcher,
    stats: Stats,
    /// The batch being written and acknowledged while the next one fills.
    in_flight: Option<tokio::task::JoinHandle<Result<Option<Done>, PipelineError>>>,
    /// Shutdown came while an entry waited for an outage to end: entries after it were
    /// left pending, so entries read later are not processed either.
    interrupted: bool,
    metrics: Arc<Metrics>,
}

impl Pipeline {
    /// Connects both sides (retrying while they are unreachable), migrates, creates the
    /// groups and checks every fixed target table. `None` if shutdown came first.
    async fn start(
        config: Config,
        shutdown: &CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>, PipelineError> {
        let Some((core, reader)) = Core::open(config, shutdown, None, metrics.clone()).await?
        else {
            return Ok(None);
        };
        let mut pipeline = Self {
            reader,
            prefetched: Vec::new(),
            core,
        };
        if retrying!(metrics, shutdown, "discovering streams", {
            pipeline.discover()
        })?
        .is_none()
        {
            return Ok(None);
        }
        tracing::info!(
            consumer = pipeline.core.config.consumer(),
            group = %pipeline.core.config.redis.group,
            streams = pipeline.core.routes.len(),
            "started"
        );
        Ok(Some(pipeline))
    }

    fn stats(&self) -> Stats {
        self.core.stats(&self.reader)
    }

    /// Finds the streams of every mapping and starts reading the new ones.
    async fn discover(&mut self) -> Result<(), RedisError> {
        for m in &self.core.mappings {
            let names = self.reader.discover(&m.streams).await?;
            let names: Vec<String> = names
                .into_iter()
                .filter(|n| !self.core.config.redis.is_dlq(n))
                .collect();
            self.reader
                .add_streams(&names, &self.core.config.redis.start)
                .await?;
            for n in names {
                self.core
                    .routes
                    .entry(Arc::from(n.as_str()))
                    .or_insert(m.index);
            }
        }
        Ok(())
    }

    async fn run_loop(&mut self, shutdown: &CancellationToken) -> Result<(), PipelineError> {
        let mut timers = Timers::new();
        let mut read_retry: Option<Retry> = None;
        self.core.metrics.set_started();
        loop {
            self.core.metrics.tick();
            // 1. shutdown
            if shutdown.is_cancelled() {
                let mut read = std::mem::take(&mut self.prefetched);
                // Lanes' reads still in flight end within `block`: apply what they bring.
                read.extend(self.reader.finish_reads().await);
                if !self.core.interrupted {
                    self.core.process(read, shutdown).await?;
                }
                if self.core.drain(shutdown).await? {
                    self.reader.leave_group().await;
                }
                return Ok(());
            }
            // 2. flush deadline or full batch
            if self.core.batcher.should_flush(Instant::now()) {
                self.core.flush(shutdown).await?;
            }
            // 3. housekeeping
            self.housekeeping(shutdown, &mut timers).await?;
            // 4. intake
            self.intake(shutdown, &mut read_retry).await?;
        }
    }

    /// Collects the batch in flight once done (stats, errors); now and then claims
    /// entries of dead consumers, prunes idle consumers, re-discovers streams, polls the
    /// groups' state for the metrics and logs progress.
    async fn housekeeping(
        &mut self,
        shutdown: &CancellationToken,
        timers: &mut Timers,
    ) -> Result<(), PipelineError> {
        if self
            .core
            .in_flight
            .as_ref()
            .is_some_and(|h| h.is_finished())
        {
            self.core.wait_in_flight().await?;
        }
        let claim_every = (self.core.config.redis.claim_idle / 2).max(Duration::from_secs(1));
        if Timers::due(&mut timers.claim, claim_every) {
            let room = self.core.batcher.room().max(1);
            let entries = self
                .reader
                .claim_idle(self.core.config.redis.claim_idle, room)
                .await;
            self.core.stats.claimed += entries.len() as u64;
            for e in &entries {
                self.core.metrics.add(Counter::Claimed, &e.stream, 1);
            }
            self.core.process(entries, shutdown).await?;
            self.reader
                .prune_consumers(self.core.config.redis.prune_idle)
                .await;
        }
        if Timers::due(&mut timers.discover, DISCOVER_EVERY)
            && let Err(e) = self.discover().await
        {
            tracing::warn!(error = %e, "re-discovering streams failed");
        }
        if Timers::due(&mut timers.gauges, GAUGES_EVERY) {
            self.poll_gauges().await;
        }
        if Timers::due(&mut timers.trim, TRIM_EVERY) {
            self.trim().await;
        }
        if Timers::due(&mut timers.progress, PROGRESS_EVERY) {
            tracing::info!(stats = ?self.stats(), "progress");
        }
        Ok(())
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
            let m = &self.core.config.mappings[index];
            if m.trim != crate::config::TrimMode::Acked {
                continue;
            }
            let (max_age, max_len) = (m.trim_max_age, m.trim_max_len);
            let conn = self.reader.control();
            match admin::trim_acked(conn, &stream).await {
                Ok(n) => self.core.metrics.add(Counter::Trimmed, &stream, n),
                Err(e) => tracing::warn!(stream = %stream, error = %e, "trimming failed"),
            }
            let mut dropped = 0;
            if let Some(age) = max_age {
                let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
                let cut = EntryId {
                    ms: crate::metrics::now_ms().saturating_sub(age_ms),
                    seq: 0,
                };
                match admin::trim_below(conn, &stream, cut).await {
                    Ok(n) => dropped += n,
                    Err(e) => {
                        tracing::warn!(stream = %stream, error = %e, "trimming by age failed")
                    }
                }
            }
            if let Some(len) = max_len {
                match admin::trim_to_len(conn, &stream, len).await {
                    Ok(n) => dropped += n,
                    Err(e) => {
                        tracing::warn!(stream = %stream, error = %e, "trimming by length failed")
                    }
                }
            }
            if dropped > 0 {
                self.core
                    .metrics
                    .add(Counter::TrimDroppedUnacked, &stream, dropped);
                tracing::warn!(
                    stream = %stream,
                    dropped,
                    "a trim ceiling dropped entries some group had not acknowledged: they are \
                     dead-lettered as deleted if they were pending, and never seen if not yet read"
                );
            }
        }
    }

    /// Lag, pending and consumers of every group, and dead-letter lengths, per stream.
    async fn poll_gauges(&mut self) {
        // An idle instance writes nothing: ask Postgres, so readiness shows an outage.
        match self.core.writer.ping(Duration::from_secs(5)).await {
            Ok(()) => self.core.metrics.recovered(REACHING_POSTGRES),
            Err(e) => {
                tracing::warn!(error = %e, cause = %source_chain(&e), "postgres does not answer");
                self.core.metrics.retrying(REACHING_POSTGRES);
            }
        }
        let streams: Vec<Arc<str>> = self.core.routes.keys().cloned().collect();
        for stream in streams {
            let dlq = self.core.config.redis.dlq_stream(&stream);
            match self.reader.stream_status(&stream, &dlq).await {
                Ok(Some(status)) => {
                    for g in &status.groups {
                        let gauges = GroupGauges {
                            lag: g.lag,
                            pending: g.pending,
                            consumers: g.consumers.len() as u64,
                        };
                        self.core.metrics.set_group(&stream, &g.group, gauges);
                    }
                    self.core.metrics.set_dlq_length(&stream, status.dlq_length);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(stream = %stream, error = %e, "polling the group state failed")
                }
            }
        }
    }

    /// Reads the next entries while the previous read's go through decode → map →
    /// batch, so reading from Redis overlaps decoding (and the write in flight).
    async fn intake(
        &mut self,
        shutdown: &CancellationToken,
        read_retry: &mut Option<Retry>,
    ) -> Result<(), PipelineError> {
        let entries = std::mem::take(&mut self.prefetched);
        let core = &mut self.core;
        let mut block = match core.batcher.deadline() {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
            None => core.config.redis.block,
        };
        if !entries.is_empty() {
            // They start a batch (or join one) whose deadline is at most max_delay away.
            block = block.min(core.config.batch.max_delay.max(Duration::from_millis(1)));
        }
        // COUNT applies per stream: a batch's worth shared between them. Unacknowledged
        // entries stay bounded: this read, the entries being decoded, the batch and
        // the one in flight, each at most about `max_batch`.
        let count = (core.config.batch.max_batch / core.routes.len().max(1)).max(1);
        let (read, processed) = tokio::join!(
            self.reader.read(block, count),
            core.process(entries, shutdown)
        );
        processed?;
        match read {
            Ok(entries) => {
                *read_retry = None;
                self.core.metrics.recovered(READING);
                self.prefetched = entries;
            }
            Err(e) if e.is_retryable() => {
                self.core.metrics.retrying(READING);
                tracing::warn!(error = %e, cause = %source_chain(&e), "reading from redis failed, retrying");
                // What was read is still applied and acked; then the PEL is re-read,
                // because the failed read may have delivered entries we never saw.
                self.core.drain(shutdown).await?;
                let retry = read_retry.get_or_insert_with(Retry::new);
                if !retry.wait(shutdown).await {
                    return Ok(());
                }
                if let Err(e) = self.reader.rewind().await {
                    tracing::warn!(error = %e, "re-reading the pending entries failed, retrying");
                }
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

impl Core {
    /// Connects both sides (retrying while they are unreachable), migrates and checks
    /// every fixed target table. With `replay_as`, checkpoints and dead letters are
    /// recorded under that name and nothing is acknowledged. `None` if shutdown came first.
    async fn open(
        config: Config,
        shutdown: &CancellationToken,
        replay_as: Option<&str>,
        metrics: Arc<Metrics>,
    ) -> Result<Option<(Self, Reader)>, PipelineError> {
        let mappings = config
            .mappings
            .iter()
            .enumerate()
            .map(|(i, m)| {
                Mapping::compile(i, m)
                    .map_err(|e| PipelineError::Config(format!("mapping[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let url = config.postgres.url.clone();
        let pool_size = config.postgres.pool_size;
        let Some(pool) = retrying!(metrics, shutdown, "connecting to postgres", {
            write::connect(&url, pool_size)
        })?
        else {
            return Ok(None);
        };
        if retrying!(metrics, shutdown, "migrating", write::migrate(&pool))?.is_none() {
            return Ok(None);
        }
        let redis_config = config.redis.clone();
        let Some((deployment, control)) = retrying!(metrics, shutdown, "connecting to redis", {
            crate::redis::connect(&redis_config)
        })?
        else {
            return Ok(None);
        };
        let group = replay_as.unwrap_or(&config.redis.group);
        let reader = Reader::new(deployment, control.clone(), group, config.consumer());
        let mut acker = Acker::new(control, group, &config.redis.dlq_suffix);
        if replay_as.is_some() {
            acker = acker.dead_letters_only();
        }
        let mut catalog = Catalog::new(pool.clone());
        let writer = Writer::new(pool, group);
        for m in &mappings {
            if let Some(fixed) = m.table.fixed() {
                let name = fixed.map_err(PipelineError::Config)?;
                let read = retrying!(metrics, shutdown, "reading the catalog", {
                    catalog.table(&name)
                });
                match read {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(None),
                    // Schema evolution creates it from the first event.
                    Err(WriteError::TableMissing { .. })
                        if m.schema_evolution == crate::config::SchemaEvolution::Basic => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let batcher = Batcher::new(config.batch.max_batch, config.batch.max_delay);
        let core = Core {
            config,
            mappings,
            routes: HashMap::new(),
            catalog,
            writer,
            acker,
            batcher,
            stats: Stats::default(),
            in_flight: None,
            interrupted: false,
            metrics,
        };
        Ok(Some((core, reader)))
    }

    /// The stats so far, with the round trips of the writer, `reader` and the acker.
    fn stats(&self, reader: &Reader) -> Stats {
        Stats {
            pg_round_trips: self.writer.round_trips(),
            redis_round_trips: reader.round_trips() + self.acker.round_trips(),
            ..self.stats.clone()
        }
    }

    /// decode → map → batch for each entry.
    /// Stops early (leaving the rest pending) when shutdown is requested during an outage.
    async fn process(
        &mut self,
        entries: Vec<StreamEntry>,
        shutdown: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let now = Instant::now();
        self.stats.read += entries.len() as u64;
        let mut per_stream: Vec<(&Arc<str>, u64)> = Vec::new();
        for e in &entries {
            match per_stream.iter_mut().find(|(s, _)| *s == &e.stream) {
                Some((_, n)) => *n += 1,
                None => per_stream.push((&e.stream, 1)),
            }
        }
        for (stream, n) in per_stream {
            self.metrics.add(Counter::Read, stream, n);
        }
        let max = self.config.redis.max_deliveries;
        for entry in entries {
            if self.batcher.room() == 0 {
                self.flush(shutdown).await?;
            }
            if max > 0 && entry.deliveries > max {
                let last = match self.acker.last_error(&entry.stream, entry.id).await {
                    Some(error) => format!("last error {error}"),
                    None => "no error noted: the instances that had it stopped without one \
                             (killed, crashed or stalled)"
                        .to_string(),
                };
                let reason = format!(
                    "delivered {} times without being acknowledged (max_deliveries = {max}); {last}",
                    entry.deliveries
                );
                self.batcher.push_dead(entry, reason, now);
                continue;
            }
            match self.prepare(&entry, shutdown).await {
                Ok(Prepared::Interrupted) => {
                    self.interrupted = true;
                    return Ok(());
                }
                Ok(Prepared::Row(change, source_ts_ms)) => {
                    // An entry read twice (own PEL and a claim) counts once for latency.
                    if self.batcher.push_row(change, entry, now) {
                        self.batcher.note_source_ts(source_ts_ms);
                    }
                }
                Ok(Prepared::Truncate(t)) => {
                    tracing::info!(stream = %entry.stream, entry = %entry.id, table = %t.table.name, "truncate");
                    self.batcher.push_truncate(t, entry, now);
                }
                Ok(Prepared::Skip(skip)) => {
                    self.stats.skipped += 1;
                    self.metrics.add(Counter::Skipped, &entry.stream, 1);
                    tracing::debug!(stream = %entry.stream, entry = %entry.id, kind = skip.as_str(), "skipped");
                    self.batcher.push_skip(&entry.stream, entry.id, now);
                }
                Ok(Prepared::Dead(reason)) => self.batcher.push_dead(entry, reason, now),
                Err(e) => {
                    return Err(PipelineError::Entry {
                        stream: entry.stream.clone(),
                        entry: entry.id.to_string(),
                        source: Box::new(e),
                    });
                }
            }
        }
        Ok(())
    }

    async fn prepare(
        &mut self,
        entry: &StreamEntry,
        shutdown: &CancellationToken,
    ) -> Result<Prepared, PipelineError> {
        let event = match decode::decode(entry, &self.config.decode) {
            Ok(Decoded::Change(event)) => event,
            Ok(Decoded::Skip(skip)) => return Ok(Prepared::Skip(skip)),
            Err(e) => return Ok(Prepared::Dead(e.reason)),
        };
        let Some(&index) = self.routes.get(&entry.stream) else {
            return Err(PipelineError::Config(format!(
                "no mapping covers stream {}",
                entry.stream
            )));
        };
        let mapping = &self.mappings[index];
        let templated = mapping.table.is_templated();
        let table_name = match map::resolve_table(&mapping.table, &event, &entry.stream) {
            Ok(t) => t,
            Err(MapError::Event(reason)) => return Ok(Prepared::Dead(reason)),
            Err(e) => return Err(e.into()),
        };
        // Only for a table not read yet: the declared columns are built on demand.
        if !self.catalog.knows(&table_name)
            && let Some((columns, key)) = &mapping.evolution(&event)
            && let Some(prepared) = self
                .evolve(&table_name, columns, key, templated, shutdown)
                .await?
        {
            return Ok(prepared);
        }
        let table = match self.table(&table_name, templated, false, shutdown).await? {
            Ok(table) => table,
            Err(prepared) => return Ok(prepared),
        };
        let mapping = &self.mappings[index];
        if event.op == Op::Delete && mapping.delete == crate::config::DeleteMode::Ignore {
            return Ok(Prepared::Skip(Skip::Delete));
        }
        if event.op == Op::Truncate {
            if mapping.truncate == TruncateMode::Skip {
                return Ok(Prepared::Skip(Skip::Truncate));
            }
            return match map::map_truncate(mapping, &event, entry.id, &table) {
                Ok(t) => Ok(Prepared::Truncate(t)),
                Err(MapError::Event(reason)) => Ok(Prepared::Dead(reason)),
                Err(e) => Err(e.into()),
            };
        }
        let mapped = match map::map_event(mapping, &event, entry.id, &table) {
            // The column may have been added since the catalog was read: read it again
            // (at most every few seconds per table) before giving up on the event.
            Err(MapError::UnknownColumn(_)) => {
                if let Some((columns, key)) = &self.mappings[index].evolution(&event)
                    && let Some(prepared) = self
                        .evolve(&table_name, columns, key, templated, shutdown)
                        .await?
                {
                    return Ok(prepared);
                }
                match self.table(&table_name, templated, true, shutdown).await? {
                    Ok(table) => map::map_event(&self.mappings[index], &event, entry.id, &table),
                    Err(prepared) => return Ok(prepared),
                }
            }
            other => other,
        };
        match mapped {
            Ok(change) => Ok(Prepared::Row(change, event.source.ts_ms)),
            Err(MapError::Event(reason) | MapError::UnknownColumn(reason)) => {
                Ok(Prepared::Dead(reason))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Schema evolution for one event (retrying transient errors); `Some(prepared)`:
    /// what to do with the entry instead (the event cannot create the table, or
    /// shutdown came).
    async fn evolve(
        &mut self,
        name: &crate::table::TableName,
        columns: &[crate::table::DeclaredColumn],
        key: &[String],
        templated: bool,
        shutdown: &CancellationToken,
    ) -> Result<Option<Prepared>, PipelineError> {
        if self.batcher.has_table(name) {
            // Rows of this table were mapped with the catalog about to change.
            self.flush(shutdown).await?;
        }
        let catalog = &mut self.catalog;
        let metrics = &self.metrics;
        match retrying!(metrics, shutdown, "evolving a table", {
            catalog.evolve(name, columns, key)
        }) {
            Ok(Some(())) => Ok(None),
            Ok(None) => Ok(Some(Prepared::Interrupted)),
            // A templated name comes from the event: only this event is affected. A
            // fixed table that cannot be created is a table-wide problem: stop.
            Err(e) if templated && e.class() != ErrorClass::Retry => {
                Ok(Some(Prepared::Dead(e.to_string())))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The catalog facts of a table (`reload`: read again). `Err(prepared)`: what to
    /// do with the entry instead (shutdown came, or a templated table is missing).
    async fn table(
        &mut self,
        name: &crate::table::TableName,
        templated: bool,
        reload: bool,
        shutdown: &CancellationToken,
    ) -> Result<Result<Arc<map::TableSchema>, Prepared>, PipelineError> {
        if reload && self.batcher.has_table(name) {
            // The batch's rows of this table were mapped with the schema about to be
            // replaced: write them first, so no batch mixes two schemas of a table.
            self.flush(shutdown).await?;
        }
        let catalog = &mut self.catalog;
        let metrics = &self.metrics;
        let result = if reload {
            retrying!(metrics, shutdown, "reading the catalog", {
                catalog.reload(name)
            })
        } else {
            retrying!(metrics, shutdown, "reading the catalog", {
                catalog.table(name)
            })
        };
        match result {
            Ok(Some(table)) => Ok(Ok(table)),
            Ok(None) => Ok(Err(Prepared::Interrupted)),
            // A name from a template comes from the event: only this event is affected.
            Err(e @ WriteError::TableMissing { .. }) if templated => {
                Ok(Err(Prepared::Dead(e.to_string())))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Hands the batch to a task that writes it (retrying transient errors), then
    /// dead-letters and acknowledges it (retrying likewise), while this loop reads and
    /// decodes the next one. At most one batch is in flight: this first waits for the
    /// previous one, so batches commit in order.
    async fn flush(&mut self, shutdown: &CancellationToken) -> Result<(), PipelineError> {
        self.wait_in_flight().await?;
        if self.batcher.is_empty() {
            return Ok(());
        }
        let batch = self.batcher.take();
        let writer = self.writer.clone();
        let acker = self.acker.clone();
        let shutdown = shutdown.clone();
        let metrics = self.metrics.clone();
        self.in_flight = Some(tokio::spawn(write_and_ack(
            writer, acker, batch, shutdown, metrics,
        )));
        Ok(())
    }

    /// Flushes and waits: `true` when everything read so far is acknowledged.
    async fn drain(&mut self, shutdown: &CancellationToken) -> Result<bool, PipelineError> {
        self.flush(shutdown).await?;
        self.wait_in_flight().await
    }

    /// Waits for the batch in flight, if any: `true` when it was acknowledged.
    async fn wait_in_flight(&mut self) -> Result<bool, PipelineError> {
        let Some(handle) = self.in_flight.take() else {
            return Ok(true);
        };
        let outcome = match handle.await {
            Ok(outcome) => outcome?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => return Err(PipelineError::Config(format!("the writer task ended: {e}"))),
        };
        if let Some(done) = &outcome {
            self.stats.batches += 1;
            self.stats.rows_written += done.rows;
            self.stats.dead_lettered += done.dead;
            self.stats.acked += done.acked;
        }
        Ok(outcome.is_some())
    }
}

/// What a written and acknowledged batch amounted to.
struct Done {
    rows: u64,
    dead: u64,
    acked: u64,
}

/// Writes one batch, then dead-letters and acknowledges it. `None`: shutdown came during
/// an outage and the batch was abandoned unacknowledged: its entries stay pending, to be
/// read again by this consumer when it restarts under the same name, or claimed by
/// another after `claim_idle`.
async fn write_and_ack(
    writer: Writer,
    mut acker: Acker,
    batch: crate::batch::Batch,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> Result<Option<Done>, PipelineError> {
    let shutdown = &shutdown;
    let started = Instant::now();
    let mut last_error = None;
    let written = retrying!(metrics, shutdown, "writing to postgres", async {
        let result = writer.write(&batch).await;
        if let Err(e) = &result {
            last_error = Some(format!("{e}: {}", source_chain(e)));
        }
        result
    });
    // Not written (failed, or abandoned at shutdown): the entries stay pending; note why.
    if !matches!(written, Ok(Some(_)))
        && let Some(error) = &last_error
    {
        acker.note_error(&batch.acks, error).await;
    }
    let committed = match written {
        Ok(Some(committed)) => committed,
        Ok(None) => {
            tracing::warn!(
                entries = batch.acks.len(),
                "shutdown during a postgres outage: entries stay pending"
            );
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let took = started.elapsed();
    if retrying!(metrics, shutdown, "acknowledging", {
        acker.ack(&committed)
    })?
    .is_none()
    {
        tracing::warn!(
            "shutdown during a redis outage: committed entries stay pending and will be re-applied as no-ops"
        );
        return Ok(None);
    }
    record(&metrics, &batch, &committed, took);
    tracing::debug!(
        rows = committed.rows(),
        acked = committed.acks().len(),
        "batch committed"
    );
    Ok(Some(Done {
        rows: committed.rows() as u64,
        dead: committed.dead().len() as u64,
        acked: committed.acks().len() as u64,
    }))
}

/// A committed and acknowledged batch in the metrics.
fn record(
    metrics: &Metrics,
    batch: &crate::batch::Batch,
    committed: &write::Committed,
    took: Duration,
) {
    metrics.committed(batch.acks.len(), took, &batch.source_ts_ms);
    for t in &batch.tables {
        metrics.add(
            Counter::RowsWritten,
            &t.table.name.to_string(),
            t.rows.len() as u64,
        );
    }
    let mut acked: HashMap<&str, u64> = HashMap::new();
    for (stream, _) in committed.acks() {
        *acked.entry(stream).or_default() += 1;
    }
    for (stream, n) in acked {
        metrics.add(Counter::Acked, stream, n);
    }
    let mut dead: HashMap<&str, u64> = HashMap::new();
    for d in committed.dead() {
        *dead.entry(&d.entry.stream).or_default() += 1;
    }
    for (stream, n) in dead {
        metrics.add(Counter::DeadLettered, stream, n);
    }
}

enum Prepared {
    /// A row change and its event's `source.ts_ms`.
    Row(map::RowChange, Option<i64>),
    Truncate(map::Truncate),
    Skip(Skip),
    Dead(String),
    /// Shutdown came during an outage: leave this entry pending.
    Interrupted,
}

/// The error's causes, joined: operators need the root cause (refused, timed out, …).
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}
