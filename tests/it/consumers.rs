//! One consumer name, one live instance: a second instance under a name another live
//! one reads with refuses to start, a restart right after a crash still starts, and
//! `consumers prune` never goes below a safe idle time.

use std::time::Duration;

use redsink::pipeline;
use tokio_util::sync::CancellationToken;

use crate::common::{self, TestDb};
use crate::{ITEMS, P_19_99, item, items_mapping};

/// Waits until `consumer` is listed in the group `redsink` of `stream`.
async fn wait_consumer(stream: &str, consumer: &str) {
    let r = common::redis().await;
    common::wait_for(
        &format!("consumer {consumer} on {stream}"),
        Duration::from_secs(30),
        || {
            let mut r = r.clone();
            async move {
                common::consumers(&mut r, stream, "redsink")
                    .await
                    .iter()
                    .any(|c| c == consumer)
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_second_instance_under_a_live_consumer_name_refuses_to_start() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    crate::add_items(&stream, 3).await;
    let config = common::config(&db, "same", &items_mapping(&prefix));
    let first = common::Running::start(config.clone())
        .until_drained(std::slice::from_ref(&stream), "redsink")
        .await;
    wait_consumer(&stream, "same").await;

    let shutdown = CancellationToken::new();
    let second = tokio::time::timeout(
        Duration::from_secs(10),
        pipeline::run(config, shutdown.clone()),
    )
    .await;
    shutdown.cancel();
    let error = match second {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(stats)) => panic!("the second instance ran: {stats:?}"),
        Err(_) => panic!("the second instance started under the live one's name"),
    };
    assert!(error.contains("consumer same"), "{error}");
    assert!(error.contains("redsink:redsink:same:"), "{error}");
    assert!(error.contains("redis.consumer"), "{error}");
    assert!(!first.is_finished(), "the first instance runs on");
    first
        .stop()
        .await
        .expect("the first instance stops cleanly");
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn a_restart_under_the_same_name_right_after_a_crash_starts() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    crate::add_change(&mut r, &stream, 1, "c", 10, "null", &item(1, "a", P_19_99)).await;
    // The crashed life read the entry a moment ago and never acknowledged it.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("redsink")
        .arg("0")
        .query_async(&mut r)
        .await
        .expect("XGROUP CREATE");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("redsink")
        .arg("same")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut r)
        .await
        .expect("XREADGROUP");
    let config = common::config(&db, "same", &items_mapping(&prefix));
    let stats = tokio::time::timeout(
        Duration::from_secs(20),
        common::sync(config, std::slice::from_ref(&stream)),
    )
    .await
    .expect("the restarted instance applies its pending entry");
    assert_eq!(stats.acked, 1);
    assert_eq!(common::pending(&mut r, &stream, "redsink").await, 0);
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn consumers_prune_never_goes_below_a_safe_idle_time() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    crate::add_items(&stream, 2).await;
    // Redis 7.0 counts a consumer blocked in XREADGROUP as idle since the read began:
    // with `block = "1s"` a live instance is regularly idle for 1 s.
    let text = common::config_text(&db, "live", &items_mapping(&prefix))
        .replace("block = \"200ms\"", "block = \"1s\"");
    let config = redsink::config::Config::from_toml(&text, "test config", std::iter::empty())
        .expect("config");
    let running = common::Running::start(config)
        .until_drained(std::slice::from_ref(&stream), "redsink")
        .await;
    wait_consumer(&stream, "live").await;
    for _ in 0..4 {
        let (code, out, err) = common::redsink_cli(&text, &["consumers", "prune", "--idle", "1s"]);
        assert_eq!(code, 0, "{err}");
        assert!(
            err.contains("--idle 1s is below the safe floor of 8s"),
            "it says so: {err}"
        );
        assert!(out.contains("idle for at least 8s"), "{out}");
        assert!(!out.contains("removed consumer live"), "{out}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut r = common::redis().await;
    assert_eq!(
        common::consumers(&mut r, &stream, "redsink").await,
        vec!["live".to_string()]
    );
    running.stop().await.expect("stop");
    common::cleanup_streams(&prefix).await;
}
