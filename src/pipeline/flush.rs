//! Flushing: the batch goes to a task that writes it to Postgres, then dead-letters and
//! acknowledges its entries in Redis (each step retrying transient errors), while the
//! loop reads and decodes the next batch. At most one batch is in flight, so batches
//! commit in order; an entry is acknowledged only after the commit that applied it
//! ([`Committed`] is the proof [`Acker::ack`] takes).

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::events::Events;
use super::retry::{retrying, source_chain};
use super::{Core, PipelineError};
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
        self.in_flight_since = Some(Instant::now());
        self.in_flight = Some(tokio::spawn(write_and_ack(
            writer, acker, batch, shutdown, events,
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

    /// Waits for the batch in flight, if any: `true` when it was acknowledged.
    pub(super) async fn wait_in_flight(&mut self) -> Result<bool, PipelineError> {
        self.in_flight_since = None;
        let Some(handle) = self.in_flight.take() else {
            return Ok(true);
        };
        match handle.await {
            Ok(acknowledged) => acknowledged,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(PipelineError::WriterTask(e)),
        }
    }
}

/// Writes one batch, then dead-letters and acknowledges it: `true` once acknowledged
/// (and counted). `false`: shutdown came during an outage and the batch was abandoned
/// unacknowledged: its entries stay pending, to be read again by this consumer when it
/// restarts under the same name, or claimed by another after `claim_idle`.
async fn write_and_ack(
    writer: Writer,
    mut acker: Acker,
    batch: Batch,
    shutdown: CancellationToken,
    events: Arc<Events>,
) -> Result<bool, PipelineError> {
    let shutdown = &shutdown;
    let started = Instant::now();
    let Some(committed) = write(&writer, &mut acker, &batch, shutdown, &events).await? else {
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
            last_error = Some(format!("{e}: {}", source_chain(e)));
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
