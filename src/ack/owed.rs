//! Acknowledging on a Redis Cluster, slot by slot: a master that is away (killed,
//! failing over) must not hold up the acknowledgements of the others. Each slot's
//! pipeline gets [`WITHIN`] to answer; what a slot could not take (a dead letter not
//! written, an XACK not sent) is *owed*: kept with the acker and sent again with the
//! next batch, or on its own once the loop is idle ([`Acker::settle_owed`]). A slot that
//! failed is left alone for a backoff before it is tried again.
//!
//! Nothing is acknowledged early: what is owed comes only from a [`Committed`], and an
//! entry with a dead letter is acknowledged only once its dead letter was written. An
//! entry applied but not yet acknowledged is at worst read again and re-applied as a
//! no-op (its version is already there).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{AckError, Acker, errors_key};
use crate::entry::{DeadLetter, EntryId};
use crate::redis::{SlotOutcome, pipeline_per_slot, redis_retryable, slot};
use crate::write::Committed;

/// How long one slot's pipeline may take before its commands are owed.
const WITHIN: Duration = Duration::from_millis(500);
const FIRST_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(5);

/// What the acker still owes, and the slots that failed lately.
#[derive(Default)]
pub(super) struct Owed {
    dead: Vec<DeadLetter>,
    acks: Vec<(Arc<str>, EntryId)>,
    /// Slot → (not tried again before, the delay after the next failure).
    failing: HashMap<u16, (Instant, Duration)>,
}

impl Owed {
    fn skip(&self, slot: u16, now: Instant) -> bool {
        self.failing
            .get(&slot)
            .is_some_and(|(until, _)| *until > now)
    }

    /// Notes each slot's outcome: a success ends its backoff, a failure (an error, or
    /// no answer in time) starts or lengthens it; a slot skipped stays as it was. One
    /// line for the slots that began failing, one for those that work again.
    fn note(&mut self, outcomes: &[SlotOutcome], now: Instant) {
        let (mut began, mut ended) = (Vec::new(), Vec::new());
        for o in outcomes {
            let failed = match &o.result {
                Some(Ok(())) => {
                    if self.failing.remove(&o.slot).is_some() {
                        ended.push(o.slot);
                    }
                    continue;
                }
                Some(Err(_)) => true,
                None => !self.skip(o.slot, now),
            };
            if !failed {
                continue;
            }
            let delay = match self.failing.get(&o.slot) {
                Some((_, d)) => (*d * 2).min(MAX_DELAY),
                None => {
                    began.push(o.slot);
                    FIRST_DELAY
                }
            };
            self.failing.insert(o.slot, (now + delay, delay));
        }
        if !began.is_empty() {
            tracing::warn!(
                slots = ?began,
                "acknowledging entries of these slots failed (their master is away?): they \
                 are acknowledged later, the other slots go on"
            );
        }
        if !ended.is_empty() {
            tracing::info!(slots = ?ended, "acknowledging entries of these slots works again");
        }
    }
}

impl Acker {
    /// [`Acker::ack`] on a cluster: what was owed and `committed`, slot by slot.
    pub(super) async fn ack_by_slot(&mut self, committed: &Committed) -> Result<(), AckError> {
        let (mut dead, mut acks) = self.take_owed();
        dead.extend(committed.dead().iter().cloned());
        acks.extend(committed.acks().iter().cloned());
        self.send_by_slot(dead, acks).await
    }

    /// Whether something is owed whose slot may be tried again now.
    pub fn owes_due(&self) -> bool {
        let owed = self.owed();
        let now = Instant::now();
        owed.acks
            .iter()
            .any(|(s, _)| !owed.skip(slot(s.as_bytes()), now))
    }

    /// Sends what is owed (the loop calls it when idle).
    pub async fn settle_owed(&mut self) -> Result<(), AckError> {
        let (dead, acks) = self.take_owed();
        self.send_by_slot(dead, acks).await
    }

    fn owed(&self) -> std::sync::MutexGuard<'_, Owed> {
        self.owed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take_owed(&self) -> (Vec<DeadLetter>, Vec<(Arc<str>, EntryId)>) {
        let mut owed = self.owed();
        (
            std::mem::take(&mut owed.dead),
            std::mem::take(&mut owed.acks),
        )
    }

