//! Flushing: the batch goes to a task that writes it to Postgres, then dead-letters and
//! acknowledges its entries in Redis (each step retrying transient errors), while the
//! loop reads and decodes the next batch. At most one batch is in flight, so batches
//! commit in order; an entry is acknowledged only after the commit that applied it
//! ([`Committed`] is the proof [`Acker::ack`] takes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::events::Events;
use super::retry::{error_text, retrying};
use super::{Core, PROGRESS_EVERY, PipelineError};
use crate::ack::Acker;
use crate::batch::Batch;
use crate::write::{Committed, Writer};

impl Core {
    /// Hands the batch to a task that writes it (retrying transient errors), then
    /// dead-letters and acknowledges it (retrying likewise), while this loop reads and
    /// decodes the next one. At most one batch is in flight: this first waits for the
    /// previous one, so batches commit in order.
    pub(super) async fn flush(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<(), PipelineError> {
        self.wait_in_flight().await?;
        if self.batcher.is_empty() {
            return Ok(());
        }
        let batch = self.batcher.take();
        let writer = self.writer.clone();
        let acker = self.acker.clone();
        let shutdown = shutdown.clone();
        let events = self.events.clone();
        let slow_after = self.config.postgres.slow_write_after;
        self.in_flight_since = Some(Instant::now());
        self.in_flight = Some(tokio::spawn(write_and_ack(
            writer, acker, batch, shutdown, events, slow_after,
        )));
        Ok(())
    }

    /// On a cluster, acknowledgements that a slot whose master was away could not take
    /// go with the next batch; with no batch to write, they go on their own, in the
    /// place of the batch in flight (so that acknowledgements stay in order).
    pub(super) fn settle_owed_acks(&mut self) {
        if self.in_flight.is_some() || !self.batcher.is_empty() || !self.acker.owes_due() {
            return;
        }
        let mut acker = self.acker.clone();
        self.in_flight_since = Some(Instant::now());
        self.in_flight = Some(tokio::spawn(async move {
            acker.settle_owed().await?;
            Ok(true)
        }));
    }

    /// Flushes and waits: `true` when everything read so far is acknowledged.
    pub(super) async fn drain(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<bool, PipelineError> {
        self.flush(shutdown).await?;
        self.wait_in_flight().await
    }

    /// Waits for the batch in flight, if any: `true` when it was acknowledged. The
    /// progress line goes on meanwhile: a write blocked on a lock holds the loop here.
    pub(super) async fn wait_in_flight(&mut self) -> Result<bool, PipelineError> {
        self.in_flight_since = None;
        let Some(mut handle) = self.in_flight.take() else {
            return Ok(true);
        };
        let joined = loop {
            let next = self.progress_at + PROGRESS_EVERY;
            tokio::select! {
                biased;
                joined = &mut handle => break joined,
                () = tokio::time::sleep_until(next.into()) => self.progress(self.reader_round_trips),
            }
        };
        match joined {
            Ok(acknowledged) => acknowledged,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(PipelineError::WriterTask(e)),
        }
    }
}

/// Writes one batch (warning while that takes longer than `slow_after`, see
/// [`watched`]), then dead-letters and acknowledges it: `true` once acknowledged
/// (and counted). `false`: shutdown came during an outage and the batch was abandoned
/// unacknowledged: its entries stay pending, to be read again by this consumer when it
/// restarts under the same name, or claimed by another after `claim_idle`.
async fn write_and_ack(
    writer: Writer,
    mut acker: Acker,
    batch: Batch,
    shutdown: CancellationToken,
    events: Arc<Events>,
    slow_after: Duration,
) -> Result<bool, PipelineError> {
    let shutdown = &shutdown;
    let started = Instant::now();
    let writing = write(&writer, &mut acker, &batch, shutdown, &events);
    let Some(committed) = watched(writing, &batch, slow_after, &events).await? else {
        return Ok(false);
    };
    let took = started.elapsed();
    let Some(already) = retrying!(events, shutdown, "acknowledging", { acker.ack(&committed) })?
    else {
        tracing::warn!(
            "shutdown during a redis outage: committed entries stay pending and will be re-applied as no-ops"
        );
        return Ok(false);
    };
    events.committed(&batch, &committed, &already, took);
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
