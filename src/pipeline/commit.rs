//! The committer (transaction mode, `[transactions]`): applies each source transaction
//! whole, in source commit order, once all its events are staged.
//!
//! Every instance runs one; the one holding a session advisory lock commits, the
//! others wait to take over. Safety does not rest on the lock: each commit is fenced by
//! `redsink.tx_progress.seq` (`TxFinish`), so a committer that lost the lock without
//! noticing (paused, partitioned) has its next commit refused.
//!
//! The loop: read the transaction stream ahead (BEGIN and END records, in commit
//! order) from the progress; take the longest run of ENDs at its front whose events
//! (of the data collections redsink reads: [`Committer::expected`]) are all staged, up
//! to `batch.max_batch` events; prepare them again (decode → map, as the instance
//! that staged them did), write them in one transaction in the orders [`plan`] gives,
//! with the staged rows removed and the progress moved in the same commit. A
//! transaction with more than `max_events` events goes in pieces; one whose events
//! are missing, with none left on the way (undelivered or pending in the group at or
//! before its END) for `wait`, goes with what arrived, and events of it staged later
//! are applied on their own.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use super::events::Events;
use super::held::{Held, HeldEvent};
use super::plan;
use super::prepare::Prepared;
use super::retry::{Retry, Side, retrying};
use super::{Core, PipelineError};
use crate::config::{Config, StreamPattern, TransactionsConfig};
use crate::decode::{TxEnd, TxRecord, tx_record};
use crate::entry::{EntryId, StreamEntry};
use crate::keyhash::fnv1a64;
use crate::metrics::Counter;
use crate::redis::{Control, RedisError, inspect};
use crate::table::TableName;
use crate::write::{Progress, StagedEvent, TxFinish, TxStore, WriteError, is_fenced};

/// How long the committer sleeps when there is nothing to apply.
const POLL: Duration = Duration::from_millis(5);
/// How often a waiting instance tries to become the committer, and the committer
/// checks that its lock's session lives.
const LEAD_EVERY: Duration = Duration::from_secs(1);
/// Records of the transaction stream read ahead at most.
const READ_AHEAD: usize = 1024;
/// Transactions one commit looks at, at most.
const GROUP_TXS: usize = 512;
/// How often the open transactions are counted (metrics), and late events looked for.
const CHORES_EVERY: Duration = Duration::from_secs(2);
/// How long applied transactions are remembered: events of theirs read again within
/// this time are removed, not applied again (Postgres' transaction IDs, which the
/// PostgreSQL connector's transactions are keyed by, repeat only after 2³² of them).
const KEEP_APPLIED: Duration = Duration::from_secs(3600);
/// How often events held too long are staged instead.
const EXPIRE_EVERY: Duration = Duration::from_millis(250);
/// How often a transaction waiting for missing events checks whether any is on its way.
const ON_THE_WAY_EVERY: Duration = Duration::from_secs(1);

/// Runs the committer until `shutdown`; an error is fatal for the instance.
pub(super) async fn run(
    config: Config,
    held: Arc<Held>,
    shutdown: CancellationToken,
    events: Arc<Events>,
) -> Result<(), PipelineError> {
    let opened = Committer::open(config, held.clone(), &shutdown, events).await;
    let result = match opened {
        Ok(Some(committer)) => run_committer(committer, &shutdown).await,
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    held.stop();
    result
}

async fn run_committer(
    mut committer: Committer,
    shutdown: &CancellationToken,
) -> Result<(), PipelineError> {
    let shutdown = shutdown.clone();
    let mut retry: Option<Retry> = None;
    loop {
        if shutdown.is_cancelled() {
            // The commit in flight ends (or gives up at the outage it meets).
            return match committer.settle().await {
                Err(Failure::Fatal(e)) => Err(e),
                _ => Ok(()),
            };
        }
        let mut turn = committer.turn(&shutdown).await;
        if matches!(turn, Ok(false))
            && let Err(failure) = committer.settle().await
        {
            turn = Err(failure);
        }
        committer.held.set_progressing(matches!(turn, Ok(true)));
        match turn {
            Ok(true) => retry = None,
            Ok(false) => {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(POLL) => {}
                }
            }
            Err(Failure::Fenced) => {
                tracing::info!(
                    "another committer applied transactions meanwhile: reading the progress again"
                );
                committer.forget();
            }
            Err(Failure::Transient(what, side, error)) => {
                committer.core.events.retrying(what, side, &*error);
                committer.forget();
                if !retry.get_or_insert_with(Retry::new).wait(&shutdown).await {
                    return Ok(());
                }
            }
            Err(Failure::Fatal(e)) => return Err(e),
        }
    }
}

