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

mod pattern;

pub use pattern::StreamPattern;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Sections whose scalar keys can be overridden by `REDSINK_<SECTION>_<KEY>`.
const ENV_SECTIONS: [&str; 5] = ["redis", "postgres", "batch", "decode", "http"];

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
    #[serde(rename = "mapping", default)]
    pub mappings: Vec<MappingConfig>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Standalone: the server. Cluster: a seed node (more in `nodes`). Sentinel: the user,
    /// password, database and scheme (`rediss://` for TLS) for the master; its address
    /// comes from the sentinels.
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

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    #[serde(default)]
    pub url: String,
    #[serde(default = "default_pool_size", deserialize_with = "de_u32")]
    pub pool_size: u32,
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
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: default_max_batch(),
            max_delay: default_max_delay(),
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

fn default_group() -> String {
    "redsink".into()
}
fn default_start() -> String {
    "0".into()
}
fn default_block() -> Duration {
    Duration::from_secs(1)
}
fn default_max_deliveries() -> u64 {
    10
}
fn default_prune_idle() -> Duration {
    Duration::from_secs(3600)
}
fn default_claim_idle() -> Duration {
    Duration::from_secs(30)
}
fn default_dlq_suffix() -> String {
    ":dlq".into()
}
fn default_pool_size() -> u32 {
    4
}
fn default_max_batch() -> usize {
    1024
}
fn default_max_delay() -> Duration {
    Duration::from_millis(50)
}
fn default_placeholder() -> String {
    "default".into()
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write for example \"50ms\" or \"2s\""
        ))
    })
}

/// A list of strings from TOML, or one comma-separated string from the environment.
fn de_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrText {
        List(Vec<String>),
        Text(String),
    }
    Ok(match ListOrText::deserialize(d)? {
        ListOrText::List(items) => items,
        ListOrText::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// Numbers may come from TOML (an integer) or from the environment (a string).
#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Text(String),
}

fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumOrText::deserialize(d)? {
        NumOrText::Num(n) => Ok(n),
        NumOrText::Text(t) => t
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("`{t}` is not a whole number"))),
    }
}
fn de_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    usize::try_from(de_u64(d)?).map_err(serde::de::Error::custom)
}
fn de_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    u32::try_from(de_u64(d)?).map_err(serde::de::Error::custom)
}

