//! The advisory locks a batch's transaction takes before its data statements, so two
//! instances writing the same keys take turns (see [`lock_ids`] for why).
//! Pure: a batch → sorted (lock ID, shared) pairs, which [`super::sql::begin_sql`]
//! turns into the transaction's first statement. Errors: none.

use crate::batch::Batch;
use crate::keyhash::fnv1a64;
use crate::table::TableName;

/// Advisory-lock buckets per table: instances writing keys of the same bucket at once
/// take turns. Fixed, because every instance must map a key to the same lock.
const LOCK_BUCKETS: u64 = 16;
/// Above this many bucket locks a batch locks whole tables instead, so a batch over
/// many tables cannot exhaust Postgres' shared lock table.
const MAX_BUCKET_LOCKS: usize = 256;

/// The advisory locks a batch takes, sorted by ID (so two batches cannot deadlock), as
/// (ID, shared). Per table either its table lock exclusively (a truncate, or a batch
/// over many tables), or its table lock shared plus one exclusive lock per key bucket
/// it touches. Exclusive and shared table locks exclude each other, so both kinds of
/// batches are safe against each other.
///
/// Why: the version guard compares with what the statement sees. Without the locks,
/// instance A inserting v5 of an absent row and instance B deleting it at v6 at the
/// same time both see no conflict, and the row comes back at v5 after its delete.
pub fn lock_ids(batch: &Batch) -> Vec<(i64, bool)> {
    let id = |text: String| {
        let h = fnv1a64(text.as_bytes());
        i64::from_ne_bytes(h.to_ne_bytes())
    };
    let table_lock = |t: &TableName| id(format!("redsink\0{t}"));
    let mut buckets: Vec<(i64, bool)> = Vec::new();
    let mut tables: Vec<(i64, bool)> = Vec::new();
    for t in &batch.tables {
        if t.truncate.is_some() {
            tables.push((table_lock(&t.table.name), false));
            continue;
        }
        tables.push((table_lock(&t.table.name), true));
        // Which buckets the rows touch first, then one lock ID per bucket (not per row).
        let mut used = [false; LOCK_BUCKETS as usize];
        for row in &t.rows {
            let bucket = fnv1a64(row.change.key_text.as_bytes()) % LOCK_BUCKETS;
            used[bucket as usize] = true;
        }
        for (bucket, _) in used.iter().enumerate().filter(|(_, u)| **u) {
            buckets.push((id(format!("redsink\0{}\0{bucket}", t.table.name)), false));
        }
    }
    buckets.sort_unstable();
    buckets.dedup();
    if buckets.len() > MAX_BUCKET_LOCKS {
        buckets.clear();
        for lock in &mut tables {
            lock.1 = false;
        }
    }
    let mut ids = tables;
    ids.extend(buckets);
    ids.sort_unstable();
    ids.dedup_by_key(|(id, _)| *id);
    ids
}
