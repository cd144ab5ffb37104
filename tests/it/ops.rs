//! The operator commands, run as the real binary against the real services.

use crate::common::{self, TestDb};
use crate::{ITEMS, P_19_99, event, item, items_mapping, key};

#[tokio::test]
async fn status_shows_lag_pending_consumers_checkpoints_and_dead_letters() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    crate::add_change(&mut r, &stream, 1, "c", 10, "null", &item(1, "a", P_19_99)).await;
    common::xadd(&mut r, &stream, "{}", "{not json").await;
    let applied =
        crate::add_change(&mut r, &stream, 2, "c", 11, "null", &item(2, "b", P_19_99)).await;
    let mapping = items_mapping(&prefix);
    common::sync(
        common::config(&db, "c1", &mapping),
        std::slice::from_ref(&stream),
    )
    .await;
    // Two entries the group has not read yet, and another group with a consumer that
    // read one entry and never acknowledged it.
    for id in [3, 4] {
        crate::add_change(
            &mut r,
            &stream,
            id,
            "c",
            12,
            "null",
            &item(id, "c", P_19_99),
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

#[tokio::test]
async fn dead_letters_can_be_listed_shown_retried_and_purged() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let dlq = format!("{stream}:dlq");
    let mut r = common::redis().await;
    // Two events for a column that does not exist yet, and one that is not JSON.
    let wide =
        |id: i64| format!(r#"{{"id":{id},"name":"w","price":"B88=","qty":1,"colour":"red"}}"#);
    let first = common::xadd(&mut r, &stream, &key(1), &event("c", 10, "null", &wide(1))).await;
    common::xadd(&mut r, &stream, &key(2), &event("c", 11, "null", &wide(2))).await;
    common::xadd(&mut r, &stream, "{}", "{not json").await;
    let mapping = items_mapping(&prefix);
    common::sync(
        common::config(&db, "c1", &mapping),
        std::slice::from_ref(&stream),
    )
    .await;
    assert_eq!(common::xlen(&mut r, &dlq).await, 3);
    let text = common::config_text(&db, "c1", &mapping);

    let (code, out, err) = common::redsink_cli(&text, &["dlq", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).expect("JSON");
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["entry_id"], first.as_str());
    assert_eq!(list[0]["stream"], stream.as_str());
    assert!(
        list[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("colour")),
        "{out}"
    );
    let ids: Vec<String> = list
        .iter()
        .map(|l| l["id"].as_str().unwrap_or_default().to_string())
        .collect();

    let (code, out, err) = common::redsink_cli(&text, &["dlq", "show", &ids[0]]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("from:  {stream} entry {first}")),
        "{out}"
    );
    assert!(
        out.contains("\"colour\":\"red\""),
        "the original fields: {out}"
    );

    // The column is added; the two retried events now apply through the normal path.
    db.exec("ALTER TABLE public.items ADD COLUMN colour text")
        .await;
    let (code, out, err) = common::redsink_cli(&text, &["dlq", "retry", &ids[0], &ids[1]]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(common::xlen(&mut r, &dlq).await, 1);
    common::sync(
        common::config(&db, "c1", &mapping),
        std::slice::from_ref(&stream),
    )
    .await;
    let colours: Vec<(i32, Option<String>)> =
        sqlx::query_as("SELECT id, colour FROM public.items ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .expect("rows");
    assert_eq!(
        colours,
        vec![(1, Some("red".into())), (2, Some("red".into()))]
    );

    let (code, out, _) = common::redsink_cli(&text, &["dlq", "purge", "--all"]);
    assert_ne!(code, 0, "purge without --yes changes nothing: {out}");
    assert_eq!(common::xlen(&mut r, &dlq).await, 1);
    let (code, _, err) = common::redsink_cli(&text, &["dlq", "purge", "--all", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(common::xlen(&mut r, &dlq).await, 0);
    let (code, _, err) = common::redsink_cli(&text, &["dlq", "show", "1-1"]);
    assert_ne!(code, 0);
    assert!(err.contains("no dead letter 1-1"), "{err}");
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn group_reset_redelivers_and_consumers_prune_removes_idle_ones() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    let first =
        crate::add_change(&mut r, &stream, 1, "c", 10, "null", &item(1, "a", P_19_99)).await;
    crate::add_change(&mut r, &stream, 2, "c", 11, "null", &item(2, "b", P_19_99)).await;
    let mapping = items_mapping(&prefix);
    common::sync(
        common::config(&db, "c1", &mapping),
        std::slice::from_ref(&stream),
    )
    .await;
    let text = common::config_text(&db, "c1", &mapping);

    let (code, out, _) = common::redsink_cli(&text, &["group", "reset", "--to", "0"]);
    assert_ne!(code, 0, "without --yes nothing changes");
    assert!(out.contains("would move group redsink to 0"), "{out}");
    let (code, _, err) = common::redsink_cli(&text, &["group", "reset", "--to", &first, "--yes"]);
    assert_eq!(code, 0, "{err}");
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&stream)
        .query_async(&mut r)
        .await
        .expect("XINFO");
    assert_eq!(
        groups[0].get("last-delivered-id"),
        Some(&redis::Value::BulkString(first.clone().into_bytes()))
    );

    // A consumer that read an entry and left.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("redsink")
        .arg("gone")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut r)
        .await
        .expect("XREADGROUP");
    // "gone" holds the entry it read: it is not pruned while that is pending.
    let (code, out, err) = common::redsink_cli(&text, &["consumers", "prune", "--idle", "0s"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed 0 consumers"), "{out}");
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("redsink")
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut r)
        .await
        .expect("XPENDING");
    let ids: Vec<&String> = pending.iter().map(|p| &p.0).collect();
    let _: i64 = redis::cmd("XACK")
        .arg(&stream)
        .arg("redsink")
        .arg(ids)
        .query_async(&mut r)
        .await
        .expect("XACK");
    // `--idle 0s` is raised to the safe floor (3 × block + 5 s = 5.6 s here).
    let r2 = r.clone();
    let stream2 = stream.clone();
    common::wait_for(
        "consumer gone idle for 5.6 s",
        std::time::Duration::from_secs(20),
        || {
            let (mut r, stream) = (r2.clone(), stream2.clone());
            async move {
                let list: Vec<std::collections::HashMap<String, redis::Value>> =
                    redis::cmd("XINFO")
                        .arg("CONSUMERS")
                        .arg(&stream)
                        .arg("redsink")
                        .query_async(&mut r)
                        .await
                        .unwrap_or_default();
                list.iter()
                    .any(|c| matches!(c.get("idle"), Some(redis::Value::Int(i)) if *i > 5700))
            }
        },
    )
    .await;
    let (code, out, err) = common::redsink_cli(&text, &["consumers", "prune", "--idle", "0s"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("--idle 0s is below the safe floor of 5s 600ms"),
        "{err}"
    );
    assert!(out.contains("removed consumer gone"), "{out}");
    assert!(
        common::consumers(&mut r, &stream, "redsink")
            .await
            .is_empty()
    );
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn migrate_creates_redsinks_schema_and_is_idempotent() {
    let db = TestDb::new().await;
    let text = common::config_text(&db, "c1", &items_mapping(&common::unique("s")));
    for _ in 0..2 {
        let (code, out, err) = common::redsink_cli(&text, &["migrate"]);
        assert_eq!(code, 0, "{out}{err}");
    }
    assert!(
        redsink::write::internal_tables_present(&db.pool)
            .await
            .expect("query")
    );
}

/// On a database redsink has not used yet, `check` says its schema will be created at
/// start (the role may CREATE), not that it is a problem.
#[tokio::test]
async fn check_on_a_fresh_database_says_the_schema_will_be_created() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let text = common::config_text(&db, "c1", &items_mapping(&common::unique("s")));
    let (_, out, err) = common::redsink_cli(&text, &["check"]);
    assert!(
        out.contains("ok: postgres: redsink's schema does not exist yet"),
        "{out}{err}"
    );
    assert!(
        !out.contains("problem: postgres: redsink's schema"),
        "{out}"
    );
    assert!(
        !redsink::write::internal_tables_present(&db.pool)
            .await
            .expect("query"),
        "check changes nothing"
    );
}

/// Shards' dead-letter streams can hold the same ID: `show` then asks which, like
/// `retry` and `purge`, instead of picking one.
#[tokio::test]
async fn dlq_show_asks_for_the_stream_when_an_id_is_in_two_dead_letter_streams() {
    let db = TestDb::new().await;
    let prefix = common::unique("s");
    let (a, b) = (format!("{prefix}:a"), format!("{prefix}:b"));
    let mut r = common::redis().await;
    for stream in [&a, &b] {
        let _: String = redis::cmd("XADD")
            .arg(format!("{stream}:dlq"))
            .arg("5-0")
            .arg("k")
            .arg("v")
            .arg("redsink.error")
            .arg(format!("bad in {stream}"))
            .arg("redsink.stream")
            .arg(stream)
            .query_async(&mut r)
            .await
            .expect("XADD");
    }
    let mapping = format!(
        "[[mapping]]\nstreams = [\"{prefix}:a\", \"{prefix}:b\"]\ntable = \"public.items\"\n"
    );
    let text = common::config_text(&db, "c1", &mapping);
    let (code, out, err) = common::redsink_cli(&text, &["dlq", "show", "5-0"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains(&format!(
            "dead letter 5-0 is in 2 dead-letter streams ({a}:dlq, {b}:dlq): say which with --stream"
        )),
        "{err}"
    );
    let (code, out, err) = common::redsink_cli(&text, &["dlq", "show", "5-0", "--stream", &b]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("dead letter 5-0 of {b}:dlq")),
        "{out}"
    );
    assert!(out.contains(&format!("error: bad in {b}")), "{out}");
    common::cleanup_streams(&prefix).await;
}
