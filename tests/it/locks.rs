//! Instances that wait for each other: writers of disjoint keys never do, and one that
//! froze mid-transaction holds the others up only until Postgres ends its session.

use std::time::{Duration, Instant};

use redsink::keyhash::fnv1a64;

use crate::common::{
    Running, TestDb, config, config_text, dead_letters, drained, pending, wait_for,
};
use crate::race::{batch, instance};
use crate::{ITEMS, add_change, event, item, items, key};

/// Item IDs in 1..=180 whose key falls on `shard` of 3 (the producer's convention).
fn shard(shard: u64) -> Vec<i64> {
    (1..=180)
        .filter(|id| fnv1a64(key(*id).as_bytes()) % 3 == shard)
        .collect()
}

#[tokio::test]
async fn instances_on_disjoint_shards_commit_while_the_other_holds_its_transaction() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    // Writing the row named "slow" takes 3 s, inside the writing transaction.
    db.exec(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$;
         CREATE TRIGGER slow BEFORE INSERT ON public.items FOR EACH ROW WHEN (NEW.name = 'slow') EXECUTE FUNCTION slow();",
    )
    .await;
    let ((mut catalog_a, a), (mut catalog_b, b)) = (instance(&db).await, instance(&db).await);
    let (keys_a, keys_b) = (shard(0), shard(1));
    // A's first row is the slow one.
    let events = |keys: &[i64], name: &str| -> Vec<(i64, String)> {
        keys.iter()
            .map(|id| {
                let name = if *id == keys_a[0] { "slow" } else { name };
                (*id, event("c", 50, "null", &item(*id, name, "B88=")))
            })
            .collect()
    };
    let batch_a = batch(&mut catalog_a, &events(&keys_a, "a")).await;
    let batch_b = batch(&mut catalog_b, &events(&keys_b, "b")).await;

    // A's transaction stays open for 3 s; B, on the other shard, must not wait for it.
    let slow = tokio::spawn(async move { a.write(&batch_a).await.map(|c| c.rows()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let written = tokio::time::timeout(Duration::from_millis(1500), b.write(&batch_b))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "B waited for A's open transaction: {:?} and counting",
                started.elapsed()
            )
        })
        .expect("B commits");
    assert_eq!(written.rows(), keys_b.len());
    assert!(!slow.is_finished(), "A's transaction was still open");
    assert_eq!(slow.await.expect("task").expect("A commits"), keys_a.len());
    assert_eq!(items(&db).await.len(), keys_a.len() + keys_b.len());
}

/// A `redsink run` process, stopped and killed if the test ends early.
struct Instance(std::process::Child);

