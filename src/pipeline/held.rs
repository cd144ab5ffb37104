//! Events of source transactions held in memory (transaction mode), on the instance
//! that commits: the loop hands the events it reads to the committer here instead of
//! staging them in Postgres, and they stay pending in the group (unacknowledged) until
//! the commit that applies their transaction; the committer acknowledges them then.
//! An instance that does not commit, an event beyond the bound, one held longer than
//! `wait` or half of `claim_idle` (its transaction may be gone: applied without it, or
//! never ended; and a pending entry idle for `claim_idle` is claimed, which counts as a
//! delivery) and
//! everything held when the instance stops committing or shuts down are *spilled*:
//! the loop stages them the usual way (in Postgres, acknowledged after that commit).
//!
//! So one instance reading every stream never writes its events twice; several share
//! the work through the staging table. Pure bookkeeping under a mutex, no I/O.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::prepare::Prepared;
use crate::entry::{EntryId, StreamEntry};

/// How long the loop waits at most for the committer to know whether it commits.
const DECIDE_WITHIN: Duration = Duration::from_secs(10);

/// An event held for the committer: mapped already.
#[derive(Debug, Clone)]
pub(super) struct HeldEvent {
    pub tx_id: String,
    pub total_order: i64,
    pub entry: StreamEntry,
    pub prepared: Prepared,
    pub since: Instant,
}

#[derive(Default)]
struct Inner {
    /// (foldhash: a fast hasher with a random seed per process; these maps are
    /// touched for every event.)
    by_tx: foldhash::HashMap<String, Vec<HeldEvent>>,
    /// Every held entry, so one read twice (own PEL and a claim) is held once.
    entries: foldhash::HashSet<(std::sync::Arc<str>, EntryId)>,
    /// Given back for the loop to stage.
    spilled: Vec<HeldEvent>,
}

/// Shared by the loop (which offers and stages what is spilled) and the committer
/// (which counts, takes and gives back).
pub(super) struct Held {
    inner: Mutex<Inner>,
    leading: AtomicBool,
    /// The committer knows whether it commits (it asked for the lease once), or gave
    /// up. Until then the loop reads nothing: what it read would be staged, and read
    /// back, by an instance about to hold it in memory.
    decided: AtomicBool,
    created: Instant,
    /// The committer applied something in its last turn (it is not waiting for events).
    progressing: AtomicBool,
    /// Signalled after each commit of the committer (room may have been made).
    applied: tokio::sync::Notify,
    /// The loop waits when this many are held while the committer applies.
    max: usize,
}

impl Held {
    pub fn new(max: usize) -> Self {
        Self {
            inner: Mutex::default(),
            leading: AtomicBool::new(false),
            decided: AtomicBool::new(false),
            created: Instant::now(),
            progressing: AtomicBool::new(false),
            applied: tokio::sync::Notify::new(),
            max,
        }
    }

    /// The committer's last turn: whether it applied something.
    pub fn set_progressing(&self, progressing: bool) {
        self.progressing.store(progressing, Ordering::SeqCst);
        if progressing {
            self.applied.notify_waiters();
        }
    }

    /// Whether the loop should wait before reading more: `max` is reached while the
    /// committer applies (it makes room). When it waits for events instead, the loop
    /// reads on (they may be what it waits for, and the streams ahead are paused:
    /// `align.rs`), holds up to half as many again and stages what does not fit.
    /// Before the committer knows whether it commits (at most [`DECIDE_WITHIN`]), the
    /// loop waits too.
    pub fn should_pause(&self) -> bool {
        if !self.decided.load(Ordering::SeqCst) && self.created.elapsed() < DECIDE_WITHIN {
            return true;
        }
        self.leading.load(Ordering::SeqCst)
            && self.progressing.load(Ordering::SeqCst)
            && self.lock().entries.len() >= self.max
    }

    /// How many events are held at most: `max` and half as many again, for the
    /// events the committer waits for while `max` are held.
    fn hard_max(&self) -> usize {
        self.max + self.max / 2
    }

    /// Whether half the room or more is taken (the loop then reads the streams abreast).
    pub fn half_full(&self) -> bool {
        self.leading.load(Ordering::SeqCst) && self.lock().entries.len() * 2 >= self.max
    }

