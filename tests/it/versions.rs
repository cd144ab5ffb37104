//! The version guard: older changes arriving later, deletes not undone (resurrection),
//! truncates, and a key change onto another unique key.

use crate::common::{self, TestDb};
use crate::{ITEMS, P_19_99, P_24_50, event, item, items, items_mapping, key};

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
