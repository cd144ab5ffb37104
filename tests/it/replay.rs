//! `redsink replay`: history re-applied with XRANGE, outside the consumer group.

use redsink::pipeline::{self, ReplayOptions};
use tokio_util::sync::CancellationToken;

use crate::common::{self, TestDb};
use crate::{ITEMS, P_19_99, P_24_50, event, item, items, items_mapping, key};

/// The group's last-delivered ID, entries read and lag on `stream`.
async fn group_state(r: &mut redis::aio::MultiplexedConnection, stream: &str) -> redis::Value {
    redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(r)
        .await
        .expect("XINFO GROUPS")
}

#[tokio::test]
async fn replay_restores_lost_rows_without_touching_the_group() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    let mut ids = Vec::new();
    for (id, e) in [
        (1, event("c", 10, "null", &item(1, "a", P_19_99))),
        (2, event("c", 11, "null", &item(2, "b", P_19_99))),
        (3, event("c", 12, "null", &item(3, "c", P_19_99))),
        (1, event("u", 13, "null", &item(1, "a2", P_24_50))),
    ] {
        ids.push(common::xadd(&mut r, &stream, &key(id), &e).await);
    }
    let config = common::config(&db, "c1", &items_mapping(&prefix));
    common::sync(config.clone(), std::slice::from_ref(&stream)).await;
    let synced = items(&db).await;
    assert_eq!(synced.len(), 3);

    // Somebody deletes rows by hand; a malformed entry sits in the history too.
    db.exec("DELETE FROM public.items WHERE id IN (1, 2)").await;
    let bad = common::xadd(&mut r, &stream, "{}", "{not json").await;
    let before = group_state(&mut r, &stream).await;

    let shutdown = CancellationToken::new();
    let mut seen = Vec::new();
    let stats = pipeline::replay(
        config.clone(),
        &ReplayOptions {
            from: "-".into(),
            ..ReplayOptions::default()
        },
        &shutdown,
        &mut |p| seen.push(p.clone()),
    )
    .await
    .expect("replay");
    assert_eq!(
        items(&db).await,
        synced,
        "the lost rows are back, newest versions"
    );
    assert_eq!(stats.read, 5);
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(
        group_state(&mut r, &stream).await,
        before,
        "the live group is untouched"
    );
    assert!(
        common::consumers(&mut r, &stream, "redsink")
            .await
            .is_empty(),
        "no consumer is registered by a replay"
    );
    let last = seen.last().expect("progress was reported");
    assert_eq!((last.entries, last.total), (5, 5));
    assert!((last.fraction - 1.0).abs() < 1e-9, "{last:?}");
    let dlq: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("{stream}:dlq"))
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await
        .expect("dlq");
    assert_eq!(dlq.len(), 1);
    let fields: std::collections::HashMap<_, _> = dlq[0].1.iter().cloned().collect();
    assert_eq!(fields.get("redsink.entry_id"), Some(&bad));
    assert_eq!(
        fields.get("redsink.group").map(String::as_str),
        Some("redsink:replay")
    );
    let checkpoint: String = sqlx::query_scalar(
        "SELECT last_id FROM redsink.checkpoints WHERE consumer_group = 'redsink:replay' AND stream = $1",
    )
    .bind(&stream)
    .fetch_one(&db.pool)
    .await
    .expect("replay checkpoint");
    assert_eq!(checkpoint, bad);

    // A range: only the entries from the third one to the fourth.
    db.exec("DELETE FROM public.items").await;
    let mut seen = Vec::new();
    let stats = pipeline::replay(
        config,
        &ReplayOptions {
            from: ids[2].clone(),
            to: Some(ids[3].clone()),
            streams: vec![stream.clone()],
            mappings: vec![0],
        },
        &shutdown,
        &mut |p| seen.push(p.clone()),
    )
    .await
    .expect("replay a range");
    assert_eq!(stats.read, 2);
    let last = seen.last().expect("progress was reported");
    assert_eq!((last.entries, last.total), (2, 2), "the range is counted");
    assert_eq!(
        items(&db).await,
        vec![
            (1, Some("a2".into()), Some("24.50".into()), Some(1)),
            (3, Some("c".into()), Some("19.99".into()), Some(3)),
        ]
    );
    common::cleanup_streams(&prefix).await;
}

