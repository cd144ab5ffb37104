//! Write: [`Batch`] → [`Committed`], in one Postgres transaction.
//! Input: per-table coalesced rows and the per-stream checkpoints; output: proof that
//! the transaction committed, listing what to acknowledge and what to dead-letter.
//! I/O: Postgres (a small pool).
//! Errors: [`WriteError`], classified by [`WriteError::class`]: retry (connection,
//! serialization, deadlock), or fatal (missing table, privileges). A data error (a
//! value the column rejects) does not fail the batch: the batch is written again with
//! a savepoint per statement and per row, and only the rejected rows are dead-lettered.
//!
//! Version guard, per row (v = the event's version, r = the row's `_redsink_version`,
//! t = the row's tombstone version in `redsink.tombstones`):
//!
//! | event | row exists | outcome |
//! |---|---|---|
//! | upsert | no, no tombstone ≥ v | insert |
//! | upsert | no, tombstone ≥ v | nothing (a newer delete happened: no resurrection) |
//! | upsert | yes, r < v or r is null | update |
//! | upsert | yes, r ≥ v | nothing (older or repeated event) |
//! | delete | yes, r < v or r is null | delete; tombstone := max(t, v) |
//! | delete | yes, r ≥ v | nothing but tombstone := max(t, v) |
//! | delete | no | tombstone := max(t, v) |
//!
//! A truncate at version v deletes the rows older than v and records v in
//! `redsink.truncations`; an upsert older than its table's truncate is a no-op.

mod catalog;
mod sql;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};

use crate::batch::{Batch, BatchRow};
use crate::entry::{DeadLetter, EntryId};
use crate::keyhash::fnv1a64;
use crate::map::{RowChange, RowOp, TableSchema};
use crate::table::{TableName, quote_ident};

pub use catalog::VERSION_COLUMN;

/// The migrations for redsink's own tables (`migrations/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("postgres: {context}")]
    Postgres {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "table {table} does not exist in the replica database: create it (redsink never \
         creates target tables) or fix mapping.table"
    )]
    TableMissing { table: String },
    #[error(
        "cannot add the version column {VERSION_COLUMN} to table {table}: run ALTER TABLE \
         {table} ADD COLUMN {VERSION_COLUMN} bytea as the table owner, or let redsink's role own it"
    )]
    VersionColumn {
        table: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// Schema evolution could not create or extend a table.
    #[error("schema evolution: {0}")]
    Evolve(String),
    #[error(
        "stream name {stream:?} contains a NUL byte, which Postgres cannot store in \
         redsink.checkpoints: rename the stream or narrow the mapping's streams"
    )]
    NulInName { stream: String },
}

/// What to do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient: back off and try the same batch again.
    Retry,
    /// A value a column rejects: isolate the row and dead-letter it.
    Data,
    /// Needs an operator: stop with the message.
    Fatal,
}

impl WriteError {
    fn pg(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Self {
        let context = context.into();
        move |source| Self::Postgres { context, source }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Postgres { source, .. } => classify(source),
            Self::Migrate(
                sqlx::migrate::MigrateError::Execute(e)
                | sqlx::migrate::MigrateError::ExecuteMigration(e, _),
            ) => match classify(e) {
                ErrorClass::Retry => ErrorClass::Retry,
                _ => ErrorClass::Fatal,
            },
            // Adding the version column can meet a lock timeout or a dropped connection
            // like any statement: those are retried; the rest needs an operator.
            Self::VersionColumn { source, .. } => match classify(source) {
                ErrorClass::Retry => ErrorClass::Retry,
                _ => ErrorClass::Fatal,
            },
            Self::TableMissing { .. }
            | Self::Migrate(_)
            | Self::NulInName { .. }
            | Self::Evolve(_) => ErrorClass::Fatal,
        }
    }

    /// The SQLSTATE, when Postgres sent one.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            Self::Postgres { source, .. } | Self::VersionColumn { source, .. } => source
                .as_database_error()
                .and_then(|d| d.code())
                .map(|c| c.to_string()),
            _ => None,
        }
    }
}

/// Retry on anything about the connection or concurrency; data classes 22 and 23 are
/// the row's fault; the rest needs an operator.
pub fn classify(e: &sqlx::Error) -> ErrorClass {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ErrorClass::Retry,
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            match code.as_str() {
                "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "57014" => {
                    ErrorClass::Retry
                }
                c if c.starts_with("08") || c.starts_with("53") => ErrorClass::Retry,
                // 21000: two keys that differ as text but not as values (char(n)
                // padding, 1 and 1.0) in one statement; 54000: a value too large to index.
                c if c.starts_with("22") || c.starts_with("23") || c == "21000" || c == "54000" => {
                    ErrorClass::Data
                }
                _ => ErrorClass::Fatal,
            }
        }
        _ => ErrorClass::Fatal,
    }
}

