//! Configuration: TOML file → [`Config`], then environment overrides, then
//! [`Config::validate`]. Every error names the key it is about.
//!
//! Environment overrides: `REDSINK_<SECTION>_<KEY>` sets `<key>` in `[<section>]`
//! for the sections `redis`, `postgres`, `batch` and `decode` (for example
//! `REDSINK_REDIS_URL`, `REDSINK_BATCH_MAX_DELAY`). `DATABASE_URL` is used for
//! `postgres.url` when neither the file nor `REDSINK_POSTGRES_URL` sets it.
//!
//! A leaf: it parses and validates into plain types (imports only the `entry` and
//! `table` leaves for their grammars); the steps compile those into their own.
//!
//! This file holds the TOML structs, enums and defaults; `load` reads the file, the
//! environment and the URL files, `validate` checks what serde cannot, `redact` keeps
//! secrets out of logs, `de` parses durations, numbers and lists.

mod de;
mod defaults;
mod load;
mod pattern;
mod redact;
#[cfg(test)]
mod tests;
mod validate;

pub use load::default_consumer;
pub use pattern::StreamPattern;
pub use redact::redact_url;

use std::time::Duration;

use serde::Deserialize;

use de::{de_duration, de_list, de_opt_duration, de_strings, de_u32, de_u64, de_usize};
use defaults::{
    default_block, default_claim_idle, default_dlq_suffix, default_gc_every, default_group,
    default_idle_in_transaction, default_keepalive, default_lock_timeout, default_max_batch,
    default_max_delay, default_max_deliveries, default_placeholder, default_pool_size,
    default_prune_idle, default_slow_write_after, default_start, default_statement_timeout,
    default_tx_max_events, default_tx_wait,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub redis: RedisConfig,
    pub postgres: PostgresConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub decode: DecodeConfig,
    #[serde(default)]
    pub http: HttpConfig,
    /// Transaction mode (docs/TRANSACTIONS.md): off without the section.
    #[serde(default)]
    pub transactions: Option<TransactionsConfig>,
    #[serde(rename = "mapping", default)]
    pub mappings: Vec<MappingConfig>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Standalone: the server. Cluster: a seed node (more in `nodes`). Sentinel: the user,
    /// password, database and scheme (`rediss://` for TLS) for the master; its address
    /// comes from the sentinels. Required (validation names it when unset).
    #[serde(default)]
    pub url: String,
    /// Which kind of Redis deployment `url` and `nodes` describe.
    #[serde(default)]
    pub mode: RedisMode,
    /// Cluster: more seed nodes. Sentinel: the sentinels (`redis://[user:pass@]host:26379`).
    /// A list, or one comma-separated string (from the environment).
    #[serde(default, deserialize_with = "de_list")]
    pub nodes: Vec<String>,
    /// Sentinel: the name the sentinels know the master by.
    #[serde(default)]
    pub master_name: Option<String>,
    #[serde(default = "default_group")]
    pub group: String,
    /// Consumer name in the group; default `<hostname>-<pid>`.
    #[serde(default)]
    pub consumer: Option<String>,
    /// Where a newly created group starts: `0` (all history), `$` (new only) or an entry ID.
    #[serde(default = "default_start")]
    pub start: String,
    /// Longest time one XREADGROUP blocks waiting for new entries.
    #[serde(default = "default_block", deserialize_with = "de_duration")]
    pub block: Duration,
    /// Entries pending longer than this on any consumer are claimed (XAUTOCLAIM).
    #[serde(default = "default_claim_idle", deserialize_with = "de_duration")]
    pub claim_idle: Duration,
    /// An entry delivered more often than this without being acknowledged (it keeps
    /// crashing or stalling an instance) goes to the dead-letter stream; 0 = no limit.
    #[serde(default = "default_max_deliveries", deserialize_with = "de_u64")]
    pub max_deliveries: u64,
    /// Apply only entries that this many replicas hold (`WAIT` after each read that
    /// returned some), so a failover cannot take back what was applied; 0 = off.
    #[serde(default, deserialize_with = "de_u32")]
    pub wait_replicas: u32,
    /// Other consumers idle this long with nothing pending are removed from the group.
    #[serde(default = "default_prune_idle", deserialize_with = "de_duration")]
    pub prune_idle: Duration,
    /// Suffix of the dead-letter stream: `<stream><dlq_suffix>`.
    #[serde(default = "default_dlq_suffix")]
    pub dlq_suffix: String,
    /// For `rediss://`: a PEM file of the CA(s) that signed the server's certificate
    /// (default: the system's roots).
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// For `rediss://` with client certificates (`tls-auth-clients yes`): PEM files.
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    #[serde(default)]
    pub tls_key_file: Option<String>,
}

