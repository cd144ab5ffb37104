//! The sync path: create/update/delete/read, replays, reordering, resurrection.

use crate::common::{self, TestDb};
use crate::{ITEMS, P_19_99, P_24_50, event, fingerprint, item, items, items_mapping, key};

// Prices as Debezium sends numeric(10,2) without schemas: base64 unscaled.

#[tokio::test]
async fn applies_reads_creates_updates_and_deletes_then_acks() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    crate::add_change(
        &mut r,
        &stream,
        1,
        "r",
        10,
        "null",
        &item(1, "snap", P_19_99),
    )
    .await;
    crate::add_change(
        &mut r,
        &stream,
        2,
        "c",
        20,
        "null",
        &item(2, "new", P_19_99),
    )
    .await;
    crate::add_change(
        &mut r,
        &stream,
        1,
        "u",
        30,
        "null",
        &item(1, "changed", P_24_50),
    )
    .await;
    crate::add_change(
        &mut r,
        &stream,
        3,
        "c",
        40,
        "null",
        &item(3, "gone", P_19_99),
    )
    .await;
    crate::add_change(
        &mut r,
        &stream,
        3,
        "d",
        50,
        &item(3, "gone", P_19_99),
        "null",
    )
    .await;
    common::xadd(&mut r, &stream, &key(3), "default").await; // tombstone
    let last = crate::add_change(
        &mut r,
        &stream,
        2,
        "u",
        60,
        "null",
        &item(2, "newer", P_24_50),
    )
    .await;

    let stats = common::sync(
        common::config(&db, "c1", &items_mapping(&prefix)),
        std::slice::from_ref(&stream),
    )
    .await;

    assert_eq!(
        items(&db).await,
        vec![
            (1, Some("changed".into()), Some("24.50".into()), Some(1)),
            (2, Some("newer".into()), Some("24.50".into()), Some(2)),
        ]
    );
    assert_eq!(stats.read, 7);
    assert_eq!(stats.skipped, 1, "the tombstone");
    assert_eq!(stats.dead_lettered, 0);
    assert_eq!(common::pending(&mut r, &stream, "redsink").await, 0);
    assert!(
        common::consumers(&mut r, &stream, "redsink")
            .await
            .is_empty(),
        "a clean shutdown leaves the group"
    );
    let checkpoint: String = sqlx::query_scalar(
        "SELECT last_id FROM redsink.checkpoints WHERE consumer_group = 'redsink' AND stream = $1",
    )
    .bind(&stream)
    .fetch_one(&db.pool)
    .await
    .expect("a checkpoint row");
    assert_eq!(checkpoint, last);
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn replaying_the_same_entries_changes_nothing() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    let events = [
        (1, event("c", 10, "null", &item(1, "a", P_19_99))),
        (2, event("c", 11, "null", &item(2, "b", P_19_99))),
        (1, event("u", 12, "null", &item(1, "a2", P_24_50))),
        (2, event("d", 13, &item(2, "b", P_19_99), "null")),
    ];
    for (id, e) in &events {
        common::xadd(&mut r, &stream, &key(*id), e).await;
    }
    let config = common::config(&db, "c1", &items_mapping(&prefix));
    common::sync(config.clone(), std::slice::from_ref(&stream)).await;
    let before = (items(&db).await, fingerprint(&db).await);

    // The producer sends everything again (Debezium Server is at-least-once) ...
    for (id, e) in &events {
        common::xadd(&mut r, &stream, &key(*id), e).await;
    }
    common::sync(config.clone(), std::slice::from_ref(&stream)).await;
    // ... and the group is rewound to the start and replays all of it.
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(&stream)
        .arg("redsink")
        .arg("0")
        .query_async(&mut r)
        .await
        .expect("SETID");
    common::sync(config, std::slice::from_ref(&stream)).await;

    assert_eq!(
        (items(&db).await, fingerprint(&db).await),
        before,
        "rows, versions and xmin unchanged"
    );
    assert_eq!(
        before.0,
        vec![(1, Some("a2".into()), Some("24.50".into()), Some(1))]
    );
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn an_older_version_arriving_later_is_ignored() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    // Two shards: the newer change lands and is applied before the older one.
    let (s1, s2) = (format!("{prefix}:items:1"), format!("{prefix}:items:2"));
    let mapping =
        format!("[[mapping]]\nstreams = [\"{prefix}:items:{{1..2}}\"]\ntable = \"public.items\"\n");
    let config = common::config(&db, "c1", &mapping);
    let mut r = common::redis().await;
    crate::add_change(&mut r, &s1, 1, "u", 200, "null", &item(1, "newer", P_24_50)).await;
    common::sync(config.clone(), &[s1.clone(), s2.clone()]).await;
    crate::add_change(&mut r, &s2, 1, "u", 100, "null", &item(1, "older", P_19_99)).await;
    common::sync(config.clone(), &[s1.clone(), s2.clone()]).await;
    assert_eq!(
        items(&db).await,
        vec![(1, Some("newer".into()), Some("24.50".into()), Some(1))]
    );

    // Both in one batch, older last: coalescing keeps the newer one too.
    crate::add_change(&mut r, &s1, 2, "u", 400, "null", &item(2, "newer", P_24_50)).await;
    crate::add_change(&mut r, &s2, 2, "u", 300, "null", &item(2, "older", P_19_99)).await;
    common::sync(config, &[s1, s2]).await;
    assert_eq!(
        items(&db).await[1],
        (2, Some("newer".into()), Some("24.50".into()), Some(2))
    );
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn a_delete_is_not_undone_by_an_older_change_arriving_later() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let config = common::config(&db, "c1", &items_mapping(&prefix));
    let mut r = common::redis().await;
    crate::add_change(&mut r, &stream, 1, "c", 10, "null", &item(1, "a", P_19_99)).await;
    crate::add_change(&mut r, &stream, 1, "d", 30, &item(1, "a", P_19_99), "null").await;
    common::sync(config.clone(), std::slice::from_ref(&stream)).await;
    assert!(items(&db).await.is_empty());

    // A late update older than the delete, in a batch of its own: the tombstone stops it.
    crate::add_change(
        &mut r,
        &stream,
        1,
        "u",
        20,
        "null",
        &item(1, "zombie", P_24_50),
    )
    .await;
    // A delete of a row never seen, then its older create, in one batch.
    common::xadd(&mut r, &stream, &key(2), &event("d", 60, "null", "null")).await;
    crate::add_change(
        &mut r,
        &stream,
        2,
        "c",
        50,
        "null",
        &item(2, "zombie", P_19_99),
    )
    .await;
    common::sync(config.clone(), std::slice::from_ref(&stream)).await;
    assert!(
        items(&db).await.is_empty(),
        "deleted rows stay deleted: {:?}",
        items(&db).await
    );

    // A newer create after the delete brings the row back, as at the source.
    crate::add_change(
        &mut r,
        &stream,
        1,
        "c",
        40,
        "null",
        &item(1, "reborn", P_19_99),
    )
    .await;
    common::sync(config, std::slice::from_ref(&stream)).await;
    assert_eq!(
        items(&db).await,
        vec![(1, Some("reborn".into()), Some("19.99".into()), Some(1))]
    );
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn a_missing_table_stops_the_pipeline_with_a_clear_error() {
    let db = TestDb::new().await;
    let prefix = common::unique("s");
    let config = common::config(&db, "c1", &items_mapping(&prefix));
    let err = redsink::pipeline::run(config, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("no table");
    let text = err.to_string();
    assert!(
        text.contains("public.items") && text.contains("does not exist"),
        "{text}"
    );
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn a_table_without_a_matching_unique_key_is_reported() {
    let db = TestDb::new().await;
    db.exec("CREATE TABLE public.items (id int, name text)")
        .await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    crate::add_change(
        &mut r,
        &stream,
        1,
        "c",
        10,
        "null",
        r#"{"id":1,"name":"x"}"#,
    )
    .await;
    let config = common::config(&db, "c1", &items_mapping(&prefix));
    let err = redsink::pipeline::run(config, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("no key");
    let text = err.to_string();
    assert!(
        text.contains(&stream) && text.contains("no primary key or unique index on (id)"),
        "{text}"
    );
    assert_eq!(
        common::pending(&mut r, &stream, "redsink").await,
        1,
        "nothing acked"
    );
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn a_truncate_removes_older_rows_and_keeps_older_events_out() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let truncate = r#"{"before":null,"after":null,"source":{"connector":"postgresql","schema":"public","table":"items","lsn":50},"op":"t"}"#;
    let mut r = common::redis().await;
    crate::add_change(
        &mut r,
        &stream,
        1,
        "c",
        10,
        "null",
        &item(1, "old", P_19_99),
    )
    .await;
    crate::add_change(
        &mut r,
        &stream,
        2,
        "c",
        60,
        "null",
        &item(2, "newer", P_19_99),
    )
    .await;
    common::xadd(&mut r, &stream, "default", truncate).await;
    let config = common::config(&db, "c1", &items_mapping(&prefix));
    common::sync(config.clone(), std::slice::from_ref(&stream)).await;
    assert_eq!(
        items(&db).await,
        vec![(2, Some("newer".into()), Some("19.99".into()), Some(2))]
    );

    // An event older than the truncate, arriving later, stays out; a newer one goes in.
    crate::add_change(
        &mut r,
        &stream,
        3,
        "c",
        40,
        "null",
        &item(3, "late", P_19_99),
    )
    .await;
    crate::add_change(
        &mut r,
        &stream,
        4,
        "c",
        70,
        "null",
        &item(4, "new", P_19_99),
    )
    .await;
    common::sync(config, std::slice::from_ref(&stream)).await;
    let ids: Vec<i32> = items(&db).await.into_iter().map(|r| r.0).collect();
    assert_eq!(ids, vec![2, 4]);

    // With truncate = "skip" the table is left alone.
    let skip = format!("{}truncate = \"skip\"\n", items_mapping(&prefix));
    common::xadd(
        &mut r,
        &stream,
        "default",
        &truncate.replace("\"lsn\":50", "\"lsn\":90"),
    )
    .await;
    let stats = common::sync(
        common::config(&db, "c1", &skip),
        std::slice::from_ref(&stream),
    )
    .await;
    assert_eq!(stats.skipped, 1);
    assert_eq!(items(&db).await.len(), 2);
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn a_key_change_onto_another_unique_key_keeps_the_new_row_in_any_arrival_order() {
    // The source changes a primary key (d old id + c new id, at one LSN) while the
    // replica's key is the unique name: both events are the same replica row.
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE public.items (id int, name varchar(12) UNIQUE, price numeric(10,2), qty int)",
    )
    .await;
    let prefix = common::unique("s");
    let mapping = format!(
        "[[mapping]]\nstreams = [\"{prefix}:items:*\"]\ntable = \"public.items\"\nkey = [\"name\"]\n"
    );
    let config = common::config(&db, "c1", &mapping);
    let mut r = common::redis().await;
    for (name, order) in [("first", ["d", "c"]), ("later", ["c", "d"])] {
        let stream = format!("{prefix}:items:{name}");
        crate::add_change(&mut r, &stream, 1, "c", 10, "null", &item(1, name, P_19_99)).await;
        for op in order {
            let value = match op {
                "d" => event("d", 20, &item(1, name, P_19_99), "null"),
                _ => event("c", 20, "null", &item(2, name, P_24_50)),
            };
            common::xadd(&mut r, &stream, &key(if op == "d" { 1 } else { 2 }), &value).await;
        }
        common::sync(config.clone(), std::slice::from_ref(&stream)).await;
    }
    let rows: Vec<(i32, String)> =
        sqlx::query_as("SELECT id, name FROM public.items ORDER BY name")
            .fetch_all(&db.pool)
            .await
            .expect("rows");
    assert_eq!(rows, vec![(2, "first".into()), (2, "later".into())]);
    common::cleanup_streams(&prefix).await;
}

/// Stream names are interpolated as literals into the statement that opens each
/// transaction: quotes and backslashes must come back exactly.
#[tokio::test]
async fn checkpoints_keep_stream_names_with_quotes_and_backslashes() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!(r"{prefix}:it's\items");
    let mut r = common::redis().await;
    crate::add_change(&mut r, &stream, 1, "c", 10, "null", &item(1, "a", P_19_99)).await;
    let last = crate::add_change(&mut r, &stream, 2, "c", 11, "null", &item(2, "b", P_19_99)).await;
    let mapping = format!(
        "[[mapping]]\nstreams = [{}]\ntable = \"public.items\"\n",
        toml_string(&stream)
    );
    let stats = common::sync(
        common::config(&db, "c1", &mapping),
        std::slice::from_ref(&stream),
    )
    .await;
    assert_eq!(stats.rows_written, 2);
    assert_eq!(
        stats.pg_round_trips,
        3 * stats.batches,
        "BEGIN+locks+checkpoints, one statement, COMMIT"
    );
    let checkpoint: String = sqlx::query_scalar(
        "SELECT last_id FROM redsink.checkpoints WHERE consumer_group = 'redsink' AND stream = $1",
    )
    .bind(&stream)
    .fetch_one(&db.pool)
    .await
    .expect("a checkpoint row under the exact stream name");
    assert_eq!(checkpoint, last);
    common::cleanup_streams(&prefix).await;
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Events flattened by ExtractNewRecordState (add.fields=op,lsn,
/// delete.handling.mode=rewrite), out of order: the replica still ends at the newest.
#[tokio::test]
async fn flattened_events_apply_and_converge() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    let flat = |id: i64, name: &str, op: &str, lsn: u64, deleted: bool| {
        format!(
            r#"{{"id":{id},"name":"{name}","price":"{P_19_99}","qty":{id},"__op":"{op}","__lsn":{lsn},"__deleted":"{deleted}"}}"#
        )
    };
    for (id, value) in [
        (1, flat(1, "new", "u", 30, false)),
        (1, flat(1, "old", "c", 10, false)),
        (2, flat(2, "b", "c", 11, false)),
        (2, flat(2, "b", "d", 20, true)),
        (2, flat(2, "stale", "u", 15, false)),
    ] {
        common::xadd(&mut r, &stream, &key(id), &value).await;
    }
    let stats = common::sync(
        common::config(&db, "c1", &items_mapping(&prefix)),
        std::slice::from_ref(&stream),
    )
    .await;
    assert_eq!(stats.dead_lettered, 0);
    assert_eq!(
        items(&db).await,
        vec![(1, Some("new".into()), Some("19.99".into()), Some(1))],
        "the newest version of 1; 2 deleted at lsn 20 and not brought back by lsn 15"
    );
    common::cleanup_streams(&prefix).await;
}

/// A read model whose columns differ from the source: renamed, filtered, a constant and
/// the source time, with soft deletes — converging under reordering.
#[tokio::test]
async fn soft_deletes_and_column_mapping_feed_a_different_read_model() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE public.articles (item_id int PRIMARY KEY, title text, region text, \
         synced_at timestamptz, deleted_at timestamptz)",
    )
    .await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    let at = |id: i64, name: &str| item(id, name, P_19_99);
    for (id, e) in [
        (1, event("c", 10, "null", &at(1, "a"))),
        (1, event("d", 20, &at(1, "a"), "null")),
        (1, event("u", 15, "null", &at(1, "stale"))),
        (2, event("c", 11, "null", &at(2, "b"))),
        (2, event("d", 30, &at(2, "b"), "null")),
        (2, event("c", 40, "null", &at(2, "again"))),
    ] {
        common::xadd(&mut r, &stream, &key(id), &e).await;
    }
    let mapping = format!(
        "[[mapping]]\nstreams = [\"{prefix}:items\"]\ntable = \"public.articles\"\n\
         delete = \"soft\"\nsoft_delete_column = \"deleted_at\"\n\
         [mapping.columns]\ninclude = [\"id\", \"name\"]\n\
         rename = {{ id = \"item_id\", name = \"title\" }}\n\
         fixed = {{ region = \"eu\" }}\nfrom_event = {{ synced_at = \"source.ts_ms\" }}\n"
    );
    let stats = common::sync(
        common::config(&db, "c1", &mapping),
        std::slice::from_ref(&stream),
    )
    .await;
    assert_eq!(stats.dead_lettered, 0);
    type Article = (i32, Option<String>, Option<String>, bool, bool);
    let rows: Vec<Article> = sqlx::query_as(
        "SELECT item_id, title, region, synced_at IS NOT NULL, deleted_at IS NOT NULL \
         FROM public.articles ORDER BY item_id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("rows");
    assert_eq!(
        rows,
        vec![
            (1, Some("a".into()), Some("eu".into()), true, true),
            (2, Some("again".into()), Some("eu".into()), true, false),
        ],
        "1: the delete (lsn 20) carries the row as deleted, the late update (lsn 15) is older \
         and changes nothing; 2 deleted then created again"
    );
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn ignored_deletes_keep_the_row_and_are_acknowledged() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    crate::add_change(&mut r, &stream, 1, "c", 10, "null", &item(1, "a", P_19_99)).await;
    crate::add_change(&mut r, &stream, 1, "d", 11, &item(1, "a", P_19_99), "null").await;
    let mapping = format!("{}delete = \"ignore\"\n", items_mapping(&prefix));
    let stats = common::sync(
        common::config(&db, "c1", &mapping),
        std::slice::from_ref(&stream),
    )
    .await;
    assert_eq!(stats.skipped, 1);
    assert_eq!(items(&db).await.len(), 1);
    assert_eq!(common::pending(&mut r, &stream, "redsink").await, 0);
    common::cleanup_streams(&prefix).await;
}

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

/// A soft delete and an older update in different batches, in either order: the same
/// row (the delete's full `before` image wins, the older update changes nothing).
#[tokio::test]
async fn soft_deletes_do_not_depend_on_batching() {
    let mut results = Vec::new();
    for late_update_first in [false, true] {
        let db = TestDb::new().await;
        db.exec(ITEMS).await;
        db.exec("ALTER TABLE public.items ADD COLUMN deleted_at timestamptz")
            .await;
        let prefix = common::unique("s");
        let stream = format!("{prefix}:items");
        let mut r = common::redis().await;
        let mapping = format!(
            "{}delete = \"soft\"\nsoft_delete_column = \"deleted_at\"\n",
            items_mapping(&prefix)
        );
        let config = common::config(&db, "c1", &mapping);
        let create = event("c", 10, "null", &item(1, "a", P_19_99));
        let stale = event("u", 15, "null", &item(1, "stale", P_19_99));
        let delete = event("d", 20, &item(1, "b", P_19_99), "null");
        let order = if late_update_first {
            [create, stale, delete]
        } else {
            [create, delete, stale]
        };
        // One sync per event: each lands in its own batch.
        for e in order {
            common::xadd(&mut r, &stream, &key(1), &e).await;
            common::sync(config.clone(), std::slice::from_ref(&stream)).await;
        }
        let row: (Option<String>, bool) =
            sqlx::query_as("SELECT name, deleted_at IS NOT NULL FROM public.items WHERE id = 1")
                .fetch_one(&db.pool)
                .await
                .expect("the row is kept");
        results.push(row);
        common::cleanup_streams(&prefix).await;
    }
    assert_eq!(
        results,
        vec![(Some("b".into()), true), (Some("b".into()), true)]
    );
}
