//! The collection chore: removes the tombstones and truncations of each table below
//! its horizon, the lowest version an event of the table could still arrive with.
//!
//! A table's horizon is the lowest of its streams' bounds (every stream of a mapping
//! that names it, and of every mapping with a table template, which could name it):
//!
//! | stream | bound |
//! |---|---|
//! | empty (trimmed to nothing) | none: what comes next is newer than any delete already applied |
//! | `version = "entry_id"` | its oldest entry's ID: IDs only grow |
//! | a source position | the position of its oldest entry that is a change; below it nothing in the stream can undo a delete (a row's changes commit in order, and a stream is in commit order) |
//! | the oldest entries do not decode, or are all skips | unknown: nothing is removed |
//! | a position scheme with dead letters | unknown: `dlq retry` would put an old position back |
//!
//! In transaction mode a stream's bound is also at most that of its oldest event staged
//! for the committer (acknowledged, maybe trimmed, not yet applied).
//!
//! A bound must hold for two rounds in a row (the lower of the two is used), so an entry
//! a `replay` or the batch in flight read just before a trim is applied before its
//! tombstone can go. Only tables named by a fixed `mapping.table` are collected.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::Pipeline;
use crate::config::VersionSource;
use crate::decode::{self, Decoded};
use crate::map::Version;
use crate::redis::inspect;
use crate::table::TableName;

/// Entries read from the head of each stream to find one that is a change.
const HEAD: usize = 16;
/// Tombstones removed per table per round, at most (about).
const BUDGET: u64 = 10_000;

/// The lowest version the events of a stream (or table) can still have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Bound {
    /// Nothing older than what is already applied can arrive.
    Open,
    /// No event below this version can arrive.
    Below(Version),
    /// Cannot tell (the reason): keep everything.
    Unknown(String),
}

impl Bound {
    /// The bound that holds for both.
    fn min(self, other: Bound) -> Bound {
        match (self, other) {
            (u @ Bound::Unknown(_), _) | (_, u @ Bound::Unknown(_)) => u,
            (Bound::Open, b) | (b, Bound::Open) => b,
            (Bound::Below(a), Bound::Below(b)) => Bound::Below(a.min(b)),
        }
    }
}

/// Each table's bound of the previous round.
#[derive(Default)]
pub(super) struct Horizons {
    last: HashMap<TableName, Bound>,
}

impl Pipeline {
    /// One round: for each table named by a fixed mapping, its horizon, then what lies
    /// below it (bounded per table). Failures are logged and tried next round.
    pub(super) async fn collect(&mut self, horizons: &mut Horizons) {
        let clock = match self.core.writer.clock().await {
            Ok(clock) => clock,
            Err(e) => {
                tracing::warn!(error = %e, "collecting tombstones: postgres does not answer");
                return;
            }
        };
        for (table, mappings) in self.collected_tables() {
            let mut bound = Bound::Open;
            for (stream, index) in self.streams_of(&mappings) {
                bound = bound.min(self.stream_bound(&stream, index).await);
            }
            let Some(last) = horizons.last.insert(table.clone(), bound.clone()) else {
                continue;
            };
            let below = match last.min(bound) {
                Bound::Unknown(reason) => {
                    tracing::debug!(table = %table, reason, "tombstones kept: no horizon");
                    continue;
                }
                Bound::Open => None,
                Bound::Below(v) => Some(v),
            };
            match self
                .core
                .writer
                .collect(&table, below.as_ref(), &clock, BUDGET)
                .await
            {
                Ok(collected) => self.core.events.collected(&table, collected),
                Err(e) => {
                    tracing::warn!(table = %table, error = %e, "collecting tombstones failed")
                }
            }
        }
    }

    /// Each table named by a fixed `mapping.table`, with the mappings that can write
    /// it: those naming it and those with a template.
    fn collected_tables(&self) -> Vec<(TableName, HashSet<usize>)> {
        let templated: HashSet<usize> = self
            .core
            .mappings
            .iter()
            .filter(|m| m.table.is_templated())
            .map(|m| m.index)
            .collect();
        let mut tables: Vec<(TableName, HashSet<usize>)> = Vec::new();
        for m in &self.core.mappings {
            let Some(Ok(name)) = m.table.fixed() else {
                continue;
            };
            match tables.iter_mut().find(|(t, _)| *t == name) {
                Some((_, set)) => {
                    set.insert(m.index);
                }
                None => {
                    let mut set = templated.clone();
                    set.insert(m.index);
                    tables.push((name, set));
                }
            }
        }
        tables
    }

