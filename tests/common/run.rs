//! Running redsink: a test config, the pipeline in the test's runtime until the group
//! has drained the streams, or the binary with a command.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use redsink::config::Config;
use redsink::pipeline::{self, PipelineError, Stats};

use super::{TestDb, connect, drained, redis_url, unique};

/// A config for one test: its database, group and mappings (TOML `[[mapping]]` blocks).
pub fn config(db: &TestDb, consumer: &str, extra: &str) -> Config {
    let text = config_text(db, consumer, extra);
    Config::from_toml(&text, "test config", std::iter::empty()).expect("test config is valid")
}

/// The TOML text of [`config`].
pub fn config_text(db: &TestDb, consumer: &str, extra: &str) -> String {
    format!(
        r#"
[redis]
url = "{redis}"
group = "redsink"
consumer = "{consumer}"
block = "200ms"
[postgres]
url = "{pg}"
[batch]
max_batch = 500
max_delay = "20ms"
{extra}
"#,
        redis = redis_url(),
        pg = db.url,
    )
}

/// Runs the `redsink` binary with `args` and `config` (TOML text, written to a temporary
/// file passed as `--config`): (exit code, stdout, stderr).
pub fn redsink_cli(config: &str, args: &[&str]) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(unique("redsink-cli"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("redsink.toml");
    std::fs::write(&path, config).expect("write config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_redsink"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .env("REDSINK_LOG", "warn")
        .output()
        .expect("run redsink");
    std::fs::remove_dir_all(&dir).ok();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// [`redsink_cli`] on a terminal: run under `script` (util-linux), so stdout and stderr
/// are a pseudo-terminal; (exit code, everything it printed, `\r\n` line ends).
pub fn redsink_cli_on_terminal(config: &str, args: &[&str]) -> (i32, String) {
    let dir = std::env::temp_dir().join(unique("redsink-cli"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("redsink.toml");
    std::fs::write(&path, config).expect("write config");
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let command = std::iter::once(env!("CARGO_BIN_EXE_redsink"))
        .chain(args.iter().copied())
        .chain(["--config", path.to_str().expect("a UTF-8 temp path")])
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ");
    let output = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .env("REDSINK_LOG", "warn")
        .output()
        .expect("run redsink under script (util-linux)");
    std::fs::remove_dir_all(&dir).ok();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// A running pipeline; `stop` cancels it and returns how it ended.
pub struct Running {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<Result<Stats, PipelineError>>,
}

impl Running {
    pub fn start(config: Config) -> Self {
        let token = CancellationToken::new();
        let handle = tokio::spawn(pipeline::run(config, token.clone()));
        Self { token, handle }
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    pub async fn stop(self) -> Result<Stats, PipelineError> {
        self.token.cancel();
        self.handle.await.expect("pipeline task panicked")
    }
}

impl Running {
    /// Waits until `group` has read and acknowledged everything on `streams`; panics
    /// with the pipeline's error if it ends first, or after 120 s.
    pub async fn until_drained(self, streams: &[String], group: &str) -> Self {
        self.until_drained_at(&redis_url(), streams, group).await
    }

    /// [`Running::until_drained`] on the Redis at `url`.
    pub async fn until_drained_at(self, url: &str, streams: &[String], group: &str) -> Self {
        let mut conn = connect(url).await;
        let start = Instant::now();
        while !drained(&mut conn, streams, group).await {
            if self.is_finished() {
                panic!("pipeline ended early: {:?}", self.stop().await);
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "not drained after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self
    }
}

/// Runs a pipeline until `streams` are drained, then stops it.
pub async fn sync(config: Config, streams: &[String]) -> Stats {
    sync_at(&redis_url(), config, streams).await
}

/// [`sync`] with the Redis at `url` (a plain URL the test can reach) to watch.
pub async fn sync_at(url: &str, config: Config, streams: &[String]) -> Stats {
    Running::start(config)
        .until_drained_at(url, streams, "redsink")
        .await
        .stop()
        .await
        .expect("pipeline stops cleanly")
}

/// The `redsink` binary running a command in the background, its stderr (the log) read
/// line by line; killed on drop.
pub struct Spawned {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line read so far (for failure messages).
    pub seen: Vec<String>,
    dir: std::path::PathBuf,
}

impl Spawned {
    /// Starts `redsink <args> --config <config>` with `REDSINK_LOG=<log>`.
    pub fn start(config: &str, args: &[&str], log: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("redsink-spawned"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("redsink.toml");
        std::fs::write(&path, config).expect("write config");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_redsink"))
            .args(args)
            .arg("--config")
            .arg(&path)
            .env("REDSINK_LOG", log)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start redsink");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            dir,
        }
    }

    /// The first line from now on that satisfies `pred`, or `None` after `timeout` (or
    /// when the process ended).
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if pred(&line) {
                return Some(line);
            }
        }
    }

    /// Sends `signal` (`"STOP"`, `"CONT"`, `"TERM"`…) to the process.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Everything read so far, one line each.
    pub fn log(&self) -> String {
        self.seen.join("\n")
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
