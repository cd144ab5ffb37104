//! Bad entries go to the dead-letter stream with the reason; the rest still applies.

use std::collections::HashMap;

use crate::common::{self, TestDb};
use crate::{ITEMS, event, item, items, items_mapping, key};

#[tokio::test]
async fn poison_entries_are_dead_lettered_and_the_next_good_entry_applies() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let dlq = format!("{stream}:dlq");
    let mut r = common::redis().await;
    crate::add_change(
        &mut r,
        &stream,
        1,
        "c",
        10,
        "null",
        &item(1, "good", "B88="),
    )
    .await;
    let malformed = common::xadd(&mut r, &stream, &key(2), "{this is not json").await;
    let mismatch = crate::add_change(
        &mut r,
        &stream,
        3,
        "c",
        12,
        "null",
        r#"{"id":3,"qty":"many"}"#,
    )
    .await;
    // Passes mapping, but Postgres rejects it: varchar(12) is too short.
    let too_long = crate::add_change(
        &mut r,
        &stream,
        4,
        "c",
        13,
        "null",
        &item(4, "far-too-long-a-name", "B88="),
    )
    .await;
    crate::add_change(
        &mut r,
        &stream,
        5,
        "c",
        14,
        "null",
        &item(5, "next", "B88="),
    )
    .await;

    let stats = common::sync(
        common::config(&db, "c1", &items_mapping(&prefix)),
        std::slice::from_ref(&stream),
    )
    .await;

    let ids: Vec<i32> = items(&db).await.into_iter().map(|r| r.0).collect();
    assert_eq!(ids, vec![1, 5]);
    assert_eq!(stats.dead_lettered, 3);
    assert_eq!(common::pending(&mut r, &stream, "redsink").await, 0);
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&dlq)
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await
        .expect("XRANGE dlq");
    assert_eq!(entries.len(), 3, "exactly the poison entries: {entries:?}");
    let by_id: HashMap<String, HashMap<String, String>> = entries
        .into_iter()
        .map(|(_, f)| (f["redsink.entry_id"].clone(), f))
        .collect();
    let reason = |id: &str| by_id[id]["redsink.error"].clone();
    assert!(
        reason(&malformed).contains("not JSON"),
        "{}",
        reason(&malformed)
    );
    assert!(
        reason(&mismatch).contains("column qty")
            && reason(&mismatch).contains("not a whole number"),
        "{}",
        reason(&mismatch)
    );
    assert!(
        reason(&too_long).contains("postgres rejected the row")
            && reason(&too_long).contains("too long"),
        "{}",
        reason(&too_long)
    );
    let original = &by_id[&malformed];
    assert_eq!(
        original[&key(2)],
        "{this is not json",
        "the original field is kept"
    );
    assert_eq!(original["redsink.stream"], stream);
    assert_eq!(original["redsink.group"], "redsink");
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn a_column_added_while_running_is_found_and_a_missing_templated_table_is_dead_lettered() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE public.items (id int PRIMARY KEY, name varchar(12), price numeric(10,2))",
    )
    .await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mapping = format!(
        "[[mapping]]\nstreams = [\"{prefix}:items\"]\ntable = \"public.${{source.table}}\"\n"
    );
    let running = common::Running::start(common::config(&db, "c1", &mapping));
    let mut r = common::redis().await;
    // The first event makes redsink read the catalog of public.items (no qty yet).
    crate::add_change(
        &mut r,
        &stream,
        1,
        "c",
        10,
        "null",
        r#"{"id":1,"name":"a"}"#,
    )
    .await;
    common::wait_rows(&db, "public.items", 0).await;
    db.exec("ALTER TABLE public.items ADD COLUMN qty int").await;
    crate::add_change(&mut r, &stream, 2, "c", 11, "null", &item(2, "b", "B88=")).await;
    let other = event("c", 12, "null", &item(3, "c", "B88="))
        .replace(r#""table":"items""#, r#""table":"nope""#);
    let missing = common::xadd(&mut r, &stream, &key(3), &other).await;
    let running = running
        .until_drained(std::slice::from_ref(&stream), "redsink")
        .await;
    let stats = running
        .stop()
        .await
        .expect("no fatal error for a missing templated table");
    assert_eq!(stats.dead_lettered, 1);
    let ids: Vec<i32> = items(&db).await.into_iter().map(|r| r.0).collect();
    assert_eq!(ids, vec![1, 2], "the new column was picked up");
    let dlq = common::dead_letters(&mut r, &stream).await;
    assert_eq!(dlq[0].1["redsink.entry_id"], missing);
    assert!(
        dlq[0].1["redsink.error"].contains("public.nope does not exist"),
        "{:?}",
        dlq[0].1
    );
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn a_column_added_while_a_batch_holds_rows_of_the_table_is_handled() {
    let db = TestDb::new().await;
    db.exec(
        "CREATE TABLE public.items (id int PRIMARY KEY, name varchar(12), price numeric(10,2))",
    )
    .await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut config = common::config(&db, "c1", &crate::items_mapping(&prefix));
    // Row 1 lingers in the batch (adaptive batching would write it at once).
    config.batch.max_delay = std::time::Duration::from_secs(3);
    config.batch.linger = std::time::Duration::from_secs(3);
    let running = common::Running::start(config);
    let mut r = common::redis().await;
    crate::add_change(
        &mut r,
        &stream,
        1,
        "c",
        10,
        "null",
        r#"{"id":1,"name":"a"}"#,
    )
    .await;
    // Row 1 is read and waits in the batch (3 s) when the column appears.
    common::wait_for("row 1 read", std::time::Duration::from_secs(10), || {
        let stream = stream.clone();
        async move { common::pending(&mut common::redis().await, &stream, "redsink").await == 1 }
    })
    .await;
    db.exec("ALTER TABLE public.items ADD COLUMN qty int").await;
    crate::add_change(&mut r, &stream, 2, "c", 11, "null", &item(2, "b", "B88=")).await;
    let running = running
        .until_drained(std::slice::from_ref(&stream), "redsink")
        .await;
    let stats = running.stop().await.expect("no panic, no fatal error");
    assert_eq!(stats.dead_lettered, 0);
    let rows: Vec<(i32, Option<i32>)> =
        sqlx::query_as("SELECT id, qty FROM public.items ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .expect("rows");
    assert_eq!(rows, vec![(1, None), (2, Some(2))]);
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn a_truncate_postgres_refuses_is_dead_lettered() {
    let db = TestDb::new().await;
    db.exec(crate::ITEMS).await;
    db.exec("CREATE TABLE public.child (item_id int REFERENCES public.items (id))")
        .await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    crate::add_change(&mut r, &stream, 1, "c", 10, "null", &item(1, "a", "B88=")).await;
    let config = common::config(&db, "c1", &crate::items_mapping(&prefix));
    common::sync(config.clone(), std::slice::from_ref(&stream)).await;
    db.exec("INSERT INTO public.child VALUES (1)").await;
    let truncate = r#"{"before":null,"after":null,"source":{"connector":"postgresql","schema":"public","table":"items","lsn":50},"op":"t"}"#;
    let refused = common::xadd(&mut r, &stream, "default", truncate).await;
    crate::add_change(&mut r, &stream, 2, "c", 60, "null", &item(2, "b", "B88=")).await;
    let stats = common::sync(config, std::slice::from_ref(&stream)).await;
    assert_eq!(stats.dead_lettered, 1);
    let ids: Vec<i32> = items(&db).await.into_iter().map(|r| r.0).collect();
    assert_eq!(
        ids,
        vec![1, 2],
        "the refused truncate deleted nothing; the next row applied"
    );
    let dlq = common::dead_letters(&mut r, &stream).await;
    assert_eq!(dlq[0].1["redsink.entry_id"], refused);
    assert!(
        dlq[0].1["redsink.error"].contains("refused the truncate"),
        "{:?}",
        dlq[0].1
    );
    common::cleanup_streams(&prefix).await;
}

/// A JSON object that is no Debezium event (no envelope, no `__` metadata) is read as a
/// row flattened by ExtractNewRecordState; when its fields are no columns of the table,
/// the dead letter says it is neither an envelope nor a flattened event.
#[tokio::test]
async fn a_value_that_is_no_debezium_event_is_dead_lettered_as_such() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    let foreign = common::xadd(&mut r, &stream, &key(1), r#"{"foo":1,"bar":[1,2]}"#).await;
    // A row flattened with ExtractNewRecordState's defaults looks alike and applies.
    common::xadd(
        &mut r,
        &stream,
        &key(2),
        r#"{"id":2,"name":"flat","qty":2}"#,
    )
    .await;
    let stats = common::sync(
        common::config(&db, "c1", &items_mapping(&prefix)),
        std::slice::from_ref(&stream),
    )
    .await;
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(
        items(&db).await,
        vec![(2, Some("flat".into()), None, Some(2))]
    );
    let dlq = common::dead_letters(&mut r, &stream).await;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].1["redsink.entry_id"], foreign);
    let reason = &dlq[0].1["redsink.error"];
    assert!(
        reason.contains("neither a Debezium envelope (no `op`, `after`, `before`) nor a flattened event (no `__op`/`__deleted`)"),
        "{reason}"
    );
    common::cleanup_streams(&prefix).await;
}
