//! Crashes at the two dangerous instants, simulated with the library's own steps.

use std::time::{Duration, Instant};

use redsink::batch::Batcher;
use redsink::entry::StreamEntry;
use redsink::map::Mapping;
use redsink::read::Reader;
use redsink::table::TableName;
use redsink::write::{self, Catalog, Writer};

use crate::common::{self, TestDb};
use crate::{ITEMS, add_items, fingerprint, item, items, items_mapping, to_change};

/// Reads entries as consumer `consumer` (they enter its PEL) without acking them.
async fn read_as(consumer: &str, stream: &str, want: usize) -> Vec<StreamEntry> {
    let redis: redsink::config::RedisConfig =
        toml::from_str(&format!("url = \"{}\"", common::redis_url())).expect("redis config");
    let (deployment, control) = redsink::redis::connect(&redis).await.expect("connect");
    let mut reader = Reader::new(deployment, control, "redsink", consumer);
    reader
        .add_streams(&[stream.to_string()], "0")
        .await
        .expect("group");
    let mut out = Vec::new();
    let start = Instant::now();
    while out.len() < want {
        out.extend(
            reader
                .read(Duration::from_millis(100), 100)
                .await
                .expect("read"),
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "entries did not arrive"
        );
    }
    out
}

#[tokio::test]
async fn a_crash_between_commit_and_xack_redelivers_as_a_no_op() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    add_items(&stream, 3).await;
    let config = common::config(&db, "c1", &items_mapping(&prefix));

    // The first life of consumer c1: read, decode, map, batch, commit ... and die before XACK.
    let entries = read_as("c1", &stream, 3).await;
    let pool = write::connect(&db.postgres(2)).await.expect("pg");
    write::migrate(&pool).await.expect("migrate");
    let mut catalog = Catalog::new(pool.clone());
    let writer = Writer::new(pool, "redsink");
    let mapping = Mapping::compile(0, &config.mappings[0]).expect("mapping");
    let table = catalog
        .table(&TableName::parse("public.items").expect("name"))
        .await
        .expect("table");
    let mut batcher = Batcher::new(100, Duration::from_secs(1));
    for entry in entries {
        batcher.push_row(to_change(&mapping, &table, &entry), entry, Instant::now());
    }
    let committed = writer.write(&batcher.take()).await.expect("commit");
    assert_eq!(committed.acks().len(), 3);
    drop(committed); // the crash: never acknowledged
    assert_eq!(common::pending(&mut r, &stream, "redsink").await, 3);
    let before = fingerprint(&db).await;
    assert_eq!(before.len(), 3);

    // Restarted with the same name, c1 re-reads its own PEL first; applying is a no-op.
    let stats = common::sync(config, std::slice::from_ref(&stream)).await;
    assert_eq!(stats.read, 3, "the pending entries were redelivered");
    assert_eq!(
        fingerprint(&db).await,
        before,
        "no row was written again (same xmin)"
    );
    assert_eq!(common::pending(&mut r, &stream, "redsink").await, 0);
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn a_crash_before_commit_redelivers_and_applies_even_to_another_consumer() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    add_items(&stream, 3).await;
    // Consumer "dead" reads everything and dies before writing anything.
    read_as("dead", &stream, 3).await;
    assert_eq!(common::pending(&mut r, &stream, "redsink").await, 3);

    // A different consumer claims the dead one's entries once idle and applies them.
    let mut config = common::config(&db, "alive", &items_mapping(&prefix));
    config.redis.claim_idle = Duration::from_millis(500);
    config.redis.prune_idle = Duration::from_millis(500);
    let stats = common::sync(config, std::slice::from_ref(&stream)).await;
    assert_eq!(stats.claimed, 3);
    assert!(
        common::consumers(&mut r, &stream, "redsink")
            .await
            .is_empty(),
        "the dead consumer was pruned once it had nothing pending, the live one left on shutdown"
    );
    assert_eq!(items(&db).await.len(), 3);
    assert_eq!(common::pending(&mut r, &stream, "redsink").await, 0);
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn an_entry_delivered_too_often_is_dead_lettered() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    add_items(&stream, 2).await;
    // Consumer c1 got the entries 4 times without acknowledging them (it kept crashing).
    let mut r = common::redis().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("redsink")
        .arg("0")
        .query_async(&mut r)
        .await
        .expect("group");
    for id in [">", "0", "0", "0"] {
        read_as_c1(&mut r, &stream, id).await;
    }
    let mut config = common::config(&db, "c1", &items_mapping(&prefix));
    config.redis.max_deliveries = 4;
    let stats = common::sync(config, std::slice::from_ref(&stream)).await;
    assert_eq!(stats.dead_lettered, 2, "the 5th delivery is one too many");
    assert!(items(&db).await.is_empty());
    let dlq = common::dead_letters(&mut r, &stream).await;
    assert!(
        dlq[0].1["redsink.error"].contains("delivered 5 times"),
        "{:?}",
        dlq[0].1
    );
    common::cleanup_streams(&prefix).await;
}