/// Why a turn failed.
enum Failure {
    /// Another committer moved the progress: read it again.
    Fenced,
    /// Worth another try after a backoff (the operation, its side, the error).
    Transient(&'static str, Side, Box<dyn std::error::Error + Send + Sync>),
    Fatal(PipelineError),
}

impl From<WriteError> for Failure {
    fn from(e: WriteError) -> Self {
        if is_fenced(&e) {
            Self::Fenced
        } else if e.class() == crate::write::ErrorClass::Retry {
            Self::Transient(
                "committing source transactions",
                Side::Postgres,
                Box::new(e),
            )
        } else {
            Self::Fatal(e.into())
        }
    }
}

impl From<RedisError> for Failure {
    fn from(e: RedisError) -> Self {
        if e.is_retryable() {
            Self::Transient("reading the transaction stream", Side::Redis, Box::new(e))
        } else {
            Self::Fatal(e.into())
        }
    }
}

impl From<crate::ack::AckError> for Failure {
    fn from(e: crate::ack::AckError) -> Self {
        Self::Fatal(e.into())
    }
}

impl From<PipelineError> for Failure {
    fn from(e: PipelineError) -> Self {
        Self::Fatal(e)
    }
}

/// An event to apply: its transaction, `total_order`, entry, what it maps to, and
/// since when it was held when it was (to give it back if its commit does not happen).
type Item = (String, i64, StreamEntry, Prepared, Option<Instant>);

/// A held event's transaction, `total_order` and since when it was held; `None` for a
/// staged one.
type HeldMeta = Option<(String, i64, Instant)>;

/// The held events among `items`, as they were held.
fn held_of(items: Vec<Item>) -> Vec<HeldEvent> {
    items
        .into_iter()
        .filter_map(|(tx_id, total_order, entry, prepared, since)| {
            Some(HeldEvent {
                tx_id,
                total_order,
                entry,
                prepared,
                since: since?,
            })
        })
        .collect()
}

/// The table an event writes, if it writes one.
fn table_of(p: &Prepared) -> Option<TableName> {
    match p {
        Prepared::Row(change, _) => Some(change.table.name.clone()),
        Prepared::Truncate(t) => Some(t.table.name.clone()),
        _ => None,
    }
}

/// The task writing a commit: its outcome, and its held events.
type InFlight = tokio::task::JoinHandle<(Result<bool, Failure>, Vec<HeldEvent>)>;

/// One record of the transaction stream, read ahead.
struct Record {
    id: EntryId,
    /// `None`: not a BEGIN or END the committer can read (logged, passed).
    end: Option<TxEnd>,
}

struct Committer {
    /// Prepares and writes like the loop's (no staging, no XACK: the events were
    /// acknowledged when staged).
    core: Core,
    control: Control,
    store: TxStore,
    /// Events the loop holds for this committer (`held.rs`).
    held: Arc<Held>,
    tx: TransactionsConfig,
    /// Every mapping's stream patterns (which data collections are ours; routes).
    patterns: Vec<Vec<StreamPattern>>,
    ours: HashMap<String, bool>,
    /// The session holding the committer's advisory lock, while this instance commits.
    lock: Option<PgConnection>,
    lock_at: Option<Instant>,
    progress: Option<Progress>,
    queue: VecDeque<Record>,
    /// Records passed (BEGINs, transactions of other tables) since the last commit.
    passed: Option<EntryId>,
    /// The transaction at the head that waits for events, since when, and when it last
    /// looked for events on their way.
    waiting: Option<(String, Instant, Option<Instant>)>,
    /// Foreign keys: each table's referenced tables, for the tables seen so far.
    parents: HashMap<TableName, Vec<TableName>>,
    fk_known: HashSet<TableName>,
    chores_at: Instant,
    /// When held events were last looked at for [`Committer::hold_for`].
    expired_at: Instant,
    /// The commit being written (its outcome, and its held events to give back when
    /// it did not commit).
    in_flight: Option<InFlight>,
}

impl Committer {
    async fn open(
        config: Config,
        held: Arc<Held>,
        shutdown: &CancellationToken,
        events: Arc<Events>,
    ) -> Result<Option<Self>, PipelineError> {
        let Some(tx) = config.transactions.clone() else {
            return Ok(None);
        };
        let patterns = config
            .mappings
            .iter()
            .map(|m| {
                m.streams
                    .iter()
                    .flat_map(|s| StreamPattern::parse(s).unwrap_or_default())
                    .collect()
            })
            .collect();
        let Some((mut core, mut reader)) = Core::open(config, shutdown, None, events).await? else {
            return Ok(None);
        };
        core.staging = false;
        let control = reader.control().clone();
        let store = core.writer.tx_store();
        Ok(Some(Self {
            core,
            control,
            store,
            held,
            tx,
            patterns,
            ours: HashMap::new(),
            lock: None,
            lock_at: None,
            progress: None,
            queue: VecDeque::new(),
            passed: None,
            waiting: None,
            parents: HashMap::new(),
            fk_known: HashSet::new(),
            chores_at: Instant::now(),
            expired_at: Instant::now(),
            in_flight: None,
        }))
    }

