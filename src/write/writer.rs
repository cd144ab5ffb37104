//! The writer: a [`Batch`] → [`Committed`], in one transaction on a connection of its
//! own: `BEGIN` with the advisory locks ([`super::locks`]), one statement per table and
//! row shape ([`super::sql`]), the checkpoints with `COMMIT`, all in one simple query
//! (statements prepared by name, values as literals: [`super::prepared`]): one round
//! trip whatever the tables.
//! I/O: Postgres; every round trip is counted in [`Writer::round_trips`].
//! Errors: [`WriteError`]; a data error makes [`Writer::write`] write the batch again
//! with a savepoint per statement and per row, and only the rejected rows (with every
//! entry coalesced into them) become dead letters.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use super::analyze::{Freshness, analyze_tombstones_or_warn};
use super::home::Home;
use super::staging::{self, TxFinish};
use super::{Committed, ErrorClass, WriteError, locks, prepared, sql};
use crate::batch::{Batch, BatchRow, TableRows};
use crate::entry::DeadLetter;
use crate::map::{RowChange, RowOp, TableSchema};
use crate::table::TableName;

/// Writes batches. Cheap to clone (a pool handle, the group and the round-trip counter,
/// shared by the clones): the pipeline hands a clone to the task that writes.
#[derive(Clone)]
pub struct Writer {
    pub(super) pool: PgPool,
    pub(super) group: Arc<str>,
    /// Round trips to Postgres to write batches (one simple query, whatever it holds,
    /// is one), shared by the clones of a writer.
    round_trips: Arc<AtomicU64>,
    /// Statements prepared by name proved unusable (a transaction-pooling proxy moves
    /// them between server connections): every batch goes with bound parameters from
    /// then on, instead of failing once more each time. Shared by the clones.
    pub(super) unprepared: Arc<AtomicBool>,
    /// The connection the last batch committed on, kept for the next ([`Home`]).
    home: Home,
    /// Tombstones written since `redsink.tombstones` was last analyzed (`analyze.rs`).
    tombstones: Arc<Freshness>,
}

impl Writer {
    pub fn new(pool: PgPool, group: &str) -> Self {
        Self {
            pool,
            group: Arc::from(group),
            round_trips: Arc::default(),
            unprepared: Arc::default(),
            home: Home::default(),
            tombstones: Arc::default(),
        }
    }

    /// Transaction mode's tables, on this writer's pool and group.
    pub fn tx_store(&self) -> super::TxStore {
        super::TxStore::new(self.pool.clone(), &self.group)
    }

    /// Round trips made to write batches so far (by this writer and its clones).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// One `SELECT 1` within `within`: is Postgres reachable? (For readiness while idle.)
    pub async fn ping(&self, within: Duration) -> Result<(), WriteError> {
        let query = sqlx::query("SELECT 1").execute(&self.pool);
        match tokio::time::timeout(within, query).await {
            Ok(result) => result.map(|_| ()).map_err(WriteError::pg("SELECT 1")),
            Err(_) => Err(WriteError::Postgres {
                context: format!("SELECT 1: no answer within {within:?}"),
                source: sqlx::Error::PoolTimedOut,
            }),
        }
    }

