//! The committer (transaction mode, `[transactions]`): applies each source transaction
//! whole, in source commit order, once all its events have arrived (held in memory by
//! this instance's loop, `held.rs`, or staged in Postgres by any instance).
//!
//! Every instance runs one; the one holding the lease (`lease.rs`) commits, the others
//! wait to take over: at once when the holder's process dies, within the lease when it
//! is paused or cut off. Safety does not rest on the lease: each commit is fenced by
//! `redsink.tx_progress.seq` (`TxFinish`), so a committer that lost the lease without
//! noticing has its next commit refused.
//!
//! The loop: read the transaction stream ahead (BEGIN and END records, in commit
//! order) from the progress; take the longest run of ENDs at its front whose events
//! (of the data collections redsink reads: [`Committer::expected`]) are all staged, up
//! to 4 × `tx_unit` events (`front.rs`); take their held events and prepare
//! the staged ones again (decode → map, as the instance that staged them did), write
//! them in one transaction in the orders `plan.rs` gives, with the staged rows removed
//! and the progress moved in the same commit, by a task while the next is prepared
//! (`apply.rs`). A
//! transaction with more than `max_events` events goes in pieces; one whose events
//! are missing, with none left on the way (undelivered or pending in the group at or
//! before its END) for `wait`, goes with what arrived, and events of it staged later
//! are applied on their own.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

mod apply;
mod front;
mod lease;

use self::apply::InFlight;
use self::lease::Lease;
use super::events::Events;
use super::held::Held;
use super::retry::{Retry, Side};
use super::{Core, PipelineError};
use crate::config::{Config, TransactionsConfig};
use crate::decode::{TxEnd, TxRecord, tx_record};
use crate::entry::EntryId;
use crate::redis::{Control, RedisError, inspect};
use crate::table::TableName;
use crate::write::{Progress, TxStore, WriteError, is_fenced};

/// How long the committer sleeps when there is nothing to apply.
const POLL: Duration = Duration::from_millis(5);
/// How often a waiting instance asks whether it commits now.
const LEAD_EVERY: Duration = Duration::from_millis(250);
/// How often the progress moves over records passed (BEGINs, transactions of tables
/// redsink does not read) when nothing else is applied.
const PASS_EVERY: Duration = Duration::from_secs(1);
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
        Ok(Some(mut committer)) => {
            let result = run_committer(&mut committer, &shutdown).await;
            committer.lease.stop().await;
            result
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    held.stop();
    result
}

async fn run_committer(
    committer: &mut Committer,
    shutdown: &CancellationToken,
) -> Result<(), PipelineError> {
    let shutdown = shutdown.clone();
    let mut retry: Option<Retry> = None;
    loop {
        if shutdown.is_cancelled() {
            // The commit in flight ends (or gives up at the outage it meets).
            return match committer.drain().await {
                Err(Failure::Fatal(e)) => Err(e),
                _ => Ok(()),
            };
        }
        let mut turn = committer.turn(&shutdown).await;
        if matches!(turn, Ok(false))
            && let Err(failure) = committer.drain().await
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
    ours: HashMap<String, bool>,
    /// Whether this instance commits: the lease, kept by a task of its own.
    lease: Lease,
    /// The lease's term when the committer last looked (`None`: not ours).
    term: Option<u64>,
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
    /// The acknowledgements of the last commit, going on while the next is written.
    acking: Option<self::apply::Acking>,
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
        let Some((mut core, mut reader)) = Core::open(config, shutdown, None, events).await? else {
            return Ok(None);
        };
        core.staging = false;
        let control = reader.control().clone();
        let store = core.writer.tx_store();
        let lease = Lease::start(
            store.pool().clone(),
            core.config.redis.group.clone(),
            tx.stream.clone(),
            core.config.consumer().to_string(),
        )
        .await;
        Ok(Some(Self {
            core,
            control,
            store,
            held,
            tx,
            ours: HashMap::new(),
            lease,
            term: None,
            progress: None,
            queue: VecDeque::new(),
            passed: None,
            waiting: None,
            parents: HashMap::new(),
            fk_known: HashSet::new(),
            chores_at: Instant::now(),
            expired_at: Instant::now(),
            in_flight: None,
            acking: None,
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
        if !self.lead() {
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

    /// Whether this instance is the committer. Taking the lease, losing it or taking
    /// it again starts over from the progress; losing it spills the held events.
    fn lead(&mut self) -> bool {
        let term = self.lease.term();
        // The lease was asked for once before this (`Lease::start`).
        self.held.set_decided();
        if term != self.term {
            if self.term.is_some() {
                self.held.set_leading(false);
            }
            self.forget();
            if term.is_some() {
                self.held.set_leading(true);
            }
            self.term = term;
        }
        term.is_some()
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
}
