//! Transaction mode's tables: events staged by the instances that read them
//! (`redsink.tx_events`, inserted in the batch's own transaction), and what the
//! committer reads and writes around applying whole source transactions: its place
//! in the transaction stream (`redsink.tx_progress`, fenced by `redsink.tx_fence`),
//! the staged events of the transactions it applies, the foreign keys between target
//! tables (the order it writes them in).
//! I/O: Postgres. Errors: [`WriteError`]; [`is_fenced`] tells that another committer
//! applied transactions meanwhile.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use sqlx::{PgConnection, PgPool, Row as _};

use super::WriteError;
use super::sql::quote_literal;
use crate::batch::Staged;
use crate::entry::{EntryId, EntryRef, StreamEntry};
use crate::table::TableName;

/// The SQLSTATE `redsink.tx_fence` raises.
const FENCED: &str = "RS409";

/// Whether the error says another committer applied transactions since this one read
/// its progress: read it again and go on from there.
pub fn is_fenced(e: &WriteError) -> bool {
    match e {
        WriteError::Postgres {
            source: sqlx::Error::Database(db),
            ..
        } => db.code().as_deref() == Some(FENCED),
        _ => false,
    }
}

/// An entry's fields as one value: for each field, its name's and its value's
/// length (4 bytes, big-endian) and bytes.
fn encode_fields(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let size = fields.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(size);
    for (k, v) in fields {
        for part in [k, v] {
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

/// [`encode_fields`] read back; `None` if the bytes are not its output.
fn decode_fields(mut bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let take = |bytes: &mut &[u8]| -> Option<Vec<u8>> {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if rest.len() < len {
            return None;
        }
        let (part, rest) = rest.split_at(len);
        *bytes = rest;
        Some(part.to_vec())
    };
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let k = take(&mut bytes)?;
        let v = take(&mut bytes)?;
        fields.push((k, v));
    }
    Some(fields)
}

/// Inserts a batch's staged events (one statement; an event staged before, by an
/// earlier delivery, is left as it is).
pub(super) async fn stage(
    conn: &mut PgConnection,
    group: &str,
    staged: &[Staged],
) -> Result<(), WriteError> {
    let mut streams = Vec::with_capacity(staged.len());
    let mut ids = Vec::with_capacity(staged.len());
    let mut txs = Vec::with_capacity(staged.len());
    let mut orders = Vec::with_capacity(staged.len());
    let mut fields: Vec<Option<Vec<u8>>> = Vec::with_capacity(staged.len());
    for s in staged {
        streams.push(s.entry.stream.to_string());
        ids.push(s.entry.id.to_string());
        txs.push(s.tx_id.clone());
        orders.push(s.total_order);
        fields.push(match (&s.entry.fields, s.dead) {
            (Some(f), false) => Some(encode_fields(f)),
            _ => None,
        });
    }
    sqlx::query(
        "INSERT INTO redsink.tx_events (consumer_group, stream, entry_id, tx_id, total_order, fields) \
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::int8[], $6::bytea[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(group)
    .bind(streams)
    .bind(ids)
    .bind(txs)
    .bind(orders)
    .bind(fields)
    .execute(conn)
    .await
    .map_err(WriteError::pg("staging events of source transactions"))?;
    Ok(())
}

/// The committer's place in the transaction stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The last END (or BEGIN) applied or passed.
    pub end_id: EntryId,
    /// Commits so far: the fence.
    pub seq: i64,
    /// A transaction being applied in pieces, and its events applied so far.
    pub piece: Option<(String, i64)>,
    /// Transactions applied so far.
    pub applied: i64,
}

/// A staged event read back.
#[derive(Debug, Clone)]
pub struct StagedEvent {
    pub tx_id: String,
    pub total_order: i64,
    /// With its fields; `fields` is `None` for a dead-lettered event's marker.
    pub entry: StreamEntry,
}

/// What the committer's commit records with the rows it writes.
#[derive(Debug, Clone)]
pub struct TxFinish {
    pub stream: String,
    /// The progress read before (the fence).
    pub seq: i64,
    /// The new place in the transaction stream.
    pub end_id: EntryId,
    pub piece: Option<(String, i64)>,
    /// Whole transactions applied by this commit.
    pub applied: i64,
    /// The staged events applied (removed).
    pub events: Vec<EntryRef>,
    /// Transactions applied without all their events.
    pub late: Vec<String>,
}

/// Transaction mode's tables, for the committer.
#[derive(Clone)]
pub struct TxStore {
    pool: PgPool,
    group: Arc<str>,
}

impl TxStore {
    pub fn new(pool: PgPool, group: &str) -> Self {
        Self {
            pool,
            group: Arc::from(group),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The progress on `stream`, starting it at `start` if there is none yet.
    pub async fn progress(&self, stream: &str, start: EntryId) -> Result<Progress, WriteError> {
        sqlx::query(
            "INSERT INTO redsink.tx_progress (consumer_group, stream, end_id) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&*self.group)
        .bind(stream)
        .bind(start.to_string())
        .execute(&self.pool)
        .await
        .map_err(WriteError::pg("starting the transaction progress"))?;
        self.read_progress(stream)
            .await?
            .ok_or_else(|| WriteError::Postgres {
                context: "reading the transaction progress: its row vanished".into(),
                source: sqlx::Error::RowNotFound,
            })
    }

    /// The progress on `stream`, if the committer ever started.
    pub async fn read_progress(&self, stream: &str) -> Result<Option<Progress>, WriteError> {
        let row = sqlx::query(
            "SELECT end_id, seq, piece_tx, piece_done, applied FROM redsink.tx_progress \
             WHERE consumer_group = $1 AND stream = $2",
        )
        .bind(&*self.group)
        .bind(stream)
        .fetch_optional(&self.pool)
        .await
        .map_err(WriteError::pg("reading the transaction progress"))?;
        Ok(row.map(|r| {
            let end: String = r.get(0);
            let piece: Option<String> = r.get(2);
            Progress {
                end_id: EntryId::parse(&end).unwrap_or(EntryId::ZERO),
                seq: r.get(1),
                piece: piece.map(|tx| (tx, r.get(3))),
                applied: r.get(4),
            }
        }))
    }

    /// The staged events of each of `txs` (markers included).
    pub async fn counts(&self, txs: &[String]) -> Result<HashMap<String, i64>, WriteError> {
        let rows = sqlx::query(
            "SELECT tx_id, count(*) FROM redsink.tx_events \
             WHERE consumer_group = $1 AND tx_id = ANY($2) GROUP BY tx_id",
        )
        .bind(&*self.group)
        .bind(txs)
        .fetch_all(&self.pool)
        .await
        .map_err(WriteError::pg("counting staged events"))?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The staged events of `txs`, in the order of `txs`, then `total_order`; at most
    /// `limit`.
    pub async fn fetch(
        &self,
        txs: &[String],
        limit: usize,
    ) -> Result<Vec<StagedEvent>, WriteError> {
        let rows = sqlx::query(
            "SELECT e.tx_id, e.total_order, e.stream, e.entry_id, e.fields \
             FROM redsink.tx_events e JOIN unnest($2::text[]) WITH ORDINALITY AS t(tx_id, n) \
             ON e.tx_id = t.tx_id WHERE e.consumer_group = $1 \
             ORDER BY t.n, e.total_order, e.stream, e.entry_id LIMIT $3",
        )
        .bind(&*self.group)
        .bind(txs)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(WriteError::pg("reading staged events"))?;
        Ok(rows.iter().filter_map(staged_event).collect())
    }

    /// Events staged after their transaction was applied without them (at most `limit`).
    pub async fn late(&self, limit: usize) -> Result<Vec<StagedEvent>, WriteError> {
        let rows = sqlx::query(
            "SELECT e.tx_id, e.total_order, e.stream, e.entry_id, e.fields \
             FROM redsink.tx_events e JOIN redsink.tx_late l \
             ON l.consumer_group = e.consumer_group AND l.tx_id = e.tx_id \
             WHERE e.consumer_group = $1 ORDER BY e.staged_at, e.total_order LIMIT $2",
        )
        .bind(&*self.group)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(WriteError::pg("reading late events"))?;
        Ok(rows.iter().filter_map(staged_event).collect())
    }

    /// Staged, not yet applied: (transactions, events, seconds the oldest has waited).
    pub async fn open(&self) -> Result<(i64, i64, f64), WriteError> {
        let row = sqlx::query(
            "SELECT count(DISTINCT tx_id), count(*), \
             COALESCE(EXTRACT(EPOCH FROM now() - min(staged_at))::float8, 0) \
             FROM redsink.tx_events WHERE consumer_group = $1",
        )
        .bind(&*self.group)
        .fetch_one(&self.pool)
        .await
        .map_err(WriteError::pg("counting open transactions"))?;
        Ok((row.get(0), row.get(1), row.get(2)))
    }

    /// The foreign keys among `tables`, as (referencing, referenced) pairs.
    pub async fn foreign_keys(
        &self,
        tables: &[TableName],
    ) -> Result<Vec<(TableName, TableName)>, WriteError> {
        let names: Vec<String> = tables
            .iter()
            .map(|t| format!("{}.{}", t.schema, t.name))
            .collect();
        let rows = sqlx::query(
            "SELECT cn.nspname, c.relname, pn.nspname, p.relname FROM pg_constraint k \
             JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace \
             JOIN pg_class p ON p.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace \
             WHERE k.contype = 'f' AND cn.nspname || '.' || c.relname = ANY($1) \
             AND pn.nspname || '.' || p.relname = ANY($1)",
        )
        .bind(names)
        .fetch_all(&self.pool)
        .await
        .map_err(WriteError::pg("reading the foreign keys between target tables"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let t = |s: usize, n: usize| TableName {
                    schema: r.get(s),
                    name: r.get(n),
                };
                (t(0, 1), t(2, 3))
            })
            .collect())
    }
}

fn staged_event(r: &sqlx::postgres::PgRow) -> Option<StagedEvent> {
    let stream: String = r.get(2);
    let id: String = r.get(3);
    let fields: Option<Vec<u8>> = r.get(4);
    Some(StagedEvent {
        tx_id: r.get(0),
        total_order: r.get(1),
        entry: StreamEntry {
            stream: Arc::from(stream.as_str()),
            id: EntryId::parse(&id)?,
            fields: match fields {
                Some(bytes) => Some(decode_fields(&bytes)?),
                None => None,
            },
            deliveries: 0,
        },
    })
}

/// Appended to the transaction's opening: deferrable constraints deferred, and the
/// progress row locked and checked (the fence).
pub(super) fn fence_sql(group: &str, finish: &TxFinish) -> Result<String, WriteError> {
    Ok(format!(
        "; SET CONSTRAINTS ALL DEFERRED; SELECT redsink.tx_fence({}, {}, {})",
        quote_literal(group)?,
        quote_literal(&finish.stream)?,
        finish.seq
    ))
}

/// Put before the `COMMIT`: the applied events removed, the progress moved, the
/// transactions applied without all their events remembered.
pub(super) fn finish_sql(group: &str, finish: &TxFinish) -> Result<String, WriteError> {
    let g = quote_literal(group)?;
    let mut sql = String::new();
    if !finish.events.is_empty() {
        let _ = write!(
            sql,
            "DELETE FROM redsink.tx_events WHERE consumer_group = {g} AND (stream, entry_id) IN ("
        );
        for (i, (stream, id)) in finish.events.iter().enumerate() {
            let comma = if i == 0 { "" } else { ", " };
            let _ = write!(sql, "{comma}({}, '{id}')", quote_literal(stream)?);
        }
        sql.push_str("); ");
    }
    let (piece_tx, piece_done) = match &finish.piece {
        Some((tx, done)) => (quote_literal(tx)?, *done),
        None => ("NULL".to_string(), 0),
    };
    let _ = write!(
        sql,
        "UPDATE redsink.tx_progress SET end_id = '{}', seq = seq + 1, piece_tx = {piece_tx}, \
         piece_done = {piece_done}, applied = applied + {}, updated_at = now() \
         WHERE consumer_group = {g} AND stream = {}; ",
        finish.end_id,
        finish.applied,
        quote_literal(&finish.stream)?
    );
    for tx in &finish.late {
        let _ = write!(
            sql,
            "INSERT INTO redsink.tx_late (consumer_group, tx_id) VALUES ({g}, {}) ON CONFLICT DO NOTHING; ",
            quote_literal(tx)?
        );
    }
    Ok(sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_survive_encoding() {
        let fields = vec![
            (b"{\"id\":1}".to_vec(), b"{\"op\":\"c\"}".to_vec()),
            (Vec::new(), vec![0, 255, 1]),
        ];
        assert_eq!(decode_fields(&encode_fields(&fields)), Some(fields));
        assert_eq!(decode_fields(&[0, 0, 0, 9, 1]), None);
        assert_eq!(decode_fields(&[]), Some(Vec::new()));
    }

    #[test]
    fn the_finish_quotes_what_it_interpolates() {
        let finish = TxFinish {
            stream: "app.transaction".into(),
            seq: 7,
            end_id: EntryId { ms: 5, seq: 1 },
            piece: Some(("t'1".into(), 10)),
            applied: 0,
            events: vec![(Arc::from("o'rders:0"), EntryId { ms: 4, seq: 0 })],
            late: vec!["x".into()],
        };
        let sql = finish_sql("g", &finish).expect("quoted");
        assert!(sql.contains("('o''rders:0', '4-0')"), "{sql}");
        assert!(sql.contains("piece_tx = 't''1', piece_done = 10"), "{sql}");
        assert!(sql.contains("end_id = '5-1'"), "{sql}");
        assert!(
            fence_sql("g", &finish)
                .expect("quoted")
                .ends_with("tx_fence('g', 'app.transaction', 7)")
        );
    }
}
