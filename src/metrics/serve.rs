//! The HTTP listener: `/metrics` (the Prometheus text exposition), `/healthz` (the
//! process answers) and `/readyz` (connected to both sides, nothing failing, not
//! stalled). A minimal HTTP/1.1 server on tokio: GET only, one request per
//! connection, a bounded number at once, each within a time limit.
//!
//! Probes must be answered whatever other clients do: a client that connects and sends
//! nothing is dropped after [`HEAD_TIMEOUT`], there is room for [`MAX_CONNECTIONS`] at
//! once, and when all are taken a new connection waits in the listen backlog for a free
//! one (each is freed within [`REQUEST_TIMEOUT`]) instead of being closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Metrics;

/// At most this many connections are served at once; more wait to be accepted. Far
/// above what probes and scrapers need, far below a process's usual file limit.
const MAX_CONNECTIONS: usize = 256;
/// A request's head must arrive within this time, or the connection is closed: an idle
/// or slow client holds a slot no longer than this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// The whole exchange (head read, answer written) ends within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    stall_after: Duration,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A slot first: when all are taken, the next connection waits in the backlog
        // (rather than being accepted and closed) until an idle one times out.
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(permit) => permit,
                Err(_) => return, // never closed
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let mut socket = match accepted {
            Ok((socket, _)) => socket,
            Err(e) => {
                // Out of file descriptors, for example: do not spin.
                tracing::warn!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ =
                tokio::time::timeout(REQUEST_TIMEOUT, answer(&mut socket, &metrics, stall_after))
                    .await;
        });
    }
}

/// Reads one request head (at most 4 KiB), writes the answer and closes.
async fn answer(
    socket: &mut tokio::net::TcpStream,
    metrics: &Metrics,
    stall_after: Duration,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let len = match tokio::time::timeout(HEAD_TIMEOUT, read_head(socket, &mut buf)).await {
        Ok(len) => len?,
        // Idle or slow: free the slot for a client that asks something.
        Err(_) => return Ok(()),
    };
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(stall_after),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") => match metrics.readiness(stall_after) {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("{why}\n")),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}

/// Reads into `buf` until the end of a request head, the end of the stream or a full
/// buffer; returns the length read.
async fn read_head(socket: &mut tokio::net::TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        let n = socket.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    Ok(len)
}
