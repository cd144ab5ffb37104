//! Mapping options on the sync path: flattened events, soft and ignored deletes, and
//! column mapping into a read model that differs from the source.

use crate::common::{self, TestDb};
use crate::{ITEMS, P_19_99, event, item, items, items_mapping, key};

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
