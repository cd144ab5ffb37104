//! The committer's commits: the events of the transactions chosen (held ones as they
//! are, staged ones prepared again), in source order, planned (phased order, else
//! exact: `plan.rs`) and handed to a task that writes them in one Postgres
//! transaction, then dead-letters and acknowledges, while the committer prepares the
//! next. The next commit waits only for this one's outcome, not for its
//! acknowledgements: Postgres is kept busy while Redis acknowledges.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::super::PipelineError;
use super::super::events::Events;
use super::super::held::HeldEvent;
use super::super::plan;
use super::super::prepare::Prepared;
use super::super::retry::retrying;
use super::{Committer, Failure};
use crate::entry::StreamEntry;
use crate::table::TableName;
use crate::write::{StagedEvent, TxFinish, WriteError};

/// An event to apply: its transaction, `total_order`, entry, what it maps to, and
/// since when it was held when it was (to give it back if its commit does not happen).
pub(super) type Item = (String, i64, StreamEntry, Prepared, Option<Instant>);

/// A held event's transaction, `total_order` and since when it was held; `None` for a
/// staged one.
type HeldMeta = Option<(String, i64, Instant)>;

/// The held events among `items`, as they were held.
pub(super) fn held_of(items: Vec<Item>) -> Vec<HeldEvent> {
    items
        .into_iter()
        .filter_map(|(tx_id, total_order, entry, prepared, since)| {
            Some(HeldEvent {
                tx_id,
                total_order,
                entry,
                prepared,
                since: since?,
            })
        })
        .collect()
}

/// The table an event writes, if it writes one.
fn table_ref(p: &Prepared) -> Option<&TableName> {
    match p {
        Prepared::Row(change, _) => Some(&change.table.name),
        Prepared::Truncate(t) => Some(&t.table.name),
        _ => None,
    }
}

/// A commit's outcome, and its held events to give back when it did not commit.
type Outcome = (Result<bool, Failure>, Vec<HeldEvent>);

/// The task writing a commit: its outcome, sent as soon as it is known (before the
/// acknowledgements), and the task, whose result is the acknowledgements'.
pub(super) struct InFlight {
    outcome: tokio::sync::oneshot::Receiver<Outcome>,
    task: Acking,
}

/// The task acknowledging a commit's events: `false` when shutdown came first.
pub(super) type Acking = tokio::task::JoinHandle<Result<bool, Failure>>;

impl Committer {
    /// Prepares the staged events and writes them with `finish`, in one commit; then
    /// writes the dead letters. `false`: shutdown came first.
    pub(super) async fn apply(
        &mut self,
        txs: &[String],
        rows: Vec<StagedEvent>,
        held: Vec<HeldEvent>,
        mut finish: TxFinish,
        shutdown: &CancellationToken,
    ) -> Result<bool, Failure> {
        let mut items: Vec<Item> = held
            .into_iter()
            .map(|e| {
                let meta = Some(e.since);
                (e.tx_id, e.total_order, e.entry, e.prepared, meta)
            })
            .collect();
        let staged = match self.prepare_rows(rows, &mut finish, shutdown).await {
            Ok(Some(staged)) => staged,
            other => {
                self.held.put_back(held_of(items));
                return other.map(|_| false);
            }
        };
        items.extend(staged);
        // Source order: commit order (the order of `txs`), then `total_order`.
        let position: HashMap<&str, usize> = txs
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        let mut keyed: Vec<(usize, Item)> = items
            .into_iter()
            .map(|i| (position.get(i.0.as_str()).copied().unwrap_or(usize::MAX), i))
            .collect();
        keyed.sort_by(|(a_at, a), (b_at, b)| {
            (a_at, a.1, &a.2.stream, a.2.id).cmp(&(b_at, b.1, &b.2.stream, b.2.id))
        });
        let items: Vec<Item> = keyed.into_iter().map(|(_, i)| i).collect();
        let mut tables: Vec<TableName> = Vec::new();
        for i in &items {
            if let Some(t) = table_ref(&i.3)
                && !tables.contains(t)
            {
                tables.push(t.clone());
            }
        }
        if let Err(e) = self.foreign_keys(tables).await {
            self.held.put_back(held_of(items));
            return Err(e.into());
        }
        let (pairs, held): (Vec<(StreamEntry, Prepared)>, Vec<HeldMeta>) = items
            .into_iter()
            .map(|(tx, order, entry, prepared, since)| {
                ((entry, prepared), since.map(|s| (tx, order, s)))
            })
            .unzip();
        // Planned while the commit before is written.
        let phased = plan::phased(&pairs, &self.parents);
        if let Err(e) = self.settle().await {
            self.held.put_back(give_back(pairs, held));
            return Err(e);
        }
        self.write(phased, pairs, held, &finish, shutdown);
        Ok(true)
    }

