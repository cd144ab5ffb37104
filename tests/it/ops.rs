//! The operator commands, run as the real binary against the real services.

use crate::common::{self, TestDb};
use crate::{ITEMS, event, item, items_mapping, key};

const P_19_99: &str = "B88="; // 1999

#[tokio::test]
async fn status_shows_lag_pending_consumers_checkpoints_and_dead_letters() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    common::xadd(
        &mut r,
        &stream,
        &key(1),
        &event("c", 10, "null", &item(1, "a", P_19_99)),
    )
    .await;
    common::xadd(&mut r, &stream, "{}", "{not json").await;
    let applied = common::xadd(
        &mut r,
        &stream,
        &key(2),
        &event("c", 11, "null", &item(2, "b", P_19_99)),
    )
    .await;
    let mapping = items_mapping(&prefix);
    common::sync(
        common::config(&db, "c1", &mapping),
        std::slice::from_ref(&stream),
    )
    .await;
    // Two entries the group has not read yet, and another group with a consumer that
    // read one entry and never acknowledged it.
    for id in [3, 4] {
        common::xadd(
            &mut r,
            &stream,
            &key(id),
            &event("c", 12, "null", &item(id, "c", P_19_99)),
        )
        .await;
    }
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("other")
        .arg("0")
        .query_async(&mut r)
        .await
        .expect("XGROUP CREATE");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("other")
        .arg("ghost")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut r)
        .await
        .expect("XREADGROUP");

    let text = common::config_text(&db, "c1", &mapping);
    let (code, out, err) = common::redsink_cli(&text, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    let s = &json["streams"][0];
    assert_eq!(s["stream"], stream.as_str());
    assert_eq!(s["length"], 5);
    assert_eq!(s["dlq_length"], 1);
    assert_eq!(s["table"], "public.items");
    let groups = s["groups"].as_array().expect("groups");
    let group = |name: &str| {
        groups
            .iter()
            .find(|g| g["group"] == name)
            .unwrap_or_else(|| panic!("group {name} in {groups:?}"))
    };
    assert_eq!(group("redsink")["lag"], 2);
    assert_eq!(group("redsink")["pending"], 0);
    assert_eq!(group("other")["pending"], 1);
    assert_eq!(group("other")["consumers"][0]["name"], "ghost");
    assert!(group("other")["oldest_pending_idle_ms"].is_u64());
    assert_eq!(s["checkpoints"][0]["consumer_group"], "redsink");
    assert_eq!(s["checkpoints"][0]["last_id"], applied.as_str());

    let (code, out, err) = common::redsink_cli(&text, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("group redsink: lag 2, pending 0"), "{out}");
    assert!(out.contains("consumer ghost: pending 1"), "{out}");
    assert!(out.contains("dead letters 1"), "{out}");
    assert!(
        !out.contains("://") && !err.contains("://"),
        "no URL is printed: {out}{err}"
    );
    common::cleanup_streams(&prefix).await;
}
