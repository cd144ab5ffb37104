//! The writer's transaction in one round trip, for a batch of several statements (many
//! tables, or several row shapes): `BEGIN` + the advisory locks, every statement
//! (prepared by name, values as literals: [`super::prepared`]), the checkpoints +
//! `COMMIT`, as one simple query. The statements run in the batch's order (a table's
//! truncate, then its groups of rows, table after table): the committer of transaction
//! mode relies on it for foreign keys.
//! I/O: Postgres, each round trip counted by [`Writer::trip`].
//! Errors: as Postgres returns them, classified by [`WriteError::class`].

use sqlx::{PgConnection, Row as _};

use super::staging::{self, TxFinish};
use super::writer::{self, Writer};
use super::{WriteError, locks, prepared, sql};
use crate::batch::Batch;

impl Writer {
    /// The whole transaction as one simple query, one round trip: `BEGIN` + the advisory
    /// locks (+ the fence), the batch's statements ([`prepared::plan`]: every table's, in
    /// the batch's order), the checkpoints + `COMMIT`. Postgres runs them in order and
    /// stops at the first error, which comes back as it is (a data error makes
    /// [`Writer::write`] isolate; the fence's is recognised by [`super::is_fenced`]),
    /// the connection left in the failed transaction (closed by the writer).
    /// When the connection lacks a prepared statement: `ROLLBACK` and the list of those
    /// it has, then the batch again behind the missing `PREPARE`s (3 round trips more).
    /// `Ok(false)` (rolled back, nothing written) when that fails on the prepared
    /// statements again (a transaction-pooling proxy between us and Postgres moves them
    /// between server connections): the caller writes the batch with bound parameters,
    /// and so does this writer (and its clones) from then on.
    pub(super) async fn at_once(
        &self,
        tx: &mut PgConnection,
        batch: &Batch,
        finish: Option<&TxFinish>,
        plan: &prepared::Plan,
    ) -> Result<bool, WriteError> {
        let first = match self.send(tx, batch, finish, "", &plan.statements).await {
            Err(e) if prepared::is_missing(&e) => {
                self.trip();
                let have: Vec<String> = sqlx::raw_sql(sqlx::AssertSqlSafe(prepared::LIST_SQL))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(WriteError::pg("listing the prepared statements"))?
                    .iter()
                    .filter_map(|row| row.try_get(0).ok())
                    .collect();
                let prelude = prepared::prelude(plan, &have);
                self.send(tx, batch, finish, &prelude, &plan.statements)
                    .await
            }
            other => other,
        };
        match first {
            Ok(()) => Ok(true),
            Err(e) if prepared::is_unusable(&e) => {
                self.unprepared
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(error = %e, "statements prepared by name are unusable on this connection (a transaction-pooling proxy?): writing every batch with bound parameters from now on");
                self.trip();
                sqlx::raw_sql("ROLLBACK")
                    .execute(&mut *tx)
                    .await
                    .map_err(WriteError::pg("ROLLBACK"))?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// [`Self::at_once`]'s query behind `prelude`. Staged events (transaction mode) are
    /// bound parameters: then 3 round trips, the staging in the middle.
    async fn send(
        &self,
        tx: &mut PgConnection,
        batch: &Batch,
        finish: Option<&TxFinish>,
        prelude: &str,
        statements: &str,
    ) -> Result<(), WriteError> {
        let mut sql = prelude.to_string();
        sql.push_str(&sql::begin_sql(&locks::lock_ids(batch)));
        if let Some(finish) = finish {
            sql.push_str(&staging::fence_sql(&self.group, finish)?);
        }
        sql.push_str(";\n");
        sql.push_str(statements);
        let what = format!(
            "BEGIN, the row locks and the statements of {} tables",
            batch.tables.len()
        );
        if !batch.staged.is_empty() {
            self.trip();
            sqlx::raw_sql(sqlx::AssertSqlSafe(std::mem::take(&mut sql)))
                .execute(&mut *tx)
                .await
                .map_err(WriteError::pg(what.clone()))?;
            self.trip();
            staging::stage(tx, &self.group, &batch.staged).await?;
        }
        if let Some(finish) = finish {
            sql.push_str(&staging::finish_sql(&self.group, finish)?);
        }
        sql.push_str(&sql::commit_sql(&self.group, &batch.checkpoints)?);
        self.trip();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(WriteError::pg(if batch.staged.is_empty() {
                format!("{what}, the checkpoints and COMMIT")
            } else {
                "moving the checkpoints and COMMIT".into()
            }))?;
        Ok(())
    }
}

/// Whether a batch has more than one statement to send (tables, row shapes, truncates):
/// only then is the one-round-trip query worth its literals. With one statement, bound
/// parameters in 3 round trips measured as fast or faster on this machine (the one-table
/// insert and update workloads, docs/BENCHMARKS.md 2026-11-28): Postgres reads binary
/// arrays faster than it parses text ones, and a local round trip costs little.
pub(super) fn several_statements(batch: &Batch) -> bool {
    match batch.tables.as_slice() {
        [] => false,
        [table] => {
            let statements =
                usize::from(table.truncate.is_some()) + usize::from(!table.rows.is_empty());
            statements > 1 || writer::several_groups(&table.rows)
        }
        _ => true,
    }
}
