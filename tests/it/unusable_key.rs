//! An event whose key cannot be used (its key fields are no unique key of the table, or
//! its templated table lacks the key column) is that event's dead letter, not a reason to
//! stop; a configured key that is no unique key of a fixed table stops redsink at start,
//! before anything is read; and a fatal stop does not charge the entries read with the
//! failing one a delivery, so restarts cannot dead-letter them as "delivered N times".

use std::time::Duration;

use crate::common::{self, TestDb};
use crate::{ITEMS, event, item, items, items_mapping, key};

/// The dead letter of `entry` on `stream`: its `redsink.error`.
async fn reason_of(r: &mut redis::aio::MultiplexedConnection, stream: &str, entry: &str) -> String {
    let dlq = common::dead_letters(r, stream).await;
    let found = dlq.iter().find(|(_, f)| f["redsink.entry_id"] == entry);
    found.map_or_else(
        || panic!("no dead letter for {entry}: {dlq:?}"),
        |(_, f)| f["redsink.error"].clone(),
    )
}

/// Waits until the pipeline ended by itself (a fatal error) and returns the error's text.
async fn fatal_error(running: common::Running) -> String {
    common::wait_for("a fatal stop", Duration::from_secs(30), || {
        let finished = running.is_finished();
        async move { finished }
    })
    .await;
    match running.stop().await {
        Ok(stats) => panic!("expected a fatal error, it stopped cleanly: {stats:?}"),
        Err(e) => format!("{e}: {}", redsink::pipeline::source_chain(&e)),
    }
}

/// (delivery count) of each of `ids` pending on `stream` for the group `redsink`.
async fn deliveries(
    r: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    ids: &[&String],
) -> Vec<u64> {
    let mut out = Vec::new();
    for id in ids {
        let reply: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(stream)
            .arg("redsink")
            .arg(id.as_str())
            .arg(id.as_str())
            .arg(1)
            .query_async(r)
            .await
            .expect("XPENDING");
        assert_eq!(reply.len(), 1, "{id} is pending");
        out.push(reply[0].3);
    }
    out
}