    /// The next piece of a transaction applied in pieces: its first `max_events` events
    /// in `total_order`, staged or held (held ones beyond it are held again).
    pub(super) async fn piece(
        &mut self,
        ids: &[String],
    ) -> Result<(Vec<StagedEvent>, Vec<HeldEvent>), Failure> {
        let mut rows = self.store.fetch(ids, self.tx.max_events).await?;
        let mut held = self.held.take(ids);
        held.sort_by_key(|e| e.total_order);
        let max = self.tx.max_events;
        let (mut i, mut j) = (0, 0);
        while i + j < max && (i < rows.len() || j < held.len()) {
            let take_row = match (rows.get(i), held.get(j)) {
                (Some(r), Some(h)) => r.total_order <= h.total_order,
                (Some(_), None) => true,
                _ => false,
            };
            if take_row { i += 1 } else { j += 1 }
        }
        rows.truncate(i);
        self.held.put_back(held.split_off(j));
        Ok((rows, held))
    }

    /// Each staged event prepared again (decode → map), in order; markers of events
    /// dead-lettered when staged are only removed. `None`: shutdown came first.
    pub(super) async fn prepare_rows(
        &mut self,
        rows: Vec<StagedEvent>,
        finish: &mut TxFinish,
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<Item>>, Failure> {
        let mut items: Vec<Item> = Vec::with_capacity(rows.len());
        for row in rows {
            finish.events.push((row.entry.stream.clone(), row.entry.id));
            if row.entry.fields.is_none() {
                // Dead-lettered when staged.
                continue;
            }
            let prepared = match self.route(&row.entry.stream) {
                true => self.core.prepare(&row.entry, shutdown).await?,
                false => Prepared::Dead(format!(
                    "no mapping covers stream {} any more",
                    row.entry.stream
                )),
            };
            let prepared = match prepared {
                Prepared::Interrupted => return Ok(None),
                Prepared::Dead(reason) => {
                    Prepared::Dead(format!("{reason} (source transaction {})", row.tx_id))
                }
                p => p,
            };
            items.push((row.tx_id, row.total_order, row.entry, prepared, None));
        }
        Ok(Some(items))
    }

    /// Hands the events to a task that writes them with `finish` in one commit (see
    /// [`Commit::run`]) while this committer prepares the next one (the commit before
    /// is settled). The progress read ahead assumes it commits; when it does not,
    /// [`Committer::settle`] says so and everything is read again.
    fn write(
        &mut self,
        phased: Option<crate::batch::Batch>,
        pairs: Vec<(StreamEntry, Prepared)>,
        held: Vec<HeldMeta>,
        finish: &TxFinish,
        shutdown: &CancellationToken,
    ) {
        if let Some(p) = &mut self.progress {
            p.seq += 1;
            p.end_id = finish.end_id;
            p.piece = finish.piece.clone();
            p.applied += finish.applied;
        }
        let commit = Commit {
            writer: self.core.writer.clone(),
            acker: self.core.acker.clone(),
            events: self.core.events.clone(),
            finish: finish.clone(),
        };
        let shutdown = shutdown.clone();
        let (send, outcome) = tokio::sync::oneshot::channel();
        let task =
            tokio::spawn(async move { commit.run(phased, pairs, held, send, &shutdown).await });
        self.in_flight = Some(InFlight { outcome, task });
    }

    /// Waits for the outcome of the commit in flight, if any (its acknowledgements go
    /// on; those of the commit before are waited for). Its events held in memory go
    /// back to the held ones when it did not commit.
    pub(super) async fn settle(&mut self) -> Result<(), Failure> {
        let Some(flight) = self.in_flight.take() else {
            return Ok(());
        };
        let (outcome, held) = match flight.outcome.await {
            Ok(done) => done,
            // The task ended without an outcome: it panicked or was cancelled.
            Err(_) => {
                joined(flight.task.await)?;
                self.forget();
                return Ok(());
            }
        };
        // Events of a commit that did not happen are held again first, whatever the
        // acknowledgements of the one before say.
        let settled = match outcome {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.held.put_back(held);
                self.forget();
                Ok(())
            }
            Err(failure) => {
                self.held.put_back(held);
                Err(failure)
            }
        };
        if let Some(before) = self.acking.replace(flight.task) {
            joined(before.await)?;
        }
        settled
    }