    /// How long an event is held in memory at most: `wait`, and less than half of
    /// `claim_idle`, so that it is staged (and acknowledged) before any instance,
    /// this one included, claims it as idle (each claim is a delivery, and
    /// `max_deliveries` of them dead-letter it).
    fn hold_for(&self) -> Duration {
        self.tx
            .wait
            .min(self.core.config.redis.claim_idle / 2)
            .saturating_sub(EXPIRE_EVERY)
    }

    /// Forgets what it read ahead and its progress (read again next turn).
    fn forget(&mut self) {
        self.progress = None;
        self.queue.clear();
        self.passed = None;
        self.waiting = None;
    }

    /// One turn: `true` when it applied something.
    async fn turn(&mut self, shutdown: &CancellationToken) -> Result<bool, Failure> {
        if !self.lead().await? {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(LEAD_EVERY) => {}
            }
            return Ok(false);
        }
        let progress = match &self.progress {
            Some(p) => p.clone(),
            None => {
                let start = self.start().await?;
                let p = self.store.progress(&self.tx.stream, start).await?;
                self.progress = Some(p.clone());
                p
            }
        };
        if self.expired_at.elapsed() >= EXPIRE_EVERY {
            self.expired_at = Instant::now();
            self.held.expire(self.hold_for());
        }
        if self.chores_at.elapsed() >= CHORES_EVERY {
            self.chores_at = Instant::now();
            let removed = self.store.sweep(KEEP_APPLIED).await?;
            if removed > 0 {
                tracing::info!(
                    events = removed,
                    "removed events read again after their transaction was applied"
                );
            }
            let (open, _, oldest) = self.store.open().await?;
            let open = u64::try_from(open).unwrap_or(0);
            self.core
                .events
                .metrics()
                .set_open_transactions(open, oldest);
            if self.apply_late(&progress, shutdown).await? {
                return Ok(true);
            }
        }
        self.read_ahead(&progress).await?;
        self.apply_front(&progress, shutdown).await
    }

