//! The advisory locks a batch's transaction takes before its data statements, so two
//! instances writing the same keys take turns, and instances writing different keys
//! never wait for each other (see [`lock_ids`] for why).
//! Pure: a batch → sorted (lock ID, shared) pairs, which [`super::sql::begin_sql`]
//! turns into the transaction's first statement. Errors: none.

use crate::batch::Batch;
use crate::keyhash::{fnv1a64, fnv1a64_on};
use crate::table::TableName;

/// Above this many key locks a batch locks whole tables instead. Every advisory lock
/// takes a slot of Postgres' shared lock table, which all sessions share: by default
/// `max_locks_per_transaction` (64) × about 120 backends, ~7,700 slots (a PostgreSQL
/// 15 server took 12,000 in one transaction and refused 16,000). While other instances
/// of its group read, the pipeline keeps batches to this many entries, so they never
/// fall back (`pipeline/share.rs`); docs/SCALING.md has the sums.
pub const MAX_KEY_LOCKS: usize = 1024;

/// The advisory locks a batch takes, sorted by ID (so two batches cannot deadlock), as
/// (ID, shared). Per table either its table lock exclusively (a truncate, or a batch
/// with more than [`MAX_KEY_LOCKS`] keys), or its table lock shared plus one exclusive
/// lock per key it writes. Exclusive and shared table locks exclude each other, so
/// both kinds of batches are safe against each other; two batches of shared table
/// locks wait for each other only on a key both write (or on two keys whose 64-bit
/// lock IDs collide, which only costs a wait).
///
/// Why: the version guard compares with what the statement sees. Without the locks,
/// instance A inserting v5 of an absent row and instance B deleting it at v6 at the
/// same time both see no conflict, and the row comes back at v5 after its delete.
pub fn lock_ids(batch: &Batch) -> Vec<(i64, bool)> {
    let mut keys: Vec<(i64, bool)> = Vec::new();
    let mut tables: Vec<(i64, bool)> = Vec::new();
    for t in &batch.tables {
        if t.truncate.is_some() {
            tables.push((table_lock(&t.table.name), false));
            continue;
        }
        tables.push((table_lock(&t.table.name), true));
        let prefix = key_lock_prefix(&t.table.name);
        keys.extend(t.rows.iter().map(|row| {
            (
                as_lock(fnv1a64_on(prefix, row.change.key_text.as_bytes())),
                false,
            )
        }));
    }
    keys.sort_unstable();
    keys.dedup();
    if keys.len() > MAX_KEY_LOCKS {
        keys.clear();
        for lock in &mut tables {
            lock.1 = false;
        }
    }
    let mut ids = tables;
    ids.extend(keys);
    // Exclusive (false) sorts first: a collision keeps the stronger mode.
    ids.sort_unstable();
    ids.dedup_by_key(|(id, _)| *id);
    ids
}

/// The lock of a whole table.
fn table_lock(table: &TableName) -> i64 {
    lock_id(&format!("redsink\0{table}"))
}

/// The lock of one key of a table (its key text, as the tombstones store it).
#[cfg(test)]
fn key_lock(table: &TableName, key_text: &str) -> i64 {
    lock_id(&format!("redsink\0{table}\0{key_text}"))
}

/// The hash state of a table's key locks before the key text: [`key_lock`] is this
/// continued over the key's text (hashed once per table and batch, not per row).
fn key_lock_prefix(table: &TableName) -> u64 {
    fnv1a64(format!("redsink\0{table}\0").as_bytes())
}

fn lock_id(text: &str) -> i64 {
    as_lock(fnv1a64(text.as_bytes()))
}