#[tokio::test]
async fn replay_says_what_is_wrong_with_its_options() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let config = common::config(&db, "c1", &items_mapping(&prefix));
    let shutdown = CancellationToken::new();
    let run = |options: ReplayOptions| {
        let config = config.clone();
        let shutdown = shutdown.clone();
        async move {
            pipeline::replay(config, &options, &shutdown, &mut |_| {})
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        }
    };
    let bad_from = run(ReplayOptions {
        from: "last week".into(),
        ..ReplayOptions::default()
    })
    .await;
    assert!(bad_from.contains("--from \"last week\""), "{bad_from}");
    let bad_mapping = run(ReplayOptions {
        from: "-".into(),
        mappings: vec![3],
        ..ReplayOptions::default()
    })
    .await;
    assert!(bad_mapping.contains("--mapping 3"), "{bad_mapping}");
    let nothing = run(ReplayOptions {
        from: "-".into(),
        ..ReplayOptions::default()
    })
    .await;
    assert!(nothing.contains("nothing to replay"), "{nothing}");
}

#[tokio::test]
async fn the_replay_command_prints_progress_and_a_summary() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    crate::add_items(&stream, 3).await;
    let text = common::config_text(&db, "c1", &items_mapping(&prefix));
    let (code, out, err) = common::redsink_cli(&text, &["replay", "--from", "-"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replayed 3 entries"), "{out}");
    assert!(out.contains("3 rows written"), "{out}");
    assert!(
        err.contains("replay: 100.0% 3/3 entries"),
        "plain progress lines off a terminal: {err}"
    );
    assert_eq!(items(&db).await.len(), 3);
    let (code, _, err) = common::redsink_cli(&text, &["replay", "--from", "soon"]);
    assert_ne!(code, 0);
    assert!(err.contains("--from \"soon\""), "{err}");
    common::cleanup_streams(&prefix).await;
}

/// A replay does not dead-letter again what already waits in the dead-letter stream
/// (by entry ID, or the same original fields put back by `dlq retry`), and `status`
/// shows the replay's checkpoint as a replay, not as a group that vanished.
#[tokio::test]
async fn replay_does_not_dead_letter_again_what_the_dlq_holds() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let dlq = format!("{stream}:dlq");
    let mut r = common::redis().await;
    common::xadd(&mut r, &stream, "{}", "{not json").await;
    crate::add_change(&mut r, &stream, 1, "c", 10, "null", &item(1, "a", P_19_99)).await;
    common::xadd(&mut r, &stream, "{}", "{not json either").await;
    let mapping = items_mapping(&prefix);
    let config = common::config(&db, "c1", &mapping);
    common::sync(config.clone(), std::slice::from_ref(&stream)).await;
    assert_eq!(common::xlen(&mut r, &dlq).await, 2);
    let text = common::config_text(&db, "c1", &mapping);
    let letters: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&dlq)
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await
        .expect("dlq");
    // Retried, it fails again: the dead letter is back under the new entry's ID.
    let (code, _, err) = common::redsink_cli(&text, &["dlq", "retry", &letters[0].0]);
    assert_eq!(code, 0, "{err}");
    common::sync(config.clone(), std::slice::from_ref(&stream)).await;
    assert_eq!(common::xlen(&mut r, &dlq).await, 2);

    let (code, out, err) = common::redsink_cli(&text, &["replay", "--from", "0"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replayed 4 entries"), "{out}");
    assert!(out.contains("0 dead-lettered"), "{out}");
    assert!(out.contains("3 already dead-lettered"), "{out}");
    assert_eq!(
        common::xlen(&mut r, &dlq).await,
        2,
        "nothing the dead-letter stream holds is added again"
    );
    assert_eq!(items(&db).await.len(), 1);

    let (code, out, err) = common::redsink_cli(&text, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("no such group"), "{out}");
    assert!(out.contains("  replayed (redsink:replay): "), "{out}");
    common::cleanup_streams(&prefix).await;
}

/// The progress lines of `redsink replay` off a terminal: `(percent, entries, eta
/// seconds)` of each `replay: ` line.
fn progress_lines(err: &str) -> Vec<(f64, u64, Option<u64>)> {
    err.lines()
        .filter_map(|l| l.strip_prefix("replay: "))
        .map(|l| {
            let mut words = l.split_whitespace();
            let percent = words
                .next()
                .and_then(|w| w.strip_suffix('%'))
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("a percentage first: {l}"));
            let entries = words
                .next()
                .and_then(|w| w.split('/').next())
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("entries second: {l}"));
            let eta = l.split("ETA ").nth(1).map(|rest| {
                let secs = rest.split(['s', ',']).next().unwrap_or_default();
                secs.parse()
                    .unwrap_or_else(|_| panic!("an ETA in seconds: {l}"))
            });
            (percent, entries, eta)
        })
        .collect()
}

