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

/// The redsink binary, running with a config for the bench streams.
pub(crate) struct Redsink {
    pub(crate) child: std::process::Child,
    pub(crate) dir: PathBuf,
    pub(crate) started: Instant,
    pub(crate) usage: (f64, f64),
}

impl Redsink {
    /// redsink with its default config (no `[batch]` keys) unless `max_batch` is given.
    pub(crate) fn start(prefix: &str, max_batch: Option<usize>) -> Res<Self> {
        let dir = std::env::temp_dir().join(format!("redsink-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let config: PathBuf = dir.join("bench.toml");
        std::fs::write(
            &config,
            format!(
                "[redis]\nurl = \"{}\"\nconsumer = \"bench\"\n[postgres]\nurl = \"{}\"\n{}\
                 [[mapping]]\nstreams = [\"{prefix}:*\"]\ntable = \"public.orders\"\n",
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

    /// Waits until `streams` are drained; returns seconds since start, then stops it.
    pub(crate) async fn finish(
        mut self,
        redis: &mut MultiplexedConnection,
        streams: &[String],
    ) -> Res<RunResult> {
        while !drained(redis, streams, "redsink").await? {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("redsink exited early: {status}").into());
            }
            self.usage = proc_usage(self.child.id());
            tokio::time::sleep(Duration::from_millis(10)).await;
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
