//! The sync path: create/update/delete/read then ack, replays, checkpoints, and the
//! errors that stop the pipeline at start-up.

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

/// The reader's connections (redsink's own over plain TCP) and the others all use the
/// database the Redis URL names: events in database 7 are applied and acknowledged
/// there, and database 0 never gets the stream.
#[tokio::test]
async fn reads_the_database_the_redis_url_names() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut url = url::Url::parse(&common::redis_url()).expect("redis url");
    url.set_path("/7");
    let url = url.to_string();
    let mut r7 = redis::Client::open(url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to database 7");
    for (id, ts) in [(1, 10), (2, 20)] {
        let after = item(id, "in seven", P_19_99);
        crate::add_change(&mut r7, &stream, id, "c", ts, "null", &after).await;
    }
    let text = common::config_text(&db, "c1", &items_mapping(&prefix)).replace(
        &format!("url = \"{}\"", common::redis_url()),
        &format!("url = \"{url}\""),
    );
    let config = redsink::config::Config::from_toml(&text, "test config", std::iter::empty())
        .expect("config");
    assert_eq!(config.redis.url, url, "the test's config names database 7");
    let stats = common::sync_at(&url, config, std::slice::from_ref(&stream)).await;
    assert_eq!(stats.rows_written, 2);
    assert_eq!(items(&db).await.len(), 2);
    assert_eq!(common::pending(&mut r7, &stream, "redsink").await, 0);
    let mut r0 = common::redis().await;
    let in_zero: bool = redis::cmd("EXISTS")
        .arg(&stream)
        .query_async(&mut r0)
        .await
        .expect("EXISTS");
    assert!(!in_zero, "database 0 has no such stream");
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut r7)
        .await
        .expect("DEL");
}