impl Config {
    /// Reads the file, applies the environment and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string(), std::env::vars())
    }

    /// Parses `text`, applies overrides from `env` and validates.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        apply_env(&mut doc, env);
        read_url_files(&mut doc)?;
        let mut config: Config =
            Config::deserialize(toml::Value::Table(doc)).map_err(|e| ConfigError::Parse {
                path: origin.to_string(),
                message: e.to_string(),
            })?;
        if config.redis.consumer.is_none() {
            config.redis.consumer = Some(default_consumer());
        }
        // An empty value (from the environment) unsets a TLS file.
        for file in [
            &mut config.redis.tls_ca_file,
            &mut config.redis.tls_cert_file,
            &mut config.redis.tls_key_file,
        ] {
            if file.as_deref().is_some_and(|f| f.trim().is_empty()) {
                *file = None;
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// The keys of `redis.mode` go together; TLS files need a `rediss://` URL.
    fn validate_mode(&self) -> Result<(), ConfigError> {
        let r = &self.redis;
        match (r.mode, &r.master_name) {
            (RedisMode::Sentinel, None) => {
                return Err(invalid(
                    "redis.master_name",
                    "is required with mode = \"sentinel\": the name the sentinels monitor (`sentinel monitor <name> …`)",
                ));
            }
            (RedisMode::Sentinel, Some(_)) if r.nodes.is_empty() => {
                return Err(invalid(
                    "redis.nodes",
                    "is required with mode = \"sentinel\": the sentinels' URLs, e.g. [\"redis://sentinel-1:26379\"]",
                ));
            }
            (RedisMode::Standalone | RedisMode::Cluster, Some(_)) => {
                return Err(invalid(
                    "redis.master_name",
                    "is only used with mode = \"sentinel\"",
                ));
            }
            _ => {}
        }
        if r.master_name
            .as_deref()
            .is_some_and(|m| m.trim().is_empty())
        {
            return Err(invalid("redis.master_name", "must not be empty"));
        }
        let tls = |u: &String| is_tls_url(u);
        if r.nodes.iter().any(tls) && !r.nodes.iter().all(tls) {
            return Err(invalid(
                "redis.nodes",
                "mixes redis:// and rediss:// URLs: use one scheme for all of them",
            ));
        }
        if r.mode == RedisMode::Cluster && !r.nodes.is_empty() && tls(&r.url) != tls(&r.nodes[0]) {
            return Err(invalid(
                "redis.nodes",
                "use the same scheme as redis.url (redis:// or rediss://) for every seed node",
            ));
        }
        let any_tls = tls(&r.url) || r.nodes.iter().any(tls);
        let set = [
            ("redis.tls_ca_file", &r.tls_ca_file),
            ("redis.tls_cert_file", &r.tls_cert_file),
            ("redis.tls_key_file", &r.tls_key_file),
        ]
        .into_iter()
        .find(|(_, v)| v.is_some());
        if let (false, Some((key, _))) = (any_tls, set) {
            return Err(invalid(
                key,
                "is set but no URL uses rediss://: TLS files apply to rediss:// URLs only \
                 (unset it, e.g. with an empty REDSINK_REDIS_TLS_CA_FILE, or use rediss://)",
            ));
        }
        if r.mode == RedisMode::Standalone && !r.nodes.is_empty() {
            return Err(invalid(
                "redis.nodes",
                "is only used with mode = \"cluster\" (seed nodes) or \"sentinel\" (the sentinels)",
            ));
        }
        Ok(())
    }

    /// Checks what serde cannot: ranges, templates, non-empty names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.redis.url.trim().is_empty() {
            return Err(invalid("redis.url", "must not be empty"));
        }
        if self.postgres.url.trim().is_empty() {
            return Err(invalid(
                "postgres.url",
                "is not set: set it in the file, in REDSINK_POSTGRES_URL or in DATABASE_URL",
            ));
        }
        self.validate_mode()?;
        if self.redis.group.trim().is_empty() {
            return Err(invalid("redis.group", "must not be empty"));
        }
        if let Some(c) = &self.redis.consumer
            && c.trim().is_empty()
        {
            return Err(invalid("redis.consumer", "must not be empty"));
        }
        let start = self.redis.start.as_str();
        if start != "$" && crate::entry::EntryId::parse(start).is_none() {
            return Err(invalid(
                "redis.start",
                format!("`{start}` is neither \"0\", \"$\" nor an entry ID like 1700000000000-0"),
            ));
        }
        if self.redis.block.is_zero() {
            return Err(invalid(
                "redis.block",
                "must be above zero (0 would block forever)",
            ));
        }
        if self.redis.dlq_suffix.is_empty() {
            return Err(invalid(
                "redis.dlq_suffix",
                "must not be empty: the DLQ would be the stream itself",
            ));
        }
        if self.postgres.pool_size == 0 {
            return Err(invalid("postgres.pool_size", "must be at least 1"));
        }
        if !(1..=100_000).contains(&self.batch.max_batch) {
            return Err(invalid("batch.max_batch", "must be between 1 and 100000"));
        }
        if self.batch.max_delay.is_zero() {
            return Err(invalid("batch.max_delay", "must be above zero"));
        }
        if self.mappings.is_empty() {
            return Err(invalid(
                "mapping",
                "no [[mapping]] is configured: add one with `streams` and `table`",
            ));
        }
        for (i, m) in self.mappings.iter().enumerate() {
            if m.streams.is_empty() {
                return Err(invalid(
                    format!("mapping[{i}].streams"),
                    "must not be empty",
                ));
            }
            for (j, s) in m.streams.iter().enumerate() {
                StreamPattern::parse(s)
                    .map_err(|msg| invalid(format!("mapping[{i}].streams[{j}]"), msg))?;
            }
            crate::table::TableTemplate::parse(&m.table)
                .map_err(|msg| invalid(format!("mapping[{i}].table"), msg))?;
            if let Some(key) = &m.key
                && (key.is_empty() || key.iter().any(|k| k.is_empty()))
            {
                return Err(invalid(
                    format!("mapping[{i}].key"),
                    "must list at least one non-empty column name",
                ));
            }
        }
        Ok(())
    }

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

