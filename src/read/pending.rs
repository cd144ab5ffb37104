//! Our own pending entries (the PEL): re-read before anything new, at start-up and
//! after every error ([`Reader::rewind`]), with how often each was delivered (for
//! `max_deliveries`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use redis::Value;

use super::{Cursor, Reader};
use crate::entry::{EntryId, StreamEntry};
use crate::redis::RedisError;
use crate::redis::reply::parse_read_reply;

impl Reader {
    /// After an error the reply to a read may have been lost, leaving entries in our
    /// PEL that we never saw: read the PEL again from the start. Call only when every
    /// entry read so far has been acked or is about to be (else it would be read twice).
    /// Returns the streams whose group was gone and had to be created again: the
    /// stream was deleted or Redis lost it (a restart without persistence), so entries
    /// added before may never have been read.
    pub async fn rewind(&mut self) -> Result<Vec<Arc<str>>, RedisError> {
        // Reads in flight are waited for (a dropped one could still deliver after the
        // re-read below) and their answers dropped: what they delivered is in our PEL.
        self.settle().await;
        self.idle.clear();
        let names: Vec<Arc<str>> = self.streams.iter().map(|(s, _)| s.clone()).collect();
        for (_, cursor) in &mut self.streams {
            *cursor = Cursor::Pending(EntryId::ZERO);
        }
        // A stream deleted and re-created loses its group: make sure each one has it.
        let streams: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
        let created = self.create_groups(&streams, "0").await;
        let mut recreated = Vec::new();
        for (name, result) in names.iter().zip(created) {
            if result? {
                recreated.push(name.clone());
            }
        }
        Ok(recreated)
    }

    pub(super) async fn read_pending(
        &mut self,
        pending: &[(Arc<str>, EntryId)],
        count: usize,
    ) -> Result<Vec<StreamEntry>, RedisError> {
        let mut lanes: BTreeMap<u16, Vec<(Arc<str>, EntryId)>> = BTreeMap::new();
        for (s, id) in pending {
            lanes
                .entry(self.lane(s))
                .or_default()
                .push((s.clone(), *id));
        }
        let mut entries = Vec::new();
        let mut read = Vec::new();
        for (lane, streams) in lanes {
            match self.read_lane_pending(&streams, count).await {
                Ok(got) => {
                    entries.extend(got);
                    read.extend(streams);
                }
                // On a cluster, a master that is away stops only its own lane, which
                // re-reads these entries when it is back.
                Err(e) if self.fails_alone(&e) => self.lane_failed(lane, e),
                Err(e) => return Err(e),
            }
        }
        if let Some((connected, named)) = self.control.moved().await {
            return Err(RedisError::MasterMoved {
                context: "XREADGROUP (own pending entries)",
                connected,
                named,
            });
        }
        // These were delivered before: ask how often (for max_deliveries).
        for (stream, _) in &read {
            self.fill_deliveries(stream, &mut entries).await?;
        }
        self.advance(&read, &entries);
        if !entries.is_empty() {
            tracing::info!(count = entries.len(), "re-reading own pending entries");
        }
        Ok(entries)
    }

    /// One lane's pending entries of `streams`, each after its ID.
    async fn read_lane_pending(
        &mut self,
        streams: &[(Arc<str>, EntryId)],
        count: usize,
    ) -> Result<Vec<StreamEntry>, RedisError> {
        let mut cmd = self.xreadgroup(count);
        cmd.arg("STREAMS");
        for (s, _) in streams {
            cmd.arg(s.as_ref());
        }
        for (_, id) in streams {
            cmd.arg(id.to_string());
        }
        self.round_trips += 1;
        let reply: Value = cmd
            .query_async(&mut self.control)
            .await
            .map_err(RedisError::redis("XREADGROUP (own pending entries)"))?;
        parse_read_reply(reply)
    }

    /// Moves each stream's cursor past the pending entries that came back for it
    /// (`entries`); a stream with nothing left pending switches to new entries.
    pub(super) fn advance(&mut self, read: &[(Arc<str>, EntryId)], entries: &[StreamEntry]) {
        for (stream, _) in read {
            let last = entries
                .iter()
                .filter(|e| e.stream == *stream)
                .map(|e| e.id)
                .max();
            if let Some((_, cursor)) = self.streams.iter_mut().find(|(s, _)| s == stream) {
                *cursor = match last {
                    Some(id) => Cursor::Pending(id),
                    None => Cursor::New,
                };
            }
        }
    }

    /// Sets `deliveries` of this consumer's pending entries of `stream` among `entries`,
    /// from XPENDING over their ID range (one round trip).
    pub(super) async fn fill_deliveries(
        &mut self,
        stream: &Arc<str>,
        entries: &mut [StreamEntry],
    ) -> Result<(), RedisError> {
        let ids: Vec<EntryId> = entries
            .iter()
            .filter(|e| e.stream == *stream && e.fields.is_some())
            .map(|e| e.id)
            .collect();
        let (Some(first), Some(last)) = (ids.iter().min(), ids.iter().max()) else {
            return Ok(());
        };
        self.round_trips += 1;
        let reply: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(stream.as_ref())
            .arg(&self.group)
            .arg(first.to_string())
            .arg(last.to_string())
            .arg(ids.len())
            .arg(&self.consumer)
            .query_async(&mut self.control)
            .await
            .map_err(RedisError::redis(format!("XPENDING on {stream}")))?;
        let counts: HashMap<EntryId, u64> = reply
            .into_iter()
            .filter_map(|(id, _, _, n)| EntryId::parse(&id).map(|id| (id, n)))
            .collect();
        for e in entries.iter_mut().filter(|e| e.stream == *stream) {
            if let Some(n) = counts.get(&e.id) {
                e.deliveries = *n;
            }
        }
        Ok(())
    }
}
