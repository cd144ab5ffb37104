//! Outages: Redis killed and restarted, Postgres connections cut, mid-sync.

use std::time::{Duration, Instant};

use redsink::demo::produce::{Orders, xadd_all};

use crate::common::{self, RedisServer, TestDb};
use crate::load::{ORDERS, actual, expected, mapping};

#[tokio::test]
async fn a_redis_crash_and_restart_mid_sync_loses_nothing() {
    let mut server = RedisServer::start();
    let db = TestDb::new().await;
    db.exec(ORDERS).await;
    let orders = Orders {
        keys: 3_000,
        delete_every: Some(11),
    };
    let n = 30_000;
    let client = redis::Client::open(server.url()).expect("url");
    let mut r = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    xadd_all(&mut r, (0..n).map(|j| orders.entry(j, "out.orders", 8)))
        .await
        .expect("XADD");
    let streams: Vec<String> = (0..8).map(|i| format!("out.orders:{i}")).collect();

    let mut config = common::config(&db, "c1", &mapping("out"));
    config.redis.url = server.url();
    config.batch.max_batch = 200;
    let running = common::Running::start(config);
    common::wait_rows(&db, "public.orders", 200).await;
    server.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !running.is_finished(),
        "redsink keeps retrying while Redis is down"
    );
    server.restart();

    let running = running
        .until_drained_at(&server.url(), &streams, "redsink")
        .await;
    running.stop().await.expect("stops cleanly");
    assert_eq!(actual(&db).await, expected(&orders, n));
}

#[tokio::test]
async fn postgres_connections_cut_mid_sync_lose_nothing() {
    let db = TestDb::new().await;
    db.exec(ORDERS).await;
    let prefix = common::unique("cut");
    let orders = Orders {
        keys: 3_000,
        delete_every: Some(7),
    };
    let n = 30_000;
    let streams = crate::load::produce(&prefix, &orders, n).await;
    let mut config = common::config(&db, "c1", &mapping(&prefix));
    config.batch.max_batch = 200;
    let running = common::Running::start(config);

    // Terminate redsink's backends again and again while it syncs.
    let admin = sqlx::PgPool::connect(&common::pg_admin_url())
        .await
        .expect("admin");
    let mut cuts = 0;
    let mut r = common::redis().await;
    let start = Instant::now();
    while !common::drained(&mut r, &streams, "redsink").await {
        if running.is_finished() {
            panic!("pipeline ended early: {:?}", running.stop().await);
        }
        assert!(start.elapsed() < Duration::from_secs(120), "not drained");
        if cuts < 10 {
            let killed: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'redsink'",
            )
            .bind(&db.name)
            .fetch_all(&admin)
            .await
            .expect("terminate");
            cuts += usize::from(!killed.is_empty());
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let stats = running.stop().await.expect("stops cleanly");
    assert!(cuts >= 3, "the test cut connections {cuts} times");
    assert_eq!(stats.acked, n);
    assert_eq!(actual(&db).await, expected(&orders, n));
    common::cleanup_streams(&prefix).await;
}

/// A lock timeout while a transaction opens (taking the advisory locks) or ends (the
/// checkpoint rows) leaves that connection inside a failed transaction: it must be
/// dropped, not reused, and the batch retried until it commits.
#[tokio::test]
async fn lock_timeouts_while_opening_or_committing_are_retried() {
    let db = TestDb::new().await;
    db.exec(crate::ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    let add = |id: i64| crate::event("c", 10 + id as u64, "null", &crate::item(id, "a", "B88="));
    common::xadd(&mut r, &stream, &crate::key(1), &add(1)).await;
    // Somebody holds the table's advisory lock: the lock statement times out.
    let table_lock =
        i64::from_ne_bytes(redsink::keyhash::fnv1a64(b"redsink\0public.items").to_ne_bytes());
    let mut holder = db.pool.acquire().await.expect("conn");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(table_lock)
        .execute(&mut *holder)
        .await
        .expect("lock");
    // redsink sets lock_timeout on its sessions (postgres.lock_timeout).
    let mut config = common::config(&db, "c1", &crate::items_mapping(&prefix));
    config.postgres.lock_timeout = Duration::from_millis(100);
    let running = common::Running::start(config);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        crate::items(&db).await.len(),
        0,
        "blocked while the lock is held"
    );
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(table_lock)
        .execute(&mut *holder)
        .await
        .expect("unlock");
    common::wait_rows(&db, "public.items", 0).await;

    // Now the checkpoint table is locked: the statement that commits times out.
    let mut tx = sqlx::Connection::begin(&mut *holder).await.expect("begin");
    sqlx::query("LOCK TABLE redsink.checkpoints IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .expect("lock table");
    common::xadd(&mut r, &stream, &crate::key(2), &add(2)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        crate::items(&db).await.len(),
        1,
        "not committed while the table is locked"
    );
    tx.rollback().await.expect("rollback");
    common::wait_rows(&db, "public.items", 1).await;
    assert!(!running.is_finished(), "the pipeline kept going");
    let stats = running.stop().await.expect("a clean stop");
    assert!(
        stats.pg_round_trips > 3 * stats.batches,
        "the failed attempts were made: {stats:?}"
    );
    assert_eq!(common::pending(&mut r, &stream, "redsink").await, 0);
    common::cleanup_streams(&prefix).await;
}
