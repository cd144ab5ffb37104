//! The pipeline: wires read → decode → map → batch → write → ack, and is the only
//! place that retries. No SQL and no Redis commands here.
//!
//! The loop, in priority order:
//! 1. shutdown requested → flush, commit, ack, leave the group (when nothing of ours is
//!    pending), return;
//! 2. the batch is full, its oldest entry has waited `max_delay`, or the sync has caught
//!    up and no batch is being written (adaptive batching, `pace.rs`) → flush;
//! 3. periodically: claim entries idle on dead consumers, re-discover glob streams,
//!    trim, collect tombstones below the horizon;
//! 4. caught up while a batch is being written: wait for that write (group commit);
//! 5. read the next entries (blocking while no batch waits, else taking only what is
//!    there) while the previous read's go through decode → map → batch.
//!
//! A flush hands the batch to a task that writes and acknowledges it while the loop
//! fills the next one; at most one batch is in flight, so batches commit in order.
//!
//! Reads are never cancelled (a cancelled XREADGROUP can strand entries in the PEL);
//! shutdown is noticed between reads, so it takes at most `redis.block`.
//!
//! # Files
//!
//! ```text
//! mod.rs      run, the loop and its intake (this file)
//! open.rs     connect both sides, migrate, check the fixed tables → Core
//! prepare.rs  decode → map → batch of each entry read (schema evolution, catalog reloads)
//! flush.rs    hand a batch to the writer task: write, dead-letter, acknowledge
//! chores.rs   the periodic ones: claim, prune, discover, trim, gauges, progress
//! horizon.rs  the collection of tombstones and truncations below each table's horizon
//! fatal.rs    a fatal stop: its error noted on the entries read, the innocent released
//! pace.rs     adaptive batching: when a batch is written, how long a read may wait
//! events.rs   each observed event counted (metrics and Stats) and logged in one place
//! retry.rs    backoff, which errors are transient, retrying!
//! replay.rs   re-apply a range of stream history outside the group
//! commit/     transaction mode's committer: whole source transactions, in commit order
//!             (mod.rs the loop and leadership, front.rs what to apply next, apply.rs
//!             the commits)
//! plan.rs     the orders a committer's commit writes its changes in
//! held.rs     events held in memory for this instance's committer
//! align.rs    reading the streams abreast while those fill up
//! ```
//!
//! In transaction mode (`[transactions]`, docs/TRANSACTIONS.md) the loop holds or stages
//! the events of source transactions instead of batching them for their tables, and a
//! committer task (`commit/`) applies whole transactions.

mod align;
mod chores;
mod commit;
mod events;
mod fatal;
mod flush;
mod held;
mod horizon;
mod open;
mod pace;
mod plan;
mod prepare;
mod replay;
mod retry;
mod share;

pub use replay::{ReplayOptions, ReplayProgress, replay};
pub use retry::{error_text, source_chain};

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use self::chores::Timers;
use self::events::{Endpoints, Events};
use self::retry::{Retry, Side, retrying};
use crate::ack::{AckError, Acker};
use crate::batch::Batcher;
use crate::config::Config;
use crate::entry::{EntryRef, StreamEntry};
use crate::map::{MapError, Mapping};
use crate::metrics::Metrics;
use crate::read::Reader;
use crate::redis::RedisError;
use crate::write::{Catalog, WriteError, Writer};

/// The operation name of reads in the retry metrics and `/readyz`.
const READING: &str = "reading from redis";
/// The operation name of re-reading the pending entries after a read error.
const REWINDING: &str = "re-reading the pending entries";
/// Transaction mode: events held for this instance's committer, in batches of
/// [`tx_unit`] (half as many again while it waits for events: `held.rs`). 6: the
/// benchmark's transaction workload staged nothing and kept peak RSS under 100 MiB (12
/// took 112–115 MiB).
const HELD_PER_BATCH: usize = 6;

