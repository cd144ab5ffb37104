//! `redsink produce`: feed Debezium events into Redis.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, bail};
use redsink::demo::produce::{Entry, Orders, shard_stream, xadd_all};
use redsink::redis::Routed;

#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    /// Redis to write to.
    #[arg(
        long,
        env = "REDSINK_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// `--redis-url` is a node of a Redis Cluster: each shard stream goes to the node
    /// that owns its hash slot.
    #[arg(long)]
    cluster: bool,
    /// JSON lines to read ("-" = stdin). Each line is either
    /// {"stream": S, "fields": {F: V, …}} (an entry as is) or
    /// {"key": K, "value": V} (sent to `<--stream>:<shard>`).
    #[arg(long, conflicts_with = "generate_orders")]
    file: Option<PathBuf>,
    /// Base stream name for key/value lines and generated events.
    #[arg(long)]
    stream: Option<String>,
    /// Shard count: `<stream>:<FNV-1a-64(key JSON) mod shards>`.
    #[arg(long, default_value_t = 8)]
    shards: u32,
    /// Generate this many synthetic events for the `orders` table instead of reading a file.
    #[arg(long)]
    generate_orders: Option<u64>,
    /// Distinct orders the generated events touch (more events than keys = updates).
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Make every n-th generated event a delete.
    #[arg(long)]
    delete_every: Option<u64>,
}

pub async fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    let added = if args.cluster {
        let client = redis::cluster::ClusterClient::builder(vec![args.redis_url.as_str()])
            .tcp_settings(redsink::redis::tcp_settings())
            .build()
            .context("opening the redis cluster url")?;
        let mut conn = client
            .get_async_connection()
            .await
            .context("connecting to the redis cluster")?;
        send(&mut conn, &args).await?
    } else {
        let info = redis::IntoConnectionInfo::into_connection_info(args.redis_url.as_str())
            .context("parsing the redis url")?
            .set_tcp_settings(redsink::redis::tcp_settings());
        let client = redis::Client::open(info).context("opening the redis url")?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .context("connecting to redis")?;
        send(&mut conn, &args).await?
    };
    println!("added {}", super::count(added, "entry", "entries"));
    Ok(())
}

async fn send<C: Routed>(conn: &mut C, args: &ProduceArgs) -> anyhow::Result<usize> {
    if let Some(n) = args.generate_orders {
        let Some(stream) = args.stream.as_deref() else {
            bail!("--generate-orders needs --stream");
        };
        let orders = Orders {
            keys: args.keys,
            delete_every: args.delete_every,
        };
        Ok(xadd_all(conn, (0..n).map(|j| orders.entry(j, stream, args.shards))).await?)
    } else {
        let path = args.file.clone().unwrap_or_else(|| PathBuf::from("-"));
        let entries = read_lines(&path, args.stream.as_deref(), args.shards)?;
        if entries.is_empty() {
            bail!(
                "nothing to add: {} has no entries (give JSON lines, or --generate-orders N --stream S)",
                if path.as_os_str() == "-" {
                    "standard input".to_string()
                } else {
                    path.display().to_string()
                }
            );
        }
        Ok(xadd_all(conn, entries).await?)
    }
}

fn read_lines(path: &PathBuf, stream: Option<&str>, shards: u32) -> anyhow::Result<Vec<Entry>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut out = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("{} line {}", path.display(), n + 1);
        let v: serde_json::Value = serde_json::from_str(&line).with_context(where_)?;
        if let (Some(s), Some(fields)) = (
            v.get("stream").and_then(|s| s.as_str()),
            v.get("fields").and_then(|f| f.as_object()),
        ) {
            let fields = fields
                .iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => Ok((k.clone(), s.clone())),
                    other => bail!("{}: field values must be strings, got {other}", where_()),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            out.push(Entry {
                stream: s.to_string(),
                fields,
            });
        } else if let (Some(key), Some(value)) = (v.get("key"), v.get("value")) {
            let Some(stream) = stream else {
                bail!("{}: key/value lines need --stream", where_());
            };
            let text = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "default".to_string(),
                other => other.to_string(),
            };
            let (key, value) = (text(key), text(value));
            out.push(Entry {
                stream: shard_stream(stream, &key, shards),
                fields: vec![(key, value)],
            });
        } else {
            bail!(
                "{}: expected {{\"stream\",\"fields\"}} or {{\"key\",\"value\"}}",
                where_()
            );
        }
    }
    Ok(out)
}
