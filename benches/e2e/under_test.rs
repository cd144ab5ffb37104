//! The redsink side of the benchmark: the release binary run until drained, with its
//! peak RSS, CPU time and round-trip counters.

use super::*;

/// Peak RSS (MiB) and CPU seconds of a running process, from /proc.
pub(crate) fn proc_usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime and stime are 14th and
    // 15th overall, i.e. 12th and 13th after it. Clock ticks are 100 per second on Linux.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (hwm_kb / 1024.0, (ticks(11) + ticks(12)) / 100.0)
}

pub(crate) struct RunResult {
    pub(crate) seconds: f64,
    pub(crate) rss_mib: f64,
    pub(crate) cpu_s: f64,
    /// From redsink's final stats line: (batches, postgres statements, redis commands).
    pub(crate) trips: (u64, u64, u64),
}

impl RunResult {
    /// Postgres round trips per committed batch.
    pub(crate) fn pg_per_batch(&self) -> f64 {
        self.trips.1 as f64 / self.trips.0.max(1) as f64
    }

    /// Redis round trips per committed batch.
    pub(crate) fn redis_per_batch(&self) -> f64 {
        self.trips.2 as f64 / self.trips.0.max(1) as f64
    }

    /// The last cells of a throughput row: batches, Postgres and Redis round trips
    /// per batch, peak RSS MiB, CPU s.
    pub(crate) fn cells(&self) -> String {
        format!(
            "{} | {:.2} | {:.2} | {:.0} | {:.1}",
            self.trips.0,
            self.pg_per_batch(),
            self.redis_per_batch(),
            self.rss_mib,
            self.cpu_s
        )
    }
}