#[tokio::test]
async fn an_event_keyed_by_columns_that_are_no_unique_key_is_dead_lettered() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    db.exec("ALTER TABLE public.items ADD COLUMN n int").await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    crate::add_change(&mut r, &stream, 1, "c", 10, "null", &item(1, "a", "B88=")).await;
    // `n` is a column of the table, but neither its primary key nor unique.
    let not_unique = common::xadd(
        &mut r,
        &stream,
        r#"{"n":7}"#,
        &event("c", 11, "null", r#"{"id":7,"name":"p","n":7}"#),
    )
    .await;
    // `sku` is no column at all.
    let no_column = common::xadd(
        &mut r,
        &stream,
        r#"{"sku":"x"}"#,
        &event("c", 12, "null", r#"{"id":8,"name":"q"}"#),
    )
    .await;
    crate::add_change(&mut r, &stream, 2, "c", 13, "null", &item(2, "b", "B88=")).await;

    let running = common::Running::start(common::config(&db, "c1", &items_mapping(&prefix)))
        .until_drained(std::slice::from_ref(&stream), "redsink")
        .await;
    let stats = running.stop().await.expect("no fatal error for a bad key");

    assert_eq!(stats.dead_lettered, 2);
    let ids: Vec<i32> = items(&db).await.into_iter().map(|r| r.0).collect();
    assert_eq!(
        ids,
        vec![1, 2],
        "the good entries around the bad ones applied"
    );
    assert_eq!(common::pending(&mut r, &stream, "redsink").await, 0);
    assert_eq!(common::dead_letters(&mut r, &stream).await.len(), 2);
    let reason = reason_of(&mut r, &stream, &not_unique).await;
    assert!(
        reason.contains("public.items") && reason.contains("(n)") && reason.contains("message key"),
        "{reason}"
    );
    let reason = reason_of(&mut r, &stream, &no_column).await;
    assert!(
        reason.contains("public.items") && reason.contains("`sku`"),
        "{reason}"
    );
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn a_templated_table_without_the_key_column_dead_letters_its_event() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    db.exec("CREATE TABLE public.other (code text PRIMARY KEY, label text)")
        .await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    // The key is configured, the table comes from the event.
    let mapping = format!(
        "[[mapping]]\nstreams = [\"{prefix}:items\"]\ntable = \"public.${{source.table}}\"\nkey = [\"id\"]\n"
    );
    let mut r = common::redis().await;
    crate::add_change(&mut r, &stream, 1, "c", 10, "null", &item(1, "a", "B88=")).await;
    let other = event("c", 11, "null", r#"{"id":3,"label":"c"}"#)
        .replace(r#""table":"items""#, r#""table":"other""#);
    let poison = common::xadd(&mut r, &stream, &key(3), &other).await;
    crate::add_change(&mut r, &stream, 2, "c", 12, "null", &item(2, "b", "B88=")).await;

    let running = common::Running::start(common::config(&db, "c1", &mapping))
        .until_drained(std::slice::from_ref(&stream), "redsink")
        .await;
    let stats = running
        .stop()
        .await
        .expect("no fatal error for a table named by the event");

    assert_eq!(stats.dead_lettered, 1);
    let ids: Vec<i32> = items(&db).await.into_iter().map(|r| r.0).collect();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(common::pending(&mut r, &stream, "redsink").await, 0);
    assert_eq!(common::dead_letters(&mut r, &stream).await.len(), 1);
    let reason = reason_of(&mut r, &stream, &poison).await;
    assert!(
        reason.contains("public.other") && reason.contains("`id`"),
        "{reason}"
    );
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn a_configured_key_that_is_no_unique_key_stops_redsink_before_it_reads() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    crate::add_change(&mut r, &stream, 1, "c", 10, "null", &item(1, "a", "B88=")).await;
    let mapping = format!("{}key = [\"name\"]\n", items_mapping(&prefix));

    let error = fatal_error(common::Running::start(common::config(&db, "c1", &mapping))).await;

    assert!(
        error.contains("public.items")
            && error.contains("no primary key or unique index on (name)")
            && error.contains("mapping.key"),
        "{error}"
    );
    assert_eq!(
        common::pending(&mut r, &stream, "redsink").await,
        0,
        "nothing was read, so nothing was charged a delivery"
    );
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn a_fatal_stop_notes_its_error_and_does_not_charge_the_entries_read_with_it() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut config = common::config(
        &db,
        "c1",
        &format!("{}key = [\"id\"]\n", items_mapping(&prefix)),
    );
    let mut r = common::redis().await;
    crate::add_change(&mut r, &stream, 1, "c", 10, "null", &item(1, "a", "B88=")).await;
    let running = common::Running::start(config.clone())
        .until_drained(std::slice::from_ref(&stream), "redsink")
        .await;
    // While it runs, the key goes away. An event with the new column makes redsink read
    // the catalog again and find no unique key on the configured `id`: a table-wide
    // problem, fatal. The two entries read with it are bystanders.
    db.exec("ALTER TABLE public.items DROP CONSTRAINT items_pkey, ADD COLUMN note text")
        .await;
    let culprit_value = event("c", 11, "null", r#"{"id":2,"name":"b","note":"x"}"#);
    let (culprit, third, fourth): (String, String, String) = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg(key(2))
        .arg(&culprit_value)
        .cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg(key(3))
        .arg(event("c", 12, "null", &item(3, "c", "B88=")))
        .cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg(key(4))
        .arg(event("c", 13, "null", &item(4, "d", "B88=")))
        .query_async(&mut r)
        .await
        .expect("XADD in MULTI");

    let error = fatal_error(running).await;
    assert!(
        error.contains("no primary key or unique index on (id)"),
        "{error}"
    );
    assert_eq!(
        deliveries(&mut r, &stream, &[&culprit, &third, &fourth]).await,
        vec![1, 0, 0],
        "the failing entry keeps its delivery; the ones read with it were released"
    );
    let errors = format!("{stream}:dlq:errors");
    for id in [&culprit, &third, &fourth] {
        let note: Option<String> = redis::cmd("HGET")
            .arg(&errors)
            .arg(format!("redsink/{id}"))
            .query_async(&mut r)
            .await
            .expect("HGET");
        assert!(
            note.as_deref()
                .is_some_and(|n| n.contains("no primary key or unique index on (id)")),
            "the fatal error is noted on {id}: {note:?}"
        );
    }

    // Fixed; with max_deliveries = 1 the next delivery is the last one allowed.
    db.exec("ALTER TABLE public.items ADD PRIMARY KEY (id)")
        .await;
    config.redis.max_deliveries = 1;
    common::sync(config, std::slice::from_ref(&stream)).await;
    let ids: Vec<i32> = items(&db).await.into_iter().map(|r| r.0).collect();
    assert_eq!(ids, vec![1, 3, 4], "the bystanders were not dead-lettered");
    let dlq = common::dead_letters(&mut r, &stream).await;
    assert_eq!(dlq.len(), 1, "only the failing entry: {dlq:?}");
    let reason = reason_of(&mut r, &stream, &culprit).await;
    assert!(
        reason.contains("delivered 2 times")
            && reason.contains("no primary key or unique index on (id)"),
        "its dead letter says why: {reason}"
    );
    common::cleanup_streams(&prefix).await;
}
