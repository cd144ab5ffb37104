//! decode → map → batch of each entry read: an entry becomes a row change, a truncate,
//! a skip or a dead letter in the batch. The table's catalog is read on first use and
//! again when an event names a column it lacks; schema evolution creates or extends a
//! table first. A problem of one event dead-letters it, and so does a table-wide one
//! when the event chose the table (a template) or the key (its message key's fields);
//! a table-wide one of a fixed table and the configured key (no such table, no unique
//! key) stops the pipeline.
//!
//! | what fails | its cause comes from | outcome |
//! |---|---|---|
//! | decoding, a value, a null key, an unknown column | the event | dead letter |
//! | message key fields that are none of the table's unique keys | the event | dead letter |
//! | any table-wide problem of a templated table (missing, no such key column, no unique key, no soft-delete column) | the event (its table name) | dead letter |
//! | creating a templated table from the event's schema (schema evolution), a declared type with no PostgreSQL type | the event | dead letter |
//! | a fixed table: missing, configured key not unique, a configured column missing | the config | fatal (checked at start, again when the catalog is re-read) |
//! | a fixed table without any primary key or unique index | the table | fatal |
//! | catalog reads, privileges | the database or the config | retried, else fatal |

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::held::HeldEvent;
use super::retry::retrying;
use super::{Core, PipelineError};
use crate::config::{DeleteMode, TruncateMode};
use crate::decode::{self, ChangeEvent, Decoded, Op, Skip, TxBlock};
use crate::entry::{EntryId, StreamEntry};
use crate::map::{self, MapError, TableSchema};
use crate::table::{DeclaredColumn, TableName};
use crate::write::{ErrorClass, WriteError};

/// What becomes of one entry.
#[derive(Debug, Clone)]
pub(super) enum Prepared {
    /// A row change and its event's `source.ts_ms`.
    Row(map::RowChange, Option<i64>),
    Truncate(map::Truncate),
    Skip(Skip),
    Dead(String),
    /// Shutdown came during an outage: leave this entry pending.
    Interrupted,
    /// An event of a source transaction (transaction mode), for the committer: what it
    /// maps to (a row, a truncate or a skip).
    Staged(TxBlock, Box<Prepared>),
}

/// Where an event goes: its mapping and the table it names.
struct Target {
    /// Index into the mappings.
    mapping: usize,
    table: TableName,
    /// The table name came from the event (a template): a missing table only affects it.
    templated: bool,
}