impl Instance {
    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.0.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        let _ = std::process::Command::new("kill")
            .arg("-CONT")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (pid, state, wait event type) of the sessions of redsink in `db`.
async fn sessions(db: &TestDb) -> Vec<(i32, Option<String>, Option<String>)> {
    sqlx::query_as(
        "SELECT pid, state, wait_event_type FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'redsink'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("pg_stat_activity")
}

/// (id, name) of every item.
async fn names(db: &TestDb) -> Vec<(i32, String)> {
    sqlx::query_as("SELECT id, name::text FROM public.items ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("names")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_instance_holds_the_others_up_only_until_postgres_ends_its_session() {
    let db = TestDb::new().await;
    db.exec(&ITEMS.replace(" qty int)", " qty int, _redsink_version bytea)"))
        .await;
    db.exec("INSERT INTO public.items VALUES (1, 'old', 1, 1, NULL)")
        .await;
    let prefix = crate::common::unique("s");
    let (stream_a, stream_b) = (format!("{prefix}:a"), format!("{prefix}:b"));
    // Both instances write items 1..=20; of each item one of them has the newer change.
    let mut r = crate::common::redis().await;
    for id in 1..=20 {
        let (lsn_a, lsn_b) = if id % 2 == 0 { (1000, 10) } else { (10, 1000) };
        let (a, b) = (item(id, "a", "B88="), item(id, "b", "B88="));
        add_change(&mut r, &stream_a, id, "u", lsn_a + id as u64, "null", &a).await;
        add_change(&mut r, &stream_b, id, "u", lsn_b + id as u64, "null", &b).await;
    }
    let mapping = |s: &str| format!("[[mapping]]\nstreams = [\"{s}\"]\ntable = \"public.items\"\n");
    // Short timeouts, from the environment (A) and the config (B).
    let timeouts = [
        ("REDSINK_POSTGRES_LOCK_TIMEOUT", "300ms"),
        ("REDSINK_POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT", "1s"),
    ];

    // The test holds item 1's row lock, so A stops inside its transaction, after its
    // key locks; A is frozen there, then the row lock is released.
    let mut hold = db.pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM public.items WHERE id = 1 FOR UPDATE")
        .execute(&mut *hold)
        .await
        .expect("row lock");
    let dir = std::env::temp_dir().join(crate::common::unique("locks"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("a.toml");
    std::fs::write(&path, config_text(&db, "frozen", &mapping(&stream_a))).expect("config");
    let a = Instance(
        std::process::Command::new(env!("CARGO_BIN_EXE_redsink"))
            .args(["run", "--config"])
            .arg(&path)
            .envs(timeouts)
            .env("REDSINK_LOG", "warn")
            .spawn()
            .expect("start redsink"),
    );
    wait_for(
        "A waiting for the row lock",
        Duration::from_secs(20),
        || async {
            sessions(&db)
                .await
                .iter()
                .any(|s| s.2.as_deref() == Some("Lock"))
        },
    )
    .await;
    a.signal("STOP");
    hold.commit().await.expect("release the row lock");
    wait_for(
        "A idle in its transaction",
        Duration::from_secs(5),
        || async {
            let s = sessions(&db).await;
            s.iter()
                .any(|s| s.1.as_deref() == Some("idle in transaction"))
        },
    )
    .await;

    // B writes the same keys: it waits (lock_timeout, retries) until Postgres ends A's
    // session after idle_in_transaction_session_timeout, then commits.
    let mut config_b = config(&db, "other", &mapping(&stream_b));
    config_b.postgres.lock_timeout = Duration::from_millis(300);
    config_b.postgres.idle_in_transaction_session_timeout = Duration::from_secs(1);
    let b = Running::start(config_b);
    let started = Instant::now();
    wait_for("B to apply its stream", Duration::from_secs(15), || async {
        drained(
            &mut crate::common::redis().await,
            std::slice::from_ref(&stream_b),
            "redsink",
        )
        .await
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "B waited for A's locks"
    );
    assert_eq!(
        pending(&mut r, &stream_a, "redsink").await,
        20,
        "A acked nothing"
    );

    // A wakes up: its transaction is gone, so it writes its batch again and acks it.
    a.signal("CONT");
    wait_for("A to apply its stream", Duration::from_secs(15), || async {
        drained(
            &mut crate::common::redis().await,
            std::slice::from_ref(&stream_a),
            "redsink",
        )
        .await
    })
    .await;
    let mut a = a;
    assert!(
        a.0.try_wait().expect("wait").is_none(),
        "A is still running"
    );
    let expected: Vec<(i32, String)> = (1..=20)
        .map(|id| (id, if id % 2 == 0 { "a" } else { "b" }.to_string()))
        .collect();
    assert_eq!(names(&db).await, expected, "each item at its newest change");
    for s in [&stream_a, &stream_b] {
        assert!(dead_letters(&mut r, s).await.is_empty(), "{s}");
    }
    b.stop().await.expect("B stops cleanly");
    a.signal("TERM");
    let status = a.0.wait().expect("wait");
    assert!(status.success(), "A exits cleanly: {status:?}");
    std::fs::remove_dir_all(&dir).ok();
    crate::common::cleanup_streams(&prefix).await;
}

/// Alone, an instance lets batches grow to `batch.max_batch` (one lock per table beyond
/// 1024 keys); once another consumer of its group reads, it keeps them to 1024 entries
/// (one lock per key), and the newcomer does so from its start.
#[tokio::test]
async fn batches_keep_to_key_locks_while_another_instance_reads() {
    let db = TestDb::new().await;
    db.exec(ITEMS).await;
    let prefix = crate::common::unique("share");
    let text = |consumer: &str| {
        config_text(&db, consumer, "").replace("max_batch = 500", "max_batch = 4000")
            + &crate::items_mapping(&prefix)
    };
    let others = |l: &str| l.contains("other instances read this group");
    let mut a = crate::common::Spawned::start(&text("a"), &["run"], "info");
    assert!(
        a.wait_line(Duration::from_secs(30), |l| l.contains("started"))
            .is_some(),
        "A did not start: {}",
        a.log()
    );
    // A reads (its consumer exists) before B looks.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut b = crate::common::Spawned::start(&text("b"), &["run"], "info");
    let line = b.wait_line(Duration::from_secs(30), others);
    assert!(
        line.is_some_and(|l| l.contains("max_batch=1024")),
        "B: {}",
        b.log()
    );
    // A looks again every 5 s.
    assert!(
        a.wait_line(Duration::from_secs(20), others).is_some(),
        "A did not notice B: {}",
        a.log()
    );
    assert!(!a.log().contains("no other instance"), "{}", a.log());
}