/// The replica database, and the session settings that bound every wait of redsink's
/// connections (each `0` = off, Postgres' meaning).
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    #[serde(default)]
    pub url: String,
    #[serde(default = "default_pool_size", deserialize_with = "de_u32")]
    pub pool_size: u32,
    /// How often tombstones and truncations that no event can still need are removed
    /// (docs/OPERATIONS.md); zero turns the collection off.
    #[serde(default = "default_gc_every", deserialize_with = "de_duration")]
    pub gc_every: Duration,
    /// A lock wait longer than this fails (SQLSTATE 55P03) and the batch is retried:
    /// another instance's long or stuck transaction cannot hold a batch forever.
    #[serde(default = "default_lock_timeout", deserialize_with = "de_duration")]
    pub lock_timeout: Duration,
    /// Postgres ends a session idle this long inside a transaction, releasing its
    /// locks: an instance that froze mid-transaction (paused, partitioned) holds the
    /// others up only this long. Its batch is retried, never acknowledged.
    #[serde(
        default = "default_idle_in_transaction",
        deserialize_with = "de_duration"
    )]
    pub idle_in_transaction_session_timeout: Duration,
    /// A statement running longer than this is cancelled and its batch retried.
    #[serde(
        default = "default_statement_timeout",
        deserialize_with = "de_duration"
    )]
    pub statement_timeout: Duration,
    /// The server's TCP keepalive idle time and interval (3 probes; also
    /// `tcp_user_timeout` = 4 × this): Postgres notices a vanished instance and ends its
    /// session, even mid-statement.
    #[serde(default = "default_keepalive", deserialize_with = "de_duration")]
    pub keepalive: Duration,
    /// A batch still being written (blocked on a lock, or retried through an outage)
    /// after this is logged as a warning naming its tables, and again every this long;
    /// zero turns the warning off.
    #[serde(default = "default_slow_write_after", deserialize_with = "de_duration")]
    pub slow_write_after: Duration,
}

impl PostgresConfig {
    /// This config with a pool of `n` connections (the one-shot commands need one).
    pub fn with_pool_size(&self, n: u32) -> Self {
        Self {
            pool_size: n,
            ..self.clone()
        }
    }
}

impl Default for PostgresConfig {
    /// The defaults of every key, with no URL.
    fn default() -> Self {
        Self {
            url: String::new(),
            pool_size: default_pool_size(),
            lock_timeout: default_lock_timeout(),
            idle_in_transaction_session_timeout: default_idle_in_transaction(),
            statement_timeout: default_statement_timeout(),
            keepalive: default_keepalive(),
            gc_every: default_gc_every(),
            slow_write_after: default_slow_write_after(),
        }
    }
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Flush when this many entries are buffered.
    #[serde(default = "default_max_batch", deserialize_with = "de_usize")]
    pub max_batch: usize,
    /// Flush at the latest this long after the first buffered entry arrived.
    #[serde(default = "default_max_delay", deserialize_with = "de_duration")]
    pub max_delay: Duration,
    /// How long a batch still waits for more entries once the sync has caught up
    /// (Kafka's `linger.ms`). Zero (the default): written at once, so a trickle has the
    /// latency of one write; more: fewer, larger commits for a slower trickle.
    #[serde(default, deserialize_with = "de_duration")]
    pub linger: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: default_max_batch(),
            max_delay: default_max_delay(),
            linger: Duration::ZERO,
        }
    }
}

