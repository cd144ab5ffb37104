//! The reader's own connection to a standalone Redis, or to the master the sentinels
//! name, over plain TCP: one command at a time, replies framed by [`Frame`] and
//! XREADGROUP's read straight into entries ([`read_entries`]) instead of through
//! redis-rs' parser and `Value` tree. Everything
//! else it is asked (`CLIENT SETNAME`, `WAIT`, any reply [`read_entries`] does not take,
//! errors included) goes through redis-rs' own parser, so it reads as it always did.
//! TLS and Cluster keep redis-rs' connections (`Deployment::blocking`).
//!
//! A request whose future is dropped before its reply was read (a timeout) leaves the
//! connection mid-reply: it then refuses every request, and the reader reconnects.

use redis::aio::ConnectionLike;
use redis::{Cmd, ConnectionAddr, ConnectionInfo, Pipeline, RedisFuture, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::resp::{Frame, read_entries};
use crate::entry::StreamEntry;

/// Read at least this much at a time (an XREADGROUP reply of a full batch is megabytes).
const READ_CHUNK: usize = 64 * 1024;
/// A buffer grown past this by one large reply is given back after it.
const KEEP_BUFFER: usize = 4 * 1024 * 1024;

/// See the module doc.
pub struct RawConn {
    stream: TcpStream,
    /// Bytes read and not yet taken (the reply being read).
    buf: Vec<u8>,
    db: i64,
    /// A request was sent and its reply not read to the end (its future was dropped).
    mid_reply: bool,
}

impl RawConn {
    /// Connects and authenticates as `info` says, when its address is plain TCP; `None`
    /// for any other (TLS, a Unix socket): redis-rs' connection serves those.
    pub async fn connect(info: &ConnectionInfo) -> Option<redis::RedisResult<Self>> {
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        Some(Self::open(host, *port, info).await)
    }

    async fn open(host: &str, port: u16, info: &ConnectionInfo) -> redis::RedisResult<Self> {
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        let redis = info.redis_settings();
        let mut conn = Self {
            stream,
            buf: Vec::new(),
            db: redis.db(),
            mid_reply: false,
        };
        if let Some(password) = redis.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = redis.username() {
                auth.arg(user);
            }
            auth.arg(password);
            auth.query_async::<()>(&mut conn).await?;
        }
        if conn.db != 0 {
            redis::cmd("SELECT")
                .arg(conn.db)
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(conn)
    }

    /// Sends `cmd` and reads its reply: `Ok(Ok(entries))` when it is an XREADGROUP
    /// reply, else the reply as redis-rs reads it (`Ok(Err(value))`, an error reply as
    /// [`Value::ServerError`]).
    pub async fn read(&mut self, cmd: &Cmd) -> redis::RedisResult<Result<Vec<StreamEntry>, Value>> {
        let len = self.exchange(&cmd.get_packed_command()).await?;
        let out = match read_entries(&self.buf[..len]) {
            Some(entries) => Ok(Ok(entries)),
            None => redis::parse_redis_value(&self.buf[..len]).map(Err),
        };
        self.consume(len);
        out
    }

    /// Writes a request and reads until its reply is complete: the reply's length at
    /// the start of `buf`.
    async fn exchange(&mut self, packed: &[u8]) -> redis::RedisResult<usize> {
        if self.mid_reply {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the reader's connection was left in the middle of a reply",
            )
            .into());
        }
        self.mid_reply = true;
        self.stream.write_all(packed).await?;
        let mut frame = Frame::default();
        loop {
            match frame.scan(&self.buf) {
                Ok(Some(len)) => {
                    self.mid_reply = false;
                    return Ok(len);
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Parse,
                        "reading a reply",
                        e.0,
                    )));
                }
            }
            self.buf.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "redis closed the connection",
                )
                .into());
            }
        }
    }

    /// Drops the first `len` bytes (a reply read).
    fn consume(&mut self, len: usize) {
        self.buf.drain(..len);
        if self.buf.capacity() > KEEP_BUFFER && self.buf.len() < KEEP_BUFFER {
            self.buf.shrink_to(KEEP_BUFFER);
        }
    }
}

impl ConnectionLike for RawConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let len = self.exchange(&cmd.get_packed_command()).await?;
            let value = redis::parse_redis_value(&self.buf[..len]);
            self.consume(len);
            value
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        _pipeline: &'a Pipeline,
        _offset: usize,
        _count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async {
            Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "the reader's connection sends no pipelines",
            )))
        })
    }

    fn get_db(&self) -> i64 {
        self.db
    }
}
