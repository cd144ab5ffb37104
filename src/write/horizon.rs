//! Collecting what deletes leave behind: the tombstones (`redsink.tombstones`) and
//! truncations (`redsink.truncations`) of a table below its horizon, the lowest version
//! an event of the table could still arrive with (computed by the pipeline from the
//! streams, `pipeline/horizon.rs`). Below it they can never again stop an event, so
//! they go. I/O: Postgres, a bounded number of rows per statement and per call, each
//! statement in its own transaction. Errors: [`WriteError`] (the caller logs it and
//! tries again next round).
//!
//! Only rows written before `written_before` (Postgres' clock, read before the
//! streams were looked at) go: a delete applied while the horizon was being computed
//! may come from an entry the horizon did not see.

use super::{WriteError, Writer};
use crate::map::Version;
use crate::table::TableName;

/// Tombstones removed per statement (one short transaction each).
const PER_STATEMENT: i64 = 1000;

/// A moment by Postgres' clock (its `timestamptz` text, exact to the microsecond).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgClock(String);

/// What one collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    pub tombstones: u64,
    pub truncations: u64,
}

/// The oldest tombstones of `$1` below `$2` (none: all) written before `$3`, at most
/// `$4`, by the index on (table_name, version). The conditions are repeated on the
/// delete, so a tombstone raised meanwhile by another instance stays.
const TOMBSTONES: &str = "DELETE FROM redsink.tombstones d \
     WHERE d.table_name = $1 AND ($2::bytea IS NULL OR d.version < $2) AND d.deleted_at < $3::timestamptz \
     AND d.key IN (SELECT o.key FROM redsink.tombstones o \
       WHERE o.table_name = $1 AND ($2::bytea IS NULL OR o.version < $2) AND o.deleted_at < $3::timestamptz \
       ORDER BY o.version LIMIT $4)";

const TRUNCATIONS: &str = "DELETE FROM redsink.truncations \
     WHERE table_name = $1 AND ($2::bytea IS NULL OR version < $2) AND truncated_at < $3::timestamptz";

impl Writer {
    /// Postgres' clock: tombstones written from now on wait for the next round.
    pub async fn clock(&self) -> Result<PgClock, WriteError> {
        sqlx::query_scalar("SELECT now()::text")
            .fetch_one(&self.pool)
            .await
            .map(PgClock)
            .map_err(WriteError::pg("SELECT now()"))
    }

    /// Removes `table`'s tombstones and truncation below `below` (`None`: no event of
    /// the table can still arrive, all go) written before `written_before`; at most
    /// about `budget` tombstones, the oldest first.
    pub async fn collect(
        &self,
        table: &TableName,
        below: Option<&Version>,
        written_before: &PgClock,
        budget: u64,
    ) -> Result<Collected, WriteError> {
        let name = table.to_string();
        let below = below.map(|v| v.0.as_slice());
        let mut collected = Collected::default();
        while collected.tombstones < budget {
            let removed = sqlx::query(TOMBSTONES)
                .bind(&name)
                .bind(below)
                .bind(&written_before.0)
                .bind(PER_STATEMENT)
                .execute(&self.pool)
                .await
                .map_err(WriteError::pg(format!("collecting tombstones of {table}")))?
                .rows_affected();
            collected.tombstones += removed;
            if removed < PER_STATEMENT.unsigned_abs() {
                break;
            }
        }
        collected.truncations = sqlx::query(TRUNCATIONS)
            .bind(&name)
            .bind(below)
            .bind(&written_before.0)
            .execute(&self.pool)
            .await
            .map_err(WriteError::pg(format!(
                "collecting the truncation of {table}"
            )))?
            .rows_affected();
        Ok(collected)
    }
}