/// Transaction mode's unit of memory: `batch.max_batch`, but at most 1024 events (the
/// size its held room and commits were measured with): the default `max_batch` is
/// larger for the per-event path (`share.rs`), whose batches are not held in memory.
pub(super) fn tx_unit(config: &Config) -> usize {
    config.batch.max_batch.min(1024)
}
/// The longest the loop waits for the committer before looking again.
const HELD_PAUSE: Duration = Duration::from_millis(50);
/// How often a progress line is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// `/readyz` fails when the loop has not gone round for this long (plus `redis.block`).
const STALL_AFTER: Duration = Duration::from_secs(60);

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
    /// Two instances under one name would re-read each other's pending entries.
    #[error(
        "consumer {consumer} of group {group} is in use by another live instance (a Redis \
         connection named {client} read {idle_s} s ago): give each instance its own \
         redis.consumer (REDSINK_REDIS_CONSUMER), or leave it unset for the default \
         <hostname>-<pid>"
    )]
    ConsumerInUse {
        consumer: String,
        group: String,
        client: String,
        idle_s: u64,
    },
    /// The task writing the batch in flight was cancelled (the runtime is shutting down).
    #[error("the writer task ended")]
    WriterTask(#[source] tokio::task::JoinError),
}

/// Counters of one run (also logged every few seconds).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub read: u64,
    pub rows_written: u64,
    pub skipped: u64,
    pub dead_lettered: u64,
    /// Dead letters a replay left out: their dead-letter stream already held them (by
    /// source entry ID, or the same original fields).
    pub already_dead_lettered: u64,
    pub acked: u64,
    pub batches: u64,
    pub claimed: u64,
    /// Statements sent to Postgres to write batches (a transaction's opening is one).
    pub pg_round_trips: u64,
    /// Commands and pipelines sent to Redis to read entries and to acknowledge them.
    pub redis_round_trips: u64,
}

/// Runs the sync until `shutdown` is cancelled (then flushes and returns) or a fatal
/// error occurs.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Stats, PipelineError> {
    let metrics = Arc::new(Metrics::new());
    let stop_http = CancellationToken::new();
    let http = listen(&config, &metrics, &stop_http).await?;
    let events = Arc::new(Events::new(metrics, Endpoints::of(&config)));
    // The loop stops on shutdown, or when the committer fails.
    let loop_stop = shutdown.child_token();
    let committer_config = config.transactions.is_some().then(|| config.clone());
    let result = match Pipeline::start(config, &loop_stop, events.clone()).await {
        Ok(Some(mut pipeline)) => {
            let committer = committer_config.map(|c| {
                let held = Arc::new(held::Held::new(HELD_PER_BATCH * tx_unit(&c)));
                pipeline.core.held = Some(held.clone());
                spawn_committer(c, held, &loop_stop, &events)
            });
            let mut result = pipeline.run_loop(&loop_stop).await;
            if let Err(e) = &result {
                pipeline.abandon(e).await;
            }
            if let Some((stop, task)) = committer {
                stop.cancel();
                match task.await {
                    Ok(Err(e)) if result.is_ok() => result = Err(e),
                    Err(e) if result.is_ok() => result = Err(PipelineError::WriterTask(e)),
                    _ => {}
                }
            }
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

/// Starts the committer (transaction mode): its token stops it; a fatal error of it
/// stops the loop too (`loop_stop`).
fn spawn_committer(
    config: Config,
    held: Arc<held::Held>,
    loop_stop: &CancellationToken,
    events: &Arc<Events>,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), PipelineError>>,
) {
    let stop = CancellationToken::new();
    let (task_stop, loop_stop, events) = (stop.clone(), loop_stop.clone(), events.clone());
    let task = tokio::spawn(async move {
        let result = commit::run(config, held, task_stop, events).await;
        if let Err(e) = &result {
            tracing::error!(error = %error_text(e), "the committer failed: stopping");
            loop_stop.cancel();
        }
        result
    });
    (stop, task)
}

/// Starts serving `/metrics`, `/healthz` and `/readyz` when `http.address` is set.
async fn listen(
    config: &Config,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, PipelineError> {
    let Some(address) = &config.http.address else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
        PipelineError::Config(format!(
            "http.address {address}: cannot listen: {e} (is the port taken?)"
        ))
    })?;
    tracing::info!(address, "serving /metrics, /healthz and /readyz");
    let stall_after = config.redis.block + STALL_AFTER;
    Ok(Some(tokio::spawn(crate::metrics::serve(
        listener,
        metrics.clone(),
        stall_after,
        stop.clone(),
    ))))
}

