//! Convergence through the real decode → map → batch → write path: any interleaving,
//! duplication and batching of per-key histories ends in the in-order final state.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};

use redsink::batch::Batcher;
use redsink::config::MappingConfig;
use redsink::map::Mapping;
use redsink::table::TableName;
use redsink::write::{self, Catalog, Writer};

use crate::common::TestDb;
use crate::{ITEMS, compact_entry, event, to_change};

/// One source change of one key: `None` = delete, else (name, qty).
type Change = Option<(String, i32)>;

fn arb_history() -> impl Strategy<Value = Vec<Change>> {
    proptest::collection::vec(
        proptest::option::weighted(0.75, ("[a-z]{1,6}", 0..1000i32)),
        1..6,
    )
}

/// Events as (key id, lsn, value JSON), lsn increasing per key in history order.
fn events(histories: &[Vec<Change>]) -> Vec<(i64, u64, String)> {
    let mut out = Vec::new();
    let mut lsn = 100;
    for (k, history) in histories.iter().enumerate() {
        let id = k as i64 + 1;
        for (i, change) in history.iter().enumerate() {
            lsn += 8;
            let value = match change {
                None => event("d", lsn, &format!(r#"{{"id":{id}}}"#), "null"),
                Some((name, qty)) => {
                    let op = if i == 0 { "c" } else { "u" };
                    event(
                        op,
                        lsn,
                        "null",
                        &format!(r#"{{"id":{id},"name":"{name}","qty":{qty}}}"#),
                    )
                }
            };
            out.push((id, lsn, value));
        }
    }
    out
}

/// The state after applying every history in order.
fn in_order(histories: &[Vec<Change>]) -> Vec<(i32, String, i32)> {
    let mut rows = BTreeMap::new();
    for (k, history) in histories.iter().enumerate() {
        if let Some(Some((name, qty))) = history.last() {
            rows.insert(k as i32 + 1, (name.clone(), *qty));
        }
    }
    rows.into_iter().map(|(id, (n, q))| (id, n, q)).collect()
}

#[test]
fn any_delivery_order_duplication_and_batching_converges() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (db, mut catalog, writer, mapping) = rt.block_on(async {
        let db = TestDb::new().await;
        db.exec(ITEMS).await;
        let pool = write::connect(&db.postgres(2)).await.expect("pg");
        write::migrate(&pool).await.expect("migrate");
        let config: MappingConfig =
            toml::from_str("streams = [\"s\"]\ntable = \"public.items\"").expect("mapping");
        (
            db,
            Catalog::new(pool.clone()),
            Writer::new(pool, "redsink"),
            Mapping::compile(0, &config).expect("compiles"),
        )
    });
    let table = rt
        .block_on(catalog.table(&TableName::parse("public.items").expect("name")))
        .expect("table");

    let strategy = (
        proptest::collection::vec(arb_history(), 1..4),
        any::<u64>(),
        proptest::collection::vec(1usize..6, 1..8),
    );
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 40,
        ..ProptestConfig::default()
    });
    let result = runner.run(&strategy, |(histories, seed, chunks)| {
        let mut all = events(&histories);
        // Duplicate some events, then shuffle deterministically from `seed`.
        let dups: Vec<_> = all
            .iter()
            .filter(|(_, lsn, _)| (lsn ^ seed) % 3 == 0)
            .cloned()
            .collect();
        all.extend(dups);
        let mut state = seed | 1;
        for i in (1..all.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            all.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let actual = rt.block_on(async {
            db.exec("TRUNCATE public.items; TRUNCATE redsink.tombstones")
                .await;
            let mut batcher = Batcher::new(1000, Duration::from_secs(60));
            let mut sizes = chunks.iter().cycle();
            let mut left = *sizes.next().unwrap_or(&1);
            for (n, (id, _, value)) in all.iter().enumerate() {
                let entry = compact_entry(n as u64 + 1, *id, value);
                batcher.push_row(to_change(&mapping, &table, &entry), entry, Instant::now());
                left -= 1;
                if left == 0 {
                    let _ = writer.write(&batcher.take()).await.expect("write");
                    left = *sizes.next().unwrap_or(&1);
                }
            }
            let _ = writer.write(&batcher.take()).await.expect("write");
            sqlx::query_as::<_, (i32, String, i32)>(
                "SELECT id, name, qty FROM public.items ORDER BY id",
            )
            .fetch_all(&db.pool)
            .await
            .expect("rows")
        });
        prop_assert_eq!(actual, in_order(&histories));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(async { drop(db) });
}