/// Proof that a batch's transaction committed: the only way to acknowledge entries.
/// Built only by [`Writer::write`], after `COMMIT` returned.
#[must_use = "committed entries must be acknowledged"]
#[derive(Debug)]
pub struct Committed {
    acks: Vec<(Arc<str>, EntryId)>,
    dead: Vec<DeadLetter>,
    rows: usize,
}

impl Committed {
    /// Every entry of the batch: applied, skipped and dead-lettered.
    pub fn acks(&self) -> &[(Arc<str>, EntryId)] {
        &self.acks
    }
    /// Entries to put on the dead-letter stream before acknowledging.
    pub fn dead(&self) -> &[DeadLetter] {
        &self.dead
    }
    /// Rows written (after coalescing; including version-guarded no-ops).
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// Connects the pool: session time zone UTC (naive Debezium timestamps are UTC).
pub async fn connect(url: &str, pool_size: u32) -> Result<PgPool, WriteError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(WriteError::pg("parsing postgres.url"))?
        .application_name("redsink")
        .options([("timezone", "UTC")]);
    PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(WriteError::pg("connecting to postgres"))
}

/// A stream's checkpoint: the newest entry a group has applied (moved in the batch's
/// transaction, only ever forward).
#[derive(Debug, Clone, serde::Serialize, PartialEq, sqlx::FromRow)]
pub struct Checkpoint {
    pub consumer_group: String,
    pub stream: String,
    pub last_id: String,
    /// RFC 3339, UTC.
    pub updated_at: String,
}

/// Every checkpoint (empty before the first migration).
pub async fn checkpoints(pool: &PgPool) -> Result<Vec<Checkpoint>, WriteError> {
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT to_regclass('redsink.checkpoints')::oid::int8")
            .fetch_one(pool)
            .await
            .map_err(WriteError::pg("looking for redsink.checkpoints"))?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT consumer_group, stream, last_id, \
           to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS updated_at \
         FROM redsink.checkpoints ORDER BY stream, consumer_group",
    )
    .fetch_all(pool)
    .await
    .map_err(WriteError::pg("reading redsink.checkpoints"))
}

/// A table's catalog facts as `redsink check` sees them, without changing anything:
/// the schema (minus the version column) and whether the version column is there.
pub async fn inspect_table(
    pool: &PgPool,
    name: &TableName,
) -> Result<(TableSchema, bool), WriteError> {
    catalog::load_with(pool, name, false).await
}

/// redsink's own tables, which a role without `CREATE` needs the owner to migrate.
pub const INTERNAL_TABLES: [&str; 3] = [
    "redsink.checkpoints",
    "redsink.tombstones",
    "redsink.truncations",
];

/// Applies `migrations/` (advisory-locked, so concurrent instances are safe). A role
/// that may not create tables (least privilege) goes on when the owner has already
/// created redsink's tables (`redsink migrate` as the owner), with a warning.
pub async fn migrate(pool: &PgPool) -> Result<(), WriteError> {
    let error = match MIGRATOR.run(pool).await {
        Ok(()) => return Ok(()),
        Err(e) => WriteError::Migrate(e),
    };
    let denied = match &error {
        WriteError::Migrate(
            sqlx::migrate::MigrateError::Execute(e)
            | sqlx::migrate::MigrateError::ExecuteMigration(e, _),
        ) => e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == "42501"),
        _ => false,
    };
    if !denied || !internal_tables_present(pool).await? {
        return Err(error);
    }
    tracing::warn!(
        "this role may not run migrations; redsink's tables exist, so going on \
         (run `redsink migrate` as their owner after upgrading redsink)"
    );
    Ok(())
}

