//! Outages: Redis killed and restarted, Postgres connections cut, mid-sync.

use std::time::{Duration, Instant};

use redsink::produce::{Orders, xadd_all};

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