/// The HTTP listener for `/metrics`, `/healthz` and `/readyz`.
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` to listen on, e.g. `"0.0.0.0:9187"`; no listener when unset.
    pub address: Option<String>,
}

/// Transaction mode: each source transaction applied whole, in source commit order.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TransactionsConfig {
    /// Debezium's transaction metadata stream, `<topic.prefix>.transaction`.
    #[serde(default)]
    pub stream: String,
    /// How long the oldest transaction waits for events that are not on their way
    /// (none undelivered or pending at or before its END) before it is applied with
    /// what arrived.
    #[serde(default = "default_tx_wait", deserialize_with = "de_duration")]
    pub wait: Duration,
    /// A transaction with more events than this is applied in pieces of this many.
    #[serde(default = "default_tx_max_events", deserialize_with = "de_usize")]
    pub max_events: usize,
    /// The END records' data collections (`schema.table`) whose events redsink reads;
    /// default: those whose Debezium stream name (`<prefix>.<collection>`, with or
    /// without a shard suffix) a mapping covers.
    #[serde(default, deserialize_with = "de_strings")]
    pub collections: Vec<String>,
}

impl TransactionsConfig {
    /// Debezium's topic prefix: the stream's name without `.transaction`.
    pub fn prefix(&self) -> Option<&str> {
        self.stream
            .strip_suffix(".transaction")
            .filter(|p| !p.is_empty())
    }
}

#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DecodeConfig {
    /// Debezium Server's `debezium.sink.redis.null.key`.
    #[serde(default = "default_placeholder")]
    pub null_key: String,
    /// Debezium Server's `debezium.sink.redis.null.value` (tombstones).
    #[serde(default = "default_placeholder")]
    pub null_value: String,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            null_key: default_placeholder(),
            null_value: default_placeholder(),
        }
    }
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// Exact names, `{a..b}` ranges and globs (`*`, `?`, `[...]`).
    #[serde(deserialize_with = "de_strings")]
    pub streams: Vec<String>,
    /// `schema.table`, or a template with `${source.schema}`, `${source.table}`,
    /// `${source.db}` and `${stream}`.
    pub table: String,
    /// Key columns; default: the fields of the Debezium message key.
    #[serde(default)]
    pub key: Option<Vec<String>>,
    /// Where the per-row version comes from.
    #[serde(default)]
    pub version: VersionSource,
    /// Drop event fields that have no column in the table instead of dead-lettering the event.
    #[serde(default)]
    pub ignore_unknown_columns: bool,
    /// What a truncate event (`op: t`) does.
    #[serde(default)]
    pub truncate: TruncateMode,
    /// The source's `decimal.handling.mode`, needed only for events without schemas.
    #[serde(default)]
    pub decimal_handling: DecimalHandling,
    /// Trim the mapped streams: `"off"` (default) or `"acked"` (entries every group has
    /// acknowledged).
    #[serde(default)]
    pub trim: TrimMode,
    /// With trimming, also drop entries older than this even if unacknowledged (a
    /// ceiling; counted in `redsink_trim_dropped_unacked_total`).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub trim_max_age: Option<Duration>,
    /// With trimming, also keep at most this many entries (a ceiling, likewise).
    #[serde(default)]
    pub trim_max_len: Option<u64>,
    /// What a delete does: `"hard"` (default), `"soft"` or `"ignore"`.
    #[serde(default)]
    pub delete: DeleteMode,
    /// With `delete = "soft"`: the column a delete sets (a timestamp from the event's
    /// source time, or `true` for a boolean column); upserts set it back to null.
    #[serde(default)]
    pub soft_delete_column: Option<String>,
    /// Which event fields go to which columns.
    #[serde(default)]
    pub columns: ColumnsConfig,
    /// `"none"` (default) or `"basic"`: create a missing table and add missing columns
    /// from the event's schema (events with schemas only).
    #[serde(default)]
    pub schema_evolution: SchemaEvolution,
}

/// Whether redsink changes the target tables' structure.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SchemaEvolution {
    #[default]
    None,
    /// Like the JDBC sink's `basic`: create missing tables, add missing columns; never
    /// drop or alter anything.
    Basic,
}

/// The kind of Redis deployment.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server (or a replica set addressed through one master URL).
    #[default]
    Standalone,
    /// A Redis Cluster: streams live on different nodes.
    Cluster,
    /// A master found by name through Redis Sentinel, followed across failovers.
    Sentinel,
}

/// What a delete event does to the row.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DeleteMode {
    /// Delete the row and keep a tombstone, so older events cannot bring it back.
    #[default]
    Hard,
    /// Keep the row, set `soft_delete_column`.
    Soft,
    /// Acknowledge and do nothing.
    Ignore,
}

/// Column mapping of a mapping: event fields to columns.
#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ColumnsConfig {
    /// Only these event fields are written (default: all).
    #[serde(default)]
    pub include: Option<Vec<String>>,
    /// These event fields are never written.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Event field → column name.
    #[serde(default)]
    pub rename: std::collections::BTreeMap<String, String>,
    /// Column → a constant (as Postgres text), written by every upsert.
    #[serde(default)]
    pub fixed: std::collections::BTreeMap<String, String>,
    /// Column → an event attribute, written by every upsert: `source.ts_ms`,
    /// `source.lsn`, `source.db`, `source.schema`, `source.table`, `op`, `entry_id`.
    #[serde(default)]
    pub from_event: std::collections::BTreeMap<String, String>,
}

/// What trimming a mapping's streams may remove.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TrimMode {
    #[default]
    Off,
    /// Entries that every consumer group on the stream has read and acknowledged.
    Acked,
}

/// Debezium's `decimal.handling.mode`: how decimals were encoded.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DecimalHandling {
    /// Base64 of the unscaled value (the default at the source).
    #[default]
    Precise,
    /// Decimal strings such as `"12.34"`.
    String,
    /// JSON numbers.
    Double,
}

#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TruncateMode {
    /// Delete every row older than the truncate, and keep older events from coming back.
    #[default]
    Apply,
    /// Acknowledge truncate events without touching the table.
    Skip,
}

#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VersionSource {
    /// `source.lsn` for the PostgreSQL connector, the stream entry ID otherwise.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// Debezium PostgreSQL `source.lsn`.
    #[serde(rename = "source.lsn")]
    SourceLsn,
    /// The Redis stream entry ID (only correct when one stream carries all changes of a row, in order).
    #[serde(rename = "entry_id")]
    EntryId,
    /// Debezium PostgreSQL `source.sequence`: (last commit LSN, LSN).
    #[serde(rename = "source.sequence")]
    SourceSequence,
    /// MySQL/MariaDB binlog coordinates: (file number, `pos`, `row`), within one server.
    #[serde(rename = "mysql.binlog")]
    MysqlBinlog,
    /// SQL Server: (`commit_lsn`, `change_lsn`, `event_serial_no`).
    #[serde(rename = "sqlserver.lsn")]
    SqlServerLsn,
    /// Oracle: (`commit_scn` or `scn`, `scn`).
    #[serde(rename = "oracle.scn")]
    OracleScn,
    /// MongoDB: (`ts_ms`, `ord`): the oplog timestamp and the order within its second.
    #[serde(rename = "mongodb.ord")]
    MongodbOrd,
}

impl Config {
    /// The consumer name in effect (set by `from_toml` when not configured).
    pub fn consumer(&self) -> &str {
        self.redis.consumer.as_deref().unwrap_or("redsink")
    }
}

/// Whether a Redis URL asks for TLS: `rediss://` (or `valkeys://`), in any case.
pub fn is_tls_url(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
}

