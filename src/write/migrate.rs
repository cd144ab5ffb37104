//! redsink's own tables: the migrations (`migrations/`, embedded), where they are
//! recorded, and re-creating a table dropped by hand.

use std::sync::LazyLock;

use sqlx::PgPool;
use sqlx::migrate::Migrator;

use super::WriteError;

/// redsink's migrations as `migrations/` holds them.
static EMBEDDED: Migrator = sqlx::migrate!("./migrations");

/// Where redsink records which of its migrations ran: inside its own schema, so that
/// dropping the schema forgets them too (the next start re-creates everything), and so
/// that another application's `public._sqlx_migrations` is never read or written.
/// Older versions kept these rows in `public._sqlx_migrations`; they are left there,
/// and the migrations (idempotent, see [`migrate`]) run once more into this table.
pub const BOOKKEEPING: &str = "redsink._sqlx_migrations";

/// The migrations for redsink's own tables (`migrations/`), recorded in [`BOOKKEEPING`].
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = Migrator::with_migrations(EMBEDDED.iter().cloned().collect());
    migrator.dangerous_set_table_name(BOOKKEEPING);
    migrator.create_schema("redsink");
    migrator
});

/// redsink's own tables, which a role without `CREATE` needs the owner to migrate.
pub const INTERNAL_TABLES: [&str; 8] = [
    "redsink.checkpoints",
    "redsink.tombstones",
    "redsink.truncations",
    "redsink.tx_events",
    "redsink.tx_progress",
    "redsink.tx_late",
    "redsink.tx_applied",
    "redsink.tx_leader",
];

/// Applies `migrations/` (advisory-locked, so concurrent instances are safe). A role
/// that may not create tables (least privilege) goes on when the owner has already
/// created redsink's tables (`redsink migrate` as the owner), with a warning.
///
/// A table of [`INTERNAL_TABLES`] dropped by hand while [`BOOKKEEPING`] still lists its
/// migration is re-created: the bookkeeping is cleared and the migrations run again.
/// That is safe because every migration is idempotent (`IF NOT EXISTS`; a unit test
/// holds every file to it).
pub async fn migrate(pool: &PgPool) -> Result<(), WriteError> {
    run_migrations(pool).await?;
    if internal_tables_present(pool).await? {
        // Statistics as current as the tombstones, before any statement is planned.
        super::analyze::analyze_tombstones_or_warn(pool).await;
        return Ok(());
    }
    tracing::warn!(
        bookkeeping = BOOKKEEPING,
        "redsink's tables are incomplete although migrated (dropped by hand?): re-creating them"
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {BOOKKEEPING}")))
        .execute(pool)
        .await
        .map_err(WriteError::pg(format!("clearing {BOOKKEEPING}")))?;
    run_migrations(pool).await
}

/// One run of [`MIGRATOR`], with the least-privilege fallback of [`migrate`].
async fn run_migrations(pool: &PgPool) -> Result<(), WriteError> {
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

#[cfg(test)]
mod tests {
    /// The first statement of `sql` that could fail or change something when run twice.
    fn not_idempotent(sql: &str) -> Option<String> {
        let sql: String = sql
            .lines()
            .map(|l| l.split("--").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ");
        // A function's dollar-quoted body is one statement's part, whatever it holds.
        let sql: String = sql
            .split("$$")
            .enumerate()
            .map(|(i, part)| if i % 2 == 1 { "$$ body $$" } else { part })
            .collect();
        sql.split(';')
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|s| !s.is_empty())
            .find(|statement| {
                let upper = statement.to_ascii_uppercase();
                let safe = (upper.starts_with("CREATE ") && upper.contains(" IF NOT EXISTS "))
                    || upper.starts_with("CREATE OR REPLACE ")
                    || (upper.starts_with("ALTER TABLE ")
                        && upper.contains(" ADD COLUMN IF NOT EXISTS ")
                        && !upper.contains(" DROP "));
                !safe
            })
    }

    /// Every statement of every migration may run twice: [`super::migrate`] re-runs
    /// them to re-create a dropped table, and after an upgrade from the bookkeeping in
    /// `public`.
    #[test]
    fn every_migration_is_idempotent() {
        for migration in super::EMBEDDED.iter() {
            if let Some(statement) = not_idempotent(migration.sql.as_str()) {
                panic!(
                    "migration {} is not idempotent: `{statement}`: use IF NOT EXISTS",
                    migration.version
                );
            }
        }
        assert_eq!(
            not_idempotent("CREATE TABLE IF NOT EXISTS a (x int); -- ok"),
            None
        );
        for bad in [
            "CREATE SCHEMA IF NOT EXISTS r; CREATE TABLE r.a (x int)",
            "ALTER TABLE r.a ADD COLUMN y int",
            "INSERT INTO r.a VALUES (1)",
        ] {
            assert!(not_idempotent(bad).is_some(), "{bad}");
        }
    }
}
