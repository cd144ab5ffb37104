//! Flushing: the batch goes to a task that writes it to Postgres, then dead-letters and
//! acknowledges its entries in Redis (each step retrying transient errors), while the
//! loop reads and decodes the next batch. One batch is written at a time, so batches
//! commit in order; the next write starts as soon as the last one committed, while that
//! one is still being acknowledged (with 1,600 streams an acknowledgement is 1,600
//! commands, ~7 % of a batch's time). Acknowledgements go in batch order, and a write
//! waits for the acknowledgement of the batch two before it, so at most two batches are
//! in flight. An entry is acknowledged only after the commit that applied it
//! ([`Committed`] is the proof [`Acker::ack`] takes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::events::Events;
use super::retry::{error_text, retrying};
use super::{Core, PROGRESS_EVERY, PipelineError};
use crate::ack::Acker;
use crate::batch::Batch;
use crate::write::{Committed, Writer};

/// A batch handed to its task: `true` once acknowledged, `false` when abandoned at
/// shutdown (its entries stay pending).
pub(super) struct Flight {
    task: JoinHandle<Landed>,
    /// Given once the batch's write ended (committed, abandoned or failed).
    written: Signal,
    /// Given when the task ends, so the next batch's acknowledgement follows it.
    done: watch::Receiver<bool>,
}