/// What `redsink replay` records its checkpoints and dead letters under:
/// `<group>:replay` (not a consumer group: a replay reads outside the group).
pub const REPLAY_SUFFIX: &str = ":replay";

impl RedisConfig {
    /// How recently a live instance has surely used its consumer: it reads every
    /// `block`; three of them leave room for a slow round of chores.
    pub fn live_within(&self) -> Duration {
        self.block.saturating_mul(3)
    }

    /// The shortest idle time `consumers prune` removes a consumer after: a live
    /// instance's loop can also wait up to 5 s on a Postgres probe between two reads,
    /// and pruning a live instance's consumer hides it from `status` and from the
    /// same-name check at start.
    pub fn prune_floor(&self) -> Duration {
        self.live_within().saturating_add(Duration::from_secs(5))
    }

    /// The name a replay records its checkpoints and dead letters under.
    pub fn replay_group(&self) -> String {
        format!("{}{REPLAY_SUFFIX}", self.group)
    }

    /// The dead-letter stream of `stream`: `<stream><dlq_suffix>`.
    pub fn dlq_stream(&self, stream: &str) -> String {
        format!("{stream}{}", self.dlq_suffix)
    }

    /// Whether `name` is a dead-letter stream (ends with `dlq_suffix`).
    pub fn is_dlq(&self, name: &str) -> bool {
        name.ends_with(&self.dlq_suffix)
    }
}
