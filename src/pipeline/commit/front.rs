//! The committer's choice of what to apply next: the complete transactions at the front
//! of the transaction stream read ahead, the next piece of one too large for one commit,
//! one whose missing events are not on their way, events that came late.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{Committer, Failure, GROUP_TXS, ON_THE_WAY_EVERY, PASS_EVERY};
use crate::decode::TxEnd;
use crate::entry::EntryId;
use crate::metrics::Counter;
use crate::redis::{RedisError, inspect};
use crate::write::{Progress, TxFinish, WriteError};

impl Committer {
    /// Applies the complete transactions at the front of what was read ahead (or the
    /// head one in pieces, or without what is missing after `wait`).
    pub(super) async fn apply_front(
        &mut self,
        progress: &Progress,
        shutdown: &CancellationToken,
    ) -> Result<bool, Failure> {
        let group = self.ours_ahead();
        let Some((head_at, head, head_expected)) = group.first().cloned() else {
            // Nothing of ours read ahead: pass what was read.
            return self.pass_all(progress, shutdown).await;
        };
        let (counts, staged_txs) = self.arrived(&group).await?;
        let piece_done = match &progress.piece {
            Some((tx, done)) if *tx == head.id => *done,
            _ => 0,
        };
        let have = |id: &str| counts.get(id).copied().unwrap_or(0);
        if head_expected > self.max_events() {
            if have(&head.id) + piece_done >= head_expected {
                return self
                    .apply_piece(
                        head_at,
                        &head,
                        head_expected,
                        piece_done,
                        progress,
                        shutdown,
                    )
                    .await;
            }
            return self
                .wait_for(
                    head_at,
                    &head,
                    head_expected,
                    have(&head.id) + piece_done,
                    progress,
                    shutdown,
                )
                .await;
        }
        let complete: Vec<(usize, TxEnd, i64)> = group
            .into_iter()
            .take_while(|(_, e, expected)| {
                *expected <= self.tx.max_events as i64 && have(&e.id) >= *expected
            })
            .collect();
        if complete.is_empty() {
            return self
                .wait_for(
                    head_at,
                    &head,
                    head_expected,
                    have(&head.id),
                    progress,
                    shutdown,
                )
                .await;
        }
        self.waiting = None;
        self.apply_complete(&complete, &counts, &staged_txs, progress, shutdown)
            .await
    }

    /// The events of each transaction of `group` that arrived: held, plus (for those
    /// the held ones do not complete) staged. Also the transactions with staged events.
    pub(super) async fn arrived(
        &self,
        group: &[(usize, TxEnd, i64)],
    ) -> Result<(HashMap<String, i64>, HashSet<String>), WriteError> {
        let ids: Vec<String> = group.iter().map(|(_, e, _)| e.id.clone()).collect();
        let mut counts = self.held.counts(&ids);
        let short: Vec<String> = group
            .iter()
            .filter(|(_, e, expected)| counts.get(&e.id).copied().unwrap_or(0) < *expected)
            .map(|(_, e, _)| e.id.clone())
            .collect();
        let mut staged = HashSet::new();
        if !short.is_empty() {
            for (tx, n) in self.store.counts(&short).await? {
                *counts.entry(tx.clone()).or_default() += n;
                staged.insert(tx);
            }
        }
        Ok((counts, staged))
    }

