//! Instances that wait for each other: writers of disjoint keys never do, and one that
//! froze mid-transaction holds the others up only until Postgres ends its session.

use std::time::{Duration, Instant};

use redsink::keyhash::fnv1a64;

use crate::common::TestDb;
use crate::race::{batch, instance};
use crate::{ITEMS, event, item, items, key};

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
