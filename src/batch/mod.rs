//! Batch: [`RowChange`]s, skips and dead letters → [`Batch`], flushed by size or age.
//! Input: mapped rows with the entries they came from; output: per-table rows,
//! coalesced by key (highest version wins), plus every entry ID to acknowledge.
//! Pure: the caller passes `now`; no I/O.
//! Errors: none; a full or old batch is the caller's signal to flush.
//!
//! Coalescing: the changes of one row in a batch become one change, equal to applying
//! them one after another in version order (on a tie, in arrival order): the newest
//! wins, and an upsert that lacks a column (an unchanged TOASTed value) keeps the value
//! an older upsert in the batch set, unless a delete came between. Postgres' `ON
//! CONFLICT DO UPDATE` cannot touch one row twice in a statement. Every entry stays in
//! the batch (`BatchRow::entries`) so it is acked, or dead-lettered with the winner if
//! Postgres rejects the winner.

use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::entry::{DeadLetter, EntryId, EntryRef, StreamEntry};
use crate::map::{RowChange, RowOp, TableSchema, Truncate, Version};
use crate::table::TableName;

/// One row to write and every entry that produced it (after [`Batcher::take`], the
/// entry of the newest change first).
#[derive(Debug, Clone)]
pub struct BatchRow {
    /// The newest change of the row in the batch.
    pub change: RowChange,
    /// Older changes of the row to write first, in version order: empty unless they
    /// can make a difference (see `BatchRow::fold`).
    pub before: Vec<RowChange>,
    pub entries: Vec<StreamEntry>,
    /// The other changes of the row in arrival order, sorted out by `fold`.
    history: Vec<RowChange>,
}

impl BatchRow {
    /// Reduces the row's changes to the fewest that, written one after another with
    /// the version guard, leave the row as writing all of them in version order would
    /// (stable: ties keep arrival order):
    ///
    /// | newest change | written |
    /// |---|---|
    /// | a delete | the delete |
    /// | an upsert with every column the upserts since the last delete set | that last delete (if any), then the upsert |
    /// | an upsert lacking some of those columns (unchanged TOASTed values) | the last delete (if any), the upserts since, then the newest |
    ///
    /// A lacking column must keep the value of the newest older upsert *that Postgres
    /// applies*, which depends on the row's version there: so those upserts are written,
    /// not merged here.
    fn fold(&mut self) {
        if self.history.is_empty() {
            return;
        }
        let last = std::mem::replace(&mut self.change, self.history[0].clone());
        let mut changes: Vec<(usize, RowChange)> = std::mem::take(&mut self.history)
            .into_iter()
            .chain(std::iter::once(last))
            .enumerate()
            .collect();
        changes.sort_by(|a, b| a.1.version.cmp(&b.1.version));
        let Some((newest, change)) = changes.pop() else {
            return;
        };
        self.before = match &change.op {
            RowOp::Delete { .. } => Vec::new(),
            RowOp::Upsert { columns, .. } => {
                let last_delete = changes
                    .iter()
                    .rposition(|(_, c)| matches!(c.op, RowOp::Delete { .. }));
                let since = last_delete.map_or(0, |d| d + 1);
                let covered = changes[since..].iter().all(|(_, c)| match &c.op {
                    RowOp::Upsert { columns: older, .. } => {
                        older.iter().all(|o| columns.contains(o))
                    }
                    RowOp::Delete { .. } => true,
                });
                match (covered, last_delete) {
                    (true, None) => Vec::new(),
                    (true, Some(d)) => vec![changes.swap_remove(d).1],
                    (false, d) => {
                        let mut chain: Vec<RowChange> =
                            changes.drain(d.unwrap_or(0)..).map(|(_, c)| c).collect();
                        prune_covered(&mut chain, columns);
                        chain
                    }
                }
            }
        };
        self.change = change;
        let winner = self.entries.remove(newest);
        self.entries.insert(0, winner);
    }

    /// `before`, then `change`: what to write, in order.
    pub fn chain(&self) -> impl Iterator<Item = &RowChange> {
        self.before.iter().chain(std::iter::once(&self.change))
    }
}

/// Drops from a chain (an optional delete, then upserts; the newest upsert, with
/// `last_columns`, comes after it) every upsert whose columns are all set again by a
/// later upsert: it cannot show in the result. Keeps a hot row's chain short.
fn prune_covered(chain: &mut Vec<RowChange>, last_columns: &[usize]) {
    let mut later: Vec<usize> = last_columns.to_vec();
    let mut keep = vec![true; chain.len()];
    for (i, change) in chain.iter().enumerate().rev() {
        if let RowOp::Upsert { columns, .. } = &change.op {
            if columns.iter().all(|c| later.contains(c)) {
                keep[i] = false;
            } else {
                later.extend(columns.iter().copied());
            }
        }
    }
    let mut flags = keep.into_iter();
    chain.retain(|_| flags.next().unwrap_or(true));
}

