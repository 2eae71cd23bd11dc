//! The loopback metrics port (`vfs.metrics_listen`): `GET /metrics` answered
//! with the status in the Prometheus text format, for a scraping agent that
//! does not speak the control protocol.
//!
//! A tiny HTTP/1.0 responder on the service's tokio runtime: it binds
//! loopback addresses only, reads at most [`MAX_REQUEST_BYTES`] of a
//! request's head, gives each connection [`CONNECTION_TIMEOUT`] from accept
//! to the last byte written, serves at most [`MAX_CONNECTIONS`] at once
//! (more are closed at once) and closes every connection after one answer.
//! The text is the same as the control plane's `Metrics` call gives
//! ([`spfs_control::metrics::render`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest request head read (request line and headers).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// How long one connection may last, from accept to its answer written.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// Why the metrics port could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error("invalid vfs.metrics_listen '{0}': expected IP:PORT, e.g. 127.0.0.1:9464")]
    Invalid(String),
    #[error(
        "vfs.metrics_listen {0} is not a loopback address: the metrics port only listens on loopback (127.0.0.1, ::1)"
    )]
    NonLoopback(SocketAddr),
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The loopback address `text` names (`IP:PORT`).
pub fn parse(text: &str) -> Result<SocketAddr, ExporterError> {
    let addr: SocketAddr = text
        .trim()
        .parse()
        .map_err(|_| ExporterError::Invalid(text.to_string()))?;
    if !addr.ip().is_loopback() {
        return Err(ExporterError::NonLoopback(addr));
    }
    Ok(addr)
}

/// Bind the metrics port `text` (empty: none), on `runtime`.
pub fn bind(
    runtime: &tokio::runtime::Runtime,
    text: &str,
) -> Result<Option<TcpListener>, ExporterError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let addr = parse(text)?;
    let listener = runtime
        .block_on(TcpListener::bind(addr))
        .map_err(|source| ExporterError::Bind { addr, source })?;
    if let Ok(local) = listener.local_addr() {
        tracing::info!(%local, "serving metrics on loopback");
    }
    Ok(Some(listener))
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    /// `GET /metrics` (or `HEAD`: no body).
    Metrics {
        body: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// What the request whose head is `head` asks (from its first line).
fn asked(head: &[u8]) -> Asked {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return Asked::BadRequest;
    };
    if !words.next().is_some_and(|v| v.starts_with("HTTP/")) {
        return Asked::BadRequest;
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => Asked::Metrics { body: true },
        ("HEAD", "/metrics") => Asked::Metrics { body: false },
        ("GET" | "HEAD", _) => Asked::NotFound,
        _ => Asked::MethodNotAllowed,
    }
}

/// Whether `buf` holds a whole request head.
fn head_complete(buf: &[u8]) -> bool {
    buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n")
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    send_body: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if send_body {
        stream.write_all(body).await?;
    }
    stream.shutdown().await?;
    // Read what the client still sends until it closes (within the
    // connection's time): closing with unread bytes would reset the
    // connection, and the client might lose the answer.
    let mut sink = [0u8; 4096];
    let mut left = DRAIN_BYTES;
    while left > 0 {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    Ok(())
}

/// The most read and dropped after an answer.
const DRAIN_BYTES: usize = 1 << 20;

/// Answer one connection.
async fn answer(
    mut stream: TcpStream,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head_complete(&head) {
        if head.len() > MAX_REQUEST_BYTES {
            let msg = b"request too large\n";
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                msg,
                true,
            )
            .await;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let text = |s: &str| ("text/plain; charset=utf-8", s.as_bytes().to_vec());
    let (status, (ctype, body), send) = match asked(&head) {
        Asked::Metrics { body } => {
            let metrics = tokio::task::spawn_blocking(move || render())
                .await
                .map_err(std::io::Error::other)?;
            (
                "200 OK",
                (spfs_control::metrics::CONTENT_TYPE, metrics.into_bytes()),
                body,
            )
        }
        Asked::NotFound => ("404 Not Found", text("only /metrics is served\n"), true),
        Asked::MethodNotAllowed => ("405 Method Not Allowed", text("GET only\n"), true),
        Asked::BadRequest => ("400 Bad Request", text("bad request\n"), true),
    };
    respond(&mut stream, status, ctype, &body, send).await
}

/// Serve `listener` until the runtime stops, answering `GET /metrics` with
/// `render()`.
pub async fn serve(listener: TcpListener, render: Arc<dyn Fn() -> String + Send + Sync>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: wait a little rather than spin.
                tracing::debug!("metrics port: cannot accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // Too many at once: this one is closed.
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Ok(Err(e)) =
                tokio::time::timeout(CONNECTION_TIMEOUT, answer(stream, render)).await
            {
                tracing::debug!("metrics port: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_taken() {
        assert!(parse("127.0.0.1:9464").is_ok());
        assert!(parse("[::1]:9464").is_ok());
        let e = parse("0.0.0.0:9464").unwrap_err().to_string();
        assert!(
            e.contains("not a loopback address") && !e.contains('\n'),
            "{e}"
        );
        assert!(matches!(
            parse("10.1.2.3:1"),
            Err(ExporterError::NonLoopback(_))
        ));
        assert!(matches!(
            parse("localhost:1"),
            Err(ExporterError::Invalid(_))
        ));
        assert!(matches!(parse("127.0.0.1"), Err(ExporterError::Invalid(_))));
    }

    #[test]
    fn requests_are_read_from_their_first_line() {
        assert_eq!(
            asked(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Asked::Metrics { body: true }
        );
        assert_eq!(
            asked(b"GET /metrics?x=1 HTTP/1.0\n\n"),
            Asked::Metrics { body: true }
        );
        assert_eq!(
            asked(b"HEAD /metrics HTTP/1.0\r\n\r\n"),
            Asked::Metrics { body: false }
        );
        assert_eq!(asked(b"GET / HTTP/1.0\r\n\r\n"), Asked::NotFound);
        assert_eq!(
            asked(b"POST /metrics HTTP/1.0\r\n\r\n"),
            Asked::MethodNotAllowed
        );
        assert_eq!(asked(b"GET /metrics\r\n\r\n"), Asked::BadRequest);
        assert_eq!(asked(b""), Asked::BadRequest);
        assert!(head_complete(b"GET / HTTP/1.0\r\n\r\n") && !head_complete(b"GET / HTTP/1.0\r\n"));
    }
}