    /// The streams routed to any of `mappings`, with their mapping.
    fn streams_of(&self, mappings: &HashSet<usize>) -> Vec<(Arc<str>, usize)> {
        self.core
            .routes
            .iter()
            .filter(|(_, i)| mappings.contains(i))
            .map(|(s, i)| (s.clone(), *i))
            .collect()
    }

    /// The lowest version an event of `stream` (of mapping `index`) can still have:
    /// in the stream, or (transaction mode) staged for the committer.
    async fn stream_bound(&mut self, stream: &Arc<str>, index: usize) -> Bound {
        let bound = self.stream_head_bound(stream, index).await;
        if !self.core.staging {
            return bound;
        }
        match self.core.writer.tx_store().oldest_staged(stream).await {
            Ok(None) => bound,
            Ok(Some(staged)) => {
                let mapping = &self.core.mappings[index];
                let staged_bound = match decode::decode(&staged.entry, &self.core.config.decode) {
                    Ok(Decoded::Change(event)) => match mapping.horizon(&event, staged.entry.id) {
                        Ok(version) => Bound::Below(version),
                        Err(e) => Bound::Unknown(format!(
                            "staged {stream} entry {}: {e}",
                            staged.entry.id
                        )),
                    },
                    Ok(Decoded::Skip(_)) => Bound::Open,
                    Err(e) => Bound::Unknown(e.to_string()),
                };
                bound.min(staged_bound)
            }
            Err(e) => Bound::Unknown(e.to_string()),
        }
    }

    /// The lowest version an event in `stream` (of mapping `index`) can still have.
    async fn stream_head_bound(&mut self, stream: &Arc<str>, index: usize) -> Bound {
        let by_entry_id = self.core.mappings[index].version == VersionSource::EntryId;
        if !by_entry_id {
            // A retried dead letter comes back with its old position.
            let dlq = self.core.config.redis.dlq_stream(stream);
            match inspect::length(self.reader.control(), &dlq).await {
                Ok(0) => {}
                Ok(n) => return Bound::Unknown(format!("{n} dead letters on {dlq}")),
                Err(e) => return Bound::Unknown(e.to_string()),
            }
        }
        let head = match self.reader.range(stream, "-", "+", HEAD).await {
            Ok(head) => head,
            Err(e) => return Bound::Unknown(e.to_string()),
        };
        let Some(first) = head.first() else {
            return Bound::Open;
        };
        if by_entry_id {
            return Bound::Below(Version::from_entry_id(first.id, Version::OP_DELETE));
        }
        let mapping = &self.core.mappings[index];
        for entry in &head {
            return match decode::decode(entry, &self.core.config.decode) {
                Ok(Decoded::Skip(_)) => continue,
                Ok(Decoded::Change(event)) => match mapping.horizon(&event, entry.id) {
                    Ok(version) => Bound::Below(version),
                    Err(e) => Bound::Unknown(format!("{stream} entry {}: {e}", entry.id)),
                },
                Err(e) => Bound::Unknown(format!("{stream} entry {}: {}", entry.id, e.reason)),
            };
        }
        Bound::Unknown(format!(
            "the first {HEAD} entries of {stream} are not changes"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn below(n: u64) -> Bound {
        Bound::Below(Version::from_lsn(n, Version::OP_DELETE))
    }

    #[test]
    fn the_lowest_bound_wins_and_unknown_wins_over_all() {
        assert_eq!(below(5).min(below(3)), below(3));
        assert_eq!(Bound::Open.min(below(3)), below(3));
        assert_eq!(below(3).min(Bound::Open), below(3));
        assert_eq!(Bound::Open.min(Bound::Open), Bound::Open);
        let unknown = Bound::Unknown("dead letters".into());
        assert_eq!(below(3).min(unknown.clone()), unknown);
        assert_eq!(unknown.clone().min(Bound::Open), unknown);
    }
}
