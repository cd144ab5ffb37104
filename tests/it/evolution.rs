//! Basic schema evolution: tables created and columns added from the JSON converter's
//! schema.

use crate::common::{self, TestDb};
use crate::key;

/// An envelope with the JSON converter's schema, for `fields` (name, Connect type).
fn with_schema(fields: &[(&str, &str)], after: &str, lsn: u64) -> String {
    let row: Vec<String> = fields
        .iter()
        .map(|(name, ty)| {
            let optional = *name != "id";
            format!(r#"{{"type":"{ty}","optional":{optional},"field":"{name}"}}"#)
        })
        .collect();
    let row = row.join(",");
    format!(
        r#"{{"schema":{{"type":"struct","name":"t.Envelope","fields":[{{"type":"struct","optional":true,"name":"t.Value","field":"before","fields":[{row}]}},{{"type":"struct","optional":true,"name":"t.Value","field":"after","fields":[{row}]}},{{"type":"string","optional":false,"field":"op"}}]}},"payload":{{"before":null,"after":{after},"source":{{"connector":"postgresql","db":"t","schema":"public","table":"gadgets","lsn":{lsn}}},"op":"c"}}}}"#
    )
}

#[tokio::test]
async fn basic_schema_evolution_creates_the_table_and_adds_columns() {
    let db = TestDb::new().await;
    db.exec("CREATE SCHEMA evo").await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:gadgets");
    let mut r = common::redis().await;
    let first = with_schema(
        &[("id", "int32"), ("name", "string")],
        r#"{"id":1,"name":"a"}"#,
        10,
    );
    let second = with_schema(
        &[("id", "int32"), ("name", "string"), ("qty", "int64")],
        r#"{"id":2,"name":"b","qty":5}"#,
        20,
    );
    common::xadd(&mut r, &stream, &key(1), &first).await;
    common::xadd(&mut r, &stream, &key(2), &second).await;
    let mapping = format!(
        "[[mapping]]\nstreams = [\"{prefix}:*\"]\ntable = \"evo.${{source.table}}\"\nschema_evolution = \"basic\"\n"
    );
    let stats = common::sync(
        common::config(&db, "c1", &mapping),
        std::slice::from_ref(&stream),
    )
    .await;
    assert_eq!(stats.dead_lettered, 0);
    let rows: Vec<(i32, Option<String>, Option<i64>)> =
        sqlx::query_as("SELECT id, name, qty FROM evo.gadgets ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .expect("the table was created");
    assert_eq!(
        rows,
        vec![(1, Some("a".into()), None), (2, Some("b".into()), Some(5))]
    );
    let pk: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
         AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'evo.gadgets'::regclass AND i.indisprimary",
    )
    .fetch_all(&db.pool)
    .await
    .expect("pk");
    assert_eq!(pk, vec!["id".to_string()]);
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn schema_evolution_creates_a_fixed_table_that_is_missing_at_start() {
    let db = TestDb::new().await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:gadgets");
    let mut r = common::redis().await;
    let event = with_schema(
        &[("id", "int32"), ("name", "string")],
        r#"{"id":7,"name":"g"}"#,
        10,
    );
    common::xadd(&mut r, &stream, &key(7), &event).await;
    let mapping = format!(
        "[[mapping]]\nstreams = [\"{prefix}:*\"]\ntable = \"public.made_here\"\nschema_evolution = \"basic\"\n"
    );
    let stats = common::sync(
        common::config(&db, "c1", &mapping),
        std::slice::from_ref(&stream),
    )
    .await;
    assert_eq!(stats.rows_written, 1);
    let name: String = sqlx::query_scalar("SELECT name FROM public.made_here WHERE id = 7")
        .fetch_one(&db.pool)
        .await
        .expect("created at the first event");
    assert_eq!(name, "g");
    common::cleanup_streams(&prefix).await;
}

/// A field whose schema type is no type (`strin`) cannot become a column: the event is
/// dead-lettered for that, naming the column and the type, instead of the table being
/// created without the column and the event failing on "no such column".
#[tokio::test]
async fn a_schema_type_that_is_no_type_is_dead_lettered_with_its_own_reason() {
    let db = TestDb::new().await;
    db.exec("CREATE SCHEMA evo").await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:gadgets");
    let mut r = common::redis().await;
    let bad = with_schema(
        &[("id", "int32"), ("name", "string"), ("bar", "strin")],
        r#"{"id":1,"name":"a","bar":"x"}"#,
        10,
    );
    let good = with_schema(
        &[("id", "int32"), ("name", "string")],
        r#"{"id":2,"name":"b"}"#,
        20,
    );
    let bad_id = common::xadd(&mut r, &stream, &key(1), &bad).await;
    common::xadd(&mut r, &stream, &key(2), &good).await;
    let mapping = format!(
        "[[mapping]]\nstreams = [\"{prefix}:*\"]\ntable = \"evo.${{source.table}}\"\nschema_evolution = \"basic\"\n"
    );
    let stats = common::sync(
        common::config(&db, "c1", &mapping),
        std::slice::from_ref(&stream),
    )
    .await;
    assert_eq!(stats.dead_lettered, 1);
    let dlq = common::dead_letters(&mut r, &stream).await;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].1["redsink.entry_id"], bad_id);
    let reason = &dlq[0].1["redsink.error"];
    assert!(
        reason.contains("column bar")
            && reason.contains("`strin`")
            && !reason.contains("no such column"),
        "{reason}"
    );
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM evo.gadgets ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("the good event created the table");
    assert_eq!(names, vec!["b".to_string()]);
    common::cleanup_streams(&prefix).await;
}