#[derive(Debug, Clone)]
pub struct TableRows {
    pub table: Arc<TableSchema>,
    /// The newest truncate of the table in the batch; written before the rows.
    pub truncate: Option<Version>,
    /// The entries of the batch's truncates of this table (dead-lettered together if
    /// Postgres refuses the truncate).
    pub truncate_entries: Vec<StreamEntry>,
    pub rows: Vec<BatchRow>,
}

/// What one flush writes and then acknowledges.
#[derive(Debug, Default)]
pub struct Batch {
    pub tables: Vec<TableRows>,
    pub dead: Vec<DeadLetter>,
    /// Every entry in the batch (rows, skips, dead letters), to XACK after commit.
    pub acks: Vec<EntryRef>,
    /// The highest entry ID per stream: the checkpoint written with the rows.
    pub checkpoints: Vec<EntryRef>,
    /// The source timestamps (`source.ts_ms`) of the row events, for the latency metric.
    pub source_ts_ms: Vec<i64>,
    /// Events of source transactions, staged for the committer (transaction mode).
    pub staged: Vec<Staged>,
}

/// An event of a source transaction (transaction mode): staged for the committer, which
/// applies its whole transaction, instead of written to its table.
#[derive(Debug, Clone)]
pub struct Staged {
    pub entry: StreamEntry,
    pub tx_id: String,
    pub total_order: i64,
    /// It was dead-lettered: staged as a marker (no fields) that still counts towards
    /// its transaction's events.
    pub dead: bool,
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
    // foldhash, not std's SipHash: these are hashed for every entry (a fast hasher with
    // a random seed per process; the keys are not chosen by an attacker who sees it).
    table_index: foldhash::HashMap<TableName, usize>,
    /// Per table position: the positions of its rows, found by key text (hashed with
    /// `key_hasher`; the rows hold the texts, so no copy of each is kept here).
    row_index: Vec<hashbrown::HashTable<usize>>,
    key_hasher: foldhash::fast::RandomState,
    dead: Vec<DeadLetter>,
    acks: Vec<EntryRef>,
    /// The entries in the batch: one read twice (our own PEL re-read and XAUTOCLAIM
    /// can both return it) is taken once.
    seen: foldhash::HashSet<(Arc<str>, EntryId)>,
    source_ts_ms: Vec<i64>,
    staged: Vec<Staged>,
}

impl Batcher {
    pub fn new(max_batch: usize, max_delay: Duration) -> Self {
        Self {
            max_batch,
            max_delay,
            first_at: None,
            source_ts_ms: Vec::new(),
            staged: Vec::new(),
            tables: Vec::new(),
            table_index: foldhash::HashMap::default(),
            row_index: Vec::new(),
            key_hasher: foldhash::fast::RandomState::default(),
            dead: Vec::new(),
            acks: Vec::new(),
            seen: foldhash::HashSet::default(),
        }
    }

    /// Entries in the batch (rows before coalescing, skips, dead letters).
    pub fn len(&self) -> usize {
        self.acks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }

    /// Records an entry; `false` when it is already in the batch.
    fn note(&mut self, stream: &Arc<str>, id: EntryId, now: Instant) -> bool {
        if !self.seen.insert((stream.clone(), id)) {
            return false;
        }
        self.first_at.get_or_insert(now);
        self.acks.push((stream.clone(), id));
        true
    }

    /// The position of `table` in the batch, adding it when new.
    fn table(&mut self, table: &Arc<TableSchema>) -> usize {
        if let Some(&t) = self.table_index.get(&table.name) {
            return t;
        }
        self.tables.push(TableRows {
            table: table.clone(),
            truncate: None,
            truncate_entries: Vec::new(),
            rows: Vec::new(),
        });
        self.row_index.push(hashbrown::HashTable::new());
        let t = self.tables.len() - 1;
        self.table_index.insert(table.name.clone(), t);
        t
    }

    /// Whether the batch holds changes of `table`.
    pub fn has_table(&self, table: &TableName) -> bool {
        self.table_index.contains_key(table)
    }

    /// Adds a truncate; several in a batch keep the newest.
    pub fn push_truncate(&mut self, truncate: Truncate, entry: StreamEntry, now: Instant) {
        if !self.note(&entry.stream, entry.id, now) {
            return;
        }
        let t = self.table(&truncate.table);
        let rows = &mut self.tables[t];
        if rows.truncate.as_ref().is_none_or(|v| *v < truncate.version) {
            rows.truncate = Some(truncate.version);
        }
        rows.truncate_entries.push(entry);
    }