    /// The transactions of ours read ahead, from the front: (position in the queue,
    /// END, events of ours), as many as one commit takes.
    pub(super) fn ours_ahead(&mut self) -> Vec<(usize, TxEnd, i64)> {
        let mut group: Vec<(usize, TxEnd, i64)> = Vec::new();
        let mut events = 0;
        let ends: Vec<(usize, TxEnd)> = self
            .queue
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.end.clone().map(|e| (i, e)))
            .collect();
        for (i, end) in ends {
            let expected = self.expected(&end);
            if expected == 0 {
                continue;
            }
            if !group.is_empty()
                && (events + expected > self.max_group() || group.len() >= GROUP_TXS)
            {
                break;
            }
            events += expected;
            group.push((i, end, expected));
        }
        group
    }

    /// Applies whole transactions in one commit: their held events, and the staged
    /// ones of those with some staged (`staged_txs`).
    pub(super) async fn apply_complete(
        &mut self,
        complete: &[(usize, TxEnd, i64)],
        counts: &HashMap<String, i64>,
        staged_txs: &HashSet<String>,
        progress: &Progress,
        shutdown: &CancellationToken,
    ) -> Result<bool, Failure> {
        let fetch: Vec<String> = complete
            .iter()
            .filter(|(_, e, _)| staged_txs.contains(&e.id))
            .map(|(_, e, _)| e.id.clone())
            .collect();
        let staged: i64 = fetch.iter().filter_map(|id| counts.get(id)).sum();
        let (last_at, _, _) = complete[complete.len() - 1];
        let ids: Vec<String> = complete.iter().map(|(_, e, _)| e.id.clone()).collect();
        let rows = if fetch.is_empty() {
            Vec::new()
        } else {
            self.store
                .fetch(&fetch, usize::try_from(staged).unwrap_or(0) + 1)
                .await?
        };
        let mut finish = self.finish(
            progress,
            self.queue[last_at].id,
            None,
            complete.len(),
            Vec::new(),
        );
        finish.done = ids.clone();
        let held = self.held.take(&ids);
        if self.apply(&ids, rows, held, finish, shutdown).await? {
            self.queue.drain(..=last_at);
            self.passed = None;
            self.core.events.metrics().add(
                Counter::TransactionsApplied,
                &self.tx.stream,
                complete.len() as u64,
            );
            return Ok(true);
        }
        Ok(false)
    }

    pub(super) fn max_events(&self) -> i64 {
        i64::try_from(self.tx.max_events).unwrap_or(i64::MAX)
    }

    /// Events one commit of whole transactions takes, at most (one transaction is
    /// never split below `max_events`).
    pub(super) fn max_group(&self) -> i64 {
        i64::try_from(crate::pipeline::tx_unit(&self.core.config) * 4).unwrap_or(i64::MAX)
    }

    /// The finish of a commit that moves the progress to `end_id`.
    pub(super) fn finish(
        &self,
        progress: &Progress,
        end_id: EntryId,
        piece: Option<(String, i64)>,
        applied: usize,
        late: Vec<String>,
    ) -> TxFinish {
        TxFinish {
            stream: self.tx.stream.clone(),
            seq: progress.seq,
            end_id,
            piece,
            applied: i64::try_from(applied).unwrap_or(i64::MAX),
            events: Vec::new(),
            late,
            done: Vec::new(),
        }
    }

    /// Nothing of ours read ahead: the records are passed, and the progress moved
    /// past them now and then (so a restart does not read them again).
    pub(super) async fn pass_all(
        &mut self,
        progress: &Progress,
        shutdown: &CancellationToken,
    ) -> Result<bool, Failure> {
        if let Some(last) = self.queue.back() {
            self.passed = Some(last.id);
            self.queue.clear();
        }
        let Some(passed) = self.passed else {
            return Ok(false);
        };
        if passed <= progress.end_id || progress.piece.is_some() {
            return Ok(false);
        }
        if self
            .waiting
            .as_ref()
            .is_some_and(|(_, since, _)| since.elapsed() < PASS_EVERY)
        {
            return Ok(false);
        }
        let finish = self.finish(progress, passed, None, 0, Vec::new());
        self.waiting = Some((String::new(), Instant::now(), None));
        self.apply(&[], Vec::new(), Vec::new(), finish, shutdown)
            .await?;
        Ok(false)
    }

    /// A transaction too large for one commit, all staged: its next `max_events` in
    /// `total_order`, in a commit of their own.
    pub(super) async fn apply_piece(
        &mut self,
        at: usize,
        head: &TxEnd,
        expected: i64,
        done: i64,
        progress: &Progress,
        shutdown: &CancellationToken,
    ) -> Result<bool, Failure> {
        // Its earlier piece must be gone from the staged events first.
        self.settle().await?;
        let ids = std::slice::from_ref(&head.id);
        let (rows, held) = self.piece(ids).await?;
        let n = i64::try_from(rows.len() + held.len()).unwrap_or(i64::MAX);
        let last = done + n >= expected;
        if done == 0 {
            tracing::warn!(
                transaction = %head.id,
                events = expected,
                max_events = self.tx.max_events,
                "a source transaction larger than transactions.max_events is applied in pieces: readers may see it partly applied meanwhile"
            );
            self.core
                .events
                .metrics()
                .add(Counter::TransactionsSplit, &self.tx.stream, 1);
        }
        let finish = if last {
            let mut finish = self.finish(progress, self.queue[at].id, None, 1, Vec::new());
            finish.done = vec![head.id.clone()];
            finish
        } else {
            let end = self.passed.unwrap_or(progress.end_id).max(progress.end_id);
            self.finish(
                progress,
                end,
                Some((head.id.clone(), done + n)),
                0,
                Vec::new(),
            )
        };
        if !self.apply(ids, rows, held, finish, shutdown).await? {
            return Ok(false);
        }
        if last {
            self.queue.drain(..=at);
            self.passed = None;
            self.core
                .events
                .metrics()
                .add(Counter::TransactionsApplied, &self.tx.stream, 1);
        }
        Ok(true)
    }

    /// The head transaction lacks events: wait, unless `wait` has passed with none of
    /// them on the way; then apply what arrived.
    pub(super) async fn wait_for(
        &mut self,
        at: usize,
        head: &TxEnd,
        expected: i64,
        have: i64,
        progress: &Progress,
        shutdown: &CancellationToken,
    ) -> Result<bool, Failure> {
        let now = Instant::now();
        let (since, looked) = match &mut self.waiting {
            Some((tx, since, looked)) if *tx == head.id => (*since, looked),
            _ => {
                self.waiting = Some((head.id.clone(), now, None));
                return Ok(false);
            }
        };
        if since.elapsed() < self.tx.wait || looked.is_some_and(|l| l.elapsed() < ON_THE_WAY_EVERY)
        {
            return Ok(false);
        }
        *looked = Some(now);
        let end_id = self.queue[at].id;
        if self.on_the_way(end_id).await? {
            return Ok(false);
        }
        tracing::warn!(
            transaction = %head.id,
            expected,
            arrived = have,
            waited_s = since.elapsed().as_secs(),
            collections = ?head.collections,
            "a source transaction's events did not all arrive within transactions.wait and none is on its way: applying what arrived (events of it that come later are applied on their own)"
        );
        self.settle().await?;
        let rows = self
            .store
            .fetch(
                std::slice::from_ref(&head.id),
                usize::try_from(have).unwrap_or(0) + 1,
            )
            .await?;
        let ids = std::slice::from_ref(&head.id);
        let held = self.held.take(ids);
        let finish = self.finish(progress, end_id, None, 1, vec![head.id.clone()]);
        if !self.apply(ids, rows, held, finish, shutdown).await? {
            return Ok(false);
        }
        self.queue.drain(..=at);
        self.passed = None;
        self.waiting = None;
        let metrics = self.core.events.metrics();
        metrics.add(Counter::TransactionsTimedOut, &self.tx.stream, 1);
        metrics.add(Counter::TransactionsApplied, &self.tx.stream, 1);
        Ok(true)
    }

    /// Whether an entry at or before `upto` of a mapped stream may still reach the
    /// group (undelivered, or pending on some consumer).
    pub(super) async fn on_the_way(&mut self, upto: EntryId) -> Result<bool, RedisError> {
        let streams = self.core.mapped_streams(&mut self.control).await?;
        let group = self.core.config.redis.group.clone();
        for (stream, _) in streams {
            if inspect::on_the_way(&mut self.control, &stream, &group, upto).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Events staged after their transaction was applied without them: applied on
    /// their own, in the order they were staged.
    pub(super) async fn apply_late(
        &mut self,
        progress: &Progress,
        shutdown: &CancellationToken,
    ) -> Result<bool, Failure> {
        self.settle().await?;
        let rows = self.store.late(self.tx.max_events).await?;
        if rows.is_empty() {
            return Ok(false);
        }
        tracing::warn!(
            events = rows.len(),
            "applying events that arrived after their transaction was applied"
        );
        let finish = self.finish(
            progress,
            progress.end_id,
            progress.piece.clone(),
            0,
            Vec::new(),
        );
        self.apply(&[], rows, Vec::new(), finish, shutdown).await
    }
}