    pub(super) fn trip(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    /// Applies a batch in one transaction with its checkpoints. Safe to call again with
    /// the same batch after an error: every statement is version-guarded.
    pub async fn write(&self, batch: &Batch) -> Result<Committed, WriteError> {
        self.write_with(batch, None, true).await
    }

    /// The committer's write (transaction mode): `batch` with `finish`, which fences
    /// the commit and records the committer's progress with it. `last_resort`: when
    /// Postgres rejects a row, write the batch again row by row (dead-lettering the
    /// rejected ones); else return the data error (the caller has another order to try).
    pub async fn write_transactions(
        &self,
        batch: &Batch,
        finish: &TxFinish,
        last_resort: bool,
    ) -> Result<Committed, WriteError> {
        self.write_with(batch, Some(finish), last_resort).await
    }

    /// One transaction; on a data error, with `isolate_rejected`, again row by row
    /// (the rejected rows are dead letters), else the error.
    async fn write_with(
        &self,
        batch: &Batch,
        finish: Option<&TxFinish>,
        isolate_rejected: bool,
    ) -> Result<Committed, WriteError> {
        let rejected = match self.attempt(batch, false, finish).await {
            Err(e) if e.class() == ErrorClass::Data && isolate_rejected => {
                tracing::warn!(error = %e, "a row was rejected: writing the batch again row by row");
                self.attempt(batch, true, finish).await?
            }
            other => other?,
        };
        self.note_tombstones(batch);
        let mut dead = batch.dead.clone();
        dead.extend(rejected);
        Ok(Committed {
            acks: batch.acks.clone(),
            dead,
            rows: batch.row_count(),
        })
    }

    /// Counts the tombstones a committed batch wrote; when as many have been written as
    /// the table held, analyzes it in the background (`analyze.rs`).
    fn note_tombstones(&self, batch: &Batch) {
        let deletes = batch
            .tables
            .iter()
            .flat_map(|t| &t.rows)
            .flat_map(|r| std::iter::once(&r.change).chain(&r.before))
            .filter(|c| matches!(c.op, RowOp::Delete { .. }))
            .count();
        if !self.tombstones.note(deletes as u64) {
            return;
        }
        let (pool, fresh) = (self.pool.clone(), self.tombstones.clone());
        tokio::spawn(async move {
            fresh.analyzed(analyze_tombstones_or_warn(&pool).await);
        });
    }

    /// One transaction on a connection of its own (the [`Home`] one when free); a
    /// connection whose transaction failed is closed rather than kept or returned to the
    /// pool (it may still be inside the failed transaction).
    async fn attempt(
        &self,
        batch: &Batch,
        isolate: bool,
        finish: Option<&TxFinish>,
    ) -> Result<Vec<DeadLetter>, WriteError> {
        let mut conn = match self.home.take() {
            Some(conn) => conn,
            None => self
                .pool
                .acquire()
                .await
                .map_err(WriteError::pg("acquiring a connection"))?,
        };
        let outcome = self.transaction(&mut conn, batch, isolate, finish).await;
        if outcome.is_err() {
            conn.close_on_drop();
        } else if self.pool.options().get_max_connections() >= 2 && !self.pool.is_closed() {
            self.home.keep(conn);
        }
        outcome
    }

    /// The transaction. Without `isolate`, a batch of several statements goes in one
    /// round trip ([`Self::at_once`], `once.rs`). Otherwise (one statement, `isolate`, or a value
    /// that cannot be a literal), in 3 round trips when nothing is rejected: `BEGIN` +
    /// the advisory locks, one statement per table and row shape with its values bound,
    /// the checkpoints + `COMMIT`; with
    /// `isolate`, each statement runs under a savepoint and a statement that hits a data
    /// error is retried row by row; the rows Postgres rejects are returned as dead
    /// letters (with every entry coalesced into them).
    async fn transaction(
        &self,
        tx: &mut PgConnection,
        batch: &Batch,
        isolate: bool,
        finish: Option<&TxFinish>,
    ) -> Result<Vec<DeadLetter>, WriteError> {
        if !isolate
            && !self.unprepared.load(Ordering::Relaxed)
            && super::once::several_statements(batch)
            && let Ok(plan) = prepared::plan(batch)
            && self.at_once(tx, batch, finish, &plan).await?
        {
            return Ok(Vec::new());
        }
        self.trip();
        let mut begin = sql::begin_sql(&locks::lock_ids(batch));
        if let Some(finish) = finish {
            begin.push_str(&staging::fence_sql(&self.group, finish)?);
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(begin))
            .execute(&mut *tx)
            .await
            .map_err(WriteError::pg("BEGIN and taking the row locks"))?;
        let mut rejected = Rejected::default();
        for table in &batch.tables {
            if let Some(version) = &table.truncate {
                self.truncate_table(tx, table, &version.0, isolate, &mut rejected)
                    .await?;
            }
            for group in groups(&table.rows) {
                // A row rejected in an earlier round is not written further.
                let group: Vec<Item<'_>> = group
                    .into_iter()
                    .filter(|(_, row)| !rejected.rows.contains(&address(row)))
                    .collect();
                if group.is_empty() {
                    continue;
                }
                self.write_group(tx, &table.table, &group, isolate, &mut rejected)
                    .await?;
            }
        }
        if !batch.staged.is_empty() {
            self.trip();
            staging::stage(tx, &self.group, &batch.staged).await?;
        }
        self.trip();
        let mut commit = match finish {
            Some(finish) => staging::finish_sql(&self.group, finish)?,
            None => String::new(),
        };
        commit.push_str(&sql::commit_sql(&self.group, &batch.checkpoints)?);
        sqlx::raw_sql(sqlx::AssertSqlSafe(commit))
            .execute(&mut *tx)
            .await
            .map_err(WriteError::pg("moving the checkpoints and COMMIT"))?;
        Ok(rejected.dead)
    }

    /// A table's truncate. With `isolate`, under a savepoint: a truncate Postgres
    /// refuses with a data error (a foreign key from another table, for example)
    /// dead-letters the entries of the batch's truncates of the table.
    async fn truncate_table(
        &self,
        tx: &mut PgConnection,
        table: &TableRows,
        version: &[u8],
        isolate: bool,
        rejected: &mut Rejected,
    ) -> Result<(), WriteError> {
        if !isolate {
            return self.truncate(tx, &table.table, version).await;
        }
        let refused = self
            .in_savepoint(tx, &TRUNCATE, async |conn| {
                self.truncate(conn, &table.table, version).await
            })
            .await?;
        if let Some(e) = refused {
            let cause = postgres_message(&e);
            rejected
                .dead
                .extend(table.truncate_entries.iter().map(|entry| DeadLetter {
                    entry: entry.clone(),
                    reason: format!(
                        "table {}: postgres refused the truncate: {cause}",
                        table.table.name
                    ),
                }));
        }
        Ok(())
    }

    /// One group of rows in one statement. With `isolate`, under a savepoint; when the
    /// statement hits a data error, row by row, each under a savepoint of its own: the
    /// rows Postgres rejects become dead letters.
    async fn write_group(
        &self,
        tx: &mut PgConnection,
        table: &TableSchema,
        group: &[Item<'_>],
        isolate: bool,
        rejected: &mut Rejected,
    ) -> Result<(), WriteError> {
        if !isolate {
            return self.exec_group(tx, table, group).await;
        }
        let refused = self
            .in_savepoint(tx, &GROUP, async |conn| {
                self.exec_group(conn, table, group).await
            })
            .await?;
        if refused.is_none() {
            return Ok(());
        }
        for item in group {
            let refused = self
                .in_savepoint(tx, &ROW, async |conn| {
                    self.exec_group(conn, table, &[*item]).await
                })
                .await?;
            if let Some(e) = refused {
                rejected.rows.insert(address(item.1));
                rejected.dead.extend(reject(item.1, &table.name, &e));
            }
        }
        Ok(())
    }

    /// Runs `statement` under `savepoint`: `None` when it succeeded (the savepoint is
    /// released), `Some(error)` when it hit a data error (rolled back to the savepoint:
    /// the transaction goes on without it); any other error ends the transaction.
    async fn in_savepoint(
        &self,
        conn: &mut PgConnection,
        savepoint: &Savepoint,
        statement: impl AsyncFnOnce(&mut PgConnection) -> Result<(), WriteError>,
    ) -> Result<Option<WriteError>, WriteError> {
        self.simple(conn, savepoint.open).await?;
        match statement(&mut *conn).await {
            Ok(()) => {
                self.simple(conn, savepoint.release).await?;
                Ok(None)
            }
            Err(e) if e.class() == ErrorClass::Data => {
                self.simple(conn, savepoint.rollback).await?;
                Ok(Some(e))
            }
            Err(e) => Err(e),
        }
    }

    /// A statement without parameters (the savepoints'), named in its own error.
    async fn simple(
        &self,
        conn: &mut PgConnection,
        statement: &'static str,
    ) -> Result<(), WriteError> {
        self.trip();
        sqlx::query(statement)
            .execute(conn)
            .await
            .map(|_| ())
            .map_err(WriteError::pg(statement))
    }

    async fn exec_group(
        &self,
        conn: &mut PgConnection,
        table: &TableSchema,
        items: &[Item<'_>],
    ) -> Result<(), WriteError> {
        self.trip();
        let changes: Vec<&RowChange> = items.iter().map(|(c, _)| *c).collect();
        sql::write_rows(conn, table, &changes).await
    }

    async fn truncate(
        &self,
        conn: &mut PgConnection,
        table: &TableSchema,
        version: &[u8],
    ) -> Result<(), WriteError> {
        self.trip();
        sql::truncate(conn, table, version).await
    }
}

/// A savepoint's three statements, written out: each is sent as it stands and names
/// its own error.
struct Savepoint {
    open: &'static str,
    release: &'static str,
    rollback: &'static str,
}

const TRUNCATE: Savepoint = Savepoint {
    open: "SAVEPOINT redsink_truncate",
    release: "RELEASE SAVEPOINT redsink_truncate",
    rollback: "ROLLBACK TO SAVEPOINT redsink_truncate",
};
const GROUP: Savepoint = Savepoint {
    open: "SAVEPOINT redsink_group",
    release: "RELEASE SAVEPOINT redsink_group",
    rollback: "ROLLBACK TO SAVEPOINT redsink_group",
};
const ROW: Savepoint = Savepoint {
    open: "SAVEPOINT redsink_row",
    release: "RELEASE SAVEPOINT redsink_row",
    rollback: "ROLLBACK TO SAVEPOINT redsink_row",
};

/// What an attempt that isolates rows has rejected so far.
#[derive(Default)]
struct Rejected {
    /// The dead letters, in the order Postgres rejected them.
    dead: Vec<DeadLetter>,
    /// The rejected rows by [`address`]: they stay put in the batch for the whole attempt.
    rows: HashSet<usize>,
}

/// A batch row's address, which identifies it during an attempt.
fn address(row: &BatchRow) -> usize {
    std::ptr::from_ref(row).addr()
}

/// A change to write and the batch row it belongs to (for dead-lettering).
pub(super) type Item<'a> = (&'a RowChange, &'a BatchRow);

/// What decides a change's statement: delete or upsert, its key columns and (for an
/// upsert) its columns.
type Shape<'a> = (bool, &'a [usize], &'a [usize]);

fn shape(change: &RowChange) -> Shape<'_> {
    match &change.op {
        RowOp::Delete { .. } => (true, change.key_columns.as_slice(), &[][..]),
        RowOp::Upsert { columns, .. } => (false, change.key_columns.as_slice(), columns.as_slice()),
    }
}

/// Whether [`groups`] of `rows` are more than one, without building them: a row with
/// older changes to write first makes a second round, else a second shape does.
pub(super) fn several_groups(rows: &[BatchRow]) -> bool {
    let Some(first) = rows.first() else {
        return false;
    };
    let first = shape(&first.change);
    rows.iter()
        .any(|r| !r.before.is_empty() || shape(&r.change) != first)
}

/// Changes that one statement can write together: same operation, key and column
/// set, in rounds: round k holds the k-th change of each row's chain, so a row's
/// changes are written in order.
pub(super) fn groups(rows: &[BatchRow]) -> Vec<Vec<Item<'_>>> {
    let mut out: Vec<Vec<Item<'_>>> = Vec::new();
    let rounds = rows.iter().map(|r| r.before.len() + 1).max().unwrap_or(0);
    for round in 0..rounds {
        let mut index: foldhash::HashMap<Shape<'_>, usize> = foldhash::HashMap::default();
        // Rows of a table mostly share one shape: compared with the last row's first.
        let mut last: Option<(Shape<'_>, usize)> = None;
        for row in rows {
            let Some(change) = row.chain().nth(round) else {
                continue;
            };
            let shape = shape(change);
            let known = match last {
                Some((s, i)) if s == shape => Some(i),
                _ => index.get(&shape).copied(),
            };
            match known {
                Some(i) => {
                    out[i].push((change, row));
                    last = Some((shape, i));
                }
                None => {
                    last = Some((shape, out.len()));
                    index.insert(shape, out.len());
                    out.push(vec![(change, row)]);
                }
            }
        }
    }
    out
}

/// Postgres' own message for an error, without our context.
fn postgres_message(error: &WriteError) -> String {
    match error {
        WriteError::Postgres { source, .. } => source
            .as_database_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| source.to_string()),
        other => other.to_string(),
    }
}

/// The winner and every entry coalesced into it go to the dead-letter stream together:
/// acknowledging the older ones alone would lose them.
fn reject(row: &BatchRow, table: &TableName, error: &WriteError) -> Vec<DeadLetter> {
    let cause = postgres_message(error);
    let winner = row.entries.first().map(|e| e.id);
    row.entries
        .iter()
        .enumerate()
        .map(|(i, entry)| DeadLetter {
            entry: entry.clone(),
            reason: if i == 0 {
                format!("table {table}: postgres rejected the row: {cause}")
            } else {
                format!(
                    "table {table}: superseded in its batch by entry {} which postgres rejected: {cause}",
                    winner.map(|w| w.to_string()).unwrap_or_default()
                )
            },
        })
        .collect()
}
