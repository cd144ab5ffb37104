//! The committer's plans (transaction mode): the changes of one commit's source
//! transactions, as [`Batch`]es to write in one Postgres transaction, in two orders:
//!
//! - **phased** (tried first): every row's changes coalesced over the whole commit,
//!   then the upserts table by table, referenced tables first, then the deletes,
//!   referencing tables first. A few statements per table, whatever the number of
//!   transactions; every foreign key between the tables holds after each statement
//!   (the commit's end state is one the source had). Not made when a foreign key
//!   cycle joins the tables or a truncate is among the changes.
//! - **exact** (the fallback, when Postgres rejects a row of the phased one: a unique
//!   key two rows trade, a key deleted and inserted again while referenced): the
//!   events in source order (commit order, then `total_order`), consecutive events of
//!   one table written together.
//!
//! Pure: no I/O; the foreign keys are given.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::prepare::Prepared;
use crate::batch::{Batch, Batcher, TableRows};
use crate::entry::StreamEntry;
use crate::map::RowOp;
use crate::table::TableName;

/// The phased order of the commit's events (`items`, in source order, each prepared);
/// `None` where it cannot be made (a truncate, a foreign key cycle). `parents`: for
/// each table, the tables its foreign keys reference.
pub(super) fn phased(
    items: &[(StreamEntry, Prepared)],
    parents: &HashMap<TableName, Vec<TableName>>,
) -> Option<Batch> {
    if items
        .iter()
        .any(|(_, p)| matches!(p, Prepared::Truncate(_)))
    {
        return None;
    }
    let now = Instant::now();
    let mut all = batcher();
    for (entry, prepared) in items {
        // The phased order is written without isolating rows (a rejected row sends
        // the commit to the exact order), so its entries need their fields only for
        // the dead letters of events that are dead already.
        let entry = match prepared {
            Prepared::Dead(_) => entry.clone(),
            _ => StreamEntry {
                stream: entry.stream.clone(),
                id: entry.id,
                fields: None,
                deliveries: entry.deliveries,
            },
        };
        push(&mut all, entry, prepared.clone(), now);
    }
    phase(all.take(), parents)
}

/// The exact order: the events in source order, consecutive events of one table in
/// one run.
pub(super) fn exact(items: Vec<(StreamEntry, Prepared)>) -> Batch {
    let now = Instant::now();
    let mut runs: Vec<Batch> = Vec::new();
    let mut run = batcher();
    let mut run_table: Option<TableName> = None;
    for (entry, prepared) in items {
        let table = match &prepared {
            Prepared::Row(change, _) => Some(change.table.name.clone()),
            Prepared::Truncate(t) => Some(t.table.name.clone()),
            _ => None,
        };
        if let Some(table) = table {
            if run_table.as_ref().is_some_and(|t| *t != table) {
                runs.push(std::mem::replace(&mut run, batcher()).take());
            }
            run_table = Some(table);
        }
        push(&mut run, entry, prepared, now);
    }
    runs.push(run.take());
    concat(runs)
}

fn batcher() -> Batcher {
    Batcher::new(usize::MAX, Duration::from_secs(3600))
}

fn push(batcher: &mut Batcher, entry: StreamEntry, prepared: Prepared, now: Instant) {
    match prepared {
        Prepared::Row(change, ts) => {
            if batcher.push_row(change, entry, now) {
                batcher.note_source_ts(ts);
            }
        }
        Prepared::Truncate(t) => batcher.push_truncate(t, entry, now),
        Prepared::Dead(reason) => batcher.push_dead(entry, reason, now),
        Prepared::Skip(_) | Prepared::Interrupted | Prepared::Staged(..) => {
            batcher.push_skip(&entry.stream, entry.id, now);
        }
    }
}

/// The runs' batches as one, in order (a table may come more than once).
fn concat(runs: Vec<Batch>) -> Batch {
    let mut out = Batch::default();
    for b in runs {
        out.tables.extend(b.tables);
        out.dead.extend(b.dead);
        out.acks.extend(b.acks);
        out.source_ts_ms.extend(b.source_ts_ms);
    }
    out
}

/// The phased order of a coalesced batch: upserts parents first, then deletes children
/// first. `None` when the tables' foreign keys form a cycle (a table referencing
/// itself is no cycle: one statement writes its rows, and the key is checked at its end).
fn phase(mut batch: Batch, parents: &HashMap<TableName, Vec<TableName>>) -> Option<Batch> {
    let order = topological(&batch.tables, parents)?;
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    let mut tables: Vec<Option<TableRows>> = batch.tables.drain(..).map(Some).collect();
    for i in order {
        let Some(t) = tables[i].take() else { continue };
        let (del, up): (Vec<_>, Vec<_>) = t
            .rows
            .into_iter()
            .partition(|r| matches!(r.change.op, RowOp::Delete { .. }));
        let part = |rows| TableRows {
            table: t.table.clone(),
            truncate: None,
            truncate_entries: Vec::new(),
            rows,
        };
        if !up.is_empty() {
            upserts.push(part(up));
        }
        if !del.is_empty() {
            deletes.push(part(del));
        }
    }
    deletes.reverse();
    upserts.extend(deletes);
    batch.tables = upserts;
    Some(batch)
}

/// Indexes of `tables`, each after the tables it references; `None` on a cycle.
fn topological(
    tables: &[TableRows],
    parents: &HashMap<TableName, Vec<TableName>>,
) -> Option<Vec<usize>> {
    let index: HashMap<&TableName, usize> = tables
        .iter()
        .enumerate()
        .map(|(i, t)| (&t.table.name, i))
        .collect();
    let mut order = Vec::with_capacity(tables.len());
    let mut done: HashSet<usize> = HashSet::new();
    let mut visiting: HashSet<usize> = HashSet::new();
    fn visit(
        i: usize,
        tables: &[TableRows],
        parents: &HashMap<TableName, Vec<TableName>>,
        index: &HashMap<&TableName, usize>,
        done: &mut HashSet<usize>,
        visiting: &mut HashSet<usize>,
        order: &mut Vec<usize>,
    ) -> bool {
        if done.contains(&i) {
            return true;
        }
        if !visiting.insert(i) {
            return false;
        }
        let name = &tables[i].table.name;
        for p in parents.get(name).into_iter().flatten() {
            if p == name {
                continue;
            }
            if let Some(&j) = index.get(p)
                && !visit(j, tables, parents, index, done, visiting, order)
            {
                return false;
            }
        }
        visiting.remove(&i);
        done.insert(i);
        order.push(i);
        true
    }
    for i in 0..tables.len() {
        if !visit(
            i,
            tables,
            parents,
            &index,
            &mut done,
            &mut visiting,
            &mut order,
        ) {
            return None;
        }
    }
    Some(order)
}
