//! Transaction mode, on the committing instance: reading the streams abreast. The loop
//! reads every stream alike (the same COUNT), so streams with fewer events per source
//! transaction (an orders stream beside its lines streams) run ahead in source time,
//! and their events fill the room held for the committer with transactions it cannot
//! apply yet (those events are then staged: written twice). While that room is half
//! full, a stream with a backlog whose reads are ahead of the slowest stream with a
//! backlog by more than [`WINDOW_MS`] (in entry-ID time, which a source writing a
//! transaction's events together keeps close across streams) is paused. Pure.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::entry::StreamEntry;

/// How far ahead (entry-ID milliseconds) a stream may read before it is paused. Small:
/// a backlog XADDed in a hurry holds hundreds of events per millisecond (200 ms of it
/// was 40,000 events, three times the held room, in the benchmark).
pub(super) const WINDOW_MS: u64 = 1;

/// Where each stream's reads got to.
#[derive(Default)]
pub(super) struct Align {
    /// The newest entry ID's milliseconds read, and whether the last read of it
    /// filled its COUNT (more is waiting).
    streams: HashMap<Arc<str>, (u64, bool)>,
}

impl Align {
    /// Notes a read of `count` entries per stream that returned `entries`; `paused`
    /// streams were not read.
    pub fn observe<'a>(
        &mut self,
        read: impl Iterator<Item = &'a Arc<str>>,
        paused: &HashSet<Arc<str>>,
        entries: &[StreamEntry],
        count: usize,
    ) {
        let mut got: HashMap<&Arc<str>, (usize, u64)> = HashMap::new();
        for e in entries {
            let slot = got.entry(&e.stream).or_default();
            slot.0 += 1;
            slot.1 = slot.1.max(e.id.ms);
        }
        for stream in read {
            if paused.contains(stream) {
                continue;
            }
            let (n, ms) = got.get(stream).copied().unwrap_or((0, 0));
            let state = self.streams.entry(stream.clone()).or_default();
            state.0 = state.0.max(ms);
            state.1 = n >= count;
        }
    }

    /// The streams to pause: with a backlog, and read ahead of the slowest stream with
    /// a backlog by more than [`WINDOW_MS`].
    pub fn ahead(&self) -> HashSet<Arc<str>> {
        let Some(horizon) = self
            .streams
            .values()
            .filter(|(_, backlog)| *backlog)
            .map(|(ms, _)| *ms)
            .min()
        else {
            return HashSet::new();
        };
        self.streams
            .iter()
            .filter(|(_, (ms, backlog))| *backlog && *ms > horizon + WINDOW_MS)
            .map(|(s, _)| s.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::EntryId;

    fn entry(stream: &Arc<str>, ms: u64) -> StreamEntry {
        StreamEntry {
            stream: stream.clone(),
            id: EntryId { ms, seq: 0 },
            fields: None,
            deliveries: 0,
        }
    }

    #[test]
    fn only_streams_with_a_backlog_ahead_of_the_slowest_are_paused() {
        let (orders, lines, idle): (Arc<str>, Arc<str>, Arc<str>) =
            (Arc::from("orders"), Arc::from("lines"), Arc::from("idle"));
        let streams = [orders.clone(), lines.clone(), idle.clone()];
        let mut align = Align::default();
        // Both full (a backlog); orders reached 1000 ms, lines only 500; idle returned none.
        let read = vec![
            entry(&orders, 900),
            entry(&orders, 1000),
            entry(&lines, 400),
            entry(&lines, 500),
        ];
        align.observe(streams.iter(), &HashSet::new(), &read, 2);
        assert_eq!(align.ahead(), HashSet::from([orders.clone()]));
        // Paused orders is not read; lines catches up: nothing is ahead any more.
        let paused = align.ahead();
        align.observe(
            streams.iter(),
            &paused,
            &[entry(&lines, 999), entry(&lines, 1000)],
            2,
        );
        assert!(align.ahead().is_empty());
        // A stream with no backlog is never paused, and does not hold the others back.
        align.observe(streams.iter(), &HashSet::new(), &[entry(&orders, 5000)], 2);
        assert!(align.ahead().is_empty());
    }
}
