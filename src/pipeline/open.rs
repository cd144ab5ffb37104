//! Opening: compiles the mappings, connects to Redis, then to Postgres and migrates
//! it, and checks every fixed target table, retrying while a side is unreachable.
//! Gives the [`Core`] and the [`Reader`], or `None` when shutdown came first. Once the
//! streams are known, [`check_consumer_name`] refuses to start under a consumer name
//! that another live instance reads with.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::events::Events;
use super::retry::retrying;
use super::{Core, PipelineError};
use crate::ack::Acker;
use crate::batch::Batcher;
use crate::config::{Config, SchemaEvolution};
use crate::map::Mapping;
use crate::read::Reader;
use crate::write::{self, Catalog, WriteError, Writer};

impl Core {
    /// Connects both sides (retrying while they are unreachable), migrates and checks
    /// every fixed target table. With `replay_as`, checkpoints and dead letters are
    /// recorded under that name and nothing is acknowledged. `None` if shutdown came first.
    pub(super) async fn open(
        config: Config,
        shutdown: &CancellationToken,
        replay_as: Option<&str>,
        events: Arc<Events>,
    ) -> Result<Option<(Self, Reader)>, PipelineError> {
        let mappings = compile(&config)?;
        let group = replay_as.unwrap_or(&config.redis.group);
        // Redis first: nothing is written to Postgres (migrations) by an instance that
        // cannot read its streams.
        let redis_config = config.redis.clone();
        let Some((deployment, control)) = retrying!(events, shutdown, "connecting to redis", {
            crate::redis::connect(&redis_config)
        })?
        else {
            return Ok(None);
        };
        let Some((mut catalog, writer)) =
            connect_postgres(&config, group, shutdown, &events).await?
        else {
            return Ok(None);
        };
        let reader = Reader::new(deployment, control.clone(), group, config.consumer())
            .with_wait_replicas(config.redis.wait_replicas);
        let mut acker = Acker::new(control, group, &config.redis.dlq_suffix);
        if replay_as.is_some() {
            acker = acker.dead_letters_only();
        }
        if !check_tables(&mut catalog, &mappings, shutdown, &events).await? {
            return Ok(None);
        }
        let staging = config.transactions.is_some() && replay_as.is_none();
        // A replay usually runs beside the live instances: it keeps to key locks.
        let full = super::share::ceiling(
            super::share::configured(&config, staging),
            replay_as.is_some(),
        );
        let batcher = Batcher::new(full, config.batch.max_delay);
        let core = Core {
            staging,
            held: None,
            config,
            mappings,
            routes: foldhash::HashMap::default(),
            catalog,
            writer,
            acker,
            batcher,
            in_flight: None,
            acking: None,
            in_flight_since: None,
            progress_at: std::time::Instant::now(),
            reader_round_trips: 0,
            backlog: false,
            interrupted: false,
            unfinished: Vec::new(),
            events,
        };
        Ok(Some((core, reader)))
    }

    /// The streams of every mapping in Redis now, each with the first mapping that
    /// names it, asked on `control`.
    pub(super) async fn mapped_streams(
        &self,
        control: &mut crate::redis::Control,
    ) -> Result<Vec<(String, usize)>, crate::redis::RedisError> {
        let patterns: Vec<&[crate::config::StreamPattern]> =
            self.mappings.iter().map(|m| m.streams.as_slice()).collect();
        crate::redis::mapped_streams(control, &patterns, &self.config.redis).await
    }
}

/// The compiled `[[mapping]]`s, in order (a mapping's index is its position).
fn compile(config: &Config) -> Result<Vec<Mapping>, PipelineError> {
    config
        .mappings
        .iter()
        .enumerate()
        .map(|(i, m)| {
            Mapping::compile(i, m).map_err(|e| PipelineError::Config(format!("mapping[{i}]: {e}")))
        })
        .collect()
}

/// Connects the pool and migrates; the catalog and the writer of `group`'s
/// checkpoints, or `None` if shutdown came first.
async fn connect_postgres(
    config: &Config,
    group: &str,
    shutdown: &CancellationToken,
    events: &Events,
) -> Result<Option<(Catalog, Writer)>, PipelineError> {
    let Some(pool) = retrying!(events, shutdown, "connecting to postgres", {
        write::connect(&config.postgres)
    })?
    else {
        return Ok(None);
    };
    if retrying!(events, shutdown, "migrating", write::migrate(&pool))?.is_none() {
        return Ok(None);
    }
    Ok(Some((Catalog::new(pool.clone()), Writer::new(pool, group))))
}

/// Reads the catalog of every fixed target table and checks the mapping's config
/// against it (the configured key is a unique key, the columns it names exist): a
/// missing table is fatal unless schema evolution will create it, a mismatch is fatal.
/// Both before anything is read, so no entry is charged a delivery for a config
/// problem. `false` if shutdown came first.
async fn check_tables(
    catalog: &mut Catalog,
    mappings: &[Mapping],
    shutdown: &CancellationToken,
    events: &Events,
) -> Result<bool, PipelineError> {
    for m in mappings {
        let Some(fixed) = m.table.fixed() else {
            continue;
        };
        let name = fixed.map_err(PipelineError::Config)?;
        let read = retrying!(events, shutdown, "reading the catalog", {
            catalog.table(&name)
        });
        match read {
            Ok(Some(table)) => m.check_table(&table)?,
            Ok(None) => return Ok(false),
            // Schema evolution creates it from the first event.
            Err(WriteError::TableMissing { .. })
                if m.schema_evolution == SchemaEvolution::Basic => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Refuses to start when another live instance reads under our consumer name: it would
/// re-read our pending entries (and we its), doubling the work. Its blocking readers'
/// connections carry the name ([`Reader::namesakes`]). A previous life's connections
/// can linger a moment after it crashed, until Redis sees them closed: so a namesake
/// that used its connection within `live_within` is looked at again after a little more
/// than one `block` (a live reader sends its next read by then; a closed connection is
/// gone), and only one still there and active refuses the start. `false` if shutdown
/// came first.
pub(super) async fn check_consumer_name(
    reader: &mut Reader,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<bool, PipelineError> {
    reader.tag_clients(&streams_tag(config));
    let live_within = config.redis.live_within().as_secs().max(1);
    let active = |idle: Option<Vec<u64>>| {
        idle.unwrap_or_default()
            .into_iter()
            .find(|i| *i <= live_within)
    };
    let Some(_) = active(reader.namesakes().await?) else {
        return Ok(true);
    };
    let wait = config.redis.block + Duration::from_secs(1);
    tracing::info!(
        consumer = config.consumer(),
        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        "a connection under this consumer name is open (another instance, or a previous \
         life's not yet closed): looking again shortly"
    );
    tokio::select! {
        () = shutdown.cancelled() => return Ok(false),
        () = tokio::time::sleep(wait) => {}
    }
    match active(reader.namesakes().await?) {
        Some(idle_s) => Err(PipelineError::ConsumerInUse {
            consumer: config.consumer().to_string(),
            group: config.redis.group.clone(),
            client: reader.client_name(),
            idle_s,
        }),
        None => Ok(true),
    }
}

/// A short tag of what the instance reads: its mappings' stream patterns, hashed.
fn streams_tag(config: &Config) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for m in &config.mappings {
        m.streams.hash(&mut h);
    }
    format!("{:08x}", h.finish() as u32)
}