    /// Waits for the commit in flight and for its acknowledgements.
    pub(super) async fn drain(&mut self) -> Result<(), Failure> {
        self.settle().await?;
        match self.acking.take() {
            Some(task) => joined(task.await).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Routes `stream` to the first mapping naming it; `false` when none does.
    pub(super) fn route(&mut self, stream: &Arc<str>) -> bool {
        if self.core.routes.contains_key(stream) {
            return true;
        }
        let Some(index) = self
            .core
            .mappings
            .iter()
            .position(|m| m.streams.iter().any(|p| p.matches(stream)))
        else {
            return false;
        };
        self.core.routes.insert(stream.clone(), index);
        true
    }

    /// Reads the foreign keys among the target tables once a new table shows up.
    pub(super) async fn foreign_keys(&mut self, tables: Vec<TableName>) -> Result<(), WriteError> {
        let mut new = false;
        for name in tables {
            new |= self.fk_known.insert(name);
        }
        if !new {
            return Ok(());
        }
        let tables: Vec<TableName> = self.fk_known.iter().cloned().collect();
        self.parents.clear();
        for (child, parent) in self.store.foreign_keys(&tables).await? {
            self.parents.entry(child).or_default().push(parent);
        }
        Ok(())
    }
}

/// A joined task's result: a panic goes on, a cancelled task is fatal.
fn joined(result: Result<Result<bool, Failure>, tokio::task::JoinError>) -> Result<bool, Failure> {
    match result {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Failure::Fatal(PipelineError::WriterTask(e))),
    }
}

/// The events of a commit as [`Item`]s again, to give the held ones back.
fn give_back(pairs: Vec<(StreamEntry, Prepared)>, held: Vec<HeldMeta>) -> Vec<HeldEvent> {
    held_of(
        pairs
            .into_iter()
            .zip(held)
            .map(|((entry, prepared), meta)| match meta {
                Some((tx, order, since)) => (tx, order, entry, prepared, Some(since)),
                None => (String::new(), 0, entry, prepared, None),
            })
            .collect(),
    )
}

/// A commit written: the batch, its receipt and when its writing started; `None`:
/// shutdown came first.
type Written = Option<(crate::batch::Batch, crate::write::Committed, Instant)>;

/// One commit of the committer, run by a task of its own.
struct Commit {
    writer: crate::write::Writer,
    acker: crate::ack::Acker,
    events: Arc<Events>,
    finish: TxFinish,
}

impl Commit {
    /// Writes the events in one commit, in the phased order (planned by the
    /// committer), or in the exact one when Postgres rejects a row of that (see
    /// `plan.rs`); sends the outcome on `outcome`, with the held events to give back
    /// when it did not commit (those of a commit whose exact order failed too are left
    /// pending: claimed after `claim_idle`, or read again at restart); then writes the
    /// dead letters and acknowledges the held events. `false`: shutdown came first.
    async fn run(
        self,
        phased: Option<crate::batch::Batch>,
        pairs: Vec<(StreamEntry, Prepared)>,
        held: Vec<HeldMeta>,
        outcome: tokio::sync::oneshot::Sender<Outcome>,
        shutdown: &CancellationToken,
    ) -> Result<bool, Failure> {
        let written = match self.write_phased(phased, shutdown).await {
            Ok(Some(written)) => Ok(written),
            Ok(None) => self.write_exact(pairs, shutdown).await,
            Err(failure) => {
                let _ = outcome.send((Err(failure), give_back(pairs, held)));
                return Ok(false);
            }
        };
        let (batch, committed, started) = match written {
            Ok(Some(written)) => written,
            Ok(None) => {
                let _ = outcome.send((Ok(false), Vec::new()));
                return Ok(false);
            }
            Err(failure) => {
                let _ = outcome.send((Err(failure), Vec::new()));
                return Ok(false);
            }
        };
        let _ = outcome.send((Ok(true), Vec::new()));
        self.acknowledge(&batch, &committed, started, shutdown)
            .await
    }

    /// The phased order's commit: `None` when there is none or Postgres rejected a
    /// row of it (write the exact order then).
    async fn write_phased(
        &self,
        phased: Option<crate::batch::Batch>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Written>, Failure> {
        let Some(phased) = phased else {
            return Ok(None);
        };
        let (writer, events, finish) = (&self.writer, self.events.clone(), &self.finish);
        let started = Instant::now();
        match retrying!(events, shutdown, "committing source transactions", {
            writer.write_transactions(&phased, finish, false)
        }) {
            Ok(None) => Ok(Some(None)),
            Ok(Some(committed)) => Ok(Some(Some((phased, committed, started)))),
            Err(e) if e.class() == crate::write::ErrorClass::Data => {
                tracing::info!(error = %e, "a row was rejected in the phased order: writing in source order");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The exact order's commit, rejected rows dead-lettered.
    async fn write_exact(
        &self,
        pairs: Vec<(StreamEntry, Prepared)>,
        shutdown: &CancellationToken,
    ) -> Result<Written, Failure> {
        let (writer, events, finish) = (&self.writer, self.events.clone(), &self.finish);
        let started = Instant::now();
        let exact = plan::exact(pairs);
        let committed = retrying!(events, shutdown, "committing source transactions", {
            writer.write_transactions(&exact, finish, true)
        })?;
        Ok(committed.map(|committed| (exact, committed, started)))
    }

    /// Dead letters, then XACK of the held events (and again of staged ones: no-ops);
    /// the commit counted. `false`: shutdown came first.
    async fn acknowledge(
        &self,
        batch: &crate::batch::Batch,
        committed: &crate::write::Committed,
        started: Instant,
        shutdown: &CancellationToken,
    ) -> Result<bool, Failure> {
        let events = self.events.clone();
        let mut acker = self.acker.clone();
        if retrying!(events, shutdown, "dead-lettering", { acker.ack(committed) })?.is_none() {
            return Ok(false);
        }
        events.transactions_committed(batch, committed, started.elapsed());
        Ok(true)
    }
}