impl RedisConfig {
    /// The dead-letter stream of `stream`: `<stream><dlq_suffix>`.
    pub fn dlq_stream(&self, stream: &str) -> String {
        format!("{stream}{}", self.dlq_suffix)
    }

    /// Whether `name` is a dead-letter stream (ends with `dlq_suffix`).
    pub fn is_dlq(&self, name: &str) -> bool {
        name.ends_with(&self.dlq_suffix)
    }
}

/// `url_file` in `[redis]` or `[postgres]` (or `REDSINK_REDIS_URL_FILE`, …): the URL, with
/// its secrets, is read from that file (a mounted secret), trimmed.
fn read_url_files(doc: &mut toml::Table) -> Result<(), ConfigError> {
    for section in ["redis", "postgres"] {
        let Some(toml::Value::Table(t)) = doc.get_mut(section) else {
            continue;
        };
        let Some(path) = t.remove("url_file") else {
            continue;
        };
        let key = format!("{section}.url_file");
        let toml::Value::String(path) = path else {
            return Err(invalid(key, "must be a file path"));
        };
        if t.contains_key("url") {
            return Err(invalid(
                key,
                format!("set {section}.url or {section}.url_file, not both"),
            ));
        }
        let url = std::fs::read_to_string(&path)
            .map_err(|e| invalid(&key, format!("cannot read {path}: {e}")))?;
        t.insert("url".into(), toml::Value::String(url.trim().to_string()));
    }
    Ok(())
}

fn apply_env(doc: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) {
    let mut database_url = None;
    for (name, value) in env {
        if name == "DATABASE_URL" {
            database_url = Some(value);
            continue;
        }
        let Some(rest) = name.strip_prefix("REDSINK_") else {
            continue;
        };
        let lower = rest.to_ascii_lowercase();
        let Some((section, key)) = lower.split_once('_') else {
            continue;
        };
        if !ENV_SECTIONS.contains(&section) || key.is_empty() {
            continue;
        }
        let table = doc
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = table {
            // The environment wins over the file: a URL from one replaces a URL file
            // from the other, and the other way round.
            match key {
                "url" => {
                    t.remove("url_file");
                }
                "url_file" => {
                    t.remove("url");
                }
                _ => {}
            }
            t.insert(key.to_string(), toml::Value::String(value));
        }
    }
    if let Some(url) = database_url {
        let pg = doc
            .entry("postgres".to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = pg
            && !t.contains_key("url_file")
        {
            t.entry("url".to_string())
                .or_insert(toml::Value::String(url));
        }
    }
}

/// `<hostname>-<pid>`: unique per process, stable for its life.
pub fn default_consumer() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "redsink".to_string());
    format!("{host}-{}", std::process::id())
}