    /// Whether this instance is the committer (taking the lock when it is free).
    async fn lead(&mut self) -> Result<bool, WriteError> {
        let due = self.lock_at.is_none_or(|at| at.elapsed() >= LEAD_EVERY);
        if !due {
            return Ok(self.lock.is_some());
        }
        self.lock_at = Some(Instant::now());
        if let Some(conn) = &mut self.lock {
            if sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok() {
                return Ok(true);
            }
            tracing::warn!(stream = %self.tx.stream, "the committer's lock session ended: committing stops until the lock is taken again");
            self.lock = None;
            self.held.set_leading(false);
            self.forget();
        }
        let key = lock_key(&self.core.config.redis.group, &self.tx.stream);
        let mut conn = self
            .store
            .pool()
            .acquire()
            .await
            .map_err(|e| WriteError::Postgres {
                context: "acquiring the committer's lock session".into(),
                source: e,
            })?
            .detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| WriteError::Postgres {
                context: "taking the committer's lock".into(),
                source: e,
            })?;
        if got {
            tracing::info!(stream = %self.tx.stream, "this instance commits source transactions");
            self.lock = Some(conn);
            self.held.set_leading(true);
            self.forget();
        }
        Ok(got)
    }

    /// Where the committer starts on first use: with `redis.start = "0"` the start of
    /// the transaction stream, with `$` its current end, else the ID given.
    async fn start(&mut self) -> Result<EntryId, RedisError> {
        match self.core.config.redis.start.as_str() {
            "0" => Ok(EntryId::ZERO),
            "$" => Ok(inspect::last_entry(&mut self.control, &self.tx.stream)
                .await?
                .unwrap_or(EntryId::ZERO)),
            id => Ok(EntryId::parse(id).unwrap_or(EntryId::ZERO)),
        }
    }

    /// Reads more of the transaction stream when little is read ahead.
    async fn read_ahead(&mut self, progress: &Progress) -> Result<(), RedisError> {
        if self.queue.len() >= READ_AHEAD / 2 {
            return Ok(());
        }
        let after = self
            .queue
            .back()
            .map(|r| r.id)
            .or(self.passed)
            .unwrap_or(progress.end_id);
        let stream: Arc<str> = Arc::from(self.tx.stream.as_str());
        let entries = crate::redis::range(
            &mut self.control,
            &stream,
            &format!("({after}"),
            "+",
            READ_AHEAD - self.queue.len(),
        )
        .await?;
        for entry in entries {
            let end = match tx_record(&entry) {
                Ok(TxRecord::End(end)) => Some(end),
                Ok(TxRecord::Begin { .. }) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "not a transaction record: passed");
                    None
                }
            };
            self.queue.push_back(Record { id: entry.id, end });
        }
        Ok(())
    }

    /// The events of `end` that redsink reads: those of the data collections whose
    /// streams a mapping covers (or `transactions.collections` lists).
    fn expected(&mut self, end: &TxEnd) -> i64 {
        let mut n = 0;
        for (collection, count) in &end.collections {
            if self.is_ours(collection) {
                n += i64::try_from(*count).unwrap_or(i64::MAX);
            }
        }
        n
    }

    fn is_ours(&mut self, collection: &str) -> bool {
        if let Some(&ours) = self.ours.get(collection) {
            return ours;
        }
        let ours = self.core.config.reads_collection(collection);
        self.ours.insert(collection.to_string(), ours);
        ours
    }

    /// Applies the complete transactions at the front of what was read ahead (or the
    /// head one in pieces, or without what is missing after `wait`).
    async fn apply_front(
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
    async fn arrived(
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
    fn ours_ahead(&mut self) -> Vec<(usize, TxEnd, i64)> {
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
    async fn apply_complete(
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

    fn max_events(&self) -> i64 {
        i64::try_from(self.tx.max_events).unwrap_or(i64::MAX)
    }

    /// Events one commit of whole transactions takes, at most (one transaction is
    /// never split below `max_events`).
    fn max_group(&self) -> i64 {
        i64::try_from(self.core.config.batch.max_batch * 4).unwrap_or(i64::MAX)
    }

    /// The finish of a commit that moves the progress to `end_id`.
    fn finish(
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
    async fn pass_all(
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
            .is_some_and(|(_, since, _)| since.elapsed() < LEAD_EVERY)
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
    async fn apply_piece(
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
    async fn wait_for(
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
    async fn on_the_way(&mut self, upto: EntryId) -> Result<bool, RedisError> {
        let patterns: Vec<&[StreamPattern]> = self.patterns.iter().map(Vec::as_slice).collect();
        let streams =
            crate::redis::mapped_streams(&mut self.control, &patterns, &self.core.config.redis)
                .await?;
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
    async fn apply_late(
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

    /// Prepares the staged events and writes them with `finish`, in one commit; then
    /// writes the dead letters. `false`: shutdown came first.
    async fn apply(
        &mut self,
        txs: &[String],
        rows: Vec<StagedEvent>,
        held: Vec<HeldEvent>,
        mut finish: TxFinish,
        shutdown: &CancellationToken,
    ) -> Result<bool, Failure> {
        let mut items: Vec<Item> = held
            .into_iter()
            .map(|e| {
                let meta = Some(e.since);
                (e.tx_id, e.total_order, e.entry, e.prepared, meta)
            })
            .collect();
        let staged = match self.prepare_rows(rows, &mut finish, shutdown).await {
            Ok(Some(staged)) => staged,
            other => {
                self.held.put_back(held_of(items));
                return other.map(|_| false);
            }
        };
        items.extend(staged);
        // Source order: commit order (the order of `txs`), then `total_order`.
        let position: HashMap<&str, usize> = txs
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        items.sort_by(|a, b| {
            let at = |tx: &str| position.get(tx).copied().unwrap_or(usize::MAX);
            (at(&a.0), a.1, &a.2.stream, a.2.id).cmp(&(at(&b.0), b.1, &b.2.stream, b.2.id))
        });
        let tables: Vec<TableName> = items.iter().filter_map(|i| table_of(&i.3)).collect();
        let ready = match self.foreign_keys(tables).await {
            Ok(()) => self.settle().await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = ready {
            self.held.put_back(held_of(items));
            return Err(e);
        }
        self.write(items, &finish, shutdown);
        Ok(true)
    }

    /// The next piece of a transaction applied in pieces: its first `max_events` events
    /// in `total_order`, staged or held (held ones beyond it are held again).
    async fn piece(
        &mut self,
        ids: &[String],
    ) -> Result<(Vec<StagedEvent>, Vec<HeldEvent>), Failure> {
        let mut rows = self.store.fetch(ids, self.tx.max_events).await?;
        let mut held = self.held.take(ids);
        held.sort_by_key(|e| e.total_order);
        let max = self.tx.max_events;
        let (mut i, mut j) = (0, 0);
        while i + j < max && (i < rows.len() || j < held.len()) {
            let take_row = match (rows.get(i), held.get(j)) {
                (Some(r), Some(h)) => r.total_order <= h.total_order,
                (Some(_), None) => true,
                _ => false,
            };
            if take_row { i += 1 } else { j += 1 }
        }
        rows.truncate(i);
        self.held.put_back(held.split_off(j));
        Ok((rows, held))
    }

    /// Each staged event prepared again (decode → map), in order; markers of events
    /// dead-lettered when staged are only removed. `None`: shutdown came first.
    async fn prepare_rows(
        &mut self,
        rows: Vec<StagedEvent>,
        finish: &mut TxFinish,
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<Item>>, Failure> {
        let mut items: Vec<Item> = Vec::with_capacity(rows.len());
        for row in rows {
            finish.events.push((row.entry.stream.clone(), row.entry.id));
            if row.entry.fields.is_none() {
                // Dead-lettered when staged.
                continue;
            }
            let prepared = match self.route(&row.entry.stream) {
                true => self.core.prepare(&row.entry, shutdown).await?,
                false => Prepared::Dead(format!(
                    "no mapping covers stream {} any more",
                    row.entry.stream
                )),
            };
            let prepared = match prepared {
                Prepared::Interrupted => return Ok(None),
                Prepared::Dead(reason) => {
                    Prepared::Dead(format!("{reason} (source transaction {})", row.tx_id))
                }
                p => p,
            };
            items.push((row.tx_id, row.total_order, row.entry, prepared, None));
        }
        Ok(Some(items))
    }

    /// Hands the events to a task that writes them with `finish` in one commit (see
    /// [`Commit::run`]) while this committer prepares the next one (the commit before
    /// is settled). The progress read ahead assumes it commits; when it does not,
    /// [`Committer::settle`] says so and everything is read again.
    fn write(&mut self, items: Vec<Item>, finish: &TxFinish, shutdown: &CancellationToken) {
        if let Some(p) = &mut self.progress {
            p.seq += 1;
            p.end_id = finish.end_id;
            p.piece = finish.piece.clone();
            p.applied += finish.applied;
        }
        let commit = Commit {
            writer: self.core.writer.clone(),
            acker: self.core.acker.clone(),
            events: self.core.events.clone(),
            parents: self.parents.clone(),
            finish: finish.clone(),
        };
        let shutdown = shutdown.clone();
        self.in_flight = Some(tokio::spawn(
            async move { commit.run(items, &shutdown).await },
        ));
    }

    /// Waits for the commit in flight, if any. Its events held in memory go back to
    /// the held ones when it did not commit.
    async fn settle(&mut self) -> Result<(), Failure> {
        let Some(task) = self.in_flight.take() else {
            return Ok(());
        };
        let (outcome, held) = match task.await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => return Err(Failure::Fatal(PipelineError::WriterTask(e))),
        };
        match outcome {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.held.put_back(held);
                self.forget();
                Ok(())
            }
            Err(failure) => {
                self.held.put_back(held);
                Err(failure)
            }
        }
    }

    /// Routes `stream` to the first mapping naming it; `false` when none does.
    fn route(&mut self, stream: &Arc<str>) -> bool {
        if self.core.routes.contains_key(stream) {
            return true;
        }
        let Some(index) = self
            .patterns
            .iter()
            .position(|ps| ps.iter().any(|p| p.matches(stream)))
        else {
            return false;
        };
        self.core.routes.insert(stream.clone(), index);
        true
    }

    /// Reads the foreign keys among the target tables once a new table shows up.
    async fn foreign_keys(&mut self, tables: Vec<TableName>) -> Result<(), WriteError> {
        let mut new = false;
        for name in tables {
            new |= self.fk_known.insert(name);
        }
        if !new {
            return Ok(());
        }
        let tables: Vec<TableName> = self.fk_known.iter().cloned().collect();
        self.parents.clear();
        for (child, parent) in self.store.foreign_keys(&tables).await? {
            self.parents.entry(child).or_default().push(parent);
        }
        Ok(())
    }
}

/// One commit of the committer, run by a task of its own.
struct Commit {
    writer: crate::write::Writer,
    acker: crate::ack::Acker,
    events: Arc<Events>,
    parents: HashMap<TableName, Vec<TableName>>,
    finish: TxFinish,
}

impl Commit {
    /// Writes the events in one commit, in the phased order, or in the exact one when
    /// Postgres rejects a row of that (see `plan.rs`); then the dead letters and the
    /// acknowledgements of held events. `false`: shutdown came first.
    /// The outcome, and the held events to give back when it did not commit (those of
    /// a commit whose exact order failed too are left pending: claimed after
    /// `claim_idle`, or read again at restart).
    async fn run(
        self,
        items: Vec<Item>,
        shutdown: &CancellationToken,
    ) -> (Result<bool, Failure>, Vec<HeldEvent>) {
        let (pairs, held): (Vec<(StreamEntry, Prepared)>, Vec<HeldMeta>) = items
            .into_iter()
            .map(|(tx, order, entry, prepared, since)| {
                ((entry, prepared), since.map(|s| (tx, order, s)))
            })
            .unzip();
        let give_back = |pairs: Vec<(StreamEntry, Prepared)>, held: Vec<HeldMeta>| {
            held_of(
                pairs
                    .into_iter()
                    .zip(held)
                    .map(|((entry, prepared), meta)| match meta {
                        Some((tx, order, since)) => (tx, order, entry, prepared, Some(since)),
                        None => (String::new(), 0, entry, prepared, None),
                    })
                    .collect(),
            )
        };
        let phased = plan::phased(&pairs, &self.parents);
        match self.write_phased(phased, shutdown).await {
            Ok(Some(done)) => (Ok(done), Vec::new()),
            Ok(None) => (self.write_exact(pairs, shutdown).await, Vec::new()),
            Err(failure) => (Err(failure), give_back(pairs, held)),
        }
    }

    /// The phased order's commit: `Some(committed)`, `None` when Postgres rejected a row
    /// (write the exact order then); `Some(false)`: shutdown came first.
    async fn write_phased(
        &self,
        phased: Option<crate::batch::Batch>,
        shutdown: &CancellationToken,
    ) -> Result<Option<bool>, Failure> {
        let Some(phased) = phased else {
            return Ok(None);
        };
        let (writer, events, finish) = (&self.writer, self.events.clone(), &self.finish);
        let started = Instant::now();
        match retrying!(events, shutdown, "committing source transactions", {
            writer.write_transactions(&phased, finish, false)
        }) {
            Ok(None) => Ok(Some(false)),
            Ok(Some(committed)) => self
                .acknowledge(&phased, &committed, started, shutdown)
                .await
                .map(Some),
            Err(e) if e.class() == crate::write::ErrorClass::Data => {
                tracing::info!(error = %e, "a row was rejected in the phased order: writing in source order");
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The exact order's commit, rejected rows dead-lettered.
    async fn write_exact(
        &self,
        pairs: Vec<(StreamEntry, Prepared)>,
        shutdown: &CancellationToken,
    ) -> Result<bool, Failure> {
        let (writer, events, finish) = (&self.writer, self.events.clone(), &self.finish);
        let started = Instant::now();
        {
            {
                let exact = plan::exact(pairs);
                let committed = retrying!(events, shutdown, "committing source transactions", {
                    writer.write_transactions(&exact, finish, true)
                })?;
                let Some(committed) = committed else {
                    return Ok(false);
                };
                self.acknowledge(&exact, &committed, started, shutdown)
                    .await
            }
        }
    }

    /// Dead letters, then XACK of the held events (and again of staged ones: no-ops);
    /// the commit counted. `false`: shutdown came first.
    async fn acknowledge(
        &self,
        batch: &crate::batch::Batch,
        committed: &crate::write::Committed,
        started: Instant,
        shutdown: &CancellationToken,
    ) -> Result<bool, Failure> {
        let events = self.events.clone();
        let mut acker = self.acker.clone();
        if retrying!(events, shutdown, "dead-lettering", { acker.ack(committed) })?.is_none() {
            return Ok(false);
        }
        count(&events, batch, committed, started.elapsed());
        Ok(true)
    }
}

/// A commit of the committer in the metrics.
fn count(
    events: &Events,
    batch: &crate::batch::Batch,
    committed: &crate::write::Committed,
    took: Duration,
) {
    let metrics = events.metrics();
    metrics.committed(committed.acks().len(), took, &batch.source_ts_ms);
    for t in &batch.tables {
        metrics.add(
            Counter::RowsWritten,
            &t.table.name.to_string(),
            t.rows.len() as u64,
        );
    }
    for d in committed.dead() {
        metrics.add(Counter::DeadLettered, &d.entry.stream, 1);
    }
}

/// The committer's advisory lock: one per group and transaction stream.
fn lock_key(group: &str, stream: &str) -> i64 {
    i64::from_ne_bytes(
        fnv1a64(format!("redsink.committer\0{group}\0{stream}").as_bytes()).to_ne_bytes(),
    )
}
