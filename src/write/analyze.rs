//! Keeps the planner's statistics of `redsink.tombstones` current. Every upsert probes
//! the tombstones of its rows' keys, and Postgres plans that probe once per connection
//! (generic plans) from the table's statistics. Planned while a table had few
//! tombstones, the probe reads all of them for every row: after a mass delete (100,000
//! tombstones of one table, before autovacuum's next `ANALYZE`) one batch of 4,096
//! upserts took 104 s instead of 0.09 s. So redsink analyzes the table itself: when it
//! starts ([`super::migrate`]) and whenever it has written as many tombstones as the table
//! held at the last analyze (at least [`MIN_DUE`]); an `ANALYZE` makes every session plan
//! its statements again. A role that does not own the table only gets a warning from
//! Postgres. I/O: Postgres.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::PgPool;

use super::WriteError;

/// Tombstones written before the first analyze after start, and at least between two.
pub const MIN_DUE: u64 = 1000;

/// Tombstones written since the last analyze, and how many make the next one due.
#[derive(Debug)]
pub struct Freshness {
    since: AtomicU64,
    due_at: AtomicU64,
}

impl Default for Freshness {
    fn default() -> Self {
        Self {
            since: AtomicU64::new(0),
            due_at: AtomicU64::new(MIN_DUE),
        }
    }
}

impl Freshness {
    /// Counts `written` tombstones; `true` when an analyze is due (the caller runs it
    /// and reports with [`Self::analyzed`]; none is due again until then).
    pub fn note(&self, written: u64) -> bool {
        if written == 0 {
            return false;
        }
        let since = self.since.fetch_add(written, Ordering::Relaxed) + written;
        let due_at = self.due_at.load(Ordering::Relaxed);
        since >= due_at
            && self
                .due_at
                .compare_exchange(due_at, u64::MAX, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The analyze ran (`rows`: the table's size as it found it) or failed (`None`).
    pub fn analyzed(&self, rows: Option<u64>) {
        self.since.store(0, Ordering::Relaxed);
        self.due_at
            .store(rows.unwrap_or(0).max(MIN_DUE), Ordering::Relaxed);
    }
}

/// `ANALYZE redsink.tombstones`; the number of rows it estimates the table holds.
async fn analyze_tombstones(pool: &PgPool) -> Result<u64, WriteError> {
    sqlx::raw_sql("ANALYZE redsink.tombstones")
        .execute(pool)
        .await
        .map_err(WriteError::pg("analyzing redsink.tombstones"))?;
    let rows: f32 = sqlx::query_scalar(
        "SELECT reltuples FROM pg_class WHERE oid = 'redsink.tombstones'::regclass",
    )
    .fetch_one(pool)
    .await
    .map_err(WriteError::pg("reading the size of redsink.tombstones"))?;
    // reltuples is -1 before the first analyze (a role that may not analyze).
    Ok(if rows > 0.0 { rows as u64 } else { 0 })
}

/// [`analyze_tombstones`], a failure only logged (the sync goes on with the statistics
/// it has): the table's size, or `None`.
pub async fn analyze_tombstones_or_warn(pool: &PgPool) -> Option<u64> {
    analyze_tombstones(pool)
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "analyzing redsink.tombstones failed"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_analyze_is_due_once_per_table_size_of_tombstones() {
        let fresh = Freshness::default();
        assert!(!fresh.note(0));
        assert!(!fresh.note(MIN_DUE - 1));
        assert!(fresh.note(1), "the first thousand since start");
        assert!(!fresh.note(MIN_DUE * 10), "not again while one runs");
        fresh.analyzed(Some(50_000));
        assert!(!fresh.note(49_999));
        assert!(fresh.note(1), "as many as the table held");
        fresh.analyzed(None);
        assert!(
            fresh.note(MIN_DUE),
            "a failed analyze: due again at the minimum"
        );
    }
}