/// Progress counts entries, not time: a stream whose first entries are far older than
/// its last (IDs from 1970, then one of now) still shows the share of entries done,
/// rising, never above 100 %, ending at all of them, and no absurd ETA.
#[tokio::test]
async fn replay_progress_counts_entries_not_time() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    let mut pipe = redis::pipe();
    for id in 1..=300 {
        let value = event("c", 10 + id as u64, "null", &item(id, "x", P_19_99));
        pipe.cmd("XADD")
            .arg(&stream)
            .arg(format!("{id}-1"))
            .arg(key(id))
            .arg(value)
            .ignore();
    }
    let () = pipe.query_async(&mut r).await.expect("XADD old entries");
    crate::add_change(
        &mut r,
        &stream,
        301,
        "c",
        400,
        "null",
        &item(301, "x", P_19_99),
    )
    .await;
    let text = common::config_text(&db, "c1", &items_mapping(&prefix))
        .replace("max_batch = 500", "max_batch = 100");
    let (code, out, err) = common::redsink_cli(&text, &["replay", "--from", "-"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replayed 301 entries"), "{out}");
    let lines = progress_lines(&err);
    assert!(lines.len() >= 2, "a first and a final line: {err}");
    for (percent, entries, eta) in &lines {
        let share = *entries as f64 * 100.0 / 301.0;
        assert!(
            (percent - share).abs() <= 1.0,
            "{percent}% for {entries} of 301 entries: {err}"
        );
        assert!(eta.is_none_or(|s| s < 60), "ETA {eta:?}: {err}");
    }
    assert!(
        lines.windows(2).all(|w| w[0].0 <= w[1].0),
        "the percentage only rises: {err}"
    );
    assert_eq!(
        lines.last().map(|l| (l.0, l.1)),
        Some((100.0, 301)),
        "the final line says all entries: {err}"
    );
    assert!(err.contains("replay: 100.0% 301/301 entries"), "{err}");
    common::cleanup_streams(&prefix).await;
}

/// On a terminal the bar is redrawn in place, and a log record (here the WARN of a dead
/// letter in the middle of the replay) takes the bar's line, which is drawn again below
/// it: no log text ends up on the bar's line.
#[tokio::test]
async fn on_a_terminal_log_lines_do_not_print_over_the_bar() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = common::unique("s");
    let stream = format!("{prefix}:items");
    let mut r = common::redis().await;
    for id in 1..=301 {
        if id == 151 {
            common::xadd(&mut r, &stream, "{}", "{not json").await;
        } else {
            crate::add_change(
                &mut r,
                &stream,
                id,
                "c",
                10,
                "null",
                &item(id, "x", P_19_99),
            )
            .await;
        }
    }
    let text = common::config_text(&db, "c1", &items_mapping(&prefix))
        .replace("max_batch = 500", "max_batch = 100");
    let (code, out) = common::redsink_cli_on_terminal(&text, &["replay", "--from", "-"]);
    assert_eq!(code, 0, "{out:?}");
    assert!(
        out.contains("dead-lettered entry"),
        "the WARN is shown: {out:?}"
    );
    // What a terminal shows of each line: the text after the last erase or return.
    for shown in out
        .split("\r\n")
        .map(|l| l.rsplit(['\r']).next().unwrap_or(l))
    {
        let shown = shown.rsplit("\x1b[2K").next().unwrap_or(shown);
        assert!(
            !(shown.contains("dead-lettered entry") && shown.contains(" entries")),
            "a log line printed over the bar: {shown:?}\nall: {out:?}"
        );
    }
    assert!(out.contains("100.0% 301/301 entries"), "{out:?}");
    assert!(out.contains("replayed 301 entries"), "{out:?}");
    common::cleanup_streams(&prefix).await;
}