/// A 64-bit hash as an advisory lock ID (the same bits as a signed integer).
fn as_lock(hash: u64) -> i64 {
    i64::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::batch::Batcher;
    use crate::entry::{EntryId, StreamEntry};
    use crate::map::{RowChange, RowOp, TableSchema, Version};

    fn table(name: &str) -> Arc<TableSchema> {
        TableSchema::of_text(name, &["id", "a"])
    }

    /// A batch upserting `keys` of public.t.
    fn batch(keys: impl IntoIterator<Item = u64>) -> Batch {
        let mut b = Batcher::new(100_000, Duration::from_secs(1));
        for (n, key) in keys.into_iter().enumerate() {
            let change = RowChange {
                table: table("public.t"),
                key_columns: vec![0],
                key_text: format!("[\"{key}\"]"),
                version: Version(vec![1]),
                op: RowOp::Upsert {
                    columns: vec![0, 1],
                    values: [Some(key.to_string().as_str()), Some("x")]
                        .into_iter()
                        .collect(),
                },
            };
            let entry = StreamEntry {
                deliveries: 0,
                stream: Arc::from("s"),
                id: EntryId {
                    ms: n as u64 + 1,
                    seq: 0,
                },
                fields: Some(vec![]),
            };
            b.push_row(change, entry, Instant::now());
        }
        b.take()
    }

    #[test]
    fn a_batch_locks_its_table_shared_and_each_of_its_keys() {
        let ids = lock_ids(&batch([1, 2, 3, 2]));
        let t = table_lock(&TableName::parse("public.t").expect("valid"));
        assert_eq!(ids.len(), 4, "the table and three keys: {ids:?}");
        assert!(ids.contains(&(t, true)));
        assert_eq!(ids.iter().filter(|(_, shared)| !shared).count(), 3);
        assert!(
            ids.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, no repeats"
        );
    }

    #[test]
    fn batches_of_disjoint_keys_share_no_exclusive_lock() {
        let (a, b) = (lock_ids(&batch(0..500)), lock_ids(&batch(500..1000)));
        let exclusive = |ids: &[(i64, bool)]| -> Vec<i64> {
            ids.iter().filter(|(_, s)| !s).map(|(id, _)| *id).collect()
        };
        let (ea, eb) = (exclusive(&a), exclusive(&b));
        assert!(a.iter().all(|(id, _)| !eb.contains(id)));
        assert!(b.iter().all(|(id, _)| !ea.contains(id)));
        let same = lock_ids(&batch([7]));
        assert!(
            exclusive(&same).iter().all(|id| ea.contains(id)),
            "key 7 again"
        );
    }

    proptest::proptest! {
        /// The IDs are what they always were (instances of two releases lock alike).
        #[test]
        fn key_locks_are_the_hash_of_table_and_key(schema in "[a-z_]{1,8}", key in ".{0,40}") {
            let table = TableName::parse(&format!("{schema}.t")).expect("valid");
            let id = fnv1a64_on(key_lock_prefix(&table), key.as_bytes());
            proptest::prop_assert_eq!(as_lock(id), key_lock(&table, &key));
        }
    }

    #[test]
    fn a_key_lock_id_does_not_change() {
        let table = TableName::parse("public.t").expect("valid");
        // FNV-1a 64 of "redsink\0public.t\0[\"1\"]", as every release computes it.
        let expected = {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in b"redsink\0public.t\0[\"1\"]" {
                h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
            i64::from_ne_bytes(h.to_ne_bytes())
        };
        let ids = lock_ids(&batch([1]));
        assert!(ids.contains(&(expected, false)), "{ids:?} lacks {expected}");
        assert_eq!(key_lock(&table, "[\"1\"]"), expected);
    }

    #[test]
    fn too_many_keys_lock_the_table_exclusively() {
        let ids = lock_ids(&batch(0..MAX_KEY_LOCKS as u64 + 1));
        let t = table_lock(&TableName::parse("public.t").expect("valid"));
        assert_eq!(ids, vec![(t, false)]);
        assert_eq!(
            lock_ids(&batch(0..MAX_KEY_LOCKS as u64)).len(),
            MAX_KEY_LOCKS + 1
        );
    }
}