/// `name: N` from redsink's `Stats { … }` debug output.
pub(crate) fn stat(line: &str, name: &str) -> u64 {
    let key = format!("{name}: ");
    line.find(&key)
        .and_then(|i| {
            line[i + key.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// The `[[mapping]]` of the orders workloads: every shard stream of `prefix` into
/// `public.orders`.
pub(crate) fn orders_mapping(prefix: &str) -> String {
    format!("[[mapping]]\nstreams = [\"{prefix}:*\"]\ntable = \"public.orders\"\n")
}

/// A condition on Postgres (a query returning one boolean) that must hold, besides the
/// streams being drained, before a run counts as finished: in transaction mode an entry
/// is acknowledged once staged, before its transaction is applied.
pub(crate) struct Probe<'a> {
    pub(crate) pool: &'a PgPool,
    pub(crate) sql: String,
}

impl Probe<'_> {
    async fn holds(&self) -> Res<bool> {
        Ok(
            sqlx::query_scalar::<_, bool>(sqlx::AssertSqlSafe(self.sql.as_str()))
                .fetch_one(self.pool)
                .await?,
        )
    }
}

/// The redsink binary, running with a config for the bench streams.
pub(crate) struct Redsink {
    pub(crate) child: std::process::Child,
    pub(crate) dir: PathBuf,
    pub(crate) started: Instant,
    pub(crate) usage: (f64, f64),
}

impl Redsink {
    /// redsink with its default config (no `[batch]` keys) unless `max_batch` is given,
    /// reading the orders shard streams of `prefix`.
    pub(crate) fn start(prefix: &str, max_batch: Option<usize>) -> Res<Self> {
        Self::start_with(&orders_mapping(prefix), max_batch)
    }

    /// redsink with `body` (its `[[mapping]]`s, and any other section) after the
    /// `[redis]` and `[postgres]` sections; no `[batch]` keys unless `max_batch` is given.
    pub(crate) fn start_with(body: &str, max_batch: Option<usize>) -> Res<Self> {
        let dir = std::env::temp_dir().join(format!("redsink-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let config: PathBuf = dir.join("bench.toml");
        std::fs::write(
            &config,
            format!(
                "[redis]\nurl = \"{}\"\nconsumer = \"bench\"\n[postgres]\nurl = \"{}\"\n{}{body}",
                redis_url(),
                pg_url("redsink_bench"),
                max_batch.map_or(String::new(), |b| format!("[batch]\nmax_batch = {b}\n")),
            ),
        )?;
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_redsink"))
            .args(["run", "--config"])
            .arg(&config)
            .env("REDSINK_LOG", "warn,redsink::pipeline=info")
            .stderr(std::fs::File::create(dir.join("redsink.log"))?)
            .spawn()?;
        Ok(Self {
            child,
            dir,
            started: Instant::now(),
            usage: (0.0, 0.0),
        })
    }

    /// Waits until redsink reads `stream` (its consumer shows in the group: it has sent
    /// an `XREADGROUP`), so a latency run measures the sync, not its start-up.
    pub(crate) async fn ready(
        &mut self,
        redis: &mut MultiplexedConnection,
        stream: &str,
    ) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("redsink exited early: {status}").into());
            }
            let consumers: Vec<HashMap<String, redis::Value>> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(stream)
                .arg("redsink")
                .query_async(redis)
                .await
                .unwrap_or_default();
            if consumers.iter().any(|c| {
                matches!(c.get("name"), Some(redis::Value::BulkString(n)) if n.as_slice() == b"bench")
            }) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!("redsink did not start reading {stream} within 30 s").into())
    }

    /// Waits until `streams` are drained; returns seconds since start, then stops it.
    pub(crate) async fn finish(
        self,
        redis: &mut MultiplexedConnection,
        streams: &[String],
    ) -> Res<RunResult> {
        self.finish_when(redis, streams, None).await
    }

    /// Waits until `probe` holds (when given) and `streams` are drained; returns seconds
    /// since start, then stops redsink. Polls every 10 ms (100 ms over many streams, where
    /// one poll is a pipeline of an `XINFO GROUPS` per stream).
    pub(crate) async fn finish_when(
        mut self,
        redis: &mut MultiplexedConnection,
        streams: &[String],
        probe: Option<Probe<'_>>,
    ) -> Res<RunResult> {
        let every = Duration::from_millis(if streams.len() > 64 { 100 } else { 10 });
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.join("redsink.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!("redsink exited early: {status}; log ends: {tail:?}").into());
            }
            self.usage = proc_usage(self.child.id());
            let probed = match &probe {
                Some(p) => p.holds().await?,
                None => true,
            };
            if probed && drained(redis, streams, "redsink").await? {
                break;
            }
            tokio::time::sleep(every).await;
        }
        let seconds = self.started.elapsed().as_secs_f64();
        let last = proc_usage(self.child.id());
        if last.0 > 0.0 {
            self.usage = last;
        }
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait()?;
        let log = std::fs::read_to_string(self.dir.join("redsink.log")).unwrap_or_default();
        let stopped = log.lines().rfind(|l| l.contains("stopped")).unwrap_or("");
        let trips = (
            stat(stopped, "batches"),
            stat(stopped, "pg_round_trips"),
            stat(stopped, "redis_round_trips"),
        );
        std::fs::remove_dir_all(&self.dir).ok();
        Ok(RunResult {
            seconds,
            rss_mib: self.usage.0,
            cpu_s: self.usage.1,
            trips,
        })
    }
}

/// Row versions Postgres has written to `tables` (inserted, updated or deleted tuples,
/// from `pg_stat_user_tables`). A backend reports its counts when it goes idle (at most
/// once a second) or exits, so this waits until the sum has stopped changing for
/// 1.5 s (at most 10 s).
pub(crate) async fn row_versions(pool: &PgPool, tables: &[&str]) -> Res<i64> {
    let sql = "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::int8
               FROM pg_stat_user_tables WHERE relid = ANY($1::regclass[])";
    let read = || async {
        sqlx::query_scalar::<_, i64>(sql)
            .bind(tables)
            .fetch_one(pool)
            .await
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = read().await?;
    let mut since = Instant::now();
    while Instant::now() < deadline && since.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = read().await?;
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    Ok(last)
}
