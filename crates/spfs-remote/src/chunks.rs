//! Chunks arriving on a channel, read as one byte stream: how payloads
//! streamed by gRPC or S3 reach the synchronous [`std::io::Read`] side.

use std::io::Read;
use std::sync::mpsc::Receiver;

/// Chunks from a channel as a reader (an error chunk is an I/O error).
pub(crate) struct ChannelReader {
    rx: Receiver<Result<Vec<u8>, String>>,
    buf: Vec<u8>,
    pos: usize,
    /// The longest wait for the next chunk: a stream that stalls longer is
    /// an error, never a hang.
    idle: std::time::Duration,
}

impl ChannelReader {
    pub(crate) fn new(rx: Receiver<Result<Vec<u8>, String>>, idle: std::time::Duration) -> Self {
        ChannelReader {
            rx,
            buf: Vec::new(),
            pos: 0,
            idle,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv_timeout(self.idle) {
                Ok(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Ok(Err(message)) => return Err(std::io::Error::other(message)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no data for {} s", self.idle.as_secs()),
                    ));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Read `stream` (after `first`) as a [`ChannelReader`], pumped by a task
/// on `runtime`. A stream that stays silent for `idle` ends in an error,
/// never in a short read that looks like the whole payload.
pub(crate) fn spawn_reader<S>(
    runtime: &tokio::runtime::Runtime,
    first: Vec<u8>,
    mut stream: S,
    idle: std::time::Duration,
) -> ChannelReader
where
    S: tokio_stream::Stream<Item = Result<Vec<u8>, String>> + Send + Unpin + 'static,
{
    use tokio_stream::StreamExt;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<u8>, String>>(4);
    let _ = tx.send(Ok(first));
    runtime.spawn(async move {
        loop {
            let item = match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(_) => Err(format!("no data for {} s", idle.as_secs())),
            };
            let stop = item.is_err();
            let tx = tx.clone();
            let sent = tokio::task::spawn_blocking(move || tx.send(item).is_ok())
                .await
                .unwrap_or(false);
            if !sent || stop {
                break;
            }
        }
    });
    ChannelReader::new(rx, idle)
}

/// At most `length` bytes of `reader`, for a ranged read of a remote at
/// `address`.
pub(crate) fn read_at_most(
    address: &str,
    reader: impl Read,
    length: u64,
) -> spfs_storage::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader
        .take(length)
        .read_to_end(&mut out)
        .map_err(|e| spfs_storage::StorageError::Remote {
            address: address.to_string(),
            message: e.to_string(),
        })?;
    Ok(out)
}