impl Flight {
    /// Whether the task ended (its result waits to be collected).
    pub(super) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// What a batch's task ends with: its outcome, and the batch itself, handed back so
/// that the loop's thread, which allocated it, frees it: freed on a worker thread, it
/// was ~8 % of redsink's CPU in a backlog drain (mimalloc's cross-thread frees and
/// their collection on the loop's thread); freed here, user CPU of a 300k drain went
/// from 1.34–1.36 s to 1.28–1.35 s.
type Landed = (Result<bool, PipelineError>, Option<Batch>);

/// A one-time signal from a task, given explicitly or when the task ends.
struct Signal(watch::Receiver<bool>);

impl Signal {
    async fn wait(&mut self) {
        // An error: the sender is gone, the task ended.
        let _ = self.0.wait_for(|given| *given).await;
    }
}

impl Core {
    /// Hands the batch to a task that writes it (retrying transient errors), then
    /// dead-letters and acknowledges it (retrying likewise), while this loop reads and
    /// decodes the next one. This first waits for the previous batch's write (so
    /// batches commit in order) and for the acknowledgement of the one before.
    pub(super) async fn flush(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<(), PipelineError> {
        self.wait_written().await?;
        if self.batcher.is_empty() {
            return Ok(());
        }
        let batch = self.batcher.take();
        let (written, written_rx) = watch::channel(false);
        let (done, done_rx) = watch::channel(false);
        let after = self.acking.as_ref().map(|f| f.done.clone());
        let task = tokio::spawn(write_and_ack(
            Stage {
                writer: self.writer.clone(),
                acker: self.acker.clone(),
                shutdown: shutdown.clone(),
                events: self.events.clone(),
                slow_after: self.config.postgres.slow_write_after,
            },
            batch,
            Signals {
                written,
                done,
                after,
            },
        ));
        self.in_flight_since = Some(Instant::now());
        self.in_flight = Some(Flight {
            task,
            written: Signal(written_rx),
            done: done_rx,
        });
        Ok(())
    }

    /// On a cluster, acknowledgements that a slot whose master was away could not take
    /// go with the next batch; with no batch to write, they go on their own, in the
    /// place of the batch in flight (so that acknowledgements stay in order).
    pub(super) fn settle_owed_acks(&mut self) {
        if self.in_flight.is_some()
            || self.acking.is_some()
            || !self.batcher.is_empty()
            || !self.acker.owes_due()
        {
            return;
        }
        let mut acker = self.acker.clone();
        let (written, written_rx) = watch::channel(true);
        let (done, done_rx) = watch::channel(false);
        self.in_flight_since = Some(Instant::now());
        self.in_flight = Some(Flight {
            task: tokio::spawn(async move {
                let _signals = (written, done);
                let settled = acker.settle_owed().await.map_err(PipelineError::from);
                (settled.map(|()| true), None)
            }),
            written: Signal(written_rx),
            done: done_rx,
        });
    }

    /// Flushes and waits: `true` when everything read so far is acknowledged.
    pub(super) async fn drain(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<bool, PipelineError> {
        self.flush(shutdown).await?;
        self.wait_in_flight().await
    }

    /// Collects the batches whose tasks ended (their errors, stats).
    pub(super) async fn collect_finished(&mut self) -> Result<(), PipelineError> {
        if self.acking.as_ref().is_some_and(Flight::is_finished) {
            let acking = self.acking.take();
            self.join(acking).await?;
        }
        if self.acking.is_none() && self.in_flight.as_ref().is_some_and(Flight::is_finished) {
            self.wait_in_flight().await?;
        }
        Ok(())
    }

    /// Waits for both batches in flight, if any: `true` when both were acknowledged.
    /// The progress line goes on meanwhile: a write blocked on a lock holds the loop here.
    pub(super) async fn wait_in_flight(&mut self) -> Result<bool, PipelineError> {
        self.in_flight_since = None;
        let acking = self.acking.take();
        let before = self.join(acking).await;
        let in_flight = self.in_flight.take();
        let last = self.join(in_flight).await;
        Ok(before? && last?)
    }

    /// Waits for the write of the batch in flight (which then becomes the one being
    /// acknowledged) after the acknowledgement of the one before it.
    async fn wait_written(&mut self) -> Result<(), PipelineError> {
        let acking = self.acking.take();
        self.join(acking).await?;
        let Some(mut flight) = self.in_flight.take() else {
            return Ok(());
        };
        self.with_progress(flight.written.wait()).await;
        self.in_flight_since = None;
        self.acking = Some(flight);
        Ok(())
    }

    /// Awaits `waiting`, logging the progress line meanwhile (a write blocked on a lock
    /// holds the loop there).
    async fn with_progress<T>(&mut self, waiting: impl Future<Output = T>) -> T {
        let mut waiting = std::pin::pin!(waiting);
        loop {
            let next = self.progress_at + PROGRESS_EVERY;
            tokio::select! {
                biased;
                out = &mut waiting => return out,
                () = tokio::time::sleep_until(next.into()) => self.progress(self.reader_round_trips),
            }
        }
    }

    /// Waits for a batch's task to end, the progress line going on meanwhile.
    async fn join(&mut self, flight: Option<Flight>) -> Result<bool, PipelineError> {
        let Some(flight) = flight else {
            return Ok(true);
        };
        match self.with_progress(flight.task).await {
            Ok((acknowledged, batch)) => {
                drop(batch);
                acknowledged
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(PipelineError::WriterTask(e)),
        }
    }
}

/// What a batch's task works with.
struct Stage {
    writer: Writer,
    acker: Acker,
    shutdown: CancellationToken,
    events: Arc<Events>,
    /// `postgres.slow_write_after`.
    slow_after: Duration,
}

/// A batch task's signals: `written` given when its write ends, `done` when it ends;
/// `after`: the previous batch's `done`, awaited before acknowledging.
struct Signals {
    written: watch::Sender<bool>,
    done: watch::Sender<bool>,
    after: Option<watch::Receiver<bool>>,
}

/// Writes one batch (warning while that takes longer than `slow_after`, see
/// [`watched`]), then, once the previous batch's task ended, dead-letters and
/// acknowledges it: `true` once acknowledged (and counted). `false`: shutdown came
/// during an outage and the batch was abandoned unacknowledged: its entries stay
/// pending, to be read again by this consumer when it restarts under the same name, or
/// claimed by another after `claim_idle`.
async fn write_and_ack(stage: Stage, batch: Batch, signals: Signals) -> Landed {
    let outcome = write_then_ack(stage, &batch, signals).await;
    (outcome, Some(batch))
}

/// [`write_and_ack`]'s work.
async fn write_then_ack(
    stage: Stage,
    batch: &Batch,
    signals: Signals,
) -> Result<bool, PipelineError> {
    let Stage {
        writer,
        mut acker,
        shutdown,
        events,
        slow_after,
    } = stage;
    let Signals {
        written,
        done,
        after,
    } = signals;
    let shutdown = &shutdown;
    let started = Instant::now();
    let writing = write(&writer, &mut acker, batch, shutdown, &events);
    let outcome = watched(writing, batch, slow_after, &events).await;
    let took = started.elapsed();
    let _ = written.send(true);
    if let Some(mut after) = after {
        // An error: that task ended (its sender is gone).
        let _ = after.wait_for(|ended| *ended).await;
    }
    let Some(committed) = outcome? else {
        return Ok(false);
    };
    let Some(already) = retrying!(events, shutdown, "acknowledging", { acker.ack(&committed) })?
    else {
        tracing::warn!(
            "shutdown during a redis outage: committed entries stay pending and will be re-applied as no-ops"
        );
        return Ok(false);
    };
    events.committed(batch, &committed, &already, took);
    let _ = done.send(true);
    Ok(true)
}

/// Awaits `writing` (a batch's write, with its retries) and, while it has taken longer
/// than `after`, warns every `after` naming the batch's tables (a lock on one of them,
/// an outage), then says when it finished. `after` zero: no warning. Cancel safe as
/// `writing` is: it is polled to its end.
async fn watched<T>(
    writing: impl Future<Output = T>,
    batch: &Batch,
    after: Duration,
    events: &Events,
) -> T {
    if after.is_zero() {
        return writing.await;
    }
    let started = Instant::now();
    let mut ticks = tokio::time::interval_at((started + after).into(), after);
    let mut warned = false;
    let mut writing = std::pin::pin!(writing);
    let out = loop {
        tokio::select! {
            biased;
            out = &mut writing => break out,
            _ = ticks.tick() => {
                warned = true;
                events.write_slow(batch, started.elapsed());
            }
        }
    };
    if warned {
        events.slow_write_ended(batch, started.elapsed());
    }
    out
}

/// Writes and commits one batch, retrying transient errors. `None`: shutdown came
/// during a Postgres outage. A batch not written (failed, or abandoned) stays pending,
/// with the last error noted on its entries for `max_deliveries`' dead letters.
async fn write(
    writer: &Writer,
    acker: &mut Acker,
    batch: &Batch,
    shutdown: &CancellationToken,
    events: &Events,
) -> Result<Option<Committed>, PipelineError> {
    let mut last_error = None;
    let written = retrying!(events, shutdown, "writing to postgres", async {
        let result = writer.write(batch).await;
        if let Err(e) = &result {
            last_error = Some(error_text(e));
        }
        result
    });
    if !matches!(written, Ok(Some(_)))
        && let Some(error) = &last_error
    {
        acker.note_error(&batch.acks, error).await;
    }
    match written {
        Ok(Some(committed)) => Ok(Some(committed)),
        Ok(None) => {
            tracing::warn!(
                entries = batch.acks.len(),
                "shutdown during a postgres outage: entries stay pending"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
