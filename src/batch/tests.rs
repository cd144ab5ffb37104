use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::map::{RowOp, TableSchema, Version};

fn table() -> Arc<TableSchema> {
    TableSchema::of_text("public.t", &["id", "a", "b"])
}

fn entry(stream: &str, ms: u64) -> StreamEntry {
    StreamEntry {
        deliveries: 0,
        stream: Arc::from(stream),
        id: EntryId { ms, seq: 0 },
        fields: Some(vec![]),
    }
}

fn upsert(key: &str, version: u8, cols: &[(usize, &str)]) -> RowChange {
    let mut columns = vec![0];
    columns.extend(cols.iter().map(|(c, _)| *c));
    let values = std::iter::once(Some(key))
        .chain(cols.iter().map(|(_, v)| Some(*v)))
        .collect();
    RowChange {
        table: table(),
        key_columns: vec![0],
        key_text: format!("[\"{key}\"]"),
        version: Version(vec![version]),
        op: RowOp::Upsert { columns, values },
    }
}

fn delete(key: &str, version: u8) -> RowChange {
    RowChange {
        table: table(),
        key_columns: vec![0],
        key_text: format!("[\"{key}\"]"),
        version: Version(vec![version]),
        op: RowOp::Delete {
            key_values: vec![key.to_string()],
        },
    }
}

#[test]
fn coalesces_to_the_highest_version_whatever_the_arrival_order() {
    let now = Instant::now();
    let mut b = Batcher::new(100, Duration::from_secs(1));
    b.push_row(upsert("1", 5, &[(1, "new")]), entry("s", 1), now);
    b.push_row(upsert("1", 3, &[(1, "old")]), entry("s", 2), now);
    b.push_row(upsert("2", 1, &[(1, "x")]), entry("s", 3), now);
    let batch = b.take();
    assert_eq!(batch.row_count(), 2);
    let row = &batch.tables[0].rows[0];
    assert_eq!(row.change.version, Version(vec![5]));
    assert_eq!(row.entries.len(), 2, "the loser's entry is kept for acking");
    assert_eq!(row.entries[0].id.ms, 1, "the winner's entry comes first");
    assert_eq!(batch.acks.len(), 3);
    assert_eq!(
        batch.checkpoints,
        vec![(Arc::from("s"), EntryId { ms: 3, seq: 0 })]
    );
    assert!(b.is_empty());
}

fn chain_versions(row: &BatchRow) -> Vec<u8> {
    row.chain().map(|c| c.version.0[0]).collect()
}

#[test]
fn an_upsert_lacking_a_column_is_written_after_the_older_ones() {
    let now = Instant::now();
    let mut b = Batcher::new(100, Duration::from_secs(1));
    // The snapshot read has `b`; the update's `b` was an unchanged TOASTed value.
    b.push_row(upsert("1", 1, &[(1, "a1"), (2, "big")]), entry("s", 1), now);
    b.push_row(upsert("1", 2, &[(1, "a2")]), entry("s", 2), now);
    // A full upsert needs nothing before it.
    b.push_row(upsert("2", 1, &[(1, "x")]), entry("s", 3), now);
    b.push_row(upsert("2", 2, &[(1, "y"), (2, "z")]), entry("s", 4), now);
    let batch = b.take();
    assert_eq!(chain_versions(&batch.tables[0].rows[0]), vec![1, 2]);
    assert_eq!(chain_versions(&batch.tables[0].rows[1]), vec![2]);
}

#[test]
fn an_upsert_after_a_delete_is_written_after_the_delete() {
    let now = Instant::now();
    let mut b = Batcher::new(100, Duration::from_secs(1));
    b.push_row(upsert("1", 3, &[(1, "a3"), (2, "b3")]), entry("s", 1), now);
    b.push_row(upsert("1", 1, &[(1, "a1"), (2, "b1")]), entry("s", 2), now);
    b.push_row(delete("1", 2), entry("s", 3), now);
    let batch = b.take();
    let row = &batch.tables[0].rows[0];
    assert_eq!(
        chain_versions(row),
        vec![2, 3],
        "the delete, then the newest upsert"
    );
    assert!(matches!(row.before[0].op, RowOp::Delete { .. }));
    assert_eq!(
        row.entries[0].id.ms, 1,
        "the newest change's entry comes first"
    );
}