    /// Waits for the committer's next commit, at most `at_most`.
    pub async fn wait_applied(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.applied.notified()).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this instance commits (set by the committer). Losing it spills
    /// everything held.
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
        if !leading {
            self.spill_all();
        }
    }

    /// The committer knows whether it commits: the loop may read.
    pub fn set_decided(&self) {
        if !self.decided.swap(true, Ordering::SeqCst) {
            self.applied.notify_waiters();
        }
    }

    /// Holds the event when this instance commits and there is room; else gives it
    /// back (`Some`), to be staged.
    pub fn offer(&self, event: HeldEvent) -> Option<HeldEvent> {
        // Under the lock: losing the lead spills under it too, so nothing is held after.
        let mut inner = self.lock();
        if !self.leading.load(Ordering::SeqCst) || inner.entries.len() >= self.hard_max() {
            return Some(event);
        }
        if !inner
            .entries
            .insert((event.entry.stream.clone(), event.entry.id))
        {
            // Held already: this delivery is the same entry.
            return None;
        }
        // Looked up first: the key is cloned only for a transaction's first event.
        match inner.by_tx.get_mut(&event.tx_id) {
            Some(events) => events.push(event),
            None => {
                let mut events = Vec::with_capacity(4);
                let tx = event.tx_id.clone();
                events.push(event);
                inner.by_tx.insert(tx, events);
            }
        }
        None
    }

    /// Events held per transaction of `txs`.
    pub fn counts(&self, txs: &[String]) -> HashMap<String, i64> {
        let inner = self.lock();
        txs.iter()
            .filter_map(|tx| {
                let n = inner.by_tx.get(tx)?.len();
                Some((tx.clone(), i64::try_from(n).unwrap_or(i64::MAX)))
            })
            .collect()
    }

    /// Takes the events of `txs` (to apply them).
    pub fn take(&self, txs: &[String]) -> Vec<HeldEvent> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for tx in txs {
            if let Some(events) = inner.by_tx.remove(tx) {
                out.extend(events);
            }
        }
        for e in &out {
            inner.entries.remove(&(e.entry.stream.clone(), e.entry.id));
        }
        out
    }

    /// Gives back events taken but not applied (the commit failed): held again, or
    /// spilled when this instance no longer commits.
    pub fn put_back(&self, events: Vec<HeldEvent>) {
        let leading = self.leading.load(Ordering::SeqCst);
        let mut inner = self.lock();
        for e in events {
            if leading && inner.entries.insert((e.entry.stream.clone(), e.entry.id)) {
                inner.by_tx.entry(e.tx_id.clone()).or_default().push(e);
            } else if !leading {
                inner.spilled.push(e);
            }
        }
    }

    /// Spills the events held longer than `older`.
    pub fn expire(&self, older: Duration) {
        let now = Instant::now();
        let mut inner = self.lock();
        let old: Vec<String> = inner
            .by_tx
            .iter()
            .filter(|(_, events)| {
                events
                    .iter()
                    .any(|e| now.saturating_duration_since(e.since) >= older)
            })
            .map(|(tx, _)| tx.clone())
            .collect();
        for tx in old {
            if let Some(events) = inner.by_tx.remove(&tx) {
                for e in &events {
                    let key = (e.entry.stream.clone(), e.entry.id);
                    inner.entries.remove(&key);
                }
                inner.spilled.extend(events);
            }
        }
    }

    fn spill_all(&self) {
        let mut inner = self.lock();
        let all: Vec<HeldEvent> = inner.by_tx.drain().flat_map(|(_, e)| e).collect();
        inner.entries.clear();
        inner.spilled.extend(all);
    }

    /// Stops holding (shutdown): everything held is spilled.
    pub fn stop(&self) {
        self.set_leading(false);
        self.set_decided();
    }

    /// What was spilled, for the loop to stage.
    pub fn take_spilled(&self) -> Vec<HeldEvent> {
        std::mem::take(&mut self.lock().spilled)
    }

    /// Events held (not spilled).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::decode::Skip;

    fn event(tx: &str, ms: u64) -> HeldEvent {
        HeldEvent {
            tx_id: tx.into(),
            total_order: 1,
            entry: StreamEntry {
                stream: Arc::from("s"),
                id: EntryId { ms, seq: 0 },
                fields: None,
                deliveries: 0,
            },
            prepared: Prepared::Skip(Skip::Tombstone),
            since: Instant::now(),
        }
    }

    #[test]
    fn only_the_committer_holds_and_only_up_to_its_bound() {
        let held = Held::new(2);
        assert!(held.should_pause(), "the committer does not know yet");
        assert!(held.offer(event("a", 1)).is_some(), "not leading");
        held.set_leading(true);
        held.set_decided();
        assert!(held.offer(event("a", 1)).is_none());
        assert!(held.offer(event("a", 1)).is_none(), "the same entry again");
        assert!(held.offer(event("b", 2)).is_none());
        // At the bound: the loop waits while the committer applies, and reads on
        // (holding up to half as many again) while it waits for events.
        held.set_progressing(true);
        assert!(held.should_pause());
        held.set_progressing(false);
        assert!(!held.should_pause());
        assert!(held.offer(event("b", 3)).is_none());
        assert!(held.offer(event("b", 4)).is_some(), "full");
        assert_eq!(held.len(), 3);
        assert_eq!(held.counts(&["a".into(), "c".into()]).get("a"), Some(&1));
        let taken = held.take(&["a".into()]);
        assert_eq!(taken.len(), 1);
        held.put_back(taken);
        assert_eq!(held.len(), 3);
    }

    #[test]
    fn losing_the_lead_or_waiting_too_long_spills() {
        let held = Held::new(10);
        held.set_leading(true);
        assert!(held.offer(event("a", 1)).is_none());
        held.expire(Duration::ZERO);
        assert_eq!((held.len(), held.take_spilled().len()), (0, 1));
        assert!(held.offer(event("b", 2)).is_none());
        let taken = held.take(&["b".into()]);
        held.set_leading(false);
        held.put_back(taken);
        assert_eq!(held.take_spilled().len(), 1);
        assert!(held.offer(event("c", 3)).is_some());
    }
}