struct Pipeline {
    reader: Reader,
    /// Transaction mode: where each stream's reads got to (`align.rs`).
    align: align::Align,
    /// Each table's horizon of the previous collection round.
    horizons: horizon::Horizons,
    /// Entries read while the previous read's were being decoded: processed next.
    prefetched: Vec<StreamEntry>,
    core: Core,
}

/// Everything but the reader, so a read can run while entries are decoded.
struct Core {
    config: Config,
    mappings: Vec<Mapping>,
    /// Looked up for every entry: foldhash, not std's SipHash.
    routes: foldhash::HashMap<Arc<str>, usize>,
    /// The target tables' catalog facts, cached (the loop's; the write task needs none).
    catalog: Catalog,
    writer: Writer,
    acker: Acker,
    batcher: Batcher,
    /// The batch being written (then acknowledged) while the next one fills.
    in_flight: Option<flush::Flight>,
    /// The batch before it, written and being acknowledged.
    acking: Option<flush::Flight>,
    /// When the batch in flight was handed to the write task.
    in_flight_since: Option<Instant>,
    /// When the last progress line was logged: by the loop's chores, or while the loop
    /// waits for a blocked write ([`Core::wait_in_flight`]).
    progress_at: Instant,
    /// The reader's round trips as of the loop's last turn (the progress line's count
    /// while the loop, and so the reader, waits for a write).
    reader_round_trips: u64,
    /// The last read filled its COUNT on some stream: more is waiting there.
    backlog: bool,
    /// Shutdown came while an entry waited for an outage to end: entries after it were
    /// left pending, so entries read later are not processed either.
    interrupted: bool,
    /// Entries read but neither batched nor acknowledged because an error stopped their
    /// processing (the one it came with first): what a fatal stop releases.
    unfinished: Vec<EntryRef>,
    /// Transaction mode: events of source transactions are staged, not written.
    staging: bool,
    /// Transaction mode: events held for this instance's committer (`held.rs`).
    held: Option<Arc<held::Held>>,
    events: Arc<Events>,
}

