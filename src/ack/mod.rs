//! Ack: [`Committed`] → XADD of dead letters, then XACK of every entry.
//! Input: the proof of a Postgres commit; output: entries removed from the group's PEL.
//! I/O: Redis (the shared, non-blocking connection), one pipelined round trip each
//! (on a cluster, one per hash slot, sent concurrently; a slot whose master is away
//! holds up no other: what it cannot take is acknowledged later, see `owed`).
//! Errors: [`AckError`]; all retryable ones are retried by the pipeline with the same
//! `Committed` (XADD to the DLQ may then repeat: dead letters are at-least-once).
//!
//! A dead letter carries the entry's original fields plus `redsink.error`,
//! `redsink.stream`, `redsink.entry_id` and `redsink.group`. A replay's acker leaves
//! out the dead letters that their dead-letter stream already holds ([`known`]).
//!
//! Errors that leave entries unacknowledged (a batch that failed, or was abandoned in an
//! outage) are noted per entry in the hash `<dlq stream>:errors`, so that an entry later
//! dead-lettered for being delivered too often says what went wrong. A note is removed
//! when its entry is dead-lettered; the hash expires 7 days after its last note.
//!
//! When the pipeline stops on a fatal error, the entries it read and did not fail on are
//! released: their delivery count is set back, so that a stop is not counted as a
//! delivery failure of entries that had nothing to do with it.

mod known;
mod owed;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::entry::{DeadLetter, EntryId, dead_letter_field};
use crate::redis::{Control, RedisError, admin, pipeline_by_key, redis_retryable};
use crate::write::Committed;

/// How long the last errors of unacknowledged entries are kept (refreshed by each note).
const ERRORS_TTL_SECS: u64 = 7 * 24 * 3600;

/// The hash of last errors that goes with the dead-letter stream `dlq`.
pub fn errors_key(dlq: &str) -> String {
    format!("{dlq}:errors")
}

#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error("redis: {context}")]
    Redis {
        context: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("redis: {context}")]
    Store {
        context: String,
        #[source]
        source: Box<RedisError>,
    },
}

impl AckError {
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Redis { source, .. } => redis_retryable(source),
            Self::Store { source, .. } => source.is_retryable(),
        }
    }
}

/// Acknowledges committed batches and writes dead letters.
#[derive(Clone)]
pub struct Acker {
    conn: Control,
    group: String,
    dlq_suffix: String,
    /// Pipelines sent to Redis, shared by the clones.
    round_trips: Arc<AtomicU64>,
    /// `false` for a replay: its entries were read with XRANGE, outside the group.
    xack: bool,
    /// For a replay: what the dead-letter streams hold, not to be dead-lettered again.
    known: Option<known::Known>,
    /// On a cluster: what slots that were away could not take yet, shared by the clones.
    owed: Arc<Mutex<owed::Owed>>,
}

impl Acker {
    pub fn new(conn: Control, group: &str, dlq_suffix: &str) -> Self {
        Self {
            conn,
            group: group.to_string(),
            dlq_suffix: dlq_suffix.to_string(),
            round_trips: Arc::default(),
            xack: true,
            known: None,
            owed: Arc::default(),
        }
    }

    /// An acker that writes dead letters but never XACKs (for replays, which read
    /// outside the consumer group), and leaves out those already in their dead-letter
    /// stream (by source entry ID or original fields: see [`known`]).
    pub fn dead_letters_only(mut self) -> Self {
        self.xack = false;
        self.known = Some(known::Known::default());
        self
    }

    /// Pipelines sent to Redis so far (by this acker and its clones).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// The dead-letter stream of `stream`.
    pub fn dlq_stream(&self, stream: &str) -> String {
        format!("{stream}{}", self.dlq_suffix)
    }

    /// The hash of last errors of the entries of `stream`.
    pub fn errors_key(&self, stream: &str) -> String {
        errors_key(&self.dlq_stream(stream))
    }

    /// Notes `error` as the last error of `entries`. Best effort: when Redis is what
    /// failed this fails too, and is only logged.
    pub async fn note_error(&mut self, entries: &[(Arc<str>, EntryId)], error: &str) {
        let mut by_stream: BTreeMap<&str, Vec<EntryId>> = BTreeMap::new();
        for (stream, id) in entries {
            by_stream.entry(stream).or_default().push(*id);
        }
        let stamped = format!(
            "{}: {error}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
        );
        let mut commands = Vec::new();
        for (stream, ids) in by_stream {
            let key = self.errors_key(stream);
            let mut hset = redis::cmd("HSET");
            hset.arg(&key);
            for id in ids {
                hset.arg(self.note_field(id)).arg(&stamped);
            }
            let mut expire = redis::cmd("EXPIRE");
            expire.arg(&key).arg(ERRORS_TTL_SECS);
            commands.push((key.clone().into_bytes(), hset));
            commands.push((key.into_bytes(), expire));
        }
        if let Err(e) = pipeline_by_key(&mut self.conn, commands).await {
            tracing::warn!(error = %e, "could not note the error of unacknowledged entries");
        }
    }

    /// Gives back one delivery of `entries` (read by `consumer`, not acknowledged, not
    /// the cause of the stop): after a fatal error they stay pending without having
    /// been charged a delivery, so restarting until the problem is fixed cannot
    /// dead-letter them for `max_deliveries`. Best effort, like [`Acker::note_error`].
    pub async fn release(&mut self, consumer: &str, entries: &[(Arc<str>, EntryId)]) -> u64 {
        let mut by_stream: BTreeMap<&str, Vec<EntryId>> = BTreeMap::new();
        for (stream, id) in entries {
            by_stream.entry(stream).or_default().push(*id);
        }
        let mut released = 0;
        for (stream, ids) in by_stream {
            match admin::release_entries(&mut self.conn, stream, &self.group, consumer, &ids).await
            {
                Ok(n) => released += n,
                Err(e) => {
                    tracing::warn!(stream, error = %e, "could not release unacknowledged entries")
                }
            }
        }
        released
    }