#[test]
fn flushes_by_size_and_by_age() {
    let t0 = Instant::now();
    let mut b = Batcher::new(2, Duration::from_millis(50));
    assert!(!b.should_flush(t0));
    assert_eq!(b.deadline(), None);
    b.push_skip(&Arc::from("s"), EntryId { ms: 1, seq: 0 }, t0);
    assert!(!b.should_flush(t0));
    assert!(b.should_flush(t0 + Duration::from_millis(50)));
    b.push_dead(entry("s", 2), "bad".into(), t0);
    assert!(b.should_flush(t0), "full");
    b.push_dead(entry("s", 2), "bad".into(), t0);
    let batch = b.take();
    assert_eq!(batch.dead.len(), 1, "an entry read twice is taken once");
    assert_eq!(batch.acks.len(), 2);
    assert_eq!(b.deadline(), None);
}

/// Postgres as the writer uses it: the row (column → value) with its version, and the
/// key's tombstone version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Db {
    row: Option<(BTreeMap<usize, String>, Option<u8>)>,
    tombstone: Option<u8>,
}

/// One version-guarded statement, as in `write::sql`.
fn apply(mut db: Db, change: &RowChange) -> Db {
    let v = change.version.0[0];
    let older = |row_version: Option<u8>| row_version.is_none_or(|r| r < v);
    match &change.op {
        RowOp::Delete { .. } => {
            if db.row.as_ref().is_some_and(|(_, rv)| older(*rv)) {
                db.row = None;
            }
            db.tombstone = Some(db.tombstone.map_or(v, |t| t.max(v)));
        }
        RowOp::Upsert { columns, values } => {
            if db.tombstone.is_some_and(|t| t >= v) {
                return db;
            }
            match &mut db.row {
                Some((_, rv)) if !older(*rv) => {}
                Some((row, rv)) => {
                    for (c, val) in columns.iter().zip(values.iter()) {
                        row.insert(*c, val.unwrap_or_default().to_string());
                    }
                    *rv = Some(v);
                }
                None => {
                    let row = columns
                        .iter()
                        .zip(values.iter())
                        .map(|(c, val)| (*c, val.unwrap_or_default().to_string()))
                        .collect();
                    db.row = Some((row, Some(v)));
                }
            }
        }
    }
    db
}

fn arb_change(version: u8) -> impl Strategy<Value = RowChange> {
    (
        any::<bool>(),
        proptest::option::of("[a-c]"),
        proptest::option::of("[x-z]"),
    )
        .prop_map(move |(is_delete, a, b)| {
            if is_delete {
                return delete("k", version);
            }
            let mut cols = Vec::new();
            if let Some(a) = &a {
                cols.push((1, a.as_str()));
            }
            if let Some(b) = &b {
                cols.push((2, b.as_str()));
            }
            upsert("k", version, &cols)
        })
}

/// Up to 7 changes with distinct versions (a source never gives two changes of a row
/// one version), in any arrival order.
fn arb_changes() -> impl Strategy<Value = Vec<RowChange>> {
    proptest::sample::subsequence((1u8..=12).collect::<Vec<_>>(), 1..8)
        .prop_flat_map(|versions| versions.into_iter().map(arb_change).collect::<Vec<_>>())
        .prop_shuffle()
}

fn arb_db() -> impl Strategy<Value = Db> {
    (
        proptest::option::of(proptest::option::of(0u8..14)),
        proptest::option::of(0u8..14),
    )
        .prop_map(|(row, tombstone)| Db {
            row: row.map(|rv| {
                (
                    BTreeMap::from([(0, "k".to_string()), (1, "a0".into()), (2, "b0".into())]),
                    rv,
                )
            }),
            tombstone,
        })
}

proptest! {
    /// Writing a batch's chain for a row leaves Postgres as writing every change one by
    /// one in version order would, whatever the row's state there before.
    #[test]
    fn coalescing_equals_sequential_apply(changes in arb_changes(), start in arb_db()) {
        let mut sorted: Vec<&RowChange> = changes.iter().collect();
        sorted.sort_by(|a, b| a.version.cmp(&b.version));
        let sequential = sorted.iter().fold(start.clone(), |db, c| apply(db, c));

        let mut b = Batcher::new(100, Duration::from_secs(1));
        let now = Instant::now();
        for (i, c) in changes.iter().enumerate() {
            b.push_row(c.clone(), entry("s", i as u64), now);
        }
        let batch = b.take();
        prop_assert_eq!(batch.row_count(), 1);
        let row = &batch.tables[0].rows[0];
        prop_assert_eq!(row.entries.len(), changes.len());
        let chained = row.chain().fold(start, apply);
        prop_assert_eq!(chained, sequential);
    }
}