impl Core {
    /// decode → map → batch for each entry.
    /// Stops early (leaving the rest pending) when shutdown is requested during an outage.
    /// On an error, the entry it came with and those after it are kept in `unfinished`
    /// (read, not in the batch), for what a fatal stop does with them.
    pub(super) async fn process(
        &mut self,
        entries: Vec<StreamEntry>,
        shutdown: &CancellationToken,
    ) -> Result<(), PipelineError> {
        let now = Instant::now();
        self.events.read(&entries);
        let mut entries = entries.into_iter();
        while let Some(entry) = entries.next() {
            let this = (entry.stream.clone(), entry.id);
            match self.process_one(entry, now, shutdown).await {
                Ok(true) => {}
                Ok(false) => {
                    self.interrupted = true;
                    return Ok(());
                }
                Err(e) => {
                    self.unfinished.push(this);
                    self.unfinished.extend(entries.map(|e| (e.stream, e.id)));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// decode → map → batch of one entry: `false` when shutdown came during an outage
    /// (the entry stays pending).
    async fn process_one(
        &mut self,
        entry: StreamEntry,
        now: Instant,
        shutdown: &CancellationToken,
    ) -> Result<bool, PipelineError> {
        if self.batcher.room() == 0 {
            self.flush(shutdown).await?;
        }
        if let Some(reason) = self.delivered_too_often(&entry).await {
            self.push_dead(entry, reason, now);
            return Ok(true);
        }
        match self.prepare(&entry, shutdown).await {
            Ok(Prepared::Interrupted) => return Ok(false),
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
                self.events.skipped(&entry, skip);
                self.batcher.push_skip(&entry.stream, entry.id, now);
            }
            Ok(Prepared::Dead(reason)) => self.push_dead(entry, reason, now),
            Ok(Prepared::Staged(tx, prepared)) => self.hold_or_stage(entry, tx, *prepared, now),
            Err(e) => {
                return Err(PipelineError::Entry {
                    stream: entry.stream.clone(),
                    entry: entry.id.to_string(),
                    source: Box::new(e),
                });
            }
        }
        Ok(true)
    }

    /// An event of a source transaction: held for this instance's committer, else
    /// staged (see `held.rs`).
    fn hold_or_stage(&mut self, entry: StreamEntry, tx: TxBlock, prepared: Prepared, now: Instant) {
        let event = HeldEvent {
            tx_id: tx.id,
            total_order: tx.total_order,
            entry,
            prepared,
            since: now,
        };
        let event = match &self.held {
            Some(held) => match held.offer(event) {
                None => return,
                Some(event) => event,
            },
            None => event,
        };
        self.batcher
            .push_staged(event.entry, event.tx_id, event.total_order, None, now);
    }

    /// Stages what the committer gave back (see `held.rs`).
    pub(super) fn stage_spilled(&mut self) {
        let Some(held) = &self.held else {
            return;
        };
        let now = Instant::now();
        for e in held.take_spilled() {
            self.batcher
                .push_staged(e.entry, e.tx_id, e.total_order, None, now);
        }
    }

    /// A dead letter; in transaction mode, an event of a source transaction is also
    /// staged as a marker (its transaction counts it as arrived) and its reason names
    /// the transaction.
    fn push_dead(&mut self, entry: StreamEntry, reason: String, now: Instant) {
        match decode::transaction_id(&entry).filter(|_| self.staging) {
            Some(tx) => {
                let reason = format!("{reason} (source transaction {tx})");
                self.batcher.push_staged(entry, tx, 0, Some(reason), now);
            }
            None => self.batcher.push_dead(entry, reason, now),
        }
    }

    /// Why the entry goes to the dead-letter stream unprocessed, when it was delivered
    /// more than `max_deliveries` times (it may be what crashes or stalls instances).
    async fn delivered_too_often(&mut self, entry: &StreamEntry) -> Option<String> {
        let max = self.config.redis.max_deliveries;
        if max == 0 || entry.deliveries <= max {
            return None;
        }
        let last = match self.acker.last_error(&entry.stream, entry.id).await {
            Some(error) => format!("last error {error}"),
            None => "no error noted: the instances that had it stopped without one \
                     (killed, crashed or stalled)"
                .to_string(),
        };
        Some(format!(
            "delivered {} times without being acknowledged (max_deliveries = {max}); {last}",
            entry.deliveries
        ))
    }

    /// decode → map of one entry. In transaction mode (`staging`), an event of a
    /// source transaction that maps (or is skipped) is staged instead: the committer
    /// prepares it again when it applies its transaction.
    pub(super) async fn prepare(
        &mut self,
        entry: &StreamEntry,
        shutdown: &CancellationToken,
    ) -> Result<Prepared, PipelineError> {
        let event = match decode::decode(entry, &self.config.decode) {
            Ok(Decoded::Change(event)) => event,
            Ok(Decoded::Skip(skip)) => return Ok(Prepared::Skip(skip)),
            Err(e) => return Ok(Prepared::Dead(e.reason)),
        };
        let prepared = self.prepare_event(entry, &event, shutdown).await?;
        Ok(match (prepared, &event.transaction) {
            (p @ (Prepared::Row(..) | Prepared::Truncate(_) | Prepared::Skip(_)), Some(tx))
                if self.staging =>
            {
                Prepared::Staged(tx.clone(), Box::new(p))
            }
            (prepared, _) => prepared,
        })
    }

    /// map of a decoded event.
    async fn prepare_event(
        &mut self,
        entry: &StreamEntry,
        event: &ChangeEvent<'_>,
        shutdown: &CancellationToken,
    ) -> Result<Prepared, PipelineError> {
        let target = match self.target(entry, event)? {
            Ok(target) => target,
            Err(prepared) => return Ok(prepared),
        };
        let table = match self.schema(&target, event, shutdown).await? {
            Ok(table) => table,
            Err(prepared) => return Ok(prepared),
        };
        let mapping = &self.mappings[target.mapping];
        if event.op == Op::Delete && mapping.delete == DeleteMode::Ignore {
            return Ok(Prepared::Skip(Skip::Delete));
        }
        if event.op == Op::Truncate {
            if mapping.truncate == TruncateMode::Skip {
                return Ok(Prepared::Skip(Skip::Truncate));
            }
            return match map::map_truncate(mapping, event, entry.id, &table) {
                Ok(t) => Ok(Prepared::Truncate(t)),
                Err(e) => dead_or_fatal(&target, e),
            };
        }
        self.map_row(&target, event, entry.id, &table, shutdown)
            .await
    }

    /// The mapping of the entry's stream and the table the event goes to.
    /// `Err(prepared)`: the event names no valid table (a dead letter).
    fn target(
        &self,
        entry: &StreamEntry,
        event: &ChangeEvent<'_>,
    ) -> Result<Result<Target, Prepared>, PipelineError> {
        let Some(&index) = self.routes.get(&entry.stream) else {
            return Err(PipelineError::Config(format!(
                "no mapping covers stream {}",
                entry.stream
            )));
        };
        let mapping = &self.mappings[index];
        match map::resolve_table(&mapping.table, event, &entry.stream) {
            Ok(table) => Ok(Ok(Target {
                mapping: index,
                table,
                templated: mapping.table.is_templated(),
            })),
            Err(MapError::Event(reason)) => Ok(Err(Prepared::Dead(reason))),
            Err(e) => Err(e.into()),
        }
    }

    /// The target table's catalog facts, after schema evolution has created the table
    /// or added the event's columns if it is on and the table was not read yet.
    /// `Err(prepared)`: what to do with the entry instead.
    async fn schema(
        &mut self,
        target: &Target,
        event: &ChangeEvent<'_>,
        shutdown: &CancellationToken,
    ) -> Result<Result<Arc<TableSchema>, Prepared>, PipelineError> {
        // Only for a table not read yet: the declared columns are built on demand.
        if !self.catalog.knows(&target.table) {
            match self.mappings[target.mapping].evolution(event) {
                Ok(Some((columns, key))) => {
                    if let Some(prepared) = self.evolve(target, &columns, &key, shutdown).await? {
                        return Ok(Err(prepared));
                    }
                }
                Ok(None) => {}
                Err(e) => return Ok(Err(dead_or_fatal(target, e)?)),
            }
        }
        self.table(target, false, shutdown).await
    }

    /// map of a row change. An unknown column may have been added since the catalog
    /// was read: the catalog is read again (at most every few seconds per table) before
    /// the event is given up as a dead letter.
    async fn map_row(
        &mut self,
        target: &Target,
        event: &ChangeEvent<'_>,
        id: EntryId,
        table: &Arc<TableSchema>,
        shutdown: &CancellationToken,
    ) -> Result<Prepared, PipelineError> {
        let mapped = match map::map_event(&self.mappings[target.mapping], event, id, table) {
            Err(MapError::UnknownColumn(_)) => {
                match self.mappings[target.mapping].evolution(event) {
                    Ok(Some((columns, key))) => {
                        if let Some(prepared) =
                            self.evolve(target, &columns, &key, shutdown).await?
                        {
                            return Ok(prepared);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => return dead_or_fatal(target, e),
                }
                match self.table(target, true, shutdown).await? {
                    Ok(table) => map::map_event(&self.mappings[target.mapping], event, id, &table),
                    Err(prepared) => return Ok(prepared),
                }
            }
            other => other,
        };
        match mapped {
            Ok(change) => Ok(Prepared::Row(change, event.source.ts_ms)),
            Err(e) => dead_or_fatal(target, e),
        }
    }

    /// Schema evolution for one event (retrying transient errors); `Some(prepared)`:
    /// what to do with the entry instead (the event cannot create the table, or
    /// shutdown came).
    async fn evolve(
        &mut self,
        target: &Target,
        columns: &[DeclaredColumn],
        key: &[String],
        shutdown: &CancellationToken,
    ) -> Result<Option<Prepared>, PipelineError> {
        let name = &target.table;
        if self.batcher.has_table(name) {
            // Rows of this table were mapped with the catalog about to change.
            self.flush(shutdown).await?;
        }
        let catalog = &mut self.catalog;
        let events = &self.events;
        match retrying!(events, shutdown, "evolving a table", {
            catalog.evolve(name, columns, key)
        }) {
            Ok(Some(())) => Ok(None),
            Ok(None) => Ok(Some(Prepared::Interrupted)),
            // A templated name comes from the event: only this event is affected. A
            // fixed table that cannot be created is a table-wide problem: stop.
            Err(e) if target.templated && e.class() != ErrorClass::Retry => {
                Ok(Some(Prepared::Dead(e.to_string())))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The catalog facts of a table (`reload`: read again). `Err(prepared)`: what to
    /// do with the entry instead (shutdown came, or a templated table is missing).
    async fn table(
        &mut self,
        target: &Target,
        reload: bool,
        shutdown: &CancellationToken,
    ) -> Result<Result<Arc<TableSchema>, Prepared>, PipelineError> {
        let name = &target.table;
        if reload && self.batcher.has_table(name) {
            // The batch's rows of this table were mapped with the schema about to be
            // replaced: write them first, so no batch mixes two schemas of a table.
            self.flush(shutdown).await?;
        }
        let catalog = &mut self.catalog;
        let events = &self.events;
        let result = if reload {
            retrying!(events, shutdown, "reading the catalog", {
                catalog.reload(name)
            })
        } else {
            retrying!(events, shutdown, "reading the catalog", {
                catalog.table(name)
            })
        };
        match result {
            Ok(Some(table)) => Ok(Ok(table)),
            Ok(None) => Ok(Err(Prepared::Interrupted)),
            // A name from a template comes from the event: only this event is affected.
            Err(e @ WriteError::TableMissing { .. }) if target.templated => {
                Ok(Err(Prepared::Dead(e.to_string())))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A map error's outcome: the event's dead letter when its cause comes from the event
/// (its content, or a table name a template took from it), else a fatal error.
fn dead_or_fatal(target: &Target, e: MapError) -> Result<Prepared, PipelineError> {
    match e {
        MapError::Event(reason) | MapError::UnknownColumn(reason) => Ok(Prepared::Dead(reason)),
        MapError::Table { .. } if target.templated => Ok(Prepared::Dead(e.to_string())),
        MapError::Table { .. } => Err(e.into()),
    }
}