    /// The field of an entry's note: groups read the same entries and fail separately.
    fn note_field(&self, id: EntryId) -> String {
        format!("{}/{id}", self.group)
    }

    /// The last error noted for an entry, if any.
    pub async fn last_error(&mut self, stream: &str, id: EntryId) -> Option<String> {
        redis::cmd("HGET")
            .arg(self.errors_key(stream))
            .arg(self.note_field(id))
            .query_async::<Option<String>>(&mut self.conn)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "could not read the last error of an entry");
                None
            })
    }

    /// Dead letters first, then XACK: an entry leaves the PEL only once it is either
    /// in Postgres or in its dead-letter stream. Returns the dead letters left out
    /// because their dead-letter stream already held them (a replay's only).
    ///
    /// On a cluster each hash slot is acknowledged on its own: what a slot whose master
    /// is away cannot take is kept and sent again later (`owed`), and the call succeeds.
    pub async fn ack(&mut self, committed: &Committed) -> Result<Vec<DeadLetter>, AckError> {
        if self.xack && self.conn.is_cluster() {
            self.ack_by_slot(committed).await?;
            return Ok(Vec::new());
        }
        let already = self.dead_letter(committed.dead()).await?;
        self.xack(committed.acks()).await?;
        Ok(already)
    }

    /// Writes `dead` to the dead-letter streams, but for those a replay finds there
    /// already (returned).
    async fn dead_letter(&mut self, dead: &[DeadLetter]) -> Result<Vec<DeadLetter>, AckError> {
        if dead.is_empty() {
            return Ok(Vec::new());
        }
        let (dead, already) = self.not_yet_dead(dead).await?;
        if dead.is_empty() {
            return Ok(already);
        }
        let mut commands = Vec::with_capacity(dead.len());
        for d in &dead {
            let (dlq, cmd) = self.dead_letter_command(d);
            // Its last error, if one was noted, now lives in the dead letter.
            let errors = errors_key(&dlq);
            commands.push((dlq.into_bytes(), cmd));
            let mut hdel = redis::cmd("HDEL");
            hdel.arg(&errors).arg(self.note_field(d.entry.id));
            commands.push((errors.into_bytes(), hdel));
        }
        let sent = pipeline_by_key(&mut self.conn, commands)
            .await
            .map_err(|source| AckError::Redis {
                context: format!("writing {} dead letters", dead.len()),
                source,
            })?;
        self.round_trips.fetch_add(sent as u64, Ordering::Relaxed);
        if let Some(known) = &self.known {
            let suffix = &self.dlq_suffix;
            known.note(&dead, |s| format!("{s}{suffix}"));
        }
        Ok(already)
    }

    /// The XADD of `d` to its dead-letter stream (returned with it), logged.
    fn dead_letter_command(&self, d: &DeadLetter) -> (String, redis::Cmd) {
        let dlq = self.dlq_stream(&d.entry.stream);
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&dlq).arg("*");
        for (field, value) in d.entry.fields.iter().flatten() {
            cmd.arg(field.as_slice()).arg(value.as_slice());
        }
        cmd.arg(dead_letter_field::ERROR)
            .arg(&d.reason)
            .arg(dead_letter_field::STREAM)
            .arg(d.entry.stream.as_ref())
            .arg(dead_letter_field::ENTRY_ID)
            .arg(d.entry.id.to_string())
            .arg(dead_letter_field::GROUP)
            .arg(&self.group);
        tracing::warn!(
            stream = %d.entry.stream,
            entry = %d.entry.id,
            dlq = %dlq,
            error = %d.reason,
            "dead-lettered entry"
        );
        (dlq, cmd)
    }

    /// `dead` split into those to write and those a replay finds in their dead-letter
    /// stream already (logged, left out).
    async fn not_yet_dead<'a>(
        &mut self,
        dead: &'a [DeadLetter],
    ) -> Result<(Vec<&'a DeadLetter>, Vec<DeadLetter>), AckError> {
        let Some(known) = &self.known else {
            return Ok((dead.iter().collect(), Vec::new()));
        };
        let suffix = &self.dlq_suffix;
        let (new, already) = known
            .split(&mut self.conn, dead, |s| format!("{s}{suffix}"))
            .await
            .map_err(|e| AckError::Store {
                context: "reading what the dead-letter streams hold".into(),
                source: Box::new(e),
            })?;
        for d in &already {
            tracing::info!(
                stream = %d.entry.stream,
                entry = %d.entry.id,
                "already in the dead-letter stream: not dead-lettered again"
            );
        }
        Ok((new, already.into_iter().cloned().collect()))
    }

    async fn xack(&mut self, acks: &[(Arc<str>, EntryId)]) -> Result<(), AckError> {
        if acks.is_empty() || !self.xack {
            return Ok(());
        }
        let mut by_stream: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (stream, id) in acks {
            by_stream.entry(stream).or_default().push(id.to_string());
        }
        let commands = by_stream
            .into_iter()
            .map(|(stream, ids)| {
                let mut cmd = redis::cmd("XACK");
                cmd.arg(stream).arg(&self.group).arg(ids);
                (stream.as_bytes().to_vec(), cmd)
            })
            .collect();
        let sent = pipeline_by_key(&mut self.conn, commands)
            .await
            .map_err(|source| AckError::Redis {
                context: format!("XACK of {} entries", acks.len()),
                source,
            })?;
        self.round_trips.fetch_add(sent as u64, Ordering::Relaxed);
        Ok(())
    }
}
