//! Two instances writing one row at the same instant: the row locks make them take turns.

use std::time::{Duration, Instant};

use redsink::batch::{Batch, Batcher};
use redsink::config::MappingConfig;
use redsink::map::Mapping;
use redsink::table::TableName;
use redsink::write::{self, Catalog, Writer};

use crate::common::TestDb;
use crate::{ITEMS, compact_entry, event, item, items, to_change};

/// One instance's catalog and writer, on a pool of its own.
pub(crate) async fn instance(db: &TestDb) -> (Catalog, Writer) {
    let pool = write::connect(&db.postgres(2)).await.expect("pg");
    write::migrate(&pool).await.expect("migrate");
    (Catalog::new(pool.clone()), Writer::new(pool, "redsink"))
}

/// One batch of (key, value) events for public.items, through decode and map.
pub(crate) async fn batch(catalog: &mut Catalog, events: &[(i64, String)]) -> Batch {
    let config: MappingConfig =
        toml::from_str("streams = [\"s\"]\ntable = \"public.items\"").expect("toml");
    let mapping = Mapping::compile(0, &config).expect("mapping");
    let table = catalog
        .table(&TableName::parse("public.items").expect("name"))
        .await
        .expect("table");
    let mut batcher = Batcher::new(100, Duration::from_secs(60));
    for (n, (id, value)) in events.iter().enumerate() {
        let entry = compact_entry(n as u64 + 1, *id, value);
        batcher.push_row(to_change(&mapping, &table, &entry), entry, Instant::now());
    }
    batcher.take()
}

#[tokio::test]
async fn a_delete_racing_an_older_insert_of_the_same_row_wins() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    // Inserting the row named "slow" takes a second, inside the inserting transaction.
    db.exec(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$;
         CREATE TRIGGER slow BEFORE INSERT ON public.items FOR EACH ROW WHEN (NEW.name = 'slow') EXECUTE FUNCTION slow();",
    )
    .await;
    let ((mut catalog_a, a), (mut catalog_b, b)) = (instance(&db).await, instance(&db).await);
    let insert = batch(
        &mut catalog_a,
        &[(1, event("c", 50, "null", &item(1, "slow", "B88=")))],
    )
    .await;
    let delete = batch(
        &mut catalog_b,
        &[(1, event("d", 60, &item(1, "slow", "B88="), "null"))],
    )
    .await;

    // Instance A inserts v50; while its transaction is open, instance B deletes v60.
    let slow = tokio::spawn(async move { a.write(&insert).await.map(|c| c.rows()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let _ = b.write(&delete).await.expect("delete commits");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "B waited for A's transaction"
    );
    slow.await.expect("task").expect("insert commits");

    assert!(
        items(&db).await.is_empty(),
        "the delete is newer: no row may be left"
    );
}
