//! Tombstones and truncations are collected once no event older than them can still
//! arrive (the horizon: the oldest version still in the mapped streams), never before.

use std::time::Duration;

use redsink::config::Config;
use redsink::pipeline::{self, ReplayOptions};
use tokio_util::sync::CancellationToken;

use crate::common::{self, TestDb};
use crate::serve::{http_get, sample};
use crate::{ITEMS, P_19_99, add_change, item, items, items_mapping};

/// The tombstone versions of public.items, by key text.
async fn tombstones(db: &TestDb) -> Vec<(String, Vec<u8>)> {
    sqlx::query_as(
        "SELECT key, version FROM redsink.tombstones WHERE table_name = 'public.items' ORDER BY key",
    )
    .fetch_all(&db.pool)
    .await
    .expect("select tombstones")
}

async fn truncations(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM redsink.truncations")
        .fetch_one(&db.pool)
        .await
        .expect("count truncations")
}

/// XTRIM `stream` MINID `id`: every entry older than `id` goes.
async fn trim_below(r: &mut redis::aio::MultiplexedConnection, stream: &str, id: &str) {
    let _: u64 = redis::cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg(id)
        .query_async(r)
        .await
        .expect("XTRIM");
}

/// Waits until `key`'s tombstone is gone.
async fn until_collected(db: &TestDb, key: &'static str) {
    common::wait_for(
        &format!("the tombstone of {key} to be collected"),
        Duration::from_secs(30),
        || async move { !tombstones(db).await.iter().any(|(k, _)| k == key) },
    )
    .await;
}

#[tokio::test]
async fn tombstones_go_once_the_horizon_passes_them_and_replay_cannot_resurrect() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    let row = |id| item(id, "x", P_19_99);
    add_change(&mut r, &stream, 1, "c", 10, "null", &row(1)).await;
    add_change(&mut r, &stream, 2, "c", 11, "null", &row(2)).await;
    add_change(&mut r, &stream, 1, "d", 12, &row(1), "null").await;
    let u2 = add_change(&mut r, &stream, 2, "u", 13, "null", &row(2)).await;
    add_change(&mut r, &stream, 2, "d", 14, &row(2), "null").await;
    add_change(&mut r, &stream, 3, "c", 15, "null", &row(3)).await;

    let address = format!("127.0.0.1:{}", common::free_port());
    let text = common::config_text(
        &db,
        "c1",
        &format!(
            "[http]\naddress = \"{address}\"\n{}",
            items_mapping(&prefix)
        ),
    );
    let env = [("REDSINK_POSTGRES_GC_EVERY".to_string(), "100ms".to_string())];
    let config = Config::from_toml(&text, "test config", env).expect("config");
    let running = common::Running::start(config.clone())
        .until_drained(std::slice::from_ref(&stream), "redsink")
        .await;
    let keys = |t: Vec<(String, Vec<u8>)>| t.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(keys(tombstones(&db).await), [r#"["1"]"#, r#"["2"]"#]);

    // The update of 2 (LSN 13) is now the oldest entry: the delete of 1 (LSN 12) can
    // never be undone by anything still in the stream, the delete of 2 (LSN 14) can.
    trim_below(&mut r, &stream, &u2).await;
    until_collected(&db, r#"["1"]"#).await;
    assert_eq!(
        keys(tombstones(&db).await),
        [r#"["2"]"#],
        "the tombstone above the horizon stays"
    );
    let removed = "redsink_tombstones_removed_total{table=\"public.items\"}";
    common::wait_for("the metric", Duration::from_secs(10), || async {
        sample(&http_get(&address, "/metrics").await.1, removed) == Some(1.0)
    })
    .await;
    running.stop().await.expect("stop");

    // A replay of the oldest retained entry (the older update of 2) meets its tombstone.
    let replayed = pipeline::replay(
        config.clone(),
        &ReplayOptions {
            from: u2.clone(),
            to: Some(u2.clone()),
            ..ReplayOptions::default()
        },
        &CancellationToken::new(),
        &mut |_| {},
    )
    .await
    .expect("replay");
    assert_eq!(replayed.read, 1);
    let ids: Vec<i32> = items(&db).await.into_iter().map(|i| i.0).collect();
    assert_eq!(ids, [3], "no deleted row came back");

    // A truncate (LSN 16, which takes the tombstones below it along), a delete after
    // it; then everything is acknowledged and trimmed: nothing older can arrive, so
    // the truncation and the last tombstone go too.
    let truncate = r#"{"before":null,"after":null,"source":{"connector":"postgresql","schema":"public","table":"items","lsn":16},"op":"t"}"#;
    common::xadd(&mut r, &stream, "default", truncate).await;
    add_change(&mut r, &stream, 4, "c", 17, "null", &row(4)).await;
    add_change(&mut r, &stream, 4, "d", 18, &row(4), "null").await;
    let last = add_change(&mut r, &stream, 5, "c", 19, "null", &row(5)).await;
    let running = common::Running::start(config)
        .until_drained(std::slice::from_ref(&stream), "redsink")
        .await;
    assert_eq!(truncations(&db).await, 1);
    assert_eq!(keys(tombstones(&db).await), [r#"["4"]"#]);
    let _: u64 = redis::cmd("XDEL")
        .arg(&stream)
        .arg(&last)
        .query_async(&mut r)
        .await
        .expect("XDEL");
    trim_below(&mut r, &stream, &last).await;
    until_collected(&db, r#"["4"]"#).await;
    common::wait_for("the truncation to go", Duration::from_secs(30), || async {
        truncations(&db).await == 0
    })
    .await;
    let ids: Vec<i32> = items(&db).await.into_iter().map(|i| i.0).collect();
    assert_eq!(ids, [5]);
    running.stop().await.expect("stop");
    common::cleanup_streams(&prefix).await;
}

/// Manual `ANALYZE`s of `redsink.tombstones` so far (autovacuum's are counted apart).
async fn tombstone_analyzes(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT analyze_count FROM pg_stat_user_tables WHERE relid = 'redsink.tombstones'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .expect("analyze_count")
}

/// redsink analyzes `redsink.tombstones` itself, at start and after a mass delete (as
/// many tombstones as the table held, at least 1,000): upserts probe the tombstones with
/// a plan made once per connection, and one made while the table had few would read all
/// of them for every row (`src/write/analyze.rs`).
#[tokio::test]
async fn a_mass_delete_gets_the_tombstones_analyzed() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    let config = common::config(&db, "c1", &items_mapping(&prefix));
    let running = common::Running::start(config.clone())
        .until_drained(std::slice::from_ref(&stream), "redsink")
        .await;
    let at_start = tombstone_analyzes(&db).await;
    assert!(at_start >= 1, "analyzed at start");
    for id in 1..=1500_i64 {
        let lsn = 100 + u64::try_from(id).expect("positive");
        add_change(
            &mut r,
            &stream,
            id,
            "d",
            lsn,
            &item(id, "x", P_19_99),
            "null",
        )
        .await;
    }
    common::wait_for(
        "an analyze after 1,500 tombstones",
        Duration::from_secs(30),
        || async { tombstone_analyzes(&db).await > at_start },
    )
    .await;
    running.stop().await.expect("stop");
    assert_eq!(tombstones(&db).await.len(), 1500);
}