    /// Notes a row event's source timestamp (for the end-to-end latency metric).
    pub fn note_source_ts(&mut self, ts_ms: Option<i64>) {
        if let Some(ts) = ts_ms {
            self.source_ts_ms.push(ts);
        }
    }

    /// Adds a row change; coalesces it with an earlier change of the same row. `false`
    /// when the entry is already in the batch (read twice) and was not added again.
    pub fn push_row(&mut self, change: RowChange, entry: StreamEntry, now: Instant) -> bool {
        if !self.note(&entry.stream, entry.id, now) {
            return false;
        }
        let t = self.table(&change.table);
        let rows = &mut self.tables[t].rows;
        let hasher = &self.key_hasher;
        let hash = hasher.hash_one(change.key_text.as_str());
        let index = &mut self.row_index[t];
        match index.find(hash, |&r| rows[r].change.key_text == change.key_text) {
            Some(&r) => {
                let slot = &mut rows[r];
                let older = std::mem::replace(&mut slot.change, change);
                slot.history.push(older);
                slot.entries.push(entry);
            }
            None => {
                index.insert_unique(hash, rows.len(), |&r| {
                    hasher.hash_one(rows[r].change.key_text.as_str())
                });
                rows.push(BatchRow {
                    change,
                    before: Vec::new(),
                    entries: vec![entry],
                    history: Vec::new(),
                });
            }
        }
        true
    }

    /// Adds an entry that needs only an acknowledgement.
    pub fn push_skip(&mut self, stream: &Arc<str>, id: EntryId, now: Instant) {
        self.note(stream, id, now);
    }

    /// Adds an entry for the dead-letter stream.
    pub fn push_dead(&mut self, entry: StreamEntry, reason: String, now: Instant) {
        if self.note(&entry.stream, entry.id, now) {
            self.dead.push(DeadLetter { entry, reason });
        }
    }

    /// Adds an event of a source transaction to stage (see [`Staged`]); with a
    /// `dead` reason, also its dead letter.
    pub fn push_staged(
        &mut self,
        entry: StreamEntry,
        tx_id: String,
        total_order: i64,
        dead: Option<String>,
        now: Instant,
    ) {
        if !self.note(&entry.stream, entry.id, now) {
            return;
        }
        let marker = dead.is_some();
        if let Some(reason) = dead {
            self.dead.push(DeadLetter {
                entry: entry.clone(),
                reason,
            });
        }
        self.staged.push(Staged {
            entry,
            tx_id,
            total_order,
            dead: marker,
        });
    }

    /// When the oldest entry of the batch arrived.
    pub fn oldest(&self) -> Option<Instant> {
        self.first_at
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.first_at.map(|t| t + self.max_delay)
    }

    /// Full, or its oldest entry has waited `max_delay`.
    pub fn should_flush(&self, now: Instant) -> bool {
        self.len() >= self.max_batch || self.deadline().is_some_and(|d| now >= d)
    }

    /// The batch is full at `max_batch` entries from now on (the pipeline lowers it
    /// while other instances write: `pipeline/share.rs`).
    pub fn set_max_batch(&mut self, max_batch: usize) {
        self.max_batch = max_batch.max(1);
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Room left before the batch is full.
    pub fn room(&self) -> usize {
        self.max_batch.saturating_sub(self.len())
    }

    /// Takes the batch, leaving this batcher empty.
    pub fn take(&mut self) -> Batch {
        let acks = std::mem::take(&mut self.acks);
        // Each stream's highest ID: a map, as a batch can span 1,600 streams.
        let mut at: foldhash::HashMap<&str, usize> = foldhash::HashMap::default();
        let mut highest: Vec<EntryRef> = Vec::new();
        for (stream, id) in &acks {
            match at.get(&**stream) {
                Some(&i) => highest[i].1 = highest[i].1.max(*id),
                None => {
                    at.insert(stream, highest.len());
                    highest.push((stream.clone(), *id));
                }
            }
        }
        self.first_at = None;
        self.seen.clear();
        self.table_index.clear();
        self.row_index.clear();
        let mut tables = std::mem::take(&mut self.tables);
        for row in tables.iter_mut().flat_map(|t| t.rows.iter_mut()) {
            row.fold();
        }
        Batch {
            tables,
            source_ts_ms: std::mem::take(&mut self.source_ts_ms),
            staged: std::mem::take(&mut self.staged),
            dead: std::mem::take(&mut self.dead),
            acks,
            // Sorted: instances of one group update checkpoint rows in the same order,
            // so their transactions cannot deadlock on them.
            checkpoints: {
                highest.sort();
                highest
            },
        }
    }
}

#[cfg(test)]
mod tests;
