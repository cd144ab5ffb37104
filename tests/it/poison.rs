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
    common::xadd(
        &mut r,
        &stream,
        &key(1),
        &event("c", 10, "null", &item(1, "good", "B88=")),
    )
    .await;
    let malformed = common::xadd(&mut r, &stream, &key(2), "{this is not json").await;
    let mismatch = common::xadd(
        &mut r,
        &stream,
        &key(3),
        &event("c", 12, "null", r#"{"id":3,"qty":"many"}"#),
    )
    .await;
    // Passes mapping, but Postgres rejects it: varchar(12) is too short.
    let too_long = common::xadd(
        &mut r,
        &stream,
        &key(4),
        &event("c", 13, "null", &item(4, "far-too-long-a-name", "B88=")),
    )
    .await;
    common::xadd(
        &mut r,
        &stream,
        &key(5),
        &event("c", 14, "null", &item(5, "next", "B88=")),
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
