//! redsink's own schema: its migration bookkeeping lives in `redsink._sqlx_migrations`,
//! so a dropped `redsink` schema (or a dropped internal table) is re-created, another
//! application's `public._sqlx_migrations` is left alone, and a database migrated by an
//! older redsink (bookkeeping in `public._sqlx_migrations`) keeps working.

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::common::{self, TestDb};
use crate::{ITEMS, items_mapping};

/// `(version, checksum)` rows of `public._sqlx_migrations`, in order.
async fn public_bookkeeping(db: &TestDb) -> Vec<(i64, Vec<u8>)> {
    sqlx::query_as("SELECT version, checksum FROM public._sqlx_migrations ORDER BY version")
        .fetch_all(&db.pool)
        .await
        .expect("read public._sqlx_migrations")
}

#[tokio::test]
async fn a_dropped_redsink_schema_is_recreated_and_the_sync_goes_on() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mapping = items_mapping(&prefix);
    crate::add_items(&stream, 2).await;
    common::sync(
        common::config(&db, "c1", &mapping),
        std::slice::from_ref(&stream),
    )
    .await;
    db.exec("DROP SCHEMA redsink CASCADE").await;
    crate::add_items(&stream, 3).await;
    let stats = common::sync(
        common::config(&db, "c1", &mapping),
        std::slice::from_ref(&stream),
    )
    .await;
    assert_eq!(stats.rows_written, 3);
    assert_eq!(crate::items(&db).await.len(), 3);
    let present = redsink::write::internal_tables_present(&db.pool)
        .await
        .expect("look");
    assert!(present, "redsink's tables are back");
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn a_dropped_internal_table_is_recreated() {
    let db = TestDb::new().await;
    redsink::write::migrate(&db.pool).await.expect("migrate");
    db.exec("INSERT INTO redsink.checkpoints VALUES ('g', 's', '1-0', 1, 0, now())")
        .await;
    db.exec("DROP TABLE redsink.tombstones").await;
    redsink::write::migrate(&db.pool)
        .await
        .expect("migrate again");
    let present = redsink::write::internal_tables_present(&db.pool)
        .await
        .expect("look");
    assert!(present, "redsink.tombstones is back");
    let checkpoints = redsink::write::checkpoints(&db.pool).await.expect("read");
    assert_eq!(checkpoints.len(), 1, "the other tables keep their rows");
}

#[tokio::test]
async fn another_apps_sqlx_migrations_are_left_alone() {
    let db = TestDb::new().await;
    // An application that uses sqlx migrations in the same database, before redsink.
    let app = Migrator::with_migrations(vec![Migration::new(
        1,
        "app".into(),
        MigrationType::Simple,
        "CREATE TABLE public.app_things (id int PRIMARY KEY)".into_sql_str(),
        false,
    )]);
    app.run(&db.pool).await.expect("the app migrates");
    let before = public_bookkeeping(&db).await;
    redsink::write::migrate(&db.pool)
        .await
        .expect("redsink migrates next to the app");
    redsink::write::migrate(&db.pool)
        .await
        .expect("and again (a restart)");
    assert_eq!(
        public_bookkeeping(&db).await,
        before,
        "the app's table is untouched"
    );
    app.run(&db.pool).await.expect("the app still migrates");
    let present = redsink::write::internal_tables_present(&db.pool)
        .await
        .expect("look");
    assert!(present);
}

#[tokio::test]
async fn a_database_migrated_by_an_older_redsink_keeps_working() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    // An older redsink kept its bookkeeping in public._sqlx_migrations.
    let old = Migrator::with_migrations(redsink::write::MIGRATOR.iter().cloned().collect());
    old.run(&db.pool).await.expect("the old layout");
    let before = public_bookkeeping(&db).await;
    assert_eq!(before.len(), redsink::write::MIGRATOR.iter().count());
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    crate::add_items(&stream, 2).await;
    let config = common::config(&db, "c1", &items_mapping(&prefix));
    let stats = common::sync(config, std::slice::from_ref(&stream)).await;
    assert_eq!(stats.rows_written, 2);
    let checkpoints = redsink::write::checkpoints(&db.pool).await.expect("read");
    assert_eq!(checkpoints.len(), 1);
    redsink::write::migrate(&db.pool)
        .await
        .expect("migrate again");
    assert_eq!(
        redsink::write::checkpoints(&db.pool).await.expect("read"),
        checkpoints,
        "nothing was re-created empty"
    );
    assert_eq!(
        public_bookkeeping(&db).await,
        before,
        "the old rows are left as they were"
    );
    common::cleanup_streams(&prefix).await;
}
