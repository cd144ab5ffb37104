//! Batch: [`RowChange`]s, skips and dead letters → [`Batch`], flushed by size or age.
//! Input: mapped rows with the entries they came from; output: per-table rows,
//! coalesced by key (highest version wins), plus every entry ID to acknowledge.
//! Pure: the caller passes `now`; no I/O.
//! Errors: none; a full or old batch is the caller's signal to flush.
//!
//! Coalescing: two changes of one row in a batch keep the one with the higher
//! version (on a tie, the later entry). Postgres' `ON CONFLICT DO UPDATE` cannot touch
//! one row twice in a statement, and the loser would be a no-op anyway. The loser's
//! entry stays in the batch (`BatchRow::entries`) so it is acked, or dead-lettered with
//! the winner if Postgres rejects the winner.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::map::{RowChange, TableName, TableSchema};
use crate::read::{EntryId, StreamEntry};

/// An entry that cannot be applied, and why. Goes to the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub entry: StreamEntry,
    pub reason: String,
}

/// One row to write and every entry that produced it (the winner first).
#[derive(Debug, Clone)]
pub struct BatchRow {
    pub change: RowChange,
    pub entries: Vec<StreamEntry>,
}

#[derive(Debug, Clone)]
pub struct TableRows {
    pub table: Arc<TableSchema>,
    pub rows: Vec<BatchRow>,
}

/// What one flush writes and then acknowledges.
#[derive(Debug, Default)]
pub struct Batch {
    pub tables: Vec<TableRows>,
    pub dead: Vec<DeadLetter>,
    /// Every entry in the batch (rows, skips, dead letters), to XACK after commit.
    pub acks: Vec<(Arc<str>, EntryId)>,
    /// The highest entry ID per stream: the checkpoint written with the rows.
    pub checkpoints: Vec<(Arc<str>, EntryId)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }
    pub fn row_count(&self) -> usize {
        self.tables.iter().map(|t| t.rows.len()).sum()
    }
}

/// Accumulates one batch.
#[derive(Debug)]
pub struct Batcher {
    max_batch: usize,
    max_delay: Duration,
    first_at: Option<Instant>,
    tables: Vec<TableRows>,
    table_index: HashMap<TableName, usize>,
    /// (table position, key text) → row position in that table's rows.
    row_index: HashMap<(usize, String), usize>,
    dead: Vec<DeadLetter>,
    acks: Vec<(Arc<str>, EntryId)>,
}

impl Batcher {
    pub fn new(max_batch: usize, max_delay: Duration) -> Self {
        Self {
            max_batch,
            max_delay,
            first_at: None,
            tables: Vec::new(),
            table_index: HashMap::new(),
            row_index: HashMap::new(),
            dead: Vec::new(),
            acks: Vec::new(),
        }
    }

    /// Entries in the batch (rows before coalescing, skips, dead letters).
    pub fn len(&self) -> usize {
        self.acks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }

    fn note(&mut self, stream: &Arc<str>, id: EntryId, now: Instant) {
        self.first_at.get_or_insert(now);
        self.acks.push((stream.clone(), id));
    }

    /// Adds a row change; coalesces it with an earlier change of the same row.
    pub fn push_row(&mut self, change: RowChange, entry: StreamEntry, now: Instant) {
        self.note(&entry.stream, entry.id, now);
        let t = match self.table_index.get(&change.table.name) {
            Some(&t) => t,
            None => {
                self.tables.push(TableRows {
                    table: change.table.clone(),
                    rows: Vec::new(),
                });
                let t = self.tables.len() - 1;
                self.table_index.insert(change.table.name.clone(), t);
                t
            }
        };
        let rows = &mut self.tables[t].rows;
        match self.row_index.get(&(t, change.key_text.clone())) {
            Some(&r) => {
                let slot = &mut rows[r];
                if change.version >= slot.change.version {
                    slot.change = change;
                    slot.entries.insert(0, entry);
                } else {
                    slot.entries.push(entry);
                }
            }
            None => {
                self.row_index
                    .insert((t, change.key_text.clone()), rows.len());
                rows.push(BatchRow {
                    change,
                    entries: vec![entry],
                });
            }
        }
    }

    /// Adds an entry that needs only an acknowledgement.
    pub fn push_skip(&mut self, stream: &Arc<str>, id: EntryId, now: Instant) {
        self.note(stream, id, now);
    }

    /// Adds an entry for the dead-letter stream.
    pub fn push_dead(&mut self, entry: StreamEntry, reason: String, now: Instant) {
        self.note(&entry.stream, entry.id, now);
        self.dead.push(DeadLetter { entry, reason });
    }

    /// When the batch must be flushed at the latest (`None` when empty).
    pub fn deadline(&self) -> Option<Instant> {
        self.first_at.map(|t| t + self.max_delay)
    }

    /// Full, or its oldest entry has waited `max_delay`.
    pub fn should_flush(&self, now: Instant) -> bool {
        self.len() >= self.max_batch || self.deadline().is_some_and(|d| now >= d)
    }

    /// Room left before the batch is full.
    pub fn room(&self) -> usize {
        self.max_batch.saturating_sub(self.len())
    }

    /// Takes the batch, leaving this batcher empty.
    pub fn take(&mut self) -> Batch {
        let acks = std::mem::take(&mut self.acks);
        let mut highest: Vec<(Arc<str>, EntryId)> = Vec::new();
        for (stream, id) in &acks {
            match highest.iter_mut().find(|(s, _)| s == stream) {
                Some((_, best)) => *best = (*best).max(*id),
                None => highest.push((stream.clone(), *id)),
            }
        }
        self.first_at = None;
        self.table_index.clear();
        self.row_index.clear();
        Batch {
            tables: std::mem::take(&mut self.tables),
            dead: std::mem::take(&mut self.dead),
            acks,
            checkpoints: highest,
        }
    }
}

#[cfg(test)]
mod tests;
