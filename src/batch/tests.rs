use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::map::{Column, ColumnType, RowOp, TableName, TableSchema, Version};

fn table() -> Arc<TableSchema> {
    let col = |n: &str| Column {
        name: n.into(),
        sql_type: "text".into(),
        ty: ColumnType {
            name: "text".into(),
            scale: None,
            precision: None,
        },
        is_array: false,
    };
    Arc::new(TableSchema {
        name: TableName::parse("public.t").expect("valid"),
        columns: vec![col("id"), col("a"), col("b")],
        unique_keys: vec![vec![0]],
    })
}

fn entry(stream: &str, ms: u64) -> StreamEntry {
    StreamEntry {
        stream: Arc::from(stream),
        id: EntryId { ms, seq: 0 },
        fields: Some(vec![]),
    }
}

fn upsert(key: &str, version: u8, cols: &[(usize, &str)]) -> RowChange {
    let mut pairs: Vec<(usize, Option<String>)> = vec![(0, Some(key.to_string()))];
    pairs.extend(cols.iter().map(|(c, v)| (*c, Some(v.to_string()))));
    let (columns, values) = pairs.into_iter().unzip();
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

#[test]
fn an_upsert_without_a_column_keeps_it_from_an_older_one() {
    let now = Instant::now();
    let mut b = Batcher::new(100, Duration::from_secs(1));
    // The snapshot read has `b`; the update's `b` was an unchanged TOASTed value.
    b.push_row(upsert("1", 1, &[(1, "a1"), (2, "big")]), entry("s", 1), now);
    b.push_row(upsert("1", 2, &[(1, "a2")]), entry("s", 2), now);
    let batch = b.take();
    let RowOp::Upsert { columns, values } = &batch.tables[0].rows[0].change.op else {
        panic!("expected an upsert");
    };
    assert_eq!(columns, &[0, 1, 2]);
    assert_eq!(values[1].as_deref(), Some("a2"));
    assert_eq!(values[2].as_deref(), Some("big"));
}

#[test]
fn a_delete_in_between_drops_older_columns() {
    let now = Instant::now();
    let mut b = Batcher::new(100, Duration::from_secs(1));
    b.push_row(upsert("1", 3, &[(1, "a3")]), entry("s", 1), now);
    b.push_row(upsert("1", 1, &[(1, "a1"), (2, "b1")]), entry("s", 2), now);
    b.push_row(delete("1", 2), entry("s", 3), now);
    let batch = b.take();
    let RowOp::Upsert { columns, .. } = &batch.tables[0].rows[0].change.op else {
        panic!("expected an upsert");
    };
    assert_eq!(columns, &[0, 1], "b1 was deleted before version 3");
    let first = batch.tables[0].rows[0]
        .delete_first
        .as_ref()
        .expect("delete first");
    assert_eq!(first.version, Version(vec![2]));
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

/// A row as the model sees it: column → value, or absent.
type State = Option<BTreeMap<usize, String>>;

fn apply(state: State, change: &RowChange) -> State {
    match &change.op {
        RowOp::Delete { .. } => None,
        RowOp::Upsert { columns, values } => {
            let mut row = state.unwrap_or_default();
            for (c, v) in columns.iter().zip(values) {
                row.insert(*c, v.clone().unwrap_or_default());
            }
            Some(row)
        }
    }
}

fn arb_change() -> impl Strategy<Value = RowChange> {
    (
        any::<bool>(),
        0u8..6,
        proptest::option::of("[a-c]"),
        proptest::option::of("[x-z]"),
    )
        .prop_map(|(is_delete, version, a, b)| {
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

proptest! {
    /// Writing the coalesced change once equals applying every change one by one in
    /// version order (ties in arrival order), from an absent row or an existing one.
    #[test]
    fn coalescing_equals_sequential_apply(changes in proptest::collection::vec(arb_change(), 1..8), exists in any::<bool>()) {
        let start: State = exists.then(|| BTreeMap::from([(0, "k".to_string()), (1, "a0".to_string()), (2, "b0".to_string())]));
        let mut sorted: Vec<&RowChange> = changes.iter().collect();
        sorted.sort_by(|a, b| a.version.cmp(&b.version));
        let sequential = sorted.iter().fold(start.clone(), |s, c| apply(s, c));

        let mut b = Batcher::new(100, Duration::from_secs(1));
        let now = Instant::now();
        for (i, c) in changes.iter().enumerate() {
            b.push_row(c.clone(), entry("s", i as u64), now);
        }
        let batch = b.take();
        prop_assert_eq!(batch.row_count(), 1);
        let row = &batch.tables[0].rows[0];
        prop_assert_eq!(row.entries.len(), changes.len());
        let start = match &row.delete_first {
            Some(d) => apply(start, d),
            None => start,
        };
        let coalesced = apply(start, &row.change);
        prop_assert_eq!(coalesced, sequential);
    }
}