/// Replaces the password of a URL with `***` for logs and `Debug`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None if scheme.starts_with("redis") && !userinfo.is_empty() => {
            // redis://:password@host and redis://password@host both carry a secret.
            format!("{scheme}://***@{host}")
        }
        None => url.to_string(),
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("mode", &self.mode)
            .field(
                "nodes",
                &self.nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>(),
            )
            .field("master_name", &self.master_name)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("start", &self.start)
            .field("block", &self.block)
            .field("claim_idle", &self.claim_idle)
            .field("prune_idle", &self.prune_idle)
            .field("max_deliveries", &self.max_deliveries)
            .field("dlq_suffix", &self.dlq_suffix)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .finish()
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("redis", &self.redis)
            .field("postgres", &self.postgres)
            .field("batch", &self.batch)
            .field("decode", &self.decode)
            .field("http", &self.http)
            .field("mappings", &self.mappings)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_come_from_files_and_never_show_their_password() {
        let dir = std::env::temp_dir().join(format!("redsink-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let secret = dir.join("pg_url");
        std::fs::write(&secret, "postgres://app:s3cret@db:5432/replica\n").ok();
        let text = format!(
            "[redis]\nurl = \"redis://r\"\n[postgres]\nurl_file = \"{}\"\n[[mapping]]\nstreams = [\"s\"]\ntable = \"public.t\"\n",
            secret.display()
        );
        let config = Config::from_toml(&text, "test", std::iter::empty());
        let config = config.map_err(|e| e.to_string());
        assert_eq!(
            config.as_ref().map(|c| c.postgres.url.as_str()),
            Ok("postgres://app:s3cret@db:5432/replica")
        );
        let shown = format!("{:?}", config.as_ref().ok());
        assert!(!shown.contains("s3cret"), "{shown}");
        let both = text.replace("[postgres]\n", "[postgres]\nurl = \"postgres://x\"\n");
        let err = Config::from_toml(&both, "test", std::iter::empty())
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("not both")));
        let env = [(
            "REDSINK_POSTGRES_URL_FILE".to_string(),
            secret.display().to_string(),
        )];
        let from_env = text.replace(&format!("url_file = \"{}\"\n", secret.display()), "");
        let config = Config::from_toml(&from_env, "test", env).map_err(|e| e.to_string());
        assert_eq!(
            config.map(|c| c.postgres.url),
            Ok("postgres://app:s3cret@db:5432/replica".to_string())
        );
        // A URL file from the environment replaces the file's URL.
        let with_url = text.replace(
            &format!("url_file = \"{}\"\n", secret.display()),
            "url = \"postgres://baked@x/y\"\n",
        );
        let env = [(
            "REDSINK_POSTGRES_URL_FILE".to_string(),
            secret.display().to_string(),
        )];
        let config = Config::from_toml(&with_url, "test", env).map_err(|e| e.to_string());
        assert_eq!(
            config.map(|c| c.postgres.url),
            Ok("postgres://app:s3cret@db:5432/replica".to_string())
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    const BASE: &str = r#"
[redis]
url = "redis://127.0.0.1:6379"
[postgres]
url = "postgres://postgres:secret@127.0.0.1:5432/replica"
[[mapping]]
streams = ["shop.public.orders:{0..7}"]
table = "public.orders"
"#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_apply() {
        let c = load(BASE, &[]).expect("valid");
        assert_eq!(c.redis.group, "redsink");
        assert_eq!(c.redis.start, "0");
        assert_eq!(c.batch.max_batch, 1024);
        assert_eq!(c.decode.null_value, "default");
        assert!(c.consumer().contains('-'));
        assert_eq!(c.mappings[0].version, VersionSource::Auto);
    }

    #[test]
    fn env_overrides_keys() {
        let c = load(
            BASE,
            &[
                ("REDSINK_REDIS_URL", "redis://other:6380"),
                ("REDSINK_BATCH_MAX_BATCH", "10"),
                ("REDSINK_BATCH_MAX_DELAY", "5ms"),
                ("REDSINK_TEST_IGNORED", "x"),
                ("DATABASE_URL", "postgres://ignored"),
            ],
        )
        .expect("valid");
        assert_eq!(c.redis.url, "redis://other:6380");
        assert_eq!(c.batch.max_batch, 10);
        assert_eq!(c.batch.max_delay, Duration::from_millis(5));
        assert!(
            c.postgres.url.contains("replica"),
            "file wins over DATABASE_URL"
        );
    }

    #[test]
    fn database_url_is_a_fallback() {
        let text = BASE.replace(
            "url = \"postgres://postgres:secret@127.0.0.1:5432/replica\"",
            "",
        );
        let c = load(&text, &[("DATABASE_URL", "postgres://x@h/db")]).expect("valid");
        assert_eq!(c.postgres.url, "postgres://x@h/db");
        let c = load(
            &text,
            &[
                ("DATABASE_URL", "postgres://x@h/db"),
                ("REDSINK_POSTGRES_URL", "postgres://y@h/db"),
            ],
        )
        .expect("valid");
        assert_eq!(c.postgres.url, "postgres://y@h/db");
        let err = load(&text, &[]).expect_err("no url");
        assert!(err.to_string().contains("postgres.url"), "{err}");
    }

    #[test]
    fn bad_config_names_the_key() {
        let cases = [
            (BASE.replace("{0..7}", "{7..0}"), "mapping[0].streams[0]"),
            (
                BASE.replace("public.orders\"", "${source.nope}\""),
                "mapping[0].table",
            ),
            (
                format!("{BASE}\n[batch]\nmax_batch = 0\n"),
                "batch.max_batch",
            ),
            (
                format!("{BASE}\n[batch]\nmax_delay = \"soon\"\n"),
                "max_delay",
            ),
            (
                BASE.replace("[redis]", "[redis]\nstart = \"x\""),
                "redis.start",
            ),
            (BASE.replace("[redis]", "[redis]\ncolour = 1"), "colour"),
        ];
        for (text, key) in cases {
            let err = load(&text, &[]).expect_err(key).to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn redis_modes_need_their_keys() {
        let sentinel = BASE.replace(
            "[redis]",
            "[redis]\nmode = \"sentinel\"\nmaster_name = \"mymaster\"\nnodes = [\"redis://s1:26379\"]",
        );
        let c = load(&sentinel, &[]).expect("valid sentinel config");
        assert_eq!(c.redis.mode, RedisMode::Sentinel);
        let c = load(
            &BASE.replace("[redis]", "[redis]\nmode = \"cluster\""),
            &[("REDSINK_REDIS_NODES", "redis://b:6379, redis://c:6379")],
        )
        .expect("valid cluster config");
        assert_eq!(c.redis.nodes, ["redis://b:6379", "redis://c:6379"]);
        // TLS files with a TLS URL in any spelling; an empty one from the environment unsets.
        let tls = BASE.replace(
            "[redis]\nurl = \"redis://127.0.0.1:6379\"",
            "[redis]\nurl = \"REDISS://127.0.0.1:6379\"\ntls_ca_file = \"/ca.pem\"",
        );
        assert!(load(&tls, &[]).is_ok());
        let c = load(
            &tls,
            &[
                ("REDSINK_REDIS_URL", "redis://127.0.0.1:6379"),
                ("REDSINK_REDIS_TLS_CA_FILE", ""),
            ],
        )
        .expect("TLS switched off from the environment");
        assert!(c.redis.tls_ca_file.is_none());
        // `[redis]` lines that are wrong together, and the key the error names.
        let cases = [
            (
                "mode = \"sentinel\"\nnodes = [\"redis://s\"]",
                "redis.master_name",
            ),
            ("mode = \"sentinel\"\nmaster_name = \"m\"", "redis.nodes"),
            ("master_name = \"m\"", "redis.master_name"),
            ("nodes = [\"redis://b\"]", "redis.nodes"),
            ("mode = \"replicated\"", "replicated"),
            (
                "mode = \"cluster\"\nnodes = [\"rediss://b\", \"redis://c\"]",
                "redis.nodes",
            ),
            ("tls_ca_file = \"/ca.pem\"", "redis.tls_ca_file"),
            ("tls_cert_file = \"/c.pem\"", "redis.tls_cert_file"),
        ];
        for (lines, key) in cases {
            let text = BASE.replace("[redis]", &format!("[redis]\n{lines}"));
            let err = load(&text, &[]).expect_err(key).to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let c = load(BASE, &[]).expect("valid");
        let debug = format!("{c:?}");
        assert!(!debug.contains("secret"), "{debug}");
        assert_eq!(redact_url("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("redis://pw@h:1"), "redis://***@h:1");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
