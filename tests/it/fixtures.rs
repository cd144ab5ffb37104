//! The real Debezium 3.6 capture (tests/fixtures/debezium), with and without schemas.

use crate::common::{self, TestDb};

/// The capture's entries with the stream prefix `dbserver1` replaced by `prefix`.
async fn feed(prefix: &str, file: &str) -> Vec<String> {
    let path = format!(
        "{}/tests/fixtures/debezium/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("fixture");
    let mut r = common::redis().await;
    let mut streams = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        let stream = v["stream"]
            .as_str()
            .expect("stream")
            .replacen("dbserver1", prefix, 1);
        for (k, val) in v["fields"].as_object().expect("fields") {
            common::xadd(&mut r, &stream, k, val.as_str().expect("string")).await;
        }
        if !streams.contains(&stream) {
            streams.push(stream);
        }
    }
    streams
}

async fn sync_capture(file: &str) -> TestDb {
    let db = TestDb::new().await;
    let ddl = std::fs::read_to_string(format!(
        "{}/config/demo/replica.sql",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("ddl");
    db.exec(&ddl).await;
    let prefix = common::unique("cap");
    let streams = feed(&prefix, file).await;
    let mapping = format!(
        "[[mapping]]\nstreams = [\"{prefix}.inventory.*\"]\ntable = \"inventory.${{source.table}}\"\n"
    );
    let stats = common::sync(common::config(&db, "c1", &mapping), &streams).await;
    assert_eq!(stats.dead_lettered, 0, "{file}: {stats:?}");
    assert_eq!(stats.read, 13);
    common::cleanup_streams(&prefix).await;
    db
}

async fn check(db: &TestDb, file: &str) {
    let ok: bool = sqlx::query_scalar(
        "SELECT name = 'scooter' AND description = 'small 2-wheel scooter' AND weight = 3.14
            AND price = 24.50 AND size = 'L' AND tags = '{toy,outdoor}' AND attrs = '{\"color\":\"blue\"}'
            AND created_on = '2026-01-15' AND updated_at = '2026-01-15 10:00:00.123456+09'
            AND restock_at = '2026-02-01 08:30:00' AND cutoff = '17:45:00.5'
            AND sku = '0e6bd1b2-3c2a-4d8e-9d5e-2f9c1f0a7b11' AND photo = '\\xdeadbeef'
            AND ratio = 12.3456789 AND lead_time = '2 days 03:00:00' AND flags = '1010'
            AND ip = '10.1.2.3' AND length(manual) = 9600
         FROM inventory.products WHERE id = 1",
    )
    .fetch_one(&db.pool)
    .await
    .expect("products row");
    assert!(ok, "{file}: products row differs from the source");
    let customers: Vec<(i32, String, String)> =
        sqlx::query_as("SELECT id, email, left(bio, 9) FROM inventory.customers ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .expect("customers");
    assert_eq!(
        customers,
        vec![(1001, "sally.t@example.com".into(), "long bio ".into())],
        "{file}"
    );
    let lines: Vec<(i32, i32, i32)> =
        sqlx::query_as("SELECT order_id, line, qty FROM inventory.order_lines ORDER BY 1, 2")
            .fetch_all(&db.pool)
            .await
            .expect("order lines");
    // The capture ends with a truncate of order_lines (after a primary-key change).
    assert_eq!(lines, vec![], "{file}");
}

#[tokio::test]
async fn the_capture_without_schemas_lands_exactly() {
    let db = sync_capture("inventory_schemaless.jsonl").await;
    check(&db, "schemaless").await;
}

#[tokio::test]
async fn the_capture_with_schemas_lands_exactly() {
    let db = sync_capture("inventory_with_schemas.jsonl").await;
    check(&db, "with schemas").await;
}