impl Pipeline {
    /// Connects both sides (retrying while they are unreachable), migrates, creates the
    /// groups and checks every fixed target table. `None` if shutdown came first.
    async fn start(
        config: Config,
        shutdown: &CancellationToken,
        events: Arc<Events>,
    ) -> Result<Option<Self>, PipelineError> {
        let Some((core, reader)) = Core::open(config, shutdown, None, events.clone()).await? else {
            return Ok(None);
        };
        let mut pipeline = Self {
            reader,
            align: align::Align::default(),
            horizons: horizon::Horizons::default(),
            prefetched: Vec::new(),
            core,
        };
        if retrying!(events, shutdown, "discovering streams", {
            pipeline.discover()
        })?
        .is_none()
        {
            return Ok(None);
        }
        if !open::check_consumer_name(&mut pipeline.reader, &pipeline.core.config, shutdown).await?
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

    async fn run_loop(&mut self, shutdown: &CancellationToken) -> Result<(), PipelineError> {
        let mut timers = Timers::new();
        let mut read_retry: Option<Retry> = None;
        self.core.events.metrics().set_started();
        loop {
            self.core.events.metrics().tick();
            // 1. shutdown
            if shutdown.is_cancelled() {
                // Held events are staged: nothing read is left to the committer.
                if let Some(held) = &self.core.held {
                    held.stop();
                }
                let mut read = std::mem::take(&mut self.prefetched);
                // Lanes' reads still in flight end within `block`: apply what they bring.
                read.extend(self.reader.finish_reads().await);
                if !self.core.interrupted {
                    self.core.process(read, shutdown).await?;
                }
                self.core.stage_spilled();
                if self.core.drain(shutdown).await? {
                    self.reader.leave_group().await;
                }
                return Ok(());
            }
            // 2. full batch, flush deadline, or caught up with nothing being written
            self.core.stage_spilled();
            if self.core.caught_up() && !self.prefetched.is_empty() {
                // What the last read brought joins the batch before it is written: a
                // read woken by a burst's first entry holds that entry alone, and the
                // read after it the rest of the burst (a 1-row write, then the rest
                // waiting for it, doubled the latency of a bursty source).
                let read = std::mem::take(&mut self.prefetched);
                self.core.process(read, shutdown).await?;
            }
            if self.core.batcher.should_flush(Instant::now()) || self.core.caught_up() {
                self.core.flush(shutdown).await?;
            }
            // 3. housekeeping
            self.housekeeping(shutdown, &mut timers).await?;
            // 4. caught up while a batch is being written: wait for that write, then
            // write what came meanwhile (group commit)
            if self.prefetched.is_empty() {
                self.core.await_write_while_caught_up().await;
            }
            // 5. intake, unless the committer's held events are at their bound and it
            // is applying them (transaction mode): then wait for its next commit
            if let Some(held) = self.core.held.clone()
                && held.should_pause()
            {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = held.wait_applied(HELD_PAUSE) => {}
                }
                continue;
            }
            self.intake(shutdown, &mut read_retry).await?;
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
        let block = core.read_wait(!entries.is_empty());
        // COUNT applies per stream: a batch's worth shared between them. Unacknowledged
        // entries stay bounded: this read, the entries being decoded, the batch and
        // the one in flight, each at most about `max_batch`.
        let count = (core.batcher.max_batch() / core.routes.len().max(1)).max(1);
        // Transaction mode: streams running ahead wait while the held room fills.
        let paused = match &core.held {
            Some(held) if held.half_full() => self.align.ahead(),
            _ => std::collections::HashSet::new(),
        };
        self.reader.pause(paused.clone());
        let (read, processed) = tokio::join!(
            self.reader.read(block, count),
            core.process(entries, shutdown)
        );
        for event in self.reader.take_lane_events() {
            self.core.events.lane(event);
        }
        if let Err(e) = processed {
            // Read with a fatal error: kept so that the stop can release them.
            if let Ok(entries) = read {
                self.prefetched = entries;
            }
            return Err(e);
        }
        match read {
            Ok(entries) => {
                *read_retry = None;
                if self.core.held.is_some() {
                    let streams = self.core.routes.keys();
                    self.align.observe(streams, &paused, &entries, count);
                }
                self.core.events.recovered(READING);
                self.core.backlog = pace::is_backlog(&entries, count);
                self.prefetched = entries;
            }
            Err(e) if e.is_retryable() => {
                self.core.events.retrying(READING, Side::Redis, &e);
                // What was read is still applied and acked; then the PEL is re-read,
                // because the failed read may have delivered entries we never saw —
                // unless the reader holds them (`redis.wait_replicas`). No backoff when
                // the error was a wait already, or its cure is known (reconnecting to
                // the master the sentinels name): it would only delay following.
                self.core.drain(shutdown).await?;
                let retry = read_retry.get_or_insert_with(Retry::new);
                if !e.retry_at_once() && !retry.wait(shutdown).await {
                    return Ok(());
                }
                if !e.needs_rewind() {
                    return Ok(());
                }
                match self.reader.rewind().await {
                    Ok(recreated) => {
                        self.core.events.recovered(REWINDING);
                        for stream in &recreated {
                            self.core.events.group_recreated(stream);
                        }
                    }
                    Err(e) => self.core.events.retrying(REWINDING, Side::Redis, &e),
                }
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

impl Core {
    /// The stats so far, with the round trips of the writer, `reader` and the acker.
    fn stats(&self, reader: &Reader) -> Stats {
        self.stats_with(reader.round_trips())
    }

    /// The stats so far, with `reader_round_trips` as the reader's.
    fn stats_with(&self, reader_round_trips: u64) -> Stats {
        Stats {
            pg_round_trips: self.writer.round_trips(),
            redis_round_trips: reader_round_trips + self.acker.round_trips(),
            ..self.events.stats()
        }
    }

    /// Logs the progress line when [`PROGRESS_EVERY`] has passed since the last one.
    fn progress(&mut self, reader_round_trips: u64) {
        self.reader_round_trips = reader_round_trips;
        if self.progress_at.elapsed() >= PROGRESS_EVERY {
            self.progress_at = Instant::now();
            tracing::info!(stats = ?self.stats_with(reader_round_trips), "progress");
        }
    }
}
