//! A database of its own per test, and waiting for rows in it.

use std::time::Duration;

use sqlx::PgPool;

use super::{pg_admin_url, unique, wait_for};

/// A database of its own, dropped when the test ends (also on panic).
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> Self {
        let name = unique("t");
        let admin = PgPool::connect(&pg_admin_url())
            .await
            .expect("connect to the admin database");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let base = pg_admin_url();
        let url = match base.rsplit_once('/') {
            Some((head, _)) => format!("{head}/{name}"),
            None => panic!("bad postgres url {base}"),
        };
        let pool = PgPool::connect(&url)
            .await
            .expect("connect to the test database");
        Self { name, url, pool }
    }

    /// A `[postgres]` config of this database: every default, a pool of `pool_size`.
    pub fn postgres(&self, pool_size: u32) -> redsink::config::PostgresConfig {
        redsink::config::PostgresConfig {
            url: self.url.clone(),
            pool_size,
            ..Default::default()
        }
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop the database from a thread and runtime of its own: Drop cannot await, and
        // the test's runtime is blocked here. FORCE ends the test pool's connections.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(admin) = PgPool::connect(&pg_admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await;
                }
            });
        })
        .join();
    }
}

/// Drops a role a test created (roles belong to the whole server): what it owns and its
/// privileges in `db`, then `db`, then the role.
pub async fn drop_role(db: TestDb, role: &str) {
    db.exec(&format!("DROP OWNED BY {role}")).await;
    drop(db);
    let admin = PgPool::connect(&pg_admin_url()).await.expect("admin");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
        .execute(&admin)
        .await
        .expect("drop role");
}

/// Waits until `table` has more than `rows` rows.
pub async fn wait_rows(db: &TestDb, table: &str, rows: i64) {
    let sql = format!("SELECT count(*) FROM {table}");
    wait_for(
        &format!("more than {rows} rows in {table}"),
        Duration::from_secs(60),
        || {
            let (pool, sql) = (db.pool.clone(), sql.clone());
            async move {
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0)
                    > rows
            }
        },
    )
    .await;
}