/// A batch that cannot be written (here: the table stays locked, every attempt times
/// out) and is abandoned at shutdown notes its error per entry; when those entries are
/// later dead-lettered for being delivered too often, the dead letter says why.
#[tokio::test]
async fn a_dead_letter_for_too_many_deliveries_carries_the_last_error() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    db.exec(&format!(
        "ALTER DATABASE {} SET lock_timeout = '100ms'",
        db.name
    ))
    .await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut config = common::config(&db, "c1", &items_mapping(&prefix));
    // A first entry goes through (redsink prepares the table: its version column).
    let mut r = common::redis().await;
    crate::add_change(
        &mut r,
        &stream,
        100,
        "c",
        1,
        "null",
        &item(100, "first", "B88="),
    )
    .await;
    common::sync(config.clone(), std::slice::from_ref(&stream)).await;
    add_items(&stream, 2).await;

    // Hold the table locked while an instance tries to write, then stop that instance.
    let mut locker = db.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE public.items IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .expect("lock");
    let run = common::Running::start(config.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = run.stop().await.expect("stops");
    assert_eq!(stats.acked, 0, "nothing could be written");
    locker.rollback().await.expect("unlock");

    let noted: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{stream}:dlq:errors"))
        .query_async(&mut r)
        .await
        .expect("HGETALL");
    assert_eq!(noted.len(), 2, "{noted:?}");
    assert!(noted.values().all(|e| e.contains("lock")), "{noted:?}");

    // Delivered once so far: read c1's PEL twice more, and the next start (a fourth
    // delivery) is one too many for max_deliveries = 3.
    for _ in 0..2 {
        read_as_c1(&mut r, &stream, "0").await;
    }
    config.redis.max_deliveries = 3;
    let stats = common::sync(config, std::slice::from_ref(&stream)).await;
    assert_eq!(stats.dead_lettered, 2);
    let dlq = common::dead_letters(&mut r, &stream).await;
    let left: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{stream}:dlq:errors"))
        .query_async(&mut r)
        .await
        .expect("HGETALL");
    assert!(
        left.is_empty(),
        "notes move into the dead letters: {left:?}"
    );
    let error = &dlq[0].1["redsink.error"];
    assert!(
        error.contains("delivered 4 times")
            && error.contains("last error")
            && error.contains("lock"),
        "{error}"
    );
    common::cleanup_streams(&prefix).await;
}

/// `XREADGROUP GROUP redsink c1 STREAMS <stream> <id>`: `>` delivers new entries to c1,
/// `0` delivers c1's pending ones again (counting one more delivery each).
async fn read_as_c1(r: &mut redis::aio::MultiplexedConnection, stream: &str, id: &str) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("redsink")
        .arg("c1")
        .arg("STREAMS")
        .arg(stream)
        .arg(id)
        .query_async(r)
        .await
        .expect("XREADGROUP");
}