    /// Dead letters, then XACK of every entry whose dead letter (if any) is written;
    /// what a slot could not take is owed again.
    async fn send_by_slot(
        &mut self,
        dead: Vec<DeadLetter>,
        acks: Vec<(Arc<str>, EntryId)>,
    ) -> Result<(), AckError> {
        let unwritten = self.dead_letters_by_slot(&dead).await?;
        let blocked: HashSet<(Arc<str>, EntryId)> = unwritten
            .iter()
            .map(|d| (d.entry.stream.clone(), d.entry.id))
            .collect();
        let (held, acks): (Vec<_>, Vec<_>) = acks.into_iter().partition(|a| blocked.contains(a));
        let not_acked = self.xack_by_slot(acks).await?;
        let mut owed = self.owed();
        owed.dead.extend(unwritten);
        owed.acks.extend(held);
        owed.acks.extend(not_acked);
        Ok(())
    }

    /// Writes `dead` slot by slot; returns those not written.
    async fn dead_letters_by_slot(
        &mut self,
        dead: &[DeadLetter],
    ) -> Result<Vec<DeadLetter>, AckError> {
        if dead.is_empty() {
            return Ok(Vec::new());
        }
        // Command 2i is dead letter i's XADD, 2i + 1 the removal of its error note.
        let mut commands = Vec::with_capacity(dead.len() * 2);
        for d in dead {
            let (dlq, xadd) = self.dead_letter_command(d);
            let errors = errors_key(&dlq);
            let mut hdel = redis::cmd("HDEL");
            hdel.arg(&errors).arg(self.note_field(d.entry.id));
            commands.push((dlq.into_bytes(), xadd));
            commands.push((errors.into_bytes(), hdel));
        }
        let sent = self.send(commands, "writing dead letters").await?;
        Ok(dead
            .iter()
            .enumerate()
            .filter(|(i, _)| !sent.contains(&(2 * i)))
            .map(|(_, d)| d.clone())
            .collect())
    }

    /// XACKs `acks` slot by slot; returns those not acknowledged.
    async fn xack_by_slot(
        &mut self,
        acks: Vec<(Arc<str>, EntryId)>,
    ) -> Result<Vec<(Arc<str>, EntryId)>, AckError> {
        let mut by_stream: HashMap<Arc<str>, Vec<EntryId>> = HashMap::new();
        for (stream, id) in acks {
            by_stream.entry(stream).or_default().push(id);
        }
        let by_stream: Vec<(Arc<str>, Vec<EntryId>)> = by_stream.into_iter().collect();
        let commands = by_stream
            .iter()
            .map(|(stream, ids)| {
                let mut cmd = redis::cmd("XACK");
                cmd.arg(stream.as_ref()).arg(&self.group);
                for id in ids {
                    cmd.arg(id.to_string());
                }
                (stream.as_bytes().to_vec(), cmd)
            })
            .collect();
        let sent = self.send(commands, "XACK").await?;
        Ok(by_stream
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !sent.contains(i))
            .flat_map(|(_, (stream, ids))| ids.into_iter().map(move |id| (stream.clone(), id)))
            .collect())
    }

    /// Sends `commands` slot by slot (but for slots in their backoff); returns the
    /// indices of the commands that were carried out. An error that retrying cannot
    /// cure (a wrong group, no permission) fails the whole call.
    async fn send(
        &mut self,
        commands: Vec<(Vec<u8>, redis::Cmd)>,
        what: &str,
    ) -> Result<HashSet<usize>, AckError> {
        let now = Instant::now();
        let skipping: HashSet<u16> = {
            let owed = self.owed();
            owed.failing
                .iter()
                .filter(|(_, (until, _))| *until > now)
                .map(|(s, _)| *s)
                .collect()
        };
        let outcomes =
            pipeline_per_slot(&mut self.conn, commands, WITHIN, |s| skipping.contains(&s)).await;
        let mut done = HashSet::new();
        for o in &outcomes {
            match &o.result {
                Some(Ok(())) => {
                    self.round_trips.fetch_add(1, Ordering::Relaxed);
                    done.extend(o.commands.iter().copied());
                }
                Some(Err(e)) if !redis_retryable(e) => {
                    return Err(AckError::Redis {
                        context: format!("{what} (slot {})", o.slot),
                        source: e.clone(),
                    });
                }
                _ => {}
            }
        }
        self.owed().note(&outcomes, now);
        Ok(done)
    }
}