/// Whether every table of [`INTERNAL_TABLES`] exists.
pub async fn internal_tables_present(pool: &PgPool) -> Result<bool, WriteError> {
    for table in INTERNAL_TABLES {
        let oid: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::int8")
            .bind(table)
            .fetch_one(pool)
            .await
            .map_err(WriteError::pg(format!("looking for {table}")))?;
        if oid.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes batches; caches the catalog of each target table.
pub struct Writer {
    pool: PgPool,
    group: String,
    tables: HashMap<TableName, Arc<TableSchema>>,
    /// When each table's catalog was last read again by [`Writer::reload`].
    loaded_at: HashMap<TableName, std::time::Instant>,
    /// Statements sent to write batches (one simple query opens a transaction), shared
    /// by the writers of one pool.
    round_trips: Arc<AtomicU64>,
}

/// The least time between two reloads of one table's catalog.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

impl Writer {
    pub fn new(pool: PgPool, group: &str) -> Self {
        Self {
            pool,
            group: group.to_string(),
            tables: HashMap::new(),
            loaded_at: HashMap::new(),
            round_trips: Arc::default(),
        }
    }

    /// Statements sent to write batches so far (by this writer and those of `for_writes`).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// A writer on the same pool for writing batches elsewhere (another task); its
    /// catalog cache starts empty.
    pub fn for_writes(&self) -> Writer {
        let mut writer = Writer::new(self.pool.clone(), &self.group);
        writer.round_trips = self.round_trips.clone();
        writer
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

    fn trip(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    /// The catalog facts of a table, read once and cached.
    pub async fn table(&mut self, name: &TableName) -> Result<Arc<TableSchema>, WriteError> {
        if let Some(t) = self.tables.get(name) {
            return Ok(t.clone());
        }
        let schema = Arc::new(catalog::load(&self.pool, name).await?);
        self.tables.insert(name.clone(), schema.clone());
        Ok(schema)
    }

    /// Whether the catalog of `name` is cached (read already).
    pub fn knows(&self, name: &TableName) -> bool {
        self.tables.contains_key(name)
    }

    /// Schema evolution (`basic`): creates `name` with `columns` and a primary key on
    /// `key` when it does not exist, else adds the columns it lacks (nullable). Never
    /// drops or alters anything. Forgets the cached catalog of the table.
    pub async fn evolve(
        &mut self,
        name: &TableName,
        columns: &[crate::table::DeclaredColumn],
        key: &[String],
    ) -> Result<(), WriteError> {
        let statement = match catalog::load_with(&self.pool, name, false).await {
            Err(WriteError::TableMissing { .. }) => {
                if key.is_empty() || !key.iter().all(|k| columns.iter().any(|c| &c.name == k)) {
                    return Err(WriteError::Evolve(format!(
                        "cannot create table {name}: the event's schema does not declare its key columns {key:?}"
                    )));
                }
                let mut defs: Vec<String> = columns
                    .iter()
                    .map(|c| {
                        let null = if c.optional && !key.contains(&c.name) {
                            ""
                        } else {
                            " NOT NULL"
                        };
                        format!("{} {}{null}", quote_ident(&c.name), c.sql_type)
                    })
                    .collect();
                defs.push(format!("{} bytea", quote_ident(VERSION_COLUMN)));
                let keys: Vec<String> = key.iter().map(|k| quote_ident(k)).collect();
                defs.push(format!("PRIMARY KEY ({})", keys.join(", ")));
                Some(format!(
                    "CREATE TABLE IF NOT EXISTS {} ({})",
                    name.quoted(),
                    defs.join(", ")
                ))
            }
            Err(e) => return Err(e),
            Ok((schema, _)) => {
                let missing: Vec<String> = columns
                    .iter()
                    .filter(|c| schema.column(&c.name).is_none())
                    .map(|c| {
                        format!(
                            "ADD COLUMN IF NOT EXISTS {} {}",
                            quote_ident(&c.name),
                            c.sql_type
                        )
                    })
                    .collect();
                (!missing.is_empty())
                    .then(|| format!("ALTER TABLE {} {}", name.quoted(), missing.join(", ")))
            }
        };
        if let Some(sql) = statement {
            let done = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .execute(&self.pool)
                .await;
            if let Err(e) = done {
                // Another instance may have created or extended it at the same moment
                // (a unique violation in the catalog): fine if it is there now.
                let now = catalog::load_with(&self.pool, name, false).await;
                let complete = now.is_ok_and(|(schema, _)| {
                    columns.iter().all(|c| schema.column(&c.name).is_some())
                });
                if !complete {
                    return Err(WriteError::pg(format!("schema evolution: {sql}"))(e));
                }
            } else {
                tracing::info!(table = %name, statement = %sql, "schema evolution");
            }
        }
        self.tables.remove(name);
        self.loaded_at.remove(name);
        Ok(())
    }

    /// Reads a table's catalog facts again (a column may have been added), unless that
    /// was done less than [`RELOAD_EVERY`] ago.
    pub async fn reload(&mut self, name: &TableName) -> Result<Arc<TableSchema>, WriteError> {
        let now = std::time::Instant::now();
        if let (Some(t), Some(at)) = (self.tables.get(name), self.loaded_at.get(name))
            && now.duration_since(*at) < RELOAD_EVERY
        {
            return Ok(t.clone());
        }
        self.tables.remove(name);
        let table = self.table(name).await?;
        self.loaded_at.insert(name.clone(), now);
        Ok(table)
    }

    /// Applies a batch in one transaction with its checkpoints. Safe to call again with
    /// the same batch after an error: every statement is version-guarded.
    pub async fn write(&self, batch: &Batch) -> Result<Committed, WriteError> {
        let rejected = match self.attempt(batch, false).await {
            Err(e) if e.class() == ErrorClass::Data => {
                tracing::warn!(error = %e, "a row was rejected: writing the batch again row by row");
                self.attempt(batch, true).await?
            }
            other => other?,
        };
        let mut dead = batch.dead.clone();
        dead.extend(rejected);
        Ok(Committed {
            acks: batch.acks.clone(),
            dead,
            rows: batch.row_count(),
        })
    }

    /// One transaction on a connection of its own; a connection whose transaction
    /// failed is closed rather than returned to the pool (it may still be inside the
    /// failed transaction).
    async fn attempt(&self, batch: &Batch, isolate: bool) -> Result<Vec<DeadLetter>, WriteError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(WriteError::pg("acquiring a connection"))?;
        let outcome = self.transaction(&mut conn, batch, isolate).await;
        if outcome.is_err() {
            conn.close_on_drop();
        }
        outcome
    }

    /// The transaction, in 3 round trips when nothing is rejected: `BEGIN` + the advisory
    /// locks, one statement per table and row shape, the checkpoints + `COMMIT`. With
    /// `isolate`, each statement runs under a savepoint and a statement that hits a data
    /// error is retried row by row; the rows Postgres rejects are returned as dead
    /// letters (with every entry coalesced into them).
    async fn transaction(
        &self,
        tx: &mut PgConnection,
        batch: &Batch,
        isolate: bool,
    ) -> Result<Vec<DeadLetter>, WriteError> {
        self.trip();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql::begin_sql(&lock_ids(batch))))
            .execute(&mut *tx)
            .await
            .map_err(WriteError::pg("BEGIN and taking the row locks"))?;
        let mut rejected = Vec::new();
        // Rows by address: they stay put in `batch` for the whole attempt.
        let mut rejected_rows: std::collections::HashSet<usize> = Default::default();
        for table in &batch.tables {
            if let Some(version) = &table.truncate {
                if !isolate {
                    self.truncate(&mut *tx, &table.table, &version.0).await?;
                } else {
                    self.savepoint(&mut *tx, "SAVEPOINT redsink_truncate")
                        .await?;
                    match self.truncate(&mut *tx, &table.table, &version.0).await {
                        Ok(()) => {
                            self.savepoint(&mut *tx, "RELEASE SAVEPOINT redsink_truncate")
                                .await?
                        }
                        // A foreign key from another table, for example.
                        Err(e) if e.class() == ErrorClass::Data => {
                            self.savepoint(&mut *tx, "ROLLBACK TO SAVEPOINT redsink_truncate")
                                .await?;
                            let cause = postgres_message(&e);
                            rejected.extend(table.truncate_entries.iter().map(|entry| {
                                DeadLetter {
                                    entry: entry.clone(),
                                    reason: format!(
                                        "table {}: postgres refused the truncate: {cause}",
                                        table.table.name
                                    ),
                                }
                            }));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            for group in groups(&table.rows) {
                // A row rejected in an earlier round is not written further.
                let group: Vec<Item<'_>> = group
                    .into_iter()
                    .filter(|(_, row)| !rejected_rows.contains(&std::ptr::from_ref(*row).addr()))
                    .collect();
                if group.is_empty() {
                    continue;
                }
                if !isolate {
                    self.exec_group(&mut *tx, &table.table, &group).await?;
                    continue;
                }
                self.savepoint(&mut *tx, "SAVEPOINT redsink_group").await?;
                match self.exec_group(&mut *tx, &table.table, &group).await {
                    Ok(()) => {
                        self.savepoint(&mut *tx, "RELEASE SAVEPOINT redsink_group")
                            .await?
                    }
                    Err(e) if e.class() == ErrorClass::Data => {
                        self.savepoint(&mut *tx, "ROLLBACK TO SAVEPOINT redsink_group")
                            .await?;
                        for item in &group {
                            self.savepoint(&mut *tx, "SAVEPOINT redsink_row").await?;
                            match self.exec_group(&mut *tx, &table.table, &[*item]).await {
                                Ok(()) => {
                                    self.savepoint(&mut *tx, "RELEASE SAVEPOINT redsink_row")
                                        .await?
                                }
                                Err(e) if e.class() == ErrorClass::Data => {
                                    self.savepoint(&mut *tx, "ROLLBACK TO SAVEPOINT redsink_row")
                                        .await?;
                                    rejected_rows.insert(std::ptr::from_ref(item.1).addr());
                                    rejected.extend(reject(item.1, &table.table.name, &e));
                                }
                                Err(e) => return Err(e),
                            }
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.trip();
        let commit = sql::commit_sql(&self.group, &batch.checkpoints)?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(commit))
            .execute(&mut *tx)
            .await
            .map_err(WriteError::pg("moving the checkpoints and COMMIT"))?;
        Ok(rejected)
    }
}

impl Writer {
    async fn savepoint(
        &self,
        conn: &mut PgConnection,
        statement: &'static str,
    ) -> Result<(), WriteError> {
        self.trip();
        savepoint(conn, statement).await
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

async fn savepoint(conn: &mut PgConnection, statement: &'static str) -> Result<(), WriteError> {
    sqlx::query(statement)
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(WriteError::pg(statement))
}

/// Advisory-lock buckets per table: instances writing keys of the same bucket at once
/// take turns. Fixed, because every instance must map a key to the same lock.
const LOCK_BUCKETS: u64 = 16;
/// Above this many bucket locks a batch locks whole tables instead, so a batch over
/// many tables cannot exhaust Postgres' shared lock table.
const MAX_BUCKET_LOCKS: usize = 256;

/// The advisory locks a batch takes, sorted by ID (so two batches cannot deadlock), as
/// (ID, shared). Per table either its table lock exclusively (a truncate, or a batch
/// over many tables), or its table lock shared plus one exclusive lock per key bucket
/// it touches. Exclusive and shared table locks exclude each other, so both kinds of
/// batches are safe against each other.
///
/// Why: the version guard compares with what the statement sees. Without the locks,
/// instance A inserting v5 of an absent row and instance B deleting it at v6 at the
/// same time both see no conflict, and the row comes back at v5 after its delete.
fn lock_ids(batch: &Batch) -> Vec<(i64, bool)> {
    let id = |text: String| {
        let h = fnv1a64(text.as_bytes());
        i64::from_ne_bytes(h.to_ne_bytes())
    };
    let table_lock = |t: &TableName| id(format!("redsink\0{t}"));
    let mut buckets: Vec<(i64, bool)> = Vec::new();
    let mut tables: Vec<(i64, bool)> = Vec::new();
    for t in &batch.tables {
        if t.truncate.is_some() {
            tables.push((table_lock(&t.table.name), false));
            continue;
        }
        tables.push((table_lock(&t.table.name), true));
        // Which buckets the rows touch first, then one lock ID per bucket (not per row).
        let mut used = [false; LOCK_BUCKETS as usize];
        for row in &t.rows {
            let bucket = fnv1a64(row.change.key_text.as_bytes()) % LOCK_BUCKETS;
            used[bucket as usize] = true;
        }
        for (bucket, _) in used.iter().enumerate().filter(|(_, u)| **u) {
            buckets.push((id(format!("redsink\0{}\0{bucket}", t.table.name)), false));
        }
    }
    buckets.sort_unstable();
    buckets.dedup();
    if buckets.len() > MAX_BUCKET_LOCKS {
        buckets.clear();
        for lock in &mut tables {
            lock.1 = false;
        }
    }
    let mut ids = tables;
    ids.extend(buckets);
    ids.sort_unstable();
    ids.dedup_by_key(|(id, _)| *id);
    ids
}

/// A change to write and the batch row it belongs to (for dead-lettering).
type Item<'a> = (&'a RowChange, &'a BatchRow);

/// Changes that one statement can write together: same operation, key and column
/// set, in rounds: round k holds the k-th change of each row's chain, so a row's
/// changes are written in order.
fn groups(rows: &[BatchRow]) -> Vec<Vec<Item<'_>>> {
    let mut out: Vec<Vec<Item<'_>>> = Vec::new();
    let rounds = rows.iter().map(|r| r.before.len() + 1).max().unwrap_or(0);
    for round in 0..rounds {
        let mut index: HashMap<(bool, &[usize], &[usize]), usize> = HashMap::new();
        for row in rows {
            let Some(change) = row.chain().nth(round) else {
                continue;
            };
            let shape = match &change.op {
                RowOp::Delete { .. } => (true, change.key_columns.as_slice(), &[][..]),
                RowOp::Upsert { columns, .. } => {
                    (false, change.key_columns.as_slice(), columns.as_slice())
                }
            };
            match index.get(&shape) {
                Some(&i) => out[i].push((change, row)),
                None => {
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
